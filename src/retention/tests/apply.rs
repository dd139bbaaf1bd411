//! Tests of retention, continued: apply / run_for_job / cleanup_uncommitted on local repositories in
//! a tempdir, the protocol requests and the state DB record.

use super::*;

fn object(key: &str) -> ObjectRecord {
    ObjectRecord {
        key: key.to_string(),
        size: 5,
        sha256: "00".repeat(32),
        content_size: 5,
        content_sha256: "00".repeat(32),
        compression: "zstd".into(),
        encryption: "age".into(),
    }
}

/// Stores two small objects and commits the record of `b` for `job`.
async fn commit(repo: &Repository, job: &str, b: &BackupInfo) {
    let data = format::data_key(job, &b.id, 0);
    let manifest = format::manifest_key(job, &b.id);
    for k in [&data, &manifest] {
        repo.store
            .put_create(k, Bytes::from_static(b"bytes"))
            .await
            .unwrap();
    }
    let record = CommitRecord {
        format_version: FORMAT_VERSION,
        id: b.id.clone(),
        job: job.into(),
        kind: JobKindName::Files,
        backup_type: b.backup_type,
        ancestors: b.ancestors.clone(),
        started_at: b.started_at,
        stopped_at: b.stopped_at,
        bytes_read: 10,
        bytes_stored: b.bytes_stored,
        objects: vec![object(&data)],
        manifest: object(&manifest),
        details: Default::default(),
        software: "test".into(),
    };
    repo.commit(&record).await.unwrap();
}

fn catalogue_for(root: &std::path::Path) -> Catalogue {
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let text = format!(
        r#"
[daemon]
state-db = "{root}/state.db"
socket = "{root}/control.sock"
timezone = "Europe/Berlin"

[encryption]
recipients = ["{recipient}"]

[repository.local]
url = "file://{root}/repo"

[retention.short]
daily = 3
weekly = 2

[[job]]
name = "uploads"
kind = "files"
path = "{root}/uploads"
full = "0 4 * * 0"
incremental = "0 2 * * *"
repositories = ["local"]
retention = "short"
"#,
        root = root.display()
    );
    crate::catalogue::parse_str(&text, &root.join("catalogue.toml"), &[]).expect("catalogue")
}

#[tokio::test]
async fn run_for_job_deletes_confirms_and_keeps_chains_intact() {
    let dir = tempfile::tempdir().unwrap();
    let catalogue = catalogue_for(dir.path());
    let repo = Repository::open(catalogue.repository("local").unwrap()).unwrap();
    let job = catalogue.job("uploads").unwrap();
    let backups = chain_history(date(2026, 10, 4), date(2026, 11, 26));
    for b in &backups {
        commit(&repo, "uploads", b).await;
    }
    // Another job's backups are never touched.
    let other = full(berlin(2020, 1, 1, 0, 0));
    commit(&repo, "other", &other).await;
    let now = berlin(2026, 11, 26, 12, 0);

    // Dry run: nothing deleted.
    let dry = run_for_job(&catalogue, job, &repo, now, true)
        .await
        .unwrap();
    assert!(dry.dry_run && dry.to_delete > 0 && dry.deleted == 0 && dry.confirmed.is_none());
    assert_eq!(
        repo.list_commits(Some("uploads")).await.unwrap().0.len(),
        backups.len()
    );
    let text = dry.to_string();
    assert!(
        text.contains("DRY RUN") && text.contains("KEEP") && text.contains("daily 1/3"),
        "{text}"
    );

    let report = run_for_job(&catalogue, job, &repo, now, false)
        .await
        .unwrap();
    assert!(report.is_success(), "{report}");
    assert_eq!(report.confirmed, Some(true));
    assert_eq!(report.deleted, dry.to_delete);
    assert_eq!(report.to_delete, dry.to_delete);
    assert_eq!(report.kept + report.deleted, backups.len());
    assert_eq!(report.policy.as_deref(), Some("short"));
    let left = repo.list_commits(Some("uploads")).await.unwrap().0;
    assert_eq!(left.len(), report.kept);
    // Every kept incremental's ancestors are still committed.
    let ids: BTreeSet<&str> = left.iter().map(|r| r.id.as_str()).collect();
    for r in &left {
        for a in &r.ancestors {
            assert!(ids.contains(a.as_str()), "{} lost its ancestor {a}", r.id);
        }
    }
    // No object of a deleted backup is left; no empty folder either.
    for b in report.backups.iter().filter(|b| b.action == Action::Delete) {
        let objs = repo
            .store
            .list(&format::backup_prefix("uploads", &b.id))
            .await
            .unwrap();
        assert!(objs.is_empty());
        assert!(!dir.path().join("repo/backups/uploads").join(&b.id).exists());
    }
    assert!(
        repo.commit_record("other", &other.id)
            .await
            .unwrap()
            .is_some()
    );
    // Twice changes nothing.
    let again = run_for_job(&catalogue, job, &repo, now, false)
        .await
        .unwrap();
    assert_eq!(again.deleted, 0);
    assert_eq!(again.confirmed, None);
    // JSON round trip.
    let json = serde_json::to_string(&report).unwrap();
    let back: RetentionReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
}

#[tokio::test]
async fn unreadable_commit_record_withholds_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let catalogue = catalogue_for(dir.path());
    let repo = Repository::open(catalogue.repository("local").unwrap()).unwrap();
    let job = catalogue.job("uploads").unwrap();
    let backups = daily_fulls(date(2026, 11, 1), date(2026, 11, 20), 2);
    for b in &backups {
        commit(&repo, "uploads", b).await;
    }
    repo.store
        .put_create(
            &format::commit_key("uploads", "20261121T000000Z-F"),
            Bytes::from_static(b"{ not json"),
        )
        .await
        .unwrap();
    let report = run_for_job(&catalogue, job, &repo, berlin(2026, 11, 21, 0, 0), false)
        .await
        .unwrap();
    assert!(!report.dry_run);
    assert!(report.to_delete > 0, "the plan still shows what would go");
    assert_eq!(report.deleted, 0);
    assert!(
        report.to_string().contains("not deleted (withheld)"),
        "{report}"
    );
    assert!(report.backups.iter().all(|b| b.action != Action::Delete));
    assert!(!report.is_success());
    assert_eq!(
        repo.list_commits(Some("uploads")).await.unwrap().0.len(),
        20
    );
}

#[tokio::test]
async fn targets_and_run_matching() {
    let dir = tempfile::tempdir().unwrap();
    let catalogue = catalogue_for(dir.path());
    assert_eq!(targets(&catalogue, None, None).unwrap().len(), 1);
    assert!(matches!(
        targets(&catalogue, Some("nope"), None),
        Err(RetentionError::UnknownJob(_))
    ));
    assert!(matches!(
        targets(&catalogue, None, Some("nope")),
        Err(RetentionError::UnknownRepository(_))
    ));
    let reports = run_matching(&catalogue, None, None, Utc::now(), true)
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].kept, 0);
}

fn set_mtime(path: &std::path::Path, ago: std::time::Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - ago).unwrap();
}

#[tokio::test]
async fn cleanup_removes_old_uncommitted_and_staging_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = Repository::with_store("local", Store::local(&root).unwrap());
    let hour = std::time::Duration::from_secs(3600);
    // committed (old objects): untouched
    let committed = full(berlin(2026, 11, 1, 2, 0));
    commit(&repo, "db", &committed).await;
    // uncommitted, old: removed
    let old = "backups/db/20261102T000000Z-F/data/000000.age";
    // uncommitted, young: spared
    let young = "backups/db/20261103T000000Z-F/data/000000.age";
    // uncommitted, old, but running: spared
    let running = "backups/db/20261104T000000Z-F/data/000000.age";
    for k in [old, young, running] {
        repo.store
            .put_create(k, Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    for k in [old, running] {
        set_mtime(&root.join(k), 48 * hour);
    }
    for o in repo
        .store
        .list(&format::backup_prefix("db", &committed.id))
        .await
        .unwrap()
    {
        set_mtime(&root.join(&o.key), 48 * hour);
    }
    let stale_staging = root.join(".staging/stale");
    let fresh_staging = root.join(".staging/fresh");
    std::fs::write(&stale_staging, b"abc").unwrap();
    std::fs::write(&fresh_staging, b"abc").unwrap();
    set_mtime(&stale_staging, 48 * hour);

    let report = cleanup_uncommitted(
        &repo,
        24 * hour,
        &["backups/db/20261104T000000Z-F/".to_string()],
    )
    .await
    .unwrap();
    assert_eq!(
        report.removed,
        vec![("db/20261102T000000Z-F".to_string(), 1)]
    );
    assert_eq!(report.spared.len(), 2);
    assert_eq!(report.staging_removed, 1);
    assert!(!root.join(old).exists());
    assert!(!root.join("backups/db/20261102T000000Z-F").exists());
    assert!(root.join(young).exists());
    assert!(root.join(running).exists());
    assert!(!stale_staging.exists());
    assert!(fresh_staging.exists());
    assert!(
        repo.commit_record("db", &committed.id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        repo.store
            .list(&format::backup_prefix("db", &committed.id))
            .await
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn within_threshold_and_format() {
    assert_eq!(plan::format_within(Duration::from_secs(2 * 86_400)), "2d");
    assert_eq!(plan::format_within(Duration::from_secs(36 * 3600)), "36h");
    assert_eq!(plan::format_within(Duration::from_secs(90 * 60)), "90m");
    // 2d back from 2026-10-26 12:00 CET is 2026-10-24 12:00 CEST (49 hours).
    let latest = berlin(2026, 10, 26, 12, 0);
    let t = plan::within_threshold(latest, Duration::from_secs(2 * 86_400), Berlin);
    assert_eq!(t, berlin(2026, 10, 24, 12, 0));
    assert_eq!(latest - t, chrono::Duration::hours(49));
    let _ = Days::new(1);
}

#[test]
fn protocol_requests_and_access() {
    use crate::control::auth::Access;
    use crate::protocol::Request;
    let dry: Request =
        serde_json::from_str(r#"{"type":"retention","job":null,"repository":null,"dry-run":true}"#)
            .unwrap();
    assert_eq!(
        dry,
        Request::Retention {
            job: None,
            repository: None,
            dry_run: true
        }
    );
    let real: Request = serde_json::from_str(r#"{"type":"retention","job":"db"}"#).unwrap();
    assert!(real.is_mutation());
    assert!(!dry.is_mutation());
    let usage: Request = serde_json::from_str(r#"{"type":"usage","job":null}"#).unwrap();
    for r in [&dry, &real, &usage] {
        assert_eq!(Access::of(r) == Access::Mutate, r.is_mutation(), "{r:?}");
    }
    assert_eq!(real.verb(), "retention");
    assert_eq!(usage.verb(), "usage");
}

#[test]
fn fit_reply_drops_kept_rows_first() {
    let backups = daily_fulls(date(2020, 1, 1), date(2026, 12, 31), 2);
    let p = plan(&backups, &standard(), Berlin, berlin(2027, 1, 1, 0, 0));
    let report = apply_dry(&p);
    let mut reports = vec![report.clone()];
    fit_reply(&mut reports, usize::MAX);
    assert_eq!(reports[0], report);
    let full_size = serde_json::to_vec(&reports).unwrap().len();
    let mut reports = vec![report.clone()];
    fit_reply(&mut reports, full_size - 1);
    assert!(reports[0].backups.iter().all(|b| b.action != Action::Keep));
    assert_eq!(reports[0].kept, report.kept, "counts stay");
    let mut reports = vec![report.clone()];
    fit_reply(&mut reports, 20_000);
    assert!(serde_json::to_vec(&reports).unwrap().len() <= 20_000);
    assert!(!reports[0].warnings.is_empty());
}

/// The dry-run report of a plan without a repository (apply's bookkeeping only).
fn apply_dry(p: &Plan) -> RetentionReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::with_store("local", Store::local(dir.path()).unwrap());
    rt.block_on(apply(&repo, "db", p, true, Utc::now()))
}

#[tokio::test]
async fn record_in_state_removes_rows_and_records_real_passes_only() {
    let dir = tempfile::tempdir().unwrap();
    let state = crate::state::StateDb::open(&dir.path().join("state.db"))
        .await
        .unwrap();
    let catalogue = catalogue_for(dir.path());
    let repo = Repository::open(catalogue.repository("local").unwrap()).unwrap();
    let job = catalogue.job("uploads").unwrap();
    let backups = daily_fulls(date(2026, 11, 1), date(2026, 11, 10), 2);
    for b in &backups {
        commit(&repo, "uploads", b).await;
        state
            .upsert_backup(&crate::model::BackupRow {
                job: "uploads".into(),
                backup_id: b.id.clone(),
                repository: "local".into(),
                kind: JobKindName::Files,
                backup_type: b.backup_type,
                started_at: b.started_at,
                stopped_at: b.stopped_at,
                bytes_read: 10,
                bytes_stored: b.bytes_stored,
                ancestors: vec![],
                summary: String::new(),
            })
            .await
            .unwrap();
    }
    let now = berlin(2026, 11, 10, 12, 0);
    let dry = run_for_job(&catalogue, job, &repo, now, true)
        .await
        .unwrap();
    record_in_state(&state, &dry).await.unwrap();
    assert!(
        state
            .last_retention_pass("uploads")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        state.backups(Some("uploads"), None).await.unwrap().len(),
        10
    );
    let real = run_for_job(&catalogue, job, &repo, now, false)
        .await
        .unwrap();
    record_in_state(&state, &real).await.unwrap();
    let rows = state.backups(Some("uploads"), None).await.unwrap();
    assert_eq!(rows.len(), real.kept);
    let passes = state.last_retention_pass("uploads").await.unwrap();
    assert_eq!(passes.len(), 1);
    assert_eq!(passes[0].deleted as usize, real.deleted);
    assert_eq!(passes[0].kept as usize, real.kept);
    assert_eq!(passes[0].error, None);
}
