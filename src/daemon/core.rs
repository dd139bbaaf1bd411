//! The daemon's shared state and the run executor: starting runs (overlap and the global cap),
//! executing a job kind (one [`JobRun`] context for every kind, dispatched on the job's spec),
//! recording the outcome, cancellation, reload and the status report.

mod run;

use crate::catalogue::{Catalogue, CatalogueErrors, Job, JobSpec};
use crate::clock::Clock;
use crate::control::auth::AccessPolicy;
use crate::model::{
    BackupType, JobKindName, JobStatus, Progress, ReplicaReport, RepositoryStatus, RunRecord,
    RunStatus, StatusReport, Trigger,
};
use crate::pipeline::ProgressCounter;
use crate::protocol::Event;
use crate::repository::BackupId;
use crate::schedule::{JobSchedule, next_fire};
use crate::state::{NewRun, StateDb};
use crate::units::human_bytes;
use crate::verify::run::Scope;
use chrono::{DateTime, Utc};
use run::RunContext;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{Mutex, Notify, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a run was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    Shutdown,
    Operator(String),
}

/// A run in progress.
pub struct ActiveRun {
    pub record: RunRecord,
    pub progress: ProgressCounter,
    pub phase: Arc<std::sync::Mutex<String>>,
    pub cancel: CancellationToken,
    pub reason: Arc<std::sync::Mutex<Option<CancelReason>>>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no job named `{0}` in the catalogue")]
    UnknownJob(String),
    #[error("job `{job}` is already running (run {run_id})")]
    AlreadyRunning { job: String, run_id: i64 },
    #[error("job `{job}`: {message}")]
    NotRunnable { job: String, message: String },
    #[error("the daemon is stopping")]
    Stopping,
    #[error("job `{job}`: cannot record the run: {source}")]
    State {
        job: String,
        #[source]
        source: crate::state::StateError,
    },
}

pub struct Shared {
    pub catalogue_path: PathBuf,
    catalogue: RwLock<Arc<Catalogue>>,
    pub state: StateDb,
    pub clock: Arc<dyn Clock>,
    pub events: broadcast::Sender<Event>,
    pub runs: Mutex<HashMap<String, ActiveRun>>,
    slots: Arc<Semaphore>,
    slot_total: AtomicUsize,
    pub wake: Notify,
    /// Wakes the replicator (a copy was queued).
    pub replicator_wake: Notify,
    pub started_at: DateTime<Utc>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    policy: watch::Sender<AccessPolicy>,
    last_ids: std::sync::Mutex<HashMap<String, String>>,
    stopping: std::sync::atomic::AtomicBool,
    /// One lock per job: a run, its replication and retention passes of the job never overlap.
    job_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// WAL pushes: their own upload slots, the async backlog's wake-up (docs/design.md §5).
    pub wal: super::wal::WalArchiver,
    /// Alert delivery and evaluation (docs/alerts.md).
    pub alerts: super::alerts::AlertHub,
    /// What the metrics keep between scrapes (the WAL lag asked of the cluster).
    pub metrics: super::metrics::MetricsState,
}

impl Shared {
    pub fn new(
        path: PathBuf,
        catalogue: Catalogue,
        state: StateDb,
        clock: Arc<dyn Clock>,
    ) -> Arc<Shared> {
        let max = catalogue.daemon.max_concurrent_runs.max(1);
        let policy = resolve_policy(&catalogue);
        let (events, _) = broadcast::channel(1024);
        let started_at = clock.now();
        Arc::new(Shared {
            catalogue_path: path,
            catalogue: RwLock::new(Arc::new(catalogue)),
            state,
            clock,
            events,
            runs: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(max)),
            slot_total: AtomicUsize::new(max),
            wake: Notify::new(),
            replicator_wake: Notify::new(),
            started_at,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            policy: watch::channel(policy).0,
            last_ids: std::sync::Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            job_locks: std::sync::Mutex::new(HashMap::new()),
            wal: super::wal::WalArchiver::new(),
            alerts: super::alerts::AlertHub::default(),
            metrics: Default::default(),
        })
    }

    /// The lock that serializes a job's runs, replica copies and retention passes.
    pub fn job_lock(&self, job: &str) -> Arc<Mutex<()>> {
        let mut locks = self.job_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(job.to_string()).or_default().clone()
    }

    pub fn catalogue(&self) -> Arc<Catalogue> {
        self.catalogue
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn access_policy(&self) -> AccessPolicy {
        self.policy.borrow().clone()
    }

    pub fn policy_receiver(&self) -> watch::Receiver<AccessPolicy> {
        self.policy.subscribe()
    }

    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Re-reads the catalogue; an invalid one is rejected and the old one kept.
    pub async fn reload(self: &Arc<Self>) -> Result<usize, CatalogueErrors> {
        super::systemd::reloading();
        let result = Catalogue::load(&self.catalogue_path);
        let outcome = match result {
            Ok(new) => {
                let old = self.catalogue();
                if new.daemon.state_db != old.daemon.state_db
                    || new.daemon.socket != old.daemon.socket
                {
                    tracing::warn!("state-db and socket changes take effect only after a restart");
                }
                let new_max = new.daemon.max_concurrent_runs.max(1);
                let old_max = self.slot_total.swap(new_max, Ordering::SeqCst);
                if new_max > old_max {
                    self.slots.add_permits(new_max - old_max);
                } else if new_max < old_max {
                    let slots = self.slots.clone();
                    let shrink = (old_max - new_max) as u32;
                    tokio::spawn(async move {
                        if let Ok(p) = slots.acquire_many_owned(shrink).await {
                            p.forget();
                        }
                    });
                }
                let _ = self.policy.send(resolve_policy(&new));
                let jobs = new.jobs.len();
                *self.catalogue.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
                tracing::info!(jobs, "catalogue reloaded");
                self.emit(Event::Reloaded { jobs });
                self.wake.notify_one();
                // The operator may have fixed what held replicas back permanently (credentials,
                // a bucket, a path): try those copies now rather than at the next backoff probe.
                match self.state.retry_permanent_replicas(self.clock.now()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(
                            copies = n,
                            "retrying replicas held back by a permanent error"
                        );
                        self.replicator_wake.notify_one();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "state DB: cannot reschedule held-back replicas")
                    }
                }
                Ok(jobs)
            }
            Err(errors) => Err(errors),
        };
        super::systemd::reloaded(&self.status_line().await);
        outcome
    }

    /// Starts a run of `job` now (queued behind the global cap if needed).
    pub async fn start_run(
        self: &Arc<Self>,
        job_name: &str,
        requested: Option<BackupType>,
        trigger: Trigger,
    ) -> Result<RunRecord, StartError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(StartError::Stopping);
        }
        let catalogue = self.catalogue();
        let job = catalogue
            .job(job_name)
            .ok_or_else(|| StartError::UnknownJob(job_name.to_string()))?
            .clone();
        self.start_job(catalogue, job, requested, trigger, Scope::default())
            .await
    }

    /// `bdc-backupctl verify`: a manual run of the verify job covering `scope.job` (the first in
    /// catalogue order, else the built-in `verify`), its checks limited to the scope.
    pub async fn start_verify(self: &Arc<Self>, scope: Scope) -> Result<RunRecord, StartError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(StartError::Stopping);
        }
        let catalogue = self.catalogue();
        let job = crate::verify::run::choose_job(&catalogue, scope.job.as_deref()).map_err(
            |message| match &scope.job {
                Some(j) if catalogue.job(j).is_none() => StartError::UnknownJob(j.clone()),
                _ => StartError::NotRunnable {
                    job: scope.job.clone().unwrap_or_else(|| "verify".into()),
                    message,
                },
            },
        )?;
        self.start_job(catalogue, job, None, Trigger::Manual, scope)
            .await
    }

    async fn start_job(
        self: &Arc<Self>,
        catalogue: Arc<Catalogue>,
        job: Job,
        requested: Option<BackupType>,
        trigger: Trigger,
        scope: Scope,
    ) -> Result<RunRecord, StartError> {
        let job_name = job.name.clone();
        let job_name = job_name.as_str();
        let verify = matches!(job.spec, JobSpec::Verify(_));
        let backup_type = runnable_type(&job, requested)?;
        let mut runs = self.runs.lock().await;
        if let Some(active) = runs.get(job_name) {
            return Err(StartError::AlreadyRunning {
                job: job_name.to_string(),
                run_id: active.record.id,
            });
        }
        let now = self.clock.now();
        // A verify run makes no backup: no backup id, no type.
        let (backup_type, backup_id) = if verify {
            (None, None)
        } else {
            (
                Some(backup_type),
                Some(self.unique_backup_id(job_name, now, backup_type)),
            )
        };
        let new = NewRun {
            job: job.name.clone(),
            kind: job.kind(),
            trigger,
            backup_type,
            started_at: now,
            backup_id: backup_id.clone(),
        };
        let id = self
            .state
            .start_run(&new)
            .await
            .map_err(|source| StartError::State {
                job: job.name.clone(),
                source,
            })?;
        let record = RunRecord {
            id,
            job: job.name.clone(),
            kind: job.kind(),
            trigger,
            backup_type,
            status: RunStatus::Running,
            started_at: now,
            finished_at: None,
            bytes_read: 0,
            bytes_stored: 0,
            error: None,
            backup_id: backup_id.clone(),
        };
        let active = ActiveRun {
            record: record.clone(),
            progress: ProgressCounter::default(),
            phase: Arc::new(std::sync::Mutex::new("queued".to_string())),
            cancel: self.shutdown.child_token(),
            reason: Arc::new(std::sync::Mutex::new(None)),
        };
        let ctx = RunContext {
            shared: self.clone(),
            catalogue,
            job,
            record: record.clone(),
            progress: active.progress.clone(),
            phase: active.phase.clone(),
            cancel: active.cancel.clone(),
            reason: active.reason.clone(),
            scope,
        };
        runs.insert(job_name.to_string(), active);
        drop(runs);
        tracing::info!(job = %record.job, run_id = record.id, backup_id = %backup_id.unwrap_or_default(), trigger = %trigger, "run started");
        self.emit(Event::RunStarted {
            run: record.clone(),
        });
        self.tasks.spawn(ctx.execute());
        Ok(record)
    }

    /// Seeds the ids already used, from the state DB: a run that died (kill -9) may have left
    /// uncommitted objects under its id, and a new run in the same second must not reuse it.
    pub async fn remember_backup_ids(&self) {
        let jobs: Vec<String> = self
            .catalogue()
            .jobs
            .iter()
            .map(|j| j.name.clone())
            .collect();
        for job in jobs {
            match self.state.runs(Some(&job), 1).await {
                Ok(runs) => {
                    if let Some(id) = runs.into_iter().next().and_then(|r| r.backup_id) {
                        let mut last = self.last_ids.lock().unwrap_or_else(|e| e.into_inner());
                        last.insert(job, id);
                    }
                }
                Err(e) => tracing::warn!(job = %job, error = %e, "cannot read the last backup id"),
            }
        }
    }

    fn unique_backup_id(&self, job: &str, now: DateTime<Utc>, ty: BackupType) -> String {
        let mut last = self.last_ids.lock().unwrap_or_else(|e| e.into_inner());
        let mut at = now;
        let mut id = BackupId::new(at, ty).0;
        while last.get(job).is_some_and(|prev| prev >= &id) {
            at += chrono::Duration::seconds(1);
            id = BackupId::new(at, ty).0;
        }
        last.insert(job.to_string(), id.clone());
        id
    }

    /// Cancels a running run on an operator's request.
    pub async fn cancel_run(&self, run_id: i64, by: &str) -> bool {
        let runs = self.runs.lock().await;
        for active in runs.values() {
            if active.record.id == run_id {
                *active.reason.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(CancelReason::Operator(by.to_string()));
                active.cancel.cancel();
                return true;
            }
        }
        false
    }

    /// SIGTERM: cancel every run, wait for them to record `interrupted` (bounded).
    pub async fn shutdown_runs(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let runs = self.runs.lock().await;
            for active in runs.values() {
                *active.reason.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(CancelReason::Shutdown);
                active.cancel.cancel();
            }
        }
        self.tasks.close();
        let timeout = self.catalogue().daemon.shutdown_timeout;
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("running jobs did not stop within {}s", timeout.as_secs());
        }
    }

    /// One line for systemd's STATUS.
    pub async fn status_line(&self) -> String {
        let runs = self.runs.lock().await;
        if !runs.is_empty() {
            let parts: Vec<String> = runs
                .values()
                .map(|a| {
                    let phase = a.phase.lock().map(|p| p.clone()).unwrap_or_default();
                    format!(
                        "{} {} ({} read)",
                        a.record.job,
                        phase,
                        human_bytes(a.progress.read())
                    )
                })
                .collect();
            return format!("running: {}", parts.join(", "));
        }
        drop(runs);
        let catalogue = self.catalogue();
        let now = self.clock.now();
        let mut next: Option<(DateTime<Utc>, String)> = None;
        for job in &catalogue.jobs {
            if let Some(t) = self
                .next_fire_of(&catalogue, job, now)
                .await
                .map(|(t, _)| t)
                && next.as_ref().is_none_or(|(n, _)| t < *n)
            {
                next = Some((t, job.name.clone()));
            }
        }
        match next {
            Some((t, job)) => {
                let local = t.with_timezone(&catalogue.daemon.timezone);
                format!("idle; next: {job} at {}", local.format("%Y-%m-%d %H:%M %Z"))
            }
            None => "idle; nothing scheduled".to_string(),
        }
    }

    pub async fn next_fire_of(
        &self,
        catalogue: &Catalogue,
        job: &Job,
        now: DateTime<Utc>,
    ) -> Option<(DateTime<Utc>, BackupType)> {
        let entries = job.schedules();
        if entries.is_empty() {
            return None;
        }
        let mut last_fire = Vec::new();
        for (ty, _) in &entries {
            last_fire.push((
                *ty,
                self.state.last_fire(&job.name, *ty).await.ok().flatten(),
            ));
        }
        let known_since = self
            .state
            .job_known_since(&job.name, now)
            .await
            .unwrap_or(now);
        let js = JobSchedule {
            job: &job.name,
            entries,
            last_fire,
            known_since,
        };
        next_fire(&js, now, catalogue.daemon.timezone)
    }

    /// The answer to `status`.
    pub async fn status_report(&self) -> Result<StatusReport, crate::state::StateError> {
        let catalogue = self.catalogue();
        let now = self.clock.now();
        let running: HashMap<String, (RunRecord, Progress)> = {
            let runs = self.runs.lock().await;
            runs.iter()
                .map(|(job, a)| {
                    let mut record = a.record.clone();
                    record.bytes_read = a.progress.read();
                    record.bytes_stored = a.progress.stored();
                    let progress = Progress {
                        phase: a.phase.lock().map(|p| p.clone()).unwrap_or_default(),
                        bytes_read: a.progress.read(),
                        bytes_stored: a.progress.stored(),
                    };
                    (job.clone(), (record, progress))
                })
                .collect()
        };
        let backups = self.state.backups(None, None).await?;
        let mut jobs = Vec::new();
        for job in &catalogue.jobs {
            let (last_run, last_success) = self.state.last_runs(&job.name).await?;
            let next = self.next_fire_of(&catalogue, job, now).await;
            let mut repositories = Vec::new();
            for (i, repo) in job.repositories.iter().enumerate() {
                let last = backups
                    .iter()
                    .filter(|b| b.job == job.name && &b.repository == repo)
                    .max_by_key(|b| b.stopped_at);
                let mut status = RepositoryStatus {
                    repository: repo.clone(),
                    last_backup_id: last.map(|b| b.backup_id.clone()),
                    last_backup_at: last.map(|b| b.stopped_at),
                    replica: None,
                };
                if i > 0 {
                    let r = self.state.replica_status(&job.name, repo).await?;
                    status.replica = Some(ReplicaReport {
                        pending: r.pending,
                        lag_seconds: r
                            .oldest_pending_since
                            .map(|t| (now - t).num_seconds().max(0)),
                        last_success_at: r.last_success_at,
                        last_error: r.last_error,
                        last_error_at: r.last_error_at,
                        permanent: r.permanent,
                        next_attempt_at: r.next_attempt_at,
                    });
                }
                repositories.push(status);
            }
            jobs.push(JobStatus {
                name: job.name.clone(),
                kind: job.kind(),
                next_run: next.map(|(t, _)| t),
                next_type: next.map(|(_, ty)| ty),
                last_run,
                last_success,
                running: running.get(&job.name).cloned(),
                repositories,
                // Set from `health::jobs` below.
                stale: false,
                retention: self.state.last_retention_pass(&job.name).await?,
                wal: None,
                verification: None,
            });
        }
        super::wal::fill_status(self, &catalogue, &mut jobs).await;
        let objectives = super::alerts::apply_health(self, &catalogue, &mut jobs, now).await;
        super::verify::fill_status(self, &catalogue, &mut jobs).await;
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started_at: self.started_at,
            catalogue: self.catalogue_path.display().to_string(),
            timezone: catalogue.daemon.timezone.to_string(),
            max_concurrent_runs: catalogue.daemon.max_concurrent_runs,
            jobs,
            objectives,
        })
    }
}

/// The backup type a run of `job` takes, or why it cannot run.
fn runnable_type(job: &Job, requested: Option<BackupType>) -> Result<BackupType, StartError> {
    let not = |message: &str| StartError::NotRunnable {
        job: job.name.clone(),
        message: message.to_string(),
    };
    match &job.spec {
        JobSpec::PostgresWal(_) => Err(not(
            "postgres-wal jobs are not run: PostgreSQL pushes WAL with `bdc-backupctl wal-push`",
        )),
        JobSpec::PostgresDump(_) => match requested {
            Some(BackupType::Incremental) => Err(not("postgres-dump backups are always full")),
            _ => Ok(BackupType::Full),
        },
        _ => Ok(requested.unwrap_or(BackupType::Full)),
    }
}

fn resolve_policy(catalogue: &Catalogue) -> AccessPolicy {
    let d = &catalogue.daemon;
    AccessPolicy::resolve(
        nix::unistd::geteuid().as_raw(),
        &d.read_group,
        &d.admin_group,
        &d.postgres_os_user,
    )
}

fn kind_of(spec: &JobSpec) -> JobKindName {
    match spec {
        JobSpec::PostgresDump(_) => JobKindName::PostgresDump,
        JobSpec::PostgresBase(_) => JobKindName::PostgresBase,
        JobSpec::PostgresWal(_) => JobKindName::PostgresWal,
        JobSpec::Files(_) => JobKindName::Files,
        JobSpec::Config(_) => JobKindName::Config,
        JobSpec::Verify(_) => JobKindName::Verify,
    }
}
