//! Prometheus metrics end to end (docs/metrics.md): a real PostgreSQL cluster archiving WAL
//! through the real daemon, a dump job that succeeds and one that fails; `GET /metrics` on the
//! real listener and `bdc-backupctl metrics` pass `promtool check metrics`, and their values match
//! `status --json`, `runs --json` and `backups --json`. The metrics file is replaced atomically.

mod common;

use common::daemon::{Setup, wait_for};
use common::objstores::free_port;
use common::pg::PgCluster;
use common::wal::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `GET path` over a plain TCP connection: (status code, headers lowercased, body).
fn http_get(port: u16, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics-listen");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    // Content-Length framing (hyper answers a full body with it).
    (status, headers, body.to_string())
}

/// `promtool check metrics` on `text`: (exit success, output).
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (tests/setup installs the prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sample lines: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_string(), v.parse::<f64>().expect("a number"))
        })
        .collect()
}

fn get(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {s:#?}"))
}

fn epoch(v: &serde_json::Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time")).unwrap();
    t.timestamp_micros() as f64 / 1e6
}

#[test]
fn metrics_pass_promtool_and_match_status() {
    let setup = Setup::new();
    let port = free_port();
    let cluster = PgCluster::start_with(&archive_conf(&setup.socket()));
    cluster.create_database("app");
    cluster.load_sample("app", 1);
    let file = setup.path("textfile/bdc_backup.prom");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    setup.write_catalogue(&format!(
        r#"
{wal}
[[job]]
name = "db"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local"]
max-age = "1d"

[[job]]
name = "broken"
kind = "postgres-dump"
schedule = "0 3 * * *"
databases = ["does_not_exist"]
repositories = ["local"]
max-age = "1s"

[objectives.nightly]
jobs = ["db"]
rpo = "1d"

[objectives.database]
jobs = ["db"]
rpo = "1d"
rto = "1h"

[objectives.lost]
jobs = ["broken"]
rpo = "1h"

[[alert]]
name = "log"
kind = "command"
command = ["/bin/sh", "-c", "cat >> '{events}'"]

[[alert]]
name = "dead"
kind = "webhook"
url = "http://127.0.0.1:{dead}/hook"
timeout = "1s"
"#,
        wal = wal_job(&cluster, &["local"]),
        events = setup.path("events.log").display(),
        dead = free_port(),
    ));
    let text = std::fs::read_to_string(setup.catalogue_path()).unwrap().replace(
        "shutdown-timeout = \"20s\"",
        &format!(
            "shutdown-timeout = \"20s\"\nmetrics-listen = \"127.0.0.1:{port}\"\nmetrics-file = \"{}\"",
            file.display()
        ),
    );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());

    assert!(setup.ctl(&["run", "db", "--wait"]).status.success());
    assert!(setup.ctl(&["run", "db", "--wait"]).status.success());
    assert_eq!(
        setup.ctl(&["run", "broken", "--wait"]).status.code(),
        Some(1)
    );
    let mut last = String::new();
    for _ in 0..2 {
        last = switch_wal(&cluster);
    }
    wait_archived(&cluster, &last);
    // `broken` (never succeeded, max-age 1 s) turns stale a second after the daemon first saw it.
    wait_for(Duration::from_secs(30), "broken stale", || {
        let s = setup.ctl_json(&["status"]);
        s["jobs"]
            .as_array()?
            .iter()
            .any(|j| j["name"] == "broken" && j["stale"] == true)
            .then_some(())
    });

    // The listener: text format 0.0.4 with its Content-Type; 404 elsewhere.
    let (code, headers, body) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let (ok, lint) = promtool(&body);
    assert!(ok, "promtool check metrics:\n{lint}\n{body}");
    assert_eq!(http_get(port, "/").0, 404);
    assert_eq!(http_get(port, "/metrics/x").0, 404);

    // The ctl prints the same families, also accepted by promtool.
    let out = setup.ctl(&["metrics"]);
    assert!(out.status.success());
    let ctl_text = String::from_utf8(out.stdout).unwrap();
    let (ok, lint) = promtool(&ctl_text);
    assert!(ok, "promtool on ctl metrics:\n{lint}");

    let s = samples(&body);
    let status = setup.ctl_json(&["status"]);
    let job = |name: &str| {
        status["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap()
            .clone()
    };
    let db = job("db");
    let version = status["version"].as_str().unwrap();
    assert_eq!(
        get(
            &s,
            &format!("bdc_backup_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );
    let success_at = epoch(&db["last_success"]["finished_at"]);
    let got = get(
        &s,
        r#"bdc_backup_job_last_success_timestamp_seconds{job="db",kind="postgres-dump"}"#,
    );
    assert!((got - success_at).abs() < 1e-3, "{got} vs {success_at}");
    assert_eq!(
        get(
            &s,
            r#"bdc_backup_job_last_run_success{job="db",kind="postgres-dump"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &s,
            r#"bdc_backup_job_last_run_success{job="broken",kind="postgres-dump"}"#
        ),
        0.0
    );
    assert!(!s.contains_key(
        r#"bdc_backup_job_last_success_timestamp_seconds{job="broken",kind="postgres-dump"}"#
    ));
    assert_eq!(
        get(&s, r#"bdc_backup_job_last_stored_bytes{job="db"}"#),
        db["last_success"]["bytes_stored"].as_f64().unwrap()
    );
    let duration =
        epoch(&db["last_success"]["finished_at"]) - epoch(&db["last_success"]["started_at"]);
    assert!((get(&s, r#"bdc_backup_job_last_duration_seconds{job="db"}"#) - duration).abs() < 1e-3);
    assert_eq!(
        get(&s, r#"bdc_backup_job_stale{job="db"}"#),
        if db["stale"] == true { 1.0 } else { 0.0 }
    );

    // Freshness: `broken` never succeeded and has a 1 s max-age: stale, as `status` says.
    assert_eq!(job("broken")["stale"], true, "{status}");
    assert_eq!(get(&s, r#"bdc_backup_job_stale{job="broken"}"#), 1.0);
    assert_eq!(job("db")["stale"], false);
    assert_eq!(get(&s, r#"bdc_backup_job_stale{job="db"}"#), 0.0);
    for j in status["jobs"].as_array().unwrap() {
        let name = j["name"].as_str().unwrap();
        assert_eq!(
            get(&s, &format!("bdc_backup_job_stale{{job=\"{name}\"}}")),
            if j["stale"] == true { 1.0 } else { 0.0 },
            "{name}"
        );
    }

    // Objectives, against `status --json`'s objectives: met (nightly), unknown (database: no
    // drill yet), breached (lost: no restorable point). The RPO grows with the time: the status
    // read between two scrapes lies between their figures.
    let objective = |name: &str| {
        status["objectives"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("objective {name} in {status}"))
            .clone()
    };
    let (nightly, database, lost) = (
        objective("nightly"),
        objective("database"),
        objective("lost"),
    );
    assert_eq!(
        (&nightly["state"], &database["state"], &lost["state"]),
        (&"met".into(), &"unknown".into(), &"breached".into()),
        "{status}"
    );
    for o in [&nightly, &database, &lost] {
        let name = o["name"].as_str().unwrap();
        let key = |family: &str| format!("bdc_backup_{family}{{objective=\"{name}\"}}");
        assert_eq!(
            get(&s, &key("objective_met")),
            if o["state"] == "met" { 1.0 } else { 0.0 },
            "{name}"
        );
        for (family, field) in [
            ("objective_target_rpo_seconds", "target_rpo_seconds"),
            ("objective_target_rto_seconds", "target_rto_seconds"),
            ("objective_rto_seconds", "rto_seconds"),
        ] {
            assert_eq!(
                s.get(&key(family)).copied(),
                o[field].as_f64(),
                "{family} of {name}: {o}"
            );
        }
        if o["rpo_seconds"].is_null() {
            assert!(!s.contains_key(&key("objective_rpo_seconds")), "{name}");
        }
    }
    assert_eq!(
        get(
            &s,
            r#"bdc_backup_objective_target_rpo_seconds{objective="nightly"}"#
        ),
        86400.0
    );
    assert_eq!(
        get(
            &s,
            r#"bdc_backup_objective_target_rto_seconds{objective="database"}"#
        ),
        3600.0
    );
    let rpo_key = r#"bdc_backup_objective_rpo_seconds{objective="nightly"}"#;
    let before = get(&s, rpo_key);
    let between = setup.ctl_json(&["status"])["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "nightly")
        .unwrap()["rpo_seconds"]
        .as_f64()
        .unwrap();
    let after = get(&samples(&http_get(port, "/metrics").2), rpo_key);
    assert!(
        before <= between && between <= after,
        "{before} {between} {after}"
    );
    assert!(after < 86400.0);

    // Alert deliveries, against `alerts --json`: the command sink delivered every event it got
    // (run-failed, stale, objective-breached: at least three); the dead webhook only failed.
    let report = wait_for(Duration::from_secs(60), "the command sink drained", || {
        let r = setup.ctl_json(&["alerts", "--limit", "1000"]);
        let log = r["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "log")
            .cloned()
            .unwrap();
        let dead_tried = r["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["sink"] == "dead" && d["attempts"].as_u64() >= Some(1));
        (log["pending"] == 0 && log["delivered"].as_u64() >= Some(3) && dead_tried).then_some(r)
    });
    let m = samples(&http_get(port, "/metrics").2);
    let after_report = setup.ctl_json(&["alerts", "--limit", "1000"]);
    let sink = |r: &serde_json::Value, name: &str| {
        r["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .cloned()
            .unwrap()
    };
    let delivered = |sink_name: &str| {
        format!("bdc_backup_alert_deliveries_total{{result=\"delivered\",sink=\"{sink_name}\"}}")
    };
    let failed = |sink_name: &str| {
        format!("bdc_backup_alert_deliveries_total{{result=\"failed\",sink=\"{sink_name}\"}}")
    };
    assert_eq!(
        get(&m, &delivered("log")),
        sink(&report, "log")["delivered"].as_f64().unwrap()
    );
    assert_eq!(get(&m, &failed("log")), 0.0);
    assert_eq!(
        get(
            &m,
            r#"bdc_backup_alert_deliveries_total{result="gave-up",sink="log"}"#
        ),
        0.0
    );
    let lines = std::fs::read_to_string(setup.path("events.log")).unwrap();
    assert_eq!(
        lines.lines().filter(|l| !l.trim().is_empty()).count() as f64,
        get(&m, &delivered("log")),
        "one line per delivered event"
    );
    assert_eq!(get(&m, &delivered("dead")), 0.0);
    let attempts = |r: &serde_json::Value| -> f64 {
        r["recent"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["sink"] == "dead")
            .map(|d| d["attempts"].as_f64().unwrap())
            .sum()
    };
    let dead_failed = get(&m, &failed("dead"));
    assert!(
        attempts(&report) <= dead_failed && dead_failed <= attempts(&after_report),
        "{dead_failed} failed attempts vs alerts: {report} {after_report}"
    );
    assert_eq!(sink(&after_report, "dead")["delivered"], 0);

    // Runs by status, from `runs --json`.
    let runs = setup.ctl_json(&["runs", "--limit", "1000"]);
    for name in ["db", "broken"] {
        for st in ["succeeded", "failed", "interrupted"] {
            let n = runs
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["job"] == name && r["status"] == st)
                .count();
            assert_eq!(
                get(
                    &s,
                    &format!("bdc_backup_runs_total{{job=\"{name}\",status=\"{st}\"}}")
                ),
                n as f64,
                "{name} {st}"
            );
        }
    }
    assert_eq!(
        get(&s, r#"bdc_backup_runs_total{job="db",status="succeeded"}"#),
        2.0
    );
    assert_eq!(
        get(&s, r#"bdc_backup_runs_total{job="broken",status="failed"}"#),
        1.0
    );

    // Stored bytes per repository, from `backups --json`.
    let backups = setup.ctl_json(&["backups", "--job", "db"]);
    let bytes: f64 = backups
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bytes_stored"].as_f64().unwrap())
        .sum();
    assert!(bytes > 0.0);
    assert_eq!(
        get(
            &s,
            r#"bdc_backup_repository_stored_bytes{job="db",repository="local"}"#
        ),
        bytes
    );

    // WAL: archived count and newest time as `status` shows them.
    let wal = job("wal");
    assert_eq!(
        get(&s, r#"bdc_backup_wal_archived_total{job="wal"}"#),
        wal["wal"]["archived_count"].as_f64().unwrap()
    );
    assert!(get(&s, r#"bdc_backup_wal_archived_total{job="wal"}"#) >= 2.0);
    let wal_at = epoch(&wal["wal"]["last_archived_at"]);
    assert!(
        (get(
            &s,
            r#"bdc_backup_wal_last_archived_timestamp_seconds{job="wal"}"#
        ) - wal_at)
            .abs()
            < 1e-3
    );
    // No backup ids or timestamps as labels.
    for key in s.keys() {
        assert!(
            !key.contains("backup_id") && !key.contains("run_id"),
            "{key}"
        );
    }

    // The metrics file: written at start, then replaced by rename (a new inode) every minute;
    // a reader meanwhile only ever sees whole files.
    use std::os::unix::fs::MetadataExt;
    let first = wait_for(Duration::from_secs(30), "the metrics file", || {
        std::fs::metadata(&file).ok()
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (file, stop) = (file.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let text = std::fs::read_to_string(&file).expect("the file is always there");
                assert!(
                    text.starts_with("# HELP")
                        && text.ends_with('\n')
                        && text.contains("bdc_backup_build_info"),
                    "a partial file: {text:?}"
                );
                reads += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            reads
        })
    };
    let replaced = wait_for(Duration::from_secs(90), "the metrics file replaced", || {
        std::fs::metadata(&file)
            .ok()
            .filter(|m| m.ino() != first.ino())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(replaced.mode() & 0o777, 0o644);
    let text = std::fs::read_to_string(&file).unwrap();
    let (ok, lint) = promtool(&text);
    assert!(ok, "promtool on the file:\n{lint}");
    assert_eq!(
        samples(&text).get(r#"bdc_backup_runs_total{job="db",status="succeeded"}"#),
        Some(&2.0)
    );
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    drop(daemon);
}

#[test]
fn a_metrics_listen_that_cannot_bind_stops_the_start_with_a_clear_error() {
    let setup = Setup::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    setup.write_catalogue("");
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "shutdown-timeout = \"20s\"",
            &format!("shutdown-timeout = \"20s\"\nmetrics-listen = \"127.0.0.1:{port}\""),
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    let out = Command::new(common::daemon::DAEMON)
        .arg("--catalogue")
        .arg(setup.catalogue_path())
        .env("BDC_BACKUP_LOG", "stderr")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("metrics-listen 127.0.0.1:{port}: cannot listen")),
        "{err}"
    );

    // A bad address is a catalogue error naming the key.
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            &format!("metrics-listen = \"127.0.0.1:{port}\""),
            "metrics-listen = \"localhost\"",
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    let out = Command::new(common::daemon::DAEMON)
        .arg("--catalogue")
        .arg(setup.catalogue_path())
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        err.contains("daemon.metrics-listen") && err.contains("not an address and port"),
        "{err}"
    );
    drop(taken);
}
