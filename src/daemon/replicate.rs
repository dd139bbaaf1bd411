//! Replication (docs/design.md §2): a backup is committed to its job's first repository; the replicator
//! then copies the committed objects byte for byte (same keys, same ciphertext, SHA-256 checked
//! against the commit record while copying) to the job's other repositories, and their commit
//! record last. Failed copies stay queued in the state DB and are retried with backoff until
//! they land; a run whose replica failed is `partial`. A permanent failure (credentials refused,
//! bucket missing, a local path that is not a directory) keeps the same doubling backoff (an
//! operator's fix is picked up as soon as for any failure) but holds back every copy to that
//! repository with it (one probe, not one failure per queued backup), and is shown as permanent
//! in `status` and the replica-lagging alert.

use super::core::Shared;
use crate::catalogue::Catalogue;
use crate::error::{Classify, Retry, error_chain};
use crate::repository::backup_row;
use crate::repository::format::commit_key;
use crate::repository::{CommitRecord, Repository, StoreError};
use crate::state::ReplicaTask;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// How often the replicator looks for due copies when nothing wakes it.
const REPLICATOR_TICK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("reading {key} from repository `{repository}`: {source}")]
    Read {
        repository: String,
        key: String,
        #[source]
        source: StoreError,
    },
    #[error("writing {key} to repository `{repository}`: {source}")]
    Write {
        repository: String,
        key: String,
        #[source]
        source: StoreError,
    },
    #[error(
        "object {key} in repository `{repository}` does not match its commit record (size {size}, sha256 {sha256}); not copied"
    )]
    Mismatch {
        repository: String,
        key: String,
        size: u64,
        sha256: String,
    },
    #[error("backup {job}/{id} is not committed in repository `{repository}` (deleted?)")]
    Gone {
        repository: String,
        job: String,
        id: String,
    },
    #[error("{0}")]
    Other(String),
}

impl Classify for ReplicaError {
    fn retry(&self) -> Retry {
        match self {
            ReplicaError::Read { source, .. } | ReplicaError::Write { source, .. } => {
                source.retry()
            }
            // The primary's object or record disagrees with itself: copying again gives the
            // same bytes until someone repairs it.
            ReplicaError::Mismatch { .. } | ReplicaError::Gone { .. } | ReplicaError::Other(_) => {
                Retry::Permanent
            }
        }
    }
}

/// Copies one committed backup from `source` to `target`: every object (skipping ones already
/// there from an earlier attempt whose SHA-256 matches the record, replacing any other), then the
/// commit record's exact bytes, create-only.
pub async fn copy_backup(
    source: &Repository,
    target: &Repository,
    record: &CommitRecord,
) -> Result<u64, ReplicaError> {
    let mut copied = 0;
    for object in record
        .objects
        .iter()
        .chain(std::iter::once(&record.manifest))
    {
        let existing =
            target
                .store
                .head(&object.key)
                .await
                .map_err(|source| ReplicaError::Read {
                    repository: target.name.clone(),
                    key: object.key.clone(),
                    source,
                })?;
        if let Some(meta) = existing {
            // Objects become visible only complete, but the size alone vouches for nothing: a
            // damaged or foreign object of the same size must not be vouched for by the commit
            // record. Keep it only if its bytes hash to the record's SHA-256; else replace it.
            if meta.size == object.size && holds(target, object).await? {
                continue;
            }
            tracing::warn!(repository = %target.name, key = %object.key,
                "replica object does not match the commit record; replacing it");
            target
                .store
                .delete(&object.key)
                .await
                .map_err(|source| ReplicaError::Write {
                    repository: target.name.clone(),
                    key: object.key.clone(),
                    source,
                })?;
        }
        let mut stream =
            source
                .store
                .get_stream(&object.key)
                .await
                .map_err(|e| ReplicaError::Read {
                    repository: source.name.clone(),
                    key: object.key.clone(),
                    source: e,
                })?;
        let mut writer =
            target
                .store
                .writer(&object.key)
                .await
                .map_err(|e| ReplicaError::Write {
                    repository: target.name.clone(),
                    key: object.key.clone(),
                    source: e,
                })?;
        let mut hash = Sha256::new();
        let mut size = 0u64;
        use futures::StreamExt;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(ReplicaError::Read {
                        repository: source.name.clone(),
                        key: object.key.clone(),
                        source: e,
                    });
                }
            };
            hash.update(&chunk);
            size += chunk.len() as u64;
            if let Err(e) = writer.write(chunk).await {
                let _ = writer.abort().await;
                return Err(ReplicaError::Write {
                    repository: target.name.clone(),
                    key: object.key.clone(),
                    source: e,
                });
            }
        }
        let sha256 = hex::encode(hash.finalize());
        if size != object.size || sha256 != object.sha256 {
            let _ = writer.abort().await;
            return Err(ReplicaError::Mismatch {
                repository: source.name.clone(),
                key: object.key.clone(),
                size,
                sha256,
            });
        }
        writer.finish().await.map_err(|e| ReplicaError::Write {
            repository: target.name.clone(),
            key: object.key.clone(),
            source: e,
        })?;
        copied += size;
        crate::faults::kill_point("replica-between-objects", &object.key);
    }
    let key = commit_key(&record.job, &record.id);
    let bytes = source.store.get(&key).await.map_err(|e| match e {
        StoreError::NotFound { .. } => ReplicaError::Gone {
            repository: source.name.clone(),
            job: record.job.clone(),
            id: record.id.clone(),
        },
        e => ReplicaError::Read {
            repository: source.name.clone(),
            key: key.clone(),
            source: e,
        },
    })?;
    crate::faults::kill_point("replica-before-commit", &key);
    match target.store.put_create(&key, bytes.clone()).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists { .. }) => {
            let there = target
                .store
                .get(&key)
                .await
                .map_err(|e| ReplicaError::Read {
                    repository: target.name.clone(),
                    key: key.clone(),
                    source: e,
                })?;
            if there != bytes {
                return Err(ReplicaError::Other(format!(
                    "repository `{}` already holds a different commit record for {}/{}",
                    target.name, record.job, record.id
                )));
            }
        }
        Err(e) => {
            return Err(ReplicaError::Write {
                repository: target.name.clone(),
                key,
                source: e,
            });
        }
    }
    Ok(copied + bytes.len() as u64)
}

/// Whether `target` holds `object` byte for byte: its SHA-256 and size match the commit record.
async fn holds(
    target: &Repository,
    object: &crate::repository::format::ObjectRecord,
) -> Result<bool, ReplicaError> {
    use futures::StreamExt;
    let read_err = |source| ReplicaError::Read {
        repository: target.name.clone(),
        key: object.key.clone(),
        source,
    };
    let mut stream = match target.store.get_stream(&object.key).await {
        Ok(s) => s,
        Err(StoreError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(read_err(e)),
    };
    let mut hash = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(read_err)?;
        hash.update(&chunk);
        size += chunk.len() as u64;
    }
    Ok(size == object.size && hex::encode(hash.finalize()) == object.sha256)
}

/// Backoff after `attempts` failures: `base`, 2×, 4×, … at most 1 h.
pub fn backoff(base: Duration, attempts: u32) -> chrono::Duration {
    let ms = (base.as_millis() as u64).saturating_mul(1u64 << attempts.min(16));
    chrono::Duration::milliseconds(ms.min(3_600_000) as i64)
}

fn open(catalogue: &Catalogue, name: &str) -> Result<Repository, ReplicaOutcome> {
    let settings = catalogue.repository(name).ok_or_else(|| {
        ReplicaOutcome::Failed(
            format!("repository `{name}` is not in the catalogue"),
            Retry::Permanent,
        )
    })?;
    Repository::open(settings).map_err(|e| ReplicaOutcome::Failed(error_chain(&e), e.retry()))
}

/// One attempt at a queued copy under the job's lock; records the outcome.
pub async fn attempt(shared: &Arc<Shared>, task: &ReplicaTask) -> Result<(), String> {
    let lock = shared.job_lock(&task.job);
    let _guard = lock.lock().await;
    attempt_locked(shared, task).await
}

/// One attempt at a queued copy, the caller holding the job's lock (the run that made the
/// backup). Records the outcome; returns the error text on failure.
pub async fn attempt_locked(shared: &Arc<Shared>, task: &ReplicaTask) -> Result<(), String> {
    let catalogue = shared.catalogue();
    let now = shared.clock.now();
    let still_wanted = catalogue.job(&task.job).is_some_and(|j| {
        j.repositories.first() == Some(&task.source) && j.repositories.contains(&task.repository)
    });
    if !still_wanted {
        tracing::warn!(job = %task.job, backup_id = %task.backup_id, repository = %task.repository,
            "the catalogue no longer replicates this job there; dropping the queued copy");
        let _ = shared
            .state
            .forget_replicas(&task.job, &task.backup_id)
            .await;
        return Ok(());
    }
    let result = async {
        let source = open(&catalogue, &task.source)?;
        let target = open(&catalogue, &task.repository)?;
        let record = match source.commit_record(&task.job, &task.backup_id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(ReplicaOutcome::Gone),
            Err(e) => return Err(ReplicaOutcome::Failed(error_chain(&e), e.retry())),
        };
        copy_backup(&source, &target, &record)
            .await
            .map(|bytes| (record, bytes))
            .map_err(|e| ReplicaOutcome::Failed(error_chain(&e), e.retry()))
    }
    .await;
    // The replica's row in `backups` is what `backups --repository` and retention see: a copy
    // whose row could not be written (e.g. the state DB busy under load) is retried, not
    // recorded as landed without it (the next attempt finds the objects and only checks them).
    let result = match result {
        Ok((record, bytes)) => match shared
            .state
            .upsert_backup(&backup_row(&task.repository, &record))
            .await
        {
            Ok(_) => Ok((record, bytes)),
            Err(e) => Err(ReplicaOutcome::Failed(
                format!(
                    "the copy landed but the state DB could not record it: {}",
                    error_chain(&e)
                ),
                Retry::Transient,
            )),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok((_record, bytes)) => {
            if let Err(e) = shared
                .state
                .replica_done(&task.job, &task.backup_id, &task.repository, now)
                .await
            {
                tracing::error!(error = %e, "state DB: cannot record a replica");
            }
            tracing::info!(job = %task.job, backup_id = %task.backup_id, repository = %task.repository, bytes,
                "replica landed");
            Ok(())
        }
        Err(ReplicaOutcome::Gone) => {
            tracing::warn!(job = %task.job, backup_id = %task.backup_id, repository = %task.source,
                "backup no longer committed in the primary repository; dropping its queued copies");
            let _ = shared
                .state
                .forget_replicas(&task.job, &task.backup_id)
                .await;
            Ok(())
        }
        Err(ReplicaOutcome::Failed(message, retry)) => {
            let permanent = retry == Retry::Permanent;
            // The documented `replica-retry` backoff for both classes: a permanent error needs
            // a fix first, but a fix should land as soon as a transient failure's would.
            let next = now + backoff(catalogue.daemon.replica_retry, task.attempts);
            if permanent {
                tracing::error!(job = %task.job, backup_id = %task.backup_id, repository = %task.repository,
                    "replica failed with a permanent error; copies to this repository wait until {next} \
                     (or a catalogue reload): {message}");
            } else {
                tracing::warn!(job = %task.job, backup_id = %task.backup_id, repository = %task.repository,
                    "replica failed (next attempt at {next}): {message}");
            }
            let _ = shared
                .state
                .replica_failed(
                    &task.job,
                    &task.backup_id,
                    &task.repository,
                    &message,
                    permanent,
                    now,
                    next,
                )
                .await;
            Err(if permanent {
                format!("{message} (permanent: retried with backoff, at most hourly, until fixed)")
            } else {
                message
            })
        }
    }
}

enum ReplicaOutcome {
    Gone,
    /// The error on one line, and whether trying again later may help.
    Failed(String, Retry),
}

/// The background replicator: retries queued copies when due, until they land.
pub async fn run_loop(shared: Arc<Shared>) {
    loop {
        let now = shared.clock.now();
        match shared.state.due_replicas(now).await {
            Ok(tasks) => {
                for task in tasks {
                    if shared.shutdown.is_cancelled() {
                        return;
                    }
                    let _ = attempt(&shared, &task).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "state DB: cannot read the replication queue"),
        }
        let tick = REPLICATOR_TICK.min(
            shared
                .catalogue()
                .daemon
                .replica_retry
                .max(Duration::from_secs(1)),
        );
        let wake_at: DateTime<Utc> =
            shared.clock.now() + chrono::Duration::from_std(tick).unwrap_or_default();
        tokio::select! {
            _ = shared.clock.sleep_until(wake_at) => {}
            _ = shared.replicator_wake.notified() => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}
