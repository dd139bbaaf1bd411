//! The snapshot-job core shared by `files`, `config` and `postgres-base` runs: the run context
//! ([`JobRun`], also taken by `postgres-dump`), the parent choice, the backup id and type
//! (`plan`), prepare / commit / delete-uncommitted of a snapshot, the run outcome
//! ([`JobOutcome`]) and the shared error type ([`JobError`]).
//!
//! Parent rule: the newest committed backup of the job (of the same kind), committed in every
//! replica given, with a chain shorter than `max-chain` and a matching plaintext local manifest
//! copy — otherwise the run is a full (and its id says `-F`).

use super::backup::{self as engine, EngineConfig, EngineOutput, Parent};
use super::walk::Event;
use super::{SnapshotError, copy};
use crate::catalogue::{Catalogue, Job};
use crate::error::{Classify, Retry};
use crate::model::{BackupType, JobKindName};
use crate::pipeline::{self, PipelineError, PipelineSettings, ProgressCounter};
use crate::repository::local_copy::LocalCopyError;
use crate::repository::{
    BackupId, CommitRecord, FORMAT_VERSION, ObjectRecord, Repository, RepositoryError, StoreError,
    format,
};
use chrono::{DateTime, Utc};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Plaintext bytes per data object (part); a larger file gets an object of its own.
pub const PART_SIZE: u64 = 256 << 20;

/// Everything one backup run needs, whatever the job kind (the kind's own settings are passed
/// beside it). The daemon builds one per run.
#[derive(Clone, Copy)]
pub struct JobRun<'a> {
    pub catalogue: &'a Catalogue,
    pub job: &'a Job,
    /// The job's first repository: the backup is written and committed here.
    pub repository: &'a Repository,
    /// The job's other repositories: an incremental's parent must be committed in each.
    pub replicas: &'a [Repository],
    pub pipeline: &'a PipelineSettings,
    /// The id the daemon chose; used as is when the run's type stays as requested, otherwise a
    /// fresh id of the right type is derived from `started_at` (see [`JobOutcome`]).
    pub backup_id: &'a str,
    pub started_at: DateTime<Utc>,
    /// `--full` / `--incremental` or the schedule's type (kinds without incrementals ignore it).
    pub requested: BackupType,
    pub progress: &'a ProgressCounter,
    pub cancel: &'a CancellationToken,
    /// The daemon's private state directory (manifest copies, the manifest spool, temporary
    /// password files).
    pub state_dir: &'a Path,
}

/// The result of a files, config or postgres-base run.
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

/// Errors of a snapshot job run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job `{job}`: {source}")]
    Snapshot {
        job: String,
        #[source]
        source: SnapshotError,
    },
    /// A part could not be stored: names the repository it was going to.
    #[error("job `{job}`: repository `{repository}`: {source}")]
    Store {
        job: String,
        repository: String,
        #[source]
        source: SnapshotError,
    },
    #[error("job `{job}`: {source}")]
    Repository {
        job: String,
        #[source]
        source: RepositoryError,
    },
    #[error("job `{job}`: storing the manifest in repository `{repository}`: {source}")]
    Manifest {
        job: String,
        repository: String,
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

impl Classify for JobError {
    fn retry(&self) -> Retry {
        match self {
            JobError::Snapshot { source, .. } | JobError::Store { source, .. } => source.retry(),
            JobError::Repository { source, .. } | JobError::Commit { source, .. } => source.retry(),
            JobError::Manifest { source, .. } => source.retry(),
            JobError::LocalCopy { source, .. } => source.retry(),
            JobError::Cancelled { .. } | JobError::Task { .. } => Retry::Transient,
        }
    }
}

/// The chosen parent of an incremental.
pub(crate) struct ChosenParent {
    pub(crate) record: CommitRecord,
    pub(crate) copy: std::io::BufReader<std::fs::File>,
}

impl ChosenParent {
    /// The new backup's ancestors (the parent first) and the engine's view of the parent.
    pub(crate) fn into_engine(self) -> (Vec<String>, Parent) {
        let mut ancestors = vec![self.record.id.clone()];
        ancestors.extend(self.record.ancestors.iter().cloned());
        let parent = Parent {
            manifest: Box::new(self.copy),
            started_at: self.record.started_at,
        };
        (ancestors, parent)
    }
}

/// Picks the parent, or says why the run is a full.
pub(crate) async fn choose_parent(
    job: &str,
    kind: JobKindName,
    repository: &Repository,
    replicas: &[Repository],
    max_chain: Option<u32>,
    state_dir: &Path,
) -> Result<Result<ChosenParent, String>, JobError> {
    let repo_err = |source| JobError::Repository {
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
        .map_err(|e| JobError::Task {
            job: job.to_string(),
            reason: e.to_string(),
        })?
        .map_err(|source| JobError::LocalCopy {
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
) -> Result<String, JobError> {
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
            .map_err(|source| JobError::Repository {
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

/// What a run of a job with incrementals will make: its parent (if any), type and id.
pub(crate) struct Plan {
    pub(crate) parent: Option<ChosenParent>,
    pub(crate) backup_type: BackupType,
    pub(crate) backup_id: String,
    /// Why an incremental request became a full (None otherwise).
    pub(crate) full_because: Option<String>,
}

/// Chooses the parent (when an incremental is requested; see the module docs), the type and the
/// id of a run.
pub(crate) async fn plan(
    run: &JobRun<'_>,
    kind: JobKindName,
    max_chain: Option<u32>,
) -> Result<Plan, JobError> {
    let job = &run.job.name;
    let (parent, full_because) = if run.requested == BackupType::Incremental {
        match choose_parent(
            job,
            kind,
            run.repository,
            run.replicas,
            max_chain,
            run.state_dir,
        )
        .await?
        {
            Ok(p) => (Some(p), None),
            Err(why) => (None, Some(why)),
        }
    } else {
        (None, None)
    };
    let backup_type = if parent.is_some() {
        BackupType::Incremental
    } else {
        BackupType::Full
    };
    let backup_id = id_for(
        run.repository,
        job,
        run.backup_id,
        run.started_at,
        backup_type,
    )
    .await?;
    if let Some(why) = &full_because {
        tracing::info!(job = %job, backup_id = %backup_id, "full instead of incremental: {why}");
    }
    Ok(Plan {
        parent,
        backup_type,
        backup_id,
        full_because,
    })
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
pub(crate) async fn store_snapshot(
    run: &JobRun<'_>,
    kind: JobKindName,
    cfg: EngineConfig,
    walk: Box<dyn Iterator<Item = Event> + Send>,
) -> Result<(CommitRecord, Vec<String>), JobError> {
    let backup_id = cfg.backup_id.clone();
    let result = match prepare_snapshot(run, kind, cfg, walk).await {
        Ok(prepared) => commit_prepared(run, prepared).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result
        && !matches!(e, JobError::Commit { .. })
    {
        delete_uncommitted(run.repository, &run.job.name, &backup_id).await;
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

/// Runs the engine and stores the manifest; the record (of `kind`) is built but not committed.
pub(crate) async fn prepare_snapshot(
    run: &JobRun<'_>,
    kind: JobKindName,
    cfg: EngineConfig,
    walk: Box<dyn Iterator<Item = Event> + Send>,
) -> Result<Prepared, JobError> {
    let job = run.job.name.clone();
    let backup_id = cfg.backup_id.clone();
    let ty = cfg.backup_type;
    let ancestors = cfg.ancestors.clone();
    let mode = cfg.mode;
    tokio::fs::create_dir_all(run.state_dir)
        .await
        .map_err(|source| JobError::Snapshot {
            job: job.clone(),
            source: SnapshotError::Spool {
                path: run.state_dir.to_path_buf(),
                source,
            },
        })?;
    let (store, settings, progress, cancel) = (
        run.repository.store.clone(),
        run.pipeline.clone(),
        run.progress.clone(),
        run.cancel.clone(),
    );
    let handle = tokio::runtime::Handle::current();
    let out: EngineOutput = tokio::task::spawn_blocking(move || {
        engine::run(cfg, walk, store, settings, progress, cancel, handle)
    })
    .await
    .map_err(|e| JobError::Task {
        job: job.clone(),
        reason: e.to_string(),
    })?
    .map_err(|source| match source {
        SnapshotError::Cancelled => JobError::Cancelled { job: job.clone() },
        source @ SnapshotError::Store(_) => JobError::Store {
            job: job.clone(),
            repository: run.repository.name.clone(),
            source,
        },
        source => JobError::Snapshot {
            job: job.clone(),
            source,
        },
    })?;
    if run.cancel.is_cancelled() {
        return Err(JobError::Cancelled { job });
    }
    let EngineOutput {
        objects,
        manifest,
        manifest_sha256,
        trailer,
        bytes_read,
        warnings,
        blocks_unread,
        ..
    } = out;
    if blocks_unread > 0 {
        tracing::info!(job = %job, backup_id = %backup_id, blocks_unread, bytes_read, "blocks the WAL says did not change were not read");
    }
    let manifest_key = format::manifest_key(&job, &backup_id);
    let reader =
        tokio::fs::File::from_std(manifest.reopen().map_err(|source| JobError::Snapshot {
            job: job.clone(),
            source: SnapshotError::Spool {
                path: manifest.path().to_path_buf(),
                source,
            },
        })?);
    let manifest_record = pipeline::store_stream(
        &run.repository.store,
        &manifest_key,
        crate::faults::KillWhileReading::new(
            tokio::io::BufReader::new(reader),
            "manifest-write",
            &manifest_key,
            0,
        ),
        run.pipeline,
        &ProgressCounter::default(),
        run.cancel,
    )
    .await
    .map_err(|source| JobError::Manifest {
        repository: run.repository.name.clone(),
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
    let provenance = crate::dr::provenance::collect(run.catalogue).await;
    provenance.store(&mut details);
    let mut warnings = warnings;
    warnings.extend(provenance.warning());
    let record = CommitRecord {
        format_version: FORMAT_VERSION,
        id: backup_id.clone(),
        job: job.clone(),
        kind,
        backup_type: ty,
        ancestors,
        started_at: run.started_at,
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
    run: &JobRun<'_>,
    prepared: Prepared,
) -> Result<(CommitRecord, Vec<String>), JobError> {
    let Prepared {
        record,
        warnings,
        manifest,
        manifest_sha256,
    } = prepared;
    let job = run.job.name.clone();
    let backup_id = record.id.clone();
    if run.cancel.is_cancelled() {
        return Err(JobError::Cancelled { job });
    }
    run.repository
        .commit(&record)
        .await
        .map_err(|source| JobError::Commit {
            job: job.clone(),
            backup_id: backup_id.clone(),
            source,
        })?;
    // The local copy for the next incremental; without it the next run is a full.
    let (dir, j, id, sha) = (
        run.state_dir.to_path_buf(),
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
