//! `bdc-backupctl bootstrap --repository URL [--credentials-file F] --identity KEY --output DIR`:
//! disaster recovery on a bare host (no catalogue, no state DB, no daemon). Reads the repository
//! directly, recovers the newest catalogue copy ([`crate::dr::catalogue_copy`]) into
//! `DIR/catalogue.toml` (pointed at this URL and identity; the verbatim copy beside it), the
//! non-secret files it names beneath `DIR/files/`, lists what each job can restore, and writes
//! `DIR/plan.toml` in the seed's order ([`crate::dr::plan`]).

use super::{CtlError, CtlResult, outln, print_json};
use crate::catalogue::{Catalogue, JobSpec};
use crate::dr::catalogue_copy;
use crate::dr::plan::{Action, Plan, Step};
use crate::dr::provenance::Provenance;
use crate::model::JobKindName;
use crate::pipeline::Identities;
use crate::repository::{CommitRecord, Repository};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};

/// What `bootstrap` found: printed, and in `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootstrapReport {
    pub repository: String,
    pub catalogue: PathBuf,
    pub plan: PathBuf,
    pub catalogue_written_at: DateTime<Utc>,
    pub catalogue_host: String,
    pub files: Vec<PathBuf>,
    pub skipped_files: Vec<String>,
    pub application_version: Option<String>,
    pub jobs: Vec<JobRestorable>,
    /// Problems the recovered catalogue has on this host (fix them before `restore all`).
    pub catalogue_problems: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRestorable {
    pub job: String,
    pub kind: JobKindName,
    pub backups: usize,
    pub newest: Option<String>,
    pub newest_at: Option<DateTime<Utc>>,
    pub bytes_stored: u64,
    /// For a postgres-base job: recoverable from the oldest base's stop to the newest WAL.
    pub pitr_from: Option<DateTime<Utc>>,
    pub pitr_to: Option<DateTime<Utc>>,
}

pub async fn run(a: &super::args::BootstrapArgs, json: bool) -> CtlResult {
    let identity = std::path::absolute(&a.identity)
        .map_err(|e| CtlError::usage(format!("--identity {}: {e}", a.identity.display())))?;
    let identities = Identities::load(&identity).map_err(|e| {
        let hint = match &e {
            crate::pipeline::IdentityError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                format!(" (running as {}; the file must be readable by it)", who())
            }
            _ => String::new(),
        };
        CtlError::usage(format!("--identity {}: {e}{hint}", identity.display()))
    })?;
    let credentials = match &a.credentials_file {
        Some(f) => Some(
            std::path::absolute(f)
                .map_err(|e| CtlError::usage(format!("--credentials-file {}: {e}", f.display())))?,
        ),
        None => None,
    };
    let out = writable_output(&a.output)?;
    let repo = open_url(
        &a.repository,
        credentials.as_deref(),
        a.region.as_deref(),
        a.endpoint.as_deref(),
    )?;
    let (index, bundle) = catalogue_copy::newest(&repo, &identities)
        .await
        .map_err(|e| {
            let chain = crate::error::error_chain_of(&e);
            if chain.contains("age:") {
                CtlError::failed(format!(
                    "{chain} — the identity {} does not open this repository's catalogue copy (wrong identity?)",
                    identity.display()
                ))
            } else {
                CtlError::failed(chain)
            }
        })?;
    let write = |p: &Path, text: &str| {
        std::fs::write(p, text).map_err(|e| CtlError::failed(format!("{}: {e}", p.display())))
    };
    write(&out.join("catalogue.original.toml"), &bundle.catalogue)?;
    let rewritten = rewrite(
        &bundle.catalogue,
        &index.repository,
        &a.repository,
        credentials.as_deref(),
        &identity,
    )
    .map_err(|e| CtlError::failed(format!("the recovered catalogue does not parse: {e}")))?;
    let catalogue_path = out.join("catalogue.toml");
    write(&catalogue_path, &rewritten)?;
    let files = catalogue_copy::write_files(&bundle, &out.join("files")).map_err(|e| {
        CtlError::failed(format!(
            "writing the catalogue's files beneath {}: {e}",
            out.join("files").display()
        ))
    })?;
    let (catalogue, catalogue_problems) = match Catalogue::load(&catalogue_path) {
        Ok(c) => (Some(c), Vec::new()),
        Err(errors) => (None, errors.0.iter().map(|e| e.to_string()).collect()),
    };
    let (records, bad) = repo
        .list_commits(None)
        .await
        .map_err(|e| CtlError::failed(crate::error::error_chain_of(&e)))?;
    for b in &bad {
        eprintln!("warning: {b}");
    }
    if records.is_empty() {
        return Err(CtlError::failed(format!(
            "repository {} holds a catalogue copy but no committed backup",
            a.repository
        )));
    }
    let jobs = restorable(&repo, &records).await;
    let application_version = records
        .iter()
        .rev()
        .find_map(|r| Provenance::of(r).and_then(|p| p.application_version));
    let plan = build_plan(
        &catalogue_path,
        catalogue.as_ref(),
        &index.repository,
        &jobs,
        &out,
        application_version.clone(),
    );
    let plan_path = out.join("plan.toml");
    let text = plan
        .to_toml()
        .map_err(|e| CtlError::failed(format!("cannot write the plan: {e}")))?;
    write(&plan_path, &format!("{text}{HOOK_EXAMPLE}"))?;
    let report = BootstrapReport {
        repository: a.repository.clone(),
        catalogue: catalogue_path,
        plan: plan_path,
        catalogue_written_at: index.written_at,
        catalogue_host: index.host,
        files,
        skipped_files: bundle.skipped,
        application_version,
        jobs,
        catalogue_problems,
    };
    if json {
        print_json(&report)
    } else {
        outln(&human(&report))
    }
}

/// This process's user, as errors name it.
fn who() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| format!("user `{}`", u.name))
}

/// The output folder, created, absolute, and checked writable before the repository is read.
fn writable_output(dir: &Path) -> Result<PathBuf, CtlError> {
    let fail = |e: std::io::Error| {
        CtlError::failed(format!(
            "--output {}: cannot write there as {}: {e}",
            dir.display(),
            who()
        ))
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    tempfile::Builder::new()
        .prefix(".bootstrap-probe-")
        .tempfile_in(dir)
        .map_err(fail)?;
    Ok(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

const HOOK_EXAMPLE: &str = "\n# Hooks that start services come last, e.g.:\n# [[step]]\n# name = \"start the application\"\n# kind = \"command\"\n# command = [\"systemctl\", \"start\", \"app.service\"]\n# timeout = \"5m\"\n";

fn human(r: &BootstrapReport) -> String {
    let mut s = format!(
        "catalogue copy of {} from host `{}` → {}\n",
        r.catalogue_written_at.format("%Y-%m-%d %H:%M:%S UTC"),
        r.catalogue_host,
        r.catalogue.display()
    );
    for f in &r.files {
        s.push_str(&format!("  file {}\n", f.display()));
    }
    for f in &r.skipped_files {
        s.push_str(&format!("  not copied: {f}\n"));
    }
    if let Some(v) = &r.application_version {
        s.push_str(&format!("application version: {v} (check it out first)\n"));
    }
    s.push_str("restorable:\n");
    for j in &r.jobs {
        s.push_str(&format!(
            "  {:<20} {:<14} {} backup(s), newest {} ({})",
            j.job,
            j.kind.as_str(),
            j.backups,
            j.newest.as_deref().unwrap_or("-"),
            crate::units::human_bytes(j.bytes_stored)
        ));
        if let (Some(f), Some(t)) = (j.pitr_from, j.pitr_to) {
            s.push_str(&format!(
                ", PITR {} … {}",
                f.format("%Y-%m-%d %H:%M:%S"),
                t.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        s.push('\n');
    }
    for p in &r.catalogue_problems {
        s.push_str(&format!("fix before `restore all`: {p}\n"));
    }
    s.push_str(&format!(
        "plan: {} — check it, then `bdc-backupctl restore all --plan {} --dry-run`",
        r.plan.display(),
        r.plan.display()
    ));
    s
}

/// A repository opened from its URL alone, through the catalogue's own validation.
fn open_url(
    url: &str,
    credentials: Option<&Path>,
    region: Option<&str>,
    endpoint: Option<&str>,
) -> Result<Repository, CtlError> {
    let mut t = toml::Table::new();
    let mut r = toml::Table::new();
    r.insert("url".into(), url.into());
    if let Some(c) = credentials {
        r.insert("credentials-file".into(), c.display().to_string().into());
    }
    if let Some(x) = region {
        r.insert("region".into(), x.into());
    }
    if let Some(x) = endpoint {
        r.insert("endpoint".into(), x.into());
    }
    let mut repos = toml::Table::new();
    repos.insert("dr".into(), r.into());
    t.insert("repository".into(), repos.into());
    let text = toml::to_string(&t).map_err(|e| CtlError::usage(e.to_string()))?;
    let catalogue = crate::catalogue::parse_str(&text, Path::new("/dev/null/--repository"), &[])
        .map_err(|errors| {
            CtlError::usage(
                errors
                    .0
                    .iter()
                    .map(|e| format!("--repository {url}: {}: {}", e.key, e.message))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
    let settings = catalogue
        .repository("dr")
        .ok_or_else(|| CtlError::usage(format!("--repository {url}: not usable")))?;
    Repository::open(settings).map_err(|e| CtlError::failed(format!("--repository {url}: {e}")))
}

/// The recovered catalogue pointed at this host's URL, credentials and identity.
fn rewrite(
    text: &str,
    repository: &str,
    url: &str,
    credentials: Option<&Path>,
    identity: &Path,
) -> Result<String, toml::de::Error> {
    let mut t: toml::Table = toml::from_str(text)?;
    let enc = t
        .entry("encryption")
        .or_insert_with(|| toml::Table::new().into());
    if let Some(enc) = enc.as_table_mut() {
        enc.insert(
            "identity-file".into(),
            identity.display().to_string().into(),
        );
    }
    if let Some(r) = t
        .get_mut("repository")
        .and_then(|r| r.as_table_mut())
        .and_then(|r| r.get_mut(repository))
        .and_then(|r| r.as_table_mut())
    {
        r.insert("url".into(), url.into());
        if let Some(c) = credentials {
            r.insert("credentials-file".into(), c.display().to_string().into());
        }
    }
    Ok(format!(
        "# Recovered by `bdc-backupctl bootstrap` from {url}; repository `{repository}` and the\n\
         # identity point at this host. The copy as written is catalogue.original.toml.\n{}",
        toml::to_string_pretty(&t).unwrap_or_default()
    ))
}

/// Per job: count, newest, size, and the PITR range of base jobs.
async fn restorable(repo: &Repository, records: &[CommitRecord]) -> Vec<JobRestorable> {
    let mut jobs: Vec<JobRestorable> = Vec::new();
    for r in records {
        let entry = match jobs.iter_mut().position(|j| j.job == r.job) {
            Some(i) => &mut jobs[i],
            None => {
                jobs.push(JobRestorable {
                    job: r.job.clone(),
                    kind: r.kind,
                    backups: 0,
                    newest: None,
                    newest_at: None,
                    bytes_stored: 0,
                    pitr_from: None,
                    pitr_to: None,
                });
                jobs.last_mut().expect("just pushed")
            }
        };
        entry.backups += 1;
        if entry.newest_at.is_none_or(|t| r.stopped_at >= t) {
            entry.newest = Some(r.id.clone());
            entry.newest_at = Some(r.stopped_at);
            entry.bytes_stored = r.bytes_stored;
        }
        if r.kind == JobKindName::PostgresBase && entry.pitr_from.is_none_or(|t| r.stopped_at < t) {
            entry.pitr_from = Some(r.stopped_at);
        }
    }
    for j in jobs
        .iter_mut()
        .filter(|j| j.kind == JobKindName::PostgresBase)
    {
        let identity = records
            .iter()
            .filter(|r| r.job == j.job)
            .find_map(|r| crate::postgres::base_record::BaseBackupInfo::from_record(r)?.ok())
            .map(|i| i.cluster);
        if let Some(id) = identity
            && let Ok(metas) = repo
                .store
                .list(&crate::wal::format::archive_prefix(&id))
                .await
        {
            j.pitr_to = metas
                .iter()
                .filter(|m| crate::wal::format::parse_object_key(&m.key).is_some())
                .map(|m| m.modified)
                .max()
                .or(j.newest_at);
        }
    }
    jobs
}

/// The plan in the seed's order: config, database (cluster, then dumps), files.
fn build_plan(
    catalogue_path: &Path,
    catalogue: Option<&Catalogue>,
    repository: &str,
    jobs: &[JobRestorable],
    out: &Path,
    application_version: Option<String>,
) -> Plan {
    // The repository field only when the job's first repository is not the one read here.
    let repo_for = |job: &str| -> Option<String> {
        let first = catalogue
            .and_then(|c| c.job(job))
            .and_then(|j| j.repositories.first().cloned());
        (first.as_deref() != Some(repository)).then(|| repository.to_string())
    };
    let restore = out.join("restore");
    let mut steps = Vec::new();
    let of_kind = |k: JobKindName| jobs.iter().filter(move |j| j.kind == k);
    for j in of_kind(JobKindName::Config) {
        steps.push(Step {
            name: format!("config {}", j.job),
            action: Action::Config {
                job: j.job.clone(),
                backup: None,
                target: Some(restore.join("config").join(&j.job)),
                in_place: false,
                repository: repo_for(&j.job),
            },
        });
    }
    let port = catalogue
        .and_then(|c| c.postgres.as_ref())
        .and_then(|p| url::Url::parse(&p.url).ok())
        .and_then(|u| u.port());
    for j in of_kind(JobKindName::PostgresBase) {
        steps.push(Step {
            name: format!("cluster {}", j.job),
            action: Action::Cluster {
                job: j.job.clone(),
                backup: None,
                target_dir: restore.join("pgdata").join(&j.job),
                port,
                start: true,
                no_archive: true,
                repository: repo_for(&j.job),
            },
        });
    }
    for j in of_kind(JobKindName::PostgresDump) {
        steps.push(Step {
            name: format!("database {}", j.job),
            action: Action::Database {
                job: j.job.clone(),
                backup: None,
                database: None,
                into: format!("{}_restored", j.job.replace('-', "_")),
                url: None,
                create: true,
                roles: false,
                repository: repo_for(&j.job),
            },
        });
    }
    for j in of_kind(JobKindName::Files) {
        let target = catalogue
            .and_then(|c| c.job(&j.job))
            .and_then(|job| match &job.spec {
                JobSpec::Files(f) => Some(
                    restore
                        .join("files")
                        .join(f.path.strip_prefix("/").unwrap_or(&f.path)),
                ),
                _ => None,
            })
            .unwrap_or_else(|| restore.join("files").join(&j.job));
        steps.push(Step {
            name: format!("files {}", j.job),
            action: Action::Files {
                job: j.job.clone(),
                backup: None,
                target,
                overwrite: false,
                repository: repo_for(&j.job),
            },
        });
    }
    Plan {
        catalogue: catalogue_path.to_path_buf(),
        application_version,
        created_at: Some(Utc::now()),
        steps,
    }
}
