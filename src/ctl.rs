//! The `bdc-backupctl` commands (docs/design.md §13): argument parsing, one function per command, human
//! output or `--json`. Exit codes: 0 ok, 1 the operation failed, 2 usage or cannot reach the daemon.

mod alerts_output;
mod args;
mod audit;
mod bootstrap;
mod exit;
pub mod generate;
mod output;
mod restore_all;
mod verify;
mod wal;

use exit::{out, outln};

pub use args::{Command, CtlArgs, RestoreCommand, WalFetchArgs, WalPushArgs};

use crate::catalogue::{Catalogue, ENV_CATALOGUE, ENV_SOCKET};
use crate::control::client::{Client, ClientError};
use crate::model::{BackupType, RunStatus};
use crate::protocol::{Event, Request, Response};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// A failed command: the message and the exit code.
#[derive(Debug)]
pub struct CtlError {
    pub code: u8,
    pub message: String,
}

impl CtlError {
    pub fn failed(message: impl Into<String>) -> Self {
        CtlError {
            code: 1,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        CtlError {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<ClientError> for CtlError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Daemon(body) => CtlError::failed(body.message),
            other => CtlError::usage(crate::error::error_chain_of(&other)),
        }
    }
}

type CtlResult = Result<(), CtlError>;

/// Runs the ctl; the binary only calls this.
pub fn main() -> ExitCode {
    use clap::Parser;
    exit::install_panic_hook();
    let args = match CtlArgs::try_parse() {
        Ok(args) => args,
        // archive_command and restore_command: exit codes PostgreSQL understands (docs/design.md §5).
        Err(err) => return wal::usage_error(err),
    };
    if let Command::Generate { what } = args.command {
        return generate::run(what).map_or_else(|e| fail(&e), |()| ExitCode::SUCCESS);
    }
    exit::set_command(&args.command);
    // wal-push (archive_command: one process per segment) only waits on one socket: a
    // current-thread runtime, no worker threads to start and stop.
    let runtime = if matches!(args.command, Command::WalPush(_)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("bdc-backupctl: cannot start the async runtime: {err}");
            return ExitCode::from(wal::failure_code(&args.command).unwrap_or(2));
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &CtlError) -> ExitCode {
    if !err.message.is_empty() {
        eprintln!("bdc-backupctl: {}", err.message);
    }
    ExitCode::from(err.code)
}

struct Ctx {
    args: CtlArgs,
}

impl Ctx {
    fn catalogue_path(&self) -> Option<PathBuf> {
        self.args
            .catalogue
            .clone()
            .or_else(|| std::env::var_os(ENV_CATALOGUE).map(PathBuf::from))
    }

    fn load_catalogue(&self) -> Result<Catalogue, CtlError> {
        let path = self.catalogue_path().ok_or_else(|| {
            CtlError::usage(format!(
                "this command needs the catalogue: give --catalogue FILE or set {ENV_CATALOGUE}"
            ))
        })?;
        Catalogue::load(&path)
            .map_err(|errors| CtlError::usage(format!("the catalogue is invalid:\n{errors}")))
    }

    fn socket_path(&self) -> Result<PathBuf, CtlError> {
        if let Some(socket) = &self.args.socket {
            return Ok(socket.clone());
        }
        if let Some(path) = self.catalogue_path() {
            match Catalogue::load(&path) {
                Ok(catalogue) => return Ok(catalogue.daemon.socket),
                // An invalid catalogue still names the socket (e.g. to `reload` and see the errors).
                Err(errors) => match socket_from_raw(&path) {
                    Some(socket) => return Ok(socket),
                    None => {
                        return Err(CtlError::usage(format!(
                            "the catalogue is invalid:\n{errors}"
                        )));
                    }
                },
            }
        }
        if let Some(socket) = std::env::var_os(ENV_SOCKET) {
            return Ok(PathBuf::from(socket));
        }
        Ok(crate::control::client::default_socket_path())
    }

    /// The socket for `wal-push`: like [`Ctx::socket_path`], but only `[daemon] socket` is read
    /// from the catalogue (the daemon archives with its own catalogue; PostgreSQL runs one
    /// `wal-push` per segment, so validating the whole file each time is wasted work).
    fn lean_socket_path(&self) -> Result<PathBuf, CtlError> {
        if let Some(socket) = &self.args.socket {
            return Ok(socket.clone());
        }
        if let Some(path) = self.catalogue_path() {
            return raw_socket(&path).map_err(CtlError::usage);
        }
        if let Some(socket) = std::env::var_os(ENV_SOCKET) {
            return Ok(PathBuf::from(socket));
        }
        Ok(crate::control::client::default_socket_path())
    }

    async fn client(&self) -> Result<Client, CtlError> {
        let path = self.socket_path()?;
        Ok(Client::connect(&path).await?)
    }

    async fn request(&self, request: Request) -> Result<Response, CtlError> {
        let mut client = self.client().await?;
        Ok(client.request(&request).await?)
    }
}

/// `[daemon] socket` read from a catalogue that does not validate (the default if unset).
fn socket_from_raw(path: &std::path::Path) -> Option<PathBuf> {
    raw_socket(path).ok()
}

/// `[daemon] socket` of the catalogue at `path` (`BDC_BACKUP_SOCKET` first, the default if
/// unset), read without validating the rest of the file; the error says why it cannot be read.
fn raw_socket(path: &std::path::Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the catalogue {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("the catalogue {} is not valid TOML: {e}", path.display()))?;
    if let Ok(socket) = std::env::var(ENV_SOCKET) {
        return Ok(PathBuf::from(socket));
    }
    match table
        .get("daemon")
        .and_then(|d| d.get("socket"))
        .and_then(|s| s.as_str())
    {
        Some(socket) => {
            let socket = PathBuf::from(socket);
            Ok(if socket.is_absolute() {
                socket
            } else {
                path.parent()
                    .ok_or_else(|| format!("{} has no parent folder", path.display()))?
                    .join(socket)
            })
        }
        None => Ok(crate::control::client::default_socket_path()),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> CtlResult {
    let text = serde_json::to_string_pretty(value).map_err(|e| CtlError::failed(e.to_string()))?;
    outln(&text)
}

fn unexpected(response: Response) -> CtlError {
    CtlError::usage(format!("unexpected answer from the daemon: {response:?}"))
}

async fn run(args: CtlArgs) -> CtlResult {
    let command = args.command.clone();
    let ctx = Ctx { args };
    let json = ctx.args.json;
    match command {
        Command::Status => match ctx.request(Request::Status).await? {
            Response::Status(report) if json => print_json(&report),
            Response::Status(report) => out(&output::status(&report)),
            other => Err(unexpected(other)),
        },
        Command::Runs { job, limit } => match ctx
            .request(Request::Runs {
                job,
                limit: Some(limit),
            })
            .await?
        {
            Response::Runs { runs } if json => print_json(&runs),
            Response::Runs { runs } => out(&output::runs(&runs)),
            other => Err(unexpected(other)),
        },
        Command::Backups { job, repository } => backups(&ctx, job, repository).await,
        Command::Run {
            job,
            full,
            incremental,
            wait,
        } => {
            let backup_type = match (full, incremental) {
                (true, _) => Some(BackupType::Full),
                (_, true) => Some(BackupType::Incremental),
                _ => None,
            };
            run_job(&ctx, job, backup_type, wait).await
        }
        Command::Cancel { run_id } => match ctx.request(Request::Cancel { run_id }).await? {
            Response::Cancelled { run_id } if json => {
                print_json(&serde_json::json!({"cancelled": run_id}))
            }
            Response::Cancelled { run_id } => {
                outln(&format!("run {run_id}: cancellation requested"))
            }
            other => Err(unexpected(other)),
        },
        Command::Reload => match ctx.request(Request::Reload).await? {
            Response::Reloaded { jobs } if json => {
                print_json(&serde_json::json!({"reloaded": true, "jobs": jobs}))
            }
            Response::Reloaded { jobs } => outln(&format!("catalogue reloaded: {jobs} jobs")),
            other => Err(unexpected(other)),
        },
        Command::Follow => follow(&ctx).await,
        Command::Keygen { output } => keygen(output, json),
        Command::Restore { what } => {
            let result = restore(&ctx, what.clone()).await;
            audit::report_restore(&ctx, &what, &result).await;
            result
        }
        Command::Metrics => audit::metrics(&ctx).await,
        Command::Audit {
            since,
            job,
            limit,
            verify,
        } => audit::audit(&ctx, since, job, limit, verify).await,
        Command::WalPush(a) => wal::push(&ctx, a).await,
        Command::WalFetch(a) => wal::fetch(&ctx, a).await,
        Command::Retention {
            job,
            repository,
            dry_run,
        } => retention(&ctx, job, repository, dry_run).await,
        Command::Usage { job, weeks } => usage(&ctx, job, weeks).await,
        Command::Verify {
            job,
            integrity_only,
            drill_only,
            backup,
            wait,
        } => verify::verify(&ctx, job, integrity_only, drill_only, backup, wait).await,
        Command::Show { run_id } => verify::show(&ctx, run_id).await,
        Command::Alerts { action, limit } => alerts(&ctx, action, limit).await,
        Command::Bootstrap(a) => bootstrap::run(&a, json).await,
        Command::Generate { what } => generate::run(what),
    }
}

async fn alerts(ctx: &Ctx, action: Option<args::AlertsAction>, limit: u32) -> CtlResult {
    match action {
        None => match ctx.request(Request::Alerts { limit: Some(limit) }).await? {
            Response::Alerts(report) if ctx.args.json => print_json(&report),
            Response::Alerts(report) => out(&alerts_output::alerts(&report)),
            other => Err(unexpected(other)),
        },
        Some(args::AlertsAction::Test { sink }) => {
            match ctx.request(Request::AlertTest { sink }).await? {
                Response::AlertTestQueued { sinks } if ctx.args.json => {
                    print_json(&serde_json::json!({ "queued": sinks }))
                }
                Response::AlertTestQueued { sinks } => outln(&format!(
                    "alert-test queued for {}; `bdc-backupctl alerts` shows the delivery",
                    sinks.join(", ")
                )),
                other => Err(unexpected(other)),
            }
        }
    }
}

async fn backups(ctx: &Ctx, job: Option<String>, repository: Option<String>) -> CtlResult {
    let json = ctx.args.json;
    let rows = match ctx
        .request(Request::Backups {
            job: job.clone(),
            repository: repository.clone(),
        })
        .await
    {
        Ok(Response::Backups { backups }) => backups,
        Ok(other) => return Err(unexpected(other)),
        // No daemon (a fresh host after a disaster): read the repositories directly.
        Err(err) if err.code == 2 && ctx.catalogue_path().is_some() => {
            eprintln!(
                "bdc-backupctl: {}; listing the repositories directly",
                err.message
            );
            let catalogue = ctx.load_catalogue()?;
            offline_rows(&catalogue, job.as_deref(), repository.as_deref()).await?
        }
        Err(err) => return Err(err),
    };
    if json {
        print_json(&rows)
    } else {
        out(&output::backups(&rows))
    }
}

/// The repositories' backups read directly; unreadable commit records are warned about on stderr.
async fn offline_rows(
    catalogue: &crate::catalogue::Catalogue,
    job: Option<&str>,
    repository: Option<&str>,
) -> Result<Vec<crate::model::BackupRow>, CtlError> {
    let listing = crate::repository::list_backups_offline(catalogue, job, repository)
        .await
        .map_err(|e| CtlError::failed(crate::error::error_chain_of(&e)))?;
    for warning in &listing.warnings {
        eprintln!("warning: {}", crate::error::error_chain_of(warning));
    }
    Ok(listing.rows)
}

async fn retention(
    ctx: &Ctx,
    job: Option<String>,
    repository: Option<String>,
    dry_run: bool,
) -> CtlResult {
    let reports = match ctx
        .request(Request::Retention {
            job: job.clone(),
            repository: repository.clone(),
            dry_run,
        })
        .await
    {
        Ok(Response::Retention { reports }) => reports,
        Ok(other) => return Err(unexpected(other)),
        // No daemon: work on the repositories directly (nothing else can be running then).
        Err(err) if err.code == 2 && ctx.catalogue_path().is_some() => {
            eprintln!(
                "bdc-backupctl: {}; applying retention to the repositories directly",
                err.message
            );
            let catalogue = ctx.load_catalogue()?;
            let reports = crate::retention::run_matching(
                &catalogue,
                job.as_deref(),
                repository.as_deref(),
                chrono::Utc::now(),
                dry_run,
            )
            .await
            .map_err(|e| CtlError::failed(crate::error::error_chain_of(&e)))?;
            audit::offline_retention(&catalogue, &reports);
            reports
        }
        Err(err) => return Err(err),
    };
    if ctx.args.json {
        print_json(&reports)?;
    } else {
        out(&output::retention(&reports))?;
    }
    if reports.iter().all(|r| r.is_success()) {
        Ok(())
    } else {
        Err(CtlError::failed("retention did not complete; see above"))
    }
}

async fn usage(ctx: &Ctx, job: Option<String>, weeks: u32) -> CtlResult {
    let report = match ctx
        .request(Request::Usage {
            job: job.clone(),
            weeks: Some(weeks),
        })
        .await
    {
        Ok(Response::Usage(report)) => report,
        Ok(other) => return Err(unexpected(other)),
        Err(err) if err.code == 2 && ctx.catalogue_path().is_some() => {
            eprintln!(
                "bdc-backupctl: {}; reading the repositories directly",
                err.message
            );
            let catalogue = ctx.load_catalogue()?;
            let rows = offline_rows(&catalogue, job.as_deref(), None).await?;
            let mut report =
                crate::usage::compute(&catalogue, &rows, None, chrono::Utc::now(), weeks);
            crate::usage::fill_capacity(&mut report, &catalogue);
            report
        }
        Err(err) => return Err(err),
    };
    if ctx.args.json {
        print_json(&report)
    } else {
        out(&report.to_string())
    }
}

async fn run_job(ctx: &Ctx, job: String, backup_type: Option<BackupType>, wait: bool) -> CtlResult {
    let json = ctx.args.json;
    let mut client = ctx.client().await?;
    let run = match client
        .request(&Request::Run {
            job,
            backup_type,
            wait,
        })
        .await?
    {
        Response::RunStarted { run } => run,
        other => return Err(unexpected(other)),
    };
    if !wait {
        return if json {
            print_json(&run)
        } else {
            outln(&format!("run {} of {} started", run.id, run.job))
        };
    }
    if !json {
        eprintln!("run {} of {} started", run.id, run.job);
    }
    let tty = std::io::stderr().is_terminal() && !json;
    loop {
        let event = client.next_event().await?;
        let Some(event) = event else {
            return Err(CtlError::usage(
                "the daemon closed the connection before the run ended",
            ));
        };
        match &event {
            Event::Progress {
                run_id, progress, ..
            } if *run_id == run.id => {
                if json {
                    outln(&serde_json::to_string(&event).unwrap_or_default())?;
                } else {
                    let line = output::progress_line(progress);
                    if tty {
                        eprint!("\r\x1b[2K{line}");
                    } else {
                        eprintln!("{line}");
                    }
                }
            }
            Event::RunFinished { run: done } if done.id == run.id => {
                if tty {
                    eprintln!();
                }
                if json {
                    print_json(done)?;
                } else {
                    out(&output::finished(done))?;
                }
                // `partial`: the backup is committed but a replica failed — worth a non-zero exit.
                return if is_success(done.status) {
                    Ok(())
                } else {
                    Err(CtlError {
                        code: 1,
                        message: String::new(),
                    })
                };
            }
            _ => {}
        }
    }
}

async fn follow(ctx: &Ctx) -> CtlResult {
    let mut client = ctx.client().await?;
    match client.request(&Request::Follow).await? {
        Response::Following => {}
        other => return Err(unexpected(other)),
    }
    let mut stdout = std::io::stdout();
    while let Some(event) = client.next_event().await? {
        let line = if ctx.args.json {
            serde_json::to_string(&event).unwrap_or_default()
        } else {
            output::event(&event)
        };
        if writeln!(stdout, "{line}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return Ok(()); // the reader went away (e.g. `| head`)
        }
    }
    Ok(())
}

fn keygen(output: Option<PathBuf>, json: bool) -> CtlResult {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let text = format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    );
    match &output {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        CtlError::failed(format!(
                            "{} already exists; keygen never overwrites an identity",
                            path.display()
                        ))
                    } else {
                        CtlError::failed(format!("cannot create {}: {e}", path.display()))
                    }
                })?;
            file.write_all(text.as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|e| CtlError::failed(format!("cannot write {}: {e}", path.display())))?;
        }
        None => out(&text)?,
    }
    if json {
        print_json(&serde_json::json!({"recipient": recipient, "identity-file": output}))
    } else {
        if output.is_some() {
            outln(&recipient)?;
        } else {
            eprintln!("public key: {recipient}");
        }
        Ok(())
    }
}

async fn restore(ctx: &Ctx, what: RestoreCommand) -> CtlResult {
    match what {
        RestoreCommand::Database(a) => {
            let catalogue = ctx.load_catalogue()?;
            let options = crate::postgres::restore::RestoreDatabaseOptions {
                job: a.job,
                database: a.database,
                backup: a.backup,
                into: a.into,
                url: a.url,
                tables: a
                    .tables
                    .iter()
                    .flat_map(|t| t.split(','))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect(),
                create: a.create,
                jobs: a.jobs,
                roles: a.roles,
                repository: a.repository,
                ..Default::default()
            };
            let report = crate::postgres::restore::restore_database(&catalogue, options)
                .await
                .map_err(|e| match e {
                    crate::postgres::restore::RestoreError::PasswordInUrl { .. } => {
                        CtlError::usage(e.to_string())
                    }
                    e => CtlError::failed(crate::error::error_chain_of(&e)),
                })?;
            if ctx.args.json {
                print_json(&report)
            } else {
                print_repository_warnings(&report.repository_warnings);
                outln(&report.to_string())
            }
        }
        RestoreCommand::Files(a) => {
            let options = crate::files::SnapshotRestoreOptions {
                job: a.job,
                backup: a.backup,
                at: a.at,
                target: Some(a.target),
                in_place: false,
                paths: a.paths,
                dry_run: a.dry_run,
                overwrite: a.overwrite,
                ignore_errors: a.ignore_errors,
                numeric_owner: a.numeric_owner,
                repository: a.repository,
            };
            snapshot_restore(ctx, options).await
        }
        RestoreCommand::Config(a) => {
            let options = crate::files::SnapshotRestoreOptions {
                job: a.job,
                backup: a.backup,
                at: a.at,
                target: a.target,
                in_place: a.in_place,
                paths: a.paths,
                dry_run: a.dry_run,
                overwrite: a.overwrite,
                ignore_errors: a.ignore_errors,
                numeric_owner: a.numeric_owner,
                repository: a.repository,
            };
            snapshot_restore(ctx, options).await
        }
        RestoreCommand::Cluster(a) => restore_cluster(ctx, a).await,
        RestoreCommand::All(a) => {
            restore_all::run(restore_all::RestoreAllArgs {
                plan: &a.plan,
                dry_run: a.dry_run,
                at: a.at.as_deref(),
                resume: a.resume,
            })
            .await
        }
    }
}

/// `restore cluster`: offline point-in-time recovery.
async fn restore_cluster(ctx: &Ctx, a: args::RestoreClusterArgs) -> CtlResult {
    use crate::postgres::cluster_restore::{self as cr, RecoveryTarget};
    let catalogue = ctx.load_catalogue()?;
    let catalogue_path = ctx.catalogue_path().ok_or_else(|| {
        CtlError::usage("restore cluster needs the catalogue (--catalogue or BDC_BACKUP_CATALOGUE)")
    })?;
    let catalogue_path = std::fs::canonicalize(&catalogue_path)
        .map_err(|e| CtlError::usage(format!("catalogue {}: {e}", catalogue_path.display())))?;
    let ctl_binary = std::env::current_exe()
        .map_err(|e| CtlError::failed(format!("cannot find this program's path: {e}")))?;
    let target = if let Some(t) = a.time {
        RecoveryTarget::Time(t)
    } else if let Some(l) = a.lsn {
        RecoveryTarget::Lsn(l)
    } else if let Some(x) = a.xid {
        RecoveryTarget::Xid(x)
    } else if let Some(n) = a.name {
        RecoveryTarget::Name(n)
    } else if a.immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::EndOfArchive
    };
    let options = cr::ClusterRestoreOptions {
        job: a.job,
        target_dir: a.target_dir,
        backup: a.backup,
        target,
        exclusive: a.exclusive,
        target_timeline: a.target_timeline,
        target_action: a.target_action,
        start: a.start,
        port: a.port,
        no_archive: a.no_archive,
        repository: a.repository,
        dry_run: a.dry_run,
        catalogue_path,
        ctl_binary,
        use_partial: a.use_partial,
        ..Default::default()
    };
    let report = cr::restore_cluster(&catalogue, options)
        .await
        .map_err(|e| match e {
            cr::ClusterRestoreError::Usage { reason } => CtlError::usage(reason),
            e => CtlError::failed(crate::error::error_chain_of(&e)),
        })?;
    if ctx.args.json {
        print_json(&report)
    } else {
        print_repository_warnings(&report.repository_warnings);
        outln(&report.to_string())
    }
}

/// Unreadable commit records of other backups, on stderr (with `--json` they are in the report).
fn print_repository_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// `restore files` / `restore config`: exit 1 when files could not be restored (also with
/// --ignore-errors, after restoring the rest).
async fn snapshot_restore(ctx: &Ctx, options: crate::files::SnapshotRestoreOptions) -> CtlResult {
    let catalogue = ctx.load_catalogue()?;
    let report = crate::files::restore_snapshot(&catalogue, options)
        .await
        .map_err(|e| CtlError::failed(crate::error::error_chain_of(&e)))?;
    if ctx.args.json {
        print_json(&report)?;
    } else {
        print_repository_warnings(&report.repository_warnings);
        outln(&report.to_string())?;
    }
    if report.stats.failed.is_empty() {
        Ok(())
    } else {
        Err(CtlError::failed(format!(
            "{} file(s) could not be restored",
            report.stats.failed.len()
        )))
    }
}

/// Statuses that make `run --wait` exit 0 (`partial` does not: a replica failed).
pub fn is_success(status: RunStatus) -> bool {
    matches!(status, RunStatus::Succeeded | RunStatus::Unchanged)
}
