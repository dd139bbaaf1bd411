//! Plain data of alerting (docs/alerts.md): the event names and severities, the versioned event
//! body, job freshness and objective health, and the `alerts` report.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Every alert event (docs/design.md §14). The names are a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    RunFailed,
    RunRecovered,
    Stale,
    Fresh,
    ObjectiveBreached,
    ObjectiveMet,
    VerifyFailed,
    VerifyRecovered,
    WalFailing,
    WalRecovered,
    ReplicaLagging,
    ReplicaRecovered,
    CapacityLow,
    AlertTest,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::RunFailed,
        EventKind::RunRecovered,
        EventKind::Stale,
        EventKind::Fresh,
        EventKind::ObjectiveBreached,
        EventKind::ObjectiveMet,
        EventKind::VerifyFailed,
        EventKind::VerifyRecovered,
        EventKind::WalFailing,
        EventKind::WalRecovered,
        EventKind::ReplicaLagging,
        EventKind::ReplicaRecovered,
        EventKind::CapacityLow,
        EventKind::AlertTest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunFailed => "run-failed",
            EventKind::RunRecovered => "run-recovered",
            EventKind::Stale => "stale",
            EventKind::Fresh => "fresh",
            EventKind::ObjectiveBreached => "objective-breached",
            EventKind::ObjectiveMet => "objective-met",
            EventKind::VerifyFailed => "verify-failed",
            EventKind::VerifyRecovered => "verify-recovered",
            EventKind::WalFailing => "wal-failing",
            EventKind::WalRecovered => "wal-recovered",
            EventKind::ReplicaLagging => "replica-lagging",
            EventKind::ReplicaRecovered => "replica-recovered",
            EventKind::CapacityLow => "capacity-low",
            EventKind::AlertTest => "alert-test",
        }
    }

    /// How bad it is: a bad state is `critical` (runs, freshness, objectives, WAL) or `warning`;
    /// recoveries and tests are `info`.
    pub fn severity(self) -> Severity {
        match self {
            EventKind::RunFailed
            | EventKind::Stale
            | EventKind::ObjectiveBreached
            | EventKind::VerifyFailed
            | EventKind::WalFailing => Severity::Critical,
            EventKind::ReplicaLagging | EventKind::CapacityLow => Severity::Warning,
            _ => Severity::Info,
        }
    }

    /// The event that ends this bad state (None for recoveries and `alert-test`).
    pub fn recovery(self) -> Option<EventKind> {
        match self {
            EventKind::RunFailed => Some(EventKind::RunRecovered),
            EventKind::Stale => Some(EventKind::Fresh),
            EventKind::ObjectiveBreached => Some(EventKind::ObjectiveMet),
            EventKind::VerifyFailed => Some(EventKind::VerifyRecovered),
            EventKind::WalFailing => Some(EventKind::WalRecovered),
            EventKind::ReplicaLagging => Some(EventKind::ReplicaRecovered),
            // Capacity recovers silently: the state closes without an event.
            _ => None,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event `{s}`"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// The body every sink receives (version 1; fields are only ever added).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    pub version: u32,
    pub event: EventKind,
    pub severity: Severity,
    pub host: String,
    pub job: Option<String>,
    pub objective: Option<String>,
    pub run_id: Option<i64>,
    pub at: DateTime<Utc>,
    pub summary: String,
    pub details: serde_json::Value,
    /// True when this repeats a still-bad state (`remind`).
    pub reminder: bool,
}

/// `fresh` or `stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Freshness {
    Fresh,
    Stale,
}

/// A job's freshness (`health::jobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobHealth {
    pub job: String,
    pub freshness: Freshness,
    /// The newest success (for a WAL job: the newest archived file).
    pub newest_success: Option<DateTime<Utc>>,
    /// What freshness is counted from: the newest success, else when the daemon first saw the job.
    pub counted_from: DateTime<Utc>,
    /// The job's `max-age`, or the default (None: the job has no schedule to derive one from).
    pub max_age_seconds: Option<u64>,
    /// Whether `max_age_seconds` is the default rather than the catalogue's `max-age`.
    pub max_age_default: bool,
}

/// `met`, `breached` or `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectiveState {
    Met,
    Breached,
    Unknown,
}

impl ObjectiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectiveState::Met => "met",
            ObjectiveState::Breached => "breached",
            ObjectiveState::Unknown => "unknown",
        }
    }
}

/// One `[objectives.NAME]` measured now (`health::objectives`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveHealth {
    pub name: String,
    pub jobs: Vec<String>,
    /// now − the newest restorable point; None when there is none at all.
    pub rpo_seconds: Option<i64>,
    /// The newest restorable point over the objective's jobs.
    pub newest_point: Option<DateTime<Utc>>,
    /// The newest drill's restore time scaled to the backup's size now; None = unknown.
    pub rto_seconds: Option<i64>,
    pub target_rpo_seconds: Option<u64>,
    pub target_rto_seconds: Option<u64>,
    pub state: ObjectiveState,
    /// Why it is breached or unknown, in one line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A bad state an alert was sent for and that has not recovered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAlert {
    pub key: String,
    pub event: EventKind,
    pub job: Option<String>,
    pub objective: Option<String>,
    pub since: DateTime<Utc>,
    pub reminded_at: DateTime<Utc>,
    pub summary: String,
}

/// One outbox row: an event for one sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    pub sink: String,
    pub event: EventKind,
    pub job: Option<String>,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub gave_up_at: Option<DateTime<Utc>>,
}

/// One sink of the catalogue and how it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkReport {
    pub name: String,
    pub kind: String,
    /// The URL without credentials, or the command's program.
    pub target: String,
    pub pending: u64,
    pub delivered: u64,
    pub gave_up: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_delivered_at: Option<DateTime<Utc>>,
}

/// The answer to `alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertsReport {
    pub open: Vec<OpenAlert>,
    pub sinks: Vec<SinkReport>,
    /// Newest first.
    pub recent: Vec<Delivery>,
}
