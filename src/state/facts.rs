//! What the metrics are computed from, read in a few grouped queries at scrape time (index
//! lookups per job, counts from covering indexes; docs/metrics.md). Read-only: it never inserts.

use super::{RUN_COLUMNS, StateDb, StateError, parse_ts, run_from_row, to_u64};
use crate::model::RunRecord;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::collections::BTreeMap;

/// One job's facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFacts {
    /// The newest run that ran to an end (not `running`, not `skipped`).
    pub last_run: Option<RunRecord>,
    /// The newest successful run (`succeeded`, `partial`, `unchanged`).
    pub last_success: Option<RunRecord>,
    /// When the daemon first saw the job.
    pub first_seen: Option<DateTime<Utc>>,
    /// The newest archived WAL file's time (WAL jobs).
    pub wal_last_archived_at: Option<DateTime<Utc>>,
    /// Files archived (WAL jobs).
    pub wal_archived: u64,
}

/// The `verify_checks` table's figures (migration 0007), when the table exists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyFacts {
    /// Per job: the newest passed check's time.
    pub last_success: BTreeMap<String, DateTime<Utc>>,
    /// Per job: the newest passed drill's restore seconds.
    pub drill_seconds: BTreeMap<String, f64>,
    /// Per (job, check kind): failed checks.
    pub failures: BTreeMap<(String, String), u64>,
}

/// Everything a scrape reads from the state DB.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsFacts {
    pub jobs: BTreeMap<String, JobFacts>,
    /// Per (job, status): runs.
    pub runs: BTreeMap<(String, String), u64>,
    /// Per (job, repository): bytes stored by the committed backups there.
    pub stored_bytes: BTreeMap<(String, String), u64>,
    /// Per (job, repository): backups still to be copied there.
    pub replica_pending: BTreeMap<(String, String), u64>,
    /// Per (job, repository): WAL files still to be copied to an async repository.
    pub wal_backlog: BTreeMap<(String, String), u64>,
    /// None when the state DB has no `verify_checks` table (verification not built in).
    pub verify: Option<VerifyFacts>,
}

type Pairs = BTreeMap<(String, String), u64>;

async fn pairs(db: &StateDb, sql: &'static str) -> Result<Pairs, StateError> {
    let rows = sqlx::query(sql).fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| {
            Ok((
                (r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?),
                to_u64("metrics", "count", r.try_get(2)?)?,
            ))
        })
        .collect()
}

impl StateDb {
    /// The facts of `jobs` (the catalogue's job names) for a scrape.
    pub async fn metrics_facts(&self, jobs: &[&str]) -> Result<MetricsFacts, StateError> {
        const T: &str = "metrics";
        let names = serde_json::Value::from(jobs.to_vec()).to_string();
        let per_job = sqlx::query(
            "SELECT j.value AS job,
                (SELECT id FROM runs WHERE job = j.value AND status NOT IN ('running', 'skipped')
                 ORDER BY started_at DESC, id DESC LIMIT 1) AS last_id,
                (SELECT id FROM runs WHERE job = j.value AND status IN ('succeeded', 'partial', 'unchanged')
                 ORDER BY started_at DESC, id DESC LIMIT 1) AS success_id,
                (SELECT first_seen FROM jobs_seen WHERE job = j.value) AS first_seen,
                (SELECT max(archived_at) FROM wal_archived WHERE job = j.value) AS wal_last,
                (SELECT count(*) FROM wal_archived WHERE job = j.value) AS wal_count
             FROM json_each(?) j",
        )
        .bind(&names)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = Vec::new();
        let mut wanted = Vec::new();
        for row in &per_job {
            let last: Option<i64> = row.try_get("last_id")?;
            let success: Option<i64> = row.try_get("success_id")?;
            ids.extend(last.into_iter().chain(success));
            let first_seen: Option<String> = row.try_get("first_seen")?;
            let wal_last: Option<String> = row.try_get("wal_last")?;
            wanted.push((
                row.try_get::<String, _>("job")?,
                last,
                success,
                JobFacts {
                    first_seen: first_seen
                        .as_deref()
                        .map(|s| parse_ts("jobs_seen", "first_seen", s))
                        .transpose()?,
                    wal_last_archived_at: wal_last
                        .as_deref()
                        .map(|s| parse_ts("wal_archived", "archived_at", s))
                        .transpose()?,
                    wal_archived: to_u64(T, "wal_count", row.try_get("wal_count")?)?,
                    ..JobFacts::default()
                },
            ));
        }
        let runs: BTreeMap<i64, RunRecord> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN (SELECT value FROM json_each(?))"
        )))
        .bind(serde_json::Value::from(ids).to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| run_from_row(r).map(|run| (run.id, run)))
        .collect::<Result<_, _>>()?;
        let mut facts = MetricsFacts::default();
        for (job, last, success, mut f) in wanted {
            f.last_run = last.and_then(|id| runs.get(&id).cloned());
            f.last_success = success.and_then(|id| runs.get(&id).cloned());
            facts.jobs.insert(job, f);
        }
        facts.runs = pairs(self, "SELECT job, status, n FROM run_counts").await?;
        facts.stored_bytes = pairs(
            self,
            "SELECT job, repository, sum(bytes_stored) FROM backups GROUP BY job, repository",
        )
        .await?;
        facts.replica_pending = pairs(
            self,
            "SELECT job, repository, count(*) FROM replication_queue GROUP BY job, repository",
        )
        .await?;
        facts.wal_backlog = pairs(
            self,
            "SELECT job, repository, count(*) FROM wal_backlog GROUP BY job, repository",
        )
        .await?;
        facts.verify = self.verify_facts().await?;
        Ok(facts)
    }

    /// From `verify_checks` (migration 0007) when the table exists.
    async fn verify_facts(&self) -> Result<Option<VerifyFacts>, StateError> {
        let present: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'verify_checks'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if present.is_none() {
            return Ok(None);
        }
        let mut v = VerifyFacts::default();
        for row in sqlx::query(
            "SELECT job, max(at) AS at FROM verify_checks WHERE result = 'pass' GROUP BY job",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let at: String = row.try_get("at")?;
            v.last_success
                .insert(row.try_get("job")?, parse_ts("verify_checks", "at", &at)?);
        }
        // The newest passed drill per job (max(at) picks the row whose `seconds` SQLite returns).
        for row in sqlx::query(
            "SELECT job, seconds, max(at) FROM verify_checks WHERE kind = 'drill' AND result = 'pass'
             GROUP BY job",
        )
        .fetch_all(&self.pool)
        .await?
        {
            v.drill_seconds
                .insert(row.try_get("job")?, row.try_get("seconds")?);
        }
        v.failures = pairs(
            self,
            "SELECT job, kind, count(*) FROM verify_checks WHERE result = 'fail' GROUP BY job, kind",
        )
        .await?;
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{JobKindName, RunStatus, Trigger};
    use crate::state::{NewRun, RunOutcome, StateDb};
    use chrono::{TimeZone, Utc};

    #[tokio::test]
    async fn run_counts_follow_inserts_status_changes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).unwrap();
        let run = NewRun {
            job: "db".into(),
            kind: JobKindName::PostgresDump,
            trigger: Trigger::Manual,
            backup_type: None,
            started_at: at,
            backup_id: None,
        };
        let a = db.start_run(&run).await.unwrap();
        db.start_run(&run).await.unwrap();
        db.record_skipped(&run, "overlap").await.unwrap();
        let outcome = RunOutcome {
            status: RunStatus::Failed,
            finished_at: at,
            bytes_read: 0,
            bytes_stored: 0,
            error: Some("x".into()),
            backup_id: None,
        };
        db.finish_run(a, &outcome).await.unwrap();
        let count = |facts: &crate::state::MetricsFacts, st: &str| {
            facts
                .runs
                .get(&("db".to_string(), st.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let f = db.metrics_facts(&["db"]).await.unwrap();
        assert_eq!(
            (
                count(&f, "running"),
                count(&f, "failed"),
                count(&f, "skipped")
            ),
            (1, 1, 1)
        );
        assert_eq!(f.jobs["db"].last_run.as_ref().map(|r| r.id), Some(a));
        assert_eq!(f.jobs["db"].last_success, None);
        sqlx::query("DELETE FROM runs WHERE id = ?")
            .bind(a)
            .execute(db.pool())
            .await
            .unwrap();
        let f = db.metrics_facts(&["db"]).await.unwrap();
        assert_eq!(count(&f, "failed"), 0);
        assert_eq!(f.jobs["db"].last_run, None);
    }
}
