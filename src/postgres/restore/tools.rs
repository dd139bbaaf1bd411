//! Running the PostgreSQL client tools of `restore database`: the shared facts and errors of a
//! run ([`ToolCtx`]), the archive streamed from the repository into `pg_restore`, or spooled to a
//! checked private file first.

use super::RestoreError;
use crate::pipeline::{self, Identities};
use crate::postgres::binaries::PgBinaries;
use crate::postgres::manifest::DumpedDatabase;
use crate::postgres::process::{self, PassFile};
use crate::repository::Repository;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Shared facts for running the client tools.
pub(super) struct ToolCtx<'a> {
    pub(super) job: String,
    pub(super) backup: String,
    pub(super) database: String,
    pub(super) into: String,
    pub(super) passfile: Option<&'a PassFile>,
    pub(super) low_priority: bool,
}

impl ToolCtx<'_> {
    pub(super) fn tool_error(
        &self,
        what: &str,
        outcome: &process::ExitOutcome,
        stderr: String,
    ) -> RestoreError {
        RestoreError::Tool {
            job: self.job.clone(),
            backup: self.backup.clone(),
            database: self.database.clone(),
            into: self.into.clone(),
            what: what.to_string(),
            outcome: outcome.to_string(),
            stderr,
        }
    }

    pub(super) fn io(&self, what: String) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
        move |source| RestoreError::Io {
            job: self.job.clone(),
            backup: self.backup.clone(),
            what,
            source,
        }
    }

    /// Runs a command to its end (stdin closed, stdout discarded); returns its outcome and stderr.
    pub(super) async fn run(
        &self,
        mut cmd: Command,
        what: &str,
    ) -> Result<(process::ExitOutcome, String), RestoreError> {
        if let Some(pf) = self.passfile {
            pf.apply(&mut cmd);
        }
        if self.low_priority {
            process::low_priority(&mut cmd);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let (mut child, _, _) =
            process::spawn(&mut cmd, what).map_err(self.io(format!("starting {what}")))?;
        let outcome = child.wait().await;
        Ok((outcome, child.stderr().await))
    }

    /// Runs a command and returns its stdout; a non-zero exit is an error with its stderr.
    pub(super) async fn capture(
        &self,
        program: &Path,
        args: &[&std::ffi::OsStr],
        what: &str,
    ) -> Result<String, RestoreError> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        if self.low_priority {
            process::low_priority(&mut cmd);
        }
        let (mut child, stdout, _) =
            process::spawn(&mut cmd, what).map_err(self.io(format!("starting {what}")))?;
        let mut out = Vec::new();
        if let Some(mut s) = stdout {
            s.read_to_end(&mut out)
                .await
                .map_err(self.io(format!("reading {what}'s output")))?;
        }
        let outcome = child.wait().await;
        if !outcome.success() {
            let stderr = child.stderr().await;
            return Err(self.tool_error(what, &outcome, stderr));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The database's archive as a checked stream from the repository.
async fn open_archive(
    ctx: &ToolCtx<'_>,
    repository: &Repository,
    identities: &Identities,
    db: &DumpedDatabase,
) -> Result<impl tokio::io::AsyncRead + Unpin, RestoreError> {
    pipeline::open_stream(&repository.store, &db.object, identities)
        .await
        .map_err(|source| RestoreError::Read {
            job: ctx.job.clone(),
            backup: ctx.backup.clone(),
            database: ctx.database.clone(),
            source,
        })
}

/// Streams the archive from the repository into `pg_restore` (one transaction: a stream that
/// fails its checks part-way leaves nothing behind, as pg_restore never sees the end).
pub(super) async fn stream_restore(
    ctx: &ToolCtx<'_>,
    bins: &PgBinaries,
    repository: &Repository,
    identities: &Identities,
    db: &DumpedDatabase,
    target_url: &str,
) -> Result<(), RestoreError> {
    let mut source = open_archive(ctx, repository, identities, db).await?;
    let mut cmd = Command::new(&bins.pg_restore);
    cmd.args([
        "--no-password",
        "--exit-on-error",
        "--single-transaction",
        "-d",
    ])
    .arg(target_url)
    .stdin(Stdio::piped())
    .stdout(Stdio::null());
    if let Some(pf) = ctx.passfile {
        pf.apply(&mut cmd);
    }
    if ctx.low_priority {
        process::low_priority(&mut cmd);
    }
    let (mut child, _, stdin) =
        process::spawn(&mut cmd, "pg_restore").map_err(ctx.io("starting pg_restore".into()))?;
    let Some(mut stdin) = stdin else {
        child.kill().await;
        return Err(ctx.io("pg_restore's stdin".into())(std::io::Error::other(
            "no stdin pipe",
        )));
    };
    // Copy by hand to tell a failing source (the stream's checks) from a failing pg_restore.
    let mut buf = vec![0u8; 256 * 1024];
    let failure: Option<(bool, std::io::Error)> = loop {
        let n = match source.read(&mut buf).await {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) => break Some((true, e)),
        };
        if let Err(e) = stdin.write_all(&buf[..n]).await {
            break Some((false, e));
        }
    };
    match failure {
        None => {
            let closed = stdin.shutdown().await;
            drop(stdin);
            let outcome = child.wait().await;
            if !outcome.success() {
                let stderr = child.stderr().await;
                return Err(ctx.tool_error("pg_restore", &outcome, stderr));
            }
            closed.map_err(ctx.io("closing pg_restore's stdin".into()))
        }
        Some((true, e)) => {
            // The archive failed its checks: kill pg_restore before it sees an end of file, so
            // its single transaction never commits.
            child.kill().await;
            drop(stdin);
            Err(ctx.io(format!(
                "reading database `{}`'s archive from repository `{}`",
                ctx.database, repository.name
            ))(e))
        }
        Some((false, e)) => {
            // pg_restore stopped reading: it failed, and its stderr tells why.
            drop(stdin);
            let outcome = match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(o) => o,
                Err(_) => child.kill().await,
            };
            let stderr = child.stderr().await;
            if outcome.success() {
                return Err(ctx.io("writing to pg_restore".into())(e));
            }
            Err(ctx.tool_error("pg_restore", &outcome, stderr))
        }
    }
}

/// Writes the archive to `path` (0600), checking free space first and its size and SHA-256
/// against the manifest after.
pub(super) async fn spool(
    ctx: &ToolCtx<'_>,
    repository: &Repository,
    identities: &Identities,
    db: &DumpedDatabase,
    path: &Path,
    dir: &Path,
) -> Result<(), RestoreError> {
    let need = db.object.content_size;
    let stat = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| ctx.io(format!("checking free space in {}", dir.display()))(e.into()))?;
    let have = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if have < need {
        return Err(RestoreError::NoSpace {
            dir: dir.to_path_buf(),
            need,
            have,
        });
    }
    let mut source = open_archive(ctx, repository, identities, db).await?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(ctx.io(format!("creating {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = source.read(&mut buf).await.map_err(ctx.io(format!(
            "reading database `{}`'s archive from repository `{}`",
            ctx.database, repository.name
        )))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
        file.write_all(&buf[..n])
            .await
            .map_err(ctx.io(format!("writing {}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(ctx.io(format!("writing {}", path.display())))?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if actual != db.object.content_sha256 || size != need {
        return Err(RestoreError::Checksum {
            job: ctx.job.clone(),
            backup: ctx.backup.clone(),
            database: ctx.database.clone(),
            expected: db.object.content_sha256.clone(),
            actual,
            expected_size: need,
            actual_size: size,
        });
    }
    Ok(())
}

pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.flush()
}
