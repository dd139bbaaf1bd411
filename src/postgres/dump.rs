//! `postgres-dump` jobs: each database's raw `pg_dump -Fc -Z0` archive is streamed from pg_dump's
//! stdout straight into the pipeline (no temp file), `pg_dumpall --globals-only` SQL beside it, an
//! encrypted manifest, and the commit record last. An object counts only once pg_dump exited 0.
//! A run takes the shared run context ([`crate::snapshot::job::JobRun`]) and the job's [`DumpJob`].

use super::binaries::{BinariesError, PgBinaries};
use super::connection::{PgControl, PgError, connect_options, describe, read_password_file};
use super::manifest::{DUMP_MANIFEST_KIND, DumpManifest, DumpedDatabase, DumpedGlobals};
use super::process::{self, PassFile, url_with_database};
use crate::catalogue::DumpJob;
use crate::error::{Classify, Retry, io_retry};
use crate::model::{BackupType, JobKindName};
use crate::pipeline::{self, PipelineError};
use crate::repository::{
    CommitRecord, FORMAT_VERSION, ObjectRecord, RepositoryError, StoreError, format, local_copy,
};
use crate::snapshot::job::JobRun;
use chrono::Utc;
use std::process::Stdio;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("job `{job}`: no PostgreSQL URL: set [postgres] url or the job's `connection`")]
    NoUrl { job: String },
    #[error("job `{job}`: {source}")]
    Connect {
        job: String,
        #[source]
        source: PgError,
    },
    #[error("job `{job}`: {source}")]
    Binaries {
        job: String,
        #[source]
        source: BinariesError,
    },
    #[error("job `{job}`: bad PostgreSQL URL: {source}")]
    Url {
        job: String,
        #[source]
        source: process::UrlError,
    },
    #[error("job `{job}`: writing the temporary password file in {dir}: {source}")]
    PassFile {
        job: String,
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("job `{job}`: starting {tool}: {source}")]
    Spawn {
        job: String,
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("job `{job}`: {what} failed ({outcome}): {stderr}")]
    Tool {
        job: String,
        what: String,
        outcome: String,
        stderr: String,
    },
    #[error(
        "job `{job}`: storing {what} in repository `{repository}`: {source}{}",
        stderr_suffix(stderr)
    )]
    Pipeline {
        job: String,
        what: String,
        repository: String,
        stderr: String,
        #[source]
        source: PipelineError,
    },
    #[error("job `{job}`: cancelled while dumping {what}")]
    Cancelled { job: String, what: String },
    #[error("job `{job}`: encoding the manifest: {source}")]
    Manifest {
        job: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("job `{job}`: committing backup {backup_id}: {source}")]
    Commit {
        job: String,
        backup_id: String,
        #[source]
        source: RepositoryError,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// The retry class of a pipeline error.
pub fn pipeline_retry(err: &PipelineError) -> Retry {
    err.retry()
}

impl Classify for DumpError {
    fn retry(&self) -> Retry {
        match self {
            DumpError::Connect { source, .. } => source.retry(),
            DumpError::Binaries { source, .. } => source.retry(),
            DumpError::PassFile { source, .. } | DumpError::Spawn { source, .. } => {
                io_retry(source)
            }
            DumpError::Pipeline { source, .. } => pipeline_retry(source),
            DumpError::Commit { source, .. } => match source {
                RepositoryError::Store { source, .. } => source.retry(),
                _ => Retry::Permanent,
            },
            // A failed pg_dump (missing table, permission denied, lost connection) is reported
            // as permanent: the next scheduled run tries again anyway.
            DumpError::Tool { .. } => Retry::Permanent,
            DumpError::Cancelled { .. } => Retry::Transient,
            DumpError::NoUrl { .. } | DumpError::Url { .. } | DumpError::Manifest { .. } => {
                Retry::Permanent
            }
        }
    }
}

/// Runs one dump: every database, the globals, the manifest, then the commit record.
///
/// On failure before the commit, the objects this run stored are deleted (best effort; the
/// repository's cleanup of uncommitted objects catches the rest). A failed commit deletes
/// nothing: the record may have landed.
pub async fn run_dump(run: JobRun<'_>, spec: &DumpJob) -> Result<CommitRecord, DumpError> {
    let mut stored = Vec::new();
    let result = dump_and_commit(&run, spec, &mut stored).await;
    if let Err(e) = &result
        && !matches!(e, DumpError::Commit { .. })
    {
        for key in &stored {
            discard(&run.repository.store, key).await;
        }
    }
    result
}

async fn dump_and_commit(
    run: &JobRun<'_>,
    spec: &DumpJob,
    stored: &mut Vec<String>,
) -> Result<CommitRecord, DumpError> {
    let job = run.job.name.clone();
    let pg = run.catalogue.postgres.as_ref();
    let url = run
        .job
        .connection
        .clone()
        .or_else(|| pg.map(|p| p.url.clone()))
        .ok_or_else(|| DumpError::NoUrl { job: job.clone() })?;
    let password_file = pg.and_then(|p| p.password_file.as_deref());
    let bin_dir = pg.and_then(|p| p.bin_dir.as_deref());
    let connect_err = |source| DumpError::Connect {
        job: job.clone(),
        source,
    };

    let mut control = PgControl::connect(&url, password_file)
        .await
        .map_err(connect_err)?;
    let server_version_num = control.server_version_num().await.map_err(connect_err)?;
    let server_version = control.server_version().await.map_err(connect_err)?;
    let superuser = control.is_superuser().await.map_err(connect_err)?;
    let bins = PgBinaries::find(bin_dir, server_version_num)
        .await
        .map_err(|source| DumpError::Binaries {
            job: job.clone(),
            source,
        })?;
    let server = {
        let o = connect_options(&url, None).map_err(connect_err)?;
        let d = describe(&o);
        d.rsplit_once('/').map(|(s, _)| s.to_string()).unwrap_or(d)
    };

    // The password reaches the children only through a private PGPASSFILE.
    let passfile = match password_file {
        Some(path) => {
            let password = read_password_file(path).map_err(connect_err)?;
            Some(
                PassFile::create(run.state_dir, &password).map_err(|source| {
                    DumpError::PassFile {
                        job: job.clone(),
                        dir: run.state_dir.display().to_string(),
                        source,
                    }
                })?,
            )
        }
        None => None,
    };

    let store = &run.repository.store;
    let mut databases = Vec::new();
    for (index, db) in spec.databases.iter().enumerate() {
        let tables = control.list_tables(db).await.map_err(connect_err)?;
        let db_url = url_with_database(&url, db).map_err(|source| DumpError::Url {
            job: job.clone(),
            source,
        })?;
        let mut cmd = Command::new(&bins.pg_dump);
        cmd.args(["-Fc", "-Z0", "--no-password"]);
        for t in &spec.tables {
            cmd.arg("-t").arg(t);
        }
        cmd.arg("-d").arg(&db_url);
        let key = format::data_key(&job, run.backup_id, index as u64);
        let what = format!("database `{db}` (pg_dump)");
        let object = dump_to_object(run, cmd, passfile.as_ref(), &key, &what).await?;
        stored.push(key);
        tracing::info!(job = %job, database = %db, bytes = object.content_size, "dumped database");
        databases.push(DumpedDatabase {
            name: db.clone(),
            object,
            format: "custom".into(),
            selected_tables: spec.tables.clone(),
            tables,
        });
    }

    let globals = if spec.globals {
        let mut cmd = Command::new(&bins.pg_dumpall);
        cmd.args(["--globals-only", "--no-password"]);
        if !superuser {
            // pg_authid (with the password hashes) is readable by superusers only.
            cmd.arg("--no-role-passwords");
        }
        cmd.arg("-d").arg(&url);
        let key = format::data_key(&job, run.backup_id, spec.databases.len() as u64);
        let object = dump_to_object(
            run,
            cmd,
            passfile.as_ref(),
            &key,
            "globals (pg_dumpall --globals-only)",
        )
        .await?;
        stored.push(key);
        Some(DumpedGlobals {
            object,
            no_role_passwords: !superuser,
        })
    } else {
        None
    };
    control.close().await;
    drop(passfile);

    let stopped_at = Utc::now();
    let manifest = DumpManifest {
        format_version: FORMAT_VERSION,
        kind: DUMP_MANIFEST_KIND.into(),
        job: job.clone(),
        backup_id: run.backup_id.to_string(),
        started_at: run.started_at,
        stopped_at,
        server,
        server_version_num,
        server_version: server_version.clone(),
        pg_dump_version: bins.version.clone(),
        databases,
        globals,
    };
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|source| DumpError::Manifest {
            job: job.clone(),
            source,
        })?;
    let manifest_key = format::manifest_key(&job, run.backup_id);
    let manifest_record = pipeline::store_bytes(
        store,
        &manifest_key,
        manifest_bytes.clone().into(),
        run.pipeline,
    )
    .await
    .map_err(|source| DumpError::Pipeline {
        job: job.clone(),
        what: "the manifest".into(),
        repository: run.repository.name.clone(),
        stderr: String::new(),
        source,
    })?;
    stored.push(manifest_key);
    // The plaintext local copy (dumps are always full, so nothing depends on it yet; a failure
    // to save it is a warning, not a failed backup).
    if let Err(e) = local_copy::save(
        run.state_dir,
        &job,
        run.backup_id,
        &manifest_record.sha256,
        manifest_bytes.into(),
    )
    .await
    {
        tracing::warn!(job = %job, error = %e, "could not save the manifest's local copy");
    }

    let mut objects: Vec<ObjectRecord> = manifest
        .databases
        .iter()
        .map(|d| d.object.clone())
        .collect();
    if let Some(g) = &manifest.globals {
        objects.push(g.object.clone());
    }
    let mut details = serde_json::Map::new();
    details.insert("server-version-num".into(), server_version_num.into());
    details.insert("pg-major".into(), (server_version_num / 10000).into());
    details.insert("database-count".into(), manifest.databases.len().into());
    details.insert("globals".into(), manifest.globals.is_some().into());
    details.insert(
        "no-role-passwords".into(),
        manifest
            .globals
            .as_ref()
            .map(|g| g.no_role_passwords)
            .unwrap_or(false)
            .into(),
    );
    let mut provenance = crate::dr::provenance::collect(run.catalogue).await;
    provenance.postgres_version = Some(server_version_num);
    if let Some(w) = provenance.warning() {
        tracing::warn!(job = %job, "{w}");
    }
    provenance.store(&mut details);
    let record = CommitRecord {
        format_version: FORMAT_VERSION,
        id: run.backup_id.to_string(),
        job: job.clone(),
        kind: JobKindName::PostgresDump,
        backup_type: BackupType::Full,
        ancestors: Vec::new(),
        started_at: run.started_at,
        stopped_at,
        bytes_read: objects.iter().map(|o| o.content_size).sum(),
        bytes_stored: objects.iter().map(|o| o.size).sum::<u64>() + manifest_record.size,
        objects,
        manifest: manifest_record,
        details,
        software: concat!("bdc-backup ", env!("CARGO_PKG_VERSION")).into(),
    };
    if run.cancel.is_cancelled() {
        return Err(DumpError::Cancelled {
            job,
            what: "the commit".into(),
        });
    }
    run.repository
        .commit(&record)
        .await
        .map_err(|source| DumpError::Commit {
            job: job.clone(),
            backup_id: run.backup_id.to_string(),
            source,
        })?;
    Ok(record)
}

/// Runs `cmd` with stdout piped into a new object at `key`. The object is kept only when the
/// tool exited 0; otherwise it is deleted and the tool's stderr is in the error.
async fn dump_to_object(
    run: &JobRun<'_>,
    mut cmd: Command,
    passfile: Option<&PassFile>,
    key: &str,
    what: &str,
) -> Result<ObjectRecord, DumpError> {
    let job = run.job.name.clone();
    if let Some(pf) = passfile {
        pf.apply(&mut cmd);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let tool = cmd.as_std().get_program().to_string_lossy().into_owned();
    let (mut child, stdout, _) =
        process::spawn(&mut cmd, &tool).map_err(|source| DumpError::Spawn {
            job: job.clone(),
            tool: tool.clone(),
            source,
        })?;
    let Some(stdout) = stdout else {
        child.kill().await;
        return Err(DumpError::Spawn {
            job,
            tool,
            source: std::io::Error::other("no stdout pipe"),
        });
    };
    let gated = child.exit_gated(stdout);
    let gated = crate::faults::KillWhileReading::new(gated, "dump-streaming", key, 64 << 10);
    let store = &run.repository.store;
    let stored = tokio::select! {
        r = pipeline::store_stream(store, key, gated, run.pipeline, run.progress, run.cancel) => r,
        _ = run.cancel.cancelled() => Err(PipelineError::Cancelled),
    };
    let outcome = match &stored {
        Ok(_) => child.wait().await,
        Err(_) => child.kill().await,
    };
    let stderr = child.stderr().await;
    match stored {
        Ok(object) if outcome.success() => {
            if !stderr.is_empty() {
                tracing::warn!(job = %job, what, stderr = %stderr, "the dump tool succeeded with messages");
            }
            Ok(object)
        }
        Ok(_) => {
            discard(store, key).await;
            Err(DumpError::Tool {
                job,
                what: what.to_string(),
                outcome: outcome.to_string(),
                stderr,
            })
        }
        Err(source) => {
            discard(store, key).await;
            if run.cancel.is_cancelled() || matches!(source, PipelineError::Cancelled) {
                return Err(DumpError::Cancelled {
                    job,
                    what: what.to_string(),
                });
            }
            match outcome {
                // The tool failed by itself: its stderr is the story.
                super::process::ExitOutcome::Exited(s) if !s.success() => Err(DumpError::Tool {
                    job,
                    what: what.to_string(),
                    outcome: s.to_string(),
                    stderr,
                }),
                _ => Err(DumpError::Pipeline {
                    job,
                    what: what.to_string(),
                    repository: run.repository.name.clone(),
                    stderr,
                    source,
                }),
            }
        }
    }
}

/// Removes a half-written or rejected object (it never had a commit record).
async fn discard(store: &crate::repository::Store, key: &str) {
    match store.delete(key).await {
        Ok(()) | Err(StoreError::NotFound { .. }) => {}
        Err(e) => {
            tracing::warn!(key, error = %e, "could not delete an uncommitted object; cleanup will")
        }
    }
}
