//! Tree snapshots end to end on a local repository: `files` jobs (full, incremental chains,
//! max-chain), restores of any snapshot compared with the source tree as it was (paths, types,
//! modes, owners, nanosecond mtimes, hashes, link targets, hard-link groups), single-path
//! restores by ranged reads (bytes read counted), damaged and deleted parts, malicious
//! manifests, non-empty targets, strict mode, and a stock-tools restore (age | zstd | tar).
//! Runs as root (chown to uid 1234 is part of the awkward tree).

use bdc_backup::catalogue::{
    Catalogue, CatchUp, Compression, CompressionSettings, ConfigJob, DaemonSettings,
    EncryptionSettings, FilesJob, Job, JobSpec, LogTarget, RepositoryLocation, RepositorySettings,
    WalAck,
};
use bdc_backup::files::{
    FilesContext, JobOutcome, SnapshotRestoreOptions, restore_snapshot, run_files,
};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::{PipelineSettings, ProgressCounter};
use bdc_backup::repository::{CommitRecord, Repository};
use bdc_backup::schedule::CronSchedule;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Setup {
    pub work: tempfile::TempDir,
    pub src: PathBuf,
    pub catalogue: Catalogue,
    pub recipient: String,
}

fn new_identity(dir: &Path) -> (PathBuf, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let path = dir.join("restore.key");
    std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, id.to_public().to_string())
}

impl Setup {
    pub fn new(max_chain: Option<u32>, config_paths: Vec<String>) -> Setup {
        let work = tempfile::tempdir().unwrap();
        let (identity, recipient) = new_identity(work.path());
        let repo_path = work.path().join("repo");
        let state = work.path().join("state");
        let src = work.path().join("src");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&src).unwrap();
        let compression = CompressionSettings {
            algorithm: Compression::Zstd,
            level: 3,
            workers: 2,
        };
        let catalogue = Catalogue {
            source: work.path().join("catalogue.toml"),
            daemon: DaemonSettings {
                state_db: state.join("state.db"),
                state_directory: state.clone(),
                socket: work.path().join("control.sock"),
                timezone: chrono_tz::Europe::Berlin,
                max_concurrent_runs: 1,
                catch_up: CatchUp::Once,
                postgres_os_user: "postgres".into(),
                read_group: "bdc-backup".into(),
                admin_group: "bdc-backup-admin".into(),
                log: LogTarget::Stderr,
                log_level: "info".into(),
                shutdown_timeout: Duration::from_secs(5),
            },
            postgres: None,
            encryption: EncryptionSettings {
                recipients: vec![recipient.clone()],
                identity_file: Some(identity),
            },
            repositories: vec![RepositorySettings {
                name: "local".into(),
                url: format!("file://{}", repo_path.display()),
                location: RepositoryLocation::File { path: repo_path },
                wal_ack: WalAck::Sync,
                region: None,
                endpoint: None,
                credentials_file: None,
                bandwidth_limit: None,
            }],
            retention: BTreeMap::new(),
            objectives: BTreeMap::new(),
            jobs: vec![
                Job {
                    name: "uploads".into(),
                    repositories: vec!["local".into()],
                    retention: None,
                    max_age: None,
                    connection: None,
                    compression: compression.clone(),
                    spec: JobSpec::Files(FilesJob {
                        path: src.clone(),
                        include: vec![],
                        exclude: vec!["*.tmp".into()],
                        full: CronSchedule::parse("0 4 * * 0").unwrap(),
                        incremental: Some(CronSchedule::parse("0 3 * * *").unwrap()),
                        max_chain,
                        one_file_system: true,
                    }),
                },
                Job {
                    name: "config".into(),
                    repositories: vec!["local".into()],
                    retention: None,
                    max_age: None,
                    connection: None,
                    compression,
                    spec: JobSpec::Config(ConfigJob {
                        paths: config_paths,
                        schedule: CronSchedule::parse("*/30 * * * *").unwrap(),
                        watch: false,
                    }),
                },
            ],
        };
        Setup {
            work,
            src,
            catalogue,
            recipient,
        }
    }

    pub fn repository(&self) -> Repository {
        Repository::open(&self.catalogue.repositories[0]).unwrap()
    }

    pub fn pipeline(&self) -> PipelineSettings {
        PipelineSettings {
            compression: self.catalogue.jobs[0].compression.clone(),
            recipients: vec![self.recipient.parse().unwrap()],
            // Small frames, so trees of a few MiB have many of them.
            frame_size: 64 * 1024,
        }
    }

    pub fn repo_path(&self) -> PathBuf {
        self.work.path().join("repo")
    }

    pub async fn backup(&self, ty: BackupType) -> (CommitRecord, Vec<String>, Option<String>) {
        self.backup_at(ty, Utc::now()).await
    }

    pub async fn backup_at(
        &self,
        ty: BackupType,
        started_at: DateTime<Utc>,
    ) -> (CommitRecord, Vec<String>, Option<String>) {
        let job = &self.catalogue.jobs[0];
        let JobSpec::Files(spec) = &job.spec else {
            unreachable!()
        };
        let repository = self.repository();
        let pipeline = self.pipeline();
        let id = bdc_backup::repository::BackupId::new(started_at, ty).0;
        let outcome = run_files(FilesContext {
            catalogue: &self.catalogue,
            job,
            spec,
            repository: &repository,
            replicas: &[],
            pipeline: &pipeline,
            backup_id: &id,
            started_at,
            requested: ty,
            progress: &ProgressCounter::default(),
            cancel: &CancellationToken::new(),
            state_dir: &self.catalogue.daemon.state_directory,
        })
        .await
        .expect("backup");
        match outcome {
            JobOutcome::Committed {
                record,
                warnings,
                full_because,
            } => (record, warnings, full_because),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn restore_options(&self, backup: &str, target: &Path) -> SnapshotRestoreOptions {
        SnapshotRestoreOptions {
            job: "uploads".into(),
            backup: Some(backup.into()),
            target: Some(target.to_path_buf()),
            ..Default::default()
        }
    }
}

/// What is compared of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    sha: Option<String>,
    link: Option<Vec<u8>>,
    /// Hard links: the first path of the group (by sorted path), else None.
    group: Option<Vec<u8>>,
}

/// Describes a tree (symlinks not followed), keyed by relative path bytes.
pub fn describe(root: &Path) -> BTreeMap<Vec<u8>, Desc> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    let mut all = Vec::new();
    while let Some((abs, rel)) = stack.pop() {
        let m = std::fs::symlink_metadata(&abs).unwrap();
        all.push((abs.clone(), rel.clone(), m.clone()));
        if m.is_dir() {
            for e in std::fs::read_dir(&abs).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().as_bytes().to_vec();
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(&name);
                stack.push((e.path(), r));
            }
        }
    }
    all.sort_by(|a, b| a.1.cmp(&b.1));
    for (abs, rel, m) in all {
        let ft = m.file_type();
        let (kind, sha, link) = if ft.is_dir() {
            ("dir", None, None)
        } else if ft.is_symlink() {
            (
                "symlink",
                None,
                Some(
                    std::fs::read_link(&abs)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                ),
            )
        } else {
            let data = std::fs::read(&abs).unwrap();
            ("file", Some(hex::encode(Sha256::digest(&data))), None)
        };
        let group = if ft.is_file() && m.nlink() > 1 {
            Some(inodes.entry(m.ino()).or_insert(rel.clone()).clone())
        } else {
            None
        };
        out.insert(
            rel,
            Desc {
                kind,
                mode: if ft.is_symlink() {
                    0
                } else {
                    m.mode() & 0o7777
                },
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                sha,
                link,
                group,
            },
        );
    }
    out
}

/// The root's own metadata differs (the target folder); compare the rest plus the root's mode.
pub fn assert_same_tree(a: &BTreeMap<Vec<u8>, Desc>, b: &BTreeMap<Vec<u8>, Desc>) {
    let keys_a: Vec<_> = a.keys().map(|k| k.escape_ascii().to_string()).collect();
    let keys_b: Vec<_> = b.keys().map(|k| k.escape_ascii().to_string()).collect();
    assert_eq!(keys_a, keys_b, "the same paths");
    for (k, da) in a {
        assert_eq!(Some(da), b.get(k), "entry {}", k.escape_ascii());
    }
}

fn set_mtime(path: &Path, secs_ago: i64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(Utc::now().timestamp() - secs_ago, 123_456_789);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Ages every entry's mtime (children before parents), so the racy-clean rule does not force
/// re-reads of untouched files.
fn age_tree(root: &Path, secs_ago: i64) {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        entries.push(p);
    }
    for p in entries.iter().rev() {
        set_mtime(p, secs_ago);
    }
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The awkward tree of issue 3.
pub fn make_awkward_tree(src: &Path) {
    let w = |rel: &[u8], data: &[u8]| {
        let p = src.join(OsStr::from_bytes(rel));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    };
    w("unicode-çé/文件 ü.txt".as_bytes(), b"unicode\n");
    w(b"with space.txt", b"spaces\n");
    w(b"new\nline", b"newline in the name\n");
    w(b"bad\xff\xfename.bin", b"non-utf8 name\n");
    w(b"empty", b"");
    std::fs::create_dir_all(src.join("emptydir")).unwrap();
    std::os::unix::fs::symlink("with space.txt", src.join("link")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", src.join("dangling")).unwrap();
    let h1 = w(b"hl1", b"hard linked content\n");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::hard_link(&h1, src.join("sub/hl2")).unwrap();
    std::fs::hard_link(&h1, src.join("sub/hl3")).unwrap();
    // Sparse: 8 MiB with 4 KiB of data in the middle.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(src.join("sparse.img")).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[7u8; 4096], 4 << 20).unwrap();
    }
    let secret = w(b".env", b"SECRET=1\n");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = w(b"bin/run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(src.join("shared")).unwrap();
    w(b"shared/doc.txt", b"in a setgid folder\n");
    let owned = w(b"shared/owned-by-1234", b"other owner\n");
    nix::unistd::chown(
        &owned,
        Some(nix::unistd::Uid::from_raw(1234)),
        Some(nix::unistd::Gid::from_raw(1234)),
    )
    .unwrap();
    nix::unistd::chown(
        &src.join("shared"),
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(1234)),
    )
    .unwrap();
    std::fs::set_permissions(src.join("shared"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    let mut deep = b"deep".to_vec();
    for i in 0..40 {
        deep.extend_from_slice(format!("/level-{i:02}").as_bytes());
    }
    deep.extend_from_slice(b"/bottom.txt");
    w(&deep, b"deep down\n");
    let long = format!("{}.txt", "long-name-".repeat(20));
    w(long.as_bytes(), b"a name over 100 bytes\n");
    w(b"big.bin", &random_bytes(3 << 20, 1));
    w(b"ignored.tmp", b"excluded by the job\n");
}

fn without_excluded(mut d: BTreeMap<Vec<u8>, Desc>) -> BTreeMap<Vec<u8>, Desc> {
    d.retain(|k, _| !k.ends_with(b".tmp"));
    d
}

/// Drops the root entry (the target folder's own owner/mtime are compared separately).
fn no_root(mut d: BTreeMap<Vec<u8>, Desc>) -> BTreeMap<Vec<u8>, Desc> {
    d.remove(&Vec::new());
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_tree_round_trip_and_stock_tools() {
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
    assert!(failed >= 1 && failed < 10, "{:?}", report.stats.failed);
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
    let err = run_files(FilesContext {
        catalogue: &s.catalogue,
        job,
        spec,
        repository: &repository,
        replicas: &[],
        pipeline: &pipeline,
        backup_id: "20300101T000000Z-F",
        started_at: Utc::now(),
        requested: BackupType::Full,
        progress: &ProgressCounter::default(),
        cancel: &CancellationToken::new(),
        state_dir: &s.catalogue.daemon.state_directory,
    })
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
