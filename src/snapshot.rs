//! The tree-snapshot engine (docs/design.md §3, §4, §6) shared by `files`, `config` and (in strict mode)
//! the data directory of `postgres-base`.
//!
//! - [`walk`]: the source in manifest order (sorted depth-first, no symlink following).
//! - [`backup`]: merge with the parent manifest, tar parts cut into independent zstd frames at
//!   entry boundaries, the complete manifest spooled to disk.
//! - [`manifest`]: the JSON-lines manifest (paths as bytes, owners, hard-link groups, sparse
//!   maps, frame locations along the ancestor chain; strict mode: per-block hashes, and the
//!   extent lists of block incrementals).
//! - [`tar`]: GNU tar headers written by us.
//! - [`restore`]: the safe restore (paths from the manifest only, beneath the target, no symlink
//!   following, links after files, chown before chmod, folder times last, hashes checked).
//! - [`copy`]: streamed plaintext local copies of manifests (format of `repository::local_copy`).
//! - [`job`]: the snapshot-job core of `files`, `config` and `postgres-base` runs: the run
//!   context, parent choice, id and type, prepare/commit/delete-uncommitted, the run outcome.

pub mod backup;
pub mod copy;
pub mod job;
pub mod manifest;
pub mod path;
pub mod restore;
pub mod tar;
pub mod walk;

pub use manifest::Mode;

use crate::error::{Classify, Retry, io_retry};
use crate::pipeline::PipelineError;
use std::path::PathBuf;

/// Errors of a snapshot backup.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("source {}: {source}", .path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad include/exclude glob: {0}")]
    Glob(#[source] globset::Error),
    /// Strict mode: anything unreadable fails the backup.
    #[error("{path}: {reason} (strict mode)")]
    Strict { path: String, reason: String },
    #[error("manifest spool {}: {source}", .path.display())]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the parent manifest: {0}")]
    ParentManifest(#[source] manifest::ManifestError),
    #[error("storing a part: {0}")]
    Store(#[source] PipelineError),
    #[error("cancelled")]
    Cancelled,
    #[error("engine task failed: {0}")]
    Task(String),
}

impl Classify for SnapshotError {
    fn retry(&self) -> Retry {
        match self {
            SnapshotError::Source { source, .. } | SnapshotError::Spool { source, .. } => {
                io_retry(source)
            }
            SnapshotError::Store(e) => e.retry(),
            SnapshotError::Cancelled | SnapshotError::Task(_) => Retry::Transient,
            SnapshotError::Glob(_)
            | SnapshotError::Strict { .. }
            | SnapshotError::ParentManifest(_) => Retry::Permanent,
        }
    }
}
