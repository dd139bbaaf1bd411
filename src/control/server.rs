//! The daemon side of the socket: bind (stale-socket probe, mode 0660), accept, handshake,
//! line cap, authorization, audit, dispatch to a [`Handler`], event streaming.

use crate::control::auth::{Peer, authorize};
use crate::control::fds::FdLineReader;
use crate::control::{LineRead, write_json_line};
use crate::protocol::{
    ErrorBody, ErrorCode, Event, Hello, MAX_LINE, PROTOCOL_VERSION, Reply, Request, Response,
};
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

pub use crate::control::auth::AccessPolicy;

/// What the daemon implements for the server.
pub trait Handler: Send + Sync + 'static {
    /// Answers one authorized request.
    fn handle(&self, peer: &Peer, request: Request) -> impl Future<Output = Reply> + Send;
    /// Events for `follow` and `run --wait`.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event>;
    /// Records a request (allowed or denied) in the audit trail.
    fn audit(
        &self,
        peer: &Peer,
        request: &Request,
        allowed: bool,
        detail: &str,
    ) -> impl Future<Output = ()> + Send;
    /// Archives one WAL file (`wal-push`, already authorized): `file` is the descriptor the
    /// client sent with the request line.
    fn wal_push(
        &self,
        peer: &Peer,
        name: String,
        cluster: crate::wal::ClusterIdentity,
        file: std::fs::File,
    ) -> impl Future<Output = Reply> + Send {
        let _ = (peer, cluster, file);
        async move {
            error_reply(
                ErrorCode::BadRequest,
                format!("wal-push of {name}: this server does not archive WAL"),
            )
        }
    }
}

/// At most this many connections are served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection that sends nothing for this long is closed (not while following events).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The client must send its hello within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A reply that cannot be written within this time ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn with_path(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Binds the control socket at `path`: creates the parent folder (0755) if missing, replaces a
/// stale socket file, refuses when another daemon answers there, then sets mode 0660 and, when
/// `group` is given, the socket's group. Must be called inside a tokio runtime.
pub fn bind(path: &Path, group: Option<u32>) -> io::Result<UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| with_path(parent, "cannot create socket folder", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another bdc-backupd is listening on {}", path.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(socket = %path.display(), "removing stale control socket");
                    std::fs::remove_file(path)
                        .map_err(|e| with_path(path, "cannot remove stale socket", e))?;
                }
                Err(e) => return Err(with_path(path, "cannot probe existing socket", e)),
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(path, "cannot inspect", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| with_path(path, "cannot bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| with_path(path, "cannot chmod 0660", e))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            with_path(
                path,
                &format!("cannot chown to gid {gid}"),
                io::Error::from(e),
            )
        })?;
    }
    Ok(listener)
}

/// Serves connections until `shutdown` is cancelled, then stops accepting, ends the
/// connections and removes the socket file (if it is still the one this listener bound).
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    policy: watch::Receiver<AccessPolicy>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let path: Option<PathBuf> = listener.local_addr()?.as_pathname().map(Path::to_path_buf);
    let identity = path
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tasks.spawn(async move {
                let (_, mut w) = stream.into_split();
                let busy = error_reply(
                    ErrorCode::Conflict,
                    format!("too many connections ({MAX_CONNECTIONS}); try again later"),
                );
                let _ = tokio::time::timeout(WRITE_TIMEOUT, write_json_line(&mut w, &busy)).await;
            });
            continue;
        };
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: cannot read peer credentials; closing");
                continue;
            }
        };
        let (reader, writer) = stream.into_split();
        let (handler, policy, shutdown) = (handler.clone(), policy.clone(), shutdown.child_token());
        tasks.spawn(async move {
            let _permit = permit;
            // User and group lookups may block (NSS): keep them off the runtime threads.
            let lookup = move || Peer::from_ids(cred.uid(), cred.gid(), cred.pid());
            let Ok(peer) = tokio::task::spawn_blocking(lookup).await else {
                return;
            };
            let conn = Connection {
                reader: FdLineReader::new(reader),
                writer,
                peer,
                handler,
                policy,
                shutdown,
            };
            let peer = conn.peer.describe();
            if let Err(e) = conn.run().await {
                tracing::debug!(peer, error = %e, "control connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tasks.abort_all();
    }
    if let Some(path) = path {
        let same = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        if same.is_some() && same == identity {
            std::fs::remove_file(&path).map_err(|e| with_path(&path, "cannot remove socket", e))?;
        }
    }
    Ok(())
}

fn error_reply(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error(ErrorBody {
        code,
        message: message.into(),
    })
}

/// The run an event belongs to, if any.
fn event_run_id(event: &Event) -> Option<i64> {
    match event {
        Event::RunStarted { run } | Event::RunFinished { run } => Some(run.id),
        Event::Progress { run_id, .. } => Some(*run_id),
        _ => None,
    }
}

fn lagged_event(n: u64) -> Event {
    Event::Log {
        level: "warn".into(),
        message: format!("{n} events were dropped because this client read too slowly"),
    }
}

struct Connection<H> {
    reader: FdLineReader,
    writer: OwnedWriteHalf,
    peer: Peer,
    handler: Arc<H>,
    policy: watch::Receiver<AccessPolicy>,
    shutdown: CancellationToken,
}

/// Whether the connection goes on after a streaming phase.
enum After {
    Continue,
    Close,
}

impl<H: Handler> Connection<H> {
    async fn send(&mut self, reply: &Reply) -> io::Result<()> {
        send(&mut self.writer, reply).await
    }

    async fn run(mut self) -> io::Result<()> {
        let mut line = Vec::new();
        // Handshake.
        let read = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.reader.read_line(&mut line, MAX_LINE)) => r,
        };
        // Descriptors sent with the hello are closed here.
        let read = read.map(|r| r.map(|(l, _fds)| l));
        match read {
            Err(_) => {
                return self
                    .send(&error_reply(ErrorCode::Version, "no hello within 10 s"))
                    .await;
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(LineRead::Eof)) => return Ok(()),
            Ok(Ok(LineRead::TooLong)) => {
                return self
                    .send(&error_reply(ErrorCode::TooLong, too_long()))
                    .await;
            }
            Ok(Ok(LineRead::Line)) => {}
        }
        let hello: Hello = match crate::protocol::decode_hello(&line) {
            Ok(h) => h,
            Err(e) => {
                let msg = format!(
                    "expected a hello line like {{\"protocol\":{PROTOCOL_VERSION},\"software\":\"…\"}}: {e}"
                );
                return self.send(&error_reply(ErrorCode::Version, msg)).await;
            }
        };
        if hello.protocol != PROTOCOL_VERSION {
            let msg = format!(
                "{} speaks protocol {}, this bdc-backupd speaks {PROTOCOL_VERSION}; use matching versions",
                hello.software, hello.protocol
            );
            return self.send(&error_reply(ErrorCode::Version, msg)).await;
        }
        let ours = Hello {
            protocol: PROTOCOL_VERSION,
            software: format!("bdc-backupd {}", env!("CARGO_PKG_VERSION")),
        };
        write_json_line(&mut self.writer, &ours).await?;

        // Requests.
        loop {
            let read = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                r = tokio::time::timeout(IDLE_TIMEOUT, self.reader.read_line(&mut line, MAX_LINE)) => r,
            };
            let (read, fds) = match read {
                Ok(Ok((l, fds))) => (Ok(Ok(l)), fds),
                Ok(Err(e)) => (Ok(Err(e)), Vec::new()),
                Err(e) => (Err(e), Vec::new()),
            };
            match read {
                Err(_) => return Ok(()), // idle
                Ok(Err(e)) => return Err(e),
                Ok(Ok(LineRead::Eof)) => return Ok(()),
                Ok(Ok(LineRead::TooLong)) => {
                    return self
                        .send(&error_reply(ErrorCode::TooLong, too_long()))
                        .await;
                }
                Ok(Ok(LineRead::Line)) => {}
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let request: Request = match crate::protocol::decode_request(&line) {
                Ok(r) => r,
                Err(e) => {
                    self.send(&error_reply(
                        ErrorCode::BadRequest,
                        format!("not a valid request: {e}"),
                    ))
                    .await?;
                    continue;
                }
            };
            // Descriptors are only taken by wal-push; any others are closed when dropped.
            if let After::Close = self.dispatch(request, fds).await? {
                return Ok(());
            }
        }
    }

    async fn dispatch(&mut self, request: Request, mut fds: Vec<OwnedFd>) -> io::Result<After> {
        let policy = self.policy.borrow().clone();
        if let Err(why) = authorize(&policy, &self.peer, &request) {
            tracing::warn!(
                peer = self.peer.describe(),
                request = request.verb(),
                "control request denied"
            );
            self.handler.audit(&self.peer, &request, false, &why).await;
            self.send(&error_reply(ErrorCode::Forbidden, why)).await?;
            return Ok(After::Continue);
        }
        if request.is_mutation() {
            let detail = serde_json::to_string(&request).unwrap_or_default();
            self.handler
                .audit(&self.peer, &request, true, &detail)
                .await;
        }
        match request {
            Request::WalPush { name, cluster } => {
                let reply = if fds.len() != 1 {
                    error_reply(
                        ErrorCode::BadRequest,
                        format!(
                            "wal-push of {name}: expected the file's descriptor (SCM_RIGHTS) with the request line, got {}",
                            fds.len()
                        ),
                    )
                } else {
                    let file = std::fs::File::from(fds.remove(0));
                    self.handler.wal_push(&self.peer, name, cluster, file).await
                };
                self.send(&reply).await?;
                Ok(After::Continue)
            }
            Request::Follow => {
                let events = self.handler.subscribe();
                self.send(&Reply::Ok(Response::Following)).await?;
                self.follow(events).await
            }
            Request::Run { wait: true, .. } | Request::Verify { wait: true, .. } => {
                // Subscribe before the run starts, so none of its events is missed.
                let events = self.handler.subscribe();
                let reply = self.handler.handle(&self.peer, request).await;
                let run_id = match &reply {
                    Reply::Ok(Response::RunStarted { run }) => Some(run.id),
                    _ => None,
                };
                self.send(&reply).await?;
                match run_id {
                    Some(id) => self.stream_run(events, id).await,
                    None => Ok(After::Continue),
                }
            }
            other => {
                let reply = self.handler.handle(&self.peer, other).await;
                self.send(&reply).await?;
                Ok(After::Continue)
            }
        }
    }

    /// Streams every event until the client closes or the daemon shuts down. Input from the
    /// client is read and ignored.
    async fn follow(&mut self, mut events: broadcast::Receiver<Event>) -> io::Result<After> {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(After::Close),
                input = self.reader.fill_buf() => {
                    let n = match input { Ok(b) => b.len(), Err(_) => 0 };
                    if n == 0 {
                        return Ok(After::Close);
                    }
                    self.reader.consume(n);
                }
                event = events.recv() => match event {
                    Ok(e) => send(&mut self.writer, &Reply::Ok(Response::Event(e))).await?,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        send(&mut self.writer, &Reply::Ok(Response::Event(lagged_event(n)))).await?
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(After::Close),
                },
            }
        }
    }

    /// Streams the events of run `id` until its `run-finished`. A request the client sends
    /// meanwhile stays buffered and is read afterwards.
    async fn stream_run(
        &mut self,
        mut events: broadcast::Receiver<Event>,
        id: i64,
    ) -> io::Result<After> {
        let mut watch_client = true;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(After::Close),
                input = self.reader.fill_buf(), if watch_client => {
                    match input {
                        Ok(b) if !b.is_empty() => watch_client = false,
                        _ => return Ok(After::Close),
                    }
                }
                event = events.recv() => match event {
                    Ok(e) if event_run_id(&e) == Some(id) => {
                        let finished = matches!(e, Event::RunFinished { .. });
                        send(&mut self.writer, &Reply::Ok(Response::Event(e))).await?;
                        if finished {
                            return Ok(After::Continue);
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        send(&mut self.writer, &Reply::Ok(Response::Event(lagged_event(n)))).await?
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let msg = format!("the daemon's event stream ended before run {id} finished");
                        send(&mut self.writer, &error_reply(ErrorCode::Internal, msg)).await?;
                        return Ok(After::Continue);
                    }
                },
            }
        }
    }
}

async fn send(writer: &mut OwnedWriteHalf, reply: &Reply) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, write_json_line(writer, reply)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client did not read its replies",
        )),
    }
}

fn too_long() -> String {
    format!("line longer than {MAX_LINE} bytes; closing the connection")
}
