//! Restore drills interrupted by a killed daemon (issue 13): the daemon dies by SIGKILL (the
//! test-only kill points `drill-dump-restored` and `drill-cluster-started` of `src/faults.rs`)
//! while the drill database exists or the scratch cluster runs. The next start removes the drill
//! database, stops and removes the scratch cluster and its folder, records the verify run
//! `interrupted`, and the next verify passes, leaving nothing behind again.

mod common;

use common::daemon::Setup;
use common::pg::PgCluster;
use common::physical::{Physical, open_up};
use common::runs::last_run;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

const KILL_AT: &str = "BDC_BACKUP_TEST_KILL_AT";

/// Starts the daemon armed with `point`, asks for `verify ARGS --wait` and expects the daemon to
/// die by SIGKILL at that point.
fn killed_at(setup: &Setup, point: &str, args: &[&str]) {
    let mut daemon = setup.start_daemon_with(&[(KILL_AT, point)]);
    common::wal::open_socket(&setup.socket());
    let mut all = vec!["verify", "--wait"];
    all.extend_from_slice(args);
    let _ = setup.ctl(&all);
    let status = daemon.wait(Duration::from_secs(300));
    let log = daemon.log_text();
    assert_eq!(status.signal(), Some(9), "{point}: {status:?}\n{log}");
    assert!(
        log.contains(&format!("killed at {point} (")),
        "{point}: the daemon died elsewhere\n{log}"
    );
}

/// Entries of the scratch directory that a drill made (`drill-…`).
fn drill_folders(scratch: &Path) -> Vec<String> {
    std::fs::read_dir(scratch)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("drill-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line names `scratch` (a scratch cluster's postmaster and children).
fn processes_under(scratch: &Path) -> Vec<String> {
    let needle = scratch.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if line.contains(&needle) {
                found.push(line);
            }
        }
    }
    found
}

fn drill_databases(cluster: &PgCluster) -> String {
    cluster.psql(
        "postgres",
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'bdc_drill%'",
    )
}

/// The checks `show RUN_ID --json` lists for `run` (from the state DB).
fn shown_checks(setup: &Setup, run: &serde_json::Value) -> Vec<serde_json::Value> {
    let id = run["id"].as_i64().expect("a run id").to_string();
    setup.ctl_json(&["show", &id])["checks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `verify --wait --json ARGS` passes (exit 0) with at least one passing drill check.
fn verify_passes(setup: &Setup, args: &[&str], log: impl Fn() -> String) {
    let mut all = vec!["--json", "verify", "--wait"];
    all.extend_from_slice(args);
    let out = setup.ctl(&all);
    let detail: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{detail:#}\n{}", log());
    let checks = detail["checks"].as_array().cloned().unwrap_or_default();
    assert!(
        checks
            .iter()
            .any(|c| c["kind"] == "drill" && c["result"] == "pass"),
        "no passing drill: {detail:#}"
    );
}

/// Waits until the start-up leftover removal has run (it runs beside the start).
fn settle(check: impl Fn() -> bool, what: &str) {
    common::daemon::wait_for(Duration::from_secs(60), what, || check().then_some(()));
}

#[test]
fn a_daemon_killed_during_a_dump_drill_leaves_nothing_after_the_next_start() {
    let setup = Setup::new();
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.load_sample("app", 1);
    let scratch = setup.path("drills");
    setup.write_catalogue(&format!(
        r#"{dump}
[[job]]
name = "drill"
kind = "verify"
schedule = "0 6 * * *"
jobs = ["db-dump"]
integrity = "off"
scratch-directory = "{scratch}"
{check}"#,
        dump = common::catalogue::dump_job(&cluster.url("app")),
        scratch = scratch.display(),
        check = common::catalogue::USERS_PRESENT_CHECK,
    ));
    let daemon = setup.start_daemon();
    assert!(setup.ctl(&["run", "db-dump", "--wait"]).status.success());
    daemon.stop();

    killed_at(&setup, "drill-dump-restored", &["--job", "db-dump"]);
    // Killed with the drill database restored and not yet dropped.
    let left = drill_databases(&cluster);
    assert!(left.starts_with("bdc_drill"), "no drill database: {left:?}");

    let daemon = setup.start_daemon();
    settle(
        || drill_databases(&cluster).is_empty(),
        "the drill database dropped at start",
    );
    assert!(
        drill_folders(&scratch).is_empty(),
        "{:?}",
        drill_folders(&scratch)
    );
    let run = last_run(&setup, Some("drill"));
    assert_eq!(run["status"], "interrupted", "{run:#}");
    // Checks are recorded as they finish: the restore that passed before the kill is there.
    let shown = shown_checks(&setup, &run);
    assert!(
        shown.iter().any(|c| c["kind"] == "drill"
            && c["result"] == "pass"
            && c["name"]
                .as_str()
                .unwrap()
                .starts_with("restore of `app` into bdc_drill_db_dump_")),
        "the finished restore check of the killed run: {shown:#?}"
    );
    assert!(
        !shown.iter().any(|c| c["kind"] == "sql"),
        "the SQL check had not run: {shown:#?}"
    );

    verify_passes(&setup, &["--job", "db-dump"], || daemon.log_text());
    assert_eq!(drill_databases(&cluster), "");
    assert!(drill_folders(&scratch).is_empty());
    // Production untouched.
    assert_eq!(cluster.psql("app", "SELECT count(*) > 0 FROM users"), "t");
    daemon.stop();
}

fn stop_daemon(p: &mut Physical) {
    if let Some(d) = p.daemon.take() {
        d.stop();
    }
}

#[test]
fn a_daemon_killed_during_a_cluster_drill_leaves_nothing_after_the_next_start() {
    let mut p = Physical::start("60s");
    p.cluster.psql(
        "postgres",
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
    );
    p.backup("--full");
    p.switch_wal();
    let scratch = p.setup.path("drills");
    let catalogue = p.setup.catalogue_path();
    let mut text = std::fs::read_to_string(&catalogue).unwrap();
    text.push_str(&format!(
        r#"
[[job]]
name = "nightly"
kind = "verify"
schedule = "0 5 * * *"
jobs = ["base"]
integrity = "off"
scratch-directory = "{}"
"#,
        scratch.display()
    ));
    std::fs::write(&catalogue, text).unwrap();
    stop_daemon(&mut p);
    // The scratch cluster runs as postgres; its restore_command (the ctl) reads the catalogue,
    // the identity and the repository.
    open_up(p.setup.dir.path());

    killed_at(&p.setup, "drill-cluster-started", &["--job", "base"]);
    // Killed with the scratch cluster restored and running.
    assert_eq!(
        drill_folders(&scratch).len(),
        1,
        "{:?}",
        drill_folders(&scratch)
    );
    assert!(
        !processes_under(&scratch).is_empty(),
        "no scratch cluster running"
    );

    let daemon = p.setup.start_daemon();
    settle(
        || drill_folders(&scratch).is_empty() && processes_under(&scratch).is_empty(),
        "the scratch cluster stopped and removed at start",
    );
    let run = last_run(&p.setup, Some("nightly"));
    assert_eq!(run["status"], "interrupted", "{run:#}");
    let shown = shown_checks(&p.setup, &run);
    assert!(
        shown.iter().any(|c| c["kind"] == "drill"
            && c["result"] == "pass"
            && c["name"] == "cluster restore and recovery"),
        "the finished restore check of the killed run: {shown:#?}"
    );
    assert!(
        !shown.iter().any(|c| c["kind"] == "amcheck"),
        "pg_amcheck had not run: {shown:#?}"
    );

    open_up(p.setup.dir.path());
    verify_passes(&p.setup, &["--job", "base"], || daemon.log_text());
    assert!(
        drill_folders(&scratch).is_empty(),
        "{:?}",
        drill_folders(&scratch)
    );
    assert!(
        processes_under(&scratch).is_empty(),
        "{:?}",
        processes_under(&scratch)
    );
    // Production untouched and still archiving on its own timeline.
    assert_eq!(p.cluster.psql("postgres", "SELECT count(*) FROM t"), "5000");
    p.daemon = Some(daemon);
}
