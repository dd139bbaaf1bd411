//! The job catalogue: the validated, typed view of `catalogue.toml` (docs/design.md §2, §12).
//!
//! Loading has two phases: [`raw`] parses the TOML once into a permissive layer
//! (options and loose values, so no single bad value aborts parsing); [`validate`] builds the
//! rich types below and collects **every** error with its key path and file.
//!
//! [`Catalogue::load`] reads a file and the three documented environment overrides
//! ([`ENV_STATE_DB`], [`ENV_SOCKET`], [`ENV_LOG`]; no other variable); [`parse_str`] does the same
//! from a string with an explicit environment (for tests and `--check` of piped text). Relative
//! paths in a catalogue resolve against the folder of the catalogue file. The key reference is
//! `docs/catalogue.md`.

pub mod alerts;
mod fields;
mod jobs;
pub mod raw;
mod repositories;
pub mod validate;
mod verify;

#[cfg(test)]
mod tests;

use crate::model::{BackupType, JobKindName};
pub use crate::schedule::CatchUp;
use crate::schedule::CronSchedule;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{CatalogueError, CatalogueErrors, DEFAULT_SOCKET, DEFAULT_STATE_DB, parse_str};

/// Environment variables that override daemon scalars (the only ones).
pub const ENV_STATE_DB: &str = "BDC_BACKUP_STATE_DB";
pub const ENV_SOCKET: &str = "BDC_BACKUP_SOCKET";
pub const ENV_LOG: &str = "BDC_BACKUP_LOG";
/// Names the catalogue for the ctl.
pub const ENV_CATALOGUE: &str = "BDC_BACKUP_CATALOGUE";

/// A validated catalogue.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// The file it was loaded from.
    pub source: PathBuf,
    pub daemon: DaemonSettings,
    pub postgres: Option<PostgresSettings>,
    pub encryption: EncryptionSettings,
    /// In declaration order.
    pub repositories: Vec<RepositorySettings>,
    pub retention: BTreeMap<String, RetentionPolicy>,
    pub objectives: BTreeMap<String, Objective>,
    /// In declaration order.
    pub jobs: Vec<Job>,
    /// `[[alert]]` sinks, in declaration order.
    pub alerts: Vec<AlertSink>,
    /// `[application]`: how to learn the application's version (recorded in each commit record).
    pub application: Option<ApplicationSettings>,
}

/// `[application]` (docs/catalogue.md): the command whose trimmed stdout is the application's
/// version, stored in every commit record's provenance (disaster recovery checks it out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationSettings {
    /// argv, run without a shell (`["git", "-C", "/app", "rev-parse", "HEAD"]`).
    pub version_command: Vec<String>,
    /// Killed after this long (default 10 s); a failure is a warning on the run.
    pub version_timeout: Duration,
}

impl Catalogue {
    /// Reads, parses and validates `path`, honouring the documented environment overrides.
    pub fn load(path: &Path) -> Result<Catalogue, CatalogueErrors> {
        validate::load(path)
    }

    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    pub fn repository(&self, name: &str) -> Option<&RepositorySettings> {
        self.repositories.iter().find(|r| r.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// journald when its socket exists, stderr otherwise.
    Auto,
    Journal,
    Stderr,
}

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// `state-db` (env `BDC_BACKUP_STATE_DB`). Default `/var/lib/bdc-backup/state.db`.
    pub state_db: PathBuf,
    /// `state-directory`: plaintext manifest copies etc. Default: the state DB's folder.
    pub state_directory: PathBuf,
    /// `socket` (env `BDC_BACKUP_SOCKET`). Default `/run/bdc-backup/control.sock`.
    pub socket: PathBuf,
    /// `timezone`: cron times are wall-clock here. Default: UTC.
    pub timezone: chrono_tz::Tz,
    /// `max-concurrent-runs`, default 2, at least 1.
    pub max_concurrent_runs: usize,
    /// `catch-up`, default once.
    pub catch_up: CatchUp,
    /// `postgres-os-user`, default "postgres": the only peer allowed to wal-push.
    pub postgres_os_user: String,
    /// `read-group`, default "bdc-backup": may query.
    pub read_group: String,
    /// `admin-group`, default "bdc-backup-admin": may run/cancel/reload.
    pub admin_group: String,
    /// `log` (env `BDC_BACKUP_LOG`): auto | journal | stderr. Default auto.
    pub log: LogTarget,
    /// `log-level`, a tracing EnvFilter directive, default "info".
    pub log_level: String,
    /// `shutdown-timeout`: how long SIGTERM waits for running jobs to drain. Default 30s.
    pub shutdown_timeout: Duration,
    /// `replica-retry`: the first wait before a failed replica copy is retried (doubling, at most
    /// 1 h). Default 30s.
    pub replica_retry: Duration,
    /// `retention-schedule`: when every job's retention and the cleanup of uncommitted objects run
    /// on their own, besides after each backup. Default "30 5 * * *".
    pub retention_schedule: CronSchedule,
    /// `metrics-listen`: where `GET /metrics` is served (Prometheus text). Default: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `metrics-file`: the same text written atomically every minute (node_exporter's textfile
    /// collector). Default: not written.
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// `url`: a postgresql:// URL without a password.
    pub url: String,
    /// `password-file`: a file holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// `data-directory`: needed by postgres-base.
    pub data_directory: Option<PathBuf>,
    /// `bin-dir`: where pg_dump etc. live; found from the server's version otherwise.
    pub bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct EncryptionSettings {
    /// `recipients`: age public keys (`age1…`), validated.
    pub recipients: Vec<String>,
    /// `identity-file`: only where restores and drills run.
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalAck {
    Sync,
    Async,
}

/// Where a repository lives, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryLocation {
    /// `file:///path`
    File { path: PathBuf },
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
    /// `gs://bucket/prefix`
    Gcs { bucket: String, prefix: String },
    /// `az://container/prefix`
    Azure { container: String, prefix: String },
}

#[derive(Debug, Clone)]
pub struct RepositorySettings {
    /// The table name: `[repository.NAME]`.
    pub name: String,
    /// `url` as written.
    pub url: String,
    pub location: RepositoryLocation,
    /// `wal-ack`, default sync.
    pub wal_ack: WalAck,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub credentials_file: Option<PathBuf>,
    /// `bandwidth-limit` in bytes per second (e.g. "20MiB"), if any.
    pub bandwidth_limit: Option<u64>,
    /// `call-timeout`: the deadline of one store call (cloud: every call, retries included;
    /// file://: every read), default 180 s.
    pub call_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    /// `keep-within`, e.g. "2d".
    pub keep_within: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Objective {
    pub name: String,
    pub jobs: Vec<String>,
    pub rpo: Option<Duration>,
    pub rto: Option<Duration>,
}

/// One `[[alert]]` sink (docs/alerts.md).
#[derive(Debug, Clone)]
pub struct AlertSink {
    pub name: String,
    pub kind: SinkKind,
    /// `events`: empty = every event.
    pub events: Vec<crate::model::alerts::EventKind>,
    /// `jobs`: empty = every job (events without a job always pass).
    pub jobs: Vec<String>,
    /// `remind`: repeat a still-bad state this often (None: never).
    pub remind: Option<Duration>,
    /// `timeout` of one delivery, default 10 s.
    pub timeout: Duration,
}

impl AlertSink {
    /// Whether this sink takes `event` about `job`.
    pub fn wants(&self, event: crate::model::alerts::EventKind, job: Option<&str>) -> bool {
        let event_ok = self.events.is_empty()
            || self.events.contains(&event)
            || event == crate::model::alerts::EventKind::AlertTest;
        let job_ok = match job {
            Some(j) => self.jobs.is_empty() || self.jobs.iter().any(|x| x == j),
            None => true,
        };
        event_ok && job_ok
    }
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    /// A JSON POST; with `secret-file`, `X-Bdc-Signature: sha256=HEX` (HMAC-SHA256 of the body).
    Webhook {
        url: String,
        secret_file: Option<PathBuf>,
    },
    /// The event JSON on stdin, BDC_EVENT / BDC_JOB / … in the environment.
    Command { command: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
}

/// How a job's data goes through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionSettings {
    /// `compression`: "zstd" (default) or "gzip".
    pub algorithm: Compression,
    /// `compression-level`: zstd 1..=19 (default 3), gzip 1..=9 (default 6).
    pub level: i32,
    /// `compression-workers`: parallel frame compressors, default: number of CPUs (at most 8).
    pub workers: usize,
}

/// One `[[job]]`.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// Repository names, the first is the primary (docs/design.md §2).
    pub repositories: Vec<String>,
    /// A `[retention.NAME]` name.
    pub retention: Option<String>,
    /// `max-age`: freshness objective (None: the default, `health::max_age`).
    pub max_age: Option<Duration>,
    /// `ping-url`: a healthchecks-style dead-man URL (`/start`, success, `/fail`).
    pub ping_url: Option<String>,
    /// `connection`: a per-job PostgreSQL URL (no password).
    pub connection: Option<String>,
    pub compression: CompressionSettings,
    pub spec: JobSpec,
}

impl Job {
    pub fn kind(&self) -> JobKindName {
        match &self.spec {
            JobSpec::PostgresDump(_) => JobKindName::PostgresDump,
            JobSpec::PostgresBase(_) => JobKindName::PostgresBase,
            JobSpec::PostgresWal(_) => JobKindName::PostgresWal,
            JobSpec::Files(_) => JobKindName::Files,
            JobSpec::Config(_) => JobKindName::Config,
            JobSpec::Verify(_) => JobKindName::Verify,
        }
    }

    /// The job's schedules with the backup type each one fires, strongest (full) first.
    pub fn schedules(&self) -> Vec<(BackupType, &CronSchedule)> {
        let mut out = Vec::new();
        match &self.spec {
            JobSpec::PostgresDump(d) => out.push((BackupType::Full, &d.schedule)),
            JobSpec::PostgresBase(b) => {
                out.push((BackupType::Full, &b.full));
                if let Some(i) = &b.incremental {
                    out.push((BackupType::Incremental, i));
                }
            }
            JobSpec::PostgresWal(_) => {}
            JobSpec::Files(f) => {
                out.push((BackupType::Full, &f.full));
                if let Some(i) = &f.incremental {
                    out.push((BackupType::Incremental, i));
                }
            }
            JobSpec::Config(c) => out.push((BackupType::Full, &c.schedule)),
            JobSpec::Verify(v) => out.push((BackupType::Full, &v.schedule)),
        }
        out
    }
}

#[derive(Debug, Clone)]
pub enum JobSpec {
    PostgresDump(DumpJob),
    PostgresBase(BaseJob),
    PostgresWal(WalJob),
    Files(FilesJob),
    Config(ConfigJob),
    Verify(VerifyJob),
}

#[derive(Debug, Clone)]
pub struct DumpJob {
    pub schedule: CronSchedule,
    /// `databases`: at least one.
    pub databases: Vec<String>,
    /// `tables`: dump only these (pg_dump -t), empty = all.
    pub tables: Vec<String>,
    /// `globals`: also dump roles and tablespaces with pg_dumpall --globals-only. Default true.
    pub globals: bool,
}

#[derive(Debug, Clone)]
pub struct BaseJob {
    pub full: CronSchedule,
    pub incremental: Option<CronSchedule>,
    pub wal_job: Option<String>,
    pub pitr_window: Option<Duration>,
    /// `max-chain`: at most this many incrementals on one full (then a full).
    pub max_chain: Option<u32>,
    /// `wal-timeout`: how long a base backup waits for its WAL to be archived (default 10 min).
    pub wal_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct WalJob {
    /// `ship-ahead`: how many of the `.ready` segments after a pushed one the daemon archives in
    /// the background, ahead of their own `wal-push` (default 8; 0 disables).
    pub ship_ahead: u32,
    /// Streaming with a supervised `pg_receivewal` (`stream = true`); `None` when off.
    pub stream: Option<WalStream>,
}

/// The streaming keys of a postgres-wal job (docs/catalogue.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalStream {
    /// `slot`: the physical replication slot (created when missing).
    pub slot: String,
    /// `synchronous`: `pg_receivewal --synchronous` (flush and report every write).
    pub synchronous: bool,
    /// `partial-interval`: how often the growing `.partial` segment is shipped (when it grew).
    pub partial_interval: Duration,
    /// `receiver-path`: the `pg_receivewal` to run; found like pg_dump (bin-dir, the server's
    /// major under /usr/lib/postgresql, PATH) when `None`.
    pub receiver_path: Option<PathBuf>,
}

/// The default of `slot`.
pub const DEFAULT_SLOT: &str = "bdc_backup";
/// The default of `partial-interval`.
pub const DEFAULT_PARTIAL_INTERVAL: Duration = Duration::from_secs(5);

/// The default of `ship-ahead`.
pub const DEFAULT_SHIP_AHEAD: u32 = 8;

impl Default for WalJob {
    fn default() -> Self {
        WalJob {
            ship_ahead: DEFAULT_SHIP_AHEAD,
            stream: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FilesJob {
    pub path: PathBuf,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub full: CronSchedule,
    pub incremental: Option<CronSchedule>,
    pub max_chain: Option<u32>,
    pub one_file_system: bool,
}

#[derive(Debug, Clone)]
pub struct ConfigJob {
    pub paths: Vec<String>,
    pub schedule: CronSchedule,
    pub watch: bool,
}

#[derive(Debug, Clone)]
pub struct VerifyJob {
    pub schedule: CronSchedule,
    /// `jobs`: the backup jobs to verify; empty = every backup job. (`repositories`, on the job,
    /// limits the repositories; empty = every repository of the covered jobs.)
    pub jobs: Vec<String>,
    /// `integrity`: off | sample | full (default sample).
    pub integrity: IntegrityMode,
    /// `budget`: how long the integrity reads of one run may take in `sample` mode (default 20m).
    pub budget: Duration,
    /// `drills`: restore drills of the newest backup of each covered job (default true).
    pub drills: bool,
    /// `scratch-directory`, `drill-url`, `files-sample` and the `[[job.check]]` entries.
    pub drill: crate::verify::check::DrillSettings,
}

/// How much a verify run reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityMode {
    Off,
    /// The next buckets of objects within the budget: every object once per cycle.
    Sample,
    /// Every object, every run.
    Full,
}

/// The default `budget` of a verify job.
pub const DEFAULT_VERIFY_BUDGET: Duration = Duration::from_secs(20 * 60);

impl VerifyJob {
    /// The defaults (also the built-in job named `verify` that `bdc-backupctl verify` uses when
    /// no verify job covers the job asked for).
    pub fn defaults(state_directory: &Path) -> VerifyJob {
        VerifyJob {
            schedule: CronSchedule::parse("0 5 * * *").expect("a valid cron expression"),
            jobs: Vec::new(),
            integrity: IntegrityMode::Sample,
            budget: DEFAULT_VERIFY_BUDGET,
            drills: true,
            drill: crate::verify::check::DrillSettings {
                scratch_directory: state_directory.join("drills"),
                drill_url: None,
                files_sample: crate::verify::check::DEFAULT_FILES_SAMPLE,
                checks: Vec::new(),
            },
        }
    }

    /// Whether this job covers backup job `job`.
    pub fn covers(&self, job: &Job) -> bool {
        job.kind() != JobKindName::Verify
            && (self.jobs.is_empty() || self.jobs.iter().any(|j| j == &job.name))
    }
}
