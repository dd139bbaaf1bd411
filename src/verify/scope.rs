//! What a verify run covers: the [`Scope`] of a manual `verify`, the verify job it runs as
//! ([`choose_job`], the [`built_in`] one) and the covered jobs and repositories ([`targets`]).

use crate::catalogue::{Catalogue, Job, JobSpec, VerifyJob};
use crate::model::JobKindName;

/// The name of the built-in verify job (used when no verify job covers the job asked for).
pub const BUILT_IN_JOB: &str = "verify";

/// What one run covers (`bdc-backupctl verify --job J --integrity-only|--drill-only --backup ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Only this backup job.
    pub job: Option<String>,
    /// Integrity reads and WAL continuity.
    pub integrity: bool,
    /// Restore drills (when the verify job has `drills = true`).
    pub drills: bool,
    /// This backup instead of the newest (integrity reads then read just it, in full).
    pub backup: Option<String>,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            job: None,
            integrity: true,
            drills: true,
            backup: None,
        }
    }
}

/// The verify job a manual `verify --job J` runs as: the first verify job in catalogue order
/// that covers `J` (any verify job when no job is named), else the built-in job `verify` with
/// the defaults. An unknown `J`, or one that is not a backup job, is an error.
pub fn choose_job(catalogue: &Catalogue, job: Option<&str>) -> Result<Job, String> {
    if let Some(name) = job {
        match catalogue.job(name) {
            None => return Err(format!("no job named `{name}` in the catalogue")),
            Some(j) if j.kind() == JobKindName::Verify => {
                return Err(format!(
                    "job `{name}` is a verify job; name the backup job to verify (or run it with `bdc-backupctl run {name}`)"
                ));
            }
            Some(_) => {}
        }
    }
    let found = catalogue.jobs.iter().find(|v| match (&v.spec, job) {
        (JobSpec::Verify(spec), Some(name)) => catalogue.job(name).is_some_and(|j| spec.covers(j)),
        (JobSpec::Verify(_), None) => true,
        _ => false,
    });
    if let Some(v) = found {
        return Ok(v.clone());
    }
    if let Some(other) = catalogue.job(BUILT_IN_JOB) {
        return Err(format!(
            "no verify job covers {}, and the built-in verify job cannot run because the catalogue's job `{BUILT_IN_JOB}` is a {} job",
            job.map_or("the catalogue's jobs".to_string(), |j| format!("`{j}`")),
            other.kind()
        ));
    }
    Ok(built_in(catalogue))
}

/// The built-in verify job: every backup job, every repository, the defaults.
pub fn built_in(catalogue: &Catalogue) -> Job {
    let any = catalogue.jobs.first();
    Job {
        name: BUILT_IN_JOB.to_string(),
        repositories: Vec::new(),
        retention: None,
        max_age: None,
        connection: None,
        ping_url: None,
        compression: any.map(|j| j.compression.clone()).unwrap_or(
            crate::catalogue::CompressionSettings {
                algorithm: crate::catalogue::Compression::Zstd,
                level: 3,
                workers: 1,
            },
        ),
        spec: JobSpec::Verify(VerifyJob::defaults(&catalogue.daemon.state_directory)),
    }
}

/// The covered backup jobs and, for each, the repositories to verify (catalogue order).
pub fn targets<'c>(
    catalogue: &'c Catalogue,
    verify: &Job,
    scope: &Scope,
) -> Result<Vec<(&'c Job, Vec<String>)>, String> {
    let JobSpec::Verify(spec) = &verify.spec else {
        return Err(format!("job `{}` is not a verify job", verify.name));
    };
    let mut out = Vec::new();
    for job in catalogue.jobs.iter().filter(|j| spec.covers(j)) {
        if scope.job.as_deref().is_some_and(|n| n != job.name) {
            continue;
        }
        let repos: Vec<String> = job
            .repositories
            .iter()
            .filter(|r| verify.repositories.is_empty() || verify.repositories.contains(r))
            .cloned()
            .collect();
        if !repos.is_empty() {
            out.push((job, repos));
        }
    }
    if let Some(name) = &scope.job
        && out.is_empty()
    {
        return Err(format!(
            "verify job `{}` covers no repository of job `{name}`",
            verify.name
        ));
    }
    Ok(out)
}
