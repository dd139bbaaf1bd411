//! Retention in the daemon: a pass after each successful backup (under the job's lock, in every
//! repository of the job) and, on `retention-schedule`, a pass for every job with a policy plus
//! the cleanup of uncommitted objects (docs/design.md §4: after a grace longer than the longest run).

use super::core::Shared;
use crate::catalogue::{Catalogue, Job};
use crate::error::error_chain;
use crate::repository::Repository;
use crate::repository::format::backup_prefix;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// The shortest grace before objects of a backup that never committed are removed.
const MIN_CLEANUP_GRACE: Duration = Duration::from_secs(6 * 3600);

/// One retention pass of `job` in each of its repositories; the caller holds the job's lock.
/// Returns one line per problem (for the run's log), never fails the backup.
pub async fn pass_for_job(
    shared: &Arc<Shared>,
    catalogue: &Catalogue,
    job: &Job,
    now: DateTime<Utc>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if job.retention.is_none() {
        return problems;
    }
    for name in &job.repositories {
        let repository = match catalogue.repository(name).map(Repository::open) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                problems.push(format!(
                    "retention in `{name}` skipped: {}",
                    error_chain(&e)
                ));
                continue;
            }
            None => continue,
        };
        match crate::retention::run_for_job(catalogue, job, &repository, now, false).await {
            Ok(report) => {
                if let Err(e) = crate::retention::record_in_state(&shared.state, &report).await {
                    problems.push(format!("retention in `{name}`: state DB: {e}"));
                }
                super::audit::retention(shared, &report, None).await;
                for b in report
                    .backups
                    .iter()
                    .filter(|b| b.action == crate::retention::Action::Delete)
                {
                    let _ = shared.state.forget_replicas(&job.name, &b.id).await;
                }
                tracing::info!(job = %job.name, repository = %name, kept = report.kept, deleted = report.deleted,
                    "retention pass");
                problems.extend(
                    report
                        .errors
                        .iter()
                        .map(|e| format!("retention in `{name}`: {e}")),
                );
            }
            Err(e) => problems.push(format!("retention in `{name}`: {}", error_chain(&e))),
        }
    }
    for p in &problems {
        tracing::warn!(job = %job.name, "{p}");
    }
    problems
}

/// The grace before uncommitted objects go: twice the longest recorded run, at least 6 h.
async fn cleanup_grace(shared: &Arc<Shared>) -> Duration {
    let longest = shared
        .state
        .runs(None, 10_000)
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            r.finished_at
                .map(|f| (f - r.started_at).to_std().unwrap_or_default())
        })
        .max()
        .unwrap_or_default();
    (longest * 2).max(MIN_CLEANUP_GRACE)
}

/// Every job's retention, then the cleanup of uncommitted objects in every repository.
pub async fn scheduled_pass(shared: &Arc<Shared>) {
    let catalogue = shared.catalogue();
    for job in catalogue.jobs.iter().filter(|j| j.retention.is_some()) {
        let lock = shared.job_lock(&job.name);
        let _guard = tokio::select! {
            g = lock.lock() => g,
            _ = shared.shutdown.cancelled() => return,
        };
        pass_for_job(shared, &catalogue, job, shared.clock.now()).await;
    }
    let grace = cleanup_grace(shared).await;
    let running: Vec<String> = {
        let runs = shared.runs.lock().await;
        runs.values()
            .filter_map(|a| {
                a.record
                    .backup_id
                    .as_ref()
                    .map(|id| backup_prefix(&a.record.job, id))
            })
            .collect()
    };
    for settings in &catalogue.repositories {
        let repository = match Repository::open(settings) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(repository = %settings.name, "cleanup skipped: {}", error_chain(&e));
                continue;
            }
        };
        match crate::retention::cleanup_uncommitted_at(
            &repository,
            grace,
            &running,
            shared.clock.now(),
        )
        .await
        {
            Ok(report) if !report.removed.is_empty() || report.staging_removed > 0 => {
                tracing::info!(repository = %settings.name, removed = report.removed.len(),
                    staging = report.staging_removed, bytes = report.bytes_freed,
                    "removed objects of backups that never committed");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(repository = %settings.name, "cleanup failed: {}", error_chain(&e))
            }
        }
    }
}

/// Sleeps until each fire of `retention-schedule`, then runs [`scheduled_pass`].
pub async fn run_loop(shared: Arc<Shared>) {
    loop {
        let catalogue = shared.catalogue();
        let now = shared.clock.now();
        let Some(next) = catalogue
            .daemon
            .retention_schedule
            .next_after(now, catalogue.daemon.timezone)
        else {
            return;
        };
        // Re-read the schedule at least hourly (a reload may change it).
        let wake = next.min(now + chrono::Duration::hours(1));
        tokio::select! {
            _ = shared.clock.sleep_until(wake) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        if wake == next {
            scheduled_pass(&shared).await;
        }
    }
}
