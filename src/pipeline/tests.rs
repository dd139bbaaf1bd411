//! Unit tests of the pipeline: round trips, framing, damage, identities, cancellation.

use super::*;
use crate::repository::local::LocalStore;

pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub identity: age::x25519::Identity,
}

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Local(LocalStore::open(dir.path().join("repo")).unwrap());
    Fixture {
        dir,
        store,
        identity: age::x25519::Identity::generate(),
    }
}

fn settings(
    f: &Fixture,
    algorithm: Compression,
    frame_size: usize,
    workers: usize,
) -> PipelineSettings {
    let level = if algorithm == Compression::Zstd { 3 } else { 6 };
    PipelineSettings {
        compression: CompressionSettings {
            algorithm,
            level,
            workers,
        },
        recipients: vec![f.identity.to_public()],
        frame_size,
    }
}

/// Semi-compressible, deterministic data.
pub(crate) fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|i| {
            if i % 3 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 0xff) as u8
            } else {
                b"pgbench_accounts "[i % 17]
            }
        })
        .collect()
}

fn ids(f: &Fixture) -> Identities {
    Identities::from_keys(vec![f.identity.clone()])
}

async fn read_all(f: &Fixture, rec: &ObjectRecord) -> io::Result<Vec<u8>> {
    let mut r = open_stream(&f.store, rec, &ids(f))
        .await
        .map_err(|e| e.into_io())?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

fn staging_entries(f: &Fixture) -> usize {
    std::fs::read_dir(f.dir.path().join("repo/.staging"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn round_trip_sizes_zstd_and_gzip() {
    let f = fixture();
    let fs = 64 * 1024;
    for algorithm in [Compression::Zstd, Compression::Gzip] {
        for len in [0, 1, fs - 1, fs, fs * 7 / 2] {
            let input = data(len);
            let key = format!("t/{algorithm:?}-{len}.age");
            let progress = ProgressCounter::default();
            let rec = store_stream(
                &f.store,
                &key,
                &input[..],
                &settings(&f, algorithm, fs, 2),
                &progress,
                &CancellationToken::new(),
            )
            .await
            .unwrap();
            assert_eq!(rec.key, key);
            assert_eq!(rec.content_size, len as u64);
            assert_eq!(rec.content_sha256, hex::encode(Sha256::digest(&input)));
            assert_eq!(rec.encryption, "age");
            assert_eq!(
                rec.compression,
                if algorithm == Compression::Zstd {
                    "zstd"
                } else {
                    "gzip"
                }
            );
            let stored = f.store.get(&key).await.unwrap();
            assert_eq!(rec.size, stored.len() as u64);
            assert_eq!(rec.sha256, hex::encode(Sha256::digest(&stored)));
            assert_eq!(progress.read(), len as u64);
            assert_eq!(progress.stored(), rec.size);
            assert_eq!(
                read_all(&f, &rec).await.unwrap(),
                input,
                "{algorithm:?} {len}"
            );
            assert_eq!(load_bytes(&f.store, &rec, &ids(&f)).await.unwrap(), input);
        }
    }
    assert_eq!(staging_entries(&f), 0);
}
