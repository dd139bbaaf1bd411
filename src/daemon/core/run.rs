//! One run's task: the context a run carries (catalogue generation, job, record, progress,
//! phase, cancellation), executing its job kind on one [`JobRun`], replicating what it
//! committed, and recording the outcome.

use super::{CancelReason, Shared, kind_of};
use crate::catalogue::{Catalogue, Job, JobSpec};
use crate::error::error_chain;
use crate::model::{BackupType, Progress, RunRecord, RunStatus};
use crate::pipeline::{PipelineSettings, ProgressCounter};
use crate::protocol::Event;
use crate::repository::{CommitRecord, Repository, backup_row};
use crate::snapshot::job::{JobOutcome, JobRun};
use crate::state::RunOutcome;
use crate::verify::run::Scope;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a job kind produced.
struct KindOutcome {
    /// The committed backup, per repository (the first is the primary); empty when unchanged.
    committed: Vec<(String, CommitRecord)>,
    /// Nothing changed, nothing stored (config jobs).
    unchanged: bool,
    /// Warnings listed on the run (unreadable files, files changed while read, …).
    warnings: Vec<String>,
}

impl KindOutcome {
    fn committed(repository: String, record: CommitRecord, warnings: Vec<String>) -> KindOutcome {
        KindOutcome {
            committed: vec![(repository, record)],
            unchanged: false,
            warnings,
        }
    }

    fn from_snapshot(repository: String, outcome: JobOutcome) -> KindOutcome {
        match outcome {
            JobOutcome::Committed {
                record,
                mut warnings,
                full_because,
            } => {
                if let Some(why) = full_because {
                    warnings.insert(0, format!("made a full backup: {why}"));
                }
                KindOutcome::committed(repository, *record, warnings)
            }
            JobOutcome::Unchanged { since, warnings } => {
                let mut warnings = warnings;
                warnings.insert(0, format!("unchanged since backup {since}"));
                KindOutcome {
                    committed: Vec::new(),
                    unchanged: true,
                    warnings,
                }
            }
        }
    }
}

/// What a run produced (and the replica failures), or the error.
type RunResult = Result<(KindOutcome, Vec<String>), String>;

/// Everything one run needs, moved into its task.
pub(super) struct RunContext {
    pub(super) shared: Arc<Shared>,
    pub(super) catalogue: Arc<Catalogue>,
    pub(super) job: Job,
    pub(super) record: RunRecord,
    pub(super) progress: ProgressCounter,
    pub(super) phase: Arc<std::sync::Mutex<String>>,
    pub(super) cancel: CancellationToken,
    pub(super) reason: Arc<std::sync::Mutex<Option<CancelReason>>>,
    /// What a verify run covers (the defaults for scheduled runs).
    pub(super) scope: Scope,
}

impl RunContext {
    fn set_phase(&self, phase: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_string();
        }
    }

    /// The job's other repositories, and the type to run: an incremental's parent must be
    /// committed in every repository (docs/design.md §4), so a replica that cannot be opened makes the
    /// run a full.
    fn replicas_and_type(&self) -> (Vec<Repository>, BackupType) {
        let mut replicas = Vec::new();
        for name in self.job.repositories.iter().skip(1) {
            match self.catalogue.repository(name).map(Repository::open) {
                Some(Ok(r)) => replicas.push(r),
                _ => {
                    tracing::warn!(job = %self.job.name, repository = %name, "replica cannot be opened")
                }
            }
        }
        let all_open = replicas.len() + 1 == self.job.repositories.len();
        let requested = match self.record.backup_type {
            Some(BackupType::Incremental) if !all_open => BackupType::Full,
            Some(t) => t,
            None => BackupType::Full,
        };
        (replicas, requested)
    }

    pub(super) async fn execute(self) {
        let shared = self.shared.clone();
        let permit = tokio::select! {
            p = shared.slots.clone().acquire_owned() => p.ok(),
            _ = self.cancel.cancelled() => None,
        };
        let result = match permit {
            None => Err("cancelled before it started".to_string()),
            Some(_permit) => {
                let lock = shared.job_lock(&self.record.job);
                let guard = tokio::select! {
                    g = lock.lock() => Some(g),
                    _ = self.cancel.cancelled() => None,
                };
                match guard {
                    None => Err("cancelled before it started".to_string()),
                    Some(_guard) => {
                        self.set_phase("running");
                        let reporter = self.spawn_progress_reporter();
                        let result = match self.run_kind().await {
                            Ok(mut outcome) => {
                                let replica_errors = self.replicate(&outcome.committed).await;
                                // The catalogue travels with the repository (docs/design.md).
                                self.set_phase("catalogue copy");
                                outcome.warnings.extend(
                                    crate::dr::catalogue_copy::store_for_job(
                                        &self.catalogue,
                                        &self.job,
                                    )
                                    .await,
                                );
                                if self.job.retention.is_some() {
                                    self.set_phase("retention");
                                    let now = shared.clock.now();
                                    super::super::retention::pass_for_job(
                                        &shared,
                                        &self.catalogue,
                                        &self.job,
                                        now,
                                    )
                                    .await;
                                }
                                Ok((outcome, replica_errors))
                            }
                            Err(e) => Err(e),
                        };
                        reporter.abort();
                        result
                    }
                }
            }
        };
        self.finish(result).await;
    }

    /// Queues the committed backup for the job's other repositories and tries each copy once now;
    /// failures stay queued for the background replicator. Returns the failures.
    async fn replicate(&self, committed: &[(String, CommitRecord)]) -> Vec<String> {
        let Some((primary, record)) = committed.first() else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        for repository in self.job.repositories.iter().skip(1) {
            let now = self.shared.clock.now();
            if let Err(e) = self
                .shared
                .state
                .enqueue_replica(&record.job, &record.id, repository, primary, now)
                .await
            {
                errors.push(format!("replica `{repository}`: cannot queue it: {e}"));
                continue;
            }
            self.set_phase(&format!("replicating to {repository}"));
            let task = crate::state::ReplicaTask {
                job: record.job.clone(),
                backup_id: record.id.clone(),
                repository: repository.clone(),
                source: primary.clone(),
                enqueued_at: now,
                attempts: 0,
                last_error: None,
                next_attempt_at: now,
                permanent: false,
            };
            if let Err(message) = super::super::replicate::attempt_locked(&self.shared, &task).await
            {
                errors.push(format!(
                    "replica `{repository}`: {message} (retried in the background)"
                ));
            }
        }
        errors
    }

    fn spawn_progress_reporter(&self) -> tokio::task::JoinHandle<()> {
        let shared = self.shared.clone();
        let progress = self.progress.clone();
        let phase = self.phase.clone();
        let run_id = self.record.id;
        let job = self.record.job.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let p = Progress {
                    phase: phase.lock().map(|p| p.clone()).unwrap_or_default(),
                    bytes_read: progress.read(),
                    bytes_stored: progress.stored(),
                };
                let _ = shared
                    .state
                    .update_progress(run_id, p.bytes_read, p.bytes_stored)
                    .await;
                shared.emit(Event::Progress {
                    run_id,
                    job: job.clone(),
                    progress: p,
                });
            }
        })
    }

    async fn run_kind(&self) -> Result<KindOutcome, String> {
        if matches!(self.job.spec, JobSpec::Verify(_)) {
            let phase = |p: &str| self.set_phase(p);
            super::super::verify::run(
                &self.shared,
                &self.catalogue,
                &self.job,
                &self.scope,
                self.record.id,
                self.cancel.clone(),
                &phase,
                &self.progress,
            )
            .await?;
            return Ok(KindOutcome {
                committed: Vec::new(),
                unchanged: false,
                warnings: Vec::new(),
            });
        }
        let primary_name = self
            .job
            .repositories
            .first()
            .ok_or("the job lists no repository")?;
        let settings = self
            .catalogue
            .repository(primary_name)
            .ok_or_else(|| format!("repository `{primary_name}` is not in the catalogue"))?;
        let repository = Repository::open(settings).map_err(|e| error_chain(&e))?;
        let pipeline =
            PipelineSettings::for_job(&self.catalogue, &self.job).map_err(|e| error_chain(&e))?;
        let backup_id = self.record.backup_id.clone().unwrap_or_default();
        // Only kinds with incrementals look at the replicas (the parent rule).
        let (replicas, requested) = match &self.job.spec {
            JobSpec::Files(_) | JobSpec::PostgresBase(_) => self.replicas_and_type(),
            _ => (Vec::new(), BackupType::Full),
        };
        // The one run context of every kind.
        let run = JobRun {
            catalogue: &self.catalogue,
            job: &self.job,
            repository: &repository,
            replicas: &replicas,
            pipeline: &pipeline,
            backup_id: &backup_id,
            started_at: self.record.started_at,
            requested,
            progress: &self.progress,
            cancel: &self.cancel,
            state_dir: &self.catalogue.daemon.state_directory,
        };
        let primary = repository.name.clone();
        match &self.job.spec {
            JobSpec::PostgresDump(spec) => {
                self.set_phase("dumping");
                let record = crate::postgres::dump::run_dump(run, spec)
                    .await
                    .map_err(|e| error_chain(&e))?;
                let warnings = crate::dr::provenance::Provenance::of(&record)
                    .and_then(|p| p.warning())
                    .into_iter()
                    .collect();
                Ok(KindOutcome::committed(primary, record, warnings))
            }
            JobSpec::Files(spec) => {
                self.set_phase("reading files");
                let outcome = crate::files::run_files(run, spec)
                    .await
                    .map_err(|e| error_chain(&e))?;
                Ok(KindOutcome::from_snapshot(primary, outcome))
            }
            JobSpec::PostgresBase(spec) => {
                self.set_phase("base backup");
                let outcome = crate::postgres::base::run_base(run, spec)
                    .await
                    .map_err(|e| error_chain(&e))?;
                Ok(KindOutcome::from_snapshot(primary, outcome))
            }
            JobSpec::Config(spec) => {
                self.set_phase("checking config files");
                let outcome = crate::files::run_config(run, spec)
                    .await
                    .map_err(|e| error_chain(&e))?;
                Ok(KindOutcome::from_snapshot(primary, outcome))
            }
            other => Err(format!(
                "job kind `{}` is not supported by this version of bdc-backupd",
                kind_of(other)
            )),
        }
    }

    async fn finish(self, result: RunResult) {
        let shared = &self.shared;
        let now = shared.clock.now();
        let reason = self.reason.lock().map(|r| r.clone()).unwrap_or(None);
        let (status, error, backup_id) = match result {
            Ok((outcome, replica_errors)) => {
                let mut backup_id = None;
                for (repository, record) in &outcome.committed {
                    backup_id = Some(record.id.clone());
                    let row = backup_row(repository, record);
                    if let Err(err) = shared.state.upsert_backup(&row).await {
                        tracing::error!(job = %self.record.job, error = %err, "cannot record the backup in the state DB");
                    }
                }
                // For a successful run `error` carries its warnings, if any.
                let warnings = (!outcome.warnings.is_empty())
                    .then(|| format!("warnings: {}", outcome.warnings.join("; ")));
                if !replica_errors.is_empty() {
                    shared.replicator_wake.notify_one();
                    let mut text = replica_errors.join("; ");
                    if let Some(w) = warnings {
                        text = format!("{text}; {w}");
                    }
                    (RunStatus::Partial, Some(text), backup_id)
                } else if outcome.unchanged {
                    (RunStatus::Unchanged, warnings, None)
                } else {
                    (RunStatus::Succeeded, warnings, backup_id)
                }
            }
            Err(message) => match reason {
                Some(CancelReason::Shutdown) => (
                    RunStatus::Interrupted,
                    Some(format!("interrupted: the daemon was stopping ({message})")),
                    None,
                ),
                Some(CancelReason::Operator(by)) => (
                    RunStatus::Interrupted,
                    Some(format!("cancelled by {by} ({message})")),
                    None,
                ),
                None => (RunStatus::Failed, Some(message), None),
            },
        };
        let outcome = RunOutcome {
            status,
            finished_at: now,
            bytes_read: self.progress.read(),
            bytes_stored: self.progress.stored(),
            error: error.clone(),
            backup_id: backup_id.clone(),
        };
        if let Err(err) = shared.state.finish_run(self.record.id, &outcome).await {
            tracing::error!(job = %self.record.job, run_id = self.record.id, error = %err, "cannot record the run's end in the state DB");
        }
        match (&status, &error) {
            (RunStatus::Succeeded, _) => tracing::info!(
                job = %self.record.job, run_id = self.record.id, backup_id = %backup_id.clone().unwrap_or_default(),
                bytes_read = outcome.bytes_read, bytes_stored = outcome.bytes_stored, "run succeeded"
            ),
            (_, Some(e)) => {
                tracing::error!(job = %self.record.job, run_id = self.record.id, status = %status, "run ended: {e}")
            }
            _ => {}
        }
        let mut record = self.record.clone();
        record.status = status;
        record.finished_at = Some(now);
        record.bytes_read = outcome.bytes_read;
        record.bytes_stored = outcome.bytes_stored;
        record.error = error;
        record.backup_id = outcome.backup_id.clone();
        super::super::audit::run_finished(shared, &record).await;
        shared.runs.lock().await.remove(&self.record.job);
        shared.emit(Event::RunFinished { run: record });
        shared.wake.notify_one();
    }
}
