//! The SQLite state DB (DESIGN §7): runs, committed backups per repository, schedule state, audit
//! events, manifest copies. WAL mode, busy timeout, foreign keys; migrations in `migrations/`.
//! All SQL of the project lives in this module.

use crate::model::{BackupRow, BackupType, JobKindName, RunRecord, RunStatus, Trigger};
use chrono::{DateTime, Utc};
use std::path::Path;

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

/// One audited request on the control socket (or an offline restore).
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    pub user: Option<String>,
    /// The request verb, e.g. "run", "cancel", "restore database".
    pub action: String,
    pub allowed: bool,
    /// Arguments / outcome, without secrets.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct StateDb {
    pool: sqlx::SqlitePool,
}

impl StateDb {
    /// Opens (creating if missing) and migrates. Fails clearly when it cannot.
    pub async fn open(_path: &Path) -> Result<StateDb, StateError> {
        todo!("state helper")
    }
    pub async fn open_read_only(_path: &Path) -> Result<StateDb, StateError> {
        todo!()
    }
    pub fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }
    pub async fn start_run(&self, _run: &NewRun) -> Result<i64, StateError> {
        todo!()
    }
    pub async fn update_progress(&self, _run_id: i64, _bytes_read: u64, _bytes_stored: u64) -> Result<(), StateError> {
        todo!()
    }
    pub async fn finish_run(&self, _run_id: i64, _outcome: &RunOutcome) -> Result<(), StateError> {
        todo!()
    }
    /// Records a run that did not start (overlap, catch-up skip), with the reason in `error`.
    pub async fn record_skipped(&self, _run: &NewRun, _reason: &str) -> Result<i64, StateError> {
        todo!()
    }
    pub async fn run(&self, _run_id: i64) -> Result<Option<RunRecord>, StateError> {
        todo!()
    }
    /// Newest first.
    pub async fn runs(&self, _job: Option<&str>, _limit: u32) -> Result<Vec<RunRecord>, StateError> {
        todo!()
    }
    pub async fn runs_with_status(&self, _status: RunStatus) -> Result<Vec<RunRecord>, StateError> {
        todo!()
    }
    /// The newest run of a job, and its newest successful one (for `status`); fast with 100k runs.
    pub async fn last_runs(&self, _job: &str) -> Result<(Option<RunRecord>, Option<RunRecord>), StateError> {
        todo!()
    }
    pub async fn upsert_backup(&self, _row: &BackupRow) -> Result<(), StateError> {
        todo!()
    }
    pub async fn remove_backup(&self, _job: &str, _backup_id: &str, _repository: &str) -> Result<(), StateError> {
        todo!()
    }
    /// Oldest first by start time.
    pub async fn backups(&self, _job: Option<&str>, _repository: Option<&str>) -> Result<Vec<BackupRow>, StateError> {
        todo!()
    }
    pub async fn last_fire(&self, _job: &str, _ty: BackupType) -> Result<Option<DateTime<Utc>>, StateError> {
        todo!()
    }
    pub async fn set_last_fire(&self, _job: &str, _ty: BackupType, _at: DateTime<Utc>) -> Result<(), StateError> {
        todo!()
    }
    /// When the job was first seen by the daemon (set on first call).
    pub async fn job_known_since(&self, _job: &str, _now: DateTime<Utc>) -> Result<DateTime<Utc>, StateError> {
        todo!()
    }
    pub async fn audit(&self, _event: &AuditEvent) -> Result<(), StateError> {
        todo!()
    }
    pub async fn audit_events(&self, _limit: u32) -> Result<Vec<AuditEvent>, StateError> {
        todo!()
    }
}
