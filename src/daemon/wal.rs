//! The daemon's WAL archiver (docs/design.md §5): `wal-push` requests on reserved upload slots (not
//! runs, no bandwidth limit, every store call bounded), stored into every sync repository of the
//! postgres-wal job at once; the persisted backlog that copies archived files to the async
//! repositories; WAL figures for `status`.

mod ahead;

use super::core::Shared;
use crate::catalogue::{Catalogue, Job, JobSpec, WalAck};
use crate::control::auth::Peer;
use crate::error::error_chain;
use crate::model::{JobKindName, JobStatus, WalBacklog, WalStatus};
use crate::pipeline::PipelineSettings;
use crate::protocol::{ErrorBody, ErrorCode, Reply, Response};
use crate::repository::Repository;
use crate::repository::local::LocalWriter;
use crate::state::WalArchived;
use crate::wal::push::{
    Precheck, PushError, SealedWal, Stored, copy_archived, ensure_archive_info, is_stored,
    precheck, recycle_object, seal_wal_file_staged, store_prechecked,
};
use crate::wal::{ClusterIdentity, WalKind, WalName, format::object_key};
use ahead::{FileId, Shipped, ship_ahead};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
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

/// How many acknowledged names are remembered (so ahead-of-time shipping skips them).
const ACKED_KEEP: usize = 256;

/// What a push needs from the catalogue, built once per catalogue generation (a reload makes a
/// new one): the pipeline settings with parsed recipients and the opened repositories.
pub struct WalSetup {
    catalogue: Arc<Catalogue>,
    job: String,
    settings: PipelineSettings,
    /// The sync repositories (the stream supervisor ships the `.partial` to these).
    pub(super) sync: Vec<Repository>,
    async_names: Vec<String>,
    ship_ahead: usize,
    /// `<data-directory>/pg_wal`, when the catalogue names the data directory.
    pg_wal: Option<PathBuf>,
    /// The state directory, when segment change summaries are kept (the catalogue has a
    /// `postgres-base` job, whose block incrementals read them: `wal::changes`).
    changes_in: Option<PathBuf>,
}

/// The archiver's shared parts.
pub struct WalArchiver {
    slots: Arc<Semaphore>,
    names: Vec<tokio::sync::Mutex<()>>,
    setup: std::sync::Mutex<Option<Arc<WalSetup>>>,
    /// Files shipped ahead, by name (consumed by their push).
    shipped: std::sync::Mutex<HashMap<String, Shipped>>,
    /// Names being shipped ahead right now.
    shipping: std::sync::Mutex<HashSet<String>>,
    /// A ship-ahead task is running.
    scanning: AtomicBool,
    /// The names PostgreSQL's own pushes acknowledged lately (newest last): not shipped again.
    acked: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// Wakes the backlog (a file was queued).
    pub wake: Notify,
    /// The WAL stream supervisor's status (src/daemon/stream.rs).
    pub stream: super::stream::StreamHub,
}

impl WalArchiver {
    pub fn new() -> WalArchiver {
        WalArchiver {
            slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            names: (0..NAME_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            setup: std::sync::Mutex::new(None),
            shipped: std::sync::Mutex::new(HashMap::new()),
            shipping: std::sync::Mutex::new(HashSet::new()),
            scanning: AtomicBool::new(false),
            acked: std::sync::Mutex::new(std::collections::VecDeque::new()),
            wake: Notify::new(),
            stream: Default::default(),
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

fn build_setup(catalogue: Arc<Catalogue>) -> Result<WalSetup, String> {
    let job = wal_job(&catalogue).ok_or("the catalogue has no postgres-wal job")?;
    let settings = PipelineSettings::for_job(&catalogue, job).map_err(|e| e.to_string())?;
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
    let ship_ahead = match &job.spec {
        JobSpec::PostgresWal(w) => w.ship_ahead as usize,
        _ => 0,
    };
    let pg_wal = catalogue
        .postgres
        .as_ref()
        .and_then(|pg| pg.data_directory.as_ref())
        .map(|d| d.join("pg_wal"));
    let changes_in = catalogue
        .jobs
        .iter()
        .any(|j| matches!(j.spec, JobSpec::PostgresBase(_)))
        .then(|| catalogue.daemon.state_directory.clone());
    Ok(WalSetup {
        job: job.name.clone(),
        settings,
        sync,
        async_names,
        ship_ahead,
        pg_wal,
        changes_in,
        catalogue,
    })
}

impl WalArchiver {
    /// The setup of the current catalogue (built on the first push after a reload).
    fn setup(&self, catalogue: Arc<Catalogue>) -> Result<Arc<WalSetup>, String> {
        let mut cached = self.setup.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cached.as_ref()
            && Arc::ptr_eq(&s.catalogue, &catalogue)
        {
            return Ok(s.clone());
        }
        let built = Arc::new(build_setup(catalogue)?);
        *cached = Some(built.clone());
        Ok(built)
    }

    /// Takes the shipped-ahead record of `name` if it is still valid for this push.
    fn take_shipped(
        &self,
        name: &str,
        id: &FileId,
        cluster: &ClusterIdentity,
        setup: &Arc<WalSetup>,
    ) -> Option<Shipped> {
        let s = self
            .shipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)?;
        (s.id == *id && s.cluster == *cluster && Arc::ptr_eq(&s.setup, setup)).then_some(s)
    }

    /// Remembers that PostgreSQL's push of `name` was acknowledged.
    fn note_acked(&self, name: &str) {
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        if acked.len() >= ACKED_KEEP {
            acked.pop_front();
        }
        acked.push_back(name.to_string());
    }

    fn was_acked(&self, name: &str) -> bool {
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|n| n == name)
    }
}

impl WalSetup {
    /// Reads, checks and seals a WAL file for every sync repository; the first one, when local,
    /// gets the object in a staging file as it is encrypted (`wal::staged`). Blocking.
    fn seal(
        &self,
        file: &std::fs::File,
        name: &WalName,
        cluster: &ClusterIdentity,
    ) -> Result<(SealedWal, Option<LocalWriter>), PushError> {
        seal_wal_file_staged(file, name, cluster, &self.settings, self.sync.first())
    }

    /// Keeps a stored segment's change summary for the block incrementals (a cache: failures
    /// are logged, the next incremental then reads changed files whole). Blocking, small.
    fn keep_changes(&self, cluster: &ClusterIdentity, wal: &SealedWal) {
        let Some(state_dir) = &self.changes_in else {
            return;
        };
        match &wal.changes {
            Some(Ok(changes)) => {
                let dir =
                    crate::wal::changes::store::cluster_dir(state_dir, cluster.system_identifier);
                if let Err(e) = crate::wal::changes::store::save(&dir, &wal.name.name, changes) {
                    tracing::warn!(wal = %wal.name, error = %e, dir = %dir.display(), "cannot keep the segment's change summary; the next incremental reads changed files whole");
                }
            }
            Some(Err(e)) => {
                tracing::warn!(wal = %wal.name, error = %e, "the segment's records cannot be read for change tracking; the next incremental reads changed files whole");
            }
            None => {}
        }
    }

    /// The pipeline settings (recipients, compression) of WAL objects.
    pub(super) fn settings(&self) -> &PipelineSettings {
        &self.settings
    }
}

/// The setup of the current catalogue (the stream supervisor's `.partial` shipping).
pub(super) fn sync_setup(shared: &Shared) -> Result<Arc<WalSetup>, String> {
    shared.wal.setup(shared.catalogue())
}

/// A completed file of the stream's spool, through the same path as a `wal-push` (the same
/// keys, checks, duplicate rules, state record and async backlog); Ok once durable in every
/// sync repository.
pub(super) async fn push_file(
    shared: &Arc<Shared>,
    name: &str,
    cluster: ClusterIdentity,
    file: std::fs::File,
) -> Result<(String, Vec<String>), String> {
    push_inner(shared, name, cluster, file, Instant::now()).await
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
            crate::faults::kill_point("wal-before-reply", &name);
            crate::repository::faulty::observe(&format!("wal-reply\t{name}\tok"));
            shared.wal.note_acked(&name);
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
    let setup = shared.wal.setup(shared.catalogue())?;
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
    if setup.ship_ahead > 0 && setup.pg_wal.is_some() {
        ship_ahead(shared, &setup, name, cluster);
    }
    let id = file
        .metadata()
        .map(|m| FileId::of(&m))
        .map_err(|e| format!("cannot read the file's metadata: {e}"))?;
    let _same_name = shared.wal.name_lock(name).lock().await;
    let now = shared.clock.now();
    if let Some(shipped) = shared.wal.take_shipped(name, &id, &cluster, &setup) {
        // Archived ahead from this very file (same device, inode, size and mtime): acknowledge
        // once it is still there in every sync repository.
        // (The repository's identity is checked as on every push.)
        let checks = futures::future::join_all(setup.sync.iter().map(|repo| async {
            ensure_archive_info(repo, &cluster, now, STORE_TIMEOUT).await?;
            is_stored(repo, &shipped.key, STORE_TIMEOUT).await
        }))
        .await;
        if checks.iter().all(|c| matches!(c, Ok(true))) {
            tracing::debug!(wal = %name, ahead_ms = shipped.at.elapsed().as_millis() as u64, "shipped ahead");
            record(
                shared,
                &setup,
                &wal_name,
                &cluster,
                id.size,
                &shipped.sha256,
                &shipped.key,
                now,
                started,
            )
            .await?;
            return Ok((shipped.sha256, Vec::new()));
        }
        tracing::warn!(wal = %name, "a segment shipped ahead is missing from a repository; archiving it again");
    }
    let seal_name = wal_name.clone();
    let seal_setup = setup.clone();
    let sealing = tokio::task::spawn_blocking(move || seal_setup.seal(&file, &seal_name, &cluster));
    // Meanwhile every sync repository's archive.json is read and the name looked up.
    let (sealed, checked) = tokio::join!(sealing, prechecks(&setup, &cluster, &wal_name));
    let (wal, staged) = sealed
        .map_err(|e| format!("reading the file failed: {e}"))?
        .map_err(|e| error_chain(&e))?;
    let stored = store_everywhere(&setup, &cluster, &wal, checked, staged, now).await;
    let wal_size = wal.size;
    let wal_sha256 = wal.sha256;
    recycle_object(wal.object);
    let (key, warnings) = stored?;
    record(
        shared,
        &setup,
        &wal_name,
        &cluster,
        wal_size,
        &wal_sha256,
        &key,
        now,
        started,
    )
    .await?;
    Ok((wal_sha256, warnings))
}

/// [`precheck`] of every sync repository at once (in `setup.sync`'s order).
async fn prechecks(
    setup: &WalSetup,
    cluster: &ClusterIdentity,
    name: &WalName,
) -> Vec<Result<Precheck, PushError>> {
    futures::future::join_all(
        setup
            .sync
            .iter()
            .map(|repo| precheck(repo, cluster, name, STORE_TIMEOUT)),
    )
    .await
}

/// Stores `wal` into every sync repository at once, after their [`prechecks`]; the key and
/// the "already archived" warnings, or every failure.
async fn store_everywhere(
    setup: &WalSetup,
    cluster: &ClusterIdentity,
    wal: &SealedWal,
    checked: Vec<Result<Precheck, PushError>>,
    staged: Option<LocalWriter>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(String, Vec<String>), String> {
    // The staged object belongs to the first sync repository (see push_inner).
    let mut staged = std::iter::once(staged).chain(std::iter::repeat_with(|| None));
    let results =
        futures::future::join_all(setup.sync.iter().zip(checked).map(|(repo, checked)| {
            let staged = staged.next().flatten();
            async move {
                let limit = upload_timeout(wal.size as usize);
                store_prechecked(repo, cluster, wal, &checked?, staged, now, limit).await
            }
        }))
        .await;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for (repo, result) in setup.sync.iter().zip(results) {
        match result {
            Ok(Stored::New(_) | Stored::Written { .. }) => {}
            Ok(Stored::AlreadyThere { .. }) => {
                let w = format!(
                    "{} is already archived in repository `{}` with the same content",
                    wal.name, repo.name
                );
                tracing::warn!("{w}");
                warnings.push(w);
            }
            Err(e) => errors.push(error_chain(&e)),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    // Only WAL the archive holds (stored now, or already with this content) is summarized.
    setup.keep_changes(cluster, wal);
    Ok((object_key(cluster, &wal.name, &wal.sha256), warnings))
}

/// Records an acknowledged file in the state DB (and queues it for the async repositories).
#[allow(clippy::too_many_arguments)]
async fn record(
    shared: &Shared,
    setup: &WalSetup,
    wal_name: &WalName,
    cluster: &ClusterIdentity,
    size: u64,
    sha256: &str,
    key: &str,
    now: chrono::DateTime<chrono::Utc>,
    started: Instant,
) -> Result<(), String> {
    let record = WalArchived {
        job: setup.job.clone(),
        system_identifier: cluster.system_identifier,
        pg_major: cluster.pg_major,
        name: wal_name.name.clone(),
        timeline: wal_name.timeline,
        kind: kind_name(wal_name.kind).to_string(),
        size,
        sha256: sha256.to_string(),
        archived_at: now,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    shared
        .state
        .record_wal(&record, key, &setup.sync[0].name, &setup.async_names)
        .await
        .map_err(|e| format!("archived, but the state DB cannot record it: {e}"))?;
    if !setup.async_names.is_empty() {
        shared.wal.wake.notify_one();
    }
    crate::wal::push::note_durable();
    Ok(())
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
                let timeout = c.archive_timeout_seconds().await.ok();
                c.close().await;
                r.map(|r| (r, timeout))
            })
            .await;
            match asked {
                Ok(Ok(((current, failed, last_failed, last_failed_at), timeout))) => {
                    wal.archive_timeout_seconds = timeout.and_then(|t| u64::try_from(t).ok());
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
        wal.stream = shared.wal.stream.status();
        // Freshness of a WAL job (the last archived file) is set by `health::jobs`.
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
