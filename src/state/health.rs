//! The facts health is evaluated from (`crate::health`, docs/alerts.md), read for every job of
//! the catalogue in one grouped query (index lookups per job), so a scrape or an evaluation does
//! not cost a query per job.

use super::{StateDb, StateError, parse_ts, to_u64, ts};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::collections::BTreeMap;

/// One job's row: what `health::JobFacts` is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthRow {
    /// When the daemon first saw the job (`jobs_seen`).
    pub first_seen: Option<DateTime<Utc>>,
    /// The newest successful run's end (its start if it has none).
    pub newest_success: Option<DateTime<Utc>>,
    /// The newest archived WAL segment (or partial) file's time.
    pub newest_wal: Option<DateTime<Utc>>,
    /// The newest committed backup's stop time over its repositories, and its bytes read.
    pub newest_backup: Option<(DateTime<Utc>, u64)>,
    /// The newest passed drill: its time, restore seconds and the bytes it restored.
    pub drill: Option<(DateTime<Utc>, f64, u64)>,
}

fn opt_ts(
    row: &sqlx::sqlite::SqliteRow,
    table: &'static str,
    column: &'static str,
    name: &str,
) -> Result<Option<DateTime<Utc>>, StateError> {
    let v: Option<String> = row.try_get(name)?;
    v.as_deref().map(|s| parse_ts(table, column, s)).transpose()
}

impl StateDb {
    /// The health facts of `jobs` (the catalogue's job names). Records `now` as first seen for
    /// a job not seen before (as [`StateDb::job_known_since`]).
    pub async fn health_facts(
        &self,
        jobs: &[&str],
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, HealthRow>, StateError> {
        let names = serde_json::Value::from(jobs.to_vec()).to_string();
        let out = self.read_health_facts(&names).await?;
        if out.values().all(|r| r.first_seen.is_some()) {
            return Ok(out);
        }
        // A job not seen before (rare: a new job, the first start): record it, read again. In the
        // steady state a scrape or an evaluation writes nothing.
        sqlx::query(
            "INSERT INTO jobs_seen (job, first_seen) SELECT value, ? FROM json_each(?) WHERE true
             ON CONFLICT (job) DO NOTHING",
        )
        .bind(ts(now))
        .bind(&names)
        .execute(&self.pool)
        .await?;
        self.read_health_facts(&names).await
    }

    /// The query of [`StateDb::health_facts`] for `names` (a JSON array of job names).
    async fn read_health_facts(
        &self,
        names: &str,
    ) -> Result<BTreeMap<String, HealthRow>, StateError> {
        // The IN list matches the partial index `runs_success_by_job` and RunStatus::is_success.
        let rows = sqlx::query(
            "SELECT j.value AS job,
                (SELECT first_seen FROM jobs_seen WHERE job = j.value) AS first_seen,
                (SELECT coalesce(finished_at, started_at) FROM runs
                 WHERE job = j.value AND status IN ('succeeded', 'partial', 'unchanged')
                 ORDER BY started_at DESC, id DESC LIMIT 1) AS newest_success,
                (SELECT archived_at FROM wal_archived
                 WHERE job = j.value AND kind IN ('segment', 'partial')
                 ORDER BY archived_at DESC, name DESC LIMIT 1) AS newest_wal,
                b.stopped_at AS backup_at, b.bytes_read AS backup_bytes,
                d.at AS drill_at, d.seconds AS drill_seconds, d.bytes AS drill_bytes
             FROM json_each(?) j
             LEFT JOIN backups b ON b.rowid = (SELECT rowid FROM backups WHERE job = j.value
                 ORDER BY stopped_at DESC LIMIT 1)
             LEFT JOIN verify_checks d ON d.id = (SELECT id FROM verify_checks
                 WHERE job = j.value AND kind = 'drill' AND result = 'pass'
                 ORDER BY at DESC LIMIT 1)",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for row in &rows {
            let backup_bytes: Option<i64> = row.try_get("backup_bytes")?;
            let backup = match opt_ts(row, "backups", "stopped_at", "backup_at")? {
                Some(at) => Some((
                    at,
                    to_u64("backups", "bytes_read", backup_bytes.unwrap_or(0))?,
                )),
                None => None,
            };
            let drill = match opt_ts(row, "verify_checks", "at", "drill_at")? {
                Some(at) => {
                    let seconds: Option<f64> = row.try_get("drill_seconds")?;
                    let bytes: Option<i64> = row.try_get("drill_bytes")?;
                    Some((
                        at,
                        seconds.unwrap_or(0.0),
                        u64::try_from(bytes.unwrap_or(0)).unwrap_or(0),
                    ))
                }
                None => None,
            };
            out.insert(
                row.try_get::<String, _>("job")?,
                HealthRow {
                    first_seen: opt_ts(row, "jobs_seen", "first_seen", "first_seen")?,
                    newest_success: opt_ts(row, "runs", "finished_at", "newest_success")?,
                    newest_wal: opt_ts(row, "wal_archived", "archived_at", "newest_wal")?,
                    newest_backup: backup,
                    drill,
                },
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap()
    }

    async fn exec(db: &StateDb, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(db.pool())
            .await
            .unwrap();
    }

    /// The newest success ignores failures, the newest backup is by stop time over repositories,
    /// the newest passed drill counts, WAL partials count but history files do not; a job with
    /// nothing has only its first-seen time, which a second call keeps.
    #[tokio::test]
    async fn one_query_gives_each_jobs_newest_facts() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        let ts = |h| ts(t(h));
        exec(&db, &format!(
            "INSERT INTO runs (job, kind, \"trigger\", backup_type, status, started_at, finished_at, bytes_read, bytes_stored)
             VALUES ('db', 'postgres-dump', 'manual', 'full', 'succeeded', '{}', '{}', 1, 1),
                    ('db', 'postgres-dump', 'manual', 'full', 'failed', '{}', '{}', 0, 0)",
            ts(1), ts(2), ts(3), ts(4)
        )).await;
        exec(&db, &format!(
            "INSERT INTO backups (job, backup_id, repository, kind, backup_type, started_at, stopped_at, bytes_read, bytes_stored)
             VALUES ('db', 'A', 'local', 'postgres-dump', 'full', '{}', '{}', 100, 10),
                    ('db', 'B', 'local', 'postgres-dump', 'full', '{}', '{}', 300, 30),
                    ('db', 'B', 'far', 'postgres-dump', 'full', '{}', '{}', 300, 30)",
            ts(1), ts(2), ts(5), ts(6), ts(5), ts(6)
        )).await;
        exec(
            &db,
            &format!(
            "INSERT INTO verify_checks (run_id, job, kind, name, result, detail, seconds, bytes, at)
             VALUES (1, 'db', 'drill', 'd', 'pass', '', 12.5, 250, '{}'),
                    (2, 'db', 'drill', 'd', 'fail', '', 99.0, 250, '{}'),
                    (3, 'db', 'integrity', 'i', 'pass', '', 1.0, 1, '{}')",
            ts(7), ts(8), ts(9)
        ),
        )
        .await;
        exec(&db, &format!(
            "INSERT INTO wal_archived (job, system_identifier, pg_major, name, timeline, kind, size, sha256, archived_at, duration_ms)
             VALUES ('wal', '1', 15, '000000010000000000000001', 1, 'segment', 16, 'a', '{}', 1),
                    ('wal', '1', 15, '000000010000000000000002.partial', 1, 'partial', 16, 'b', '{}', 1),
                    ('wal', '1', 15, '00000002.history', 2, 'history', 16, 'c', '{}', 1)",
            ts(1), ts(2), ts(3)
        )).await;
        let facts = db.health_facts(&["db", "wal", "new"], t(10)).await.unwrap();
        let f = &facts["db"];
        assert_eq!(f.first_seen, Some(t(10)));
        assert_eq!(f.newest_success, Some(t(2)));
        assert_eq!(f.newest_backup, Some((t(6), 300)));
        assert_eq!(f.drill, Some((t(7), 12.5, 250)));
        assert_eq!(facts["wal"].newest_wal, Some(t(2)));
        assert_eq!(
            facts["new"],
            HealthRow {
                first_seen: Some(t(10)),
                ..HealthRow::default()
            }
        );
        let again = db.health_facts(&["new"], t(11)).await.unwrap();
        assert_eq!(again["new"].first_seen, Some(t(10)), "first seen stays");
    }
}
