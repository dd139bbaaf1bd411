//! Validation of the raw catalogue into [`super::Catalogue`], collecting every error.
//!
//! The walk visits every table of the raw tree, reports each problem with its key path
//! (`job[2] "uploads".schedule`, `repository.offsite.url`) and carries on, so one pass shows them all. The
//! typed catalogue is returned only when no error was found.

use super::fields::{Ctx, Table, join, suggest, type_name, valid_name};
use super::raw::{self, Dict, ENV_OVERRIDES, RawCatalogue, Value};
use super::{
    ApplicationSettings, Catalogue, CatchUp, DaemonSettings, EncryptionSettings, Job, JobSpec,
    LogTarget, Objective, PostgresSettings, RetentionPolicy,
};
use crate::model::JobKindName;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::jobs::{JobEntry, jobs};
use super::repositories::repositories;

/// When retention and the cleanup of uncommitted objects run on their own (besides after each backup).
pub const DEFAULT_RETENTION_SCHEDULE: &str = "30 5 * * *";

/// One problem in the catalogue, with its key path (`job[2] "uploads".schedule`) and file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueErrors(pub Vec<CatalogueError>);

impl fmt::Display for CatalogueErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CatalogueErrors {}

impl CatalogueErrors {
    fn single(file: &Path, key: &str, message: impl Into<String>) -> CatalogueErrors {
        CatalogueErrors(vec![CatalogueError {
            file: file.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }])
    }
}

/// Default `[daemon]` values (see the field docs of [`DaemonSettings`]).
pub const DEFAULT_STATE_DB: &str = "/var/lib/bdc-backup/state.db";
pub const DEFAULT_SOCKET: &str = "/run/bdc-backup/control.sock";

/// Reads `path`, takes the documented environment overrides from the process environment (and
/// no other variable), and validates. A relative `path` is made absolute first, so relative paths
/// inside the catalogue resolve against its folder.
pub fn load(path: &Path) -> Result<Catalogue, CatalogueErrors> {
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(&file).map_err(|e| {
        CatalogueErrors::single(&file, "", format!("cannot read the catalogue: {e}"))
    })?;
    let mut env = Vec::new();
    for (var, _) in ENV_OVERRIDES {
        match std::env::var(var) {
            Ok(value) => env.push((var.to_string(), value)),
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(CatalogueErrors::single(
                    &file,
                    "",
                    format!("the environment variable {var} is not valid UTF-8"),
                ));
            }
        }
    }
    parse_str(&text, &file, &env)
}

/// Parses and validates catalogue `text` as if read from `file` (relative paths resolve against
/// `file`'s folder), with `env` as the environment: only `BDC_BACKUP_STATE_DB`,
/// `BDC_BACKUP_SOCKET` and `BDC_BACKUP_LOG` are looked at. Pure except for the existence checks of
/// `identity-file`, `password-file` and `credentials-file`.
pub fn parse_str(
    text: &str,
    file: &Path,
    env: &[(String, String)],
) -> Result<Catalogue, CatalogueErrors> {
    let raw = raw::read(text, env).map_err(|e| CatalogueErrors::single(file, "", e.to_string()))?;
    let mut cx = Ctx {
        file,
        base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        env_keys: raw.env_overrides.iter().cloned().collect(),
        errors: Vec::new(),
    };
    let catalogue = build(&mut cx, &raw);
    if cx.errors.is_empty() {
        Ok(catalogue)
    } else {
        Err(CatalogueErrors(cx.errors))
    }
}

const TOP_KEYS: &[&str] = &[
    "daemon",
    "postgres",
    "encryption",
    "repository",
    "retention",
    "objectives",
    "job",
    "alert",
    "application",
];
const DAEMON_KEYS: &[&str] = &[
    "state-db",
    "state-directory",
    "socket",
    "timezone",
    "max-concurrent-runs",
    "catch-up",
    "postgres-os-user",
    "read-group",
    "admin-group",
    "log",
    "log-level",
    "shutdown-timeout",
    "replica-retry",
    "retention-schedule",
    "metrics-listen",
    "metrics-file",
];
const POSTGRES_KEYS: &[&str] = &["url", "password-file", "data-directory", "bin-dir"];
const ENCRYPTION_KEYS: &[&str] = &["recipients", "identity-file"];
pub(super) const REPOSITORY_KEYS: &[&str] = &[
    "url",
    "wal-ack",
    "region",
    "endpoint",
    "credentials-file",
    "bandwidth-limit",
    "call-timeout",
];
const RETENTION_KEYS: &[&str] = &[
    "last",
    "hourly",
    "daily",
    "weekly",
    "monthly",
    "yearly",
    "keep-within",
];
const OBJECTIVE_KEYS: &[&str] = &["jobs", "rpo", "rto"];
pub(super) const JOB_COMMON_KEYS: &[&str] = &[
    "name",
    "kind",
    "repositories",
    "retention",
    "max-age",
    "ping-url",
    "connection",
    "compression",
    "compression-level",
    "compression-workers",
];

/// The keys a job of `kind` takes besides those every job takes (`name`, `kind`, …).
pub fn job_kind_keys(kind: JobKindName) -> &'static [&'static str] {
    match kind {
        JobKindName::PostgresDump => &["schedule", "databases", "tables", "globals"],
        JobKindName::PostgresBase => &[
            "full",
            "incremental",
            "wal-job",
            "pitr-window",
            "max-chain",
            "wal-timeout",
        ],
        JobKindName::PostgresWal => &[
            "ship-ahead",
            "stream",
            "slot",
            "synchronous",
            "partial-interval",
            "receiver-path",
        ],
        JobKindName::Files => &[
            "path",
            "include",
            "exclude",
            "full",
            "incremental",
            "max-chain",
            "one-file-system",
        ],
        JobKindName::Config => &["paths", "schedule", "watch"],
        JobKindName::Verify => super::verify::VERIFY_KEYS,
    }
}

/// Walks the whole tree. The result is meaningful only when no error was recorded (invalid
/// values are replaced by defaults so the walk can go on).
fn build(cx: &mut Ctx, raw: &RawCatalogue) -> Catalogue {
    let root = Table::new("", &raw.root);
    root.check_keys(cx, TOP_KEYS, &|_| None);
    let empty = Dict::new();

    let daemon_table = section(cx, &root, "daemon", &empty);
    let daemon = daemon(cx, &daemon_table);
    // `[postgres]` of the wrong type is reported once, here; jobs then treat it as present.
    let postgres_table = root
        .table(cx, "postgres", "a table ([postgres])")
        .map(|d| Table::new("postgres", d));
    let postgres = postgres_table.as_ref().and_then(|t| postgres(cx, t));
    let postgres_info = PostgresInfo {
        present: root.get("postgres").is_some(),
        data_directory: match &postgres_table {
            Some(t) => t.get("data-directory").is_some(),
            None => root.get("postgres").is_some(),
        },
    };
    let encryption_table = section(cx, &root, "encryption", &empty);
    let (encryption, recipients_reported) = encryption(cx, &encryption_table);
    let repositories = repositories(cx, &root, &raw.repository_order);
    let retention = retention(cx, &root);
    let mut jobs = jobs(cx, &root, &repositories, &retention, postgres_info);
    let objectives = objectives(cx, &root, &jobs);
    let job_names: BTreeSet<&str> = jobs.iter().filter_map(|j| j.name.as_deref()).collect();
    let alerts = super::alerts::sinks(cx, &root, &job_names);
    let application = application(cx, &root);

    if !jobs.is_empty() && encryption.recipients.is_empty() && !recipients_reported {
        cx.error(
            "encryption.recipients",
            "missing: at least one age recipient is required because every backup is encrypted \
             (make a key pair with `bdc-backupctl keygen`)",
        );
    }

    let mut jobs: Vec<Job> = jobs.iter_mut().filter_map(|j| j.job.take()).collect();
    for job in &mut jobs {
        if let JobSpec::Verify(v) = &mut job.spec
            && v.drill.scratch_directory.as_os_str().is_empty()
        {
            v.drill.scratch_directory = daemon.state_directory.join("drills");
        }
    }
    Catalogue {
        source: cx.file.to_path_buf(),
        daemon,
        postgres,
        encryption,
        repositories: repositories
            .into_iter()
            .filter_map(|r| r.settings)
            .collect(),
        retention,
        objectives,
        jobs,
        alerts,
        application,
    }
}

const APPLICATION_KEYS: &[&str] = &["version-command", "version-timeout"];

/// `[application]`: `version-command` (a non-empty argv) and `version-timeout`.
fn application(cx: &mut Ctx, root: &Table) -> Option<ApplicationSettings> {
    let dict = root.table(cx, "application", "a table ([application])")?;
    let t = Table::new("application", dict);
    t.check_keys(cx, APPLICATION_KEYS, &|_| None);
    let command: Vec<String> = match t.strings(cx, "version-command") {
        Some(items) if items.is_empty() => {
            cx.error(
                &t.key("version-command"),
                "must name a program, e.g. [\"git\", \"-C\", \"/app\", \"rev-parse\", \"HEAD\"]",
            );
            return None;
        }
        Some(items) => items.into_iter().map(|(_, s)| s.to_string()).collect(),
        None => {
            t.missing(
                cx,
                "version-command",
                "the command that prints the application's version",
            );
            return None;
        }
    };
    let timeout = t
        .duration(cx, "version-timeout", false)
        .unwrap_or(Duration::from_secs(10));
    Some(ApplicationSettings {
        version_command: command,
        version_timeout: timeout,
    })
}

/// What jobs need to know of `[postgres]`: whether it is there and whether it names the data
/// directory (true also when present but mistyped, which is reported once where it is).
#[derive(Clone, Copy)]
pub(super) struct PostgresInfo {
    pub(super) present: bool,
    pub(super) data_directory: bool,
}

/// A top-level section as a table (an empty one when absent or of the wrong type).
fn section<'v>(cx: &mut Ctx, root: &Table<'v>, key: &str, empty: &'v Dict) -> Table<'v> {
    let dict = root
        .table(cx, key, &format!("a table ([{key}])"))
        .unwrap_or(empty);
    Table::new(key, dict)
}

fn daemon(cx: &mut Ctx, t: &Table) -> DaemonSettings {
    t.check_keys(cx, DAEMON_KEYS, &|_| None);
    let state_db = t
        .path(cx, "state-db")
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DB));
    let state_directory = t.path(cx, "state-directory").unwrap_or_else(|| {
        state_db
            .parent()
            .map_or_else(|| PathBuf::from("/var/lib/bdc-backup"), Path::to_path_buf)
    });
    let socket = t
        .path(cx, "socket")
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let timezone = t
        .text(cx, "timezone")
        .and_then(|s| timezone(cx, &t.key("timezone"), s));
    let max_concurrent_runs = t.integer(cx, "max-concurrent-runs", 1, 64).unwrap_or(2);
    let catch_up = match t.choice(cx, "catch-up", &["once", "skip"]) {
        Some("skip") => CatchUp::Skip,
        _ => CatchUp::Once,
    };
    let log = match t.choice(cx, "log", &["auto", "journal", "stderr"]) {
        Some("journal") => LogTarget::Journal,
        Some("stderr") => LogTarget::Stderr,
        _ => LogTarget::Auto,
    };
    let log_level = t.text(cx, "log-level").and_then(|s| {
        // tracing-subscriber's directive parser slices by byte offsets and panics inside a
        // multi-byte character (found by tests/fuzz_parsers.rs): module names are ASCII anyway.
        if !s.is_ascii() {
            cx.error(&t.key("log-level"), format!("\"{s}\" is not a log filter (only ASCII characters); write e.g. \"info\" or \"info,bdc_backup=debug\""));
            return None;
        }
        match tracing_subscriber::EnvFilter::builder().parse(s) {
            Ok(_) => Some(s.to_string()),
            Err(e) => {
                cx.error(&t.key("log-level"), format!("\"{s}\" is not a log filter ({e}); write e.g. \"info\" or \"info,bdc_backup=debug\""));
                None
            }
        }
    });
    let metrics_listen =
        t.text(cx, "metrics-listen")
            .and_then(|s| match s.parse::<std::net::SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    cx.error(
                        &t.key("metrics-listen"),
                        format!(
                            "\"{s}\" is not an address and port; write e.g. \"127.0.0.1:9187\""
                        ),
                    );
                    None
                }
            });
    let metrics_file = t.path(cx, "metrics-file");
    DaemonSettings {
        metrics_listen,
        metrics_file,
        state_db,
        state_directory,
        socket,
        timezone: timezone.unwrap_or(chrono_tz::UTC),
        max_concurrent_runs: usize::try_from(max_concurrent_runs).unwrap_or(2),
        catch_up,
        postgres_os_user: t
            .text(cx, "postgres-os-user")
            .unwrap_or("postgres")
            .to_string(),
        read_group: t.text(cx, "read-group").unwrap_or("bdc-backup").to_string(),
        admin_group: t
            .text(cx, "admin-group")
            .unwrap_or("bdc-backup-admin")
            .to_string(),
        log,
        log_level: log_level.unwrap_or_else(|| "info".to_string()),
        shutdown_timeout: t
            .duration(cx, "shutdown-timeout", true)
            .unwrap_or(Duration::from_secs(30)),
        replica_retry: t
            .duration(cx, "replica-retry", true)
            .unwrap_or(Duration::from_secs(30)),
        retention_schedule: t.cron(cx, "retention-schedule").unwrap_or_else(|| {
            crate::schedule::CronSchedule::parse(DEFAULT_RETENTION_SCHEDULE)
                .expect("the default retention schedule parses")
        }),
    }
}

fn timezone(cx: &mut Ctx, key: &str, s: &str) -> Option<chrono_tz::Tz> {
    match s.parse::<chrono_tz::Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            let hint = suggest(s, chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()))
                .map(|n| format!("; did you mean \"{n}\"?"))
                .unwrap_or_default();
            cx.error(key, format!("\"{s}\" is not a known IANA timezone (such as \"Europe/Istanbul\" or \"UTC\"){hint}"));
            None
        }
    }
}

fn postgres(cx: &mut Ctx, t: &Table) -> Option<PostgresSettings> {
    t.check_keys(cx, POSTGRES_KEYS, &|_| None);
    let url = match t.text(cx, "url") {
        Some(u) => check_postgres_url(cx, &t.key("url"), u, "put the password in `password-file`"),
        None => {
            if t.get("url").is_none() {
                t.missing(cx, "url", "the PostgreSQL connection, e.g. \"postgresql://bdc_backup@localhost:5432/bdc_db\"");
            }
            None
        }
    };
    let password_file = t.existing_file(cx, "password-file", "password file");
    if let Some(p) = &password_file
        && let Err(e) = crate::secrets::check_private(p)
    {
        cx.error(
            &t.key("password-file"),
            format!("password file {}: {e}", p.display()),
        );
    }
    let data_directory = t.path(cx, "data-directory");
    let bin_dir = t.path(cx, "bin-dir");
    Some(PostgresSettings {
        url: url?,
        password_file,
        data_directory,
        bin_dir,
    })
}

/// A `postgresql://` URL without a password. `password_hint` says where the password goes instead.
pub(super) fn check_postgres_url(
    cx: &mut Ctx,
    key: &str,
    s: &str,
    password_hint: &str,
) -> Option<String> {
    // Never echo the URL: it may hold the very password being rejected. The password check
    // comes first and does not need a parsable URL.
    if has_password(s) {
        cx.error(key, format!("the URL contains a password; remove it and {password_hint} (secrets never go into the catalogue)"));
        return None;
    }
    let url = match url::Url::parse(&with_placeholder_host(s)) {
        Ok(u) => u,
        Err(e) => {
            cx.error(
                key,
                format!(
                    "not a valid URL ({e}); expected postgresql://USER@HOST:PORT/DATABASE \
                     (or postgresql://USER@/DATABASE?host=/run/postgresql for a socket)"
                ),
            );
            return None;
        }
    };
    if !matches!(url.scheme(), "postgresql" | "postgres") {
        cx.error(
            key,
            format!("the scheme must be postgresql://, not {}://", url.scheme()),
        );
        return None;
    }
    Some(s.to_string())
}

/// libpq accepts an empty host after a user (`postgresql://user@/db?host=/run/postgresql`: the
/// socket comes from the query or the default; also `user@:5433/db`); the `url` crate refuses
/// "empty host" there, and so does sqlx's parser. Checked, and connected (`postgres::connection`),
/// with `localhost` in its place, which a `host=` parameter then overrides.
pub(crate) fn with_placeholder_host(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(end);
        let (user, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), authority),
        };
        if host.is_empty() || host.starts_with(':') {
            return format!("{scheme}://{user}localhost{host}{after}");
        }
    }
    url.to_string()
}

/// Whether URL text carries a password: `user:password@` in its authority or a `password=`
/// query parameter. Works on text that `url` cannot parse (e.g. libpq's `user:pw@/db`).
pub(crate) fn has_password(s: &str) -> bool {
    let Some((_, rest)) = s.split_once("://") else {
        return false;
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..authority_end).unwrap_or_default();
    if let Some(at) = authority.rfind('@')
        && authority
            .get(..at)
            .is_some_and(|userinfo| userinfo.contains(':'))
    {
        return true;
    }
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    query.split('&').any(|pair| {
        pair.split('=').next().is_some_and(|k| {
            k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
        })
    })
}

fn encryption(cx: &mut Ctx, t: &Table) -> (EncryptionSettings, bool) {
    t.check_keys(cx, ENCRYPTION_KEYS, &|_| None);
    let errors_before = cx.errors.len();
    let mut recipients = Vec::new();
    if let Some(list) = t.strings(cx, "recipients") {
        if list.is_empty() && cx.errors.len() == errors_before {
            cx.error(
                &t.key("recipients"),
                "must list at least one age recipient (age1…)",
            );
        }
        for (key, s) in list {
            let s = s.trim();
            if s.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
                cx.error(&key, "this is an age SECRET key: put only its public key (age1…) here, keep the secret in identity-file, and treat this one as leaked");
            } else if let Err(e) = s.parse::<age::x25519::Recipient>() {
                cx.error(&key, format!("\"{s}\" is not an age X25519 recipient ({e}); expected a public key starting with age1"));
            } else {
                recipients.push(s.to_string());
            }
        }
    }
    let reported = cx.errors.len() > errors_before;
    let identity_file = t.existing_file(cx, "identity-file", "identity file");
    (
        EncryptionSettings {
            recipients,
            identity_file,
        },
        reported,
    )
}

fn retention(cx: &mut Ctx, root: &Table) -> BTreeMap<String, RetentionPolicy> {
    let mut out = BTreeMap::new();
    let Some(all) = root.table(cx, "retention", "a table of policies ([retention.NAME])") else {
        return out;
    };
    for (name, value) in all {
        let key = join("retention", name);
        let Value::Dict(_, dict) = value else {
            cx.error(&key, format!("expected a table, found {}: each policy is its own table, e.g. [retention.standard]", type_name(value)));
            continue;
        };
        if !valid_name(name) {
            cx.error(&key, format!("retention policy name \"{name}\" may only contain letters, digits, '.', '_' and '-'"));
        }
        let t = Table::new(key.clone(), dict);
        t.check_keys(cx, RETENTION_KEYS, &|_| None);
        let errors_before = cx.errors.len();
        let count = |cx: &mut Ctx, k: &str| {
            t.integer(cx, k, 0, i64::from(u32::MAX))
                .and_then(|n| u32::try_from(n).ok())
        };
        let policy = RetentionPolicy {
            last: count(cx, "last"),
            hourly: count(cx, "hourly"),
            daily: count(cx, "daily"),
            weekly: count(cx, "weekly"),
            monthly: count(cx, "monthly"),
            yearly: count(cx, "yearly"),
            keep_within: t.duration(cx, "keep-within", false),
        };
        let counts = [
            policy.last,
            policy.hourly,
            policy.daily,
            policy.weekly,
            policy.monthly,
            policy.yearly,
        ];
        let keeps_something =
            counts.iter().flatten().any(|n| *n > 0) || policy.keep_within.is_some();
        // Pruning with a policy that keeps nothing would delete every backup.
        if !keeps_something && cx.errors.len() == errors_before {
            cx.error(&key, "keeps nothing: set at least one of last, hourly, daily, weekly, monthly, yearly (above 0) or keep-within");
        }
        out.insert(name.clone(), policy);
    }
    out
}

fn objectives(cx: &mut Ctx, root: &Table, jobs: &[JobEntry]) -> BTreeMap<String, Objective> {
    let mut out = BTreeMap::new();
    let Some(all) = root.table(
        cx,
        "objectives",
        "a table of objectives ([objectives.NAME])",
    ) else {
        return out;
    };
    let names: BTreeSet<&str> = jobs.iter().filter_map(|j| j.name.as_deref()).collect();
    for (name, value) in all {
        let key = join("objectives", name);
        let Value::Dict(_, dict) = value else {
            cx.error(&key, format!("expected a table, found {}: each objective is its own table, e.g. [objectives.database]", type_name(value)));
            continue;
        };
        let t = Table::new(key.clone(), dict);
        t.check_keys(cx, OBJECTIVE_KEYS, &|_| None);
        let mut job_names = Vec::new();
        match t.strings(cx, "jobs") {
            None if t.get("jobs").is_none() => t.missing(
                cx,
                "jobs",
                "the jobs this objective measures, e.g. [\"db-dump\"]",
            ),
            None => {}
            Some(list) if list.is_empty() => cx.error(&t.key("jobs"), "must name at least one job"),
            Some(list) => {
                for (k, j) in list {
                    if !names.contains(j) {
                        let hint = suggest(j, names.iter().copied())
                            .map(|s| format!("; did you mean \"{s}\"?"))
                            .unwrap_or_default();
                        cx.error(&k, format!("no job is named \"{j}\"{hint}"));
                    }
                    job_names.push(j.to_string());
                }
            }
        }
        let rpo = t.duration(cx, "rpo", false);
        let rto = t.duration(cx, "rto", false);
        if t.get("rpo").is_none() && t.get("rto").is_none() {
            cx.error(
                &key,
                "measures nothing: set `rpo`, `rto` or both (e.g. rpo = \"5m\")",
            );
        }
        out.insert(
            name.clone(),
            Objective {
                name: name.clone(),
                jobs: job_names,
                rpo,
                rto,
            },
        );
    }
    out
}

/// The streaming keys of a postgres-wal job: read only with `stream = true` (naming one of them
/// without it is an error, so a typo'd `stream` does not silently leave streaming off).
pub(super) fn wal_stream(cx: &mut Ctx, t: &Table) -> Option<super::WalStream> {
    let on = t.bool(cx, "stream").unwrap_or(false);
    let slot = t.string(cx, "slot").map(str::to_string);
    if let Some(s) = &slot
        && (s.is_empty()
            || s.len() > 63
            || !s
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    {
        cx.error(
            &t.key("slot"),
            format!("\"{s}\" is not a replication slot name (1 to 63 of a-z, 0-9 and _)"),
        );
    }
    let synchronous = t.bool(cx, "synchronous").unwrap_or(false);
    let partial_interval = t
        .duration(cx, "partial-interval", false)
        .unwrap_or(super::DEFAULT_PARTIAL_INTERVAL);
    let receiver_path = t.path(cx, "receiver-path");
    if !on {
        for k in ["slot", "synchronous", "partial-interval", "receiver-path"] {
            if t.get(k).is_some() {
                cx.error(&t.key(k), "only meaningful with `stream = true`");
            }
        }
        return None;
    }
    Some(super::WalStream {
        slot: slot.unwrap_or_else(|| super::DEFAULT_SLOT.to_string()),
        synchronous,
        partial_interval,
        receiver_path,
    })
}
