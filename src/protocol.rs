//! The control-socket protocol shared by both binaries (docs/design.md §8; spec in docs/protocol.md).
//!
//! Newline-delimited JSON, one value per line, at most [`MAX_LINE`] bytes a line.
//! 1. The client sends a [`Hello`]; the daemon answers with its [`Hello`] (or an error line and
//!    closes if the major protocol version differs).
//! 2. The client sends one [`Request`] per line; the daemon answers one [`Reply`] per line.
//! 3. After `follow` or `run` with `wait: true`, the daemon sends [`Event`]s (as `Ok(Response::Event)`)
//!    until the run ends (run --wait) or the client closes (follow).

use crate::model::{
    AuditChainReport, AuditRow, BackupRow, BackupType, ClusterIdentity, Progress, RetentionReport,
    RunDetail, RunRecord, RunStatus, StatusReport, UsageReport,
};
use serde::{Deserialize, Serialize};

/// The protocol version: the major part must match; minor additions keep working.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest line either side accepts (1 MiB).
pub const MAX_LINE: usize = 1 << 20;

/// First line each way: `{"protocol":1,"software":"bdc-backupctl 0.1.0"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub software: String,
}

/// One request: `{"type":"runs","job":"db-dump","limit":20}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Request {
    /// `{"type":"status"}`
    Status,
    /// `{"type":"runs","job":null,"limit":20}`
    Runs {
        job: Option<String>,
        limit: Option<u32>,
    },
    /// `{"type":"backups","job":"db-dump","repository":null}`
    Backups {
        job: Option<String>,
        repository: Option<String>,
    },
    /// `{"type":"run","job":"db-dump","backup-type":null,"wait":true}`
    Run {
        job: String,
        #[serde(rename = "backup-type")]
        backup_type: Option<BackupType>,
        wait: bool,
    },
    /// `{"type":"cancel","run-id":42}`
    Cancel {
        #[serde(rename = "run-id")]
        run_id: i64,
    },
    /// `{"type":"reload"}`
    Reload,
    /// `{"type":"follow"}`: every event until the client closes.
    Follow,
    /// `{"type":"retention","job":null,"repository":null,"dry-run":true}`: GFS retention now
    /// (every job with a policy when `job` is null); a mutation unless `dry-run`.
    Retention {
        job: Option<String>,
        repository: Option<String>,
        #[serde(rename = "dry-run", default)]
        dry_run: bool,
    },
    /// `{"type":"usage","job":null,"weeks":8}`: bytes stored, weekly growth, projections.
    Usage {
        job: Option<String>,
        #[serde(default)]
        weeks: Option<u32>,
    },
    /// `{"type":"verify","job":"db","integrity-only":false,"drill-only":false,"backup":null,"wait":true}`:
    /// a manual run of the verify job covering `job` (every backup job when null), answered like
    /// `run` (`run-started`, then with `wait` its events until `run-finished`).
    Verify {
        job: Option<String>,
        #[serde(rename = "integrity-only", default)]
        integrity_only: bool,
        #[serde(rename = "drill-only", default)]
        drill_only: bool,
        #[serde(default)]
        backup: Option<String>,
        #[serde(default)]
        wait: bool,
    },
    /// `{"type":"show","run-id":42}`: one run in full, with every check of a verify run.
    Show {
        #[serde(rename = "run-id")]
        run_id: i64,
    },
    /// `{"type":"wal-push","name":"000000010000000000000003","system-identifier":"7312…","pg-major":15}`:
    /// archive one WAL file. The file's open descriptor travels as SCM_RIGHTS ancillary data in
    /// the same `sendmsg` as this line (docs/protocol.md); a wal-push without one is refused.
    WalPush {
        name: String,
        #[serde(flatten)]
        cluster: ClusterIdentity,
    },
    /// `{"type":"alerts","limit":20}`: open alert states, recent deliveries, each sink's last error.
    Alerts {
        #[serde(default)]
        limit: Option<u32>,
    },
    /// `{"type":"alert-test","sink":null}`: queue an `alert-test` event for every sink (or one).
    AlertTest {
        #[serde(default)]
        sink: Option<String>,
    },
    /// `{"type":"metrics"}`: the Prometheus text the daemon serves on `metrics-listen`.
    Metrics,
    /// `{"type":"audit","since":null,"job":null,"limit":1000,"verify":false}`: the audit trail
    /// (the newest `limit` rows, oldest first); with `verify`, the whole chain checked too.
    Audit {
        #[serde(default)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[serde(default)]
        job: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        verify: bool,
    },
    /// `{"type":"audit-report","action":"restore database","job":"db","result":"ok","detail":"…"}`:
    /// a ctl reports an operation it did itself (a restore); the daemon records it with the
    /// peer's credentials.
    AuditReport {
        action: String,
        #[serde(default)]
        job: Option<String>,
        result: String,
        #[serde(default)]
        detail: String,
    },
}

impl Request {
    /// The verb, as recorded in the audit trail.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Runs { .. } => "runs",
            Request::Backups { .. } => "backups",
            Request::Run { .. } => "run",
            Request::Cancel { .. } => "cancel",
            Request::Reload => "reload",
            Request::Follow => "follow",
            Request::Retention { .. } => "retention",
            Request::Usage { .. } => "usage",
            Request::WalPush { .. } => "wal-push",
            Request::Alerts { .. } => "alerts",
            Request::AlertTest { .. } => "alert-test",
            Request::Verify { .. } => "verify",
            Request::Show { .. } => "show",
            Request::Metrics => "metrics",
            Request::Audit { .. } => "audit",
            Request::AuditReport { .. } => "audit-report",
        }
    }

    /// Whether the request changes anything (needs root, the daemon's user or the admin group).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Request::Run { .. }
                | Request::Verify { .. }
                | Request::Cancel { .. }
                | Request::Reload
                | Request::Retention { dry_run: false, .. }
                | Request::AlertTest { .. }
        )
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Response {
    Status(StatusReport),
    Runs {
        runs: Vec<RunRecord>,
    },
    Backups {
        backups: Vec<BackupRow>,
    },
    /// The run was started (or queued behind the concurrency cap).
    RunStarted {
        run: RunRecord,
    },
    Cancelled {
        run_id: i64,
    },
    Reloaded {
        jobs: usize,
    },
    /// Follow mode acknowledged; events follow.
    Following,
    /// One report per job and repository covered.
    Retention {
        reports: Vec<RetentionReport>,
    },
    Usage(UsageReport),
    Alerts(crate::model::alerts::AlertsReport),
    /// The `alert-test` event was written to the outbox once per sink.
    AlertTestQueued {
        sinks: Vec<String>,
    },
    /// One run in full (`show`).
    RunDetail(RunDetail),
    Event(Event),
    /// The WAL file is durable in every `sync` repository (queued for the `async` ones).
    WalPushed {
        name: String,
        /// SHA-256 of the file's content (lowercase hex).
        sha256: String,
        /// E.g. "already archived with the same content" per repository.
        #[serde(default)]
        warnings: Vec<String>,
    },
    /// Prometheus text format 0.0.4.
    Metrics {
        text: String,
    },
    Audit {
        rows: Vec<AuditRow>,
        /// Older rows left out to keep the line under the cap.
        #[serde(default)]
        truncated: bool,
        /// With `verify`.
        #[serde(default)]
        chain: Option<AuditChainReport>,
    },
    AuditRecorded {
        id: i64,
    },
}

/// Something that happened, streamed to followers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Event {
    RunStarted {
        run: RunRecord,
    },
    Progress {
        run_id: i64,
        job: String,
        progress: Progress,
    },
    RunFinished {
        run: RunRecord,
    },
    Skipped {
        job: String,
        reason: String,
    },
    Reloaded {
        jobs: usize,
    },
    Log {
        level: String,
        message: String,
    },
}

impl Event {
    /// The `event` tags this version knows; a client skips events with other tags (a newer
    /// daemon's additions).
    pub const KNOWN: &'static [&'static str] = &[
        "run-started",
        "progress",
        "run-finished",
        "skipped",
        "reloaded",
        "log",
    ];

    pub fn finished_status(&self) -> Option<RunStatus> {
        match self {
            Event::RunFinished { run } => Some(run.status),
            _ => None,
        }
    }
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The line was not valid JSON or not a known request.
    BadRequest,
    /// The line exceeded [`MAX_LINE`].
    TooLong,
    /// The peer may not do this.
    Forbidden,
    /// No such job / run.
    NotFound,
    /// The request was understood but cannot be done now (e.g. job already running).
    Conflict,
    /// The major protocol version differs.
    Version,
    /// Something failed inside the daemon.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.code)
    }
}

/// One answer line: `{"ok":{...}}` or `{"error":{"code":"forbidden","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Ok(Response),
    Error(ErrorBody),
}

impl Reply {
    pub fn into_result(self) -> Result<Response, ErrorBody> {
        match self {
            Reply::Ok(r) => Ok(r),
            Reply::Error(e) => Err(e),
        }
    }
}

/// Decodes the client's first line, as the daemon reads it (JSON errors name line and column).
pub fn decode_hello(line: &[u8]) -> Result<Hello, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Decodes one request line, as the daemon reads it (`\n` already removed).
pub fn decode_request(line: &[u8]) -> Result<Request, serde_json::Error> {
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_push_wire_format() {
        let line = r#"{"type":"wal-push","name":"000000010000000000000003","system-identifier":"7312345678901234567","pg-major":15}"#;
        let req: Request = serde_json::from_str(line).unwrap();
        let Request::WalPush { name, cluster } = &req else {
            panic!("{req:?}")
        };
        assert_eq!(name, "000000010000000000000003");
        assert_eq!(cluster.system_identifier, 7_312_345_678_901_234_567);
        assert_eq!(cluster.pg_major, 15);
        assert_eq!(serde_json::to_string(&req).unwrap(), line);
        assert_eq!(req.verb(), "wal-push");
        assert!(!req.is_mutation());
    }
}
