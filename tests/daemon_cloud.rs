//! The daemon with cloud repositories (issue: cloud stores): one job committing to a local
//! repository and replicating to S3 (moto, behind a relay that can cut the connection) and Azure
//! Blob (Azurite): backup → list → restore from each → retention in each; the S3 store unreachable
//! during a run (partial, no commit record, no orphan multipart upload) and the replica landing
//! once it is back.

mod common;

use common::daemon::{Setup, wait_for};
use common::objstores::{AZURITE_ACCOUNT, AZURITE_KEY, Azurite, Moto, Proxy, credentials_file};
use common::pg::PgCluster;
use std::time::Duration;

#[test]
fn backup_list_restore_and_retention_on_file_s3_and_azure() {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.load_sample("app", 2);
    cluster.load_extras("app");
    let moto = Moto::start();
    moto.create_bucket("bdc-test");
    let proxy = Proxy::start(moto.port());
    let azurite = Azurite::start();
    azurite.create_container("bdc-test");

    let setup = Setup::new();
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
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "{url}"

[repository.offsite]
url = "s3://bdc-test/prod"
region = "us-east-1"
endpoint = "{s3}"
credentials-file = "{s3_creds}"

[repository.azure]
url = "az://bdc-test/prod"
endpoint = "{az}"
credentials-file = "{az_creds}"

[retention.short]
last = 1

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local", "offsite", "azure"]
retention = "short"
"#,
        url = cluster.url("app"),
        s3 = proxy.endpoint(),
        s3_creds = s3_creds.display(),
        az = azurite.endpoint(),
        az_creds = az_creds.display(),
    ));
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "shutdown-timeout = \"20s\"",
            "shutdown-timeout = \"20s\"\nreplica-retry = \"1s\"",
        );
    std::fs::write(setup.catalogue_path(), text).unwrap();
    let daemon = setup.start_daemon();

    // 1. A backup lands in all three repositories.
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert!(out.status.success(), "log:\n{}", daemon.log_text());
    let first = setup.ctl_json(&["runs", "--limit", "1"])[0]["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    for repo in ["local", "offsite", "azure"] {
        let b = setup.ctl_json(&["backups", "--repository", repo]);
        assert_eq!(b.as_array().unwrap().len(), 1, "{repo}: {b}");
        assert_eq!(b[0]["backup_id"], first.as_str());
    }
    assert!(
        moto.keys("bdc-test")
            .iter()
            .any(|k| k.ends_with(&format!("{first}/backup.json")))
    );
    assert!(
        azurite
            .keys("bdc-test")
            .iter()
            .any(|k| k.ends_with(&format!("{first}/backup.json")))
    );

    // 2. Restores from each cloud repository give the same data.
    for repo in ["offsite", "azure"] {
        let into = format!("from_{repo}");
        let out = setup.ctl(&[
            "restore",
            "database",
            "--job",
            "db-dump",
            "--repository",
            repo,
            "--into",
            &into,
            "--create",
        ]);
        assert!(out.status.success(), "restore from {repo}");
        assert_eq!(
            cluster.table_fingerprints("app"),
            cluster.table_fingerprints(&into),
            "{repo}"
        );
    }

    // 3. S3 unreachable during a run: committed locally (and to Azure), partial, nothing
    //    committed in S3 and no multipart upload left behind.
    proxy.cut();
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let runs = setup.ctl_json(&["runs", "--limit", "1"]);
    assert_eq!(runs[0]["status"], "partial", "{runs}");
    assert!(
        runs[0]["error"].as_str().unwrap().contains("offsite"),
        "{runs}"
    );
    let second = runs[0]["backup_id"].as_str().unwrap().to_string();
    assert!(
        !moto.keys("bdc-test").iter().any(|k| k.contains(&second)),
        "nothing of the new backup in S3"
    );
    assert!(
        moto.multipart_uploads("bdc-test").is_empty(),
        "no orphan multipart upload"
    );
    let status = setup.ctl_json(&["status"]);
    assert_eq!(
        status["jobs"][0]["repositories"][1]["replica"]["pending"], 1,
        "{status}"
    );

    // 4. Back: the replica lands.
    proxy.restore();
    wait_for(Duration::from_secs(90), "the S3 replica to land", || {
        moto.keys("bdc-test")
            .iter()
            .any(|k| k.ends_with(&format!("{second}/backup.json")))
            .then_some(())
    });
    wait_for(
        Duration::from_secs(30),
        "the replica to be recorded",
        || {
            let s = setup.ctl_json(&["status"]);
            (s["jobs"][0]["repositories"][1]["replica"]["pending"] == 0).then_some(())
        },
    );

    // 5. Retention (last = 1) ran after the second backup in every repository it could reach; a
    //    pass on demand brings S3 in line too, and each repository keeps only the newest backup.
    let out = setup.ctl(&["retention", "--job", "db-dump"]);
    assert!(out.status.success());
    for repo in ["local", "offsite", "azure"] {
        let b = setup.ctl_json(&["backups", "--repository", repo]);
        let ids: Vec<&str> = b
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["backup_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            vec![second.as_str()],
            "{repo} keeps only the newest: {b}"
        );
    }
    assert!(
        !moto.keys("bdc-test").iter().any(|k| k.contains(&first)),
        "the old backup is gone from S3"
    );
    assert!(
        !azurite.keys("bdc-test").iter().any(|k| k.contains(&first)),
        "the old backup is gone from Azure"
    );
    assert!(daemon.stop().success());
}
