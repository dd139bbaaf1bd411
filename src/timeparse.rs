//! Times an operator types or pastes (`restore … --at`, `restore cluster --time`): every form
//! PostgreSQL prints and accepts for `recovery_target_time`, read into one UTC instant.
//!
//! Accepted: `YYYY-MM-DD`, then optionally (after a space or `T`) `HH:MM`, `HH:MM:SS` or
//! `HH:MM:SS.f` (1–9 fractional digits), then optionally (with or without a space before it) an
//! offset — `Z`, `+00`, `-08`, `+0530`, `+05:30`, `+00:19:32` — or a zone name (`UTC`, `GMT`,
//! `Europe/Istanbul`, case-insensitive). That covers `SELECT now()` in psql
//! (`2026-12-01 19:47:57.901925+00`), RFC 3339 and ISO 8601.
//!
//! Without an offset the time is wall-clock in the given zone (the catalogue's, or the zone
//! named after it), DST transitions resolved exactly as PostgreSQL resolves them (checked
//! against a real server in tests/time_input.rs): an ambiguous time (the autumn hour that
//! happens twice) is its later instant, in standard time (02:30 in Berlin on the fall-back day
//! is 02:30 CET, 01:30Z); a time in a spring gap (which never happens on the clock) is read with
//! the offset in force before the gap, which puts it after the gap (02:30 in Berlin on the
//! spring-forward day is 03:30 CEST, 01:30Z). A date alone means the end of that day,
//! 23:59:59: `--at 2026-11-26` picks the newest backup of that day.

use crate::error::{Classify, Retry};
use chrono::{
    DateTime, Duration, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Utc,
};
use chrono_tz::Tz;

/// What the parser expects, for error messages and `--help` texts.
pub const EXPECTED: &str = "YYYY-MM-DD[ HH:MM[:SS[.ffffff]]] (space or T), optionally followed by \
    an offset (Z, +00, +05:30, +0530, -08) or a zone name (UTC, Europe/Istanbul); without one, \
    the catalogue's time zone";

/// A text that is not a time; says what is wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a time: {problem}; expected {EXPECTED}")]
pub struct TimeParseError {
    pub text: String,
    pub problem: String,
}

impl Classify for TimeParseError {
    fn retry(&self) -> Retry {
        Retry::Permanent
    }
}

/// Parses `text` (see the module docs); a time without an offset or zone is in `zone`.
pub fn parse_time(text: &str, zone: Tz) -> Result<DateTime<Utc>, TimeParseError> {
    let fail = |problem: String| TimeParseError {
        text: text.to_string(),
        problem,
    };
    let mut c = Cursor {
        s: text.trim().as_bytes(),
        pos: 0,
    };
    if c.s.is_empty() {
        return Err(fail("it is empty".into()));
    }
    let date = c.date().map_err(fail)?;
    let time = c.time().map_err(fail)?;
    c.skip_spaces();
    let given = c.zone().map_err(fail)?;
    let naive = NaiveDateTime::new(
        date,
        time.unwrap_or_else(|| NaiveTime::from_hms_opt(23, 59, 59).expect("valid")),
    );
    Ok(match given {
        Some(Zone::Offset(offset)) => from_offset(naive, offset),
        Some(Zone::Named(tz)) => in_zone(naive, tz),
        None => in_zone(naive, zone),
    })
}

/// [`parse_time`] without the reason (callers that word their own error).
pub fn parse_at(text: &str, zone: Tz) -> Option<DateTime<Utc>> {
    parse_time(text, zone).ok()
}

/// Wall-clock `naive` in `tz`, DST transitions resolved as PostgreSQL does (module docs).
pub fn in_zone(naive: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(_, later) => later.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: the offset in force just before it (gaps last hours at most).
            let mut probe = naive;
            for _ in 0..96 {
                probe -= Duration::minutes(15);
                if let Some(t) = tz.from_local_datetime(&probe).latest() {
                    return from_offset(naive, t.offset().fix());
                }
            }
            from_offset(naive, FixedOffset::east_opt(0).expect("valid"))
        }
    }
}

fn from_offset(naive: NaiveDateTime, offset: FixedOffset) -> DateTime<Utc> {
    Utc.from_utc_datetime(&(naive - Duration::seconds(i64::from(offset.local_minus_utc()))))
}

enum Zone {
    Offset(FixedOffset),
    Named(Tz),
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn rest(&self) -> &str {
        std::str::from_utf8(&self.s[self.pos..]).unwrap_or("")
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// `min..=max` ASCII digits: their value and how many there were.
    fn digits(&mut self, min: usize, max: usize) -> Option<(u32, usize)> {
        let start = self.pos;
        let mut value: u32 = 0;
        while self.pos - start < max {
            match self.peek() {
                Some(d @ b'0'..=b'9') => {
                    value = value * 10 + u32::from(d - b'0');
                    self.pos += 1;
                }
                _ => break,
            }
        }
        let n = self.pos - start;
        if n < min {
            self.pos = start;
            return None;
        }
        Some((value, n))
    }

    fn date(&mut self) -> Result<NaiveDate, String> {
        let bad = || "it does not start with a date YYYY-MM-DD".to_string();
        let (y, _) = self.digits(4, 4).ok_or_else(bad)?;
        if !self.eat(b'-') {
            return Err(bad());
        }
        let (m, _) = self.digits(1, 2).ok_or_else(bad)?;
        if !self.eat(b'-') {
            return Err(bad());
        }
        let (d, _) = self.digits(1, 2).ok_or_else(bad)?;
        if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        NaiveDate::from_ymd_opt(y as i32, m, d)
            .ok_or_else(|| format!("there is no date {y:04}-{m:02}-{d:02}"))
    }

    /// After the date: ` HH:MM[:SS[.f]]` or `THH:MM…`; None when no time follows.
    fn time(&mut self) -> Result<Option<NaiveTime>, String> {
        let start = self.pos;
        let t_sep = matches!(self.peek(), Some(b'T' | b't'));
        if t_sep {
            self.pos += 1;
        } else {
            self.skip_spaces();
        }
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            if t_sep {
                return Err("a time HH:MM[:SS] must follow the T".into());
            }
            self.pos = start;
            return Ok(None);
        }
        let bad = || "the time must be HH:MM, HH:MM:SS or HH:MM:SS.ffffff".to_string();
        let (h, _) = self.digits(1, 2).ok_or_else(bad)?;
        if !self.eat(b':') {
            return Err(bad());
        }
        let (m, _) = self.digits(2, 2).ok_or_else(bad)?;
        let (mut s, mut nanos) = (0, 0);
        if self.eat(b':') {
            s = self.digits(2, 2).ok_or_else(bad)?.0;
            if self.eat(b'.') {
                let (f, n) = self
                    .digits(1, 9)
                    .ok_or("fractional seconds need digits after the point")?;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err("at most 9 fractional digits".into());
                }
                nanos = f * 10u32.pow(9 - n as u32);
            }
        }
        if h > 23 || m > 59 || s > 59 {
            return Err(format!("there is no time {h:02}:{m:02}:{s:02}"));
        }
        Ok(NaiveTime::from_hms_nano_opt(h, m, s, nanos))
    }

    /// The offset or zone name ending the text, if any; anything after it is an error.
    fn zone(&mut self) -> Result<Option<Zone>, String> {
        let zone = match self.peek() {
            None => return Ok(None),
            Some(sign @ (b'+' | b'-')) => {
                self.pos += 1;
                Some(Zone::Offset(self.offset(sign == b'-')?))
            }
            Some(b) if b.is_ascii_alphabetic() => {
                let name = self.rest().to_string();
                self.pos = self.s.len();
                if name.eq_ignore_ascii_case("z") {
                    Some(Zone::Offset(FixedOffset::east_opt(0).expect("valid")))
                } else {
                    Some(Zone::Named(zone_named(&name).ok_or_else(|| {
                        format!("`{name}` is not a time zone name (like UTC or Europe/Istanbul)")
                    })?))
                }
            }
            Some(_) => None,
        };
        if self.pos < self.s.len() {
            return Err(format!("unexpected `{}` after the time", self.rest()));
        }
        Ok(zone)
    }

    /// After the sign: `HH`, `HHMM`, `HH:MM`, `HHMMSS` or `HH:MM:SS` (hours up to 15).
    fn offset(&mut self, negative: bool) -> Result<FixedOffset, String> {
        let bad = || "an offset must be +HH, +HH:MM or +HHMM (or -…)".to_string();
        let (h, _) = self.digits(1, 2).ok_or_else(bad)?;
        let colon = self.eat(b':');
        let mut secs = h * 3600;
        if let Some((m, _)) = self.digits(2, 2) {
            secs += m * 60;
            if m > 59 {
                return Err(bad());
            }
            if self.eat(b':') || (!colon && self.peek().is_some_and(|b| b.is_ascii_digit())) {
                let (s, _) = self.digits(2, 2).ok_or_else(bad)?;
                if s > 59 {
                    return Err(bad());
                }
                secs += s;
            }
        } else if colon {
            return Err(bad());
        }
        if h > 15 {
            return Err(format!("offset hours must be at most 15, not {h}"));
        }
        let secs = secs as i32;
        FixedOffset::east_opt(if negative { -secs } else { secs }).ok_or_else(bad)
    }
}

/// An IANA zone name, case-insensitively (`utc`, `europe/istanbul`).
fn zone_named(name: &str) -> Option<Tz> {
    name.parse::<Tz>().ok().or_else(|| {
        chrono_tz::TZ_VARIANTS
            .iter()
            .copied()
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests;
