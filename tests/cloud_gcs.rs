//! `gs://` repositories against a real GCS emulator, fake-gcs-server (issue 11, cloud coverage;
//! docs/repositories.md "What is tested against which server").
//!
//! object_store's GCS client speaks the XML API. fake-gcs-server (1.54, the binary the PyPI
//! wheel bundles) answers its reads, ranged reads, listings and deletes, but not its writes: an
//! XML `PUT /BUCKET/KEY` and the XML multipart `POST /BUCKET/KEY?uploads` both end in its JSON
//! upload handler, which refuses them (`400 invalid uploadType`). So here: a repository filled
//! through the emulator's JSON upload API is listed and restored through object_store (ranged
//! reads included); a backup to it fails at once with a permanent error naming the repository
//! (no retries, no hang, the run `partial` and the local copy kept); wrong credentials and a
//! missing bucket give clear errors naming the repository.

mod common;

use common::daemon::Setup;
use common::objstores::{FakeGcs, credentials_file};
use common::pg::PgCluster;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A service-account JSON for an emulator: no OAuth (object_store sends an empty bearer token).
fn emulator_service_account(setup: &Setup) -> PathBuf {
    let p = setup.path("gcs-sa.json");
    std::fs::write(
        &p,
        r#"{"private_key": "unused", "private_key_id": "unused", "client_email": "test@example.invalid", "disable_oauth": true}"#,
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The catalogue: a dump job of `app` and a files job of the setup's `tree` folder, each into
/// `local` then `gcs` (`gs://BUCKET/prod` on the emulator, `creds` its credentials file).
fn catalogue(setup: &Setup, cluster: &PgCluster, gcs: &FakeGcs, bucket: &str, creds: &Path) {
    std::fs::create_dir_all(setup.path("tree")).unwrap();
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "{url}"

[repository.gcs]
url = "gs://{bucket}/prod"
endpoint = "{ep}"
credentials-file = "{creds}"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local", "gcs"]

[[job]]
name = "tree"
kind = "files"
path = "{tree}"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = ["local", "gcs"]
"#,
        tree = setup.path("tree").display(),
        url = cluster.url("app"),
        ep = gcs.endpoint(),
        creds = creds.display(),
    ));
}

/// The "N frames fetched (~B stored bytes)" figure of a `restore files` report.
pub fn fetched_bytes(out: &std::process::Output) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let after = text
        .split("frames fetched (~")
        .nth(1)
        .unwrap_or_else(|| panic!("no frames-fetched figure in {text:?}"));
    after
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {text:?}"))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn gs_repository_on_fake_gcs_server_backup_refused_then_listed_and_restored_whole_and_ranged() {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.load_sample("app", 2);
    let gcs = FakeGcs::start();
    gcs.create_bucket("bdc-test");
    let setup = Setup::new();
    let sa = emulator_service_account(&setup);
    let creds = credentials_file(
        setup.dir.path(),
        "gcs.env",
        &[("GOOGLE_SERVICE_ACCOUNT", sa.to_str().unwrap())],
    );
    catalogue(&setup, &cluster, &gcs, "bdc-test", &creds);
    // The files job's folder: a large file and a small one (restored alone by ranged reads).
    let mut x: u32 = 99;
    let big: Vec<u8> = (0..5 << 20)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(setup.path("tree/big.bin"), &big).unwrap();
    std::fs::write(setup.path("tree/small.txt"), b"small\n").unwrap();
    let daemon = setup.start_daemon();

    // 1. The backup: committed locally; the copy to gs:// is refused by the emulator (XML
    //    writes unsupported) at once, permanently, naming the repository; nothing half-written.
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", daemon.log_text());
    let run = setup.ctl_json(&["runs", "--limit", "1"])[0].clone();
    assert_eq!(run["status"], "partial", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("gs://bdc-test/prod"),
        "names the repository: {error}"
    );
    assert!(
        error.contains("request rejected"),
        "a permanent refusal: {error}"
    );
    assert!(
        gcs.keys("bdc-test").is_empty(),
        "nothing written: {:?}",
        gcs.keys("bdc-test")
    );
    let id = run["backup_id"].as_str().unwrap().to_string();
    let out = setup.ctl(&["run", "tree", "--full", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{}", daemon.log_text());
    assert!(daemon.stop().success());

    // 2. The same repository filled through the emulator's JSON API (as `gcloud storage rsync`
    //    of the local repository would): object_store lists it (the daemon is down, so the ctl
    //    reads the repository itself) and restores from it.
    gcs.upload_tree("bdc-test", "prod", &setup.path("repo"));
    let listed = setup.ctl_json(&["backups", "--repository", "gcs"]);
    let jobs: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["job"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, vec!["db-dump", "tree"], "{listed}");
    assert_eq!(listed[0]["backup_id"], id.as_str());
    let before = gcs.log().len();
    let out = setup.ctl(&[
        "restore",
        "database",
        "--job",
        "db-dump",
        "--repository",
        "gcs",
        "--into",
        "from_gcs",
        "--create",
    ]);
    assert!(out.status.success(), "restore from gs://: {}", stderr(&out));
    assert_eq!(
        cluster.table_fingerprints("app"),
        cluster.table_fingerprints("from_gcs"),
        "the database restored from gs:// equals the source"
    );
    // object_store percent-encodes every non-alphanumeric byte of a key.
    let log = gcs.log();
    let since = log.get(before..).unwrap_or("");
    let data_gets = since
        .lines()
        .filter(|l| {
            l.contains("GET /bdc%2Dtest/prod%2Fbackups%2Fdb%2Ddump%2F") && l.contains("%2Fdata%2F")
        })
        .count();
    assert!(
        data_gets > 0,
        "the restore read the data through the emulator:\n{since}"
    );

    // 3. One small file of the files backup: read by range (206), the large file not fetched.
    let before = gcs.log().len();
    let target = setup.path("one");
    let out = setup.ctl(&[
        "restore",
        "files",
        "--job",
        "tree",
        "--repository",
        "gcs",
        "--path",
        "small.txt",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "single-file restore from gs://: {}",
        stderr(&out)
    );
    let fetched = fetched_bytes(&out);
    assert!(
        fetched < big.len() as u64 / 2,
        "only the frame holding the file is fetched ({fetched} bytes of a {} byte object)",
        big.len()
    );
    let nested = target.join(setup.path("tree").strip_prefix("/").unwrap());
    let root = if nested.is_dir() {
        nested
    } else {
        target.clone()
    };
    assert_eq!(std::fs::read(root.join("small.txt")).unwrap(), b"small\n");
    assert!(!root.join("big.bin").exists());
    let log = gcs.log();
    let since = log.get(before..).unwrap_or("");
    let data: Vec<&str> = since
        .lines()
        .filter(|l| l.contains("GET /") && l.contains("%2Fdata%2F"))
        .collect();
    assert!(!data.is_empty(), "data read through the emulator:\n{since}");
    assert!(
        data.iter().all(|l| l.contains("\\\" 206 ")),
        "every data read is ranged (206):\n{since}"
    );
}

#[test]
fn gs_wrong_credentials_and_a_missing_bucket_are_clear_errors_naming_the_repository() {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.psql("app", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);");
    let gcs = FakeGcs::start();
    gcs.create_bucket("bdc-test");
    let setup = Setup::new();

    // 1. A service-account key that is no RSA key: refused before any request.
    let bad = setup.path("bad-sa.json");
    std::fs::write(
        &bad,
        r#"{"private_key": "not a key", "private_key_id": "k1", "client_email": "x@example.invalid"}"#,
    )
    .unwrap();
    let creds = credentials_file(
        setup.dir.path(),
        "gcs.env",
        &[("GOOGLE_SERVICE_ACCOUNT", bad.to_str().unwrap())],
    );
    catalogue(&setup, &cluster, &gcs, "bdc-test", &creds);
    let daemon = setup.start_daemon();
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let run = setup.ctl_json(&["runs", "--limit", "1"])[0].clone();
    let error = run["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("gs://bdc-test/prod"),
        "wrong credentials name the repository: {run}"
    );
    assert!(
        error.contains(&format!("credentials file {}", creds.display())),
        "and the credentials file the settings came from: {run}"
    );
    assert!(daemon.stop().success());
    // With the daemon down, `backups` reads the repository itself.
    let out = setup.ctl(&["backups", "--repository", "gcs"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gs://bdc-test/prod"),
        "{}",
        stderr(&out)
    );

    // 2. A service-account file that does not exist.
    let creds = credentials_file(
        setup.dir.path(),
        "gcs.env",
        &[("GOOGLE_SERVICE_ACCOUNT", "/nonexistent/sa.json")],
    );
    catalogue(&setup, &cluster, &gcs, "bdc-test", &creds);
    let out = setup.ctl(&["backups", "--repository", "gcs"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("gs://bdc-test/prod"), "{e}");
    assert!(e.contains("/nonexistent/sa.json"), "names the file: {e}");

    // 3. A bucket that does not exist.
    let sa = emulator_service_account(&setup);
    let creds = credentials_file(
        setup.dir.path(),
        "gcs.env",
        &[("GOOGLE_SERVICE_ACCOUNT", sa.to_str().unwrap())],
    );
    catalogue(&setup, &cluster, &gcs, "no-such-bucket", &creds);
    let out = setup.ctl(&["backups", "--repository", "gcs"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("gs://no-such-bucket/prod"), "{e}");
    assert!(e.contains("no-such-bucket"), "{e}");
}
