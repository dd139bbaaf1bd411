//! Fuzzed parsers (issue 11): every parser that reads text or bytes from outside — the control
//! protocol decoder (both ends, and the real socket server fed any byte stream cut anywhere), the catalogue loader, the commit-record and manifest readers,
//! the WAL page header and file names, and `--time` — is fed arbitrary input and structured
//! near-valid input by proptest. The property everywhere: no panic, a clear error or a value.
//! Where an encoder exists (requests, replies, commit records, manifests, WAL names and keys,
//! times) encode → decode gives the same value.
//!
//! By default each target runs a few hundred cases so the suite stays fast. `BDC_FUZZ_CASES=N`
//! runs N cases per target; `BDC_FUZZ_SECONDS=S` runs each target for S seconds in batches with
//! fresh seeds and keeps going after a failure (`fuzz/run` uses it, with `--nocapture`): the
//! last line of each target is `fuzz TARGET: N cases, F failures`. A failing input is
//! minimised and saved in `tests/fuzz_parsers.proptest-regressions` (replayed first on every
//! run); the findings fixed so far are also kept as explicit inputs in `regressions_*` below.

use bdc_backup::catalogue;
use bdc_backup::control::auth::{AccessPolicy, Peer};
use bdc_backup::control::client::decode_reply;
use bdc_backup::control::server::{self, Handler};
use bdc_backup::model::{BackupType, ClusterIdentity, JobKindName};
use bdc_backup::protocol::{self, ErrorBody, ErrorCode, Event, Hello, Reply, Request, Response};
use bdc_backup::repository::format::{self, CommitRecord, ObjectRecord};
use bdc_backup::repository::store::Store;
use bdc_backup::repository::{Repository, local::LocalStore};
use bdc_backup::snapshot::manifest::{
    BlockHashes, Entry, EntryKind, Extent, Header, Location, ManifestReader, ManifestWriter, Mode,
    Trailer,
};
use bdc_backup::snapshot::path::{ByteName, check_relative, compare};
use bdc_backup::timeparse::parse_time;
use bdc_backup::wal::format::{object_key, parse_object_key};
use bdc_backup::wal::name::{format_lsn, parse_lsn, segment_name};
use bdc_backup::wal::{WalHeader, WalKind, WalName};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{
    Config, FailurePersistence, FileFailurePersistence, PersistedSeed, TestCaseError, TestError,
    TestRunner,
};
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The runner

/// Runs `test` over `strategy` as the environment asks (module docs); panics with every
/// minimised failing input.
fn fuzz<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let deadline = env("BDC_FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let cases = env("BDC_FUZZ_CASES").unwrap_or(if deadline.is_some() { 2000 } else { 200 });
    let calls = AtomicU64::new(0);
    let mut failures: Vec<String> = Vec::new();
    if deadline.is_some() {
        // Long runs: the reason of each failure carries the panic message; keep the log short.
        std::panic::set_hook(Box::new(|_| {}));
    }
    let file = FileFailurePersistence::WithSource("proptest-regressions");
    for batch in 0.. {
        // The first batch replays the saved failures; later ones only add new ones.
        let persistence: Box<dyn FailurePersistence> = if batch == 0 {
            Box::new(file.clone())
        } else {
            Box::new(SaveOnly(file.clone()))
        };
        let mut runner = TestRunner::new(Config {
            cases: u32::try_from(cases).unwrap_or(u32::MAX),
            failure_persistence: Some(persistence),
            source_file: Some(file!()),
            max_shrink_iters: 2048,
            ..Config::default()
        });
        let result = runner.run(&strategy, |v| {
            calls.fetch_add(1, Ordering::Relaxed);
            test(v)
        });
        let failure = match result {
            Ok(()) => None,
            Err(TestError::Fail(reason, value)) => {
                Some(format!("{reason}; minimal input: {value:?}"))
            }
            Err(TestError::Abort(reason)) => Some(format!("aborted: {reason}")),
        };
        if let Some(f) = failure.filter(|f| !failures.contains(f)) {
            failures.push(f);
        }
        let more = deadline.is_some_and(|d| Instant::now() < d) && failures.len() < 20;
        if !more {
            break;
        }
    }
    if deadline.is_some() {
        let _ = std::panic::take_hook();
    }
    let n = calls.load(Ordering::Relaxed);
    for f in &failures {
        println!("fuzz {name}: FAILURE {f}");
    }
    println!("fuzz {name}: {n} cases, {} failures", failures.len());
    assert!(failures.is_empty(), "{name}: {}", failures.join("\n"));
}

/// Saves new failures in the regression file without replaying the saved ones (a long run's
/// later batches: a known failure would otherwise end each batch at once).
#[derive(Debug, Clone, PartialEq)]
struct SaveOnly(FileFailurePersistence);

impl FailurePersistence for SaveOnly {
    fn load_persisted_failures2(&self, _: Option<&'static str>) -> Vec<PersistedSeed> {
        Vec::new()
    }

    fn save_persisted_failure2(
        &mut self,
        source_file: Option<&'static str>,
        seed: PersistedSeed,
        shrunken_value: &dyn Debug,
    ) {
        self.0
            .save_persisted_failure2(source_file, seed, shrunken_value)
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(self.clone())
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other.as_any().downcast_ref::<SaveOnly>() == Some(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Bytes with a few random edits: a byte replaced, inserted or removed, or a cut.
fn mutated(base: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        base,
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..5),
    )
        .prop_map(|(mut v, edits)| {
            for (at, byte, op) in edits {
                let i = if v.is_empty() { 0 } else { at % (v.len() + 1) };
                match op {
                    0 if i < v.len() => v[i] = byte,
                    1 => v.insert(i, byte),
                    2 if i < v.len() => {
                        v.remove(i);
                    }
                    3 => v.truncate(i),
                    _ => {}
                }
            }
            v
        })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// JSON values built from the keys and shapes the decoders look for, so type confusion (a
/// number where a string goes, a nested object, a huge integer) is reached often.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let keys = select(vec![
        "type",
        "job",
        "limit",
        "repository",
        "backup-type",
        "wait",
        "run-id",
        "dry-run",
        "weeks",
        "name",
        "system-identifier",
        "pg-major",
        "protocol",
        "software",
        "ok",
        "error",
        "code",
        "message",
        "event",
        "run",
        "jobs",
        "run_id",
        "sha256",
        "warnings",
        "hex",
        "end",
    ]);
    let texts = select(vec![
        "status",
        "runs",
        "backups",
        "run",
        "cancel",
        "reload",
        "follow",
        "retention",
        "usage",
        "wal-push",
        "full",
        "incremental",
        "log",
        "skipped",
        "reloaded",
        "event",
        "forbidden",
        "wal-pushed",
        "cancelled",
        "000000010000000000000003",
        "18446744073709551616",
        "-1",
        "",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        texts.prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.into(), v)).collect())),
        ]
    })
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(".{0,16}")
}

// ---------------------------------------------------------------------------------------------
// The control protocol

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Status),
        (opt_text(), any::<Option<u32>>()).prop_map(|(job, limit)| Request::Runs { job, limit }),
        (opt_text(), opt_text()).prop_map(|(job, repository)| Request::Backups { job, repository }),
        (
            ".{0,16}",
            prop::option::of(select(BackupType::ALL)),
            any::<bool>()
        )
            .prop_map(|(job, backup_type, wait)| Request::Run {
                job,
                backup_type,
                wait
            }),
        any::<i64>().prop_map(|run_id| Request::Cancel { run_id }),
        Just(Request::Reload),
        Just(Request::Follow),
        (opt_text(), opt_text(), any::<bool>()).prop_map(|(job, repository, dry_run)| {
            Request::Retention {
                job,
                repository,
                dry_run,
            }
        }),
        (opt_text(), any::<Option<u32>>()).prop_map(|(job, weeks)| Request::Usage { job, weeks }),
        (".{0,30}", any::<u64>(), any::<u32>()).prop_map(|(name, system_identifier, pg_major)| {
            Request::WalPush {
                name,
                cluster: ClusterIdentity {
                    system_identifier,
                    pg_major,
                },
            }
        }),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(vec![
        ErrorCode::BadRequest,
        ErrorCode::TooLong,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Version,
        ErrorCode::Internal,
    ])
}

/// Replies whose parts are plain (the report DTOs have their own tests).
fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (error_code(), ".{0,40}")
            .prop_map(|(code, message)| Reply::Error(ErrorBody { code, message })),
        any::<i64>().prop_map(|run_id| Reply::Ok(Response::Cancelled { run_id })),
        any::<usize>().prop_map(|jobs| Reply::Ok(Response::Reloaded { jobs })),
        Just(Reply::Ok(Response::Following)),
        (
            ".{0,30}",
            "[0-9a-f]{64}",
            prop::collection::vec(".{0,20}", 0..3)
        )
            .prop_map(|(name, sha256, warnings)| Reply::Ok(Response::WalPushed {
                name,
                sha256,
                warnings
            })),
        (".{0,10}", ".{0,40}")
            .prop_map(|(level, message)| Reply::Ok(Response::Event(Event::Log { level, message }))),
        (".{0,10}", ".{0,40}")
            .prop_map(|(job, reason)| Reply::Ok(Response::Event(Event::Skipped { job, reason }))),
        any::<usize>().prop_map(|jobs| Reply::Ok(Response::Event(Event::Reloaded { jobs }))),
    ]
}

fn json_line(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialises")
}

#[test]
fn protocol_lines_never_panic() {
    let line = prop_oneof![
        bytes(256),
        json_value().prop_map(|v| json_line(&v)),
        mutated(request().prop_map(|r| json_line(&r))),
        mutated(reply().prop_map(|r| json_line(&r))),
    ];
    fuzz("protocol-decode", line, |line| {
        let _ = protocol::decode_hello(&line);
        let _ = protocol::decode_request(&line);
        if let Err(e) = decode_reply(&line) {
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(())
    });
}

#[test]
fn protocol_messages_round_trip() {
    let message = (
        request(),
        reply(),
        any::<u32>(),
        ".{0,30}".prop_map(String::from),
    );
    fuzz(
        "protocol-round-trip",
        message,
        |(request, reply, version, software)| {
            let line = json_line(&request);
            prop_assert!(!line.contains(&b'\n'));
            let back = protocol::decode_request(&line).map_err(|e| {
                TestCaseError::fail(format!(
                    "{} does not decode: {e}",
                    String::from_utf8_lossy(&line)
                ))
            })?;
            prop_assert_eq!(back, request);

            let hello = Hello {
                protocol: version,
                software,
            };
            prop_assert_eq!(protocol::decode_hello(&json_line(&hello)).unwrap(), hello);

            let line = json_line(&reply);
            let back = decode_reply(&line);
            match reply {
                Reply::Ok(response) => {
                    prop_assert_eq!(back.map_err(|e| e.to_string()), Ok(Some(response)))
                }
                Reply::Error(body) => {
                    let err = back.expect_err("an error reply is an error");
                    prop_assert!(err.to_string().contains(&body.message), "{err}");
                }
            }
            Ok(())
        },
    );
}

/// The daemon's side of the socket for the stream target: answers everything at once.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, _peer: &Peer, request: Request) -> Reply {
        match request {
            Request::Reload => Reply::Ok(Response::Reloaded { jobs: 1 }),
            other => Reply::Error(ErrorBody {
                code: ErrorCode::NotFound,
                message: format!("{} is not served here", other.verb()),
            }),
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        // Nothing is ever sent: `follow` streams until the client closes.
        broadcast::channel(1).1
    }

    async fn audit(&self, _: &Peer, _: &Request, _: bool, _: &str) {}
}

/// One connection's input after the hello: chunks as written (so lines are cut anywhere).
fn stream_chunks() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let piece = prop_oneof![
        bytes(64),
        mutated(request().prop_map(|r| json_line(&r))).prop_map(|mut l| {
            l.push(b'\n');
            l
        }),
        request().prop_map(|r| {
            let mut l = json_line(&r);
            l.push(b'\n');
            l
        }),
        json_value().prop_map(|v| json_line(&v)),
    ];
    (prop::collection::vec(piece, 0..8), prop::collection::vec(1usize..40, 1..8)).prop_map(
        |(pieces, cuts)| {
            let all = pieces.concat();
            let mut out = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < all.len() {
                let n = cuts[i % cuts.len()].min(all.len() - at);
                out.push(all[at..at + n].to_vec());
                at += n;
                i += 1;
            }
            out
        },
    )
}

#[test]
fn control_socket_survives_any_byte_stream() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let shutdown = CancellationToken::new();
    let (_policy_tx, policy) = watch::channel(AccessPolicy {
        daemon_uid: nix::unistd::Uid::effective().as_raw(),
        read_gid: None,
        admin_gid: None,
        postgres_uid: None,
    });
    let server = rt.block_on(async {
        let listener = server::bind(&path, None).expect("bind");
        tokio::spawn(server::serve(
            listener,
            Arc::new(Echo),
            policy,
            shutdown.clone(),
        ))
    });
    let hello = format!("{{\"protocol\":{},\"software\":\"fuzz\"}}\n", protocol::PROTOCOL_VERSION);
    // One connection: the hello, the chunks, then end of input; every reply line until EOF.
    let converse = |chunks: Vec<Vec<u8>>| -> Result<Vec<Vec<u8>>, String> {
        rt.block_on(async {
            let stream = UnixStream::connect(&path).await.map_err(|e| e.to_string())?;
            let (r, mut w) = stream.into_split();
            w.write_all(hello.as_bytes()).await.map_err(|e| e.to_string())?;
            for c in &chunks {
                // The server may close after a line it refuses: later writes may fail.
                if w.write_all(c).await.is_err() {
                    break;
                }
            }
            let _ = w.shutdown().await;
            let mut lines = Vec::new();
            let mut reader = BufReader::new(r);
            loop {
                let mut line = Vec::new();
                let n = tokio::time::timeout(Duration::from_secs(30), reader.read_until(b'\n', &mut line))
                    .await
                    .map_err(|_| "no reply and no end of stream within 30 s".to_string())?
                    .map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(lines);
                }
                lines.push(line);
            }
        })
    };
    fuzz("control-socket-stream", stream_chunks(), |chunks| {
        let sent: Vec<u8> = chunks.concat();
        let replies = converse(chunks).map_err(TestCaseError::fail)?;
        prop_assert!(!replies.is_empty(), "no hello back");
        let theirs: serde_json::Value = serde_json::from_slice(&replies[0])
            .map_err(|e| TestCaseError::fail(format!("hello: {e}")))?;
        prop_assert_eq!(&theirs["protocol"], &serde_json::json!(protocol::PROTOCOL_VERSION));
        for line in &replies[1..] {
            prop_assert!(line.ends_with(b"\n"), "an unterminated reply");
            let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                TestCaseError::fail(format!("a reply that is not JSON ({e}): {}", String::from_utf8_lossy(line)))
            })?;
            prop_assert!(v.get("ok").is_some() || v.get("error").is_some(), "{v}");
            // The client reads it without panicking too.
            let _ = decode_reply(line.strip_suffix(b"\n").unwrap_or(line));
        }
        let lines = sent.split(|b| *b == b'\n').count();
        prop_assert!(replies.len() - 1 <= lines, "{} replies to {lines} lines", replies.len() - 1);
        prop_assert!(!server.is_finished(), "the server ended");
        // And the next connection is served as usual.
        let after = converse(vec![b"{\"type\":\"reload\"}\n".to_vec()]).map_err(TestCaseError::fail)?;
        prop_assert_eq!(after.len(), 2);
        prop_assert!(after[1].starts_with(b"{\"ok\":{\"type\":\"reloaded\""), "{}", String::from_utf8_lossy(&after[1]));
        Ok(())
    });
    shutdown.cancel();
}

// ---------------------------------------------------------------------------------------------
// The catalogue

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A value for a key: mostly from the pool (valid and invalid forms), sometimes any string.
fn value(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(pool).prop_map(String::from),
        1 => ".{0,12}".prop_map(|s| toml_string(&s)),
        1 => select(&["1", "-1", "0", "true", "[]", "{}", "1.5", "99999999999999999999"][..])
            .prop_map(String::from),
    ]
}

const DURATIONS: &[&str] = &[
    "\"30s\"",
    "\"5m\"",
    "\"26h\"",
    "\"14d\"",
    "\"0s\"",
    "\"\"",
    "\"-1s\"",
    "\"1 fortnight\"",
    "\"18446744073709551615s\"",
    "\"9999999999999999d\"",
    "\"1h 30m\"",
];
const CRONS: &[&str] = &[
    "\"0 2 * * *\"",
    "\"*/30 * * * *\"",
    "\"0 4 * * 0\"",
    "\"60 * * * *\"",
    "\"* * * * * * *\"",
    "\"@daily\"",
    "\"@reboot\"",
    "\"0 0 31 2 *\"",
    "\"*/0 * * * *\"",
    "\"5-1 * * * *\"",
    "\"0 0 L * *\"",
    "\"0 0 * * 5#3\"",
    "\"0 0 ? * MON-FRI\"",
    "\"\"",
    "\"1,,2 * * * *\"",
    "\"0 0 1W * *\"",
    "\"0 0 * * 7L\"",
    "\"99999999999 * * * *\"",
    "\"-1 * * * *\"",
];
const REPO_URLS: &[&str] = &[
    "\"file:///tmp/bdc-fuzz-repo\"",
    "\"s3://bucket/prefix\"",
    "\"gs://bucket\"",
    "\"az://container/p\"",
    "\"ftp://host/x\"",
    "\"\"",
    "\"file://\"",
    "\"s3://\"",
    "\"file:///\"",
    "\"relative/path\"",
    "\"s3://b/p?region=x\"",
    "\"az://\"",
];
const ZONES: &[&str] = &[
    "\"UTC\"",
    "\"Europe/Istanbul\"",
    "\"Mars/Base\"",
    "\"\"",
    "\"utc\"",
    "\"+03:00\"",
];
const NAMES: &[&str] = &[
    "\"db\"",
    "\"wal\"",
    "\"files\"",
    "\"\"",
    "\"a/b\"",
    "\"db\"",
    "\"ü\"",
];
const KINDS: &[&str] = &[
    "\"postgres-dump\"",
    "\"postgres-base\"",
    "\"postgres-wal\"",
    "\"files\"",
    "\"config\"",
    "\"verify\"",
    "\"tarball\"",
];
const LISTS: &[&str] = &[
    "[\"local\"]",
    "[\"local\", \"offsite\"]",
    "[]",
    "[\"nowhere\"]",
    "[\"local\", \"local\"]",
    "[\"*.tmp\", \"[\"]",
    "[\"/etc/hosts\"]",
    "[\"{a,b}\", \"**/x\"]",
    "[1]",
];
const POSITIVE: &[&str] = &["2", "13", "0", "-3", "100000", "\"7\""];

/// A near-valid catalogue: the real sections and keys, values drawn from valid and invalid forms.
fn catalogue_text() -> impl Strategy<Value = String> {
    let daemon = prop::collection::vec(
        prop_oneof![
            value(ZONES).prop_map(|v| format!("timezone = {v}")),
            value(POSITIVE).prop_map(|v| format!("max-concurrent-runs = {v}")),
            value(&["\"once\"", "\"skip\"", "\"all\""]).prop_map(|v| format!("catch-up = {v}")),
            value(DURATIONS).prop_map(|v| format!("shutdown-timeout = {v}")),
            value(DURATIONS).prop_map(|v| format!("replica-retry = {v}")),
            value(CRONS).prop_map(|v| format!("retention-schedule = {v}")),
            value(&["\"auto\"", "\"journal\"", "\"stderr\"", "\"syslog\""])
                .prop_map(|v| format!("log = {v}")),
            value(&["\"info\"", "\"debug,sqlx=warn\"", "\"[[\"", "\"=\""])
                .prop_map(|v| format!("log-level = {v}")),
            value(&["\"/tmp/bdc-fuzz/state.db\"", "\"\"", "\"state.db\""])
                .prop_map(|v| format!("state-db = {v}")),
            value(&["\"bdc-backup\"", "\"\"", "\"root\""])
                .prop_map(|v| format!("read-group = {v}")),
        ],
        0..6,
    );
    let postgres = prop::option::of(prop::collection::vec(
        prop_oneof![
            value(&[
                "\"postgresql://u@localhost:5432/db\"",
                "\"postgresql://u:pw@h/db\"",
                "\"postgres://\"",
                "\"http://x\"",
                "\"\"",
                "\"postgresql://h:99999/db\"",
            ])
            .prop_map(|v| format!("url = {v}")),
            value(&["\"/var/lib/postgresql/15/main\"", "\"\"", "\"rel\""])
                .prop_map(|v| format!("data-directory = {v}")),
            value(&["\"/nonexistent/pw\"", "\"/etc/hostname\""])
                .prop_map(|v| format!("password-file = {v}")),
        ],
        0..3,
    ));
    let recipients = value(&[
        "[\"age1seyd6yqn0m6e2k6kkgtf0n4m9n58tjffvqrv7e90kgahzxdwc2gqcdz53w\"]",
        "[\"age1notakey\"]",
        "[]",
        "\"age1seyd6yqn0m6e2k6kkgtf0n4m9n58tjffvqrv7e90kgahzxdwc2gqcdz53w\"",
    ]);
    let repository = (
        select(&["local", "offsite", "x y", "local"][..]),
        value(REPO_URLS),
        prop::option::of(value(&["\"sync\"", "\"async\"", "\"maybe\""])),
        prop::option::of(value(DURATIONS)),
    )
        .prop_map(|(name, url, ack, timeout)| {
            let mut s = format!("[repository.\"{name}\"]\nurl = {url}\n");
            if let Some(a) = ack {
                s += &format!("wal-ack = {a}\n");
            }
            if let Some(t) = timeout {
                s += &format!("timeout = {t}\n");
            }
            s
        });
    let retention = (
        select(&["standard", "short"][..]),
        prop::collection::vec(
            (
                select(&["daily", "weekly", "monthly", "yearly", "hourly"][..]),
                value(POSITIVE),
            ),
            0..4,
        ),
    )
        .prop_map(|(name, keys)| {
            let mut s = format!("[retention.{name}]\n");
            for (k, v) in keys {
                s += &format!("{k} = {v}\n");
            }
            s
        });
    let job_key = prop_oneof![
        value(CRONS).prop_map(|v| format!("schedule = {v}")),
        value(CRONS).prop_map(|v| format!("full = {v}")),
        value(CRONS).prop_map(|v| format!("incremental = {v}")),
        value(LISTS).prop_map(|v| format!("repositories = {v}")),
        value(&["\"standard\"", "\"short\"", "\"none\""]).prop_map(|v| format!("retention = {v}")),
        value(DURATIONS).prop_map(|v| format!("max-age = {v}")),
        value(DURATIONS).prop_map(|v| format!("pitr-window = {v}")),
        value(POSITIVE).prop_map(|v| format!("max-chain = {v}")),
        value(&["\"/tmp\"", "\"\"", "\"relative\"", "\"/nonexistent\""])
            .prop_map(|v| format!("path = {v}")),
        value(LISTS).prop_map(|v| format!("paths = {v}")),
        value(LISTS).prop_map(|v| format!("exclude = {v}")),
        value(&["[\"bdc_db\"]", "[]", "[\"\"]"]).prop_map(|v| format!("databases = {v}")),
        value(&["true", "false"]).prop_map(|v| format!("globals = {v}")),
        value(&["true", "false"]).prop_map(|v| format!("watch = {v}")),
        value(NAMES).prop_map(|v| format!("wal-job = {v}")),
        ".{0,8}".prop_map(|k| format!("{} = 1", toml_string(&k))),
    ];
    let job = (
        value(NAMES),
        value(KINDS),
        prop::collection::vec(job_key, 0..7),
    )
        .prop_map(|(name, kind, keys)| {
            format!(
                "[[job]]\nname = {name}\nkind = {kind}\n{}\n",
                keys.join("\n")
            )
        });
    (
        daemon,
        postgres,
        recipients,
        prop::collection::vec(repository, 0..3),
        prop::collection::vec(retention, 0..2),
        prop::collection::vec(job, 0..4),
    )
        .prop_map(|(daemon, postgres, recipients, repos, retention, jobs)| {
            let mut s = format!("[daemon]\n{}\n", daemon.join("\n"));
            if let Some(pg) = postgres {
                s += &format!("[postgres]\n{}\n", pg.join("\n"));
            }
            s += &format!("[encryption]\nrecipients = {recipients}\n");
            s += &repos.concat();
            s += &retention.concat();
            s += &jobs.concat();
            s
        })
}

fn load_catalogue(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("/tmp/bdc-fuzz/catalogue.toml");
    if let Err(errors) = catalogue::parse_str(text, file, &[]) {
        let shown = errors.to_string();
        prop_assert!(!shown.trim().is_empty(), "an empty error for {text:?}");
    }
    Ok(())
}

#[test]
fn catalogue_arbitrary_text_never_panics() {
    let text = prop_oneof![
        ".{0,200}".prop_map(String::from),
        mutated(catalogue_text().prop_map(String::into_bytes))
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    fuzz("catalogue-text", text, |text| load_catalogue(&text));
}

#[test]
fn catalogue_near_valid_never_panics() {
    fuzz("catalogue-structured", catalogue_text(), |text| {
        load_catalogue(&text)
    });
}

// ---------------------------------------------------------------------------------------------
// Commit records

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 1970 … 2200, with nanoseconds.
    (0i64..7_258_118_400, 0u32..1_000_000_000)
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().expect("in range"))
}

fn object_record() -> impl Strategy<Value = ObjectRecord> {
    (
        ".{0,30}",
        any::<u64>(),
        "[0-9a-f]{64}",
        any::<u64>(),
        "[0-9a-f]{64}",
        select(&["zstd", "gzip"][..]),
    )
        .prop_map(
            |(key, size, sha256, content_size, content_sha256, c)| ObjectRecord {
                key,
                size,
                sha256,
                content_size,
                content_sha256,
                compression: c.into(),
                encryption: "age".into(),
            },
        )
}

fn details() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    prop::collection::vec(
        (
            ".{0,10}",
            prop_oneof![
                any::<i64>().prop_map(serde_json::Value::from),
                any::<u64>().prop_map(serde_json::Value::from),
                ".{0,10}".prop_map(serde_json::Value::from),
                any::<bool>().prop_map(serde_json::Value::from),
            ],
        ),
        0..4,
    )
    .prop_map(|kv| kv.into_iter().collect())
}

fn commit_record() -> impl Strategy<Value = CommitRecord> {
    (
        ("[a-z0-9_.-]{1,12}", "[0-9TZ-]{1,20}"),
        (select(JobKindName::ALL), select(BackupType::ALL)),
        prop::collection::vec(".{0,12}", 0..3),
        (instant(), instant()),
        (any::<u64>(), any::<u64>()),
        prop::collection::vec(object_record(), 0..3),
        object_record(),
        details(),
        ".{0,20}",
    )
        .prop_map(
            |(
                (job, id),
                (kind, backup_type),
                ancestors,
                (started_at, stopped_at),
                (r, s),
                objects,
                manifest,
                details,
                software,
            )| {
                CommitRecord {
                    format_version: 1,
                    id,
                    job,
                    kind,
                    backup_type,
                    ancestors,
                    started_at,
                    stopped_at,
                    bytes_read: r,
                    bytes_stored: s,
                    objects,
                    manifest,
                    details,
                    software,
                }
            },
        )
}

fn repository() -> Repository {
    Repository::with_store(
        "fuzz",
        Store::Local(LocalStore::new("/nonexistent/bdc-fuzz")),
    )
}

#[test]
fn commit_records_never_panic() {
    let input = (
        prop_oneof![
            bytes(512),
            json_value().prop_map(|v| json_line(&v)),
            mutated(commit_record().prop_map(|r| r.to_json().unwrap())),
        ],
        prop_oneof![
            Just("backups/db/20261126T020000Z-F/backup.json".to_string()),
            ".{0,40}".prop_map(String::from),
        ],
    );
    let repo = repository();
    fuzz("commit-record", input, |(bytes, key)| {
        let _ = CommitRecord::from_json(&bytes);
        if let Err(e) = repo.parse_record(&key, &bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
        let _ = format::parse_commit_key(&key);
        let _ = format::parse_backup_key(&key);
        let _ = format::BackupId(key).parse();
        Ok(())
    });
}

#[test]
fn commit_records_round_trip() {
    let repo = repository();
    fuzz("commit-record-round-trip", commit_record(), |record| {
        let json = record.to_json().unwrap();
        prop_assert_eq!(&CommitRecord::from_json(&json).unwrap(), &record);
        let back = repo
            .parse_record(&record.key(), &json)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, record);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Manifests

fn byte_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z]{1,3}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>().prop_filter("no /", |b| *b != b'/'), 1..6),
    ]
}

fn location() -> impl Strategy<Value = Location> {
    (
        ".{0,12}",
        ".{0,16}",
        any::<u64>(),
        prop::collection::vec(any::<[u64; 4]>(), 0..3),
    )
        .prop_map(|(backup, key, offset, frames)| Location {
            backup,
            key,
            offset,
            frames,
        })
}

fn entry_body() -> impl Strategy<Value = Entry> {
    (
        (
            select(vec![EntryKind::File, EntryKind::Dir, EntryKind::Symlink]),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            opt_text(),
            opt_text(),
        ),
        (
            any::<i64>(),
            any::<u32>(),
            any::<i64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            prop::option::of("[0-9a-f]{64}"),
            prop::option::of(byte_name().prop_map(ByteName)),
            any::<Option<u64>>(),
            prop::option::of(prop::collection::vec(any::<[u64; 2]>(), 0..3)),
        ),
        (
            prop::option::of(location()),
            prop::option::of(
                (any::<u64>(), "[0-9a-f]{0,64}")
                    .prop_map(|(size, xxh3)| BlockHashes { size, xxh3 }),
            ),
            prop::option::of(prop::collection::vec(
                (any::<u64>(), any::<u64>(), location()).prop_map(|(at, len, data)| Extent {
                    at,
                    len,
                    data,
                }),
                0..3,
            )),
        ),
    )
        .prop_map(
            |(
                (kind, mode, uid, gid, user, group),
                (mtime, mn, ctime, cn, ino, size),
                (sha256, target, link_group, sparse),
                (data, blocks, extents),
            )| Entry {
                path: ByteName::default(),
                kind,
                mode,
                uid,
                gid,
                user,
                group,
                mtime,
                mtime_nsec: mn,
                ctime,
                ctime_nsec: cn,
                ino,
                size,
                sha256,
                target,
                link_group,
                sparse,
                data,
                blocks,
                extents,
            },
        )
}

/// A manifest: a header, entries with distinct paths in walk order, a trailer.
fn manifest() -> impl Strategy<Value = (Header, Vec<Entry>, Trailer)> {
    let header = (
        ".{0,12}",
        ".{0,20}",
        select(BackupType::ALL),
        select(vec![Mode::Lenient, Mode::Strict]),
        byte_name(),
        instant(),
        prop::collection::vec(".{0,12}", 0..3),
    )
        .prop_map(
            |(job, backup_id, backup_type, mode, source, started_at, ancestors)| Header {
                format_version: 1,
                kind: "tree-snapshot".into(),
                job,
                backup_id,
                backup_type,
                mode,
                source: ByteName(source),
                started_at,
                ancestors,
            },
        );
    let paths =
        prop::collection::vec(prop::collection::vec(byte_name(), 0..4), 0..12).prop_map(|paths| {
            let mut v: Vec<Vec<u8>> = paths.into_iter().map(|c| c.join(&b'/')).collect();
            v.sort_by(|a, b| compare(a, b));
            v.dedup_by(|a, b| compare(a, b) == std::cmp::Ordering::Equal);
            v
        });
    let entries = paths.prop_flat_map(|paths| {
        let n = paths.len();
        (Just(paths), prop::collection::vec(entry_body(), n))
    });
    let trailer = (
        prop::collection::vec(".{0,16}", 0..3),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(objects, files_stored, warnings)| Trailer {
            entries: 0,
            objects,
            files_stored,
            warnings,
        });
    (header, entries, trailer).prop_map(|(header, (paths, bodies), trailer)| {
        let entries = paths
            .into_iter()
            .zip(bodies)
            .map(|(p, mut e)| {
                e.path = ByteName(p);
                e
            })
            .collect();
        (header, entries, trailer)
    })
}

fn write_manifest(header: &Header, entries: &[Entry], trailer: &Trailer) -> Vec<u8> {
    let mut w = ManifestWriter::new(Vec::new(), header).unwrap();
    for e in entries {
        w.entry(e).unwrap();
    }
    w.finish(trailer.clone()).unwrap()
}

/// Reads every entry (as a restore does: paths checked); the error if any.
fn read_manifest(bytes: &[u8]) -> Result<(Header, Vec<Entry>, Trailer), String> {
    let mut r = ManifestReader::new(bytes).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    while let Some(e) = r.next_entry().map_err(|e| e.to_string())? {
        let _ = check_relative(e.path.as_bytes());
        let _ = e.content_keys().count();
        if let Some(b) = &e.blocks {
            let _ = (0..b.count() + 1).map(|i| b.get(i)).count();
        }
        entries.push(e);
    }
    let trailer = r.trailer().cloned().ok_or("no trailer after the end")?;
    Ok((r.header.clone(), entries, trailer))
}

#[test]
fn manifests_never_panic() {
    let input = prop_oneof![
        bytes(512),
        mutated(manifest().prop_map(|(h, e, t)| write_manifest(&h, &e, &t))),
        // Whole lines swapped, dropped or repeated.
        (
            manifest().prop_map(|(h, e, t)| write_manifest(&h, &e, &t)),
            prop::collection::vec((any::<usize>(), any::<usize>(), 0u8..3), 1..4)
        )
            .prop_map(|(m, edits)| {
                let mut lines: Vec<&[u8]> = m.split_inclusive(|b| *b == b'\n').collect();
                for (a, b, op) in edits {
                    let (a, b) = (a % lines.len(), b % lines.len());
                    match op {
                        0 => lines.swap(a, b),
                        1 => {
                            lines.remove(a);
                            if lines.is_empty() {
                                break;
                            }
                        }
                        _ => lines.insert(b, lines[a]),
                    }
                }
                lines.concat()
            }),
    ];
    fuzz("manifest", input, |bytes| {
        if let Err(e) = read_manifest(&bytes) {
            prop_assert!(!e.is_empty());
        }
        Ok(())
    });
}

#[test]
fn manifests_round_trip() {
    fuzz(
        "manifest-round-trip",
        manifest(),
        |(header, entries, trailer)| {
            let bytes = write_manifest(&header, &entries, &trailer);
            let (h, e, t) = read_manifest(&bytes).map_err(TestCaseError::fail)?;
            prop_assert_eq!(h, header);
            prop_assert_eq!(&e, &entries);
            prop_assert_eq!(t.entries, entries.len() as u64);
            prop_assert_eq!(
                (t.objects, t.files_stored, t.warnings),
                (trailer.objects, trailer.files_stored, trailer.warnings)
            );
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// WAL: page headers, names, LSNs, archive keys

fn long_header(
    magic: u16,
    info: u16,
    tl: u32,
    addr: u64,
    sysid: u64,
    seg: u32,
    blk: u32,
) -> Vec<u8> {
    let mut b = vec![0u8; 40];
    b[0..2].copy_from_slice(&magic.to_le_bytes());
    b[2..4].copy_from_slice(&info.to_le_bytes());
    b[4..8].copy_from_slice(&tl.to_le_bytes());
    b[8..16].copy_from_slice(&addr.to_le_bytes());
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&seg.to_le_bytes());
    b[36..40].copy_from_slice(&blk.to_le_bytes());
    b
}

#[test]
fn wal_headers_never_panic_and_read_back() {
    let pow2 = |lo: u32, hi: u32| prop_oneof![(lo..=hi).prop_map(|e| 1u32 << e), any::<u32>()];
    let header = (
        any::<u16>(),
        prop_oneof![Just(0x0006u16), Just(0x0002), any::<u16>()],
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        pow2(20, 30),
        pow2(10, 16),
        bytes(64),
    );
    fuzz(
        "wal-header",
        prop_oneof![
            bytes(80).prop_map(|b| (b, None)),
            header.prop_map(|(m, i, t, a, s, seg, blk, tail)| {
                let mut b = long_header(m, i, t, a, s, seg, blk);
                b.extend(tail);
                (b, Some((m, i, t, a, s, seg, blk)))
            })
        ],
        |(bytes, fields)| {
            let parsed = WalHeader::parse(&bytes);
            if let (Ok(h), Some((m, i, t, a, s, seg, blk))) = (parsed, fields) {
                prop_assert!(i & 0x0002 != 0);
                prop_assert_eq!(
                    (
                        h.magic,
                        h.timeline,
                        h.page_address,
                        h.system_identifier,
                        h.segment_size,
                        h.block_size
                    ),
                    (m, t, a, s, seg, blk)
                );
            }
            Ok(())
        },
    );
}

/// Near-valid WAL file names: hex runs of various lengths (sometimes lowercase or not ASCII)
/// with the suffixes PostgreSQL uses.
fn wal_name_text() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        "[0-9A-F]{8}",
        "[0-9A-Fa-f]{7,9}",
        ".{0,9}",
        "[0-9A-F]{0,7}[éß€]",
    ];
    (
        prop::collection::vec(part, 1..4),
        select(
            &[
                "",
                ".partial",
                ".backup",
                ".history",
                ".00000028.backup",
                ".0000002.backup",
            ][..],
        ),
    )
        .prop_map(|(parts, suffix)| parts.concat() + suffix)
}

#[test]
fn wal_names_and_keys_never_panic() {
    let input = prop_oneof![
        ".{0,40}".prop_map(String::from),
        wal_name_text(),
        wal_name_text().prop_map(|n| format!("wal/7312-15/00000001/{n}-{}", "a".repeat(64))),
        ".{0,20}".prop_map(|s| format!("{s}/{s}")),
    ];
    fuzz("wal-name", input, |text| {
        if let Some(n) = WalName::parse(&text) {
            prop_assert_eq!(&n.name, &text);
            let _ = (n.segment(), n.position());
        }
        let _ = parse_lsn(&text);
        let _ = parse_object_key(&text);
        Ok(())
    });
}

#[test]
fn wal_names_lsns_and_keys_round_trip() {
    let input = (
        1u32..=u32::MAX,
        any::<u64>(),
        (20u32..=30).prop_map(|e| 1u64 << e),
        any::<u64>(),
        any::<u32>(),
        "[0-9a-f]{64}",
    );
    fuzz(
        "wal-round-trip",
        input,
        |(timeline, lsn, segment_size, system_identifier, pg_major, sha256)| {
            prop_assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
            let name = segment_name(timeline, lsn, segment_size);
            let parsed = WalName::parse(&name).expect("a segment name parses");
            prop_assert_eq!(parsed.kind, WalKind::Segment);
            prop_assert_eq!(parsed.timeline, timeline);
            let segno = lsn / segment_size;
            let per_log = 0x1_0000_0000 / segment_size;
            prop_assert_eq!(
                (u64::from(parsed.log), u64::from(parsed.seg)),
                ((segno / per_log) & 0xFFFF_FFFF, segno % per_log)
            );
            let id = ClusterIdentity {
                system_identifier,
                pg_major,
            };
            let key = object_key(&id, &parsed, &sha256);
            let back = parse_object_key(&key).expect("an archive key parses");
            prop_assert_eq!(back.identity, id);
            prop_assert_eq!(back.name, parsed);
            prop_assert_eq!(back.sha256, sha256);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// --time / --at

fn zone() -> impl Strategy<Value = chrono_tz::Tz> {
    select(&chrono_tz::TZ_VARIANTS[..])
}

/// Near-valid times: the date, time, fraction and offset parts with edge values.
fn time_text() -> impl Strategy<Value = String> {
    let date = prop_oneof![
        "[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}",
        select(
            &[
                "0000-01-01",
                "9999-12-31",
                "2026-02-29",
                "2024-02-29",
                "2026-13-01",
                "2026-1-1"
            ][..]
        )
        .prop_map(String::from),
    ];
    let time = prop_oneof![
        Just(String::new()),
        "[ Tt]{1,2}[0-9]{1,2}:[0-9]{2}",
        "[ T][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,12})?",
        select(&[" 23:59:59.999999999", " 24:00:00", " 00:00:60", "T"][..]).prop_map(String::from),
    ];
    let zone = prop_oneof![
        Just(String::new()),
        "[ ]?[+-][0-9]{1,2}(:?[0-9]{2}(:?[0-9]{2})?)?",
        select(
            &[
                "Z",
                "z",
                " UTC",
                "Europe/Istanbul",
                " europe/berlin",
                " Mars/Base",
                "+",
                "-15:59:59",
                "+99"
            ][..]
        )
        .prop_map(String::from),
        ".{0,6}",
    ];
    (date, time, zone).prop_map(|(d, t, z)| d + &t + &z)
}

#[test]
fn time_texts_never_panic() {
    let text = prop_oneof![".{0,40}".prop_map(String::from), time_text()];
    fuzz("time", (text, zone()), |(text, zone)| {
        if let Err(e) = parse_time(&text, zone) {
            prop_assert!(e.to_string().contains("is not a time"));
        }
        Ok(())
    });
}

#[test]
fn times_round_trip() {
    let input = (
        // 0001 … 9999: four-digit years.
        (-62_135_596_800i64..253_402_300_799, 0u32..1_000_000_000),
        -15 * 60i32..=15 * 60,
        zone(),
    );
    fuzz(
        "time-round-trip",
        input,
        |((secs, nanos), offset_min, zone)| {
            let t = Utc.timestamp_opt(secs, nanos).single().expect("in range");
            // As psql prints it (offset in hours, sometimes minutes), as RFC 3339, and with `T`.
            let offset = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
            let local = t.with_timezone(&offset);
            for text in [
                local.format("%Y-%m-%d %H:%M:%S%.f%:z").to_string(),
                local.format("%Y-%m-%dT%H:%M:%S%.f%z").to_string(),
                t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
                t.to_rfc3339(),
                t.format("%Y-%m-%d %H:%M:%S%.f UTC").to_string(),
            ] {
                let back =
                    parse_time(&text, zone).map_err(|e| TestCaseError::fail(e.to_string()))?;
                // psql's microseconds drop the rest.
                let want = if text.ends_with("+00") {
                    Utc.timestamp_opt(secs, nanos / 1000 * 1000).unwrap()
                } else {
                    t
                };
                prop_assert_eq!(back, want, "{}", text);
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Findings of the fuzz runs, kept as explicit inputs (each panicked before its fix).

/// `WalName::parse` sliced names by byte offsets and panicked inside a multi-byte character.
#[test]
fn regressions_wal_names() {
    for name in [
        "A𐀀0A𐀀A𐀀A.backup",
        "0000000é000000000000000",
        "00000001000000000000000é",
        "000000010000000000000001.0000002é.backup",
        "0000000é.history",
    ] {
        assert_eq!(WalName::parse(name), None, "{name}");
        assert!(
            parse_object_key(&format!("wal/1-15/00000001/{name}-{}", "a".repeat(64))).is_none()
        );
    }
}
