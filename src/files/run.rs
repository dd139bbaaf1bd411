//! The `files` job: choosing the parent, the backup id, and the shared prepare/commit steps of a
//! snapshot backup (also used by `postgres-base`).

use super::{FilesError, JobOutcome, PART_SIZE};
use crate::catalogue::{Catalogue, FilesJob, Job};
use crate::model::{BackupType, JobKindName};
use crate::pipeline::{self, PipelineSettings, ProgressCounter};
use crate::repository::local_copy::LocalCopyError;
use crate::repository::{
    BackupId, CommitRecord, FORMAT_VERSION, ObjectRecord, Repository, RepositoryError, StoreError,
    format,
};
use crate::snapshot::backup::{self as engine, EngineConfig, EngineOutput, Parent};
use crate::snapshot::manifest::Mode;
use crate::snapshot::path::ByteName;
use crate::snapshot::walk::{Event, Filter, TreeWalk};
use crate::snapshot::{SnapshotError, copy};
use chrono::{DateTime, Utc};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tokio_util::sync::CancellationToken;

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
pub(super) async fn store_snapshot(
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

pub(super) async fn store_and_commit(
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
