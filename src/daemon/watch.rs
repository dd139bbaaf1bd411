//! Watched `config` jobs (`watch = true`): one inotify watcher per job on the folders its paths
//! and globs can match in ([`crate::files::watch`]), whose debounced changes (or full checks after
//! an overflow or a replaced folder) start a run (trigger `change`), so a change is stored within
//! seconds; the periodic schedule still runs. Watchers are rebuilt on reload.

use super::core::{Shared, StartError};
use crate::catalogue::JobSpec;
use crate::model::Trigger;
use crate::protocol::Event;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Changes closer together than this make one run.
const DEBOUNCE: Duration = Duration::from_secs(2);

fn spawn_watchers(shared: &Arc<Shared>, tx: &mpsc::Sender<String>) -> CancellationToken {
    let token = shared.shutdown.child_token();
    for job in &shared.catalogue().jobs {
        if let JobSpec::Config(spec) = &job.spec
            && spec.watch
        {
            let (name, paths, tx, cancel) = (
                job.name.clone(),
                spec.paths.clone(),
                tx.clone(),
                token.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) =
                    crate::files::watch::watch_config(name.clone(), paths, DEBOUNCE, tx, cancel)
                        .await
                {
                    tracing::warn!(job = %name, "cannot watch the config files (the schedule still checks them): {e}");
                }
            });
        }
    }
    token
}

/// Runs until shutdown: keeps the watchers in line with the catalogue and starts runs on changes.
pub async fn supervise(shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::channel::<String>(64);
    let mut events = shared.events.subscribe();
    let mut watchers = spawn_watchers(&shared, &tx);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            event = events.recv() => {
                if let Ok(Event::Reloaded { .. }) = event {
                    watchers.cancel();
                    watchers = spawn_watchers(&shared, &tx);
                }
            }
            Some(job) = rx.recv() => {
                // A run already going may have read the files before the change: try again
                // after it (bounded), rather than dropping the change.
                let shared = shared.clone();
                tokio::spawn(async move {
                    for _ in 0..60 {
                        match shared.start_run(&job, None, Trigger::Change).await {
                            Err(StartError::AlreadyRunning { .. }) => tokio::time::sleep(Duration::from_secs(5)).await,
                            Err(e) => {
                                tracing::warn!(job = %job, "change noticed, run not started: {e}");
                                return;
                            }
                            Ok(_) => return,
                        }
                    }
                });
            }
        }
    }
    watchers.cancel();
}
