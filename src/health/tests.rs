use super::*;
use chrono::TimeZone;
use std::path::Path;

fn catalogue(extra: &str) -> Catalogue {
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let text = format!(
        r#"
[daemon]
timezone = "UTC"
[postgres]
url = "postgresql://bdc_backup@localhost:5432/bdc_db"
data-directory = "/tmp"
[encryption]
recipients = ["{recipient}"]
[repository.local]
url = "file:///tmp/bdc-health-test"
[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local"]
[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["local"]
[[job]]
name = "uploads"
kind = "files"
path = "/tmp"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = ["local"]
max-age = "3h"
{extra}
"#
    );
    crate::catalogue::parse_str(&text, Path::new("/tmp/c.toml"), &[]).expect("valid")
}

fn t(d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0).unwrap()
}

#[test]
fn default_max_age_is_twice_the_longest_gap_and_wal_uses_archive_timeout() {
    let c = catalogue("");
    let now = t(1, 12);
    assert_eq!(
        max_age(&c, c.job("db-dump").unwrap(), None, now),
        Some((Duration::from_secs(2 * 86400), true))
    );
    // Weekly full + daily incremental: the fires together are a day apart.
    assert_eq!(
        max_age(&c, c.job("uploads").unwrap(), None, now),
        Some((Duration::from_secs(3 * 3600), false))
    );
    assert_eq!(
        max_age(&c, c.job("wal").unwrap(), None, now),
        Some((DEFAULT_WAL_MAX_AGE, true))
    );
    assert_eq!(
        max_age(
            &c,
            c.job("wal").unwrap(),
            Some(Duration::from_secs(60)),
            now
        ),
        Some((Duration::from_secs(180), true))
    );
}

#[test]
fn a_job_that_never_succeeded_turns_stale_from_when_it_was_first_seen() {
    let c = catalogue("");
    let mut facts = Facts::default();
    facts.jobs.insert(
        "db-dump".into(),
        JobFacts {
            first_seen: Some(t(1, 0)),
            ..JobFacts::default()
        },
    );
    let at = |facts: &Facts, now| {
        jobs(&c, facts, now)
            .into_iter()
            .find(|h| h.job == "db-dump")
            .unwrap()
            .freshness
    };
    assert_eq!(at(&facts, t(2, 23)), Freshness::Fresh);
    assert_eq!(at(&facts, t(3, 1)), Freshness::Stale);
    facts.jobs.get_mut("db-dump").unwrap().newest_success = Some(t(3, 0));
    assert_eq!(at(&facts, t(3, 1)), Freshness::Fresh);
}

#[test]
fn rpo_is_breached_without_a_point_then_measured_from_the_newest_one() {
    let c = catalogue(
        r#"
[objectives.database]
jobs = ["db-dump"]
rpo = "1d"
"#,
    );
    let mut facts = Facts::default();
    let o = |facts: &Facts, now| objectives(&c, facts, now).remove(0);
    let first = o(&facts, t(1, 0));
    assert_eq!(first.state, ObjectiveState::Breached);
    assert_eq!(first.rpo_seconds, None);
    facts.jobs.insert(
        "db-dump".into(),
        JobFacts {
            newest_backup: Some(t(1, 2)),
            ..JobFacts::default()
        },
    );
    let met = o(&facts, t(1, 12));
    assert_eq!(met.state, ObjectiveState::Met);
    assert_eq!(met.rpo_seconds, Some(10 * 3600));
    assert_eq!(met.target_rpo_seconds, Some(86400));
    assert_eq!(o(&facts, t(2, 3)).state, ObjectiveState::Breached);
}

#[test]
fn rto_is_unknown_without_a_drill_then_breached_after_one_verify_interval_and_scaled() {
    let c = catalogue(
        r#"
[objectives.database]
jobs = ["db-dump"]
rto = "1h"
"#,
    );
    let mut facts = Facts::default();
    facts.jobs.insert(
        "db-dump".into(),
        JobFacts {
            first_seen: Some(t(1, 0)),
            newest_backup: Some(t(1, 2)),
            newest_backup_bytes: 2000,
            ..JobFacts::default()
        },
    );
    let o = |facts: &Facts, now| objectives(&c, facts, now).remove(0);
    let early = o(&facts, t(1, 12));
    assert_eq!(early.state, ObjectiveState::Unknown);
    assert_eq!(early.rto_seconds, None);
    assert_eq!(o(&facts, t(2, 1)).state, ObjectiveState::Breached);
    facts.jobs.get_mut("db-dump").unwrap().drill = Some(DrillFact {
        at: t(1, 5),
        restore_seconds: 1000.0,
        bytes: 1000,
    });
    // 1000 s for 1000 bytes, the backup is 2000 bytes now: 2000 s > 1 h? No: met.
    let drilled = o(&facts, t(2, 1));
    assert_eq!(drilled.rto_seconds, Some(2000));
    assert_eq!(drilled.state, ObjectiveState::Met);
    facts.jobs.get_mut("db-dump").unwrap().newest_backup_bytes = 4000;
    assert_eq!(o(&facts, t(2, 1)).state, ObjectiveState::Breached);
}

#[test]
fn a_wal_job_counts_as_restorable_only_with_a_committed_base_backup() {
    let c = catalogue(
        r#"
[[job]]
name = "db"
kind = "postgres-base"
full = "0 4 * * 0"
wal-job = "wal"
repositories = ["local"]
[objectives.pitr]
jobs = ["db", "wal"]
rpo = "5m"
"#,
    );
    let mut facts = Facts::default();
    facts.jobs.insert(
        "wal".into(),
        JobFacts {
            newest_wal: Some(t(1, 11)),
            ..JobFacts::default()
        },
    );
    assert_eq!(objectives(&c, &facts, t(1, 12))[0].newest_point, None);
    facts.jobs.insert(
        "db".into(),
        JobFacts {
            newest_backup: Some(t(1, 4)),
            ..JobFacts::default()
        },
    );
    let o = objectives(&c, &facts, t(1, 12)).remove(0);
    assert_eq!(o.newest_point, Some(t(1, 11)));
    assert_eq!(o.rpo_seconds, Some(3600));
}

#[test]
fn human_durations() {
    assert_eq!(human(59), "59s");
    assert_eq!(human(300), "5m");
    assert_eq!(human(3600 + 300), "1h 5m");
    assert_eq!(human(2 * 86400), "2d");
}
