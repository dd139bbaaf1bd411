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

mod fuzzing;

use bdc_backup::catalogue;
use bdc_backup::control::auth::{AccessPolicy, Peer};
use bdc_backup::control::client::decode_reply;
use bdc_backup::control::server::{self, Handler};
use bdc_backup::model::{BackupType, ClusterIdentity};
use bdc_backup::protocol::{self, ErrorBody, ErrorCode, Event, Hello, Reply, Request, Response};
use bdc_backup::repository::format::{self, CommitRecord};
use bdc_backup::repository::store::Store;
use bdc_backup::repository::{Repository, local::LocalStore};
use bdc_backup::snapshot::manifest::{Entry, Header, ManifestReader, ManifestWriter, Trailer};
use bdc_backup::snapshot::path::check_relative;
use bdc_backup::timeparse::parse_time;
use bdc_backup::wal::format::{object_key, parse_object_key};
use bdc_backup::wal::name::{format_lsn, parse_lsn, segment_name};
use bdc_backup::wal::{WalHeader, WalKind, WalName};
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use fuzzing::catalogue::catalogue_text;
use fuzzing::records::{commit_record, manifest};
use fuzzing::{bytes, fuzz, json_line, json_value, mutated, opt_text};

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
    (
        prop::collection::vec(piece, 0..8),
        prop::collection::vec(1usize..40, 1..8),
    )
        .prop_map(|(pieces, cuts)| {
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
        })
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
    let server = {
        let _runtime = rt.enter();
        let listener = server::bind(&path, None).expect("bind");
        rt.spawn(server::serve(
            listener,
            Arc::new(Echo),
            policy,
            shutdown.clone(),
        ))
    };
    let hello = format!(
        "{{\"protocol\":{},\"software\":\"fuzz\"}}\n",
        protocol::PROTOCOL_VERSION
    );
    // One connection: the hello, the chunks, then end of input; every reply line until EOF.
    let converse = |chunks: Vec<Vec<u8>>| -> Result<Vec<Vec<u8>>, String> {
        rt.block_on(async {
            let stream = UnixStream::connect(&path)
                .await
                .map_err(|e| e.to_string())?;
            let (r, mut w) = stream.into_split();
            w.write_all(hello.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
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
                let n = tokio::time::timeout(
                    Duration::from_secs(30),
                    reader.read_until(b'\n', &mut line),
                )
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
        prop_assert_eq!(
            &theirs["protocol"],
            &serde_json::json!(protocol::PROTOCOL_VERSION)
        );
        for line in &replies[1..] {
            prop_assert!(line.ends_with(b"\n"), "an unterminated reply");
            let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                TestCaseError::fail(format!(
                    "a reply that is not JSON ({e}): {}",
                    String::from_utf8_lossy(line)
                ))
            })?;
            prop_assert!(v.get("ok").is_some() || v.get("error").is_some(), "{v}");
            // The client reads it without panicking too.
            let _ = decode_reply(line.strip_suffix(b"\n").unwrap_or(line));
        }
        let lines = sent.split(|b| *b == b'\n').count();
        prop_assert!(
            replies.len() - 1 <= lines,
            "{} replies to {lines} lines",
            replies.len() - 1
        );
        prop_assert!(!server.is_finished(), "the server ended");
        // And the next connection is served as usual.
        let after =
            converse(vec![b"{\"type\":\"reload\"}\n".to_vec()]).map_err(TestCaseError::fail)?;
        prop_assert_eq!(after.len(), 2);
        prop_assert!(
            after[1].starts_with(b"{\"ok\":{\"type\":\"reloaded\""),
            "{}",
            String::from_utf8_lossy(&after[1])
        );
        Ok(())
    });
    shutdown.cancel();
}

// ---------------------------------------------------------------------------------------------
// The catalogue

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
            for i in 0..=b.count() {
                let _ = b.get(i);
            }
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
        // 0001 … 9999: four-digit years, also after the offset below (±15 h) is applied — a
        // local time in year 10000 is not a time anyone copies from psql (fuzz/run found it).
        (
            -62_135_596_800i64 + 15 * 3600..253_402_300_799 - 15 * 3600,
            0u32..1_000_000_000,
        ),
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

/// tracing-subscriber's filter parser panicked on a `log-level` with a multi-byte character;
/// the catalogue now refuses a non-ASCII filter, naming the key.
#[test]
fn regressions_catalogue_log_level() {
    for level in [
        "\u{20000}0\u{10000}=\u{10000}A#\u{c}",
        "é",
        "info,bdc_backup=débug",
        "[{x=ü}]",
    ] {
        let text = format!(
            "[daemon]\nstate-db = \"\"\nlog-level = {}\n",
            toml::Value::String(level.into())
        );
        let errors = catalogue::parse_str(&text, Path::new("/tmp/bdc-fuzz/catalogue.toml"), &[])
            .expect_err("a non-ASCII filter is refused");
        let shown = errors.to_string();
        assert!(
            shown.contains("log-level") && shown.contains("ASCII"),
            "{shown}"
        );
    }
}
