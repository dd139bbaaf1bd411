//! Tree snapshots end to end on a local repository: `files` jobs (full, incremental chains,
//! max-chain), restores of any snapshot compared with the source tree as it was (paths, types,
//! modes, owners, nanosecond mtimes, hashes, link targets, hard-link groups), single-path
//! restores by ranged reads (bytes read counted), damaged and deleted parts, malicious
//! manifests, non-empty targets, and a stock-tools restore (age | zstd | tar).
//! Runs as root (chown to uid 1234 is part of the awkward tree).

mod snapshot_support;

use bdc_backup::catalogue::JobSpec;
use bdc_backup::files::{restore_snapshot, run_files};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::ProgressCounter;
use bdc_backup::snapshot::job::JobRun;
use chrono::Utc;
use snapshot_support::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The tests of this file run at once in one process; the one that counts this process's reads
/// (`rchar`) holds this exclusively, the others share it, so no other test's reads are counted.
static IO: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_tree_round_trip_and_stock_tools() {
    let _io = IO.read().await;
    let s = Setup::new(None, vec![]);
    make_awkward_tree(&s.src);
    age_tree(&s.src, 3600);
    let before = without_excluded(describe(&s.src));
    let (full, warnings, _) = s.backup(BackupType::Full).await;
    assert!(
        warnings.iter().all(|w| !w.contains("cannot")),
        "{warnings:?}"
    );
    assert_eq!(full.backup_type, BackupType::Full);
    assert!(!full.objects.is_empty());

    let target = s.work.path().join("restored");
    let report = restore_snapshot(&s.catalogue, s.restore_options(&full.id, &target))
        .await
        .expect("restore");
    assert!(report.stats.failed.is_empty(), "{report}");
    let after = describe(&target);
    assert_same_tree(&no_root(before.clone()), &no_root(after.clone()));
    // The root's mode and mtime come back too.
    assert_eq!(before[&Vec::new()].mode, after[&Vec::new()].mode);
    assert_eq!(before[&Vec::new()].mtime, after[&Vec::new()].mtime);
    // The sparse file is sparse again.
    let m = std::fs::metadata(target.join("sparse.img")).unwrap();
    assert!(m.blocks() * 512 < m.len() / 4, "blocks {}", m.blocks());
    // setgid survived the chown.
    assert_eq!(
        std::fs::metadata(target.join("shared")).unwrap().mode() & 0o7777,
        0o2775
    );

    // Stock tools only: age -d | zstd -d | tar -x per part, as root keeps owners.
    let stock = s.work.path().join("stock");
    std::fs::create_dir_all(&stock).unwrap();
    let key = s.catalogue.encryption.identity_file.clone().unwrap();
    for obj in &full.objects {
        let part = s.repo_path().join(&obj.key);
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "age -d -i '{}' '{}' | zstd -d | tar -x --numeric-owner -C '{}'",
                key.display(),
                part.display(),
                stock.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let stock_tree = describe(&stock);
    // tar keeps second-precision mtimes only; compare everything else.
    let strip = |d: BTreeMap<Vec<u8>, Desc>| -> BTreeMap<Vec<u8>, Desc> {
        d.into_iter()
            .map(|(k, mut v)| {
                v.mtime.1 = 0;
                if v.kind == "symlink" {
                    v.mtime = (0, 0);
                }
                (k, v)
            })
            .collect()
    };
    assert_same_tree(&strip(no_root(before)), &strip(no_root(stock_tree)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_chain_restores_each_state() {
    let _io = IO.read().await;
    let s = Setup::new(None, vec![]);
    make_awkward_tree(&s.src);
    for i in 0..50 {
        std::fs::write(s.src.join(format!("sub/f{i:03}")), random_bytes(20_000, i)).unwrap();
    }
    age_tree(&s.src, 3600);
    let mut states = Vec::new();
    let (full, _, _) = s.backup(BackupType::Full).await;
    states.push((full.id.clone(), without_excluded(describe(&s.src))));

    // I1: delete, rename, rewrite, add.
    std::fs::remove_file(s.src.join("sub/f000")).unwrap();
    std::fs::rename(s.src.join("sub/f001"), s.src.join("sub/f001-renamed")).unwrap();
    std::fs::write(s.src.join("sub/f002"), random_bytes(20_000, 999)).unwrap();
    std::fs::write(s.src.join("added"), b"new file").unwrap();
    let (i1, _, why) = s.backup(BackupType::Incremental).await;
    assert_eq!(why, None);
    assert_eq!(i1.backup_type, BackupType::Incremental);
    assert_eq!(i1.ancestors, vec![full.id.clone()]);
    states.push((i1.id.clone(), without_excluded(describe(&s.src))));
    let stored = i1.details["files-stored"].as_u64().unwrap();
    assert!(
        stored <= 5,
        "only changed or recent files re-read: {stored}"
    );

    // I2: a folder removed, a symlink retargeted, a mode change alone.
    std::fs::remove_dir_all(s.src.join("deep")).unwrap();
    std::fs::remove_file(s.src.join("link")).unwrap();
    std::os::unix::fs::symlink("added", s.src.join("link")).unwrap();
    std::fs::set_permissions(
        s.src.join("sub/f003"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (i2, _, _) = s.backup(BackupType::Incremental).await;
    states.push((i2.id.clone(), without_excluded(describe(&s.src))));

    // I3: a file rewritten (same size) within the same second as I3 starts; I4 must see it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (i3, _, _) = s.backup(BackupType::Incremental).await;
    states.push((i3.id.clone(), without_excluded(describe(&s.src))));
    std::fs::write(s.src.join("sub/f004"), random_bytes(20_000, 4444)).unwrap();
    // Pretend the rewrite kept the old mtime second (coarse clocks): mtime = I3's start.
    {
        use nix::sys::stat::{UtimensatFlags, utimensat};
        use nix::sys::time::TimeSpec;
        let t = TimeSpec::new(i3.started_at.timestamp(), 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &s.src.join("sub/f004"),
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (i4, _, _) = s.backup(BackupType::Incremental).await;
    assert_eq!(i4.ancestors.len(), 4);
    states.push((i4.id.clone(), without_excluded(describe(&s.src))));

    // Each snapshot restores to its own state, not the latest.
    for (n, (id, state)) in states.iter().enumerate() {
        let target = s.work.path().join(format!("restore-{n}"));
        let report = restore_snapshot(&s.catalogue, s.restore_options(id, &target))
            .await
            .unwrap_or_else(|e| panic!("restore {id}: {e}"));
        assert!(report.stats.failed.is_empty());
        assert_same_tree(&no_root(state.clone()), &no_root(describe(&target)));
    }
    assert_ne!(states[3].1, states[4].1, "f004 differs between I3 and I4");

    // --at picks the newest backup stopped at or before the time.
    let target = s.work.path().join("restore-at");
    let mut o = s.restore_options("", &target);
    o.backup = None;
    o.at = Some(i2.stopped_at.to_rfc3339());
    let report = restore_snapshot(&s.catalogue, o).await.unwrap();
    assert_eq!(report.backup_id, i2.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_chain_and_missing_copy_make_a_full() {
    let _io = IO.read().await;
    let s = Setup::new(Some(2), vec![]);
    std::fs::write(s.src.join("a"), b"a").unwrap();
    let (f, _, _) = s.backup(BackupType::Incremental).await;
    assert_eq!(f.backup_type, BackupType::Full, "no parent yet");
    assert!(f.id.ends_with("-F"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (i1, _, _) = s.backup(BackupType::Incremental).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (i2, _, _) = s.backup(BackupType::Incremental).await;
    assert_eq!(i1.backup_type, BackupType::Incremental);
    assert_eq!(i2.backup_type, BackupType::Incremental);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (f2, _, why) = s.backup(BackupType::Incremental).await;
    assert_eq!(f2.backup_type, BackupType::Full);
    assert!(why.unwrap().contains("max-chain"));
    // Without the local copy the next run is a full.
    std::fs::remove_dir_all(s.catalogue.daemon.state_directory.join("manifests")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (f3, _, why) = s.backup(BackupType::Incremental).await;
    assert_eq!(f3.backup_type, BackupType::Full);
    assert!(why.unwrap().contains("local manifest copy"));
}

/// Bytes this process has read through read(2) so far.
fn rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_path_restore_reads_only_its_frames() {
    let _io = IO.write().await;
    let s = Setup::new(None, vec![]);
    for i in 0..400u64 {
        std::fs::create_dir_all(s.src.join(format!("d{}", i % 10))).unwrap();
        std::fs::write(
            s.src.join(format!("d{}/f{i:04}", i % 10)),
            random_bytes(40_000, i),
        )
        .unwrap();
    }
    let (full, _, _) = s.backup(BackupType::Full).await;
    let stored: u64 = full.objects.iter().map(|o| o.size).sum();
    assert!(stored > 15 << 20, "{stored}");

    let target = s.work.path().join("one");
    let mut o = s.restore_options(&full.id, &target);
    o.paths = vec![PathBuf::from("d7/f0137")];
    let before = rchar();
    let report = restore_snapshot(&s.catalogue, o).await.unwrap();
    let read = rchar() - before;
    assert_eq!(report.stats.files, 1);
    assert!(report.stats.frames_fetched <= 2, "{report}");
    assert!(
        read < stored / 10,
        "read {read} bytes of {stored} stored (manifest included)"
    );
    assert_eq!(
        std::fs::read(target.join("d7/f0137")).unwrap(),
        random_bytes(40_000, 137)
    );
    // Only the file and the folder on its way.
    let tree = describe(&target);
    assert_eq!(tree.len(), 3, "{:?}", tree.keys().collect::<Vec<_>>());

    // An absolute --path beneath the job's folder works too; a path not in the snapshot fails.
    let target2 = s.work.path().join("folder");
    let mut o = s.restore_options(&full.id, &target2);
    o.paths = vec![s.src.join("d3")];
    let report = restore_snapshot(&s.catalogue, o).await.unwrap();
    assert_eq!(report.stats.files, 40);
    let mut o = s.restore_options(&full.id, &s.work.path().join("none"));
    o.paths = vec![PathBuf::from("nope")];
    let err = restore_snapshot(&s.catalogue, o).await.unwrap_err();
    assert!(err.to_string().contains("not in this snapshot"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_deleted_parts_name_the_files() {
    let _io = IO.read().await;
    let s = Setup::new(None, vec![]);
    for i in 0..100u64 {
        std::fs::write(s.src.join(format!("f{i:03}")), random_bytes(30_000, i)).unwrap();
    }
    age_tree(&s.src, 3600);
    let (full, _, _) = s.backup(BackupType::Full).await;
    std::fs::write(s.src.join("late"), b"added in the incremental").unwrap();
    std::fs::write(s.src.join("f050"), random_bytes(30_000, 5050)).unwrap();
    let (inc, _, _) = s.backup(BackupType::Incremental).await;

    // Corrupt one byte in the middle of the full's part.
    let part = s.repo_path().join(&full.objects[0].key);
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&part, &bytes).unwrap();

    let target = s.work.path().join("t1");
    let err = restore_snapshot(&s.catalogue, s.restore_options(&full.id, &target))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("could not be restored") && err.contains("f0"),
        "{err}"
    );

    let target = s.work.path().join("t2");
    let mut o = s.restore_options(&full.id, &target);
    o.ignore_errors = true;
    let report = restore_snapshot(&s.catalogue, o).await.unwrap();
    let failed = report.stats.failed.len();
    assert!((1..10).contains(&failed), "{:?}", report.stats.failed);
    let restored = std::fs::read_dir(&target).unwrap().count();
    assert_eq!(restored + failed, 100, "the rest restores");
    for i in 0..100u64 {
        let p = target.join(format!("f{i:03}"));
        if p.exists() {
            assert_eq!(std::fs::read(&p).unwrap(), random_bytes(30_000, i));
        }
    }

    // The incremental's part deleted: exactly its two files are named.
    std::fs::remove_file(s.repo_path().join(&inc.objects[0].key)).unwrap();
    let target = s.work.path().join("t3");
    let mut o = s.restore_options(&inc.id, &target);
    o.ignore_errors = true;
    let report = restore_snapshot(&s.catalogue, o).await.unwrap();
    let names: Vec<&String> = report
        .stats
        .failed
        .iter()
        .filter(|f| f.starts_with("late") || f.starts_with("f050"))
        .collect();
    assert_eq!(names.len(), 2, "{:?}", report.stats.failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused() {
    let _io = IO.read().await;
    let s = Setup::new(None, vec![]);
    std::fs::write(s.src.join("a"), b"a").unwrap();
    let (full, _, _) = s.backup(BackupType::Full).await;

    // Target not empty.
    let target = s.work.path().join("busy");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("existing"), b"x").unwrap();
    let err = restore_snapshot(&s.catalogue, s.restore_options(&full.id, &target))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let mut o = s.restore_options(&full.id, &target);
    o.overwrite = true;
    restore_snapshot(&s.catalogue, o).await.unwrap();
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"a");

    // Source folder missing.
    std::fs::remove_dir_all(&s.src).unwrap();
    let job = &s.catalogue.jobs[0];
    let JobSpec::Files(spec) = &job.spec else {
        unreachable!()
    };
    let repository = s.repository();
    let pipeline = s.pipeline();
    let err = run_files(
        JobRun {
            catalogue: &s.catalogue,
            job,
            repository: &repository,
            replicas: &[],
            pipeline: &pipeline,
            backup_id: "20300101T000000Z-F",
            started_at: Utc::now(),
            requested: BackupType::Full,
            progress: &ProgressCounter::default(),
            cancel: &CancellationToken::new(),
            state_dir: &s.catalogue.daemon.state_directory,
        },
        spec,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("src"), "{err}");

    // Malicious manifests: nothing is written.
    for evil in [&b"../escape"[..], b"/etc/evil", b"a/../../x"] {
        let mut f = tempfile::tempfile().unwrap();
        use std::io::Write;
        let header = serde_json::json!({"format-version":1,"kind":"tree-snapshot","job":"x",
            "backup-id":"X-F","backup-type":"full","mode":"lenient","source":"/",
            "started-at":"2026-01-01T00:00:00Z"});
        let entry = serde_json::json!({"path": String::from_utf8_lossy(evil),"type":"file",
            "mode":420,"uid":0,"gid":0,"mtime":0,"mtime-nsec":0,"ctime":0,"ctime-nsec":0,
            "ino":1,"size":0,"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"});
        writeln!(f, "{header}\n{entry}\n{{\"end\":{{\"entries\":1,\"objects\":[],\"files-stored\":0,\"warnings\":0}}}}").unwrap();
        let target = s.work.path().join("evil-target");
        let err = bdc_backup::snapshot::restore::restore(
            &mut f,
            &repository.store,
            &Default::default(),
            &bdc_backup::pipeline::Identities::from_keys(vec![]),
            &bdc_backup::snapshot::restore::RestoreOptions {
                target: target.clone(),
                ..Default::default()
            },
            tokio::runtime::Handle::current(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unsafe path"), "{err}");
        assert!(!target.exists());
        assert!(!s.work.path().join("escape").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_restore_files_from_a_catalogue_file() {
    let _io = IO.read().await;
    let s = Setup::new(None, vec![]);
    std::fs::write(s.src.join("hello.txt"), b"hello").unwrap();
    std::fs::create_dir_all(s.src.join("sub")).unwrap();
    std::fs::write(s.src.join("sub/x"), b"x").unwrap();
    let (full, _, _) = s.backup(BackupType::Full).await;
    let w = s.work.path();
    let toml = format!(
        r#"
[daemon]
state-db = "{state}/state.db"
socket = "{work}/control.sock"
timezone = "Europe/Berlin"

[encryption]
recipients = ["{recipient}"]
identity-file = "{identity}"

[repository.local]
url = "file://{work}/repo"

[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = ["local"]
"#,
        state = s.catalogue.daemon.state_directory.display(),
        work = w.display(),
        recipient = s.recipient,
        identity = s
            .catalogue
            .encryption
            .identity_file
            .as_ref()
            .unwrap()
            .display(),
        src = s.src.display(),
    );
    let cat = w.join("catalogue.toml");
    std::fs::write(&cat, toml).unwrap();
    let ctl = env!("CARGO_BIN_EXE_bdc-backupctl");
    let target = w.join("ctl-target");
    let out = std::process::Command::new(ctl)
        .args([
            "--catalogue",
            cat.to_str().unwrap(),
            "--json",
            "restore",
            "files",
        ])
        .args(["--job", "uploads", "--target", target.to_str().unwrap()])
        .args(["--path", "sub", "--dry-run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backup-id"], full.id.as_str());
    assert_eq!(report["files"], 1);
    assert!(!target.exists(), "dry run creates nothing");
    let out = std::process::Command::new(ctl)
        .args(["--catalogue", cat.to_str().unwrap(), "restore", "files"])
        .args(["--job", "uploads", "--target", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(target.join("hello.txt")).unwrap(), b"hello");
    assert_eq!(
        std::fs::read(target.join("sub/x")).unwrap(),
        b"x",
        "the nested file comes back with its content"
    );
    assert!(target.join("sub").is_dir());
    // Again into the now non-empty target: refused, exit 1.
    let out = std::process::Command::new(ctl)
        .args(["--catalogue", cat.to_str().unwrap(), "restore", "files"])
        .args(["--job", "uploads", "--target", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_backup_leaves_no_commit_and_the_next_incremental_is_right() {
    let _io = IO.read().await;
    let s = Setup::new(None, vec![]);
    for i in 0..30u64 {
        std::fs::write(s.src.join(format!("f{i:02}")), random_bytes(200_000, i)).unwrap();
    }
    age_tree(&s.src, 3600);
    let (full, _, _) = s.backup(BackupType::Full).await;
    std::fs::write(s.src.join("f05"), random_bytes(200_000, 555)).unwrap();

    // A run killed mid-way: cancelled while it stores.
    let job = &s.catalogue.jobs[0];
    let JobSpec::Files(spec) = &job.spec else {
        unreachable!()
    };
    let repository = s.repository();
    let pipeline = s.pipeline();
    let cancel = CancellationToken::new();
    let progress = ProgressCounter::default();
    let started = Utc::now() + chrono::Duration::seconds(5);
    let id = bdc_backup::repository::BackupId::new(started, BackupType::Full).0;
    let run = run_files(
        JobRun {
            catalogue: &s.catalogue,
            job,
            repository: &repository,
            replicas: &[],
            pipeline: &pipeline,
            backup_id: &id,
            started_at: started,
            requested: BackupType::Full,
            progress: &progress,
            cancel: &cancel,
            state_dir: &s.catalogue.daemon.state_directory,
        },
        spec,
    );
    let canceller = async {
        while progress.read() < 1 << 20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(run, canceller);
    assert!(result.is_err());
    assert!(
        !s.repo_path()
            .join(format!("backups/uploads/{id}/backup.json"))
            .exists()
    );
    let (records, _) = repository.list_commits(Some("uploads")).await.unwrap();
    assert_eq!(records.len(), 1);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (inc, _, why) = s.backup(BackupType::Incremental).await;
    assert_eq!(why, None);
    assert_eq!(inc.ancestors, vec![full.id.clone()]);
    let target = s.work.path().join("after-kill");
    restore_snapshot(&s.catalogue, s.restore_options(&inc.id, &target))
        .await
        .unwrap();
    assert_same_tree(&no_root(describe(&s.src)), &no_root(describe(&target)));
}
