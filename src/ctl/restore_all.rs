//! `restore all --plan FILE [--dry-run] [--at T] [--resume]` (docs/design.md §13): runs a DR
//! plan's steps ([`crate::dr::plan`]) in order through the ordinary restore paths (restore
//! config / cluster / database / files, each checked as always) and its hook commands. Each
//! finished step is recorded in `FILE.progress` (fsynced); `--resume` skips those; a failed
//! step stops the run, named.

use super::{CtlError, CtlResult, outln};
use crate::catalogue::Catalogue;
use crate::dr::plan::{self, Action, Finished, Plan, Step};
use crate::model::JobKindName;
use crate::repository::{CommitRecord, Repository};
use chrono::{DateTime, Utc};
use std::path::Path;

pub struct RestoreAllArgs<'a> {
    pub plan: &'a Path,
    pub dry_run: bool,
    pub at: Option<&'a str>,
    pub resume: bool,
}

pub async fn run(a: RestoreAllArgs<'_>) -> CtlResult {
    let plan = Plan::load(a.plan).map_err(CtlError::usage)?;
    let catalogue = Catalogue::load(&plan.catalogue).map_err(|e| {
        CtlError::usage(format!(
            "the plan's catalogue {} is invalid:\n{e}",
            plan.catalogue.display()
        ))
    })?;
    check_jobs(&plan, &catalogue).map_err(CtlError::usage)?;
    let at = match a.at {
        Some(t) => Some(
            crate::timeparse::parse_time(t, catalogue.daemon.timezone)
                .map_err(|e| CtlError::usage(format!("--at {t}: {e}")))?,
        ),
        None => None,
    };
    let progress = plan::progress_path(a.plan);
    let finished = plan::read_progress(&progress).map_err(CtlError::failed)?;
    if !finished.is_empty() && !a.resume && !a.dry_run {
        return Err(CtlError::usage(format!(
            "{} records {} finished step(s) of an earlier run: give --resume to go on, or remove the file to start over",
            progress.display(),
            finished.len()
        )));
    }
    let done = |s: &Step| finished.iter().any(|f| f.step == s.name);
    let total = plan.steps.len();
    if let Some(v) = &plan.application_version {
        outln(&format!("application version to check out first: {v}"))?;
    }
    if a.dry_run {
        return dry_run(&plan, &catalogue, at, &done).await;
    }
    let catalogue_path = std::fs::canonicalize(&plan.catalogue)
        .map_err(|e| CtlError::usage(format!("{}: {e}", plan.catalogue.display())))?;
    for (i, step) in plan.steps.iter().enumerate() {
        let n = format!("[{}/{total}] {}", i + 1, step.name);
        if done(step) {
            outln(&format!("{n}: done in an earlier run, skipped"))?;
            continue;
        }
        outln(&format!("{n}: {} …", step.action.kind()))?;
        let started_at = Utc::now();
        let (summary, backup) = run_step(&catalogue, &catalogue_path, step, at)
            .await
            .map_err(|e| CtlError {
                code: e.code,
                message: format!(
                    "step {} \"{}\" failed: {}\n(fix it, then `restore all --plan {} --resume`)",
                    i + 1,
                    step.name,
                    e.message,
                    a.plan.display()
                ),
            })?;
        let finished_at = Utc::now();
        plan::record_finished(
            &progress,
            &Finished {
                step: step.name.clone(),
                kind: step.action.kind().into(),
                backup,
                started_at,
                finished_at,
            },
        )
        .map_err(CtlError::failed)?;
        let secs = (finished_at - started_at).num_milliseconds() as f64 / 1000.0;
        outln(&format!("{n}: done in {secs:.1} s — {summary}"))?;
    }
    outln(&format!(
        "all {total} step(s) done (progress in {})",
        progress.display()
    ))
}

/// `--dry-run`: per step what it restores, from where, to where, its size and an estimate with
/// its basis (the job's newest passed drill in this host's state DB, else the fixed rate).
async fn dry_run(
    plan: &Plan,
    catalogue: &Catalogue,
    at: Option<DateTime<Utc>>,
    done: &dyn Fn(&Step) -> bool,
) -> CtlResult {
    let drills = Drills::open(catalogue).await;
    let total = plan.steps.len();
    let mut sum = 0.0;
    for (i, step) in plan.steps.iter().enumerate() {
        let line = match step.action.source() {
            None => format!("command {:?}", command_of(step)),
            Some((job, backup, repo)) => match choose(catalogue, job, backup, repo, at).await {
                Ok(c) => {
                    let (drill, no_drill) = drills.newest(job).await;
                    let e = plan::estimate(c.size, drill.as_ref(), &no_drill);
                    sum += e.seconds;
                    format!(
                        "{} {job} backup {} from `{}` ({}) to {}, {} stored, about {} ({})",
                        step.action.kind(),
                        c.record.id,
                        c.repository,
                        c.url,
                        destination(&step.action),
                        crate::units::human_bytes(c.size.stored),
                        duration_text(e.seconds),
                        e.basis
                    )
                }
                Err(e) => format!("{} {job}: CANNOT RUN: {}", step.action.kind(), e.message),
            },
        };
        let mark = if done(step) {
            " (done, skipped with --resume)"
        } else {
            ""
        };
        outln(&format!("[{}/{total}] {}: {line}{mark}", i + 1, step.name))?;
    }
    outln(&format!(
        "total about {} (nothing written)",
        duration_text(sum)
    ))
}

fn duration_text(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.ceil() as u64)).to_string()
}

/// Where a step writes.
fn destination(action: &Action) -> String {
    match action {
        Action::Config {
            target: Some(t), ..
        } => t.display().to_string(),
        Action::Config { .. } => "the original paths (in place)".into(),
        Action::Cluster {
            target_dir, port, ..
        } => match port {
            Some(p) => format!("{} (port {p})", target_dir.display()),
            None => target_dir.display().to_string(),
        },
        Action::Database { into, url, .. } => format!(
            "database `{into}` on {}",
            url.as_deref()
                .map(without_password)
                .unwrap_or_else(|| "the catalogue's server".into())
        ),
        Action::Files { target, .. } => target.display().to_string(),
        Action::Command { .. } => String::new(),
    }
}

/// A URL as shown: any password replaced by `***`.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// The drill figures of this host: its state DB (the plan's catalogue names it) when there is
/// one. Drill results are not in the repository: a bare host has none.
enum Drills {
    Db(crate::state::StateDb, std::path::PathBuf),
    None(String),
}

impl Drills {
    async fn open(catalogue: &Catalogue) -> Drills {
        let path = catalogue.daemon.state_db.clone();
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Drills::None(format!(
                    "no drill recorded (no state DB at {}; drill results are kept there, not in the repository)",
                    path.display()
                ));
            }
            Err(e) => {
                return Drills::None(format!(
                    "no drill recorded (the state DB {} cannot be read: {e})",
                    path.display()
                ));
            }
            Ok(_) => {}
        }
        match crate::state::StateDb::open_read_only(&path).await {
            Ok(db) => Drills::Db(db, path),
            Err(e) => Drills::None(format!(
                "no drill recorded (the state DB cannot be read: {})",
                crate::error::error_chain_of(&e)
            )),
        }
    }

    /// The newest passed drill of `job`, or why there is none.
    async fn newest(&self, job: &str) -> (Option<crate::state::DrillFact>, String) {
        match self {
            Drills::None(why) => (None, why.clone()),
            Drills::Db(db, path) => match db.newest_passed_drill(job).await {
                Ok(Some(d)) => (Some(d), String::new()),
                Ok(None) => (
                    None,
                    format!("no drill recorded for `{job}` in {}", path.display()),
                ),
                Err(e) => (
                    None,
                    format!(
                        "no drill recorded (reading {}: {})",
                        path.display(),
                        crate::error::error_chain_of(&e)
                    ),
                ),
            },
        }
    }
}

/// The offline audit file of a DR run: `offline-audit.jsonl` in the plan's folder (bootstrap's
/// output folder), which the run writes anyway (the progress file); the catalogue's state
/// directory is the old host's, absent on a bare one.
pub fn offline_audit_path(plan: &Path) -> std::path::PathBuf {
    plan.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("offline-audit.jsonl")
}

/// Appends the run's audit row (no daemon took it) beside the plan, saying where; a row that
/// cannot be written is a warning, never a changed outcome.
pub fn audit_beside_plan(plan: &Path, event: &crate::state::AuditEvent) {
    let path = offline_audit_path(plan);
    match crate::state::append_offline_audit(&path, event) {
        Ok(()) => eprintln!(
            "bdc-backupctl: no daemon took the audit row; recorded in {} — once the daemon runs on this host, append its lines to <state-directory>/offline-audit.jsonl and it imports them at start",
            path.display()
        ),
        Err(e) => eprintln!(
            "warning: this operation could not be audited: {}",
            crate::error::error_chain_of(&e)
        ),
    }
}

fn command_of(step: &Step) -> Vec<String> {
    match &step.action {
        Action::Command { command, .. } => command.clone(),
        _ => Vec::new(),
    }
}

/// Every restore step's job is in the catalogue and of the step's kind.
fn check_jobs(plan: &Plan, catalogue: &Catalogue) -> Result<(), String> {
    let mut problems = Vec::new();
    for (i, s) in plan.steps.iter().enumerate() {
        let Some((job, _, repo)) = s.action.source() else {
            continue;
        };
        let want = match &s.action {
            Action::Config { .. } => JobKindName::Config,
            Action::Cluster { .. } => JobKindName::PostgresBase,
            Action::Database { .. } => JobKindName::PostgresDump,
            Action::Files { .. } => JobKindName::Files,
            Action::Command { .. } => continue,
        };
        let at = format!("step[{i}] \"{}\"", s.name);
        match catalogue.job(job) {
            None => problems.push(format!("{at}: job `{job}` is not in the catalogue")),
            Some(j) if j.kind() != want => problems.push(format!(
                "{at}: job `{job}` is a {} job; kind \"{}\" needs a {want} job",
                j.kind(),
                s.action.kind()
            )),
            Some(_) => {}
        }
        if let Some(r) = repo
            && catalogue.repository(r).is_none()
        {
            problems.push(format!("{at}: repository `{r}` is not in the catalogue"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// What a step restores: the backup, the repository it is read from, and its chain's size.
struct Chosen {
    record: CommitRecord,
    repository: String,
    url: String,
    size: plan::StepSize,
}

/// The backup a step restores (its `backup`, else the newest stopped at or before `at`) and the
/// bytes it reads (with its ancestors).
async fn choose(
    catalogue: &Catalogue,
    job: &str,
    backup: Option<&str>,
    repository: Option<&str>,
    at: Option<DateTime<Utc>>,
) -> Result<Chosen, CtlError> {
    let name = match repository {
        Some(r) => r.to_string(),
        None => catalogue
            .job(job)
            .and_then(|j| j.repositories.first().cloned())
            .ok_or_else(|| CtlError::usage(format!("job `{job}` has no repository")))?,
    };
    let settings = catalogue
        .repository(&name)
        .ok_or_else(|| CtlError::usage(format!("repository `{name}` is not in the catalogue")))?;
    let repo = Repository::open(settings).map_err(|e| CtlError::failed(e.to_string()))?;
    let (records, _) = repo
        .list_commits(Some(job))
        .await
        .map_err(|e| CtlError::failed(crate::error::error_chain_of(&e)))?;
    let chosen = match backup {
        Some(id) => records.iter().find(|r| r.id == id),
        None => records
            .iter()
            .filter(|r| at.is_none_or(|t| r.stopped_at <= t))
            .max_by_key(|r| r.stopped_at),
    }
    .cloned()
    .ok_or_else(|| {
        CtlError::failed(match (backup, at) {
            (Some(id), _) => format!("backup {job}/{id} is not in repository `{name}`"),
            (None, Some(t)) => format!("job `{job}` has no backup stopped by {t} in `{name}`"),
            (None, None) => format!("job `{job}` has no backup in repository `{name}`"),
        })
    })?;
    let chain = || {
        std::iter::once(&chosen).chain(records.iter().filter(|r| chosen.ancestors.contains(&r.id)))
    };
    let size = plan::StepSize {
        stored: chain().map(|r| r.bytes_stored).sum(),
        plaintext: chain().map(|r| r.bytes_read).sum(),
    };
    Ok(Chosen {
        record: chosen.clone(),
        repository: name,
        url: settings.url.clone(),
        size,
    })
}

/// Runs one step; its one-line summary and the backup it restored.
async fn run_step(
    catalogue: &Catalogue,
    catalogue_path: &Path,
    step: &Step,
    at: Option<DateTime<Utc>>,
) -> Result<(String, Option<String>), CtlError> {
    match &step.action {
        Action::Command { command, timeout } => {
            let limit = timeout
                .as_deref()
                .map(humantime::parse_duration)
                .transpose()
                .map_err(|e| CtlError::usage(e.to_string()))?
                .unwrap_or(plan::DEFAULT_COMMAND_TIMEOUT);
            run_command(command, limit).await.map(|s| (s, None))
        }
        Action::Config {
            job,
            backup,
            target,
            in_place,
            repository,
        } => {
            let c = choose(catalogue, job, backup.as_deref(), repository.as_deref(), at).await?;
            let to = SnapshotTo {
                target: target.clone(),
                in_place: *in_place,
                overwrite: true,
            };
            snapshot(catalogue, job, &c.record, repository, to)
                .await
                .map(|s| (s, Some(c.record.id)))
        }
        Action::Files {
            job,
            backup,
            target,
            overwrite,
            repository,
        } => {
            let c = choose(catalogue, job, backup.as_deref(), repository.as_deref(), at).await?;
            let to = SnapshotTo {
                target: Some(target.clone()),
                in_place: false,
                overwrite: *overwrite,
            };
            snapshot(catalogue, job, &c.record, repository, to)
                .await
                .map(|s| (s, Some(c.record.id)))
        }
        Action::Database {
            job,
            backup,
            database,
            into,
            url,
            create,
            roles,
            repository,
        } => {
            let record = choose(catalogue, job, backup.as_deref(), repository.as_deref(), at)
                .await?
                .record;
            let options = crate::postgres::restore::RestoreDatabaseOptions {
                job: job.clone(),
                database: database.clone(),
                backup: Some(record.id.clone()),
                into: into.clone(),
                url: url.clone(),
                create: *create,
                roles: *roles,
                repository: repository.clone(),
                ..Default::default()
            };
            let report = crate::postgres::restore::restore_database(catalogue, options)
                .await
                .map_err(|e| CtlError::failed(crate::error::error_chain_of(&e)))?;
            Ok((report.to_string().replace('\n', "; "), Some(record.id)))
        }
        Action::Cluster {
            job,
            backup,
            target_dir,
            port,
            start,
            no_archive,
            repository,
        } => {
            use crate::postgres::cluster_restore::{self as cr, RecoveryTarget};
            let options = cr::ClusterRestoreOptions {
                job: job.clone(),
                target_dir: target_dir.clone(),
                backup: backup.clone(),
                target: match at {
                    Some(t) => RecoveryTarget::Time(t.to_rfc3339()),
                    None => RecoveryTarget::EndOfArchive,
                },
                start: *start,
                port: *port,
                no_archive: *no_archive,
                repository: repository.clone(),
                catalogue_path: catalogue_path.to_path_buf(),
                ctl_binary: std::env::current_exe().map_err(|e| {
                    CtlError::failed(format!("cannot find this program's path: {e}"))
                })?,
                ..Default::default()
            };
            let report = cr::restore_cluster(catalogue, options)
                .await
                .map_err(|e| match e {
                    cr::ClusterRestoreError::Usage { reason } => CtlError::usage(reason),
                    e => CtlError::failed(crate::error::error_chain_of(&e)),
                })?;
            let id = report.backup_id.clone();
            Ok((report.to_string().replace('\n', "; "), Some(id)))
        }
    }
}

/// Where a files or config step writes (all that differs between the two).
struct SnapshotTo {
    target: Option<std::path::PathBuf>,
    in_place: bool,
    overwrite: bool,
}

/// `restore files` / `restore config` of `record`, whole, checked as always.
async fn snapshot(
    catalogue: &Catalogue,
    job: &str,
    record: &CommitRecord,
    repository: &Option<String>,
    to: SnapshotTo,
) -> Result<String, CtlError> {
    let options = crate::files::SnapshotRestoreOptions {
        job: job.to_string(),
        backup: Some(record.id.clone()),
        at: None,
        target: to.target,
        in_place: to.in_place,
        paths: Vec::new(),
        dry_run: false,
        overwrite: to.overwrite,
        ignore_errors: false,
        numeric_owner: false,
        repository: repository.clone(),
    };
    let report = crate::files::restore_snapshot(catalogue, options)
        .await
        .map_err(|e| CtlError::failed(crate::error::error_chain_of(&e)))?;
    if !report.stats.failed.is_empty() {
        return Err(CtlError::failed(format!(
            "{} file(s) could not be restored: {}",
            report.stats.failed.len(),
            report
                .stats
                .failed
                .iter()
                .take(5)
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(report.to_string().replace('\n', "; "))
}

/// A hook: no shell, stdin closed, output passed through, killed after `limit`.
async fn run_command(command: &[String], limit: std::time::Duration) -> Result<String, CtlError> {
    let shown = command.join(" ");
    let (program, args) = command
        .split_first()
        .ok_or_else(|| CtlError::usage("the command is empty"))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CtlError::failed(format!("`{shown}` cannot be started: {e}")))?;
    match tokio::time::timeout(limit, child.wait()).await {
        Err(_) => {
            let _ = child.kill().await;
            Err(CtlError::failed(format!(
                "`{shown}` did not finish within {}",
                humantime::format_duration(limit)
            )))
        }
        Ok(Err(e)) => Err(CtlError::failed(format!("`{shown}`: {e}"))),
        Ok(Ok(status)) if status.success() => Ok(format!("`{shown}` exited 0")),
        Ok(Ok(status)) => Err(CtlError::failed(format!("`{shown}` failed ({status})"))),
    }
}
