//! Block incrementals of the snapshot engine (strict mode): per-block hashes in every strict
//! manifest, changed files of an incremental stored as changed blocks plus extents pointing at
//! the ancestors' bytes, chains of them restored byte-identical (whole and `--path`), a
//! parent's older block size kept, old manifests without
//! hashes falling back to whole files, damaged data naming the file, and the blocks a journal
//! (the WAL, for base backups) calls unchanged left unread.

use bdc_backup::catalogue::{Compression, CompressionSettings};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::{Identities, PipelineSettings, ProgressCounter};
use bdc_backup::repository::Store;
use bdc_backup::snapshot::backup::{self, BLOCK_SIZE, EngineConfig, EngineOutput, Parent};
use bdc_backup::snapshot::manifest::{Entry, ManifestReader, Mode};
use bdc_backup::snapshot::path::ByteName;
use bdc_backup::snapshot::restore::{RestoreError, RestoreOptions, RestoreStats, restore};
use bdc_backup::snapshot::walk::{Filter, TreeWalk};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

const B: u64 = BLOCK_SIZE;

struct Env {
    dir: tempfile::TempDir,
    store: Store,
    identity: age::x25519::Identity,
    /// The journal's word on changed blocks, for the next runs.
    changed: std::sync::Mutex<Option<backup::ChangedHook>>,
}

/// One engine run and when it started.
struct Run {
    id: String,
    out: EngineOutput,
    started: chrono::DateTime<chrono::Utc>,
    /// The run's progress: bytes counted as read.
    read: u64,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path().join("repo")).unwrap();
        Env {
            dir,
            store,
            identity: age::x25519::Identity::generate(),
            changed: std::sync::Mutex::new(None),
        }
    }

    fn src(&self) -> PathBuf {
        let p = self.dir.path().join("src");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// A backup; `parent` (a manifest file to read, and its start) makes it an incremental.
    async fn run(
        &self,
        id: &str,
        mode: Mode,
        parent: Option<(Box<dyn BufRead + Send>, chrono::DateTime<chrono::Utc>)>,
        ancestors: Vec<String>,
    ) -> Run {
        let settings = PipelineSettings {
            compression: CompressionSettings {
                algorithm: Compression::Zstd,
                level: 3,
                workers: 2,
            },
            recipients: vec![self.identity.to_public()],
            frame_size: 256 * 1024,
        };
        let started = chrono::Utc::now();
        let cfg = EngineConfig {
            job: "pgdata".into(),
            backup_id: id.into(),
            backup_type: if parent.is_some() {
                BackupType::Incremental
            } else {
                BackupType::Full
            },
            mode,
            started_at: started,
            ancestors,
            source: ByteName(b"/src".to_vec()),
            part_size: 1 << 30,
            parent: parent.map(|(manifest, started_at)| Parent {
                manifest,
                started_at,
            }),
            spool_dir: self.dir.path().to_path_buf(),
            fault_unreadable: None,
            before_read: None,
            inspect: None,
            changed: self.changed.lock().unwrap().clone(),
        };
        let walk = TreeWalk::new(&self.src(), Filter::default(), true).unwrap();
        let store = self.store.clone();
        let handle = tokio::runtime::Handle::current();
        let progress = ProgressCounter::default();
        let counter = progress.clone();
        let out = tokio::task::spawn_blocking(move || {
            backup::run(
                cfg,
                Box::new(walk),
                store,
                settings,
                counter,
                CancellationToken::new(),
                handle,
            )
        })
        .await
        .unwrap()
        .expect("backup");
        Run {
            id: id.into(),
            out,
            started,
            read: progress.read(),
        }
    }

    async fn incremental(&self, id: &str, chain: &[&Run]) -> Run {
        let parent = chain[0];
        let manifest: Box<dyn BufRead + Send> =
            Box::new(BufReader::new(parent.out.manifest.reopen().unwrap()));
        let ancestors = chain.iter().map(|r| r.id.clone()).collect();
        self.run(
            id,
            Mode::Strict,
            Some((manifest, parent.started)),
            ancestors,
        )
        .await
    }

    /// An incremental of `parent` whose manifest is first rewritten line by line by `edit` (as
    /// an older version would have written it).
    async fn incremental_on_rewritten(
        &self,
        id: &str,
        parent: &Run,
        mut edit: impl FnMut(&mut serde_json::Value),
    ) -> Run {
        let mut text = Vec::new();
        for line in BufReader::new(parent.out.manifest.reopen().unwrap()).lines() {
            let mut v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            edit(&mut v);
            serde_json::to_writer(&mut text, &v).unwrap();
            text.push(b'\n');
        }
        let manifest: Box<dyn BufRead + Send> = Box::new(std::io::Cursor::new(text));
        self.run(
            id,
            Mode::Strict,
            Some((manifest, parent.started)),
            vec![parent.id.clone()],
        )
        .await
    }

    /// Restores `chain[0]` (objects of the whole chain available) into `target`.
    async fn restore(
        &self,
        chain: &[&Run],
        target: &Path,
        paths: &[&str],
    ) -> Result<RestoreStats, RestoreError> {
        let mut manifest = chain[0].out.manifest.reopen().unwrap();
        let objects: HashMap<_, _> = chain
            .iter()
            .flat_map(|r| r.out.objects.iter())
            .map(|o| (o.record.key.clone(), o.record.clone()))
            .collect();
        let store = self.store.clone();
        let ids = Identities::from_keys(vec![self.identity.clone()]);
        let options = RestoreOptions {
            target: target.to_path_buf(),
            paths: paths
                .iter()
                .map(|p| ByteName(p.as_bytes().to_vec()))
                .collect(),
            ..Default::default()
        };
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            restore(&mut manifest, &store, &objects, &ids, &options, handle)
        })
        .await
        .unwrap()
    }
}

fn entry(out: &EngineOutput, name: &str) -> Entry {
    let f = out.manifest.reopen().unwrap();
    let mut r = ManifestReader::new(BufReader::new(f)).unwrap();
    while let Some(e) = r.next_entry().unwrap() {
        if e.path.as_bytes() == name.as_bytes() {
            return e;
        }
    }
    panic!("{name} not in the manifest")
}

/// `tar -t` of an engine output's (decrypted, decompressed) objects.
async fn tar_list(env: &Env, out: &EngineOutput) -> String {
    use tokio::io::AsyncReadExt;
    let ids = Identities::from_keys(vec![env.identity.clone()]);
    let mut listing = String::new();
    for o in &out.objects {
        let mut r = bdc_backup::pipeline::open_stream(&env.store, &o.record, &ids)
            .await
            .unwrap();
        let mut tar = Vec::new();
        r.read_to_end(&mut tar).await.unwrap();
        let mut child = std::process::Command::new("tar")
            .args(["-tf", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&tar).unwrap();
        let done = child.wait_with_output().unwrap();
        assert!(done.status.success(), "tar -t failed");
        listing.push_str(&String::from_utf8_lossy(&done.stdout));
    }
    listing
}

fn stored_bytes(out: &EngineOutput) -> u64 {
    out.objects.iter().map(|o| o.record.size).sum()
}

/// Pseudo-random (incompressible) bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn overwrite(path: &Path, at: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(data).unwrap();
}

/// SHA-256 of every regular file beneath `dir`, by relative path.
fn state(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in std::fs::read_dir(dir).unwrap() {
        let p = name.unwrap().path();
        if p.is_file() {
            let data = std::fs::read(&p).unwrap();
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                hex::encode(Sha256::digest(&data)),
            );
        }
    }
    out
}

fn setup(env: &Env) -> PathBuf {
    let src = env.src();
    std::fs::write(src.join("big"), noise(1, (40 * B + 1000) as usize)).unwrap();
    std::fs::write(src.join("grow"), noise(2, (10 * B) as usize)).unwrap();
    std::fs::write(src.join("shrink"), noise(3, (10 * B + 500) as usize)).unwrap();
    std::fs::write(src.join("small"), noise(4, 1000)).unwrap();
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_incrementals_store_changed_blocks_and_restore_a_chain() {
    let env = Env::new();
    let src = setup(&env);
    let s0 = state(&src);
    let full = env.run("F", Mode::Strict, None, vec![]).await;
    let big = entry(&full.out, "big");
    let blocks = big.blocks.as_ref().expect("strict fulls hash blocks");
    assert_eq!((blocks.size, blocks.count()), (B, 41));
    assert!(big.sha256.is_some() && big.data.is_some() && big.extents.is_none());
    assert!(
        entry(&full.out, "small").blocks.is_none(),
        "under one block"
    );
    assert_eq!(full.out.files_by_blocks, 0);

    // A few blocks in place, a grown file, a shrunk file.
    overwrite(&src.join("big"), 2 * B + 10, &noise(10, (2 * B) as usize)); // blocks 2..=4
    overwrite(&src.join("big"), 20 * B, &noise(11, 100)); // block 20
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("grow"))
        .unwrap();
    f.write_all(&noise(12, (3 * B) as usize)).unwrap();
    drop(f);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("shrink"))
        .unwrap();
    f.set_len(5 * B + 300).unwrap();
    drop(f);
    let s1 = state(&src);
    let i1 = env.incremental("I1", &[&full]).await;
    assert!(i1.out.warnings.is_empty(), "{:?}", i1.out.warnings);
    // big: 4 blocks; grow: 3 new blocks; shrink: its partial last block; small: whole.
    let want = 4 * B + 3 * B + 300 + 1000;
    assert!(
        i1.out.bytes_stored >= want && i1.out.bytes_stored <= want + B,
        "stored {} content bytes, want ≈ {want}",
        i1.out.bytes_stored
    );
    assert!(i1.out.files_by_blocks >= 3);
    let (f_stored, i1_stored) = (stored_bytes(&full.out), stored_bytes(&i1.out));
    assert!(
        i1_stored * 5 < f_stored,
        "incremental {i1_stored} vs full {f_stored}"
    );
    let big1 = entry(&i1.out, "big");
    let ext = big1.extents.as_ref().expect("extents");
    assert!(big1.data.is_none() && big1.sha256.is_none());
    // [0,2) full, [2,5) I1, [5,20) full, [20] I1, [21,41) full.
    assert_eq!(ext.len(), 5, "{ext:?}");
    assert_eq!(
        ext.iter()
            .map(|x| x.data.backup.as_str())
            .collect::<Vec<_>>(),
        ["F", "I1", "F", "I1", "F"]
    );

    // The incremental's object is still a tar stream stock tar lists (changed blocks as
    // `./.bdc-blocks/<n>` members, never a real path's name).
    let listing = tar_list(&env, &i1.out).await;
    assert!(listing.contains("./.bdc-blocks/0\n"), "{listing}");
    assert!(listing.contains("small\n"), "{listing}");
    assert!(!listing.lines().any(|l| l == "big"), "{listing}");

    // Chain: change a block stored by I1 and one stored by F, and the partial last block.
    overwrite(&src.join("big"), 3 * B, &noise(20, 10));
    overwrite(&src.join("big"), 30 * B, &noise(21, 10));
    overwrite(&src.join("big"), 40 * B + 999, &[7]);
    overwrite(&src.join("grow"), 11 * B + 5, &noise(22, 10));
    let s2 = state(&src);
    let i2 = env.incremental("I2", &[&i1, &full]).await;
    assert!(
        i2.out.bytes_stored <= 5 * B + 1000 + 5 * B + 300,
        "{}",
        i2.out.bytes_stored
    );
    let big2 = entry(&i2.out, "big");
    let backups: std::collections::BTreeSet<_> = big2
        .extents
        .as_ref()
        .unwrap()
        .iter()
        .map(|x| x.data.backup.clone())
        .collect();
    assert_eq!(backups.len(), 3, "bytes from F, I1 and I2: {backups:?}");

    // Every snapshot of the chain restores its own state.
    for (chain, want, name) in [
        (vec![&full], &s0, "r0"),
        (vec![&i1, &full], &s1, "r1"),
        (vec![&i2, &i1, &full], &s2, "r2"),
    ] {
        let target = env.dir.path().join(name);
        let stats = env.restore(&chain, &target, &[]).await.expect("restore");
        assert_eq!(&state(&target), want, "{name}");
        assert_eq!(stats.files, 4);
    }

    // A single extent file by --path (ranged reads).
    let target = env.dir.path().join("rp");
    let stats = env
        .restore(&[&i2, &i1, &full], &target, &["big"])
        .await
        .unwrap();
    assert_eq!(stats.files, 1);
    assert_eq!(state(&target)["big"], s2["big"]);
    assert!(stats.bytes_fetched > 0);

    // An unchanged file in a fourth backup keeps its extents (reused, nothing stored).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // (I3 still re-reads what changed within a second of I2's start: racy-clean; the same
    // blocks point at the same bytes, `small` is stored again.)
    let i3 = env.incremental("I3", &[&i2, &i1, &full]).await;
    assert!(i3.out.bytes_stored <= 1000, "{}", i3.out.bytes_stored);
    assert_eq!(entry(&i3.out, "big").extents, big2.extents);
    let i4 = env.incremental("I4", &[&i3, &i2, &i1, &full]).await;
    assert_eq!(i4.out.bytes_stored, 0);
    assert_eq!(i4.out.files_by_blocks, 0);
    assert_eq!(entry(&i4.out, "big").extents, big2.extents);
    let target = env.dir.path().join("r4");
    env.restore(&[&i4, &i3, &i2, &i1, &full], &target, &[])
        .await
        .unwrap();
    assert_eq!(state(&target), s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_without_block_hashes_means_whole_files() {
    let env = Env::new();
    let src = setup(&env);
    let full = env.run("F", Mode::Strict, None, vec![]).await;
    overwrite(&src.join("big"), 5 * B, &noise(30, 100));
    let s1 = state(&src);
    // The same manifest as an older version wrote it: no `blocks`.
    let i1 = env
        .incremental_on_rewritten("I1", &full, |v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("blocks");
            }
        })
        .await;
    assert_eq!(i1.out.files_by_blocks, 0);
    assert!(i1.out.bytes_stored >= 40 * B + 1000);
    let big = entry(&i1.out, "big");
    assert!(big.data.is_some() && big.sha256.is_some() && big.blocks.is_some());
    let target = env.dir.path().join("r1");
    env.restore(&[&i1, &full], &target, &[]).await.unwrap();
    assert_eq!(state(&target), s1);

    // Lenient mode never hashes blocks.
    let lenient = env.run("L", Mode::Lenient, None, vec![]).await;
    assert!(entry(&lenient.out, "big").blocks.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_data_under_an_extent_names_the_file() {
    let env = Env::new();
    let src = setup(&env);
    let full = env.run("F", Mode::Strict, None, vec![]).await;
    overwrite(&src.join("big"), 7 * B, &noise(40, 10));
    let i1 = env.incremental("I1", &[&full]).await;
    assert!(entry(&i1.out, "big").extents.is_some());
    // Damage the full's object (which holds big's unchanged blocks) in its middle.
    let key = &full.out.objects[0].record.key;
    let path = env.dir.path().join("repo").join(key);
    let len = std::fs::metadata(&path).unwrap().len();
    overwrite(&path, len / 2, &[0xff; 64]);
    let target = env.dir.path().join("r");
    let err = env
        .restore(&[&i1, &full], &target, &["big"])
        .await
        .expect_err("damaged");
    let text = err.to_string();
    assert!(text.contains("big"), "{text}");
    assert!(text.contains(key.as_str()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_many_read_chunks_and_an_older_block_size_kept() {
    use bdc_backup::snapshot::manifest::BlockHasher;
    let env = Env::new();
    let src = setup(&env);
    // Many read chunks (256 KiB each), not a whole number of blocks.
    let huge_len = (6 << 20) + 1234;
    std::fs::write(src.join("huge"), noise(50, huge_len)).unwrap();
    let huge0 = std::fs::read(src.join("huge")).unwrap();
    let full = env.run("F", Mode::Strict, None, vec![]).await;
    assert_eq!(entry(&full.out, "huge").blocks.unwrap().size, B);

    // Changes at the start, in the middle (across a block boundary), in the partial last
    // block, and growth.
    overwrite(&src.join("huge"), 0, &noise(51, 10));
    overwrite(&src.join("huge"), 3 * (1 << 20) - 5, &noise(52, 10));
    overwrite(&src.join("huge"), huge_len as u64 - 1, &[9]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("huge"))
        .unwrap();
    f.write_all(&noise(53, 100_000)).unwrap();
    drop(f);
    let s1 = state(&src);
    let i1 = env.incremental("I1", &[&full]).await;
    assert!(i1.out.warnings.is_empty(), "{:?}", i1.out.warnings);
    let huge1 = entry(&i1.out, "huge");
    assert!(huge1.extents.is_some() && huge1.data.is_none());
    // The run's progress counts the unchanged blocks read, not only what was stored.
    assert!(
        i1.read >= i1.out.bytes_read,
        "progress {} < {} read",
        i1.read,
        i1.out.bytes_read
    );
    assert_eq!(huge1.blocks.as_ref().unwrap().size, B);
    // 1 + 2 + 1 changed blocks (the last one partial) and the 100,000 new bytes; plus `small`.
    let most = 4 * B + 100_000 + B + 1000;
    assert!(
        i1.out.bytes_stored <= most,
        "stored {} content bytes, at most {most}",
        i1.out.bytes_stored
    );
    let target = env.dir.path().join("r1");
    env.restore(&[&i1, &full], &target, &[]).await.unwrap();
    assert_eq!(state(&target), s1);

    // The same full as an older version wrote it, with 64 KiB blocks: an incremental compares
    // `huge` at 64 KiB (its entry keeps that size) instead of storing it whole.
    let old_bs = 64 * 1024;
    let i1b = env
        .incremental_on_rewritten("I1b", &full, |v| {
            if v.get("path").and_then(|p| p.as_str()) == Some("huge") {
                let mut h = BlockHasher::new(old_bs);
                h.update(&huge0);
                v["blocks"] = serde_json::to_value(h.finish()).unwrap();
            }
        })
        .await;
    let huge1b = entry(&i1b.out, "huge");
    assert_eq!(huge1b.blocks.as_ref().unwrap().size, old_bs);
    assert!(
        huge1b.extents.is_some(),
        "compared by blocks, not stored whole"
    );
    // 1 + 2 + 1 changed 64 KiB blocks (the last one partial) and the growth; plus `small`.
    let most = 4 * old_bs + 100_000 + 1000;
    assert!(
        i1b.out.bytes_stored <= most,
        "stored {} content bytes, at most {most}",
        i1b.out.bytes_stored
    );
    let target = env.dir.path().join("r1b");
    env.restore(&[&i1b, &full], &target, &[]).await.unwrap();
    assert_eq!(state(&target), s1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_the_journal_calls_unchanged_are_not_read() {
    let env = Env::new();
    let src = env.src();
    std::fs::write(src.join("big"), noise(1, (64 * B) as usize)).unwrap();
    std::fs::write(src.join("other"), noise(2, (8 * B) as usize)).unwrap();
    let full = env.run("F", Mode::Strict, None, vec![]).await;
    let old = std::fs::read(src.join("big")).unwrap();

    // Blocks 3 and 40 change, the file grows by 5 blocks; the journal names block 3 only (and
    // a range in block 9 that did not change): block 40 is taken on its word.
    overwrite(&src.join("big"), 3 * B + 10, &noise(10, 100));
    overwrite(&src.join("big"), 40 * B, &noise(11, 100));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(src.join("big"))
        .unwrap();
    f.write_all(&noise(12, (5 * B) as usize)).unwrap();
    drop(f);
    overwrite(&src.join("other"), 0, &noise(13, 100));
    *env.changed.lock().unwrap() = Some(std::sync::Arc::new(|path: &ByteName| {
        (path.as_bytes() == b"big")
            .then(|| backup::Changed(vec![3 * B + 5..3 * B + 200, 9 * B + 1..9 * B + 2]))
    }));
    let i1 = env.incremental("I1", &[&full]).await;
    assert!(i1.out.warnings.is_empty(), "{:?}", i1.out.warnings);
    // big: blocks 3 and 9 and the 5 new ones read; other (no word from the journal): all 8.
    assert_eq!(i1.out.blocks_unread, 62);
    assert_eq!(i1.out.bytes_read, 7 * B + 8 * B);
    assert!(
        i1.read < 20 * B,
        "progress counts {} B: the unread blocks too",
        i1.read
    );

    let target = env.dir.path().join("r1");
    env.restore(&[&i1, &full], &target, &[])
        .await
        .expect("restored");
    let got = std::fs::read(target.join("big")).unwrap();
    let now = std::fs::read(src.join("big")).unwrap();
    assert_eq!(got.len(), now.len());
    let block = |v: &[u8], i: u64| v[(i * B) as usize..((i + 1) * B) as usize].to_vec();
    assert_eq!(block(&got, 3), block(&now, 3), "the changed block named");
    assert_eq!(block(&got, 40), block(&old, 40), "the journal's word taken");
    for i in 64..69 {
        assert_eq!(block(&got, i), block(&now, i), "grown block {i}");
    }
    assert_eq!(
        std::fs::read(target.join("other")).unwrap(),
        std::fs::read(src.join("other")).unwrap()
    );

    // An incremental on that one, the journal silent on big: nothing of it read, and the chain
    // restores what it says.
    overwrite(&src.join("big"), 0, &noise(14, 10));
    *env.changed.lock().unwrap() = Some(std::sync::Arc::new(|_: &ByteName| {
        Some(backup::Changed(Vec::new()))
    }));
    let i2 = env.incremental("I2", &[&i1, &full]).await;
    assert_eq!(i2.out.bytes_read, 0);
    let target = env.dir.path().join("r2");
    env.restore(&[&i2, &i1, &full], &target, &[])
        .await
        .expect("restored");
    assert_eq!(std::fs::read(target.join("big")).unwrap(), got);
}
