//! The audit trail's rows as the ctl shows them, and the result of checking their hash chain
//! (docs/metrics.md "Audit trail").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One row of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `socket` (a request; who = its peer), `daemon` (its own work: runs, retention, signals),
    /// `offline` (a ctl that could not reach the daemon; who = the local user).
    pub source: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    pub user: Option<String>,
    /// What: `run`, `backup`, `restore database`, `retention-delete`, `reload`, …
    pub action: String,
    pub job: Option<String>,
    pub allowed: bool,
    /// What came of it: `ok`, `denied`, `failed: …`, a run's status.
    pub result: String,
    pub detail: String,
    /// Hex SHA-256 of the previous row (64 zeros for the first row).
    pub prev_hash: Option<String>,
    /// Hex SHA-256 of this row's canonical encoding (docs/metrics.md).
    pub hash: Option<String>,
}

/// What `audit --verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChainReport {
    /// Rows checked (the whole trail).
    pub rows: u64,
    /// The newest row's hash: record it elsewhere to detect a rewrite of the whole chain.
    pub head: Option<String>,
    /// The first row that does not verify, and why.
    pub broken: Option<AuditBreak>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBreak {
    pub id: i64,
    pub reason: String,
}

/// Drops the oldest rows until the rows' JSON fits in `max` bytes; true if any were dropped.
pub fn fit_audit_rows(rows: &mut Vec<AuditRow>, max: usize) -> bool {
    let sizes: Vec<usize> = rows
        .iter()
        .map(|r| serde_json::to_string(r).map_or(0, |s| s.len() + 1))
        .collect();
    let mut total: usize = sizes.iter().sum();
    let mut drop = 0;
    while total > max && drop < rows.len() {
        total -= sizes[drop];
        drop += 1;
    }
    rows.drain(..drop);
    drop > 0
}
