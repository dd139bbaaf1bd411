//! The scheduler inside a real (in-process) daemon on a manual clock: DST, catch-up after downtime,
//! catch-up = "skip". The job's server is down, so every run fails fast: what is checked is which
//! runs the scheduler starts, when, and with which trigger.

mod common;

use bdc_backup::catalogue::Catalogue;
use bdc_backup::clock::{Clock, ManualClock};
use bdc_backup::daemon::{DaemonOptions, RunningDaemon, start};
use bdc_backup::model::{RunRecord, RunStatus, Trigger};
use bdc_backup::state::StateDb;
use chrono::{DateTime, TimeZone, Utc};
use common::daemon::Setup;
use common::files_under;
use std::sync::Arc;
use std::time::{Duration, Instant};

const JOB: &str = r#"
[postgres]
url = "postgresql://postgres@127.0.0.1:1/postgres"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "30 2 * * *"
databases = ["app"]
repositories = ["local"]
"#;

fn utc(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap()
}

async fn boot(setup: &Setup, clock: Arc<ManualClock>) -> RunningDaemon {
    let catalogue = Catalogue::load(&setup.catalogue_path()).expect("valid catalogue");
    let options = DaemonOptions {
        catalogue: setup.catalogue_path(),
        clock: clock as Arc<dyn Clock>,
    };
    start(options, catalogue).await.expect("daemon starts")
}

async fn runs(setup: &Setup) -> Vec<RunRecord> {
    let state = StateDb::open(&setup.path("state/state.db")).await.unwrap();
    let mut runs = state.runs(None, 1000).await.unwrap();
    runs.reverse();
    runs
}

/// Waits until the run count reaches `n` and none is running; then a little longer, to catch extras.
async fn settle(setup: &Setup, daemon: &RunningDaemon, n: usize) -> Vec<RunRecord> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        daemon.wake();
        let r = runs(setup).await;
        if r.len() >= n && r.iter().all(|r| r.status != RunStatus::Running) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            return runs(setup).await;
        }
        assert!(Instant::now() < deadline, "expected {n} runs, have {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_job_fires_once_across_the_autumn_dst_change_and_catches_up_once() {
    let setup = Setup::new();
    let text = setup_catalogue(&setup, "once");
    let _ = text;
    // 2026-10-25 00:00 CEST; 02:30 happens twice that night (00:30Z CEST and 01:30Z CET).
    let clock = Arc::new(ManualClock::new(utc(2026, 10, 24, 22, 0, 0)));
    let daemon = boot(&setup, clock.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs(&setup).await.len(), 0, "nothing due at start");

    clock.set(utc(2026, 10, 25, 0, 29, 59));
    daemon.wake();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs(&setup).await.len(), 0, "not before 02:30 CEST");

    clock.set(utc(2026, 10, 25, 0, 30, 1));
    let r = settle(&setup, &daemon, 1).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].trigger, Trigger::Scheduled);
    assert_eq!(r[0].status, RunStatus::Failed, "the server is down");
    assert!(
        r[0].error.as_deref().unwrap_or("").contains("127.0.0.1"),
        "{:?}",
        r[0].error
    );

    // The second 02:30 (CET) does not fire again.
    clock.set(utc(2026, 10, 25, 1, 45, 0));
    daemon.wake();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(runs(&setup).await.len(), 1, "an ambiguous time fires once");
    daemon.stop().await;

    // Down for three days: one catch-up run, not three.
    clock.set(utc(2026, 10, 28, 9, 0, 0));
    let daemon = boot(&setup, clock.clone()).await;
    let r = settle(&setup, &daemon, 2).await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[1].trigger, Trigger::CatchUp);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_skip_records_a_skipped_run() {
    let setup = Setup::new();
    setup_catalogue(&setup, "skip");
    let clock = Arc::new(ManualClock::new(utc(2027, 3, 27, 12, 0, 0)));
    let daemon = boot(&setup, clock.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.stop().await;
    // Down across the spring-forward night (02:30 does not exist on 2027-03-28) and the next.
    clock.set(utc(2027, 3, 29, 12, 0, 0));
    let daemon = boot(&setup, clock.clone()).await;
    let r = settle(&setup, &daemon, 1).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].status, RunStatus::Skipped);
    assert!(
        r[0].error.as_deref().unwrap_or("").contains("skip"),
        "{:?}",
        r[0].error
    );
    daemon.stop().await;
}

/// The clock jumps while the daemon runs: back an hour right after a run (the fire already handled
/// must not run twice), then forward by more than a day (the missed fires catch up once, not once
/// per fire), then on to the next day's fire as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_back_and_forward_run_nothing_twice_and_lose_nothing() {
    let setup = Setup::new();
    setup_catalogue(&setup, "once");
    // Europe/Berlin in June (CEST): 02:30 local is 00:30Z.
    let clock = Arc::new(ManualClock::new(utc(2026, 6, 10, 0, 0, 0)));
    let daemon = boot(&setup, clock.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs(&setup).await.len(), 0, "nothing due at start");

    clock.set(utc(2026, 6, 10, 0, 30, 1));
    let r = settle(&setup, &daemon, 1).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].trigger, Trigger::Scheduled);

    // Back an hour, then forward past the same fire again: it was handled, nothing runs.
    clock.set(utc(2026, 6, 9, 23, 30, 1));
    daemon.wake();
    tokio::time::sleep(Duration::from_millis(400)).await;
    clock.set(utc(2026, 6, 10, 0, 30, 30));
    daemon.wake();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(runs(&setup).await.len(), 1, "the fire at 02:30 ran twice");

    // Forward by a day and a half: the fires of 06-11 and 06-12 02:30 were missed; one catch-up.
    clock.set(utc(2026, 6, 12, 12, 0, 0));
    let r = settle(&setup, &daemon, 2).await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[1].trigger, Trigger::CatchUp);
    daemon.wake();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        runs(&setup).await.len(),
        2,
        "missed fires caught up more than once"
    );

    // The next fire is on time again.
    clock.set(utc(2026, 6, 13, 0, 30, 1));
    let r = settle(&setup, &daemon, 3).await;
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[2].trigger, Trigger::Scheduled);
    daemon.stop().await;
}

fn setup_catalogue(setup: &Setup, catch_up: &str) -> String {
    setup.write_catalogue(JOB);
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "max-concurrent-runs = 2",
            &format!("max-concurrent-runs = 2\ncatch-up = \"{catch_up}\""),
        );
    std::fs::write(setup.catalogue_path(), &text).unwrap();
    text
}

/// Issue "cloud stores": one of two repositories down for a day of scheduled runs. Every hourly
/// run commits to the first repository and is `partial`; once the second is back, every queued
/// copy lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_repository_down_for_a_day_catches_up_when_back() {
    let cluster = common::pg::PgCluster::start();
    cluster.create_database("app");
    cluster.load_sample("app", 1);
    let setup = Setup::new();
    let second = setup.path("second");
    std::fs::write(&second, b"down").unwrap();
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "{url}"

[repository.second]
url = "file://{second}"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 * * * *"
databases = ["app"]
repositories = ["local", "second"]
"#,
        url = cluster.url("app"),
        second = second.display()
    ));
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "shutdown-timeout = \"20s\"",
            "shutdown-timeout = \"20s\"\nreplica-retry = \"1m\"",
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();

    let start = utc(2026, 11, 26, 0, 30, 0);
    let clock = Arc::new(ManualClock::new(start));
    let daemon = boot(&setup, clock.clone()).await;
    for hour in 1..=24 {
        clock.set(
            start + chrono::Duration::minutes(30 + 60 * (hour - 1)) + chrono::Duration::seconds(1),
        );
        let r = settle(&setup, &daemon, hour as usize).await;
        assert_eq!(r.len(), hour as usize, "one run per hour: {r:?}");
    }
    let r = runs(&setup).await;
    assert!(
        r.iter()
            .all(|r| r.status == RunStatus::Partial && r.trigger == Trigger::Scheduled),
        "{r:?}"
    );
    let state = StateDb::open(&setup.path("state/state.db")).await.unwrap();
    assert_eq!(state.backups(None, Some("local")).await.unwrap().len(), 24);
    assert_eq!(state.backups(None, Some("second")).await.unwrap().len(), 0);
    assert_eq!(
        state
            .replica_status("db-dump", "second")
            .await
            .unwrap()
            .pending,
        24
    );

    // The second repository is back; the replicator's next attempts land every copy.
    std::fs::remove_file(&second).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut t = clock.now();
    loop {
        // Half-hour steps: the replicator's backoff (at most 1 h) runs out; new hourly runs go
        // on too and land directly.
        t += chrono::Duration::minutes(30);
        clock.set(t);
        daemon.wake();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pending = state
            .replica_status("db-dump", "second")
            .await
            .unwrap()
            .pending;
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} replicas still pending"
        );
    }
    let landed = state.backups(None, Some("second")).await.unwrap().len();
    assert!(landed >= 24, "every backup of the outage landed: {landed}");
    assert_eq!(
        landed,
        state.backups(None, Some("local")).await.unwrap().len()
    );
    assert_eq!(
        state
            .replica_status("db-dump", "second")
            .await
            .unwrap()
            .pending,
        0
    );
    daemon.stop().await;
}

/// Issue 11: a replica whose repository fails permanently (a local path that is a regular file:
/// ENOTDIR). On the daemon's manual clock: the run's attempt, then probes with the documented
/// doubling `replica-retry` backoff (far fewer than the replicator's wake-ups over 50 minutes);
/// `status` and the replica-lagging alert say "permanent" and name the repository and the reason;
/// once the path is fixed a catalogue reload lands the copy at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_replica_error_backs_off_for_the_whole_repository_and_recovers_after_a_fix() {
    let setup = Setup::new();
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.txt"), b"some bytes to copy\n").unwrap();
    let offsite = setup.path("offsite");
    std::fs::write(&offsite, b"a file, not a folder").unwrap();
    setup.write_catalogue(&format!(
        r#"
[repository.offsite]
url = "file://{offsite}"

[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 1 1 *"
repositories = ["local", "offsite"]
"#,
        offsite = offsite.display(),
        src = src.display(),
    ));
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "shutdown-timeout = \"20s\"",
            "shutdown-timeout = \"20s\"\nreplica-retry = \"1s\"",
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    let t0 = utc(2026, 11, 26, 10, 0, 0);
    let clock = Arc::new(ManualClock::new(t0));
    let daemon = boot(&setup, clock.clone()).await;
    let state = StateDb::open(&setup.path("state/state.db")).await.unwrap();
    let far = t0 + chrono::Duration::days(365);
    let queued = || async {
        let tasks = state.due_replicas(far).await.unwrap();
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        tasks[0].clone()
    };

    let out = tokio::task::block_in_place(|| setup.ctl(&["run", "uploads", "--full", "--wait"]));
    assert_eq!(out.status.code(), Some(1), "partial: the replica failed");
    let run = &runs(&setup).await[0];
    assert_eq!(run.status, RunStatus::Partial, "{run:?}");
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains("offsite") && error.contains("permanent"),
        "the run says the replica error is permanent: {error}"
    );
    let task = queued().await;
    assert!(task.permanent, "{task:?}");
    assert_eq!(task.attempts, 1);
    assert_eq!(
        task.next_attempt_at,
        t0 + chrono::Duration::seconds(1),
        "the documented replica-retry backoff (1 s here), not a flat hour"
    );

    // 50 minutes in 100 s steps: the replicator wakes at each step, but the waits between probes
    // double (1 s, 2 s, 4 s, ... at most 1 h), so it probes far less often than it wakes.
    for step in 1..=30 {
        clock.set(t0 + chrono::Duration::seconds(100 * step));
        daemon.wake();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let task = queued().await;
    assert!(
        (2..=14).contains(&task.attempts),
        "probed with a doubling backoff (not once per wake-up, not never): {task:?}"
    );
    assert!(task.permanent, "{task:?}");
    let status = tokio::task::block_in_place(|| setup.ctl(&["status"]));
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        text.contains("replica `offsite`: 1 pending, PERMANENT error")
            && text.contains(&offsite.display().to_string()),
        "status shows the permanent error and its path:\n{text}"
    );
    let json = tokio::task::block_in_place(|| setup.ctl_json(&["status"]));
    assert_eq!(
        json["jobs"][0]["repositories"][1]["replica"]["permanent"], true,
        "{json}"
    );

    // Over an hour behind: the replica-lagging alert says why.
    clock.set(t0 + chrono::Duration::minutes(61));
    daemon.evaluate_alerts().await;
    let alerts = tokio::task::block_in_place(|| setup.ctl_json(&["alerts"]));
    let lagging = alerts["open"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["event"] == "replica-lagging")
        .unwrap_or_else(|| panic!("replica-lagging open: {alerts}"))
        .clone();
    let summary = lagging["summary"].as_str().unwrap();
    assert!(
        summary.contains("repository offsite: permanent error")
            && summary.contains(&offsite.display().to_string()),
        "the alert names the repository, says permanent and gives the reason: {summary}"
    );

    // Fixed: the path is a folder now. A reload retries the held-back copy at once.
    std::fs::remove_file(&offsite).unwrap();
    std::fs::create_dir(&offsite).unwrap();
    daemon.reload().await.expect("the catalogue reloads");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.due_replicas(far).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the copy did not land after the fix"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state.backups(None, Some("offsite")).await.unwrap().len(), 1);
    let st = state.replica_status("uploads", "offsite").await.unwrap();
    assert_eq!((st.pending, st.permanent), (0, false));
    daemon.stop().await;
}

/// Issue 11: the cleanup of uncommitted objects on the daemon's manual clock. An orphan (the
/// objects a killed run leaves: a backup folder without its commit record) survives the hourly
/// `retention-schedule` pass 5 h later (the grace is 6 h: twice the longest run, at least 6 h)
/// and is gone after the pass 7 h later; the committed backup's objects are never removed,
/// not even 20 days on. Each pass is known to have decided the orphan when a 2-day-old staging
/// file of the same repository (removed after the backups, in the same pass) is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_an_orphan_only_after_the_grace_and_never_a_committed_backup() {
    let setup = Setup::new();
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.txt"), b"kept forever\n").unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 1 1 *"
repositories = ["local"]
"#,
        src = src.display(),
    ));
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "shutdown-timeout = \"20s\"",
            "shutdown-timeout = \"20s\"\nretention-schedule = \"0 * * * *\"",
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    let t0 = Utc::now();
    let clock = Arc::new(ManualClock::new(t0));
    let daemon = boot(&setup, clock.clone()).await;
    let out = tokio::task::block_in_place(|| setup.ctl(&["run", "uploads", "--full", "--wait"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = runs(&setup).await[0]
        .backup_id
        .clone()
        .expect("a backup id");
    let repo = setup.path("repo");
    let committed_dir = repo.join("backups/uploads").join(&id);
    let committed = files_under(&committed_dir);
    assert!(
        committed.iter().any(|p| p.ends_with("backup.json")) && committed.len() > 2,
        "{committed:?}"
    );
    // The orphan: the same objects under another id, without the commit record.
    let orphan_dir = repo.join("backups/uploads").join(format!("{id}x"));
    for p in committed.iter().filter(|p| !p.ends_with("backup.json")) {
        let to = orphan_dir.join(p.strip_prefix(&committed_dir).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(p, &to).unwrap();
    }
    let orphan = files_under(&orphan_dir);
    assert!(!orphan.is_empty());
    let marker = |name: &str| {
        let path = repo.join(".staging").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"left by a killed upload").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        path
    };
    let pass_at = |hours: i64, marker: std::path::PathBuf| {
        let clock = clock.clone();
        async move {
            clock.set(t0 + chrono::Duration::hours(hours));
            let deadline = Instant::now() + Duration::from_secs(30);
            while marker.exists() {
                assert!(Instant::now() < deadline, "no cleanup pass at +{hours} h");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    pass_at(5, marker("a")).await;
    assert_eq!(files_under(&orphan_dir), orphan, "removed before the grace");
    assert_eq!(files_under(&committed_dir), committed);

    pass_at(7, marker("b")).await;
    assert!(
        files_under(&orphan_dir).is_empty(),
        "the orphan outlived the grace: {:?}",
        files_under(&orphan_dir)
    );
    assert_eq!(files_under(&committed_dir), committed);

    pass_at(24 * 20, marker("c")).await;
    assert_eq!(
        files_under(&committed_dir),
        committed,
        "a committed backup lost objects"
    );
    let out = tokio::task::block_in_place(|| setup.ctl_json(&["backups"]));
    assert_eq!(out.as_array().map(Vec::len), Some(1), "{out}");
    daemon.stop().await;
}
