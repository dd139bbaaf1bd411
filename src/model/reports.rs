//! The reports of retention and usage passes, as the control protocol carries them. Their
//! behaviour (`is_success`, `Display`, …) stays with the code that computes them
//! ([`crate::retention`], [`crate::usage`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::BackupType;

/// A counted rule of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// A counted rule: slot `slot` of `of` (`daily 3/7`), for `period`. `oldest`: kept only
    /// because it is the oldest candidate and the rule still had room.
    Rule {
        rule: Rule,
        slot: u32,
        of: u32,
        period: String,
        oldest: bool,
    },
    /// Stopped within `within` of the newest backup that is not in the future.
    KeepWithin { within: String },
    /// The newest full backup is never deleted.
    NewestFull,
    /// An ancestor of a kept incremental.
    ParentOf { child: String },
    /// Stopped after `now` (a clock problem somewhere): kept and reported.
    Future,
    /// The job has no retention policy: everything is kept.
    NoPolicy,
}

/// What happened to one backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Keep,
    /// Deleted (and confirmed gone when the report says so).
    Delete,
    /// Would be deleted (dry run, or deletion withheld).
    WouldDelete,
    /// Deleting failed; see `error`.
    DeleteFailed,
}

/// One backup in a retention report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BackupOutcome {
    pub id: String,
    pub backup_type: BackupType,
    pub stopped_at: DateTime<Utc>,
    pub bytes_stored: u64,
    pub action: Action,
    pub reasons: Vec<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a retention pass over one job in one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RetentionReport {
    pub job: String,
    pub repository: String,
    /// The `[retention.NAME]` applied, if any.
    pub policy: Option<String>,
    pub at: DateTime<Utc>,
    /// The catalogue's timezone, in which the periods were computed (times are shown in it).
    #[serde(default)]
    pub timezone: String,
    pub dry_run: bool,
    /// Newest first.
    pub backups: Vec<BackupOutcome>,
    pub kept: usize,
    /// Marked for deletion by the plan.
    pub to_delete: usize,
    /// Actually deleted (0 in a dry run, or when deletion was withheld).
    pub deleted: usize,
    pub failed: usize,
    pub bytes_freed: u64,
    /// Some(true): a listing after the deletions shows every deleted backup gone.
    /// None: nothing was deleted (dry run, or nothing to delete).
    pub confirmed: Option<bool>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub errors: Vec<String>,
    /// postgres-base jobs with a `wal-job`: the WAL thinned in this repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalRetentionReport>,
}

/// A pinned range: a kept backup's own WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Pin {
    pub backup: String,
    pub start_wal: String,
    pub stop_wal: String,
}

/// What WAL retention decided for one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WalPlan {
    /// The first segment of continuous WAL kept (None: nothing to anchor on, nothing deleted).
    pub continuous_from: Option<String>,
    /// The backup the anchor belongs to.
    pub anchor_backup: Option<String>,
    pub pins: Vec<Pin>,
    /// Keys to delete, oldest first.
    pub delete: Vec<String>,
    pub bytes_to_free: u64,
    pub kept_files: u64,
    pub history_files: u64,
}

/// The WAL part of a retention report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WalRetentionReport {
    pub wal_job: String,
    #[serde(flatten)]
    pub plan: WalPlan,
    pub deleted: u64,
    pub bytes_freed: u64,
    pub failed: u64,
    /// Some(true): a listing after the deletions shows them gone.
    pub confirmed: Option<bool>,
    #[serde(default)]
    pub errors: Vec<String>,
}

/// What one 7-day window added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WeekGrowth {
    /// The window is (`from`, `to`].
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub backups: usize,
    pub bytes: u64,
}

/// Stored bytes in so many days at the recent weekly rate, before retention deletes anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Projection {
    pub days: u32,
    pub bytes: u64,
}

/// One job in one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UsageRow {
    pub job: String,
    pub repository: String,
    pub backups: usize,
    pub fulls: usize,
    pub bytes_stored: u64,
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    /// Where `weekly` comes from.
    pub growth_source: GrowthSource,
    /// Oldest window first.
    pub weekly: Vec<WeekGrowth>,
    /// Mean bytes added per week over the windows the history covers.
    pub weekly_rate: u64,
    /// Linear: stored + rate × days / 7, no deletions.
    pub projections: Vec<Projection>,
    /// The job's `[retention.NAME]`, if any.
    pub policy: Option<String>,
    /// Estimated bytes once retention has reached its steady state (see the module docs).
    pub steady_state_bytes: Option<u64>,
    pub steady_state_backups: Option<usize>,
    /// Why there is no steady-state estimate, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UsageReport {
    pub at: DateTime<Utc>,
    pub weeks: u32,
    pub rows: Vec<UsageRow>,
    pub total_bytes: u64,
    /// Per local repository: the free space of its filesystem and when it fills up.
    #[serde(default)]
    pub capacity: Vec<CapacityRow>,
}

/// The filesystem of one local repository (`usage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CapacityRow {
    pub repository: String,
    pub path: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Bytes added per day over the history (every job writing there).
    pub growth_per_day: u64,
    /// Days until the free space is used up at that rate; None when nothing grows.
    pub days_until_full: Option<f64>,
    /// Why the filesystem could not be asked, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the weekly growth and the cadence came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrowthSource {
    /// The daemon's run history: every backup written, including those retention deleted since.
    Runs,
    /// The commit records still stored (offline): weeks past the daily rules show less.
    CommitRecords,
}
