//! The SQLite state DB (docs/design.md §7): runs, committed backups per repository, schedule state, the
//! chained audit trail (`audit`), manifest copies, the facts metrics are computed from (`facts`). WAL mode, busy timeout, foreign keys; migrations in `migrations/`.
//! All SQL of the project lives in this module.
//!
//! Times are stored as RFC 3339 UTC text with exactly six fractional digits and a `Z`
//! (`2026-11-26T02:00:00.000000Z`): fixed width, so text order is time order. Sub-microsecond
//! precision is dropped. Byte counts are stored as SQLite integers (saturating at `i64::MAX`).

use crate::error::{Classify, Retry};
use crate::model::{
    BackupRow, BackupType, JobKindName, RetentionPass, RunRecord, RunStatus, Trigger,
};
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod audit;
mod drill_facts;
mod events;
mod facts;
mod health;
mod offline;
mod replication;
#[cfg(test)]
mod tests;
mod verify;
mod wal;

pub use audit::{AuditEvent, AuditSource};
pub use drill_facts::DrillFact;
pub use events::{OutboxItem, SinkCounts};
pub use facts::{JobFacts, MetricsFacts, VerifyFacts};
pub use health::HealthRow;
pub use offline::{
    OfflineAuditError, append_offline_audit, offline_audit_path, read_offline_audit,
};
pub use replication::{ReplicaStatus, ReplicaTask};
pub use verify::{KnownObject, SampleCursor};
pub use wal::{WalArchived, WalBacklogItem, WalBacklogSummary};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state DB {path}: cannot open: {source}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("state DB {path}: cannot migrate: {source}")]
    Migrate {
        path: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("state DB: {0}")]
    Query(#[from] sqlx::Error),
    /// The folder of the state DB could not be created.
    #[error("state DB {path}: cannot create its folder: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file opened but is not a (migrated) state DB.
    #[error("state DB {path}: {message}")]
    Schema { path: String, message: String },
    /// A stored value the program does not understand (e.g. an unknown run status).
    #[error("state DB: bad value in {table}.{column}: {message}")]
    BadValue {
        table: &'static str,
        column: &'static str,
        message: String,
    },
}

impl Classify for StateError {
    fn retry(&self) -> Retry {
        match self {
            StateError::Query(e) => sqlx_retry(e),
            StateError::Open { source, .. } => sqlx_retry(source),
            StateError::CreateDir { source, .. } => crate::error::io_retry(source),
            StateError::Migrate { .. }
            | StateError::Schema { .. }
            | StateError::BadValue { .. } => Retry::Permanent,
        }
    }
}

fn sqlx_retry(e: &sqlx::Error) -> Retry {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => Retry::Transient,
        sqlx::Error::Io(io) => crate::error::io_retry(io),
        // SQLITE_BUSY (5) / SQLITE_LOCKED (6), also as extended codes (low byte).
        sqlx::Error::Database(db) => match db.code().and_then(|c| c.parse::<i64>().ok()) {
            Some(c) if matches!(c & 0xff, 5 | 6) => Retry::Transient,
            _ => Retry::Permanent,
        },
        _ => Retry::Permanent,
    }
}

/// A run about to start.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub job: String,
    pub kind: JobKindName,
    pub trigger: Trigger,
    pub backup_type: Option<BackupType>,
    pub started_at: DateTime<Utc>,
    /// The id the backup will have if it commits (so reconciliation can find it).
    pub backup_id: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub finished_at: DateTime<Utc>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub error: Option<String>,
    pub backup_id: Option<String>,
}

/// The plaintext local copy of a committed manifest (docs/design.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestCopy {
    pub job: String,
    pub backup_id: String,
    /// Hex SHA-256 of the manifest's ciphertext, as in the commit record.
    pub sha256: String,
    /// The local file in the state directory.
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct StateDb {
    pool: sqlx::SqlitePool,
    /// Audit rows are chained: one writer at a time (state/audit.rs).
    audit_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

const RUN_COLUMNS: &str = "id, job, kind, \"trigger\", backup_type, status, started_at, finished_at, \
                           bytes_read, bytes_stored, error, backup_id";

/// Formats a time the one way the DB stores it.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(
    table: &'static str,
    column: &'static str,
    s: &str,
) -> Result<DateTime<Utc>, StateError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| StateError::BadValue {
            table,
            column,
            message: format!("`{s}`: {e}"),
        })
}

fn parse_enum<T: FromStr<Err = String>>(
    table: &'static str,
    column: &'static str,
    s: &str,
) -> Result<T, StateError> {
    s.parse().map_err(|message| StateError::BadValue {
        table,
        column,
        message,
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(table: &'static str, column: &'static str, v: i64) -> Result<u64, StateError> {
    u64::try_from(v).map_err(|_| StateError::BadValue {
        table,
        column,
        message: format!("negative: {v}"),
    })
}

fn run_from_row(row: &SqliteRow) -> Result<RunRecord, StateError> {
    const T: &str = "runs";
    let backup_type: Option<String> = row.try_get("backup_type")?;
    let finished_at: Option<String> = row.try_get("finished_at")?;
    Ok(RunRecord {
        id: row.try_get("id")?,
        job: row.try_get("job")?,
        kind: parse_enum(T, "kind", row.try_get::<&str, _>("kind")?)?,
        trigger: parse_enum(T, "trigger", row.try_get::<&str, _>("trigger")?)?,
        backup_type: backup_type
            .as_deref()
            .map(|s| parse_enum(T, "backup_type", s))
            .transpose()?,
        status: parse_enum(T, "status", row.try_get::<&str, _>("status")?)?,
        started_at: parse_ts(T, "started_at", row.try_get::<&str, _>("started_at")?)?,
        finished_at: finished_at
            .as_deref()
            .map(|s| parse_ts(T, "finished_at", s))
            .transpose()?,
        bytes_read: to_u64(T, "bytes_read", row.try_get("bytes_read")?)?,
        bytes_stored: to_u64(T, "bytes_stored", row.try_get("bytes_stored")?)?,
        error: row.try_get("error")?,
        backup_id: row.try_get("backup_id")?,
    })
}

fn backup_from_row(row: &SqliteRow) -> Result<BackupRow, StateError> {
    const T: &str = "backups";
    let ancestors: String = row.try_get("ancestors")?;
    Ok(BackupRow {
        job: row.try_get("job")?,
        backup_id: row.try_get("backup_id")?,
        repository: row.try_get("repository")?,
        kind: parse_enum(T, "kind", row.try_get::<&str, _>("kind")?)?,
        backup_type: parse_enum(T, "backup_type", row.try_get::<&str, _>("backup_type")?)?,
        started_at: parse_ts(T, "started_at", row.try_get::<&str, _>("started_at")?)?,
        stopped_at: parse_ts(T, "stopped_at", row.try_get::<&str, _>("stopped_at")?)?,
        bytes_read: to_u64(T, "bytes_read", row.try_get("bytes_read")?)?,
        bytes_stored: to_u64(T, "bytes_stored", row.try_get("bytes_stored")?)?,
        ancestors: serde_json::from_str(&ancestors).map_err(|e| StateError::BadValue {
            table: T,
            column: "ancestors",
            message: format!("not a JSON list of ids: {e}"),
        })?,
        summary: row.try_get("summary")?,
    })
}

impl StateDb {
    /// Opens (creating if missing) and migrates. Fails clearly when it cannot: a file that is not
    /// a SQLite database is an error, never replaced by an empty one.
    pub async fn open(path: &Path) -> Result<StateDb, StateError> {
        let shown = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.exists()
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| StateError::CreateDir {
                    path: parent.display().to_string(),
                    source,
                })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| StateError::Open {
                path: shown.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StateError::Migrate {
                path: shown,
                source,
            })?;
        let db = StateDb {
            pool,
            audit_lock: Default::default(),
        };
        // Rows written before the chain existed (migration 0006) are chained now.
        db.chain_audit().await?;
        Ok(db)
    }

    /// Opens an existing, migrated state DB for reading (the ctl). Never creates or migrates.
    pub async fn open_read_only(path: &Path) -> Result<StateDb, StateError> {
        let shown = path.display().to_string();
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .create_if_missing(false)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|source| StateError::Open {
                path: shown.clone(),
                source,
            })?;
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&pool)
                .await
                .map_err(|source| StateError::Open {
                    path: shown.clone(),
                    source,
                })?;
        let known = sqlx::migrate!("./migrations")
            .migrations
            .iter()
            .map(|m| m.version)
            .max();
        if applied.is_none() || applied < known {
            return Err(StateError::Schema {
                path: shown,
                message: format!(
                    "schema version {} is older than this program's {}; start bdc-backupd once to migrate it",
                    applied.unwrap_or(0),
                    known.unwrap_or(0)
                ),
            });
        }
        Ok(StateDb {
            pool,
            audit_lock: Default::default(),
        })
    }

    pub fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }

    /// Records a run as `running`; returns its id.
    pub async fn start_run(&self, run: &NewRun) -> Result<i64, StateError> {
        self.insert_run(run, RunStatus::Running, None, None).await
    }

    async fn insert_run(
        &self,
        run: &NewRun,
        status: RunStatus,
        finished_at: Option<DateTime<Utc>>,
        error: Option<&str>,
    ) -> Result<i64, StateError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (job, kind, \"trigger\", backup_type, status, started_at, finished_at, error, backup_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&run.job)
        .bind(run.kind.as_str())
        .bind(run.trigger.as_str())
        .bind(run.backup_type.map(BackupType::as_str))
        .bind(status.as_str())
        .bind(ts(run.started_at))
        .bind(finished_at.map(ts))
        .bind(error)
        .bind(run.backup_id.as_deref())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn update_progress(
        &self,
        run_id: i64,
        bytes_read: u64,
        bytes_stored: u64,
    ) -> Result<(), StateError> {
        sqlx::query("UPDATE runs SET bytes_read = ?, bytes_stored = ? WHERE id = ?")
            .bind(to_i64(bytes_read))
            .bind(to_i64(bytes_stored))
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records how a run ended. `outcome.backup_id` replaces the planned id when given.
    pub async fn finish_run(&self, run_id: i64, outcome: &RunOutcome) -> Result<(), StateError> {
        let done = sqlx::query(
            "UPDATE runs SET status = ?, finished_at = ?, bytes_read = ?, bytes_stored = ?, error = ?,
                 backup_id = coalesce(?, backup_id)
             WHERE id = ?",
        )
        .bind(outcome.status.as_str())
        .bind(ts(outcome.finished_at))
        .bind(to_i64(outcome.bytes_read))
        .bind(to_i64(outcome.bytes_stored))
        .bind(outcome.error.as_deref())
        .bind(outcome.backup_id.as_deref())
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StateError::Query(sqlx::Error::RowNotFound));
        }
        Ok(())
    }

    /// Records a run that did not start (overlap, catch-up skip), with the reason in `error`.
    pub async fn record_skipped(&self, run: &NewRun, reason: &str) -> Result<i64, StateError> {
        self.insert_run(run, RunStatus::Skipped, Some(run.started_at), Some(reason))
            .await
    }

    pub async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, StateError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = ?"
        )))
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// Newest first.
    pub async fn runs(&self, job: Option<&str>, limit: u32) -> Result<Vec<RunRecord>, StateError> {
        let rows = match job {
            Some(job) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE job = ? ORDER BY started_at DESC, id DESC LIMIT ?"
                )))
                .bind(job)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, id DESC LIMIT ?"
                )))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(run_from_row).collect()
    }

    /// Oldest first.
    pub async fn runs_with_status(&self, status: RunStatus) -> Result<Vec<RunRecord>, StateError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status = ? ORDER BY started_at, id"
        )))
        .bind(status.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    /// The newest run of a job (any status, skipped included), and its newest successful one
    /// ([`RunStatus::is_success`]) for `status`; index-only lookups, fast with 100k runs.
    pub async fn last_runs(
        &self,
        job: &str,
    ) -> Result<(Option<RunRecord>, Option<RunRecord>), StateError> {
        let last = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job = ? ORDER BY started_at DESC, id DESC LIMIT 1"
        )))
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        // The IN list matches the partial index `runs_success_by_job` and RunStatus::is_success.
        let success = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job = ? AND status IN ('succeeded', 'partial', 'unchanged')
             ORDER BY started_at DESC, id DESC LIMIT 1"
        )))
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        Ok((
            last.as_ref().map(run_from_row).transpose()?,
            success.as_ref().map(run_from_row).transpose()?,
        ))
    }

    /// Inserts or replaces the row of (job, backup_id, repository).
    pub async fn upsert_backup(&self, row: &BackupRow) -> Result<(), StateError> {
        let ancestors =
            serde_json::to_string(&row.ancestors).map_err(|e| StateError::BadValue {
                table: "backups",
                column: "ancestors",
                message: e.to_string(),
            })?;
        sqlx::query(
            "INSERT INTO backups (job, backup_id, repository, kind, backup_type, started_at, stopped_at,
                                  bytes_read, bytes_stored, ancestors, summary)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (job, backup_id, repository) DO UPDATE SET
                 kind = excluded.kind, backup_type = excluded.backup_type,
                 started_at = excluded.started_at, stopped_at = excluded.stopped_at,
                 bytes_read = excluded.bytes_read, bytes_stored = excluded.bytes_stored,
                 ancestors = excluded.ancestors, summary = excluded.summary",
        )
        .bind(&row.job)
        .bind(&row.backup_id)
        .bind(&row.repository)
        .bind(row.kind.as_str())
        .bind(row.backup_type.as_str())
        .bind(ts(row.started_at))
        .bind(ts(row.stopped_at))
        .bind(to_i64(row.bytes_read))
        .bind(to_i64(row.bytes_stored))
        .bind(ancestors)
        .bind(&row.summary)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_backup(
        &self,
        job: &str,
        backup_id: &str,
        repository: &str,
    ) -> Result<(), StateError> {
        sqlx::query("DELETE FROM backups WHERE job = ? AND backup_id = ? AND repository = ?")
            .bind(job)
            .bind(backup_id)
            .bind(repository)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Oldest first by start time.
    pub async fn backups(
        &self,
        job: Option<&str>,
        repository: Option<&str>,
    ) -> Result<Vec<BackupRow>, StateError> {
        let rows = sqlx::query(
            "SELECT job, backup_id, repository, kind, backup_type, started_at, stopped_at, bytes_read,
                    bytes_stored, ancestors, summary
             FROM backups
             WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR repository = ?2)
             ORDER BY started_at, backup_id, repository",
        )
        .bind(job)
        .bind(repository)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(backup_from_row).collect()
    }

    pub async fn last_fire(
        &self,
        job: &str,
        ty: BackupType,
    ) -> Result<Option<DateTime<Utc>>, StateError> {
        let v: Option<String> = sqlx::query_scalar(
            "SELECT last_fire FROM schedule_state WHERE job = ? AND backup_type = ?",
        )
        .bind(job)
        .bind(ty.as_str())
        .fetch_optional(&self.pool)
        .await?;
        v.as_deref()
            .map(|s| parse_ts("schedule_state", "last_fire", s))
            .transpose()
    }

    pub async fn set_last_fire(
        &self,
        job: &str,
        ty: BackupType,
        at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO schedule_state (job, backup_type, last_fire) VALUES (?, ?, ?)
             ON CONFLICT (job, backup_type) DO UPDATE SET last_fire = excluded.last_fire",
        )
        .bind(job)
        .bind(ty.as_str())
        .bind(ts(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the job was first seen by the daemon (set to `now` on the first call).
    pub async fn job_known_since(
        &self,
        job: &str,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, StateError> {
        sqlx::query(
            "INSERT INTO jobs_seen (job, first_seen) VALUES (?, ?) ON CONFLICT (job) DO NOTHING",
        )
        .bind(job)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        let v: String = sqlx::query_scalar("SELECT first_seen FROM jobs_seen WHERE job = ?")
            .bind(job)
            .fetch_one(&self.pool)
            .await?;
        parse_ts("jobs_seen", "first_seen", &v)
    }

    /// Records (or replaces) the local plaintext copy of a committed manifest.
    pub async fn set_manifest_copy(&self, copy: &ManifestCopy) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO manifest_copies (job, backup_id, sha256, path) VALUES (?, ?, ?, ?)
             ON CONFLICT (job, backup_id) DO UPDATE SET sha256 = excluded.sha256, path = excluded.path",
        )
        .bind(&copy.job)
        .bind(&copy.backup_id)
        .bind(&copy.sha256)
        .bind(copy.path.as_os_str().as_bytes())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The local manifest copy of a backup, if one was recorded. The caller still checks that the
    /// file exists and matches `sha256` (docs/design.md §4: otherwise the next backup is a full).
    pub async fn manifest_copy(
        &self,
        job: &str,
        backup_id: &str,
    ) -> Result<Option<ManifestCopy>, StateError> {
        let row = sqlx::query("SELECT job, backup_id, sha256, path FROM manifest_copies WHERE job = ? AND backup_id = ?")
            .bind(job)
            .bind(backup_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let path: Vec<u8> = row.try_get("path")?;
        Ok(Some(ManifestCopy {
            job: row.try_get("job")?,
            backup_id: row.try_get("backup_id")?,
            sha256: row.try_get("sha256")?,
            path: PathBuf::from(std::ffi::OsString::from_vec(path)),
        }))
    }

    pub async fn remove_manifest_copy(&self, job: &str, backup_id: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM manifest_copies WHERE job = ? AND backup_id = ?")
            .bind(job)
            .bind(backup_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a retention pass (the daemon records real passes, not dry runs).
    pub async fn record_retention_pass(&self, pass: &RetentionPass) -> Result<i64, StateError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO retention_passes (job, repository, at, kept, deleted, error)
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&pass.job)
        .bind(&pass.repository)
        .bind(ts(pass.at))
        .bind(to_i64(pass.kept))
        .bind(to_i64(pass.deleted))
        .bind(pass.error.as_deref())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// The last retention pass of a job in each repository, by repository name.
    pub async fn last_retention_pass(&self, job: &str) -> Result<Vec<RetentionPass>, StateError> {
        const T: &str = "retention_passes";
        let rows = sqlx::query(
            "SELECT job, repository, at, kept, deleted, error FROM retention_passes p
             WHERE job = ?1 AND id = (
                 SELECT id FROM retention_passes q
                 WHERE q.job = p.job AND q.repository = p.repository
                 ORDER BY at DESC, id DESC LIMIT 1)
             ORDER BY repository",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RetentionPass {
                    job: row.try_get("job")?,
                    repository: row.try_get("repository")?,
                    at: parse_ts(T, "at", row.try_get::<&str, _>("at")?)?,
                    kept: to_u64(T, "kept", row.try_get("kept")?)?,
                    deleted: to_u64(T, "deleted", row.try_get("deleted")?)?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }
}
