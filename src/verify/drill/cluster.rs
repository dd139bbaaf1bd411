//! The cluster drill: a `postgres-base` backup (its chain) and the archived WAL restored with the
//! ordinary `restore cluster --start` code into `<scratch>/data`, started on a free port with
//! no TCP listener, its own socket folder and prefetch spool, and archiving impossible
//! (`archive_mode = off` and `archive_command`/`archive_library` cleared in
//! postgresql.auto.conf); once promoted, `pg_amcheck --heapallindexed` and the SQL checks run;
//! then the server is stopped and the folder removed.

use super::guard::{self, Scratch};
use super::sql::{self, Target};
use super::{DrillOutcome, DrillRequest, new_check};
use crate::error::error_chain_of;
use crate::postgres::base_record::BaseBackupInfo;
use crate::postgres::binaries::PgBinaries;
use crate::postgres::cluster_restore::{ClusterRestoreOptions, RecoveryTarget, restore_cluster};
use crate::postgres::process::{self, PassFile};
use crate::verify::check::{CheckKind, CheckResult};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The settings that keep a drill cluster off the network and out of the archive.
pub fn isolation_settings(socket_dir: &Path) -> Vec<String> {
    vec![
        "archive_command = ''".into(),
        "archive_library = ''".into(),
        "listen_addresses = ''".into(),
        format!(
            "unix_socket_directories = '{}'",
            socket_dir.to_string_lossy().replace('\'', "''")
        ),
    ]
}

/// This program's `bdc-backupctl` (restore_command runs its `wal-fetch`): beside the running
/// executable, or one folder up (test binaries live in `deps/`), else on PATH.
fn ctl_binary() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let c = dir.join("bdc-backupctl");
            if c.is_file() {
                return c;
            }
        }
    }
    PathBuf::from("bdc-backupctl")
}

/// A port that is free on 127.0.0.1 and is not the production server's `avoid`.
fn free_port(avoid: u16) -> Result<u16, String> {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("finding a free port: {e}"))?;
        if port != avoid && port != 5432 {
            return Ok(port);
        }
    }
    Err("finding a free port: none found".into())
}

/// The owner the drill cluster's server runs as: the production data directory's, else `postgres`.
fn server_owner(req: &DrillRequest<'_>) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = req
        .catalogue
        .postgres
        .as_ref()
        .and_then(|p| p.data_directory.as_ref())
        && let Ok(m) = std::fs::metadata(dir)
    {
        return Some((m.uid(), m.gid()));
    }
    nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
}

pub(super) fn data_dir(scratch: &Scratch) -> PathBuf {
    scratch.path.join("data")
}

pub(super) async fn drill(req: &DrillRequest<'_>, scratch: &Scratch, out: &mut DrillOutcome) {
    let began = Instant::now();
    let fail = |out: &mut DrillOutcome, detail: String| {
        out.checks.push(new_check(
            req,
            CheckKind::Drill,
            "cluster restore and recovery",
            CheckResult::Fail,
            detail,
            began.elapsed().as_secs_f64(),
            out.backup_bytes,
        ))
    };
    let info = match BaseBackupInfo::from_record(req.backup) {
        Some(Ok(i)) => i,
        Some(Err(e)) => return fail(out, format!("unreadable details.postgres: {e}")),
        None => return fail(out, "the commit record has no details.postgres".into()),
    };
    // The restored files: at most the chain's plaintext size.
    let need: u64 = match req.source.chain_of(req.backup) {
        Ok(chain) => chain.objects().values().map(|o| o.content_size).sum(),
        Err(e) => return fail(out, error_chain_of(&e)),
    };
    if let Err(e) = guard::check_space(&scratch.path, need, "the chain's restored size") {
        return fail(out, e);
    }
    let Some(url) = dump_url(req) else {
        return fail(
            out,
            "no [postgres] url or job connection to reach the cluster with".into(),
        );
    };
    let pw = req
        .catalogue
        .postgres
        .as_ref()
        .and_then(|p| p.password_file.clone());
    let production_port = crate::postgres::connection::connect_options(&url, None)
        .map(|o| o.get_port())
        .unwrap_or(5432);
    let socket = scratch.path.join("socket");
    let prepared = (|| -> Result<u16, String> {
        std::fs::create_dir(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        if let Some((uid, gid)) = server_owner(req) {
            std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
                .map_err(|e| format!("{}: {e}", socket.display()))?;
        }
        free_port(production_port)
    })();
    let port = match prepared {
        Ok(p) => p,
        Err(e) => return fail(out, e),
    };
    let catalogue_path = std::fs::canonicalize(&req.catalogue.source)
        .unwrap_or_else(|_| req.catalogue.source.clone());
    let data = data_dir(scratch);
    let restored = restore_cluster(
        req.catalogue,
        ClusterRestoreOptions {
            job: req.job.name.clone(),
            target_dir: data.clone(),
            backup: Some(req.backup.id.clone()),
            target: RecoveryTarget::EndOfArchive,
            start: true,
            port: Some(port),
            no_archive: true,
            repository: Some(req.source.repository_name().to_string()),
            catalogue_path,
            ctl_binary: ctl_binary(),
            extra_settings: isolation_settings(&socket),
            socket_dir: Some(socket.clone()),
            low_priority: true,
            ..Default::default()
        },
    )
    .await;
    let report = match restored {
        Ok(r) => r,
        Err(e) => return fail(out, error_chain_of(&e)),
    };
    let seconds = began.elapsed().as_secs_f64();
    out.restore_seconds = Some(seconds);
    let reached = report.reached.as_ref();
    out.checks.push(new_check(
        req,
        CheckKind::Drill,
        "cluster restore and recovery",
        CheckResult::Pass,
        format!(
            "chain {} restored, recovered to LSN {} on timeline {} and promoted in {seconds:.1}s",
            report.chain.join(" <- "),
            reached.and_then(|p| p.replay_lsn.as_deref()).unwrap_or("?"),
            reached
                .and_then(|p| p.timeline)
                .map_or("?".into(), |t| t.to_string())
        ),
        seconds,
        out.backup_bytes,
    ));
    super::emit(req, out).await;
    crate::faults::kill_point("drill-cluster-started", &req.job.name);
    let target = Target {
        url: url.clone(),
        password_file: pw.clone(),
        socket: Some((socket.clone(), port)),
    };
    amcheck(req, scratch, &target, &info, out).await;
    super::emit(req, out).await;
    let default_db = sql::url_database(&url, None);
    let source = Target {
        url: url.clone(),
        password_file: pw,
        socket: None,
    };
    for (check, db) in sql::checks_of(&req.settings.checks, &req.job.name, &default_db) {
        out.checks
            .push(sql::run_check(req, check, &target, &db, &source, &db).await);
        super::emit(req, out).await;
    }
    if let Err(e) = stop(&data, "fast").await {
        out.checks.push(new_check(
            req,
            CheckKind::Drill,
            "stop of the drill cluster",
            CheckResult::Fail,
            e,
            0.0,
            0,
        ));
    }
}

fn dump_url(req: &DrillRequest<'_>) -> Option<String> {
    super::dump::source_url(req)
}

/// `pg_amcheck --heapallindexed` on every database that allows connections: with
/// `--install-missing` when the role is a superuser, else where `amcheck` is installed.
async fn amcheck(
    req: &DrillRequest<'_>,
    scratch: &Scratch,
    target: &Target,
    info: &BaseBackupInfo,
    out: &mut DrillOutcome,
) {
    let skipped = |out: &mut DrillOutcome, name: &str, why: String| {
        out.checks.push(new_check(
            req,
            CheckKind::Amcheck,
            name,
            CheckResult::Skipped,
            why,
            0.0,
            0,
        ))
    };
    let listed = async {
        let mut pg = target.connect("postgres").await?;
        let q = |e: sqlx::Error| e.to_string();
        let dbs: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datallowconn ORDER BY datname",
        )
        .fetch_all(pg.conn())
        .await
        .map_err(q)?;
        let superuser: bool =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(pg.conn())
                .await
                .map_err(q)?;
        let user = pg.user().to_string();
        pg.close().await;
        Ok::<_, String>((dbs, superuser, user))
    }
    .await;
    let (dbs, superuser, user) = match listed {
        Ok(x) => x,
        Err(e) => return skipped(out, "pg_amcheck", format!("listing databases: {e}")),
    };
    let bin_dir = req
        .catalogue
        .postgres
        .as_ref()
        .and_then(|p| p.bin_dir.as_deref());
    let pg_amcheck = match PgBinaries::find(bin_dir, info.server_version).await {
        Ok(b) => b.psql.with_file_name("pg_amcheck"),
        Err(e) => return skipped(out, "pg_amcheck", error_chain_of(&e)),
    };
    if !pg_amcheck.is_file() {
        return skipped(
            out,
            "pg_amcheck",
            format!("{} is not installed", pg_amcheck.display()),
        );
    }
    let passfile = match &target.password_file {
        Some(p) => match crate::postgres::connection::read_password_file(p)
            .map_err(|e| error_chain_of(&e))
            .and_then(|pw| PassFile::create(&scratch.path, &pw).map_err(|e| e.to_string()))
        {
            Ok(pf) => Some(pf),
            Err(e) => return skipped(out, "pg_amcheck", format!("password file: {e}")),
        },
        None => None,
    };
    let (socket, port) = target.socket.clone().unwrap_or_default();
    for db in dbs {
        let name = format!("pg_amcheck --heapallindexed of `{db}`");
        if !superuser {
            let installed = sql::query_value(
                target,
                &db,
                "SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'",
            )
            .await;
            if installed.as_deref() != Ok("1") {
                skipped(
                    out,
                    &name,
                    format!(
                        "the amcheck extension is not installed in `{db}` and `{user}` is not a superuser"
                    ),
                );
                continue;
            }
        }
        let t0 = Instant::now();
        let mut cmd = tokio::process::Command::new(&pg_amcheck);
        cmd.arg("-h")
            .arg(&socket)
            .arg("-p")
            .arg(port.to_string())
            .arg("-U")
            .arg(&user)
            .arg("-d")
            .arg(&db)
            .args(["--heapallindexed", "--no-password"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if superuser {
            cmd.arg("--install-missing");
        }
        if let Some(pf) = &passfile {
            pf.apply(&mut cmd);
        }
        process::low_priority(&mut cmd);
        let (result, detail) = match run(&mut cmd).await {
            Err(e) => (CheckResult::Fail, format!("running pg_amcheck: {e}")),
            Ok((code, stdout, stderr)) => match code {
                Some(0) => (CheckResult::Pass, "no corruption found".to_string()),
                Some(2) => (
                    CheckResult::Fail,
                    format!("corruption in `{db}`: {}", first_lines(&stdout, 10)),
                ),
                _ => (
                    CheckResult::Fail,
                    format!(
                        "pg_amcheck failed on `{db}` (exit {code:?}): {}",
                        first_lines(&format!("{stderr}{stdout}"), 10)
                    ),
                ),
            },
        };
        out.checks.push(new_check(
            req,
            CheckKind::Amcheck,
            &name,
            result,
            detail,
            t0.elapsed().as_secs_f64(),
            0,
        ));
    }
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Runs a command to its end: exit code, stdout, stderr.
async fn run(cmd: &mut tokio::process::Command) -> Result<(Option<i32>, String, String), String> {
    use tokio::io::AsyncReadExt;
    let (mut child, stdout, _) = process::spawn(cmd, "pg_amcheck").map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    if let Some(mut s) = stdout {
        let _ = s.read_to_end(&mut text).await;
    }
    let outcome = child.wait().await;
    let stderr = child.stderr().await;
    let code = match outcome {
        process::ExitOutcome::Exited(s) => s.code(),
        _ => None,
    };
    Ok((code, String::from_utf8_lossy(&text).into_owned(), stderr))
}

/// The postmaster's pid from `<data>/postmaster.pid`, if the file is there.
pub fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` runs with `data` as its working directory (the postmaster chdirs there).
pub fn runs_in(pid: i32, data: &Path) -> bool {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    cwd.is_some_and(|c| c == data)
}

/// Stops the server of `data` (SIGINT for `fast`, SIGQUIT for `immediate`), SIGKILL after 60 s.
/// Nothing to do when no postmaster runs there.
pub async fn stop(data: &Path, mode: &str) -> Result<(), String> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(pid) = postmaster_pid(data) else {
        return Ok(());
    };
    if !runs_in(pid, data) {
        return Ok(());
    }
    let sig = if mode == "fast" {
        Signal::SIGINT
    } else {
        Signal::SIGQUIT
    };
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, sig);
    for _ in 0..600 {
        if kill(pid, None).is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
    for _ in 0..100 {
        if kill(pid, None).is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "the drill cluster's postmaster (pid {pid}) in {} did not stop",
        data.display()
    ))
}
