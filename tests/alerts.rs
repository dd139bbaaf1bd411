//! Alerts end to end (docs/alerts.md): a real HTTP listener in the test receives the webhook
//! events of a real daemon; real PostgreSQL for the dump job; the manual clock for freshness and
//! objectives. The HMAC header is checked by recomputing it here.

mod common;
use common::webhook::{Listener, Received};

use bdc_backup::catalogue::Catalogue;
use bdc_backup::clock::{Clock, ManualClock};
use bdc_backup::daemon::{DaemonOptions, RunningDaemon, start};
use chrono::{DateTime, TimeZone, Utc};
use common::daemon::{DAEMON, Setup, wait_for};
use common::objstores::free_port;
use common::pg::PgCluster;
use hmac::{Hmac, Mac};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn secret_file(setup: &Setup) -> std::path::PathBuf {
    let path = setup.path("webhook.secret");
    std::fs::write(&path, "s3cret-for-hmac\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// run-failed once for a failing dump (a database that does not exist), nothing for the next
/// failure, run-recovered once after the fix; signed bodies; the command sink gets the same JSON;
/// ping-url sees /start, /fail with the error and the success ping.
#[test]
fn a_failing_dump_alerts_once_and_recovers_once_through_webhook_command_and_ping() {
    let cluster = PgCluster::start();
    let setup = Setup::new();
    let listener = Listener::start(0, true);
    let secret = secret_file(&setup);
    let stdin_log = setup.path("command-stdin.log");
    let env_log = setup.path("command-env.log");
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "{url}"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 1 1 *"
databases = ["appdb"]
globals = false
repositories = ["local"]
ping-url = "{ping}"

[[alert]]
name = "ops"
kind = "webhook"
url = "{hook}"
secret-file = "{secret}"
events = ["run-failed", "run-recovered"]
timeout = "5s"

[[alert]]
name = "pager"
kind = "command"
command = ["/bin/sh", "-c", "cat >> '{stdin}'; printf '%s %s %s\n' \"$BDC_EVENT\" \"$BDC_JOB\" \"$BDC_SEVERITY\" >> '{env}'"]
events = ["run-failed", "run-recovered"]
"#,
        url = cluster.url("postgres"),
        ping = listener.url("/ping/abc"),
        hook = listener.url("/hook"),
        secret = secret.display(),
        stdin = stdin_log.display(),
        env = env_log.display(),
    ));
    let daemon = setup.start_daemon();

    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert!(
        !out.status.success(),
        "the dump of a missing database fails"
    );
    let failed = listener.wait_event("/hook", "run-failed", 1);
    let body = &failed[0];
    assert_eq!(body.method, "POST");
    let v = body.json();
    assert_eq!(v["version"], 1);
    assert_eq!(v["job"], "db-dump");
    assert_eq!(v["severity"], "critical");
    assert_eq!(v["reminder"], false);
    assert!(v["run_id"].is_i64(), "{v}");
    assert!(v["summary"].as_str().unwrap().contains("appdb"), "{v}");
    for k in ["host", "objective", "at", "details"] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    // The signature, recomputed from the secret file and the raw body.
    assert_eq!(
        body.header("X-Bdc-Signature"),
        Some(format!("sha256={}", hmac_hex(b"s3cret-for-hmac", &body.body)).as_str())
    );

    // The second failure: no second run-failed.
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert!(!out.status.success());

    // The fix: the database exists now.
    cluster.create_database("appdb");
    cluster.psql(
        "appdb",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);",
    );
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert!(out.status.success(), "log:\n{}", daemon.log_text());
    let recovered = listener.wait_event("/hook", "run-recovered", 1);
    assert_eq!(recovered[0].json()["severity"], "info");
    // The run-recovered came after the second failure was evaluated: still one run-failed.
    assert_eq!(listener.events("/hook", "run-failed").len(), 1);
    assert_eq!(listener.events("/hook", "run-recovered").len(), 1);

    // The command sink: the same JSON on stdin, the event in its environment.
    let lines: Vec<serde_json::Value> =
        wait_for(Duration::from_secs(30), "two command deliveries", || {
            let text = std::fs::read_to_string(&stdin_log).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("one JSON body per line"))
                .collect();
            (lines.len() >= 2).then_some(lines)
        });
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        failed[0].json(),
        "the command got the webhook's body"
    );
    assert_eq!(lines[1], recovered[0].json());
    let env = std::fs::read_to_string(&env_log).unwrap();
    assert_eq!(
        env.lines().collect::<Vec<_>>(),
        vec!["run-failed db-dump critical", "run-recovered db-dump info"]
    );

    // ping-url: /start for each run, /fail with the error for the failures, the success ping.
    let count_in = |pings: &[Received], m: &str, path: &str| {
        pings
            .iter()
            .filter(|r| r.method == m && r.path == path)
            .count()
    };
    let pings = wait_for(Duration::from_secs(30), "every ping", || {
        let p: Vec<Received> = listener
            .received()
            .into_iter()
            .filter(|r| r.path.starts_with("/ping/abc"))
            .collect();
        (count_in(&p, "GET", "/ping/abc/start") >= 3
            && count_in(&p, "POST", "/ping/abc/fail") >= 2
            && count_in(&p, "GET", "/ping/abc") >= 1)
            .then_some(p)
    });
    let count = |m: &str, path: &str| count_in(&pings, m, path);
    assert_eq!(count("GET", "/ping/abc/start"), 3, "{pings:?}");
    assert_eq!(count("POST", "/ping/abc/fail"), 2, "{pings:?}");
    assert_eq!(count("GET", "/ping/abc"), 1, "{pings:?}");
    let fail = pings.iter().find(|r| r.path == "/ping/abc/fail").unwrap();
    let text = String::from_utf8_lossy(&fail.body);
    assert!(text.contains("appdb"), "the error is the body: {text}");

    // `alerts`: both sinks delivered, nothing open (a row is marked delivered once the receiver
    // has answered, just after the listener or the command saw it).
    let report = wait_for(
        Duration::from_secs(30),
        "both sinks marked delivered",
        || {
            let r = setup.ctl_json(&["alerts"]);
            r["sinks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["delivered"] == 2)
                .then_some(r)
        },
    );
    assert_eq!(report["open"].as_array().unwrap().len(), 0, "{report}");
    for sink in report["sinks"].as_array().unwrap() {
        assert_eq!(sink["delivered"], 2, "{report}");
        assert_eq!(sink["pending"], 0, "{report}");
    }
    daemon.stop();
}

/// Deliveries are retried while the listener is down and delivered once it is up, also across a
/// daemon restart (the outbox is in the state DB).
#[test]
fn deliveries_wait_in_the_outbox_while_the_listener_is_down_also_across_a_restart() {
    let setup = Setup::new();
    let port = free_port();
    setup.write_catalogue(&format!(
        r#"
[[alert]]
name = "ops"
kind = "webhook"
url = "http://127.0.0.1:{port}/hook"
timeout = "2s"
"#
    ));
    let daemon = setup.start_daemon();
    let out = setup.ctl(&["alerts", "test"]);
    assert!(out.status.success());
    // Nobody listens: the attempt fails and shows in `alerts`.
    let report = wait_for(Duration::from_secs(30), "a failed attempt", || {
        let r = setup.ctl_json(&["alerts"]);
        (r["sinks"][0]["last_error"].is_string() && r["sinks"][0]["pending"] == 1).then_some(r)
    });
    assert!(
        report["recent"][0]["attempts"].as_u64().unwrap() >= 1,
        "{report}"
    );
    // The listener comes up: the retry delivers it.
    let listener = Listener::start(port, true);
    let got = listener.wait_event("/hook", "alert-test", 1);
    assert_eq!(got[0].json()["severity"], "info");
    drop(listener);

    // Down again; a second test event; the daemon stops before it could deliver.
    let out = setup.ctl(&["alerts", "test", "--sink", "ops"]);
    assert!(out.status.success());
    wait_for(Duration::from_secs(30), "a failed attempt", || {
        let r = setup.ctl_json(&["alerts"]);
        (r["sinks"][0]["pending"] == 1 && r["recent"][0]["attempts"].as_u64() >= Some(1))
            .then_some(())
    });
    assert!(daemon.stop().success());
    let listener = Listener::start(port, true);
    let daemon = setup.start_daemon();
    let got = listener.wait_event("/hook", "alert-test", 1);
    assert_eq!(got.len(), 1);
    let report = wait_for(Duration::from_secs(30), "both delivered", || {
        let r = setup.ctl_json(&["alerts"]);
        (r["sinks"][0]["delivered"] == 2).then_some(r)
    });
    assert_eq!(report["sinks"][0]["pending"], 0);
    // An unknown sink is refused with the list.
    let out = setup.ctl(&["alerts", "test", "--sink", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sinks: ops"));
    daemon.stop();
}

/// A sink that never answers delays nothing: the run still finishes while the delivery hangs,
/// and `alerts` shows the sink's timeout.
#[test]
fn a_sink_that_never_answers_delays_no_run_and_shows_in_alerts() {
    let setup = Setup::new();
    let listener = Listener::start(0, false);
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "hello").unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 1 1 *"
repositories = ["local"]

[[alert]]
name = "slow"
kind = "webhook"
url = "{hook}"
timeout = "3s"
"#,
        src = src.display(),
        hook = listener.url("/hook"),
    ));
    let daemon = setup.start_daemon();
    for _ in 0..5 {
        assert!(setup.ctl(&["alerts", "test"]).status.success());
    }
    wait_for(Duration::from_secs(30), "the first request held", || {
        (!listener.received().is_empty()).then_some(())
    });
    // The delivery hangs; the run goes on and finishes.
    let out = setup.ctl(&["run", "uploads", "--wait"]);
    assert!(out.status.success(), "log:\n{}", daemon.log_text());
    let report = wait_for(Duration::from_secs(30), "the timeout in alerts", || {
        let r = setup.ctl_json(&["alerts"]);
        r["sinks"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within 3s"))
            .then_some(r)
    });
    assert!(
        report["sinks"][0]["pending"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let text = String::from_utf8_lossy(&setup.ctl(&["alerts"]).stdout).to_string();
    assert!(
        text.contains("slow") && text.contains("no answer within 3s"),
        "{text}"
    );
    // `usage` reports the local repository's filesystem.
    let usage = setup.ctl_json(&["usage"]);
    let cap = &usage["capacity"][0];
    assert_eq!(cap["repository"], "local");
    assert!(cap["free-bytes"].as_u64().unwrap() > 0, "{usage}");
    daemon.stop();
}

/// `--check` refuses a sink URL with credentials and does not echo them.
#[test]
fn check_refuses_credentials_in_a_sink_url_without_echoing_them() {
    let setup = Setup::new();
    let path = setup.write_catalogue(
        r#"
[[alert]]
name = "ops"
kind = "webhook"
url = "https://alice:pa55w0rd-xyz@hooks.example.net/backup"
events = ["run-failed", "stael"]
"#,
    );
    let out = std::process::Command::new(DAEMON)
        .arg("--catalogue")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("alert[0] \"ops\".url"), "{text}");
    assert!(text.contains("holds credentials"), "{text}");
    assert!(
        !text.contains("pa55w0rd") && !text.contains("alice"),
        "{text}"
    );
    assert!(text.contains("unknown event \"stael\""), "{text}");
    assert!(text.contains("did you mean \"stale\"?"), "{text}");
}

fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
}

async fn boot(setup: &Setup, clock: Arc<ManualClock>) -> RunningDaemon {
    let catalogue = Catalogue::load(&setup.catalogue_path()).expect("valid catalogue");
    let options = DaemonOptions {
        catalogue: setup.catalogue_path(),
        clock: clock as Arc<dyn Clock>,
    };
    start(options, catalogue).await.expect("daemon starts")
}

async fn settle(daemon: &RunningDaemon) {
    daemon.evaluate_alerts().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Under the manual clock: a job that never runs turns stale after max-age and alerts once (a
/// sink with `remind` gets a reminder); an objective with no restorable point is breached from
/// the start, alerts once, and after a backup objective-met once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_objectives_under_the_manual_clock() {
    let setup = Setup::new();
    let listener = Listener::start(0, true);
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "hello").unwrap();
    setup.write_catalogue(&format!(
        r#"
[objectives.files]
jobs = ["uploads"]
rpo = "1d"

[[job]]
name = "never"
kind = "files"
path = "{src}"
full = "0 4 1 1 *"
repositories = ["local"]
max-age = "1h"

[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 1 1 *"
repositories = ["local"]
max-age = "30d"

[[alert]]
name = "a"
kind = "webhook"
url = "{a}"

[[alert]]
name = "b"
kind = "webhook"
url = "{b}"
events = ["stale", "fresh"]
jobs = ["never"]
remind = "6h"
"#,
        src = src.display(),
        a = listener.url("/a"),
        b = listener.url("/b"),
    ));
    let clock = Arc::new(ManualClock::new(utc(2026, 6, 1, 10, 0)));
    let daemon = boot(&setup, clock.clone()).await;
    settle(&daemon).await;

    // Breached from the start: no restorable point.
    let breached = wait_async(|| listener.events("/a", "objective-breached")).await;
    assert_eq!(breached[0].json()["objective"], "files");
    assert!(
        listener.events("/a", "stale").is_empty(),
        "not stale before max-age"
    );

    clock.set(utc(2026, 6, 1, 10, 50));
    settle(&daemon).await;
    assert!(
        listener.events("/a", "stale").is_empty(),
        "50 minutes < max-age 1h"
    );

    clock.set(utc(2026, 6, 1, 11, 1));
    settle(&daemon).await;
    let stale = wait_async(|| listener.events("/a", "stale")).await;
    assert_eq!(stale[0].json()["job"], "never");
    wait_async(|| listener.events("/b", "stale")).await;

    // Hours later, still stale: sink a hears nothing more, sink b gets its reminder after 6 h.
    clock.set(utc(2026, 6, 1, 15, 0));
    settle(&daemon).await;
    clock.set(utc(2026, 6, 1, 17, 2));
    settle(&daemon).await;
    let b = wait_async(|| {
        let s = listener.events("/b", "stale");
        if s.len() >= 2 { s } else { Vec::new() }
    })
    .await;
    assert_eq!(b[0].json()["reminder"], false);
    assert_eq!(b[1].json()["reminder"], true);
    assert_eq!(
        listener.events("/a", "stale").len(),
        1,
        "state changes only"
    );
    assert_eq!(listener.events("/a", "objective-breached").len(), 1);

    // status shows the objective with both figures and targets.
    let status = setup.ctl_json(&["status"]);
    let o = &status["objectives"][0];
    assert_eq!(o["name"], "files");
    assert_eq!(o["state"], "breached");
    assert_eq!(o["target_rpo_seconds"], 86400);
    assert!(
        o["rpo_seconds"].is_null() && o["rto_seconds"].is_null(),
        "{o}"
    );
    let never = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "never")
        .unwrap();
    assert_eq!(never["stale"], true);
    let human = String::from_utf8_lossy(&setup.ctl(&["status"]).stdout).to_string();
    assert!(
        human.contains("OBJECTIVE") && human.contains("breached"),
        "{human}"
    );
    assert!(human.contains("none (target 1d)"), "{human}");

    // A backup of the objective's job: objective-met once.
    let out = setup.ctl(&["run", "uploads", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let met = wait_async(|| listener.events("/a", "objective-met")).await;
    assert_eq!(met[0].json()["objective"], "files");
    settle(&daemon).await;
    clock.set(utc(2026, 6, 1, 18, 0));
    settle(&daemon).await;
    assert_eq!(listener.events("/a", "objective-met").len(), 1);
    assert_eq!(listener.events("/a", "objective-breached").len(), 1);
    let status = setup.ctl_json(&["status"]);
    assert_eq!(status["objectives"][0]["state"], "met");
    assert!(status["objectives"][0]["rpo_seconds"].as_i64().unwrap() < 86400);

    // `alerts` lists the open stale state of `never`.
    let report = setup.ctl_json(&["alerts"]);
    let open = report["open"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{report}");
    assert_eq!(open[0]["event"], "stale");
    assert_eq!(open[0]["job"], "never");
    daemon.stop().await;
}

/// Polls `f` until it returns a non-empty list (the deliveries are asynchronous).
async fn wait_async<T>(mut f: impl FnMut() -> Vec<T>) -> Vec<T> {
    for _ in 0..600 {
        let v = f();
        if !v.is_empty() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for a delivery");
}

/// A WAL job without `max-age` is stale after the cluster's `archive_timeout` × 3 (read from the
/// server), not after the 15-minute fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_job_defaults_to_three_times_archive_timeout() {
    let cluster = PgCluster::start_with("archive_timeout = 60\n");
    let setup = Setup::new();
    let listener = Listener::start(0, true);
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "{url}"

[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["local"]

[[alert]]
name = "a"
kind = "webhook"
url = "{a}"
events = ["stale"]
"#,
        url = cluster.url("postgres"),
        a = listener.url("/a"),
    ));
    let clock = Arc::new(ManualClock::new(utc(2026, 6, 1, 10, 0)));
    let daemon = boot(&setup, clock.clone()).await;
    settle(&daemon).await;
    let status = setup.ctl_json(&["status"]);
    assert_eq!(
        status["jobs"][0]["wal"]["archive_timeout_seconds"], 60,
        "{status}"
    );
    clock.set(utc(2026, 6, 1, 10, 2));
    settle(&daemon).await;
    assert_eq!(setup.ctl_json(&["status"])["jobs"][0]["stale"], false);
    clock.set(utc(2026, 6, 1, 10, 4));
    settle(&daemon).await;
    assert_eq!(setup.ctl_json(&["status"])["jobs"][0]["stale"], true);
    let stale = wait_async(|| listener.events("/a", "stale")).await;
    assert_eq!(stale[0].json()["job"], "wal");
    daemon.stop().await;
}
