//! One verify run: for each covered backup job and repository, integrity reads (all objects, or
//! the next sample buckets within the budget), WAL continuity for base backups, and one restore
//! drill of the newest backup per job (at most one drill at a time in the process); with
//! `--backup ID`, that backup's whole chain (its ancestors, and for a base backup the WAL it
//! needs to be consistent). Returns every check; with a [`Recorder`] (the daemon's) each check
//! is also recorded in the state DB as it finishes — the ctl's offline `verify --wait` records
//! nothing.

use super::check::{Check, CheckKind, CheckResult};
use super::integrity::{self, BUCKETS, Expected, Item};
use super::record::Recorder;
pub use super::scope::{BUILT_IN_JOB, Scope, built_in, choose_job, targets};
use crate::catalogue::{Catalogue, IntegrityMode, Job, JobSpec, VerifyJob};
use crate::pipeline::{Identities, ProgressCounter};
use crate::postgres::base_record::BaseBackupInfo;
use crate::repository::{CommitRecord, Repository};
use crate::state::{KnownObject, SampleCursor, StateDb};
use crate::wal::format::{ArchivedKey, WAL_PREFIX, parse_object_key};
use chrono::Utc;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

mod reads;
use reads::integrity_reads;

/// At most one drill at a time in this process (drills are heavy: a restored database or
/// cluster).
static DRILL_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One verify run.
pub struct VerifyRun<'a> {
    pub catalogue: &'a Catalogue,
    /// The verify job (from the catalogue, or [`built_in`]).
    pub job: &'a Job,
    pub scope: &'a Scope,
    pub run_id: i64,
    /// The state DB (the daemon's); None offline: nothing recorded, `sample` reads everything.
    pub state: Option<&'a StateDb>,
    /// Records each check as it finishes (the daemon's); None: the caller has the outcome only.
    pub recorder: Option<&'a Recorder<'a>>,
    pub cancel: CancellationToken,
    /// Phase text for progress reports.
    pub phase: &'a (dyn Fn(&str) + Send + Sync),
    pub progress: &'a ProgressCounter,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct VerifyOutcome {
    pub checks: Vec<Check>,
    /// The run was cancelled before it finished.
    pub cancelled: bool,
}

impl VerifyOutcome {
    /// Ok(summary) when no check failed (skipped is not a failure), else Err naming the failures.
    pub fn verdict(&self) -> Result<String, String> {
        let failed: Vec<&Check> = self
            .checks
            .iter()
            .filter(|c| c.result == CheckResult::Fail)
            .collect();
        let count = |r: CheckResult| self.checks.iter().filter(|c| c.result == r).count();
        if failed.is_empty() {
            return Ok(format!(
                "{} checks passed, {} skipped",
                count(CheckResult::Pass),
                count(CheckResult::Skipped)
            ));
        }
        let mut parts: Vec<String> = failed
            .iter()
            .take(5)
            .map(|c| format!("{} {} ({}): {}", c.job, c.kind.as_str(), c.name, c.detail))
            .collect();
        if failed.len() > 5 {
            parts.push(format!("and {} more", failed.len() - 5));
        }
        Err(format!(
            "{} of {} checks failed: {}",
            failed.len(),
            self.checks.len(),
            parts.join("; ")
        ))
    }
}

fn check(
    job: &str,
    repository: Option<&str>,
    backup_id: Option<&str>,
    kind: CheckKind,
    name: String,
    result: CheckResult,
    detail: String,
) -> Check {
    Check {
        job: job.to_string(),
        repository: repository.map(str::to_string),
        backup_id: backup_id.map(str::to_string),
        kind,
        name,
        result,
        detail,
        seconds: 0.0,
        bytes: 0,
    }
}

/// A check's grouping of object reads: (job, backup id; None for archived WAL).
type GroupKey = (String, Option<String>);

/// What one repository holds for the covered jobs.
struct Holdings {
    repository: Repository,
    /// Per covered job: its readable commit records (oldest first).
    records: BTreeMap<String, Vec<CommitRecord>>,
    /// Parsed keys of archived WAL (listed only when a covered job needs them).
    wal: Vec<ArchivedKey>,
}

/// Runs the checks. Never panics on bad data: every problem is a failed check naming it. With a
/// recorder, every check is in the state DB when this returns (most of them since they finished).
pub async fn run(r: VerifyRun<'_>) -> VerifyOutcome {
    let mut out = VerifyOutcome::default();
    run_checks(&r, &mut out).await;
    if let Some(rec) = r.recorder {
        rec.finish(&out.checks).await;
    }
    out
}

/// Records the checks of `list` not recorded yet (the run's list: base 0).
async fn catch_up(r: &VerifyRun<'_>, list: &[Check]) {
    if let Some(rec) = r.recorder {
        rec.catch_up(0, list).await;
    }
}

async fn run_checks(r: &VerifyRun<'_>, out: &mut VerifyOutcome) {
    let JobSpec::Verify(spec) = &r.job.spec else {
        out.checks.push(check(
            &r.job.name,
            None,
            None,
            CheckKind::Integrity,
            "verify job".into(),
            CheckResult::Fail,
            format!("job `{}` is not a verify job", r.job.name),
        ));
        return;
    };
    let targets = match targets(r.catalogue, r.job, r.scope) {
        Ok(t) => t,
        Err(e) => {
            out.checks.push(check(
                r.scope.job.as_deref().unwrap_or(&r.job.name),
                None,
                None,
                CheckKind::Integrity,
                "scope".into(),
                CheckResult::Fail,
                e,
            ));
            return;
        }
    };
    // The identity: content checks when there is one; a broken one is a failure, not a skip.
    let identities = match &r.catalogue.encryption.identity_file {
        None => None,
        Some(path) => match Identities::load(path) {
            Ok(ids) => Some(ids),
            Err(e) => {
                out.checks.push(check(
                    &r.job.name,
                    None,
                    None,
                    CheckKind::Integrity,
                    "identity file".into(),
                    CheckResult::Fail,
                    format!(
                        "{}; only stored hashes are checked",
                        crate::error::error_chain_of(&e)
                    ),
                ));
                None
            }
        },
    };

    // Repositories in catalogue order, each with the covered jobs stored there.
    let mut by_repo: BTreeMap<usize, (String, Vec<&Job>)> = BTreeMap::new();
    for (job, repos) in &targets {
        for name in repos {
            let pos = r
                .catalogue
                .repositories
                .iter()
                .position(|s| &s.name == name)
                .unwrap_or(usize::MAX);
            by_repo
                .entry(pos)
                .or_insert_with(|| (name.clone(), Vec::new()))
                .1
                .push(job);
        }
    }
    if r.scope.integrity {
        for (name, jobs) in by_repo.values() {
            if r.cancel.is_cancelled() {
                out.cancelled = true;
                return;
            }
            (r.phase)(&format!("integrity: repository {name}"));
            if let Some(h) = holdings(r, name, jobs, &mut out.checks).await {
                catch_up(r, &out.checks).await;
                if spec.integrity != IntegrityMode::Off {
                    integrity_reads(r, spec, &h, jobs, identities.as_ref(), out).await;
                    catch_up(r, &out.checks).await;
                }
                wal_checks(&h, jobs, r.scope.backup.as_deref(), &mut out.checks);
            }
            catch_up(r, &out.checks).await;
        }
    }
    if out.cancelled {
        return;
    }
    if r.scope.drills && spec.drills {
        for (job, repos) in &targets {
            if matches!(job.spec, JobSpec::PostgresWal(_)) {
                continue;
            }
            if r.cancel.is_cancelled() {
                out.cancelled = true;
                return;
            }
            catch_up(r, &out.checks).await;
            drill(r, spec, job, &repos[0], &mut out.checks).await;
            catch_up(r, &out.checks).await;
        }
    }
}

/// Lists the repository's commit records of `jobs` (and its WAL when needed). A repository that
/// cannot be opened or listed is one failed check per job.
async fn holdings(
    r: &VerifyRun<'_>,
    name: &str,
    jobs: &[&Job],
    checks: &mut Vec<Check>,
) -> Option<Holdings> {
    let fail_all = |checks: &mut Vec<Check>, message: String| {
        for job in jobs {
            checks.push(check(
                &job.name,
                Some(name),
                None,
                CheckKind::Integrity,
                format!("repository {name}"),
                CheckResult::Fail,
                message.clone(),
            ));
        }
    };
    let Some(settings) = r.catalogue.repository(name) else {
        fail_all(
            checks,
            format!("repository `{name}` is not in the catalogue"),
        );
        return None;
    };
    let repository = match Repository::open(settings) {
        Ok(repo) => repo,
        Err(e) => {
            fail_all(checks, crate::error::error_chain_of(&e));
            return None;
        }
    };
    let mut records = BTreeMap::new();
    for job in jobs {
        if matches!(job.spec, JobSpec::PostgresWal(_)) {
            continue;
        }
        match repository.list_commits(Some(&job.name)).await {
            Ok((good, bad)) => {
                for e in bad {
                    checks.push(check(
                        &job.name,
                        Some(name),
                        None,
                        CheckKind::Integrity,
                        "commit record".into(),
                        CheckResult::Fail,
                        crate::error::error_chain_of(&e),
                    ));
                }
                let good = match &r.scope.backup {
                    Some(id) => match chain_of(r, job, name, id).await {
                        Ok(chain) => chain,
                        Err(detail) => {
                            checks.push(check(
                                &job.name,
                                Some(name),
                                Some(id),
                                CheckKind::Integrity,
                                format!("backup {id}"),
                                CheckResult::Fail,
                                detail,
                            ));
                            Vec::new()
                        }
                    },
                    None => good,
                };
                records.insert(job.name.clone(), good);
            }
            Err(e) => checks.push(check(
                &job.name,
                Some(name),
                None,
                CheckKind::Integrity,
                format!("repository {name}"),
                CheckResult::Fail,
                crate::error::error_chain_of(&e),
            )),
        }
    }
    let needs_wal = jobs
        .iter()
        .any(|j| matches!(j.spec, JobSpec::PostgresWal(_) | JobSpec::PostgresBase(_)));
    let mut wal = Vec::new();
    if needs_wal {
        match repository.store.list(WAL_PREFIX).await {
            Ok(list) => {
                wal = list
                    .iter()
                    .filter_map(|m| parse_object_key(&m.key))
                    .collect()
            }
            Err(e) => fail_all(
                checks,
                format!("listing archived WAL: {}", crate::error::error_chain_of(&e)),
            ),
        }
    }
    Some(Holdings {
        repository,
        records,
        wal,
    })
}

/// `--backup ID` of `job` in repository `name`: the backup and every ancestor a restore of it
/// reads (the restore path's chain rule), oldest first; Err names what is missing.
async fn chain_of(
    r: &VerifyRun<'_>,
    job: &Job,
    name: &str,
    id: &str,
) -> Result<Vec<CommitRecord>, String> {
    let source = crate::restore::RestoreSource::open(r.catalogue, job, Some(name), &[job.kind()])
        .await
        .map_err(|e| crate::error::error_chain_of(&e))?;
    let chain = source
        .resolve(crate::restore::Choice::Id(id))
        .map_err(|e| crate::error::error_chain_of(&e))?;
    let mut records: Vec<CommitRecord> = std::iter::once(chain.backup)
        .chain(chain.ancestors)
        .collect();
    records.reverse();
    Ok(records)
}

/// The archived WAL a base backup needs to be consistent: its timeline's segments from its start
/// segment to its stop segment (and the timeline's `.history` after the first).
fn wal_for_consistency<'h>(wal: &'h [ArchivedKey], rec: &CommitRecord) -> Vec<&'h ArchivedKey> {
    let Some(Ok(info)) = BaseBackupInfo::from_record(rec) else {
        return Vec::new();
    };
    let history = format!("{:08X}.history", info.timeline);
    wal.iter()
        .filter(|k| k.identity == info.cluster && k.name.timeline == info.timeline)
        .filter(|k| match k.name.kind {
            crate::wal::WalKind::Segment => {
                k.name.name.as_str() >= info.start_wal.as_str()
                    && k.name.name.as_str() <= info.stop_wal.as_str()
            }
            crate::wal::WalKind::History => info.timeline > 1 && k.name.name == history,
            _ => false,
        })
        .collect()
}

/// Every object of the covered jobs in one repository (commit-record objects, then WAL). With
/// `--backup` of a base backup: the WAL that backup needs to be consistent (group `backup_id`
/// None, job the base job).
fn items_of(h: &Holdings, jobs: &[&Job], backup: Option<&str>) -> Vec<Item> {
    let mut items = Vec::new();
    for job in jobs {
        if let Some(records) = h.records.get(&job.name) {
            if matches!(job.spec, JobSpec::PostgresBase(_))
                && let Some(rec) = backup.and_then(|id| records.iter().find(|r| r.id == id))
            {
                for k in wal_for_consistency(&h.wal, rec) {
                    items.push(Item {
                        job: job.name.clone(),
                        backup_id: None,
                        key: crate::wal::format::object_key(&k.identity, &k.name, &k.sha256),
                        expected: Expected::Wal {
                            sha256: k.sha256.clone(),
                        },
                    });
                }
            }
            for rec in records {
                for o in rec.objects.iter().chain(std::iter::once(&rec.manifest)) {
                    items.push(Item {
                        job: job.name.clone(),
                        backup_id: Some(rec.id.clone()),
                        key: o.key.clone(),
                        expected: Expected::Record(o.clone()),
                    });
                }
            }
        }
        if matches!(job.spec, JobSpec::PostgresWal(_)) && backup.is_none() {
            for k in &h.wal {
                items.push(Item {
                    job: job.name.clone(),
                    backup_id: None,
                    key: crate::wal::format::object_key(&k.identity, &k.name, &k.sha256),
                    expected: Expected::Wal {
                        sha256: k.sha256.clone(),
                    },
                });
            }
        }
    }
    items
}

/// WAL continuity of every base backup of the covered base jobs in this repository (only of
/// `backup` when given: its ancestors' WAL is not what a restore of it replays).
fn wal_checks(h: &Holdings, jobs: &[&Job], backup: Option<&str>, checks: &mut Vec<Check>) {
    let repo = h.repository.name.as_str();
    for job in jobs
        .iter()
        .filter(|j| matches!(j.spec, JobSpec::PostgresBase(_)))
    {
        let Some(records) = h.records.get(&job.name) else {
            continue;
        };
        for rec in records
            .iter()
            .filter(|rec| backup.is_none_or(|id| rec.id == id))
        {
            let started = Instant::now();
            let name = format!("WAL from backup {} to the newest segment", rec.id);
            let mut c = match BaseBackupInfo::from_record(rec) {
                None => check(
                    &job.name,
                    Some(repo),
                    Some(&rec.id),
                    CheckKind::Wal,
                    name,
                    CheckResult::Fail,
                    format!(
                        "the commit record of backup {} has no `postgres` details",
                        rec.id
                    ),
                ),
                Some(Err(e)) => check(
                    &job.name,
                    Some(repo),
                    Some(&rec.id),
                    CheckKind::Wal,
                    name,
                    CheckResult::Fail,
                    format!("the commit record's `postgres` details are malformed: {e}"),
                ),
                Some(Ok(info)) => {
                    let found = super::wal::continuity(&h.wal, &info);
                    let result = if found.is_complete() {
                        CheckResult::Pass
                    } else {
                        CheckResult::Fail
                    };
                    check(
                        &job.name,
                        Some(repo),
                        Some(&rec.id),
                        CheckKind::Wal,
                        name,
                        result,
                        found.describe(&rec.id, &info),
                    )
                }
            };
            c.seconds = started.elapsed().as_secs_f64();
            checks.push(c);
        }
    }
}

/// One drill of `job`'s newest backup (or `--backup`) in `repository`.
async fn drill(
    r: &VerifyRun<'_>,
    spec: &VerifyJob,
    job: &Job,
    repository: &str,
    checks: &mut Vec<Check>,
) {
    let fail = |detail: String| {
        check(
            &job.name,
            Some(repository),
            r.scope.backup.as_deref(),
            CheckKind::Drill,
            "restore drill".into(),
            CheckResult::Fail,
            detail,
        )
    };
    // The drill records its checks as they finish: they follow the run's checks so far.
    let base = checks.len();
    let source = match crate::restore::RestoreSource::open(
        r.catalogue,
        job,
        Some(repository),
        &[job.kind()],
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            checks.push(fail(crate::error::error_chain_of(&e)));
            return;
        }
    };
    let choice = crate::restore::Choice::from_options(r.scope.backup.as_deref(), None);
    let backup = match source.choose(choice) {
        Ok(b) => b.clone(),
        Err(e) => {
            checks.push(fail(crate::error::error_chain_of(&e)));
            return;
        }
    };
    (r.phase)(&format!("drill: {} backup {}", job.name, backup.id));
    let _one_at_a_time = DRILL_LOCK.lock().await;
    let outcome = super::drill::run(super::drill::DrillRequest {
        catalogue: r.catalogue,
        job,
        source: &source,
        backup: &backup,
        settings: &spec.drill,
        run_id: r.run_id,
        cancel: r.cancel.clone(),
        recorder: r.recorder.map(|rec| (rec, base)),
    })
    .await;
    for mut c in outcome.checks {
        if c.kind == CheckKind::Drill {
            if let Some(s) = outcome.restore_seconds {
                c.seconds = s;
            }
            c.bytes = outcome.backup_bytes;
        }
        checks.push(c);
    }
}
