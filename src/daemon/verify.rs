//! Verify runs in the daemon: the run itself (checks recorded in the state DB as it ends, the
//! verdict as the run's status), the leftovers of drills a killed daemon left (removed at start)
//! and what `status` says per backup job (last drill, newest backup proven, sample coverage).

use super::core::Shared;
use crate::catalogue::{Catalogue, Job, JobSpec};
use crate::model::{CheckRecord, JobKindName, JobStatus};
use crate::pipeline::ProgressCounter;
use crate::verify::check::Check;
use crate::verify::run::{Scope, VerifyRun};
use tokio_util::sync::CancellationToken;

/// A check as the state DB stores it.
pub fn record_of(run_id: i64, check: &Check, at: chrono::DateTime<chrono::Utc>) -> CheckRecord {
    CheckRecord {
        id: 0,
        run_id,
        job: check.job.clone(),
        repository: check.repository.clone(),
        backup_id: check.backup_id.clone(),
        kind: check.kind.as_str().to_string(),
        name: check.name.clone(),
        result: check.result.as_str().to_string(),
        detail: check.detail.clone(),
        seconds: check.seconds,
        bytes: check.bytes,
        at,
    }
}

/// Runs verify job `job` (run `run_id`) and records every check. Ok when every check passed
/// (skipped ones do not count), else Err summarising the failures.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    shared: &Shared,
    catalogue: &Catalogue,
    job: &Job,
    scope: &Scope,
    run_id: i64,
    cancel: CancellationToken,
    phase: &(dyn Fn(&str) + Send + Sync),
    progress: &ProgressCounter,
) -> Result<(), String> {
    let outcome = crate::verify::run::run(VerifyRun {
        catalogue,
        job,
        scope,
        run_id,
        state: Some(&shared.state),
        cancel,
        phase,
        progress,
    })
    .await;
    let now = shared.clock.now();
    for c in &outcome.checks {
        if let Err(e) = shared.state.record_check(&record_of(run_id, c, now)).await {
            tracing::error!(job = %job.name, run_id, error = %e, "state DB: cannot record a check");
        }
    }
    if outcome.cancelled {
        return Err(format!("cancelled after {} checks", outcome.checks.len()));
    }
    outcome.verdict().map(|summary| {
        tracing::info!(job = %job.name, run_id, "verify: {summary}");
    })
}

/// Removes what drills of an earlier, killed daemon left behind, for every verify job (and the
/// built-in one). Logged, never fatal.
pub(super) async fn remove_leftovers(catalogue: &Catalogue) {
    let mut settings = Vec::new();
    for job in &catalogue.jobs {
        if let JobSpec::Verify(v) = &job.spec {
            settings.push(v.drill.clone());
        }
    }
    if let JobSpec::Verify(v) = crate::verify::run::built_in(catalogue).spec
        && !settings
            .iter()
            .any(|s| s.scratch_directory == v.drill.scratch_directory)
    {
        settings.push(v.drill);
    }
    for s in &settings {
        for line in crate::verify::drill::remove_leftovers(catalogue, s).await {
            tracing::warn!("removed a drill leftover: {line}");
        }
    }
}

/// Fills in `verification` for every backup job.
pub(super) async fn fill_status(shared: &Shared, catalogue: &Catalogue, jobs: &mut [JobStatus]) {
    for status in jobs.iter_mut() {
        if status.kind == JobKindName::Verify {
            continue;
        }
        if catalogue.job(&status.name).is_none() {
            continue;
        }
        let newest = status
            .repositories
            .iter()
            .filter_map(|r| Some((r.last_backup_at?, r.last_backup_id.clone()?)))
            .max()
            .map(|(_, id)| id);
        match shared
            .state
            .verification_status(&status.name, newest.as_deref())
            .await
        {
            Ok(v) => status.verification = Some(v),
            Err(e) => {
                tracing::warn!(job = %status.name, error = %e, "state DB: cannot read the verification status")
            }
        }
    }
}
