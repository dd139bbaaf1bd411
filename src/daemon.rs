//! The daemon: loads the catalogue, opens the state DB, reconciles it with the repositories, binds
//! the control socket, then runs the scheduler loop and the run executor until SIGTERM; SIGHUP
//! reloads the catalogue (an invalid one is rejected and the old one kept). Talks to systemd.

mod alerts;
pub mod args;
mod audit;
mod core;
mod handler;
pub mod logging;
mod metrics;
mod reconcile;
mod replicate;
mod retention;
mod scheduler;
mod stream;
pub mod systemd;
mod verify;
mod wal;
mod watch;

pub use self::core::StartError;

use crate::catalogue::{Catalogue, CatalogueErrors};
use crate::clock::{Clock, SystemClock};
use crate::state::{StateDb, StateError};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};

/// How to run the daemon.
pub struct DaemonOptions {
    pub catalogue: PathBuf,
    /// The scheduler's clock (tests inject a manual one).
    pub clock: Arc<dyn Clock>,
}

impl DaemonOptions {
    pub fn new(catalogue: PathBuf) -> Self {
        DaemonOptions {
            catalogue,
            clock: Arc::new(SystemClock),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the catalogue is invalid:\n{0}")]
    Catalogue(#[source] CatalogueErrors),
    #[error("{0}")]
    State(#[source] StateError),
    #[error("control socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    Metrics(#[source] std::io::Error),
}

/// Keeps the daemon's memory bounded under glibc: buffers of 4 MiB and more (16 MiB WAL
/// segments) are served by `mmap` and returned on free, and at most 4 malloc arenas exist. Without a fixed threshold glibc raises
/// its mmap threshold after the first large free, and from then on serves such buffers from
/// per-thread heaps that keep their peak size (we measured 140+ MiB resident after 60 WAL
/// pushes, against ~40 MiB with this). Call once, before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// `bdc-backupd --check`: validates the catalogue, returning every error.
pub fn check(path: &std::path::Path) -> Result<Catalogue, CatalogueErrors> {
    Catalogue::load(path)
}

/// Runs the daemon until SIGTERM/SIGINT; SIGHUP reloads. Logging must already be initialised.
pub async fn run(options: DaemonOptions, catalogue: Catalogue) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let daemon = start(options, catalogue).await?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                if let Err(errors) = daemon.reload().await {
                    tracing::error!("reload rejected, keeping the previous catalogue:\n{errors}");
                }
            }
        }
    }
    daemon.stop().await;
    Ok(())
}

/// A started daemon: socket bound, scheduler running.
pub struct RunningDaemon {
    shared: Arc<core::Shared>,
    socket: PathBuf,
    scheduler: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

/// Opens the state DB, reconciles, binds the socket, notifies READY and starts the scheduler.
pub async fn start(
    options: DaemonOptions,
    catalogue: Catalogue,
) -> Result<RunningDaemon, DaemonError> {
    let state = StateDb::open(&catalogue.daemon.state_db)
        .await
        .map_err(DaemonError::State)?;
    let socket = catalogue.daemon.socket.clone();
    let shared = core::Shared::new(options.catalogue.clone(), catalogue, state, options.clock);
    shared.remember_backup_ids().await;
    // Offline restores a ctl recorded while the daemon was down join the chained trail.
    audit::import_offline(&shared).await;

    // Runs left `running` are reconciled before READY when the repositories answer quickly (local
    // ones always do); a slow or unreachable cloud store must not hold the start past systemd's
    // timeout, so whatever is left is finished after READY.
    let reconciled = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reconcile::interrupted_runs(&shared),
    )
    .await
    .is_ok();

    let policy = shared.access_policy();
    let listener = crate::control::server::bind(&socket, policy.read_gid).map_err(|source| {
        DaemonError::Socket {
            path: socket.display().to_string(),
            source,
        }
    })?;
    let server = {
        let handler = Arc::new(handler::DaemonHandler::new(shared.clone()));
        let policy_rx = shared.policy_receiver();
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) =
                crate::control::server::serve(listener, handler, policy_rx, shutdown).await
            {
                tracing::error!(error = %err, "control socket server stopped");
            }
        })
    };

    metrics::start(&shared).map_err(DaemonError::Metrics)?;
    systemd::ready(&shared.status_line().await);
    tracing::info!(catalogue = %options.catalogue.display(), socket = %socket.display(), "bdc-backupd ready");

    // Reconcile with the repositories after READY: a cloud store that is slow or unreachable must
    // not hold the start past systemd's timeout. Runs left `running` first, then the backups table.
    {
        let shared = shared.clone();
        shared.tasks.clone().spawn(async move {
            if !reconciled {
                reconcile::interrupted_runs(&shared).await;
            }
            reconcile::backups(&shared).await;
        });
    }
    {
        let catalogue = shared.catalogue();
        shared
            .tasks
            .spawn(async move { verify::remove_leftovers(&catalogue).await });
    }
    tokio::spawn(replicate::run_loop(shared.clone()));
    tokio::spawn(wal::backlog_loop(shared.clone()));
    tokio::spawn(stream::supervise(shared.clone()));
    tokio::spawn(retention::run_loop(shared.clone()));
    tokio::spawn(watch::supervise(shared.clone()));
    tokio::spawn(alerts::run_loop(shared.clone()));
    tokio::spawn(alerts::delivery_loop(shared.clone()));
    let scheduler = tokio::spawn(scheduler::run_loop(shared.clone()));
    Ok(RunningDaemon {
        shared,
        socket,
        scheduler,
        server,
    })
}

impl RunningDaemon {
    /// Re-reads the catalogue (SIGHUP); an invalid one is rejected and the old one kept.
    pub async fn reload(&self) -> Result<usize, CatalogueErrors> {
        let result = self.shared.reload().await;
        let mut event = audit::from_daemon(&self.shared, "reload");
        event.detail = "SIGHUP".to_string();
        event.result = match &result {
            Ok(jobs) => format!("ok: {jobs} jobs"),
            Err(errors) => format!(
                "failed: the catalogue is invalid ({} errors)",
                errors.0.len()
            ),
        };
        audit::record(&self.shared, event).await;
        result
    }

    /// Wakes the scheduler loop (after a manual clock moved).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Evaluates health now (alert state changes become events), as the minute tick does.
    pub async fn evaluate_alerts(&self) {
        alerts::evaluate(&self.shared).await;
    }

    /// STOPPING=1, cancel running jobs (recorded as interrupted), wait for them, close the socket.
    pub async fn stop(self) {
        systemd::stopping();
        tracing::info!("stopping: cancelling running jobs");
        self.shared.shutdown_runs().await;
        self.shared.shutdown.cancel();
        let _ = self.scheduler.await;
        let _ = self.server.await;
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("bdc-backupd stopped");
    }
}
