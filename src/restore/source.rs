//! [`RestoreSource`]: a job's repository, its identities, its checked commit records, the chosen
//! backup and its ancestor chain (the chain rule lives here and nowhere else).

use crate::catalogue::{Catalogue, Job};
use crate::error::{Classify, Retry};
use crate::model::JobKindName;
use crate::pipeline::{Identities, IdentityError};
use crate::repository::{CommitRecord, ObjectRecord, Repository, RepositoryError, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Which backup to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<'a> {
    /// The newest by recorded stop time.
    Newest,
    /// This backup id.
    Id(&'a str),
    /// The newest stopped at or before this time.
    At(DateTime<Utc>),
}

impl<'a> Choice<'a> {
    /// `--backup ID`, else `--at T` (already parsed), else the newest.
    pub fn from_options(backup: Option<&'a str>, at: Option<DateTime<Utc>>) -> Choice<'a> {
        match (backup, at) {
            (Some(id), _) => Choice::Id(id),
            (None, Some(t)) => Choice::At(t),
            (None, None) => Choice::Newest,
        }
    }
}

/// A backup and every ancestor it needs, all committed and readable.
#[derive(Debug, Clone)]
pub struct Chain {
    pub backup: CommitRecord,
    /// Nearest first, as in the commit record.
    pub ancestors: Vec<CommitRecord>,
}

impl Chain {
    /// The backup's id, then its ancestors', nearest first.
    pub fn ids(&self) -> Vec<String> {
        std::iter::once(&self.backup)
            .chain(&self.ancestors)
            .map(|r| r.id.clone())
            .collect()
    }

    /// Every object of the chain, by key.
    pub fn objects(&self) -> HashMap<String, ObjectRecord> {
        std::iter::once(&self.backup)
            .chain(&self.ancestors)
            .flat_map(|r| r.objects.iter())
            .map(|o| (o.key.clone(), o.clone()))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("job `{job}`: no repository `{repository}` among the job's repositories ({known})")]
    UnknownRepository {
        job: String,
        repository: String,
        known: String,
    },
    #[error("job `{job}`: {source}")]
    Repository {
        job: String,
        #[source]
        source: Box<RepositoryError>,
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
    #[error("job `{job}`: {reason} (repository `{repository}`)")]
    NoBackup {
        job: String,
        repository: String,
        reason: String,
    },
    #[error("job `{job}`: backup {backup} is not committed in repository `{repository}`")]
    NotCommitted {
        job: String,
        backup: String,
        repository: String,
    },
    #[error(
        "job `{job}`: the commit record of backup {backup} in repository `{repository}` cannot be read"
    )]
    Unreadable {
        job: String,
        backup: String,
        repository: String,
        #[source]
        source: Arc<RepositoryError>,
    },
    #[error(
        "job `{job}`: backup {backup} needs its ancestor {ancestor}, which is not committed in repository `{repository}`"
    )]
    MissingAncestor {
        job: String,
        backup: String,
        ancestor: String,
        repository: String,
    },
    #[error(
        "job `{job}`: backup {backup} needs its ancestor {ancestor}, whose commit record in repository `{repository}` cannot be read"
    )]
    UnreadableAncestor {
        job: String,
        backup: String,
        ancestor: String,
        repository: String,
        #[source]
        source: Arc<RepositoryError>,
    },
}

impl Classify for SourceError {
    fn retry(&self) -> Retry {
        match self {
            SourceError::Repository { source, .. } => source.retry(),
            SourceError::Unreadable { source, .. }
            | SourceError::UnreadableAncestor { source, .. } => source.retry(),
            _ => Retry::Permanent,
        }
    }
}

/// A job's repository, opened for a restore, with the job's commit records listed and checked.
pub struct RestoreSource {
    pub job: String,
    pub repository: Repository,
    /// `[encryption] identity-file`, if the catalogue names one (see [`RestoreSource::identities`]).
    pub identity_file: Option<PathBuf>,
    /// The job's readable commit records of the wanted kinds, oldest first by start time.
    pub records: Vec<CommitRecord>,
    /// Commit records that could not be read, each with its key (when known).
    unreadable: Vec<(Option<String>, Arc<RepositoryError>)>,
}

impl std::fmt::Debug for RestoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSource")
            .field("job", &self.job)
            .field("repository", &self.repository.name)
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

/// The object key a repository error is about (the commit record's key for listing errors).
fn error_key(e: &RepositoryError) -> Option<&str> {
    match e {
        RepositoryError::MalformedRecord { key, .. }
        | RepositoryError::UnsupportedVersion { key, .. }
        | RepositoryError::MismatchedRecord { key, .. } => Some(key),
        RepositoryError::Store {
            source:
                StoreError::NotFound { key }
                | StoreError::AlreadyExists { key }
                | StoreError::Io { key, .. }
                | StoreError::InvalidKey { key, .. }
                | StoreError::Task { key, .. }
                | StoreError::Remote { key, .. },
            ..
        } => Some(key),
        _ => None,
    }
}

impl RestoreSource {
    /// Opens `job`'s repository (`repository`, which must be one of the job's, else its first)
    /// and lists its commit records of `kinds`. Reads nothing else.
    pub async fn open(
        catalogue: &Catalogue,
        job: &Job,
        repository: Option<&str>,
        kinds: &[JobKindName],
    ) -> Result<RestoreSource, SourceError> {
        let name = repository
            .map(str::to_string)
            .or_else(|| job.repositories.first().cloned())
            .unwrap_or_default();
        let settings = job
            .repositories
            .contains(&name)
            .then(|| catalogue.repository(&name))
            .flatten()
            .ok_or_else(|| SourceError::UnknownRepository {
                job: job.name.clone(),
                repository: name.clone(),
                known: job.repositories.join(", "),
            })?;
        let repo_err = |source| SourceError::Repository {
            job: job.name.clone(),
            source: Box::new(source),
        };
        let repository = Repository::open(settings).map_err(repo_err)?;
        let (records, bad) = repository
            .list_commits(Some(&job.name))
            .await
            .map_err(repo_err)?;
        let records = records
            .into_iter()
            .filter(|r| kinds.contains(&r.kind))
            .collect();
        let unreadable = bad
            .into_iter()
            .map(|e| (error_key(&e).map(str::to_string), Arc::new(e)))
            .collect();
        Ok(RestoreSource {
            job: job.name.clone(),
            repository,
            identity_file: catalogue.encryption.identity_file.clone(),
            records,
            unreadable,
        })
    }

    /// The repository's name.
    pub fn repository_name(&self) -> &str {
        &self.repository.name
    }

    /// Loads the age identities from `[encryption] identity-file` (a dry run may not need them).
    pub fn identities(&self) -> Result<Identities, SourceError> {
        let file = self
            .identity_file
            .as_ref()
            .ok_or_else(|| SourceError::NoIdentity {
                job: self.job.clone(),
            })?;
        Identities::load(file).map_err(|source| SourceError::Identity {
            job: self.job.clone(),
            source,
        })
    }

    /// One warning per commit record that could not be read, naming its key. A restore that
    /// succeeded did not need any of them (the chain rule makes a needed one an error).
    pub fn warnings(&self) -> Vec<String> {
        self.unreadable
            .iter()
            .map(|(key, e)| match key {
                Some(key) => format!(
                    "skipped the unreadable commit record {key}: {}",
                    crate::error::error_chain_of(e.as_ref())
                ),
                None => format!(
                    "skipped an unreadable commit record: {}",
                    crate::error::error_chain_of(e.as_ref())
                ),
            })
            .collect()
    }

    fn record_key(&self, id: &str) -> String {
        crate::repository::format::commit_key(&self.job, id)
    }

    /// The listing error of backup `id`'s commit record, if it was unreadable.
    fn unreadable_of(&self, id: &str) -> Option<&Arc<RepositoryError>> {
        let key = self.record_key(id);
        self.unreadable
            .iter()
            .find(|(k, _)| k.as_deref() == Some(key.as_str()))
            .map(|(_, e)| e)
    }

    /// The chosen backup's commit record (not its chain).
    pub fn choose(&self, choice: Choice<'_>) -> Result<&CommitRecord, SourceError> {
        let newest = |r: &&CommitRecord| (r.stopped_at, r.started_at, r.id.clone());
        let no_backup = |reason: String| SourceError::NoBackup {
            job: self.job.clone(),
            repository: self.repository.name.clone(),
            reason,
        };
        match choice {
            Choice::Id(id) => match self.records.iter().find(|r| r.id == id) {
                Some(r) => Ok(r),
                None => Err(match self.unreadable_of(id) {
                    Some(e) => SourceError::Unreadable {
                        job: self.job.clone(),
                        backup: id.to_string(),
                        repository: self.repository.name.clone(),
                        source: Arc::clone(e),
                    },
                    None => SourceError::NotCommitted {
                        job: self.job.clone(),
                        backup: id.to_string(),
                        repository: self.repository.name.clone(),
                    },
                }),
            },
            Choice::At(t) => self
                .records
                .iter()
                .filter(|r| r.stopped_at <= t)
                .max_by_key(newest)
                .ok_or_else(|| no_backup(format!("no backup stopped at or before {t}"))),
            Choice::Newest => self
                .records
                .iter()
                .max_by_key(newest)
                .ok_or_else(|| no_backup("no committed backup".to_string())),
        }
    }

    /// `backup` and every ancestor it names, each committed and readable in this repository.
    pub fn chain_of(&self, backup: &CommitRecord) -> Result<Chain, SourceError> {
        let by_id: HashMap<&str, &CommitRecord> =
            self.records.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut ancestors = Vec::with_capacity(backup.ancestors.len());
        for id in &backup.ancestors {
            match by_id.get(id.as_str()) {
                Some(r) => ancestors.push((*r).clone()),
                None => {
                    return Err(match self.unreadable_of(id) {
                        Some(e) => SourceError::UnreadableAncestor {
                            job: self.job.clone(),
                            backup: backup.id.clone(),
                            ancestor: id.clone(),
                            repository: self.repository.name.clone(),
                            source: Arc::clone(e),
                        },
                        None => SourceError::MissingAncestor {
                            job: self.job.clone(),
                            backup: backup.id.clone(),
                            ancestor: id.clone(),
                            repository: self.repository.name.clone(),
                        },
                    });
                }
            }
        }
        Ok(Chain {
            backup: backup.clone(),
            ancestors,
        })
    }

    /// [`RestoreSource::choose`] then [`RestoreSource::chain_of`].
    pub fn resolve(&self, choice: Choice<'_>) -> Result<Chain, SourceError> {
        let backup = self.choose(choice)?;
        self.chain_of(backup)
    }
}
