//! The replication queue and per-repository replica status (migration 0003).

use super::{StateDb, StateError, parse_ts, ts};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// A backup still to be copied to one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaTask {
    pub job: String,
    pub backup_id: String,
    pub repository: String,
    pub source: String,
    pub enqueued_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    /// The last attempt failed with a permanent error: retried hourly, not with the backoff.
    pub permanent: bool,
}

/// How one job's replicas in one repository are doing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaStatus {
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_backup_id: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Backups waiting to be copied, and when the oldest was committed to the primary.
    pub pending: u32,
    pub oldest_pending_since: Option<DateTime<Utc>>,
    /// Some queued copy is held back by a permanent error (see [`ReplicaTask::permanent`]).
    pub permanent: bool,
    /// When the next queued copy is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

fn opt_ts(
    column: &'static str,
    value: Option<String>,
) -> Result<Option<DateTime<Utc>>, StateError> {
    value
        .map(|v| parse_ts("replica_status", column, &v))
        .transpose()
}

impl StateDb {
    /// Queues a committed backup for copying to `repository` (idempotent).
    pub async fn enqueue_replica(
        &self,
        job: &str,
        backup_id: &str,
        repository: &str,
        source: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO replication_queue (job, backup_id, repository, source, enqueued_at, next_attempt_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job, backup_id, repository) DO NOTHING",
        )
        .bind(job)
        .bind(backup_id)
        .bind(repository)
        .bind(source)
        .bind(ts(at))
        .bind(ts(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queued copies whose next attempt is due, oldest first.
    pub async fn due_replicas(&self, now: DateTime<Utc>) -> Result<Vec<ReplicaTask>, StateError> {
        let rows = sqlx::query(
            "SELECT job, backup_id, repository, source, enqueued_at, attempts, last_error, next_attempt_at, \
             permanent FROM replication_queue WHERE next_attempt_at <= ? ORDER BY enqueued_at",
        )
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(ReplicaTask {
                job: row.try_get("job")?,
                backup_id: row.try_get("backup_id")?,
                repository: row.try_get("repository")?,
                source: row.try_get("source")?,
                enqueued_at: parse_ts(
                    "replication_queue",
                    "enqueued_at",
                    &row.try_get::<String, _>("enqueued_at")?,
                )?,
                attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
                last_error: row.try_get("last_error")?,
                next_attempt_at: parse_ts(
                    "replication_queue",
                    "next_attempt_at",
                    &row.try_get::<String, _>("next_attempt_at")?,
                )?,
                permanent: row.try_get::<i64, _>("permanent")? != 0,
            });
        }
        Ok(out)
    }

    /// The copy landed: dequeue it and record the success.
    pub async fn replica_done(
        &self,
        job: &str,
        backup_id: &str,
        repository: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM replication_queue WHERE job = ? AND backup_id = ? AND repository = ?",
        )
        .bind(job)
        .bind(backup_id)
        .bind(repository)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO replica_status (job, repository, last_success_at, last_backup_id) VALUES (?, ?, ?, ?) \
             ON CONFLICT (job, repository) DO UPDATE SET last_success_at = excluded.last_success_at, \
             last_backup_id = excluded.last_backup_id",
        )
        .bind(job)
        .bind(repository)
        .bind(ts(at))
        .bind(backup_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The copy failed: keep it queued until `next_attempt_at`, record the error. A permanent
    /// failure also holds back every other copy queued for the same repository until
    /// `next_attempt_at` (one probe per interval, not one per queued backup), marked permanent.
    #[allow(clippy::too_many_arguments)]
    pub async fn replica_failed(
        &self,
        job: &str,
        backup_id: &str,
        repository: &str,
        error: &str,
        permanent: bool,
        at: DateTime<Utc>,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE replication_queue SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, \
             permanent = ? WHERE job = ? AND backup_id = ? AND repository = ?",
        )
        .bind(error)
        .bind(ts(next_attempt_at))
        .bind(permanent as i64)
        .bind(job)
        .bind(backup_id)
        .bind(repository)
        .execute(&mut *tx)
        .await?;
        if permanent {
            sqlx::query(
                "UPDATE replication_queue SET last_error = ?, permanent = 1, next_attempt_at = ? \
                 WHERE repository = ? AND next_attempt_at < ?",
            )
            .bind(error)
            .bind(ts(next_attempt_at))
            .bind(repository)
            .bind(ts(next_attempt_at))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO replica_status (job, repository, last_error, last_error_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (job, repository) DO UPDATE SET last_error = excluded.last_error, \
             last_error_at = excluded.last_error_at",
        )
        .bind(job)
        .bind(repository)
        .bind(error)
        .bind(ts(at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes every copy held back by a permanent error due at `now` (the catalogue was
    /// reloaded: the operator may have fixed the credentials or the bucket). Returns how many.
    pub async fn retry_permanent_replicas(&self, now: DateTime<Utc>) -> Result<u64, StateError> {
        let done = sqlx::query(
            "UPDATE replication_queue SET next_attempt_at = ? WHERE permanent = 1 AND next_attempt_at > ?",
        )
        .bind(ts(now))
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Drops queued copies of a backup (e.g. deleted by retention from the primary).
    pub async fn forget_replicas(&self, job: &str, backup_id: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM replication_queue WHERE job = ? AND backup_id = ?")
            .bind(job)
            .bind(backup_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replica status of one job in one repository.
    pub async fn replica_status(
        &self,
        job: &str,
        repository: &str,
    ) -> Result<ReplicaStatus, StateError> {
        let mut status = ReplicaStatus::default();
        if let Some(row) = sqlx::query(
            "SELECT last_success_at, last_backup_id, last_error, last_error_at FROM replica_status \
             WHERE job = ? AND repository = ?",
        )
        .bind(job)
        .bind(repository)
        .fetch_optional(&self.pool)
        .await?
        {
            status.last_success_at = opt_ts("last_success_at", row.try_get("last_success_at")?)?;
            status.last_backup_id = row.try_get("last_backup_id")?;
            status.last_error = row.try_get("last_error")?;
            status.last_error_at = opt_ts("last_error_at", row.try_get("last_error_at")?)?;
        }
        let row = sqlx::query(
            "SELECT count(*) AS n, min(enqueued_at) AS oldest, max(permanent) AS permanent, \
             min(next_attempt_at) AS next FROM replication_queue WHERE job = ? AND repository = ?",
        )
        .bind(job)
        .bind(repository)
        .fetch_one(&self.pool)
        .await?;
        status.pending = row.try_get::<i64, _>("n")?.max(0) as u32;
        status.oldest_pending_since = opt_ts("oldest_pending_since", row.try_get("oldest")?)?;
        status.permanent = row.try_get::<Option<i64>, _>("permanent")?.unwrap_or(0) != 0;
        status.next_attempt_at = opt_ts("next_attempt_at", row.try_get("next")?)?;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn queue_retry_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 0).unwrap();
        db.enqueue_replica("db", "B1", "offsite", "local", t0)
            .await
            .unwrap();
        db.enqueue_replica("db", "B1", "offsite", "local", t0)
            .await
            .unwrap();
        assert_eq!(db.due_replicas(t0).await.unwrap().len(), 1);
        let retry = t0 + chrono::Duration::minutes(5);
        db.replica_failed("db", "B1", "offsite", "timeout", false, t0, retry)
            .await
            .unwrap();
        assert!(db.due_replicas(t0).await.unwrap().is_empty());
        let due = db.due_replicas(retry).await.unwrap();
        assert_eq!(due[0].attempts, 1);
        assert_eq!(due[0].last_error.as_deref(), Some("timeout"));
        let st = db.replica_status("db", "offsite").await.unwrap();
        assert_eq!((st.pending, st.last_error.as_deref()), (1, Some("timeout")));
        assert_eq!(st.oldest_pending_since, Some(t0));
        db.replica_done("db", "B1", "offsite", retry).await.unwrap();
        let st = db.replica_status("db", "offsite").await.unwrap();
        assert_eq!(st.pending, 0);
        assert_eq!(st.last_backup_id.as_deref(), Some("B1"));
        assert_eq!(st.last_success_at, Some(retry));
    }

    /// A permanent failure holds back every copy queued for that repository (one probe per
    /// interval), is reported in the status, and a reload makes them due again.
    #[tokio::test]
    async fn a_permanent_failure_holds_back_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 0).unwrap();
        for (job, id) in [("db", "B1"), ("db", "B2"), ("web", "W1")] {
            db.enqueue_replica(job, id, "offsite", "local", t0)
                .await
                .unwrap();
        }
        db.enqueue_replica("db", "B1", "other", "local", t0)
            .await
            .unwrap();
        let hour = t0 + chrono::Duration::hours(1);
        db.replica_failed("db", "B1", "offsite", "bucket gone", true, t0, hour)
            .await
            .unwrap();
        let due = db.due_replicas(t0).await.unwrap();
        assert_eq!(due.len(), 1, "only the other repository is due: {due:?}");
        assert_eq!(due[0].repository, "other");
        let st = db.replica_status("db", "offsite").await.unwrap();
        assert!(st.permanent);
        assert_eq!((st.pending, st.next_attempt_at), (2, Some(hour)));
        let due = db.due_replicas(hour).await.unwrap();
        assert_eq!(due.len(), 4);
        let b1 = due
            .iter()
            .find(|t| t.backup_id == "B1" && t.repository == "offsite");
        assert_eq!(b1.map(|t| (t.attempts, t.permanent)), Some((1, true)));
        assert_eq!(db.retry_permanent_replicas(t0).await.unwrap(), 3);
        assert_eq!(db.due_replicas(t0).await.unwrap().len(), 4);
        // A transient failure clears the mark.
        db.replica_failed("db", "B1", "offsite", "timeout", false, t0, hour)
            .await
            .unwrap();
        let due = db.due_replicas(hour).await.unwrap();
        assert!(due.iter().any(|t| t.backup_id == "B1" && !t.permanent));
    }
}
