//! The repository: format v1 on an object store (docs/design.md §4).
//!
//! [`format`]: backup ids, object keys, the commit record (`backup.json`, written last, create-only).
//! [`store`]: the stores a repository lives in, behind one enum ([`Store`]); [`local`] is our own
//! durable local store (temp file + fsync + no-replace rename + directory fsync, mode 0600).
//! [`cloud`]: S3, GCS and Azure repositories through object_store (docs/repositories.md).
//! [`local_copy`]: the daemon's plaintext copies of committed manifests (for incrementals).
//! [`faulty`]: test-only store faults and a store-call observer (debug builds, environment switch).
//! [`listing`]: state DB rows and summaries of commit records; listing without a daemon.

pub mod cloud;
pub mod faulty;
pub mod format;
pub mod listing;
pub mod local;
pub mod local_copy;
pub mod store;

pub use format::{BackupId, CommitRecord, FORMAT_VERSION, ObjectRecord};
pub use listing::{OfflineListing, backup_row, list_backups_offline, summary_of};
pub use store::{ObjectMeta, ObjectWriter, Store, StoreError};

use crate::catalogue::{RepositoryLocation, RepositorySettings};
use crate::error::{Classify, Retry};
use bytes::Bytes;

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
    AlreadyCommitted {
        repository: String,
        job: String,
        id: String,
    },
    #[error("repository `{repository}`: {source}")]
    Config {
        repository: String,
        #[source]
        source: cloud::CloudConfigError,
    },
    #[error(
        "repository `{repository}`: commit record {key} has format version {version}, newer than this software understands ({FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        repository: String,
        key: String,
        version: u32,
    },
    /// The test-only fault switch ([`faulty`]) holds a bad rule (debug builds only).
    #[error("repository `{repository}`: {reason}")]
    FaultSpec { repository: String, reason: String },
    #[error("repository `{repository}`: commit record {key} is for backup {found}, not {expected}")]
    MismatchedRecord {
        repository: String,
        key: String,
        found: String,
        expected: String,
    },
}

impl Classify for RepositoryError {
    fn retry(&self) -> Retry {
        match self {
            RepositoryError::Store { source, .. } => source.retry(),
            _ => Retry::Permanent,
        }
    }
}

impl Repository {
    /// Opens the repository described by the catalogue (creating a local root if missing).
    /// In debug builds the store passes through [`faulty::wrap`] (test faults, off by default).
    pub fn open(settings: &RepositorySettings) -> Result<Repository, RepositoryError> {
        let mut repository = Repository::open_plain(settings)?;
        repository.store = faulty::wrap(&settings.name, repository.store).map_err(|reason| {
            RepositoryError::FaultSpec {
                repository: settings.name.clone(),
                reason,
            }
        })?;
        Ok(repository)
    }

    fn open_plain(settings: &RepositorySettings) -> Result<Repository, RepositoryError> {
        match &settings.location {
            RepositoryLocation::File { path } => {
                let local = local::LocalStore::open(path.clone()).map_err(|source| {
                    RepositoryError::Store {
                        repository: settings.name.clone(),
                        source,
                    }
                })?;
                let store = Store::Local(match settings.call_timeout {
                    Some(limit) => local.with_read_timeout(limit),
                    None => local,
                });
                Ok(Repository {
                    name: settings.name.clone(),
                    store,
                })
            }
            RepositoryLocation::S3 { .. }
            | RepositoryLocation::Gcs { .. }
            | RepositoryLocation::Azure { .. } => {
                let defaults = cloud::CloudOptions::default();
                let options = cloud::CloudOptions {
                    call_timeout: settings.call_timeout.unwrap_or(defaults.call_timeout),
                    ..defaults
                };
                Repository::open_cloud(settings, options)
            }
        }
    }

    /// Opens a cloud repository (s3://, gs://, az://) with explicit timeouts and upload shape
    /// (tests and tools; [`Repository::open`] uses the defaults). No network call is made here.
    pub fn open_cloud(
        settings: &RepositorySettings,
        options: cloud::CloudOptions,
    ) -> Result<Repository, RepositoryError> {
        let store = cloud::CloudStore::open(settings, options).map_err(|source| {
            RepositoryError::Config {
                repository: settings.name.clone(),
                source,
            }
        })?;
        Ok(Repository {
            name: settings.name.clone(),
            store: Store::Object(store),
        })
    }

    /// A repository over an already opened store (tests, tools).
    pub fn with_store(name: impl Into<String>, store: Store) -> Repository {
        Repository {
            name: name.into(),
            store,
        }
    }

    fn store_err(&self, source: StoreError) -> RepositoryError {
        RepositoryError::Store {
            repository: self.name.clone(),
            source,
        }
    }

    /// Writes the commit record last, create-only: the backup becomes complete.
    pub async fn commit(&self, record: &CommitRecord) -> Result<(), RepositoryError> {
        let key = record.key();
        let json = record
            .to_json()
            .map_err(|source| RepositoryError::MalformedRecord {
                repository: self.name.clone(),
                key: key.clone(),
                source,
            })?;
        crate::faults::kill_point("commit-before", &key);
        match self.store.put_create(&key, Bytes::from(json)).await {
            Ok(()) => {
                crate::faults::kill_point("commit-after", &key);
                Ok(())
            }
            Err(StoreError::AlreadyExists { .. }) => Err(RepositoryError::AlreadyCommitted {
                repository: self.name.clone(),
                job: record.job.clone(),
                id: record.id.clone(),
            }),
            Err(e) => Err(self.store_err(e)),
        }
    }

    /// Reads a commit record found under `key`: a newer format version says so, the record must
    /// name the job and id its key does.
    pub fn parse_record(&self, key: &str, bytes: &[u8]) -> Result<CommitRecord, RepositoryError> {
        // Check the version first, so a newer format says so instead of "missing field".
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes)
            && let Some(version) = v.get("format-version").and_then(|v| v.as_u64())
            && version > u64::from(FORMAT_VERSION)
        {
            return Err(RepositoryError::UnsupportedVersion {
                repository: self.name.clone(),
                key: key.to_string(),
                version: u32::try_from(version).unwrap_or(u32::MAX),
            });
        }
        let record =
            CommitRecord::from_json(bytes).map_err(|source| RepositoryError::MalformedRecord {
                repository: self.name.clone(),
                key: key.to_string(),
                source,
            })?;
        let expected = format::parse_commit_key(key);
        if expected != Some((record.job.as_str(), record.id.as_str())) {
            return Err(RepositoryError::MismatchedRecord {
                repository: self.name.clone(),
                key: key.to_string(),
                found: format!("{}/{}", record.job, record.id),
                expected: expected
                    .map(|(j, i)| format!("{j}/{i}"))
                    .unwrap_or_default(),
            });
        }
        Ok(record)
    }

    /// The commit record of one backup, if committed.
    pub async fn commit_record(
        &self,
        job: &str,
        id: &str,
    ) -> Result<Option<CommitRecord>, RepositoryError> {
        let key = format::commit_key(job, id);
        match self.store.get(&key).await {
            Ok(bytes) => self.parse_record(&key, &bytes).map(Some),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err(e)),
        }
    }

    /// Every commit record (of one job, or all), oldest first by recorded start time. Malformed
    /// records are returned as errors beside the good ones, never silently dropped.
    pub async fn list_commits(
        &self,
        job: Option<&str>,
    ) -> Result<(Vec<CommitRecord>, Vec<RepositoryError>), RepositoryError> {
        let prefix = match job {
            Some(j) => format::job_prefix(j),
            None => format::BACKUPS_PREFIX.to_string(),
        };
        let objects = self
            .store
            .list(&prefix)
            .await
            .map_err(|e| self.store_err(e))?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for meta in objects {
            if format::parse_commit_key(&meta.key).is_none() {
                continue;
            }
            match self.store.get(&meta.key).await {
                Ok(bytes) => match self.parse_record(&meta.key, &bytes) {
                    Ok(r) => good.push(r),
                    Err(e) => bad.push(e),
                },
                // Deleted between list and get: not there any more.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => bad.push(self.store_err(e)),
            }
        }
        good.sort_by(|a: &CommitRecord, b: &CommitRecord| {
            a.started_at
                .cmp(&b.started_at)
                .then_with(|| a.job.cmp(&b.job))
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok((good, bad))
    }

    /// Objects under backup prefixes that have no commit record (leftovers of failed or
    /// running backups), grouped as `(job, id, objects)`. The caller applies the grace period
    /// (by `modified`) and never touches a running backup's prefix.
    pub async fn list_uncommitted(
        &self,
        job: Option<&str>,
    ) -> Result<Vec<(String, String, Vec<ObjectMeta>)>, RepositoryError> {
        let prefix = match job {
            Some(j) => format::job_prefix(j),
            None => format::BACKUPS_PREFIX.to_string(),
        };
        let objects = self
            .store
            .list(&prefix)
            .await
            .map_err(|e| self.store_err(e))?;
        let mut groups: std::collections::BTreeMap<(String, String), (bool, Vec<ObjectMeta>)> =
            Default::default();
        for meta in objects {
            let Some((j, i)) = format::parse_backup_key(&meta.key) else {
                continue;
            };
            let entry = groups.entry((j.to_string(), i.to_string())).or_default();
            if format::parse_commit_key(&meta.key).is_some() {
                entry.0 = true;
            }
            entry.1.push(meta);
        }
        Ok(groups
            .into_iter()
            .filter(|(_, (committed, _))| !committed)
            .map(|((j, i), (_, objs))| (j, i, objs))
            .collect())
    }

    /// Deletes every object of one backup, the commit record FIRST (so a half-deleted backup is
    /// never mistaken for a complete one).
    pub async fn delete_backup_objects(
        &self,
        job: &str,
        id: &str,
    ) -> Result<usize, RepositoryError> {
        let commit = format::commit_key(job, id);
        self.store
            .delete(&commit)
            .await
            .map_err(|e| self.store_err(e))?;
        crate::faults::kill_point("retention-after-commit-delete", &commit);
        let objects = self
            .store
            .list(&format::backup_prefix(job, id))
            .await
            .map_err(|e| self.store_err(e))?;
        let mut n = 0;
        for meta in objects {
            self.store
                .delete(&meta.key)
                .await
                .map_err(|e| self.store_err(e))?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
