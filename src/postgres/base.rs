//! `postgres-base` jobs (docs/design.md §3, §5): a physical base backup of the data directory with the
//! non-exclusive backup API on one held session, through the tree-snapshot engine in strict mode.
//!
//! 1. Check the server (12+), read its identity (system identifier, major version), that its
//!    `data_directory` is the catalogue's `[postgres] data-directory`, the WAL segment size, data
//!    checksums; tablespaces outside the data directory are refused (named in the error).
//! 2. `pg_backup_start(label, fast => true)` (12–14: `pg_start_backup(label, true, false)`).
//! 3. Walk PGDATA with PostgreSQL's exclusions ([`PgDataWalk`]), full or incremental (parent, id
//!    and type from the snapshot-job core, [`crate::snapshot::job`]), store data objects and the
//!    manifest.
//! 4. `pg_backup_stop(false)` (12–14: `pg_stop_backup(false, false)`): the stop LSN, the
//!    `backup_label` and `tablespace_map`, stored as encrypted objects of the backup (never read
//!    from PGDATA).
//!    With data checksums, pages are verified as read ([`super::checksum`]); failures are
//!    run warnings and `checksum-failures` in the record.
//! 5. Wait until every WAL segment from start to stop is archived in the WAL job's first sync
//!    repository (`wal-timeout`, default 10 min), THEN commit. The record carries
//!    [`BaseBackupInfo`] under `details.postgres`.
//!
//! Any failure after the start stops the backup on the same session (or closes it, which
//! aborts it) and deletes this backup's objects.

mod changes;
mod walk;

use super::base_record::{BACKUP_LABEL_OBJECT, BaseBackupInfo, TABLESPACE_MAP_OBJECT};
use super::checksum::Verifier;
use super::connection::{PgControl, PgError};
use crate::catalogue::{BaseJob, Catalogue, WalAck};
use crate::error::{Classify, Retry};
use crate::model::{BackupType, JobKindName};
use crate::pipeline::{self, PipelineError};
use crate::repository::{ObjectRecord, Repository, RepositoryError, format};
use crate::snapshot::SnapshotError;
use crate::snapshot::backup::{EngineConfig, InspectHook};
use crate::snapshot::job::{self, ChosenParent, JobError, JobOutcome, JobRun, PART_SIZE};
use crate::snapshot::manifest::Mode;
use crate::snapshot::path::ByteName;
use crate::wal::{ClusterIdentity, WalName};
use chrono::Utc;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
pub use walk::{EXCLUDED, PgDataWalk, relation_file};

/// How long a base backup waits for its WAL by default.
pub const DEFAULT_WAL_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the WAL archive is polled while waiting, at most (the first polls come sooner). The
/// daemon's archiver wakes the wait as soon as a file is durable
/// ([`crate::wal::push::durable_signal`]); polling is the fallback (an `archive_command` of another
/// daemon, a repository written by another host).
const WAL_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("job `{job}`: no PostgreSQL URL: set [postgres] url or the job's `connection`")]
    NoUrl { job: String },
    #[error("job `{job}`: [postgres] data-directory is not set; a base backup needs it")]
    NoDataDirectory { job: String },
    #[error("job `{job}`: {source}")]
    Pg {
        job: String,
        #[source]
        source: Box<PgError>,
    },
    #[error("job `{job}`: {what}: {source}")]
    Query {
        job: String,
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("job `{job}`: PostgreSQL {version} is not supported (base backups need 12 or later)")]
    Version { job: String, version: u32 },
    #[error(
        "job `{job}`: the server's data directory is {server}, but the catalogue's [postgres] data-directory is {configured} (they must be the same folder)"
    )]
    DataDirectory {
        job: String,
        server: String,
        configured: String,
    },
    #[error("job `{job}`: data directory {}: {source}", path.display())]
    DataDirectoryIo {
        job: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "job `{job}`: the cluster has tablespaces outside the data directory ({list}); base backups of such clusters are not supported yet"
    )]
    Tablespaces { job: String, list: String },
    #[error("job `{job}`: {reason}")]
    WalJob { job: String, reason: String },
    #[error("job `{job}`: {source}")]
    Repository {
        job: String,
        #[source]
        source: Box<RepositoryError>,
    },
    #[error(
        "job `{job}`: WAL segment {segment} was not archived in repository `{repository}` within {}s (is archive_command working? see the server log and `wal-timeout`)",
        waited.as_secs()
    )]
    WalTimeout {
        job: String,
        segment: String,
        repository: String,
        waited: Duration,
    },
    #[error("job `{job}`: storing {what} in repository `{repository}`: {source}")]
    Store {
        job: String,
        what: &'static str,
        repository: String,
        #[source]
        source: Box<PipelineError>,
    },
    #[error(transparent)]
    Snapshot(Box<JobError>),
    #[error("job `{job}`: cancelled")]
    Cancelled { job: String },
}

impl From<JobError> for BaseError {
    fn from(e: JobError) -> Self {
        BaseError::Snapshot(Box::new(e))
    }
}

impl Classify for BaseError {
    fn retry(&self) -> Retry {
        match self {
            BaseError::Pg { source, .. } => source.retry(),
            BaseError::Query { source, .. } => super::connection::sqlx_retry(source),
            BaseError::DataDirectoryIo { source, .. } => crate::error::io_retry(source),
            BaseError::Repository { source, .. } => source.retry(),
            BaseError::Store { source, .. } => source.retry(),
            BaseError::Snapshot(e) => e.retry(),
            BaseError::WalTimeout { .. } | BaseError::Cancelled { .. } => Retry::Transient,
            _ => Retry::Permanent,
        }
    }
}

/// What the server said before the backup started.
struct ServerFacts {
    version: u32,
    identity: ClusterIdentity,
    segment_size: u64,
    checksums: bool,
    data_directory: PathBuf,
}

fn query_err(job: &str, what: &str) -> impl FnOnce(sqlx::Error) -> BaseError {
    let (job, what) = (job.to_string(), what.to_string());
    move |source| BaseError::Query { job, what, source }
}

async fn server_facts(
    job: &str,
    pg: &mut PgControl,
    configured: &Path,
) -> Result<ServerFacts, BaseError> {
    let version = pg
        .server_version_num()
        .await
        .map_err(|source| BaseError::Pg {
            job: job.into(),
            source: Box::new(source),
        })?;
    if version < 120000 {
        return Err(BaseError::Version {
            job: job.into(),
            version,
        });
    }
    let sysid: i64 = sqlx::query_scalar("SELECT system_identifier FROM pg_control_system()")
        .fetch_one(pg.conn())
        .await
        .map_err(query_err(job, "reading the system identifier"))?;
    let server_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(pg.conn())
        .await
        .map_err(query_err(
            job,
            "reading data_directory (the backup role needs pg_read_all_settings)",
        ))?;
    let segment_size: String =
        sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
            .fetch_one(pg.conn())
            .await
            .map_err(query_err(job, "reading wal_segment_size"))?;
    let checksums: String = sqlx::query_scalar("SELECT current_setting('data_checksums')")
        .fetch_one(pg.conn())
        .await
        .map_err(query_err(job, "reading data_checksums"))?;
    let tablespaces: Vec<(String, String)> = sqlx::query_as(
        "SELECT spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
         WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY spcname",
    )
    .fetch_all(pg.conn())
    .await
    .map_err(query_err(job, "listing tablespaces"))?;
    if !tablespaces.is_empty() {
        return Err(BaseError::Tablespaces {
            job: job.into(),
            list: tablespaces
                .iter()
                .map(|(n, l)| format!("`{n}` at {l}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let canon = |p: &Path| {
        std::fs::canonicalize(p).map_err(|source| BaseError::DataDirectoryIo {
            job: job.into(),
            path: p.to_path_buf(),
            source,
        })
    };
    let configured_c = canon(configured)?;
    let server_c = std::fs::canonicalize(&server_dir).unwrap_or_else(|_| server_dir.clone().into());
    if configured_c != server_c {
        return Err(BaseError::DataDirectory {
            job: job.into(),
            server: server_dir,
            configured: configured.display().to_string(),
        });
    }
    let segment_size = segment_size
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|s| s.is_power_of_two())
        .ok_or_else(|| BaseError::Query {
            job: job.into(),
            what: "reading wal_segment_size".into(),
            source: sqlx::Error::Protocol(format!("unexpected wal_segment_size `{segment_size}`")),
        })?;
    Ok(ServerFacts {
        version,
        identity: ClusterIdentity {
            system_identifier: sysid as u64,
            pg_major: version / 10000,
        },
        segment_size,
        checksums: checksums.trim() == "on",
        data_directory: configured_c,
    })
}

/// The WAL job's first sync repository (else its first).
fn wal_repository(
    catalogue: &Catalogue,
    job: &str,
    spec: &BaseJob,
) -> Result<(String, Repository), BaseError> {
    let err = |reason: String| BaseError::WalJob {
        job: job.into(),
        reason,
    };
    let name = spec.wal_job.as_deref().ok_or_else(|| {
        err("no `wal-job`: a base backup is only complete with its WAL archived; name the postgres-wal job".into())
    })?;
    let wal = catalogue
        .job(name)
        .ok_or_else(|| err(format!("wal-job `{name}` is not in the catalogue")))?;
    let repo_name = wal
        .repositories
        .iter()
        .find(|r| {
            catalogue
                .repository(r)
                .is_some_and(|s| s.wal_ack == WalAck::Sync)
        })
        .or_else(|| wal.repositories.first())
        .ok_or_else(|| err(format!("wal-job `{name}` lists no repository")))?;
    let settings = catalogue
        .repository(repo_name)
        .ok_or_else(|| err(format!("repository `{repo_name}` is not in the catalogue")))?;
    let repo = Repository::open(settings).map_err(|source| BaseError::Repository {
        job: job.into(),
        source: Box::new(source),
    })?;
    Ok((name.to_string(), repo))
}

/// Runs one base backup (see the module docs).
pub async fn run_base(run: JobRun<'_>, spec: &BaseJob) -> Result<JobOutcome, BaseError> {
    let job = run.job.name.clone();
    let pg_settings = run.catalogue.postgres.as_ref();
    let url = run
        .job
        .connection
        .clone()
        .or_else(|| pg_settings.map(|p| p.url.clone()))
        .ok_or_else(|| BaseError::NoUrl { job: job.clone() })?;
    let data_dir = pg_settings
        .and_then(|p| p.data_directory.clone())
        .ok_or_else(|| BaseError::NoDataDirectory { job: job.clone() })?;
    let password_file = pg_settings.and_then(|p| p.password_file.as_deref());
    let (wal_job, wal_repo) = wal_repository(run.catalogue, &job, spec)?;
    let mut phases = Phases::new();
    let mut pg = PgControl::connect(&url, password_file)
        .await
        .map_err(|source| BaseError::Pg {
            job: job.clone(),
            source: Box::new(source),
        })?;
    let facts = server_facts(&job, &mut pg, &data_dir).await?;
    phases.lap("connect");

    let job::Plan {
        parent,
        backup_type: ty,
        backup_id,
        full_because,
    } = job::plan(&run, JobKindName::PostgresBase, spec.max_chain).await?;
    phases.lap("plan");

    // The backup starts: from here on every failure stops it.
    let label = format!("bdc-backup {job} {backup_id}");
    let start_sql = if facts.version >= 150000 {
        "SELECT pg_backup_start($1, true)::text"
    } else {
        "SELECT pg_start_backup($1, true, false)::text"
    };
    let start_lsn: String = sqlx::query_scalar(start_sql)
        .bind(&label)
        .fetch_one(pg.conn())
        .await
        .map_err(query_err(
            &job,
            "starting the backup (the backup role needs EXECUTE on pg_backup_start/pg_backup_stop)",
        ))?;
    phases.lap("start-checkpoint");
    tracing::info!(job = %job, backup_id = %backup_id, start_lsn = %start_lsn, "base backup started");
    let mut stopped = false;
    let result = backup_started(
        &run,
        spec,
        &mut pg,
        &facts,
        &backup_id,
        ty,
        parent,
        &start_lsn,
        (&wal_job, &wal_repo),
        &mut stopped,
        &mut phases,
    )
    .await;
    if result.is_err() {
        if !stopped {
            let stop_sql = if facts.version >= 150000 {
                "SELECT pg_backup_stop(false)::text"
            } else {
                "SELECT pg_stop_backup(false, false)::text"
            };
            if let Err(e) = sqlx::query(stop_sql).execute(pg.conn()).await {
                tracing::warn!(job = %job, error = %e, "could not stop the failed backup; closing the session aborts it");
            }
        }
        let commit_failed = matches!(&result, Err(BaseError::Snapshot(e)) if matches!(**e, JobError::Commit { .. }));
        if !commit_failed {
            job::delete_uncommitted(run.repository, &job, &backup_id).await;
        }
    }
    pg.close().await;
    let (record, warnings) = result?;
    tracing::info!(job = %job, backup_id = %record.id, backup_type = ?ty, "base backup phases (ms): {}", phases.summary());
    Ok(JobOutcome::Committed {
        record: Box::new(record),
        warnings,
        full_because,
    })
}

#[allow(clippy::too_many_arguments)]
async fn backup_started(
    run: &JobRun<'_>,
    spec: &BaseJob,
    pg: &mut PgControl,
    facts: &ServerFacts,
    backup_id: &str,
    ty: BackupType,
    parent: Option<ChosenParent>,
    start_lsn: &str,
    (wal_job, wal_repo): (&str, &Repository),
    stopped: &mut bool,
    phases: &mut Phases,
) -> Result<(crate::repository::CommitRecord, Vec<String>), BaseError> {
    let job = run.job.name.clone();
    let timeline: i32 = sqlx::query_scalar("SELECT timeline_id FROM pg_control_checkpoint()")
        .fetch_one(pg.conn())
        .await
        .map_err(query_err(&job, "reading the timeline"))?;
    let timeline = timeline as u32;
    let bad_lsn = |l: &str| BaseError::Query {
        job: job.clone(),
        what: "reading the backup's LSNs".into(),
        source: sqlx::Error::Protocol(format!("unexpected LSN `{l}`")),
    };
    let start = crate::wal::name::parse_lsn(start_lsn).ok_or_else(|| bad_lsn(start_lsn))?;
    let parent_info = parent
        .as_ref()
        .and_then(|p| BaseBackupInfo::from_record(&p.record))
        .and_then(Result::ok);
    let changed = changes::for_incremental(
        pg,
        changes::Incremental {
            job: &job,
            state_dir: run.state_dir,
            data_directory: &facts.data_directory,
            parent: parent_info.as_ref(),
            identity: &facts.identity,
            segment_size: facts.segment_size,
            checksums: facts.checksums,
            timeline,
            start,
        },
    )
    .await;
    phases.lap("wal-changes");
    let (ancestors, parent) = match parent.map(ChosenParent::into_engine) {
        Some((a, p)) => (a, Some(p)),
        None => (Vec::new(), None),
    };
    let walk = PgDataWalk::new(&facts.data_directory).map_err(|source| {
        BaseError::from(JobError::Snapshot {
            job: job.clone(),
            source: SnapshotError::Source {
                path: facts.data_directory.clone(),
                source,
            },
        })
    })?;
    let verifier = facts.checksums.then(|| Verifier::new(start));
    let inspect: Option<InspectHook> = verifier.clone().map(|v| {
        let hook: InspectHook =
            Arc::new(move |path, file, offset, chunk| v.check(path, file, offset, chunk));
        hook
    });
    let cfg = EngineConfig {
        job: job.clone(),
        backup_id: backup_id.to_string(),
        backup_type: ty,
        mode: Mode::Strict,
        started_at: run.started_at,
        ancestors,
        source: ByteName(facts.data_directory.as_os_str().as_bytes().to_vec()),
        part_size: PART_SIZE,
        parent,
        spool_dir: run.state_dir.to_path_buf(),
        fault_unreadable: None,
        before_read: None,
        inspect,
        changed,
    };
    let mut prepared =
        job::prepare_snapshot(run, JobKindName::PostgresBase, cfg, Box::new(walk)).await?;
    phases.lap("walk-and-store");
    let checksum_failures = verifier.as_ref().map_or(0, |v| v.failures());
    if let Some(more) = verifier.as_ref().and_then(|v| v.unlisted()) {
        prepared.warnings.push(more);
        prepared
            .record
            .details
            .insert("warnings".into(), (prepared.warnings.len() as u64).into());
    }
    if checksum_failures > 0 {
        tracing::warn!(job = %job, backup_id = %backup_id, pages = checksum_failures, "page checksum failures (listed in the run's warnings)");
    }

    // Stop: the stop LSN, backup_label and tablespace_map come from the server.
    let stop_sql = if facts.version >= 150000 {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
    };
    let (stop_lsn, labelfile, spcmapfile): (String, Option<String>, Option<String>) =
        sqlx::query_as(stop_sql)
            .fetch_one(pg.conn())
            .await
            .map_err(query_err(&job, "stopping the backup"))?;
    *stopped = true;
    phases.lap("stop");
    // The record's stop time is the stop call's: recovery to a time after it can use this backup.
    let stop_time = Utc::now();
    tracing::info!(job = %job, backup_id = %backup_id, stop_lsn = %stop_lsn, "base backup stopped; waiting for its WAL");
    let prefix = format::backup_prefix(&job, backup_id);
    let label_key = format!("{prefix}{BACKUP_LABEL_OBJECT}");
    let label_record = pipeline::store_bytes(
        &run.repository.store,
        &label_key,
        labelfile.unwrap_or_default().into_bytes().into(),
        run.pipeline,
    )
    .await
    .map_err(|source| BaseError::Store {
        job: job.clone(),
        what: "backup_label",
        repository: run.repository.name.clone(),
        source: Box::new(source),
    })?;
    let mut extra: Vec<ObjectRecord> = vec![label_record];
    let mut map_key = None;
    if let Some(map) = spcmapfile.filter(|m| !m.is_empty()) {
        let key = format!("{prefix}{TABLESPACE_MAP_OBJECT}");
        extra.push(
            pipeline::store_bytes(
                &run.repository.store,
                &key,
                map.into_bytes().into(),
                run.pipeline,
            )
            .await
            .map_err(|source| BaseError::Store {
                job: job.clone(),
                what: "tablespace_map",
                repository: run.repository.name.clone(),
                source: Box::new(source),
            })?,
        );
        map_key = Some(key);
    }

    phases.lap("label");
    let stop = crate::wal::name::parse_lsn(&stop_lsn).ok_or_else(|| bad_lsn(&stop_lsn))?;
    let segments = crate::wal::name::segments_between(timeline, start, stop, facts.segment_size);
    wait_for_wal(
        &job,
        wal_repo,
        &facts.identity,
        &segments,
        spec.wal_timeout.unwrap_or(DEFAULT_WAL_TIMEOUT),
        run.cancel,
    )
    .await?;
    phases.lap("wal-wait");

    let info = BaseBackupInfo {
        cluster: facts.identity,
        server_version: facts.version,
        timeline,
        start_lsn: start_lsn.to_string(),
        stop_lsn,
        start_wal: segments.first().cloned().unwrap_or_default(),
        stop_wal: segments.last().cloned().unwrap_or_default(),
        wal_segment_size: facts.segment_size,
        wal_job: Some(wal_job.to_string()),
        data_checksums: facts.checksums,
        checksum_failures,
        backup_label_key: label_key,
        tablespace_map_key: map_key,
        tablespaces: Vec::new(),
    };
    info.into_details(&mut prepared.record.details);
    if let Some(mut provenance) = crate::dr::provenance::Provenance::of(&prepared.record) {
        provenance.postgres_version = Some(info.server_version);
        provenance.system_identifier = Some(info.cluster.system_identifier.to_string());
        provenance.store(&mut prepared.record.details);
    }
    prepared.record.bytes_stored += extra.iter().map(|o| o.size).sum::<u64>();
    prepared.record.objects.extend(extra);
    prepared.record.stopped_at = stop_time;
    let committed = job::commit_prepared(run, prepared).await?;
    phases.lap("commit");
    // The next incremental's parent is this backup: older change summaries are not needed.
    let (state_dir, first) = (run.state_dir.to_path_buf(), info.start_wal.clone());
    let sysid = info.cluster.system_identifier;
    tokio::task::spawn_blocking(move || changes::prune(&state_dir, sysid, &first));
    Ok(committed)
}

/// Where a base backup's time went (logged at info level when it commits).
struct Phases {
    last: std::time::Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }

    fn summary(&self) -> String {
        self.laps
            .iter()
            .map(|(w, d)| format!("{w} {}", d.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Waits until every segment is in the archive: re-checked whenever the daemon's archiver made a
/// WAL file durable, and polled as the fallback.
async fn wait_for_wal(
    job: &str,
    repo: &Repository,
    identity: &ClusterIdentity,
    segments: &[String],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), BaseError> {
    crate::faults::kill_point("base-wait-stop-segment", job);
    let deadline = tokio::time::Instant::now() + timeout;
    for segment in segments {
        let Some(name) = WalName::parse(segment) else {
            continue;
        };
        let prefix = crate::wal::format::file_prefix(identity, &name);
        // The segment is usually archived within a few hundred ms: poll soon, then back off.
        let mut pause = Duration::from_millis(50);
        loop {
            // Subscribed before the check: a segment made durable meanwhile still wakes us.
            let mut durable = crate::wal::push::durable_signal();
            match repo.store.list(&prefix).await {
                Ok(found) if !found.is_empty() => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(job = %job, repository = %repo.name, error = %e, "listing the WAL archive failed; retrying")
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BaseError::WalTimeout {
                    job: job.into(),
                    segment: segment.clone(),
                    repository: repo.name.clone(),
                    waited: timeout,
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(BaseError::Cancelled { job: job.into() }),
                _ = tokio::time::sleep(pause) => pause = (pause * 2).min(WAL_POLL),
                _ = durable.changed() => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::walk::Event;
    use walk::is_database_dir;

    #[test]
    fn relation_names() {
        assert_eq!(relation_file(b"16384"), Some((&b"16384"[..], &b""[..])));
        assert_eq!(
            relation_file(b"16384_fsm"),
            Some((&b"16384"[..], &b"fsm"[..]))
        );
        assert_eq!(
            relation_file(b"16384_init.2"),
            Some((&b"16384"[..], &b"init"[..]))
        );
        assert_eq!(relation_file(b"16384.12"), Some((&b"16384"[..], &b""[..])));
        assert_eq!(relation_file(b"PG_VERSION"), None);
        assert_eq!(relation_file(b"pg_filenode.map"), None);
        assert_eq!(relation_file(b"16384_xx"), None);
        assert!(is_database_dir(b"base/1"));
        assert!(!is_database_dir(b"base/pgsql_tmp"));
        assert!(!is_database_dir(b"global"));
    }

    #[test]
    fn walk_leaves_out_what_postgres_regenerates() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "base/1",
            "base/pgsql_tmp",
            "global",
            "pg_wal/archive_status",
            "pg_stat_tmp",
            "pg_replslot/slot",
            "pg_subtrans",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "postgresql.auto.conf",
            "global/pg_control",
            "global/pg_internal.init",
            "base/1/100",
            "base/1/100_fsm",
            "base/1/200",
            "base/1/200_fsm",
            "base/1/200_init",
            "base/1/200.1",
            "base/1/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_stat_tmp/global.stat",
            "pg_replslot/slot/state",
            "pg_subtrans/0000",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let got: Vec<String> = PgDataWalk::new(root)
            .unwrap()
            .map(|e| match e {
                Event::Item(i) => i.path.display(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [
                "",
                "PG_VERSION",
                "base",
                "base/1",
                "base/1/100",
                "base/1/100_fsm",
                "base/1/200_init",
                "global",
                "global/pg_control",
                "pg_replslot",
                "pg_stat_tmp",
                "pg_subtrans",
                "pg_wal",
                "pg_wal/archive_status",
                "postgresql.auto.conf",
            ]
        );
    }
}
