//! Unit tests of the state DB, each on a fresh file in a tempdir.

use super::*;
use chrono::TimeZone;

fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, h, m, 0)
        .single()
        .expect("valid time")
}

async fn db() -> (tempfile::TempDir, StateDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = StateDb::open(&dir.path().join("state.db"))
        .await
        .expect("open");
    (dir, db)
}

fn new_run(job: &str, at: DateTime<Utc>) -> NewRun {
    NewRun {
        job: job.into(),
        kind: JobKindName::PostgresDump,
        trigger: Trigger::Scheduled,
        backup_type: Some(BackupType::Full),
        started_at: at,
        backup_id: Some("20261126T020000Z-F".into()),
    }
}

fn outcome(status: RunStatus, at: DateTime<Utc>) -> RunOutcome {
    RunOutcome {
        status,
        finished_at: at,
        bytes_read: 100,
        bytes_stored: 40,
        error: None,
        backup_id: None,
    }
}

fn backup(job: &str, id: &str, repo: &str, at: DateTime<Utc>) -> BackupRow {
    BackupRow {
        job: job.into(),
        backup_id: id.into(),
        repository: repo.into(),
        kind: JobKindName::Files,
        backup_type: BackupType::Incremental,
        started_at: at,
        stopped_at: at + chrono::Duration::minutes(5),
        bytes_read: 10,
        bytes_stored: 5,
        ancestors: vec!["A".into(), "B".into()],
        summary: "3 files".into(),
    }
}

#[tokio::test]
async fn open_creates_folder_0700_wal_and_is_idempotent() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/deeper/state.db");
    let db = StateDb::open(&path).await.expect("open");
    let mode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    let jm: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(jm, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let bt: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(bt, 5000);
    let id = db.start_run(&new_run("a", t(1, 0))).await.unwrap();
    db.pool().close().await;
    // Reopen: migrations are a no-op, data kept.
    let db = StateDb::open(&path).await.expect("reopen");
    assert!(db.run(id).await.unwrap().is_some());
}

#[tokio::test]
async fn open_garbage_file_fails_clearly_and_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = StateDb::open(&path)
        .await
        .expect_err("garbage must not open");
    let msg = err.to_string();
    assert!(
        matches!(err, StateError::Open { .. } | StateError::Migrate { .. }),
        "{err:?}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    println!("garbage state DB: {msg}");
    assert_eq!(err.retry(), Retry::Permanent);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file must not be replaced"
    );
    assert!(StateDb::open_read_only(&path).await.is_err());
}

#[tokio::test]
async fn open_read_only_reads_and_refuses_writes_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let db = StateDb::open(&path).await.unwrap();
    let id = db.start_run(&new_run("a", t(1, 0))).await.unwrap();
    let ro = StateDb::open_read_only(&path).await.expect("read-only");
    assert_eq!(ro.run(id).await.unwrap().unwrap().job, "a");
    assert!(ro.start_run(&new_run("a", t(2, 0))).await.is_err());
    let missing = dir.path().join("missing.db");
    let err = StateDb::open_read_only(&missing)
        .await
        .expect_err("missing");
    assert!(err.to_string().contains("missing.db"), "{err}");
    assert!(!missing.exists());
}

#[tokio::test]
async fn start_progress_finish_run() {
    let (_d, db) = db().await;
    let id = db.start_run(&new_run("db-dump", t(2, 0))).await.unwrap();
    let r = db.run(id).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Running);
    assert_eq!(r.started_at, t(2, 0));
    assert_eq!(r.finished_at, None);
    assert_eq!(r.backup_type, Some(BackupType::Full));
    db.update_progress(id, 7, 3).await.unwrap();
    let r = db.run(id).await.unwrap().unwrap();
    assert_eq!((r.bytes_read, r.bytes_stored), (7, 3));
    db.finish_run(id, &outcome(RunStatus::Succeeded, t(2, 5)))
        .await
        .unwrap();
    let r = db.run(id).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(r.finished_at, Some(t(2, 5)));
    assert_eq!((r.bytes_read, r.bytes_stored), (100, 40));
    assert_eq!(
        r.backup_id.as_deref(),
        Some("20261126T020000Z-F"),
        "planned id kept"
    );
    let mut failed = outcome(RunStatus::Failed, t(2, 6));
    failed.error = Some("boom".into());
    failed.backup_id = Some("other".into());
    db.finish_run(id, &failed).await.unwrap();
    let r = db.run(id).await.unwrap().unwrap();
    assert_eq!(
        (r.error.as_deref(), r.backup_id.as_deref()),
        (Some("boom"), Some("other"))
    );
    assert!(db.finish_run(9999, &failed).await.is_err());
    assert!(db.run(9999).await.unwrap().is_none());
}

#[tokio::test]
async fn record_skipped_keeps_reason() {
    let (_d, db) = db().await;
    let id = db
        .record_skipped(&new_run("db", t(3, 0)), "still running (run 4)")
        .await
        .unwrap();
    let r = db.run(id).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Skipped);
    assert_eq!(r.error.as_deref(), Some("still running (run 4)"));
    assert_eq!(r.finished_at, Some(t(3, 0)));
}

#[tokio::test]
async fn runs_newest_first_with_job_filter_and_limit() {
    let (_d, db) = db().await;
    for (job, h) in [("a", 1), ("b", 2), ("a", 3), ("a", 4)] {
        db.start_run(&new_run(job, t(h, 0))).await.unwrap();
    }
    let all = db.runs(None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.started_at).collect::<Vec<_>>(),
        vec![t(4, 0), t(3, 0), t(2, 0), t(1, 0)]
    );
    let a = db.runs(Some("a"), 2).await.unwrap();
    assert_eq!(
        a.iter().map(|r| r.started_at).collect::<Vec<_>>(),
        vec![t(4, 0), t(3, 0)]
    );
    assert!(db.runs(Some("zzz"), 5).await.unwrap().is_empty());
}

#[tokio::test]
async fn runs_with_status_oldest_first() {
    let (_d, db) = db().await;
    let a = db.start_run(&new_run("a", t(1, 0))).await.unwrap();
    let b = db.start_run(&new_run("b", t(2, 0))).await.unwrap();
    let c = db.start_run(&new_run("c", t(0, 30))).await.unwrap();
    db.finish_run(b, &outcome(RunStatus::Failed, t(2, 1)))
        .await
        .unwrap();
    let running = db.runs_with_status(RunStatus::Running).await.unwrap();
    assert_eq!(running.iter().map(|r| r.id).collect::<Vec<_>>(), vec![c, a]);
    assert_eq!(
        db.runs_with_status(RunStatus::Failed).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn last_runs_newest_and_newest_success() {
    let (_d, db) = db().await;
    assert_eq!(db.last_runs("a").await.unwrap(), (None, None));
    let ok = db.start_run(&new_run("a", t(1, 0))).await.unwrap();
    db.finish_run(ok, &outcome(RunStatus::Partial, t(1, 1)))
        .await
        .unwrap();
    let bad = db.start_run(&new_run("a", t(2, 0))).await.unwrap();
    db.finish_run(bad, &outcome(RunStatus::Failed, t(2, 1)))
        .await
        .unwrap();
    db.start_run(&new_run("b", t(5, 0))).await.unwrap();
    let (last, success) = db.last_runs("a").await.unwrap();
    assert_eq!(last.map(|r| r.id), Some(bad));
    assert_eq!(success.map(|r| r.id), Some(ok));
}

#[tokio::test]
async fn unknown_status_in_db_is_a_clear_error() {
    let (_d, db) = db().await;
    let id = db.start_run(&new_run("a", t(1, 0))).await.unwrap();
    sqlx::query("UPDATE runs SET status = 'exploded' WHERE id = ?")
        .bind(id)
        .execute(db.pool())
        .await
        .unwrap();
    let err = db.run(id).await.expect_err("unknown status");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StateError::BadValue {
                table: "runs",
                column: "status",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        msg.contains("exploded") && msg.contains("runs.status"),
        "{msg}"
    );
    sqlx::query("UPDATE runs SET status = 'failed', started_at = 'yesterday' WHERE id = ?")
        .bind(id)
        .execute(db.pool())
        .await
        .unwrap();
    assert!(
        db.runs(None, 1)
            .await
            .unwrap_err()
            .to_string()
            .contains("runs.started_at")
    );
}

/// `EXPLAIN QUERY PLAN` of `sql` with `job` bound: one detail line per step.
async fn query_plan(db: &StateDb, sql: &str, job: &str) -> Vec<String> {
    sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
        .bind(job)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<String, _>("detail").unwrap())
        .collect()
}

/// `last_runs` on a long history reads one index entry per query, never the table: the plans of
/// its two queries (the SQL of `StateDb::last_runs`) name their index and sort nothing.
/// (Timings are left to benchmarks.)
#[tokio::test]
async fn last_runs_uses_its_indexes_with_100k_runs() {
    let (_d, db) = db().await;
    let jobs = ["db-dump", "db", "wal", "uploads", "config"];
    let base = t(0, 0);
    let mut tx = db.pool().begin().await.unwrap();
    for i in 0..100_000i64 {
        let status = if i % 7 == 0 { "failed" } else { "succeeded" };
        sqlx::query(
            "INSERT INTO runs (job, kind, \"trigger\", backup_type, status, started_at, finished_at)
             VALUES (?, 'files', 'scheduled', 'full', ?, ?, ?)",
        )
        .bind(jobs[(i % 5) as usize])
        .bind(status)
        .bind(ts(base + chrono::Duration::seconds(i)))
        .bind(ts(base + chrono::Duration::seconds(i + 1)))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let last_sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE job = ? ORDER BY started_at DESC, id DESC LIMIT 1"
    );
    let success_sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE job = ? AND status IN ('succeeded', 'partial', 'unchanged')
             ORDER BY started_at DESC, id DESC LIMIT 1"
    );
    for (sql, index) in [
        (&last_sql, "runs_by_job"),
        (&success_sql, "runs_success_by_job"),
    ] {
        let plan = query_plan(&db, sql, "db").await;
        assert!(
            plan.iter().any(|d| d.starts_with("SEARCH runs USING INDEX")
                && d.contains(&format!("INDEX {index} "))),
            "{sql}: the plan does not search `{index}`: {plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|d| d.contains("TEMP B-TREE") || d.starts_with("SCAN runs")),
            "{sql}: the plan sorts or scans: {plan:?}"
        );
    }
    for job in jobs {
        let (last, success) = db.last_runs(job).await.unwrap();
        assert!(last.is_some() && success.is_some());
    }
    let (last, success) = db.last_runs("config").await.unwrap();
    assert_eq!(
        last.unwrap().started_at,
        base + chrono::Duration::seconds(99_999)
    );
    // 99_999 % 7 != 0 and 99_999 % 5 == 4 ("config"): the newest run is also a success.
    assert_eq!(
        success.unwrap().started_at,
        base + chrono::Duration::seconds(99_999)
    );
}

#[tokio::test]
async fn backups_upsert_filter_order_remove() {
    let (_d, db) = db().await;
    db.upsert_backup(&backup("files", "I2", "local", t(3, 0)))
        .await
        .unwrap();
    db.upsert_backup(&backup("files", "F1", "local", t(1, 0)))
        .await
        .unwrap();
    db.upsert_backup(&backup("files", "F1", "offsite", t(1, 0)))
        .await
        .unwrap();
    db.upsert_backup(&backup("other", "F9", "local", t(2, 0)))
        .await
        .unwrap();
    let mut changed = backup("files", "I2", "local", t(3, 0));
    changed.summary = "changed".into();
    db.upsert_backup(&changed).await.unwrap();
    let all = db.backups(None, None).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].started_at, t(1, 0));
    assert_eq!(
        all[3], changed,
        "round trip incl. ancestors and replaced summary"
    );
    let files_local = db.backups(Some("files"), Some("local")).await.unwrap();
    assert_eq!(
        files_local
            .iter()
            .map(|b| b.backup_id.as_str())
            .collect::<Vec<_>>(),
        ["F1", "I2"]
    );
    assert_eq!(db.backups(None, Some("offsite")).await.unwrap().len(), 1);
    db.remove_backup("files", "F1", "local").await.unwrap();
    assert_eq!(db.backups(Some("files"), None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn last_fire_round_trip_per_type() {
    let (_d, db) = db().await;
    assert_eq!(db.last_fire("db", BackupType::Full).await.unwrap(), None);
    db.set_last_fire("db", BackupType::Full, t(4, 0))
        .await
        .unwrap();
    db.set_last_fire("db", BackupType::Incremental, t(2, 0))
        .await
        .unwrap();
    db.set_last_fire("db", BackupType::Full, t(5, 0))
        .await
        .unwrap();
    assert_eq!(
        db.last_fire("db", BackupType::Full).await.unwrap(),
        Some(t(5, 0))
    );
    assert_eq!(
        db.last_fire("db", BackupType::Incremental).await.unwrap(),
        Some(t(2, 0))
    );
}

#[tokio::test]
async fn job_known_since_is_set_once() {
    let (_d, db) = db().await;
    assert_eq!(db.job_known_since("db", t(1, 0)).await.unwrap(), t(1, 0));
    assert_eq!(db.job_known_since("db", t(9, 0)).await.unwrap(), t(1, 0));
    assert_eq!(db.job_known_since("new", t(9, 0)).await.unwrap(), t(9, 0));
}

#[tokio::test]
async fn audit_round_trip_newest_first() {
    let (_d, db) = db().await;
    let ev = |action: &str, allowed| AuditEvent {
        at: t(1, 0),
        uid: Some(65534),
        gid: Some(65534),
        pid: Some(42),
        user: Some("nobody".into()),
        action: action.into(),
        allowed,
        detail: "{}".into(),
        ..AuditEvent::default()
    };
    db.audit(&ev("run", false)).await.unwrap();
    db.audit(&AuditEvent {
        uid: None,
        gid: None,
        pid: None,
        user: None,
        ..ev("restore database", true)
    })
    .await
    .unwrap();
    let got = db.audit_events(10).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].action, "restore database");
    assert_eq!(got[0].uid, None);
    assert_eq!(got[1], ev("run", false));
    assert_eq!(db.audit_events(1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn manifest_copy_round_trip_with_non_utf8_path() {
    let (_d, db) = db().await;
    assert_eq!(db.manifest_copy("files", "F1").await.unwrap(), None);
    let path = PathBuf::from(std::ffi::OsString::from_vec(
        b"/var/lib/bdc/m\xff.json".to_vec(),
    ));
    let copy = ManifestCopy {
        job: "files".into(),
        backup_id: "F1".into(),
        sha256: "ab".repeat(32),
        path,
    };
    db.set_manifest_copy(&copy).await.unwrap();
    assert_eq!(
        db.manifest_copy("files", "F1").await.unwrap(),
        Some(copy.clone())
    );
    let newer = ManifestCopy {
        sha256: "cd".repeat(32),
        ..copy
    };
    db.set_manifest_copy(&newer).await.unwrap();
    assert_eq!(db.manifest_copy("files", "F1").await.unwrap(), Some(newer));
    db.remove_manifest_copy("files", "F1").await.unwrap();
    assert_eq!(db.manifest_copy("files", "F1").await.unwrap(), None);
}

#[tokio::test]
async fn newer_schema_and_uncreatable_folder_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let db = StateDb::open(&path).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from a newer bdc-backupd', 1, x'00', 0)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    db.pool().close().await;
    let err = StateDb::open(&path)
        .await
        .expect_err("a newer schema must not be used");
    assert!(matches!(err, StateError::Migrate { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = StateDb::open(&file.join("sub/state.db"))
        .await
        .expect_err("parent is a file");
    assert!(matches!(err, StateError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("plain-file/sub"), "{err}");
}

#[tokio::test]
async fn retention_passes_last_per_repository() {
    use crate::model::RetentionPass;
    let (_dir, db) = db().await;
    assert!(db.last_retention_pass("db").await.unwrap().is_empty());
    let pass = |repo: &str, at, deleted, error: Option<&str>| RetentionPass {
        job: "db".into(),
        repository: repo.into(),
        at,
        kept: 7,
        deleted,
        error: error.map(String::from),
    };
    db.record_retention_pass(&pass("local", t(1, 0), 3, None))
        .await
        .unwrap();
    db.record_retention_pass(&pass("local", t(2, 0), 1, Some("boom")))
        .await
        .unwrap();
    db.record_retention_pass(&pass("offsite", t(1, 30), 2, None))
        .await
        .unwrap();
    let mut other = pass("local", t(3, 0), 9, None);
    other.job = "files".into();
    db.record_retention_pass(&other).await.unwrap();
    let last = db.last_retention_pass("db").await.unwrap();
    assert_eq!(
        last,
        vec![
            pass("local", t(2, 0), 1, Some("boom")),
            pass("offsite", t(1, 30), 2, None)
        ]
    );
}
