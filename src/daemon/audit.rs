//! Where the daemon writes the audit trail (docs/metrics.md "Audit trail"): requests on the socket
//! with their result, the end of every run, every backup deleted by retention, SIGHUP reloads, and
//! the offline restores a ctl left in `<state-directory>/offline-audit.jsonl`, imported at start.

use super::core::Shared;
use crate::control::auth::Peer;
use crate::model::{RetentionReport, RunRecord};
use crate::protocol::{Reply, Request, Response};
use crate::state::{AuditEvent, AuditSource};

/// Writes one row; a failure is logged (the audit never fails the operation).
pub async fn record(shared: &Shared, event: AuditEvent) {
    if let Err(err) = shared.state.audit(&event).await {
        tracing::error!(action = %event.action, error = %err, "state DB: cannot write the audit row");
    }
}

/// A row of `peer`'s request.
pub fn from_peer(shared: &Shared, peer: &Peer, action: &str) -> AuditEvent {
    AuditEvent {
        at: shared.clock.now(),
        uid: Some(peer.uid),
        gid: Some(peer.gid),
        pid: peer.pid,
        user: peer.user.clone(),
        action: action.to_string(),
        allowed: true,
        source: AuditSource::Socket,
        ..AuditEvent::default()
    }
}

/// A row of the daemon's own work.
pub fn from_daemon(shared: &Shared, action: &str) -> AuditEvent {
    AuditEvent {
        at: shared.clock.now(),
        uid: Some(nix::unistd::getuid().as_raw()),
        gid: Some(nix::unistd::getgid().as_raw()),
        pid: i32::try_from(std::process::id()).ok(),
        user: Some("bdc-backupd".to_string()),
        action: action.to_string(),
        allowed: true,
        source: AuditSource::Daemon,
        ..AuditEvent::default()
    }
}

/// The job a request is about, if one.
pub fn job_of(request: &Request) -> Option<String> {
    match request {
        Request::Run { job, .. } => Some(job.clone()),
        Request::Retention { job, .. } => job.clone(),
        _ => None,
    }
}

/// `ok` or `failed: …` from a reply (a run started names its run id).
pub fn result_of(reply: &Reply) -> String {
    match reply {
        Reply::Ok(Response::RunStarted { run }) => format!("ok: run {}", run.id),
        Reply::Ok(Response::Retention { reports }) => {
            let deleted: usize = reports.iter().map(|r| r.deleted).sum();
            let failed = reports.iter().filter(|r| !r.errors.is_empty()).count();
            if failed == 0 {
                format!("ok: {deleted} deleted")
            } else {
                format!("failed: {failed} pass(es) with errors, {deleted} deleted")
            }
        }
        Reply::Ok(_) => "ok".to_string(),
        Reply::Error(e) => format!("failed: {}", e.message),
    }
}

/// The end of a run: action `backup` (or `verify` for a verify job), the run's status.
pub async fn run_finished(shared: &Shared, run: &RunRecord) {
    let action = if run.kind == crate::model::JobKindName::Verify {
        "verify"
    } else {
        "backup"
    };
    let mut event = from_daemon(shared, action);
    event.job = Some(run.job.clone());
    event.result = match &run.error {
        Some(e) if !run.status.is_success() => format!("{}: {}", run.status, truncate(e, 500)),
        _ => run.status.to_string(),
    };
    event.detail = format!(
        "run {} trigger {}{}",
        run.id,
        run.trigger,
        run.backup_id
            .as_deref()
            .map(|b| format!(" backup {b}"))
            .unwrap_or_default()
    );
    record(shared, event).await;
}

/// Every backup a real (not dry-run) retention pass deleted or failed to delete.
pub async fn retention(shared: &Shared, report: &RetentionReport, by: Option<&Peer>) {
    if report.dry_run {
        return;
    }
    for b in report
        .backups
        .iter()
        .filter(|b| b.action == crate::retention::Action::Delete)
    {
        let mut event = match by {
            Some(peer) => from_peer(shared, peer, "retention-delete"),
            None => from_daemon(shared, "retention-delete"),
        };
        event.job = Some(report.job.clone());
        event.result = match &b.error {
            Some(e) => format!("failed: {}", truncate(e, 500)),
            None => "deleted".to_string(),
        };
        event.detail = format!(
            "backup {} in repository {} ({} bytes)",
            b.id, report.repository, b.bytes_stored
        );
        record(shared, event).await;
    }
}

/// Imports the offline rows a ctl left (an offline restore), then removes the file. Each row
/// carries its own id, so an import interrupted before the removal is not doubled.
pub async fn import_offline(shared: &Shared) {
    let path = crate::state::offline_audit_path(&shared.catalogue().daemon.state_directory);
    let events = match crate::state::read_offline_audit(&path) {
        Ok(None) => return,
        Ok(Some(events)) => events,
        Err(err) => {
            tracing::error!(file = %path.display(), error = %err, "cannot import the offline audit rows");
            return;
        }
    };
    let n = events.len();
    for event in events {
        if let Err(err) = shared.state.audit(&event).await {
            tracing::error!(file = %path.display(), error = %err, "cannot import the offline audit rows; the file is kept");
            return;
        }
    }
    if let Err(err) = std::fs::remove_file(&path) {
        tracing::warn!(file = %path.display(), error = %err, "offline audit rows imported but the file could not be removed");
    }
    tracing::info!(file = %path.display(), rows = n, "imported offline audit rows");
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
