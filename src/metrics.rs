//! The Prometheus metrics (docs/metrics.md): every `bdc_backup_*` family computed at scrape time
//! from the state DB's facts and the catalogue, rendered in text format 0.0.4 by the `prometheus`
//! crate. Pure: the daemon gathers the facts and serves or writes the text.

use crate::catalogue::Catalogue;
use crate::model::alerts::{Freshness, JobHealth, ObjectiveHealth, ObjectiveState};
use crate::model::{JobKindName, RunStatus};
use crate::state::{JobFacts, MetricsFacts};
use chrono::{DateTime, Utc};
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::collections::BTreeMap;

/// The Content-Type of text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the daemon knows beyond the state DB.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Per WAL job: completed segments not yet archived, as last asked of the cluster.
    pub wal_lag_segments: BTreeMap<String, u64>,
    /// Per streaming WAL job (issue 12): the receiver's flush lag in bytes (as last asked) and
    /// its restarts since the daemon started.
    pub wal_stream: BTreeMap<String, (Option<u64>, u64)>,
    /// Each job's freshness (`health::jobs`, the same evaluation as `status` and the alerts).
    pub health: Vec<JobHealth>,
    /// Each objective measured now (`health::objectives`).
    pub objectives: Vec<ObjectiveHealth>,
    /// Alert deliveries per (sink, result) from the alert outbox.
    pub deliveries: BTreeMap<(String, String), u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl crate::error::Classify for MetricsError {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Permanent
    }
}

fn secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, MetricsError> {
    let g = GaugeVec::new(Opts::new(format!("bdc_backup_{name}"), help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn int_gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(format!("bdc_backup_{name}"), help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, MetricsError> {
    let c = IntCounterVec::new(Opts::new(format!("bdc_backup_{name}"), help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Renders every family (docs/metrics.md) for the catalogue's jobs and objectives.
pub fn render(
    catalogue: &Catalogue,
    facts: &MetricsFacts,
    extras: &Extras,
) -> Result<String, MetricsError> {
    let r = Registry::new();
    let build = int_gauge(
        &r,
        "build_info",
        "Always 1; the version of bdc-backup.",
        &["version"],
    )?;
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

    let last_success = gauge(
        &r,
        "job_last_success_timestamp_seconds",
        "When the job's newest successful run ended (Unix time).",
        &["job", "kind"],
    )?;
    let last_run = gauge(
        &r,
        "job_last_run_timestamp_seconds",
        "When the job's newest finished run ended (Unix time; running and skipped runs are not counted).",
        &["job", "kind"],
    )?;
    let last_ok = int_gauge(
        &r,
        "job_last_run_success",
        "1 if the job's newest finished run succeeded (succeeded, partial, unchanged), else 0.",
        &["job", "kind"],
    )?;
    let duration = gauge(
        &r,
        "job_last_duration_seconds",
        "How long the job's newest finished run took.",
        &["job"],
    )?;
    let read = int_gauge(
        &r,
        "job_last_read_bytes",
        "Bytes the job's newest finished run read.",
        &["job"],
    )?;
    let stored = int_gauge(
        &r,
        "job_last_stored_bytes",
        "Bytes the job's newest finished run stored (after compression and encryption).",
        &["job"],
    )?;
    let stale = int_gauge(
        &r,
        "job_stale",
        "1 if the job's newest success is older than its max-age, else 0.",
        &["job"],
    )?;
    let runs = counter(
        &r,
        "runs_total",
        "Runs recorded in the state DB, by status.",
        &["job", "status"],
    )?;
    let repo_bytes = int_gauge(
        &r,
        "repository_stored_bytes",
        "Bytes stored by the job's committed backups in the repository.",
        &["job", "repository"],
    )?;
    let replica = int_gauge(
        &r,
        "replica_pending",
        "Committed backups of the job still to be copied to the repository.",
        &["job", "repository"],
    )?;
    let wal_last = gauge(
        &r,
        "wal_last_archived_timestamp_seconds",
        "When the WAL job's newest file was archived (Unix time).",
        &["job"],
    )?;
    let wal_count = counter(
        &r,
        "wal_archived_total",
        "WAL files archived by the job.",
        &["job"],
    )?;
    let wal_lag = int_gauge(
        &r,
        "wal_lag_segments",
        "Completed WAL segments the cluster has not had archived yet (as last asked).",
        &["job"],
    )?;
    let stream_lag = int_gauge(
        &r,
        "wal_stream_lag_bytes",
        "WAL the server has written that the streaming receiver has not flushed (bytes, as last asked).",
        &["job"],
    )?;
    let stream_restarts = counter(
        &r,
        "wal_stream_restarts_total",
        "Restarts of the streaming receiver (pg_receivewal) since the daemon started.",
        &["job"],
    )?;
    let wal_backlog = int_gauge(
        &r,
        "wal_async_backlog",
        "Archived WAL files still to be copied to the async repository.",
        &["job", "repository"],
    )?;
    let verify_ok = gauge(
        &r,
        "verify_last_success_timestamp_seconds",
        "When the newest passed verification check of the job ran (Unix time).",
        &["job"],
    )?;
    let drill = gauge(
        &r,
        "drill_restore_seconds",
        "The restore time of the job's newest passed restore drill.",
        &["job"],
    )?;
    let verify_fail = counter(
        &r,
        "verify_failures_total",
        "Failed verification checks of the job, by check kind.",
        &["job", "kind"],
    )?;
    let rpo = gauge(
        &r,
        "objective_rpo_seconds",
        "The objective's recovery point now: now minus the newest restorable point.",
        &["objective"],
    )?;
    let rto = gauge(
        &r,
        "objective_rto_seconds",
        "The objective's recovery time as measured by drills.",
        &["objective"],
    )?;
    let rpo_t = gauge(
        &r,
        "objective_target_rpo_seconds",
        "The objective's rpo from the catalogue.",
        &["objective"],
    )?;
    let rto_t = gauge(
        &r,
        "objective_target_rto_seconds",
        "The objective's rto from the catalogue.",
        &["objective"],
    )?;
    let met = int_gauge(
        &r,
        "objective_met",
        "1 if the objective is met, else 0.",
        &["objective"],
    )?;
    let deliveries = counter(
        &r,
        "alert_deliveries_total",
        "Alert deliveries, by sink and result.",
        &["sink", "result"],
    )?;

    let empty = JobFacts::default();
    for job in &catalogue.jobs {
        let f = facts.jobs.get(&job.name).unwrap_or(&empty);
        let kind = job.kind().as_str();
        let jk = [job.name.as_str(), kind];
        if let Some(run) = &f.last_success {
            last_success
                .with_label_values(&jk)
                .set(secs(run.finished_at.unwrap_or(run.started_at)));
        }
        if let Some(run) = &f.last_run {
            let end = run.finished_at.unwrap_or(run.started_at);
            last_run.with_label_values(&jk).set(secs(end));
            last_ok
                .with_label_values(&jk)
                .set(i64::from(run.status.is_success()));
            duration.with_label_values(&[&job.name]).set(
                ((end - run.started_at).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0),
            );
            read.with_label_values(&[&job.name])
                .set(int(run.bytes_read));
            stored
                .with_label_values(&[&job.name])
                .set(int(run.bytes_stored));
        }
        let is_stale = extras
            .health
            .iter()
            .any(|h| h.job == job.name && h.freshness == Freshness::Stale);
        stale
            .with_label_values(&[&job.name])
            .set(i64::from(is_stale));
        if job.kind() != JobKindName::PostgresWal {
            // Every status appears (0 when none), so rate() sees a series from its start.
            for status in RunStatus::ALL.iter().copied() {
                let n = facts
                    .runs
                    .get(&(job.name.clone(), status.as_str().to_string()))
                    .copied()
                    .unwrap_or(0);
                runs.with_label_values(&[&job.name, status.as_str()])
                    .inc_by(n);
            }
        }
        for (i, repo) in job.repositories.iter().enumerate() {
            let key = (job.name.clone(), repo.clone());
            if job.kind() != JobKindName::PostgresWal {
                repo_bytes
                    .with_label_values(&[&job.name, repo])
                    .set(int(facts.stored_bytes.get(&key).copied().unwrap_or(0)));
                if i > 0 {
                    replica.with_label_values(&[&job.name, repo]).set(int(facts
                        .replica_pending
                        .get(&key)
                        .copied()
                        .unwrap_or(0)));
                }
            } else if catalogue
                .repository(repo)
                .is_some_and(|r| r.wal_ack == crate::catalogue::WalAck::Async)
            {
                wal_backlog
                    .with_label_values(&[&job.name, repo])
                    .set(int(facts.wal_backlog.get(&key).copied().unwrap_or(0)));
            }
        }
        if job.kind() == JobKindName::PostgresWal {
            if let Some(at) = f.wal_last_archived_at {
                wal_last.with_label_values(&[&job.name]).set(secs(at));
            }
            wal_count
                .with_label_values(&[&job.name])
                .inc_by(f.wal_archived);
            if let Some(lag) = extras.wal_lag_segments.get(&job.name) {
                wal_lag.with_label_values(&[&job.name]).set(int(*lag));
            }
            if let Some((lag, restarts)) = extras.wal_stream.get(&job.name) {
                if let Some(lag) = lag {
                    stream_lag.with_label_values(&[&job.name]).set(int(*lag));
                }
                stream_restarts
                    .with_label_values(&[&job.name])
                    .inc_by(*restarts);
            }
        }
        if let Some(v) = &facts.verify {
            if let Some(at) = v.last_success.get(&job.name) {
                verify_ok.with_label_values(&[&job.name]).set(secs(*at));
            }
            if let Some(s) = v.drill_seconds.get(&job.name) {
                drill.with_label_values(&[&job.name]).set(*s);
            }
        }
    }
    if let Some(v) = &facts.verify {
        for ((job, kind), n) in &v.failures {
            if catalogue.job(job).is_some() {
                verify_fail.with_label_values(&[job, kind]).inc_by(*n);
            }
        }
    }
    for o in &extras.objectives {
        if !catalogue.objectives.contains_key(&o.name) {
            continue;
        }
        let l = [o.name.as_str()];
        if let Some(v) = o.rpo_seconds {
            rpo.with_label_values(&l).set(v as f64);
        }
        if let Some(v) = o.rto_seconds {
            rto.with_label_values(&l).set(v as f64);
        }
        if let Some(v) = o.target_rpo_seconds {
            rpo_t.with_label_values(&l).set(v as f64);
        }
        if let Some(v) = o.target_rto_seconds {
            rto_t.with_label_values(&l).set(v as f64);
        }
        met.with_label_values(&l)
            .set(i64::from(o.state == ObjectiveState::Met));
    }
    for ((sink, result), n) in &extras.deliveries {
        if !catalogue.alerts.iter().any(|a| &a.name == sink) {
            continue;
        }
        deliveries.with_label_values(&[sink, result]).inc_by(*n);
    }
    let text = prometheus::TextEncoder::new().encode_to_string(&r.gather())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDb;
    use chrono::TimeZone;

    fn catalogue() -> Catalogue {
        let recipient = age::x25519::Identity::generate().to_public().to_string();
        let text = format!(
            r#"
[postgres]
url = "postgresql://bdc_backup@localhost/app"
[encryption]
recipients = ["{recipient}"]
[repository.local]
url = "file:///backups"
[objectives.database]
jobs = ["db"]
rpo = "5m"
[[job]]
name = "db"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local"]
max-age = "1d"
[[job]]
name = "quiet"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local"]
"#
        );
        crate::catalogue::parse_str(&text, std::path::Path::new("/x/catalogue.toml"), &[])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn sample(text: &str, key: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn stale_objectives_and_verify_figures_come_from_health_and_verify_checks() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        let c = catalogue();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let mut hf = crate::health::Facts::default();
        hf.jobs.insert(
            "db".into(),
            crate::health::JobFacts {
                first_seen: Some(now - chrono::Duration::days(3)),
                ..Default::default()
            },
        );
        let extras = Extras {
            health: crate::health::jobs(&c, &hf, now),
            objectives: crate::health::objectives(&c, &hf, now),
            deliveries: [(("gone".to_string(), "delivered".to_string()), 3)].into(),
            ..Extras::default()
        };
        let facts = db.metrics_facts(&["db", "quiet"]).await.unwrap();
        let text = render(&c, &facts, &extras).unwrap();
        assert!(!text.contains("bdc_backup_verify_"), "{text}");
        // Never succeeded, seen 3 days ago, max-age 1d: stale; `quiet` (daily, default max-age
        // 2d) never seen before now: fresh.
        assert_eq!(
            sample(&text, r#"bdc_backup_job_stale{job="db"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"bdc_backup_job_stale{job="quiet"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"bdc_backup_runs_total{job="db",status="failed"}"#),
            Some(0.0)
        );
        // No backup at all: no RPO figure is invented, the target is exported, not met.
        assert!(
            !text.contains("bdc_backup_objective_rpo_seconds{"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"bdc_backup_objective_target_rpo_seconds{objective="database"}"#
            ),
            Some(300.0)
        );
        assert_eq!(
            sample(&text, r#"bdc_backup_objective_met{objective="database"}"#),
            Some(0.0)
        );
        // A sink no longer in the catalogue is not exported.
        assert!(!text.contains(r#"sink="gone""#), "{text}");

        for (kind, result, seconds, at) in [
            ("drill", "pass", 42.5, "2026-12-01T03:00:00.000000Z"),
            ("drill", "pass", 40.0, "2026-11-30T03:00:00.000000Z"),
            ("integrity", "fail", 1.0, "2026-12-01T04:00:00.000000Z"),
            ("integrity", "fail", 1.0, "2026-12-01T05:00:00.000000Z"),
            ("sql", "pass", 0.1, "2026-12-01T03:30:00.000000Z"),
        ] {
            sqlx::query(
                "INSERT INTO verify_checks (run_id, job, kind, name, result, detail, seconds, bytes, at)
                 VALUES (1, 'db', ?, 'x', ?, '', ?, 0, ?)",
            )
            .bind(kind)
            .bind(result)
            .bind(seconds)
            .bind(at)
            .execute(db.pool())
            .await
            .unwrap();
        }
        let facts = db.metrics_facts(&["db", "quiet"]).await.unwrap();
        let text = render(&c, &facts, &extras).unwrap();
        assert_eq!(
            sample(&text, r#"bdc_backup_drill_restore_seconds{job="db"}"#),
            Some(42.5)
        );
        let at = Utc
            .with_ymd_and_hms(2026, 12, 1, 3, 30, 0)
            .unwrap()
            .timestamp() as f64;
        assert_eq!(
            sample(
                &text,
                r#"bdc_backup_verify_last_success_timestamp_seconds{job="db"}"#
            ),
            Some(at)
        );
        assert_eq!(
            sample(
                &text,
                r#"bdc_backup_verify_failures_total{job="db",kind="integrity"}"#
            ),
            Some(2.0)
        );
        assert!(!text.contains(r#"verify_failures_total{job="db",kind="drill"}"#));
    }
}
