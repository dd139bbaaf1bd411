//! Generated commit records and tree-snapshot manifests (every field, paths as arbitrary bytes in
//! walk order) for the round-trip and mutation fuzz targets.

use super::opt_text;
use bdc_backup::model::{BackupType, JobKindName};
use bdc_backup::repository::format::{CommitRecord, ObjectRecord};
use bdc_backup::snapshot::manifest::{
    BlockHashes, Entry, EntryKind, Extent, Header, Location, Mode, Trailer,
};
use bdc_backup::snapshot::path::{ByteName, compare};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::select;

pub fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 1970 … 2200, with nanoseconds.
    (0i64..7_258_118_400, 0u32..1_000_000_000)
        .prop_map(|(s, n)| Utc.timestamp_opt(s, n).single().expect("in range"))
}

pub fn object_record() -> impl Strategy<Value = ObjectRecord> {
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

pub fn details() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
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

pub fn commit_record() -> impl Strategy<Value = CommitRecord> {
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

pub fn byte_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z]{1,3}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>().prop_filter("no /", |b| *b != b'/'), 1..6),
    ]
}

pub fn location() -> impl Strategy<Value = Location> {
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

pub fn entry_body() -> impl Strategy<Value = Entry> {
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
pub fn manifest() -> impl Strategy<Value = (Header, Vec<Entry>, Trailer)> {
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
