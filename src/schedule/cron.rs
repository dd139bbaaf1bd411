//! Cron expressions (croner) evaluated as wall-clock time in a timezone (chrono-tz), DST-correct.
//!
//! croner only matches *naive* wall-clock times here (it is always handed UTC, which has no DST);
//! turning a wall time into an instant is done by `resolve`, with one rule for every
//! expression:
//!
//! * a wall time that exists once is that instant;
//! * an ambiguous wall time (autumn fall-back overlap) is its **first** occurrence, so it fires once;
//! * a wall time inside a spring-forward gap is the first instant after the gap (the transition),
//!   so it fires once, right after the gap. Several gap times collapse into that one instant.
//!
//! Because this mapping is monotone, "the first fire strictly after `t`" is the first matching wall
//! time after the latest wall time the clock has already shown at `t` (the *wall frontier*, which
//! stays at the end of the overlap during the repeated hour). See docs/scheduling.md.

use std::sync::Arc;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, SubsecRound, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron expression. Displays as written.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    source: String,
    cron: Cron,
}

/// Why a cron expression was rejected. `reason` names the field and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid cron expression `{expression}`: {reason}")]
pub struct CronError {
    pub expression: String,
    pub reason: String,
    /// croner's own error, when it is the one that rejected the expression.
    #[source]
    pub source: Option<Arc<croner::errors::CronError>>,
}

/// Field names and their allowed values, for error messages.
const FIELDS_5: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
];
const FIELDS_6: [(&str, &str); 6] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT"),
];

/// Nicknames and the 5-field expressions they stand for.
const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

impl CronSchedule {
    /// Parses a 5-field expression (`minute hour day-of-month month day-of-week`), a 6-field one
    /// with seconds first, or a nickname (`@yearly`/`@annually`, `@monthly`, `@weekly`,
    /// `@daily`/`@midnight`, `@hourly`). Month and weekday names (`JAN`, `MON`) are accepted.
    /// When both day fields are restricted (neither is `*`), a day matches if **either** does
    /// (Vixie cron); croner's `+` AND-modifier and a year field are rejected.
    pub fn parse(expression: &str) -> Result<CronSchedule, CronError> {
        let err = |reason: String| CronError {
            expression: expression.to_string(),
            reason,
            source: None,
        };
        let trimmed = expression.trim();
        if trimmed.is_empty() {
            return Err(err("the expression is empty".into()));
        }
        let expanded = if trimmed.starts_with('@') {
            match NICKNAMES
                .iter()
                .find(|(nick, _)| nick.eq_ignore_ascii_case(trimmed))
            {
                Some((_, expr)) => (*expr).to_string(),
                None => {
                    return Err(err(format!(
                        "unknown nickname `{trimmed}` (expected one of @yearly, @annually, @monthly, \
                         @weekly, @daily, @midnight, @hourly)"
                    )));
                }
            }
        } else {
            trimmed.to_string()
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let names: &[(&str, &str)] = match fields.len() {
            5 => &FIELDS_5,
            6 => &FIELDS_6,
            n => {
                return Err(err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with \
                     seconds first, found {n}"
                )));
            }
        };
        if let Some(dow) = fields.last()
            && dow.starts_with('+')
        {
            return Err(err(
                "day-of-week: the `+` (day-of-month AND day-of-week) modifier is not supported; \
                 both day fields combine with OR as in Vixie cron"
                    .into(),
            ));
        }
        let cron = parser().parse(&expanded).map_err(|e| {
            let reason = match field_at_fault(&fields, names) {
                Some(((name, allowed), value, field_err)) => {
                    format!(
                        "{name} field `{value}` (allowed {allowed}): {}",
                        croner_message(&field_err)
                    )
                }
                None => croner_message(&e),
            };
            CronError {
                expression: expression.to_string(),
                reason,
                source: Some(Arc::new(e)),
            }
        })?;
        // A valid but impossible expression (`0 0 30 2 *`) would never fire: reject it here rather
        // than let the job silently never run. 28 years cover every weekday/leap-year combination.
        let window = Utc
            .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
            .single()
            .zip(Utc.with_ymd_and_hms(2028, 1, 1, 0, 0, 0).single());
        let fires = window.is_some_and(|(from, until)| {
            cron.find_next_occurrence(&from, false)
                .is_ok_and(|next| next < until)
        });
        if !fires {
            return Err(err(
                "the expression never fires (no such date, e.g. day 30 of February)".into(),
            ));
        }
        Ok(CronSchedule {
            source: expression.to_string(),
            cron,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The first fire strictly after `after`, wall-clock in `tz` (DST rules: module docs).
    /// None only if the expression has no fire before the year 5000.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let frontier = wall_frontier(after.trunc_subsecs(0), tz)?;
        let wall = self
            .cron
            .find_next_occurrence(&Utc.from_utc_datetime(&frontier), false)
            .ok()?;
        resolve(wall.naive_utc(), tz)
    }

    /// The latest fire at or before `at`, wall-clock in `tz` (same rules as [`Self::next_after`]).
    pub fn prev_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let frontier = wall_frontier(at.trunc_subsecs(0), tz)?;
        let wall = self
            .cron
            .find_previous_occurrence(&Utc.from_utc_datetime(&frontier), true)
            .ok()?;
        resolve(wall.naive_utc(), tz)
    }
}

impl std::fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for CronSchedule {}

/// Our croner configuration: optional seconds, no year field, day-of-month OR day-of-week.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .dom_and_dow(false)
        .build()
}

/// croner's message without its category prefix.
fn croner_message(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    match e {
        E::ComponentError(msg) | E::IllegalCharacters(msg) | E::InvalidPattern(msg) => msg.clone(),
        other => other.to_string(),
    }
}

/// Finds the first field that croner rejects on its own (the others replaced by `*`).
fn field_at_fault<'a, N: Copy>(
    fields: &[&'a str],
    names: &[N],
) -> Option<(N, &'a str, croner::errors::CronError)> {
    let p = parser();
    for (i, (value, name)) in fields.iter().zip(names).enumerate() {
        let probe: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *value } else { "*" })
            .collect();
        if let Err(e) = p.parse(&probe.join(" ")) {
            return Some((*name, value, e));
        }
    }
    None
}

/// The instant a wall time stands for: itself, the first of two, or the end of a DST gap.
pub(crate) fn resolve(wall: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => gap_end(wall, tz),
    }
}

/// The first instant whose wall time is at or after `wall` (a time inside a gap): the transition.
fn gap_end(wall: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    // Offsets lie within -12h..+14h, so the wall time at `lo` is before `wall` and at `hi` after.
    let base = wall.and_utc().timestamp();
    let reached = |secs: i64| -> Option<bool> {
        let t = DateTime::<Utc>::from_timestamp(secs, 0)?;
        Some(t.with_timezone(&tz).naive_local() >= wall)
    };
    first_true(base - 16 * 3600, base + 16 * 3600, reached)
}

/// The latest wall time the clock has shown at or before `t` (whole seconds). Equal to `t`'s wall
/// time, except during the repeated hour of a fall-back, where it stays at the end of the overlap.
fn wall_frontier(t: DateTime<Utc>, tz: Tz) -> Option<NaiveDateTime> {
    let wall = t.with_timezone(&tz).naive_local();
    match tz.from_local_datetime(&wall) {
        LocalResult::Ambiguous(first, second) if t == second.with_timezone(&Utc) => {
            // Second pass: find the transition (the first instant with the later offset); the
            // first pass showed every wall time up to just before it.
            let later = second.offset().fix();
            let first_s = first.with_timezone(&Utc).timestamp();
            let is_later = |secs: i64| -> Option<bool> {
                let u = DateTime::<Utc>::from_timestamp(secs, 0)?;
                Some(u.with_timezone(&tz).offset().fix() == later)
            };
            let transition = first_true(first_s, t.timestamp(), is_later)?;
            let before = transition.checked_sub_signed(Duration::seconds(1))?;
            Some(before.with_timezone(&tz).naive_local())
        }
        _ => Some(wall),
    }
}

/// The first second in `(lo, hi]` where the monotone predicate holds (it must be false at `lo`
/// and true at `hi`).
fn first_true(
    mut lo: i64,
    mut hi: i64,
    pred: impl Fn(i64) -> Option<bool>,
) -> Option<DateTime<Utc>> {
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pred(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::<Utc>::from_timestamp(hi, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::{Berlin, Istanbul};

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("test timestamp")
    }

    fn cron(expr: &str) -> CronSchedule {
        CronSchedule::parse(expr).expect("test expression")
    }

    /// The first `n` fires strictly after `from`.
    fn fires(expr: &str, from: &str, tz: Tz, n: usize) -> Vec<String> {
        let c = cron(expr);
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = c.next_after(t, tz).expect("a next fire");
            out.push(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        out
    }

    #[test]
    fn daily_0230_across_fall_back_fires_once_at_first_occurrence() {
        assert_eq!(
            fires("30 2 * * *", "2026-10-23T12:00:00Z", Berlin, 4),
            [
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // ambiguous 02:30: first occurrence (CEST) only
                "2026-10-26T01:30:00Z", // 02:30 CET
                "2026-10-27T01:30:00Z",
            ]
        );
        // Asked during the repeated hour (02:15 CET), the 02:30 already fired: next is tomorrow.
        assert_eq!(
            cron("30 2 * * *").next_after(utc("2026-10-25T01:15:00Z"), Berlin),
            Some(utc("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn daily_0230_across_spring_forward_fires_right_after_the_gap() {
        assert_eq!(
            fires("30 2 * * *", "2027-03-26T12:00:00Z", Berlin, 3),
            [
                "2027-03-27T01:30:00Z", // 02:30 CET
                "2027-03-28T01:00:00Z", // 02:30 does not exist: 03:00 CEST
                "2027-03-29T00:30:00Z", // 02:30 CEST
            ]
        );
    }

    #[test]
    fn hourly_across_fall_back() {
        // Wall 02:00 exists twice; it fires once (00:00Z). Real time 01:00Z has no fire.
        assert_eq!(
            fires("0 * * * *", "2026-10-24T22:30:00Z", Berlin, 4),
            [
                "2026-10-24T23:00:00Z",
                "2026-10-25T00:00:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T03:00:00Z"
            ]
        );
        assert_eq!(
            fires("@hourly", "2026-10-24T22:30:00Z", Berlin, 4),
            fires("0 * * * *", "2026-10-24T22:30:00Z", Berlin, 4)
        );
    }

    #[test]
    fn hourly_across_spring_forward() {
        // Wall 02:00 is in the gap and fires at 03:00 CEST, the same instant as 03:00 itself: once.
        // Real time keeps one fire an hour.
        assert_eq!(
            fires("0 * * * *", "2027-03-27T22:30:00Z", Berlin, 4),
            [
                "2027-03-27T23:00:00Z",
                "2027-03-28T00:00:00Z",
                "2027-03-28T01:00:00Z",
                "2027-03-28T02:00:00Z"
            ]
        );
    }

    #[test]
    fn every_30_minutes_across_fall_back() {
        // 02:00 and 02:30 fire in the CEST pass only; the repeated CET pass (01:00Z-01:59Z) is quiet.
        assert_eq!(
            fires("*/30 * * * *", "2026-10-24T23:15:00Z", Berlin, 5),
            [
                "2026-10-24T23:30:00Z",
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T02:30:00Z",
            ]
        );
    }

    #[test]
    fn every_30_minutes_across_spring_forward() {
        // 02:00 and 02:30 are in the gap: both collapse into 03:00 CEST (01:00Z) with 03:00 itself.
        assert_eq!(
            fires("*/30 * * * *", "2027-03-27T23:45:00Z", Berlin, 4),
            [
                "2027-03-28T00:00:00Z",
                "2027-03-28T00:30:00Z",
                "2027-03-28T01:00:00Z",
                "2027-03-28T01:30:00Z"
            ]
        );
    }

    #[test]
    fn half_past_every_hour_in_the_gap_fires_at_the_gap_end() {
        assert_eq!(
            fires("30 * * * *", "2027-03-28T00:00:00Z", Berlin, 3),
            [
                "2027-03-28T00:30:00Z",
                "2027-03-28T01:00:00Z",
                "2027-03-28T01:30:00Z"
            ]
        );
    }

    #[test]
    fn list_of_hours_with_one_in_the_gap_keeps_the_gap_fire() {
        // croner alone skips 02:30 here (not a "fixed-time" job); our rule fires it after the gap.
        assert_eq!(
            fires("30 2,14 * * *", "2027-03-27T12:00:00Z", Berlin, 3),
            [
                "2027-03-27T13:30:00Z",
                "2027-03-28T01:00:00Z",
                "2027-03-28T12:30:00Z"
            ]
        );
    }

    #[test]
    fn strictly_after_and_subseconds() {
        let c = cron("0 3 * * *");
        assert_eq!(
            c.next_after(utc("2026-06-01T01:00:00Z"), Berlin),
            Some(utc("2026-06-02T01:00:00Z"))
        );
        assert_eq!(
            c.next_after(utc("2026-06-01T00:59:59.999Z"), Berlin),
            Some(utc("2026-06-01T01:00:00Z"))
        );
        assert_eq!(
            c.prev_at_or_before(utc("2026-06-01T01:00:00Z"), Berlin),
            Some(utc("2026-06-01T01:00:00Z"))
        );
        assert_eq!(
            c.prev_at_or_before(utc("2026-06-01T00:59:59.5Z"), Berlin),
            Some(utc("2026-05-31T01:00:00Z"))
        );
    }

    #[test]
    fn prev_at_or_before_across_dst() {
        let c = cron("30 2 * * *");
        // During the repeated hour, the ambiguous 02:30's only fire (CEST) is already past.
        assert_eq!(
            c.prev_at_or_before(utc("2026-10-25T01:15:00Z"), Berlin),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            c.prev_at_or_before(utc("2026-10-25T00:29:00Z"), Berlin),
            Some(utc("2026-10-24T00:30:00Z"))
        );
        assert_eq!(
            c.prev_at_or_before(utc("2027-03-28T01:00:00Z"), Berlin),
            Some(utc("2027-03-28T01:00:00Z"))
        );
        assert_eq!(
            c.prev_at_or_before(utc("2027-03-28T00:59:59Z"), Berlin),
            Some(utc("2027-03-27T01:30:00Z"))
        );
        let h = cron("0 * * * *");
        assert_eq!(
            h.prev_at_or_before(utc("2026-10-25T01:59:00Z"), Berlin),
            Some(utc("2026-10-25T00:00:00Z"))
        );
    }

    #[test]
    fn istanbul_and_utc_have_fixed_offsets() {
        // Europe/Istanbul is UTC+3 all year: no DST around the Berlin change dates.
        assert_eq!(
            fires("30 2 * * *", "2026-10-24T00:00:00Z", Istanbul, 2),
            ["2026-10-24T23:30:00Z", "2026-10-25T23:30:00Z"]
        );
        assert_eq!(
            fires("0 * * * *", "2027-03-28T00:30:00Z", Istanbul, 3),
            [
                "2027-03-28T01:00:00Z",
                "2027-03-28T02:00:00Z",
                "2027-03-28T03:00:00Z"
            ]
        );
        assert_eq!(
            fires("30 2 * * *", "2027-03-27T12:00:00Z", Tz::UTC, 2),
            ["2027-03-28T02:30:00Z", "2027-03-29T02:30:00Z"]
        );
    }

    #[test]
    fn vixie_or_when_both_day_fields_are_restricted() {
        // 1st of the month OR Monday. 2026-06-01 is a Monday; 2026-07-01 a Wednesday.
        assert_eq!(
            fires("0 0 1 * 1", "2026-06-20T00:00:00Z", Tz::UTC, 4),
            [
                "2026-06-22T00:00:00Z",
                "2026-06-29T00:00:00Z",
                "2026-07-01T00:00:00Z",
                "2026-07-06T00:00:00Z"
            ]
        );
        // Only the weekday counts when the day of month is `*`.
        assert_eq!(
            fires("0 0 * * 1", "2026-06-20T00:00:00Z", Tz::UTC, 3),
            [
                "2026-06-22T00:00:00Z",
                "2026-06-29T00:00:00Z",
                "2026-07-06T00:00:00Z"
            ]
        );
        // Only the day of month counts when the weekday is `*`.
        assert_eq!(
            fires("0 0 1 * *", "2026-06-20T00:00:00Z", Tz::UTC, 2),
            ["2026-07-01T00:00:00Z", "2026-08-01T00:00:00Z"]
        );
        // Names work the same way.
        assert_eq!(
            fires("0 0 1 * MON", "2026-06-20T00:00:00Z", Tz::UTC, 4),
            fires("0 0 1 * 1", "2026-06-20T00:00:00Z", Tz::UTC, 4)
        );
    }

    #[test]
    fn six_fields_with_seconds() {
        assert_eq!(
            fires("15 30 2 * * *", "2026-06-01T00:00:00Z", Berlin, 2),
            ["2026-06-01T00:30:15Z", "2026-06-02T00:30:15Z"]
        );
        assert_eq!(
            fires("*/20 * * * * *", "2026-06-01T00:00:05Z", Tz::UTC, 3),
            [
                "2026-06-01T00:00:20Z",
                "2026-06-01T00:00:40Z",
                "2026-06-01T00:01:00Z"
            ]
        );
        // In the gap, a seconds-precise time also fires at the gap end.
        assert_eq!(
            fires("15 30 2 * * *", "2027-03-27T12:00:00Z", Berlin, 1),
            ["2027-03-28T01:00:00Z"]
        );
    }

    #[test]
    fn nicknames() {
        assert_eq!(
            fires("@daily", "2026-06-01T12:00:00Z", Berlin, 1),
            ["2026-06-01T22:00:00Z"]
        );
        assert_eq!(
            fires("@midnight", "2026-06-01T12:00:00Z", Tz::UTC, 1),
            ["2026-06-02T00:00:00Z"]
        );
        assert_eq!(
            fires("@weekly", "2026-06-01T12:00:00Z", Tz::UTC, 1),
            ["2026-06-07T00:00:00Z"]
        ); // Sunday
        assert_eq!(
            fires("@monthly", "2026-06-01T12:00:00Z", Tz::UTC, 1),
            ["2026-07-01T00:00:00Z"]
        );
        assert_eq!(
            fires("@yearly", "2026-06-01T12:00:00Z", Tz::UTC, 1),
            ["2027-01-01T00:00:00Z"]
        );
        assert_eq!(
            fires("@HOURLY", "2026-06-01T12:10:00Z", Tz::UTC, 1),
            ["2026-06-01T13:00:00Z"]
        );
        assert_eq!(cron("@daily").as_str(), "@daily");
        assert_eq!(cron(" 30 2 * * * ").to_string(), " 30 2 * * * ");
    }

    fn reason(expr: &str) -> String {
        let e = CronSchedule::parse(expr).expect_err(expr);
        assert_eq!(e.expression, expr);
        assert!(e.to_string().contains(&format!("`{expr}`")), "{e}");
        e.reason
    }

    #[test]
    fn invalid_expressions_say_what_is_wrong() {
        assert_eq!(reason(""), "the expression is empty");
        assert!(
            reason("* * * *").contains("found 4"),
            "{}",
            reason("* * * *")
        );
        assert!(reason("0 0 0 * * * 2027").contains("found 7"));
        assert!(reason("0 2 * * * * * *").contains("found 8"));
        let r = reason("61 * * * *");
        assert!(r.starts_with("minute field `61`"), "{r}");
        let r = reason("0 24 * * *");
        assert!(r.starts_with("hour field `24`"), "{r}");
        let r = reason("0 0 32 * *");
        assert!(r.starts_with("day-of-month field `32`"), "{r}");
        let r = reason("0 0 * 13 *");
        assert!(r.starts_with("month field `13`"), "{r}");
        let r = reason("0 0 * * 8");
        assert!(r.starts_with("day-of-week field `8`"), "{r}");
        let r = reason("60 0 0 * * *");
        assert!(r.starts_with("second field `60`"), "{r}");
        let r = reason("0 5-2 * * *");
        assert!(r.starts_with("hour field `5-2`"), "{r}");
        let r = reason("every day at noon");
        assert!(r.contains("found 4"), "{r}");
        let r = reason("a b c d e");
        assert!(r.starts_with("minute field `a`"), "{r}");
        let r = reason("0 2 * * +1");
        assert!(r.contains("`+`"), "{r}");
        let r = reason("@fortnightly");
        assert!(r.contains("unknown nickname"), "{r}");
        let r = reason("0 0 30 2 *");
        assert!(r.contains("never fires"), "{r}");
        // croner's error is kept as the source.
        let e = CronSchedule::parse("61 * * * *").expect_err("invalid");
        assert!(std::error::Error::source(&e).is_some());
        // February 29th is rare, but fires.
        assert!(CronSchedule::parse("0 0 29 2 *").is_ok());
    }

    /// Cross-check against the definition, minute by minute: every matching wall time maps to
    /// `resolve(wall)`; the fires are those instants, each once. `next_after` iterated from the
    /// start and `prev_at_or_before` at every minute must agree with it.
    #[test]
    fn matches_the_definition_minute_by_minute_across_both_changes() {
        let exprs = [
            "0 * * * *",
            "*/30 * * * *",
            "30 2 * * *",
            "15,45 1-3 * * *",
            "*/7 2 * * *",
            "0 0 25 * 0",
            "0 0 * * *",
        ];
        let windows = [
            ("2026-10-24T20:00:00", "2026-10-25T06:00:00"),
            ("2027-03-27T20:00:00", "2027-03-28T06:00:00"),
        ];
        for expr in exprs {
            let c = cron(expr);
            for (from, to) in windows {
                let from: NaiveDateTime = from.parse().expect("naive");
                let to: NaiveDateTime = to.parse().expect("naive");
                let mut expected = Vec::new();
                let mut w = from;
                while w <= to {
                    if c.cron.is_time_matching(&w.and_utc()).expect("match") {
                        expected.push(resolve(w, Berlin).expect("resolves"));
                    }
                    w += Duration::minutes(1);
                }
                expected.dedup();
                let start = resolve(from, Berlin).expect("start");
                let end = resolve(to, Berlin).expect("end");
                let mut got = Vec::new();
                let mut t = start - Duration::seconds(1);
                while let Some(next) = c.next_after(t, Berlin).filter(|n| *n <= end) {
                    got.push(next);
                    t = next;
                }
                assert!(!expected.is_empty(), "{expr} from {from}: no fires");
                assert_eq!(got, expected, "{expr} from {from}");
                let mut t = start;
                while t <= end {
                    let prev = expected.iter().rev().find(|f| **f <= t).copied();
                    if let Some(prev) = prev {
                        assert_eq!(
                            c.prev_at_or_before(t, Berlin),
                            Some(prev),
                            "{expr} prev at {t}"
                        );
                    }
                    let next = expected.iter().find(|f| **f > t).copied();
                    if let Some(next) = next {
                        assert_eq!(c.next_after(t, Berlin), Some(next), "{expr} next after {t}");
                    }
                    t += Duration::seconds(450);
                }
            }
        }
    }

    /// What croner 3.0.1 does by itself with a real `Tz` (why we only let it match naive times).
    #[test]
    fn croner_own_dst_behaviour() {
        let parse = |e: &str| parser().parse(e).expect("croner parses");
        let at = |s: &str| utc(s).with_timezone(&Berlin);
        // Fixed time in the gap: croner fires at the gap end, like us.
        let daily = parse("30 2 * * *");
        let next = daily
            .find_next_occurrence(&at("2027-03-27T12:00:00Z"), false)
            .expect("next");
        assert_eq!(next.with_timezone(&Utc), utc("2027-03-28T01:00:00Z"));
        // But asked during the repeated hour it returns the first 02:30, which is in the PAST.
        let next = daily
            .find_next_occurrence(&at("2026-10-25T01:15:00Z"), false)
            .expect("next");
        assert_eq!(next.with_timezone(&Utc), utc("2026-10-25T00:30:00Z"));
        // Non-fixed times fire twice in the overlap (hourly: 00:00Z and 01:00Z for wall 02:00).
        let hourly = parse("0 * * * *");
        let got: Vec<_> = hourly
            .iter_after(at("2026-10-24T23:30:00Z"))
            .take(3)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        assert_eq!(
            got,
            [
                utc("2026-10-25T00:00:00Z"),
                utc("2026-10-25T01:00:00Z"),
                utc("2026-10-25T02:00:00Z")
            ]
        );
        // ...and a list of hours loses its gap time entirely.
        let list = parse("30 2,14 * * *");
        let next = list
            .find_next_occurrence(&at("2027-03-27T14:00:00Z"), false)
            .expect("next");
        assert_eq!(next.with_timezone(&Utc), utc("2027-03-28T12:30:00Z"));
        // Day fields: OR by default when both are restricted (dom_and_dow = false).
        let vixie = parse("0 0 1 * 1");
        let next = vixie
            .find_next_occurrence(&utc("2026-06-23T00:00:00Z"), false)
            .expect("next");
        assert_eq!(next, utc("2026-06-29T00:00:00Z"));
    }
}
