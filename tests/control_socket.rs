//! The control socket end to end: a real Unix socket in a tempdir, the real server and client,
//! a fake [`Handler`], and a real unprivileged client process (uid 65534) for authorization.

use bdc_backup::control::auth::{AccessPolicy, Peer};
use bdc_backup::control::client::{Client, ClientError};
use bdc_backup::control::server::{self, Handler};
use bdc_backup::model::{JobKindName, Progress, RunRecord, RunStatus, StatusReport, Trigger};
use bdc_backup::protocol::{ErrorBody, ErrorCode, Event, Reply, Request, Response};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

const NOBODY: u32 = 65534;

#[derive(Debug, Clone, PartialEq)]
struct Audited {
    uid: u32,
    verb: String,
    allowed: bool,
    detail: String,
}

struct Fake {
    events: broadcast::Sender<Event>,
    audits: Mutex<Vec<Audited>>,
}

fn record(id: i64, job: &str, status: RunStatus) -> RunRecord {
    RunRecord {
        id,
        job: job.into(),
        kind: JobKindName::PostgresDump,
        trigger: Trigger::Manual,
        backup_type: None,
        status,
        started_at: chrono::Utc::now(),
        finished_at: None,
        bytes_read: 0,
        bytes_stored: 0,
        error: None,
        backup_id: None,
    }
}

fn progress(run_id: i64, job: &str, n: u64) -> Event {
    Event::Progress {
        run_id,
        job: job.into(),
        progress: Progress {
            phase: "dump".into(),
            bytes_read: n,
            bytes_stored: n / 2,
        },
    }
}

impl Handler for Fake {
    async fn handle(&self, _peer: &Peer, request: Request) -> Reply {
        match request {
            Request::Status => Reply::Ok(Response::Status(StatusReport {
                version: "test".into(),
                pid: std::process::id(),
                started_at: chrono::Utc::now(),
                catalogue: "/etc/bdc-backup/catalogue.toml".into(),
                timezone: "UTC".into(),
                max_concurrent_runs: 2,
                jobs: vec![],
                objectives: vec![],
            })),
            Request::Run { job, .. } if job == "missing" => Reply::Error(ErrorBody {
                code: ErrorCode::NotFound,
                message: "no job `missing`".into(),
            }),
            Request::Run { job, .. } => {
                let run = record(7, &job, RunStatus::Running);
                let tx = self.events.clone();
                let started = run.clone();
                tokio::spawn(async move {
                    for n in 1..=3u64 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let _ = tx.send(progress(7, &job, n * 100));
                        // Another run's events must not reach a `run --wait` client.
                        let _ = tx.send(progress(99, "other", n));
                    }
                    let _ = tx.send(Event::RunFinished {
                        run: RunRecord {
                            status: RunStatus::Succeeded,
                            ..started
                        },
                    });
                });
                Reply::Ok(Response::RunStarted { run })
            }
            Request::Reload => Reply::Ok(Response::Reloaded { jobs: 3 }),
            Request::Runs { job: Some(job), .. } if job == "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Reply::Ok(Response::Runs { runs: vec![] })
            }
            _ => Reply::Ok(Response::Runs { runs: vec![] }),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn audit(&self, peer: &Peer, request: &Request, allowed: bool, detail: &str) {
        self.audits.lock().unwrap().push(Audited {
            uid: peer.uid,
            verb: request.verb().into(),
            allowed,
            detail: detail.into(),
        });
    }
}

struct Daemon {
    _dir: tempfile::TempDir,
    path: PathBuf,
    fake: Arc<Fake>,
    policy: watch::Sender<AccessPolicy>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn policy() -> AccessPolicy {
    AccessPolicy {
        daemon_uid: 4242,
        read_gid: None,
        admin_gid: None,
        postgres_uid: None,
    }
}

async fn start(group: Option<u32>, event_capacity: usize) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/control.sock");
    let listener = server::bind(&path, group).expect("bind");
    let (events, _) = broadcast::channel(event_capacity);
    let fake = Arc::new(Fake {
        events,
        audits: Mutex::new(vec![]),
    });
    let (policy_tx, policy_rx) = watch::channel(policy());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::serve(
        listener,
        fake.clone(),
        policy_rx,
        shutdown.clone(),
    ));
    Daemon {
        _dir: dir,
        path,
        fake,
        policy: policy_tx,
        shutdown,
        task,
    }
}

/// A raw connection for protocol-level tests.
struct Raw {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        let (r, w) = UnixStream::connect(path).await.unwrap().into_split();
        Raw {
            reader: BufReader::new(r),
            writer: w,
        }
    }
    async fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).await.unwrap();
        self.writer.write_all(b"\n").await.unwrap();
    }
    async fn recv(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        (n > 0).then(|| serde_json::from_str(&line).expect("reply is JSON"))
    }
    async fn hello(path: &Path) -> Raw {
        let mut raw = Raw::connect(path).await;
        raw.send(r#"{"protocol":1,"software":"test"}"#).await;
        let hello = raw.recv().await.unwrap();
        assert_eq!(hello["protocol"], 1, "{hello}");
        raw
    }
}

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn handshake_ok_and_requests_work() {
    let d = start(None, 64).await;
    let mut c = Client::connect(&d.path).await.expect("connect");
    assert_eq!(c.daemon_hello().protocol, 1);
    assert!(c.daemon_hello().software.starts_with("bdc-backupd "));
    assert!(matches!(
        c.request(&Request::Status).await.unwrap(),
        Response::Status(_)
    ));
    assert!(matches!(
        c.request(&Request::Reload).await.unwrap(),
        Response::Reloaded { jobs: 3 }
    ));
    // Root is allowed mutations; they are audited with their arguments.
    let audits = d.fake.audits.lock().unwrap().clone();
    assert_eq!(audits.len(), 1, "only the mutation is audited: {audits:?}");
    assert_eq!(
        (audits[0].verb.as_str(), audits[0].allowed, audits[0].uid),
        ("reload", true, 0)
    );
    let err = c
        .request(&Request::Run {
            job: "missing".into(),
            backup_type: None,
            wait: true,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Daemon(b) if b.code == ErrorCode::NotFound),
        "{err:?}"
    );
    assert!(matches!(
        c.request(&Request::Status).await.unwrap(),
        Response::Status(_)
    ));
}

#[tokio::test]
async fn wrong_version_or_bad_hello_is_rejected_and_closed() {
    let d = start(None, 64).await;
    let mut raw = Raw::connect(&d.path).await;
    raw.send(r#"{"protocol":99,"software":"bdc-backupctl 9.0"}"#)
        .await;
    let reply = raw.recv().await.unwrap();
    assert_eq!(code(&reply), "version", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("99"));
    assert!(raw.recv().await.is_none(), "connection closed");

    let mut raw = Raw::connect(&d.path).await;
    raw.send(r#"{"type":"status"}"#).await;
    assert_eq!(code(&raw.recv().await.unwrap()), "version");
    assert!(raw.recv().await.is_none());
}

#[tokio::test]
async fn garbage_line_is_bad_request_and_connection_stays_usable() {
    let d = start(None, 64).await;
    let mut raw = Raw::hello(&d.path).await;
    raw.send("this is not json").await;
    assert_eq!(code(&raw.recv().await.unwrap()), "bad-request");
    raw.send(r#"{"type":"frobnicate"}"#).await;
    let reply = raw.recv().await.unwrap();
    assert_eq!(code(&reply), "bad-request");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frobnicate"),
        "{reply}"
    );
    raw.send(r#"{"type":"status"}"#).await;
    let reply = raw.recv().await.unwrap();
    assert_eq!(reply["ok"]["type"], "status", "{reply}");
}

#[tokio::test]
async fn oversize_line_is_too_long_and_closes() {
    let d = start(None, 64).await;
    let Raw {
        mut reader,
        mut writer,
    } = Raw::hello(&d.path).await;
    // 2 MiB without a newline; the server must answer before reading it all.
    let big = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..32 {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"\n").await;
    });
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(code(&reply), "too-long", "{reply}");
    let mut rest = Vec::new();
    // Closed after the error: EOF, or a reset because the server left our bytes unread.
    match tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest))
        .await
        .unwrap()
    {
        Ok(n) => assert_eq!(n, 0, "nothing after the error line"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    big.await.unwrap();
}

#[tokio::test]
async fn run_wait_streams_its_progress_then_finished() {
    let d = start(None, 64).await;
    let mut c = Client::connect(&d.path).await.unwrap();
    let run = Request::Run {
        job: "db-dump".into(),
        backup_type: None,
        wait: true,
    };
    let Response::RunStarted { run } = c.request(&run).await.unwrap() else {
        panic!("run-started")
    };
    assert_eq!(run.id, 7);
    let mut seen = vec![];
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event())
            .await
            .unwrap()
            .unwrap();
        let ev = ev.expect("stream ends with run-finished, not EOF");
        let done = ev.finished_status();
        seen.push(ev);
        if let Some(status) = done {
            assert_eq!(status, RunStatus::Succeeded);
            break;
        }
    }
    let reads: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Progress {
                run_id: 7,
                progress,
                ..
            } => Some(progress.bytes_read),
            Event::Progress { run_id, .. } => panic!("event of run {run_id} leaked"),
            _ => None,
        })
        .collect();
    assert_eq!(reads, vec![100, 200, 300]);
    // The connection is back in request mode.
    assert!(matches!(
        c.request(&Request::Status).await.unwrap(),
        Response::Status(_)
    ));
}

#[tokio::test]
async fn follow_gets_events_and_lag_is_reported_not_fatal() {
    let d = start(None, 4).await;
    let mut c = Client::connect(&d.path).await.unwrap();
    assert!(matches!(
        c.request(&Request::Follow).await.unwrap(),
        Response::Following
    ));
    d.fake.events.send(Event::Reloaded { jobs: 5 }).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, Some(Event::Reloaded { jobs: 5 }));
    // Overflow the 4-slot channel before the server can forward anything.
    for n in 0..20 {
        d.fake.events.send(progress(1, "db", n)).unwrap();
    }
    let mut got = vec![];
    while got.len() < 5 {
        let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event())
            .await
            .unwrap()
            .unwrap();
        got.push(ev.expect("still connected"));
    }
    assert!(
        matches!(&got[0], Event::Log { message, .. } if message.contains("16 events were dropped")),
        "{got:?}"
    );
    assert_eq!(got[4], progress(1, "db", 19));
    d.fake.events.send(Event::Reloaded { jobs: 6 }).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), c.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, Some(Event::Reloaded { jobs: 6 }));
}

#[tokio::test]
async fn stale_socket_is_replaced_live_socket_refused_and_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    // Stale: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = server::bind(&path, None).expect("stale socket replaced");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o660
    );
    // Live: a second daemon is refused, and the first keeps its socket.
    let err = server::bind(&path, None).expect_err("live socket");
    assert_eq!(
        err.to_string(),
        format!("another bdc-backupd is listening on {}", path.display())
    );
    // Not a socket: never deleted.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"keep").unwrap();
    assert!(
        server::bind(&file, None)
            .unwrap_err()
            .to_string()
            .contains("not a socket")
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");

    let (events, _) = broadcast::channel(4);
    let fake = Arc::new(Fake {
        events,
        audits: Mutex::new(vec![]),
    });
    let shutdown = CancellationToken::new();
    let (_tx, rx) = watch::channel(policy());
    let task = tokio::spawn(server::serve(listener, fake, rx, shutdown.clone()));
    let mut c = Client::connect(&path).await.unwrap();
    assert!(matches!(
        c.request(&Request::Follow).await.unwrap(),
        Response::Following
    ));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!path.exists(), "socket removed on clean shutdown");
    assert!(
        c.next_event().await.unwrap().is_none(),
        "follower sees the close"
    );
    let err = Client::connect(&path).await.unwrap_err();
    assert_eq!(err.exit_code(), 2);
}

/// Runs a Python client as uid/gid 65534: hello, one request; prints each reply line.
async fn as_nobody(path: &Path, request: &str) -> Vec<serde_json::Value> {
    use std::os::unix::process::CommandExt;
    const SCRIPT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
f = s.makefile("rwb")
f.write(b'{"protocol":1,"software":"python-test"}\n'); f.flush()
print(f.readline().decode().strip())
f.write(sys.argv[2].encode() + b"\n"); f.flush()
print(f.readline().decode().strip())
"#;
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .arg(request)
        .uid(NOBODY)
        .gid(NOBODY);
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("spawn python3");
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test]
async fn unprivileged_peer_is_denied_audited_and_allowed_reads_with_the_read_group() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test runs as root to switch to nobody"
    );
    // The socket is 0660 root:nogroup (bind's chown), in folders nobody can traverse.
    let d = start(Some(NOBODY), 64).await;
    use std::os::unix::fs::PermissionsExt;
    for p in [d._dir.path(), d.path.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&d.path).unwrap().gid(), NOBODY);

    let out = as_nobody(
        &d.path,
        r#"{"type":"run","job":"db-dump","backup-type":null,"wait":false}"#,
    )
    .await;
    assert_eq!(out[0]["protocol"], 1);
    assert_eq!(code(&out[1]), "forbidden", "{out:?}");
    let msg = out[1]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("nobody") && msg.contains("65534") && msg.contains("admin"),
        "{msg}"
    );
    {
        let audits = d.fake.audits.lock().unwrap();
        let denied = audits
            .iter()
            .find(|a| a.uid == NOBODY)
            .expect("denial audited");
        assert_eq!((denied.verb.as_str(), denied.allowed), ("run", false));
        assert!(denied.detail.contains("may not `run`"), "{denied:?}");
    }

    // Read-only requests need the read group too.
    let out = as_nobody(&d.path, r#"{"type":"status"}"#).await;
    assert_eq!(code(&out[1]), "forbidden", "{out:?}");
    assert_eq!(
        d.fake
            .audits
            .lock()
            .unwrap()
            .iter()
            .filter(|a| !a.allowed)
            .count(),
        2
    );

    // Reload the policy: nobody's group becomes the read group.
    d.policy
        .send(AccessPolicy {
            read_gid: Some(NOBODY),
            ..policy()
        })
        .unwrap();
    let out = as_nobody(&d.path, r#"{"type":"status"}"#).await;
    assert_eq!(out[1]["ok"]["type"], "status", "{out:?}");
    let out = as_nobody(&d.path, r#"{"type":"cancel","run-id":1}"#).await;
    assert_eq!(
        code(&out[1]),
        "forbidden",
        "read group may not cancel: {out:?}"
    );

    d.shutdown.cancel();
    d.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_not_queued() {
    let d = start(None, 4).await;
    let mut open = Vec::new();
    for _ in 0..server::MAX_CONNECTIONS {
        open.push(Raw::hello(&d.path).await);
    }
    let mut extra = Raw::connect(&d.path).await;
    let reply = extra.recv().await.expect("an error line");
    assert_eq!(code(&reply), "conflict", "{reply}");
    assert!(extra.recv().await.is_none());
    let err = Client::connect(&d.path).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Daemon(b) if b.code == ErrorCode::Conflict),
        "{err:?}"
    );
    // Closing one frees its slot.
    drop(open.pop());
    let mut ok = None;
    for _ in 0..50 {
        match Client::connect(&d.path).await {
            Ok(c) => {
                ok = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(ok.is_some(), "a slot was freed");
}

#[tokio::test]
async fn request_times_out_on_a_silent_daemon() {
    let d = start(None, 4).await;
    let mut c = Client::connect(&d.path).await.unwrap();
    c.set_reply_timeout(Some(Duration::from_millis(200)));
    let slow = Request::Runs {
        job: Some("slow".into()),
        limit: None,
    };
    let err = c.request(&slow).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
        "{err:?}"
    );
    assert!(err.to_string().contains("no answer to `runs`"), "{err}");
}
