//! What is due for one job, from its schedules, its persisted last fires and the time (pure).
//!
//! The rules (docs/scheduling.md has the long form):
//!
//! * Each schedule entry's **pending fire** is its first fire after the last fire recorded for its
//!   type, or after `known_since` when that type has none. It is due once it is `<= now`.
//! * Of the due types only the **strongest** (full over incremental) runs; the others are listed in
//!   [`Due::covers`]. All of them get [`Due::fire_time`] recorded as their last fire.
//! * A due fire older than [`CATCH_UP_TOLERANCE`], or an entry with more than one fire `<= now`,
//!   is **late**. If the strongest due entry is late the decision is a catch-up
//!   ([`Trigger::CatchUp`]): one run standing for the newest missed fire, consuming all older ones.
//!   With [`CatchUp::Skip`] it is instead a decision *not* to run ([`Due::run`] = false): record a
//!   skipped run and advance the last fires.
//! * [`due_now`] returns one decision at a time: call it again after recording each decision,
//!   until it returns None.

use crate::model::{BackupType, Trigger};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

use super::CronSchedule;

/// What to do about fires missed while the daemon was down (`catch-up` in the catalogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// After downtime, the strongest missed run type runs once.
    Once,
    /// Missed fires are skipped.
    Skip,
}

/// How far in the past a due fire may be and still count as on time (`Trigger::Scheduled`).
pub const CATCH_UP_TOLERANCE: TimeDelta = TimeDelta::seconds(60);

/// One job's schedules, strongest (full) first, with the last fire recorded for each type.
#[derive(Debug, Clone)]
pub struct JobSchedule<'a> {
    pub job: &'a str,
    pub entries: Vec<(BackupType, &'a CronSchedule)>,
    /// The last fire handled (run, skipped or caught up) per type; None = never. Every fire of that
    /// type at or before it counts as handled.
    pub last_fire: Vec<(BackupType, Option<DateTime<Utc>>)>,
    /// When the job (or a type of it) first got its schedule; fires before this are not "missed".
    /// Only used for a type without a last fire, so after downtime a type that has a recorded last
    /// fire still catches up whatever the daemon's start time.
    pub known_since: DateTime<Utc>,
}

/// A decision for one job: run this type now for this fire time, or (when `run` is false) record
/// the missed fires as skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The strongest due type: the one to run (or the one recorded as skipped).
    pub backup_type: BackupType,
    /// `Scheduled` (on time) or `CatchUp` (late, or several fires missed).
    pub trigger: Trigger,
    /// The scheduled fire time this decision stands for: the newest due fire (`<= now`) of
    /// `backup_type` and `covers`. Record it as the last fire of `backup_type` and of every type in
    /// `covers`, whether the run happens, fails or is skipped.
    pub fire_time: DateTime<Utc>,
    /// Weaker types also due now, handled by this decision (their fires are marked handled).
    pub covers: Vec<BackupType>,
    /// False only for a catch-up with `CatchUp::Skip`: do not run; record a `skipped` run and
    /// advance the last fires as above.
    pub run: bool,
}

/// A due schedule entry.
#[derive(Debug, Clone, Copy)]
struct Pending {
    backup_type: BackupType,
    /// The newest fire `<= now` (the pending fire itself when only one is due).
    newest: DateTime<Utc>,
    late: bool,
}

/// Lower is stronger.
fn strength(t: BackupType) -> u8 {
    match t {
        BackupType::Full => 0,
        BackupType::Incremental => 1,
    }
}

fn last_fire(job: &JobSchedule<'_>, t: BackupType) -> Option<DateTime<Utc>> {
    job.last_fire
        .iter()
        .find(|(ty, _)| *ty == t)
        .and_then(|(_, last)| *last)
}

/// The instant after which this entry's pending fire is searched.
fn base(job: &JobSchedule<'_>, t: BackupType) -> DateTime<Utc> {
    last_fire(job, t).unwrap_or(job.known_since)
}

/// The entries with a fire `<= now` that is not handled yet. Several entries of one type (not
/// expected from the catalogue) merge into one.
fn pending(job: &JobSchedule<'_>, now: DateTime<Utc>, tz: Tz) -> Vec<Pending> {
    let mut out: Vec<Pending> = Vec::new();
    for (t, cron) in &job.entries {
        let Some(first) = cron.next_after(base(job, *t), tz) else {
            continue;
        };
        if first > now {
            continue;
        }
        let newest = cron.prev_at_or_before(now, tz).unwrap_or(first).max(first);
        let late = newest != first || now - first > CATCH_UP_TOLERANCE;
        match out.iter_mut().find(|p| p.backup_type == *t) {
            Some(p) => {
                p.late |= late;
                p.newest = p.newest.max(newest);
            }
            None => out.push(Pending {
                backup_type: *t,
                newest,
                late,
            }),
        }
    }
    out.sort_by_key(|p| strength(p.backup_type));
    out
}

/// The decision for `now`: None when nothing is due. One decision per call; after recording it
/// (the last fires of `backup_type` and `covers` set to `fire_time`), call again until None.
pub fn due_now(
    job: &JobSchedule<'_>,
    now: DateTime<Utc>,
    tz: Tz,
    catch_up: CatchUp,
) -> Option<Due> {
    let due = pending(job, now, tz);
    let strongest = *due.first()?;
    // With Skip, a late strongest type only consumes the other late fires; a weaker type due on
    // time stays due and runs on the next call.
    let skip = strongest.late && catch_up == CatchUp::Skip;
    let handled: Vec<&Pending> = due.iter().filter(|p| !skip || p.late).collect();
    let fire_time = handled
        .iter()
        .map(|p| p.newest)
        .max()
        .unwrap_or(strongest.newest);
    Some(Due {
        backup_type: strongest.backup_type,
        trigger: if strongest.late {
            Trigger::CatchUp
        } else {
            Trigger::Scheduled
        },
        fire_time,
        covers: handled.iter().skip(1).map(|p| p.backup_type).collect(),
        run: !skip,
    })
}

/// The next fire of the job strictly after `now` (and after each type's last fire), with its type
/// (full wins a tie). For the status display and the daemon's sleep; fires already due are
/// reported by [`due_now`], not here.
pub fn next_fire(
    job: &JobSchedule<'_>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Option<(DateTime<Utc>, BackupType)> {
    job.entries
        .iter()
        .filter_map(|(t, cron)| {
            let from = last_fire(job, *t).map_or(now, |last| last.max(now));
            cron.next_after(from, tz).map(|at| (at, *t))
        })
        .min_by_key(|(at, t)| (*at, strength(*t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackupType::{Full, Incremental};
    use chrono_tz::Europe::{Berlin, Istanbul};

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("test timestamp")
    }

    fn cron(expr: &str) -> CronSchedule {
        CronSchedule::parse(expr).expect("test expression")
    }

    /// Full on Sundays at 02:30, incremental daily at 02:30 (Berlin in the tests).
    struct Fixture {
        full: CronSchedule,
        inc: CronSchedule,
    }

    impl Fixture {
        fn new(full: &str, inc: &str) -> Fixture {
            Fixture {
                full: cron(full),
                inc: cron(inc),
            }
        }
        fn job(
            &self,
            last_full: Option<&str>,
            last_inc: Option<&str>,
            known_since: &str,
        ) -> JobSchedule<'_> {
            JobSchedule {
                job: "base",
                entries: vec![(Full, &self.full), (Incremental, &self.inc)],
                last_fire: vec![(Full, last_full.map(utc)), (Incremental, last_inc.map(utc))],
                known_since: utc(known_since),
            }
        }
    }

    fn due(
        t: BackupType,
        trigger: Trigger,
        fire: &str,
        covers: &[BackupType],
        run: bool,
    ) -> Option<Due> {
        Some(Due {
            backup_type: t,
            trigger,
            fire_time: utc(fire),
            covers: covers.to_vec(),
            run,
        })
    }

    /// Applies a decision the way the daemon records it.
    fn record(job: &mut JobSchedule<'_>, d: &Due) {
        for (t, last) in job.last_fire.iter_mut() {
            if *t == d.backup_type || d.covers.contains(t) {
                *last = Some(d.fire_time);
            }
        }
    }

    #[test]
    fn on_time_and_not_yet_due() {
        let f = Fixture::new("30 2 * * 0", "30 2 * * 1-6");
        // Monday 2026-06-01 02:30 CEST = 00:30Z; last incremental Saturday, full Sunday.
        let job = f.job(
            Some("2026-05-31T00:30:00Z"),
            Some("2026-05-30T00:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            due_now(&job, utc("2026-06-01T00:29:59Z"), Berlin, CatchUp::Once),
            None
        );
        let on_time = due(
            Incremental,
            Trigger::Scheduled,
            "2026-06-01T00:30:00Z",
            &[],
            true,
        );
        assert_eq!(
            due_now(&job, utc("2026-06-01T00:30:00Z"), Berlin, CatchUp::Once),
            on_time
        );
        // Within the tolerance it is still on time, also with Skip.
        assert_eq!(
            due_now(&job, utc("2026-06-01T00:31:00Z"), Berlin, CatchUp::Skip),
            on_time
        );
        // Just past the tolerance it is a catch-up.
        let late = due_now(&job, utc("2026-06-01T00:31:01Z"), Berlin, CatchUp::Once).expect("due");
        assert_eq!(late.trigger, Trigger::CatchUp);
        assert!(late.run);
    }

    #[test]
    fn full_and_incremental_coinciding_runs_full_covering_incremental() {
        let f = Fixture::new("30 2 * * 0", "30 2 * * *");
        let mut job = f.job(
            Some("2026-05-24T00:30:00Z"),
            Some("2026-05-30T00:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        // Sunday 2026-05-31 02:30 CEST: both fire.
        let now = utc("2026-05-31T00:30:05Z");
        let d = due_now(&job, now, Berlin, CatchUp::Once);
        assert_eq!(
            d,
            due(
                Full,
                Trigger::Scheduled,
                "2026-05-31T00:30:00Z",
                &[Incremental],
                true
            )
        );
        record(&mut job, d.as_ref().expect("due"));
        assert_eq!(due_now(&job, now, Berlin, CatchUp::Once), None);
        assert_eq!(
            next_fire(&job, now, Berlin),
            Some((utc("2026-06-01T00:30:00Z"), Incremental))
        );
    }

    #[test]
    fn catch_up_after_three_days_runs_strongest_missed_type_once() {
        // Full Sundays 02:30, incremental daily 02:30. Down from Sat 2026-10-24 12:00Z to Tue
        // 2026-10-27 10:00Z: missed Sun 25 (full+inc; the ambiguous 02:30 = 00:30Z), Mon 26 and
        // Tue 27 (inc, 01:30Z in CET).
        let f = Fixture::new("30 2 * * 0", "30 2 * * *");
        let mut job = f.job(
            Some("2026-10-18T00:30:00Z"),
            Some("2026-10-24T00:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let now = utc("2026-10-27T10:00:00Z");
        let d = due_now(&job, now, Berlin, CatchUp::Once).expect("due");
        assert_eq!(
            d,
            due(
                Full,
                Trigger::CatchUp,
                "2026-10-27T01:30:00Z",
                &[Incremental],
                true
            )
            .expect("x")
        );
        record(&mut job, &d);
        assert_eq!(due_now(&job, now, Berlin, CatchUp::Once), None);
        assert_eq!(
            next_fire(&job, now, Berlin),
            Some((utc("2026-10-28T01:30:00Z"), Incremental))
        );
        assert_eq!(
            next_fire(&job, now, Berlin).map(|(_, t)| t),
            Some(Incremental)
        );
        // Next Sunday both coincide again: the full wins the tie.
        let sat = utc("2026-10-31T02:00:00Z");
        let mut job2 = f.job(
            Some("2026-10-25T00:30:00Z"),
            Some("2026-10-31T01:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_fire(&job2, sat, Berlin),
            Some((utc("2026-11-01T01:30:00Z"), Full))
        );
        job2.last_fire[0].1 = None;
        job2.known_since = sat;
        assert_eq!(
            next_fire(&job2, sat, Berlin),
            Some((utc("2026-11-01T01:30:00Z"), Full))
        );
    }

    #[test]
    fn catch_up_of_incremental_only_when_full_not_missed() {
        let f = Fixture::new("30 2 * * 0", "30 2 * * *");
        // Down Mon 2026-06-01 to Wed 2026-06-03 10:00Z: only incrementals missed.
        let job = f.job(
            Some("2026-05-31T00:30:00Z"),
            Some("2026-05-31T00:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let d = due_now(&job, utc("2026-06-03T10:00:00Z"), Berlin, CatchUp::Once);
        assert_eq!(
            d,
            due(
                Incremental,
                Trigger::CatchUp,
                "2026-06-03T00:30:00Z",
                &[],
                true
            )
        );
    }

    #[test]
    fn catch_up_skip_records_skipped_and_advances() {
        let f = Fixture::new("30 2 * * 0", "30 2 * * *");
        let mut job = f.job(
            Some("2026-10-18T00:30:00Z"),
            Some("2026-10-24T00:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let now = utc("2026-10-27T10:00:00Z");
        let d = due_now(&job, now, Berlin, CatchUp::Skip).expect("due");
        assert_eq!(
            d,
            due(
                Full,
                Trigger::CatchUp,
                "2026-10-27T01:30:00Z",
                &[Incremental],
                false
            )
            .expect("x")
        );
        record(&mut job, &d);
        assert_eq!(due_now(&job, now, Berlin, CatchUp::Skip), None);
    }

    #[test]
    fn skip_leaves_an_on_time_weaker_fire_to_run() {
        // Full missed on Sunday (late), incremental due right now on Monday 02:30 CEST.
        let f = Fixture::new("30 2 * * 0", "30 2 * * *");
        let mut job = f.job(
            Some("2026-05-24T00:30:00Z"),
            Some("2026-05-31T00:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let now = utc("2026-06-01T00:30:10Z");
        let d = due_now(&job, now, Berlin, CatchUp::Skip).expect("due");
        assert_eq!(
            d,
            due(Full, Trigger::CatchUp, "2026-05-31T00:30:00Z", &[], false).expect("x")
        );
        record(&mut job, &d);
        let d = due_now(&job, now, Berlin, CatchUp::Skip);
        assert_eq!(
            d,
            due(
                Incremental,
                Trigger::Scheduled,
                "2026-06-01T00:30:00Z",
                &[],
                true
            )
        );
        // With Once the missed full runs instead, covering the incremental.
        let job = f.job(
            Some("2026-05-24T00:30:00Z"),
            Some("2026-05-31T00:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let d = due_now(&job, now, Berlin, CatchUp::Once);
        assert_eq!(
            d,
            due(
                Full,
                Trigger::CatchUp,
                "2026-06-01T00:30:00Z",
                &[Incremental],
                true
            )
        );
    }

    #[test]
    fn two_missed_fires_within_the_tolerance_are_a_catch_up() {
        let f = Fixture::new("0 0 1 1 *", "*/20 * * * * *");
        let job = f.job(
            Some("2026-01-01T00:00:00Z"),
            Some("2026-06-01T00:00:00Z"),
            "2026-01-01T00:00:00Z",
        );
        // One fire (00:00:20) due 10 s ago: on time.
        let d = due_now(&job, utc("2026-06-01T00:00:30Z"), Tz::UTC, CatchUp::Once);
        assert_eq!(
            d,
            due(
                Incremental,
                Trigger::Scheduled,
                "2026-06-01T00:00:20Z",
                &[],
                true
            )
        );
        // Two fires (00:00:20, 00:00:40) due: a catch-up for the newest.
        let d = due_now(&job, utc("2026-06-01T00:00:45Z"), Tz::UTC, CatchUp::Once);
        assert_eq!(
            d,
            due(
                Incremental,
                Trigger::CatchUp,
                "2026-06-01T00:00:40Z",
                &[],
                true
            )
        );
    }

    #[test]
    fn fires_before_known_since_are_not_missed() {
        let f = Fixture::new("30 2 * * 0", "30 2 * * *");
        // A new job, first seen Wed 2026-06-03 10:00Z: Monday's and Tuesday's fires do not count.
        let job = f.job(None, None, "2026-06-03T10:00:00Z");
        assert_eq!(
            due_now(&job, utc("2026-06-03T10:00:00Z"), Berlin, CatchUp::Once),
            None
        );
        assert_eq!(
            due_now(&job, utc("2026-06-04T00:29:00Z"), Berlin, CatchUp::Once),
            None
        );
        assert_eq!(
            due_now(&job, utc("2026-06-04T00:30:00Z"), Berlin, CatchUp::Once),
            due(
                Incremental,
                Trigger::Scheduled,
                "2026-06-04T00:30:00Z",
                &[],
                true
            )
        );
        assert_eq!(
            next_fire(&job, utc("2026-06-03T10:00:00Z"), Berlin),
            Some((utc("2026-06-04T00:30:00Z"), Incremental))
        );
        // A type without a last fire counts from known_since even if the other type has one.
        let job = f.job(None, Some("2026-06-02T00:30:00Z"), "2026-06-03T10:00:00Z");
        assert_eq!(
            due_now(&job, utc("2026-06-04T10:00:00Z"), Berlin, CatchUp::Once),
            due(
                Incremental,
                Trigger::CatchUp,
                "2026-06-04T00:30:00Z",
                &[],
                true
            )
        );
    }

    #[test]
    fn hourly_incremental_across_fall_back_in_berlin() {
        // Full daily at 04:00, incremental hourly: walk the clock through 2026-10-25 and record
        // every decision. The ambiguous wall 02:00 fires once (00:00Z); nothing at 01:00Z.
        let f = Fixture::new("0 4 * * *", "0 * * * *");
        let mut job = f.job(
            Some("2026-10-24T02:00:00Z"),
            Some("2026-10-24T22:00:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let mut seen = Vec::new();
        let mut now = utc("2026-10-24T22:00:00Z");
        while now < utc("2026-10-25T04:00:00Z") {
            let (next, _) = next_fire(&job, now, Berlin).expect("next");
            now = next;
            while let Some(d) = due_now(&job, now, Berlin, CatchUp::Once) {
                assert_eq!(d.trigger, Trigger::Scheduled);
                seen.push(format!(
                    "{} {}",
                    d.fire_time.format("%H:%MZ"),
                    d.backup_type
                ));
                record(&mut job, &d);
            }
        }
        assert_eq!(
            seen,
            [
                "23:00Z incremental", // 01:00 CEST
                "00:00Z incremental", // 02:00 CEST (the CET 02:00 at 01:00Z does not fire)
                "02:00Z incremental", // 03:00 CET
                "03:00Z full",        // 04:00 CET, covers the incremental
                "04:00Z incremental",
            ]
        );
    }

    #[test]
    fn hourly_incremental_across_spring_forward_in_berlin() {
        let f = Fixture::new("0 4 * * *", "0 * * * *");
        let mut job = f.job(
            Some("2027-03-27T03:00:00Z"),
            Some("2027-03-27T22:00:00Z"),
            "2026-01-01T00:00:00Z",
        );
        let mut seen = Vec::new();
        let mut now = utc("2027-03-27T22:00:00Z");
        while now < utc("2027-03-28T03:00:00Z") {
            let (next, _) = next_fire(&job, now, Berlin).expect("next");
            now = next;
            while let Some(d) = due_now(&job, now, Berlin, CatchUp::Once) {
                seen.push(format!(
                    "{} {}",
                    d.fire_time.format("%H:%MZ"),
                    d.backup_type
                ));
                record(&mut job, &d);
            }
        }
        // Wall 02:00 does not exist: it merges with 03:00 CEST (01:00Z) into one fire.
        assert_eq!(
            seen,
            [
                "23:00Z incremental",
                "00:00Z incremental",
                "01:00Z incremental",
                "02:00Z full",
                "03:00Z incremental"
            ]
        );
    }

    #[test]
    fn daily_in_istanbul_and_utc() {
        let f = Fixture::new("30 2 * * 0", "30 2 * * *");
        let job = f.job(
            Some("2026-10-24T23:30:00Z"),
            Some("2026-10-24T23:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        // Istanbul is UTC+3 all year: Mon 2026-10-26 02:30 = 2026-10-25T23:30Z, unaffected by EU DST.
        assert_eq!(
            next_fire(&job, utc("2026-10-25T12:00:00Z"), Istanbul),
            Some((utc("2026-10-25T23:30:00Z"), Incremental))
        );
        assert_eq!(
            due_now(&job, utc("2026-10-25T23:30:00Z"), Istanbul, CatchUp::Once),
            due(
                Incremental,
                Trigger::Scheduled,
                "2026-10-25T23:30:00Z",
                &[],
                true
            )
        );
        let job = f.job(
            Some("2026-10-25T02:30:00Z"),
            Some("2026-10-25T02:30:00Z"),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_fire(&job, utc("2026-10-25T12:00:00Z"), Tz::UTC),
            Some((utc("2026-10-26T02:30:00Z"), Incremental))
        );
    }

    #[test]
    fn next_fire_respects_last_fire_in_the_future() {
        // After a clock step backwards, fires already recorded are not offered again.
        let f = Fixture::new("0 4 * * *", "0 * * * *");
        let job = f.job(
            Some("2026-06-01T02:00:00Z"),
            Some("2026-06-01T05:00:00Z"),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            next_fire(&job, utc("2026-06-01T03:30:00Z"), Tz::UTC),
            Some((utc("2026-06-01T04:00:00Z"), Full))
        );
        assert_eq!(
            due_now(&job, utc("2026-06-01T04:00:00Z"), Tz::UTC, CatchUp::Once)
                .map(|d| d.backup_type),
            Some(Full)
        );
        let only_inc = JobSchedule {
            entries: vec![(Incremental, &f.inc)],
            ..job.clone()
        };
        assert_eq!(
            next_fire(&only_inc, utc("2026-06-01T03:30:00Z"), Tz::UTC),
            Some((utc("2026-06-01T06:00:00Z"), Incremental))
        );
        assert_eq!(
            due_now(
                &only_inc,
                utc("2026-06-01T04:00:00Z"),
                Tz::UTC,
                CatchUp::Once
            ),
            None
        );
    }
}
