//! WAL archiving end to end (docs/design.md §5): a real PostgreSQL cluster archives through the real
//! `bdc-backupctl wal-push` into the real daemon; `wal-fetch` reads the segments back.

mod common;

use common::daemon::{Setup, wait_for};
use common::pg::PgCluster;
use common::wal::*;
use std::time::Duration;

fn start(setup: &Setup, repositories: &[&str], extra: &str) -> PgCluster {
    let cluster = PgCluster::start_with(&archive_conf(&setup.socket()));
    setup.write_catalogue(&format!("{extra}\n{}", wal_job(&cluster, repositories)));
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "shutdown-timeout = \"20s\"",
            "shutdown-timeout = \"20s\"\nreplica-retry = \"1s\"",
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    cluster
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Segment names in order with no gap between the first and the last (16 MiB segments).
fn assert_contiguous(names: &[String]) {
    let segs: Vec<u64> = names
        .iter()
        .filter(|n| n.len() == 24)
        .map(|n| {
            let log = u64::from_str_radix(&n[8..16], 16).unwrap();
            let seg = u64::from_str_radix(&n[16..24], 16).unwrap();
            log * 256 + seg
        })
        .collect();
    assert!(!segs.is_empty());
    for w in segs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "gap in the archive: {names:?}");
    }
}

#[test]
fn archives_fetches_and_survives_daemon_downtime() {
    let setup = Setup::new();
    let cluster = start(&setup, &["local"], "");
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let repo = setup.path("repo");

    // Segments are archived under their key; wal-fetch returns them byte for byte.
    let mut switched = Vec::new();
    for _ in 0..3 {
        switched.push(switch_wal(&cluster));
    }
    wait_archived(&cluster, switched.last().unwrap());
    let files = stored(&repo);
    let names: Vec<String> = files.iter().map(|(n, _, _)| n.clone()).collect();
    for s in &switched {
        assert!(names.contains(s), "{s} not in {names:?}");
    }
    assert!(repo.join("wal/archive.json").is_file());
    let sysid = std::fs::read_dir(repo.join("wal"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    assert!(
        files[0]
            .2
            .to_string_lossy()
            .contains(&format!("wal/{sysid}/00000001/"))
    );
    let out_dir = setup.path("fetched");
    std::fs::create_dir(&out_dir).unwrap();
    for s in &switched {
        let dest = out_dir.join(s);
        let out = fetch(&setup, &cluster, s, &dest, &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let original = std::fs::read(cluster.data_dir().join("pg_wal").join(s)).unwrap();
        let sha = files.iter().find(|(n, _, _)| n == s).unwrap().1.clone();
        let fetched = std::fs::read(&dest).unwrap();
        assert_eq!(fetched.len(), original.len());
        assert!(
            fetched == original,
            "{s}: fetched content differs from pg_wal"
        );
        assert_eq!(sha.len(), 64);
    }

    // status shows the last archived segment and the archiver's figures.
    let status = setup.ctl_json(&["status"]);
    let wal = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "wal")
        .unwrap()["wal"]
        .clone();
    assert_eq!(
        wal["last_archived"],
        switched.last().unwrap().as_str(),
        "{wal}"
    );
    assert!(wal["current_wal"].is_string(), "{wal}");
    assert!(wal["failed_count"].is_i64(), "{wal}");
    let text = setup.ctl(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("last archived"));

    // Pushing the same segment again: success with a warning. Other content: refused.
    let pg_wal = cluster.data_dir().join("pg_wal");
    let first = &switched[0];
    let out = ctl_as_postgres(
        &cluster.data_dir(),
        &[
            "--socket",
            setup.socket().to_str().unwrap(),
            "wal-push",
            &format!("pg_wal/{first}"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("same content"), "{}", stderr(&out));
    let tampered_dir = cluster.dir().join("tampered");
    std::fs::create_dir(&tampered_dir).unwrap();
    let mut bytes = std::fs::read(pg_wal.join(first)).unwrap();
    bytes[100_000] ^= 0xFF;
    std::fs::write(tampered_dir.join(first), &bytes).unwrap();
    let data = cluster.data_dir();
    let out = ctl_as_postgres(
        &tampered_dir,
        &[
            "--socket",
            setup.socket().to_str().unwrap(),
            "wal-push",
            first,
            "--data-directory",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(first.as_str()), "{}", stderr(&out));

    // Only the PostgreSQL OS user may push (root is refused, and that is audited).
    let sock = setup.socket();
    let sock = sock.to_str().unwrap();
    let abs = pg_wal.join(first);
    let out = setup.ctl(&[
        "--socket",
        sock,
        "wal-push",
        abs.to_str().unwrap(),
        "--data-directory",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("may not `wal-push`"),
        "{}",
        stderr(&out)
    );

    // wal-push never exits above 125: bad name, missing file, usage error.
    for args in [
        vec!["--socket", sock, "wal-push", "pg_wal/not-a-segment"],
        vec![
            "--socket",
            sock,
            "wal-push",
            "pg_wal/0000000100000000000000EE",
        ],
        vec!["--socket", sock, "wal-push"],
    ] {
        let out = ctl_as_postgres(&cluster.data_dir(), &args);
        assert_eq!(code(&out), 1, "{args:?}: {}", stderr(&out));
    }

    // wal-fetch: not found anywhere → 1; the prefetch spool serves the following segments.
    let out = fetch(
        &setup,
        &cluster,
        "0000000100000000000000EE",
        &out_dir.join("x"),
        &[],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let out = fetch(
        &setup,
        &cluster,
        "00000009.history",
        &out_dir.join("x"),
        &[],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let spool = setup.path("spool");
    let spool_s = spool.to_str().unwrap().to_string();
    let out = fetch(
        &setup,
        &cluster,
        &switched[0],
        &out_dir.join("a"),
        &["--spool", &spool_s, "--prefetch", "2"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let next = names
        .iter()
        .skip_while(|n| *n != &switched[0])
        .nth(1)
        .unwrap()
        .clone();
    assert!(spool.join(&next).is_file(), "{next} not prefetched");
    let out = fetch(
        &setup,
        &cluster,
        &next,
        &out_dir.join("b"),
        &["--spool", &spool_s, "--prefetch", "2"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(!spool.join(&next).exists(), "served from the spool (moved)");
    assert!(
        std::fs::read(out_dir.join("b")).unwrap() == std::fs::read(pg_wal.join(&next)).unwrap()
    );

    // Daemon down: pushes fail (PostgreSQL keeps the segment), nothing is lost after restart.
    let (_, failed_before, _) = archiver(&cluster);
    daemon.stop();
    let down = switch_wal(&cluster);
    wait_for(Duration::from_secs(30), "archive failures", || {
        (archiver(&cluster).1 > failed_before).then_some(())
    });
    let out = ctl_as_postgres(
        &cluster.data_dir(),
        &["--socket", sock, "wal-push", &format!("pg_wal/{down}")],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let _daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let after = switch_wal(&cluster);
    wait_archived(&cluster, &after);
    let names: Vec<String> = stored(&repo).into_iter().map(|(n, _, _)| n).collect();
    assert!(names.contains(&down) && names.contains(&after), "{names:?}");
    assert_contiguous(&names);

    // A damaged object: wal-fetch refuses it with exit 255 and says so.
    let (_, _, path) = stored(&repo)
        .into_iter()
        .find(|(n, _, _)| n == &after)
        .unwrap();
    let mut stored_bytes = std::fs::read(&path).unwrap();
    let mid = stored_bytes.len() / 2;
    stored_bytes[mid] ^= 0x01;
    std::fs::write(&path, &stored_bytes).unwrap();
    let out = fetch(&setup, &cluster, &after, &out_dir.join("c"), &[]);
    assert_eq!(code(&out), 255, "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert!(!out_dir.join("c").exists());
}

#[test]
fn sync_and_async_repositories_and_foreign_archives() {
    let setup = Setup::new();
    let offsite = setup.path("offsite");
    let cluster = start(
        &setup,
        &["local", "offsite"],
        &format!(
            "[repository.offsite]\nurl = \"file://{}\"\nwal-ack = \"async\"\n",
            offsite.display()
        ),
    );
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let repo = setup.path("repo");

    let a = switch_wal(&cluster);
    wait_archived(&cluster, &a);
    wait_for(
        Duration::from_secs(30),
        "copied to the async repository",
        || {
            stored(&offsite)
                .iter()
                .any(|(n, _, _)| n == &a)
                .then_some(())
        },
    );

    // Async repository unreachable (a file where its folder was): pushes still succeed, the
    // backlog grows, and drains once it is back.
    let parked = setup.path("offsite.parked");
    std::fs::rename(&offsite, &parked).unwrap();
    std::fs::write(&offsite, "not a folder").unwrap();
    let b = switch_wal(&cluster);
    wait_archived(&cluster, &b);
    let backlog = wait_for(Duration::from_secs(30), "a backlog with an error", || {
        let status = setup.ctl_json(&["status"]);
        let job = status["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == "wal")
            .cloned()
            .unwrap();
        let b = job["wal"]["backlog"][0].clone();
        (b["pending"].as_u64() >= Some(1) && b["last_error"].is_string()).then_some(b)
    });
    assert_eq!(backlog["repository"], "offsite");
    // The backlog is persisted: it survives a daemon restart.
    daemon.stop();
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    std::fs::remove_file(&offsite).unwrap();
    std::fs::rename(&parked, &offsite).unwrap();
    wait_for(Duration::from_secs(60), "the backlog drained", || {
        stored(&offsite)
            .iter()
            .any(|(n, _, _)| n == &b)
            .then_some(())
    });
    // Byte for byte: the async copy is the sync copy's ciphertext.
    let sync_copy = stored(&repo).into_iter().find(|(n, _, _)| n == &b).unwrap();
    let async_copy = stored(&offsite)
        .into_iter()
        .find(|(n, _, _)| n == &b)
        .unwrap();
    assert_eq!(
        std::fs::read(&sync_copy.2).unwrap(),
        std::fs::read(&async_copy.2).unwrap()
    );

    // Sync repository unreachable: pushes fail, PostgreSQL retries; fine again once it is back.
    let (_, failed_before, _) = archiver(&cluster);
    let parked = setup.path("repo.parked");
    std::fs::rename(&repo, &parked).unwrap();
    std::fs::write(&repo, "not a folder").unwrap();
    let c = switch_wal(&cluster);
    wait_for(Duration::from_secs(30), "archive failures", || {
        (archiver(&cluster).1 > failed_before).then_some(())
    });
    assert!(
        cluster.log().contains("cannot archive"),
        "{}",
        cluster.log()
    );
    std::fs::remove_file(&repo).unwrap();
    std::fs::rename(&parked, &repo).unwrap();
    let d = switch_wal(&cluster);
    wait_archived(&cluster, &d);
    let names: Vec<String> = stored(&repo).into_iter().map(|(n, _, _)| n).collect();
    assert!(names.contains(&c), "{names:?}");
    assert_contiguous(&names);
    daemon.stop();

    // A sync repository holding another cluster's archive: pushes fail naming it; wal-fetch
    // from it exits 255 (not "not found").
    let foreign = setup.path("foreign");
    std::fs::create_dir_all(foreign.join("wal")).unwrap();
    std::fs::write(
        foreign.join("wal/archive.json"),
        r#"{"format-version":1,"system-identifier":"1","pg-major":15,"created-at":"2026-01-01T00:00:00Z","software":"bdc-backup 0.1.0"}"#,
    )
    .unwrap();
    setup.write_catalogue(&format!(
        "[repository.foreign]\nurl = \"file://{}\"\n\n{}",
        foreign.display(),
        wal_job(&cluster, &["local", "foreign"])
    ));
    let _daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let (_, failed_before, _) = archiver(&cluster);
    switch_wal(&cluster);
    wait_for(Duration::from_secs(30), "archive failures", || {
        (archiver(&cluster).1 > failed_before).then_some(())
    });
    let log = cluster.log();
    assert!(
        log.contains("repository `foreign`") && log.contains("belongs to cluster 1"),
        "{log}"
    );
    let out = fetch(
        &setup,
        &cluster,
        &a,
        &setup.path("x"),
        &["--repository", "foreign"],
    );
    assert_eq!(code(&out), 255, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("belongs to cluster 1"),
        "{}",
        stderr(&out)
    );
    // The good repository still serves it.
    let out = fetch(
        &setup,
        &cluster,
        &a,
        &setup.path("y"),
        &["--repository", "local"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // A damaged copy in the sync repository: the async repository's good copy is used.
    setup.write_catalogue(&format!(
        "[repository.offsite]\nurl = \"file://{}\"\nwal-ack = \"async\"\n\n{}",
        offsite.display(),
        wal_job(&cluster, &["local", "offsite"])
    ));
    let (_, _, path) = stored(&repo).into_iter().find(|(n, _, _)| n == &a).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let dest = setup.path("z");
    let out = fetch(&setup, &cluster, &a, &dest, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        std::fs::read(&dest).unwrap()
            == std::fs::read(cluster.data_dir().join("pg_wal").join(&a)).unwrap()
    );
    // Only the damaged copy: 255 naming the damage.
    let out = fetch(
        &setup,
        &cluster,
        &a,
        &setup.path("w"),
        &["--repository", "local"],
    );
    assert_eq!(code(&out), 255, "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
}

#[test]
fn wal_fetch_gives_up_on_an_unreachable_store_with_255() {
    let setup = Setup::new();
    let creds = common::objstores::credentials_file(
        setup.dir.path(),
        "s3.env",
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let closed = common::objstores::free_port();
    let cluster = PgCluster::start();
    setup.write_catalogue(&format!(
        "[repository.cloud]\nurl = \"s3://bdc-test/prod\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:{closed}\"\ncredentials-file = \"{}\"\n\n{}",
        creds.display(),
        wal_job(&cluster, &["cloud"])
    ));
    let out = fetch(
        &setup,
        &cluster,
        "000000010000000000000001",
        &setup.path("x"),
        &["--timeout", "3"],
    );
    assert_eq!(code(&out), 255, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gave up after 3 s"),
        "{}",
        stderr(&out)
    );
    // A usage error of wal-fetch is fatal for recovery too (255), never "not found".
    let out = setup.ctl(&["wal-fetch", "000000010000000000000001"]);
    assert_eq!(code(&out), 255);
    assert!(!setup.path("x").exists());
    // Daemon down: wal-push exits 1, never above 125.
    let out = ctl_as_postgres(
        &cluster.data_dir(),
        &[
            "--socket",
            setup.socket().to_str().unwrap(),
            "wal-push",
            "global/pg_control",
        ],
    );
    assert_eq!(code(&out), 1);
    let out = ctl_as_postgres(
        &cluster.data_dir(),
        &[
            "--socket",
            setup.socket().to_str().unwrap(),
            "wal-push",
            "pg_wal/000000010000000000000001",
        ],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
}

/// The duplicate rules and fetch on an S3 store (moto): the name-prefix listing must find exactly
/// the copies of one file among its neighbours (`.partial`, `.backup`, the next segments).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_rules_and_fetch_on_s3() {
    use bdc_backup::catalogue::{
        Compression, CompressionSettings, RepositoryLocation, RepositorySettings, WalAck,
    };
    use bdc_backup::pipeline::{Identities, PipelineSettings};
    use bdc_backup::repository::Repository;
    use bdc_backup::wal::push::{Stored, WalFile, ensure_archive_info, store_wal, stored_hashes};
    use bdc_backup::wal::{ClusterIdentity, WalName};
    use sha2::Digest;

    let moto = common::objstores::Moto::start();
    moto.create_bucket("bdc-wal");
    let dir = tempfile::tempdir().unwrap();
    let creds = common::objstores::credentials_file(
        dir.path(),
        "s3.env",
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let repo = Repository::open(&RepositorySettings {
        name: "cloud".into(),
        url: "s3://bdc-wal/prod".into(),
        location: RepositoryLocation::S3 {
            bucket: "bdc-wal".into(),
            prefix: "prod".into(),
        },
        wal_ack: WalAck::Sync,
        region: Some("us-east-1".into()),
        endpoint: Some(moto.endpoint()),
        credentials_file: Some(creds),
        bandwidth_limit: None,
        call_timeout: None,
    })
    .unwrap();
    let id = ClusterIdentity {
        system_identifier: 7_000_000_000_000_000_001,
        pg_major: 16,
    };
    let key = age::x25519::Identity::generate();
    let settings = PipelineSettings::new(
        CompressionSettings {
            algorithm: Compression::Zstd,
            level: 3,
            workers: 1,
        },
        vec![key.to_public()],
    );
    let limit = Duration::from_secs(20);
    ensure_archive_info(&repo, &id, chrono::Utc::now(), limit)
        .await
        .unwrap();
    let file = |name: &str, content: &[u8]| WalFile {
        name: WalName::parse(name).unwrap(),
        bytes: bytes::Bytes::copy_from_slice(content),
        sha256: hex::encode(sha2::Sha256::digest(content)),
        segment_size: None,
    };
    let names = [
        "000000010000000000000001",
        "000000010000000000000001.00000028.backup",
        "000000010000000000000001.partial",
        "000000010000000000000002",
        "00000001.history",
    ];
    for n in names {
        let stored = store_wal(&repo, &id, &file(n, n.as_bytes()), &settings, limit)
            .await
            .unwrap();
        assert!(matches!(stored, Stored::New(_)), "{n}");
    }
    for n in names {
        let w = WalName::parse(n).unwrap();
        assert_eq!(
            stored_hashes(&repo, &id, &w, limit).await.unwrap().len(),
            1,
            "{n}"
        );
        assert!(matches!(
            store_wal(&repo, &id, &file(n, n.as_bytes()), &settings, limit)
                .await
                .unwrap(),
            Stored::AlreadyThere { .. }
        ));
    }
    let err = store_wal(
        &repo,
        &id,
        &file("000000010000000000000001", b"other"),
        &settings,
        limit,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("different content"), "{err}");
    let ids = Identities::from_keys(vec![key]);
    let w = WalName::parse("000000010000000000000002").unwrap();
    let got = bdc_backup::wal::fetch(std::slice::from_ref(&repo), &id, &w, &ids, limit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.bytes, b"000000010000000000000002");
    let missing = WalName::parse("000000010000000000000003").unwrap();
    assert!(
        bdc_backup::wal::fetch(std::slice::from_ref(&repo), &id, &missing, &ids, limit)
            .await
            .unwrap()
            .is_none()
    );
    // Two contents stored for one name (should never happen): fetch refuses to choose.
    let first_key = bdc_backup::wal::format::object_key(&id, &w, &got.sha256);
    let copy = repo.store.get(&first_key).await.unwrap();
    let twin = bdc_backup::wal::format::object_key(&id, &w, &"0".repeat(64));
    repo.store.put_create(&twin, copy).await.unwrap();
    let err = bdc_backup::wal::fetch(std::slice::from_ref(&repo), &id, &w, &ids, limit)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("two different contents"), "{err}");

    // Another cluster: refused, not "not found".
    let other = ClusterIdentity {
        system_identifier: 5,
        pg_major: 16,
    };
    let err = bdc_backup::wal::fetch(&[repo], &other, &missing, &ids, limit)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("belongs to cluster"), "{err}");
}

/// A server stopped (immediate) when dropped.
struct Server {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    port: u16,
}

impl Server {
    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = std::process::Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn run_as_postgres(program: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PostgreSQL itself recovers through `restore_command = 'bdc-backupctl wal-fetch %f %p'`
/// (with a prefetch spool): a
/// stock `pg_basebackup -X none` (its WAL only in our archive) replays to the end of the archive,
/// where wal-fetch answers "not found" (exit 1), and promotes with every row.
#[test]
fn postgres_recovers_through_wal_fetch() {
    let setup = Setup::new();
    let cluster = start(&setup, &["local"], "");
    let _daemon = setup.start_daemon();
    open_socket(&setup.socket());
    // Replication connections for pg_basebackup.
    let hba = cluster.data_dir().join("pg_hba.conf");
    let mut text = std::fs::read_to_string(&hba).unwrap();
    text.push_str("local replication all trust\n");
    std::fs::write(&hba, text).unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf();");
    cluster.psql(
        "postgres",
        "CREATE TABLE t (id int primary key, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    );
    let restored = cluster.dir().join("restored");
    let bin = common::pg::pg_bin();
    let socket_dir = cluster.dir().to_str().unwrap().to_string();
    let port = cluster.port.to_string();
    run_as_postgres(
        &bin.join("pg_basebackup"),
        &[
            "-h",
            &socket_dir,
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            restored.to_str().unwrap(),
            "-X",
            "none",
            "-c",
            "fast",
        ],
    );
    // Written after the base backup: only the archive has it.
    cluster.psql(
        "postgres",
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1001, 1500) g;",
    );
    let last = switch_wal(&cluster);
    wait_archived(&cluster, &last);

    // The recovering server runs as postgres: give it a readable copy of the repository and key.
    let copy = cluster.dir().join("repo-copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(setup.path("repo"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::copy(setup.path("restore.key"), cluster.dir().join("restore.key")).unwrap();
    for p in [copy.clone(), cluster.dir().join("restore.key")] {
        let status = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let catalogue = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            &format!("{}/restore.key", setup.dir.path().display()),
            &format!("{}/restore.key", cluster.dir().display()),
        )
        .replace(
            &format!("file://{}/repo", setup.dir.path().display()),
            &format!("file://{}", copy.display()),
        );
    let recovery_catalogue = cluster.dir().join("recovery.toml");
    std::fs::write(&recovery_catalogue, catalogue).unwrap();

    let new_port = common::objstores::free_port();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(restored.join("postgresql.conf"))
        .unwrap();
    use std::io::Write;
    writeln!(
        conf,
        "port = {new_port}\n\
         restore_command = '{} --catalogue {} wal-fetch %f %p --spool {} --prefetch 3'\n\
         recovery_target_action = 'promote'\n",
        common::daemon::CTL,
        recovery_catalogue.display(),
        cluster.dir().join("spool").display()
    )
    .unwrap();
    std::fs::write(restored.join("recovery.signal"), "").unwrap();
    let chown = std::process::Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&restored)
        .status()
        .unwrap();
    assert!(chown.success());
    let log = cluster.dir().join("restored.log");
    let server = Server {
        bin: bin.clone(),
        data: restored.clone(),
        port: new_port,
    };
    run_as_postgres(
        &bin.join("pg_ctl"),
        &[
            "-D",
            restored.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "start",
        ],
    );
    wait_for(
        Duration::from_secs(60),
        "the restored server promoted",
        || (server.psql("SELECT pg_is_in_recovery();").ok().as_deref() == Some("f")).then_some(()),
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        server.psql("SELECT count(*) FROM t;").unwrap(),
        "1500",
        "{log_text}"
    );
    assert!(log_text.contains("restored log file"), "{log_text}");
    assert!(!log_text.contains("FATAL"), "{log_text}");

    // The promoted server archives through the same daemon (same cluster): the new timeline's
    // history file, then timeline 2 segments. (No `.partial` here: after archive recovery the
    // old timeline's last segment is not in pg_wal; a promoted streaming standby archives one.)
    let repo = setup.path("repo");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let names: Vec<String> = stored(&repo).into_iter().map(|(n, _, _)| n).collect();
        if names.iter().any(|n| n == "00000002.history") {
            // pg_basebackup's backup history file went in too.
            assert!(names.iter().any(|n| n.ends_with(".backup")), "{names:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "00000002.history not archived: {names:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
        .psql("INSERT INTO t VALUES (5000, 'after promotion');")
        .unwrap();
    let tl2 = server
        .psql("SELECT pg_walfile_name(pg_switch_wal());")
        .unwrap();
    assert!(tl2.starts_with("00000002"), "{tl2}");
    wait_for(
        Duration::from_secs(60),
        "a timeline 2 segment archived",
        || {
            stored(&repo)
                .iter()
                .any(|(n, _, _)| *n == tl2)
                .then_some(())
        },
    );
    let dest = setup.path("history");
    let out = fetch(&setup, &cluster, "00000002.history", &dest, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(restored.join("pg_wal/00000002.history")).unwrap()
    );
}

/// The `.ready` files of the cluster, sorted.
fn ready(cluster: &PgCluster) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(cluster.data_dir().join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn ships_ready_segments_ahead_and_never_acks_a_changed_file() {
    let setup = Setup::new();
    let cluster = PgCluster::start_with(&archive_conf(&setup.socket()));
    setup.write_catalogue(&format!(
        "[postgres]\nurl = \"{}\"\ndata-directory = \"{}\"\n\n[[job]]\nname = \"wal\"\nkind = \"postgres-wal\"\nrepositories = [\"local\"]\nship-ahead = 8\n",
        cluster.url("postgres"),
        cluster.data_dir().display()
    ));
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let repo = setup.path("repo");
    let set_command = |cmd: &str| {
        cluster.psql(
            "postgres",
            &format!("ALTER SYSTEM SET archive_command = '{cmd}'; SELECT pg_reload_conf();"),
        );
    };
    // Archiving stops: four segments wait as .ready files.
    set_command("/bin/false");
    let segs: Vec<String> = (0..4).map(|_| switch_wal(&cluster)).collect();
    wait_for(Duration::from_secs(30), "4 .ready files", || {
        let r = ready(&cluster);
        segs.iter().all(|s| r.contains(s)).then_some(())
    });

    // One push (as archive_command would) ships the other .ready files ahead.
    let push = |name: &str| {
        ctl_as_postgres(
            &cluster.data_dir(),
            &[
                "--socket",
                setup.socket().to_str().unwrap(),
                "wal-push",
                &format!("pg_wal/{name}"),
            ],
        )
    };
    let out = push(&segs[0]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    wait_for(Duration::from_secs(60), "segments shipped ahead", || {
        let names: Vec<String> = stored(&repo).into_iter().map(|(n, _, _)| n).collect();
        segs.iter().all(|s| names.contains(s)).then_some(())
    });
    assert!(
        daemon.log_text().contains("shipped ahead of its push"),
        "{}",
        daemon.log_text()
    );

    // The last one changes after it was shipped (PostgreSQL never does that; a test may).
    let last = segs[3].clone();
    let path = cluster.data_dir().join("pg_wal").join(&last);
    let original = std::fs::read(&path).unwrap();
    let mut changed = original.clone();
    changed[100_000] ^= 0xFF;
    std::fs::write(&path, &changed).unwrap();

    // PostgreSQL archives again: the shipped ones are acknowledged, the changed one is not.
    set_command(&format!(
        "{} --socket {} wal-push %p",
        common::daemon::CTL,
        setup.socket().display()
    ));
    wait_archived(&cluster, &segs[2]);
    wait_for(
        Duration::from_secs(30),
        "the changed segment refused",
        || {
            let failed = cluster.psql(
                "postgres",
                "SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver;",
            );
            (failed == last).then_some(())
        },
    );
    let (_, _, last_archived) = archiver(&cluster);
    assert_eq!(last_archived, segs[2]);
    assert!(ready(&cluster).contains(&last), "{:?}", ready(&cluster));
    let out = push(&last);
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("already archived with different content"),
        "{}",
        stderr(&out)
    );
    let copies: Vec<_> = stored(&repo)
        .into_iter()
        .filter(|(n, _, _)| *n == last)
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");

    // Its original content back (a new mtime, so the normal path): same hash, archived.
    std::fs::write(&path, &original).unwrap();
    let out = push(&last);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let s = switch_wal(&cluster);
    wait_archived(&cluster, &s);
    let names: Vec<String> = stored(&repo).into_iter().map(|(n, _, _)| n).collect();
    assert_contiguous(&names);
    drop(daemon);
}

/// Kill points (`BDC_BACKUP_TEST_KILL_AT`, debug builds): the daemon dies as by kill -9 (1) after
/// a segment's bytes are written but before they are fsync'd, and (2) after the segment is durable
/// but before PostgreSQL is answered. In neither case did `wal-push` exit 0 (PostgreSQL counts a
/// failure and keeps the segment); after the restart PostgreSQL archives it again (the second time
/// as a duplicate of the same content) and no segment is missing or different.
#[test]
fn wal_push_killed_before_fsync_or_before_the_reply_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let setup = Setup::new();
    let cluster = start(&setup, &["local"], "");
    let repo = setup.path("repo");
    let (_, failed_before, _) = archiver(&cluster);

    // (1) Bytes written, not fsync'd: the object never becomes visible under its key. (The
    // segment killed on may be an older one PostgreSQL still has ready; none becomes visible.)
    let mut daemon =
        setup.start_daemon_with(&[("BDC_BACKUP_TEST_KILL_AT", "local-before-fsync:/00000001/")]);
    open_socket(&setup.socket());
    let first = switch_wal(&cluster);
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(
        status.signal(),
        Some(9),
        "{status:?}\n{}",
        daemon.log_text()
    );
    assert!(
        stored(&repo).is_empty(),
        "a segment is visible although never fsync'd: {:?}",
        stored(&repo)
    );
    wait_for(
        Duration::from_secs(30),
        "PostgreSQL counts the failure",
        || (archiver(&cluster).1 > failed_before).then_some(()),
    );

    // (2) Durable, not answered: the object is there, PostgreSQL still counts a failure.
    let (_, failed_mid, _) = archiver(&cluster);
    let mut daemon = setup.start_daemon_with(&[("BDC_BACKUP_TEST_KILL_AT", "wal-before-reply")]);
    open_socket(&setup.socket());
    switch_wal(&cluster); // wakes the archiver, which retries `first`
    let status = daemon.wait(Duration::from_secs(90));
    assert_eq!(
        status.signal(),
        Some(9),
        "{status:?}\n{}",
        daemon.log_text()
    );
    wait_for(
        Duration::from_secs(30),
        "PostgreSQL counts the failure",
        || (archiver(&cluster).1 > failed_mid).then_some(()),
    );
    assert!(!stored(&repo).is_empty(), "nothing durable before the kill");
    assert_eq!(
        archiver(&cluster).0,
        0,
        "a segment was acknowledged without a reply"
    );

    // A normal daemon: everything arrives, once per content, with no gap.
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());
    let last = switch_wal(&cluster);
    wait_archived(&cluster, &last);
    let files = stored(&repo);
    let names: Vec<String> = files.iter().map(|(n, _, _)| n.clone()).collect();
    assert!(names.contains(&first), "{first} not in {names:?}");
    assert_contiguous(&names);
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(unique, names, "one object per segment");
    let out_dir = setup.path("fetched");
    std::fs::create_dir(&out_dir).unwrap();
    for name in names.iter().filter(|n| n.len() == 24) {
        let dest = out_dir.join(name);
        let out = fetch(&setup, &cluster, name, &dest, &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let original = std::fs::read(cluster.data_dir().join("pg_wal").join(name)).unwrap();
        assert!(std::fs::read(&dest).unwrap() == original, "{name} differs");
    }
    assert!(daemon.stop().success());
}
