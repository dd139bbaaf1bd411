//! The daemon as operators run it: the real binaries, a real socket, real PostgreSQL clusters,
//! a fake NOTIFY_SOCKET; signals, reloads, crashes.

mod common;

use common::daemon::Setup;
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// A dump job on a server that is not running: the daemon must start regardless.
const IDLE_JOB: &str = r#"
[postgres]
url = "postgresql://postgres@127.0.0.1:1/postgres"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local"]
"#;

/// Every message until `until`, with the time it was received.
fn notify_messages(sock: &UnixDatagram, until: Instant) -> Vec<(Instant, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).to_string(),
            ));
        }
    }
    out
}

/// The local wall time (Europe/Berlin, the test catalogue's zone) of an RFC 3339 time.
fn berlin_hh_mm(value: &serde_json::Value) -> String {
    let t: chrono::DateTime<chrono::Utc> = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap();
    t.with_timezone(&chrono_tz::Europe::Berlin)
        .format("%H:%M")
        .to_string()
}

fn wait_message(sock: &UnixDatagram, needle: &str, limit: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while start.elapsed() < limit {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.contains(needle) {
                return (msg, start.elapsed());
            }
        }
    }
    panic!("no {needle} on NOTIFY_SOCKET within {limit:?}");
}

#[test]
fn systemd_notify_ready_status_watchdog_reload_and_stop() {
    let setup = Setup::new();
    setup.write_catalogue(IDLE_JOB);
    let notify_path = setup.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let daemon = setup.start_daemon_with(&[
        ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
    ]);
    let (ready, after) = wait_message(&notify, "READY=1", Duration::from_secs(10));
    eprintln!(
        "READY=1 {after:?} after the socket check began; {:?} after spawn",
        daemon.started.elapsed()
    );
    assert!(
        ready.contains("STATUS="),
        "READY carries a status line: {ready:?}"
    );
    assert!(
        ready.contains("next: db-dump"),
        "status names the next run: {ready:?}"
    );
    wait_message(&notify, "WATCHDOG=1", Duration::from_secs(5));
    // WATCHDOG_USEC=1 s: a ping at least every second (the daemon aims at every 0.5 s).
    let window = notify_messages(&notify, Instant::now() + Duration::from_millis(2500));
    let pings: Vec<Instant> = window
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 3,
        "WATCHDOG=1 every 0.5 s expected, got {} in 2.5 s: {window:?}",
        pings.len()
    );
    let longest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        longest < Duration::from_secs(1),
        "a watchdog gap of {longest:?} exceeds WATCHDOG_USEC: {window:?}"
    );
    for (_, m) in &window {
        for line in m.lines() {
            assert!(
                line == "WATCHDOG=1" || line.starts_with("STATUS="),
                "an idle daemon sends only pings and status lines: {m:?}"
            );
        }
    }

    // A valid reload: RELOADING=1 then READY=1.
    daemon.signal(Signal::SIGHUP);
    wait_message(&notify, "RELOADING=1", Duration::from_secs(5));
    wait_message(&notify, "READY=1", Duration::from_secs(5));

    // An invalid catalogue is rejected, the old one kept: the new one moves db-dump to 05:30
    // (valid) and adds a job with a broken schedule; neither may show.
    let good = std::fs::read_to_string(setup.catalogue_path()).unwrap();
    let before = setup.ctl_json(&["status"]);
    assert_eq!(berlin_hh_mm(&before["jobs"][0]["next_run"]), "02:00");
    std::fs::write(
        setup.catalogue_path(),
        good.replace("schedule = \"0 2 * * *\"", "schedule = \"30 5 * * *\"")
            + r#"
[[job]]
name = "only-in-new"
kind = "postgres-dump"
schedule = "not cron"
databases = ["app"]
repositories = ["local"]
"#,
    )
    .unwrap();
    daemon.signal(Signal::SIGHUP);
    wait_message(&notify, "RELOADING=1", Duration::from_secs(5));
    let (after_reject, _) = wait_message(&notify, "READY=1", Duration::from_secs(5));
    assert!(
        after_reject.contains("STATUS=") && after_reject.contains("next: db-dump"),
        "READY after the rejection carries the old status: {after_reject:?}"
    );
    let status = setup.ctl_json(&["status"]);
    let names: Vec<&str> = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db-dump"], "old catalogue still in force: {status}");
    assert_eq!(
        berlin_hh_mm(&status["jobs"][0]["next_run"]),
        "02:00",
        "old schedule still in force: {status}"
    );
    assert_eq!(
        status["jobs"][0]["next_run"], before["jobs"][0]["next_run"],
        "{status}"
    );
    std::fs::write(setup.catalogue_path(), &good).unwrap();
    let log = daemon.log_text();
    assert!(
        log.contains("reload rejected"),
        "the rejection is logged:\n{log}"
    );

    // The reload over the socket reports the errors.
    std::fs::write(
        setup.catalogue_path(),
        good.replace(
            "databases = [\"app\"]",
            "databases = [\"app\"]\nunknown-key = true",
        ),
    )
    .unwrap();
    let out = setup.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown-key"));
    std::fs::write(setup.catalogue_path(), &good).unwrap();

    let status = daemon.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let rest = notify_messages(&notify, Instant::now() + Duration::from_millis(300));
    let stopping = rest
        .iter()
        .position(|(_, m)| m.lines().any(|l| l == "STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1 before the exit: {rest:?}"));
    assert!(
        rest[stopping].1.contains("STATUS=stopping"),
        "STOPPING=1 says why: {rest:?}"
    );
    assert!(
        !rest[stopping..].iter().any(|(_, m)| m.contains("READY=1")),
        "no READY=1 after STOPPING=1: {rest:?}"
    );
    assert!(!setup.socket().exists(), "socket removed on exit");
}

#[test]
fn stopping_is_notified_on_sigterm() {
    let setup = Setup::new();
    setup.write_catalogue(IDLE_JOB);
    let notify_path = setup.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let daemon = setup.start_daemon_with(&[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    wait_message(&notify, "READY=1", Duration::from_secs(10));
    daemon.signal(Signal::SIGTERM);
    wait_message(&notify, "STOPPING=1", Duration::from_secs(10));
}

#[test]
fn check_prints_every_error_and_exits_non_zero() {
    let setup = Setup::new();
    let path = setup.write_catalogue(
        r#"
[postgres]
url = "postgresql://postgres:secret@127.0.0.1:5432/postgres"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "61 2 * * *"
databases = ["app"]
repositories = ["nowhere"]
colour = "blue"
"#,
    );
    let out = Command::new(common::daemon::DAEMON)
        .arg("--catalogue")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(1));
    for needle in ["password", "nowhere", "colour", "61 2 * * *"] {
        assert!(stderr.contains(needle), "--check names {needle}:\n{stderr}");
    }
    let good = setup.write_catalogue(IDLE_JOB);
    let out = Command::new(common::daemon::DAEMON)
        .arg("--catalogue")
        .arg(&good)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_state_db_that_cannot_be_opened_stops_the_daemon() {
    let setup = Setup::new();
    setup.write_catalogue(IDLE_JOB);
    std::fs::create_dir_all(setup.path("state")).unwrap();
    std::fs::write(setup.path("state/state.db"), vec![0x5a; 8192]).unwrap();
    let out = Command::new(common::daemon::DAEMON)
        .arg("--catalogue")
        .arg(setup.catalogue_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("state.db"),
        "the error names the state DB:\n{stderr}"
    );
    assert!(!setup.socket().exists());
}

#[test]
fn ctl_without_a_daemon_exits_2_and_says_where_it_looked() {
    let setup = Setup::new();
    setup.write_catalogue(IDLE_JOB);
    let out = setup.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("control.sock"), "{stderr}");
}

#[test]
fn keygen_writes_0600_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    let key = setup.path("restore.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&key).unwrap();
    let out = Command::new(common::daemon::CTL)
        .args(["keygen", "--output"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn manual_runs_of_unknown_or_wal_jobs_are_refused() {
    let setup = Setup::new();
    setup.write_catalogue(IDLE_JOB);
    let daemon = setup.start_daemon();
    let out = setup.ctl(&["run", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let out = setup.ctl(&["run", "db-dump", "--incremental"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("always full"));
    // A run against a server that is down fails with a clear error and no backup.
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let runs = setup.ctl_json(&["runs"]);
    assert_eq!(runs[0]["status"], "failed", "{runs}");
    assert!(
        runs[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("127.0.0.1"),
        "{runs}"
    );
    let backups = setup.ctl_json(&["backups"]);
    assert_eq!(backups.as_array().map(|a| a.len()), Some(0));
    assert!(daemon.stop().success());
}

#[test]
fn a_repository_that_cannot_be_written_fails_the_run_and_names_it() {
    let setup = Setup::new();
    setup.write_catalogue(IDLE_JOB);
    // The repository's root is a plain file: nothing can be written below it (even as root).
    std::fs::write(setup.path("repo"), b"in the way").unwrap();
    let daemon = setup.start_daemon();
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let runs = setup.ctl_json(&["runs"]);
    assert_eq!(runs[0]["status"], "failed", "{runs}");
    let error = runs[0]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("local") && error.contains("repo"),
        "the error names the repository: {error}"
    );
    assert!(daemon.stop().success());
}
