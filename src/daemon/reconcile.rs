//! Start-up reconciliation of the state DB with the repositories, which are the source of truth:
//! a run left `running` becomes `interrupted` unless its commit record exists (then it succeeded,
//! or is `partial` with its missing replica copies queued), and the backups table is brought in line with the commit records each repository holds.

use super::core::Shared;
use crate::error::error_chain;
use crate::model::RunStatus;
use crate::repository::Repository;
use crate::repository::backup_row;
use crate::state::RunOutcome;
use std::collections::HashSet;
use std::sync::Arc;

/// Runs left `running` by a daemon that died.
pub async fn interrupted_runs(shared: &Arc<Shared>) {
    let runs = match shared.state.runs_with_status(RunStatus::Running).await {
        Ok(runs) => runs,
        Err(err) => {
            tracing::error!(error = %err, "state DB: cannot list runs left running");
            return;
        }
    };
    let catalogue = shared.catalogue();
    for run in runs {
        let committed = match (&run.backup_id, catalogue.job(&run.job)) {
            (Some(id), Some(job)) => {
                let repo = job
                    .repositories
                    .first()
                    .and_then(|r| catalogue.repository(r));
                match repo.map(Repository::open) {
                    Some(Ok(repo)) => match repo.commit_record(&run.job, id).await {
                        Ok(Some(record)) => Some((repo.name.clone(), record)),
                        Ok(None) => None,
                        Err(err) => {
                            tracing::warn!(job = %run.job, run_id = run.id, "cannot check for a commit record: {}", error_chain(&err));
                            None
                        }
                    },
                    _ => None,
                }
            }
            _ => None,
        };
        let now = shared.clock.now();
        let outcome = match &committed {
            Some((repository, record)) => {
                if let Err(err) = shared
                    .state
                    .upsert_backup(&backup_row(repository, record))
                    .await
                {
                    tracing::error!(error = %err, "state DB: cannot record a backup");
                }
                let missing = missing_replicas(shared, repository, record).await;
                RunOutcome {
                    status: if missing.is_empty() {
                        RunStatus::Succeeded
                    } else {
                        RunStatus::Partial
                    },
                    finished_at: record.stopped_at,
                    bytes_read: record.bytes_read,
                    bytes_stored: record.bytes_stored,
                    error: (!missing.is_empty()).then(|| {
                        format!(
                            "the daemon stopped before the copy to {} landed; queued for the background replicator",
                            missing.join(", ")
                        )
                    }),
                    backup_id: Some(record.id.clone()),
                }
            }
            None => RunOutcome {
                status: RunStatus::Interrupted,
                finished_at: now,
                bytes_read: run.bytes_read,
                bytes_stored: run.bytes_stored,
                error: Some(
                    "the daemon stopped during this run; no commit record was written".to_string(),
                ),
                backup_id: None,
            },
        };
        tracing::warn!(job = %run.job, run_id = run.id, status = %outcome.status, "reconciled a run left running by a previous daemon");
        if let Err(err) = shared.state.finish_run(run.id, &outcome).await {
            tracing::error!(error = %err, "state DB: cannot reconcile run {}", run.id);
        }
    }
}

/// The job's other repositories that lack the commit record of a backup committed in
/// `primary` by a run the daemon did not finish: each is queued for the background replicator
/// (the run may have died before it queued them, or during the copy). Returns their names.
async fn missing_replicas(
    shared: &Arc<Shared>,
    primary: &str,
    record: &crate::repository::CommitRecord,
) -> Vec<String> {
    let catalogue = shared.catalogue();
    let Some(job) = catalogue.job(&record.job) else {
        return Vec::new();
    };
    let mut missing = Vec::new();
    for name in job.repositories.iter().filter(|r| r.as_str() != primary) {
        let there = match catalogue.repository(name).map(Repository::open) {
            Some(Ok(repo)) => matches!(
                repo.commit_record(&record.job, &record.id).await,
                Ok(Some(_))
            ),
            _ => false,
        };
        if there {
            continue;
        }
        if let Err(err) = shared
            .state
            .enqueue_replica(&record.job, &record.id, name, primary, shared.clock.now())
            .await
        {
            tracing::error!(error = %err, "state DB: cannot queue a replica");
        }
        missing.push(format!("`{name}`"));
    }
    if !missing.is_empty() {
        shared.replicator_wake.notify_one();
    }
    missing
}

/// The backups table follows the commit records of every repository of the catalogue.
pub async fn backups(shared: &Arc<Shared>) {
    let catalogue = shared.catalogue();
    for settings in &catalogue.repositories {
        let repo = match Repository::open(settings) {
            Ok(repo) => repo,
            Err(err) => {
                tracing::warn!(repository = %settings.name, "cannot open repository: {}", error_chain(&err));
                continue;
            }
        };
        // The rows to check are read before the listing: a row recorded meanwhile (a replica the
        // replicator lands while this runs) is not in the listing and must not be forgotten.
        let before = shared.state.backups(None, Some(&repo.name)).await;
        let (records, bad) = match repo.list_commits(None).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(repository = %settings.name, "cannot list backups: {}", error_chain(&err));
                continue;
            }
        };
        for err in bad {
            tracing::warn!(repository = %settings.name, "{}", error_chain(&err));
        }
        let mut present = HashSet::new();
        for record in &records {
            present.insert((record.job.clone(), record.id.clone()));
            if let Err(err) = shared
                .state
                .upsert_backup(&backup_row(&repo.name, record))
                .await
            {
                tracing::error!(error = %err, "state DB: cannot record a backup");
            }
        }
        if let Ok(rows) = before {
            for row in rows {
                if !present.contains(&(row.job.clone(), row.backup_id.clone())) {
                    tracing::warn!(job = %row.job, backup_id = %row.backup_id, repository = %repo.name,
                        "backup recorded in the state DB has no commit record in the repository any more; forgetting it");
                    let _ = shared
                        .state
                        .remove_backup(&row.job, &row.backup_id, &repo.name)
                        .await;
                }
            }
        }
    }
}
