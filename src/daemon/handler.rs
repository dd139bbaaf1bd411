//! The daemon's answers to control-socket requests.

use super::core::{Shared, StartError};
use crate::control::auth::Peer;
use crate::control::server::Handler;
use crate::protocol::{ErrorBody, ErrorCode, Event, Reply, Request, Response};
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

/// `retention`: each matching job and repository under the job's lock, skipping a job that is
/// busy (retention never overlaps its runs or replica copies); the state DB follows the deletions.
async fn retention(
    shared: &Arc<Shared>,
    peer: &Peer,
    job: Option<String>,
    repository: Option<String>,
    dry_run: bool,
) -> Reply {
    use crate::retention::{self, RetentionError, RetentionReport};
    let catalogue = shared.catalogue();
    let now = shared.clock.now();
    let targets = match retention::targets(&catalogue, job.as_deref(), repository.as_deref()) {
        Ok(t) => t,
        Err(err @ (RetentionError::UnknownJob(_) | RetentionError::UnknownRepository(_))) => {
            return error(ErrorCode::NotFound, err.to_string());
        }
        Err(err) => return error(ErrorCode::Internal, err.to_string()),
    };
    let mut reports = Vec::new();
    for (j, settings) in targets {
        let (policy, _) = retention::policy_of(&catalogue, j);
        // The job's lock: no run, replica copy or other retention pass of the job meanwhile.
        let lock = shared.job_lock(&j.name);
        let Ok(_guard) = lock.try_lock() else {
            let message = format!(
                "job `{}` is busy (a run or a replica copy); retention waits for it to finish",
                j.name
            );
            if job.is_some() {
                return error(ErrorCode::Conflict, message);
            }
            reports.push(RetentionReport::failed_pass(
                &j.name,
                &settings.name,
                policy,
                now,
                dry_run,
                message,
            ));
            continue;
        };
        let result = match crate::repository::Repository::open(settings) {
            Ok(repo) => retention::run_for_job(&catalogue, j, &repo, now, dry_run).await,
            Err(source) => Err(RetentionError::Open {
                repository: settings.name.clone(),
                source: Box::new(source),
            }),
        };
        let report = result.unwrap_or_else(|e| {
            RetentionReport::failed_pass(
                &j.name,
                &settings.name,
                policy,
                now,
                dry_run,
                crate::error::error_chain_of(&e),
            )
        });
        if let Err(err) = retention::record_in_state(&shared.state, &report).await {
            tracing::error!(job = %j.name, repository = %settings.name, error = %err, "state DB: cannot record the retention pass");
        }
        super::audit::retention(shared, &report, Some(peer)).await;
        reports.push(report);
    }
    retention::fit_reply(&mut reports, crate::protocol::MAX_LINE - 4096);
    Reply::Ok(Response::Retention { reports })
}

/// `audit`: the newest `limit` rows (default 1000) that fit in a reply line, oldest first; with
/// `verify` the whole chain is checked.
async fn audit_listing(
    shared: &Arc<Shared>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    job: Option<String>,
    limit: Option<u32>,
    verify: bool,
) -> Reply {
    let limit = limit.unwrap_or(1000).clamp(1, 100_000);
    let mut rows = match shared.state.audit_rows(since, job.as_deref(), limit).await {
        Ok(rows) => rows,
        Err(err) => return error(ErrorCode::Internal, err.to_string()),
    };
    let chain = if verify {
        match shared.state.verify_audit().await {
            Ok(report) => Some(report),
            Err(err) => return error(ErrorCode::Internal, err.to_string()),
        }
    } else {
        None
    };
    let truncated = crate::model::fit_audit_rows(&mut rows, crate::protocol::MAX_LINE - 8192);
    Reply::Ok(Response::Audit {
        rows,
        truncated,
        chain,
    })
}

impl Handler for DaemonHandler {
    /// Answers; a mutation is audited with its result here (the server's hook before it only
    /// records denials, see [`Handler::audit`] below).
    async fn handle(&self, peer: &Peer, request: Request) -> Reply {
        if !request.is_mutation() {
            return self.answer(peer, request).await;
        }
        let mut event = super::audit::from_peer(&self.shared, peer, request.verb());
        event.job = super::audit::job_of(&request);
        event.detail = serde_json::to_string(&request).unwrap_or_default();
        let reply = self.answer(peer, request).await;
        event.result = super::audit::result_of(&reply);
        super::audit::record(&self.shared, event).await;
        reply
    }

    async fn wal_push(
        &self,
        peer: &Peer,
        name: String,
        cluster: crate::wal::ClusterIdentity,
        file: std::fs::File,
    ) -> Reply {
        super::wal::push(&self.shared, peer, name, cluster, file).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Denied requests; allowed mutations are recorded by `handle` once their result is known.
    async fn audit(&self, peer: &Peer, request: &Request, allowed: bool, detail: &str) {
        if allowed {
            return;
        }
        let mut event = super::audit::from_peer(&self.shared, peer, request.verb());
        event.allowed = false;
        event.job = super::audit::job_of(request);
        event.result = "denied".to_string();
        event.detail = detail.to_string();
        super::audit::record(&self.shared, event).await;
    }
}

impl DaemonHandler {
    async fn answer(&self, peer: &Peer, request: Request) -> Reply {
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
            Request::Verify {
                job,
                integrity_only,
                drill_only,
                backup,
                ..
            } => {
                let scope = crate::verify::run::Scope {
                    job,
                    integrity: !drill_only,
                    drills: !integrity_only,
                    backup,
                };
                match shared.start_verify(scope).await {
                    Ok(run) => Reply::Ok(Response::RunStarted { run }),
                    Err(err @ StartError::UnknownJob(_)) => {
                        error(ErrorCode::NotFound, err.to_string())
                    }
                    Err(err @ StartError::State { .. }) => {
                        error(ErrorCode::Internal, err.to_string())
                    }
                    Err(err) => error(ErrorCode::Conflict, err.to_string()),
                }
            }
            Request::Show { run_id } => match shared.state.run(run_id).await {
                Ok(None) => error(
                    ErrorCode::NotFound,
                    format!("no run {run_id} in the state DB"),
                ),
                Ok(Some(run)) => match shared.state.checks_of_run(run_id).await {
                    Ok(checks) => {
                        let provenance = match &run.backup_id {
                            Some(id) => {
                                let catalogue = shared.catalogue();
                                crate::dr::provenance::of_backup(&catalogue, &run.job, id)
                                    .await
                                    .map(Box::new)
                            }
                            None => None,
                        };
                        Reply::Ok(Response::RunDetail(crate::model::RunDetail {
                            run: Some(run),
                            checks,
                            provenance,
                        }))
                    }
                    Err(err) => error(ErrorCode::Internal, err.to_string()),
                },
                Err(err) => error(ErrorCode::Internal, err.to_string()),
            },
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
            Request::Retention {
                job,
                repository,
                dry_run,
            } => retention(shared, peer, job, repository, dry_run).await,
            Request::Usage { job, weeks } => {
                let rows = shared.state.backups(job.as_deref(), None).await;
                let runs = shared.state.runs(job.as_deref(), 100_000).await;
                match (rows, runs) {
                    (Ok(rows), Ok(runs)) => {
                        let catalogue = shared.catalogue();
                        let mut report = crate::usage::compute(
                            &catalogue,
                            &rows,
                            Some(&runs),
                            shared.clock.now(),
                            weeks.unwrap_or(crate::usage::DEFAULT_WEEKS),
                        );
                        crate::usage::fill_capacity(&mut report, &catalogue);
                        Reply::Ok(Response::Usage(report))
                    }
                    (Err(err), _) | (_, Err(err)) => error(ErrorCode::Internal, err.to_string()),
                }
            }
            Request::Alerts { limit } => {
                match super::alerts::report(shared, limit.unwrap_or(20).min(1000)).await {
                    Ok(report) => Reply::Ok(Response::Alerts(report)),
                    Err(err) => error(ErrorCode::Internal, err.to_string()),
                }
            }
            Request::AlertTest { sink } => {
                let catalogue = shared.catalogue();
                if let Some(name) = &sink
                    && !catalogue.alerts.iter().any(|s| &s.name == name)
                {
                    let known: Vec<&str> =
                        catalogue.alerts.iter().map(|s| s.name.as_str()).collect();
                    return error(
                        ErrorCode::NotFound,
                        format!(
                            "no [[alert]] is named `{name}`; sinks: {}",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
                if catalogue.alerts.is_empty() {
                    return error(
                        ErrorCode::NotFound,
                        "the catalogue has no [[alert]] sink to test",
                    );
                }
                let event = crate::events::NewEvent::new(
                    crate::model::alerts::EventKind::AlertTest,
                    format!("test event requested by {}", who(peer)),
                );
                let only = sink.map(|s| vec![s]);
                let sinks = super::alerts::emit(shared, event, only.as_deref()).await;
                Reply::Ok(Response::AlertTestQueued { sinks })
            }
            Request::Metrics => match super::metrics::scrape(shared).await {
                Ok(text) => Reply::Ok(Response::Metrics { text }),
                Err(err) => error(ErrorCode::Internal, err),
            },
            Request::Audit {
                since,
                job,
                limit,
                verify,
            } => audit_listing(shared, since, job, limit, verify).await,
            Request::AuditReport {
                action,
                job,
                result,
                detail,
            } => {
                let mut event = super::audit::from_peer(shared, peer, &action);
                event.job = job;
                event.result = result;
                event.detail = detail;
                match shared.state.audit(&event).await {
                    Ok(id) => Reply::Ok(Response::AuditRecorded { id }),
                    Err(err) => error(ErrorCode::Internal, err.to_string()),
                }
            }
            #[allow(unreachable_patterns)]
            other => error(
                ErrorCode::BadRequest,
                format!("request `{}` is not supported", other.verb()),
            ),
        }
    }
}
