//! Tests of the local store (durability order, create-only, keys, listing, errors) and the
//! repository (open, commit, list_commits).

use super::local::{LocalStore, SyncEvent, link_unlink, rename_noreplace, validate_key};
use super::*;
use crate::catalogue::{RepositoryLocation, RepositorySettings, WalAck};
use crate::error::{Classify, Retry};
use crate::model::{BackupType, JobKindName};
use chrono::{TimeZone, Utc};
use futures::TryStreamExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

fn recorded_store(root: &Path) -> (Store, Arc<Mutex<Vec<SyncEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let local = LocalStore::open(root)
        .unwrap()
        .with_sync_observer(Arc::new(move |e| ev.lock().unwrap().push(e)));
    (Store::Local(local), events)
}

fn staging_of(events: &[SyncEvent]) -> PathBuf {
    match &events[0] {
        SyncEvent::File(p) => p.clone(),
        other => panic!("first event should be the staging file fsync, got {other:?}"),
    }
}

#[tokio::test]
async fn writer_finish_fsyncs_file_then_renames_then_fsyncs_dir() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let (store, events) = recorded_store(&root);
    let mut w = store
        .writer("backups/db/X-F/data/000000.age")
        .await
        .unwrap();
    w.write(Bytes::from_static(b"hello ")).await.unwrap();
    w.write(Bytes::from_static(b"world")).await.unwrap();
    assert!(
        events.lock().unwrap().is_empty(),
        "nothing is synced before finish"
    );
    assert_eq!(w.finish().await.unwrap(), 11);
    let ev = events.lock().unwrap().clone();
    let staging = staging_of(&ev);
    assert!(staging.starts_with(root.join(".staging")));
    let target = root.join("backups/db/X-F/data/000000.age");
    // Each new folder is made durable in its parent, top down, before the rename.
    let expected = vec![
        SyncEvent::File(staging.clone()),
        SyncEvent::Dir(root.clone()),
        SyncEvent::Dir(root.join("backups")),
        SyncEvent::Dir(root.join("backups/db")),
        SyncEvent::Dir(root.join("backups/db/X-F")),
        SyncEvent::Rename {
            from: staging.clone(),
            to: target.clone(),
        },
        SyncEvent::Dir(root.join("backups/db/X-F/data")),
    ];
    assert_eq!(ev, expected);
    assert_eq!(std::fs::read(&target).unwrap(), b"hello world");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!staging.exists());

    // A second object in existing folders: file fsync → rename → folder fsync, nothing else.
    events.lock().unwrap().clear();
    store
        .put_create("backups/db/X-F/backup.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let ev = events.lock().unwrap().clone();
    let staging = staging_of(&ev);
    assert_eq!(
        ev,
        vec![
            SyncEvent::File(staging.clone()),
            SyncEvent::Rename {
                from: staging,
                to: root.join("backups/db/X-F/backup.json")
            },
            SyncEvent::Dir(root.join("backups/db/X-F")),
        ]
    );
}

#[tokio::test]
async fn put_create_twice_is_already_exists_and_keeps_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = recorded_store(dir.path());
    store
        .put_create("a/b", Bytes::from_static(b"one"))
        .await
        .unwrap();
    let err = store
        .put_create("a/b", Bytes::from_static(b"two"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { ref key } if key == "a/b"),
        "{err}"
    );
    assert_eq!(err.retry(), Retry::Permanent);
    assert_eq!(store.get("a/b").await.unwrap(), Bytes::from_static(b"one"));
    // A streaming writer cannot replace either (the check is the rename itself).
    let mut w = store.writer("a/b").await.unwrap();
    w.write(Bytes::from_static(b"three")).await.unwrap();
    assert!(matches!(
        w.finish().await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(store.get("a/b").await.unwrap(), Bytes::from_static(b"one"));
    assert_eq!(
        std::fs::read_dir(dir.path().join(".staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn rename_noreplace_and_fallback_never_replace() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    std::fs::write(&a, "a").unwrap();
    std::fs::write(&b, "b").unwrap();
    assert_eq!(
        rename_noreplace(&a, &b).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    assert_eq!(
        link_unlink(&a, &b).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    assert_eq!(std::fs::read_to_string(&b).unwrap(), "b");
    link_unlink(&a, &c).unwrap();
    assert!(!a.exists());
    assert_eq!(std::fs::read_to_string(&c).unwrap(), "a");
}

#[tokio::test]
async fn abort_and_drop_remove_the_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, events) = recorded_store(dir.path());
    let mut w = store.writer("x/y").await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    w.abort().await.unwrap();
    let mut w = store.writer("x/z").await.unwrap();
    w.write(Bytes::from_static(b"partial")).await.unwrap();
    drop(w);
    assert_eq!(
        std::fs::read_dir(dir.path().join(".staging"))
            .unwrap()
            .count(),
        0
    );
    assert!(store.list("").await.unwrap().is_empty());
    assert!(events.lock().unwrap().is_empty());
}

#[test]
fn keys_are_validated() {
    for bad in [
        "",
        "/abs",
        "a//b",
        "a/",
        "../x",
        "a/../b",
        "a/./b",
        ".",
        ".staging/x",
        ".staging",
        "a\0b",
    ] {
        assert!(
            matches!(validate_key(bad), Err(StoreError::InvalidKey { .. })),
            "{bad:?} accepted"
        );
    }
    for good in [
        "a",
        "backups/db/20261126T020000Z-F/backup.json",
        ".hidden/x",
        "a..b",
    ] {
        validate_key(good).unwrap();
    }
}

#[tokio::test]
async fn list_get_range_stream_head_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = recorded_store(dir.path());
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    for (k, v) in [
        ("backups/a/1/x", &b"1"[..]),
        ("backups/a/2/y", &b"22"[..]),
        ("backups/ab/z", &b"333"[..]),
        ("wal/w", &big[..]),
    ] {
        store
            .put_create(k, Bytes::copy_from_slice(v))
            .await
            .unwrap();
    }
    // A leftover upload in staging is never listed.
    let _w = store.writer("backups/a/3/pending").await.unwrap();
    let keys = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("").await.unwrap()),
        ["backups/a/1/x", "backups/a/2/y", "backups/ab/z", "wal/w"]
    );
    assert_eq!(
        keys(store.list("backups/a/").await.unwrap()),
        ["backups/a/1/x", "backups/a/2/y"]
    );
    assert_eq!(
        keys(store.list("backups/a").await.unwrap()),
        ["backups/a/1/x", "backups/a/2/y", "backups/ab/z"]
    );
    assert!(store.list("nothing/").await.unwrap().is_empty());
    assert!(store.list("../").await.is_err());
    let meta = store.head("backups/a/2/y").await.unwrap().unwrap();
    assert_eq!((meta.key.as_str(), meta.size), ("backups/a/2/y", 2));
    assert_eq!(store.head("backups/a/2").await.unwrap(), None);
    assert_eq!(store.head("missing").await.unwrap(), None);
    assert_eq!(
        store
            .get_range("wal/w", 1_000_000..1_000_010)
            .await
            .unwrap(),
        &big[1_000_000..1_000_010]
    );
    assert!(
        store
            .get_range("wal/w", 2_499_990..2_500_010)
            .await
            .is_err()
    );
    let chunks: Vec<Bytes> = store
        .get_stream("wal/w")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks.concat(), big);
    assert!(matches!(
        store.get("missing").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get_stream("missing").await.err(),
        Some(StoreError::NotFound { .. })
    ));
    store.delete("backups/ab/z").await.unwrap();
    store.delete("backups/ab/z").await.unwrap();
    assert_eq!(store.head("backups/ab/z").await.unwrap(), None);
}

#[test]
fn io_errors_name_path_action_and_classify() {
    let err = |code| StoreError::Local {
        action: "writing staging file",
        path: PathBuf::from("/backups/.staging/1.tmp"),
        source: std::io::Error::from_raw_os_error(code),
    };
    let enospc = err(libc::ENOSPC);
    assert_eq!(
        enospc.to_string(),
        "writing staging file /backups/.staging/1.tmp: no space left on device"
    );
    assert_eq!(enospc.retry(), Retry::Transient);
    assert!(std::error::Error::source(&enospc).is_some());
    assert!(
        err(libc::EACCES)
            .to_string()
            .ends_with(": permission denied")
    );
    assert_eq!(err(libc::EACCES).retry(), Retry::Permanent);
    assert!(
        err(libc::EROFS)
            .to_string()
            .ends_with(": read-only file system")
    );
    assert_eq!(err(libc::EROFS).retry(), Retry::Permanent);
    assert!(err(libc::EIO).to_string().contains("Input/output error"));
}

#[test]
fn open_reports_a_root_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let settings = settings_for(file.join("repo"));
    let err = Repository::open(&settings).unwrap_err().to_string();
    assert!(
        err.contains("repository `local`") && err.contains("creating repository folder"),
        "{err}"
    );
}

fn settings_for(path: PathBuf) -> RepositorySettings {
    RepositorySettings {
        name: "local".into(),
        url: format!("file://{}", path.display()),
        location: RepositoryLocation::File { path },
        wal_ack: WalAck::Sync,
        region: None,
        endpoint: None,
        credentials_file: None,
        bandwidth_limit: None,
        call_timeout: None,
    }
}

fn cloud_settings(name: &str, url: &str, location: RepositoryLocation) -> RepositorySettings {
    let mut s = settings_for(PathBuf::from("/x"));
    s.name = name.into();
    s.url = url.into();
    s.location = location;
    s
}

#[test]
fn cloud_repositories_open_without_network() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("s3.env");
    std::fs::write(
        &creds,
        "# test\nexport AWS_ACCESS_KEY_ID=AKIA\nAWS_SECRET_ACCESS_KEY=\"s3cr3t-value\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = cloud_settings(
        "offsite",
        "s3://bucket/prefix",
        RepositoryLocation::S3 {
            bucket: "bucket".into(),
            prefix: "prefix".into(),
        },
    );
    s.region = Some("eu-central-1".into());
    s.endpoint = Some("http://127.0.0.1:9".into());
    s.credentials_file = Some(creds.clone());
    let repo = Repository::open(&s).unwrap();
    assert!(matches!(repo.store, Store::Object(_)));

    // GCS: no emulator here; the gs:// entry is validated and its client constructed.
    let g = cloud_settings(
        "gcs",
        "gs://bucket/p",
        RepositoryLocation::Gcs {
            bucket: "bucket".into(),
            prefix: "p".into(),
        },
    );
    let repo = Repository::open(&g).unwrap();
    assert!(matches!(repo.store, Store::Object(_)));

    // Azure with an explicit account (Azurite-style endpoint).
    let az_creds = dir.path().join("az.env");
    std::fs::write(
        &az_creds,
        "AZURE_STORAGE_ACCOUNT_NAME=devstoreaccount1\nAZURE_STORAGE_ACCOUNT_KEY=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==\n",
    )
    .unwrap();
    std::fs::set_permissions(&az_creds, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut a = cloud_settings(
        "azure",
        "az://container/p",
        RepositoryLocation::Azure {
            container: "container".into(),
            prefix: "p".into(),
        },
    );
    a.endpoint = Some("http://127.0.0.1:10000/devstoreaccount1".into());
    a.credentials_file = Some(az_creds);
    assert!(matches!(
        Repository::open(&a).unwrap().store,
        Store::Object(_)
    ));
}

#[test]
fn credentials_files_are_checked_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("s3.env");
    std::fs::write(&creds, "AWS_SECRET_ACCESS_KEY=topsecret\n").unwrap();
    let mut s = cloud_settings(
        "offsite",
        "s3://bucket/prefix",
        RepositoryLocation::S3 {
            bucket: "bucket".into(),
            prefix: "prefix".into(),
        },
    );
    s.credentials_file = Some(creds.clone());

    // Readable by others: refused.
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Repository::open(&s).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("offsite") && text.contains("s3.env") && text.contains("0644"),
        "{text}"
    );
    assert!(!text.contains("topsecret"));
    assert_eq!(err.retry(), Retry::Permanent);

    // A key of another provider, or a malformed line: named, value not shown.
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&creds, "AZURE_STORAGE_ACCOUNT_KEY=topsecret\n").unwrap();
    let text = Repository::open(&s).unwrap_err().to_string();
    assert!(
        text.contains("AZURE_STORAGE_ACCOUNT_KEY") && !text.contains("topsecret"),
        "{text}"
    );
    std::fs::write(&creds, "topsecret\n").unwrap();
    let text = Repository::open(&s).unwrap_err().to_string();
    assert!(
        text.contains("line 1") && !text.contains("topsecret"),
        "{text}"
    );

    // Missing file: named.
    s.credentials_file = Some(dir.path().join("missing.env"));
    let text = Repository::open(&s).unwrap_err().to_string();
    assert!(text.contains("missing.env"), "{text}");
}

#[tokio::test]
async fn token_bucket_limits_the_rate() {
    let bucket = super::cloud::TokenBucket::new(1 << 20);
    let start = std::time::Instant::now();
    // One second of burst, then 1 MiB more must take about a second.
    bucket.acquire(1 << 20).await;
    bucket.acquire(1 << 20).await;
    let took = start.elapsed();
    assert!(took >= std::time::Duration::from_millis(900), "{took:?}");
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn object_store_variant_round_trips_in_memory() {
    use super::cloud::{CloudOptions, CloudStore};
    let mem = Arc::new(object_store::memory::InMemory::new());
    let opts = CloudOptions {
        part_size: 1 << 20,
        max_concurrency: 2,
        ..CloudOptions::default()
    };
    let store = Store::Object(CloudStore::from_object_store(
        mem.clone(),
        "pre/fix",
        "memory://test/pre/fix",
        opts,
    ));
    // Multipart (5 parts) and a small single PUT.
    let data: Vec<u8> = (0..(5 << 20) + 123).map(|i| (i % 251) as u8).collect();
    let mut w = store.writer("backups/j/X-F/data/000000.age").await.unwrap();
    for c in data.chunks(300_000) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap(), data.len() as u64);
    let mut w = store.writer("backups/j/X-F/manifest.age").await.unwrap();
    w.write(Bytes::from_static(b"small")).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(
        store.get("backups/j/X-F/data/000000.age").await.unwrap(),
        Bytes::from(data.clone())
    );
    let streamed: Vec<Bytes> = store
        .get_stream("backups/j/X-F/data/000000.age")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(streamed.concat(), data);
    assert_eq!(
        store
            .get_range("backups/j/X-F/manifest.age", 1..4)
            .await
            .unwrap(),
        Bytes::from_static(b"mal")
    );
    // Keys live under the prefix in the bucket.
    use object_store::ObjectStoreExt;
    let raw = object_store::path::Path::parse("pre/fix/backups/j/X-F/manifest.age").unwrap();
    assert!(mem.head(&raw).await.is_ok());
    // Create-only.
    store
        .put_create("backups/j/X-F/backup.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_create("backups/j/X-F/backup.json", Bytes::from_static(b"{}"))
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let keys: Vec<String> = store
        .list("backups/j/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        keys,
        [
            "backups/j/X-F/backup.json",
            "backups/j/X-F/data/000000.age",
            "backups/j/X-F/manifest.age"
        ]
    );
    assert_eq!(store.list("backups/j/X-F/m").await.unwrap().len(), 1);
    let head = store
        .head("backups/j/X-F/manifest.age")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.size, 5);
    assert!(store.head("backups/j/none").await.unwrap().is_none());
    assert!(matches!(
        store.get("backups/j/none").await,
        Err(StoreError::NotFound { .. })
    ));
    store.delete("backups/j/X-F/manifest.age").await.unwrap();
    store.delete("backups/j/X-F/manifest.age").await.unwrap();
    assert!(
        store
            .head("backups/j/X-F/manifest.age")
            .await
            .unwrap()
            .is_none()
    );

    // An aborted multipart upload leaves nothing under the key.
    let mut w = store.writer("backups/j/X-F/data/000001.age").await.unwrap();
    for c in data.chunks(300_000) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    w.abort().await.unwrap();
    assert!(
        store
            .head("backups/j/X-F/data/000001.age")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.writer("../escape").await,
        Err(StoreError::InvalidKey { .. })
    ));
}

fn object(key: &str) -> ObjectRecord {
    ObjectRecord {
        key: key.into(),
        size: 1,
        sha256: "00".into(),
        content_size: 1,
        content_sha256: "00".into(),
        compression: "zstd".into(),
        encryption: "age".into(),
    }
}

fn record(job: &str, hour: u32) -> CommitRecord {
    let started = Utc.with_ymd_and_hms(2026, 11, 26, hour, 0, 0).unwrap();
    let id = BackupId::new(started, BackupType::Full).0;
    CommitRecord {
        format_version: FORMAT_VERSION,
        objects: vec![object(&format::data_key(job, &id, 0))],
        manifest: object(&format::manifest_key(job, &id)),
        id,
        job: job.into(),
        kind: JobKindName::PostgresDump,
        backup_type: BackupType::Full,
        ancestors: vec![],
        started_at: started,
        stopped_at: started + chrono::Duration::minutes(3),
        bytes_read: 1,
        bytes_stored: 1,
        details: Default::default(),
        software: "test".into(),
    }
}

#[tokio::test]
async fn commit_list_and_malformed_records() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(&settings_for(dir.path().join("new/repo"))).unwrap();
    assert!(dir.path().join("new/repo/.staging").is_dir());
    let (late, early, other) = (record("db", 5), record("db", 2), record("files", 3));
    for r in [&late, &early, &other] {
        repo.commit(r).await.unwrap();
    }
    let err = repo.commit(&late).await.unwrap_err();
    assert!(
        matches!(err, RepositoryError::AlreadyCommitted { .. }),
        "{err}"
    );
    assert_eq!(
        repo.commit_record("db", &early.id).await.unwrap().as_ref(),
        Some(&early)
    );
    assert_eq!(
        repo.commit_record("db", "20991231T000000Z-F")
            .await
            .unwrap(),
        None
    );

    // Damaged, foreign and future records are listed as errors, never dropped silently.
    repo.store
        .put_create(
            "backups/db/20261126T010000Z-F/backup.json",
            Bytes::from_static(b"{ not json"),
        )
        .await
        .unwrap();
    let mut moved = record("db", 7);
    moved.id = "20261126T080000Z-F".into();
    repo.store
        .put_create(
            "backups/db/20261126T070000Z-F/backup.json",
            Bytes::from(moved.to_json().unwrap()),
        )
        .await
        .unwrap();
    let mut future: serde_json::Value =
        serde_json::from_slice(&record("db", 9).to_json().unwrap()).unwrap();
    future["format-version"] = 2.into();
    repo.store
        .put_create(
            "backups/db/20261126T090000Z-F/backup.json",
            Bytes::from(serde_json::to_vec(&future).unwrap()),
        )
        .await
        .unwrap();
    // Other objects of a backup are not commit records.
    repo.store
        .put_create(
            &format::data_key("db", &late.id, 0),
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();

    let (good, bad) = repo.list_commits(None).await.unwrap();
    assert_eq!(
        good.iter()
            .map(|r| r.started_at.format("%H").to_string())
            .collect::<Vec<_>>(),
        ["02", "03", "05"]
    );
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad.iter().any(
        |e| matches!(e, RepositoryError::MalformedRecord { key, .. } if key.contains("T010000Z"))
    ));
    assert!(
        bad.iter()
            .any(|e| matches!(e, RepositoryError::MismatchedRecord { .. }))
    );
    assert!(
        bad.iter()
            .any(|e| matches!(e, RepositoryError::UnsupportedVersion { version: 2, .. }))
    );
    let (good, _) = repo.list_commits(Some("files")).await.unwrap();
    assert_eq!(good, vec![other.clone()]);
    let (good, bad) = repo.list_commits(Some("nojob")).await.unwrap();
    assert!(good.is_empty() && bad.is_empty());

    // Uncommitted leftovers, and deleting a backup (commit record first).
    repo.store
        .put_create(
            "backups/db/20261126T110000Z-F/data/000000.age",
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    let unc = repo.list_uncommitted(Some("db")).await.unwrap();
    assert_eq!(unc.len(), 1);
    assert_eq!(unc[0].1, "20261126T110000Z-F");
    assert_eq!(repo.delete_backup_objects("db", &late.id).await.unwrap(), 1);
    assert_eq!(repo.commit_record("db", &late.id).await.unwrap(), None);
}
