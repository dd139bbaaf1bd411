//! Store faults (issue 11): the real binaries over local repositories whose store injects faults
//! (`BDC_BACKUP_TEST_STORE_FAULTS`, src/repository/faulty.rs, debug builds) and logs every
//! completed store call (`BDC_BACKUP_TEST_STORE_LOG`). WAL acknowledgement against the log's
//! order, a hung sync repository, a truncated read during a restore, replica copy errors then
//! the background replicator, a hung restore ended by the per-call deadline, and a transient
//! error retried where a permanent one is not.

mod common;

use common::files_under;

use common::daemon::{CTL, Setup, TestDaemon, wait_for};
use common::pg::PgCluster;
use common::wal::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const FAULTS: &str = "BDC_BACKUP_TEST_STORE_FAULTS";
const LOG: &str = "BDC_BACKUP_TEST_STORE_LOG";

fn log_lines(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// The index of the first log line matching `f`.
fn position(lines: &[Vec<String>], f: impl Fn(&[String]) -> bool) -> Option<usize> {
    lines.iter().position(|l| f(l))
}

fn is_put_of(l: &[String], repo: &str, name: &str, result: &str) -> bool {
    l.len() >= 5
        && l[0] == repo
        && l[1] == "put"
        && l[2].starts_with("wal/")
        && l[2].contains(name)
        && l[3] == result
}

/// Two sync local repositories, `local` and `second`; PostgreSQL archives through wal-push
/// with a short `--timeout`, so a hung push fails instead of waiting five minutes.
fn wal_setup(setup: &Setup) -> PgCluster {
    let conf = archive_conf(&setup.socket()).replace("wal-push %p'", "wal-push %p --timeout 3'");
    let cluster = PgCluster::start_with(&conf);
    setup.write_catalogue(&format!(
        "[repository.second]\nurl = \"file://{}\"\n\n{}",
        setup.path("second").display(),
        wal_job(&cluster, &["local", "second"])
    ));
    cluster
}

/// `wal-push` answers 0 only after the segment is durable in EVERY sync repository: in the
/// observer log, the daemon's reply to a pushed segment comes after the durable put (and the
/// folder fsync) of that segment in both repositories. With the second repository hung on WAL
/// puts, wal-push fails (PostgreSQL counts failures, archives nothing) although the first holds
/// the segment durably; once the hang is gone, PostgreSQL's retry archives it everywhere.
#[test]
fn wal_push_answers_only_after_every_sync_repository_is_durable() {
    let setup = Setup::new();
    let cluster = wal_setup(&setup);
    let log = setup.path("store.log");
    let log_s = log.to_str().unwrap().to_string();
    let daemon = setup.start_daemon_with(&[(LOG, &log_s)]);
    open_socket(&setup.socket());
    let seg = switch_wal(&cluster);
    wait_archived(&cluster, &seg);
    let lines = log_lines(&log);
    let reply = position(&lines, |l| l[0] == "wal-reply" && l.get(1) == Some(&seg))
        .unwrap_or_else(|| panic!("no reply for {seg} in the log: {lines:?}"));
    for repo in ["local", "second"] {
        let put = position(&lines, |l| is_put_of(l, repo, &seg, "ok"))
            .unwrap_or_else(|| panic!("no put of {seg} into {repo}: {lines:?}"));
        assert_eq!(lines[put][4], "durable=yes");
        assert!(
            put < reply,
            "{seg} answered (line {reply}) before it was durable in {repo} (line {put})"
        );
        let root = setup.path(if repo == "local" { "repo" } else { "second" });
        let fsyncs: Vec<usize> = lines[..put]
            .iter()
            .enumerate()
            .filter(|(_, l)| l[0] == repo && l[1] == "fsync-dir")
            .filter(|(_, l)| Path::new(&l[2]).starts_with(root.join("wal")))
            .map(|(i, _)| i)
            .collect();
        assert!(
            !fsyncs.is_empty(),
            "no folder fsync in {repo} before the put"
        );
    }
    daemon.stop();

    // The second sync repository hangs on every WAL put.
    let (archived, failed, last) = archiver(&cluster);
    std::fs::remove_file(&log).unwrap();
    let daemon = setup.start_daemon_with(&[(LOG, &log_s), (FAULTS, "second:put:wal/:hang")]);
    open_socket(&setup.socket());
    let hung = switch_wal(&cluster);
    wait_for(Duration::from_secs(60), "failed pushes", || {
        (archiver(&cluster).1 >= failed + 2).then_some(())
    });
    let (archived_now, _, last_now) = archiver(&cluster);
    assert_eq!(
        (archived_now, last_now.as_str()),
        (archived, last.as_str()),
        "a segment was acknowledged while a sync repository hung"
    );
    let lines = log_lines(&log);
    assert!(
        position(&lines, |l| is_put_of(l, "local", &hung, "ok")).is_some(),
        "the first repository did not store {hung}: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l[0] == "second"
            && l[1] == "put"
            && l.get(3).map(String::as_str) == Some("hang")),
        "the hang was not injected: {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l[0] == "wal-reply"),
        "the daemon answered a push: {lines:?}"
    );
    daemon.kill9();

    // Without the hang: PostgreSQL's retry archives it, into both repositories.
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    wait_archived(&cluster, &hung);
    for root in [setup.path("repo"), setup.path("second")] {
        assert!(
            stored(&root).iter().any(|(n, _, _)| n == &hung),
            "{hung} missing from {}",
            root.display()
        );
    }
    assert!(daemon.stop().success());
}

/// `wal-fetch` (in the ctl) retries a transient read error and succeeds; a permanent one is not
/// retried: one call in the log, a failure naming the repository.
#[test]
fn wal_fetch_retries_a_transient_error_not_a_permanent_one() {
    let setup = Setup::new();
    let cluster = PgCluster::start_with(&archive_conf(&setup.socket()));
    setup.write_catalogue(&wal_job(&cluster, &["local"]));
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let seg = switch_wal(&cluster);
    wait_archived(&cluster, &seg);
    let original = std::fs::read(cluster.data_dir().join("pg_wal").join(&seg)).unwrap();

    let fetch_with = |fault: &str, log: &Path, dest: &Path| -> Output {
        let data = cluster.data_dir();
        let out = Command::new(CTL)
            .arg("--catalogue")
            .arg(setup.catalogue_path())
            .args([
                "wal-fetch",
                &seg,
                dest.to_str().unwrap(),
                "--data-directory",
            ])
            .arg(&data)
            .args(["--timeout", "20"])
            .env(FAULTS, fault)
            .env(LOG, log)
            .output()
            .unwrap();
        eprintln!(
            "wal-fetch with {fault}: {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let gets = |log: &Path| -> Vec<String> {
        log_lines(log)
            .into_iter()
            .filter(|l| l[1] == "get" && l[2].contains(&seg))
            .map(|l| l[3].clone())
            .collect()
    };

    let (log, dest) = (setup.path("transient.log"), setup.path("fetched-1"));
    let out = fetch_with(&format!("local:get:{seg}:transient@1"), &log, &dest);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(gets(&log), ["fault", "ok"], "retried once");
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "fetched bytes differ"
    );

    let (log, dest) = (setup.path("permanent.log"), setup.path("fetched-2"));
    let out = fetch_with(&format!("local:get:{seg}:permanent"), &log, &dest);
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("local") && err.contains("permanent"), "{err}");
    assert_eq!(gets(&log), ["fault"], "a permanent error was retried");
    assert!(!dest.exists(), "a failed fetch left {}", dest.display());
    assert!(daemon.stop().success());
}

/// A files job over `src` with one incompressible 3 MiB file and a small one.
fn files_setup(setup: &Setup, repositories: &str, extra: &str) -> (PathBuf, Vec<u8>) {
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let data: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(src.join("big.bin"), &data).unwrap();
    std::fs::write(src.join("small.txt"), b"small\n").unwrap();
    setup.write_catalogue(&format!(
        r#"{extra}
[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = [{repositories}]
"#,
        src = src.display()
    ));
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "shutdown-timeout = \"20s\"",
            "shutdown-timeout = \"20s\"\nreplica-retry = \"1s\"",
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    (src, data)
}

fn full_run(setup: &Setup, daemon: &TestDaemon) -> serde_json::Value {
    let out = setup.ctl(&["run", "uploads", "--full", "--wait"]);
    let run = setup.ctl_json(&["runs", "--limit", "1"])[0].clone();
    eprintln!(
        "run: {run}\nexit {:?}\nlog:\n{}",
        out.status.code(),
        daemon.log_text()
    );
    run
}

fn restore(setup: &Setup, id: &str, repository: &str, target: &Path) -> Output {
    restore_with(setup, id, repository, target, &[])
}

/// `restore files` runs in the ctl: the faults go into its environment.
fn restore_with(
    setup: &Setup,
    id: &str,
    repository: &str,
    target: &Path,
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(CTL);
    cmd.arg("--catalogue").arg(setup.catalogue_path()).args([
        "restore",
        "files",
        "--job",
        "uploads",
        "--repository",
        repository,
        "--backup",
        id,
        "--target",
        target.to_str().unwrap(),
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    eprintln!(
        "restore {env:?}: {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The restored copy of `name` under `target` (absolute source paths are kept below it).
fn restored(target: &Path, src: &Path, name: &str) -> PathBuf {
    if target.join(name).exists() {
        target.join(name)
    } else {
        target.join(src.strip_prefix("/").unwrap()).join(name)
    }
}

/// A truncated read of a data object during a restore: the restore fails naming the object,
/// the big file is not left half-written under the target, nothing is written beside the
/// target; the same restore without the fault gives the original bytes.
#[test]
fn a_truncated_read_during_a_restore_names_the_object() {
    let setup = Setup::new();
    let (src, data) = files_setup(&setup, "\"local\"", "");
    let daemon = setup.start_daemon();
    let run = full_run(&setup, &daemon);
    assert_eq!(run["status"], "succeeded");
    let id = run["backup_id"].as_str().unwrap().to_string();
    daemon.stop();

    let daemon = setup.start_daemon();
    let before: Vec<PathBuf> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let target = setup.path("target");
    let out = restore_with(
        &setup,
        &id,
        "local",
        &target,
        &[(FAULTS, "local:*:/data/:truncate")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("backups/uploads/{id}/data/")),
        "the error does not name the object: {err}"
    );
    let big = restored(&target, &src, "big.bin");
    if let Ok(bytes) = std::fs::read(&big) {
        assert!(
            bytes == data,
            "a half-restored big.bin was left: {} bytes",
            bytes.len()
        );
    }
    for f in files_under(&target) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name == "big.bin" || name == "small.txt",
            "a leftover under the target: {}",
            f.display()
        );
    }
    let after: Vec<PathBuf> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != &target && !before.contains(p))
        .collect();
    assert!(after.is_empty(), "written beside the target: {after:?}");

    let target = setup.path("target-2");
    assert!(restore(&setup, &id, "local", &target).status.success());
    assert!(std::fs::read(restored(&target, &src, "big.bin")).unwrap() == data);
    assert!(daemon.stop().success());
}

/// The replica copy to `offsite` fails on its first puts (transient): the run ends `partial`
/// with the replica queued; the background replicator retries, the queue drains, and a restore
/// from `offsite` gives the original bytes. The log shows the faults, then the puts that landed.
#[test]
fn replica_copy_errors_then_the_background_replicator_recovers() {
    let setup = Setup::new();
    let offsite = format!(
        "[repository.offsite]\nurl = \"file://{}\"\n",
        setup.path("offsite").display()
    );
    let (src, data) = files_setup(&setup, "\"local\", \"offsite\"", &offsite);
    let log = setup.path("store.log");
    let daemon = setup.start_daemon_with(&[
        (FAULTS, "offsite:put::transient@1-3"),
        (LOG, log.to_str().unwrap()),
    ]);
    let run = full_run(&setup, &daemon);
    assert_eq!(run["status"], "partial", "{run}");
    assert!(run["error"].as_str().unwrap().contains("offsite"), "{run}");
    let id = run["backup_id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(60), "the replica to land", || {
        let s = setup.ctl_json(&["status"]);
        (s["jobs"][0]["repositories"][1]["replica"]["pending"] == 0).then_some(())
    });
    let puts: Vec<String> = log_lines(&log)
        .into_iter()
        .filter(|l| l[0] == "offsite" && l[1] == "put")
        .map(|l| l[3].clone())
        .collect();
    assert!(
        puts.len() > 3 && puts[..1] == ["fault"] && puts.iter().skip(1).any(|r| r == "ok"),
        "{puts:?}"
    );
    let target = setup.path("restored");
    assert!(restore(&setup, &id, "offsite", &target).status.success());
    assert!(std::fs::read(restored(&target, &src, "big.bin")).unwrap() == data);
    assert!(daemon.stop().success());
}

/// A store call that never returns during a restore: the repository's per-call deadline
/// (`call-timeout`, here 2 s) ends it with an error naming the object and the deadline; the
/// restore fails instead of hanging, and claims no half-file.
#[test]
fn a_hung_read_during_a_restore_ends_at_the_call_deadline() {
    let setup = Setup::new();
    let (src, data) = files_setup(&setup, "\"local\"", "");
    let text = std::fs::read_to_string(setup.catalogue_path()).unwrap();
    let text = text.replacen(
        "[repository.local]\n",
        "[repository.local]\ncall-timeout = \"2s\"\n",
        1,
    );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    let daemon = setup.start_daemon();
    let run = full_run(&setup, &daemon);
    assert_eq!(run["status"], "succeeded");
    let id = run["backup_id"].as_str().unwrap().to_string();
    assert!(daemon.stop().success());

    let target = setup.path("target");
    let out = restore_with(
        &setup,
        &id,
        "local",
        &target,
        &[(FAULTS, "local:*:/data/:hang")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("backups/uploads/{id}/data/"))
            && err.contains("no answer within 2 s"),
        "{err}"
    );
    if let Ok(bytes) = std::fs::read(restored(&target, &src, "big.bin")) {
        assert!(
            bytes == data,
            "a half-restored big.bin was left: {} bytes",
            bytes.len()
        );
    }
}

/// Issue 11: what asks a store for its local form (`Store::local_store`: the cleanup's staging
/// folder and the pruning of empty folders) under the fault-injecting wrapper. The wrapper is
/// not bypassed: the cleanup's deletes go through it (an injected permanent fault on the first
/// delete fails the pass naming the repository and leaves the orphan and the staging file), and
/// the local-only work still happens through it (the next pass removes the orphan, prunes its
/// folder and the 2-day-old staging file).
#[test]
fn cleanup_under_the_faulty_wrapper_is_not_bypassed_and_reaches_the_local_store() {
    use bdc_backup::repository::faulty::wrap_with;
    use bdc_backup::repository::{Repository, Store};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let plain = Store::local(&root).unwrap();
        for key in ["part-000000.age", "part-000001.age", "manifest.age"] {
            plain
                .put_create(
                    &format!("backups/uploads/20260101T000000Z-orphan/{key}"),
                    bytes::Bytes::from_static(b"left by a killed run"),
                )
                .await
                .unwrap();
        }
        let staging = root.join(".staging/upload-123.tmp");
        std::fs::create_dir_all(staging.parent().unwrap()).unwrap();
        std::fs::write(&staging, b"half an upload").unwrap();
        let two_days = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
        std::fs::File::options()
            .write(true)
            .open(&staging)
            .unwrap()
            .set_modified(two_days)
            .unwrap();
        let store = wrap_with("local", plain, "local:delete::permanent@1").unwrap();
        assert!(matches!(store, Store::Faulty(_)));
        assert_eq!(
            store.local_store().map(|l| l.staging_dir()),
            Some(root.join(".staging")),
            "the wrapper hides the local store underneath"
        );
        let repository = Repository::with_store("local", store);
        // Every object is "older" than the grace: `now` is a day ahead.
        let now = chrono::Utc::now() + chrono::Duration::days(1);
        let grace = Duration::from_secs(6 * 3600);
        let orphan = root.join("backups/uploads/20260101T000000Z-orphan");

        let err = bdc_backup::retention::cleanup_uncommitted_at(&repository, grace, &[], now)
            .await
            .unwrap_err();
        let text = bdc_backup::error::error_chain(&err);
        assert!(
            text.contains("local") && text.contains("injected permanent fault"),
            "{text}"
        );
        assert_eq!(
            files_under(&orphan).len(),
            3,
            "the failed delete removed something"
        );
        assert!(staging.exists(), "the pass went on after a failed delete");

        let report = bdc_backup::retention::cleanup_uncommitted_at(&repository, grace, &[], now)
            .await
            .unwrap();
        assert_eq!(
            report.removed,
            [("uploads/20260101T000000Z-orphan".to_string(), 3)]
        );
        assert_eq!(report.staging_removed, 1, "{report:?}");
        assert!(!staging.exists());
        assert!(!orphan.exists(), "the empty folder was not pruned");
    });
}
