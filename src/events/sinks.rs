//! Delivering one event body to one sink: a webhook (JSON POST, signed with HMAC-SHA256 when a
//! secret file is set), a command (the JSON on stdin, the event in the environment), and a job's
//! healthchecks-style `ping-url`. Every delivery has a deadline; errors say whether a retry helps.

use crate::catalogue::{AlertSink, SinkKind};
use crate::error::{Classify, Retry};
use crate::model::alerts::EventBody;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The largest `/fail` body sent to a ping URL (the error text is cut there).
pub const PING_BODY_CAP: usize = 10 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot read the secret file {path}: {source}")]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: {source}")]
    Http {
        target: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{target}: answered HTTP {status}")]
    Status { target: String, status: u16 },
    #[error("{target}: no answer within {}s", .timeout.as_secs())]
    Timeout { target: String, timeout: Duration },
    #[error("command {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("command {program}: {status}{}", if .stderr.is_empty() { String::new() } else { format!(": {}", .stderr) })]
    Command {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

impl Classify for DeliveryError {
    fn retry(&self) -> Retry {
        match self {
            DeliveryError::Status { status, .. }
                if (400..500).contains(status) && *status != 429 && *status != 408 =>
            {
                Retry::Permanent
            }
            // A receiver may come back; a secret file may be fixed; a command may succeed later.
            _ => Retry::Transient,
        }
    }
}

/// A URL for messages: scheme, host and path, never a query (tokens live there).
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(a URL that does not parse)".to_string(),
    }
}

/// The one HTTP client (rustls) of the alert sinks.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("bdc-backupd/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap_or_default()
}

/// Delivers `body` (the JSON text queued in the outbox) to `sink`.
pub async fn deliver(
    http: &reqwest::Client,
    sink: &AlertSink,
    parsed: &EventBody,
    body: &str,
) -> Result<(), DeliveryError> {
    match &sink.kind {
        SinkKind::Webhook { url, secret_file } => {
            let target = shown_url(url);
            let mut request = http
                .post(url)
                .timeout(sink.timeout)
                .header("Content-Type", "application/json")
                .header("X-Bdc-Event", parsed.event.as_str())
                .body(body.to_string());
            if let Some(path) = secret_file {
                let secret =
                    tokio::fs::read(path)
                        .await
                        .map_err(|source| DeliveryError::Secret {
                            path: path.clone(),
                            source,
                        })?;
                let secret = trim_newline(&secret);
                request = request.header(
                    super::SIGNATURE_HEADER,
                    super::signature(secret, body.as_bytes()),
                );
            }
            let response = request
                .send()
                .await
                .map_err(|source| http_error(&target, sink.timeout, source))?;
            let status = response.status().as_u16();
            if !(200..300).contains(&status) {
                return Err(DeliveryError::Status { target, status });
            }
            Ok(())
        }
        SinkKind::Command { command } => run_command(command, parsed, body, sink.timeout).await,
    }
}

fn trim_newline(s: &[u8]) -> &[u8] {
    let mut end = s.len();
    while end > 0 && matches!(s[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &s[..end]
}

fn http_error(target: &str, timeout: Duration, source: reqwest::Error) -> DeliveryError {
    if source.is_timeout() {
        DeliveryError::Timeout {
            target: target.to_string(),
            timeout,
        }
    } else {
        DeliveryError::Http {
            target: target.to_string(),
            source: source.without_url(),
        }
    }
}

async fn run_command(
    command: &[String],
    parsed: &EventBody,
    body: &str,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let program = command.first().cloned().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&command[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .env("BDC_EVENT", parsed.event.as_str())
        .env("BDC_SEVERITY", parsed.severity.as_str())
        .env("BDC_HOST", &parsed.host)
        .env("BDC_AT", parsed.at.to_rfc3339())
        .env("BDC_SUMMARY", &parsed.summary)
        .env("BDC_REMINDER", if parsed.reminder { "1" } else { "0" });
    for (var, value) in [
        ("BDC_JOB", parsed.job.as_deref()),
        ("BDC_OBJECTIVE", parsed.objective.as_deref()),
    ] {
        match value {
            Some(v) => cmd.env(var, v),
            None => cmd.env_remove(var),
        };
    }
    match parsed.run_id {
        Some(id) => cmd.env("BDC_RUN_ID", id.to_string()),
        None => cmd.env_remove("BDC_RUN_ID"),
    };
    let spawn = |source| DeliveryError::Spawn {
        program: program.clone(),
        source,
    };
    let work = async {
        let mut child = cmd.spawn().map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin is not an error.
            let _ = stdin.write_all(body.as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        }
        let out = child.wait_with_output().await.map_err(spawn)?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(DeliveryError::Command {
                program: program.clone(),
                status: out.status,
                stderr: stderr.trim().chars().take(500).collect(),
            })
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(DeliveryError::Timeout {
            target: format!("command {program}"),
            timeout,
        }),
    }
}

/// Which ping of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    Start,
    Success,
    Fail,
}

/// Pings a job's dead-man URL: `GET URL/start`, `GET URL`, `POST URL/fail` with `error` (cut at
/// [`PING_BODY_CAP`] bytes) as the body.
pub async fn ping(
    http: &reqwest::Client,
    url: &str,
    which: Ping,
    error: &str,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let base = url.trim_end_matches('/');
    let target = shown_url(url);
    let request = match which {
        Ping::Start => http.get(format!("{base}/start")),
        Ping::Success => http.get(base),
        Ping::Fail => {
            let mut cut = error.len().min(PING_BODY_CAP);
            while !error.is_char_boundary(cut) {
                cut -= 1;
            }
            http.post(format!("{base}/fail"))
                .header("Content-Type", "text/plain; charset=utf-8")
                .body(error[..cut].to_string())
        }
    };
    let response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|source| http_error(&target, timeout, source))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(DeliveryError::Status { target, status });
    }
    Ok(())
}
