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
    let p = Physical::start("60s");
    p.cluster.create_database("app");
    p.cluster.load_pgbench("app", 1);
    p.cluster.psql(
        "app",
        "CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 1000) g;",
    );
    let mut load = Command::new(pg_bin().join("pgbench"))
        .args(["-n", "-c", "2", "-T", "600", "-h", "127.0.0.1", "-U", "postgres"])
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
    std::thread::sleep(Duration::from_secs(1));
    // Stop the load, write after the backup (only WAL replay brings it), switch, compare.
    let _ = load.kill();
    let _ = load.wait();
    p.cluster
        .psql("app", "CREATE TABLE after_backup AS SELECT g FROM generate_series(1, 500) g;");
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
