//! Plain data types shared by the state DB, the control protocol and the daemon: runs, their
//! statuses and triggers, backup types, backup rows and the status report; the reports of
//! retention and usage passes ([`reports`]), the cluster identity ([`identity`]), where a backup
//! came from ([`provenance`]) and the rows of verify runs ([`verification`]).

pub mod alerts;
mod audit;
mod identity;
mod provenance;
mod reports;
mod verification;

pub use audit::{AuditBreak, AuditChainReport, AuditRow, fit_audit_rows};
pub use identity::{ClusterIdentity, u64_string};
pub use provenance::Provenance;
pub use reports::{
    Action, BackupOutcome, CapacityRow, GrowthSource, Pin, Projection, Reason, RetentionReport,
    Rule, UsageReport, UsageRow, WalPlan, WalRetentionReport, WeekGrowth,
};
pub use verification::{CheckRecord, RunDetail, VerificationStatus};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] $var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok($name::$var),)+ other => Err(format!("unknown {} `{}`", stringify!($name), other)) }
            }
        }
    };
}

string_enum!(
    /// The status of a run (docs/design.md §7).
    RunStatus {
        Running => "running",
        Succeeded => "succeeded",
        /// Committed to the first repository, but a replica failed.
        Partial => "partial",
        /// Nothing changed since the last backup (config jobs): nothing stored, still fresh.
        Unchanged => "unchanged",
        Failed => "failed",
        /// The daemon stopped or was killed while the run was going; no commit record.
        Interrupted => "interrupted",
        /// Not started: the job was still running (overlap) or catch-up was off.
        Skipped => "skipped",
    }
);

impl RunStatus {
    /// A finished run whose backup is usable.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Partial | RunStatus::Unchanged
        )
    }
}

string_enum!(
    /// Why a run started.
    Trigger {
        Scheduled => "scheduled",
        /// A fire missed while the daemon was down, run once after start-up.
        CatchUp => "catch-up",
        /// `bdc-backupctl run`.
        Manual => "manual",
        /// A watched config file changed.
        Change => "change",
    }
);

string_enum!(
    /// Full or incremental. Logical dumps are always full.
    BackupType {
        Full => "full",
        Incremental => "incremental",
    }
);

impl BackupType {
    /// The letter that ends a backup id (`20261126T020000Z-F`).
    pub fn letter(self) -> char {
        match self {
            BackupType::Full => 'F',
            BackupType::Incremental => 'I',
        }
    }
}

string_enum!(
    /// The kind of a job (docs/design.md §3).
    JobKindName {
        PostgresDump => "postgres-dump",
        PostgresBase => "postgres-base",
        PostgresWal => "postgres-wal",
        Files => "files",
        Config => "config",
        Verify => "verify",
    }
);

/// One run, as recorded in the state DB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub kind: JobKindName,
    pub trigger: Trigger,
    pub backup_type: Option<BackupType>,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub error: Option<String>,
    pub backup_id: Option<String>,
}

/// A committed backup in one repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRow {
    pub job: String,
    pub backup_id: String,
    pub repository: String,
    pub kind: JobKindName,
    pub backup_type: BackupType,
    pub started_at: DateTime<Utc>,
    pub stopped_at: DateTime<Utc>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    /// Ancestor backup ids, nearest first (empty for a full).
    pub ancestors: Vec<String>,
    /// What the backup holds, in one line without secrets (e.g. "2 databases + globals").
    pub summary: String,
}

/// Progress of a running run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: String,
    pub bytes_read: u64,
    pub bytes_stored: u64,
}

/// One job in the status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    pub kind: JobKindName,
    /// The next scheduled fire, if the job has a schedule.
    pub next_run: Option<DateTime<Utc>>,
    pub next_type: Option<BackupType>,
    pub last_run: Option<RunRecord>,
    /// The last successful run.
    pub last_success: Option<RunRecord>,
    /// The running run, with its progress.
    pub running: Option<(RunRecord, Progress)>,
    /// Last committed backup per repository.
    pub repositories: Vec<RepositoryStatus>,
    /// `max-age` exceeded (or never succeeded and older than max-age since the daemon started).
    pub stale: bool,
    /// The last retention pass per repository (`StateDb::last_retention_pass`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<RetentionPass>,
    /// For a postgres-wal job: how archiving is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalStatus>,
    /// For a backup job: its last drill and how much of it integrity reads have covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
}

/// WAL archiving of a postgres-wal job (`status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WalStatus {
    /// The newest archived segment and when.
    pub last_archived: Option<String>,
    pub last_archived_at: Option<DateTime<Utc>>,
    /// Files archived so far (segments, history, backup labels, partials).
    pub archived_count: u64,
    /// The segment PostgreSQL is writing now (None when the cluster is not reachable).
    pub current_wal: Option<String>,
    /// Seconds since the last archived segment when the cluster has moved on since, else 0.
    pub lag_seconds: Option<i64>,
    /// Completed segments not yet archived (current position − last archived − 1).
    pub lag_segments: Option<u64>,
    /// From `pg_stat_archiver`.
    pub failed_count: Option<i64>,
    pub last_failed_wal: Option<String>,
    pub last_failed_at: Option<DateTime<Utc>>,
    /// Why the cluster could not be asked, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_error: Option<String>,
    /// Per async repository: files still to copy there.
    #[serde(default)]
    pub backlog: Vec<WalBacklog>,
    /// The cluster's `archive_timeout` in seconds (0 = off), when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_timeout_seconds: Option<u64>,
    /// Streaming (`stream = true`): the supervised receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<WalStreamStatus>,
}

/// The supervised `pg_receivewal` of a streaming postgres-wal job (`status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WalStreamStatus {
    /// starting | streaming | restarting | retrying | failed | stopped
    pub state: String,
    pub slot: String,
    /// What is wrong now (a failed state always has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Receiver restarts since the daemon started.
    pub restarts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_pid: Option<u32>,
    /// `pg_current_wal_lsn()` (a standby: its replay position) and the receiver's written and
    /// flushed positions, as last asked. The lag is against the flushed one with `synchronous`,
    /// else against the written one (pg_receivewal reports a flush only when a segment closes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lag_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
    /// The end of the newest WAL durable in every sync repository (a complete segment or the
    /// shipped `.partial`), the file and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_shipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_shipped_at: Option<DateTime<Utc>>,
}

/// The async copy backlog of one repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalBacklog {
    pub repository: String,
    pub pending: u32,
    /// Seconds since the oldest pending file was archived.
    pub lag_seconds: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryStatus {
    pub repository: String,
    pub last_backup_id: Option<String>,
    pub last_backup_at: Option<DateTime<Utc>>,
    /// For the job's other repositories (not the first): how replication is doing.
    #[serde(default)]
    pub replica: Option<ReplicaReport>,
}

/// Replication of one job into one of its other repositories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// Committed backups not yet copied there.
    pub pending: u32,
    /// Seconds since the oldest of those was queued (None when nothing is pending).
    pub lag_seconds: Option<i64>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// The pending copies are held back by a permanent error (credentials refused, bucket
    /// missing, path not a directory): retried hourly until someone fixes it.
    #[serde(default)]
    pub permanent: bool,
    /// When the next pending copy is attempted.
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One retention pass over one job in one repository, as recorded in the state DB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPass {
    pub job: String,
    pub repository: String,
    pub at: DateTime<Utc>,
    pub kept: u64,
    pub deleted: u64,
    /// Why the pass failed or was incomplete; None when it went through.
    pub error: Option<String>,
}

/// The daemon's answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub catalogue: String,
    pub timezone: String,
    pub max_concurrent_runs: usize,
    pub jobs: Vec<JobStatus>,
    /// Each `[objectives.NAME]` measured now (docs/alerts.md).
    #[serde(default)]
    pub objectives: Vec<alerts::ObjectiveHealth>,
}
