//! The client side: connect, handshake, one request at a time, events.
//!
//! Replies are parsed into `serde_json::Value` first, so a newer daemon's unknown response type
//! is reported clearly ([`ClientError::Protocol`]) and an unknown event type is skipped.

use crate::control::{LineRead, read_line_capped, write_json_line};
use crate::error::{Classify, Retry, io_retry};
use crate::protocol::{
    ErrorBody, ErrorCode, Event, Hello, MAX_LINE, PROTOCOL_VERSION, Reply, Request, Response,
};
use serde_json::Value;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Connecting and the handshake each must finish within this time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// [`Client::request`] gives up after this long by default (see [`Client::set_reply_timeout`]).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the daemon listens unless the catalogue or `--socket` says otherwise.
pub fn default_socket_path() -> PathBuf {
    PathBuf::from(crate::catalogue::DEFAULT_SOCKET)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached (the ctl exits with code 2).
    #[error("cannot reach bdc-backupd at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The connection failed after it was established.
    #[error("connection to bdc-backupd at {path} failed: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The daemon sent something this client does not understand (or closed unexpectedly).
    #[error("control protocol: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("bdc-backupd: {}", .0.message)]
    Daemon(ErrorBody),
}

impl ClientError {
    /// The ctl's exit code for this error (docs/design.md §8): 2 when the daemon cannot be reached.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Connect { .. } => 2,
            _ => 1,
        }
    }
}

impl Classify for ClientError {
    fn retry(&self) -> Retry {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io { source, .. } => {
                io_retry(source)
            }
            ClientError::Protocol(_) => Retry::Permanent,
            ClientError::Daemon(body) => match body.code {
                ErrorCode::Conflict | ErrorCode::Internal => Retry::Transient,
                _ => Retry::Permanent,
            },
        }
    }
}

/// One connection to the daemon, after a successful handshake.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    path: PathBuf,
    daemon: Hello,
    line: Vec<u8>,
    reply_timeout: Option<Duration>,
}

/// One parsed reply line.
enum Parsed {
    Ok(Response),
    /// `{"ok":{"type":"event","event":"<unknown>"}}`: a newer daemon's event.
    UnknownEvent(String),
}

impl Client {
    /// Connects (with [`CONNECT_TIMEOUT`]) and does the handshake.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let shown = path.display().to_string();
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    path: shown,
                    source,
                });
            }
            Err(_) => {
                let source = io::Error::new(io::ErrorKind::TimedOut, "connect timed out after 5 s");
                return Err(ClientError::Connect {
                    path: shown,
                    source,
                });
            }
        };
        let (reader, writer) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(reader),
            writer,
            path: path.to_path_buf(),
            daemon: Hello {
                protocol: 0,
                software: String::new(),
            },
            line: Vec::new(),
            reply_timeout: Some(REPLY_TIMEOUT),
        };
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            software: format!("bdc-backupctl {}", env!("CARGO_PKG_VERSION")),
        };
        let handshake = async {
            client.write(&hello).await?;
            if !client.read_line().await? {
                return Err(ClientError::Protocol(format!(
                    "bdc-backupd at {shown} closed the connection during the handshake"
                )));
            }
            let value: Value = serde_json::from_slice(&client.line)
                .map_err(|e| ClientError::Protocol(format!("handshake: not JSON: {e}")))?;
            if let Some(err) = value.get("error") {
                return Err(ClientError::Daemon(error_body(err)));
            }
            let theirs: Hello = serde_json::from_value(value)
                .map_err(|e| ClientError::Protocol(format!("handshake: not a hello: {e}")))?;
            if theirs.protocol != PROTOCOL_VERSION {
                return Err(ClientError::Protocol(format!(
                    "{} speaks protocol {}, this client speaks {PROTOCOL_VERSION}",
                    theirs.software, theirs.protocol
                )));
            }
            Ok(theirs)
        };
        let theirs = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                ClientError::Protocol(format!(
                    "no handshake from bdc-backupd at {} within 5 s",
                    path.display()
                ))
            })??;
        client.daemon = theirs;
        Ok(client)
    }

    /// The daemon's hello (its protocol and software version).
    pub fn daemon_hello(&self) -> &Hello {
        &self.daemon
    }

    /// How long [`Client::request`] waits for its answer (`None`: forever). Events are
    /// never timed out. After a timeout the connection is out of step: drop the client.
    pub fn set_reply_timeout(&mut self, timeout: Option<Duration>) {
        self.reply_timeout = timeout;
    }

    /// Sends one request and returns its answer. Stray events (from an earlier stream the caller
    /// stopped reading) are skipped.
    pub async fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        let Some(limit) = self.reply_timeout else {
            return self.request_inner(request).await;
        };
        match tokio::time::timeout(limit, self.request_inner(request)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Io {
                path: self.path.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to `{}` within {limit:?}", request.verb()),
                ),
            }),
        }
    }

    /// Sends a `wal-push` request with `file`'s descriptor in the same `sendmsg` (SCM_RIGHTS)
    /// and waits for the answer (within the reply timeout, see [`Client::set_reply_timeout`]).
    pub async fn wal_push(
        &mut self,
        name: &str,
        cluster: crate::wal::ClusterIdentity,
        file: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Response, ClientError> {
        let request = Request::WalPush {
            name: name.to_string(),
            cluster,
        };
        let mut line = serde_json::to_vec(&request)
            .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))?;
        line.push(b'\n');
        let reply_timeout = self.reply_timeout;
        let shown = self.path.display().to_string();
        let exchange = async {
            crate::control::fds::send_line_with_fd(&mut self.writer, &line, file)
                .await
                .map_err(|source| ClientError::Io {
                    path: self.path.display().to_string(),
                    source,
                })?;
            self.read_answer().await
        };
        match reply_timeout {
            None => exchange.await,
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::Io {
                        path: shown,
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no answer to `wal-push` within {limit:?}"),
                        ),
                    })
                }),
        }
    }

    async fn request_inner(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.write(request).await?;
        self.read_answer().await
    }

    /// The next non-event reply.
    async fn read_answer(&mut self) -> Result<Response, ClientError> {
        loop {
            match self.read_reply().await? {
                None => {
                    return Err(ClientError::Protocol(
                        "bdc-backupd closed the connection".into(),
                    ));
                }
                Some(Parsed::Ok(Response::Event(_)) | Parsed::UnknownEvent(_)) => continue,
                Some(Parsed::Ok(response)) => return Ok(response),
            }
        }
    }

    /// The next event after `follow` or `run --wait`; `None` when the daemon closed the
    /// connection. Event types this client does not know are skipped.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        loop {
            match self.read_reply().await? {
                None => return Ok(None),
                Some(Parsed::Ok(Response::Event(event))) => return Ok(Some(event)),
                Some(Parsed::UnknownEvent(kind)) => {
                    tracing::debug!(kind, "skipping an event type this client does not know");
                }
                Some(Parsed::Ok(other)) => {
                    return Err(ClientError::Protocol(format!(
                        "expected an event, got {other:?}"
                    )));
                }
            }
        }
    }

    async fn write<T: serde::Serialize>(&mut self, value: &T) -> Result<(), ClientError> {
        write_json_line(&mut self.writer, value)
            .await
            .map_err(|source| ClientError::Io {
                path: self.path.display().to_string(),
                source,
            })
    }

    /// Reads one line into `self.line`; false on EOF.
    async fn read_line(&mut self) -> Result<bool, ClientError> {
        match read_line_capped(&mut self.reader, &mut self.line, MAX_LINE).await {
            Ok(LineRead::Line) => Ok(true),
            Ok(LineRead::Eof) => Ok(false),
            Ok(LineRead::TooLong) => Err(ClientError::Protocol(format!(
                "bdc-backupd sent a line longer than {MAX_LINE} bytes"
            ))),
            Err(source) => Err(ClientError::Io {
                path: self.path.display().to_string(),
                source,
            }),
        }
    }

    async fn read_reply(&mut self) -> Result<Option<Parsed>, ClientError> {
        if !self.read_line().await? {
            return Ok(None);
        }
        parse_reply(&self.line).map(Some)
    }
}

/// An error body, tolerating error codes this client does not know.
fn error_body(value: &Value) -> ErrorBody {
    serde_json::from_value(value.clone()).unwrap_or_else(|_| ErrorBody {
        code: ErrorCode::Internal,
        message: match (
            value.get("code").and_then(Value::as_str),
            value.get("message").and_then(Value::as_str),
        ) {
            (Some(code), Some(msg)) => format!("{msg} (error code `{code}`)"),
            _ => format!("unrecognised error: {value}"),
        },
    })
}

/// Decodes one reply line as the client reads it: `Some(response)`, `None` for an event this
/// version does not know (a newer daemon's; skipped), or the error the line carries or is.
pub fn decode_reply(line: &[u8]) -> Result<Option<Response>, ClientError> {
    match parse_reply(line)? {
        Parsed::Ok(response) => Ok(Some(response)),
        Parsed::UnknownEvent(_) => Ok(None),
    }
}

fn parse_reply(line: &[u8]) -> Result<Parsed, ClientError> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        ClientError::Protocol(format!("bdc-backupd sent a line that is not JSON: {e}"))
    })?;
    if let Some(err) = value.get("error") {
        return Err(ClientError::Daemon(error_body(err)));
    }
    let Some(ok) = value.get("ok") else {
        return Err(ClientError::Protocol(format!(
            "expected {{\"ok\":…}} or {{\"error\":…}}, got {value}"
        )));
    };
    let kind = ok
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match serde_json::from_value::<Reply>(value.clone()) {
        Ok(Reply::Ok(response)) => Ok(Parsed::Ok(response)),
        Ok(Reply::Error(body)) => Err(ClientError::Daemon(body)),
        Err(e) if kind == "event" => {
            let event = ok
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if Event::KNOWN.contains(&event.as_str()) {
                Err(ClientError::Protocol(format!(
                    "malformed `{event}` event: {e}"
                )))
            } else {
                Ok(Parsed::UnknownEvent(event))
            }
        }
        Err(e) => Err(ClientError::Protocol(format!(
            "bdc-backupd sent a `{kind}` response this client does not understand (is the daemon newer?): {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_do_not_crash() {
        let ev =
            parse_reply(br#"{"ok":{"type":"event","event":"wal-pushed","segment":"x"}}"#).unwrap();
        assert!(matches!(ev, Parsed::UnknownEvent(k) if k == "wal-pushed"));
        let Err(ClientError::Protocol(msg)) = parse_reply(br#"{"ok":{"type":"teleported","x":1}}"#)
        else {
            panic!("unknown response must be a protocol error")
        };
        assert!(msg.contains("`teleported`"), "{msg}");
        let Err(ClientError::Daemon(body)) =
            parse_reply(br#"{"error":{"code":"rate-limited","message":"slow down"}}"#)
        else {
            panic!("error reply")
        };
        assert!(body.message.contains("slow down") && body.message.contains("rate-limited"));
        let ok = parse_reply(br#"{"ok":{"type":"following"}}"#).unwrap();
        assert!(matches!(ok, Parsed::Ok(Response::Following)));
        assert!(parse_reply(b"nonsense").is_err());
    }

    #[test]
    fn known_event_tags_cover_every_event() {
        use crate::model::{JobKindName, Progress, RunRecord, RunStatus, Trigger};
        let run = RunRecord {
            id: 1,
            job: "j".into(),
            kind: JobKindName::Files,
            trigger: Trigger::Manual,
            backup_type: None,
            status: RunStatus::Running,
            started_at: chrono::Utc::now(),
            finished_at: None,
            bytes_read: 0,
            bytes_stored: 0,
            error: None,
            backup_id: None,
        };
        let all = [
            Event::RunStarted { run: run.clone() },
            Event::Progress {
                run_id: 1,
                job: "j".into(),
                progress: Progress::default(),
            },
            Event::RunFinished { run },
            Event::Skipped {
                job: "j".into(),
                reason: "r".into(),
            },
            Event::Reloaded { jobs: 1 },
            Event::Log {
                level: "info".into(),
                message: "m".into(),
            },
        ];
        for e in all {
            let v = serde_json::to_value(&e).unwrap();
            assert!(Event::KNOWN.contains(&v["event"].as_str().unwrap()), "{v}");
        }
    }

    #[tokio::test]
    async fn connect_error_names_the_path_and_exits_2() {
        let err = Client::connect(Path::new("/nonexistent/bdc/control.sock"))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .starts_with("cannot reach bdc-backupd at /nonexistent/bdc/control.sock: "),
            "{err}"
        );
    }
}
