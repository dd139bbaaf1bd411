//! Unit tests of the pipeline: round trips, framing, damage, identities, cancellation.

use super::*;
use crate::error::Retry;
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

/// Error paths must end, not hang: a regression fails the test after a minute.
async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), fut)
        .await
        .expect("the pipeline hung")
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

/// Decrypts a stored object with age alone (no decompression): the compressed stream.
fn decrypt_only(f: &Fixture, key: &str) -> Vec<u8> {
    let stored = std::fs::read(f.dir.path().join("repo").join(key)).unwrap();
    let dec = age::Decryptor::new_buffered(&stored[..]).unwrap();
    let mut r = dec
        .decrypt(std::iter::once(&f.identity as &dyn age::Identity))
        .unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut out).unwrap();
    out
}

#[tokio::test]
async fn zstd_frames_are_independent() {
    let f = fixture();
    let fs = 100_000;
    let input = data(fs * 7 / 2);
    let stored = store_frames(
        &f.store,
        "t/frames.age",
        compress::fixed_frames(&input[..], fs),
        &settings(&f, Compression::Zstd, fs, 3),
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(stored.frames.len(), 4);
    let compressed = decrypt_only(&f, "t/frames.age");
    // The frame table matches what zstd itself finds in the stream.
    let sizes = compress::zstd_frame_sizes(&compressed).unwrap();
    assert_eq!(
        sizes,
        stored
            .frames
            .iter()
            .map(|fr| fr.compressed_len as usize)
            .collect::<Vec<_>>()
    );
    // Each frame decompresses alone to its slice of the input (frame k at k × frame_size).
    for (k, fr) in stored.frames.iter().enumerate() {
        assert_eq!(fr.content_offset, (k * fs) as u64);
        let c = &compressed
            [fr.compressed_offset as usize..(fr.compressed_offset + fr.compressed_len) as usize];
        let plain = zstd::decode_all(c).unwrap();
        let end = ((k + 1) * fs).min(input.len());
        assert_eq!(plain, &input[k * fs..end], "frame {k}");
    }
    // And all of them are one valid zstd stream.
    assert_eq!(zstd::decode_all(&compressed[..]).unwrap(), input);
}

#[tokio::test]
async fn damaged_truncated_and_extended_objects_are_errors_naming_the_key() {
    let f = fixture();
    let fs = 64 * 1024;
    let input = data(fs * 3);
    for algorithm in [Compression::Zstd, Compression::Gzip] {
        let key = format!("t/damage-{algorithm:?}.age");
        let path = f.dir.path().join("repo").join(&key);
        let rec = store_stream(
            &f.store,
            &key,
            &input[..],
            &settings(&f, algorithm, fs, 2),
            &ProgressCounter::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("flip in the middle", {
                let mut d = good.clone();
                let mid = d.len() / 2;
                d[mid] ^= 0x40;
                d
            }),
            ("flip the last byte", {
                let mut d = good.clone();
                let last = d.len() - 1;
                d[last] ^= 1;
                d
            }),
            ("flip in the header", {
                let mut d = good.clone();
                d[40] ^= 1;
                d
            }),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("truncated to nothing", Vec::new()),
            ("extended", {
                let mut d = good.clone();
                d.extend_from_slice(b"junk");
                d
            }),
        ];
        for (what, bytes) in cases {
            std::fs::write(&path, &bytes).unwrap();
            let err = match read_all(&f, &rec).await {
                Ok(_) => panic!("{algorithm:?} {what}: read succeeded"),
                Err(e) => e,
            };
            if what == "flip in the header" && err.kind() == io::ErrorKind::PermissionDenied {
                // A damaged recipient stanza looks like a wrong identity to age; the message says so.
                assert!(err.to_string().contains("header is damaged"), "{err}");
            } else {
                assert_eq!(
                    err.kind(),
                    io::ErrorKind::InvalidData,
                    "{algorithm:?} {what}: {err}"
                );
            }
            assert!(
                err.to_string().contains(&key),
                "{algorithm:?} {what}: {err}"
            );
            let err = load_bytes(&f.store, &rec, &ids(&f)).await.unwrap_err();
            assert!(err.to_string().contains(&key), "{what}: {err}");
        }
        std::fs::write(&path, &good).unwrap();
        assert_eq!(read_all(&f, &rec).await.unwrap(), input);
    }
}

#[tokio::test]
async fn wrong_identity_names_the_identity_file() {
    let f = fixture();
    let rec = store_bytes(
        &f.store,
        "t/m.age",
        Bytes::from(data(1000)),
        &settings(&f, Compression::Zstd, 4096, 1),
    )
    .await
    .unwrap();
    let other = age::x25519::Identity::generate();
    let keyfile = f.dir.path().join("other.key");
    std::fs::write(
        &keyfile,
        format!(
            "# created: today\n# public key: {}\n\n{}\n",
            other.to_public(),
            age::secrecy::ExposeSecret::expose_secret(&other.to_string())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = Identities::load(&keyfile).unwrap();
    assert_eq!(wrong.keys.len(), 1);
    let err = match open_stream(&f.store, &rec, &wrong).await {
        Ok(_) => panic!("opened with the wrong identity"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("no identity in") && err.contains("other.key") && err.contains("t/m.age"),
        "{err}"
    );
    let err = load_bytes(&f.store, &rec, &wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("matches this object's recipients"), "{err}");
}

#[tokio::test]
async fn identity_file_rules() {
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_string();
    let path = dir.path().join("restore.key");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Identities::load(&path).expect_err("0644 must be refused");
    assert!(
        matches!(err, IdentityError::TooOpen { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        Identities::load(&path),
        Err(IdentityError::TooOpen { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ids = Identities::load(&path).unwrap();
    assert_eq!(ids.keys[0].to_public(), id.to_public());
    assert_eq!(ids.file.as_deref(), Some(path.as_path()));
    // Garbage and empty files are clear errors.
    std::fs::write(&path, "# only a comment\n\n").unwrap();
    let err = Identities::load(&path).err().unwrap().to_string();
    assert!(err.contains("no identities"), "{err}");
    std::fs::write(&path, "ssh-ed25519 AAAA\n").unwrap();
    let err = Identities::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("line 1") && err.contains("AGE-SECRET-KEY-1"),
        "{err}"
    );
    std::fs::write(&path, "AGE-SECRET-KEY-1NOTVALID\n").unwrap();
    assert!(matches!(
        Identities::load(&path),
        Err(IdentityError::Invalid { .. })
    ));
    let missing = Identities::load(&dir.path().join("nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("nope"), "{missing}");
}

#[tokio::test]
async fn cancellation_mid_stream_leaves_nothing() {
    let f = fixture();
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let feeder = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let chunk = data(64 * 1024);
        // Keeps writing for as long as someone reads; never ends the stream.
        while tx.write_all(&chunk).await.is_ok() {}
    });
    let cancel = CancellationToken::new();
    let progress = ProgressCounter::default();
    let c2 = cancel.clone();
    let p2 = progress.clone();
    tokio::spawn(async move {
        while p2.stored() < 200_000 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        c2.cancel();
    });
    let res = within(store_stream(
        &f.store,
        "t/cancelled.age",
        rx,
        &settings(&f, Compression::Zstd, 32 * 1024, 2),
        &progress,
        &cancel,
    ))
    .await;
    assert!(
        matches!(res, Err(PipelineError::Cancelled)),
        "{:?}",
        res.err()
    );
    assert!(progress.read() > 0);
    assert_eq!(f.store.head("t/cancelled.age").await.unwrap(), None);
    assert!(f.store.list("").await.unwrap().is_empty());
    assert_eq!(staging_entries(&f), 0);
    feeder.abort();
}

#[tokio::test]
async fn source_error_mid_stream_leaves_nothing() {
    let f = fixture();
    for algorithm in [Compression::Zstd, Compression::Gzip] {
        let chunks: Vec<io::Result<Bytes>> = vec![
            Ok(Bytes::from(data(300_000))),
            Ok(Bytes::from(data(300_000))),
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "pg_dump died")),
        ];
        let source = tokio_util::io::StreamReader::new(futures::stream::iter(chunks));
        let res = within(store_stream(
            &f.store,
            "t/failed.age",
            source,
            &settings(&f, algorithm, 64 * 1024, 2),
            &ProgressCounter::default(),
            &CancellationToken::new(),
        ))
        .await;
        match res {
            Err(PipelineError::Source(e)) => assert!(e.to_string().contains("pg_dump died")),
            other => panic!(
                "{algorithm:?}: expected a source error, got {:?}",
                other.map(|r| r.key)
            ),
        }
        assert_eq!(f.store.head("t/failed.age").await.unwrap(), None);
        assert_eq!(staging_entries(&f), 0);
    }
}

#[tokio::test]
async fn existing_key_is_never_replaced() {
    let f = fixture();
    let s = settings(&f, Compression::Zstd, 4096, 1);
    let first = store_bytes(&f.store, "t/once.age", Bytes::from_static(b"first"), &s)
        .await
        .unwrap();
    let err = store_bytes(&f.store, "t/once.age", Bytes::from_static(b"second"), &s)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PipelineError::Store(crate::repository::StoreError::AlreadyExists { .. })
        ),
        "{err}"
    );
    assert_eq!(
        load_bytes(&f.store, &first, &ids(&f)).await.unwrap(),
        Bytes::from_static(b"first")
    );
    assert_eq!(staging_entries(&f), 0);
}

#[tokio::test]
async fn several_recipients_each_decrypt() {
    let f = fixture();
    let second = age::x25519::Identity::generate();
    let mut s = settings(&f, Compression::Zstd, 4096, 2);
    s.recipients.push(second.to_public());
    let rec = store_bytes(&f.store, "t/two.age", Bytes::from(data(10_000)), &s)
        .await
        .unwrap();
    for id in [f.identity.clone(), second] {
        let got = load_bytes(&f.store, &rec, &Identities::from_keys(vec![id]))
            .await
            .unwrap();
        assert_eq!(got, data(10_000));
    }
    s.recipients.clear();
    assert!(matches!(
        store_bytes(&f.store, "t/none.age", Bytes::new(), &s).await,
        Err(PipelineError::Encrypt(_))
    ));
}

#[tokio::test]
async fn full_disk_mid_stream_aborts_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStore::open(dir.path().join("repo"))
        .unwrap()
        .with_enospc_after(300_000);
    let f = Fixture {
        store: Store::Local(local),
        identity: age::x25519::Identity::generate(),
        dir,
    };
    let input = data(3_000_000);
    for algorithm in [Compression::Zstd, Compression::Gzip] {
        let err = within(store_stream(
            &f.store,
            "t/full.age",
            &input[..],
            &settings(&f, algorithm, 64 * 1024, 2),
            &ProgressCounter::default(),
            &CancellationToken::new(),
        ))
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("no space left on device") && msg.contains("t/full.age"),
            "{msg}"
        );
        assert!(matches!(err, PipelineError::Store(_)), "{err:?}");
        assert_eq!(err.retry(), Retry::Transient);
        assert_eq!(f.store.head("t/full.age").await.unwrap(), None);
        assert_eq!(staging_entries(&f), 0);
    }
}

#[tokio::test]
async fn store_error_at_publish_leaves_nothing() {
    let f = fixture();
    // A file where the object's folder should be: the publish step fails.
    f.store
        .put_create("t", Bytes::from_static(b"in the way"))
        .await
        .unwrap();
    let err = store_bytes(
        &f.store,
        "t/x.age",
        Bytes::from(data(1000)),
        &settings(&f, Compression::Zstd, 4096, 1),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("creating folder"), "{err}");
    assert_eq!(staging_entries(&f), 0);
}

#[tokio::test]
async fn one_frame_by_ranged_reads() {
    let f = fixture();
    let fs = 200_000;
    let input = data(fs * 5 + 123);
    let stored = store_frames(
        &f.store,
        "t/ranged.age",
        compress::fixed_frames(&input[..], fs),
        &settings(&f, Compression::Zstd, fs, 2),
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    for fr in stored.frames.iter().rev() {
        let got = read_frame(&f.store, &stored.record, *fr, &ids(&f))
            .await
            .unwrap();
        let start = fr.content_offset as usize;
        assert_eq!(got, &input[start..start + fr.content_len as usize]);
    }
    // Damage inside the last frame's chunks is detected by age's chunk tags.
    let path = f.dir.path().join("repo/t/ranged.age");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let last = *stored.frames.last().unwrap();
    let err = read_frame(&f.store, &stored.record, last, &ids(&f))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("t/ranged.age"), "{err}");
    // The first frame lies in undamaged chunks and still reads.
    assert!(
        read_frame(&f.store, &stored.record, stored.frames[0], &ids(&f))
            .await
            .is_ok()
    );
}

/// All frames of an object through [`frames::open_frames`], joined.
async fn read_frames(f: &Fixture, rec: &ObjectRecord, workers: usize) -> io::Result<Vec<u8>> {
    let mut r = frames::open_frames(&f.store, rec, &ids(f), workers)
        .await
        .map_err(|e| e.into_io())?;
    let mut out = Vec::new();
    while let Some(frame) = r.next().await {
        let frame = frame?;
        assert_eq!(frame.content_offset, out.len() as u64);
        out.extend_from_slice(&frame.data);
    }
    Ok(out)
}

#[tokio::test]
async fn frame_reads_give_the_frames_in_order() {
    let f = fixture();
    let fs = 64 * 1024;
    for len in [0, 1, fs - 1, fs, fs * 7 / 2, fs * 40 + 3] {
        let input = data(len);
        let key = format!("t/frames-{len}.age");
        let stored = store_frames(
            &f.store,
            &key,
            compress::fixed_frames(&input[..], fs),
            &settings(&f, Compression::Zstd, fs, 2),
            &ProgressCounter::default(),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        for workers in [1, 3] {
            let mut r = frames::open_frames(&f.store, &stored.record, &ids(&f), workers)
                .await
                .unwrap();
            for info in &stored.frames {
                let frame = within(r.next()).await.unwrap().unwrap();
                assert_eq!(frame.content_offset, info.content_offset);
                assert_eq!(frame.data.len() as u64, info.content_len);
            }
            assert!(within(r.next()).await.is_none(), "{len}: more frames");
            assert_eq!(
                within(read_frames(&f, &stored.record, workers))
                    .await
                    .unwrap(),
                input
            );
        }
    }
}

#[tokio::test]
async fn frame_reads_of_damaged_objects_are_errors_naming_the_key() {
    let f = fixture();
    let fs = 64 * 1024;
    let input = data(fs * 5);
    let key = "t/frames-damage.age";
    let path = f.dir.path().join("repo").join(key);
    let rec = store_stream(
        &f.store,
        key,
        &input[..],
        &settings(&f, Compression::Zstd, fs, 2),
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let mut extended = good.clone();
    extended.extend_from_slice(b"junk");
    for (what, bytes, says) in [
        ("flip in the middle", flipped, "corrupted"),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("extended", extended, "corrupted"),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let err = within(read_frames(&f, &rec, 2)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
        assert!(err.to_string().contains(key), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
    }
    std::fs::write(&path, &good).unwrap();
    assert_eq!(within(read_frames(&f, &rec, 2)).await.unwrap(), input);
    // Not ours to decrypt: said at open.
    let other = Identities::from_keys(vec![age::x25519::Identity::generate()]);
    let err = match frames::open_frames(&f.store, &rec, &other, 2).await {
        Ok(_) => panic!("opened with the wrong identity"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("matches"), "{err}");
}
