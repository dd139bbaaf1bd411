//! Cloud repositories against real servers started here (docs/design.md §11): moto (S3) and Azurite
//! (Azure Blob). The round trip of the local store (store_stream → commit → list_commits →
//! open_stream → commit twice → delete), and the faults: wrong credentials, a missing bucket, the
//! server killed or cut off mid-upload (transient error, upload aborted, nothing left behind), an
//! unreachable endpoint (bounded time), the bandwidth limit. GCS has no emulator here: its
//! `Repository::open` is covered by the library's unit tests (construction only).

mod common;

use bdc_backup::catalogue::{
    Compression, CompressionSettings, RepositoryLocation, RepositorySettings, WalAck,
};
use bdc_backup::error::{Classify, Retry};
use bdc_backup::model::{BackupType, JobKindName};
use bdc_backup::pipeline::{Identities, PipelineSettings, ProgressCounter};
use bdc_backup::repository::cloud::CloudOptions;
use bdc_backup::repository::{
    BackupId, CommitRecord, FORMAT_VERSION, Repository, RepositoryError, StoreError, format,
};
use bytes::Bytes;
use chrono::Utc;
use common::objstores::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Moto, Proxy, credentials_file};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

/// Incompressible bytes (xorshift), so the stored object is as large as the content.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Small parts and short bounds for tests (S3's minimum part is 5 MiB).
fn test_options() -> CloudOptions {
    CloudOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(20),
        max_retries: 3,
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        call_timeout: Duration::from_secs(30),
        part_size: 5 * MIB,
        max_concurrency: 4,
    }
}

fn s3_settings(name: &str, bucket: &str, endpoint: &str, creds: &Path) -> RepositorySettings {
    RepositorySettings {
        name: name.into(),
        url: format!("s3://{bucket}/prod"),
        location: RepositoryLocation::S3 {
            bucket: bucket.into(),
            prefix: "prod".into(),
        },
        wal_ack: WalAck::Sync,
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.into()),
        credentials_file: Some(creds.to_path_buf()),
        bandwidth_limit: None,
        call_timeout: None,
    }
}

fn s3_creds(dir: &Path) -> std::path::PathBuf {
    credentials_file(
        dir,
        "s3.env",
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    )
}

fn az_settings(name: &str, container: &str, endpoint: &str, creds: &Path) -> RepositorySettings {
    RepositorySettings {
        name: name.into(),
        url: format!("az://{container}/prod"),
        location: RepositoryLocation::Azure {
            container: container.into(),
            prefix: "prod".into(),
        },
        wal_ack: WalAck::Sync,
        region: None,
        endpoint: Some(endpoint.into()),
        credentials_file: Some(creds.to_path_buf()),
        bandwidth_limit: None,
        call_timeout: None,
    }
}

struct Keys {
    identity: age::x25519::Identity,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            identity: age::x25519::Identity::generate(),
        }
    }
    fn settings(&self) -> PipelineSettings {
        PipelineSettings::new(
            CompressionSettings {
                algorithm: Compression::Zstd,
                level: 1,
                workers: 2,
            },
            vec![self.identity.to_public()],
        )
    }
    fn identities(&self) -> Identities {
        Identities::from_keys(vec![self.identity.clone()])
    }
}

/// The local store's round trip, on a cloud repository. Returns the data object's key.
async fn round_trip(repo: &Repository, content_len: usize) -> String {
    let keys = Keys::new();
    let settings = keys.settings();
    let job = "db-dump";
    let started = Utc::now();
    let id = BackupId::new(started, BackupType::Full).0;
    let data = noise(content_len, 7);
    let data_key = format::data_key(job, &id, 0);
    let rec = bdc_backup::pipeline::store_stream(
        &repo.store,
        &data_key,
        std::io::Cursor::new(data.clone()),
        &settings,
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(
        rec.size as usize > 2 * 5 * MIB,
        "more than two parts: {}",
        rec.size
    );
    let manifest = bdc_backup::pipeline::store_bytes(
        &repo.store,
        &format::manifest_key(job, &id),
        Bytes::from_static(b"manifest"),
        &settings,
    )
    .await
    .unwrap();
    let record = CommitRecord {
        format_version: FORMAT_VERSION,
        id: id.clone(),
        job: job.into(),
        kind: JobKindName::PostgresDump,
        backup_type: BackupType::Full,
        ancestors: vec![],
        started_at: started,
        stopped_at: Utc::now(),
        bytes_read: rec.content_size,
        bytes_stored: rec.size + manifest.size,
        objects: vec![rec.clone()],
        manifest,
        details: Default::default(),
        software: "test".into(),
    };
    // Not committed yet: invisible to readers.
    assert!(repo.list_commits(Some(job)).await.unwrap().0.is_empty());
    repo.commit(&record).await.unwrap();
    let (good, bad) = repo.list_commits(Some(job)).await.unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(good.len(), 1);
    assert_eq!(good[0].id, id);
    assert_eq!(good[0].objects[0], rec);

    let mut reader =
        bdc_backup::pipeline::open_stream(&repo.store, &good[0].objects[0], &keys.identities())
            .await
            .unwrap();
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut back)
        .await
        .unwrap();
    assert!(back == data, "restored bytes differ");

    let again = repo.commit(&record).await.unwrap_err();
    assert!(
        matches!(again, RepositoryError::AlreadyCommitted { .. }),
        "{again}"
    );
    let n = repo.delete_backup_objects(job, &id).await.unwrap();
    assert_eq!(n, 2, "data + manifest deleted after the commit record");
    assert!(repo.list_commits(Some(job)).await.unwrap().0.is_empty());
    assert!(repo.store.list("backups/").await.unwrap().is_empty());
    data_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_round_trip_on_moto() {
    let moto = Moto::start();
    moto.create_bucket("bdc-test");
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open_cloud(
        &s3_settings(
            "offsite",
            "bdc-test",
            &moto.endpoint(),
            &s3_creds(dir.path()),
        ),
        test_options(),
    )
    .unwrap();

    // A multipart object first, to see the parts at the server.
    let mut w = repo.store.writer("probe/multi").await.unwrap();
    for c in noise(12 * MIB, 3).chunks(256 * 1024) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap(), 12 * MIB as u64);
    let etag = moto.etag("bdc-test", "prod/probe/multi");
    assert!(etag.ends_with("-3\""), "three parts: {etag}");
    repo.store.delete("probe/multi").await.unwrap();

    round_trip(&repo, 12 * MIB).await;
    assert!(moto.multipart_uploads("bdc-test").is_empty());
    assert!(
        moto.keys("bdc-test").is_empty(),
        "{:?}",
        moto.keys("bdc-test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_round_trip_on_azurite() {
    let azurite = Azurite::start();
    azurite.create_container("bdc-test");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(
        dir.path(),
        "az.env",
        &[
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY),
        ],
    );
    let repo = Repository::open_cloud(
        &az_settings("azure", "bdc-test", &azurite.endpoint(), &creds),
        test_options(),
    )
    .unwrap();
    round_trip(&repo, 12 * MIB).await;
    assert!(
        azurite.keys("bdc-test").is_empty(),
        "{:?}",
        azurite.keys("bdc-test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_credentials_are_a_permanent_error() {
    // IAM mode: moto refuses access keys it did not issue.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(
        dir.path(),
        "s3.env",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1"),
            ("AWS_SECRET_ACCESS_KEY", "wrong-secret-value"),
        ],
    );
    let repo = Repository::open_cloud(
        &s3_settings("offsite", "bdc-test", &moto.endpoint(), &creds),
        test_options(),
    )
    .unwrap();
    let err = repo.list_commits(None).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.retry(), Retry::Permanent, "{text}");
    assert!(
        text.contains("offsite")
            && text.contains("credentials refused")
            && text.contains("permanent"),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-value"), "{text}");
    let err = repo
        .store
        .put_create("backups/x/y/backup.json", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert_eq!(err.retry(), Retry::Permanent, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_wrong_account_key_is_a_permanent_error() {
    let azurite = Azurite::start();
    azurite.create_container("bdc-test");
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(
        dir.path(),
        "az.env",
        &[
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
            // Valid base64, wrong key.
            (
                "AZURE_STORAGE_ACCOUNT_KEY",
                "d3JvbmctYWNjb3VudC1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==",
            ),
        ],
    );
    let repo = Repository::open_cloud(
        &az_settings("azure", "bdc-test", &azurite.endpoint(), &creds),
        test_options(),
    )
    .unwrap();
    let err = repo.list_commits(None).await.unwrap_err();
    let text = err.to_string();
    assert_eq!(err.retry(), Retry::Permanent, "{text}");
    assert!(
        text.contains("azure") && text.contains("permanent"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named_with_the_repository() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open_cloud(
        &s3_settings(
            "offsite",
            "no-such-bucket",
            &moto.endpoint(),
            &s3_creds(dir.path()),
        ),
        test_options(),
    )
    .unwrap();
    let err = repo.list_commits(None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("repository `offsite`")
            && text.contains("bucket `no-such-bucket` does not exist"),
        "{text}"
    );
    assert_eq!(err.retry(), Retry::Permanent);

    // A backup into it: the same clear error, from the upload.
    let keys = Keys::new();
    let err = bdc_backup::pipeline::store_stream(
        &repo.store,
        "backups/j/X-F/data/000000.age",
        std::io::Cursor::new(noise(MIB, 1)),
        &keys.settings(),
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("bucket `no-such-bucket` does not exist"),
        "{err}"
    );
    assert_eq!(err.retry(), Retry::Permanent);
}

/// Feeds `store_stream` through a pipe: `before` bytes, then waits for `go`, then `after` bytes.
async fn upload_with_pause(
    repo: &Repository,
    key: &str,
    before: usize,
    after: usize,
    progress: ProgressCounter,
    go: tokio::sync::oneshot::Receiver<()>,
) -> Result<bdc_backup::repository::ObjectRecord, bdc_backup::pipeline::PipelineError> {
    let (mut tx, rx) = tokio::io::duplex(MIB);
    let feeder = tokio::spawn(async move {
        let _ = tx.write_all(&noise(before, 11)).await;
        let _ = go.await;
        let _ = tx.write_all(&noise(after, 12)).await;
    });
    let settings = Keys::new().settings();
    let r = bdc_backup::pipeline::store_stream(
        &repo.store,
        key,
        rx,
        &settings,
        &progress,
        &CancellationToken::new(),
    )
    .await;
    feeder.abort();
    r
}

async fn wait_stored(progress: &ProgressCounter, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.stored() < bytes {
        assert!(
            Instant::now() < deadline,
            "upload did not progress: {}",
            progress.stored()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_killed_mid_upload_is_a_transient_error() {
    let mut moto = Moto::start();
    moto.create_bucket("bdc-test");
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open_cloud(
        &s3_settings(
            "offsite",
            "bdc-test",
            &moto.endpoint(),
            &s3_creds(dir.path()),
        ),
        test_options(),
    )
    .unwrap();
    let key = "backups/j/20261126T020000Z-F/data/000000.age";
    let progress = ProgressCounter::default();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let upload = upload_with_pause(&repo, key, 7 * MIB, 8 * MIB, progress.clone(), go_rx);
    let killer = async {
        // The first part is on its way (a multipart upload exists), then the server dies.
        wait_stored(&progress, 6 * MIB as u64).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        moto.kill_now();
        let _ = go_tx.send(());
        Instant::now()
    };
    let (result, killed_at) = tokio::join!(upload, killer);
    let err = result.unwrap_err();
    let took = killed_at.elapsed();
    assert_eq!(err.retry(), Retry::Transient, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(key) && text.contains("s3://bdc-test/prod"),
        "{text}"
    );
    // Bounded: object_store's retries (3 s) + our abort attempts (15 s) + margin.
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_connection_lost_mid_upload_aborts_the_multipart_upload() {
    let moto = Moto::start();
    moto.create_bucket("bdc-test");
    let proxy = Proxy::start(moto.port());
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open_cloud(
        &s3_settings(
            "offsite",
            "bdc-test",
            &proxy.endpoint(),
            &s3_creds(dir.path()),
        ),
        test_options(),
    )
    .unwrap();
    let key = "backups/j/20261126T020000Z-F/data/000000.age";
    let progress = ProgressCounter::default();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let upload = upload_with_pause(&repo, key, 7 * MIB, 8 * MIB, progress.clone(), go_rx);
    let fault = async {
        wait_stored(&progress, 6 * MIB as u64).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            moto.multipart_uploads("bdc-test").len(),
            1,
            "a multipart upload is open"
        );
        // The store goes away for longer than the request retries last (3 s)…
        proxy.cut();
        let _ = go_tx.send(());
        tokio::time::sleep(Duration::from_secs(5)).await;
        // …and comes back while the abort is still retrying (in the background: the failed
        // upload has returned by now).
        proxy.restore();
    };
    let (result, ()) = tokio::join!(upload, fault);
    let err = result.unwrap_err();
    assert_eq!(err.retry(), Retry::Transient, "{err}");
    assert!(err.to_string().contains(key), "{err}");
    let until = Instant::now() + Duration::from_secs(10);
    while !moto.multipart_uploads("bdc-test").is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        moto.multipart_uploads("bdc-test").is_empty(),
        "orphan multipart upload: {:?}\n{}",
        moto.multipart_uploads("bdc-test"),
        moto.log()
    );
    assert!(
        moto.keys("bdc-test").is_empty(),
        "{:?}",
        moto.keys("bdc-test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_unfinished_writer_aborts_at_the_store() {
    let moto = Moto::start();
    moto.create_bucket("bdc-test");
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open_cloud(
        &s3_settings(
            "offsite",
            "bdc-test",
            &moto.endpoint(),
            &s3_creds(dir.path()),
        ),
        test_options(),
    )
    .unwrap();
    let mut w = repo
        .store
        .writer("backups/j/X-F/data/000000.age")
        .await
        .unwrap();
    for c in noise(11 * MIB, 5).chunks(MIB) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert_eq!(moto.multipart_uploads("bdc-test").len(), 1);
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !moto.multipart_uploads("bdc-test").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the dropped upload was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(moto.keys("bdc-test").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_times_out_within_the_bound() {
    // A server that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let options = CloudOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_retries: 2,
        call_timeout: Duration::from_secs(4),
        ..test_options()
    };
    let repo = Repository::open_cloud(
        &s3_settings("offsite", "bdc-test", &endpoint, &s3_creds(dir.path())),
        options.clone(),
    )
    .unwrap();
    let start = Instant::now();
    let err = repo.list_commits(None).await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.retry(), Retry::Transient, "{err}");
    assert!(took <= Duration::from_secs(5), "took {took:?}: {err}");
    let text = err.to_string();
    assert!(
        text.contains("offsite") && text.contains("s3://bdc-test/prod"),
        "{text}"
    );

    // The commit record (a small PUT) is bounded the same way.
    let start = Instant::now();
    let err = repo
        .store
        .put_create("backups/j/X-F/backup.json", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert_eq!(err.retry(), Retry::Transient, "{err}");
    assert!(
        start.elapsed() <= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // A closed port: connection refused, retried, then a transient error.
    let closed = common::objstores::free_port();
    let repo = Repository::open_cloud(
        &s3_settings(
            "offsite",
            "bdc-test",
            &format!("http://127.0.0.1:{closed}"),
            &s3_creds(dir.path()),
        ),
        options,
    )
    .unwrap();
    let start = Instant::now();
    let err = repo.store.get("backups/x").await.unwrap_err();
    assert_eq!(err.retry(), Retry::Transient, "{err}");
    assert!(
        matches!(err, StoreError::Remote { .. } | StoreError::TimedOut { .. }),
        "{err:?}"
    );
    assert!(
        start.elapsed() <= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_limit_slows_uploads() {
    let moto = Moto::start();
    moto.create_bucket("bdc-test");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = s3_settings(
        "offsite",
        "bdc-test",
        &moto.endpoint(),
        &s3_creds(dir.path()),
    );
    settings.bandwidth_limit = Some(4 * MIB as u64);
    let repo = Repository::open_cloud(&settings, test_options()).unwrap();
    // Time the writes only (parts upload in the background, at most 4 at once, so an unlimited
    // writer never waits here for 12 MiB): 12 MiB at 4 MiB/s with a 1 s burst takes ≥ 2 s.
    let data = noise(12 * MIB, 9);
    let mut w = repo.store.writer("limited").await.unwrap();
    let start = Instant::now();
    for c in data.chunks(256 * 1024) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    let limited = start.elapsed();
    w.finish().await.unwrap();
    assert!(limited >= Duration::from_millis(1900), "took {limited:?}");

    // WAL pushes are not limited.
    let mut w = repo.store.writer_unlimited("unlimited").await.unwrap();
    let start = Instant::now();
    for c in data.chunks(256 * 1024) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    let unlimited = start.elapsed();
    w.finish().await.unwrap();
    assert!(
        unlimited < Duration::from_millis(1000),
        "{unlimited:?} vs {limited:?}"
    );
    assert_eq!(moto.keys("bdc-test"), ["prod/limited", "prod/unlimited"]);
}

/// The upload half of tests/bench-upload: `BENCH_FILE` through `Store` to `BENCH_ENDPOINT`
/// (bucket `BENCH_BUCKET`), printing MiB/s. Run by the script, not by the suite.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn bench_upload() {
    let file = std::env::var("BENCH_FILE").expect("BENCH_FILE");
    let endpoint = std::env::var("BENCH_ENDPOINT").expect("BENCH_ENDPOINT");
    let bucket = std::env::var("BENCH_BUCKET").expect("BENCH_BUCKET");
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(&s3_settings(
        "bench",
        &bucket,
        &endpoint,
        &s3_creds(dir.path()),
    ))
    .unwrap();
    let mut f = tokio::fs::File::open(&file).await.unwrap();
    let size = f.metadata().await.unwrap().len();
    let start = Instant::now();
    let mut w = repo.store.writer("bench/object").await.unwrap();
    loop {
        let mut buf = bytes::BytesMut::with_capacity(MIB);
        let n = tokio::io::AsyncReadExt::read_buf(&mut f, &mut buf)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        w.write(buf.freeze()).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap(), size);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "BENCH store-upload bytes={size} seconds={secs:.3} mib_per_s={:.1}",
        size as f64 / MIB as f64 / secs
    );
    repo.store.delete("bench/object").await.unwrap();
}

/// A server that answers every request with `status` and counts the requests.
fn canned_server(status: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                // Read the request head (no bodies in these tests), answer, close.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = "<Error><Code>Test</Code></Error>";
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (endpoint, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_transient_client_errors_are_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let options = CloudOptions {
        max_retries: 3,
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
        ..test_options()
    };

    let (endpoint, count) = canned_server("503 Service Unavailable");
    let repo = Repository::open_cloud(
        &s3_settings("offsite", "bdc-test", &endpoint, &s3_creds(dir.path())),
        options.clone(),
    )
    .unwrap();
    let err = repo.store.get("backups/x").await.unwrap_err();
    assert_eq!(err.retry(), Retry::Transient, "{err}");
    assert!(
        err.to_string().contains("server error (transient)"),
        "{err}"
    );
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "1 try + 3 retries"
    );

    let (endpoint, count) = canned_server("400 Bad Request");
    let repo = Repository::open_cloud(
        &s3_settings("offsite", "bdc-test", &endpoint, &s3_creds(dir.path())),
        options,
    )
    .unwrap();
    let err = repo.store.get("backups/x").await.unwrap_err();
    assert_eq!(err.retry(), Retry::Permanent, "{err}");
    assert!(
        err.to_string().contains("request rejected (permanent)"),
        "{err}"
    );
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no retry"
    );
}
