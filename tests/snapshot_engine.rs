//! The engine's lenient/strict decisions, driven through its test hooks: a file that grows or
//! shrinks between stat and read (the `before_read` hook changes it at exactly that moment),
//! and an unreadable file (`fault_unreadable`: as root no permission bit stops a read, so the
//! open is made to fail with EACCES at the engine's open call). Manifests must describe exactly
//! the stored bytes (the restore checks every SHA-256).

use bdc_backup::catalogue::{Compression, CompressionSettings};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::{Identities, PipelineSettings, ProgressCounter};
use bdc_backup::repository::Store;
use bdc_backup::snapshot::SnapshotError;
use bdc_backup::snapshot::backup::{self, EngineConfig, EngineOutput, ReadHook};
use bdc_backup::snapshot::manifest::{ManifestReader, Mode};
use bdc_backup::snapshot::path::ByteName;
use bdc_backup::snapshot::restore::{RestoreOptions, restore};
use bdc_backup::snapshot::walk::{Filter, TreeWalk};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct Env {
    dir: tempfile::TempDir,
    store: Store,
    identity: age::x25519::Identity,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path().join("repo")).unwrap();
        Env {
            dir,
            store,
            identity: age::x25519::Identity::generate(),
        }
    }

    fn src(&self) -> std::path::PathBuf {
        let p = self.dir.path().join("src");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    async fn run(
        &self,
        id: &str,
        mode: Mode,
        hook: Option<ReadHook>,
        unreadable: Option<&str>,
    ) -> Result<EngineOutput, SnapshotError> {
        let settings = PipelineSettings {
            compression: CompressionSettings {
                algorithm: Compression::Zstd,
                level: 3,
                workers: 2,
            },
            recipients: vec![self.identity.to_public()],
            frame_size: 64 * 1024,
        };
        let cfg = EngineConfig {
            job: "pgdata".into(),
            backup_id: id.into(),
            backup_type: BackupType::Full,
            mode,
            started_at: chrono::Utc::now(),
            ancestors: vec![],
            source: ByteName(b"/src".to_vec()),
            part_size: 1 << 30,
            parent: None,
            spool_dir: self.dir.path().to_path_buf(),
            fault_unreadable: unreadable.map(|u| ByteName(u.as_bytes().to_vec())),
            before_read: hook,
            inspect: None,
            changed: None,
        };
        let walk = TreeWalk::new(&self.src(), Filter::default(), true).unwrap();
        let store = self.store.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            backup::run(
                cfg,
                Box::new(walk),
                store,
                settings,
                ProgressCounter::default(),
                CancellationToken::new(),
                handle,
            )
        })
        .await
        .unwrap()
    }

    /// Restores the engine's output into `target` (every file's SHA-256 is checked).
    async fn restore(&self, out: &EngineOutput, target: &Path) {
        self.restore_with(out, target, |_| {})
            .await
            .expect("restore");
    }

    /// Restores with the commit record's object records changed by `edit` first.
    async fn restore_with(
        &self,
        out: &EngineOutput,
        target: &Path,
        edit: impl FnOnce(&mut HashMap<String, bdc_backup::repository::ObjectRecord>),
    ) -> Result<
        bdc_backup::snapshot::restore::RestoreStats,
        bdc_backup::snapshot::restore::RestoreError,
    > {
        let mut manifest = out.manifest.reopen().unwrap();
        let mut objects: HashMap<_, _> = out
            .objects
            .iter()
            .map(|o| (o.record.key.clone(), o.record.clone()))
            .collect();
        edit(&mut objects);
        let store = self.store.clone();
        let ids = Identities::from_keys(vec![self.identity.clone()]);
        let options = RestoreOptions {
            target: target.to_path_buf(),
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

fn size_in_manifest(out: &EngineOutput, name: &str) -> Option<u64> {
    let f = out.manifest.reopen().unwrap();
    let mut r = ManifestReader::new(std::io::BufReader::new(f)).unwrap();
    while let Some(e) = r.next_entry().unwrap() {
        if e.path.as_bytes() == name.as_bytes() {
            return Some(e.size);
        }
    }
    None
}

fn grow_and_shrink_hook() -> ReadHook {
    Arc::new(
        |rel: &ByteName, abs: &Path, _attempt: u32| match rel.as_bytes() {
            b"grow" => {
                let mut f = std::fs::OpenOptions::new().append(true).open(abs).unwrap();
                f.write_all(&[b'+'; 70_000]).unwrap();
            }
            b"shrink" => {
                let f = std::fs::OpenOptions::new().write(true).open(abs).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len / 2).unwrap();
            }
            _ => {}
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_pins_sizes() {
    let env = Env::new();
    let src = env.src();
    std::fs::write(src.join("grow"), vec![b'g'; 100_000]).unwrap();
    std::fs::write(src.join("shrink"), vec![b's'; 100_000]).unwrap();
    std::fs::write(src.join("steady"), vec![b'x'; 1000]).unwrap();
    let out = env
        .run("S-F", Mode::Strict, Some(grow_and_shrink_hook()), None)
        .await
        .unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    // Sizes pinned at stat time.
    assert_eq!(size_in_manifest(&out, "grow"), Some(100_000));
    assert_eq!(size_in_manifest(&out, "shrink"), Some(100_000));
    let target = env.dir.path().join("restored");
    env.restore(&out, &target).await;
    // Grown: cut at the pinned size. Shrunk: the lost half zero-padded.
    assert_eq!(
        std::fs::read(target.join("grow")).unwrap(),
        vec![b'g'; 100_000]
    );
    let mut want = vec![b's'; 50_000];
    want.extend(vec![0u8; 50_000]);
    assert_eq!(std::fs::read(target.join("shrink")).unwrap(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_rereads_then_reports() {
    let env = Env::new();
    let src = env.src();
    std::fs::write(src.join("grow"), vec![b'g'; 100_000]).unwrap();
    // Changes only before the first read: the re-read is consistent, no warning.
    let once: ReadHook = {
        let inner = grow_and_shrink_hook();
        Arc::new(move |rel: &ByteName, abs: &Path, attempt: u32| {
            if attempt == 0 {
                inner(rel, abs, attempt)
            }
        })
    };
    let out = env
        .run("L-F", Mode::Lenient, Some(once), None)
        .await
        .unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(size_in_manifest(&out, "grow"), Some(170_000));
    let target = env.dir.path().join("r1");
    env.restore(&out, &target).await;
    assert_eq!(std::fs::read(target.join("grow")).unwrap().len(), 170_000);

    // Changes during every read: stored as read, and reported.
    let out = env
        .run("L2-F", Mode::Lenient, Some(grow_and_shrink_hook()), None)
        .await
        .unwrap();
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("changed while being read")),
        "{:?}",
        out.warnings
    );
    let target = env.dir.path().join("r2");
    env.restore(&out, &target).await; // the manifest matches the stored bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_is_a_warning_in_lenient_and_a_failure_in_strict() {
    let env = Env::new();
    let src = env.src();
    std::fs::write(src.join("ok"), b"fine").unwrap();
    std::fs::write(src.join("secret"), b"cannot read").unwrap();
    let out = env
        .run("U-F", Mode::Lenient, None, Some("secret"))
        .await
        .unwrap();
    assert!(
        out.warnings
            .iter()
            .any(|w| w.starts_with("secret") && w.contains("denied")),
        "{:?}",
        out.warnings
    );
    assert_eq!(size_in_manifest(&out, "secret"), None);
    assert_eq!(size_in_manifest(&out, "ok"), Some(4));

    let err = env
        .run("U2-F", Mode::Strict, None, Some("secret"))
        .await
        .err()
        .expect("strict fails");
    assert!(matches!(err, SnapshotError::Strict { .. }), "{err}");
    assert!(err.to_string().contains("secret"), "{err}");
}

/// A whole restore reads every object to its end: the stored bytes' SHA-256 is checked against the
/// commit record even though every frame decrypts and every file's own SHA-256 matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_restore_checks_each_objects_stored_hash() {
    let env = Env::new();
    let src = env.src();
    for i in 0..20u32 {
        std::fs::write(
            src.join(format!("f{i}")),
            vec![b'a' + (i % 26) as u8; 50_000],
        )
        .unwrap();
    }
    let out = env.run("H-F", Mode::Strict, None, None).await.unwrap();
    env.restore(&out, &env.dir.path().join("good")).await;
    let mut edited = String::new();
    let err = env
        .restore_with(&out, &env.dir.path().join("bad"), |objects| {
            let (key, record) = objects
                .iter_mut()
                .find(|(k, _)| !k.contains("manifest"))
                .expect("a data part");
            record.sha256 = "00".repeat(32);
            edited = key.clone();
        })
        .await
        .expect_err("a stored hash that differs from the record fails the restore");
    let text = err.to_string();
    assert!(
        text.contains(&edited) && text.contains("SHA-256 of the stored bytes"),
        "{text}"
    );
}
