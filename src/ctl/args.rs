//! The command line of `bdc-backupctl` (docs/design.md §13, a contract: flags may be added, these keep working).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "bdc-backupctl",
    version,
    about = "Control and restore side of bdc-backup"
)]
pub struct CtlArgs {
    /// The job catalogue (also BDC_BACKUP_CATALOGUE); its socket is used unless --socket is given.
    #[arg(long, global = true, value_name = "FILE")]
    pub catalogue: Option<PathBuf>,
    /// The daemon's control socket (default: the catalogue's, BDC_BACKUP_SOCKET, or /run/bdc-backup/control.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Jobs, last result per repository, next run, running jobs and their progress.
    Status,
    /// Run history from the state DB, newest first.
    Runs {
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// What is restorable (falls back to reading the repositories when the daemon is down).
    Backups {
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        repository: Option<String>,
    },
    /// Start a job now.
    Run {
        job: String,
        #[arg(long, conflicts_with = "incremental")]
        full: bool,
        #[arg(long)]
        incremental: bool,
        /// Follow progress and exit with the run's result.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a running run.
    Cancel { run_id: i64 },
    /// Re-read the catalogue (an invalid one is rejected, the old one kept).
    Reload,
    /// Print the daemon's events as they happen.
    Follow,
    /// Make an age identity (written 0600, never overwriting) and print its recipient.
    Keygen {
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Man pages and shell completions, for packagers (hidden).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: super::generate::GenerateCommand,
    },
    /// PostgreSQL's archive_command (`bdc-backupctl wal-push %p`): exit 0 only when the file is
    /// durable in every sync repository; any failure exits 1 (PostgreSQL retries).
    WalPush(WalPushArgs),
    /// PostgreSQL's restore_command (`bdc-backupctl wal-fetch %f %p`), without the daemon: exit 0
    /// fetched, 1 not found in any repository, 255 on any other error (recovery stops).
    WalFetch(WalFetchArgs),
    /// Restore from a backup (works without the daemon).
    Restore {
        #[command(subcommand)]
        what: RestoreCommand,
    },
    /// Apply the GFS retention policies now: each backup listed as kept (with the rules that keep
    /// it) or deleted (falls back to the repositories when the daemon is down).
    Retention {
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        repository: Option<String>,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bytes stored per job and repository, growth per week, projections.
    Usage {
        #[arg(long)]
        job: Option<String>,
        /// Weeks of growth to show and average over.
        #[arg(long, default_value_t = crate::usage::DEFAULT_WEEKS)]
        weeks: u32,
    },
    /// Start a verify run now (through the daemon): integrity reads, WAL continuity and restore
    /// drills of the covered backup jobs, recorded as a run of the verify job covering --job
    /// (else of the built-in job `verify`). With --wait: exit 0 when every check passed, 1 when
    /// any failed, 2 on usage errors; without a daemon, --wait verifies in the ctl (nothing recorded).
    Verify {
        /// Only this backup job.
        #[arg(long, value_name = "J")]
        job: Option<String>,
        /// Integrity reads and WAL continuity only, no drill.
        #[arg(long, conflicts_with = "drill_only")]
        integrity_only: bool,
        /// Restore drills only.
        #[arg(long)]
        drill_only: bool,
        /// This backup instead of the newest (read in full).
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// Follow progress, print every check, exit with the result.
        #[arg(long)]
        wait: bool,
    },
    /// One run in full: its error or warnings and, for a verify run, every check.
    Show { run_id: i64 },
    /// The Prometheus text the daemon serves on `metrics-listen`.
    Metrics,
    /// The audit trail: who did what, when, with what result (from the state DB when the daemon
    /// is not running).
    Audit {
        /// Rows from this time on (a date alone: from its start; no offset: the catalogue's zone).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        job: Option<String>,
        /// At most this many rows (the newest).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Check the whole hash chain; exit 1 naming the first broken row.
        #[arg(long)]
        verify: bool,
    },
    /// Disaster recovery on a bare host: read the repository directly, recover the newest
    /// catalogue copy into DIR/catalogue.toml, list what each job can restore, write DIR/plan.toml.
    Bootstrap(BootstrapArgs),
    /// Open alert states, recent deliveries and each sink's last error; `alerts test` sends a test event.
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsAction>,
        /// How many recent deliveries to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum AlertsAction {
    /// Queue an `alert-test` event through the outbox, for every sink or one.
    Test {
        /// The `[[alert]]` sink's name (default: every sink).
        #[arg(long)]
        sink: Option<String>,
    },
}

/// `wal-push PATH [--data-directory DIR] [--timeout T]`
#[derive(Debug, Clone, Args)]
pub struct WalPushArgs {
    /// The WAL file, relative to the current folder (PostgreSQL's `%p`, run in the data directory).
    pub path: PathBuf,
    /// The cluster's data directory (default: the current folder).
    #[arg(long, value_name = "DIR")]
    pub data_directory: Option<PathBuf>,
    /// Give up (exit 1, PostgreSQL retries) after this long: seconds or e.g. "5m".
    #[arg(long, value_name = "T", default_value = "300", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
}

/// `wal-fetch NAME DEST [--repository R] [--data-directory DIR] [--timeout T] [--spool DIR --prefetch N]`
#[derive(Debug, Clone, Args)]
pub struct WalFetchArgs {
    /// The WAL file name PostgreSQL asks for (`%f`).
    pub name: String,
    /// Where to write it (`%p`, relative to the current folder).
    pub dest: PathBuf,
    /// Only this repository (default: the postgres-wal job's, sync ones first).
    #[arg(long)]
    pub repository: Option<String>,
    /// The cluster's data directory (default: the current folder).
    #[arg(long, value_name = "DIR")]
    pub data_directory: Option<PathBuf>,
    /// Retry transient errors for at most this long, then exit 255: seconds or e.g. "1m".
    #[arg(long, value_name = "T", default_value = "60", value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
    /// A folder for prefetched segments (with --prefetch).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Also fetch this many following segments of the timeline into --spool.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "spool")]
    pub prefetch: u32,
    /// Streaming: serve the shipped `<segment>.partial` for a segment that is the very last of
    /// the newest timeline (never in place of a complete segment).
    #[arg(long)]
    pub use_partial: bool,
}

/// `300` (seconds) or a humantime duration (`5m`, `90s`).
pub fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(text.trim()).map_err(|e| format!("not a duration: {e}"))
}

#[derive(Debug, Clone, Subcommand)]
pub enum RestoreCommand {
    /// Restore a logical dump into a database.
    Database(RestoreDatabaseArgs),
    /// Point-in-time recovery of the cluster (offline; no daemon needed).
    Cluster(RestoreClusterArgs),
    /// Restore a files job's snapshot (to a folder; any backup of a chain).
    Files(RestoreFilesArgs),
    /// Restore a config job's snapshot (to a folder, or --in-place to the original paths).
    Config(RestoreConfigArgs),
    /// Disaster recovery of everything: run a DR plan (written by `bootstrap` or by hand) step by
    /// step in the seed's order — config, database (cluster or dump), files, hook commands.
    All(RestoreAllArgs),
}

/// `restore all --plan FILE [--dry-run] [--at T] [--resume]`
#[derive(Debug, Clone, Args)]
pub struct RestoreAllArgs {
    /// The DR plan (TOML; see docs/operations.md).
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Print each step with its backup, size and a time estimate; restore nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Restore to this time: PITR target of cluster steps, newest backup stopped by then for
    /// the others (forms as for `restore cluster --time`).
    #[arg(long, value_name = "T")]
    pub at: Option<String>,
    /// Go on after an interruption: steps recorded in FILE.progress are not redone.
    #[arg(long)]
    pub resume: bool,
}

/// `bootstrap --repository URL [--credentials-file F] --identity KEY --output DIR`
#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// The repository's URL (file:///…, s3://bucket/prefix, gs://…, az://…).
    #[arg(long, value_name = "URL")]
    pub repository: String,
    /// The cloud credentials file (as in the catalogue's `credentials-file`).
    #[arg(long, value_name = "F")]
    pub credentials_file: Option<PathBuf>,
    /// S3 region (as in the catalogue).
    #[arg(long)]
    pub region: Option<String>,
    /// S3-compatible endpoint (as in the catalogue).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The age identity file that opens the backups.
    #[arg(long, value_name = "KEY")]
    pub identity: PathBuf,
    /// Where catalogue.toml, the named files and plan.toml are written.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreDatabaseArgs {
    #[arg(long)]
    pub job: String,
    /// The source database in the backup (needed when the backup holds several).
    #[arg(long)]
    pub database: Option<String>,
    /// The backup id (default: the newest).
    #[arg(long)]
    pub backup: Option<String>,
    /// The target database name (never mapped to pg_restore -C).
    #[arg(long)]
    pub into: String,
    /// The target server (default: the catalogue's [postgres] url).
    #[arg(long)]
    pub url: Option<String>,
    /// Only these tables (comma-separated or repeated), with their indexes, constraints, triggers,
    /// sequences and grants.
    #[arg(long, value_name = "T,…")]
    pub tables: Vec<String>,
    /// Create the target database first.
    #[arg(long)]
    pub create: bool,
    /// Parallel restore (spools the archive to a checked temp file).
    #[arg(long)]
    pub jobs: Option<u32>,
    /// Also restore roles and tablespaces (the globals).
    #[arg(long)]
    pub roles: bool,
    /// Read from this repository (default: the job's first).
    #[arg(long)]
    pub repository: Option<String>,
}

/// `restore cluster --job J --target-dir DIR [--backup ID] [--time T|--lsn L|--xid X|--name N|--immediate] …`
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("recovery_target").args(["time", "lsn", "xid", "name", "immediate"])))]
pub struct RestoreClusterArgs {
    /// The postgres-base job.
    #[arg(long)]
    pub job: String,
    /// The new data directory (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// The base backup (default: the newest that fits the target: for --time the newest
    /// stopped before T, for --lsn the newest stopped at or before L, otherwise the newest).
    #[arg(long)]
    pub backup: Option<String>,
    /// Recover to this time, as PostgreSQL prints it (`2026-12-01 19:47:57.901925+00`, `+05:30`,
    /// `Z`, a zone name) or `YYYY-MM-DD HH:MM[:SS]` in the catalogue's time zone.
    #[arg(long, value_name = "T")]
    pub time: Option<String>,
    /// Recover to this WAL position (e.g. 0/3000060).
    #[arg(long, value_name = "L")]
    pub lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, value_name = "X")]
    pub xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[arg(long)]
    pub immediate: bool,
    /// Stop just before the target (recovery_target_inclusive = off).
    #[arg(long)]
    pub exclusive: bool,
    /// latest (default), current or a timeline number.
    #[arg(long, value_name = "TL")]
    pub target_timeline: Option<String>,
    /// promote (default), pause or shutdown.
    #[arg(long, value_name = "A")]
    pub target_action: Option<String>,
    /// Start the server and wait until recovery ends.
    #[arg(long)]
    pub start: bool,
    /// The restored server's port (written to postgresql.auto.conf).
    #[arg(long)]
    pub port: Option<u16>,
    /// Write `archive_mode = off`: the restored cluster does not archive into this archive
    /// (drills and copies beside the running primary).
    #[arg(long)]
    pub no_archive: bool,
    /// Show the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Read from this repository (default: the job's first).
    #[arg(long)]
    pub repository: Option<String>,
    /// Also replay the newest shipped `.partial` segment (streaming; `wal-fetch --use-partial`).
    #[arg(long)]
    pub use_partial: bool,
}

/// `restore files --job J [--backup ID|--at T] --target DIR [--path P…] [--dry-run] [--overwrite]`
#[derive(Debug, Clone, Args)]
pub struct RestoreFilesArgs {
    #[arg(long)]
    pub job: String,
    /// The backup id (default: the newest).
    #[arg(long, conflicts_with = "at")]
    pub backup: Option<String>,
    /// The newest backup stopped at or before this time, as PostgreSQL prints it
    /// (`2026-12-01 19:47:57.9+00`, `+05:30`, `Z`, a zone name) or `YYYY-MM-DD HH:MM[:SS]` in the
    /// catalogue's time zone.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Restore beneath this folder (created if missing; must be empty unless --overwrite).
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
    /// Only this file or folder (relative to the job's folder, or absolute beneath it);
    /// repeatable. Only the frames it needs are fetched.
    #[arg(long = "path", value_name = "P")]
    pub paths: Vec<PathBuf>,
    /// Show what would be restored; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Restore into a non-empty target, replacing entries of the same name.
    #[arg(long)]
    pub overwrite: bool,
    /// Restore what can be restored when data is damaged or missing (the failures are listed).
    #[arg(long)]
    pub ignore_errors: bool,
    /// Owners by number, not by name.
    #[arg(long)]
    pub numeric_owner: bool,
    /// Read from this repository (default: the job's first).
    #[arg(long)]
    pub repository: Option<String>,
}

/// `restore config --job J [--backup ID|--at T] (--target DIR | --in-place) [--dry-run]`
#[derive(Debug, Clone, Args)]
pub struct RestoreConfigArgs {
    #[arg(long)]
    pub job: String,
    /// The backup id (default: the newest).
    #[arg(long, conflicts_with = "at")]
    pub backup: Option<String>,
    /// The newest backup stopped at or before this time.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Restore beneath this folder (the original absolute paths are recreated inside it).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "in_place",
        conflicts_with = "in_place"
    )]
    pub target: Option<PathBuf>,
    /// Back to the original absolute paths (existing files replaced; nothing else touched).
    #[arg(long)]
    pub in_place: bool,
    /// Only this file (absolute path); repeatable.
    #[arg(long = "path", value_name = "P")]
    pub paths: Vec<PathBuf>,
    #[arg(long)]
    pub dry_run: bool,
    /// Restore into a non-empty --target folder.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(long)]
    pub ignore_errors: bool,
    #[arg(long)]
    pub numeric_owner: bool,
    #[arg(long)]
    pub repository: Option<String>,
}
