//! `restore cluster --start`: starting the restored server with `pg_ctl` (as the data
//! directory's owner when run as root) and waiting until recovery ends or pauses.

use super::{ClusterRestoreError, ClusterRestoreOptions, RecoveryPoint};
use crate::catalogue::Catalogue;
use crate::postgres::base_record::BaseBackupInfo;
use crate::postgres::connection::PgControl;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn pg_ctl_path(catalogue: &Catalogue, major: u32) -> PathBuf {
    if let Some(dir) = catalogue.postgres.as_ref().and_then(|p| p.bin_dir.as_ref()) {
        return dir.join("pg_ctl");
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/pg_ctl"));
    if debian.exists() {
        debian
    } else {
        PathBuf::from("pg_ctl")
    }
}

/// The last lines of the startup log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n    ")
}

pub(super) async fn start_and_wait(
    catalogue: &Catalogue,
    dir: &Path,
    port: u16,
    info: &BaseBackupInfo,
    o: &ClusterRestoreOptions,
    uid: u32,
) -> Result<RecoveryPoint, ClusterRestoreError> {
    let pg_ctl = pg_ctl_path(catalogue, info.cluster.pg_major);
    let log = dir.join("bdc-restore-start.log");
    let mut cmd = if nix::unistd::geteuid().is_root() && uid != 0 {
        let user = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .ok_or_else(|| ClusterRestoreError::Start {
                reason: format!("the data directory's owner (uid {uid}) has no user name"),
            })?;
        let mut c = tokio::process::Command::new("runuser");
        c.args(["-u", &user.name, "--"]).arg(&pg_ctl);
        c
    } else {
        tokio::process::Command::new(&pg_ctl)
    };
    cmd.arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "3600", "-o"])
        .arg(format!("-p {port}"))
        .arg("start")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if o.low_priority {
        crate::postgres::process::low_priority(&mut cmd);
    }
    let out = cmd.output().await.map_err(|e| ClusterRestoreError::Start {
        reason: format!("running {}: {e}", pg_ctl.display()),
    })?;
    if !out.status.success() {
        return Err(ClusterRestoreError::Start {
            reason: format!(
                "the server stopped during startup or recovery; recovery did not finish and the cluster was not promoted (pg_ctl {}: {}); server log {}:\n    {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                log.display(),
                log_tail(&log)
            ),
        });
    }
    let pg = catalogue.postgres.as_ref();
    let url = catalogue
        .job(&o.job)
        .and_then(|j| j.connection.clone())
        .or_else(|| pg.map(|p| p.url.clone()))
        .ok_or_else(|| ClusterRestoreError::Recovery {
            reason: "no [postgres] url to connect with".into(),
        })?;
    let password_file = pg.and_then(|p| p.password_file.as_deref());
    let pause = o.target_action.as_deref() == Some("pause");
    let mut failures = 0;
    loop {
        let pid_gone = !dir.join("postmaster.pid").exists();
        match poll(&url, password_file, port, o.socket_dir.as_deref(), pause).await {
            Ok(Some(point)) => return Ok(point),
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                if pid_gone || failures > 30 {
                    return Err(ClusterRestoreError::Recovery {
                        reason: format!(
                            "the server stopped or cannot be reached during recovery ({e}); server log {}:\n    {}",
                            log.display(),
                            log_tail(&log)
                        ),
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One look at the recovering server: Some(point) when recovery ended (or paused).
async fn poll(
    url: &str,
    password_file: Option<&Path>,
    port: u16,
    socket: Option<&Path>,
    pause: bool,
) -> Result<Option<RecoveryPoint>, String> {
    let connected = match socket {
        Some(dir) => PgControl::connect_socket(url, password_file, dir, port).await,
        None => PgControl::connect_port(url, password_file, port).await,
    };
    let mut pg = connected.map_err(|e| crate::error::error_chain_of(&e))?;
    let q = |e: sqlx::Error| e.to_string();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(pg.conn())
        .await
        .map_err(q)?;
    let paused = if in_recovery && pause {
        sqlx::query_scalar::<_, bool>("SELECT pg_is_wal_replay_paused()")
            .fetch_one(pg.conn())
            .await
            .map_err(q)?
    } else {
        false
    };
    if in_recovery && !paused {
        pg.close().await;
        return Ok(None);
    }
    let (lsn, ts): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()::text",
    )
    .fetch_one(pg.conn())
    .await
    .map_err(q)?;
    let timeline: Option<i64> = if in_recovery {
        sqlx::query_scalar("SELECT timeline_id::bigint FROM pg_control_checkpoint()")
            .fetch_one(pg.conn())
            .await
            .map_err(q)?
    } else {
        let name: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")
            .fetch_one(pg.conn())
            .await
            .map_err(q)?;
        i64::from_str_radix(name.get(..8).unwrap_or(""), 16).ok()
    };
    pg.close().await;
    Ok(Some(RecoveryPoint {
        replay_lsn: lsn,
        last_transaction: ts,
        timeline: timeline.map(|t| t as u32),
        in_recovery,
        port,
    }))
}
