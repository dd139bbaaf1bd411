//! The daemon's WAL archiver (DESIGN §5): `wal-push` requests on reserved upload slots (not
//! runs, no bandwidth limit, every store call bounded), stored into every sync repository of the
//! postgres-wal job at once; the persisted backlog that copies archived files to the async
//! repositories; WAL figures for `status`.

use super::core::{Shared, error_chain};
use crate::catalogue::{Catalogue, Job, JobSpec, WalAck};
use crate::control::auth::Peer;
use crate::model::{JobKindName, JobStatus, WalBacklog, WalStatus};
use crate::pipeline::PipelineSettings;
use crate::protocol::{ErrorBody, ErrorCode, Reply, Response};
use crate::repository::Repository;
use crate::state::WalArchived;
use crate::wal::push::{Stored, copy_archived, ensure_archive_info, read_wal_file, store_wal};
use crate::wal::{ClusterIdentity, WalKind, WalName};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// Concurrent WAL uploads, independent of `max-concurrent-runs`.
pub const UPLOAD_SLOTS: usize = 4;
/// A push waits at most this long for a slot (then fails; PostgreSQL retries).
const SLOT_WAIT: Duration = Duration::from_secs(60);
/// Every store call of a push or a backlog copy is bounded by this (the upload of a file gets one
/// more second per MiB: 1 GiB segments exist).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(120);

fn upload_timeout(bytes: usize) -> Duration {
    STORE_TIMEOUT + Duration::from_secs((bytes >> 20) as u64)
}
/// The backlog looks for due copies at least this often.
const BACKLOG_TICK: Duration = Duration::from_secs(5);
/// The longest wait between two attempts of a backlog copy.
const BACKLOG_MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Pushes of the same file name are serialized through one of this many locks (by name hash),
/// so two concurrent pushes cannot both find "nothing stored" and store two contents.
const NAME_LOCKS: usize = 64;

/// The archiver's shared parts.
pub struct WalArchiver {
    slots: Arc<Semaphore>,
    names: Vec<tokio::sync::Mutex<()>>,
    /// Wakes the backlog (a file was queued).
    pub wake: Notify,
    /// Notified (all waiters) after every successful push: a base backup waiting for its WAL
    /// re-checks then.
    pub archived: Notify,
}

impl WalArchiver {
    pub fn new() -> WalArchiver {
        WalArchiver {
            slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            names: (0..NAME_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            wake: Notify::new(),
            archived: Notify::new(),
        }
    }

    fn name_lock(&self, name: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        &self.names[(h.finish() as usize) % NAME_LOCKS]
    }
}

impl Default for WalArchiver {
    fn default() -> Self {
        Self::new()
    }
}

/// The catalogue's postgres-wal job.
pub fn wal_job(catalogue: &Catalogue) -> Option<&Job> {
    catalogue
        .jobs
        .iter()
        .find(|j| matches!(j.spec, JobSpec::PostgresWal(_)))
}

fn kind_name(kind: WalKind) -> &'static str {
    match kind {
        WalKind::Segment => "segment",
        WalKind::Partial => "partial",
        WalKind::Backup => "backup",
        WalKind::History => "history",
    }
}

fn pipeline_settings(catalogue: &Catalogue, job: &Job) -> Result<PipelineSettings, String> {
    let recipients = catalogue
        .encryption
        .recipients
        .iter()
        .map(|r| {
            r.parse::<age::x25519::Recipient>()
                .map_err(|e| format!("recipient {r}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PipelineSettings::new(job.compression.clone(), recipients))
}

/// Answers one `wal-push`.
pub async fn push(
    shared: &Arc<Shared>,
    peer: &Peer,
    name: String,
    cluster: ClusterIdentity,
    file: std::fs::File,
) -> Reply {
    let started = Instant::now();
    match push_inner(shared, &name, cluster, file, started).await {
        Ok((sha256, warnings)) => {
            tracing::debug!(wal = %name, ms = started.elapsed().as_millis() as u64, "archived");
            Reply::Ok(Response::WalPushed {
                name,
                sha256,
                warnings,
            })
        }
        Err(message) => {
            tracing::error!(wal = %name, peer = peer.describe(), error = %message, "wal-push failed");
            Reply::Error(ErrorBody {
                code: ErrorCode::Internal,
                message: format!("cannot archive {name}: {message}"),
            })
        }
    }
}

async fn push_inner(
    shared: &Arc<Shared>,
    name: &str,
    cluster: ClusterIdentity,
    file: std::fs::File,
    started: Instant,
) -> Result<(String, Vec<String>), String> {
    let catalogue = shared.catalogue();
    let job = wal_job(&catalogue).ok_or("the catalogue has no postgres-wal job")?;
    let wal_name = WalName::parse(name)
        .ok_or_else(|| format!("`{name}` is not a WAL file name PostgreSQL archives"))?;
    let _permit = tokio::time::timeout(SLOT_WAIT, shared.wal.slots.clone().acquire_owned())
        .await
        .map_err(|_| {
            format!(
                "all {UPLOAD_SLOTS} WAL upload slots stayed busy for {} s",
                SLOT_WAIT.as_secs()
            )
        })?
        .map_err(|_| "the daemon is stopping".to_string())?;
    let read_name = wal_name.clone();
    let wal = tokio::task::spawn_blocking(move || read_wal_file(&file, &read_name, &cluster))
        .await
        .map_err(|e| format!("reading the file failed: {e}"))?
        .map_err(|e| error_chain(&e))?;
    let settings = pipeline_settings(&catalogue, job)?;
    let _same_name = shared.wal.name_lock(name).lock().await;
    let mut sync = Vec::new();
    let mut async_names = Vec::new();
    for repo_name in &job.repositories {
        let s = catalogue
            .repository(repo_name)
            .ok_or_else(|| format!("repository `{repo_name}` is not in the catalogue"))?;
        match s.wal_ack {
            WalAck::Sync => sync.push(Repository::open(s).map_err(|e| error_chain(&e))?),
            WalAck::Async => async_names.push(s.name.clone()),
        }
    }
    if sync.is_empty() {
        return Err(format!(
            "job `{}` has no repository with wal-ack = \"sync\"",
            job.name
        ));
    }
    let now = shared.clock.now();
    let results = futures::future::join_all(sync.iter().map(|repo| {
        let (wal, settings) = (&wal, &settings);
        async move {
            ensure_archive_info(repo, &cluster, now, STORE_TIMEOUT).await?;
            store_wal(
                repo,
                &cluster,
                wal,
                settings,
                upload_timeout(wal.bytes.len()),
            )
            .await
        }
    }))
    .await;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut key = None;
    for (repo, result) in sync.iter().zip(results) {
        match result {
            Ok(Stored::New(record)) => {
                key.get_or_insert(record.key);
            }
            Ok(Stored::AlreadyThere { key: k }) => {
                let w = format!(
                    "{name} is already archived in repository `{}` with the same content",
                    repo.name
                );
                tracing::warn!("{w}");
                warnings.push(w);
                key.get_or_insert(k);
            }
            Err(e) => errors.push(error_chain(&e)),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    let key = key.unwrap_or_default();
    let record = WalArchived {
        job: job.name.clone(),
        system_identifier: cluster.system_identifier,
        pg_major: cluster.pg_major,
        name: name.to_string(),
        timeline: wal_name.timeline,
        kind: kind_name(wal_name.kind).to_string(),
        size: wal.bytes.len() as u64,
        sha256: wal.sha256.clone(),
        archived_at: now,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    shared
        .state
        .record_wal(&record, &key, &sync[0].name, &async_names)
        .await
        .map_err(|e| format!("archived, but the state DB cannot record it: {e}"))?;
    if !async_names.is_empty() {
        shared.wal.wake.notify_one();
    }
    shared.wal.archived.notify_waiters();
    Ok((wal.sha256, warnings))
}

/// Copies archived files to the async repositories until shutdown; failures are retried with
/// backoff (from `replica-retry`, doubling, at most 10 min). The backlog lives in the state DB,
/// so it survives a restart.
pub async fn backlog_loop(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.wal.wake.notified() => {}
            _ = tokio::time::sleep(BACKLOG_TICK) => {}
        }
        let now = shared.clock.now();
        let due = match shared.state.due_wal_backlog(now, 256).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "state DB: cannot read the WAL backlog");
                continue;
            }
        };
        use futures::StreamExt;
        futures::stream::iter(due)
            .for_each_concurrent(UPLOAD_SLOTS, |item| {
                let shared = &shared;
                async move {
                    if !shared.shutdown.is_cancelled() {
                        copy_one(shared, item).await;
                    }
                }
            })
            .await;
    }
}

/// One backlog item: copy, then dequeue or reschedule with backoff.
async fn copy_one(shared: &Shared, item: crate::state::WalBacklogItem) {
    let catalogue = shared.catalogue();
    let open = |name: &str| {
        catalogue
            .repository(name)
            .ok_or_else(|| format!("repository `{name}` is not in the catalogue"))
            .and_then(|s| Repository::open(s).map_err(|e| error_chain(&e)))
    };
    let result = match (open(&item.source), open(&item.repository)) {
        (Ok(from), Ok(to)) => copy_archived(
            &from,
            &to,
            &item.key,
            shared.clock.now(),
            upload_timeout(256 << 20),
        )
        .await
        .map_err(|e| error_chain(&e)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match result {
        Ok(_) => {
            tracing::debug!(repository = %item.repository, wal = %item.name, "copied to async repository");
            if let Err(e) = shared
                .state
                .wal_backlog_done(&item.repository, &item.key)
                .await
            {
                tracing::error!(error = %e, "state DB: cannot update the WAL backlog");
            }
        }
        Err(message) => {
            let base = catalogue.daemon.replica_retry.max(Duration::from_secs(1));
            let wait = base
                .saturating_mul(1u32 << item.attempts.min(16))
                .min(BACKLOG_MAX_BACKOFF);
            tracing::warn!(repository = %item.repository, wal = %item.name, error = %message, retry_in_s = wait.as_secs(), "WAL copy to async repository failed");
            let next = shared.clock.now()
                + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
            if let Err(e) = shared
                .state
                .wal_backlog_failed(&item.repository, &item.key, &message, next)
                .await
            {
                tracing::error!(error = %e, "state DB: cannot update the WAL backlog");
            }
        }
    }
}

/// Completed segments between the last archived one and the one being written.
pub fn lag_segments(last: &WalName, current: &WalName, segment_size: u64) -> u64 {
    if last.timeline != current.timeline || segment_size == 0 {
        return 0;
    }
    let per_log = 0x1_0000_0000u64 / segment_size;
    let segno = |w: &WalName| u64::from(w.log) * per_log + u64::from(w.seg);
    segno(current).saturating_sub(segno(last)).saturating_sub(1)
}

/// Fills the `wal` part of the postgres-wal job's status.
pub async fn fill_status(shared: &Shared, catalogue: &Catalogue, jobs: &mut [JobStatus]) {
    let now = shared.clock.now();
    for status in jobs.iter_mut() {
        if status.kind != JobKindName::PostgresWal {
            continue;
        }
        let Some(job) = catalogue.job(&status.name) else {
            continue;
        };
        let mut wal = WalStatus::default();
        let mut segment_size = 16 << 20;
        if let Ok(Some(last)) = shared.state.last_wal(&job.name).await {
            segment_size = last.size;
            wal.last_archived = Some(last.name);
            wal.last_archived_at = Some(last.archived_at);
        }
        wal.archived_count = shared.state.wal_count(&job.name).await.unwrap_or(0);
        if let Some(pg) = &catalogue.postgres {
            let url = job.connection.as_deref().unwrap_or(&pg.url);
            let asked = tokio::time::timeout(Duration::from_secs(5), async {
                let mut c = crate::postgres::connection::PgControl::connect(
                    url,
                    pg.password_file.as_deref(),
                )
                .await?;
                let r = c.wal_archiver_status().await;
                c.close().await;
                r
            })
            .await;
            match asked {
                Ok(Ok((current, failed, last_failed, last_failed_at))) => {
                    if let (Some(cur), Some(last)) = (
                        WalName::parse(&current),
                        wal.last_archived.as_deref().and_then(WalName::parse),
                    ) {
                        let lag = lag_segments(&last, &cur, segment_size);
                        wal.lag_segments = Some(lag);
                        wal.lag_seconds = Some(if lag == 0 {
                            0
                        } else {
                            wal.last_archived_at
                                .map_or(0, |t| (now - t).num_seconds().max(0))
                        });
                    }
                    wal.current_wal = Some(current);
                    wal.failed_count = Some(failed);
                    wal.last_failed_wal = last_failed;
                    wal.last_failed_at = last_failed_at;
                }
                Ok(Err(e)) => wal.cluster_error = Some(e.to_string()),
                Err(_) => wal.cluster_error = Some("no answer within 5 s".into()),
            }
        }
        for repo_name in &job.repositories {
            if catalogue
                .repository(repo_name)
                .is_some_and(|r| r.wal_ack == WalAck::Async)
            {
                let s = shared
                    .state
                    .wal_backlog_summary(&job.name, repo_name)
                    .await
                    .unwrap_or_default();
                wal.backlog.push(WalBacklog {
                    repository: repo_name.clone(),
                    pending: s.pending,
                    lag_seconds: s
                        .oldest_pending_since
                        .map(|t| (now - t).num_seconds().max(0)),
                    last_error: s.last_error,
                });
            }
        }
        // Freshness of a WAL job: the last archived file (it has no runs). With `max-age`, set
        // PostgreSQL's `archive_timeout` below it so an idle cluster still switches segments.
        if let Some(max_age) = job.max_age {
            let reference = wal.last_archived_at.unwrap_or(shared.started_at);
            status.stale = now - reference
                > chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        }
        status.wal = Some(wal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_completed_segments() {
        let w = |n: &str| WalName::parse(n).unwrap();
        let mb16 = 16 << 20;
        assert_eq!(
            lag_segments(
                &w("000000010000000000000003"),
                &w("000000010000000000000004"),
                mb16
            ),
            0
        );
        assert_eq!(
            lag_segments(
                &w("0000000100000000000000FE"),
                &w("000000010000000100000002"),
                mb16
            ),
            3
        );
        assert_eq!(
            lag_segments(
                &w("000000010000000000000009"),
                &w("000000020000000000000004"),
                mb16
            ),
            0
        );
    }
}
