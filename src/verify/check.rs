//! One verification check and its result (the unit every integrity read, WAL continuity test,
//! restore drill and SQL check reports), and the drill settings a `verify` job carries.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a check looked at (the state DB's `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// Objects read back and checked against the commit record (and content hashes).
    Integrity,
    /// WAL continuity from a base backup's start to the newest archived segment.
    Wal,
    /// A restore drill (the restore itself).
    Drill,
    /// An SQL check from `[[job.check]]`.
    Sql,
    /// `pg_amcheck` on a drill cluster.
    Amcheck,
    /// Restored sample files compared with the manifest and the live tree.
    Sample,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Integrity => "integrity",
            CheckKind::Wal => "wal",
            CheckKind::Drill => "drill",
            CheckKind::Sql => "sql",
            CheckKind::Amcheck => "amcheck",
            CheckKind::Sample => "sample",
        }
    }
}

/// A check's result (the state DB's `result` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckResult {
    Pass,
    Fail,
    Skipped,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Pass => "pass",
            CheckResult::Fail => "fail",
            CheckResult::Skipped => "skipped",
        }
    }
}

/// One check of a verify run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The covered backup job.
    pub job: String,
    pub repository: Option<String>,
    pub backup_id: Option<String>,
    pub kind: CheckKind,
    /// What was checked, e.g. `restore into bdc_drill_db_dump_12` or the `[[job.check]]` name.
    pub name: String,
    pub result: CheckResult,
    /// Why it failed or was skipped (the cause named), or a short summary when it passed.
    pub detail: String,
    pub seconds: f64,
    pub bytes: u64,
}

/// What an SQL check expects of the query's single value (any combination; all must hold).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SqlExpect {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub equals: Option<String>,
    /// Run the same query on the live database and require the same answer.
    pub compare_with_source: bool,
}

/// One `[[job.check]]` of a verify job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlCheck {
    /// The covered `postgres-dump` or `postgres-base` job it runs against.
    pub job: String,
    /// Default: the job's first database (dump) / the connection URL's database (base).
    pub database: Option<String>,
    /// Shown in reports; default: the SQL text.
    pub name: Option<String>,
    pub sql: String,
    pub expect: SqlExpect,
}

impl SqlCheck {
    /// The name shown in reports.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.sql)
    }
}

/// Files sampled per files/config drill when `files-sample` is not set.
pub const DEFAULT_FILES_SAMPLE: usize = 100;

/// What a drill needs from its verify job.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillSettings {
    /// `scratch-directory` (default `<state-directory>/drills`): drills write only beneath it.
    pub scratch_directory: PathBuf,
    /// `drill-url`: where dump drills restore (default: the job's own server).
    pub drill_url: Option<String>,
    /// `files-sample`.
    pub files_sample: usize,
    /// The `[[job.check]]` entries of the verify job (a drill runs those of its job).
    pub checks: Vec<SqlCheck>,
}
