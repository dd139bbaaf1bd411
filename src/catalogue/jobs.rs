//! The `[[job]]` tables of the catalogue: common keys, each kind's keys, compression and globs, the
//! cross-checks between jobs (wal-job, repositories, verify targets), validated into [`Job`]s.

use super::fields::{Ctx, Table, join, suggest, type_name, valid_name};
use super::raw::Value;
use super::repositories::RepositoryEntry;
use super::validate::{
    JOB_COMMON_KEYS, PostgresInfo, check_postgres_url, job_kind_keys, wal_stream,
};
use super::{
    Compression, CompressionSettings, ConfigJob, DumpJob, FilesJob, Job, JobSpec, RetentionPolicy,
    WalAck, WalJob,
};
use crate::model::JobKindName;
use std::collections::BTreeMap;

/// A job as far as it could be read, for the cross-checks.
pub(super) struct JobEntry {
    pub(super) key: String,
    pub(super) name: Option<String>,
    pub(super) kind: Option<JobKindName>,
    pub(super) repositories: Vec<String>,
    pub(super) wal_job: Option<String>,
    pub(super) verify: super::verify::VerifyRefs,
    pub(super) job: Option<Job>,
}

pub(super) fn jobs(
    cx: &mut Ctx,
    root: &Table,
    repositories: &[RepositoryEntry],
    retention: &BTreeMap<String, RetentionPolicy>,
    postgres: PostgresInfo,
) -> Vec<JobEntry> {
    let items = match root.get("job") {
        None => return Vec::new(),
        Some(Value::Array(_, items)) => items,
        Some(Value::Dict(..)) => {
            cx.error("job", "expected an array of tables, found a table: write [[job]] (double brackets) before each job");
            return Vec::new();
        }
        Some(other) => {
            cx.error(
                "job",
                format!(
                    "expected an array of tables ([[job]]), found {}",
                    type_name(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Dict(_, dict) = item else {
            let key = format!("job[{i}]");
            cx.error(
                &key,
                format!("expected a table ([[job]]), found {}", type_name(item)),
            );
            continue;
        };
        // Named by index and name (`job[3] "db-dump".schedule`): with twenty jobs nobody counts blocks.
        let key = match dict.get("name") {
            Some(Value::String(_, name)) if !name.is_empty() => format!("job[{i}] {name:?}"),
            _ => format!("job[{i}]"),
        };
        out.push(job(
            cx,
            &Table::new(key, dict),
            repositories,
            retention,
            postgres,
        ));
    }

    // Names are unique.
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for j in &out {
        if let Some(name) = &j.name {
            if let Some(first) = seen.get(name.as_str()) {
                duplicates.push((
                    join(&j.key, "name"),
                    format!("duplicate job name \"{name}\" (already used by {first})"),
                ));
            } else {
                seen.insert(name, &j.key);
            }
        }
    }
    for (key, message) in duplicates {
        cx.error(&key, message);
    }

    // Cross-references between jobs.
    // The first job of a name is the one references mean (a duplicate is reported above).
    let mut kinds: BTreeMap<String, Option<JobKindName>> = BTreeMap::new();
    for j in &out {
        if let Some(name) = &j.name {
            kinds.entry(name.clone()).or_insert(j.kind);
        }
    }
    let wal_jobs: Vec<&JobEntry> = out
        .iter()
        .filter(|j| j.kind == Some(JobKindName::PostgresWal))
        .collect();
    if let [first, rest @ ..] = wal_jobs.as_slice() {
        for extra in rest {
            cx.error(
                &join(&extra.key, "kind"),
                format!("only one postgres-wal job may exist (PostgreSQL has one archive_command); {} is one already", first.key),
            );
        }
    }
    for j in &out {
        if let Some(target) = &j.wal_job {
            let key = join(&j.key, "wal-job");
            match kinds.get(target) {
                None => cx.error(&key, unknown_job(target, &kinds)),
                Some(Some(JobKindName::PostgresWal)) | Some(None) => {}
                Some(Some(other)) => cx.error(
                    &key,
                    format!("job \"{target}\" is a {other} job, not a postgres-wal job"),
                ),
            }
        }
        super::verify::cross_check(cx, &j.verify, &kinds, &|t| unknown_job(t, &kinds));
        if j.kind == Some(JobKindName::PostgresWal) {
            let known: Vec<&RepositoryEntry> = j
                .repositories
                .iter()
                .filter_map(|r| repositories.iter().find(|e| &e.name == r))
                .collect();
            if !known.is_empty() && !known.iter().any(|r| r.wal_ack == WalAck::Sync) {
                cx.error(
                    &join(&j.key, "repositories"),
                    "a postgres-wal job needs at least one repository with wal-ack = \"sync\" \
                     (a WAL segment is acknowledged to PostgreSQL only once it is durable there)",
                );
            }
        }
    }
    out
}

pub(super) fn unknown_job(target: &str, kinds: &BTreeMap<String, Option<JobKindName>>) -> String {
    let hint = suggest(target, kinds.keys().map(String::as_str))
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default();
    format!("no job is named \"{target}\"{hint}")
}

pub(super) fn job(
    cx: &mut Ctx,
    t: &Table,
    repositories: &[RepositoryEntry],
    retention: &BTreeMap<String, RetentionPolicy>,
    postgres: PostgresInfo,
) -> JobEntry {
    let kinds_list = || {
        JobKindName::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // `name` is the name as written (also when invalid, so references to it do not cascade
    // into more errors); the job itself is built only from a valid one.
    let name = t.text(cx, "name").map(str::to_string);
    let name_valid = match &name {
        Some(n) if valid_name(n) => true,
        Some(n) => {
            cx.error(
                &t.key("name"),
                format!("job name \"{n}\" may only contain letters, digits, '.', '_' and '-'"),
            );
            false
        }
        None => {
            if t.get("name").is_none() {
                t.missing(cx, "name", "every job needs a `name`");
            }
            false
        }
    };
    let kind = match t.get("kind") {
        None => {
            t.missing(
                cx,
                "kind",
                &format!("every job needs a `kind`: one of {}", kinds_list()),
            );
            None
        }
        Some(_) => {
            let all: Vec<&str> = JobKindName::ALL.iter().map(|k| k.as_str()).collect();
            t.choice(cx, "kind", &all)
                .and_then(|k| k.parse::<JobKindName>().ok())
        }
    };

    // Allowed keys: the common ones plus the kind's (all kinds' when the kind is unknown).
    let mut allowed: Vec<&str> = JOB_COMMON_KEYS.to_vec();
    match kind {
        Some(k) => allowed.extend(job_kind_keys(k)),
        None => JobKindName::ALL
            .iter()
            .for_each(|k| allowed.extend(job_kind_keys(*k))),
    }
    let elsewhere = |key: &str| -> Option<String> {
        let kind = kind?;
        let owners: Vec<&str> = JobKindName::ALL
            .iter()
            .filter(|k| job_kind_keys(**k).contains(&key))
            .map(|k| k.as_str())
            .collect();
        let owners = match owners.split_last() {
            None => return None,
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        };
        let hint = match (kind, key) {
            (JobKindName::PostgresBase | JobKindName::Files, "schedule") => {
                "; this kind is scheduled with `full` and `incremental`"
            }
            (JobKindName::PostgresDump | JobKindName::Config | JobKindName::Verify, "full") => {
                "; this kind is scheduled with `schedule`"
            }
            _ => "",
        };
        Some(format!(
            "`{key}` is not a key of {kind} jobs (it belongs to {owners} jobs){hint}"
        ))
    };
    t.check_keys(cx, &allowed, &elsewhere);

    // Repositories: at least one, each defined, no repeats.
    let mut repo_names = Vec::new();
    match t.strings(cx, "repositories") {
        // A verify job covers every repository of its jobs unless it names some.
        None if t.get("repositories").is_none() && kind != Some(JobKindName::Verify) => t.missing(
            cx,
            "repositories",
            "every job needs `repositories`: at least one [repository.NAME]",
        ),
        None => {}
        Some(list) if list.is_empty() => {
            cx.error(&t.key("repositories"), "must name at least one repository")
        }
        Some(list) => {
            for (key, r) in list {
                if repo_names.iter().any(|n| n == r) {
                    cx.error(&key, format!("repository \"{r}\" is listed twice"));
                } else if !repositories.iter().any(|e| e.name == r) {
                    let defined: Vec<&str> = repositories.iter().map(|e| e.name.as_str()).collect();
                    let hint = match suggest(r, defined.iter().copied()) {
                        Some(s) => format!("; did you mean \"{s}\"?"),
                        None if defined.is_empty() => {
                            "; the catalogue defines no repository".to_string()
                        }
                        None => format!("; defined: {}", defined.join(", ")),
                    };
                    cx.error(&key, format!("no [repository.{r}] is defined{hint}"));
                    repo_names.push(r.to_string());
                } else {
                    repo_names.push(r.to_string());
                }
            }
        }
    }

    let retention_name = t.text(cx, "retention").and_then(|r| {
        if retention.contains_key(r) {
            return Some(r.to_string());
        }
        let hint = match suggest(r, retention.keys().map(String::as_str)) {
            Some(s) => format!("; did you mean \"{s}\"?"),
            None if retention.is_empty() => {
                "; the catalogue defines no retention policy".to_string()
            }
            None => format!(
                "; defined: {}",
                retention.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        cx.error(
            &t.key("retention"),
            format!("no [retention.{r}] is defined{hint}"),
        );
        None
    });
    let max_age = t.duration(cx, "max-age", false);
    let ping_url = super::alerts::ping_url(cx, t);
    let connection = t.text(cx, "connection").and_then(|c| {
        check_postgres_url(
            cx,
            &t.key("connection"),
            c,
            "use a ~/.pgpass entry (PGPASSFILE) or peer authentication for this role",
        )
    });
    // WAL is pushed while PostgreSQL waits: zstd level 1 unless the catalogue says otherwise.
    let default_zstd = if kind == Some(JobKindName::PostgresWal) {
        1
    } else {
        3
    };
    let compression = compression(cx, t, default_zstd);

    let mut wal_job = None;
    let mut verify = super::verify::VerifyRefs::default();
    let needs_connection = |cx: &mut Ctx, what: &str| {
        if !postgres.present && t.get("connection").is_none() {
            cx.error(
                &t.key("connection"),
                format!("missing: a {what} job needs a [postgres] section or its own `connection`"),
            );
        }
    };
    let cron = |cx: &mut Ctx, k: &str, example: &str| {
        if t.get(k).is_none() {
            let kind = kind.map_or("", JobKindName::as_str);
            t.missing(
                cx,
                k,
                &format!("a {kind} job needs `{k}`, a cron expression such as \"{example}\""),
            );
        }
        t.cron(cx, k)
    };

    let spec = match kind {
        None => None,
        Some(JobKindName::PostgresDump) => {
            let schedule = cron(cx, "schedule", "0 2 * * *");
            let databases = match t.strings(cx, "databases") {
                None if t.get("databases").is_none() => {
                    t.missing(
                        cx,
                        "databases",
                        "a postgres-dump job needs `databases`, e.g. [\"bdc_db\"]",
                    );
                    None
                }
                Some(list) if list.is_empty() => {
                    cx.error(&t.key("databases"), "must name at least one database");
                    None
                }
                list => list,
            };
            let tables = t.strings(cx, "tables").unwrap_or_default();
            let globals = t.bool(cx, "globals").unwrap_or(true);
            needs_connection(cx, "postgres-dump");
            match (schedule, databases) {
                (Some(schedule), Some(databases)) => Some(JobSpec::PostgresDump(DumpJob {
                    schedule,
                    databases: databases.into_iter().map(|(_, d)| d.to_string()).collect(),
                    tables: tables.into_iter().map(|(_, d)| d.to_string()).collect(),
                    globals,
                })),
                _ => None,
            }
        }
        Some(JobKindName::PostgresBase) => {
            let full = cron(cx, "full", "0 4 * * 0");
            let incremental = t.cron(cx, "incremental");
            wal_job = t.text(cx, "wal-job").map(str::to_string);
            let pitr_window = t.duration(cx, "pitr-window", false);
            let max_chain = t
                .integer(cx, "max-chain", 1, 10_000)
                .and_then(|n| u32::try_from(n).ok());
            let wal_timeout = t.duration(cx, "wal-timeout", false);
            needs_connection(cx, "postgres-base");
            if !postgres.data_directory {
                let who = name
                    .as_deref()
                    .map_or_else(|| t.path.clone(), |n| format!("job \"{n}\""));
                cx.error(
                    "postgres.data-directory",
                    format!(
                        "missing: the postgres-base {who} needs the cluster's data directory here"
                    ),
                );
            }
            full.map(|full| {
                JobSpec::PostgresBase(super::BaseJob {
                    full,
                    incremental,
                    wal_job: wal_job.clone(),
                    pitr_window,
                    max_chain,
                    wal_timeout,
                })
            })
        }
        Some(JobKindName::PostgresWal) => Some(JobSpec::PostgresWal(WalJob {
            ship_ahead: t
                .integer(cx, "ship-ahead", 0, 64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(super::DEFAULT_SHIP_AHEAD),
            stream: wal_stream(cx, t),
        })),
        Some(JobKindName::Files) => {
            let path = t.path(cx, "path");
            if t.get("path").is_none() {
                t.missing(
                    cx,
                    "path",
                    "a files job needs `path`, the folder to back up",
                );
            }
            let include = globs(cx, t, "include");
            let exclude = globs(cx, t, "exclude");
            let full = cron(cx, "full", "0 4 * * 0");
            let incremental = t.cron(cx, "incremental");
            let max_chain = t
                .integer(cx, "max-chain", 1, 10_000)
                .and_then(|n| u32::try_from(n).ok());
            let one_file_system = t.bool(cx, "one-file-system").unwrap_or(false);
            match (path, full) {
                (Some(path), Some(full)) => Some(JobSpec::Files(FilesJob {
                    path,
                    include,
                    exclude,
                    full,
                    incremental,
                    max_chain,
                    one_file_system,
                })),
                _ => None,
            }
        }
        Some(JobKindName::Config) => {
            let paths = match t.strings(cx, "paths") {
                None if t.get("paths").is_none() => {
                    t.missing(
                        cx,
                        "paths",
                        "a config job needs `paths`, the files (or globs) to keep",
                    );
                    None
                }
                Some(list) if list.is_empty() => {
                    cx.error(&t.key("paths"), "must name at least one file");
                    None
                }
                Some(list) => {
                    let mut out = Vec::new();
                    for (key, p) in list {
                        let resolved = cx.resolve(p);
                        match resolved.to_str() {
                            Some(r) => match crate::snapshot::walk::pattern::PathGlob::new(r) {
                                Ok(_) => out.push(r.to_string()),
                                Err(e) => cx.error(
                                    &key,
                                    format!("\"{p}\" is not a valid glob pattern ({e})"),
                                ),
                            },
                            None => cx.error(&key, "the resolved path is not valid UTF-8"),
                        }
                    }
                    Some(out)
                }
                None => None,
            };
            let schedule = cron(cx, "schedule", "*/30 * * * *");
            let watch = t.bool(cx, "watch").unwrap_or(false);
            match (paths, schedule) {
                (Some(paths), Some(schedule)) => Some(JobSpec::Config(ConfigJob {
                    paths,
                    schedule,
                    watch,
                })),
                _ => None,
            }
        }
        Some(JobKindName::Verify) => {
            let schedule = cron(cx, "schedule", "0 5 * * *");
            let check_url = |cx: &mut Ctx, key: &str, url: &str| {
                check_postgres_url(
                    cx,
                    key,
                    url,
                    "use a ~/.pgpass entry (PGPASSFILE) or peer authentication for the drill role",
                )
            };
            let (spec, refs) = super::verify::verify_job(cx, t, schedule, &check_url);
            verify = refs;
            spec.map(JobSpec::Verify)
        }
    };

    let job = match (&name, spec) {
        (Some(name), Some(spec)) if name_valid => Some(Job {
            name: name.clone(),
            repositories: repo_names.clone(),
            retention: retention_name,
            max_age,
            ping_url,
            connection,
            compression,
            spec,
        }),
        _ => None,
    };
    JobEntry {
        key: t.path.clone(),
        name,
        kind,
        repositories: repo_names,
        wal_job,
        verify,
        job,
    }
}

pub(super) fn globs(cx: &mut Ctx, t: &Table, k: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (key, g) in t.strings(cx, k).unwrap_or_default() {
        // As `snapshot::walk::Filter` builds it.
        match globset::Glob::new(g.trim_start_matches('/')) {
            Ok(_) => out.push(g.to_string()),
            Err(e) => cx.error(&key, format!("\"{g}\" is not a valid glob pattern ({e})")),
        }
    }
    out
}

pub(super) fn compression(cx: &mut Ctx, t: &Table, default_zstd: i32) -> CompressionSettings {
    let algorithm = match t.choice(cx, "compression", &["zstd", "gzip"]) {
        Some("gzip") => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let (max, default) = match algorithm {
        Compression::Zstd => (19, default_zstd),
        Compression::Gzip => (9, 6),
    };
    let level = t
        .integer(cx, "compression-level", 1, max)
        .and_then(|n| i32::try_from(n).ok())
        .unwrap_or(default);
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let workers = t
        .integer(cx, "compression-workers", 1, 64)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(cpus);
    CompressionSettings {
        algorithm,
        level,
        workers,
    }
}
