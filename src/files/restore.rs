//! `restore files` / `restore config`: restoring a snapshot or selected paths without the daemon
//! (the backup and its chain come from [`crate::restore::RestoreSource`]).

use crate::catalogue::{Catalogue, JobSpec};
use crate::error::{Classify, Retry, io_retry};
use crate::model::JobKindName;
use crate::pipeline::{self, PipelineError};
use crate::restore::{Choice, RestoreSource, SourceError};
use crate::snapshot::path::ByteName;
use crate::snapshot::restore::{RestoreError, RestoreOptions, RestoreStats};
use crate::timeparse::parse_time;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `restore files` / `restore config` (docs/design.md §13).
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
    /// Unreadable commit records of other backups (each names its key); the ctl prints them
    /// on stderr.
    pub repository_warnings: Vec<String>,
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
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("job `{job}`, backup {backup}: reading the manifest: {source}")]
    Manifest {
        job: String,
        backup: String,
        #[source]
        source: PipelineError,
    },
    #[error("job `{job}`, backup {backup} (repository `{repository}`): {source}")]
    Restore {
        job: String,
        backup: String,
        repository: String,
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
            SnapshotRestoreError::Source(source) => source.retry(),
            SnapshotRestoreError::Manifest { source, .. } => source.retry(),
            SnapshotRestoreError::Restore { source, .. } => source.retry(),
            SnapshotRestoreError::Spool { source, .. } => io_retry(source),
            SnapshotRestoreError::Task(_) => Retry::Transient,
            _ => Retry::Permanent,
        }
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
    let source = RestoreSource::open(catalogue, job, o.repository.as_deref(), &[kind])
        .await
        .map_err(SnapshotRestoreError::Source)?;
    let identities = source.identities().map_err(SnapshotRestoreError::Source)?;
    let at = match &o.at {
        Some(at) if o.backup.is_none() => Some(
            parse_time(at, catalogue.daemon.timezone).map_err(|e| usage(&format!("--at: {e}")))?,
        ),
        _ => None,
    };
    let chain = source
        .resolve(Choice::from_options(o.backup.as_deref(), at))
        .map_err(SnapshotRestoreError::Source)?;
    let chosen = &chain.backup;
    let backup = chosen.id.clone();
    // Every object of the chain, by key.
    let objects = chain.objects();
    let repository = &source.repository;
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
        repository: repository.name.clone(),
        source,
    })?;
    Ok(SnapshotRestoreReport {
        job: job_name,
        repository: repository.name.clone(),
        repository_warnings: source.warnings(),
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
