//! Files and base backups on cloud repositories (issue 11, cloud coverage): S3 (moto) and Azure
//! Blob (Azurite), each once as a job's primary repository and once as its replica. A files
//! backup (full + incremental) restored whole from every repository (byte for byte, modes and
//! symlinks compared), a single-file restore that reads by ranges (the servers' request logs show
//! `206 Partial Content` answers); a base backup (full + block incremental) with its WAL, restored
//! as a cluster from each cloud repository, answering with the source's rows.

mod common;

use common::daemon::Setup;
use common::objstores::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Moto, credentials_file};
use common::pg::PgCluster;
use common::physical::{Restored, open_up, psql_port};
use common::wal::{archive_conf, open_socket};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `[repository.offsite]` (S3 on moto) and `[repository.azure]` (Azurite) sections.
fn cloud_repositories(setup: &Setup, moto: &Moto, azurite: &Azurite) -> String {
    let s3_creds = credentials_file(
        setup.dir.path(),
        "s3.env",
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let az_creds = credentials_file(
        setup.dir.path(),
        "az.env",
        &[
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY),
        ],
    );
    format!(
        r#"
[repository.offsite]
url = "s3://bdc-test/prod"
region = "us-east-1"
endpoint = "{s3}"
credentials-file = "{s3_creds}"

[repository.azure]
url = "az://bdc-test/prod"
endpoint = "{az}"
credentials-file = "{az_creds}"
"#,
        s3 = moto.endpoint(),
        s3_creds = s3_creds.display(),
        az = azurite.endpoint(),
        az_creds = az_creds.display(),
    )
}

/// Deterministic incompressible bytes.
fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

fn write_mode(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What a tree holds: relative path → (kind and mode, content or link target).
fn tree(root: &Path) -> BTreeMap<PathBuf, (String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(
                    rel,
                    (
                        "link".into(),
                        target.as_os_str().as_encoded_bytes().to_vec(),
                    ),
                );
            } else if meta.is_dir() {
                out.insert(rel, (format!("dir {mode:o}"), Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, (format!("file {mode:o}"), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Where a restore of the job's folder `src` beneath `target` put it.
fn restored_root(target: &Path, src: &Path) -> PathBuf {
    let nested = target.join(src.strip_prefix("/").unwrap());
    if nested.is_dir() {
        nested
    } else {
        target.to_path_buf()
    }
}

fn assert_same_tree(want: &Path, got: &Path, what: &str) {
    let (a, b) = (tree(want), tree(got));
    let names = |t: &BTreeMap<PathBuf, (String, Vec<u8>)>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "{what}: the same entries");
    for (k, (kind, data)) in &a {
        let (kind2, data2) = &b[k];
        assert_eq!(kind, kind2, "{what}: {} kind and mode", k.display());
        assert!(data == data2, "{what}: {} content differs", k.display());
    }
}

/// Lines of a server log added since `from` (a length in bytes).
fn log_since(log: &str, from: usize) -> &str {
    log.get(from..).unwrap_or("")
}

#[test]
fn files_full_and_incremental_on_s3_and_azure_as_primary_and_replica_restore_whole_and_ranged() {
    let mut moto = Moto::start();
    moto.create_bucket("bdc-test");
    let azurite = Azurite::start();
    azurite.create_container("bdc-test");
    let setup = Setup::new();

    // A tree with modes, an executable, a private file, an empty file, a symlink, and one large
    // file next to a small one (the small one's single-file restore must not read the large).
    // The large file (12 MiB, incompressible) makes the full's data object larger than the
    // 8 MiB part size: a multipart upload on S3, a block list on Azure.
    let src = setup.path("uploads");
    std::fs::create_dir_all(src.join("invoices/2026/11")).unwrap();
    std::fs::create_dir_all(src.join("bin")).unwrap();
    write_mode(
        &src.join("invoices/2026/11/big.pdf"),
        &noise(7, 12 << 20),
        0o640,
    );
    write_mode(
        &src.join("invoices/2026/11/small.txt"),
        b"invoice 42\n",
        0o644,
    );
    write_mode(&src.join("bin/run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write_mode(&src.join("secret.key"), &noise(9, 4096), 0o600);
    write_mode(&src.join("empty"), b"", 0o644);
    std::os::unix::fs::symlink("invoices/2026/11/small.txt", src.join("latest")).unwrap();
    std::fs::set_permissions(src.join("bin"), std::fs::Permissions::from_mode(0o750)).unwrap();

    let repos = cloud_repositories(&setup, &moto, &azurite);
    setup.write_catalogue(&format!(
        r#"{repos}
[[job]]
name = "to-s3"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = ["offsite", "azure"]

[[job]]
name = "to-azure"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = ["azure", "offsite"]
"#,
        src = src.display()
    ));
    let daemon = setup.start_daemon();
    // Files younger than a backup's start minus 1 s are re-read by the next incremental.
    std::thread::sleep(Duration::from_millis(1100));
    for job in ["to-s3", "to-azure"] {
        let out = setup.ctl(&["run", job, "--full", "--wait"]);
        assert!(out.status.success(), "{job} full: {}", daemon.log_text());
    }
    let full_tree = setup.path("state-full");
    copy_tree(&src, &full_tree);

    // Changes for the incremental: one file rewritten, one added, one removed, a mode changed.
    std::thread::sleep(Duration::from_millis(1100));
    write_mode(
        &src.join("invoices/2026/11/small.txt"),
        b"invoice 42, paid\n",
        0o644,
    );
    write_mode(
        &src.join("invoices/2026/11/new.txt"),
        b"invoice 43\n",
        0o644,
    );
    std::fs::remove_file(src.join("empty")).unwrap();
    std::fs::set_permissions(
        src.join("secret.key"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    for job in ["to-s3", "to-azure"] {
        let out = setup.ctl(&["run", job, "--incremental", "--wait"]);
        assert!(
            out.status.success(),
            "{job} incremental: {}",
            daemon.log_text()
        );
        let run = setup.ctl_json(&["runs", "--job", job, "--limit", "1"])[0].clone();
        assert_eq!(run["status"], "succeeded", "{run}");
        assert_eq!(run["backup_type"], "incremental", "{run}");
        assert!(
            run["bytes_stored"].as_u64().unwrap() < 1 << 20,
            "{job}: the incremental stores only the changes: {run}"
        );
    }

    // Both backups of both jobs are in both repositories (primary and replica).
    for job in ["to-s3", "to-azure"] {
        for repo in ["offsite", "azure"] {
            let b = setup.ctl_json(&["backups", "--job", job, "--repository", repo]);
            let types: Vec<&str> = b
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["backup_type"].as_str().unwrap())
                .collect();
            assert_eq!(types, vec!["full", "incremental"], "{job} in {repo}: {b}");
        }
    }
    assert!(moto.keys("bdc-test").iter().any(|k| k.contains("to-azure")));
    let full_id =
        setup.ctl_json(&["backups", "--job", "to-s3", "--repository", "offsite"])[0]["backup_id"]
            .as_str()
            .unwrap()
            .to_string();
    let etag = moto.etag(
        "bdc-test",
        &format!("prod/backups/to-s3/{full_id}/data/000000.age"),
    );
    assert!(
        etag.trim_matches('"').ends_with("-2"),
        "the full's data object went up in two parts: {etag}"
    );
    assert!(azurite.keys("bdc-test").iter().any(|k| k.contains("to-s3")));

    // Whole-tree restores of each backup from each repository.
    for job in ["to-s3", "to-azure"] {
        let ids: Vec<String> = setup
            .ctl_json(&["backups", "--job", job, "--repository", "offsite"])
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["backup_id"].as_str().unwrap().to_string())
            .collect();
        for repo in ["offsite", "azure"] {
            for (id, want) in [(&ids[0], &full_tree), (&ids[1], &src)] {
                let target = setup.path(&format!("r-{job}-{repo}-{id}"));
                let out = setup.ctl(&[
                    "restore",
                    "files",
                    "--job",
                    job,
                    "--repository",
                    repo,
                    "--backup",
                    id,
                    "--target",
                    target.to_str().unwrap(),
                ]);
                assert!(out.status.success(), "restore {job} {id} from {repo}");
                assert_same_tree(
                    want,
                    &restored_root(&target, &src),
                    &format!("{job} {id} from {repo}"),
                );
            }
        }
    }

    // A single small file of the newest backup, by ranged reads: the packs holding it are read
    // by range (206), and far fewer bytes come back than the large file's 12 MiB.
    for (job, repo) in [("to-s3", "offsite"), ("to-azure", "azure")] {
        let before = match repo {
            "offsite" => moto.log().len(),
            _ => azurite.log().len(),
        };
        let target = setup.path(&format!("one-{job}"));
        let out = setup.ctl(&[
            "restore",
            "files",
            "--job",
            job,
            "--repository",
            repo,
            "--path",
            "invoices/2026/11/small.txt",
            "--target",
            target.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "single-file restore from {repo}");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let fetched: u64 = report
            .split("frames fetched (~")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no frames-fetched figure: {report}"));
        assert!(
            fetched < 1 << 20,
            "{repo}: one small frame fetched: {report}"
        );
        let root = restored_root(&target, &src);
        assert_eq!(
            std::fs::read(root.join("invoices/2026/11/small.txt")).unwrap(),
            b"invoice 42, paid\n"
        );
        assert!(
            !root.join("invoices/2026/11/big.pdf").exists(),
            "only the file asked for"
        );
        let log = match repo {
            "offsite" => moto.log(),
            _ => azurite.log(),
        };
        let since = log_since(&log, before);
        let ranged = since
            .lines()
            .filter(|l| l.contains("GET /") && l.contains("/data/") && l.contains("\" 206 "))
            .count();
        assert!(
            ranged > 0,
            "{repo}: the single-file restore used ranged reads:\n{since}"
        );
        let full_gets: Vec<&str> = since
            .lines()
            .filter(|l| l.contains("GET /") && l.contains("/data/") && l.contains("\" 200 "))
            .collect();
        assert!(
            full_gets.is_empty(),
            "{repo}: no whole data object was read: {full_gets:?}"
        );
    }

    // The primary gone: the job whose primary is S3 restores from its Azure replica alone.
    moto.kill_now();
    let target = setup.path("replica-only");
    let out = setup.ctl(&[
        "restore",
        "files",
        "--job",
        "to-s3",
        "--repository",
        "azure",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "restore from the replica with S3 down"
    );
    assert_same_tree(
        &src,
        &restored_root(&target, &src),
        "to-s3 from azure, S3 down",
    );
    assert!(daemon.stop().success());
}

fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn base_full_and_block_incremental_with_wal_on_azure_and_s3_restore_cluster_from_each() {
    let mut moto = Moto::start();
    moto.create_bucket("bdc-test");
    let azurite = Azurite::start();
    azurite.create_container("bdc-test");
    let setup = Setup::new();
    let cluster = PgCluster::start_with(&archive_conf(&setup.socket()));
    let repos = cloud_repositories(&setup, &moto, &azurite);
    // Azure is the base job's primary and S3 its replica; the WAL goes to both (S3 sync).
    setup.write_catalogue(&format!(
        r#"{repos}
[postgres]
url = "{url}"
data-directory = "{data}"

[[job]]
name = "base"
kind = "postgres-base"
full = "0 4 * * 0"
incremental = "0 2 * * *"
wal-job = "wal"
wal-timeout = "60s"
repositories = ["azure", "offsite"]

[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["offsite", "azure"]
"#,
        url = cluster.url("postgres"),
        data = cluster.data_dir().display(),
    ));
    let daemon = setup.start_daemon();
    open_socket(&setup.socket());

    cluster.psql(
        "postgres",
        "CREATE TABLE items (id int PRIMARY KEY, note text); \
         INSERT INTO items SELECT g, repeat('x', 200) || g FROM generate_series(1, 20000) g;",
    );
    let run = |kind: &str| {
        let out = setup.ctl(&["run", "base", kind, "--wait"]);
        let row = setup.ctl_json(&["runs", "--job", "base", "--limit", "1"])[0].clone();
        assert!(
            out.status.success(),
            "base {kind}: {row}\n{}\n{}",
            daemon.log_text(),
            cluster.log()
        );
        row
    };
    let full = run("--full");
    assert_eq!(full["backup_type"], "full", "{full}");
    cluster.psql(
        "postgres",
        "UPDATE items SET note = 'changed' WHERE id % 100 = 0; \
         INSERT INTO items SELECT g, 'late' FROM generate_series(20001, 20500) g;",
    );
    let incr = run("--incremental");
    assert_eq!(incr["backup_type"], "incremental", "{incr}");
    assert!(
        incr["bytes_stored"].as_u64().unwrap() < full["bytes_stored"].as_u64().unwrap(),
        "the block incremental stores less: {incr} vs {full}"
    );
    // Rows after the incremental, reached only by replaying WAL.
    cluster.psql(
        "postgres",
        "INSERT INTO items SELECT g, 'after' FROM generate_series(20501, 20600) g;",
    );
    let seg = cluster.psql(
        "postgres",
        "SELECT pg_walfile_name(pg_current_wal_lsn()) FROM (SELECT pg_switch_wal()) s;",
    );
    common::daemon::wait_for(
        Duration::from_secs(60),
        &format!("{seg} in both cloud repositories"),
        || {
            (moto.keys("bdc-test").iter().any(|k| k.contains(&seg))
                && azurite.keys("bdc-test").iter().any(|k| k.contains(&seg)))
            .then_some(())
        },
    );
    for repo in ["azure", "offsite"] {
        let b = setup.ctl_json(&["backups", "--job", "base", "--repository", repo]);
        assert_eq!(b.as_array().unwrap().len(), 2, "{repo}: {b}");
    }
    let want = cluster.psql(
        "postgres",
        "SELECT count(*) || ':' || md5(string_agg(id || note, ',' ORDER BY id)) FROM items;",
    );

    // restore_command (wal-fetch) runs as the postgres OS user and reads the catalogue and the
    // credentials files itself: they must be its own (0600), not readable by others.
    open_up(setup.dir.path());
    for f in ["s3.env", "az.env"] {
        let p = setup.path(f);
        let st = std::process::Command::new("chown")
            .arg("postgres")
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // From S3 (both servers up), then from Azure with S3 gone: `--repository azure` takes the
    // WAL from Azure too (a sync WAL repository holds every acknowledged segment), so the
    // unreachable S3 does not stop recovery at the first segment that does not exist.
    for repo in ["offsite", "azure"] {
        if repo == "azure" {
            moto.kill_now();
        }
        let target = setup.path(&format!("restored-{repo}"));
        let port = common::objstores::free_port();
        let out = setup.ctl(&[
            "restore",
            "cluster",
            "--job",
            "base",
            "--repository",
            repo,
            "--target-dir",
            target.to_str().unwrap(),
            "--start",
            "--port",
            &port.to_string(),
            // The restored clusters must not archive into the source's archive (a new timeline).
            "--no-archive",
        ]);
        let restored = Restored { dir: target, port };
        assert!(
            out.status.success(),
            "restore cluster from {repo}: {}",
            std::fs::read_to_string(restored.dir.join("bdc-restore-start.log")).unwrap_or_default()
        );
        let got = psql_port(
            port,
            "postgres",
            "SELECT count(*) || ':' || md5(string_agg(id || note, ',' ORDER BY id)) FROM items;",
        )
        .unwrap();
        assert_eq!(
            got, want,
            "the cluster restored from {repo} has the source's rows"
        );
        assert!(got.starts_with("20600:"), "{got}");
    }
    assert!(daemon.stop().success());
}
