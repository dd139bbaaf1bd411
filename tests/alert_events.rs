//! The remaining alert events end to end (docs/alerts.md): `wal-failing` / `wal-recovered` for a
//! real cluster whose pushes fail on a full tmpfs repository and then succeed, and `capacity-low`
//! for a local repository on a small tmpfs filling at the measured growth. A real HTTP listener
//! receives the webhook bodies; each event comes once when the state turns bad, not again while
//! it stays bad, and its recovery once.

mod common;
use common::tmpfs::Tmpfs;
use common::webhook::Listener;

use bdc_backup::catalogue::Catalogue;
use bdc_backup::clock::{Clock, ManualClock};
use bdc_backup::daemon::{DaemonOptions, RunningDaemon, start};
use chrono::Utc;
use common::daemon::{Setup, wait_for};
use common::pg::PgCluster;
use common::wal::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The shared webhook listener (tests/common/webhook.rs) at one path, its bodies as JSON.
struct Hook(Listener);

impl Hook {
    fn start() -> Hook {
        Hook(Listener::start(0, true))
    }

    fn url(&self) -> String {
        self.0.url("/hook")
    }

    fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.0
            .events("/hook", event)
            .iter()
            .map(|r| r.json())
            .collect()
    }

    fn wait_event(&self, event: &str) -> serde_json::Value {
        self.0.wait_event("/hook", event, 1)[0].json()
    }
}

fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn check_body(v: &serde_json::Value, event: &str, severity: &str) {
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["event"], event, "{v}");
    assert_eq!(v["severity"], severity, "{v}");
    assert_eq!(v["reminder"], false, "{v}");
    for k in ["host", "at", "details", "objective", "run_id"] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
}

/// wal-failing once when PostgreSQL's archiver fails (the repository's tmpfs is full), not again
/// on the next evaluation, wal-recovered once when space is back and the segment is archived.
/// A small files job on another repository is run to make the daemon evaluate (after each run).
#[test]
fn wal_failing_once_while_pushes_fail_and_wal_recovered_once_after() {
    let setup = Setup::new();
    let repo = Tmpfs::mount(&setup.path("repo"), "8m");
    let listener = Hook::start();
    let cluster = PgCluster::start_with(&archive_conf(&setup.socket()));
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), "tick").unwrap();
    setup.write_catalogue(&format!(
        r#"{wal}
[repository.other]
url = "file://{other}"

[[job]]
name = "tick"
kind = "files"
path = "{src}"
full = "0 4 1 1 *"
repositories = ["other"]

[[alert]]
name = "ops"
kind = "webhook"
url = "{hook}"
events = ["wal-failing", "wal-recovered"]
timeout = "5s"
"#,
        wal = wal_job(&cluster, &["local"]),
        other = setup.path("other").display(),
        src = src.display(),
        hook = listener.url(),
    ));
    let filler = repo.fill();
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let tick = || {
        let out = setup.ctl(&["run", "tick", "--wait"]);
        assert!(out.status.success(), "log:\n{}", daemon.log_text());
    };
    // The repository is full from the start: the first push of the segment fails.
    let (_, failed, _) = archiver(&cluster);
    let seg = switch_wal(&cluster);
    wait_for(Duration::from_secs(60), "failed pushes", || {
        (archiver(&cluster).1 > failed).then_some(())
    });
    tick();
    let v = listener.wait_event("wal-failing");
    check_body(&v, "wal-failing", "critical");
    assert_eq!(v["job"], "wal");
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains("wal") && summary.contains("archiver failed"),
        "{v}"
    );
    assert!(
        v["details"]["last_failed_wal"]
            .as_str()
            .is_some_and(|w| w.len() == 24),
        "the failed segment's name: {v}"
    );
    // Still failing: no second event.
    wait_for(Duration::from_secs(60), "another failed push", || {
        (archiver(&cluster).1 >= failed + 2).then_some(())
    });
    tick();
    let status = setup.ctl_json(&["alerts"]);
    assert!(
        status["open"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["event"] == "wal-failing" && a["job"] == "wal"),
        "{status}"
    );
    // Space is back: PostgreSQL's retry archives the segment.
    std::fs::remove_file(&filler).unwrap();
    wait_archived(&cluster, &seg);
    tick();
    let r = listener.wait_event("wal-recovered");
    check_body(&r, "wal-recovered", "info");
    assert_eq!(r["job"], "wal");
    assert!(
        r["summary"].as_str().unwrap().contains("works again"),
        "{r}"
    );
    tick();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        listener.events("wal-failing").len(),
        1,
        "state changes only"
    );
    assert_eq!(
        listener.events("wal-recovered").len(),
        1,
        "state changes only"
    );
    let report = setup.ctl_json(&["alerts"]);
    assert!(
        !report["open"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["event"] == "wal-failing"),
        "{report}"
    );
    assert!(daemon.stop().success());
}

async fn boot(setup: &Setup, clock: Arc<ManualClock>) -> RunningDaemon {
    let catalogue = Catalogue::load(&setup.catalogue_path()).expect("valid catalogue");
    let options = DaemonOptions {
        catalogue: setup.catalogue_path(),
        clock: clock as Arc<dyn Clock>,
    };
    start(options, catalogue).await.expect("daemon starts")
}

/// capacity-low once when a local repository on a small tmpfs is full in under 14 days at the
/// growth of its backups, not again while it stays so (capacity is looked at every 15 minutes
/// of the daemon's clock: the manual clock moves on), and it closes silently when the
/// filesystem grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_low_once_for_a_filling_tmpfs_and_closes_silently() {
    let setup = Setup::new();
    let repo = Tmpfs::mount(&setup.path("repo"), "8m");
    let listener = Hook::start();
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 1 1 *"
repositories = ["local"]

[[alert]]
name = "ops"
kind = "webhook"
url = "{hook}"
events = ["capacity-low"]
"#,
        src = src.display(),
        hook = listener.url(),
    ));
    let t0 = Utc::now();
    let clock = Arc::new(ManualClock::new(t0));
    let daemon = boot(&setup, clock.clone()).await;
    let settle = |minutes: i64| {
        let clock = clock.clone();
        let daemon = &daemon;
        async move {
            clock.set(t0 + chrono::Duration::minutes(minutes));
            daemon.evaluate_alerts().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    settle(1).await;
    assert!(
        listener.events("capacity-low").is_empty(),
        "nothing grows yet"
    );
    // Three backups of 1.5 MiB of new incompressible data each: ~4.5 MiB of the 8 MiB in a week.
    for i in 0..3u64 {
        std::fs::write(src.join("data"), incompressible(3 << 19, i + 7)).unwrap();
        let setup = &setup;
        let out = tokio::task::block_in_place(|| setup.ctl(&["run", "uploads", "--wait"]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    settle(20).await;
    let usage = tokio::task::block_in_place(|| setup.ctl_json(&["usage"]));
    let cap = &usage["capacity"][0];
    let days = cap["days-until-full"]
        .as_f64()
        .expect("a days-until-full figure");
    assert!(days < 14.0, "{usage}");
    let v = wait_for(Duration::from_secs(30), "a capacity-low event", || {
        listener.events("capacity-low").into_iter().next()
    });
    check_body(&v, "capacity-low", "warning");
    assert!(v["job"].is_null(), "{v}");
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains("repository local") && summary.contains("days"),
        "{v}"
    );
    assert_eq!(v["details"]["repository"], "local", "{v}");
    assert!(v["details"]["free_bytes"].as_u64().is_some(), "{v}");
    // Still low 20 minutes later: no second event.
    settle(40).await;
    assert_eq!(
        listener.events("capacity-low").len(),
        1,
        "state changes only"
    );
    let open = tokio::task::block_in_place(|| setup.ctl_json(&["alerts"]));
    assert!(
        open["open"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["event"] == "capacity-low"),
        "{open}"
    );
    // The filesystem grows: the state closes without an event.
    repo.grow("4g");
    settle(60).await;
    let open = tokio::task::block_in_place(|| setup.ctl_json(&["alerts"]));
    assert!(
        !open["open"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["event"] == "capacity-low"),
        "{open}"
    );
    assert_eq!(listener.events("capacity-low").len(), 1, "closes silently");
    daemon.stop().await;
}

/// replica-lagging once when a copy to the job's second repository (unreachable: its parent is a
/// regular file) has waited over 1 h of the daemon's clock, not again an hour later, and
/// replica-recovered once when the repository is reachable and the copy landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_lagging_once_while_unreachable_and_recovered_once_after() {
    let setup = Setup::new();
    let listener = Hook::start();
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("data.bin"), incompressible(200_000, 3)).unwrap();
    let offline = setup.path("offline");
    std::fs::write(&offline, b"not a folder").unwrap();
    setup.write_catalogue(&format!(
        r#"
[repository.replica]
url = "file://{replica}"

[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 1 1 *"
repositories = ["local", "replica"]

[[alert]]
name = "ops"
kind = "webhook"
url = "{hook}"
events = ["replica-lagging", "replica-recovered"]
"#,
        replica = offline.join("replica").display(),
        src = src.display(),
        hook = listener.url(),
    ));
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "shutdown-timeout = \"20s\"",
            "shutdown-timeout = \"20s\"\nreplica-retry = \"2s\"",
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    let t0 = Utc::now();
    let clock = Arc::new(ManualClock::new(t0));
    let daemon = boot(&setup, clock.clone()).await;
    let settle = |minutes: i64| {
        let clock = clock.clone();
        let daemon = &daemon;
        async move {
            clock.set(t0 + chrono::Duration::minutes(minutes));
            daemon.evaluate_alerts().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let out = tokio::task::block_in_place(|| setup.ctl(&["run", "uploads", "--wait"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "partial: the replica is unreachable"
    );
    settle(30).await;
    assert!(
        listener.events("replica-lagging").is_empty(),
        "30 minutes is no lag yet"
    );
    settle(65).await;
    let v = listener.wait_event("replica-lagging");
    check_body(&v, "replica-lagging", "warning");
    assert_eq!(v["job"], "uploads", "{v}");
    assert_eq!(v["details"]["repository"], "replica", "{v}");
    assert_eq!(v["details"]["pending"], 1, "{v}");
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains("1 backups wait for repository replica") && summary.contains("offline"),
        "the summary names the repository and its error: {v}"
    );
    settle(130).await;
    assert_eq!(
        listener.events("replica-lagging").len(),
        1,
        "state changes only"
    );

    // Reachable again: the replicator copies the backup (its retries follow the daemon's clock).
    std::fs::remove_file(&offline).unwrap();
    std::fs::create_dir(&offline).unwrap();
    let mut minute = 130;
    wait_for(Duration::from_secs(60), "the replica to land", || {
        minute += 1;
        clock.set(t0 + chrono::Duration::minutes(minute));
        let s = setup.ctl_json(&["status"]);
        (s["jobs"][0]["repositories"][1]["replica"]["pending"] == 0).then_some(())
    });
    settle(minute + 1).await;
    let r = listener.wait_event("replica-recovered");
    check_body(&r, "replica-recovered", "info");
    assert_eq!(r["job"], "uploads", "{r}");
    assert!(r["summary"].as_str().unwrap().contains("caught up"), "{r}");
    settle(minute + 90).await;
    assert_eq!(listener.events("replica-lagging").len(), 1);
    assert_eq!(listener.events("replica-recovered").len(), 1);
    daemon.stop().await;
}

/// Flips one byte in the middle of `path`; returns the original bytes (to put them back).
fn flip_byte(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).expect("read object");
    let mut bytes = original.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(path, &bytes).expect("write object");
    original
}

/// verify-failed once when a verify run finds a flipped byte in a dump's object (the body names
/// the object), not again for the next failing verify, verify-recovered once after the object is
/// repaired and a fresh good backup verifies.
#[test]
fn verify_failed_once_for_a_flipped_byte_and_verify_recovered_once_after() {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.psql(
        "app",
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000);",
    );
    let setup = Setup::new();
    let listener = Hook::start();
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "{url}"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 1 1 *"
databases = ["app"]
globals = false
repositories = ["local"]

[[job]]
name = "check"
kind = "verify"
schedule = "0 5 1 1 *"
jobs = ["db-dump"]
integrity = "full"
drills = false

[[alert]]
name = "ops"
kind = "webhook"
url = "{hook}"
events = ["verify-failed", "verify-recovered", "run-failed"]
"#,
        url = cluster.url("app"),
        hook = listener.url(),
    ));
    let daemon = setup.start_daemon();
    let run = |args: &[&str]| setup.ctl(args).status.code();
    assert_eq!(
        run(&["run", "db-dump", "--wait"]),
        Some(0),
        "{}",
        daemon.log_text()
    );
    assert_eq!(run(&["verify", "--wait"]), Some(0), "{}", daemon.log_text());

    let objects = common::files_under(&setup.path("repo/backups/db-dump"));
    let object = objects
        .iter()
        .find(|p| p.to_string_lossy().contains("/data/"))
        .expect("a dump data object")
        .clone();
    let original = flip_byte(&object);
    let key = object
        .strip_prefix(setup.path("repo"))
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert_eq!(run(&["verify", "--wait"]), Some(1));
    let v = listener.wait_event("verify-failed");
    check_body(&v, "verify-failed", "critical");
    assert_eq!(v["job"], "check", "the verify job: {v}");
    let runs = setup.ctl_json(&["runs", "--job", "check", "--limit", "1"]);
    assert_eq!(v["run_id"], runs[0]["id"], "{v} {runs}");
    let summary = v["summary"].as_str().unwrap();
    assert!(
        summary.contains(&key),
        "the summary names the damaged object {key}: {v}"
    );
    // Still damaged: the second failing verify sends nothing.
    assert_eq!(run(&["verify", "--wait"]), Some(1));

    // The object repaired (verify checks every backup) and a fresh good backup, verified:
    // recovered once.
    std::fs::write(&object, original).unwrap();
    assert_eq!(run(&["run", "db-dump", "--wait"]), Some(0));
    let code = run(&["verify", "--wait"]);
    let r = wait_for(Duration::from_secs(60), "a verify-recovered event", || {
        listener.events("verify-recovered").into_iter().next()
    });
    assert_eq!(code, Some(0));
    check_body(&r, "verify-recovered", "info");
    assert_eq!(r["job"], "check");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        listener.events("verify-failed").len(),
        1,
        "state changes only"
    );
    assert_eq!(listener.events("verify-recovered").len(), 1);
    assert!(
        listener.events("run-failed").is_empty(),
        "a verify job's failure is verify-failed"
    );
    assert!(daemon.stop().success());
}
