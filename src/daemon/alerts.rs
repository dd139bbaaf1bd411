//! Alerting wiring (docs/alerts.md): gathers the health facts from the state DB, evaluates after
//! every run and once a minute (on the daemon's clock), turns state changes into events, writes
//! them to the outbox before delivery, delivers each sink in its own task (a slow sink never
//! blocks a backup or another sink), and pings each job's `ping-url` at run start and end.

use super::core::Shared;
use crate::catalogue::{AlertSink, Catalogue, JobSpec};
use crate::events::sinks::{self, Ping};
use crate::events::{GIVE_UP_AFTER, NewEvent, Transition, backoff, transition};
use crate::health::{DrillFact, Facts, JobFacts};
use crate::model::alerts::{
    AlertsReport, EventBody, EventKind, ObjectiveHealth, ObjectiveState, OpenAlert, SinkReport,
};
use crate::model::{JobKindName, JobStatus, RunRecord, RunStatus};
use crate::protocol::Event;
use crate::state::OutboxItem;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Mutex, watch};

/// How often health is evaluated besides after every run.
const EVALUATE_EVERY: Duration = Duration::from_secs(60);
/// A replica whose oldest pending copy is older than this is `replica-lagging`.
const REPLICA_LAG: i64 = 3600;
/// Ping deadline and attempts.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const PING_ATTEMPTS: u32 = 3;

/// The daemon's alerting state (in `Shared`).
pub struct AlertHub {
    http: OnceLock<reqwest::Client>,
    pub host: String,
    /// Bumped when a delivery is queued: wakes the sink workers.
    queued: watch::Sender<u64>,
    /// One evaluation at a time (a run's end and the minute tick may meet).
    evaluating: Mutex<()>,
    /// When capacity was last evaluated (it reads the run history: at most every 15 minutes).
    capacity_at: std::sync::Mutex<Option<DateTime<Utc>>>,
}

impl Default for AlertHub {
    fn default() -> Self {
        AlertHub {
            http: OnceLock::new(),
            host: crate::events::host_name(),
            queued: watch::Sender::new(0),
            evaluating: Mutex::new(()),
            capacity_at: std::sync::Mutex::new(None),
        }
    }
}

impl AlertHub {
    fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(sinks::client)
    }
}

/// What the state DB knows for health: newest success, backup, WAL and drill per job, read in
/// one grouped query (`StateDb::health_facts`). A state DB error leaves the facts empty.
pub async fn facts(shared: &Shared, catalogue: &Catalogue, now: DateTime<Utc>) -> Facts {
    let mut facts = Facts::default();
    let names: Vec<&str> = catalogue.jobs.iter().map(|j| j.name.as_str()).collect();
    let rows = match shared.state.health_facts(&names, now).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the health facts");
            return facts;
        }
    };
    for job in &catalogue.jobs {
        let row = rows.get(&job.name).cloned().unwrap_or_default();
        let mut f = JobFacts {
            first_seen: row.first_seen,
            newest_success: row.newest_success,
            newest_backup: row.newest_backup.map(|(at, _)| at),
            newest_backup_bytes: row.newest_backup.map_or(0, |(_, b)| b),
            drill: row.drill.map(|(at, restore_seconds, bytes)| DrillFact {
                at,
                restore_seconds,
                bytes,
            }),
            ..JobFacts::default()
        };
        if let JobSpec::PostgresWal(_) = job.spec {
            f.newest_wal = row.newest_wal;
            f.newest_success = f.newest_wal;
        }
        facts.jobs.insert(job.name.clone(), f);
    }
    facts
}

/// Sets each job's `stale` from `health::jobs` and returns the objectives (for `status`).
pub async fn apply_health(
    shared: &Shared,
    catalogue: &Catalogue,
    jobs: &mut [JobStatus],
    now: DateTime<Utc>,
) -> Vec<ObjectiveHealth> {
    let mut facts = facts(shared, catalogue, now).await;
    // The cluster's archive_timeout, as the WAL status just read it (the default WAL max-age).
    facts.archive_timeout = jobs
        .iter()
        .filter_map(|j| j.wal.as_ref()?.archive_timeout_seconds)
        .map(Duration::from_secs)
        .next();
    let health = crate::health::jobs(catalogue, &facts, now);
    for status in jobs.iter_mut() {
        if let Some(h) = health.iter().find(|h| h.job == status.name) {
            status.stale = h.freshness == crate::model::alerts::Freshness::Stale;
        }
    }
    crate::health::objectives(catalogue, &facts, now)
}

/// Logs `event` (journald fields `BDC_EVENT`, `JOB`, `OBJECTIVE`) and writes it to the outbox
/// once per sink that wants it (`only`: those sinks alone). Returns the sinks it was queued for.
pub async fn emit(shared: &Shared, event: NewEvent, only: Option<&[String]>) -> Vec<String> {
    let catalogue = shared.catalogue();
    let at = shared.clock.now();
    let body = event.body(&shared.alerts.host, at);
    let text = serde_json::to_string(&body).unwrap_or_default();
    let job = event.job.as_deref();
    let objective = event.objective.as_deref();
    match body.severity {
        crate::model::alerts::Severity::Info => tracing::info!(
            bdc_event = %event.kind, job, objective, run_id = event.run_id, reminder = event.reminder,
            "{}", event.summary
        ),
        _ => tracing::warn!(
            bdc_event = %event.kind, job, objective, run_id = event.run_id, reminder = event.reminder,
            "{}", event.summary
        ),
    }
    let mut queued = Vec::new();
    for sink in &catalogue.alerts {
        if only.is_some_and(|o| !o.contains(&sink.name)) || !sink.wants(event.kind, job) {
            continue;
        }
        match shared
            .state
            .enqueue_delivery(&sink.name, event.kind, job, &text, at)
            .await
        {
            Ok(_) => queued.push(sink.name.clone()),
            Err(e) => {
                tracing::error!(sink = %sink.name, bdc_event = %event.kind, error = %e, "cannot write the event to the outbox")
            }
        }
    }
    if !queued.is_empty() {
        shared.alerts.queued.send_modify(|n| *n += 1);
    }
    queued
}

/// One thing health watches: its key in `alert_states`, whether it is bad now (None: not known,
/// keep the state as it is), and the events.
struct Watch {
    key: String,
    bad: Option<bool>,
    event: NewEvent,
    recovered: NewEvent,
}

/// The shortest `remind` of the sinks that take `kind` about `job`.
fn remind_for(sinks: &[AlertSink], kind: EventKind, job: Option<&str>) -> Option<Duration> {
    sinks
        .iter()
        .filter(|s| s.wants(kind, job))
        .filter_map(|s| s.remind)
        .min()
}

fn run_watch(job: &JobStatus) -> Option<Watch> {
    let last = job.last_run.as_ref()?;
    let (bad_kind, good_kind) = if job.kind == JobKindName::Verify {
        (EventKind::VerifyFailed, EventKind::VerifyRecovered)
    } else {
        (EventKind::RunFailed, EventKind::RunRecovered)
    };
    let bad = match last.status {
        RunStatus::Failed => Some(true),
        s if s.is_success() => Some(false),
        _ => None,
    };
    let error = last.error.clone().unwrap_or_default();
    Some(Watch {
        key: format!("run:{}", job.name),
        bad,
        event: NewEvent::new(
            bad_kind,
            format!("{}: run {} failed: {error}", job.name, last.id),
        )
        .job(&job.name)
        .run(last.id)
        .details(
            serde_json::json!({"status": last.status, "error": error, "trigger": last.trigger}),
        ),
        recovered: NewEvent::new(
            good_kind,
            format!("{}: run {} succeeded again", job.name, last.id),
        )
        .job(&job.name)
        .run(last.id)
        .details(serde_json::json!({"status": last.status, "backup_id": last.backup_id})),
    })
}

fn job_watches(job: &JobStatus) -> Vec<Watch> {
    let mut out: Vec<Watch> = run_watch(job).into_iter().collect();
    let newest = job
        .wal
        .as_ref()
        .and_then(|w| w.last_archived_at)
        .or_else(|| {
            job.last_success
                .as_ref()
                .map(|r| r.finished_at.unwrap_or(r.started_at))
        });
    out.push(Watch {
        key: format!("stale:{}", job.name),
        bad: Some(job.stale),
        event: NewEvent::new(
            EventKind::Stale,
            match newest {
                Some(t) => format!("{}: no success since {}", job.name, t.to_rfc3339()),
                None => format!("{}: has never succeeded", job.name),
            },
        )
        .job(&job.name)
        .details(serde_json::json!({"newest_success": newest})),
        recovered: NewEvent::new(EventKind::Fresh, format!("{}: fresh again", job.name))
            .job(&job.name)
            .details(serde_json::json!({"newest_success": newest})),
    });
    if let Some(wal) = &job.wal {
        let failing = match (wal.last_failed_at, wal.last_archived_at) {
            (Some(f), Some(a)) => Some(f > a),
            (Some(_), None) => Some(true),
            (None, _) if wal.cluster_error.is_none() => Some(false),
            (None, _) => None,
        };
        out.push(Watch {
            key: format!("wal:{}", job.name),
            bad: failing,
            event: NewEvent::new(
                EventKind::WalFailing,
                format!(
                    "{}: PostgreSQL's archiver failed on {}",
                    job.name,
                    wal.last_failed_wal.clone().unwrap_or_default()
                ),
            )
            .job(&job.name)
            .details(serde_json::json!({"last_failed_wal": wal.last_failed_wal, "failed_count": wal.failed_count})),
            recovered: NewEvent::new(EventKind::WalRecovered, format!("{}: WAL archiving works again", job.name))
                .job(&job.name),
        }); // Streaming (issue 12): a receiver that cannot go on (slot vanished, WAL gone) alerts at once.
        if let Some(st) = &wal.stream {
            out.push(Watch {
                key: format!("stream:{}", job.name),
                bad: Some(st.state == "failed"),
                event: NewEvent::new(
                    EventKind::WalFailing,
                    format!(
                        "{}: WAL streaming stopped: {}",
                        job.name,
                        st.error.clone().unwrap_or_default()
                    ),
                )
                .job(&job.name)
                .details(
                    serde_json::json!({"slot": st.slot, "state": st.state, "error": st.error}),
                ),
                recovered: NewEvent::new(
                    EventKind::WalRecovered,
                    format!("{}: WAL streaming works again", job.name),
                )
                .job(&job.name),
            });
        }
    }
    for repo in &job.repositories {
        if let Some(r) = &repo.replica {
            out.push(Watch {
                key: format!("replica:{}:{}", job.name, repo.repository),
                // The same lag rule for a permanent error (an operator may be mid-change); the
                // summary says it is permanent and why.
                bad: Some(r.pending > 0 && r.lag_seconds.is_some_and(|l| l > REPLICA_LAG)),
                event: NewEvent::new(
                    EventKind::ReplicaLagging,
                    if r.permanent {
                        format!(
                            "{}: {} backups wait for repository {}: permanent error, retried with backoff until fixed: {}",
                            job.name,
                            r.pending,
                            repo.repository,
                            r.last_error.clone().unwrap_or_default()
                        )
                    } else {
                        format!(
                            "{}: {} backups wait for repository {} ({})",
                            job.name,
                            r.pending,
                            repo.repository,
                            r.last_error.clone().unwrap_or_default()
                        )
                    },
                )
                .job(&job.name)
                .details(serde_json::json!({"repository": repo.repository, "pending": r.pending,
                    "lag_seconds": r.lag_seconds, "permanent": r.permanent, "error": r.last_error})),
                recovered: NewEvent::new(
                    EventKind::ReplicaRecovered,
                    format!("{}: repository {} caught up", job.name, repo.repository),
                )
                .job(&job.name)
                .details(serde_json::json!({"repository": repo.repository})),
            });
        }
    }
    out
}

fn objective_watch(o: &ObjectiveHealth) -> Watch {
    let details = serde_json::json!({
        "rpo_seconds": o.rpo_seconds, "rto_seconds": o.rto_seconds,
        "target_rpo_seconds": o.target_rpo_seconds, "target_rto_seconds": o.target_rto_seconds,
        "state": o.state, "jobs": o.jobs,
    });
    Watch {
        key: format!("objective:{}", o.name),
        bad: match o.state {
            ObjectiveState::Breached => Some(true),
            ObjectiveState::Met => Some(false),
            ObjectiveState::Unknown => None,
        },
        event: NewEvent::new(
            EventKind::ObjectiveBreached,
            format!("objective {}: breached: {}", o.name, o.reason),
        )
        .objective(&o.name)
        .details(details.clone()),
        recovered: NewEvent::new(
            EventKind::ObjectiveMet,
            format!("objective {}: met again", o.name),
        )
        .objective(&o.name)
        .details(details),
    }
}

async fn capacity_watches(
    shared: &Shared,
    catalogue: &Catalogue,
    now: DateTime<Utc>,
) -> Vec<Watch> {
    let (Ok(rows), Ok(runs)) = (
        shared.state.backups(None, None).await,
        shared.state.runs(None, 10_000).await,
    ) else {
        return Vec::new();
    };
    let mut report = crate::usage::compute(
        catalogue,
        &rows,
        Some(&runs),
        now,
        crate::usage::DEFAULT_WEEKS,
    );
    crate::usage::fill_capacity(&mut report, catalogue);
    report
        .capacity
        .iter()
        .map(|c| Watch {
            key: format!("capacity:{}", c.repository),
            bad: if c.error.is_some() {
                None
            } else {
                Some(
                    c.days_until_full
                        .is_some_and(|d| d < crate::usage::CAPACITY_LOW_DAYS),
                )
            },
            event: NewEvent::new(
                EventKind::CapacityLow,
                format!(
                    "repository {}: full in {:.1} days at the current growth",
                    c.repository,
                    c.days_until_full.unwrap_or(0.0)
                ),
            )
            .details(serde_json::json!({
                "repository": c.repository, "free_bytes": c.free_bytes,
                "growth_per_day": c.growth_per_day, "days_until_full": c.days_until_full,
            })),
            recovered: NewEvent::new(EventKind::CapacityLow, String::new()),
        })
        .collect()
}

/// Whether a multiple of `period` after `since` lies in (`last`, `now`].
fn period_ended(
    since: DateTime<Utc>,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    period: Duration,
) -> bool {
    let p = period.as_secs().max(1) as i64;
    let n = |t: DateTime<Utc>| (t - since).num_seconds().max(0) / p;
    n(now) > n(last)
}

/// Evaluates health now and turns state changes into events.
pub async fn evaluate(shared: &Arc<Shared>) {
    let _one = shared.alerts.evaluating.lock().await;
    let catalogue = shared.catalogue();
    let now = shared.clock.now();
    let report = match shared.status_report().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot evaluate health");
            return;
        }
    };
    let open: HashMap<String, OpenAlert> = match shared.state.open_alerts().await {
        Ok(list) => list.into_iter().map(|a| (a.key.clone(), a)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open alert states");
            return;
        }
    };
    let mut watches: Vec<Watch> = report.jobs.iter().flat_map(job_watches).collect();
    watches.extend(report.objectives.iter().map(objective_watch));
    let capacity_due = {
        let mut last = shared
            .alerts
            .capacity_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| now - t >= chrono::Duration::minutes(15) || now < t);
        if due {
            *last = Some(now);
        }
        due
    };
    if capacity_due {
        watches.extend(capacity_watches(shared, &catalogue, now).await);
    }
    for w in watches {
        let Some(bad) = w.bad else { continue };
        let state = open.get(&w.key);
        let remind = remind_for(&catalogue.alerts, w.event.kind, w.event.job.as_deref());
        match transition(bad, state.map(|s| s.reminded_at), remind, now) {
            Transition::None => {}
            Transition::Opened => {
                let alert = OpenAlert {
                    key: w.key.clone(),
                    event: w.event.kind,
                    job: w.event.job.clone(),
                    objective: w.event.objective.clone(),
                    since: now,
                    reminded_at: now,
                    summary: w.event.summary.clone(),
                };
                if let Ok(true) = shared.state.open_alert(&alert).await {
                    emit(shared, w.event, None).await;
                }
            }
            Transition::Remind => {
                // Only the sinks one of whose `remind` periods (counted from when the state
                // opened) ended since the last reminder.
                let Some(open) = state else { continue };
                let due: Vec<String> = catalogue
                    .alerts
                    .iter()
                    .filter(|s| s.wants(w.event.kind, w.event.job.as_deref()))
                    .filter(|s| {
                        s.remind
                            .is_some_and(|r| period_ended(open.since, open.reminded_at, now, r))
                    })
                    .map(|s| s.name.clone())
                    .collect();
                if !due.is_empty() && shared.state.alert_reminded(&w.key, now).await.is_ok() {
                    let mut event = w.event;
                    event.reminder = true;
                    emit(shared, event, Some(&due)).await;
                }
            }
            Transition::Closed => {
                let was_open = shared.state.close_alert(&w.key).await.unwrap_or(false);
                let kind = state.map(|s| s.event);
                if was_open && kind.and_then(EventKind::recovery).is_some() {
                    emit(shared, w.recovered, None).await;
                }
            }
        }
    }
}

/// Evaluates after every run's end and once a minute; pings `ping-url`s at run start and end.
pub async fn run_loop(shared: Arc<Shared>) {
    let mut events = shared.events.subscribe();
    evaluate(&shared).await;
    let mut next =
        shared.clock.now() + chrono::Duration::from_std(EVALUATE_EVERY).unwrap_or_default();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.clock.sleep_until(next) => {
                evaluate(&shared).await;
                next = shared.clock.now() + chrono::Duration::from_std(EVALUATE_EVERY).unwrap_or_default();
            }
            event = events.recv() => match event {
                Ok(Event::RunStarted { run }) => ping_run(&shared, &run, Ping::Start),
                Ok(Event::RunFinished { run }) => {
                    let which = if run.status.is_success() { Ping::Success } else { Ping::Fail };
                    ping_run(&shared, &run, which);
                    evaluate(&shared).await;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Pings the job's `ping-url` in its own task (a few attempts, never blocking the run).
fn ping_run(shared: &Arc<Shared>, run: &RunRecord, which: Ping) {
    let catalogue = shared.catalogue();
    let Some(url) = catalogue.job(&run.job).and_then(|j| j.ping_url.clone()) else {
        return;
    };
    let shared = shared.clone();
    let job = run.job.clone();
    let error = match which {
        Ping::Fail => format!(
            "run {} {}: {}",
            run.id,
            run.status,
            run.error.clone().unwrap_or_default()
        ),
        _ => String::new(),
    };
    tokio::spawn(async move {
        for attempt in 0..PING_ATTEMPTS {
            match sinks::ping(shared.alerts.http(), &url, which, &error, PING_TIMEOUT).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(job = %job, ping = ?which, attempt, error = %crate::error::error_chain(&e), "ping-url failed");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    });
}

/// Starts one delivery worker per sink of the catalogue (and new ones after a reload).
pub async fn delivery_loop(shared: Arc<Shared>) {
    let mut workers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        for sink in &shared.catalogue().alerts {
            if workers.get(&sink.name).is_none_or(|h| h.is_finished()) {
                let handle = tokio::spawn(sink_worker(shared.clone(), sink.name.clone()));
                workers.insert(sink.name.clone(), handle);
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Delivers one sink's outbox, oldest first, until the sink leaves the catalogue.
async fn sink_worker(shared: Arc<Shared>, name: String) {
    let mut queued = shared.alerts.queued.subscribe();
    loop {
        if shared.shutdown.is_cancelled() {
            return;
        }
        let Some(sink) = shared
            .catalogue()
            .alerts
            .iter()
            .find(|s| s.name == name)
            .cloned()
        else {
            return;
        };
        let now = shared.clock.now();
        let due = shared
            .state
            .due_deliveries(&name, now, 20)
            .await
            .unwrap_or_default();
        if due.is_empty() {
            let next = shared.state.next_delivery_at(&name).await.ok().flatten();
            let clock = shared.clock.clone();
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = queued.changed() => {}
                _ = async move {
                    match next {
                        Some(t) => clock.sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
                // A catalogue reload (sink changed or removed) is noticed within this long.
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            continue;
        }
        for item in due {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = deliver_one(&shared, &sink, item) => {}
            }
        }
    }
}

async fn deliver_one(shared: &Shared, sink: &AlertSink, item: OutboxItem) {
    use crate::error::{Classify, Retry};
    let parsed: EventBody = match serde_json::from_str(&item.body) {
        Ok(b) => b,
        Err(e) => {
            let now = shared.clock.now();
            let _ = shared
                .state
                .delivery_failed(
                    item.id,
                    now,
                    &format!("the queued body is not an event: {e}"),
                    now,
                    true,
                )
                .await;
            return;
        }
    };
    let result = sinks::deliver(shared.alerts.http(), sink, &parsed, &item.body).await;
    let now = shared.clock.now();
    match result {
        Ok(()) => {
            tracing::debug!(sink = %sink.name, bdc_event = %item.event, id = item.id, "event delivered");
            let _ = shared.state.delivery_done(item.id, now).await;
        }
        Err(e) => {
            let message = crate::error::error_chain(&e);
            let too_old = now - item.created_at
                > chrono::Duration::from_std(GIVE_UP_AFTER).unwrap_or(chrono::Duration::MAX);
            let give_up = too_old || e.retry() == Retry::Permanent;
            let next = now + chrono::Duration::from_std(backoff(item.attempts)).unwrap_or_default();
            if give_up {
                tracing::error!(sink = %sink.name, bdc_event = %item.event, id = item.id, error = %message, "event delivery given up");
            } else {
                tracing::warn!(sink = %sink.name, bdc_event = %item.event, id = item.id, attempts = item.attempts + 1, error = %message, "event delivery failed; retried");
            }
            let _ = shared
                .state
                .delivery_failed(item.id, now, &message, next, give_up)
                .await;
        }
    }
}

/// The answer to `alerts`.
pub async fn report(shared: &Shared, limit: u32) -> Result<AlertsReport, crate::state::StateError> {
    let catalogue = shared.catalogue();
    let mut sinks_out = Vec::new();
    for sink in &catalogue.alerts {
        let c = shared.state.sink_counts(&sink.name).await?;
        let (kind, target) = match &sink.kind {
            crate::catalogue::SinkKind::Webhook { url, .. } => ("webhook", sinks::shown_url(url)),
            crate::catalogue::SinkKind::Command { command } => {
                ("command", command.first().cloned().unwrap_or_default())
            }
        };
        sinks_out.push(SinkReport {
            name: sink.name.clone(),
            kind: kind.to_string(),
            target,
            pending: c.pending,
            delivered: c.delivered,
            gave_up: c.gave_up,
            last_error: c.last_error,
            last_error_at: c.last_error_at,
            last_delivered_at: c.last_delivered_at,
        });
    }
    Ok(AlertsReport {
        open: shared.state.open_alerts().await?,
        sinks: sinks_out,
        recent: shared.state.recent_deliveries(limit).await?,
    })
}
