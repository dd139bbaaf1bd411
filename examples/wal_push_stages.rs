//! Times the stages of one WAL push on real segments (a development aid, not a test):
//! `cargo run --release --example wal_push_stages -- SEGMENT...` (16 MiB segments of one cluster).

use bdc_backup::catalogue::{Compression, CompressionSettings};
use bdc_backup::pipeline::PipelineSettings;
use bdc_backup::repository::{Repository, Store};
use bdc_backup::wal::push::{
    ensure_archive_info, read_wal_file, seal_wal_file, store_sealed, store_wal,
};
use bdc_backup::wal::{ClusterIdentity, WalName};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let dir = tempfile::tempdir().unwrap();
    let key = age::x25519::Identity::generate();
    for level in [3, 1] {
        let repo = Repository::with_store(
            "r",
            Store::local(dir.path().join(format!("repo{level}"))).unwrap(),
        );
        let settings = PipelineSettings::new(
            CompressionSettings {
                algorithm: Compression::Zstd,
                level,
                workers: 2,
            },
            vec![key.to_public()],
        );
        let (mut t_read, mut t_hash, mut t_zstd, mut t_store, mut n) = (0.0, 0.0, 0.0, 0.0, 0);
        let (mut t_seal, mut t_sealed_store) = (0.0, 0.0);
        let repo2 = Repository::with_store(
            "r2",
            Store::local(dir.path().join(format!("sealed{level}"))).unwrap(),
        );
        let mut stored = 0u64;
        for path in &files {
            let file = std::fs::File::open(path).unwrap();
            let bytes = std::fs::read(path).unwrap();
            let sysid = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
            let id = ClusterIdentity {
                system_identifier: sysid,
                pg_major: 15,
            };
            let name = WalName::parse(path.rsplit('/').next().unwrap()).unwrap();
            let t = Instant::now();
            let Ok(wal) = read_wal_file(&file, &name, &id) else {
                continue;
            };
            t_read += ms(t.elapsed());
            let t = Instant::now();
            let _ = Sha256::digest(&wal.bytes);
            t_hash += ms(t.elapsed());
            let t = Instant::now();
            for chunk in wal.bytes.chunks(2 << 20) {
                let _ = zstd::bulk::compress(chunk, level).unwrap();
            }
            t_zstd += ms(t.elapsed());
            let t = Instant::now();
            ensure_archive_info(&repo, &id, chrono::Utc::now(), Duration::from_secs(60))
                .await
                .unwrap();
            let s = store_wal(&repo, &id, &wal, &settings, Duration::from_secs(60))
                .await
                .unwrap();
            t_store += ms(t.elapsed());
            if let bdc_backup::wal::push::Stored::New(r) = s {
                stored += r.size;
            }
            let t = Instant::now();
            let sealed = seal_wal_file(&file, &name, &id, &settings).unwrap();
            t_seal += ms(t.elapsed());
            let t = Instant::now();
            ensure_archive_info(&repo2, &id, chrono::Utc::now(), Duration::from_secs(60))
                .await
                .unwrap();
            store_sealed(&repo2, &id, &sealed, Duration::from_secs(60))
                .await
                .unwrap();
            t_sealed_store += ms(t.elapsed());
            n += 1;
        }
        let n = f64::from(n);
        println!(
            "level {level}: {n} segments; per segment: read+check+sha {:.1} ms | sha256 alone {:.1} | zstd 1 thread {:.1} | archive.json+store_wal {:.1} ms | stored {:.2} MiB/seg",
            t_read / n,
            t_hash / n,
            t_zstd / n,
            t_store / n,
            stored as f64 / n / 1048576.0
        );
        println!(
            "level {level}: new path: read+check+hash||compress+encrypt {:.1} ms | archive.json+list+write+fsync {:.1} ms | total {:.1} ms (old: {:.1} ms)",
            t_seal / n,
            t_sealed_store / n,
            (t_seal + t_sealed_store) / n,
            (t_read + t_store) / n
        );
    }
}
