//! `restore files` / `restore config`: choosing the backup (`--backup`, `--at`, newest) and
//! restoring a snapshot or selected paths without the daemon.

use crate::catalogue::{Catalogue, JobSpec};
use crate::error::{Classify, Retry, io_retry};
use crate::model::JobKindName;
use crate::pipeline::{self, Identities, IdentityError, PipelineError};
use crate::repository::{CommitRecord, Repository, RepositoryError};
use crate::snapshot::path::ByteName;
use crate::snapshot::restore::{RestoreError, RestoreOptions, RestoreStats};
use crate::timeparse::parse_at;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
