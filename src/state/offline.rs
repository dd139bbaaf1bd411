//! The offline audit file: rows a ctl could not hand to the daemon (an offline restore), one JSON
//! object a line, appended with mode 0600; the daemon imports `<state-directory>/offline-audit.jsonl`
//! into the chained audit table at its next start (docs/metrics.md "Audit trail").

use super::{AuditEvent, AuditSource};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file the daemon imports.
pub fn offline_audit_path(state_directory: &Path) -> PathBuf {
    state_directory.join("offline-audit.jsonl")
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    /// Unique per row (`<host>-<pid>-<nanoseconds>`): imported once.
    origin: String,
    at: DateTime<Utc>,
    uid: Option<u32>,
    gid: Option<u32>,
    pid: Option<i32>,
    user: Option<String>,
    action: String,
    job: Option<String>,
    result: String,
    #[serde(default)]
    detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineAuditError {
    #[error("offline audit file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("offline audit file {path}, line {line}: not an audit row: {source}")]
    Malformed {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

impl crate::error::Classify for OfflineAuditError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            OfflineAuditError::Io { source, .. } => crate::error::io_retry(source),
            OfflineAuditError::Malformed { .. } => crate::error::Retry::Permanent,
        }
    }
}

/// Appends `event` (its `origin` is set here when missing) to `path`, creating the file 0600 and
/// syncing it before returning.
pub fn append_offline_audit(path: &Path, event: &AuditEvent) -> Result<(), OfflineAuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| OfflineAuditError::Io {
        path: path.display().to_string(),
        source,
    };
    let origin = event.origin.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        format!("{host}-{}-{nanos}", std::process::id())
    });
    let line = Line {
        origin,
        at: event.at,
        uid: event.uid,
        gid: event.gid,
        pid: event.pid,
        user: event.user.clone(),
        action: event.action.clone(),
        job: event.job.clone(),
        result: event.result.clone(),
        detail: event.detail.clone(),
    };
    let mut text = serde_json::to_string(&line).map_err(|e| io(std::io::Error::other(e)))?;
    text.push('\n');
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The rows of `path` (None when there is no file).
pub fn read_offline_audit(path: &Path) -> Result<Option<Vec<AuditEvent>>, OfflineAuditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OfflineAuditError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut events = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line: Line =
            serde_json::from_str(raw).map_err(|source| OfflineAuditError::Malformed {
                path: path.display().to_string(),
                line: i + 1,
                source,
            })?;
        events.push(AuditEvent {
            at: line.at,
            uid: line.uid,
            gid: line.gid,
            pid: line.pid,
            user: line.user,
            action: line.action,
            allowed: true,
            detail: line.detail,
            job: line.job,
            result: line.result,
            source: AuditSource::Offline,
            origin: Some(line.origin),
        });
    }
    Ok(Some(events))
}
