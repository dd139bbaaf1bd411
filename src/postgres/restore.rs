//! `restore database`: a logical restore from a `postgres-dump` backup, without the daemon.
//! Whole databases stream from the repository into `pg_restore` in one transaction; selected
//! tables (`--tables`) and parallel restores (`--jobs`) spool the archive to a checked private
//! temp file first (pg_restore needs a seekable archive for `-L` reordering and `-j`). The target
//! database is created by us (`--create`), never by `pg_restore -C` (which would use the original
//! name). Owners are kept: the roles must exist (`--roles` restores them from the globals).

use super::binaries::{BinariesError, PgBinaries, parse_version_major};
use super::connection::{PgControl, PgError, connect_options, describe, read_password_file};
use super::dump::pipeline_retry;
use super::manifest::DumpManifest;
use super::process::{self, PassFile, url_with_database};
use super::toc;
use crate::catalogue::{Catalogue, JobSpec};
use crate::error::{Classify, Retry, io_retry};
use crate::model::JobKindName;
use crate::pipeline::{self, PipelineError};
use crate::repository::StoreError;
use crate::restore::{Choice, RestoreSource, SourceError};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tools::{ToolCtx, spool, stream_restore, write_private};

mod tools;

/// `bdc-backupctl restore database` (docs/design.md §13).
#[derive(Debug, Clone, Default)]
pub struct RestoreDatabaseOptions {
    pub job: String,
    /// The source database in the backup; required when the backup holds several.
    pub database: Option<String>,
    /// A backup id; default: the newest committed backup of the job.
    pub backup: Option<String>,
    /// The target database.
    pub into: String,
    /// The target server; default: the catalogue's `[postgres] url`.
    pub url: Option<String>,
    /// Restore only these tables (`t`, `schema.t`), with their indexes, constraints, triggers,
    /// sequences and grants.
    pub tables: Vec<String>,
    /// Create the target database (it must not exist); otherwise it must exist.
    pub create: bool,
    /// `pg_restore -j N`.
    pub jobs: Option<u32>,
    /// Also restore roles and tablespaces from the globals SQL (errors become warnings).
    pub roles: bool,
    /// The repository to read; default: the job's first.
    pub repository: Option<String>,
    /// Where the private work folder (spooled archive, password file) is made; default: the
    /// system's temp folder. Drills put it under their scratch folder.
    pub work_dir: Option<PathBuf>,
    /// Run the client tools at low CPU and I/O priority (drills).
    pub low_priority: bool,
}

/// What a restore did (`--json` prints it as is).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreReport {
    pub job: String,
    pub repository: String,
    pub backup_id: String,
    pub source_database: String,
    pub target_database: String,
    /// `host:port` of the target server.
    pub target_server: String,
    pub created: bool,
    /// The tables restored when `--tables` was given (`schema.table`).
    pub tables: Vec<String>,
    pub roles_restored: bool,
    /// Archive bytes fed to pg_restore.
    pub bytes: u64,
    pub warnings: Vec<String>,
    /// Unreadable commit records of other backups (each names its key); the ctl prints them
    /// on stderr.
    pub repository_warnings: Vec<String>,
    #[serde(rename = "elapsed-seconds", serialize_with = "as_seconds")]
    pub elapsed: Duration,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored database `{}` of backup {} (job `{}`, repository `{}`) into `{}` on {}{}",
            self.source_database,
            self.backup_id,
            self.job,
            self.repository,
            self.target_database,
            self.target_server,
            if self.created { " (created)" } else { "" }
        )?;
        if !self.tables.is_empty() {
            write!(f, "\n  tables: {}", self.tables.join(", "))?;
        }
        if self.roles_restored {
            write!(f, "\n  roles restored from the globals")?;
        }
        write!(
            f,
            "\n  {} archive bytes in {:.1}s",
            self.bytes,
            self.elapsed.as_secs_f64()
        )?;
        for w in &self.warnings {
            write!(f, "\n  warning: {w}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("no job `{job}` in the catalogue")]
    UnknownJob { job: String },
    /// The restore failed and the database it had created could not be dropped again.
    #[error(
        "{source}; the database `{database}` this restore created could not be dropped again ({drop_error}): drop it by hand"
    )]
    CreatedLeftBehind {
        database: String,
        drop_error: String,
        #[source]
        source: Box<RestoreError>,
    },
    #[error("job `{job}` is a {kind} job, not postgres-dump")]
    NotADumpJob { job: String, kind: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("job `{job}`, backup {backup}: reading {what} with identity file {identity}: {source}")]
    Manifest {
        job: String,
        backup: String,
        what: &'static str,
        identity: String,
        #[source]
        source: PipelineError,
    },
    #[error("job `{job}`, backup {backup}: the manifest is malformed: {source}")]
    ManifestFormat {
        job: String,
        backup: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("job `{job}`, backup {backup}: {reason}")]
    Backup {
        job: String,
        backup: String,
        reason: String,
    },
    #[error(
        "job `{job}`: --url contains a password; remove it and put the password in the catalogue's [postgres] password-file or in PGPASSFILE (the URL is not shown)"
    )]
    PasswordInUrl { job: String },
    #[error("job `{job}`: no target server: pass --url or set [postgres] url")]
    NoUrl { job: String },
    #[error("job `{job}`: bad target URL: {source}")]
    Url {
        job: String,
        #[source]
        source: process::UrlError,
    },
    #[error("job `{job}`: target: {source}")]
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
    #[error(
        "job `{job}`, backup {backup}: the archive was made by {made_by}; {pg_restore} is major {major}, too old"
    )]
    ToolsTooOld {
        job: String,
        backup: String,
        made_by: String,
        pg_restore: String,
        major: u32,
    },
    #[error("database `{database}` does not exist on {server}; create it or pass --create")]
    TargetMissing { database: String, server: String },
    #[error("job `{job}`, backup {backup}: {what}: {source}")]
    Io {
        job: String,
        backup: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("job `{job}`, backup {backup}: reading database `{database}`'s archive: {source}")]
    Read {
        job: String,
        backup: String,
        database: String,
        #[source]
        source: StoreError,
    },
    #[error("not enough space in {} to spool the archive: {need} bytes needed, {have} available", dir.display())]
    NoSpace { dir: PathBuf, need: u64, have: u64 },
    #[error(
        "job `{job}`, backup {backup}: database `{database}`'s archive does not match the manifest \
         (expected {expected_size} bytes, sha256 {expected}; got {actual_size} bytes, sha256 {actual})"
    )]
    Checksum {
        job: String,
        backup: String,
        database: String,
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
    #[error(
        "job `{job}`, backup {backup}: restoring `{database}` into `{into}`: {what} failed ({outcome}): {stderr}"
    )]
    Tool {
        job: String,
        backup: String,
        database: String,
        into: String,
        what: String,
        outcome: String,
        stderr: String,
    },
}

impl Classify for RestoreError {
    fn retry(&self) -> Retry {
        match self {
            RestoreError::Source(source) => source.retry(),
            RestoreError::Manifest { source, .. } => pipeline_retry(source),
            RestoreError::Connect { source, .. } => source.retry(),
            RestoreError::Io { source, .. } => io_retry(source),
            RestoreError::Read { source, .. } => source.retry(),
            RestoreError::CreatedLeftBehind { source, .. } => source.retry(),
            _ => Retry::Permanent,
        }
    }
}

/// Restores one database of a `postgres-dump` backup (see the module docs).
pub async fn restore_database(
    catalogue: &Catalogue,
    opts: RestoreDatabaseOptions,
) -> Result<RestoreReport, RestoreError> {
    let began = Instant::now();
    let job_name = opts.job.clone();
    // Never echo such a URL: it holds the very password being refused.
    if opts
        .url
        .as_deref()
        .is_some_and(crate::catalogue::validate::has_password)
    {
        return Err(RestoreError::PasswordInUrl { job: job_name });
    }
    let job = catalogue
        .job(&job_name)
        .ok_or_else(|| RestoreError::UnknownJob {
            job: job_name.clone(),
        })?;
    if !matches!(job.spec, JobSpec::PostgresDump(_)) {
        return Err(RestoreError::NotADumpJob {
            job: job_name,
            kind: job.kind().to_string(),
        });
    }
    let source = RestoreSource::open(
        catalogue,
        job,
        opts.repository.as_deref(),
        &[JobKindName::PostgresDump],
    )
    .await?;
    let identity_file = source.identity_file.clone().unwrap_or_default();
    let identities = source.identities()?;
    let chain = source.resolve(Choice::from_options(opts.backup.as_deref(), None))?;
    let record = chain.backup;
    let repository = &source.repository;
    let repo_name = repository.name.clone();
    let backup = record.id.clone();
    let manifest_bytes = pipeline::load_bytes(&repository.store, &record.manifest, &identities)
        .await
        .map_err(|source| RestoreError::Manifest {
            job: job_name.clone(),
            backup: backup.clone(),
            what: "the manifest",
            identity: identity_file.display().to_string(),
            source,
        })?;
    let manifest: DumpManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|source| RestoreError::ManifestFormat {
            job: job_name.clone(),
            backup: backup.clone(),
            source,
        })?;
    let backup_err = |reason: String| RestoreError::Backup {
        job: job_name.clone(),
        backup: backup.clone(),
        reason,
    };
    let source_db = manifest
        .database(opts.database.as_deref())
        .map_err(backup_err)?
        .clone();

    // The target server.
    let pg = catalogue.postgres.as_ref();
    let url = opts
        .url
        .clone()
        .or_else(|| pg.map(|p| p.url.clone()))
        .ok_or_else(|| RestoreError::NoUrl {
            job: job_name.clone(),
        })?;
    let password_file = pg.and_then(|p| p.password_file.clone());
    let connect_err = |source| RestoreError::Connect {
        job: job_name.clone(),
        source,
    };
    let server = {
        let d = describe(&connect_options(&url, None).map_err(connect_err)?);
        d.rsplit_once('/').map(|(s, _)| s.to_string()).unwrap_or(d)
    };
    let mut control = PgControl::connect(&url, password_file.as_deref())
        .await
        .map_err(connect_err)?;
    let server_version_num = control.server_version_num().await.map_err(connect_err)?;
    let bins = PgBinaries::find(pg.and_then(|p| p.bin_dir.as_deref()), server_version_num)
        .await
        .map_err(|source| RestoreError::Binaries {
            job: job_name.clone(),
            source,
        })?;
    if let Some(made) = parse_version_major(&manifest.pg_dump_version)
        && made > bins.major
    {
        return Err(RestoreError::ToolsTooOld {
            job: job_name,
            backup,
            made_by: manifest.pg_dump_version.clone(),
            pg_restore: bins.pg_restore.display().to_string(),
            major: bins.major,
        });
    }

    // A private work folder: password file, globals SQL, spooled archive, TOC list.
    let io_err = |what: &str| {
        let (job, backup, what) = (job_name.clone(), backup.clone(), what.to_string());
        move |source| RestoreError::Io {
            job,
            backup,
            what,
            source,
        }
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix("bdc-restore-");
    let work = match &opts.work_dir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .map_err(io_err("creating a private temp folder"))?;
    let passfile = match &password_file {
        Some(p) => Some(
            PassFile::create(work.path(), &read_password_file(p).map_err(connect_err)?)
                .map_err(io_err("writing the temporary password file"))?,
        ),
        None => None,
    };
    let ctx = ToolCtx {
        job: job_name.clone(),
        backup: backup.clone(),
        database: source_db.name.clone(),
        into: opts.into.clone(),
        passfile: passfile.as_ref(),
        low_priority: opts.low_priority,
    };

    // Check the target before changing anything on the server.
    let exists = control
        .database_exists(&opts.into)
        .await
        .map_err(connect_err)?;
    if opts.create && exists {
        return Err(RestoreError::Connect {
            job: job_name.clone(),
            source: PgError::DatabaseExists {
                target: control.target().to_string(),
                database: opts.into.clone(),
            },
        });
    }
    if !opts.create && !exists {
        return Err(RestoreError::TargetMissing {
            database: opts.into.clone(),
            server,
        });
    }

    // A restore through a spool (--tables, --jobs) spools first: a spool that does not fit (or
    // a damaged archive) fails before roles or the target database are created.
    let spooled = if opts.tables.is_empty() && opts.jobs.is_none() {
        None
    } else {
        let archive = work.path().join("archive.dump");
        spool(
            &ctx,
            repository,
            &identities,
            &source_db,
            &archive,
            work.path(),
        )
        .await?;
        Some(archive)
    };

    let mut warnings = Vec::new();
    if opts.roles {
        let globals = manifest.globals.as_ref().ok_or_else(|| {
            backup_err("this backup has no globals (the job has globals = false)".into())
        })?;
        let sql = pipeline::load_bytes(&repository.store, &globals.object, &identities)
            .await
            .map_err(|source| RestoreError::Manifest {
                job: job_name.clone(),
                backup: backup.clone(),
                what: "the globals",
                identity: identity_file.display().to_string(),
                source,
            })?;
        let path = work.path().join("globals.sql");
        write_private(&path, &sql).map_err(io_err("writing the globals SQL"))?;
        let mut cmd = Command::new(&bins.psql);
        cmd.args(["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=0", "-f"])
            .arg(&path)
            .arg("-d")
            .arg(&url);
        let (outcome, stderr) = ctx.run(cmd, "psql (roles)").await?;
        if !outcome.success() {
            return Err(ctx.tool_error("psql (roles)", &outcome, stderr));
        }
        warnings.extend(
            stderr
                .lines()
                .filter(|l| l.contains("ERROR:"))
                .map(|l| format!("roles: {l}")),
        );
        if globals.no_role_passwords {
            warnings.push(
                "roles were dumped without passwords (the backup role was not a superuser)".into(),
            );
        }
    }

    if opts.create {
        control
            .create_database(&opts.into)
            .await
            .map_err(connect_err)?;
    }
    // From here on a failure (a truncated or damaged object, pg_restore refusing) must not leave
    // the database this restore created behind: it is dropped again.
    let bytes = source_db.object.content_size;
    let restored = async {
        let target_url = url_with_database(&url, &opts.into).map_err(|source| RestoreError::Url {
            job: job_name.clone(),
            source,
        })?;

        let mut restored_tables = Vec::new();
        if let Some(archive) = spooled {
            let mut cmd = Command::new(&bins.pg_restore);
            cmd.args(["--no-password", "--exit-on-error"]);
            match opts.jobs {
                Some(n) if n > 1 => {
                    cmd.arg("-j").arg(n.to_string());
                }
                _ => {
                    cmd.arg("--single-transaction");
                }
            }
            if !opts.tables.is_empty() {
                let toc_text = ctx
                    .capture(
                        &bins.pg_restore,
                        &["-l".as_ref(), archive.as_os_str()],
                        "pg_restore -l",
                    )
                    .await?;
                let schema_sql = ctx
                    .capture(
                        &bins.pg_restore,
                        &[
                            "-s".as_ref(),
                            "-f".as_ref(),
                            "-".as_ref(),
                            archive.as_os_str(),
                        ],
                        "pg_restore -s",
                    )
                    .await?;
                let existing = Existing {
                    tables: control
                        .list_tables(&opts.into)
                        .await
                        .map_err(connect_err)?
                        .into_iter()
                        .collect(),
                    functions: control
                        .list_functions(&opts.into)
                        .await
                        .map_err(connect_err)?
                        .into_iter()
                        .collect(),
                };
                let selection = toc::select_tables(&toc_text, &schema_sql, &opts.tables, &existing)
                    .map_err(backup_err)?;
                for fk in &selection.skipped_foreign_keys {
                    warnings.push(format!("foreign key {fk} left out: the referenced table is not restored and not in `{}`", opts.into));
                }
                restored_tables = selection
                    .tables
                    .iter()
                    .map(|(s, t)| format!("{s}.{t}"))
                    .collect();
                let list = work.path().join("restore.list");
                write_private(&list, selection.list.as_bytes())
                    .map_err(io_err("writing the restore list"))?;
                cmd.arg("-L").arg(&list);
            }
            cmd.arg("-d").arg(&target_url).arg(&archive);
            let (outcome, stderr) = ctx.run(cmd, "pg_restore").await?;
            if !outcome.success() {
                return Err(ctx.tool_error("pg_restore", &outcome, stderr));
            }
        } else {
            stream_restore(
                &ctx,
                &bins,
                repository,
                &identities,
                &source_db,
                &target_url,
            )
            .await?;
        }
        Ok::<_, RestoreError>(restored_tables)
    }
    .await;
    let restored_tables = match restored {
        Ok(tables) => tables,
        Err(err) if opts.create => {
            return Err(
                match control.drop_database(&opts.into, server_version_num).await {
                    Ok(()) => err,
                    Err(drop_error) => RestoreError::CreatedLeftBehind {
                        database: opts.into.clone(),
                        drop_error: crate::error::error_chain(&drop_error),
                        source: Box::new(err),
                    },
                },
            );
        }
        Err(err) => return Err(err),
    };
    control.close().await;
    drop(passfile);
    work.close()
        .map_err(io_err("removing the private temp folder"))?;

    Ok(RestoreReport {
        job: job_name,
        repository: repo_name,
        backup_id: backup,
        source_database: source_db.name.clone(),
        target_database: opts.into,
        target_server: server,
        created: opts.create,
        tables: restored_tables,
        roles_restored: opts.roles,
        bytes,
        warnings,
        repository_warnings: source.warnings(),
        elapsed: began.elapsed(),
    })
}

/// Tables and functions (`schema.name`) already in the target database.
struct Existing {
    tables: BTreeSet<String>,
    functions: BTreeSet<String>,
}

impl toc::TargetObjects for Existing {
    fn has_table(&self, schema: &str, table: &str) -> bool {
        self.tables.contains(&format!("{schema}.{table}"))
    }
    fn has_function(&self, schema: &str, function: &str) -> bool {
        self.functions.contains(&format!("{schema}.{function}"))
    }
}
