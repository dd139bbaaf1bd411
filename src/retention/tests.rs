//! Tests of retention: the planner on generated histories (exact kept sets), its invariants
//! (idempotent, newest full kept, parents of kept incrementals kept), the 10k-backup timing,
//! and (in `tests/apply.rs`) apply / run_for_job / cleanup_uncommitted on local repositories.

use super::*;
use crate::model::{BackupType, JobKindName};
use crate::repository::{CommitRecord, FORMAT_VERSION, ObjectRecord, Store};
use bytes::Bytes;
use chrono::{Days, NaiveDate, TimeZone};
use chrono_tz::{Europe::Berlin, Tz};
use std::collections::BTreeSet;

// ---------- helpers ----------

/// A local time in Berlin, as UTC (a time in the spring-forward gap moves one hour later, as
/// the scheduler fires it right after the gap).
fn berlin(y: i32, m: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Berlin
        .with_ymd_and_hms(y, m, d, h, mi, 0)
        .earliest()
        .or_else(|| Berlin.with_ymd_and_hms(y, m, d, h + 1, mi, 0).earliest())
        .expect("valid local time")
        .with_timezone(&Utc)
}

fn utc(y: i32, m: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, mi, 0).unwrap()
}

fn backup(stop: DateTime<Utc>, ty: BackupType, ancestors: Vec<String>) -> BackupInfo {
    let start = stop - chrono::Duration::minutes(10);
    BackupInfo {
        id: crate::repository::BackupId::new(start, ty).0,
        backup_type: ty,
        ancestors,
        started_at: start,
        stopped_at: stop,
        bytes_stored: 1000,
    }
}

fn full(stop: DateTime<Utc>) -> BackupInfo {
    backup(stop, BackupType::Full, vec![])
}

fn policy(
    last: u32,
    hourly: u32,
    daily: u32,
    weekly: u32,
    monthly: u32,
    yearly: u32,
) -> RetentionPolicy {
    let o = |n: u32| (n > 0).then_some(n);
    RetentionPolicy {
        last: o(last),
        hourly: o(hourly),
        daily: o(daily),
        weekly: o(weekly),
        monthly: o(monthly),
        yearly: o(yearly),
        keep_within: None,
    }
}

fn standard() -> RetentionPolicy {
    policy(0, 0, 7, 4, 12, 5)
}

/// One full backup a day at `h:00` Berlin time, from `from` to `to` inclusive.
fn daily_fulls(from: NaiveDate, to: NaiveDate, h: u32) -> Vec<BackupInfo> {
    from.iter_days()
        .take_while(|d| *d <= to)
        .map(|d| {
            use chrono::Datelike;
            full(berlin(d.year(), d.month(), d.day(), h, 0))
        })
        .collect()
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

/// Kept backups as their local stop dates `YYYY-MM-DD HH:MM` (Berlin).
fn kept_local(p: &Plan, tz: Tz) -> BTreeSet<String> {
    p.kept()
        .map(|d| {
            d.stopped_at
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The invariants every plan must satisfy: planning the kept set again keeps everything; the
/// newest full (not in the future) is kept; every ancestor of a kept backup is kept.
fn check_invariants(backups: &[BackupInfo], pol: &RetentionPolicy, tz: Tz, now: DateTime<Utc>) {
    let p = plan(backups, pol, tz, now);
    assert_eq!(p.decisions.len(), backups.len());
    let kept: BTreeSet<&str> = p.kept().map(|d| d.id.as_str()).collect();
    let again: Vec<BackupInfo> = backups
        .iter()
        .filter(|b| kept.contains(b.id.as_str()))
        .cloned()
        .collect();
    let p2 = plan(&again, pol, tz, now);
    let deleted_again: Vec<&str> = p2.deleted().map(|d| d.id.as_str()).collect();
    assert!(
        deleted_again.is_empty(),
        "applying twice deletes more: {deleted_again:?}"
    );
    if let Some(newest_full) = backups
        .iter()
        .filter(|b| b.backup_type == BackupType::Full && b.stopped_at <= now)
        .max_by_key(|b| (b.stopped_at, b.started_at, b.id.clone()))
    {
        assert!(
            kept.contains(newest_full.id.as_str()),
            "newest full deleted"
        );
    }
    let ids: BTreeSet<&str> = backups.iter().map(|b| b.id.as_str()).collect();
    for b in backups.iter().filter(|b| kept.contains(b.id.as_str())) {
        for a in &b.ancestors {
            if ids.contains(a.as_str()) {
                assert!(
                    kept.contains(a.as_str()),
                    "ancestor {a} of kept {} deleted",
                    b.id
                );
            }
        }
    }
    for d in &p.decisions {
        assert_eq!(d.keep, !d.reasons.is_empty(), "{}: keep iff reasons", d.id);
    }
}

/// Weekly full on Sunday 04:00, incrementals 02:00 the other days; each incremental lists its
/// ancestors nearest first.
fn chain_history(from: NaiveDate, to: NaiveDate) -> Vec<BackupInfo> {
    use chrono::Datelike;
    let mut out: Vec<BackupInfo> = Vec::new();
    let mut chain: Vec<String> = Vec::new(); // nearest first
    for d in from.iter_days().take_while(|d| *d <= to) {
        let b = if d.weekday() == chrono::Weekday::Sun || chain.is_empty() {
            chain.clear();
            full(berlin(d.year(), d.month(), d.day(), 4, 0))
        } else {
            backup(
                berlin(d.year(), d.month(), d.day(), 2, 0),
                BackupType::Incremental,
                chain.clone(),
            )
        };
        chain.insert(0, b.id.clone());
        out.push(b);
    }
    out
}

// ---------- planner: exact kept sets ----------

#[test]
fn daily_for_three_years_standard_policy() {
    let backups = daily_fulls(date(2024, 1, 1), date(2026, 12, 31), 2);
    assert_eq!(backups.len(), 1096);
    let now = berlin(2026, 12, 31, 12, 0);
    let p = plan(&backups, &standard(), Berlin, now);
    let mut expected: Vec<String> = (25..=31).map(|d| format!("2026-12-{d:02} 02:00")).collect();
    // weekly (ISO): 2026-W53 = Dec 31 and W52 = Dec 27 are dailies already; W51, W50:
    expected.extend(["2026-12-20 02:00".into(), "2026-12-13 02:00".into()]);
    // monthly: the last day of Jan..Nov 2026 (Dec 31 is already kept)
    for (m, d) in [
        (1, 31),
        (2, 28),
        (3, 31),
        (4, 30),
        (5, 31),
        (6, 30),
        (7, 31),
        (8, 31),
        (9, 30),
        (10, 31),
        (11, 30),
    ] {
        expected.push(format!("2026-{m:02}-{d:02} 02:00"));
    }
    // yearly: 2025, 2024, and the oldest backup while the rule still has room (restic).
    expected.extend([
        "2025-12-31 02:00".into(),
        "2024-12-31 02:00".into(),
        "2024-01-01 02:00".into(),
    ]);
    let expected: BTreeSet<String> = expected.into_iter().collect();
    assert_eq!(kept_local(&p, Berlin), expected);
    assert_eq!(p.kept().count(), 23);
    // Reasons of a few.
    let newest = &p.decisions[0];
    let text: Vec<String> = newest.reasons.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        text,
        [
            "daily 1/7",
            "weekly 1/4",
            "monthly 1/12",
            "yearly 1/5",
            "newest full"
        ]
    );
    let oldest = p.decisions.last().unwrap();
    assert_eq!(
        oldest
            .reasons
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["yearly 4/5 (oldest)"]
    );
    check_invariants(&backups, &standard(), Berlin, now);
}

#[test]
fn oldest_in_a_used_period_is_marked_oldest() {
    // Two backups on one day, daily 7: the newer is the day's, the older is kept as oldest.
    let backups = vec![
        full(berlin(2026, 11, 26, 2, 0)),
        full(berlin(2026, 11, 26, 9, 0)),
    ];
    let p = plan(
        &backups,
        &policy(0, 0, 7, 0, 0, 0),
        Berlin,
        berlin(2026, 11, 27, 0, 0),
    );
    let text: Vec<Vec<String>> = p
        .decisions
        .iter()
        .map(|d| d.reasons.iter().map(|r| r.to_string()).collect())
        .collect();
    assert_eq!(
        text,
        vec![
            vec!["daily 1/7".to_string(), "newest full".to_string()],
            vec!["daily 2/7 (oldest)".to_string()]
        ]
    );
}

#[test]
fn gaps_of_weeks_do_not_use_up_slots() {
    let mut backups = daily_fulls(date(2026, 10, 1), date(2026, 10, 20), 2);
    backups.extend(daily_fulls(date(2026, 11, 10), date(2026, 11, 12), 2));
    let now = berlin(2026, 11, 12, 12, 0);
    let pol = policy(0, 0, 7, 4, 0, 0);
    let p = plan(&backups, &pol, Berlin, now);
    assert_eq!(
        kept_local(&p, Berlin),
        set(&[
            "2026-11-12 02:00",
            "2026-11-11 02:00",
            "2026-11-10 02:00",
            "2026-10-20 02:00", // daily + weekly 2026-W43
            "2026-10-19 02:00",
            "2026-10-18 02:00", // daily + weekly W42
            "2026-10-17 02:00",
            "2026-10-11 02:00", // weekly W41
        ])
    );
    check_invariants(&backups, &pol, Berlin, now);
}

#[test]
fn several_backups_a_day_last_and_daily() {
    let mut backups = Vec::new();
    for d in 1..=10 {
        for h in [0, 6, 12, 18] {
            backups.push(full(berlin(2026, 11, d, h, 30)));
        }
    }
    let now = berlin(2026, 11, 10, 23, 0);
    let pol = policy(3, 0, 5, 0, 0, 0);
    let p = plan(&backups, &pol, Berlin, now);
    assert_eq!(
        kept_local(&p, Berlin),
        set(&[
            "2026-11-10 18:30",
            "2026-11-10 12:30",
            "2026-11-10 06:30",
            "2026-11-09 18:30",
            "2026-11-08 18:30",
            "2026-11-07 18:30",
            "2026-11-06 18:30",
        ])
    );
    check_invariants(&backups, &pol, Berlin, now);
    // hourly 6 on the same history: the 6 newest (each its own hour).
    let pol = policy(0, 6, 0, 0, 0, 0);
    let p = plan(&backups, &pol, Berlin, now);
    assert_eq!(p.kept().count(), 6);
    check_invariants(&backups, &pol, Berlin, now);
}

#[test]
fn full_incremental_chains_weekly_picks_fulls_and_parents_are_kept() {
    let backups = chain_history(date(2026, 9, 6), date(2026, 11, 26));
    let now = berlin(2026, 11, 26, 12, 0);
    let pol = policy(0, 0, 7, 4, 3, 0);
    let p = plan(&backups, &pol, Berlin, now);
    assert_eq!(
        kept_local(&p, Berlin),
        set(&[
            // daily 7 (among all)
            "2026-11-26 02:00",
            "2026-11-25 02:00",
            "2026-11-24 02:00",
            "2026-11-23 02:00",
            "2026-11-22 04:00", // full: daily, weekly, monthly, newest full
            "2026-11-21 02:00",
            "2026-11-20 02:00",
            // parents of the kept incrementals of Nov 20/21
            "2026-11-19 02:00",
            "2026-11-18 02:00",
            "2026-11-17 02:00",
            "2026-11-16 02:00",
            "2026-11-15 04:00", // weekly + parent
            // weekly (fulls only)
            "2026-11-08 04:00",
            "2026-11-01 04:00",
            // monthly (fulls only): October's and September's last full
            "2026-10-25 04:00",
            "2026-09-27 04:00",
        ])
    );
    // The reasons say why a parent stays.
    let nov16 = p
        .decisions
        .iter()
        .find(|d| d.stopped_at == berlin(2026, 11, 16, 2, 0))
        .unwrap();
    let nov21 = p
        .decisions
        .iter()
        .find(|d| d.stopped_at == berlin(2026, 11, 21, 2, 0))
        .unwrap();
    assert_eq!(
        nov16.reasons,
        vec![Reason::ParentOf {
            child: nov21.id.clone()
        }]
    );
    assert_eq!(
        nov16.reasons[0].to_string(),
        format!("parent of kept incremental {}", nov21.id)
    );
    // No incremental is ever kept by weekly/monthly/yearly.
    for d in p
        .kept()
        .filter(|d| d.backup_type == BackupType::Incremental)
    {
        assert!(
            d.reasons
                .iter()
                .all(|r| !matches!(r, Reason::Rule { rule, .. } if rule.fulls_only()))
        );
    }
    check_invariants(&backups, &pol, Berlin, now);
}

#[test]
fn missing_ancestor_is_a_warning() {
    let b = backup(
        berlin(2026, 11, 26, 2, 0),
        BackupType::Incremental,
        vec!["20261120T000000Z-F".into()],
    );
    let p = plan(
        &[b],
        &policy(0, 0, 7, 0, 0, 0),
        Berlin,
        berlin(2026, 11, 27, 0, 0),
    );
    assert_eq!(p.warnings.len(), 1);
    assert!(
        p.warnings[0].contains("20261120T000000Z-F"),
        "{:?}",
        p.warnings
    );
}

#[test]
fn dst_fall_back_hours_share_a_key_and_days_are_local() {
    // 2026-10-25: 03:00 CEST → 02:00 CET at 01:00Z. 00:30Z = 02:30+02, 01:30Z = 02:30+01.
    let backups = vec![
        full(utc(2026, 10, 24, 23, 30)), // 01:30 CEST (01h)
        full(utc(2026, 10, 25, 0, 0)),   // 02:00 CEST (02h)
        full(utc(2026, 10, 25, 0, 30)),  // 02:30 CEST (02h)
        full(utc(2026, 10, 25, 1, 0)),   // 02:00 CET  (02h again)
        full(utc(2026, 10, 25, 1, 30)),  // 02:30 CET  (02h again)
        full(utc(2026, 10, 25, 2, 0)),   // 03:00 CET  (03h)
    ];
    let now = utc(2026, 10, 25, 12, 0);
    let pol = policy(0, 10, 0, 0, 0, 0);
    let p = plan(&backups, &pol, Berlin, now);
    let kept: BTreeSet<DateTime<Utc>> = p.kept().map(|d| d.stopped_at).collect();
    assert_eq!(
        kept,
        [
            utc(2026, 10, 25, 2, 0),
            utc(2026, 10, 25, 1, 30),
            utc(2026, 10, 24, 23, 30)
        ]
        .into_iter()
        .collect()
    );
    check_invariants(&backups, &pol, Berlin, now);

    // Spring forward night: 23:15Z on Mar 28 is already Mar 29 in Berlin.
    let a = full(utc(2026, 3, 28, 22, 45)); // 23:45 CET, Mar 28
    let b = full(utc(2026, 3, 28, 23, 15)); // 00:15 CET, Mar 29
    let c = full(utc(2026, 3, 27, 12, 0)); // Mar 27
    let backups = vec![a.clone(), b.clone(), c.clone()];
    let now = utc(2026, 3, 29, 12, 0);
    let pol = policy(0, 0, 2, 0, 0, 0);
    let ids = |p: &Plan| p.kept().map(|d| d.id.clone()).collect::<BTreeSet<_>>();
    let in_berlin = plan(&backups, &pol, Berlin, now);
    assert_eq!(
        ids(&in_berlin),
        [a.id.clone(), b.id.clone()].into_iter().collect()
    );
    let in_utc = plan(&backups, &pol, chrono_tz::UTC, now);
    assert_eq!(
        ids(&in_utc),
        [b.id.clone(), c.id.clone()].into_iter().collect()
    );

    // A 25-hour day still yields one daily backup (hourly backups through Oct 25).
    let mut hourly = Vec::new();
    let mut t = utc(2026, 10, 23, 22, 0);
    while t < utc(2026, 10, 26, 23, 0) {
        hourly.push(full(t));
        t += chrono::Duration::hours(1);
    }
    let pol = policy(0, 0, 3, 0, 0, 0);
    let p = plan(&hourly, &pol, Berlin, utc(2026, 10, 27, 0, 0));
    assert_eq!(
        kept_local(&p, Berlin),
        set(&["2026-10-26 23:00", "2026-10-25 23:00", "2026-10-24 23:00"])
    );
    check_invariants(&hourly, &pol, Berlin, utc(2026, 10, 27, 0, 0));
}

#[test]
fn iso_week_spanning_the_new_year() {
    // 2026-12-28 (Mon) .. 2027-01-03 (Sun) is ISO week 2026-W53.
    let backups = daily_fulls(date(2026, 12, 14), date(2027, 1, 6), 2);
    let now = berlin(2027, 1, 6, 12, 0);
    let pol = policy(0, 0, 0, 3, 0, 0);
    let p = plan(&backups, &pol, Berlin, now);
    assert_eq!(
        kept_local(&p, Berlin),
        set(&["2027-01-06 02:00", "2027-01-03 02:00", "2026-12-27 02:00"])
    );
    let periods: Vec<String> = p
        .kept()
        .flat_map(|d| d.reasons.iter())
        .filter_map(|r| match r {
            Reason::Rule { period, .. } => Some(period.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(periods, ["2027-W01", "2026-W53", "2026-W52"]);
    check_invariants(&backups, &pol, Berlin, now);
}

#[test]
fn future_dated_backups_are_kept_reported_and_take_no_slot() {
    let mut backups = daily_fulls(date(2026, 11, 1), date(2026, 11, 10), 2);
    let now = berlin(2026, 11, 10, 12, 0);
    backups.push(full(berlin(2026, 11, 12, 2, 0)));
    backups.push(full(berlin(2027, 11, 12, 2, 0)));
    let pol = policy(0, 0, 3, 0, 0, 0);
    let p = plan(&backups, &pol, Berlin, now);
    assert_eq!(
        kept_local(&p, Berlin),
        set(&[
            "2027-11-12 02:00",
            "2026-11-12 02:00",
            "2026-11-10 02:00",
            "2026-11-09 02:00",
            "2026-11-08 02:00",
        ])
    );
    assert_eq!(p.warnings.len(), 2);
    assert_eq!(p.decisions[0].reasons, vec![Reason::Future]);
    // The newest full is the newest one not in the future.
    assert!(p.decisions[2].reasons.contains(&Reason::NewestFull));
    check_invariants(&backups, &pol, Berlin, now);
}

#[test]
fn keep_within_is_relative_to_the_newest_backup_in_calendar_days() {
    let backups = daily_fulls(date(2026, 11, 1), date(2026, 11, 10), 2);
    // `now` is a month later: keep-within counts from the newest backup, not from now.
    let now = berlin(2026, 12, 10, 12, 0);
    let pol = RetentionPolicy {
        keep_within: Some(Duration::from_secs(2 * 86_400)),
        ..Default::default()
    };
    let p = plan(&backups, &pol, Berlin, now);
    // Strictly after Nov 8 02:00.
    assert_eq!(
        kept_local(&p, Berlin),
        set(&["2026-11-10 02:00", "2026-11-09 02:00"])
    );
    assert_eq!(p.decisions[1].reasons[0].to_string(), "keep-within 2d");
    check_invariants(&backups, &pol, Berlin, now);

    // Across the spring-forward day, 1d is one calendar day (23 hours), not 24 hours.
    let latest = utc(2026, 3, 29, 10, 0); // 12:00 CEST
    let inside = utc(2026, 3, 28, 11, 30); // 12:30 CET the day before: within
    let outside = utc(2026, 3, 28, 10, 30); // 11:30 CET: 23.5 h back, but before 12:00 CET
    let backups = vec![full(latest), full(inside), full(outside)];
    let pol = RetentionPolicy {
        keep_within: Some(Duration::from_secs(86_400)),
        ..Default::default()
    };
    let p = plan(&backups, &pol, Berlin, utc(2026, 3, 30, 0, 0));
    let kept: BTreeSet<DateTime<Utc>> = p.kept().map(|d| d.stopped_at).collect();
    assert_eq!(kept, [latest, inside].into_iter().collect());
}

#[test]
fn empty_policy_keeps_everything() {
    let backups = daily_fulls(date(2026, 11, 1), date(2026, 11, 10), 2);
    let p = plan(
        &backups,
        &RetentionPolicy::default(),
        Berlin,
        berlin(2026, 12, 1, 0, 0),
    );
    assert_eq!(p.kept().count(), 10);
    assert!(
        p.decisions
            .iter()
            .all(|d| d.reasons == vec![Reason::NoPolicy])
    );
}

/// A small deterministic generator (no rand dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn invariants_hold_on_random_histories() {
    let mut rng = Lcg(42);
    for case in 0..300 {
        let n = 1 + rng.next(120) as usize;
        let mut t = utc(2026, 1, 1, 0, 0) + chrono::Duration::minutes(rng.next(100_000) as i64);
        let mut backups: Vec<BackupInfo> = Vec::new();
        let mut chain: Vec<String> = Vec::new();
        for _ in 0..n {
            // Steps from minutes to weeks, sometimes exact duplicates of the stop time.
            let step = match rng.next(4) {
                0 => 0,
                1 => rng.next(180),
                2 => rng.next(3 * 1440),
                _ => rng.next(30 * 1440),
            };
            t += chrono::Duration::minutes(step as i64);
            let inc = !chain.is_empty() && rng.next(3) > 0;
            let mut b = if inc {
                backup(t, BackupType::Incremental, chain.clone())
            } else {
                chain.clear();
                full(t)
            };
            b.id = format!("{}-{case}-{}", b.id, backups.len());
            chain.insert(0, b.id.clone());
            backups.push(b);
        }
        let pick = |rng: &mut Lcg| {
            if rng.next(2) == 0 {
                0
            } else {
                rng.next(6) as u32
            }
        };
        let mut pol = policy(
            pick(&mut rng),
            pick(&mut rng),
            pick(&mut rng),
            pick(&mut rng),
            pick(&mut rng),
            pick(&mut rng),
        );
        if rng.next(3) == 0 {
            pol.keep_within = Some(Duration::from_secs(rng.next(10 * 86_400)));
        }
        let now = t - chrono::Duration::minutes(rng.next(3) as i64 * 600);
        for tz in [Berlin, chrono_tz::UTC, chrono_tz::America::New_York] {
            check_invariants(&backups, &pol, tz, now);
        }
    }
}

/// 10,000 backups: the plan keeps every invariant (chains whole, idempotent, newest full) and
/// what the policy asks for, no more. (Timings are left to `benches/`.)
#[test]
fn planning_10000_backups() {
    // Hourly backups for ~417 days: weekly full, hourly incrementals (chains of up to 168).
    let mut backups: Vec<BackupInfo> = Vec::with_capacity(10_000);
    let mut chain: Vec<String> = Vec::new();
    let start = utc(2025, 10, 5, 0, 0);
    for i in 0..10_000i64 {
        let t = start + chrono::Duration::hours(i);
        let b = if i % 168 == 0 {
            chain.clear();
            full(t)
        } else {
            backup(t, BackupType::Incremental, chain.clone())
        };
        chain.insert(0, b.id.clone());
        backups.push(b);
    }
    let mut pol = policy(5, 24, 7, 4, 12, 5);
    pol.keep_within = Some(Duration::from_secs(2 * 86_400));
    let now = start + chrono::Duration::hours(10_000);
    check_invariants(&backups, &pol, Berlin, now);
    let p = plan(&backups, &pol, Berlin, now);
    assert_eq!(p.decisions.len(), 10_000);
    let kept: BTreeSet<&str> = p.kept().map(|d| d.id.as_str()).collect();
    // The last two days (keep-within) and, for them, the chain they stand on.
    for b in &backups[10_000 - 47..] {
        assert!(kept.contains(b.id.as_str()), "{} is within 2 days", b.id);
    }
    // Whole chains only: a kept incremental's full is kept, so the kept set is a union of whole
    // chain prefixes; far fewer than the history.
    assert!(kept.len() < 10_000 / 2, "kept {} of 10000", kept.len());

    // Flat history of 10k fulls: only what the rules select.
    let flat: Vec<BackupInfo> = (0..10_000i64)
        .map(|i| full(start + chrono::Duration::hours(i)))
        .collect();
    check_invariants(&flat, &pol, Berlin, now);
    let p = plan(&flat, &pol, Berlin, now);
    let kept: BTreeSet<&str> = p.kept().map(|d| d.id.as_str()).collect();
    for b in &flat[10_000 - 47..] {
        assert!(kept.contains(b.id.as_str()), "{} is within 2 days", b.id);
    }
    // At most keep-within (48 h + 1) + last + hourly + daily + weekly + monthly + yearly.
    assert!(
        kept.len() <= 49 + 5 + 24 + 7 + 4 + 12 + 5,
        "kept {} fulls",
        kept.len()
    );
    // Monthly reaches a year back: at least 12 months are represented.
    let months: BTreeSet<String> = flat
        .iter()
        .filter(|b| kept.contains(b.id.as_str()))
        .map(|b| {
            b.started_at
                .with_timezone(&Berlin)
                .format("%Y-%m")
                .to_string()
        })
        .collect();
    assert!(months.len() >= 12, "kept months {months:?}");
}

// ---------- apply, run_for_job, cleanup on a local repository ----------

mod apply;
