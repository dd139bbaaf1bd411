//! `files` and `config` jobs and their restores, on the tree-snapshot engine ([`crate::snapshot`])
//! and its snapshot-job core ([`crate::snapshot::job`]: run context, parent, id, commit, outcome).
//!
//! - [`run_files`] (`run`): a folder tree, full or incremental (the parent rule is the core's).
//! - [`run_config`] (`config`): listed files and globs; stored (always a complete, small snapshot)
//!   only when the set of files, a content, a mode or an owner changed since the newest config
//!   backup; otherwise [`JobOutcome::Unchanged`](crate::snapshot::job::JobOutcome::Unchanged)
//!   and nothing is uploaded.
//! - [`restore_snapshot`] (`restore`): `restore files` / `restore config` without the daemon.
//! - [`watch`]: optional inotify watch of config files (parent folders, debounced).

mod config;
mod restore;
mod run;
pub mod watch;

pub use config::run_config;
pub use restore::{
    SnapshotRestoreError, SnapshotRestoreOptions, SnapshotRestoreReport, restore_snapshot,
};
pub use run::run_files;
