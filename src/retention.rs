//! GFS retention per job and repository (docs/retention.md).
//!
//! [`plan`] is the pure planner (restic's rules + the chain rules of full/incremental jobs);
//! [`apply`] deletes what a plan marks, commit record first, newest first (children before
//! their parents), then confirms by listing; [`run_for_job`] does both for one job in one
//! repository; [`cleanup_uncommitted`] removes leftovers of backups that never committed.
//! The daemon runs retention after each backup of a job, never concurrently with its runs.

pub mod plan;
pub mod wal;

#[cfg(test)]
mod tests;

pub use crate::model::{Action, BackupOutcome, RetentionReport};
pub use plan::{BackupInfo, Decision, Plan, Reason, Rule, plan};

use crate::catalogue::{Catalogue, Job, RepositorySettings, RetentionPolicy};
use crate::error::{Classify, Retry};
use crate::repository::{Repository, RepositoryError, format};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(
        "retention of job `{job}` in repository `{repository}`: cannot list the backups: {source}"
    )]
    List {
        job: String,
        repository: String,
        #[source]
        source: Box<RepositoryError>,
    },
    #[error("cleanup of repository `{repository}`: {source}")]
    Cleanup {
        repository: String,
        #[source]
        source: Box<RepositoryError>,
    },
    #[error("cleanup of repository `{repository}`: staging folder {path}: {source}")]
    Staging {
        repository: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no job named `{0}` in the catalogue")]
    UnknownJob(String),
    #[error("no repository named `{0}` in the catalogue")]
    UnknownRepository(String),
    #[error("cannot open repository `{repository}`: {source}")]
    Open {
        repository: String,
        #[source]
        source: Box<RepositoryError>,
    },
}

impl Classify for RetentionError {
    fn retry(&self) -> Retry {
        match self {
            RetentionError::List { source, .. }
            | RetentionError::Cleanup { source, .. }
            | RetentionError::Open { source, .. } => source.retry(),
            RetentionError::Staging { source, .. } => crate::error::io_retry(source),
            RetentionError::UnknownJob(_) | RetentionError::UnknownRepository(_) => {
                Retry::Permanent
            }
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Keep => "KEEP",
            Action::Delete => "DELETE",
            Action::WouldDelete => "WOULD DELETE",
            Action::DeleteFailed => "DELETE FAILED",
        })
    }
}

impl RetentionReport {
    /// No deletion failed, nothing was left behind, no error.
    pub fn is_success(&self) -> bool {
        self.failed == 0
            && self.errors.is_empty()
            && self.confirmed != Some(false)
            && self
                .wal
                .as_ref()
                .is_none_or(|w| w.failed == 0 && w.errors.is_empty() && w.confirmed != Some(false))
    }

    /// A report for a pass that could not run (the error says why).
    pub fn failed_pass(
        job: &str,
        repository: &str,
        policy: Option<String>,
        at: DateTime<Utc>,
        dry_run: bool,
        error: String,
    ) -> RetentionReport {
        RetentionReport {
            job: job.to_string(),
            repository: repository.to_string(),
            policy,
            at,
            timezone: String::new(),
            dry_run,
            backups: Vec::new(),
            kept: 0,
            to_delete: 0,
            deleted: 0,
            failed: 0,
            bytes_freed: 0,
            confirmed: None,
            warnings: Vec::new(),
            errors: vec![error],
            wal: None,
        }
    }

    /// The first error, for the state DB (`retention_passes.error`).
    pub fn error_text(&self) -> Option<String> {
        if self.errors.is_empty() && self.failed == 0 && self.confirmed != Some(false) {
            return None;
        }
        let mut parts = self.errors.clone();
        if self.failed > 0 {
            parts.push(format!("{} deletions failed", self.failed));
        }
        if self.confirmed == Some(false) {
            parts.push("a listing still shows deleted backups".into());
        }
        Some(parts.join("; "))
    }
}

impl fmt::Display for RetentionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = self.policy.as_deref().unwrap_or("(none: everything kept)");
        write!(
            f,
            "job {} in repository {} (policy {policy})",
            self.job, self.repository
        )?;
        if self.dry_run {
            write!(
                f,
                ", DRY RUN: {} kept, {} would be deleted",
                self.kept, self.to_delete
            )?;
        } else {
            write!(f, ": {} kept, {} deleted", self.kept, self.deleted)?;
            let withheld = self.to_delete - self.deleted.min(self.to_delete);
            let withheld = withheld.saturating_sub(self.failed);
            if withheld > 0 {
                write!(f, ", {withheld} not deleted (withheld)")?;
            }
        }
        if self.failed > 0 {
            write!(f, ", {} failed", self.failed)?;
        }
        match self.confirmed {
            Some(true) => write!(f, "; confirmed by listing: the deleted backups are gone")?,
            Some(false) => write!(f, "; NOT confirmed: a listing still shows deleted backups")?,
            None => {}
        }
        writeln!(f)?;
        let rows: Vec<[String; 5]> = self
            .backups
            .iter()
            .map(|b| {
                let why = if b.reasons.is_empty() {
                    b.error.clone().unwrap_or_default()
                } else {
                    b.reasons
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                [
                    b.action.to_string(),
                    b.id.clone(),
                    b.backup_type.to_string(),
                    match self.timezone.parse::<chrono_tz::Tz>() {
                        Ok(tz) => b
                            .stopped_at
                            .with_timezone(&tz)
                            .format("%Y-%m-%d %H:%M %Z")
                            .to_string(),
                        Err(_) => b.stopped_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                    },
                    why,
                ]
            })
            .collect();
        if !rows.is_empty() {
            let header = ["ACTION", "BACKUP", "TYPE", "STOPPED", "WHY"];
            let mut w = header.map(str::len);
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            let line = |f: &mut fmt::Formatter<'_>, c: [&str; 5]| {
                let text = format!(
                    "  {:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
                    c[0],
                    c[1],
                    c[2],
                    c[3],
                    c[4],
                    w0 = w[0],
                    w1 = w[1],
                    w2 = w[2],
                    w3 = w[3]
                );
                writeln!(f, "{}", text.trim_end())
            };
            line(f, header)?;
            for r in &rows {
                line(f, [&r[0], &r[1], &r[2], &r[3], &r[4]])?;
            }
        }
        if let Some(w) = &self.wal {
            let from = w
                .plan
                .continuous_from
                .as_deref()
                .unwrap_or("(no base backup: all kept)");
            let verb = if self.dry_run {
                "would delete"
            } else {
                "deleted"
            };
            let n = if self.dry_run {
                w.plan.delete.len() as u64
            } else {
                w.deleted
            };
            writeln!(
                f,
                "  WAL of job {}: continuous from {from}, {} older backups pinned, {} files kept, {verb} {n}{}",
                w.wal_job,
                w.plan.pins.len(),
                w.plan.kept_files + w.plan.history_files,
                if w.failed > 0 {
                    format!(", {} failed", w.failed)
                } else {
                    String::new()
                }
            )?;
            for e in &w.errors {
                writeln!(f, "  WAL error: {e}")?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

fn outcome(d: &Decision, action: Action) -> BackupOutcome {
    BackupOutcome {
        id: d.id.clone(),
        backup_type: d.backup_type,
        stopped_at: d.stopped_at,
        bytes_stored: d.bytes_stored,
        action,
        reasons: d.reasons.clone(),
        error: None,
    }
}

/// Deletes the backups `plan` marks for deletion from `repository` (nothing when `dry_run`):
/// newest first, so an incremental goes before its parent; each backup's commit record first,
/// so a half-deleted backup never looks complete. Then lists the repository to confirm the
/// deleted backups are gone. Failures are in the report, never hidden. `at` is the daemon's clock
/// (the report's time).
pub async fn apply(
    repository: &Repository,
    job: &str,
    plan: &Plan,
    dry_run: bool,
    at: DateTime<Utc>,
) -> RetentionReport {
    let mut report = RetentionReport {
        job: job.to_string(),
        repository: repository.name.clone(),
        policy: None,
        at,
        timezone: String::new(),
        dry_run,
        backups: Vec::with_capacity(plan.decisions.len()),
        kept: 0,
        to_delete: 0,
        deleted: 0,
        failed: 0,
        bytes_freed: 0,
        confirmed: None,
        warnings: plan.warnings.clone(),
        errors: Vec::new(),
        wal: None,
    };
    // Decisions are newest first: deleting in that order removes children before parents.
    for d in &plan.decisions {
        if d.keep {
            report.kept += 1;
            report.backups.push(outcome(d, Action::Keep));
            continue;
        }
        report.to_delete += 1;
        if dry_run {
            report.backups.push(outcome(d, Action::WouldDelete));
            continue;
        }
        match repository.delete_backup_objects(job, &d.id).await {
            Ok(_) => {
                report.deleted += 1;
                report.bytes_freed += d.bytes_stored;
                report.backups.push(outcome(d, Action::Delete));
                prune_empty_folders(repository, job, &d.id);
                tracing::info!(job, repository = %repository.name, backup_id = %d.id, "retention: backup deleted");
            }
            Err(err) => {
                report.failed += 1;
                let mut o = outcome(d, Action::DeleteFailed);
                o.error = Some(crate::error::error_chain_of(&err));
                report.backups.push(o);
            }
        }
    }
    if !dry_run && report.deleted > 0 {
        report.confirmed = Some(confirm_gone(repository, job, &mut report).await);
    }
    report
}

/// Lists the job's backups again: every deleted backup must have neither a commit record nor
/// any object left.
async fn confirm_gone(repository: &Repository, job: &str, report: &mut RetentionReport) -> bool {
    let listed = match repository.store.list(&format::job_prefix(job)).await {
        Ok(l) => l,
        Err(err) => {
            report.errors.push(format!(
                "cannot confirm the deletions by listing: {}",
                crate::error::error_chain_of(&err)
            ));
            return false;
        }
    };
    let left: std::collections::BTreeSet<&str> = listed
        .iter()
        .filter_map(|m| format::parse_backup_key(&m.key).map(|(_, id)| id))
        .collect();
    let mut ok = true;
    for b in &mut report.backups {
        if b.action == Action::Delete && left.contains(b.id.as_str()) {
            ok = false;
            b.action = Action::DeleteFailed;
            b.error = Some("still listed after deletion".into());
            report.failed += 1;
            report.deleted -= 1;
            report.bytes_freed -= b.bytes_stored;
        }
    }
    ok
}

/// Removes the empty folders a local store leaves behind a deleted backup (best effort; a
/// folder that still holds anything stays).
fn prune_empty_folders(repository: &Repository, job: &str, id: &str) {
    fn prune(dir: &std::path::Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    prune(&entry.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    if let Some(local) = repository.store.local_store()
        && let Ok(dir) = local.path_of(format::backup_prefix(job, id).trim_end_matches('/'))
    {
        prune(&dir);
    }
}

/// The policy a job uses: its name and the policy (the default, empty policy keeps everything).
pub fn policy_of(catalogue: &Catalogue, job: &Job) -> (Option<String>, RetentionPolicy) {
    match job
        .retention
        .as_ref()
        .and_then(|n| catalogue.retention.get(n).map(|p| (n, p)))
    {
        Some((name, p)) => (Some(name.clone()), p.clone()),
        None => (None, RetentionPolicy::default()),
    }
}

/// Lists the job's committed backups in `repository`, plans with the job's policy in the
/// catalogue's timezone, and applies the plan (deletes nothing when `dry_run`). When a commit
/// record of the job cannot be read, nothing is deleted (its backup could be a parent).
pub async fn run_for_job(
    catalogue: &Catalogue,
    job: &Job,
    repository: &Repository,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<RetentionReport, RetentionError> {
    let (policy_name, policy) = policy_of(catalogue, job);
    let (records, bad) = repository
        .list_commits(Some(&job.name))
        .await
        .map_err(|source| RetentionError::List {
            job: job.name.clone(),
            repository: repository.name.clone(),
            source: Box::new(source),
        })?;
    let infos: Vec<BackupInfo> = records
        .iter()
        .filter(|r| r.job == job.name)
        .map(BackupInfo::from)
        .collect();
    let plan = plan::plan(&infos, &policy, catalogue.daemon.timezone, now);
    let withhold = !bad.is_empty();
    let mut report = apply(repository, &job.name, &plan, dry_run || withhold, now).await;
    report.policy = policy_name;
    report.timezone = catalogue.daemon.timezone.to_string();
    if let crate::catalogue::JobSpec::PostgresBase(base) = &job.spec
        && let Some(wal_job) = &base.wal_job
        && catalogue
            .job(wal_job)
            .is_some_and(|w| w.repositories.contains(&repository.name))
        && !withhold
    {
        // Kept = not deleted (a failed deletion is still there; in a dry run, what would go
        // is treated as gone).
        let gone: std::collections::BTreeSet<&str> = report
            .backups
            .iter()
            .filter(|b| matches!(b.action, Action::Delete | Action::WouldDelete))
            .map(|b| b.id.as_str())
            .collect();
        let kept_records: Vec<crate::repository::CommitRecord> = records
            .iter()
            .filter(|r| r.job == job.name && !gone.contains(r.id.as_str()))
            .cloned()
            .collect();
        let kept = wal::kept_from_records(&kept_records);
        report.wal =
            Some(wal::run(repository, wal_job, &kept, base.pitr_window, now, dry_run).await);
    }
    if withhold {
        report.dry_run = dry_run;
        for e in &bad {
            report.errors.push(crate::error::error_chain_of(e));
        }
        report.errors.push(format!(
            "{} commit records could not be read; nothing was deleted until they are fixed",
            bad.len()
        ));
    }
    Ok(report)
}

/// The (job, repository) pairs a `retention` request covers: with `job`, that job (policy or
/// not); without, every job with a retention policy. `repository` narrows to one repository.
pub fn targets<'a>(
    catalogue: &'a Catalogue,
    job: Option<&str>,
    repository: Option<&str>,
) -> Result<Vec<(&'a Job, &'a RepositorySettings)>, RetentionError> {
    let jobs: Vec<&Job> = match job {
        Some(name) => vec![
            catalogue
                .job(name)
                .ok_or_else(|| RetentionError::UnknownJob(name.to_string()))?,
        ],
        None => catalogue
            .jobs
            .iter()
            .filter(|j| j.retention.is_some())
            .collect(),
    };
    if let Some(r) = repository
        && catalogue.repository(r).is_none()
    {
        return Err(RetentionError::UnknownRepository(r.to_string()));
    }
    let mut out = Vec::new();
    for j in jobs {
        for r in &j.repositories {
            if repository.is_some_and(|want| want != r) {
                continue;
            }
            if let Some(settings) = catalogue.repository(r) {
                out.push((j, settings));
            }
        }
    }
    Ok(out)
}

/// Retention for every target of [`targets`]; a pair that fails is a report with the error.
/// Used by the daemon's `retention` request and by the ctl without a daemon.
pub async fn run_matching(
    catalogue: &Catalogue,
    job: Option<&str>,
    repository: Option<&str>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<RetentionReport>, RetentionError> {
    let mut reports = Vec::new();
    for (j, settings) in targets(catalogue, job, repository)? {
        let (policy, _) = policy_of(catalogue, j);
        let result = match Repository::open(settings) {
            Ok(repo) => run_for_job(catalogue, j, &repo, now, dry_run).await,
            Err(source) => Err(RetentionError::Open {
                repository: settings.name.clone(),
                source: Box::new(source),
            }),
        };
        reports.push(result.unwrap_or_else(|e| {
            RetentionReport::failed_pass(
                &j.name,
                &settings.name,
                policy,
                now,
                dry_run,
                crate::error::error_chain_of(&e),
            )
        }));
    }
    Ok(reports)
}

/// Shrinks reports to fit one protocol line of `limit` bytes: first the kept backups' rows go
/// (counts stay), then deleted rows beyond what fits; a warning says so.
pub fn fit_reply(reports: &mut [RetentionReport], limit: usize) {
    let size = |r: &[RetentionReport]| serde_json::to_vec(r).map(|v| v.len()).unwrap_or(0);
    if size(reports) <= limit {
        return;
    }
    for r in reports.iter_mut() {
        let before = r.backups.len();
        r.backups.retain(|b| b.action != Action::Keep);
        if r.backups.len() < before {
            r.warnings.push(format!(
                "{} kept backups not listed (reply size limit); narrow with --job/--repository, or run offline",
                before - r.backups.len()
            ));
        }
    }
    while size(reports) > limit {
        let Some(r) = reports.iter_mut().max_by_key(|r| r.backups.len()) else {
            return;
        };
        if r.backups.is_empty() {
            return;
        }
        let n = r.backups.len().div_ceil(2);
        r.backups.truncate(r.backups.len() - n);
        r.warnings
            .push(format!("{n} more backups not listed (reply size limit)"));
    }
}

/// Brings the state DB in line with a report: the rows of deleted backups go, and a real
/// (not dry-run) pass is recorded for `status`.
pub async fn record_in_state(
    state: &crate::state::StateDb,
    report: &RetentionReport,
) -> Result<(), crate::state::StateError> {
    for b in report.backups.iter().filter(|b| b.action == Action::Delete) {
        state
            .remove_backup(&report.job, &b.id, &report.repository)
            .await?;
    }
    if !report.dry_run {
        state
            .record_retention_pass(&crate::model::RetentionPass {
                job: report.job.clone(),
                repository: report.repository.clone(),
                at: report.at,
                kept: report.kept as u64,
                deleted: report.deleted as u64,
                error: report.error_text(),
            })
            .await?;
    }
    Ok(())
}

/// What [`cleanup_uncommitted`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CleanupReport {
    pub repository: String,
    /// `job/id` of each uncommitted backup removed, with its object count.
    pub removed: Vec<(String, usize)>,
    /// `job/id` left alone: younger than the grace period, or running.
    pub spared: Vec<String>,
    /// Staging files (local stores) removed.
    pub staging_removed: usize,
    pub bytes_freed: u64,
}

/// Removes the objects of backups that never committed, once every object of that backup is
/// older than `grace` (docs/design.md §4: longer than the longest recorded run), never touching a
/// prefix in `running_prefixes` (`backups/<job>/<id>/` of running backups); for local stores
/// also staging files older than `grace`.
pub async fn cleanup_uncommitted(
    repository: &Repository,
    grace: Duration,
    running_prefixes: &[String],
) -> Result<CleanupReport, RetentionError> {
    cleanup_uncommitted_at(repository, grace, running_prefixes, Utc::now()).await
}

/// [`cleanup_uncommitted`] with the grace counted back from `now` (the daemon passes its clock's
/// time, so the manual-clock tests control the grace).
pub async fn cleanup_uncommitted_at(
    repository: &Repository,
    grace: Duration,
    running_prefixes: &[String],
    now: DateTime<Utc>,
) -> Result<CleanupReport, RetentionError> {
    let grace_c = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let cutoff = now
        .checked_sub_signed(grace_c)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let err = |source| RetentionError::Cleanup {
        repository: repository.name.clone(),
        source: Box::new(source),
    };
    let mut report = CleanupReport {
        repository: repository.name.clone(),
        ..Default::default()
    };
    for (job, id, objects) in repository.list_uncommitted(None).await.map_err(err)? {
        let prefix = format::backup_prefix(&job, &id);
        let running = running_prefixes
            .iter()
            .any(|r| prefix.starts_with(r.as_str()) || r.starts_with(prefix.as_str()));
        let young = objects.iter().any(|o| o.modified > cutoff);
        if running || young {
            report.spared.push(format!("{job}/{id}"));
            continue;
        }
        // Re-check right before deleting: a commit record that appeared means it is complete.
        if repository
            .commit_record(&job, &id)
            .await
            .map_err(err)?
            .is_some()
        {
            continue;
        }
        let mut n = 0;
        for o in &objects {
            repository.store.delete(&o.key).await.map_err(|source| {
                err(RepositoryError::Store {
                    repository: repository.name.clone(),
                    source,
                })
            })?;
            report.bytes_freed += o.size;
            n += 1;
        }
        prune_empty_folders(repository, &job, &id);
        tracing::info!(repository = %repository.name, job = %job, backup_id = %id, objects = n, "cleanup: uncommitted backup removed");
        report.removed.push((format!("{job}/{id}"), n));
    }
    if let Some(local) = repository.store.local_store() {
        let dir = local.staging_dir();
        let staging_err = |source| RetentionError::Staging {
            repository: repository.name.clone(),
            path: dir.display().to_string(),
            source,
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => Some(e),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(staging_err(e)),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry.map_err(staging_err)?;
            let meta = entry.metadata().map_err(staging_err)?;
            if !meta.is_file() {
                continue;
            }
            let modified: DateTime<Utc> = meta
                .modified()
                .map(DateTime::<Utc>::from)
                .map_err(staging_err)?;
            if modified <= cutoff {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        report.staging_removed += 1;
                        report.bytes_freed += meta.len();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(staging_err(e)),
                }
            }
        }
    }
    Ok(report)
}
