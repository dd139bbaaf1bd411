//! The WAL stream supervisor (issue 12, docs/design.md §5): with `stream = true` on the
//! postgres-wal job the daemon runs `pg_receivewal --no-loop` on a physical slot as its child
//! (killed with the daemon), restarts it with backoff, pushes every completed spool file through
//! the archiver's own push path (deleted from the spool only once durable), ships the growing
//! `.partial` to the sync repositories every `partial-interval`, and judges liveness by the
//! receiver's flush position against the server's — a vanished slot or a gap below the slot's
//! `restart_lsn` is an error in `status` (and a `wal-failing` alert), not a restart loop.

use super::core::Shared;
use crate::catalogue::Compression;
use crate::catalogue::{Catalogue, JobSpec, WalStream};
use crate::model::WalStreamStatus;
use crate::postgres::connection::PgControl;
use crate::stream::{Backoff, SpoolFile, classify, push_order, starts_below_slot};
use crate::wal::name::{format_lsn, parse_lsn};
use crate::wal::partial::{
    PartialSealer, SpoolPartial, partial_of, remove_partials, store_partial,
};
use crate::wal::push::{ensure_archive_info, seal, stored_hashes};
use crate::wal::{ClusterIdentity, WalKind, WalName};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

mod liveness;
mod spool;
use spool::spool_names;

/// The spool folder under the state directory.
pub const SPOOL_DIR: &str = "wal-stream";
/// A receiver that stayed up this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often the spool is scanned and liveness asked of the server.
const TICK: Duration = Duration::from_secs(1);
const LIVENESS_EVERY: Duration = Duration::from_secs(2);
/// While in error (slot gone, WAL gone), conditions are checked again this often.
const FAILED_RECHECK: Duration = Duration::from_secs(10);
const STORE_TIMEOUT: Duration = super::wal::STORE_TIMEOUT;
/// A spool file whose push failed is tried again after this long.
const PUSH_RETRY: Duration = Duration::from_secs(5);
/// The zstd (or gzip) level of shipped `.partial` objects: each lives only until the next one.
const PARTIAL_LEVEL: i32 = 1;

/// What the supervisor shows (`status`, metrics); shared with the archiver.
#[derive(Default)]
pub struct StreamHub {
    status: std::sync::Mutex<Option<WalStreamStatus>>,
}

impl StreamHub {
    /// The current streaming status (None when streaming is off).
    pub fn status(&self) -> Option<WalStreamStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut WalStreamStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(s.get_or_insert_with(WalStreamStatus::default))
    }

    fn clear(&self) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn stream_settings(c: &Catalogue) -> Option<(String, WalStream)> {
    let job = super::wal::wal_job(c)?;
    match &job.spec {
        JobSpec::PostgresWal(w) => w.stream.clone().map(|s| (job.name.clone(), s)),
        _ => None,
    }
}

/// The supervisor's task: runs for the daemon's life, following reloads.
pub async fn supervise(shared: Arc<Shared>) {
    loop {
        let catalogue = shared.catalogue();
        match stream_settings(&catalogue) {
            Some((job, settings)) => {
                Generation::new(shared.clone(), catalogue, job, settings)
                    .run()
                    .await
            }
            None => {
                shared.wal.stream.clear();
                tokio::select! {
                    _ = shared.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
        }
        if shared.shutdown.is_cancelled() {
            return;
        }
    }
}

/// Why a receiver cannot start.
enum Blocked {
    /// Retry with backoff (server down, connection refused, …).
    Transient(String),
    /// An error for the operator (slot vanished, WAL gone): no restart until it is resolved.
    Fatal(String),
}

/// What one run of the receiver needs.
struct Prepared {
    cluster: ClusterIdentity,
    segment_size: u64,
    receiver: PathBuf,
}

/// One catalogue generation of the supervisor.
struct Generation {
    shared: Arc<Shared>,
    catalogue: Arc<Catalogue>,
    job: String,
    settings: WalStream,
    spool: PathBuf,
    /// The slot was seen (or created) by this generation: its disappearance is an error.
    slot_seen: bool,
    /// The `.partial` last shipped: (name, the bytes of WAL it held).
    shipped: Option<(String, u64)>,
    /// The sealed frames of the `.partial` being shipped (only new WAL is compressed).
    sealer: Option<PartialSealer>,
    /// Timelines whose `.history` is durable in every sync repository.
    durable_histories: BTreeSet<u32>,
    last_ship: Instant,
    /// The end of the newest durable WAL in the sync repositories.
    durable_lsn: Option<u64>,
    /// The last push or ship of a spool file failed (why); pushes wait for `retry_at`.
    push_failing: Option<String>,
    retry_at: Option<Instant>,
    /// The liveness check's connection, kept between checks (one session, not one every
    /// check: no backend start and no `log_connections` lines every 2 s); dropped on any error.
    liveness_conn: Option<PgControl>,
}

impl Generation {
    fn new(
        shared: Arc<Shared>,
        catalogue: Arc<Catalogue>,
        job: String,
        settings: WalStream,
    ) -> Generation {
        let spool = catalogue.daemon.state_directory.join(SPOOL_DIR);
        Generation {
            shared,
            catalogue,
            job,
            settings,
            spool,
            slot_seen: false,
            shipped: None,
            sealer: None,
            durable_histories: BTreeSet::new(),
            last_ship: Instant::now(),
            durable_lsn: None,
            push_failing: None,
            retry_at: None,
            liveness_conn: None,
        }
    }

    fn hub(&self) -> &StreamHub {
        &self.shared.wal.stream
    }

    /// The catalogue was replaced or the daemon stops.
    fn over(&self) -> bool {
        self.shared.shutdown.is_cancelled()
            || !Arc::ptr_eq(&self.shared.catalogue(), &self.catalogue)
    }

    async fn pause(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while Instant::now() < deadline && !self.over() {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK.min(deadline.saturating_duration_since(Instant::now()))) => {}
            }
        }
    }

    async fn run(mut self) {
        let slot = self.settings.slot.clone();
        self.hub().update(|s| {
            *s = WalStreamStatus {
                state: "starting".into(),
                slot: slot.clone(),
                ..Default::default()
            }
        });
        if let Err(e) = std::fs::create_dir_all(&self.spool).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.spool, std::fs::Permissions::from_mode(0o700))
        }) {
            let msg = format!("cannot create the spool {}: {e}", self.spool.display());
            tracing::error!(job = %self.job, "{msg}");
            self.fail(msg);
            self.pause(FAILED_RECHECK).await;
            return;
        }
        let mut backoff = Backoff::default();
        while !self.over() {
            match self.prepare().await {
                Err(Blocked::Transient(e)) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(job = %self.job, error = %e, wait_s = wait.as_secs(), "WAL stream cannot start");
                    self.hub().update(|s| {
                        s.state = "retrying".into();
                        s.error = Some(e);
                    });
                    self.pause(wait).await;
                }
                Err(Blocked::Fatal(e)) => {
                    tracing::error!(job = %self.job, error = %e, "WAL stream stopped");
                    self.fail(e);
                    self.pause(FAILED_RECHECK).await;
                }
                Ok(p) => {
                    // Files a previous receiver completed are pushed before it starts again.
                    self.drain(&p).await;
                    let started = Instant::now();
                    let ended = self.run_receiver(&p).await;
                    if self.over() {
                        break;
                    }
                    self.drain(&p).await;
                    if started.elapsed() >= HEALTHY_RUN {
                        backoff.reset();
                    }
                    let wait = backoff.next_wait();
                    tracing::warn!(job = %self.job, ended = %ended, wait_s = wait.as_secs(), "pg_receivewal ended; restarting");
                    self.hub().update(|s| {
                        s.restarts += 1;
                        s.state = "restarting".into();
                        s.receiver_pid = None;
                        s.error = Some(format!("pg_receivewal ended: {ended}"));
                    });
                    self.pause(wait).await;
                }
            }
        }
        if let Some(c) = self.liveness_conn.take() {
            c.close().await;
        }
        self.hub().update(|s| {
            s.state = "stopped".into();
            s.receiver_pid = None;
        });
    }

    fn fail(&self, e: String) {
        self.hub().update(|s| {
            s.state = "failed".into();
            s.error = Some(e);
            s.receiver_pid = None;
        });
    }

    async fn connect(&self) -> Result<PgControl, String> {
        let pg = self
            .catalogue
            .postgres
            .as_ref()
            .ok_or("streaming needs the catalogue's [postgres] url")?;
        let url = super::wal::wal_job(&self.catalogue)
            .and_then(|j| j.connection.clone())
            .unwrap_or_else(|| pg.url.clone());
        PgControl::connect(&url, pg.password_file.as_deref())
            .await
            .map_err(|e| crate::error::error_chain(&e))
    }

    /// Connects, identifies the cluster, checks (or creates) the slot and the continuity rule.
    async fn prepare(&mut self) -> Result<Prepared, Blocked> {
        let mut c = self.connect().await.map_err(Blocked::Transient)?;
        let q = |e: sqlx::Error| Blocked::Transient(e.to_string());
        let (sysid, seg_size): (i64, i32) = sqlx::query_as(
            "SELECT system_identifier, (SELECT setting::int FROM pg_settings WHERE name = 'wal_segment_size') FROM pg_control_system()",
        )
        .fetch_one(c.conn())
        .await
        .map_err(q)?;
        let version = c
            .server_version_num()
            .await
            .map_err(|e| Blocked::Transient(e.to_string()))?;
        let cluster = ClusterIdentity {
            system_identifier: sysid as u64,
            pg_major: crate::postgres::binaries::major_of(version),
        };
        let segment_size = seg_size as u64;
        let slot = self.settings.slot.clone();
        let found: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'physical'",
        )
        .bind(&slot)
        .fetch_optional(c.conn())
        .await
        .map_err(q)?;
        let restart_lsn = match found {
            Some((lsn,)) => lsn,
            None if self.slot_seen => {
                c.close().await;
                return Err(Blocked::Fatal(format!(
                    "the replication slot `{slot}` vanished while streaming: WAL may have been removed from the server before it was archived. Check the archive's continuity, then create the slot again (SELECT pg_create_physical_replication_slot('{slot}', true)) or restart the daemon"
                )));
            }
            None => {
                let (lsn,): (Option<String>,) = sqlx::query_as(
                    "SELECT lsn::text FROM pg_create_physical_replication_slot($1, true)",
                )
                .bind(&slot)
                .fetch_one(c.conn())
                .await
                .map_err(|e| {
                    Blocked::Fatal(format!("cannot create the replication slot `{slot}`: {e}"))
                })?;
                tracing::warn!(
                    job = %self.job,
                    slot = %slot,
                    "created the physical replication slot `{slot}`: the server now keeps WAL until the receiver has it — set max_slot_wal_keep_size so a receiver that stays down cannot fill pg_wal (the slot is then invalidated, which this daemon reports)"
                );
                lsn
            }
        };
        self.slot_seen = true;
        c.close().await;
        // Continuity: the receiver resumes at the newest spool file, else after the newest
        // archived segment; the slot must still hold WAL from there.
        if let (Some(restart), Some(resume)) = (
            restart_lsn.as_deref().and_then(parse_lsn),
            self.resume_position(segment_size).await,
        ) {
            let seg_start = |l: u64| l - l % segment_size;
            if starts_below_slot(resume, seg_start(restart)) {
                return Err(Blocked::Fatal(format!(
                    "WAL from {} to {} is gone: the slot `{slot}` starts at {} (restart_lsn) but the archive needs WAL from {}; take a new base backup",
                    format_lsn(resume),
                    format_lsn(seg_start(restart)),
                    format_lsn(restart),
                    format_lsn(resume)
                )));
            }
        } else if restart_lsn.is_none() {
            return Err(Blocked::Fatal(format!(
                "the replication slot `{slot}` keeps no WAL (restart_lsn is null: invalidated by max_slot_wal_keep_size?); WAL may be missing from the archive"
            )));
        }
        let receiver = self.receiver(version).await.map_err(Blocked::Fatal)?;
        Ok(Prepared {
            cluster,
            segment_size,
            receiver,
        })
    }

    /// Where the receiver will resume: the start of the newest spool file, else the end of the
    /// newest segment the archiver recorded.
    async fn resume_position(&self, segment_size: u64) -> Option<u64> {
        let start = |w: &WalName| {
            let per_log = 0x1_0000_0000u64 / segment_size;
            (u64::from(w.log) * per_log + u64::from(w.seg)) * segment_size
        };
        let spool_newest = spool_names(&self.spool)
            .iter()
            .filter_map(|n| match classify(n) {
                SpoolFile::Complete(w) | SpoolFile::Partial(w) if w.kind != WalKind::History => {
                    Some(start(&w))
                }
                _ => None,
            })
            .max();
        if spool_newest.is_some() {
            return spool_newest;
        }
        let last = self.shared.state.last_wal(&self.job).await.ok()??;
        let w = WalName::parse(&last.name)?;
        (w.kind == WalKind::Segment).then(|| start(&w) + segment_size)
    }

    async fn receiver(&self, version: u32) -> Result<PathBuf, String> {
        if let Some(p) = &self.settings.receiver_path {
            return Ok(p.clone());
        }
        let bin_dir = self
            .catalogue
            .postgres
            .as_ref()
            .and_then(|p| p.bin_dir.clone());
        let found = crate::postgres::binaries::PgBinaries::find(bin_dir.as_deref(), version)
            .await
            .map_err(|e| e.to_string())?;
        let dir = found
            .pg_dump
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let p = dir.join("pg_receivewal");
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "no pg_receivewal beside {} (set receiver-path)",
                found.pg_dump.display()
            ))
        }
    }

    /// Runs the receiver until it exits (or the generation ends); returns how it ended.
    async fn run_receiver(&mut self, p: &Prepared) -> String {
        let pg = self.catalogue.postgres.clone();
        let url = super::wal::wal_job(&self.catalogue)
            .and_then(|j| j.connection.clone())
            .or_else(|| pg.as_ref().map(|p| p.url.clone()))
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&p.receiver);
        cmd.arg("--no-loop")
            .arg("--slot")
            .arg(&self.settings.slot)
            .arg("--directory")
            .arg(&self.spool)
            .arg("--status-interval=1")
            .arg("--dbname")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if self.settings.synchronous {
            cmd.arg("--synchronous");
        }
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            cmd.env(
                "PGCONNECT_TIMEOUT",
                crate::postgres::process::TOOL_CONNECT_TIMEOUT,
            );
        }
        // Killed with the daemon, even by SIGKILL.
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let _passfile = match pg.as_ref().and_then(|p| p.password_file.clone()) {
            Some(path) => {
                let made = crate::postgres::connection::read_password_file(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|pw| {
                        crate::postgres::process::PassFile::create(&self.spool, &pw)
                            .map_err(|e| e.to_string())
                    });
                match made {
                    Ok(f) => {
                        f.apply(&mut cmd);
                        Some(f)
                    }
                    Err(e) => return format!("cannot hand over the password: {e}"),
                }
            }
            None => None,
        };
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return format!("cannot start {}: {e}", p.receiver.display()),
        };
        let pid = child.id();
        tracing::info!(job = %self.job, pid, slot = %self.settings.slot, "pg_receivewal started");
        if let Some(err) = child.stderr.take() {
            let job = self.job.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(job = %job, "pg_receivewal: {line}");
                }
            });
        }
        self.hub().update(|s| {
            s.state = "streaming".into();
            s.receiver_pid = pid;
            s.error = None;
        });
        let mut tick = tokio::time::interval(TICK);
        let mut last_liveness = Instant::now() - LIVENESS_EVERY;
        loop {
            tokio::select! {
                r = child.wait() => {
                    return match r {
                        Ok(s) => s.to_string(),
                        Err(e) => format!("waiting for it failed: {e}"),
                    };
                }
                _ = tick.tick() => {}
            }
            if self.over() {
                let _ = child.kill().await;
                return "stopped".into();
            }
            self.drain(p).await;
            self.clean_replaced_partials(p).await;
            if self.last_ship.elapsed() >= self.settings.partial_interval {
                self.last_ship = Instant::now();
                self.ship_partial(p).await;
            }
            if last_liveness.elapsed() >= LIVENESS_EVERY {
                last_liveness = Instant::now();
                self.liveness().await;
            }
        }
    }
}
