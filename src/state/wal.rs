//! Archived WAL files and the async repositories' backlog (migration 0004).

use super::{StateDb, StateError, parse_ts, ts};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// One archived WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalArchived {
    pub job: String,
    pub system_identifier: u64,
    pub pg_major: u32,
    pub name: String,
    pub timeline: u32,
    /// segment | partial | backup | history
    pub kind: String,
    pub size: u64,
    pub sha256: String,
    pub archived_at: DateTime<Utc>,
    pub duration_ms: u64,
}

/// One file still to be copied to an async repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalBacklogItem {
    pub job: String,
    pub repository: String,
    pub key: String,
    pub name: String,
    pub source: String,
    pub enqueued_at: DateTime<Utc>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
}

/// The backlog of one async repository.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WalBacklogSummary {
    pub pending: u32,
    pub oldest_pending_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

fn backlog_row(row: &sqlx::sqlite::SqliteRow) -> Result<WalBacklogItem, StateError> {
    Ok(WalBacklogItem {
        job: row.try_get("job")?,
        repository: row.try_get("repository")?,
        key: row.try_get("key")?,
        name: row.try_get("name")?,
        source: row.try_get("source")?,
        enqueued_at: parse_ts(
            "wal_backlog",
            "enqueued_at",
            &row.try_get::<String, _>("enqueued_at")?,
        )?,
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        last_error: row.try_get("last_error")?,
        next_attempt_at: parse_ts(
            "wal_backlog",
            "next_attempt_at",
            &row.try_get::<String, _>("next_attempt_at")?,
        )?,
    })
}

impl StateDb {
    /// Records an archived file and queues it for the async repositories, in one transaction.
    pub async fn record_wal(
        &self,
        file: &WalArchived,
        key: &str,
        source: &str,
        async_repositories: &[String],
    ) -> Result<(), StateError> {
        const INSERT_ARCHIVED: &str = "INSERT INTO wal_archived (job, system_identifier, pg_major, name, timeline, kind, size, sha256, archived_at, duration_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (system_identifier, pg_major, name, sha256) DO NOTHING";
        let insert = || {
            sqlx::query(INSERT_ARCHIVED)
                .bind(&file.job)
                .bind(file.system_identifier.to_string())
                .bind(i64::from(file.pg_major))
                .bind(&file.name)
                .bind(i64::from(file.timeline))
                .bind(&file.kind)
                .bind(i64::try_from(file.size).unwrap_or(i64::MAX))
                .bind(&file.sha256)
                .bind(ts(file.archived_at))
                .bind(i64::try_from(file.duration_ms).unwrap_or(i64::MAX))
        };
        if async_repositories.is_empty() {
            // One statement (prepared once per connection): its own transaction.
            insert().execute(&self.pool).await?;
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        insert().execute(&mut *tx).await?;
        for repository in async_repositories {
            sqlx::query(
                "INSERT INTO wal_backlog (job, repository, key, name, source, enqueued_at, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repository, key) DO NOTHING",
            )
            .bind(&file.job)
            .bind(repository)
            .bind(key)
            .bind(&file.name)
            .bind(source)
            .bind(ts(file.archived_at))
            .bind(ts(file.archived_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest archived segment (or partial) of `job`, by time.
    pub async fn last_wal(&self, job: &str) -> Result<Option<WalArchived>, StateError> {
        let row = sqlx::query(
            "SELECT job, system_identifier, pg_major, name, timeline, kind, size, sha256, archived_at, duration_ms \
             FROM wal_archived WHERE job = ? AND kind IN ('segment', 'partial') \
             ORDER BY archived_at DESC, name DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(WalArchived {
            job: row.try_get("job")?,
            system_identifier: row
                .try_get::<String, _>("system_identifier")?
                .parse()
                .map_err(|e| StateError::BadValue {
                    table: "wal_archived",
                    column: "system_identifier",
                    message: format!("{e}"),
                })?,
            pg_major: row.try_get::<i64, _>("pg_major")?.max(0) as u32,
            name: row.try_get("name")?,
            timeline: row.try_get::<i64, _>("timeline")?.max(0) as u32,
            kind: row.try_get("kind")?,
            size: row.try_get::<i64, _>("size")?.max(0) as u64,
            sha256: row.try_get("sha256")?,
            archived_at: parse_ts(
                "wal_archived",
                "archived_at",
                &row.try_get::<String, _>("archived_at")?,
            )?,
            duration_ms: row.try_get::<i64, _>("duration_ms")?.max(0) as u64,
        }))
    }

    /// Whether `name` of the cluster was archived (any content): a base backup is complete only
    /// when every segment from its start to its stop LSN is.
    pub async fn wal_is_archived(
        &self,
        system_identifier: u64,
        pg_major: u32,
        name: &str,
    ) -> Result<bool, StateError> {
        let row = sqlx::query(
            "SELECT count(*) AS n FROM wal_archived WHERE system_identifier = ? AND pg_major = ? AND name = ?",
        )
        .bind(system_identifier.to_string())
        .bind(i64::from(pg_major))
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// How many files `job` has archived.
    pub async fn wal_count(&self, job: &str) -> Result<u64, StateError> {
        let row = sqlx::query("SELECT count(*) AS n FROM wal_archived WHERE job = ?")
            .bind(job)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Backlog items due now, oldest first.
    pub async fn due_wal_backlog(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<WalBacklogItem>, StateError> {
        let rows = sqlx::query(
            "SELECT job, repository, key, name, source, enqueued_at, attempts, last_error, next_attempt_at \
             FROM wal_backlog WHERE next_attempt_at <= ? ORDER BY enqueued_at, key LIMIT ?",
        )
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(backlog_row).collect()
    }

    /// The copy landed.
    pub async fn wal_backlog_done(&self, repository: &str, key: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM wal_backlog WHERE repository = ? AND key = ?")
            .bind(repository)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The copy failed: retried at `next_attempt_at`.
    pub async fn wal_backlog_failed(
        &self,
        repository: &str,
        key: &str,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE wal_backlog SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? \
             WHERE repository = ? AND key = ?",
        )
        .bind(error)
        .bind(ts(next_attempt_at))
        .bind(repository)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The backlog of `job` in `repository`.
    pub async fn wal_backlog_summary(
        &self,
        job: &str,
        repository: &str,
    ) -> Result<WalBacklogSummary, StateError> {
        let row = sqlx::query(
            "SELECT count(*) AS n, min(enqueued_at) AS oldest FROM wal_backlog WHERE job = ? AND repository = ?",
        )
        .bind(job)
        .bind(repository)
        .fetch_one(&self.pool)
        .await?;
        let oldest: Option<String> = row.try_get("oldest")?;
        let last_error = sqlx::query(
            "SELECT last_error FROM wal_backlog WHERE job = ? AND repository = ? AND last_error IS NOT NULL \
             ORDER BY next_attempt_at DESC LIMIT 1",
        )
        .bind(job)
        .bind(repository)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get::<String, _>("last_error"))
        .transpose()?;
        Ok(WalBacklogSummary {
            pending: row.try_get::<i64, _>("n")?.max(0) as u32,
            oldest_pending_since: oldest
                .map(|o| parse_ts("wal_backlog", "enqueued_at", &o))
                .transpose()?,
            last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn archived_and_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        let t0 = Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 0).unwrap();
        let file = WalArchived {
            job: "wal".into(),
            system_identifier: u64::MAX - 3,
            pg_major: 16,
            name: "000000010000000000000003".into(),
            timeline: 1,
            kind: "segment".into(),
            size: 16 << 20,
            sha256: "ab".repeat(32),
            archived_at: t0,
            duration_ms: 12,
        };
        db.record_wal(&file, "wal/k", "local", &["offsite".into()])
            .await
            .unwrap();
        db.record_wal(&file, "wal/k", "local", &["offsite".into()])
            .await
            .unwrap();
        assert_eq!(db.wal_count("wal").await.unwrap(), 1);
        assert!(
            db.wal_is_archived(u64::MAX - 3, 16, "000000010000000000000003")
                .await
                .unwrap()
        );
        assert!(
            !db.wal_is_archived(u64::MAX - 3, 15, "000000010000000000000003")
                .await
                .unwrap()
        );
        assert_eq!(db.last_wal("wal").await.unwrap(), Some(file.clone()));
        let due = db.due_wal_backlog(t0, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        let later = t0 + chrono::Duration::seconds(30);
        db.wal_backlog_failed("offsite", "wal/k", "refused", later)
            .await
            .unwrap();
        assert!(db.due_wal_backlog(t0, 10).await.unwrap().is_empty());
        let s = db.wal_backlog_summary("wal", "offsite").await.unwrap();
        assert_eq!((s.pending, s.last_error.as_deref()), (1, Some("refused")));
        db.wal_backlog_done("offsite", "wal/k").await.unwrap();
        assert_eq!(
            db.wal_backlog_summary("wal", "offsite")
                .await
                .unwrap()
                .pending,
            0
        );
    }
}
