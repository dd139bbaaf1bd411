//! `postgres-dump` end to end on real throwaway clusters: dump into a local repository, then
//! restore whole, selected tables, in parallel, roles into a second cluster, and with stock tools
//! only (age | zstd | pg_restore); failures (wrong password, failing or cancelled pg_dump, wrong
//! identity) leave no commit record and say why. Restores are compared by data.

mod common;

use bdc_backup::catalogue::{
    Catalogue, CatchUp, Compression, CompressionSettings, DaemonSettings, DumpJob,
    EncryptionSettings, Job, JobSpec, LogTarget, PostgresSettings, RepositoryLocation,
    RepositorySettings, WalAck,
};
use bdc_backup::error::{Classify, Retry};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::{PipelineSettings, ProgressCounter};
use bdc_backup::postgres::dump::{DumpError, run_dump};
use bdc_backup::postgres::manifest::DumpManifest;
use bdc_backup::postgres::restore::{RestoreDatabaseOptions, restore_database};
use bdc_backup::repository::{BackupId, CommitRecord, Repository};
use bdc_backup::schedule::CronSchedule;
use bdc_backup::snapshot::job::JobRun;
use chrono::Utc;
use common::pg::{PASSWORD, PASSWORD_ROLE, PgCluster};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const JOB: &str = "db-dump";

/// A TCP relay to a cluster: each connection's server bytes are forwarded up to `limit`, then
/// held (the client waits mid-stream, the server blocks on its socket) until
/// [`HoldingRelay::sever`] resets every connection. Makes "pg_dump is mid-dump" certain.
struct HoldingRelay {
    port: u16,
    held: Arc<AtomicBool>,
    severed: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl HoldingRelay {
    fn start(target: u16, limit: usize) -> HoldingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let relay = HoldingRelay {
            port,
            held: Arc::default(),
            severed: Arc::default(),
            conns: Arc::default(),
        };
        let (held, severed, conns) = (
            relay.held.clone(),
            relay.severed.clone(),
            relay.conns.clone(),
        );
        std::thread::spawn(move || {
            while !severed.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(("127.0.0.1", target)).unwrap();
                conns
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_in, &mut s_out);
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let (held, severed) = (held.clone(), severed.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut sent = 0usize;
                    loop {
                        let n = match s_in.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let room = limit.saturating_sub(sent).min(n);
                        if c_out.write_all(&buf[..room]).is_err() {
                            break;
                        }
                        sent += room;
                        if room < n {
                            held.store(true, Ordering::SeqCst);
                            while !severed.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        relay
    }

    fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A function that resets every connection (for another task).
    fn severer(&self) -> impl FnOnce() + Send + 'static {
        let (severed, conns) = (self.severed.clone(), self.conns.clone());
        move || {
            severed.store(true, Ordering::SeqCst);
            for c in conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    fn sever(&self) {
        (self.severer())()
    }
}

impl Drop for HoldingRelay {
    fn drop(&mut self) {
        self.sever();
    }
}

/// Writes a new age identity (0600) and returns its path and recipient.
fn new_identity(dir: &Path, name: &str) -> (PathBuf, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", id.to_string().expose_secret())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, id.to_public().to_string())
}

struct Setup {
    work: tempfile::TempDir,
    catalogue: Catalogue,
    identity: PathBuf,
}

impl Setup {
    fn new(
        url: &str,
        password_file: Option<PathBuf>,
        databases: &[&str],
        tables: &[&str],
    ) -> Setup {
        let work = tempfile::tempdir().unwrap();
        let (identity, recipient) = new_identity(work.path(), "restore.key");
        let repo_path = work.path().join("repo");
        let state = work.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let catalogue = Catalogue {
            source: work.path().join("catalogue.toml"),
            daemon: DaemonSettings {
                state_db: state.join("state.db"),
                state_directory: state.clone(),
                socket: work.path().join("control.sock"),
                timezone: chrono_tz::UTC,
                max_concurrent_runs: 1,
                catch_up: CatchUp::Once,
                postgres_os_user: "postgres".into(),
                read_group: "bdc-backup".into(),
                admin_group: "bdc-backup-admin".into(),
                log: LogTarget::Stderr,
                log_level: "info".into(),
                shutdown_timeout: Duration::from_secs(5),
                replica_retry: Duration::from_secs(30),
                retention_schedule: bdc_backup::schedule::CronSchedule::parse("30 5 * * *")
                    .unwrap(),
                metrics_listen: None,
                metrics_file: None,
            },
            postgres: Some(PostgresSettings {
                url: url.to_string(),
                password_file,
                data_directory: None,
                bin_dir: None,
            }),
            encryption: EncryptionSettings {
                recipients: vec![recipient],
                identity_file: Some(identity.clone()),
            },
            repositories: vec![RepositorySettings {
                name: "local".into(),
                url: format!("file://{}", repo_path.display()),
                location: RepositoryLocation::File { path: repo_path },
                wal_ack: WalAck::Sync,
                region: None,
                endpoint: None,
                credentials_file: None,
                bandwidth_limit: None,
                call_timeout: None,
            }],
            retention: BTreeMap::new(),
            objectives: BTreeMap::new(),
            alerts: Vec::new(),
            application: None,
            jobs: vec![Job {
                name: JOB.into(),
                repositories: vec!["local".into()],
                retention: None,
                max_age: None,
                ping_url: None,
                connection: None,
                compression: CompressionSettings {
                    algorithm: Compression::Zstd,
                    level: 3,
                    workers: 2,
                },
                spec: JobSpec::PostgresDump(DumpJob {
                    schedule: CronSchedule::parse("0 2 * * *").unwrap(),
                    databases: databases.iter().map(|s| s.to_string()).collect(),
                    tables: tables.iter().map(|s| s.to_string()).collect(),
                    globals: true,
                }),
            }],
        };
        Setup {
            work,
            catalogue,
            identity,
        }
    }

    fn repository(&self) -> Repository {
        Repository::open(&self.catalogue.repositories[0]).unwrap()
    }

    async fn dump(&self, cancel: &CancellationToken) -> Result<CommitRecord, DumpError> {
        self.dump_with(cancel, &ProgressCounter::default()).await
    }

    async fn dump_with(
        &self,
        cancel: &CancellationToken,
        progress: &ProgressCounter,
    ) -> Result<CommitRecord, DumpError> {
        let job = &self.catalogue.jobs[0];
        let JobSpec::PostgresDump(spec) = &job.spec else {
            unreachable!()
        };
        let repository = self.repository();
        let recipients = self
            .catalogue
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
                catalogue: &self.catalogue,
                job,
                repository: &repository,
                replicas: &[],
                pipeline: &pipeline,
                backup_id: &id,
                started_at,
                requested: BackupType::Full,
                progress,
                cancel,
                state_dir: &self.catalogue.daemon.state_directory,
            },
            spec,
        )
        .await
    }

    fn restore_opts(&self, into: &str) -> RestoreDatabaseOptions {
        RestoreDatabaseOptions {
            job: JOB.into(),
            into: into.into(),
            create: true,
            ..Default::default()
        }
    }

    async fn commits(&self) -> Vec<CommitRecord> {
        self.repository().list_commits(Some(JOB)).await.unwrap().0
    }

    /// Every object key stored under the repository's `backups/` prefix.
    async fn stored_keys(&self) -> Vec<String> {
        self.repository()
            .store
            .list("backups/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect()
    }
}

/// Lines of a schema fingerprint that concern `table` (and its sequence) in schema public.
fn lines_about(lines: &[String], table: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            l.starts_with(&format!("index public.{table}:"))
                || l.starts_with(&format!("constraint {table}:"))
                || l.starts_with(&format!("trigger {table}:"))
                || l.starts_with(&format!("sequence public.{table}_id_seq:"))
                || l.starts_with(&format!("policy public.{table}:"))
                || l.starts_with(&format!("relation public.{table}:"))
                || l.starts_with(&format!("relation public.{table}_id_seq:"))
        })
        .cloned()
        .collect()
}

fn sh(script: &str) -> String {
    let out = std::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\nfailed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_then_restore_every_way() {
    let pg = PgCluster::start();
    pg.create_database("app");
    pg.load_sample("app", 2);
    pg.load_extras("app");
    pg.load_pgbench("app", 1);
    let source_tables = pg.table_fingerprints("app");
    let source_schema = pg.schema_fingerprint("app");
    assert!(source_tables.len() >= 9, "{source_tables:?}");

    let setup = Setup::new(&pg.url("postgres"), None, &["app"], &[]);
    let record = setup.dump(&CancellationToken::new()).await.expect("dump");
    assert_eq!(record.objects.len(), 2, "one database + globals");
    assert_eq!(record.details["database-count"], 1);
    assert_eq!(record.details["no-role-passwords"], false);
    assert_eq!(setup.commits().await.len(), 1);
    let json = serde_json::to_string(&record).unwrap();
    assert!(
        !json.contains("\"app\"") && !json.contains("users"),
        "the commit record names nothing: {json}"
    );

    // Whole database into a new one.
    let report = restore_database(&setup.catalogue, setup.restore_opts("restored"))
        .await
        .expect("restore");
    assert_eq!(report.source_database, "app");
    assert_eq!(report.backup_id, record.id);
    assert_eq!(pg.table_fingerprints("restored"), source_tables);
    assert_eq!(pg.schema_fingerprint("restored"), source_schema);

    // --create refuses an existing database; without it a missing one is an error.
    let err = restore_database(&setup.catalogue, setup.restore_opts("restored"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            create: false,
            ..setup.restore_opts("missing")
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("`missing` does not exist"),
        "{err}"
    );

    // Selected tables: users with everything it owns, and nothing else.
    let report = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            tables: vec!["users".into(), "public.audit_log".into()],
            ..setup.restore_opts("only_users")
        },
    )
    .await
    .expect("table restore");
    assert_eq!(report.tables, vec!["public.audit_log", "public.users"]);
    assert_eq!(
        pg.tables("only_users"),
        vec!["public.audit_log", "public.users"]
    );
    let restored = pg.table_fingerprints("only_users");
    assert_eq!(restored["public.users"], source_tables["public.users"]);
    assert_eq!(
        restored["public.audit_log"],
        source_tables["public.audit_log"]
    );
    let restored_schema = pg.schema_fingerprint("only_users");
    let users_lines = lines_about(&source_schema, "users");
    assert!(users_lines.len() >= 8, "{users_lines:?}");
    assert_eq!(lines_about(&restored_schema, "users"), users_lines);
    assert_eq!(
        lines_about(&restored_schema, "audit_log"),
        lines_about(&source_schema, "audit_log")
    );
    assert!(
        users_lines.iter().any(|l| l.contains("app_reader=")),
        "grants are part of the comparison: {users_lines:?}"
    );
    assert!(
        !restored_schema
            .iter()
            .any(|l| l.contains("beneficiaries") || l.contains("active_users")),
        "{restored_schema:?}"
    );

    // A table whose foreign keys point at tables not restored: restored, the keys reported.
    let report = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            tables: vec!["documents".into()],
            ..setup.restore_opts("only_documents")
        },
    )
    .await
    .expect("documents restore");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("documents_beneficiary_id_fkey"));
    let err = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            tables: vec!["nope".into()],
            ..setup.restore_opts("nope_db")
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("table `nope` is not in this backup"),
        "{err}"
    );

    // Parallel restore from a spooled, checked archive.
    let report = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            jobs: Some(2),
            ..setup.restore_opts("parallel")
        },
    )
    .await
    .expect("parallel restore");
    assert!(report.bytes > 1_000_000);
    assert_eq!(pg.table_fingerprints("parallel"), source_tables);
    assert_eq!(pg.schema_fingerprint("parallel"), source_schema);

    // Stock tools only: the manifest and the archive with age | zstd | pg_restore.
    let root = setup.work.path().join("repo");
    let manifest_json = sh(&format!(
        "age -d -i {} {}/{} | zstd -d",
        setup.identity.display(),
        root.display(),
        record.manifest.key
    ));
    let manifest: DumpManifest = serde_json::from_str(&manifest_json).unwrap();
    let object = &manifest.database(Some("app")).unwrap().object;
    let key = &object.key;
    let sum = sh(&format!(
        "age -d -i {} {}/{} | zstd -d | sha256sum",
        setup.identity.display(),
        root.display(),
        key
    ));
    assert_eq!(
        sum.split_whitespace().next(),
        Some(object.content_sha256.as_str())
    );
    pg.create_database("stock");
    sh(&format!(
        "age -d -i {} {}/{} | zstd -d | {}/pg_restore --exit-on-error -d {}",
        setup.identity.display(),
        root.display(),
        key,
        pg.bin.display(),
        pg.url("stock")
    ));
    assert_eq!(pg.table_fingerprints("stock"), source_tables);
    assert_eq!(pg.schema_fingerprint("stock"), source_schema);

    // The daemon keeps a plaintext copy of the manifest.
    let copy = bdc_backup::repository::local_copy::load(
        &setup.catalogue.daemon.state_directory,
        JOB,
        &record.id,
        &record.manifest.sha256,
    )
    .await
    .unwrap()
    .expect("the manifest's local copy");
    assert_eq!(
        serde_json::from_slice::<DumpManifest>(&copy).unwrap(),
        manifest
    );

    // Roles into a second cluster (which lacks app_reader), then the database with its grants.
    let other = PgCluster::start();
    assert!(!other.role_exists("app_reader"));
    let report = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            url: Some(other.url("postgres")),
            roles: true,
            ..setup.restore_opts("app")
        },
    )
    .await
    .expect("restore with roles into another cluster");
    assert!(other.role_exists("app_reader"));
    assert!(
        report.warnings.iter().any(|w| w.contains("already exists")),
        "existing roles are warnings: {:?}",
        report.warnings
    );
    assert_eq!(other.table_fingerprints("app"), source_tables);
    assert_eq!(other.schema_fingerprint("app"), source_schema);

    // A wrong identity: a clear error, nothing created.
    let (wrong, _) = new_identity(setup.work.path(), "wrong.key");
    let mut cat = setup.catalogue.clone();
    cat.encryption.identity_file = Some(wrong.clone());
    let err = restore_database(&cat, setup.restore_opts("never"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("identity") && msg.contains(&record.id),
        "{msg}"
    );
    assert!(!pg.database_exists("never"));
    // And none at all.
    cat.encryption.identity_file = None;
    let err = restore_database(&cat, setup.restore_opts("never"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("identity-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_come_from_the_password_file() {
    let pg = PgCluster::start();
    pg.create_database("app");
    pg.load_sample("app", 1);
    pg.psql(
        "postgres",
        &format!("GRANT pg_read_all_data TO {PASSWORD_ROLE};"),
    );
    let dir = tempfile::tempdir().unwrap();

    // Wrong password: a clear, permanent error; nothing committed or left behind.
    let bad = dir.path().join("bad.pass");
    std::fs::write(&bad, "wrong-password\n").unwrap();
    // A password file others may read is refused before any connection, naming the fix.
    let setup = Setup::new(
        &pg.url_as(PASSWORD_ROLE, "postgres"),
        Some(bad.clone()),
        &["app"],
        &[],
    );
    let err = setup.dump(&CancellationToken::new()).await.unwrap_err();
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        msg = format!("{msg}: {e}");
        source = e.source();
    }
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(!msg.contains("wrong-password"), "{msg}");
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let setup = Setup::new(
        &pg.url_as(PASSWORD_ROLE, "postgres"),
        Some(bad),
        &["app"],
        &[],
    );
    let err = setup.dump(&CancellationToken::new()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("authentication failed for user {PASSWORD_ROLE}")),
        "{msg}"
    );
    assert!(msg.contains(&format!("127.0.0.1:{}", pg.port)), "{msg}");
    assert_eq!(err.retry(), Retry::Permanent);
    assert!(setup.commits().await.is_empty());
    assert!(setup.stored_keys().await.is_empty());

    // Right password: the children (pg_dump, pg_dumpall) get it through a private PGPASSFILE,
    // and a non-superuser's globals come without role passwords.
    let good = dir.path().join("good.pass");
    std::fs::write(&good, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let setup = Setup::new(
        &pg.url_as(PASSWORD_ROLE, "postgres"),
        Some(good),
        &["app"],
        &[],
    );
    let record = setup
        .dump(&CancellationToken::new())
        .await
        .expect("dump with a password");
    assert_eq!(record.details["no-role-passwords"], true);
    let leftovers: Vec<_> = std::fs::read_dir(&setup.catalogue.daemon.state_directory)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".pgpass"))
        .collect();
    assert!(leftovers.is_empty(), "the temporary PGPASSFILE is removed");
    let mut cat = setup.catalogue.clone();
    cat.postgres.as_mut().unwrap().url = pg.url("postgres");
    cat.postgres.as_mut().unwrap().password_file = None;
    restore_database(&cat, setup.restore_opts("copy"))
        .await
        .expect("restore");
    assert_eq!(pg.table_fingerprints("copy"), pg.table_fingerprints("app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_or_cancelled_dumps_commit_nothing() {
    let pg = PgCluster::start();
    pg.create_database("app");
    pg.load_sample("app", 1);

    // pg_dump exits 1 (no table matches): its stderr is in the error, nothing is kept.
    let setup = Setup::new(&pg.url("postgres"), None, &["app"], &["no_such_table"]);
    let err = setup.dump(&CancellationToken::new()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no matching tables were found"), "{msg}");
    assert!(msg.contains("`app`") && msg.contains(JOB), "{msg}");
    assert!(setup.commits().await.is_empty());
    assert!(
        setup.stored_keys().await.is_empty(),
        "{:?}",
        setup.stored_keys().await
    );

    // A database that does not exist: same.
    let setup = Setup::new(&pg.url("postgres"), None, &["app", "ghost"], &[]);
    let err = setup.dump(&CancellationToken::new()).await.unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert!(setup.commits().await.is_empty());
    assert!(
        setup.stored_keys().await.is_empty(),
        "the first database's object is removed too: {:?}",
        setup.stored_keys().await
    );

    // Cancelled while pg_dump streams: the child is killed, nothing committed. pg_dump talks to
    // the server through a relay that holds the server's bytes after 4 MiB, so the dump is
    // always mid-stream when the test acts (it cannot finish first).
    pg.load_pgbench("app", 2);
    let relay = HoldingRelay::start(pg.port, 4 << 20);
    let setup = Setup::new(&relay.url("postgres"), None, &["app"], &[]);
    let cancel = CancellationToken::new();
    let progress = ProgressCounter::default();
    let (c, p, held) = (cancel.clone(), progress.clone(), relay.held.clone());
    let watcher = tokio::spawn(async move {
        // Cancel once pg_dump's output is flowing into the pipeline and the relay holds it.
        while p.read() < 1 << 20 || !held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.cancel();
        p.read()
    });
    let err = setup.dump_with(&cancel, &progress).await.unwrap_err();
    let read_at_cancel = watcher.await.unwrap();
    assert!(read_at_cancel >= 1 << 20, "cancelled mid-stream");
    assert!(matches!(err, DumpError::Cancelled { .. }), "{err}");
    assert!(setup.commits().await.is_empty());
    assert!(
        setup.stored_keys().await.is_empty(),
        "{:?}",
        setup.stored_keys().await
    );
    relay.sever();

    // pg_dump loses its server connection mid-stream: its error is kept, nothing committed.
    let relay = HoldingRelay::start(pg.port, 4 << 20);
    let setup = Setup::new(&relay.url("postgres"), None, &["app"], &[]);
    let progress = ProgressCounter::default();
    let (p, held) = (progress.clone(), relay.held.clone());
    let severed = relay.severer();
    let killer = tokio::spawn(async move {
        while p.read() < 256 << 10 || !held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        severed();
        p.read()
    });
    let err = setup
        .dump_with(&CancellationToken::new(), &progress)
        .await
        .unwrap_err();
    assert!(killer.await.unwrap() >= 256 << 10, "cut mid-stream");
    let msg = err.to_string();
    assert!(matches!(err, DumpError::Tool { .. }), "{msg}");
    assert!(
        msg.contains("pg_dump: error:"),
        "pg_dump's own words: {msg}"
    );
    assert!(setup.commits().await.is_empty());
    assert!(
        setup.stored_keys().await.is_empty(),
        "{:?}",
        setup.stored_keys().await
    );
    drop(relay);

    let left = || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump';",
        )
    };
    for _ in 0..200 {
        if left() == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left(), "0", "no pg_dump left running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_archives_restore_nothing() {
    let pg = PgCluster::start();
    pg.create_database("app");
    pg.load_sample("app", 1);
    pg.load_pgbench("app", 1);
    let setup = Setup::new(&pg.url("postgres"), None, &["app"], &[]);
    let record = setup.dump(&CancellationToken::new()).await.expect("dump");
    let object = setup.work.path().join("repo").join(&record.objects[0].key);
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x55;
    std::fs::write(&object, &bytes).unwrap();

    // Streamed: pg_restore is killed before its single transaction can commit.
    let err = restore_database(&setup.catalogue, setup.restore_opts("streamed"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&record.id), "{err}");
    assert!(
        !pg.database_exists("streamed"),
        "the database the failed restore created is dropped again"
    );

    // Spooled (--jobs): the archive is rejected before pg_restore runs.
    let err = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            jobs: Some(2),
            ..setup.restore_opts("spooled")
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&record.id), "{err}");
    // The spool is checked before anything is created on the server.
    assert!(
        !pg.database_exists("spooled"),
        "the target database was created"
    );
}

/// Issue 11: a truncated dump object (as tests/bad_objects.rs damages one) fails a streamed
/// `restore database --create` after the database was created: the database is dropped again.
/// Without `--create` the existing target is the operator's and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_drops_only_the_database_it_created() {
    let pg = PgCluster::start();
    pg.create_database("app");
    pg.load_sample("app", 1);
    pg.load_pgbench("app", 1);
    let setup = Setup::new(&pg.url("postgres"), None, &["app"], &[]);
    let record = setup.dump(&CancellationToken::new()).await.expect("dump");
    let object = setup.work.path().join("repo").join(&record.objects[0].key);
    let size = std::fs::metadata(&object).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&object)
        .unwrap()
        .set_len(size / 2)
        .unwrap();

    let err = restore_database(&setup.catalogue, setup.restore_opts("created"))
        .await
        .unwrap_err();
    let text = bdc_backup::error::error_chain(&err);
    assert!(
        text.contains(&record.objects[0].key) && text.contains("truncated"),
        "the error names the truncated object: {text}"
    );
    assert!(
        !pg.database_exists("created"),
        "the database the failed restore created was left behind"
    );

    pg.create_database("mine");
    let err = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            create: false,
            ..setup.restore_opts("mine")
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&record.id), "{err}");
    assert!(
        pg.database_exists("mine"),
        "an existing target database was dropped"
    );
}

#[tokio::test]
async fn unreachable_server_is_transient_and_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
    let err = bdc_backup::postgres::connection::PgControl::connect(&url, None)
        .await
        .unwrap_err();
    assert_eq!(err.retry(), Retry::Transient, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{port}/postgres")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_databases_need_a_name() {
    let pg = PgCluster::start();
    for db in ["app", "crm"] {
        pg.create_database(db);
    }
    pg.load_sample("app", 1);
    pg.psql(
        "crm",
        "CREATE TABLE contacts (id serial PRIMARY KEY, name text); INSERT INTO contacts (name) VALUES ('a'), ('b');",
    );
    // Over the unix socket this time.
    let setup = Setup::new(&pg.socket_url("postgres"), None, &["app", "crm"], &[]);
    let record = setup.dump(&CancellationToken::new()).await.expect("dump");
    assert_eq!(record.details["database-count"], 2);
    assert_eq!(record.objects.len(), 3);

    let err = restore_database(&setup.catalogue, setup.restore_opts("x"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("several databases (app, crm)"),
        "{err}"
    );
    let err = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            database: Some("hr".into()),
            ..setup.restore_opts("x")
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("`hr` is not in this backup"),
        "{err}"
    );

    // Into an existing, empty database (no --create), by backup id.
    pg.create_database("crm_copy");
    let report = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            database: Some("crm".into()),
            backup: Some(record.id.clone()),
            create: false,
            ..setup.restore_opts("crm_copy")
        },
    )
    .await
    .expect("restore crm");
    assert!(!report.created);
    assert_eq!(
        pg.table_fingerprints("crm_copy"),
        pg.table_fingerprints("crm")
    );
    let err = restore_database(
        &setup.catalogue,
        RestoreDatabaseOptions {
            backup: Some("20000101T000000Z-F".into()),
            database: Some("crm".into()),
            ..setup.restore_opts("y")
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("20000101T000000Z-F is not committed"),
        "{err}"
    );
}

/// The comparisons above mean something: the fingerprints notice a changed value, a dropped
/// index, a revoked grant and a moved sequence.
#[test]
fn harness_fingerprints_notice_changes() {
    let pg = PgCluster::start_with("log_min_messages = warning");
    pg.create_database("a");
    pg.load_sample("a", 1);
    pg.load_extras("a");
    let tables = pg.table_fingerprints("a");
    assert_eq!(tables["public.users"].0, 20);
    let mut schema = pg.schema_fingerprint("a");
    pg.psql("a", "UPDATE programs SET budget = budget + 1 WHERE id = 1;");
    let changed = pg.table_fingerprints("a");
    assert_eq!(changed["public.programs"].0, tables["public.programs"].0);
    assert_ne!(changed["public.programs"].1, tables["public.programs"].1);
    for change in [
        "DROP INDEX users_role_idx;",
        "REVOKE SELECT ON users FROM app_reader;",
        "SELECT setval('users_id_seq', 1000);",
        "DROP TRIGGER users_touch ON users;",
    ] {
        pg.psql("a", change);
        let now = pg.schema_fingerprint("a");
        assert_ne!(now, schema, "{change}");
        schema = now;
    }
    pg.restart();
    assert_eq!(pg.schema_fingerprint("a"), schema);
}
