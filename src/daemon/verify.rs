//! Verify runs in the daemon: the run itself (each check recorded in the state DB as it
//! finishes, the verdict as the run's status), the leftovers of drills a killed daemon left (removed at start)
//! and what `status` says per backup job (last drill, newest backup proven, sample coverage).

use super::core::Shared;
use crate::catalogue::{Catalogue, Job, JobSpec};
use crate::model::{JobKindName, JobStatus};
use crate::pipeline::ProgressCounter;
use crate::verify::record::Recorder;
use crate::verify::run::{Scope, VerifyRun};
use tokio_util::sync::CancellationToken;

/// Runs verify job `job` (run `run_id`) and records every check as it finishes. Ok when every check passed
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
    let recorder = Recorder::new(&shared.state, run_id, shared.clock.as_ref());
    let outcome = crate::verify::run::run(VerifyRun {
        catalogue,
        job,
        scope,
        run_id,
        state: Some(&shared.state),
        recorder: Some(&recorder),
        cancel,
        phase,
        progress,
    })
    .await;
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
