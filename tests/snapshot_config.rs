//! `config` jobs: repeated unchanged checks store nothing, a change is stored once, a mode change
//! alone is stored, a missing file is a warning, nothing in the repository is readable without
//! the identity (no names, no contents), and `restore config` to a folder and `--in-place`.

mod snapshot_support;

use bdc_backup::files::{SnapshotRestoreOptions, restore_snapshot};
use bdc_backup::snapshot::job::JobOutcome;
use snapshot_support::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn committed(o: &JobOutcome) -> &bdc_backup::repository::CommitRecord {
    match o {
        JobOutcome::Committed { record, .. } => record,
        other => panic!("expected a new version, got {other:?}"),
    }
}

fn count_commits(repo: &Path) -> usize {
    let dir = repo.join("backups/config");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.filter(|e| e.as_ref().unwrap().path().join("backup.json").exists())
                .count()
        })
        .unwrap_or(0)
}

/// Every byte stored under `root`.
fn all_bytes(root: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_versions_only_on_change() {
    let conf = tempfile::tempdir().unwrap();
    let app = conf.path().join("app/config");
    std::fs::create_dir_all(&app).unwrap();
    let env = app.join(".env");
    std::fs::write(&env, b"DB_PASSWORD=hunter2-UNIQUE-MARKER\n").unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(app.join("nginx.conf"), b"server {}\n").unwrap();
    std::fs::write(app.join("a.yml"), b"a: 1\n").unwrap();
    let paths = vec![
        env.display().to_string(),
        app.join("nginx.conf").display().to_string(),
        format!("{}/*.yml", app.display()),
        app.join("missing.conf").display().to_string(),
    ];
    let s = Setup::new(None, paths);
    let repo = s.repo_path();

    let first = s.config_check().await;
    let JobOutcome::Committed { warnings, .. } = &first else {
        panic!("{first:?}")
    };
    assert!(
        warnings.iter().any(|w| w.contains("missing.conf")),
        "{warnings:?}"
    );
    let v1 = committed(&first).clone();
    for _ in 0..5 {
        match s.config_check().await {
            JobOutcome::Unchanged { since, warnings } => {
                assert_eq!(since, v1.id);
                assert!(warnings.iter().any(|w| w.contains("missing.conf")));
            }
            other => panic!("expected unchanged, got {other:?}"),
        }
    }
    assert_eq!(count_commits(&repo), 1, "unchanged checks store nothing");

    // A content change is stored once.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    std::fs::write(app.join("nginx.conf"), b"server { listen 80; }\n").unwrap();
    committed(&s.config_check().await);
    assert!(matches!(
        s.config_check().await,
        JobOutcome::Unchanged { .. }
    ));
    assert_eq!(count_commits(&repo), 2);

    // A mode change alone is stored.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    std::fs::set_permissions(app.join("a.yml"), std::fs::Permissions::from_mode(0o640)).unwrap();
    committed(&s.config_check().await);
    assert_eq!(count_commits(&repo), 3);

    // A new file matching the glob is a change of the set.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    std::fs::write(app.join("b.yml"), b"b: 2\n").unwrap();
    let v4 = committed(&s.config_check().await).clone();
    assert_eq!(count_commits(&repo), 4);

    // Nothing readable without the identity: no names, no contents in any stored byte.
    let stored = all_bytes(&repo);
    for needle in [
        &b"hunter2-UNIQUE-MARKER"[..],
        b"nginx.conf",
        b".env",
        b"a.yml",
    ] {
        assert!(
            !stored.windows(needle.len()).any(|w| w == needle),
            "{} found in the repository",
            String::from_utf8_lossy(needle)
        );
    }

    // Restore to a folder: absolute paths kept beneath it, the 0600 comes back by itself.
    let target = s.work.path().join("config-restore");
    let report = restore_snapshot(
        &s.catalogue,
        SnapshotRestoreOptions {
            job: "config".into(),
            target: Some(target.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.backup_id, v4.id);
    let rel = env.strip_prefix("/").unwrap();
    assert_eq!(
        std::fs::read(target.join(rel)).unwrap(),
        b"DB_PASSWORD=hunter2-UNIQUE-MARKER\n"
    );
    assert_eq!(
        std::fs::metadata(target.join(rel)).unwrap().mode() & 0o777,
        0o600
    );

    // In place: a damaged .env (content and mode) comes back; other files are untouched.
    std::fs::write(&env, b"broken\n").unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(app.join("unrelated"), b"keep me").unwrap();
    let dry = restore_snapshot(
        &s.catalogue,
        SnapshotRestoreOptions {
            job: "config".into(),
            in_place: true,
            dry_run: true,
            paths: vec![env.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.stats.files, 1);
    assert_eq!(
        std::fs::read(&env).unwrap(),
        b"broken\n",
        "dry run writes nothing"
    );
    restore_snapshot(
        &s.catalogue,
        SnapshotRestoreOptions {
            job: "config".into(),
            in_place: true,
            paths: vec![env.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(&env).unwrap(),
        b"DB_PASSWORD=hunter2-UNIQUE-MARKER\n"
    );
    assert_eq!(std::fs::metadata(&env).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(app.join("unrelated")).unwrap(), b"keep me");

    // An older version by id.
    let target = s.work.path().join("v1");
    restore_snapshot(
        &s.catalogue,
        SnapshotRestoreOptions {
            job: "config".into(),
            backup: Some(v1.id.clone()),
            target: Some(target.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(target.join(app.join("nginx.conf").strip_prefix("/").unwrap())).unwrap(),
        b"server {}\n"
    );
    assert!(
        !target
            .join(app.join("b.yml").strip_prefix("/").unwrap())
            .exists()
    );
}
