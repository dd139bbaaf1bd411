//! Verify runs (migration 0007): every check of a run (`verify_checks`), each stored object's
//! last integrity read (`verify_objects`) and where each sample cycle stands (`verify_cursor`).

use super::{StateDb, StateError, parse_ts, to_i64, to_u64, ts};
use crate::model::{CheckRecord, VerificationStatus};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// One object as integrity reads know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownObject {
    pub repository: String,
    pub key: String,
    pub job: String,
    pub bucket: u32,
}

/// Where a sample cycle stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleCursor {
    pub next_bucket: u32,
    /// Cycles completed so far.
    pub cycles: u64,
    pub cycle_started_at: DateTime<Utc>,
}

/// The check kinds a drill reports (its restore, pg_amcheck, SQL checks, the sample).
const DRILL_KINDS: &str = "('drill', 'amcheck', 'sql', 'sample')";

const CHECK_COLUMNS: &str =
    "id, run_id, job, repository, backup_id, kind, name, result, detail, seconds, bytes, at";

fn check_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<CheckRecord, StateError> {
    Ok(CheckRecord {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        job: row.try_get("job")?,
        repository: row.try_get("repository")?,
        backup_id: row.try_get("backup_id")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        result: row.try_get("result")?,
        detail: row.try_get("detail")?,
        seconds: row.try_get("seconds")?,
        bytes: to_u64("verify_checks", "bytes", row.try_get("bytes")?)?,
        at: parse_ts("verify_checks", "at", &row.try_get::<String, _>("at")?)?,
    })
}

impl StateDb {
    /// Records one check of run `check.run_id`; returns its row id.
    pub async fn record_check(&self, check: &CheckRecord) -> Result<i64, StateError> {
        let id = sqlx::query(
            "INSERT INTO verify_checks (run_id, job, repository, backup_id, kind, name, result, \
             detail, seconds, bytes, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(check.run_id)
        .bind(&check.job)
        .bind(&check.repository)
        .bind(&check.backup_id)
        .bind(&check.kind)
        .bind(&check.name)
        .bind(&check.result)
        .bind(&check.detail)
        .bind(check.seconds)
        .bind(to_i64(check.bytes))
        .bind(ts(check.at))
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    /// Corrects the seconds and bytes of check row `id` (figures known only after it was written).
    pub async fn set_check_figures(
        &self,
        id: i64,
        seconds: f64,
        bytes: u64,
    ) -> Result<(), StateError> {
        sqlx::query("UPDATE verify_checks SET seconds = ?, bytes = ? WHERE id = ?")
            .bind(seconds)
            .bind(to_i64(bytes))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every check of one run, in the order recorded.
    pub async fn checks_of_run(&self, run_id: i64) -> Result<Vec<CheckRecord>, StateError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CHECK_COLUMNS} FROM verify_checks WHERE run_id = ? ORDER BY id"
        )))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(check_from_row).collect()
    }

    /// The newest check of `kind` for backup job `job` (any result).
    pub async fn last_check(
        &self,
        job: &str,
        kind: &str,
    ) -> Result<Option<CheckRecord>, StateError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CHECK_COLUMNS} FROM verify_checks WHERE job = ? AND kind = ? \
             ORDER BY at DESC, id DESC LIMIT 1"
        )))
        .bind(job)
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(check_from_row).transpose()
    }

    /// Whether a drill of `job` passed on backup `backup_id`: its restore passed and no other
    /// check of that drill failed (pg_amcheck, an SQL check, the sample, the clean-up).
    pub async fn drill_passed(&self, job: &str, backup_id: &str) -> Result<bool, StateError> {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM verify_checks c WHERE job = ? AND backup_id = ? \
             AND kind = 'drill' AND result = 'pass' AND NOT EXISTS (SELECT 1 FROM verify_checks f \
             WHERE f.run_id = c.run_id AND f.job = c.job AND f.kind IN {DRILL_KINDS} \
             AND f.result = 'fail')"
        )))
        .bind(job)
        .bind(backup_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Makes `objects` (all objects of one repository the run looked at) known, and forgets the
    /// repository's objects of `jobs` that are no longer stored.
    pub async fn sync_objects(
        &self,
        repository: &str,
        jobs: &[String],
        objects: &[KnownObject],
    ) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS verify_seen (key TEXT PRIMARY KEY)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM verify_seen")
            .execute(&mut *tx)
            .await?;
        for o in objects {
            sqlx::query(
                "INSERT INTO verify_objects (repository, key, job, bucket) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (repository, key) DO NOTHING",
            )
            .bind(&o.repository)
            .bind(&o.key)
            .bind(&o.job)
            .bind(i64::from(o.bucket))
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT OR IGNORE INTO verify_seen (key) VALUES (?)")
                .bind(&o.key)
                .execute(&mut *tx)
                .await?;
        }
        for job in jobs {
            sqlx::query(
                "DELETE FROM verify_objects WHERE repository = ? AND job = ? \
                 AND key NOT IN (SELECT key FROM verify_seen)",
            )
            .bind(repository)
            .bind(job)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM verify_seen")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records one integrity read of an object.
    pub async fn object_read(
        &self,
        repository: &str,
        key: &str,
        at: DateTime<Utc>,
        result: &str,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE verify_objects SET reads = reads + 1, last_read_at = ?, last_result = ? \
             WHERE repository = ? AND key = ?",
        )
        .bind(ts(at))
        .bind(result)
        .bind(repository)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records integrity reads of many objects of `repository` (key, result) in one transaction.
    pub async fn objects_read(
        &self,
        repository: &str,
        reads: &[(&str, &str)],
        at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        let at = ts(at);
        for (key, result) in reads {
            sqlx::query(
                "UPDATE verify_objects SET reads = reads + 1, last_read_at = ?, last_result = ? \
                 WHERE repository = ? AND key = ?",
            )
            .bind(&at)
            .bind(*result)
            .bind(repository)
            .bind(*key)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// How often each object of `repository` was read (key → reads), for tests and tools.
    pub async fn object_reads(&self, repository: &str) -> Result<Vec<(String, u64)>, StateError> {
        let rows =
            sqlx::query("SELECT key, reads FROM verify_objects WHERE repository = ? ORDER BY key")
                .bind(repository)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("key")?,
                    to_u64("verify_objects", "reads", r.try_get("reads")?)?,
                ))
            })
            .collect()
    }

    /// The sample cursor of one verify job in one repository (None before its first run).
    pub async fn sample_cursor(
        &self,
        verify_job: &str,
        repository: &str,
    ) -> Result<Option<SampleCursor>, StateError> {
        let row = sqlx::query(
            "SELECT next_bucket, cycles, cycle_started_at FROM verify_cursor \
             WHERE verify_job = ? AND repository = ?",
        )
        .bind(verify_job)
        .bind(repository)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(SampleCursor {
                next_bucket: u32::try_from(r.try_get::<i64, _>("next_bucket")?).unwrap_or(0),
                cycles: to_u64("verify_cursor", "cycles", r.try_get("cycles")?)?,
                cycle_started_at: parse_ts(
                    "verify_cursor",
                    "cycle_started_at",
                    &r.try_get::<String, _>("cycle_started_at")?,
                )?,
            })
        })
        .transpose()
    }

    pub async fn set_sample_cursor(
        &self,
        verify_job: &str,
        repository: &str,
        cursor: &SampleCursor,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO verify_cursor (verify_job, repository, next_bucket, cycles, cycle_started_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (verify_job, repository) DO UPDATE SET \
             next_bucket = excluded.next_bucket, cycles = excluded.cycles, \
             cycle_started_at = excluded.cycle_started_at",
        )
        .bind(verify_job)
        .bind(repository)
        .bind(i64::from(cursor.next_bucket))
        .bind(to_i64(cursor.cycles))
        .bind(ts(cursor.cycle_started_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What `status` says about backup job `job`'s verification; `newest_backup` is its newest
    /// committed backup, if any.
    pub async fn verification_status(
        &self,
        job: &str,
        newest_backup: Option<&str>,
    ) -> Result<VerificationStatus, StateError> {
        let mut last_drill = self.last_check(job, "drill").await?;
        // The drill failed when any of its checks did (a restore that worked but whose
        // pg_amcheck found corruption is a failed drill): its result and first failure then.
        if let Some(d) = last_drill.as_mut() {
            let failure = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT name, detail FROM verify_checks WHERE run_id = ? AND job = ? \
                 AND kind IN {DRILL_KINDS} AND result = 'fail' ORDER BY id LIMIT 1"
            )))
            .bind(d.run_id)
            .bind(job)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(f) = failure {
                d.result = "fail".to_string();
                d.detail = format!(
                    "{}: {}",
                    f.try_get::<String, _>("name")?,
                    f.try_get::<String, _>("detail")?
                );
            }
        }
        let newest_backup_proven = match newest_backup {
            Some(id) => self.drill_passed(job, id).await?,
            None => false,
        };
        let row = sqlx::query(
            "SELECT count(*) AS n, sum(CASE WHEN last_read_at IS NULL THEN 1 ELSE 0 END) AS never, \
             min(last_read_at) AS oldest FROM verify_objects WHERE job = ?",
        )
        .bind(job)
        .fetch_one(&self.pool)
        .await?;
        let objects = to_u64("verify_objects", "count", row.try_get("n")?)?;
        let never_read = to_u64(
            "verify_objects",
            "count",
            row.try_get::<Option<i64>, _>("never")?.unwrap_or(0),
        )?;
        let oldest: Option<String> = row.try_get("oldest")?;
        let all_read_since = match (&oldest, never_read) {
            (Some(t), 0) => Some(parse_ts("verify_objects", "last_read_at", t)?),
            _ => None,
        };
        Ok(VerificationStatus {
            last_drill,
            newest_backup_proven,
            objects,
            never_read,
            all_read_since,
        })
    }
}
