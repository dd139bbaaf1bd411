//! Supervised child processes (pg_dump, pg_restore, psql): killed on drop and on request, their
//! stderr kept (bounded tail), their stdout gated on a successful exit, and passwords handed over
//! in a private 0600 PGPASSFILE rather than on the command line or in the environment.

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitStatus;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How much of a child's stderr is kept (the last bytes).
pub const STDERR_TAIL: usize = 64 * 1024;

/// How a supervised child ended.
#[derive(Debug, Clone)]
pub enum ExitOutcome {
    Exited(ExitStatus),
    /// We killed it.
    Killed,
    /// Waiting for it failed.
    WaitFailed(String),
}

impl ExitOutcome {
    pub fn success(&self) -> bool {
        matches!(self, ExitOutcome::Exited(s) if s.success())
    }
}

impl fmt::Display for ExitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitOutcome::Exited(s) => write!(f, "{s}"),
            ExitOutcome::Killed => f.write_str("killed"),
            ExitOutcome::WaitFailed(e) => write!(f, "waiting for it failed: {e}"),
        }
    }
}

/// A running child: killed when this is dropped or [`Supervised::kill`] is called.
pub struct Supervised {
    name: String,
    kill: CancellationToken,
    status: watch::Receiver<Option<ExitOutcome>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// libpq's connect timeout for the client tools (seconds), unless the environment sets one: a
/// server that does not answer fails the tool instead of hanging it.
pub const TOOL_CONNECT_TIMEOUT: &str = "10";

/// Makes the child run at the lowest CPU priority (nice 19) and in the idle I/O class, as
/// restore drills' children do; its own children inherit both.
pub fn low_priority(cmd: &mut Command) {
    // SAFETY: between fork and exec only async-signal-safe system calls are made.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            // ioprio_set(IOPRIO_WHO_PROCESS, self, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT)
            libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
            Ok(())
        });
    }
}

/// Spawns `cmd` with stderr captured and stdin/stdout as the caller configured them.
/// Returns the supervisor and the taken stdout/stdin handles (if piped).
pub fn spawn(
    cmd: &mut Command,
    name: &str,
) -> std::io::Result<(Supervised, Option<ChildStdout>, Option<ChildStdin>)> {
    if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
        cmd.env("PGCONNECT_TIMEOUT", TOOL_CONNECT_TIMEOUT);
    }
    cmd.stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take();
    let stdin = child.stdin.take();
    let stderr = child.stderr.take().map(|mut err| {
        tokio::spawn(async move {
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 8192];
            loop {
                match err.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend_from_slice(&buf[..n]);
                        if tail.len() > STDERR_TAIL {
                            let cut = tail.len() - STDERR_TAIL;
                            tail.drain(..cut);
                        }
                    }
                }
            }
            tail
        })
    });
    let kill = CancellationToken::new();
    let (tx, rx) = watch::channel(None);
    let k = kill.clone();
    tokio::spawn(async move {
        let outcome = tokio::select! {
            biased;
            r = child.wait() => match r {
                Ok(s) => ExitOutcome::Exited(s),
                Err(e) => ExitOutcome::WaitFailed(e.to_string()),
            },
            _ = k.cancelled() => {
                // kill() sends SIGKILL and reaps it.
                let _ = child.kill().await;
                ExitOutcome::Killed
            }
        };
        let _ = tx.send(Some(outcome));
    });
    Ok((
        Supervised {
            name: name.to_string(),
            kill,
            status: rx,
            stderr,
        },
        stdout,
        stdin,
    ))
}

async fn wait_outcome(mut rx: watch::Receiver<Option<ExitOutcome>>) -> ExitOutcome {
    match rx.wait_for(|s| s.is_some()).await {
        Ok(s) => s
            .clone()
            .unwrap_or(ExitOutcome::WaitFailed("no status".into())),
        Err(_) => ExitOutcome::WaitFailed("the supervisor task ended".into()),
    }
}

impl Supervised {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the child to end.
    pub async fn wait(&self) -> ExitOutcome {
        wait_outcome(self.status.clone()).await
    }

    /// Kills the child (if still running) and waits until it is reaped.
    pub async fn kill(&self) -> ExitOutcome {
        self.kill.cancel();
        self.wait().await
    }

    /// The child's stderr (the last [`STDERR_TAIL`] bytes), once it has closed it. Call after the
    /// child ended; a second call returns an empty string.
    pub async fn stderr(&mut self) -> String {
        let Some(mut handle) = self.stderr.take() else {
            return String::new();
        };
        // A grandchild holding the pipe open must not hold us up for long.
        match tokio::time::timeout(std::time::Duration::from_secs(10), &mut handle).await {
            Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).trim_end().to_string(),
            Ok(Err(_)) => String::new(),
            Err(_) => {
                handle.abort();
                "(stderr still open 10 s after the tool ended)".to_string()
            }
        }
    }

    /// Wraps the child's stdout so that its end of file is reported only once the child exited
    /// successfully; any other ending is a read error (so a consumer never takes a failed dump's
    /// truncated output for a complete one).
    pub fn exit_gated<R: AsyncRead + Unpin>(&self, inner: R) -> ExitGated<R> {
        ExitGated {
            inner,
            name: self.name.clone(),
            gate: Box::pin(wait_outcome(self.status.clone())),
            done: None,
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill.cancel();
    }
}

/// See [`Supervised::exit_gated`].
pub struct ExitGated<R> {
    inner: R,
    name: String,
    gate: Pin<Box<dyn Future<Output = ExitOutcome> + Send>>,
    done: Option<ExitOutcome>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ExitGated<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(outcome) = &this.done {
            return Poll::Ready(gate_result(&this.name, outcome));
        }
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if asked && buf.filled().len() == before => {
                match this.gate.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(outcome) => {
                        let r = gate_result(&this.name, &outcome);
                        this.done = Some(outcome);
                        Poll::Ready(r)
                    }
                }
            }
            other => other,
        }
    }
}

fn gate_result(name: &str, outcome: &ExitOutcome) -> std::io::Result<()> {
    if outcome.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{name} ended unsuccessfully ({outcome})"
        )))
    }
}

/// A private password file (mode 0600) in libpq's `.pgpass` format, matching every server, for
/// the children; deleted when dropped.
pub struct PassFile {
    file: tempfile::NamedTempFile,
}

impl PassFile {
    /// Writes `password` into a new 0600 file in `dir`.
    pub fn create(dir: &Path, password: &str) -> std::io::Result<PassFile> {
        let mut file = tempfile::Builder::new()
            .prefix(".pgpass-")
            .tempfile_in(dir)?;
        let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
        writeln!(file, "*:*:*:*:{escaped}")?;
        file.flush()?;
        Ok(PassFile { file })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Points a command at this file (`PGPASSFILE`; the password itself never leaves the file).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("PGPASSFILE", self.path());
    }
}

/// A connection URL we cannot rewrite.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{url}` is not a postgresql:// URL")]
pub struct UrlError {
    pub url: String,
}

/// `url` with its database replaced by `database` (percent-encoded). Works on the text (libpq's
/// URI grammar), so socket URLs such as `postgresql://postgres@/db?host=/run/postgresql`, which
/// generic URL parsers reject for their empty host, keep working.
pub fn url_with_database(url: &str, database: &str) -> Result<String, UrlError> {
    let err = || UrlError {
        url: url.to_string(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(err)?;
    if scheme != "postgresql" && scheme != "postgres" {
        return Err(err());
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let after = &rest[authority_end..];
    let query = after.find('?').map(|i| &after[i..]).unwrap_or("");
    let encoded: String = database
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    Ok(format!("{scheme}://{authority}/{encoded}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_database_in_urls() {
        assert_eq!(
            url_with_database("postgresql://u@h:5432/postgres", "bdc db").unwrap(),
            "postgresql://u@h:5432/bdc%20db"
        );
        assert_eq!(
            url_with_database("postgresql://u@h/x?host=/run/pg", "a").unwrap(),
            "postgresql://u@h/a?host=/run/pg"
        );
    }

    #[test]
    fn socket_urls_keep_their_host() {
        assert_eq!(
            url_with_database(
                "postgresql://postgres@/postgres?host=/run/postgresql",
                "bdc_db"
            )
            .unwrap(),
            "postgresql://postgres@/bdc_db?host=/run/postgresql"
        );
        assert_eq!(
            url_with_database("postgresql:///postgres?host=/run/postgresql", "bdc_db").unwrap(),
            "postgresql:///bdc_db?host=/run/postgresql"
        );
        let o = super::super::connection::connect_options(
            "postgresql://postgres@/postgres?host=/run/postgresql",
            None,
        )
        .unwrap();
        assert_eq!(
            super::super::connection::describe(&o),
            "/run/postgresql:5432/postgres"
        );
        assert_eq!(o.get_username(), "postgres");
        let o = super::super::connection::connect_options("postgresql:///bdc?host=/run/pg", None)
            .unwrap();
        assert_eq!(super::super::connection::describe(&o), "/run/pg:5432/bdc");
    }

    #[test]
    fn passfile_is_private_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let pf = PassFile::create(dir.path(), "p:a\\ss").unwrap();
        let mode = std::fs::metadata(pf.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
        assert_eq!(
            std::fs::read_to_string(pf.path()).unwrap(),
            "*:*:*:*:p\\:a\\\\ss\n"
        );
    }

    #[tokio::test]
    async fn gated_stdout_fails_on_nonzero_exit() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo partial; echo oops >&2; exit 3"])
            .stdout(std::process::Stdio::piped());
        let (mut sup, out, _) = spawn(&mut cmd, "sh").unwrap();
        let mut gated = sup.exit_gated(out.unwrap());
        let mut s = String::new();
        let err = gated.read_to_string(&mut s).await.unwrap_err();
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        assert_eq!(sup.stderr().await, "oops");
    }

    #[tokio::test]
    async fn kill_ends_a_running_child() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600").stdout(std::process::Stdio::piped());
        let (sup, _out, _) = spawn(&mut cmd, "sleep").unwrap();
        let outcome = sup.kill().await;
        assert!(matches!(outcome, ExitOutcome::Killed), "{outcome}");
    }
}
