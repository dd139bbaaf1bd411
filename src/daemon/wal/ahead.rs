//! Ahead-of-time shipping (`ship-ahead` of the postgres-wal job): while PostgreSQL's archiver
//! pushes one file, `.ready` files after it are archived on spare upload slots, remembered with
//! the version of the file they were read from ([`FileId`]), so their own push only checks that
//! the file is unchanged.

use super::{Shared, WalSetup, prechecks, store_everywhere};
use crate::error::error_chain;
use crate::wal::push::recycle_object;
use crate::wal::{ClusterIdentity, WalName};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Ahead-of-time shipping uses at most this many upload slots at once (the others stay free for
/// PostgreSQL's own pushes).
pub(super) const SHIP_WORKERS: usize = 2;
/// A segment shipped ahead and never pushed is forgotten after this long (its object stays: the
/// push that comes finds it through the duplicate rules).
pub(super) const SHIPPED_KEEP: Duration = Duration::from_secs(3600);
/// Identifies one version of a file: PostgreSQL never changes a `.ready` segment, so the same
/// device, inode, size and modification time mean the same content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) size: u64,
    pub(super) mtime: i64,
    pub(super) mtime_nsec: i64,
}

impl FileId {
    pub(super) fn of(meta: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// A file archived ahead of its `wal-push`, durable in every sync repository of `setup`.
pub(super) struct Shipped {
    pub(super) id: FileId,
    pub(super) cluster: ClusterIdentity,
    pub(super) sha256: String,
    pub(super) key: String,
    pub(super) setup: Arc<WalSetup>,
    pub(super) at: Instant,
}

/// Ahead-of-time shipping: starts (unless one runs) a background task that archives up to
/// `ship-ahead` of the `.ready` files in `pg_wal/archive_status` other than `current`, on at most
/// [`SHIP_WORKERS`] spare upload slots, and remembers what it stored and from which file version.
pub(super) fn ship_ahead(
    shared: &Arc<Shared>,
    setup: &Arc<WalSetup>,
    current: &str,
    cluster: ClusterIdentity,
) {
    if shared.wal.scanning.swap(true, Ordering::AcqRel) {
        return;
    }
    let (shared, setup, current) = (shared.clone(), setup.clone(), current.to_string());
    tokio::spawn(async move {
        loop {
            if shared.shutdown.is_cancelled() {
                break;
            }
            let Some(pg_wal) = setup.pg_wal.clone() else {
                break;
            };
            let candidates = {
                let dir = pg_wal.join("archive_status");
                let ready = tokio::task::spawn_blocking(move || ready_files(&dir))
                    .await
                    .unwrap_or_default();
                // Shipped files no longer .ready were archived (or are gone): forget them.
                let pending = {
                    let mut shipped = shared.wal.shipped.lock().unwrap_or_else(|e| e.into_inner());
                    shipped.retain(|n, s| {
                        s.at.elapsed() < SHIPPED_KEEP && ready.binary_search(n).is_ok()
                    });
                    shipped.keys().cloned().collect::<HashSet<_>>()
                };
                let room = setup.ship_ahead.saturating_sub(pending.len());
                let busy = shared
                    .wal
                    .shipping
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                ready
                    .into_iter()
                    .filter(|n| {
                        *n != current
                            && !pending.contains(n)
                            && !busy.contains(n)
                            && !shared.wal.was_acked(n)
                    })
                    .take(room)
                    .collect::<Vec<_>>()
            };
            if candidates.is_empty() {
                break;
            }
            use futures::StreamExt;
            let shipped = futures::stream::iter(candidates)
                .map(|name| {
                    let (shared, setup, pg_wal) = (&shared, &setup, &pg_wal);
                    async move {
                        let Ok(permit) = shared.wal.slots.clone().try_acquire_owned() else {
                            return false;
                        };
                        let ok = ship_one(shared, setup, pg_wal, &name, cluster).await;
                        drop(permit);
                        ok
                    }
                })
                .buffer_unordered(SHIP_WORKERS)
                .fold(0usize, |n, ok| async move { n + usize::from(ok) })
                .await;
            if shipped == 0 {
                break;
            }
        }
        shared.wal.scanning.store(false, Ordering::Release);
    });
}

/// The WAL names of the `.ready` files in `dir`, sorted (PostgreSQL's archiving order within a
/// timeline); empty when the folder cannot be read.
fn ready_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_suffix(".ready")?.to_string();
            WalName::parse(&n).is_some().then_some(n)
        })
        .collect();
    out.sort();
    out
}

/// Archives one `.ready` file ahead of its push; true when it is durable in every sync repository
/// (then remembered with the version of the file it was read from).
async fn ship_one(
    shared: &Shared,
    setup: &Arc<WalSetup>,
    pg_wal: &Path,
    name: &str,
    cluster: ClusterIdentity,
) -> bool {
    let Some(wal_name) = WalName::parse(name) else {
        return false;
    };
    shared
        .wal
        .shipping
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string());
    let _same_name = shared.wal.name_lock(name).lock().await;
    let result = async {
        if shared.wal.was_acked(name)
            || shared
                .wal
                .shipped
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(name)
        {
            return Err("already archived or shipped".to_string());
        }
        let path = pg_wal.join(name);
        let seal_setup = setup.clone();
        let (id, wal, staged) = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            let before = file.metadata().map_err(|e| e.to_string())?;
            let (wal, staged) = seal_setup
                .seal(&file, &wal_name, &cluster)
                .map_err(|e| error_chain(&e))?;
            let after = file.metadata().map_err(|e| e.to_string())?;
            let id = FileId::of(&before);
            if id != FileId::of(&after) {
                return Err("the file changed while it was read".to_string());
            }
            Ok((id, wal, staged))
        })
        .await
        .map_err(|e| e.to_string())??;
        let checked = prechecks(setup, &cluster, &wal.name).await;
        let now = shared.clock.now();
        let stored = store_everywhere(setup, &cluster, &wal, checked, staged, now).await;
        let sha256 = wal.sha256.clone();
        recycle_object(wal.object);
        let (key, _) = stored?;
        shared
            .wal
            .shipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name.to_string(),
                Shipped {
                    id,
                    cluster,
                    sha256,
                    key,
                    setup: setup.clone(),
                    at: Instant::now(),
                },
            );
        // Durable in every sync repository: a base backup waiting for it may look now.
        crate::wal::push::note_durable();
        Ok(())
    }
    .await;
    shared
        .wal
        .shipping
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name);
    match result {
        Ok(()) => {
            tracing::debug!(wal = %name, "shipped ahead of its push");
            true
        }
        Err(e) => {
            tracing::debug!(wal = %name, error = %e, "not shipped ahead");
            false
        }
    }
}
