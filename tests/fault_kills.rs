//! The fault matrix, kill -9 part: the daemon dies (SIGKILL through the test-only kill points of
//! `src/faults.rs`) at chosen points of every job kind — dump, files, config, base backup, replica
//! copy, retention pass. After each kill the next start reconciles the run (`interrupted`, or
//! `succeeded` when the commit record exists), nothing half-done is visible to `backups` or to a
//! restore, the next run works and restores the same data, and the cleanup of uncommitted
//! objects removes the orphans once they are older than its grace (never before), leaving every
//! committed backup whole (each object's size and SHA-256 as its commit record says). The cleanup
//! is the daemon's own on `retention-schedule` in the config test, the same library function
//! called with the daemon's shortest grace elsewhere (no minute's wait per test).

mod common;

use bdc_backup::repository::{Repository, Store};
use common::daemon::{Setup, wait_for};
use common::pg::PgCluster;
use common::physical::{Physical, fingerprints};
use sha2::{Digest, Sha256};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const KILL_AT: &str = "BDC_BACKUP_TEST_KILL_AT";
const HOUR: Duration = Duration::from_secs(3600);
/// The daemon's shortest cleanup grace (twice the longest run, at least 6 h).
const GRACE: Duration = Duration::from_secs(6 * 3600);

// ---------------------------------------------------------------------------------------------
// Helpers

/// Starts the daemon armed with `point`, runs `args` (a `run … --wait`), and expects the daemon
/// to die by SIGKILL at that very point.
fn killed_at(setup: &Setup, point: &str, args: &[&str]) {
    let mut daemon = setup.start_daemon_with(&[(KILL_AT, point)]);
    common::wal::open_socket(&setup.socket());
    let _ = setup.ctl(args);
    let status = daemon.wait(Duration::from_secs(300));
    let log = daemon.log_text();
    assert_eq!(status.signal(), Some(9), "{point}: {status:?}\n{log}");
    let name = point.split(':').next().unwrap();
    assert!(
        log.contains(&format!("killed at {name} (")),
        "{point}: the daemon died elsewhere\n{log}"
    );
}

/// The job's newest run.
fn last_run(setup: &Setup, job: &str) -> serde_json::Value {
    setup.ctl_json(&["runs", "--job", job, "--limit", "1"])[0].clone()
}

/// `backup_id`s `bdc-backupctl backups --job J` lists (in `repository` when given), once the
/// daemon's re-sync shows `expected` of them.
fn listed(setup: &Setup, job: &str, repository: Option<&str>, expected: usize) -> Vec<String> {
    wait_for(Duration::from_secs(120), "the backups re-synced", || {
        let mut args = vec!["backups", "--job", job];
        if let Some(r) = repository {
            args.extend(["--repository", r]);
        }
        let ids: Vec<String> = setup
            .ctl_json(&args)
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["backup_id"].as_str().unwrap().to_string())
            .collect();
        (ids.len() == expected).then_some(ids)
    })
}

/// `(id, committed)` of every `backups/<job>/<id>/` folder of `repo`.
fn backup_dirs(repo: &Path, job: &str) -> Vec<(String, bool)> {
    let Ok(entries) = std::fs::read_dir(repo.join("backups").join(job)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, bool)> = entries
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join("backup.json").exists(),
            )
        })
        .collect();
    out.sort();
    out
}

fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The files of backups without a commit record, and the staging files, of `repo`.
fn orphans(repo: &Path) -> Vec<PathBuf> {
    let mut out = files_below(&repo.join(".staging"));
    let Ok(jobs) = std::fs::read_dir(repo.join("backups")) else {
        return out;
    };
    for job in jobs.flatten() {
        for (id, committed) in backup_dirs(repo, &job.file_name().to_string_lossy()) {
            if !committed {
                out.extend(files_below(&job.path().join(id)));
            }
        }
    }
    out
}

/// Checks every commit record of `repo`: each object (and the manifest) is there with the size
/// and SHA-256 the record gives, and each ancestor is committed. Returns the records checked.
fn committed_backups_whole(repo: &Path) -> usize {
    let mut n = 0;
    for path in files_below(&repo.join("backups")) {
        if path.file_name().is_none_or(|f| f != "backup.json") {
            continue;
        }
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let objects = record["objects"]
            .as_array()
            .unwrap()
            .iter()
            .chain(std::iter::once(&record["manifest"]));
        for o in objects {
            let key = o["key"].as_str().unwrap();
            let bytes = std::fs::read(repo.join(key))
                .unwrap_or_else(|e| panic!("{}: object {key} lost: {e}", path.display()));
            assert_eq!(bytes.len() as u64, o["size"].as_u64().unwrap(), "{key}");
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                o["sha256"].as_str().unwrap(),
                "{key}"
            );
        }
        let job = record["job"].as_str().unwrap();
        for a in record["ancestors"].as_array().unwrap() {
            let a = a.as_str().unwrap();
            assert!(
                repo.join(format!("backups/{job}/{a}/backup.json")).exists(),
                "{}: ancestor {a} is not committed",
                path.display()
            );
        }
        n += 1;
    }
    n
}

/// Runs the cleanup of uncommitted objects the daemon's retention schedule runs, with the
/// daemon's shortest grace, on the local repository at `repo`.
fn cleanup(repo: &Path) -> bdc_backup::retention::CleanupReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let repository = Repository::with_store("local", Store::local(repo).unwrap());
        bdc_backup::retention::cleanup_uncommitted(&repository, GRACE, &[])
            .await
            .unwrap()
    })
}

/// Sets the files' modification time to an hour past the grace.
fn older_than_the_grace(files: &[PathBuf]) {
    for f in files {
        let file = std::fs::File::options().write(true).open(f).unwrap();
        file.set_modified(SystemTime::now() - GRACE - HOUR).unwrap();
    }
}

/// The orphans the kills left stay while younger than the grace, and go once older; every
/// committed backup stays whole. Returns how many orphan files there were.
fn orphans_go_after_the_grace(repo: &Path) -> usize {
    let before = orphans(repo);
    let committed = committed_backups_whole(repo);
    let report = cleanup(repo);
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(orphans(repo), before, "nothing removed within the grace");
    older_than_the_grace(&before);
    let report = cleanup(repo);
    assert_eq!(orphans(repo), Vec::<PathBuf>::new(), "{report:?}");
    assert_eq!(committed_backups_whole(repo), committed);
    before.len()
}

fn restore_database(setup: &Setup, backup: &str, into: &str, extra: &[&str]) -> bool {
    let mut args = vec![
        "restore",
        "database",
        "--job",
        "db-dump",
        "--backup",
        backup,
        "--database",
        "app",
        "--into",
        into,
        "--create",
    ];
    args.extend_from_slice(extra);
    setup.ctl(&args).status.success()
}

fn dump_cluster() -> PgCluster {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.load_sample("app", 2);
    cluster.load_pgbench("app", 1);
    cluster
}

/// A `db-dump` job of database `app` with `job_keys` (its repositories, …) after `extra`.
fn dump_catalogue(setup: &Setup, cluster: &PgCluster, job_keys: &str, extra: &str) {
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "{url}"

{extra}

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
{job_keys}
"#,
        url = cluster.url("app")
    ));
}

/// Adds `key = value` lines to the catalogue's `[daemon]` section.
fn daemon_keys(setup: &Setup, lines: &str) {
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replacen("[daemon]\n", &format!("[daemon]\n{lines}\n"), 1);
    std::fs::write(setup.catalogue_path(), text).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Dumps and the retention pass

#[test]
fn a_dump_killed_while_streaming_and_a_retention_pass_killed_between_record_and_objects() {
    let cluster = dump_cluster();
    let setup = Setup::new();
    dump_catalogue(
        &setup,
        &cluster,
        "repositories = [\"local\"]\nretention = \"two\"",
        "[retention.two]\nlast = 2",
    );
    let repo = setup.path("repo");
    let run = ["run", "db-dump", "--wait"];

    // While pg_dump's output streams into the data object.
    killed_at(&setup, "dump-streaming:backups/db-dump/", &run);
    let daemon = setup.start_daemon();
    let killed = last_run(&setup, "db-dump");
    assert_eq!(killed["status"], "interrupted", "{killed}");
    let killed_id = killed["backup_id"].as_str().map(str::to_string);
    assert!(backup_dirs(&repo, "db-dump").iter().all(|(_, c)| !c));
    assert!(listed(&setup, "db-dump", None, 0).is_empty());
    if let Some(id) = &killed_id {
        assert!(!restore_database(&setup, id, "app_half", &[]));
        assert!(!cluster.database_exists("app_half"));
    }
    // The next runs work and restore the same data.
    assert!(setup.ctl(&run).status.success(), "{}", daemon.log_text());
    assert!(setup.ctl(&run).status.success());
    let ids = listed(&setup, "db-dump", None, 2);
    assert!(restore_database(&setup, &ids[1], "app_next", &[]));
    assert_eq!(
        cluster.table_fingerprints("app_next"),
        cluster.table_fingerprints("app")
    );
    assert!(daemon.stop().success());

    // The retention pass after the third backup: the oldest's commit record deleted, its
    // objects not yet.
    killed_at(
        &setup,
        &format!("retention-after-commit-delete:{}", ids[0]),
        &run,
    );
    assert!(
        !repo
            .join(format!("backups/db-dump/{}/backup.json", ids[0]))
            .exists()
    );
    assert!(
        !orphans(&repo).is_empty(),
        "the deleted backup's objects stay"
    );
    let daemon = setup.start_daemon();
    let third = last_run(&setup, "db-dump");
    assert_eq!(
        third["status"], "succeeded",
        "committed before the pass: {third}"
    );
    let now = listed(&setup, "db-dump", None, 2);
    assert!(!now.contains(&ids[0]), "{now:?}");
    assert_eq!(now[0], ids[1]);
    assert_eq!(third["backup_id"].as_str(), Some(now[1].as_str()));
    // The next pass (after the next backup) keeps two, and no remaining backup lost an object.
    assert!(setup.ctl(&run).status.success());
    let after = listed(&setup, "db-dump", None, 2);
    assert_eq!(after[0], now[1]);
    assert!(restore_database(&setup, &after[0], "app_kept", &[]));
    assert_eq!(
        cluster.table_fingerprints("app_kept"),
        cluster.table_fingerprints("app")
    );
    assert!(daemon.stop().success());
    assert!(orphans_go_after_the_grace(&repo) > 0);
    assert_eq!(
        backup_dirs(&repo, "db-dump")
            .iter()
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>(),
        after
    );
}

// ---------------------------------------------------------------------------------------------
// Replica copies

#[test]
fn a_replica_copy_killed_between_objects_before_its_commit_or_before_it_was_queued_lands_after_restart()
 {
    let cluster = dump_cluster();
    let setup = Setup::new();
    let offsite = setup.path("offsite");
    dump_catalogue(
        &setup,
        &cluster,
        "repositories = [\"local\", \"offsite\"]",
        &format!(
            "[repository.offsite]\nurl = \"file://{}\"",
            offsite.display()
        ),
    );
    daemon_keys(&setup, "replica-retry = \"1s\"");
    let repo = setup.path("repo");
    let mut landed = 0;
    for point in [
        "replica-between-objects:backups/db-dump/",
        "replica-before-commit:backups/db-dump/",
        // The primary's commit record written, the copies not even queued yet.
        "commit-after:backups/db-dump/",
    ] {
        killed_at(&setup, point, &["run", "db-dump", "--wait"]);
        let (id, primary_committed) = backup_dirs(&repo, "db-dump").pop().unwrap();
        assert!(primary_committed, "{point}");
        assert!(
            !offsite
                .join(format!("backups/db-dump/{id}/backup.json"))
                .exists(),
            "{point}"
        );
        let daemon = setup.start_daemon();
        let run = last_run(&setup, "db-dump");
        assert_eq!(run["status"], "partial", "{point}: {run}");
        assert_eq!(run["backup_id"].as_str(), Some(id.as_str()), "{run}");
        assert!(
            run["error"].as_str().unwrap().contains("`offsite`"),
            "{run}"
        );
        // The background replicator completes the copy.
        landed += 1;
        let ids = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            listed(&setup, "db-dump", Some("offsite"), landed)
        }))
        .unwrap_or_else(|_| panic!("{point}: the copy never landed\n{}", daemon.log_text()));
        assert_eq!(ids.last(), Some(&id), "{point}: {}", daemon.log_text());
        assert!(
            offsite
                .join(format!("backups/db-dump/{id}/backup.json"))
                .exists()
        );
        assert!(daemon.stop().success());
        // Byte for byte the primary's, each object as its commit record says (SHA-256).
        assert_eq!(committed_backups_whole(&offsite), landed);
        for f in files_below(&repo.join(format!("backups/db-dump/{id}"))) {
            let rel = f.strip_prefix(&repo).unwrap();
            assert_eq!(
                std::fs::read(offsite.join(rel)).unwrap(),
                std::fs::read(&f).unwrap(),
                "{point}: {}",
                rel.display()
            );
        }
        let into = format!("app_offsite_{landed}");
        assert!(restore_database(
            &setup,
            &id,
            &into,
            &["--repository", "offsite"]
        ));
        assert_eq!(
            cluster.table_fingerprints(&into),
            cluster.table_fingerprints("app")
        );
    }
    orphans_go_after_the_grace(&repo);
    orphans_go_after_the_grace(&offsite);
    assert_eq!(committed_backups_whole(&repo), 3);
}

// ---------------------------------------------------------------------------------------------
// Files and config snapshots

/// `len` bytes that differ block by block (so parts compress but are not trivial).
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = 0u64;
    while out.len() < len {
        let line = format!("{seed} block {block:012} of the kill test\n");
        out.extend_from_slice(line.as_bytes());
        block += 1;
    }
    out.truncate(len);
    out
}

/// Where `restore files|config --target T` put the tree whose source was `src`.
fn restored_root(target: &Path, src: &Path, probe: &str) -> PathBuf {
    if target.join(probe).exists() {
        target.to_path_buf()
    } else {
        target.join(src.strip_prefix("/").unwrap())
    }
}

/// Every file of `src` restored with the same bytes below `root`.
fn same_tree(src: &Path, root: &Path) {
    let files = files_below(src);
    assert!(!files.is_empty());
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let got = std::fs::read(root.join(rel))
            .unwrap_or_else(|e| panic!("{} not restored: {e}", rel.display()));
        assert!(
            got == std::fs::read(&f).unwrap(),
            "{} differs",
            rel.display()
        );
    }
}

/// `restore KIND --job J [--backup ID] --target T`: whether it succeeded.
fn restore_tree(setup: &Setup, kind: &str, job: &str, backup: Option<&str>, target: &Path) -> bool {
    let mut args = vec!["restore", kind, "--job", job];
    if let Some(id) = backup {
        args.extend(["--backup", id]);
    }
    args.extend(["--target", target.to_str().unwrap()]);
    setup.ctl(&args).status.success()
}

/// After a kill before the commit record: the run is `interrupted`, its backup is neither
/// listed nor restorable, and `committed` backups are still listed.
fn interrupted_and_invisible(
    setup: &Setup,
    job: &str,
    point: &str,
    committed: usize,
    restore: impl Fn(&str, &Path) -> bool,
) {
    let run = last_run(setup, job);
    assert_eq!(run["status"], "interrupted", "{point}: {run}");
    let repo = setup.path("repo");
    let dirs = backup_dirs(&repo, job);
    assert_eq!(
        dirs.iter().filter(|(_, c)| *c).count(),
        committed,
        "{point}: {dirs:?}"
    );
    let ids = listed(setup, job, None, committed);
    for (id, c) in &dirs {
        if *c {
            continue;
        }
        assert!(!ids.contains(id), "{point}: {ids:?}");
        let target = setup.path(&format!("half-{id}"));
        assert!(
            !restore(id, &target),
            "{point}: an uncommitted backup restored"
        );
        assert!(files_below(&target).is_empty(), "{point}: wrote files");
    }
}

#[test]
fn a_files_backup_killed_during_a_part_between_parts_during_the_manifest_and_after_its_commit() {
    let setup = Setup::new();
    let src = setup.path("uploads");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    // Two files of 130 MiB: a part is 256 MiB, so the backup has two parts.
    std::fs::write(src.join("a.bin"), pattern(1, 130 << 20)).unwrap();
    std::fs::write(src.join("b.bin"), pattern(2, 130 << 20)).unwrap();
    std::fs::write(src.join("docs/readme.txt"), b"version 1\n").unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = ["local"]
"#,
        src = src.display()
    ));
    let repo = setup.path("repo");
    let run = ["run", "uploads", "--full", "--wait"];
    // Each point, and the complete data objects the killed run leaves in its backup's folder.
    for (point, parts) in [
        ("part-upload:backups/uploads/", 0),
        ("between-parts:backups/uploads/", 1),
        ("manifest-write:backups/uploads/", 2),
        // The manifest's bytes in the store's staging file, not yet fsync'd nor in place.
        ("local-before-fsync:manifest", 2),
    ] {
        let before = backup_dirs(&repo, "uploads");
        killed_at(&setup, point, &run);
        let left: Vec<PathBuf> = backup_dirs(&repo, "uploads")
            .into_iter()
            .filter(|d| !before.contains(d))
            .flat_map(|(id, _)| files_below(&repo.join("backups/uploads").join(id)))
            .collect();
        let names: Vec<String> = left
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let data = names
            .iter()
            .filter(|n| n.ends_with(".age") && *n != "manifest.age");
        assert!(data.count() >= parts, "{point}: {names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n == "manifest.age" || n == "backup.json"),
            "{point}: {names:?}"
        );
        if parts == 0 {
            assert!(
                names.is_empty(),
                "{point}: the part was not complete: {names:?}"
            );
        }
        let daemon = setup.start_daemon();
        interrupted_and_invisible(&setup, "uploads", point, 0, |id, t| {
            restore_tree(&setup, "files", "uploads", Some(id), t)
        });
        assert!(daemon.stop().success());
    }
    // Parts of the killed runs are in the store (the second kill left a complete first part).
    assert!(!orphans(&repo).is_empty());

    // Just after the commit record: the run succeeded and the backup restores.
    killed_at(&setup, "commit-after:backups/uploads/", &run);
    let daemon = setup.start_daemon();
    let committed = last_run(&setup, "uploads");
    assert_eq!(committed["status"], "succeeded", "{committed}");
    let id = committed["backup_id"].as_str().unwrap().to_string();
    assert_eq!(listed(&setup, "uploads", None, 1), vec![id.clone()]);
    let target = setup.path("restore-committed");
    assert!(restore_tree(&setup, "files", "uploads", Some(&id), &target));
    same_tree(&src, &restored_root(&target, &src, "a.bin"));

    // The next run works (its local manifest copy was never saved: a full, by that reason).
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(src.join("docs/readme.txt"), b"version 2, longer\n").unwrap();
    std::fs::write(src.join("docs/new.txt"), b"new\n").unwrap();
    let out = setup.ctl(&["run", "uploads", "--incremental", "--wait"]);
    assert!(out.status.success(), "{}", daemon.log_text());
    let next = last_run(&setup, "uploads");
    assert_eq!(next["status"], "succeeded", "{next}");
    let ids = listed(&setup, "uploads", None, 2);
    let target = setup.path("restore-next");
    assert!(restore_tree(&setup, "files", "uploads", None, &target));
    same_tree(&src, &restored_root(&target, &src, "a.bin"));
    assert_eq!(ids[1], next["backup_id"].as_str().unwrap());
    assert!(daemon.stop().success());
    assert!(orphans_go_after_the_grace(&repo) > 0);
    assert_eq!(committed_backups_whole(&repo), 2);
}

#[test]
fn a_config_snapshot_killed_between_its_part_and_manifest_during_the_manifest_and_after_its_commit()
{
    let setup = Setup::new();
    let etc = setup.path("app-config");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join(".env"), b"SECRET=1\n").unwrap();
    std::fs::write(etc.join("nginx.conf"), b"server {}\n").unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "config"
kind = "config"
paths = ["{etc}/.env", "{etc}/*.conf"]
schedule = "*/30 * * * *"
repositories = ["local"]
"#,
        etc = etc.display()
    ));
    let repo = setup.path("repo");
    let run = ["run", "config", "--wait"];
    for point in [
        "between-parts:backups/config/",
        "manifest-write:backups/config/",
    ] {
        killed_at(&setup, point, &run);
        let daemon = setup.start_daemon();
        interrupted_and_invisible(&setup, "config", point, 0, |id, t| {
            restore_tree(&setup, "config", "config", Some(id), t)
        });
        assert!(daemon.stop().success());
    }
    killed_at(&setup, "commit-after:backups/config/", &run);
    let daemon = setup.start_daemon();
    let committed = last_run(&setup, "config");
    assert_eq!(committed["status"], "succeeded", "{committed}");
    let id = committed["backup_id"].as_str().unwrap().to_string();
    assert_eq!(listed(&setup, "config", None, 1), vec![id.clone()]);
    // A change, and the next run stores it.
    std::fs::write(etc.join(".env"), b"SECRET=2\n").unwrap();
    assert!(setup.ctl(&run).status.success(), "{}", daemon.log_text());
    assert_eq!(last_run(&setup, "config")["status"], "succeeded");
    let ids = listed(&setup, "config", None, 2);
    for (backup, secret) in [(&ids[0], "SECRET=1\n"), (&ids[1], "SECRET=2\n")] {
        let target = setup.path(&format!("restored-{backup}"));
        assert!(restore_tree(
            &setup,
            "config",
            "config",
            Some(backup),
            &target
        ));
        let root = restored_root(&target, &etc, ".env");
        assert_eq!(std::fs::read_to_string(root.join(".env")).unwrap(), secret);
        assert_eq!(
            std::fs::read_to_string(root.join("nginx.conf")).unwrap(),
            "server {}\n"
        );
    }
    assert!(daemon.stop().success());
    // The daemon's own cleanup (on `retention-schedule`, every minute here) removes the orphans
    // once they are older than its grace.
    let left = orphans(&repo);
    assert!(!left.is_empty());
    older_than_the_grace(&left);
    daemon_keys(&setup, "retention-schedule = \"* * * * *\"");
    let daemon = setup.start_daemon();
    wait_for(Duration::from_secs(90), "the scheduled cleanup", || {
        orphans(&repo).is_empty().then_some(())
    });
    assert!(
        daemon
            .log_text()
            .contains("removed objects of backups that never committed")
    );
    assert_eq!(committed_backups_whole(&repo), 2);
    assert_eq!(listed(&setup, "config", None, 2), ids);
    assert!(daemon.stop().success());
}

// ---------------------------------------------------------------------------------------------
// Base backups

/// `restore cluster --job base --backup ID --target-dir T --immediate --no-archive` (no start).
fn restore_cluster(setup: &Setup, id: &str, target: &Path) -> bool {
    setup
        .ctl(&[
            "restore",
            "cluster",
            "--job",
            "base",
            "--backup",
            id,
            "--target-dir",
            target.to_str().unwrap(),
            "--immediate",
            "--no-archive",
        ])
        .status
        .success()
}

/// No session of the killed daemon still holds a backup open (PostgreSQL ends it with the
/// connection).
fn no_backup_session(p: &Physical) {
    wait_for(Duration::from_secs(30), "the backup session gone", || {
        let n = p.cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%pg_backup_%' AND pid <> pg_backend_pid();",
        );
        (n == "0").then_some(())
    });
}

#[test]
fn a_base_backup_killed_during_the_walk_waiting_for_the_stop_segment_and_around_its_commit() {
    let mut p = Physical::start("60s");
    p.cluster.create_database("app");
    p.cluster.load_pgbench("app", 1);
    let repo = p.setup.path("repo");
    assert!(p.daemon.take().unwrap().stop().success());
    let run = ["run", "base", "--full", "--wait"];
    for point in [
        "base-walk:base/",
        "base-wait-stop-segment:base",
        "commit-before:backups/base/",
    ] {
        killed_at(&p.setup, point, &run);
        no_backup_session(&p);
        let daemon = p.setup.start_daemon();
        common::wal::open_socket(&p.setup.socket());
        interrupted_and_invisible(&p.setup, "base", point, 0, |id, t| {
            restore_cluster(&p.setup, id, t)
        });
        assert!(daemon.stop().success());
    }
    assert!(!orphans(&repo).is_empty());

    // Just after the commit record: the run succeeded and the backup restores.
    let want = fingerprints(p.cluster.port, "app");
    killed_at(&p.setup, "commit-after:backups/base/", &run);
    no_backup_session(&p);
    p.daemon = Some(p.setup.start_daemon());
    common::wal::open_socket(&p.setup.socket());
    let committed = last_run(&p.setup, "base");
    assert_eq!(committed["status"], "succeeded", "{committed}");
    let id = committed["backup_id"].as_str().unwrap().to_string();
    assert_eq!(listed(&p.setup, "base", None, 1), vec![id.clone()]);
    let (out, restored) = p.restore(
        "r-committed",
        &["--backup", &id, "--immediate", "--no-archive"],
    );
    assert!(out.status.success(), "{}", restored.log());
    assert_eq!(fingerprints(restored.port, "app"), want);
    restored.stop();

    // The next run works (the local manifest copy was never saved: a full, saying why).
    p.cluster.psql(
        "app",
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 500;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let next = p.backup("--incremental");
    assert_eq!(next["status"], "succeeded", "{next}");
    let want = fingerprints(p.cluster.port, "app");
    p.switch_wal();
    let next_id = next["backup_id"].as_str().unwrap().to_string();
    let (out, restored) = p.restore(
        "r-next",
        &["--backup", &next_id, "--immediate", "--no-archive"],
    );
    assert!(out.status.success(), "{}", restored.log());
    assert_eq!(fingerprints(restored.port, "app"), want);
    restored.stop();
    assert!(p.daemon.take().unwrap().stop().success());
    assert!(orphans_go_after_the_grace(&repo) > 0);
    assert_eq!(committed_backups_whole(&repo), 2);
}
