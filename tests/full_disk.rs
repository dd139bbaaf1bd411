//! Full disks (issue 11): small tmpfs mounts (`mount -t tmpfs -o size=…`, the tests run as root;
//! unmounted by a guard) as the local repository, the state directory, a restore target and the
//! restore spool, filled up during a files backup, a dump and a WAL push, a run recorded in the
//! state DB, and restores. Each time: a clear error naming what is full, no partial object or
//! file left, nothing acknowledged or claimed; and the next run fine once space is back.

mod common;
use common::tmpfs::Tmpfs;

use common::files_under;

use common::daemon::{Setup, TestDaemon, wait_for};
use common::pg::PgCluster;
use common::runs::last_run;
use common::wal::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// No object, not even a staging file, under `repo` (but the filler).
fn assert_nothing_stored(repo: &Path) {
    let left: Vec<PathBuf> = files_under(repo)
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "filler")
        .collect();
    assert!(left.is_empty(), "partial objects left: {left:?}");
}

fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn files_catalogue(setup: &Setup, extra: &str) -> (PathBuf, Vec<u8>) {
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = incompressible(4 << 20, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(src.join("big.bin"), &data).unwrap();
    std::fs::write(src.join("small.txt"), b"small\n").unwrap();
    setup.write_catalogue(&format!(
        "{extra}{}",
        common::catalogue::files_job("uploads", &src)
    ));
    (src, data)
}

fn assert_failed_for_space(setup: &Setup, daemon: &TestDaemon, out: &Output) -> serde_json::Value {
    assert_ne!(out.status.code(), Some(0), "log:\n{}", daemon.log_text());
    let run = last_run(setup, None);
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("repository `local`") && error.contains("no space left on device"),
        "{error}"
    );
    run
}

fn restore_files(setup: &Setup, id: &str, target: &Path) -> Output {
    setup.ctl(&[
        "restore",
        "files",
        "--job",
        "uploads",
        "--backup",
        id,
        "--target",
        target.to_str().unwrap(),
    ])
}

fn restored(target: &Path, src: &Path, name: &str) -> PathBuf {
    if target.join(name).exists() {
        target.join(name)
    } else {
        target.join(src.strip_prefix("/").unwrap()).join(name)
    }
}

/// A files backup bigger than the repository's file system: the run fails naming the
/// repository and "no space left", no object (or staging file) is left, `backups` lists
/// nothing; once the file system is bigger the next run succeeds and restores the bytes.
#[test]
fn a_files_backup_into_a_full_repository() {
    let setup = Setup::new();
    let repo = Tmpfs::mount(&setup.path("repo"), "2m");
    let (src, data) = files_catalogue(&setup, "");
    let daemon = setup.start_daemon();
    let out = setup.ctl(&["run", "uploads", "--full", "--wait"]);
    assert_failed_for_space(&setup, &daemon, &out);
    assert_nothing_stored(&repo.dir);
    assert_eq!(setup.ctl_json(&["backups"]), serde_json::json!([]));

    repo.grow("32m");
    let out = setup.ctl(&["run", "uploads", "--full", "--wait"]);
    assert!(out.status.success(), "log:\n{}", daemon.log_text());
    let run = last_run(&setup, None);
    assert_eq!(run["status"], "succeeded");
    let target = setup.path("target");
    assert!(
        restore_files(&setup, run["backup_id"].as_str().unwrap(), &target)
            .status
            .success()
    );
    assert!(std::fs::read(restored(&target, &src, "big.bin")).unwrap() == data);
    assert!(daemon.stop().success());
}

/// A dump into a repository filled up (a filler file leaves no space): the run fails naming
/// the repository, no object is left, nothing is listed; with the filler gone the next dump
/// succeeds and restores the data.
#[test]
fn a_dump_into_a_full_repository() {
    let setup = Setup::new();
    let repo = Tmpfs::mount(&setup.path("repo"), "4m");
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.psql(
        "app",
        "CREATE TABLE t (id int primary key, v text); \
         INSERT INTO t SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 40000) g;",
    );
    setup.write_catalogue(&common::catalogue::dump_job(&cluster.url("app")));
    let daemon = setup.start_daemon();
    let filler = repo.fill();
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert_failed_for_space(&setup, &daemon, &out);
    assert_nothing_stored(&repo.dir);
    assert_eq!(setup.ctl_json(&["backups"]), serde_json::json!([]));

    std::fs::remove_file(&filler).unwrap();
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert!(out.status.success(), "log:\n{}", daemon.log_text());
    assert_eq!(last_run(&setup, None)["status"], "succeeded");
    let out = setup.ctl(&[
        "restore", "database", "--job", "db-dump", "--into", "restored", "--create",
    ]);
    assert!(out.status.success());
    assert_eq!(
        cluster.table_fingerprints("app"),
        cluster.table_fingerprints("restored")
    );
    assert!(daemon.stop().success());
}

/// A WAL push into a full repository: wal-push exits non-zero (PostgreSQL counts failures and
/// keeps the segment), nothing is acknowledged, no object is left, PostgreSQL's log names the
/// repository and "no space left"; with the filler gone PostgreSQL's retry archives it.
#[test]
fn a_wal_push_into_a_full_repository() {
    let setup = Setup::new();
    let repo = Tmpfs::mount(&setup.path("repo"), "8m");
    let cluster = PgCluster::start_with(&archive_conf(&setup.socket()));
    setup.write_catalogue(&wal_job(&cluster, &["local"]));
    let filler = repo.fill();
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let (archived, failed, _) = archiver(&cluster);
    let seg = switch_wal(&cluster);
    wait_for(Duration::from_secs(60), "failed pushes", || {
        (archiver(&cluster).1 >= failed + 2).then_some(())
    });
    assert_eq!(archiver(&cluster).0, archived, "a push was acknowledged");
    assert!(stored(&repo.dir).is_empty(), "{:?}", stored(&repo.dir));
    assert_nothing_stored(&repo.dir);
    let pg_log = cluster.log();
    assert!(
        pg_log.contains("repository `local`") && pg_log.contains("no space left on device"),
        "PostgreSQL's log:\n{pg_log}"
    );

    std::fs::remove_file(&filler).unwrap();
    wait_archived(&cluster, &seg);
    assert!(stored(&repo.dir).iter().any(|(n, _, _)| n == &seg));
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "log:\n{log}");
}

/// The state directory on a full file system: a run that cannot be recorded is reported
/// clearly (naming the state database and the full disk), committed runs are not lost, and
/// with space back the next run is recorded; all of it survives a restart.
#[test]
fn a_full_state_directory_loses_no_committed_run() {
    let setup = Setup::new();
    let state = Tmpfs::mount(&setup.path("state"), "8m");
    files_catalogue(&setup, "");
    let daemon = setup.start_daemon();
    assert!(
        setup
            .ctl(&["run", "uploads", "--full", "--wait"])
            .status
            .success()
    );
    let first = last_run(&setup, None);
    assert_eq!(first["status"], "succeeded");

    let filler = state.fill();
    let out = setup.ctl(&["run", "uploads", "--full", "--wait"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("daemon log:\n{}", daemon.log_text());
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("state") && text.to_lowercase().contains("no space left on device"),
        "{text}"
    );
    let runs = setup.ctl_json(&["runs"]);
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == first["id"] && r["status"] == "succeeded"),
        "the committed run is gone: {runs}"
    );

    std::fs::remove_file(&filler).unwrap();
    assert!(
        setup
            .ctl(&["run", "uploads", "--full", "--wait"])
            .status
            .success()
    );
    assert_eq!(last_run(&setup, None)["status"], "succeeded");
    let log = daemon.log_text();
    assert!(daemon.stop().success(), "log:\n{log}");
    let daemon = setup.start_daemon();
    let runs = setup.ctl_json(&["runs"]);
    let ok = runs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count();
    assert!(ok >= 2, "{runs}");
    assert_eq!(setup.ctl_json(&["backups"]).as_array().unwrap().len(), ok);
    assert!(daemon.stop().success());
}

/// A restore into a target too small for it: the restore fails naming the file and "no space
/// left", and the half-written file is not left claiming to be restored.
#[test]
fn a_restore_into_a_full_target() {
    let setup = Setup::new();
    let (src, data) = files_catalogue(&setup, "");
    let daemon = setup.start_daemon();
    assert!(
        setup
            .ctl(&["run", "uploads", "--full", "--wait"])
            .status
            .success()
    );
    let id = last_run(&setup, None)["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(daemon.stop().success());

    let target = Tmpfs::mount(&setup.path("target"), "1m");
    let out = restore_files(&setup, &id, &target.dir);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("big.bin")
            && err.contains(&format!(
                "writing into {}: no space left on device",
                target.dir.display()
            )),
        "{err}"
    );
    let big = restored(&target.dir, &src, "big.bin");
    assert!(!big.exists(), "a half-restored {} was left", big.display());
    target.grow("16m");
    let out = restore_files(&setup, &id, &target.dir);
    assert!(out.status.success());
    assert!(std::fs::read(restored(&target.dir, &src, "big.bin")).unwrap() == data);
}

/// `restore database --jobs` spools the archive to a temp file: with TMPDIR on a file system
/// too small for it, the restore fails naming the folder and the space needed, before writing,
/// and leaves nothing there; with space back the parallel restore gives the data.
#[test]
fn a_parallel_restore_with_a_full_spool() {
    let setup = Setup::new();
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.psql(
        "app",
        "CREATE TABLE t (id int primary key, v text); \
         INSERT INTO t SELECT g, md5(random()::text) FROM generate_series(1, 40000) g;",
    );
    setup.write_catalogue(&common::catalogue::dump_job(&cluster.url("app")));
    let daemon = setup.start_daemon();
    assert!(setup.ctl(&["run", "db-dump", "--wait"]).status.success());
    assert!(daemon.stop().success());

    let spool = Tmpfs::mount(&setup.path("spool"), "256k");
    let restore = || {
        let out = Command::new(common::daemon::CTL)
            .arg("--catalogue")
            .arg(setup.catalogue_path())
            .args([
                "restore", "database", "--job", "db-dump", "--into", "restored", "--create",
                "--jobs", "2",
            ])
            .env("TMPDIR", &spool.dir)
            .output()
            .unwrap();
        eprintln!(
            "restore --jobs 2: {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let out = restore();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(spool.dir.to_str().unwrap()) && err.contains("space"),
        "{err}"
    );
    assert!(
        files_under(&spool.dir).is_empty(),
        "{:?}",
        files_under(&spool.dir)
    );
    spool.grow("64m");
    let out = restore();
    assert!(out.status.success());
    assert_eq!(
        cluster.table_fingerprints("app"),
        cluster.table_fingerprints("restored")
    );
    assert!(
        files_under(&spool.dir).is_empty(),
        "{:?}",
        files_under(&spool.dir)
    );
}
