//! The daemon's answers to control-socket requests.

use super::core::{Shared, StartError};
use crate::control::auth::Peer;
use crate::control::server::Handler;
use crate::protocol::{ErrorBody, ErrorCode, Event, Reply, Request, Response};
use crate::state::AuditEvent;
use std::sync::Arc;

pub struct DaemonHandler {
    shared: Arc<Shared>,
}

impl DaemonHandler {
    pub fn new(shared: Arc<Shared>) -> Self {
        DaemonHandler { shared }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error(ErrorBody {
        code,
        message: message.into(),
    })
}

fn who(peer: &Peer) -> String {
    match &peer.user {
        Some(user) => format!("{user} (uid {})", peer.uid),
        None => format!("uid {}", peer.uid),
    }
}

impl Handler for DaemonHandler {
    async fn handle(&self, peer: &Peer, request: Request) -> Reply {
        let shared = &self.shared;
        match request {
            Request::Status => match shared.status_report().await {
                Ok(report) => Reply::Ok(Response::Status(report)),
                Err(err) => error(ErrorCode::Internal, err.to_string()),
            },
            Request::Runs { job, limit } => {
                let limit = limit.unwrap_or(20).clamp(1, 100_000);
                match shared.state.runs(job.as_deref(), limit).await {
                    Ok(runs) => Reply::Ok(Response::Runs { runs }),
                    Err(err) => error(ErrorCode::Internal, err.to_string()),
                }
            }
            Request::Backups { job, repository } => {
                match shared
                    .state
                    .backups(job.as_deref(), repository.as_deref())
                    .await
                {
                    Ok(backups) => Reply::Ok(Response::Backups { backups }),
                    Err(err) => error(ErrorCode::Internal, err.to_string()),
                }
            }
            Request::Run {
                job, backup_type, ..
            } => {
                match shared
                    .start_run(&job, backup_type, crate::model::Trigger::Manual)
                    .await
                {
                    Ok(run) => Reply::Ok(Response::RunStarted { run }),
                    Err(err @ StartError::UnknownJob(_)) => {
                        error(ErrorCode::NotFound, err.to_string())
                    }
                    Err(err @ StartError::AlreadyRunning { .. }) => {
                        error(ErrorCode::Conflict, err.to_string())
                    }
                    Err(err @ StartError::NotRunnable { .. }) => {
                        error(ErrorCode::Conflict, err.to_string())
                    }
                    Err(err @ StartError::Stopping) => error(ErrorCode::Conflict, err.to_string()),
                    Err(err) => error(ErrorCode::Internal, err.to_string()),
                }
            }
            Request::Cancel { run_id } => {
                if shared.cancel_run(run_id, &who(peer)).await {
                    Reply::Ok(Response::Cancelled { run_id })
                } else {
                    error(ErrorCode::NotFound, format!("run {run_id} is not running"))
                }
            }
            Request::Reload => match shared.reload().await {
                Ok(jobs) => Reply::Ok(Response::Reloaded { jobs }),
                Err(errors) => error(
                    ErrorCode::Conflict,
                    format!("the catalogue is invalid; the previous one stays in force:\n{errors}"),
                ),
            },
            Request::Follow => Reply::Ok(Response::Following),
            #[allow(unreachable_patterns)]
            other => error(
                ErrorCode::BadRequest,
                format!("request `{}` is not supported", other.verb()),
            ),
        }
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    async fn audit(&self, peer: &Peer, request: &Request, allowed: bool, detail: &str) {
        let event = AuditEvent {
            at: self.shared.clock.now(),
            uid: Some(peer.uid),
            gid: Some(peer.gid),
            pid: peer.pid,
            user: peer.user.clone(),
            action: request.verb().to_string(),
            allowed,
            detail: detail.to_string(),
        };
        if let Err(err) = self.shared.state.audit(&event).await {
            tracing::error!(error = %err, "state DB: cannot write the audit event");
        }
    }
}
