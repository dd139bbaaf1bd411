//! The rows of verify runs as the state DB keeps them and the protocol carries them: one check
//! ([`CheckRecord`]), one run in full ([`RunDetail`], `show`), and what `status` says about a
//! backup job's verification ([`VerificationStatus`]).

use super::RunRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One check of a verify run (a `verify_checks` row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// The row id (0 when not recorded: an offline `verify --wait`).
    pub id: i64,
    pub run_id: i64,
    /// The covered backup job.
    pub job: String,
    pub repository: Option<String>,
    pub backup_id: Option<String>,
    /// integrity | wal | drill | sql | amcheck | sample
    pub kind: String,
    pub name: String,
    /// pass | fail | skipped
    pub result: String,
    pub detail: String,
    pub seconds: f64,
    pub bytes: u64,
    pub at: DateTime<Utc>,
}

/// One run in full (`show RUN_ID`): the run, and every check when it is a verify run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    /// None for an offline `verify --wait` (nothing recorded).
    pub run: Option<RunRecord>,
    pub checks: Vec<CheckRecord>,
    /// Where the run's backup came from (its commit record's provenance), when the run made a
    /// backup that a repository still holds and the record has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Box<super::Provenance>>,
}

/// A backup job's verification, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerificationStatus {
    /// The newest drill check of the job.
    pub last_drill: Option<CheckRecord>,
    /// Whether the newest committed backup (in any repository) passed a drill.
    pub newest_backup_proven: bool,
    /// Objects of the job the integrity reads know of, and how many were never read.
    pub objects: u64,
    pub never_read: u64,
    /// The oldest last read among the job's objects: every object was read since then (None
    /// when some object was never read or none is known).
    pub all_read_since: Option<DateTime<Utc>>,
}
