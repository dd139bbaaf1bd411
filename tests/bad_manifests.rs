//! Damaged or hostile manifests are refused by the restore with the culprit named, and nothing is
//! written outside the target: truncated, reordered, duplicate paths, `..`, absolute paths, a path
//! through a symlink, a size that disagrees with the stored frames. The manifests are real ones
//! (the engine backs up a small tree) rewritten line by line.

use bdc_backup::catalogue::{Compression, CompressionSettings};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::{Identities, PipelineSettings, ProgressCounter};
use bdc_backup::repository::{ObjectRecord, Store};
use bdc_backup::snapshot::backup::{self, EngineConfig, EngineOutput};
use bdc_backup::snapshot::manifest::{Entry, EntryKind, Header, ManifestReader, Mode};
use bdc_backup::snapshot::path::ByteName;
use bdc_backup::snapshot::restore::{RestoreError, RestoreOptions, restore};
use bdc_backup::snapshot::walk::{Filter, TreeWalk};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

struct Env {
    dir: tempfile::TempDir,
    store: Store,
    identity: age::x25519::Identity,
    out: EngineOutput,
}

impl Env {
    /// Backs up `src/{a.txt, b.txt, sub/c.txt}`.
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path().join("repo")).unwrap();
        let identity = age::x25519::Identity::generate();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.txt"), b"alpha\n".repeat(100)).unwrap();
        std::fs::write(src.join("b.txt"), b"bravo\n".repeat(100)).unwrap();
        std::fs::write(src.join("sub/c.txt"), b"charlie\n".repeat(100)).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        let settings = PipelineSettings {
            compression: CompressionSettings {
                algorithm: Compression::Zstd,
                level: 3,
                workers: 2,
            },
            recipients: vec![identity.to_public()],
            frame_size: 64 * 1024,
        };
        let cfg = EngineConfig {
            job: "files".into(),
            backup_id: "20261201T000000Z-F".into(),
            backup_type: BackupType::Full,
            mode: Mode::Lenient,
            started_at: chrono::Utc::now(),
            ancestors: vec![],
            source: ByteName(src.as_os_str().as_encoded_bytes().to_vec()),
            part_size: 1 << 30,
            parent: None,
            spool_dir: dir.path().to_path_buf(),
            fault_unreadable: None,
            before_read: None,
            inspect: None,
            changed: None,
        };
        let walk = TreeWalk::new(&src, Filter::default(), true).unwrap();
        let engine_store = store.clone();
        let handle = tokio::runtime::Handle::current();
        let out = tokio::task::spawn_blocking(move || {
            backup::run(
                cfg,
                Box::new(walk),
                engine_store,
                settings,
                ProgressCounter::default(),
                CancellationToken::new(),
                handle,
            )
        })
        .await
        .unwrap()
        .expect("backup");
        Env {
            dir,
            store,
            identity,
            out,
        }
    }

    /// The manifest's lines: header, entries (parsed), end line (raw).
    fn lines(&self) -> (String, Vec<Entry>, String) {
        let mut f = self.out.manifest.reopen().unwrap();
        f.rewind().unwrap();
        let lines: Vec<String> = BufReader::new(f).lines().map(|l| l.unwrap()).collect();
        let entries = lines[1..lines.len() - 1]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines[0].clone(), entries, lines[lines.len() - 1].clone())
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Restores from a manifest made of these lines into a fresh target.
    async fn restore_lines(&self, lines: Vec<String>) -> (PathBuf, Result<(), RestoreError>) {
        let target = self.dir.path().join(format!("target-{}", rand_suffix()));
        let path = self.dir.path().join(format!("manifest-{}", rand_suffix()));
        let mut f = std::fs::File::create(&path).unwrap();
        for l in &lines {
            writeln!(f, "{l}").unwrap();
        }
        drop(f);
        let mut manifest = std::fs::File::open(&path).unwrap();
        let objects: HashMap<String, ObjectRecord> = self
            .out
            .objects
            .iter()
            .map(|o| (o.record.key.clone(), o.record.clone()))
            .collect();
        let store = self.store.clone();
        let ids = Identities::from_keys(vec![self.identity.clone()]);
        let options = RestoreOptions {
            target: target.clone(),
            ..Default::default()
        };
        let handle = tokio::runtime::Handle::current();
        let r = tokio::task::spawn_blocking(move || {
            restore(&mut manifest, &store, &objects, &ids, &options, handle)
        })
        .await
        .unwrap();
        (target, r.map(|_| ()))
    }

    async fn restore_entries(&self, entries: &[Entry]) -> (PathBuf, Result<(), RestoreError>) {
        let (header, _, _) = self.lines();
        let mut lines = vec![header];
        lines.extend(entries.iter().map(|e| serde_json::to_string(e).unwrap()));
        lines.push(format!(
            "{{\"end\":{{\"entries\":{},\"objects\":[],\"files-stored\":0,\"warnings\":0}}}}",
            entries.len()
        ));
        self.restore_lines(lines).await
    }

    fn assert_outside_untouched(&self) {
        let n = std::fs::read_dir(self.outside()).unwrap().count();
        assert_eq!(n, 0, "something was written outside the target");
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn error_text(r: Result<(), RestoreError>) -> String {
    let e = r.expect_err("the damaged manifest was accepted");
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Nothing but (possibly) the empty target folder itself.
fn assert_nothing_restored(target: &Path) {
    if let Ok(rd) = std::fs::read_dir(target) {
        let names: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
        assert!(names.is_empty(), "restored despite the error: {names:?}");
    }
}

fn entry<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.path.as_bytes() == path.as_bytes())
        .unwrap_or_else(|| panic!("{path} not in the manifest"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_untouched_manifest_restores() {
    let env = Env::new().await;
    let (_, entries, _) = env.lines();
    let (target, r) = env.restore_entries(&entries).await;
    r.expect("restore");
    assert_eq!(
        std::fs::read(target.join("sub/c.txt")).unwrap(),
        b"charlie\n".repeat(100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_manifest_is_refused() {
    let env = Env::new().await;
    let (header, entries, _) = env.lines();
    let mut lines = vec![header];
    lines.extend(entries.iter().map(|e| serde_json::to_string(e).unwrap()));
    lines.pop(); // the last entry and the end line are gone
    let (target, r) = env.restore_lines(lines).await;
    let text = error_text(r);
    assert!(text.contains("truncated"), "{text}");
    assert_nothing_restored(&target);
    // A line cut in the middle names its line.
    let (header, entries, end) = env.lines();
    let cut = serde_json::to_string(&entries[1]).unwrap();
    let lines = vec![header, cut[..cut.len() / 2].to_string(), end];
    let (target, r) = env.restore_lines(lines).await;
    let text = error_text(r);
    assert!(text.contains("manifest line 2"), "{text}");
    assert_nothing_restored(&target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_and_duplicate_entries_are_refused_by_name() {
    let env = Env::new().await;
    let (_, entries, _) = env.lines();
    let mut reordered = entries.clone();
    let a = reordered
        .iter()
        .position(|e| e.path.as_bytes() == b"a.txt")
        .unwrap();
    let b = reordered
        .iter()
        .position(|e| e.path.as_bytes() == b"b.txt")
        .unwrap();
    reordered.swap(a, b);
    let (target, r) = env.restore_entries(&reordered).await;
    let text = error_text(r);
    assert!(
        text.contains("`a.txt`") && text.contains("out of order"),
        "{text}"
    );
    assert_nothing_restored(&target);

    let mut duplicate = entries.clone();
    let dup = entry(&entries, "b.txt").clone();
    duplicate.insert(b + 1, dup);
    let (target, r) = env.restore_entries(&duplicate).await;
    let text = error_text(r);
    assert!(text.contains("`b.txt`") && text.contains("twice"), "{text}");
    assert_nothing_restored(&target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_dot_and_absolute_paths_are_refused_before_anything_is_written() {
    let env = Env::new().await;
    let (_, entries, _) = env.lines();
    let outside = env.outside();
    let rel_outside = "../outside/evil".to_string();
    let abs_outside = format!("{}/evil", outside.display());
    for (bad, what) in [
        (rel_outside.as_str(), ".."),
        ("sub/../../outside/evil", ".."),
        (abs_outside.as_str(), "absolute"),
    ] {
        let mut list = entries.clone();
        let mut e = entry(&entries, "a.txt").clone();
        e.path = ByteName(bad.as_bytes().to_vec());
        // Keep the order rule satisfied so that the path check is what refuses it.
        list.retain(|x| x.path.as_bytes() != b"a.txt");
        list.insert(0, e);
        list.sort_by(|x, y| {
            bdc_backup::snapshot::path::compare(x.path.as_bytes(), y.path.as_bytes())
        });
        let (target, r) = env.restore_entries(&list).await;
        let text = error_text(r);
        assert!(text.contains(bad), "{what}: {text}");
        assert!(text.contains("unsafe path"), "{what}: {text}");
        assert_nothing_restored(&target);
        env.assert_outside_untouched();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_through_a_symlink_never_writes_outside() {
    let env = Env::new().await;
    let (_, entries, _) = env.lines();
    // `link` → the outside folder, then `link/evil` with a.txt's content.
    let mut link = entry(&entries, "sub").clone();
    link.path = ByteName(b"link".to_vec());
    link.kind = EntryKind::Symlink;
    link.mode = 0o777;
    link.target = Some(ByteName(
        env.outside().as_os_str().as_encoded_bytes().to_vec(),
    ));
    let mut evil = entry(&entries, "a.txt").clone();
    evil.path = ByteName(b"link/evil".to_vec());
    let mut list: Vec<Entry> = entries.clone();
    list.push(link);
    list.push(evil);
    list.sort_by(|x, y| bdc_backup::snapshot::path::compare(x.path.as_bytes(), y.path.as_bytes()));
    let (target, r) = env.restore_entries(&list).await;
    // `link/evil` is written beneath the target (a folder `link` made for it); the symlink of the
    // same name then cannot be made and is the named failure.
    let text = error_text(r);
    assert!(text.contains("link"), "{text}");
    env.assert_outside_untouched();
    assert!(
        !std::fs::symlink_metadata(target.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_that_disagrees_with_the_frames_is_named() {
    let env = Env::new().await;
    let (_, entries, _) = env.lines();
    for delta in [1i64, -1] {
        let mut list = entries.clone();
        let e = list
            .iter_mut()
            .find(|e| e.path.as_bytes() == b"b.txt")
            .unwrap();
        e.size = (e.size as i64 + delta) as u64;
        let (target, r) = env.restore_entries(&list).await;
        let text = error_text(r);
        assert!(text.contains("b.txt"), "size {delta:+}: {text}");
        // The damaged file is never left looking restored.
        if let Ok(bytes) = std::fs::read(target.join("b.txt")) {
            assert_ne!(bytes, b"bravo\n".repeat(100), "size {delta:+}");
        }
        env.assert_outside_untouched();
    }
}

#[test]
fn the_header_of_another_kind_is_refused() {
    let header = Header {
        format_version: 1,
        kind: "dump".into(),
        job: "j".into(),
        backup_id: "x".into(),
        backup_type: BackupType::Full,
        mode: Mode::Lenient,
        source: ByteName(b"/".to_vec()),
        started_at: chrono::Utc::now(),
        ancestors: vec![],
    };
    let text = format!("{}\n", serde_json::to_string(&header).unwrap());
    let err = ManifestReader::new(text.as_bytes()).err().expect("refused");
    assert!(err.to_string().contains("`dump`"), "{err}");
}
