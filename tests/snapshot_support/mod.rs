//! Shared set-up of the snapshot tests: a catalogue with a `files` and a `config` job on a
//! local repository, tree descriptions for comparisons, awkward trees.
#![allow(dead_code)]

use bdc_backup::catalogue::{
    Catalogue, CatchUp, Compression, CompressionSettings, ConfigJob, DaemonSettings,
    EncryptionSettings, FilesJob, Job, JobSpec, LogTarget, RepositoryLocation, RepositorySettings,
    WalAck,
};
use bdc_backup::files::{SnapshotRestoreOptions, run_config, run_files};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::{PipelineSettings, ProgressCounter};
use bdc_backup::repository::{CommitRecord, Repository};
use bdc_backup::schedule::CronSchedule;
use bdc_backup::snapshot::job::{JobOutcome, JobRun};
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
                replica_retry: std::time::Duration::from_secs(30),
                retention_schedule: bdc_backup::schedule::CronSchedule::parse("30 5 * * *")
                    .unwrap(),
                metrics_listen: None,
                metrics_file: None,
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
                call_timeout: None,
            }],
            retention: BTreeMap::new(),
            objectives: BTreeMap::new(),
            alerts: Vec::new(),
            application: None,
            jobs: vec![
                Job {
                    name: "uploads".into(),
                    repositories: vec!["local".into()],
                    retention: None,
                    max_age: None,
                    ping_url: None,
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
                    ping_url: None,
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
        let outcome = run_files(
            JobRun {
                catalogue: &self.catalogue,
                job,
                repository: &repository,
                replicas: &[],
                pipeline: &pipeline,
                backup_id: &id,
                started_at,
                requested: ty,
                progress: &ProgressCounter::default(),
                cancel: &CancellationToken::new(),
                state_dir: &self.catalogue.daemon.state_directory,
            },
            spec,
        )
        .await
        .expect("backup");
        match outcome {
            JobOutcome::Committed {
                record,
                warnings,
                full_because,
            } => (*record, warnings, full_because),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// One config check.
    pub async fn config_check(&self) -> JobOutcome {
        let job = &self.catalogue.jobs[1];
        let JobSpec::Config(spec) = &job.spec else {
            unreachable!()
        };
        let repository = self.repository();
        let pipeline = self.pipeline();
        let started_at = Utc::now();
        let id = bdc_backup::repository::BackupId::new(started_at, BackupType::Full).0;
        run_config(
            JobRun {
                catalogue: &self.catalogue,
                job,
                repository: &repository,
                replicas: &[],
                pipeline: &pipeline,
                backup_id: &id,
                started_at,
                requested: BackupType::Full,
                progress: &ProgressCounter::default(),
                cancel: &CancellationToken::new(),
                state_dir: &self.catalogue.daemon.state_directory,
            },
            spec,
        )
        .await
        .expect("config check")
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
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub sha: Option<String>,
    pub link: Option<Vec<u8>>,
    /// Hard links: the first path of the group (by sorted path), else None.
    pub group: Option<Vec<u8>>,
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

pub fn set_mtime(path: &Path, secs_ago: i64) {
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
pub fn age_tree(root: &Path, secs_ago: i64) {
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

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
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

pub fn without_excluded(mut d: BTreeMap<Vec<u8>, Desc>) -> BTreeMap<Vec<u8>, Desc> {
    d.retain(|k, _| !k.ends_with(b".tmp"));
    d
}

/// Drops the root entry (the target folder's own owner/mtime are compared separately).
pub fn no_root(mut d: BTreeMap<Vec<u8>, Desc>) -> BTreeMap<Vec<u8>, Desc> {
    d.remove(&Vec::new());
    d
}
