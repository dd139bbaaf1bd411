//! `files` and `config` jobs and their restores, on the tree-snapshot engine ([`crate::snapshot`]).
//!
//! - [`run_files`]: a folder tree, full or incremental. The parent is chosen here, from the
//!   repository's commit records and the plaintext local manifest copy: the newest committed
//!   backup of the job, committed in every replica given, with a chain shorter than `max-chain`
//!   and a matching local copy — otherwise the run is a full (and its id says `-F`).
//! - [`run_config`]: listed files and globs; stored (always a complete, small snapshot) only when
//!   the set of files, a content, a mode or an owner changed since the newest config backup;
//!   otherwise [`JobOutcome::Unchanged`] and nothing is uploaded.
//! - [`restore_snapshot`]: `restore files` / `restore config` without the daemon.
//! - [`watch`]: optional inotify watch of config files (parent folders, debounced).

pub mod watch;

use crate::catalogue::{Catalogue, ConfigJob, FilesJob, Job, JobSpec};
use crate::error::{Classify, Retry, io_retry};
use crate::model::{BackupType, JobKindName};
use crate::pipeline::{
    self, Identities, IdentityError, PipelineError, PipelineSettings, ProgressCounter,
};
use crate::repository::local_copy::LocalCopyError;
use crate::repository::{
    BackupId, CommitRecord, FORMAT_VERSION, ObjectRecord, Repository, RepositoryError, StoreError,
    format,
};
use crate::snapshot::backup::{self as engine, EngineConfig, EngineOutput, Parent};
use crate::snapshot::manifest::{EntryKind, ManifestReader, Mode};
use crate::snapshot::path::ByteName;
use crate::snapshot::restore::{RestoreError, RestoreOptions, RestoreStats};
use crate::snapshot::walk::{Event, Filter, ListWalk, TreeWalk};
use crate::snapshot::{SnapshotError, copy};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Plaintext bytes per data object (part); a larger file gets an object of its own.
pub const PART_SIZE: u64 = 256 << 20;

/// Everything one `files` run needs (mirrors `postgres::dump::DumpContext`).
pub struct FilesContext<'a> {
    pub catalogue: &'a Catalogue,
    pub job: &'a Job,
    pub spec: &'a FilesJob,
    /// The job's first repository: the backup is written and committed here.
    pub repository: &'a Repository,
    /// The job's other repositories: an incremental's parent must be committed in each.
    pub replicas: &'a [Repository],
    pub pipeline: &'a PipelineSettings,
    /// The id the daemon chose; used as is when the run's type stays as requested, otherwise a
    /// fresh id of the right type is derived from `started_at` (see [`JobOutcome`]).
    pub backup_id: &'a str,
    pub started_at: DateTime<Utc>,
    /// `--full` / `--incremental` or the schedule's type.
    pub requested: BackupType,
    pub progress: &'a ProgressCounter,
    pub cancel: &'a CancellationToken,
    /// The daemon's private state directory (manifest copies and the manifest spool).
    pub state_dir: &'a Path,
}

/// Everything one `config` run needs.
pub struct ConfigContext<'a> {
    pub catalogue: &'a Catalogue,
    pub job: &'a Job,
    pub spec: &'a ConfigJob,
    pub repository: &'a Repository,
    pub pipeline: &'a PipelineSettings,
    pub backup_id: &'a str,
    pub started_at: DateTime<Utc>,
    pub progress: &'a ProgressCounter,
    pub cancel: &'a CancellationToken,
    pub state_dir: &'a Path,
}

/// The result of a files or config run.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// A backup was committed. `record.id` may differ from the context's `backup_id` when the
    /// type changed (incremental requested, full made): record that id.
    Committed {
        record: Box<CommitRecord>,
        /// Unreadable files, files changed while read, missing config files, …
        warnings: Vec<String>,
        /// Why an incremental request became a full (None otherwise).
        full_because: Option<String>,
    },
    /// Config jobs: nothing changed since `since` (a committed backup id); nothing stored.
    Unchanged {
        since: String,
        warnings: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("job `{job}`: {source}")]
    Snapshot {
        job: String,
        #[source]
        source: SnapshotError,
    },
    #[error("job `{job}`: {source}")]
    Repository {
        job: String,
        #[source]
        source: RepositoryError,
    },
    #[error("job `{job}`: storing the manifest: {source}")]
    Manifest {
        job: String,
        #[source]
        source: PipelineError,
    },
    #[error("job `{job}`: local manifest copy: {source}")]
    LocalCopy {
        job: String,
        #[source]
        source: LocalCopyError,
    },
    #[error("job `{job}`: cancelled")]
    Cancelled { job: String },
    #[error("job `{job}`: committing backup {backup_id}: {source}")]
    Commit {
        job: String,
        backup_id: String,
        #[source]
        source: RepositoryError,
    },
    #[error("job `{job}`: internal task failed: {reason}")]
    Task { job: String, reason: String },
}

impl Classify for FilesError {
    fn retry(&self) -> Retry {
        match self {
            FilesError::Snapshot { source, .. } => source.retry(),
            FilesError::Repository { source, .. } | FilesError::Commit { source, .. } => {
                source.retry()
            }
            FilesError::Manifest { source, .. } => source.retry(),
            FilesError::LocalCopy { source, .. } => source.retry(),
            FilesError::Cancelled { .. } | FilesError::Task { .. } => Retry::Transient,
        }
    }
}

/// The chosen parent of an incremental.
pub(crate) struct ChosenParent {
    pub(crate) record: CommitRecord,
    pub(crate) copy: std::io::BufReader<std::fs::File>,
}

/// Picks the parent, or says why the run is a full.
pub(crate) async fn choose_parent(
    job: &str,
    kind: JobKindName,
    repository: &Repository,
    replicas: &[Repository],
    max_chain: Option<u32>,
    state_dir: &Path,
) -> Result<Result<ChosenParent, String>, FilesError> {
    let repo_err = |source| FilesError::Repository {
        job: job.to_string(),
        source,
    };
    let (records, _bad) = repository.list_commits(Some(job)).await.map_err(repo_err)?;
    let Some(parent) = records.into_iter().rev().find(|r| r.kind == kind) else {
        return Ok(Err("no earlier backup of this job".into()));
    };
    if let Some(max) = max_chain
        && parent.ancestors.len() as u64 + 1 > u64::from(max)
    {
        return Ok(Err(format!(
            "the chain reached max-chain ({max} incrementals)"
        )));
    }
    for replica in replicas {
        if replica
            .commit_record(job, &parent.id)
            .await
            .map_err(repo_err)?
            .is_none()
        {
            return Ok(Err(format!(
                "the parent {} is not committed in repository `{}` yet",
                parent.id, replica.name
            )));
        }
    }
    let (dir, j, id, sha) = (
        state_dir.to_path_buf(),
        job.to_string(),
        parent.id.clone(),
        parent.manifest.sha256.clone(),
    );
    let copy = tokio::task::spawn_blocking(move || copy::open_checked(&dir, &j, &id, &sha))
        .await
        .map_err(|e| FilesError::Task {
            job: job.to_string(),
            reason: e.to_string(),
        })?
        .map_err(|source| FilesError::LocalCopy {
            job: job.to_string(),
            source,
        })?;
    match copy {
        Some(copy) => Ok(Ok(ChosenParent {
            record: parent,
            copy,
        })),
        None => Ok(Err(format!(
            "the local manifest copy of the parent {} is missing or does not match",
            parent.id
        ))),
    }
}

/// An id of type `ty`: the daemon's when its letter matches, else a fresh unused one.
pub(crate) async fn id_for(
    repository: &Repository,
    job: &str,
    given: &str,
    started_at: DateTime<Utc>,
    ty: BackupType,
) -> Result<String, FilesError> {
    if BackupId(given.to_string())
        .parse()
        .is_some_and(|(_, t)| t == ty)
    {
        return Ok(given.to_string());
    }
    let mut n = 1;
    loop {
        let id = BackupId::with_suffix(started_at, ty, n);
        let taken = !repository
            .store
            .list(&format::backup_prefix(job, &id.0))
            .await
            .map_err(|source| FilesError::Repository {
                job: job.to_string(),
                source: RepositoryError::Store {
                    repository: repository.name.clone(),
                    source,
                },
            })?
            .is_empty();
        if !taken {
            return Ok(id.0);
        }
        n += 1;
    }
}

/// Runs one `files` backup: full or incremental (see the module docs for the parent rule).
///
/// # Errors
/// The source missing or unreadable as a whole, a store failure, cancellation. Unreadable
/// files inside the tree are warnings in the outcome (lenient mode).
pub async fn run_files(ctx: FilesContext<'_>) -> Result<JobOutcome, FilesError> {
    let job = ctx.job.name.clone();
    let (parent, full_because) = if ctx.requested == BackupType::Incremental {
        match choose_parent(
            &job,
            JobKindName::Files,
            ctx.repository,
            ctx.replicas,
            ctx.spec.max_chain,
            ctx.state_dir,
        )
        .await?
        {
            Ok(p) => (Some(p), None),
            Err(why) => (None, Some(why)),
        }
    } else {
        (None, None)
    };
    let ty = if parent.is_some() {
        BackupType::Incremental
    } else {
        BackupType::Full
    };
    let backup_id = id_for(ctx.repository, &job, ctx.backup_id, ctx.started_at, ty).await?;
    if let Some(why) = &full_because {
        tracing::info!(job = %job, backup_id = %backup_id, "full instead of incremental: {why}");
    }
    let filter =
        Filter::new(&ctx.spec.include, &ctx.spec.exclude).map_err(|e| FilesError::Snapshot {
            job: job.clone(),
            source: SnapshotError::Glob(e),
        })?;
    let walk =
        TreeWalk::new(&ctx.spec.path, filter, ctx.spec.one_file_system).map_err(|source| {
            FilesError::Snapshot {
                job: job.clone(),
                source: SnapshotError::Source {
                    path: ctx.spec.path.clone(),
                    source,
                },
            }
        })?;
    let ancestors = parent
        .as_ref()
        .map(|p| {
            let mut a = vec![p.record.id.clone()];
            a.extend(p.record.ancestors.iter().cloned());
            a
        })
        .unwrap_or_default();
    let cfg = EngineConfig {
        job: job.clone(),
        backup_id: backup_id.clone(),
        backup_type: ty,
        mode: Mode::Lenient,
        started_at: ctx.started_at,
        ancestors: ancestors.clone(),
        source: ByteName(ctx.spec.path.as_os_str().as_bytes().to_vec()),
        part_size: PART_SIZE,
        parent: parent.map(|p| Parent {
            manifest: Box::new(p.copy),
            started_at: p.record.started_at,
        }),
        spool_dir: ctx.state_dir.to_path_buf(),
        fault_unreadable: None,
        before_read: None,
        inspect: None,
    };
    let record = store_snapshot(
        Common {
            job: &job,
            kind: JobKindName::Files,
            repository: ctx.repository,
            pipeline: ctx.pipeline,
            started_at: ctx.started_at,
            progress: ctx.progress,
            cancel: ctx.cancel,
            state_dir: ctx.state_dir,
        },
        cfg,
        Box::new(walk),
    )
    .await?;
    Ok(JobOutcome::Committed {
        warnings: record.1,
        record: Box::new(record.0),
        full_because,
    })
}

/// What both job kinds (and postgres-base) share for storing a snapshot.
pub(crate) struct Common<'a> {
    pub(crate) job: &'a str,
    pub(crate) kind: JobKindName,
    pub(crate) repository: &'a Repository,
    pub(crate) pipeline: &'a PipelineSettings,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) progress: &'a ProgressCounter,
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) state_dir: &'a Path,
}

/// A stored but not yet committed snapshot: its record (to be completed by the caller) and the
/// plaintext manifest spool (for the local copy after the commit).
pub(crate) struct Prepared {
    pub(crate) record: CommitRecord,
    pub(crate) warnings: Vec<String>,
    manifest: tempfile::NamedTempFile,
    manifest_sha256: String,
}

/// Runs the engine, stores the manifest, saves the local copy, commits. On failure before the
/// commit, this backup's objects are deleted (best effort).
async fn store_snapshot(
    c: Common<'_>,
    cfg: EngineConfig,
    walk: Box<dyn Iterator<Item = Event> + Send>,
) -> Result<(CommitRecord, Vec<String>), FilesError> {
    let job = c.job.to_string();
    let backup_id = cfg.backup_id.clone();
    let result = store_and_commit(&c, cfg, walk).await;
    if let Err(e) = &result
        && !matches!(e, FilesError::Commit { .. })
    {
        delete_uncommitted(c.repository, &job, &backup_id).await;
    }
    result
}

/// Deletes an uncommitted backup's objects (best effort; cleanup removes what is left).
pub(crate) async fn delete_uncommitted(repository: &Repository, job: &str, backup_id: &str) {
    let store = &repository.store;
    if let Ok(objects) = store.list(&format::backup_prefix(job, backup_id)).await {
        for o in objects {
            match store.delete(&o.key).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(err) => {
                    tracing::warn!(key = %o.key, error = %err, "could not delete an uncommitted object; cleanup will")
                }
            }
        }
    }
}

async fn store_and_commit(
    c: &Common<'_>,
    cfg: EngineConfig,
    walk: Box<dyn Iterator<Item = Event> + Send>,
) -> Result<(CommitRecord, Vec<String>), FilesError> {
    let prepared = prepare_snapshot(c, cfg, walk).await?;
    commit_prepared(c, prepared).await
}

/// Runs the engine and stores the manifest; the record is built but not committed.
pub(crate) async fn prepare_snapshot(
    c: &Common<'_>,
    cfg: EngineConfig,
    walk: Box<dyn Iterator<Item = Event> + Send>,
) -> Result<Prepared, FilesError> {
    let job = c.job.to_string();
    let backup_id = cfg.backup_id.clone();
    let ty = cfg.backup_type;
    let ancestors = cfg.ancestors.clone();
    let mode = cfg.mode;
    tokio::fs::create_dir_all(c.state_dir)
        .await
        .map_err(|source| FilesError::Snapshot {
            job: job.clone(),
            source: SnapshotError::Spool {
                path: c.state_dir.to_path_buf(),
                source,
            },
        })?;
    let (store, settings, progress, cancel) = (
        c.repository.store.clone(),
        c.pipeline.clone(),
        c.progress.clone(),
        c.cancel.clone(),
    );
    let handle = tokio::runtime::Handle::current();
    let out: EngineOutput = tokio::task::spawn_blocking(move || {
        engine::run(cfg, walk, store, settings, progress, cancel, handle)
    })
    .await
    .map_err(|e| FilesError::Task {
        job: job.clone(),
        reason: e.to_string(),
    })?
    .map_err(|source| match source {
        SnapshotError::Cancelled => FilesError::Cancelled { job: job.clone() },
        source => FilesError::Snapshot {
            job: job.clone(),
            source,
        },
    })?;
    if c.cancel.is_cancelled() {
        return Err(FilesError::Cancelled { job });
    }
    let EngineOutput {
        objects,
        manifest,
        manifest_sha256,
        trailer,
        bytes_read,
        warnings,
        ..
    } = out;
    let manifest_key = format::manifest_key(&job, &backup_id);
    let reader =
        tokio::fs::File::from_std(manifest.reopen().map_err(|source| FilesError::Snapshot {
            job: job.clone(),
            source: SnapshotError::Spool {
                path: manifest.path().to_path_buf(),
                source,
            },
        })?);
    let manifest_record = pipeline::store_stream(
        &c.repository.store,
        &manifest_key,
        tokio::io::BufReader::new(reader),
        c.pipeline,
        &ProgressCounter::default(),
        c.cancel,
    )
    .await
    .map_err(|source| FilesError::Manifest {
        job: job.clone(),
        source,
    })?;
    let stopped_at = Utc::now();
    let objects: Vec<ObjectRecord> = objects.into_iter().map(|o| o.record).collect();
    let mut details = serde_json::Map::new();
    details.insert(
        "snapshot-mode".into(),
        serde_json::to_value(mode).unwrap_or_default(),
    );
    details.insert("files-stored".into(), trailer.files_stored.into());
    details.insert("warnings".into(), (warnings.len() as u64).into());
    let record = CommitRecord {
        format_version: FORMAT_VERSION,
        id: backup_id.clone(),
        job: job.clone(),
        kind: c.kind,
        backup_type: ty,
        ancestors,
        started_at: c.started_at,
        stopped_at,
        bytes_read,
        bytes_stored: objects.iter().map(|o| o.size).sum::<u64>() + manifest_record.size,
        objects,
        manifest: manifest_record,
        details,
        software: concat!("bdc-backup ", env!("CARGO_PKG_VERSION")).into(),
    };
    Ok(Prepared {
        record,
        warnings,
        manifest,
        manifest_sha256,
    })
}

/// Commits a prepared snapshot and saves the manifest's local copy.
pub(crate) async fn commit_prepared(
    c: &Common<'_>,
    prepared: Prepared,
) -> Result<(CommitRecord, Vec<String>), FilesError> {
    let Prepared {
        record,
        warnings,
        manifest,
        manifest_sha256,
    } = prepared;
    let job = c.job.to_string();
    let backup_id = record.id.clone();
    if c.cancel.is_cancelled() {
        return Err(FilesError::Cancelled { job });
    }
    c.repository
        .commit(&record)
        .await
        .map_err(|source| FilesError::Commit {
            job: job.clone(),
            backup_id: backup_id.clone(),
            source,
        })?;
    // The local copy for the next incremental; without it the next run is a full.
    let (dir, j, id, sha) = (
        c.state_dir.to_path_buf(),
        job.clone(),
        backup_id.clone(),
        record.manifest.sha256.clone(),
    );
    let plain_sha = manifest_sha256;
    let saved = tokio::task::spawn_blocking(move || {
        let mut f = manifest.reopen().map_err(|source| LocalCopyError::Io {
            action: "reopening the spool",
            path: manifest.path().to_path_buf(),
            source,
        })?;
        copy::save_from_file(&dir, &j, &id, &sha, &mut f, &plain_sha)
    })
    .await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(job = %job, error = %e, "could not save the manifest's local copy; the next backup will be a full")
        }
        Err(e) => {
            tracing::warn!(job = %job, error = %e, "could not save the manifest's local copy")
        }
    }
    Ok((record, warnings))
}

/// Runs one `config` check: stores a new version only when something changed.
pub async fn run_config(ctx: ConfigContext<'_>) -> Result<JobOutcome, FilesError> {
    let job = ctx.job.name.clone();
    let parent = choose_parent(
        &job,
        JobKindName::Config,
        ctx.repository,
        &[],
        None,
        ctx.state_dir,
    )
    .await?
    .ok();
    if let Some(p) = parent {
        let paths = ctx.spec.paths.clone();
        let since = p.record.id.clone();
        let same = tokio::task::spawn_blocking(move || config_unchanged(&paths, p.copy))
            .await
            .map_err(|e| FilesError::Task {
                job: job.clone(),
                reason: e.to_string(),
            })?;
        if let Some(warnings) = same {
            return Ok(JobOutcome::Unchanged { since, warnings });
        }
    }
    let backup_id = id_for(
        ctx.repository,
        &job,
        ctx.backup_id,
        ctx.started_at,
        BackupType::Full,
    )
    .await?;
    let cfg = EngineConfig {
        job: job.clone(),
        backup_id,
        backup_type: BackupType::Full,
        mode: Mode::Lenient,
        started_at: ctx.started_at,
        ancestors: Vec::new(),
        source: ByteName(b"/".to_vec()),
        part_size: PART_SIZE,
        parent: None,
        spool_dir: ctx.state_dir.to_path_buf(),
        fault_unreadable: None,
        before_read: None,
        inspect: None,
    };
    let (record, warnings) = store_snapshot(
        Common {
            job: &job,
            kind: JobKindName::Config,
            repository: ctx.repository,
            pipeline: ctx.pipeline,
            started_at: ctx.started_at,
            progress: ctx.progress,
            cancel: ctx.cancel,
            state_dir: ctx.state_dir,
        },
        cfg,
        Box::new(ListWalk::new(&ctx.spec.paths)),
    )
    .await?;
    Ok(JobOutcome::Committed {
        record: Box::new(record),
        warnings,
        full_because: None,
    })
}

/// Some(warnings) when the config files equal the parent's (same set of files, kinds,
/// contents, modes and owners); None when a new version is needed (or it cannot tell).
fn config_unchanged(
    paths: &[String],
    copy: std::io::BufReader<std::fs::File>,
) -> Option<Vec<String>> {
    let mut reader = ManifestReader::new(copy).ok()?;
    let mut warnings = Vec::new();
    for event in ListWalk::new(paths) {
        let item = match event {
            Event::Item(item) => item,
            Event::Missing { path } => {
                warnings.push(format!("/{}: does not exist", path.display()));
                continue;
            }
            Event::Error { .. } => return None,
        };
        let old = reader.next_entry().ok()??;
        let m = &item.meta;
        if old.path != item.path
            || old.mode != m.mode() & 0o7777
            || old.uid != m.uid()
            || old.gid != m.gid()
        {
            return None;
        }
        if m.file_type().is_symlink() {
            let target = std::fs::read_link(&item.abs).ok()?;
            if old.kind != EntryKind::Symlink
                || old.target.as_ref().map(|t| t.as_bytes()) != Some(target.as_os_str().as_bytes())
            {
                return None;
            }
        } else if m.is_file() {
            if old.kind != EntryKind::File || old.size != m.size() {
                return None;
            }
            let mut f = std::fs::File::open(&item.abs).ok()?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).ok()?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            if old.sha256.as_deref() != Some(hex::encode(hasher.finalize()).as_str()) {
                return None;
            }
        } else {
            return None;
        }
    }
    // No entries left over in the parent (a file that disappeared is a change).
    match reader.next_entry() {
        Ok(None) => Some(warnings),
        _ => None,
    }
}

/// `restore files` / `restore config` (DESIGN §13).
#[derive(Debug, Clone, Default)]
pub struct SnapshotRestoreOptions {
    pub job: String,
    /// A backup id; default: the newest (or see `at`).
    pub backup: Option<String>,
    /// The newest backup stopped at or before this time (RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS]]`
    /// in the catalogue's time zone).
    pub at: Option<String>,
    /// Restore beneath this folder; config jobs' absolute paths become relative to it.
    pub target: Option<PathBuf>,
    /// Config jobs: back to the original absolute paths (existing files are replaced).
    pub in_place: bool,
    /// Only these paths (files jobs: relative to the job's folder or absolute beneath it;
    /// config jobs: absolute).
    pub paths: Vec<PathBuf>,
    pub dry_run: bool,
    pub overwrite: bool,
    pub ignore_errors: bool,
    pub numeric_owner: bool,
    pub repository: Option<String>,
}

/// What a snapshot restore did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotRestoreReport {
    pub job: String,
    pub repository: String,
    pub backup_id: String,
    pub target: PathBuf,
    pub dry_run: bool,
    #[serde(flatten)]
    pub stats: RestoreStats,
}

impl std::fmt::Display for SnapshotRestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{} backup {} of job `{}` (repository `{}`) into {}: {} files ({} bytes), {} folders, {} symlinks, {} hard links; {} frames fetched (~{} stored bytes)",
            if self.dry_run {
                "would restore"
            } else {
                "restored"
            },
            self.backup_id,
            self.job,
            self.repository,
            self.target.display(),
            s.files,
            s.bytes,
            s.folders,
            s.symlinks,
            s.hardlinks,
            s.frames_fetched,
            s.bytes_fetched
        )?;
        for p in &s.planned {
            write!(f, "\n  {p}")?;
        }
        for w in &s.warnings {
            write!(f, "\n  warning: {w}")?;
        }
        for x in &s.failed {
            write!(f, "\n  FAILED: {x}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotRestoreError {
    #[error("no job `{job}` in the catalogue")]
    UnknownJob { job: String },
    #[error("job `{job}` is not a files or config job")]
    WrongKind { job: String },
    #[error("job `{job}`: {reason}")]
    Usage { job: String, reason: String },
    #[error("job `{job}`: no repository `{repository}` in the catalogue")]
    UnknownRepository { job: String, repository: String },
    #[error("job `{job}`: {source}")]
    Repository {
        job: String,
        #[source]
        source: RepositoryError,
    },
    #[error(
        "job `{job}`: the catalogue has no [encryption] identity-file; restores need the age identity"
    )]
    NoIdentity { job: String },
    #[error("job `{job}`: {source}")]
    Identity {
        job: String,
        #[source]
        source: IdentityError,
    },
    #[error("job `{job}`: {reason}")]
    NoBackup { job: String, reason: String },
    #[error("job `{job}`, backup {backup}: reading the manifest: {source}")]
    Manifest {
        job: String,
        backup: String,
        #[source]
        source: PipelineError,
    },
    #[error("job `{job}`, backup {backup}: {source}")]
    Restore {
        job: String,
        backup: String,
        #[source]
        source: RestoreError,
    },
    #[error("job `{job}`: spooling the manifest: {source}")]
    Spool {
        job: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restore task failed: {0}")]
    Task(String),
}

impl Classify for SnapshotRestoreError {
    fn retry(&self) -> Retry {
        match self {
            SnapshotRestoreError::Repository { source, .. } => source.retry(),
            SnapshotRestoreError::Manifest { source, .. } => source.retry(),
            SnapshotRestoreError::Restore { source, .. } => source.retry(),
            SnapshotRestoreError::Spool { source, .. } => io_retry(source),
            SnapshotRestoreError::Task(_) => Retry::Transient,
            _ => Retry::Permanent,
        }
    }
}

/// Parses `--at`: RFC 3339, or a time without offset in the catalogue's zone.
pub fn parse_at(text: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, TimeZone};
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(23, 59, 59))
    })?;
    // An ambiguous local time (DST fall-back) takes the later instant; a gap, the instant after.
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(_, later) => Some(later.with_timezone(&Utc)),
        chrono::LocalResult::None => tz
            .from_local_datetime(&(naive + chrono::Duration::hours(1)))
            .earliest()
            .map(|t| t.with_timezone(&Utc)),
    }
}

/// Restores a files or config snapshot without the daemon.
pub async fn restore_snapshot(
    catalogue: &Catalogue,
    o: SnapshotRestoreOptions,
) -> Result<SnapshotRestoreReport, SnapshotRestoreError> {
    let job_name = o.job.clone();
    let job = catalogue
        .job(&job_name)
        .ok_or_else(|| SnapshotRestoreError::UnknownJob {
            job: job_name.clone(),
        })?;
    let usage = |reason: &str| SnapshotRestoreError::Usage {
        job: job_name.clone(),
        reason: reason.to_string(),
    };
    let (kind, source_root) = match &job.spec {
        JobSpec::Files(f) => (JobKindName::Files, f.path.clone()),
        JobSpec::Config(_) => (JobKindName::Config, PathBuf::from("/")),
        _ => return Err(SnapshotRestoreError::WrongKind { job: job_name }),
    };
    if o.in_place && kind != JobKindName::Config {
        return Err(usage("--in-place is for config jobs; give --target DIR"));
    }
    let target = match (&o.target, o.in_place) {
        (Some(_), true) => return Err(usage("give either --target or --in-place")),
        (Some(t), false) => t.clone(),
        (None, true) => PathBuf::from("/"),
        (None, false) => return Err(usage("give --target DIR")),
    };
    let repo_name = o
        .repository
        .clone()
        .or_else(|| job.repositories.first().cloned())
        .unwrap_or_default();
    let settings = catalogue.repository(&repo_name).ok_or_else(|| {
        SnapshotRestoreError::UnknownRepository {
            job: job_name.clone(),
            repository: repo_name.clone(),
        }
    })?;
    let repo_err = |source| SnapshotRestoreError::Repository {
        job: job_name.clone(),
        source,
    };
    let repository = Repository::open(settings).map_err(repo_err)?;
    let identity_file = catalogue.encryption.identity_file.as_ref().ok_or_else(|| {
        SnapshotRestoreError::NoIdentity {
            job: job_name.clone(),
        }
    })?;
    let identities =
        Identities::load(identity_file).map_err(|source| SnapshotRestoreError::Identity {
            job: job_name.clone(),
            source,
        })?;
    let (records, _bad) = repository
        .list_commits(Some(&job_name))
        .await
        .map_err(repo_err)?;
    let records: Vec<CommitRecord> = records.into_iter().filter(|r| r.kind == kind).collect();
    let chosen = if let Some(id) = &o.backup {
        records
            .iter()
            .find(|r| &r.id == id)
            .cloned()
            .ok_or_else(|| SnapshotRestoreError::NoBackup {
                job: job_name.clone(),
                reason: format!("backup {id} is not committed in repository `{repo_name}`"),
            })?
    } else if let Some(at) = &o.at {
        let t = parse_at(at, catalogue.daemon.timezone).ok_or_else(|| {
            usage(&format!(
                "--at {at}: not a time (RFC 3339 or YYYY-MM-DD HH:MM[:SS])"
            ))
        })?;
        records
            .iter()
            .filter(|r| r.stopped_at <= t)
            .max_by_key(|r| r.stopped_at)
            .cloned()
            .ok_or_else(|| SnapshotRestoreError::NoBackup {
                job: job_name.clone(),
                reason: format!("no backup stopped at or before {t}"),
            })?
    } else {
        records
            .last()
            .cloned()
            .ok_or_else(|| SnapshotRestoreError::NoBackup {
                job: job_name.clone(),
                reason: format!("no committed backup in repository `{repo_name}`"),
            })?
    };
    let backup = chosen.id.clone();
    // Every object of the chain, by key.
    let by_id: HashMap<&str, &CommitRecord> = records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut objects = HashMap::new();
    for id in std::iter::once(&chosen.id).chain(chosen.ancestors.iter()) {
        if let Some(r) = by_id.get(id.as_str()) {
            for obj in &r.objects {
                objects.insert(obj.key.clone(), obj.clone());
            }
        }
    }
    // The manifest, decrypted to a private spool file (checked against the record as it streams).
    let manifest_err = |source| SnapshotRestoreError::Manifest {
        job: job_name.clone(),
        backup: backup.clone(),
        source,
    };
    let spool_err = |source| SnapshotRestoreError::Spool {
        job: job_name.clone(),
        source,
    };
    let spool = tempfile::tempfile().map_err(spool_err)?;
    {
        let mut reader = pipeline::open_stream(&repository.store, &chosen.manifest, &identities)
            .await
            .map_err(|e| manifest_err(PipelineError::Store(e)))?;
        let mut out = tokio::fs::File::from_std(spool.try_clone().map_err(spool_err)?);
        tokio::io::copy(&mut reader, &mut out)
            .await
            .map_err(|source| {
                manifest_err(PipelineError::Read {
                    key: chosen.manifest.key.clone(),
                    source,
                })
            })?;
        use tokio::io::AsyncWriteExt;
        out.flush().await.map_err(spool_err)?;
    }
    let paths = o
        .paths
        .iter()
        .map(|p| rel_selection(p, &source_root))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|r| usage(&r))?;
    let options = RestoreOptions {
        target: target.clone(),
        paths,
        dry_run: o.dry_run,
        overwrite: o.overwrite || o.in_place,
        ignore_errors: o.ignore_errors,
        numeric_owner: o.numeric_owner,
        skip: Vec::new(),
    };
    let store = repository.store.clone();
    let handle = tokio::runtime::Handle::current();
    let stats = tokio::task::spawn_blocking(move || {
        let mut spool = spool;
        crate::snapshot::restore::restore(
            &mut spool,
            &store,
            &objects,
            &identities,
            &options,
            handle,
        )
    })
    .await
    .map_err(|e| SnapshotRestoreError::Task(e.to_string()))?
    .map_err(|source| SnapshotRestoreError::Restore {
        job: job_name.clone(),
        backup: backup.clone(),
        source,
    })?;
    Ok(SnapshotRestoreReport {
        job: job_name,
        repository: repository.name,
        backup_id: backup,
        target,
        dry_run: o.dry_run,
        stats,
    })
}

/// A `--path` as a path relative to the snapshot's root.
fn rel_selection(p: &Path, root: &Path) -> Result<ByteName, String> {
    let rel = if p.is_absolute() {
        p.strip_prefix(root)
            .map_err(|_| format!("--path {}: not beneath {}", p.display(), root.display()))?
    } else {
        p
    };
    let bytes: Vec<u8> = rel
        .as_os_str()
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect::<Vec<_>>()
        .join(&b'/');
    crate::snapshot::path::check_relative(&bytes)
        .map_err(|e| format!("--path {}: {e}", p.display()))?;
    Ok(ByteName(bytes))
}
