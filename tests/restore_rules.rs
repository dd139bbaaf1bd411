//! The rules every restore shares, through the real `bdc-backupctl` on a real repository on
//! disk: a missing or unreadable ancestor of the chosen backup is an error naming the ancestor
//! and the repository; a malformed commit record of another backup is a warning naming its key
//! (on stderr, and in `--json`); a password in `restore database --url` is refused and never
//! echoed; `restore_command` doubles a `%` in the catalogue's path (and recovers with it).
//! Runs as root (clusters as the `postgres` OS user).

mod common;
mod snapshot_support;

use bdc_backup::catalogue::{Catalogue, JobSpec};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::{PipelineSettings, ProgressCounter};
use bdc_backup::postgres::dump::run_dump;
use bdc_backup::repository::{BackupId, CommitRecord, Repository};
use bdc_backup::snapshot::job::JobRun;
use chrono::Utc;
use common::daemon::CTL;
use common::output::{run_logged, stderr};
use common::pg::{PASSWORD, PASSWORD_ROLE, PgCluster};
use snapshot_support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tokio_util::sync::CancellationToken;

/// A commit record that is not JSON, of a backup nobody restores.
const GARBAGE_KEY_ID: &str = "20000101T000000Z-F";

fn ctl(catalogue: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(CTL);
    c.arg("--catalogue").arg(catalogue);
    run_logged(c, "bdc-backupctl", args)
}

/// Writes a garbage `backup.json` for an unrelated backup of `job`; returns its key.
fn garbage_record(repo: &Path, job: &str) -> String {
    let key = format!("backups/{job}/{GARBAGE_KEY_ID}/backup.json");
    let path = repo.join(&key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"{ this is not a commit record").unwrap();
    key
}

/// The snapshot set-up's catalogue as a file the ctl reads.
fn files_catalogue(s: &Setup) -> PathBuf {
    let w = s.work.path();
    let toml = format!(
        r#"
[daemon]
state-db = "{state}/state.db"
socket = "{work}/control.sock"
timezone = "Europe/Berlin"

[encryption]
recipients = ["{recipient}"]
identity-file = "{identity}"

[repository.local]
url = "file://{work}/repo"
{files_job}"#,
        state = s.catalogue.daemon.state_directory.display(),
        work = w.display(),
        recipient = s.recipient,
        identity = s
            .catalogue
            .encryption
            .identity_file
            .as_ref()
            .unwrap()
            .display(),
        files_job = common::catalogue::files_job("uploads", &s.src),
    );
    let cat = w.join("catalogue.toml");
    std::fs::write(&cat, toml).unwrap();
    cat
}

/// A full and two incrementals, each changing something; returns them oldest first.
async fn files_chain(s: &Setup) -> [CommitRecord; 3] {
    std::fs::write(s.src.join("a.txt"), b"from the full").unwrap();
    std::fs::write(s.src.join("b.txt"), b"b, first").unwrap();
    age_tree(&s.src, 3600);
    let (full, _, _) = s.backup(BackupType::Full).await;
    // Backup ids have one-second resolution.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    std::fs::write(s.src.join("b.txt"), b"b, changed in the first incremental").unwrap();
    age_tree(&s.src, 1800);
    let (i1, _, _) = s.backup(BackupType::Incremental).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    std::fs::write(s.src.join("c.txt"), b"c, new in the second").unwrap();
    age_tree(&s.src, 900);
    let (i2, _, _) = s.backup(BackupType::Incremental).await;
    assert_eq!(i2.ancestors, vec![i1.id.clone(), full.id.clone()]);
    [full, i1, i2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_missing_or_unreadable_ancestor_is_an_error() {
    let s = Setup::new(None, vec![]);
    let [_full, i1, i2] = files_chain(&s).await;
    let cat = files_catalogue(&s);
    let record = s.repo_path().join(i1.key());
    let saved = std::fs::read(&record).unwrap();

    // The middle ancestor's commit record deleted: the newest cannot be restored.
    std::fs::remove_file(&record).unwrap();
    let target = s.work.path().join("t1");
    let out = ctl(
        &cat,
        &[
            "restore",
            "files",
            "--job",
            "uploads",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "backup {} needs its ancestor {}, which is not committed in repository `local`",
            i2.id, i1.id
        )),
        "{err}"
    );
    assert!(!target.join("a.txt").exists(), "nothing restored");

    // Garbage instead: unreadable, and said so (with the key).
    std::fs::write(&record, b"not json").unwrap();
    let out = ctl(
        &cat,
        &[
            "restore",
            "files",
            "--job",
            "uploads",
            "--backup",
            &i2.id,
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "backup {} needs its ancestor {}, whose commit record in repository `local` cannot be read",
            i2.id, i1.id
        )) && err.contains(&i1.key()),
        "{err}"
    );
    assert!(!target.join("a.txt").exists(), "nothing restored");

    // Put back: the chain restores, every file as of the newest.
    std::fs::write(&record, saved).unwrap();
    let out = ctl(
        &cat,
        &[
            "restore",
            "files",
            "--job",
            "uploads",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(target.join("a.txt")).unwrap(),
        b"from the full"
    );
    assert_eq!(
        std::fs::read(target.join("b.txt")).unwrap(),
        b"b, changed in the first incremental"
    );
    assert_eq!(
        std::fs::read(target.join("c.txt")).unwrap(),
        b"c, new in the second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_garbage_record_of_another_backup_is_a_warning() {
    let s = Setup::new(None, vec![]);
    let [full, _i1, i2] = files_chain(&s).await;
    let cat = files_catalogue(&s);
    let key = garbage_record(&s.repo_path(), "uploads");

    let target = s.work.path().join("t");
    let out = ctl(
        &cat,
        &[
            "restore",
            "files",
            "--job",
            "uploads",
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: ") && l.contains(&key)),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&key),
        "warnings go to stderr"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&i2.id));
    assert_eq!(
        std::fs::read(target.join("c.txt")).unwrap(),
        b"c, new in the second"
    );

    // --json: the report carries it.
    let target = s.work.path().join("t2");
    let out = ctl(
        &cat,
        &[
            "--json",
            "restore",
            "files",
            "--job",
            "uploads",
            "--backup",
            &full.id,
            "--target",
            target.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backup-id"], full.id.as_str());
    let warnings = report["repository-warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{report}");
    assert!(warnings[0].as_str().unwrap().contains(&key), "{report}");
    assert_eq!(std::fs::read(target.join("b.txt")).unwrap(), b"b, first");
    assert!(!target.join("c.txt").exists());
}

/// A catalogue file with a `postgres-dump` job `db-dump` of database `app` on `pg`.
fn dump_catalogue(dir: &Path, pg: &PgCluster) -> PathBuf {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let key = dir.join("restore.key");
    std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let toml = format!(
        r#"
[daemon]
state-db = "{dir}/state/state.db"
socket = "{dir}/control.sock"
timezone = "UTC"

[encryption]
recipients = ["{recipient}"]
identity-file = "{key}"

[repository.local]
url = "file://{dir}/repo"
{dump}"#,
        dir = dir.display(),
        dump = common::catalogue::dump_job(&pg.url("postgres")),
        recipient = id.to_public(),
        key = key.display(),
    );
    let cat = dir.join("catalogue.toml");
    std::fs::write(&cat, toml).unwrap();
    cat
}

async fn dump(catalogue: &Catalogue) -> CommitRecord {
    let job = &catalogue.jobs[0];
    let JobSpec::PostgresDump(spec) = &job.spec else {
        unreachable!()
    };
    let repository = Repository::open(&catalogue.repositories[0]).unwrap();
    let recipients = catalogue
        .encryption
        .recipients
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    let pipeline = PipelineSettings::new(job.compression.clone(), recipients);
    let started_at = Utc::now();
    let id = BackupId::new(started_at, BackupType::Full).to_string();
    run_dump(
        JobRun {
            catalogue,
            job,
            repository: &repository,
            replicas: &[],
            pipeline: &pipeline,
            backup_id: &id,
            started_at,
            requested: BackupType::Full,
            progress: &ProgressCounter::default(),
            cancel: &CancellationToken::new(),
            state_dir: &catalogue.daemon.state_directory,
        },
        spec,
    )
    .await
    .expect("dump")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_database_warns_about_other_records_and_refuses_passwords_in_urls() {
    let pg = PgCluster::start();
    pg.create_database("app");
    pg.load_sample("app", 1);
    let want = pg.table_fingerprints("app");
    let work = tempfile::tempdir().unwrap();
    let cat = dump_catalogue(work.path(), &pg);
    let catalogue = Catalogue::load(&cat).expect("catalogue");
    let record = dump(&catalogue).await;
    let key = garbage_record(&work.path().join("repo"), "db-dump");

    let out = ctl(
        &cat,
        &[
            "restore", "database", "--job", "db-dump", "--into", "restored", "--create",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&record.id));
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: ") && l.contains(&key)),
        "{err}"
    );
    assert_eq!(pg.table_fingerprints("restored"), want);

    // --json carries the warning; --backup of the garbage one is an error naming its record.
    let out = ctl(
        &cat,
        &[
            "--json", "restore", "database", "--job", "db-dump", "--into", "again", "--create",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["repository-warnings"][0]
            .as_str()
            .unwrap()
            .contains(&key),
        "{report}"
    );
    assert_eq!(pg.table_fingerprints("again"), want);
    let out = ctl(
        &cat,
        &[
            "restore",
            "database",
            "--job",
            "db-dump",
            "--backup",
            GARBAGE_KEY_ID,
            "--into",
            "never",
            "--create",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the commit record of backup {GARBAGE_KEY_ID} in repository `local` cannot be read"
        )) && err.contains(&key),
        "{err}"
    );
    assert!(!pg.database_exists("never"));

    // A password in --url: refused (usage), never echoed, nothing restored — even though the
    // password is right.
    let url = format!(
        "postgresql://{PASSWORD_ROLE}:{PASSWORD}@127.0.0.1:{}/postgres",
        pg.port
    );
    pg.psql("postgres", &format!("ALTER ROLE {PASSWORD_ROLE} CREATEDB;"));
    for json in [false, true] {
        let mut args = vec![
            "restore", "database", "--job", "db-dump", "--into", "pw", "--create", "--url", &url,
        ];
        if json {
            args.insert(0, "--json");
        }
        let out = ctl(&cat, &args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(all.contains("contains a password"), "{all}");
        assert!(!all.contains(PASSWORD), "the password was echoed: {all}");
        assert!(!pg.database_exists("pw"));
    }
}

#[test]
fn restore_command_escapes_percent_in_the_catalogue_path_and_recovers() {
    use common::physical::{Physical, fingerprints, open_up};
    let p = Physical::start("60s");
    p.cluster.create_database("app");
    p.cluster.psql(
        "app",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 300) g;",
    );
    let run = p.backup("--full");
    assert_eq!(run["backup_type"], "full", "{run}");
    p.cluster.psql(
        "app",
        "CREATE TABLE after AS SELECT g FROM generate_series(1, 70) g;",
    );
    p.switch_wal();
    let want = fingerprints(p.cluster.port, "app");
    assert!(want.contains_key("public.after"));

    // The same catalogue, from a folder whose name PostgreSQL would rewrite.
    let odd = p.setup.path("cat%p");
    std::fs::create_dir_all(&odd).unwrap();
    let cat = odd.join("catalogue.toml");
    std::fs::copy(p.setup.catalogue_path(), &cat).unwrap();
    open_up(p.setup.dir.path());
    let target = p.setup.path("restored");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = ctl(
        &cat,
        &[
            "restore",
            "cluster",
            "--job",
            "base",
            "--target-dir",
            target.to_str().unwrap(),
            "--start",
            "--port",
            &port.to_string(),
        ],
    );
    let restored = common::physical::Restored {
        dir: target.clone(),
        port,
    };
    let auto = std::fs::read_to_string(target.join("postgresql.auto.conf")).unwrap_or_default();
    assert!(
        auto.contains(&format!(
            "--catalogue {}/cat%%p/catalogue.toml wal-fetch %f %p",
            p.setup.dir.path().display()
        )),
        "{auto}"
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), restored.log());
    assert_eq!(fingerprints(port, "app"), want);
}

#[test]
fn restore_cluster_missing_ancestor_and_other_records_use_the_shared_rule() {
    use common::physical::Physical;
    let p = Physical::start("60s");
    p.cluster.create_database("app");
    p.cluster.psql(
        "app",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g;",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let full = p.backup("--full");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    p.cluster.psql("app", "INSERT INTO t SELECT 1;");
    let inc = p.backup("--incremental");
    assert_eq!(inc["backup_type"], "incremental", "{inc}");
    let (full_id, inc_id) = (
        full["backup_id"].as_str().unwrap(),
        inc["backup_id"].as_str().unwrap(),
    );
    let repo = p.setup.path("repo");
    let key = garbage_record(&repo, "base");
    let cat = p.setup.catalogue_path();
    let dry = |name: &str| {
        let target = p.setup.path(name);
        ctl(
            &cat,
            &[
                "--json",
                "restore",
                "cluster",
                "--job",
                "base",
                "--target-dir",
                target.to_str().unwrap(),
                "--dry-run",
            ],
        )
    };
    // Another backup's garbage record: a warning in the report, the plan still made.
    let out = dry("plan");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backup-id"], inc_id, "{report}");
    assert_eq!(report["chain"], serde_json::json!([inc_id, full_id]));
    assert!(
        report["repository-warnings"][0]
            .as_str()
            .unwrap()
            .contains(&key),
        "{report}"
    );
    // The full's commit record gone: the incremental is refused in the shared wording.
    std::fs::remove_file(repo.join(format!("backups/base/{full_id}/backup.json"))).unwrap();
    let out = dry("refused");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "backup {inc_id} needs its ancestor {full_id}, which is not committed in repository `local`"
        )),
        "{err}"
    );
}
