//! The keys of `kind = "verify"` jobs and their `[[job.check]]` tables (docs/catalogue.md,
//! "verify"): read into a [`VerifyJob`], every error named by its key path
//! (`job[3] "drill".check[1].job`). The cross-checks against other jobs (covered, of a kind
//! that has a database) are in [`cross_check`], run once every job is known.

use super::fields::{Ctx, Table, type_name};
use super::raw::Value;
use super::{IntegrityMode, VerifyJob};
use crate::model::JobKindName;
use crate::schedule::CronSchedule;
use crate::verify::check::{DEFAULT_FILES_SAMPLE, DrillSettings, SqlCheck, SqlExpect};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The keys of a verify job (besides every job's).
pub const VERIFY_KEYS: &[&str] = &[
    "schedule",
    "jobs",
    "integrity",
    "budget",
    "drills",
    "scratch-directory",
    "drill-url",
    "files-sample",
    "check",
];

const CHECK_KEYS: &[&str] = &[
    "job",
    "database",
    "name",
    "sql",
    "min",
    "max",
    "equals",
    "compare-with-source",
];

/// What the cross-checks need of a verify job: `(key, job)` of every `jobs` entry and of every
/// `[[job.check]]`'s `job`.
#[derive(Debug, Default)]
pub struct VerifyRefs {
    pub jobs: Vec<(String, String)>,
    pub check_jobs: Vec<(String, String)>,
}

/// Reads a verify job's own keys. `scratch-directory` left unset is an empty path here; the
/// caller fills in `<state-directory>/drills`.
pub(super) fn verify_job(
    cx: &mut Ctx,
    t: &Table,
    schedule: Option<CronSchedule>,
    check_url: &dyn Fn(&mut Ctx, &str, &str) -> Option<String>,
) -> (Option<VerifyJob>, VerifyRefs) {
    let mut refs = VerifyRefs {
        jobs: t
            .strings(cx, "jobs")
            .unwrap_or_default()
            .into_iter()
            .map(|(k, j)| (k, j.to_string()))
            .collect(),
        check_jobs: Vec::new(),
    };
    let integrity = match t.choice(cx, "integrity", &["off", "sample", "full"]) {
        Some("off") => IntegrityMode::Off,
        Some("full") => IntegrityMode::Full,
        _ => IntegrityMode::Sample,
    };
    let budget = t
        .duration(cx, "budget", false)
        .unwrap_or(super::DEFAULT_VERIFY_BUDGET);
    let drills = t.bool(cx, "drills").unwrap_or(true);
    let scratch_directory = t.path(cx, "scratch-directory").unwrap_or_default();
    let drill_url = t
        .text(cx, "drill-url")
        .and_then(|u| check_url(cx, &t.key("drill-url"), u));
    let files_sample = t
        .integer(cx, "files-sample", 1, 1_000_000)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_FILES_SAMPLE);
    let checks = checks(cx, t, &mut refs);
    let job = schedule.map(|schedule| VerifyJob {
        schedule,
        jobs: refs.jobs.iter().map(|(_, j)| j.clone()).collect(),
        integrity,
        budget,
        drills,
        drill: DrillSettings {
            scratch_directory: PathBuf::from(&scratch_directory),
            drill_url,
            files_sample,
            checks,
        },
    });
    (job, refs)
}

fn checks(cx: &mut Ctx, t: &Table, refs: &mut VerifyRefs) -> Vec<SqlCheck> {
    let items = match t.get("check") {
        None => return Vec::new(),
        Some(Value::Array(_, items)) => items,
        Some(other) => {
            cx.error(
                &t.key("check"),
                format!(
                    "expected an array of tables ([[job.check]]), found {}",
                    type_name(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("{}[{i}]", t.key("check"));
        let Value::Dict(_, dict) = item else {
            cx.error(
                &key,
                format!(
                    "expected a table ([[job.check]]), found {}",
                    type_name(item)
                ),
            );
            continue;
        };
        let c = Table::new(key.clone(), dict);
        c.check_keys(cx, CHECK_KEYS, &|_| None);
        let job = c.text(cx, "job").map(str::to_string);
        match &job {
            Some(j) => refs.check_jobs.push((c.key("job"), j.clone())),
            None if c.get("job").is_none() => c.missing(
                cx,
                "job",
                "the covered postgres-dump or postgres-base job the query runs against",
            ),
            None => {}
        }
        let sql = c.text(cx, "sql").map(str::to_string);
        if c.get("sql").is_none() {
            c.missing(cx, "sql", "the query, e.g. \"SELECT count(*) FROM users\"");
        }
        let database = c.text(cx, "database").map(str::to_string);
        let name = c.text(cx, "name").map(str::to_string);
        let min = number(cx, &c, "min");
        let max = number(cx, &c, "max");
        let equals = match c.get("equals") {
            None => None,
            Some(Value::String(_, s)) => Some(s.clone()),
            Some(v @ Value::Num(..)) => number(cx, &c, "equals").map(|n| {
                let _ = v;
                format_number(n)
            }),
            Some(v) => {
                cx.error(
                    &c.key("equals"),
                    format!("expected a string or a number, found {}", type_name(v)),
                );
                None
            }
        };
        let compare_with_source = c.bool(cx, "compare-with-source").unwrap_or(false);
        if ["min", "max", "equals", "compare-with-source"]
            .iter()
            .all(|k| c.get(k).is_none())
        {
            cx.error(
                &key,
                "expects nothing: set at least one of min, max, equals or compare-with-source = true",
            );
        }
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            cx.error(&c.key("min"), format!("min ({lo}) is above max ({hi})"));
        }
        if let (Some(job), Some(sql)) = (job, sql) {
            out.push(SqlCheck {
                job,
                database,
                name,
                sql,
                expect: SqlExpect {
                    min,
                    max,
                    equals,
                    compare_with_source,
                },
            });
        }
    }
    out
}

fn number(cx: &mut Ctx, t: &Table, k: &str) -> Option<f64> {
    match t.get(k)? {
        Value::Num(_, n) => n
            .to_i128()
            .map(|i| i as f64)
            .or_else(|| n.to_f64())
            .filter(|f| f.is_finite())
            .or_else(|| {
                cx.error(&t.key(k), "not a finite number");
                None
            }),
        v => {
            cx.error(
                &t.key(k),
                format!("expected a number, found {}", type_name(v)),
            );
            None
        }
    }
}

/// How a number given as `equals` is compared (as PostgreSQL prints an integer).
fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// The cross-checks of one verify job against the other jobs (`kinds`: every job's kind by name).
pub(super) fn cross_check(
    cx: &mut Ctx,
    refs: &VerifyRefs,
    kinds: &BTreeMap<String, Option<JobKindName>>,
    unknown_job: &dyn Fn(&str) -> String,
) {
    for (key, target) in &refs.jobs {
        match kinds.get(target) {
            None => cx.error(key, unknown_job(target)),
            Some(Some(JobKindName::Verify)) => cx.error(
                key,
                format!("job \"{target}\" is a verify job; a verify job covers backup jobs"),
            ),
            Some(_) => {}
        }
    }
    for (key, target) in &refs.check_jobs {
        match kinds.get(target) {
            None => cx.error(key, unknown_job(target)),
            Some(Some(JobKindName::PostgresDump | JobKindName::PostgresBase)) | Some(None) => {
                if !refs.jobs.is_empty() && !refs.jobs.iter().any(|(_, j)| j == target) {
                    let listed: Vec<&str> = refs.jobs.iter().map(|(_, j)| j.as_str()).collect();
                    cx.error(
                        key,
                        format!(
                            "job \"{target}\" is not covered by this verify job (its `jobs`: {}); add it there",
                            listed.join(", ")
                        ),
                    );
                }
            }
            Some(Some(other)) => cx.error(
                key,
                format!(
                    "job \"{target}\" is a {other} job; SQL checks run against a restored postgres-dump or postgres-base job"
                ),
            ),
        }
    }
}
