//! The scheduler loop: wakes at the next fire (or a reload, a finished run, the watchdog
//! heartbeat), asks [`crate::schedule::due_now`] what is due for each job, persists the fire
//! before starting the run (a crash never runs it twice), records overlaps as skipped runs.

use super::core::{Shared, StartError};
use crate::model::{BackupType, Trigger};
use crate::protocol::Event;
use crate::schedule::{Due, JobSchedule, due_now};
use crate::state::NewRun;
use std::sync::Arc;
use std::time::Duration;

/// The longest the loop sleeps without re-checking (a wall-clock jump, a watchdog ping).
const HEARTBEAT: Duration = Duration::from_secs(30);

pub async fn run_loop(shared: Arc<Shared>) {
    let watchdog = super::systemd::watchdog_interval();
    let heartbeat = watchdog.map_or(HEARTBEAT, |w| w.min(HEARTBEAT));
    loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        if watchdog.is_some() {
            super::systemd::watchdog();
        }
        let catalogue = shared.catalogue();
        let now = shared.clock.now();
        let tz = catalogue.daemon.timezone;
        for job in &catalogue.jobs {
            let entries = job.schedules();
            if entries.is_empty() {
                continue;
            }
            let known_since = match shared.state.job_known_since(&job.name, now).await {
                Ok(t) => t,
                Err(err) => {
                    tracing::error!(job = %job.name, error = %err, "state DB: cannot read the schedule state");
                    continue;
                }
            };
            // One decision per call: record it, ask again (bounded) until nothing is due.
            for _ in 0..8 {
                let mut last_fire = Vec::new();
                for (ty, _) in &entries {
                    last_fire.push((
                        *ty,
                        shared.state.last_fire(&job.name, *ty).await.ok().flatten(),
                    ));
                }
                let js = JobSchedule {
                    job: &job.name,
                    entries: entries.clone(),
                    last_fire,
                    known_since,
                };
                match due_now(&js, now, tz, catalogue.daemon.catch_up) {
                    Some(due) => {
                        if !handle_due(&shared, &job.name, job.kind(), due, now).await {
                            break;
                        }
                    }
                    None => break,
                }
            }
        }
        super::systemd::status(&shared.status_line().await);

        let now = shared.clock.now();
        let mut wake_at =
            now + chrono::Duration::from_std(heartbeat).unwrap_or(chrono::Duration::seconds(30));
        for job in &catalogue.jobs {
            if let Some((t, _)) = shared.next_fire_of(&catalogue, job, now).await
                && t < wake_at
            {
                wake_at = t;
            }
        }
        tokio::select! {
            _ = shared.clock.sleep_until(wake_at) => {}
            _ = shared.wake.notified() => {}
            _ = shared.shutdown.cancelled() => break,
        }
    }
}

/// Handles one decision; false when the fire could not be recorded (stop asking for this job).
async fn handle_due(
    shared: &Arc<Shared>,
    job: &str,
    kind: crate::model::JobKindName,
    due: Due,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    // Persist first: the fire is handled whatever happens next.
    let mut types: Vec<BackupType> = vec![due.backup_type];
    types.extend(due.covers.iter().copied());
    for ty in &types {
        if let Err(err) = shared.state.set_last_fire(job, *ty, now).await {
            tracing::error!(job = %job, error = %err, "state DB: cannot record the schedule fire; not running it");
            return false;
        }
    }
    let skipped = |reason: String| {
        let run = NewRun {
            job: job.to_string(),
            kind,
            trigger: due.trigger,
            backup_type: Some(due.backup_type),
            started_at: now,
            backup_id: None,
        };
        (run, reason)
    };

    if !due.run {
        let local = due
            .fire_time
            .with_timezone(&shared.catalogue().daemon.timezone);
        let (run, reason) = skipped(format!(
            "missed fire at {local} not caught up (catch-up = \"skip\")"
        ));
        record_skip(shared, run, reason).await;
        return true;
    }
    let trigger = due.trigger;
    if trigger == Trigger::CatchUp {
        tracing::info!(job = %job, fire = %due.fire_time, "catching up a missed {} backup", due.backup_type);
    }
    match shared.start_run(job, Some(due.backup_type), trigger).await {
        Ok(_) => {}
        Err(StartError::AlreadyRunning { run_id, .. }) => {
            let (run, reason) = skipped(format!("run {run_id} of this job was still running"));
            record_skip(shared, run, reason).await;
        }
        Err(StartError::Stopping) => {}
        Err(err) => tracing::error!(job = %job, "scheduled run not started: {err}"),
    }
    true
}

async fn record_skip(shared: &Arc<Shared>, run: NewRun, reason: String) {
    tracing::warn!(job = %run.job, "scheduled run skipped: {reason}");
    if let Err(err) = shared.state.record_skipped(&run, &reason).await {
        tracing::error!(job = %run.job, error = %err, "state DB: cannot record the skipped run");
    }
    shared.emit(Event::Skipped {
        job: run.job.clone(),
        reason,
    });
}
