//! The repository: format v1 on an object store (DESIGN §4).
//!
//! [`format`]: backup ids, object keys, the commit record (`backup.json`, written last, create-only).
//! [`store`]: the stores a repository lives in, behind one enum ([`Store`]); [`local`] is our own
//! durable local store (temp file + fsync + no-replace rename + directory fsync, mode 0600).

pub mod format;
pub mod local;
pub mod store;

pub use format::{BackupId, CommitRecord, FORMAT_VERSION, ObjectRecord};
pub use store::{ObjectMeta, ObjectWriter, Store, StoreError};

use crate::catalogue::RepositorySettings;

/// A named repository of the catalogue, opened.
#[derive(Debug, Clone)]
pub struct Repository {
    pub name: String,
    pub store: Store,
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("repository `{repository}`: {source}")]
    Store {
        repository: String,
        #[source]
        source: StoreError,
    },
    #[error("repository `{repository}`: commit record {key} is malformed: {source}")]
    MalformedRecord {
        repository: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("repository `{repository}`: backup {job}/{id} is already committed")]
    AlreadyCommitted { repository: String, job: String, id: String },
}

impl Repository {
    /// Opens the repository described by the catalogue (creating a local root if missing).
    pub fn open(_settings: &RepositorySettings) -> Result<Repository, RepositoryError> {
        todo!("repository helper")
    }

    /// Writes the commit record last, create-only: the backup becomes complete.
    pub async fn commit(&self, _record: &CommitRecord) -> Result<(), RepositoryError> {
        todo!("repository helper")
    }

    /// The commit record of one backup, if committed.
    pub async fn commit_record(&self, _job: &str, _id: &str) -> Result<Option<CommitRecord>, RepositoryError> {
        todo!("repository helper")
    }

    /// Every commit record (of one job, or all), oldest first by recorded start time. Malformed
    /// records are returned as errors beside the good ones, never silently dropped.
    pub async fn list_commits(
        &self,
        _job: Option<&str>,
    ) -> Result<(Vec<CommitRecord>, Vec<RepositoryError>), RepositoryError> {
        todo!("repository helper")
    }
}
