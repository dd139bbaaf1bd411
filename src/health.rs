//! Health evaluation, pure: from the state DB's facts, the catalogue and the time now → each job's
//! freshness (`fresh`/`stale`) and each objective's RPO, RTO and state (docs/alerts.md). The
//! daemon gathers [`Facts`] (`daemon::alerts`), `status` and the metrics read the result.

use crate::catalogue::{Catalogue, Job, JobSpec, Objective};
use crate::model::alerts::{Freshness, JobHealth, ObjectiveHealth, ObjectiveState};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;

/// A WAL job's `max-age` when `archive_timeout` is not known.
pub const DEFAULT_WAL_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// How long an objective without a drill may wait for one when no verify job covers it.
pub const DEFAULT_VERIFY_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The newest drill of a job: its measured restore time and the size it restored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrillFact {
    pub at: DateTime<Utc>,
    pub restore_seconds: f64,
    /// Bytes of the backup the drill restored (0: unknown, no scaling).
    pub bytes: u64,
}

/// What the state DB knows of one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFacts {
    /// The newest successful run's end (for a WAL job: the newest archived file).
    pub newest_success: Option<DateTime<Utc>>,
    /// When the daemon first saw the job (`jobs_seen`).
    pub first_seen: Option<DateTime<Utc>>,
    /// The newest committed backup's stop (consistency) time, over its repositories.
    pub newest_backup: Option<DateTime<Utc>>,
    /// The bytes stored of the newest full backup (RTO scaling).
    pub newest_backup_bytes: u64,
    /// For a WAL job: the newest archived segment's time.
    pub newest_wal: Option<DateTime<Utc>>,
    /// The newest drill, if the drills table exists and has one.
    pub drill: Option<DrillFact>,
}

/// Everything health needs besides the catalogue and the time.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub jobs: HashMap<String, JobFacts>,
    /// The cluster's `archive_timeout`, when the daemon could read it (0 = off: unknown).
    pub archive_timeout: Option<Duration>,
}

/// The `max-age` in force for `job`: the catalogue's, else twice the longest gap between the
/// fires of its schedules taken together, else (postgres-wal) `archive_timeout` × 3 or 15 min.
/// Returns (max-age, is-default); None when the job has neither.
pub fn max_age(
    catalogue: &Catalogue,
    job: &Job,
    archive_timeout: Option<Duration>,
    now: DateTime<Utc>,
) -> Option<(Duration, bool)> {
    if let Some(m) = job.max_age {
        return Some((m, false));
    }
    if let JobSpec::PostgresWal(_) = job.spec {
        let d = match archive_timeout.filter(|d| !d.is_zero()) {
            Some(t) => t * 3,
            None => DEFAULT_WAL_MAX_AGE,
        };
        return Some((d, true));
    }
    longest_interval(catalogue, job, now).map(|i| (i * 2, true))
}

/// The longest gap between consecutive fires of the job's schedules (all of them together),
/// over the next 32 fires after `now`, in the catalogue's time zone.
pub fn longest_interval(catalogue: &Catalogue, job: &Job, now: DateTime<Utc>) -> Option<Duration> {
    let tz = catalogue.daemon.timezone;
    let schedules = job.schedules();
    if schedules.is_empty() {
        return None;
    }
    let mut at = now;
    let mut prev: Option<DateTime<Utc>> = None;
    let mut longest = chrono::Duration::zero();
    for _ in 0..32 {
        let next = schedules
            .iter()
            .filter_map(|(_, s)| s.next_after(at, tz))
            .min()?;
        if let Some(p) = prev {
            longest = longest.max(next - p);
        }
        prev = Some(next);
        at = next;
    }
    longest.to_std().ok().filter(|d| !d.is_zero())
}

/// Each job's freshness, in catalogue order. A job never seen counts from `now`.
pub fn jobs(catalogue: &Catalogue, facts: &Facts, now: DateTime<Utc>) -> Vec<JobHealth> {
    let empty = JobFacts::default();
    catalogue
        .jobs
        .iter()
        .map(|job| {
            let f = facts.jobs.get(&job.name).unwrap_or(&empty);
            let counted_from = f.newest_success.or(f.first_seen).unwrap_or(now);
            let limit = max_age(catalogue, job, facts.archive_timeout, now);
            let stale = limit.is_some_and(|(m, _)| {
                now - counted_from > chrono::Duration::from_std(m).unwrap_or(chrono::Duration::MAX)
            });
            JobHealth {
                job: job.name.clone(),
                freshness: if stale {
                    Freshness::Stale
                } else {
                    Freshness::Fresh
                },
                newest_success: f.newest_success,
                counted_from,
                max_age_seconds: limit.map(|(m, _)| m.as_secs()),
                max_age_default: limit.is_some_and(|(_, d)| d),
            }
        })
        .collect()
}

/// The newest restorable point of `job`: a WAL job's newest archived segment when a base backup
/// of the catalogue builds on it and has committed; else the newest committed backup's stop time.
fn restorable_point(catalogue: &Catalogue, job: &Job, facts: &Facts) -> Option<DateTime<Utc>> {
    let f = facts.jobs.get(&job.name)?;
    match &job.spec {
        JobSpec::PostgresWal(_) => {
            let based = catalogue.jobs.iter().any(|b| match &b.spec {
                JobSpec::PostgresBase(spec) => {
                    spec.wal_job.as_deref() == Some(job.name.as_str())
                        && facts
                            .jobs
                            .get(&b.name)
                            .is_some_and(|bf| bf.newest_backup.is_some())
                }
                _ => false,
            });
            if based { f.newest_wal } else { None }
        }
        _ => f.newest_backup,
    }
}

/// The longest interval of a verify job covering `job` (one that lists it, or lists none).
fn verify_interval(catalogue: &Catalogue, job: &str, now: DateTime<Utc>) -> Option<Duration> {
    catalogue
        .jobs
        .iter()
        .filter(|v| match &v.spec {
            JobSpec::Verify(spec) => spec.jobs.is_empty() || spec.jobs.iter().any(|j| j == job),
            _ => false,
        })
        .filter_map(|v| longest_interval(catalogue, v, now))
        .max()
}

/// Each objective measured now, by name.
pub fn objectives(
    catalogue: &Catalogue,
    facts: &Facts,
    now: DateTime<Utc>,
) -> Vec<ObjectiveHealth> {
    catalogue
        .objectives
        .values()
        .map(|o| objective(catalogue, o, facts, now))
        .collect()
}

fn objective(
    catalogue: &Catalogue,
    o: &Objective,
    facts: &Facts,
    now: DateTime<Utc>,
) -> ObjectiveHealth {
    let jobs: Vec<&Job> = o.jobs.iter().filter_map(|j| catalogue.job(j)).collect();
    let newest_point = jobs
        .iter()
        .filter_map(|j| restorable_point(catalogue, j, facts))
        .max();
    let rpo_seconds = newest_point.map(|p| (now - p).num_seconds().max(0));
    // RTO: the slowest job's newest drill, scaled to its backup's size now.
    let mut rto: Option<f64> = None;
    let mut rto_missing = Vec::new();
    for j in &jobs {
        if matches!(j.spec, JobSpec::PostgresWal(_) | JobSpec::Verify(_)) {
            continue;
        }
        let f = facts.jobs.get(&j.name);
        match f.and_then(|f| f.drill.map(|d| (d, f.newest_backup_bytes))) {
            Some((d, now_bytes)) => {
                let scale = if d.bytes > 0 && now_bytes > 0 {
                    now_bytes as f64 / d.bytes as f64
                } else {
                    1.0
                };
                let s = d.restore_seconds * scale;
                rto = Some(rto.map_or(s, |r: f64| r.max(s)));
            }
            None => rto_missing.push(j.name.as_str()),
        }
    }
    let rto_seconds = if rto_missing.is_empty() {
        rto.map(|s| s.ceil() as i64)
    } else {
        None
    };
    let mut breached = Vec::new();
    let mut unknown = Vec::new();
    if let Some(target) = o.rpo {
        match rpo_seconds {
            None => breached.push("no restorable point yet".to_string()),
            Some(s) if s > target.as_secs() as i64 => breached.push(format!(
                "RPO {} over the target {}",
                human(s),
                human(target.as_secs() as i64)
            )),
            Some(_) => {}
        }
    }
    if let Some(target) = o.rto {
        match rto_seconds {
            Some(s) if s > target.as_secs() as i64 => breached.push(format!(
                "RTO {} over the target {}",
                human(s),
                human(target.as_secs() as i64)
            )),
            Some(_) => {}
            None => {
                // Unknown until one verify interval has passed since the jobs were first seen.
                let since = o
                    .jobs
                    .iter()
                    .filter_map(|j| facts.jobs.get(j).and_then(|f| f.first_seen))
                    .min()
                    .unwrap_or(now);
                let grace = rto_missing
                    .iter()
                    .filter_map(|j| verify_interval(catalogue, j, now))
                    .max()
                    .unwrap_or(DEFAULT_VERIFY_INTERVAL);
                let why = format!("no restore drill yet for {}", rto_missing.join(", "));
                if now - since > chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX)
                {
                    breached.push(why);
                } else {
                    unknown.push(why);
                }
            }
        }
    }
    let (state, reason) = if !breached.is_empty() {
        (ObjectiveState::Breached, breached.join("; "))
    } else if !unknown.is_empty() {
        (ObjectiveState::Unknown, unknown.join("; "))
    } else {
        (ObjectiveState::Met, String::new())
    };
    ObjectiveHealth {
        name: o.name.clone(),
        jobs: o.jobs.clone(),
        rpo_seconds,
        newest_point,
        rto_seconds,
        target_rpo_seconds: o.rpo.map(|d| d.as_secs()),
        target_rto_seconds: o.rto.map(|d| d.as_secs()),
        state,
        reason,
    }
}

/// Seconds for people: `90s`, `5m`, `2h 5m`, `3d 4h`.
pub fn human(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h {m}m", s / 3600),
        },
        _ => match (s % 86400) / 3600 {
            0 => format!("{}d", s / 86400),
            h => format!("{}d {h}h", s / 86400),
        },
    }
}

#[cfg(test)]
mod tests;
