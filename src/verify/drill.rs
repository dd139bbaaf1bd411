//! Restore drills: the newest backup of a job restored into a temporary database, a scratch cluster
//! or a scratch folder, checked, measured and removed (docs/drills.md). This module owns the
//! shared frame: one drill at a time, the scratch folder, cancellation and the clean-up that
//! always runs; the drills themselves are in `dump`, `cluster` and `files`, the SQL checks in
//! `sql`, leftovers of a killed daemon in `leftovers`.

mod cluster;
mod dump;
mod files;
pub mod guard;
mod leftovers;
pub mod sql;

use crate::catalogue::{Catalogue, Job, JobSpec};
use crate::repository::CommitRecord;
use crate::restore::RestoreSource;
use crate::verify::check::{Check, CheckKind, CheckResult, DrillSettings};
use crate::verify::record::Recorder;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub use cluster::isolation_settings;
pub use files::sample;

/// One drill to run.
pub struct DrillRequest<'a> {
    pub catalogue: &'a Catalogue,
    /// The covered backup job.
    pub job: &'a Job,
    /// The job's repository, opened.
    pub source: &'a RestoreSource,
    /// The backup to restore (normally the newest).
    pub backup: &'a CommitRecord,
    pub settings: &'a DrillSettings,
    /// The verify run's id (names the temporary database / scratch folder).
    pub run_id: i64,
    pub cancel: CancellationToken,
    /// Records the drill's checks as they finish, with the run's number of checks before the
    /// drill began; None: only the outcome has them.
    pub recorder: Option<(&'a Recorder<'a>, usize)>,
}

/// What a drill found.
#[derive(Debug, Clone, Default)]
pub struct DrillOutcome {
    pub checks: Vec<Check>,
    /// Measured restore time (restore start to first answered query / last file written), when
    /// the restore itself succeeded.
    pub restore_seconds: Option<f64>,
    /// The restored backup's size (stored bytes of its chain).
    pub backup_bytes: u64,
}

/// A check of this drill's job, repository and backup.
pub(crate) fn new_check(
    req: &DrillRequest<'_>,
    kind: CheckKind,
    name: &str,
    result: CheckResult,
    detail: String,
    seconds: f64,
    bytes: u64,
) -> Check {
    Check {
        job: req.job.name.clone(),
        repository: Some(req.source.repository_name().to_string()),
        backup_id: Some(req.backup.id.clone()),
        kind,
        name: name.to_string(),
        result,
        detail,
        seconds,
        bytes,
    }
}

/// Records the drill's checks finished so far (when the run has a recorder); each is committed
/// to the state DB before this returns.
pub(crate) async fn emit(req: &DrillRequest<'_>, out: &DrillOutcome) {
    if let Some((rec, base)) = req.recorder {
        rec.catch_up(base, &out.checks).await;
    }
}

/// Runs one drill. Never leaves anything behind under the scratch directory or in PostgreSQL:
/// the clean-up runs after success, failure and cancel alike.
pub async fn run(req: DrillRequest<'_>) -> DrillOutcome {
    let began = Instant::now();
    let mut out = DrillOutcome::default();
    let fail = |out: &mut DrillOutcome, detail: String| {
        out.checks.push(new_check(
            &req,
            CheckKind::Drill,
            "restore drill",
            CheckResult::Fail,
            detail,
            began.elapsed().as_secs_f64(),
            out.backup_bytes,
        ));
    };
    out.backup_bytes = match req.source.chain_of(req.backup) {
        Ok(chain) => std::iter::once(&chain.backup)
            .chain(&chain.ancestors)
            .flat_map(|r| r.objects.iter().chain(std::iter::once(&r.manifest)))
            .map(|o| o.size)
            .sum(),
        Err(e) => {
            fail(&mut out, crate::error::error_chain_of(&e));
            return out;
        }
    };
    if !matches!(
        req.job.spec,
        JobSpec::PostgresDump(_)
            | JobSpec::PostgresBase(_)
            | JobSpec::Files(_)
            | JobSpec::Config(_)
    ) {
        out.checks.push(new_check(
            &req,
            CheckKind::Drill,
            "restore drill",
            CheckResult::Skipped,
            format!("{} jobs have no restore drill", req.job.kind()),
            0.0,
            0,
        ));
        return out;
    }
    // One drill at a time in this process.
    let _permit = tokio::select! {
        p = guard::ONE_AT_A_TIME.acquire() => match p {
            Ok(p) => p,
            Err(_) => {
                fail(&mut out, "the drill semaphore is closed".into());
                return out;
            }
        },
        _ = req.cancel.cancelled() => {
            fail(&mut out, "cancelled before it started".into());
            return out;
        }
    };
    let scratch =
        match guard::Scratch::create(&req.settings.scratch_directory, &req.job.name, req.run_id) {
            Ok(s) => s,
            Err(e) => {
                fail(&mut out, e);
                return out;
            }
        };
    let cancelled = {
        let drill = async {
            match &req.job.spec {
                JobSpec::PostgresDump(_) => dump::drill(&req, &scratch, &mut out).await,
                JobSpec::PostgresBase(_) => cluster::drill(&req, &scratch, &mut out).await,
                _ => files::drill(&req, &scratch, &mut out).await,
            }
        };
        tokio::select! {
            _ = drill => false,
            _ = req.cancel.cancelled() => true,
        }
    };
    if cancelled {
        out.restore_seconds = None;
        fail(
            &mut out,
            "cancelled; what it had restored was removed".into(),
        );
    }
    // A restore that failed in a full scratch file system may have failed at a step whose own
    // error does not say so (the server's log could not be written): name the full disk.
    if out
        .checks
        .iter()
        .any(|c| c.kind == CheckKind::Drill && c.result == CheckResult::Fail)
        && let Some(note) = guard::full_note(&scratch.path)
    {
        for c in out.checks.iter_mut().filter(|c| {
            c.kind == CheckKind::Drill
                && c.result == CheckResult::Fail
                && !c.detail.to_lowercase().contains("no space")
        }) {
            c.detail.push_str("; ");
            c.detail.push_str(&note);
        }
    }
    // Clean-up, whatever happened above.
    let mut problems = Vec::new();
    if matches!(req.job.spec, JobSpec::PostgresBase(_))
        && let Err(e) = cluster::stop(&cluster::data_dir(&scratch), "immediate").await
    {
        problems.push(e);
    }
    if matches!(req.job.spec, JobSpec::PostgresDump(_))
        && let Err(e) = dump::drop_drill_databases(&req).await
    {
        problems.push(format!("dropping the drill databases: {e}"));
    }
    if let Err(e) = scratch.remove() {
        problems.push(e);
    }
    if !problems.is_empty() {
        out.checks.push(new_check(
            &req,
            CheckKind::Drill,
            "clean-up",
            CheckResult::Fail,
            problems.join("; "),
            0.0,
            0,
        ));
    }
    emit(&req, &out).await;
    out
}

/// Removes what drills of an earlier, killed daemon left behind (recognised by name): scratch
/// folders under the scratch directory, `bdc_drill_*` databases, stopped drill clusters. Returns
/// one line per thing removed.
pub async fn remove_leftovers(catalogue: &Catalogue, settings: &DrillSettings) -> Vec<String> {
    // Never while a drill of this process runs.
    let _permit = guard::ONE_AT_A_TIME.acquire().await;
    leftovers::remove(catalogue, settings).await
}
