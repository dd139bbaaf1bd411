//! `files` and `config` jobs and their restores, on the tree-snapshot engine ([`crate::snapshot`]).
//!
//! - [`run_files`] (`run`): a folder tree, full or incremental. The parent is chosen here, from the
//!   repository's commit records and the plaintext local manifest copy: the newest committed
//!   backup of the job, committed in every replica given, with a chain shorter than `max-chain`
//!   and a matching local copy — otherwise the run is a full (and its id says `-F`).
//! - [`run_config`] (`config`): listed files and globs; stored (always a complete, small snapshot)
//!   only when the set of files, a content, a mode or an owner changed since the newest config
//!   backup; otherwise [`JobOutcome::Unchanged`] and nothing is uploaded.
//! - [`restore_snapshot`] (`restore`): `restore files` / `restore config` without the daemon.
//! - [`watch`]: optional inotify watch of config files (parent folders, debounced).

mod config;
mod restore;
mod run;
pub mod watch;

/// Kept for the restore modules' call sites; the parser lives in [`crate::timeparse`].
pub use crate::timeparse::parse_at;
pub use config::{ConfigContext, run_config};
pub use restore::{
    SnapshotRestoreError, SnapshotRestoreOptions, SnapshotRestoreReport, restore_snapshot,
};
pub(crate) use run::{
    ChosenParent, Common, choose_parent, commit_prepared, delete_uncommitted, id_for,
    prepare_snapshot,
};
pub use run::{FilesContext, run_files};

use crate::error::{Classify, Retry};
use crate::pipeline::PipelineError;
use crate::repository::local_copy::LocalCopyError;
use crate::repository::{CommitRecord, RepositoryError};
use crate::snapshot::SnapshotError;

/// Plaintext bytes per data object (part); a larger file gets an object of its own.
pub const PART_SIZE: u64 = 256 << 20;

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
