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

/// The integrity reads of one repository: all objects (`full`, a `--job`/`--backup` run, or no
/// state DB) or the next sample buckets within the budget. One check per backup read (and one
/// for archived WAL), plus one `sample` line saying which buckets were read.
async fn integrity_reads(
    r: &VerifyRun<'_>,
    spec: &VerifyJob,
    h: &Holdings,
    jobs: &[&Job],
    identities: Option<&Identities>,
    out: &mut VerifyOutcome,
) {
    let repo = h.repository.name.as_str();
    let items = items_of(h, jobs, r.scope.backup.as_deref());
    let sampling = spec.integrity == IntegrityMode::Sample
        && r.scope.job.is_none()
        && r.scope.backup.is_none()
        && r.state.is_some();
    if let Some(state) = r.state {
        // A `--backup` run sees only part of the jobs' objects: it makes its chain's objects
        // known but forgets nothing (and leaves the WAL to the WAL job's rows).
        let partial = r.scope.backup.is_some();
        let known: Vec<KnownObject> = items
            .iter()
            .filter(|i| !partial || i.backup_id.is_some())
            .map(|i| KnownObject {
                repository: repo.to_string(),
                key: i.key.clone(),
                job: i.job.clone(),
                bucket: i.bucket(),
            })
            .collect();
        let names: Vec<String> = if partial {
            Vec::new()
        } else {
            jobs.iter().map(|j| j.name.clone()).collect()
        };
        if let Err(e) = state.sync_objects(repo, &names, &known).await {
            tracing::warn!(repository = repo, error = %e, "state DB: cannot record the objects to verify");
        }
    }
    let started = Instant::now();
    let now = Utc::now();
    let mut cursor = None;
    if sampling && let Some(state) = r.state {
        cursor = Some(
            state
                .sample_cursor(&r.job.name, repo)
                .await
                .ok()
                .flatten()
                .unwrap_or(SampleCursor {
                    next_bucket: 0,
                    cycles: 0,
                    cycle_started_at: now,
                }),
        );
    }
    // Group the items by bucket; a sample run reads whole buckets from the cursor on, never past
    // the end of a cycle, and starts no new bucket once the budget is spent.
    let mut by_bucket: BTreeMap<u32, Vec<&Item>> = BTreeMap::new();
    for i in &items {
        by_bucket.entry(i.bucket()).or_default().push(i);
    }
    let first_bucket = cursor
        .as_ref()
        .map_or(0, |c| c.next_bucket.min(BUCKETS - 1));
    let mut results: Vec<(&Item, integrity::Read)> = Vec::new();
    // Per backup: the manifest's files and blocks per object (or why they are unknown).
    // Keyed by (job, backup id): ids are unique per job only.
    let mut spans: HashMap<(String, String), Result<super::content::Spans, String>> =
        HashMap::new();
    let mut bucket = first_bucket;
    let budget = spec.budget;
    while bucket < BUCKETS {
        if sampling && bucket > first_bucket && started.elapsed() >= budget {
            break;
        }
        if r.cancel.is_cancelled() {
            out.cancelled = true;
            return;
        }
        if let Some(list) = by_bucket.get(&bucket) {
            (r.phase)(&format!(
                "integrity: repository {repo}, bucket {} of {BUCKETS}",
                bucket + 1
            ));
            // Two objects at a time: reads overlap with hashing and decryption.
            let store = &h.repository.store;
            let mut reads: Vec<(&Item, integrity::Read)> = Vec::with_capacity(list.len());
            for pair in list.chunks(2) {
                if let Some(ids) = identities {
                    for item in pair {
                        load_spans(h, item, ids, &mut spans).await;
                    }
                }
                let span_of = |item: &Item| -> Option<&[super::content::Span]> {
                    let backup = item.backup_id.clone()?;
                    let all = spans.get(&(item.job.clone(), backup))?.as_ref().ok()?;
                    Some(all.get(&item.key).map_or(&[][..], Vec::as_slice))
                };
                match pair {
                    [a, b] => {
                        let (ra, rb) = tokio::join!(
                            integrity::read(store, a, identities, span_of(a)),
                            integrity::read(store, b, identities, span_of(b))
                        );
                        reads.push((a, ra));
                        reads.push((b, rb));
                    }
                    [a] => reads.push((a, integrity::read(store, a, identities, span_of(a)).await)),
                    _ => {}
                }
            }
            // The bucket's reads recorded in one transaction (one write per object made the
            // state DB the bound of a full run).
            if let Some(state) = r.state {
                let done: Vec<(&str, &str)> = reads
                    .iter()
                    .map(|(item, read)| {
                        let result = if read.error.is_some() { "fail" } else { "pass" };
                        (item.key.as_str(), result)
                    })
                    .collect();
                if let Err(e) = state.objects_read(repo, &done, Utc::now()).await {
                    tracing::warn!(repository = repo, error = %e, "state DB: cannot record the bucket's object reads");
                }
            }
            for (item, read) in reads {
                r.progress
                    .bytes_read
                    .fetch_add(read.bytes, Ordering::Relaxed);
                results.push((item, read));
            }
        }
        bucket += 1;
    }
    if let (Some(state), Some(mut c)) = (r.state, cursor) {
        let detail;
        if bucket >= BUCKETS {
            c.cycles += 1;
            detail = format!(
                "buckets {}–{BUCKETS} of {BUCKETS}: cycle {} complete (started {})",
                first_bucket + 1,
                c.cycles,
                c.cycle_started_at.format("%Y-%m-%d %H:%M UTC")
            );
            c.next_bucket = 0;
            c.cycle_started_at = Utc::now();
        } else {
            detail = format!(
                "buckets {}–{bucket} of {BUCKETS} (the budget of {} is spent; the next run goes on with bucket {})",
                first_bucket + 1,
                humantime::format_duration(Duration::from_secs(budget.as_secs())),
                bucket + 1
            );
            c.next_bucket = bucket;
        }
        if let Err(e) = state.set_sample_cursor(&r.job.name, repo, &c).await {
            tracing::warn!(repository = repo, error = %e, "state DB: cannot record the sample cursor");
        }
        let mut line = check(
            &r.job.name,
            Some(repo),
            None,
            CheckKind::Integrity,
            format!("sample of repository {repo}"),
            CheckResult::Pass,
            format!("{detail}; {} objects read", results.len()),
        );
        line.seconds = started.elapsed().as_secs_f64();
        line.bytes = results.iter().map(|(_, x)| x.bytes).sum();
        out.checks.push(line);
    }
    // One check per backup (and per job's archived WAL), in the order the objects came.
    let mut groups: Vec<(GroupKey, Vec<&(&Item, integrity::Read)>)> = Vec::new();
    for res in &results {
        let k = (res.0.job.clone(), res.0.backup_id.clone());
        match groups.iter_mut().find(|(g, _)| g == &k) {
            Some((_, v)) => v.push(res),
            None => groups.push((k, vec![res])),
        }
    }
    for ((job, backup), reads) in groups {
        let failures: Vec<&String> = reads.iter().filter_map(|(_, x)| x.error.as_ref()).collect();
        let bytes: u64 = reads.iter().map(|(_, x)| x.bytes).sum();
        let content = reads.iter().all(|(_, x)| x.content_checked);
        let files: u64 = reads.iter().map(|(_, x)| x.files_checked).sum();
        let per_file = match backup
            .as_ref()
            .and_then(|b| spans.get(&(job.clone(), b.clone())))
        {
            Some(Ok(_)) => format!("; {files} files or blocks match the manifest"),
            Some(Err(e)) => format!("; per-file hashes not checked ({e})"),
            None => String::new(),
        };
        let name = match (&backup, &r.scope.backup) {
            (Some(id), _) => format!("objects of backup {id}"),
            (None, Some(id)) => format!("archived WAL backup {id} needs to be consistent"),
            (None, None) => "archived WAL".to_string(),
        };
        let (result, detail) = if failures.is_empty() {
            let how = if content {
                "stored hashes and decrypted content match"
            } else {
                "stored hashes match (content not checked: no identity-file)"
            };
            (
                CheckResult::Pass,
                format!(
                    "{} objects, {}: {how}{per_file}",
                    reads.len(),
                    crate::units::human_bytes(bytes)
                ),
            )
        } else {
            let mut parts: Vec<String> = failures.iter().take(5).map(|s| s.to_string()).collect();
            if failures.len() > 5 {
                parts.push(format!("and {} more", failures.len() - 5));
            }
            (
                CheckResult::Fail,
                format!(
                    "{} of {} objects are bad: {}",
                    failures.len(),
                    reads.len(),
                    parts.join("; ")
                ),
            )
        };
        let mut c = check(
            &job,
            Some(repo),
            backup.as_deref(),
            CheckKind::Integrity,
            name,
            result,
            detail,
        );
        c.bytes = bytes;
        out.checks.push(c);
    }
}

/// Reads the manifest of `item`'s backup once (snapshot kinds), for the per-file checks.
async fn load_spans(
    h: &Holdings,
    item: &Item,
    ids: &Identities,
    spans: &mut HashMap<(String, String), Result<super::content::Spans, String>>,
) {
    let Some(backup) = &item.backup_id else {
        return;
    };
    let cache_key = (item.job.clone(), backup.clone());
    if spans.contains_key(&cache_key) {
        return;
    }
    let Some(record) = h
        .records
        .get(&item.job)
        .and_then(|list| list.iter().find(|r| &r.id == backup))
    else {
        return;
    };
    match super::content::spans_of(&h.repository.store, record, ids).await {
        Ok(Some(s)) => {
            spans.insert(cache_key, Ok(s));
        }
        Ok(None) => {}
        Err(e) => {
            spans.insert(cache_key, Err(e));
        }
    }
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
