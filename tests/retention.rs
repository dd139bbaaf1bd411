//! `bdc-backupctl retention` and `usage` as operators run them: through the real daemon (dry
//! run, real pass, `status` showing the pass) and without a daemon (straight to the repository).

mod common;

use bdc_backup::model::{BackupType, JobKindName};
use bdc_backup::repository::{
    BackupId, CommitRecord, FORMAT_VERSION, ObjectRecord, Repository, Store, format,
};
use bytes::Bytes;
use chrono::{Duration, Utc};
use common::daemon::Setup;

/// A dump job that never fires during the test (Feb 29, 02:00) with a short policy.
const JOB: &str = r#"
[postgres]
url = "postgresql://postgres@127.0.0.1:1/postgres"

[retention.short]
daily = 3
weekly = 2

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 29 2 *"
databases = ["app"]
repositories = ["local"]
retention = "short"
"#;

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

/// `days` daily dump backups of 1000 bytes, the newest an hour ago.
fn populate(setup: &Setup, days: i64) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = Repository::with_store("local", Store::local(setup.path("repo")).unwrap());
        let mut ids = Vec::new();
        for d in 0..days {
            let stop = Utc::now() - Duration::hours(1) - Duration::days(d);
            let start = stop - Duration::minutes(5);
            let id = BackupId::new(start, BackupType::Full).0;
            let data = format::data_key("db-dump", &id, 0);
            let manifest = format::manifest_key("db-dump", &id);
            for k in [&data, &manifest] {
                repo.store
                    .put_create(k, Bytes::from_static(b"bytes"))
                    .await
                    .unwrap();
            }
            repo.commit(&CommitRecord {
                format_version: FORMAT_VERSION,
                id: id.clone(),
                job: "db-dump".into(),
                kind: JobKindName::PostgresDump,
                backup_type: BackupType::Full,
                ancestors: vec![],
                started_at: start,
                stopped_at: stop,
                bytes_read: 2000,
                bytes_stored: 1000,
                objects: vec![object(&data)],
                manifest: object(&manifest),
                details: Default::default(),
                software: "test".into(),
            })
            .await
            .unwrap();
            ids.push(id);
        }
        ids
    })
}

fn committed(setup: &Setup) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = Repository::with_store("local", Store::local(setup.path("repo")).unwrap());
        repo.list_commits(Some("db-dump")).await.unwrap().0.len()
    })
}

#[test]
fn retention_and_usage_through_the_daemon() {
    let setup = Setup::new();
    setup.write_catalogue(JOB);
    populate(&setup, 40);
    let daemon = setup.start_daemon();

    // Dry run: the plan, nothing deleted, no pass recorded.
    let reports = setup.ctl_json(&["retention", "--dry-run"]);
    let r = &reports[0];
    assert_eq!(r["job"], "db-dump");
    assert_eq!(r["dry-run"], true);
    let kept = r["kept"].as_u64().unwrap();
    let deleted = r["to-delete"].as_u64().unwrap();
    assert_eq!(r["deleted"], 0);
    assert_eq!(kept + deleted, 40);
    assert!(
        (3..=5).contains(&kept),
        "daily 3 + weekly 2 keeps 3 to 5: {kept}"
    );
    assert_eq!(committed(&setup), 40);
    let human = setup.ctl(&["retention", "--dry-run"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("KEEP") && text.contains("daily 1/3"),
        "{text}"
    );

    // Usage through the daemon (once reconciliation has filled the backups table).
    let usage = common::daemon::wait_for(std::time::Duration::from_secs(10), "usage rows", || {
        let u = setup.ctl_json(&["usage", "--weeks", "4"]);
        (u["rows"][0]["backups"].as_u64() == Some(40)).then_some(u)
    });
    assert_eq!(usage["rows"][0]["bytes-stored"], 40_000);
    assert_eq!(usage["rows"][0]["weekly"].as_array().unwrap().len(), 4);
    assert!(usage["rows"][0]["steady-state-backups"].as_u64().is_some());

    // The real pass: deleted, confirmed, recorded; status shows it.
    let reports = setup.ctl_json(&["retention", "--job", "db-dump"]);
    assert_eq!(reports[0]["deleted"].as_u64().unwrap(), deleted);
    assert_eq!(reports[0]["confirmed"], true);
    assert_eq!(committed(&setup) as u64, kept);
    let status = setup.ctl_json(&["status"]);
    let pass = &status["jobs"][0]["retention"][0];
    assert_eq!(pass["repository"], "local");
    assert_eq!(pass["deleted"].as_u64().unwrap(), deleted);
    let backups = setup.ctl_json(&["backups", "--job", "db-dump"]);
    assert_eq!(backups.as_array().unwrap().len() as u64, kept);

    // Unknown job: exit 1 with the daemon's message.
    let out = setup.ctl(&["retention", "--job", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    daemon.stop();

    // Without the daemon: straight to the repository; nothing more to delete.
    let out = setup.ctl(&["--json", "retention"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("directly"));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["deleted"], 0);
    let out = setup.ctl(&["usage"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("db-dump"));
}

#[test]
fn retention_offline_deletes_and_confirms() {
    let setup = Setup::new();
    setup.write_catalogue(JOB);
    populate(&setup, 20);
    let out = setup.ctl(&["retention"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("confirmed by listing"), "{text}");
    assert!(committed(&setup) <= 5);
}

/// A base job with a WAL job and a 2-day PITR window (schedules never fire during the test).
const BASE_JOBS: &str = r#"
[postgres]
url = "postgresql://postgres@127.0.0.1:1/postgres"
data-directory = "/nonexistent/data"

[retention.four]
daily = 4

[[job]]
name = "db"
kind = "postgres-base"
full = "0 2 29 2 *"
wal-job = "wal"
pitr-window = "2d"
repositories = ["local"]
retention = "four"

[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["local"]
"#;

fn wal_segment(n: u32) -> String {
    format!("00000001{:08X}{:08X}", 0, n)
}

/// WAL retention through the ctl without a daemon: 6 daily base backups (backup i needs
/// segments 10i+1..10i+2), 60 archived segments and a history file; `daily = 4` keeps backups
/// 2..5; the 2-day window anchors continuous WAL at backup 3; backup 2's own WAL stays pinned.
#[test]
fn wal_retention_keeps_what_kept_backups_and_the_window_need() {
    use bdc_backup::postgres::base_record::BaseBackupInfo;
    use bdc_backup::wal::{ClusterIdentity, WalName, format as walfmt};
    let setup = Setup::new();
    setup.write_catalogue(BASE_JOBS);
    let cluster = ClusterIdentity {
        system_identifier: 7_100_000_000_000_000_123,
        pg_major: 15,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key_of =
        |name: &str| walfmt::object_key(&cluster, &WalName::parse(name).unwrap(), &"ab".repeat(32));
    rt.block_on(async {
        let repo = Repository::with_store("local", Store::local(setup.path("repo")).unwrap());
        for n in 1..=60 {
            repo.store
                .put_create(&key_of(&wal_segment(n)), Bytes::from_static(b"wal"))
                .await
                .unwrap();
        }
        repo.store
            .put_create(&key_of("00000001.history"), Bytes::from_static(b"h"))
            .await
            .unwrap();
        // Another cluster's WAL in the same repository is never touched.
        let other = ClusterIdentity {
            system_identifier: 99,
            pg_major: 15,
        };
        repo.store
            .put_create(
                &walfmt::object_key(
                    &other,
                    &WalName::parse(&wal_segment(1)).unwrap(),
                    &"cd".repeat(32),
                ),
                Bytes::from_static(b"x"),
            )
            .await
            .unwrap();
        for i in 0..6u32 {
            let stop = Utc::now() - Duration::hours(1) - Duration::days(i64::from(5 - i));
            let start = stop - Duration::minutes(5);
            let id = BackupId::new(start, BackupType::Full).0;
            let manifest = format::manifest_key("db", &id);
            repo.store
                .put_create(&manifest, Bytes::from_static(b"bytes"))
                .await
                .unwrap();
            let mut details = serde_json::Map::new();
            BaseBackupInfo {
                cluster,
                server_version: 150_004,
                timeline: 1,
                start_lsn: format!("0/{:X}", (10 * i + 1) << 24),
                stop_lsn: format!("0/{:X}", ((10 * i + 2) << 24) + 0x100),
                start_wal: wal_segment(10 * i + 1),
                stop_wal: wal_segment(10 * i + 2),
                wal_segment_size: 16 << 20,
                wal_job: Some("wal".into()),
                data_checksums: true,
                checksum_failures: 0,
                backup_label_key: format!("backups/db/{id}/backup_label.age"),
                tablespace_map_key: None,
                tablespaces: vec![],
            }
            .into_details(&mut details);
            repo.commit(&CommitRecord {
                format_version: FORMAT_VERSION,
                id: id.clone(),
                job: "db".into(),
                kind: JobKindName::PostgresBase,
                backup_type: BackupType::Full,
                ancestors: vec![],
                started_at: start,
                stopped_at: stop,
                bytes_read: 2000,
                bytes_stored: 1000,
                objects: vec![],
                manifest: object(&manifest),
                details,
                software: "test".into(),
            })
            .await
            .unwrap();
        }
    });
    let listed = |setup: &Setup| -> std::collections::BTreeSet<String> {
        rt.block_on(async {
            let repo = Repository::with_store("local", Store::local(setup.path("repo")).unwrap());
            repo.store
                .list("wal/")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect()
        })
    };
    // Dry run: nothing deleted, the plan says what would go.
    let out = setup.ctl(&["retention", "--job", "db", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("would delete 28"), "{text}");
    assert_eq!(listed(&setup).len(), 62);

    let out = setup.ctl(&["--json", "retention", "--job", "db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = listed(&setup);
    for n in 1..=60u32 {
        let expected = (21..=22).contains(&n) || n >= 31;
        assert_eq!(
            left.contains(&key_of(&wal_segment(n))),
            expected,
            "segment {n}"
        );
    }
    assert!(left.contains(&key_of("00000001.history")));
    assert!(left.iter().any(|k| k.starts_with("wal/99-15/")));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = json.to_string();
    assert!(text.contains("\"deleted\":28"), "{text}");
    assert!(text.contains("\"confirmed\":true"), "{text}");
}
