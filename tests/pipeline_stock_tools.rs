//! Objects written by the pipeline restore with stock tools alone (docs/design.md §4):
//! `age -d -i KEY OBJECT | zstd -d` (and `| gzip -d` for gzip objects). Fails, never skips,
//! when `age` or `zstd` is missing.

use bdc_backup::catalogue::{
    Compression, CompressionSettings, RepositoryLocation, RepositorySettings, WalAck,
};
use bdc_backup::pipeline::{
    Identities, PipelineSettings, ProgressCounter, load_bytes, store_stream,
};
use bdc_backup::repository::{Repository, format};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1 << 20;

/// Semi-compressible data that looks a little like a pgbench dump.
fn pgbench_like(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut aid = 1u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let line = format!(
            "{aid}\t{}\t{}\t{:016x}\n",
            aid / 100_000 + 1,
            (x % 2_000_000) as i64 - 1_000_000,
            x
        );
        out.extend_from_slice(line.as_bytes());
        aid += 1;
    }
    out.truncate(len);
    out
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed (needed to prove stock-tool restores); install it, this test does not skip"
    );
}

/// `age -d -i key object | <decompressor> -d`, returning the output.
fn stock_restore(key_file: &Path, object: &Path, decompressor: &str) -> Vec<u8> {
    let mut age = Command::new(tool("age"))
        .arg("-d")
        .arg("-i")
        .arg(key_file)
        .arg(object)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run age");
    let age_out = age.stdout.take().expect("age stdout");
    let out = Command::new(tool(decompressor))
        .arg("-d")
        .stdin(age_out)
        .output()
        .expect("run decompressor");
    let age_status = age.wait().expect("wait age");
    assert!(age_status.success(), "age -d failed: {age_status}");
    assert!(
        out.status.success(),
        "{decompressor} -d failed: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_age_and_zstd_or_gzip_restore_our_objects() {
    // Fail early and clearly if the tools are missing.
    tool("age");
    tool("zstd");
    tool("gzip");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = Repository::open(&RepositorySettings {
        name: "local".into(),
        url: format!("file://{}", root.display()),
        location: RepositoryLocation::File { path: root.clone() },
        wal_ack: WalAck::Sync,
        region: None,
        endpoint: None,
        credentials_file: None,
        bandwidth_limit: None,
        call_timeout: None,
    })
    .unwrap();

    let identity = age::x25519::Identity::generate();
    let key_file = dir.path().join("restore.key");
    std::fs::write(
        &key_file,
        format!(
            "# public key: {}\n{}\n",
            identity.to_public(),
            age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let identities = Identities::load(&key_file).unwrap();

    let input = pgbench_like(9 * MIB + 12_345);
    for (algorithm, level, decompressor, n) in [
        (Compression::Zstd, 3, "zstd", 0),
        (Compression::Gzip, 6, "gzip", 1),
    ] {
        let settings = PipelineSettings {
            compression: CompressionSettings {
                algorithm,
                level,
                workers: 2,
            },
            recipients: vec![identity.to_public()],
            frame_size: MIB,
        };
        let key = format::data_key("db-dump", "20261126T020000Z-F", n);
        let progress = ProgressCounter::default();
        let record = store_stream(
            &repo.store,
            &key,
            &input[..],
            &settings,
            &progress,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(
            record.size < input.len() as u64,
            "{decompressor}: data should compress"
        );
        assert_eq!(progress.read(), input.len() as u64);

        let restored = stock_restore(&key_file, &root.join(&key), decompressor);
        assert!(
            restored == input,
            "{decompressor}: stock restore differs ({} vs {} bytes)",
            restored.len(),
            input.len()
        );
        if algorithm == Compression::Zstd {
            // Multi-frame: age alone yields 10 concatenated independent zstd frames.
            let out = Command::new(tool("age"))
                .arg("-d")
                .arg("-i")
                .arg(&key_file)
                .arg(root.join(&key))
                .output()
                .unwrap();
            assert!(out.status.success());
            let frames = bdc_backup::pipeline::compress::zstd_frame_sizes(&out.stdout).unwrap();
            assert_eq!(frames.len(), 10);
        }
        // And our own reader agrees.
        assert!(load_bytes(&repo.store, &record, &identities).await.unwrap() == input[..]);
    }

    // An empty source is still a valid age file holding a valid (empty) zstd stream.
    let settings = PipelineSettings {
        compression: CompressionSettings {
            algorithm: Compression::Zstd,
            level: 3,
            workers: 2,
        },
        recipients: vec![identity.to_public()],
        frame_size: MIB,
    };
    let key = format::data_key("db-dump", "20261126T020000Z-F", 2);
    store_stream(
        &repo.store,
        &key,
        &b""[..],
        &settings,
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(stock_restore(&key_file, &root.join(&key), "zstd").is_empty());
}

/// Set in the child process of [`store_stream_memory_is_bounded`].
const MEMORY_CHILD: &str = "BDC_BACKUP_TEST_MEMORY_CHILD";
/// Streamed by the child: far more than [`PEAK_RSS_LIMIT_MIB`].
const MEMORY_STREAM_MIB: usize = 512;
/// The child's whole peak RSS (binary, runtime, 2 MiB frames in flight, the 8 MiB source
/// block): generous, yet a quarter of the stream.
const PEAK_RSS_LIMIT_MIB: u64 = 128;

/// `store_stream` then `open_stream` of 512 MiB keep the process under 128 MiB of peak RSS. Measured
/// in a child process (this test binary re-run for this test alone), so other tests' memory does
/// not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_stream_memory_is_bounded() {
    if std::env::var_os(MEMORY_CHILD).is_some() {
        let dir = tempfile::tempdir().unwrap();
        let store = bdc_backup::repository::Store::local(dir.path().join("repo")).unwrap();
        let identity = age::x25519::Identity::generate();
        let block = bytes::Bytes::from(pgbench_like(8 * MIB));
        let total = MEMORY_STREAM_MIB / 8;
        let source = tokio_util::io::StreamReader::new(futures::stream::iter(
            std::iter::repeat_n(block, total).map(Ok::<_, std::io::Error>),
        ));
        let settings = PipelineSettings {
            compression: CompressionSettings {
                algorithm: Compression::Zstd,
                level: 3,
                workers: 2,
            },
            recipients: vec![identity.to_public()],
            frame_size: bdc_backup::pipeline::DEFAULT_FRAME_SIZE,
        };
        let rec = store_stream(
            &store,
            "bench/obj.age",
            source,
            &settings,
            &ProgressCounter::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(rec.content_size, (MEMORY_STREAM_MIB * MIB) as u64);
        let ids = Identities::from_keys(vec![identity]);
        let mut reader = bdc_backup::pipeline::open_stream(&store, &rec, &ids)
            .await
            .unwrap();
        let read = tokio::io::copy(&mut reader, &mut tokio::io::sink())
            .await
            .unwrap();
        assert_eq!(read, rec.content_size);
        println!("peak-rss-kib: {}", peak_rss_kib());
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store_stream_memory_is_bounded", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(MEMORY_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak_kib: u64 = stdout
        .split("peak-rss-kib: ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from the child: {stdout}"));
    assert!(peak_kib > 0, "VmHWM unreadable");
    assert!(
        peak_kib / 1024 < PEAK_RSS_LIMIT_MIB,
        "memory is not bounded: peak RSS {} MiB while streaming {MEMORY_STREAM_MIB} MiB \
         (limit {PEAK_RSS_LIMIT_MIB} MiB)",
        peak_kib / 1024
    );
}

/// Throughput of `store_stream` (zstd level 3, 2 MiB frames, workers = 2) on 512 MiB of
/// pgbench-like data; prints the figures (the memory bound is [`store_stream_memory_is_bounded`]):
/// `tests/bench-pipeline`, or `cargo test --test pipeline_stock_tools -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check: tests/bench-pipeline"]
async fn throughput_store_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = bdc_backup::repository::Store::local(dir.path().join("repo")).unwrap();
    let identity = age::x25519::Identity::generate();
    let block = bytes::Bytes::from(pgbench_like(8 * MIB));
    let total = 64;
    let source = tokio_util::io::StreamReader::new(futures::stream::iter(
        std::iter::repeat_n(block, total).map(Ok::<_, std::io::Error>),
    ));
    let settings = PipelineSettings {
        compression: CompressionSettings {
            algorithm: Compression::Zstd,
            level: 3,
            workers: std::env::var("BENCH_WORKERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        },
        recipients: vec![identity.to_public()],
        frame_size: bdc_backup::pipeline::DEFAULT_FRAME_SIZE,
    };
    let start = std::time::Instant::now();
    let rec = store_stream(
        &store,
        "bench/obj.age",
        source,
        &settings,
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let mib = (total * 8) as f64;
    println!(
        "store_stream: {mib} MiB in {secs:.2} s = {:.0} MiB/s (stored {:.1} MiB, ratio {:.2})",
        mib / secs,
        rec.size as f64 / MIB as f64,
        rec.content_size as f64 / rec.size as f64
    );
    // Read it back through open_stream (hash check, age, zstd) and time that too.
    let ids = Identities::from_keys(vec![identity]);
    let start = std::time::Instant::now();
    let mut reader = bdc_backup::pipeline::open_stream(&store, &rec, &ids)
        .await
        .unwrap();
    let mut buf = vec![0u8; MIB];
    let mut total_read = 0u64;
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut reader, &mut buf)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        total_read += n as u64;
    }
    assert_eq!(total_read, rec.content_size);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "open_stream: {mib} MiB in {secs:.2} s = {:.0} MiB/s",
        mib / secs
    );
    println!(
        "peak RSS of this process: {} MiB while streaming {mib} MiB",
        peak_rss_kib() / 1024
    );
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
