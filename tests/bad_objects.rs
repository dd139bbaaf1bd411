//! Damaged data objects met by a full restore (issue 11): a truncated, zero-length or
//! bytes-flipped object of a dump, of a files part, of a block-incremental base backup, and a
//! zero-length archived WAL segment. Each restore fails saying what happened — the key, the
//! repository, "truncated" with the size found and the size the commit record says, or
//! "corrupted" — and that retrying will not help; and none leaves a restored target that looks
//! done (no database, no half-written file, no `pg_control`, no promoted cluster).

mod common;

use common::daemon::{Setup, wait_for};
use common::files_under;
use common::output::stderr;
use common::pg::PgCluster;
use common::physical::Physical;
use common::runs::{backup_id, largest_object};
use std::path::Path;
use std::time::Duration;

/// How an object is damaged.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Cut to half its size.
    Truncated,
    /// Cut to nothing.
    Empty,
    /// 32 bytes in the middle inverted (the size stays).
    Flipped,
}

const ALL: [Damage; 3] = [Damage::Truncated, Damage::Empty, Damage::Flipped];

/// Damages `path`; returns (its original bytes, the stored size now).
fn damage(path: &Path, how: Damage) -> (Vec<u8>, u64) {
    let original = std::fs::read(path).unwrap();
    let damaged = match how {
        Damage::Truncated => original[..original.len() / 2].to_vec(),
        Damage::Empty => Vec::new(),
        Damage::Flipped => {
            let mut b = original.clone();
            let mid = b.len() / 2;
            for x in &mut b[mid..mid + 32] {
                *x ^= 0xff;
            }
            b
        }
    };
    std::fs::write(path, &damaged).unwrap();
    (original, damaged.len() as u64)
}

/// The error says what happened to which object in which repository, and that a retry will not
/// help; for a truncation both sizes.
fn assert_says(text: &str, key: &str, how: Damage, found: u64, recorded: u64) {
    assert!(text.contains(key), "the key {key} is not named: {text}");
    assert!(
        text.contains("repository `local`"),
        "the repository is not named: {text}"
    );
    assert!(
        text.contains("retrying will not help"),
        "no word on retrying: {text}"
    );
    assert!(
        !text.contains("decryption error") || text.contains("corrupted"),
        "a bare decryption error: {text}"
    );
    match how {
        Damage::Truncated | Damage::Empty => {
            assert!(text.contains("truncated"), "not called truncated: {text}");
            assert!(
                text.contains(&format!("holds {found} bytes"))
                    && text.contains(&format!("the commit record says {recorded}")),
                "the sizes ({found} found, {recorded} recorded) are not given: {text}"
            );
        }
        Damage::Flipped => {
            assert!(text.contains("corrupted"), "not called corrupted: {text}");
        }
    }
}

/// A dump whose data object is truncated, emptied or flipped: `restore database --create` fails
/// naming it and leaves no database behind; with the object repaired the same restore works.
#[test]
fn a_damaged_dump_object_fails_the_restore_by_name_and_creates_nothing() {
    let setup = Setup::new();
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.psql(
        "app",
        "CREATE TABLE t (id int primary key, v text); \
         INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 40000) g;",
    );
    setup.write_catalogue(&common::catalogue::dump_job(&cluster.url("app")));
    let daemon = setup.start_daemon();
    assert!(setup.ctl(&["run", "db-dump", "--wait"]).status.success());
    let id = backup_id(&setup, "db-dump");
    assert!(daemon.stop().success());
    let (path, key) = largest_object(&setup, "db-dump", &id);
    let recorded = std::fs::metadata(&path).unwrap().len();
    for (i, how) in ALL.into_iter().enumerate() {
        let (original, found) = damage(&path, how);
        let into = format!("restored_{i}");
        let out = setup.ctl(&[
            "restore", "database", "--job", "db-dump", "--into", &into, "--create",
        ]);
        assert_eq!(out.status.code(), Some(1), "{how:?}: {}", stderr(&out));
        assert_says(&stderr(&out), &key, how, found, recorded);
        assert!(
            !cluster.database_exists(&into) || cluster.tables(&into).is_empty(),
            "{how:?}: a half-restored database `{into}` was left: {:?}",
            cluster.tables(&into)
        );
        std::fs::write(&path, original).unwrap();
    }
    let out = setup.ctl(&[
        "restore", "database", "--job", "db-dump", "--into", "good", "--create",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cluster.table_fingerprints("app"),
        cluster.table_fingerprints("good")
    );
}

/// A files backup whose part is truncated, emptied or flipped: `restore files` fails naming
/// it; no file under the target holds other bytes than its source.
#[test]
fn a_damaged_files_part_fails_the_restore_by_name_and_leaves_no_half_file() {
    let setup = Setup::new();
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("small.txt"), b"small\n").unwrap();
    setup.write_catalogue(&common::catalogue::files_job("uploads", &src));
    let daemon = setup.start_daemon();
    assert!(
        setup
            .ctl(&["run", "uploads", "--full", "--wait"])
            .status
            .success()
    );
    let id = backup_id(&setup, "uploads");
    assert!(daemon.stop().success());
    let (path, key) = largest_object(&setup, "uploads", &id);
    assert!(key.contains("/data/"), "{key}");
    let recorded = std::fs::metadata(&path).unwrap().len();
    for (i, how) in ALL.into_iter().enumerate() {
        let (original, found) = damage(&path, how);
        let target = setup.path(&format!("target-{i}"));
        let out = setup.ctl(&[
            "restore",
            "files",
            "--job",
            "uploads",
            "--target",
            target.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{how:?}: {}", stderr(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("restored backup"));
        assert_says(&stderr(&out), &key, how, found, recorded);
        for f in files_under(&target) {
            let rel = f.strip_prefix(&target).unwrap();
            let name = rel.file_name().unwrap();
            let want = std::fs::read(src.join(name)).unwrap();
            assert!(
                std::fs::read(&f).unwrap() == want,
                "{how:?}: {} was left half-restored",
                f.display()
            );
        }
        std::fs::write(&path, original).unwrap();
    }
    let target = setup.path("target-good");
    let out = setup.ctl(&[
        "restore",
        "files",
        "--job",
        "uploads",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = files_under(&target)
        .into_iter()
        .find(|p| p.ends_with("big.bin"))
        .expect("big.bin restored");
    assert!(std::fs::read(restored).unwrap() == big);
}

/// A block-incremental base backup whose largest object is truncated: `restore cluster` fails
/// naming it and writes no `pg_control` (the folder cannot start as a finished restore). Then a
/// zero-length archived WAL segment: the recovery stops, wal-fetch's message says "truncated",
/// and the cluster is not promoted.
#[test]
fn a_truncated_block_object_or_an_empty_wal_segment_stops_restore_cluster() {
    let p = Physical::start("60s");
    let c = &p.cluster;
    c.create_database("app");
    c.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g;",
    );
    p.backup("--full");
    c.psql("app", "UPDATE t SET v = 'changed' WHERE id % 50 = 0;");
    let run = p.backup("--incremental");
    let id = run["backup_id"].as_str().unwrap().to_string();
    let (path, key) = largest_object(&p.setup, "base", &id);
    let recorded = std::fs::metadata(&path).unwrap().len();
    let (original, found) = damage(&path, Damage::Truncated);
    let target = p.setup.path("cut");
    let out = p.setup.ctl(&[
        "restore",
        "cluster",
        "--job",
        "base",
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_says(&stderr(&out), &key, Damage::Truncated, found, recorded);
    assert!(
        !target.join("global/pg_control").exists(),
        "a failed restore wrote pg_control"
    );
    std::fs::write(&path, original).unwrap();

    // An archived segment after the backup emptied: recovery stops there, not promoted.
    c.psql(
        "app",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(50001, 50100) g;",
    );
    let seg = c.psql("app", "SELECT pg_walfile_name(pg_switch_wal());");
    p.wait_archived(&seg);
    c.psql(
        "app",
        "INSERT INTO t SELECT g, 'later' FROM generate_series(50101, 50200) g;",
    );
    p.switch_wal();
    let (object, wal_key) = p.archived_object(&seg);
    std::fs::write(&object, b"").unwrap();
    let (out, restored) = p.restore("walzero", &[]);
    assert!(!out.status.success(), "the restore must report the failure");
    wait_for(Duration::from_secs(30), "the server to stop", || {
        (!restored.running()).then_some(())
    });
    let text = format!("{}\n{}", stderr(&out), restored.log());
    assert!(
        text.contains(&wal_key)
            && text.contains("repository `local`")
            && text.contains("truncated: the stored object is empty")
            && text.contains("retrying will not help"),
        "{text}"
    );
    assert!(
        !restored.log().contains("selected new timeline ID"),
        "it must not promote:\n{}",
        restored.log()
    );
}
