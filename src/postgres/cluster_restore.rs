//! `restore cluster` (docs/design.md §5, §6, §13): point-in-time recovery from a `postgres-base` backup
//! and the WAL archive, offline (no daemon needed).
//!
//! 1. Pick the backup: `--backup ID`; for `--time T` the newest whose stop time is before T;
//!    for `--lsn L` the newest whose stop LSN ≤ L; otherwise (`--xid`, `--name`, `--immediate`,
//!    end of archive) the newest (give `--backup` for an older one).
//! 2. The target folder must not exist or be empty (created 0700; its owner and mode come from
//!    the backup's data directory root when run as root).
//! 3. Rebuild the chain with the snapshot engine, holding `global/pg_control` back; write
//!    `backup_label` (+ `tablespace_map`) from the backup's objects, `recovery.signal`, and the
//!    recovery settings in `postgresql.auto.conf` (earlier recovery settings there are
//!    dropped); then `global/pg_control` LAST.
//! 4. `--start`: `pg_ctl start` (as the data directory's owner when run as root), wait until
//!    recovery ends (or pauses with `--target-action pause`), report the point reached.

use super::base_record::BaseBackupInfo;
use crate::catalogue::{Catalogue, JobSpec};
use crate::error::{Classify, Retry, io_retry};
use crate::model::JobKindName;
use crate::pipeline::{self, Identities, PipelineError};
use crate::repository::{Repository, RepositoryError};
use crate::restore::{Choice, RestoreSource, SourceError};
use crate::snapshot::path::ByteName;
use crate::snapshot::restore::{RestoreError, RestoreOptions, RestoreStats};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file held back and restored last.
pub const PG_CONTROL: &str = "global/pg_control";
/// The prefetch spool of `wal-fetch` during a `--start`ed recovery (removed afterwards).
pub const SPOOL_DIR: &str = "pg_wal/.bdc-prefetch";
/// Segments `wal-fetch` fetches ahead during a `--start`ed recovery.
pub const PREFETCH: u32 = 8;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    #[default]
    EndOfArchive,
    Time(String),
    Lsn(String),
    Xid(String),
    Name(String),
    /// The end of the base backup (the first consistent point).
    Immediate,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterRestoreOptions {
    pub job: String,
    pub target_dir: PathBuf,
    pub backup: Option<String>,
    pub target: RecoveryTarget,
    /// `recovery_target_inclusive = off`.
    pub exclusive: bool,
    /// Default `latest`.
    pub target_timeline: Option<String>,
    /// `promote` (default), `pause` or `shutdown`.
    pub target_action: Option<String>,
    pub start: bool,
    /// The restored server's port (written to postgresql.auto.conf); default: its configuration's.
    pub port: Option<u16>,
    /// `archive_mode = off` in postgresql.auto.conf: the restored cluster does not archive into
    /// the archive it came from (drills, test restores, a copy beside the running primary).
    pub no_archive: bool,
    pub repository: Option<String>,
    pub dry_run: bool,
    /// The catalogue (absolute) and this ctl binary, for `restore_command`.
    pub catalogue_path: PathBuf,
    pub ctl_binary: PathBuf,
    /// More postgresql.auto.conf lines, written after ours (drills: `listen_addresses = ''`,
    /// their own `unix_socket_directories`, `archive_command = ''`).
    pub extra_settings: Vec<String>,
    /// With `--start`: reach the server through this Unix socket folder, not the URL's host.
    pub socket_dir: Option<PathBuf>,
    /// With `--start`: run the server at low CPU and I/O priority (drills).
    pub low_priority: bool,
    /// `wal-fetch --use-partial` in `restore_command`: the shipped `.partial` may end recovery.
    pub use_partial: bool,
}

/// What the restore did (or would do).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterRestoreReport {
    pub job: String,
    pub repository: String,
    pub backup_id: String,
    /// The backup and its ancestors, newest first.
    pub chain: Vec<String>,
    /// Unreadable commit records of other backups (each names its key); the ctl prints them
    /// on stderr.
    pub repository_warnings: Vec<String>,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub backup_stopped_at: DateTime<Utc>,
    pub target_dir: PathBuf,
    /// The lines written to postgresql.auto.conf.
    pub settings: Vec<String>,
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<RestoreStats>,
    /// With `--start`: where recovery ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached: Option<RecoveryPoint>,
    /// Where the archived WAL ends (the last complete segment, a shipped `.partial` beyond it)
    /// and whether this restore replays that `.partial`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_end: Option<String>,
}

/// The point a started recovery reached.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RecoveryPoint {
    pub replay_lsn: Option<String>,
    pub last_transaction: Option<String>,
    pub timeline: Option<u32>,
    pub in_recovery: bool,
    pub port: u16,
}

impl std::fmt::Display for ClusterRestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} backup {} of job `{}` (repository `{}`) into {}",
            if self.dry_run {
                "would restore"
            } else {
                "restored"
            },
            self.backup_id,
            self.job,
            self.repository,
            self.target_dir.display()
        )?;
        writeln!(f, "  chain: {}", self.chain.join(" <- "))?;
        writeln!(
            f,
            "  backup: timeline {}, LSN {} .. {}, stopped {}",
            self.timeline, self.start_lsn, self.stop_lsn, self.backup_stopped_at
        )?;
        writeln!(f, "  postgresql.auto.conf:")?;
        for s in &self.settings {
            writeln!(f, "    {s}")?;
        }
        if let Some(s) = &self.stats {
            writeln!(
                f,
                "  {} files ({} bytes), {} folders",
                s.files, s.bytes, s.folders
            )?;
        }
        if let Some(w) = &self.wal_end {
            writeln!(f, "  WAL: {w}")?;
        }
        match &self.reached {
            Some(p) => write!(
                f,
                "  recovery {} at LSN {} (last transaction {}), timeline {}; the server runs on port {}",
                if p.in_recovery { "paused" } else { "ended" },
                p.replay_lsn.as_deref().unwrap_or("?"),
                p.last_transaction.as_deref().unwrap_or("none replayed"),
                p.timeline.map_or("?".to_string(), |t| t.to_string()),
                p.port
            ),
            None if self.dry_run => write!(f, "  (nothing written)"),
            None => write!(
                f,
                "  start it with pg_ctl -D {} start; recovery runs then",
                self.target_dir.display()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterRestoreError {
    #[error("no job `{job}` in the catalogue")]
    UnknownJob { job: String },
    #[error("job `{job}` is not a postgres-base job")]
    WrongKind { job: String },
    #[error("{reason}")]
    Usage { reason: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("job `{job}`: {source}")]
    Repository {
        job: String,
        #[source]
        source: Box<RepositoryError>,
    },
    #[error("job `{job}`: {reason}")]
    NoBackup { job: String, reason: String },
    #[error("backup {backup}: {reason}")]
    BadRecord { backup: String, reason: String },
    #[error("target {}: {reason}", path.display())]
    Target { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup {backup}: reading {what}: {source}")]
    Object {
        backup: String,
        what: String,
        #[source]
        source: Box<PipelineError>,
    },
    #[error("backup {backup} (repository `{repository}`): {source}")]
    Restore {
        backup: String,
        repository: String,
        #[source]
        source: Box<RestoreError>,
    },
    #[error("starting the restored cluster: {reason}")]
    Start { reason: String },
    #[error("the restored cluster: {reason}")]
    Recovery { reason: String },
    #[error("restore task failed: {0}")]
    Task(String),
}

impl Classify for ClusterRestoreError {
    fn retry(&self) -> Retry {
        match self {
            ClusterRestoreError::Repository { source, .. } => source.retry(),
            ClusterRestoreError::Source(source) => source.retry(),
            ClusterRestoreError::Io { source, .. } => io_retry(source),
            ClusterRestoreError::Object { source, .. } => source.retry(),
            ClusterRestoreError::Restore { source, .. } => source.retry(),
            ClusterRestoreError::Task(_) => Retry::Transient,
            _ => Retry::Permanent,
        }
    }
}

fn usage(reason: impl Into<String>) -> ClusterRestoreError {
    ClusterRestoreError::Usage {
        reason: reason.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterRestoreError + '_ {
    move |source| ClusterRestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

mod choose;
mod settings;
mod start;

use choose::choose;
use settings::{configured_port, write_auto_conf};
pub use settings::{recovery_settings, recovery_settings_from};
use start::start_and_wait;

/// The one repository recovery fetches WAL from, if any: `--repository R` when R is a `sync`
/// repository of the postgres-wal job. A sync repository holds every segment PostgreSQL was told
/// is archived, so reading only from it loses nothing; and a restore from R then works while the
/// WAL job's other repositories are unreachable (otherwise the first segment that does not exist,
/// which recovery always asks for, cannot be called missing while another repository does not
/// answer: wal-fetch retries, then stops recovery). Otherwise (`None`): every repository of the
/// WAL job, sync ones first.
pub fn wal_source<'a>(catalogue: &Catalogue, repository: Option<&'a str>) -> Option<&'a str> {
    let r = repository?;
    let wal_job = catalogue
        .jobs
        .iter()
        .find(|j| matches!(j.spec, JobSpec::PostgresWal(_)))?;
    let sync = wal_job.repositories.iter().any(|n| n == r)
        && catalogue
            .repository(r)
            .is_some_and(|s| s.wal_ack == crate::catalogue::WalAck::Sync);
    sync.then_some(r)
}

/// Restores a base backup and prepares (and with `--start` runs) recovery.
pub async fn restore_cluster(
    catalogue: &Catalogue,
    o: ClusterRestoreOptions,
) -> Result<ClusterRestoreReport, ClusterRestoreError> {
    let job_name = o.job.clone();
    let job = catalogue
        .job(&job_name)
        .ok_or_else(|| ClusterRestoreError::UnknownJob {
            job: job_name.clone(),
        })?;
    if !matches!(job.spec, JobSpec::PostgresBase(_)) {
        return Err(ClusterRestoreError::WrongKind { job: job_name });
    }
    let tz = catalogue.daemon.timezone;
    let target_dir = if o.target_dir.is_absolute() {
        o.target_dir.clone()
    } else {
        std::env::current_dir()
            .map_err(io_err(&o.target_dir))?
            .join(&o.target_dir)
    };
    let spool = o.start.then(|| target_dir.join(SPOOL_DIR));
    let wal_repository = wal_source(catalogue, o.repository.as_deref());
    let settings = recovery_settings_from(&o, tz, spool.as_deref(), wal_repository)?;

    let source = RestoreSource::open(
        catalogue,
        job,
        o.repository.as_deref(),
        &[JobKindName::PostgresBase],
    )
    .await?;
    let mut warnings = source.warnings();
    let mut bases = Vec::new();
    for r in &source.records {
        match BaseBackupInfo::from_record(r) {
            Some(Ok(info)) => bases.push((r.clone(), info)),
            Some(Err(e)) if o.backup.as_deref() == Some(r.id.as_str()) => {
                return Err(ClusterRestoreError::BadRecord {
                    backup: r.id.clone(),
                    reason: format!("unreadable details.postgres in its commit record: {e}"),
                });
            }
            Some(Err(e)) => warnings.push(format!(
                "skipped backup {}: unreadable details.postgres in its commit record {}: {e}",
                r.id,
                r.key()
            )),
            None => {}
        }
    }
    if let Some(id) = &o.backup {
        // Not committed or unreadable: the shared wording.
        source.choose(Choice::Id(id))?;
    }
    let (chosen, info) = choose(&bases, &o, tz)
        .map_err(|reason| ClusterRestoreError::NoBackup {
            job: job_name.clone(),
            reason: format!("{reason} (repository `{}`)", source.repository_name()),
        })?
        .clone();
    let backup = chosen.id.clone();
    let chain = source.chain_of(&chosen)?;
    let objects = chain.objects();
    let repository = &source.repository;
    check_timeline(catalogue, &o, &info).await?;
    let mut report = ClusterRestoreReport {
        job: job_name.clone(),
        repository: repository.name.clone(),
        backup_id: backup.clone(),
        chain: chain.ids(),
        repository_warnings: warnings,
        start_lsn: info.start_lsn.clone(),
        stop_lsn: info.stop_lsn.clone(),
        timeline: info.timeline,
        backup_stopped_at: chosen.stopped_at,
        target_dir: target_dir.clone(),
        settings: settings.clone(),
        dry_run: o.dry_run,
        stats: None,
        reached: None,
        wal_end: wal_end(catalogue, wal_repository, &info, o.use_partial).await,
    };
    // The target: missing or empty.
    match std::fs::symlink_metadata(&target_dir) {
        Ok(m) if m.is_dir() => {
            if std::fs::read_dir(&target_dir)
                .map_err(io_err(&target_dir))?
                .next()
                .is_some()
            {
                return Err(ClusterRestoreError::Target {
                    path: target_dir,
                    reason: "not empty; restore a cluster into a new or empty folder".into(),
                });
            }
        }
        Ok(_) => {
            return Err(ClusterRestoreError::Target {
                path: target_dir,
                reason: "exists and is not a folder".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&target_dir)(e)),
    }
    if o.dry_run {
        return Ok(report);
    }
    let identities = source.identities()?;
    std::fs::create_dir_all(&target_dir).map_err(io_err(&target_dir))?;
    std::fs::set_permissions(&target_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(&target_dir))?;

    // The manifest, decrypted to a private spool file.
    let obj_err = |what: &str| {
        let (backup, what) = (backup.clone(), what.to_string());
        move |source| ClusterRestoreError::Object {
            backup,
            what,
            source: Box::new(source),
        }
    };
    let spool_file = tempfile::tempfile().map_err(io_err(Path::new("(temp file)")))?;
    {
        let mut reader = pipeline::open_stream(&repository.store, &chosen.manifest, &identities)
            .await
            .map_err(|e| obj_err("the manifest")(PipelineError::Store(e)))?;
        let mut out = tokio::fs::File::from_std(
            spool_file
                .try_clone()
                .map_err(io_err(Path::new("(temp file)")))?,
        );
        tokio::io::copy(&mut reader, &mut out)
            .await
            .map_err(|source| {
                obj_err("the manifest")(PipelineError::Read {
                    key: chosen.manifest.key.clone(),
                    source,
                })
            })?;
        use tokio::io::AsyncWriteExt;
        out.flush()
            .await
            .map_err(io_err(Path::new("(temp file)")))?;
    }
    // Everything but pg_control.
    let pg_control = ByteName(PG_CONTROL.as_bytes().to_vec());
    let options = RestoreOptions {
        target: target_dir.clone(),
        overwrite: true, // the folder was checked empty above (we created it)
        skip: vec![pg_control.clone()],
        ..Default::default()
    };
    let spool_file = run_restore(
        repository,
        &objects,
        &identities,
        spool_file,
        options,
        &backup,
    )
    .await
    .map(|(f, stats)| {
        report.stats = Some(stats);
        f
    })?;
    let owner = std::fs::metadata(&target_dir).map_err(io_err(&target_dir))?;
    let (uid, gid) = (owner.uid(), owner.gid());
    let write_owned = |name: &str, bytes: &[u8]| -> Result<(), ClusterRestoreError> {
        let path = target_dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(bytes).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io_err(&path))?;
        Ok(())
    };
    // backup_label and tablespace_map from the backup's objects.
    let find = |key: &str| chosen.objects.iter().find(|r| r.key == key).cloned();
    let label_rec = find(&info.backup_label_key).ok_or_else(|| ClusterRestoreError::BadRecord {
        backup: backup.clone(),
        reason: format!("the commit record does not list {}", info.backup_label_key),
    })?;
    let label = pipeline::load_bytes(&repository.store, &label_rec, &identities)
        .await
        .map_err(obj_err("backup_label"))?;
    write_owned("backup_label", &label)?;
    if let Some(key) = &info.tablespace_map_key {
        let rec = find(key).ok_or_else(|| ClusterRestoreError::BadRecord {
            backup: backup.clone(),
            reason: format!("the commit record does not list {key}"),
        })?;
        let map = pipeline::load_bytes(&repository.store, &rec, &identities)
            .await
            .map_err(obj_err("tablespace_map"))?;
        write_owned("tablespace_map", &map)?;
    }
    write_owned("recovery.signal", b"")?;
    write_auto_conf(&target_dir, &settings, &backup, uid, gid)?;
    // pg_control last.
    let options = RestoreOptions {
        target: target_dir.clone(),
        paths: vec![pg_control],
        overwrite: true,
        ..Default::default()
    };
    run_restore(
        repository,
        &objects,
        &identities,
        spool_file,
        options,
        &backup,
    )
    .await?;

    if o.start {
        let port = match o.port {
            Some(p) => p,
            None => configured_port(&target_dir),
        };
        let reached = start_and_wait(catalogue, &target_dir, port, &info, &o, uid).await;
        if let Some(spool) = &spool {
            let _ = std::fs::remove_dir_all(spool);
        }
        report.reached = Some(reached?);
    }
    Ok(report)
}

/// Where the archive ends, said in the report: the last complete segment of the newest timeline
/// and a shipped `.partial` beyond it — replayed with `--use-partial`, else recovery stops at
/// the end of that last complete segment. None when the archive cannot be read (the restore
/// itself reports that) or holds no segment.
async fn wal_end(
    catalogue: &Catalogue,
    repository: Option<&str>,
    info: &BaseBackupInfo,
    use_partial: bool,
) -> Option<String> {
    let repos = crate::wal::fetch::wal_repositories(catalogue, repository).ok()?;
    let mut names = Vec::new();
    for repo in &repos {
        if let Ok(n) = crate::wal::partial::archived_names(
            repo,
            &info.cluster,
            crate::wal::fetch::CALL_TIMEOUT,
        )
        .await
        {
            names.extend(n);
        }
    }
    let end = crate::wal::partial::ArchiveEnd::of(names.iter());
    let last = end
        .last_segment
        .as_ref()
        .map_or("none".to_string(), |s| s.name.clone());
    Some(match (end.partial_beyond(), use_partial) {
        (Some(p), true) => format!(
            "the archive ends with {p} (shipped while streaming) after the last complete segment {last}; recovery replays it (--use-partial)"
        ),
        (Some(p), false) => format!(
            "recovery stops at the end of the last complete segment {last}: the newer WAL in {p} is not replayed without --use-partial"
        ),
        (None, _) => format!("the archive ends with the complete segment {last}"),
    })
}

/// A numeric `--target-timeline` must exist: the backup's own, or one whose history file is in
/// the WAL archive (PostgreSQL would otherwise fail late, after the files were restored).
async fn check_timeline(
    catalogue: &Catalogue,
    o: &ClusterRestoreOptions,
    info: &BaseBackupInfo,
) -> Result<(), ClusterRestoreError> {
    let Some(tl) = o
        .target_timeline
        .as_deref()
        .and_then(|t| t.parse::<u32>().ok())
    else {
        return Ok(());
    };
    if tl == info.timeline {
        return Ok(());
    }
    let repos = crate::wal::fetch::wal_repositories(catalogue, None)
        .map_err(|reason| usage(format!("--target-timeline {tl}: {reason}")))?;
    let history = format!("{tl:08X}.history");
    for repo in &repos {
        let prefix = crate::wal::format::timeline_prefix(&info.cluster, tl);
        let listed =
            repo.store
                .list(&prefix)
                .await
                .map_err(|source| ClusterRestoreError::Repository {
                    job: o.job.clone(),
                    source: Box::new(RepositoryError::Store {
                        repository: repo.name.clone(),
                        source,
                    }),
                })?;
        if listed
            .iter()
            .any(|m| m.key[prefix.len()..].starts_with(&history))
        {
            return Ok(());
        }
    }
    Err(usage(format!(
        "--target-timeline {tl}: timeline {tl} is not in the WAL archive (no {history}; the backup is on timeline {})",
        info.timeline
    )))
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

async fn run_restore(
    repository: &Repository,
    objects: &HashMap<String, crate::repository::ObjectRecord>,
    identities: &Identities,
    spool: std::fs::File,
    options: RestoreOptions,
    backup: &str,
) -> Result<(std::fs::File, RestoreStats), ClusterRestoreError> {
    let store = repository.store.clone();
    let objects = objects.clone();
    let identities = identities.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut spool = spool;
        let stats = crate::snapshot::restore::restore(
            &mut spool,
            &store,
            &objects,
            &identities,
            &options,
            handle,
        )?;
        Ok((spool, stats))
    })
    .await
    .map_err(|e| ClusterRestoreError::Task(e.to_string()))?
    .map_err(|source| ClusterRestoreError::Restore {
        backup: backup.to_string(),
        repository: repository.name.clone(),
        source: Box::new(source),
    })
}
