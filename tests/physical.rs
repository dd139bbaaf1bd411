//! Physical backups end to end: real PostgreSQL 15 clusters archiving their WAL, the real
//! daemon taking `postgres-base` backups, `bdc-backupctl restore cluster --start` recovering
//! into new clusters; every restore is checked by its DATA (row counts and md5 of every table).

mod common;

use common::daemon::wait_for;
use common::pg::pg_bin;
use common::physical::{Physical, fingerprints, psql_port};
use std::process::{Command, Stdio};
use std::time::Duration;

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn base_backup_under_load_restores_to_the_end_of_the_archive() {
    // As the least-privileged backup role of the operator guide.
    let p = Physical::start_as("60s", true);
    p.cluster.create_database("app");
    p.cluster.load_pgbench("app", 1);
    p.cluster.psql(
        "app",
        "CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 1000) g;",
    );
    let mut load = Command::new(pg_bin().join("pgbench"))
        .args([
            "-n",
            "-c",
            "2",
            "-T",
            "600",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(p.cluster.port.to_string())
        .arg("app")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let run = p.backup("--full");
    assert_eq!(run["backup_type"], "full", "{run}");
    // Every page was verified (the test clusters have data checksums): none failed.
    let info = base_info(&p, run["backup_id"].as_str().unwrap());
    assert_eq!(info["data-checksums"], true, "{info}");
    assert_eq!(info["checksum-failures"], 0, "{info}");
    std::thread::sleep(Duration::from_secs(1));
    // Stop the load, write after the backup (only WAL replay brings it), switch, compare.
    let _ = load.kill();
    let _ = load.wait();
    p.cluster.psql(
        "app",
        "CREATE TABLE after_backup AS SELECT g FROM generate_series(1, 500) g;",
    );
    p.switch_wal();
    let want = fingerprints(p.cluster.port, "app");
    assert!(want.contains_key("public.after_backup"));

    let (out, restored) = p.restore("restored", &[]);
    ok(&out, &format!("restore cluster\n{}", restored.log()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("recovery ended"), "{text}");
    let mut got = fingerprints(restored.port, "app");
    // Unlogged tables come back empty (their data is not in the backup, by design).
    assert_eq!(got.remove("public.scratch").map(|f| f.0), Some(0));
    let mut want = want;
    want.remove("public.scratch");
    assert_eq!(got, want);
    assert_eq!(restored.psql("app", "SELECT pg_is_in_recovery();"), "f");
    // Nothing from the source's PGDATA that must not be there.
    assert!(!restored.dir.join("pg_wal/.bdc-prefetch").exists());
}

/// Rows of `t` per tag on a server: "base=100 a=50 b=0".
fn tags(port: u16) -> String {
    let q = "SELECT string_agg(tag || '=' || n, ' ' ORDER BY tag) FROM \
             (SELECT tag, count(*) AS n FROM t GROUP BY tag) s;";
    psql_port(port, "app", q).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn point_in_time_by_time_lsn_xid_name_and_immediate() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.psql(
        "app",
        "CREATE TABLE t (id serial PRIMARY KEY, tag text); \
         INSERT INTO t (tag) SELECT 'base' FROM generate_series(1, 100);",
    );
    p.backup("--full");
    let xid = c.psql(
        "app",
        "BEGIN; INSERT INTO t (tag) SELECT 'a' FROM generate_series(1, 50); SELECT txid_current(); COMMIT;",
    );
    let lsn = c.psql("app", "SELECT pg_current_wal_lsn();");
    c.psql("app", "SELECT pg_create_restore_point('p');");
    std::thread::sleep(Duration::from_millis(1100));
    // Without an offset: the catalogue's time zone (Europe/Berlin).
    let time = c.psql(
        "app",
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'Europe/Berlin', 'YYYY-MM-DD HH24:MI:SS');",
    );
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(
        "app",
        "INSERT INTO t (tag) SELECT 'b' FROM generate_series(1, 30);",
    );
    p.switch_wal();
    assert_eq!(tags(c.port), "a=50 b=30 base=100");

    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("by-time", vec!["--time", &time], "a=50 base=100"),
        ("by-lsn", vec!["--lsn", &lsn], "a=50 base=100"),
        ("by-xid", vec!["--xid", &xid], "a=50 base=100"),
        (
            "by-xid-excl",
            vec!["--xid", &xid, "--exclusive"],
            "base=100",
        ),
        ("by-name", vec!["--name", "p"], "a=50 base=100"),
        ("immediate", vec!["--immediate"], "base=100"),
    ];
    for (name, flags, want) in cases {
        let mut flags = flags;
        flags.push("--no-archive");
        let (out, restored) = p.restore(name, &flags);
        ok(&out, &format!("restore {name}\n{}", restored.log()));
        assert_eq!(tags(restored.port), want, "{name}");
        assert_eq!(
            restored.psql("app", "SELECT pg_is_in_recovery();"),
            "f",
            "{name}: promoted"
        );
        let conf = std::fs::read_to_string(restored.dir.join("postgresql.auto.conf")).unwrap();
        let targets = conf
            .lines()
            .filter(|l| {
                l.starts_with("recovery_target")
                    && !l.starts_with("recovery_target_timeline")
                    && !l.starts_with("recovery_target_action")
                    && !l.starts_with("recovery_target_inclusive")
            })
            .count();
        assert_eq!(targets, 1, "{name}: exactly one recovery target\n{conf}");
        restored.stop();
    }
}

#[test]
fn incrementals_each_restore_their_own_state() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.load_pgbench("app", 1);
    c.psql(
        "app",
        "CREATE TABLE t (id serial PRIMARY KEY, tag text); INSERT INTO t (tag) VALUES ('base');",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let full = p.backup("--full");
    let s0 = fingerprints(c.port, "app");
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(
        "app",
        "INSERT INTO t (tag) SELECT 'one' FROM generate_series(1, 20); \
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 1000; \
         CREATE TABLE extra AS SELECT g FROM generate_series(1, 100) g;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let i1 = p.backup("--incremental");
    let s1 = fingerprints(c.port, "app");
    std::thread::sleep(Duration::from_millis(1100));
    c.psql(
        "app",
        "DELETE FROM t WHERE tag = 'base'; DROP TABLE extra; \
         INSERT INTO t (tag) SELECT 'two' FROM generate_series(1, 5);",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let i2 = p.backup("--incremental");
    let s2 = fingerprints(c.port, "app");
    p.switch_wal();
    for run in [&i1, &i2] {
        assert_eq!(run["backup_type"], "incremental", "{run}");
        assert!(
            run["bytes_stored"].as_u64().unwrap() < full["bytes_stored"].as_u64().unwrap() / 2,
            "an incremental stores only changed files: {run} vs {full}"
        );
    }
    assert_ne!(s0, s1);
    assert_ne!(s1, s2);
    p.restores_each("app", &[(&full, &s0), (&i1, &s1), (&i2, &s2)]);
}

/// Block incrementals: after a few rows of a big table changed, the incremental stores the
/// changed 64 KiB blocks of its relation files, not the files; its restore has the new data.
#[test]
fn incremental_of_a_big_table_stores_changed_blocks_only() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.load_pgbench("app", 10);
    c.psql("app", "CHECKPOINT;");
    std::thread::sleep(Duration::from_millis(1100));
    let t = std::time::Instant::now();
    let full = p.backup("--full");
    let full_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1100));
    // A contiguous range and a scattered handful: ~2% of the table's blocks.
    c.psql(
        "app",
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 2000; \
         UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid % 50000 = 0; \
         CHECKPOINT;",
    );
    let want = c.psql(
        "app",
        "SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let t = std::time::Instant::now();
    let i1 = p.backup("--incremental");
    let incr_secs = t.elapsed().as_secs_f64();
    p.switch_wal();
    assert_eq!(i1["backup_type"], "incremental", "{i1}");
    let (f, i) = (
        full["bytes_stored"].as_u64().unwrap(),
        i1["bytes_stored"].as_u64().unwrap(),
    );
    eprintln!(
        "block incrementals: full {f} B in {full_secs:.2} s, incremental {i} B in {incr_secs:.2} s"
    );
    assert!(
        i * 4 < f,
        "the incremental stores changed blocks only: {i1} vs {full}"
    );
    // The WAL since the full's start says which blocks changed: the others are not even read.
    let (fr, ir) = (
        full["bytes_read"].as_u64().unwrap(),
        i1["bytes_read"].as_u64().unwrap(),
    );
    let log = p.daemon_log();
    assert!(
        log.contains("reads only the blocks the WAL changed"),
        "WAL change tracking was not used:\n{log}"
    );
    assert!(ir * 4 < fr, "the incremental read {ir} B, the full {fr} B");
    let id = i1["backup_id"].as_str().unwrap();
    let (out, restored) = p.restore(
        &format!("r-{id}"),
        &["--backup", id, "--immediate", "--no-archive"],
    );
    ok(&out, &format!("restore {id}\n{}", restored.log()));
    let got = psql_port(
        restored.port,
        "app",
        "SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts;",
    )
    .unwrap();
    assert_eq!(got.trim(), want.trim());
    restored.stop();
}

#[test]
fn pitr_then_promote_then_pitr_onto_the_new_timeline() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.psql(
        "app",
        "CREATE TABLE t (id serial PRIMARY KEY, tag text); INSERT INTO t (tag) VALUES ('base');",
    );
    p.backup("--full");
    c.psql(
        "app",
        "INSERT INTO t (tag) SELECT 'a' FROM generate_series(1, 10);",
    );
    let lsn = c.psql("app", "SELECT pg_current_wal_lsn();");
    c.psql(
        "app",
        "INSERT INTO t (tag) SELECT 'b' FROM generate_series(1, 10);",
    );
    p.switch_wal();

    // First PITR: promoted onto timeline 2; it writes and archives too (same system id).
    let (out, first) = p.restore("first", &["--lsn", &lsn]);
    ok(&out, &format!("first restore\n{}", first.log()));
    assert_eq!(tags(first.port), "a=10 base=1");
    let tl = psql_port(
        first.port,
        "app",
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8);",
    )
    .unwrap();
    assert_eq!(tl, "00000002");
    psql_port(
        first.port,
        "app",
        "INSERT INTO t (tag) SELECT 'c' FROM generate_series(1, 7);",
    )
    .unwrap();
    let lsn2 = psql_port(first.port, "app", "SELECT pg_current_wal_lsn();").unwrap();
    psql_port(
        first.port,
        "app",
        "INSERT INTO t (tag) SELECT 'd' FROM generate_series(1, 3);",
    )
    .unwrap();
    let seg = psql_port(
        first.port,
        "app",
        "SELECT pg_walfile_name(pg_switch_wal());",
    )
    .unwrap();
    p.wait_archived("00000002.history");
    p.wait_archived(&seg);
    first.stop();

    // Second PITR from the same base backup, across the switch onto timeline 2 (latest).
    let (out, second) = p.restore("second", &["--lsn", &lsn2]);
    ok(&out, &format!("second restore\n{}", second.log()));
    assert_eq!(tags(second.port), "a=10 base=1 c=7");
    let tl = psql_port(
        second.port,
        "app",
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8);",
    )
    .unwrap();
    assert_eq!(tl, "00000003", "a new timeline after the second promotion");
    second.stop();

    // A timeline that does not exist is refused before anything is written.
    let out = p.setup.ctl(&[
        "restore",
        "cluster",
        "--job",
        "base",
        "--target-dir",
        p.setup.path("nowhere").to_str().unwrap(),
        "--target-timeline",
        "9",
        "--dry-run",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timeline 9 is not in the WAL archive"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Timeline 2 exists (its history file was archived).
    let out = p.setup.ctl(&[
        "restore",
        "cluster",
        "--job",
        "base",
        "--target-dir",
        p.setup.path("tl2").to_str().unwrap(),
        "--target-timeline",
        "2",
        "--dry-run",
    ]);
    ok(&out, "dry run onto timeline 2");

    // Asking for timeline 1 explicitly stays on the original history.
    let (out, third) = p.restore("third", &["--target-timeline", "1", "--immediate"]);
    ok(&out, &format!("third restore\n{}", third.log()));
    assert_eq!(tags(third.port), "base=1");
}

#[test]
fn wal_never_archived_fails_the_backup_after_wal_timeout() {
    let p = Physical::start("4s");
    let c = &p.cluster;
    c.psql(
        "postgres",
        "ALTER SYSTEM SET archive_command = 'false'; SELECT pg_reload_conf();",
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = p.setup.ctl(&["run", "base", "--full", "--wait"]);
    assert!(!out.status.success());
    let run = p.setup.ctl_json(&["runs", "--job", "base", "--limit", "1"])[0].clone();
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("was not archived"), "{error}");
    let start_wal = error
        .split_whitespace()
        .find(|w| w.len() == 24 && w.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(start_wal.is_some(), "the missing segment is named: {error}");
    let backups = p.setup.ctl_json(&["backups", "--job", "base"]);
    assert_eq!(backups.as_array().unwrap().len(), 0, "{backups}");
    let leftovers = walkdir(&p.setup.path("repo/backups/base"));
    assert_eq!(leftovers, 0, "the failed backup's objects are deleted");
    // The backup was stopped: with archiving repaired, the next one succeeds.
    c.psql(
        "postgres",
        "ALTER SYSTEM RESET archive_command; SELECT pg_reload_conf();",
    );
    let run = p.backup("--full");
    assert_eq!(run["status"], "succeeded");
}

#[test]
fn a_corrupted_wal_object_stops_recovery_without_promoting() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.psql(
        "app",
        "CREATE TABLE t (id serial PRIMARY KEY, tag text); INSERT INTO t (tag) VALUES ('base');",
    );
    p.backup("--full");
    c.psql(
        "app",
        "INSERT INTO t (tag) SELECT 'a' FROM generate_series(1, 10);",
    );
    let seg = c.psql("app", "SELECT pg_walfile_name(pg_switch_wal());");
    p.wait_archived(&seg);
    c.psql(
        "app",
        "INSERT INTO t (tag) SELECT 'b' FROM generate_series(1, 10);",
    );
    p.switch_wal();
    // Damage the stored object of the segment holding the 'a' rows.
    let object = find_object(&p.setup.path("repo/wal"), &seg).expect("the archived object");
    let mut bytes = std::fs::read(&object).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&object, bytes).unwrap();

    let (out, restored) = p.restore("damaged", &[]);
    assert!(
        !out.status.success(),
        "the restore must report the failed recovery"
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("recovery"), "{text}");
    wait_for(Duration::from_secs(30), "the server to stop", || {
        (!restored.running()).then_some(())
    });
    let log = restored.log();
    assert!(
        !log.contains("selected new timeline ID"),
        "it must not promote:\n{log}"
    );
    assert!(
        log.contains(&seg) || log.contains("restore_command"),
        "{log}"
    );
}

fn find_object(dir: &std::path::Path, prefix: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_object(&p, prefix) {
                return Some(f);
            }
        } else if e.file_name().to_string_lossy().starts_with(prefix) {
            return Some(p);
        }
    }
    None
}

/// Files (not folders) beneath `dir`.
fn walkdir(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walkdir(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn cancel_while_waiting_for_wal_stops_the_backup_and_commits_nothing() {
    let p = Physical::start("10m");
    let c = &p.cluster;
    c.psql(
        "postgres",
        "ALTER SYSTEM SET archive_command = 'false'; SELECT pg_reload_conf();",
    );
    std::thread::sleep(Duration::from_millis(500));
    let started = p.setup.ctl_json(&["run", "base", "--full"]);
    let run_id = started["id"].as_i64().unwrap().to_string();
    // The walk is done and the backup stopped when the run waits for its WAL; cancel then.
    wait_for(
        Duration::from_secs(60),
        "the backup to wait for WAL",
        || p.daemon_log().contains("waiting for its WAL").then_some(()),
    );
    assert!(p.setup.ctl(&["cancel", &run_id]).status.success());
    let run = wait_for(Duration::from_secs(20), "the cancelled run to end", || {
        let runs = p.setup.ctl_json(&["runs", "--job", "base", "--limit", "1"]);
        (runs[0]["status"] != "running").then(|| runs[0].clone())
    });
    assert_eq!(run["status"], "interrupted", "{run}");
    assert_eq!(
        p.setup
            .ctl_json(&["backups", "--job", "base"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(walkdir(&p.setup.path("repo/backups/base")), 0);
    // The session was closed after pg_backup_stop (no abort warning from the server).
    let sessions = c.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%pg_backup%' AND pid <> pg_backend_pid();",
    );
    assert_eq!(sessions, "0");
    assert!(!c.log().contains("aborting backup"), "{}", c.log());
}

#[test]
fn cancel_during_the_walk_aborts_the_backup() {
    use common::objstores::{Moto, credentials_file};
    let p = Physical::start("10m");
    let c = &p.cluster;
    c.create_database("app");
    c.load_pgbench("app", 3);
    // The base job stores into S3 (moto) at 128 KiB/s: the ~45 MB of PGDATA take minutes, so the
    // cancel reliably lands mid-walk (the pipeline is bounded, the walk waits for the upload).
    let moto = Moto::start();
    moto.create_bucket("bdc-test");
    let creds = credentials_file(
        p.setup.dir.path(),
        "s3.env",
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let text = std::fs::read_to_string(p.setup.catalogue_path()).unwrap();
    let base_repos = "wal-timeout = \"10m\"\nrepositories = [\"local\"]";
    assert!(text.contains(base_repos), "{text}");
    let text = text.replace(
        base_repos,
        "wal-timeout = \"10m\"\nrepositories = [\"slow\"]",
    ) + &format!(
        r#"
[repository.slow]
url = "s3://bdc-test/prod"
region = "us-east-1"
endpoint = "{endpoint}"
credentials-file = "{creds}"
bandwidth-limit = "128KiB"
"#,
        endpoint = moto.endpoint(),
        creds = creds.display()
    );
    std::fs::write(p.setup.catalogue_path(), text).unwrap();
    ok(&p.setup.ctl(&["reload"]), "reload");

    let started = p.setup.ctl_json(&["run", "base", "--full"]);
    let run_id = started["id"].as_i64().unwrap().to_string();
    wait_for(Duration::from_secs(60), "the backup to start", || {
        p.daemon_log().contains("base backup started").then_some(())
    });
    // Data is flowing: the walk is under way, not finished.
    wait_for(Duration::from_secs(60), "the first bytes read", || {
        let runs = p.setup.ctl_json(&["status"]);
        let job = runs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == "base")
            .cloned()
            .unwrap();
        (job["running"][1]["bytes_read"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    assert!(p.setup.ctl(&["cancel", &run_id]).status.success());
    let run = wait_for(Duration::from_secs(60), "the cancelled run to end", || {
        let runs = p.setup.ctl_json(&["runs", "--job", "base", "--limit", "1"]);
        (runs[0]["status"] != "running").then(|| runs[0].clone())
    });
    assert_eq!(run["status"], "interrupted", "{run}\n{}", p.daemon_log());
    assert!(
        !p.daemon_log().contains("waiting for its WAL"),
        "the walk had ended before the cancel: {}",
        p.daemon_log()
    );
    assert_eq!(
        p.setup
            .ctl_json(&["backups", "--job", "base"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let keys = moto.keys("bdc-test");
    assert!(
        !keys.iter().any(|k| k.ends_with("/backup.json")),
        "a commit record after a cancel: {keys:?}"
    );
    assert_eq!(walkdir(&p.setup.path("repo/backups/base")), 0);
    let sessions = c.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%pg_backup%' AND pid <> pg_backend_pid();",
    );
    assert_eq!(sessions, "0");
}

#[test]
fn wrong_data_directory_and_outside_tablespaces_are_refused_by_name() {
    let p = Physical::start("10s");
    let c = &p.cluster;
    // A tablespace outside the data directory.
    let ts = c.dir().join("ts1");
    std::fs::create_dir(&ts).unwrap();
    let _ = Command::new("chown").arg("postgres").arg(&ts).status();
    c.psql(
        "postgres",
        &format!("CREATE TABLESPACE far LOCATION '{}';", ts.display()),
    );
    let out = p.setup.ctl(&["run", "base", "--full", "--wait"]);
    assert!(!out.status.success());
    let run = p.setup.ctl_json(&["runs", "--job", "base", "--limit", "1"])[0].clone();
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("tablespaces outside the data directory") && error.contains("`far`"),
        "{error}"
    );
    c.psql("postgres", "DROP TABLESPACE far;");

    // The catalogue names another folder than the server's data_directory.
    let text = std::fs::read_to_string(p.setup.catalogue_path()).unwrap();
    let data = c.data_dir().display().to_string();
    std::fs::write(
        p.setup.catalogue_path(),
        text.replace(&data, &c.dir().display().to_string()),
    )
    .unwrap();
    assert!(p.setup.ctl(&["reload"]).status.success());
    let out = p.setup.ctl(&["run", "base", "--full", "--wait"]);
    assert!(!out.status.success());
    let run = p.setup.ctl_json(&["runs", "--job", "base", "--limit", "1"])[0].clone();
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("data directory is") && error.contains(&data),
        "{error}"
    );
    assert_eq!(
        p.setup
            .ctl_json(&["backups", "--job", "base"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn an_unreadable_repository_during_recovery_stops_it_and_dry_run_writes_nothing() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.psql(
        "app",
        "CREATE TABLE t (id serial PRIMARY KEY, tag text); INSERT INTO t (tag) VALUES ('base');",
    );
    p.backup("--full");
    c.psql(
        "app",
        "INSERT INTO t (tag) SELECT 'a' FROM generate_series(1, 10);",
    );
    p.switch_wal();

    // --dry-run: the plan, nothing written.
    let target = p.setup.path("plan");
    let out = p.setup.ctl(&[
        "restore",
        "cluster",
        "--job",
        "base",
        "--target-dir",
        target.to_str().unwrap(),
        "--name",
        "nowhere",
        "--dry-run",
    ]);
    ok(&out, "dry run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("would restore") && text.contains("recovery_target_name = 'nowhere'"),
        "{text}"
    );
    assert!(!target.exists());

    // The archive's timeline folder becomes unreadable for the postgres user (root-owned 0700)
    // after the restore found the base backup: wal-fetch fails, recovery stops, no promotion.
    common::physical::open_up(p.setup.dir.path());
    let tl = find_object(&p.setup.path("repo/wal"), "00000001").expect("timeline folder");
    let tl_dir = tl.parent().unwrap().to_path_buf();
    let (out, restored) = {
        // Make it unreadable just before the server asks (the restore itself reads as root).
        let guard = std::thread::spawn({
            let d = tl_dir.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .unwrap();
            }
        });
        let r = p.restore("blocked", &["--no-archive"]);
        let _ = guard.join();
        r
    };
    assert!(!out.status.success(), "recovery must not succeed");
    wait_for(Duration::from_secs(30), "the server to stop", || {
        (!restored.running()).then_some(())
    });
    let log = restored.log();
    assert!(
        !log.contains("selected new timeline ID"),
        "it must not promote:\n{log}"
    );
}

/// `details.postgres` of a committed base backup, from its commit record.
fn base_info(p: &Physical, id: &str) -> serde_json::Value {
    let path = p.setup.path(&format!("repo/backups/base/{id}/backup.json"));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("commit record")).unwrap();
    record["details"]["postgres"].clone()
}

#[test]
fn a_corrupted_page_is_reported_as_a_warning() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.psql(
        "app",
        "CREATE TABLE c AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 2000) g; CHECKPOINT;",
    );
    let rel = c.psql("app", "SELECT pg_relation_filepath('c');");
    let file = c.data_dir().join(rel.trim());
    // Damage block 1 on disk (the server's buffer is clean and is not written back).
    let mut bytes = std::fs::read(&file).unwrap();
    for b in &mut bytes[8192 + 4000..8192 + 4016] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();
    let run = p.backup("--full");
    assert_eq!(run["status"], "succeeded", "{run}");
    let warnings = run["error"].as_str().unwrap_or("");
    assert!(
        warnings.contains(&format!("{}: block 1: checksum", rel.trim())),
        "{run}"
    );
    let info = base_info(&p, run["backup_id"].as_str().unwrap());
    assert_eq!(info["checksum-failures"], 1, "{info}");
}

/// WAL retention through the daemon: with `last = 1`, a second full backup's retention pass
/// deletes the first backup and the WAL before the second one's start (history files stay),
/// and the kept backup still restores to the end of the archive.
#[test]
fn wal_retention_after_a_backup_keeps_what_the_kept_backup_needs() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.psql(
        "app",
        "CREATE TABLE t (id serial PRIMARY KEY, tag text); INSERT INTO t (tag) VALUES ('a');",
    );
    let catalogue = std::fs::read_to_string(p.setup.catalogue_path()).unwrap();
    let catalogue = catalogue.replace(
        "wal-job = \"wal\"\n",
        "wal-job = \"wal\"\nretention = \"one\"\n",
    ) + "\n[retention.one]\nlast = 1\n";
    std::fs::write(p.setup.catalogue_path(), catalogue).unwrap();
    let out = p.setup.ctl(&["reload"]);
    ok(&out, "reload");
    let first = p.backup("--full");
    let first_start = base_info(&p, first["backup_id"].as_str().unwrap())["start-wal"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        c.psql(
            "app",
            "INSERT INTO t (tag) SELECT 'b' FROM generate_series(1, 100);",
        );
        p.switch_wal();
    }
    let second = p.backup("--full");
    let second_id = second["backup_id"].as_str().unwrap();
    let info = base_info(&p, second_id);
    let start = info["start-wal"].as_str().unwrap().to_string();
    assert!(
        !p.setup
            .path(&format!(
                "repo/backups/base/{}",
                first["backup_id"].as_str().unwrap()
            ))
            .join("backup.json")
            .exists(),
        "the first backup is deleted by `last = 1`"
    );
    let mut segments = Vec::new();
    let mut stack = vec![p.setup.path("repo/wal")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                segments.push(e.file_name().to_string_lossy().to_string());
            }
        }
    }
    let names: Vec<&str> = segments
        .iter()
        .filter_map(|f| f.split('-').next())
        .filter(|n| n.len() >= 24)
        .collect();
    assert!(!names.is_empty());
    for n in &names {
        assert!(
            n[8..24] >= start[8..24],
            "{n} is older than the kept backup's start {start}: {segments:?}"
        );
    }
    assert!(names.iter().any(|n| n[..24] == start[..24]), "{segments:?}");
    assert!(
        !names.iter().any(|n| n[..24] == first_start[..24]),
        "the first backup's WAL {first_start} is gone: {segments:?}"
    );
    c.psql("app", "INSERT INTO t (tag) VALUES ('after');");
    p.switch_wal();
    let want = fingerprints(c.port, "app");
    let (out, restored) = p.restore("restored", &[]);
    ok(&out, &format!("restore cluster\n{}", restored.log()));
    assert_eq!(fingerprints(restored.port, "app"), want);
    restored.stop();
}
