//! Tests of catalogue loading: inline catalogues, whole error lists asserted (continued in
//! `tests/jobs.rs`).

use super::*;
use std::io::Write;

/// docs/design.md §12, verbatim.
const DESIGN_12: &str = r#"
[daemon]
state-db = "/var/lib/bdc-backup/state.db"
socket = "/run/bdc-backup/control.sock"
timezone = "Europe/Istanbul"          # cron times are wall-clock here, DST-correct
max-concurrent-runs = 2
catch-up = "once"                     # after downtime: once | skip
postgres-os-user = "postgres"         # the only peer allowed to wal-push

[postgres]                            # the cluster on this host
url = "postgresql://bdc_backup@localhost:5432/bdc_db"  # a role allowed to back up; no password here
password-file = "/etc/bdc-backup/pgpass"        # optional; PGPASSFILE and peer auth work too
data-directory = "/var/lib/postgresql/15/main"  # needed by postgres-base
bin-dir = "/usr/lib/postgresql/15/bin"          # optional; found from the server's version otherwise

[encryption]
recipients = ["age1…"]                # public keys: backing up needs no secret
identity-file = "/etc/bdc-backup/restore.key"   # only where restores and drills run

[repository.local]
url = "file:///backups"
wal-ack = "sync"
[repository.offsite]
url = "s3://bdc-backups/prod"         # s3:// gs:// az:// file://
region = "eu-central-1"
endpoint = "https://s3.example.net"   # S3-compatible stores; http:// allowed for local test servers
credentials-file = "/etc/bdc-backup/s3.env"     # else the environment
wal-ack = "async"

[retention.standard]
daily = 7
weekly = 4
monthly = 12
yearly = 5

[objectives.database]                 # the RTO/RPO table
jobs = ["db", "wal", "db-dump"]
rpo = "5m"
rto = "1h"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["bdc_db"]                # tables = ["users", "beneficiaries"] to dump only those
repositories = ["local", "offsite"]
retention = "standard"

[[job]]
name = "db"
kind = "postgres-base"
full = "0 4 * * 0"
incremental = "0 2 * * *"
wal-job = "wal"
pitr-window = "14d"                   # continuous WAL kept this far back
repositories = ["local", "offsite"]
retention = "standard"

[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["local", "offsite"]

[[job]]
name = "uploads"
kind = "files"
path = "/app/uploads"
exclude = ["*.tmp"]
full = "0 4 * * 0"
incremental = "0 3 * * *"
max-chain = 13
repositories = ["local", "offsite"]
retention = "standard"

[[job]]
name = "config"
kind = "config"
paths = ["/app/config/.env", "/app/config/.env.production", "/app/config/nginx.conf",
         "/app/config/docker-compose.yml", "/app/config/supervisord.conf"]
schedule = "*/30 * * * *"             # checked this often, stored only when changed
repositories = ["local", "offsite"]
retention = "standard"
"#;

const FILE: &str = "/etc/bdc-backup/catalogue.toml";

fn recipient() -> String {
    age::x25519::Identity::generate().to_public().to_string()
}

/// A small valid catalogue with one dump job, followed by `extra`.
fn small(extra: &str) -> String {
    format!(
        r#"
[postgres]
url = "postgresql://bdc_backup@localhost/bdc_db"

[encryption]
recipients = ["{}"]

[repository.local]
url = "file:///backups"

[retention.standard]
daily = 7

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["bdc_db"]
repositories = ["local"]
retention = "standard"
{extra}"#,
        recipient()
    )
}

fn parse(text: &str) -> Result<Catalogue, CatalogueErrors> {
    parse_str(text, Path::new(FILE), &[])
}

/// The (key, message) pairs of a catalogue that must fail.
fn errors(text: &str) -> Vec<(String, String)> {
    match parse(text) {
        Ok(_) => panic!("the catalogue was accepted"),
        Err(e) => {
            assert!(e.0.iter().all(|e| e.file == Path::new(FILE)));
            e.0.into_iter().map(|e| (e.key, e.message)).collect()
        }
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, m)| (k.to_string(), m.to_string()))
        .collect()
}

fn temp_file(dir: &tempfile::TempDir, name: &str) -> String {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).expect("create temp file");
    writeln!(f, "secret").expect("write temp file");
    // Secret files are refused when group or others may read them.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod temp file");
    path.to_str().expect("utf-8 temp path").to_string()
}

#[test]
fn design_catalogue_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = recipient();
    let text = DESIGN_12
        .replace("age1…", &r)
        .replace("/etc/bdc-backup/pgpass", &temp_file(&dir, "pgpass"))
        .replace(
            "/etc/bdc-backup/restore.key",
            &temp_file(&dir, "restore.key"),
        )
        .replace("/etc/bdc-backup/s3.env", &temp_file(&dir, "s3.env"));
    let c = match parse(&text) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.source, Path::new(FILE));
    assert_eq!(c.daemon.state_db, Path::new("/var/lib/bdc-backup/state.db"));
    assert_eq!(c.daemon.state_directory, Path::new("/var/lib/bdc-backup"));
    assert_eq!(c.daemon.socket, Path::new("/run/bdc-backup/control.sock"));
    assert_eq!(c.daemon.timezone, chrono_tz::Europe::Istanbul);
    assert_eq!(c.daemon.max_concurrent_runs, 2);
    assert_eq!(c.daemon.catch_up, CatchUp::Once);
    assert_eq!(c.daemon.postgres_os_user, "postgres");
    assert_eq!(c.daemon.read_group, "bdc-backup");
    assert_eq!(c.daemon.admin_group, "bdc-backup-admin");
    assert_eq!(c.daemon.log, LogTarget::Auto);
    assert_eq!(c.daemon.log_level, "info");
    assert_eq!(c.daemon.shutdown_timeout, Duration::from_secs(30));

    let pg = c.postgres.as_ref().expect("postgres");
    assert_eq!(pg.url, "postgresql://bdc_backup@localhost:5432/bdc_db");
    assert_eq!(
        pg.data_directory.as_deref(),
        Some(Path::new("/var/lib/postgresql/15/main"))
    );
    assert_eq!(c.encryption.recipients, vec![r]);
    assert!(c.encryption.identity_file.is_some());

    let names: Vec<&str> = c.repositories.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["local", "offsite"]);
    let local = c.repository("local").expect("local");
    assert_eq!(
        local.location,
        RepositoryLocation::File {
            path: PathBuf::from("/backups")
        }
    );
    assert_eq!(local.wal_ack, WalAck::Sync);
    let offsite = c.repository("offsite").expect("offsite");
    assert_eq!(
        offsite.location,
        RepositoryLocation::S3 {
            bucket: "bdc-backups".into(),
            prefix: "prod".into()
        }
    );
    assert_eq!(offsite.wal_ack, WalAck::Async);
    assert_eq!(offsite.region.as_deref(), Some("eu-central-1"));
    assert_eq!(offsite.endpoint.as_deref(), Some("https://s3.example.net"));
    assert_eq!(offsite.bandwidth_limit, None);

    assert_eq!(
        c.retention["standard"],
        RetentionPolicy {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            yearly: Some(5),
            ..Default::default()
        }
    );
    let o = &c.objectives["database"];
    assert_eq!(o.jobs, ["db", "wal", "db-dump"]);
    assert_eq!(o.rpo, Some(Duration::from_secs(300)));
    assert_eq!(o.rto, Some(Duration::from_secs(3600)));

    let kinds: Vec<(&str, JobKindName)> =
        c.jobs.iter().map(|j| (j.name.as_str(), j.kind())).collect();
    assert_eq!(
        kinds,
        [
            ("db-dump", JobKindName::PostgresDump),
            ("db", JobKindName::PostgresBase),
            ("wal", JobKindName::PostgresWal),
            ("uploads", JobKindName::Files),
            ("config", JobKindName::Config),
        ]
    );
    let dump = c.job("db-dump").expect("db-dump");
    assert_eq!(dump.repositories, ["local", "offsite"]);
    assert_eq!(dump.retention.as_deref(), Some("standard"));
    assert_eq!(dump.compression.algorithm, Compression::Zstd);
    assert_eq!(dump.compression.level, 3);
    assert!(dump.compression.workers >= 1);
    let JobSpec::PostgresDump(d) = &dump.spec else {
        panic!("not a dump")
    };
    assert_eq!(d.schedule.as_str(), "0 2 * * *");
    assert_eq!(d.databases, ["bdc_db"]);
    assert!(d.tables.is_empty());
    assert!(d.globals);
    let JobSpec::PostgresBase(b) = &c.job("db").expect("db").spec else {
        panic!("not base")
    };
    assert_eq!(b.full.as_str(), "0 4 * * 0");
    assert_eq!(
        b.incremental.as_ref().map(|s| s.as_str()),
        Some("0 2 * * *")
    );
    assert_eq!(b.wal_job.as_deref(), Some("wal"));
    assert_eq!(b.pitr_window, Some(Duration::from_secs(14 * 86400)));
    assert_eq!((b.max_chain, b.wal_timeout), (None, None));
    let JobSpec::Files(f) = &c.job("uploads").expect("uploads").spec else {
        panic!("not files")
    };
    assert_eq!(f.path, Path::new("/app/uploads"));
    assert_eq!(f.exclude, ["*.tmp"]);
    assert_eq!(f.max_chain, Some(13));
    assert!(!f.one_file_system);
    let JobSpec::Config(cf) = &c.job("config").expect("config").spec else {
        panic!("not config")
    };
    assert_eq!(cf.paths.len(), 5);
    assert_eq!(cf.schedule.as_str(), "*/30 * * * *");
    assert!(!cf.watch);
}

#[test]
fn small_catalogue_parses_with_defaults() {
    let c = match parse(&small("")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.daemon.timezone, chrono_tz::UTC);
    assert_eq!(c.daemon.state_db, Path::new("/var/lib/bdc-backup/state.db"));
    assert_eq!(c.daemon.socket, Path::new("/run/bdc-backup/control.sock"));
    assert_eq!(c.jobs.len(), 1);
    assert_eq!(c.jobs[0].schedules().len(), 1);
}

#[test]
fn malformed_toml_reports_line_and_column() {
    let e = parse("[daemon]\nsocket = \"/run/x.sock\nmax-concurrent-runs = 2\n").unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].key, "");
    assert_eq!(e.0[0].file, Path::new(FILE));
    assert!(
        e.0[0]
            .message
            .starts_with("TOML syntax error at line 2, column 22: "),
        "{}",
        e.0[0].message
    );
    assert!(
        e.to_string()
            .starts_with("/etc/bdc-backup/catalogue.toml: TOML syntax error at line 2")
    );
}

#[test]
fn five_mistakes_give_five_errors() {
    let text = small(
        r#"
[[job]]
name = "up loads"
kind = "files"
path = "/app/uploads"
full = "0 4 * * 0"
max-chain = "13"
repositories = ["local", "ofsite"]
retention = "weekly"
[daemon]
timezone = "Europe/Istambul"
"#,
    );
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "daemon.timezone",
                "\"Europe/Istambul\" is not a known IANA timezone (such as \"Europe/Istanbul\" or \"UTC\"); did you mean \"Europe/Istanbul\"?"
            ),
            (
                "job[1] \"up loads\".name",
                "job name \"up loads\" may only contain letters, digits, '.', '_' and '-'"
            ),
            (
                "job[1] \"up loads\".repositories[1]",
                "no [repository.ofsite] is defined; defined: local"
            ),
            (
                "job[1] \"up loads\".retention",
                "no [retention.weekly] is defined; defined: standard"
            ),
            (
                "job[1] \"up loads\".max-chain",
                "expected an integer, found a string"
            ),
        ])
    );
}

#[test]
fn unknown_keys_everywhere() {
    let text = small(
        r#"databse = "x"
[daemon]
stat-db = "/tmp/x.db"
[notifications]
email = "ops@example.org"
"#,
    );
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "notifications",
                "unknown key `notifications`; allowed here: daemon, postgres, encryption, repository, retention, objectives, job, alert, application"
            ),
            (
                "daemon.stat-db",
                "unknown key `stat-db`; did you mean `state-db`?"
            ),
            (
                "job[0] \"db-dump\".databse",
                "unknown key `databse`; did you mean `databases`?"
            ),
        ])
    );
}

#[test]
fn key_of_another_job_kind_is_explained() {
    let text = small(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "uploads"
full = "0 4 * * 0"
databases = ["bdc_db"]
schedule = "0 3 * * *"
repositories = ["local"]
"#,
    );
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "job[1] \"uploads\".databases",
                "`databases` is not a key of files jobs (it belongs to postgres-dump jobs)"
            ),
            (
                "job[1] \"uploads\".schedule",
                "`schedule` is not a key of files jobs (it belongs to postgres-dump, config and verify jobs); this kind is scheduled with `full` and `incremental`"
            ),
        ])
    );
}

#[test]
fn unknown_repository_and_retention() {
    let text = small("").replace(
        "repositories = [\"local\"]\nretention = \"standard\"",
        "repositories = [\"offsite\"]\nretention = \"gfs\"",
    );
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "job[0] \"db-dump\".repositories[0]",
                "no [repository.offsite] is defined; defined: local"
            ),
            (
                "job[0] \"db-dump\".retention",
                "no [retention.gfs] is defined; defined: standard"
            ),
        ])
    );
}

#[test]
fn bad_cron_goes_through_the_schedule_parser() {
    // CronSchedule::parse is still a stub that accepts everything; once it parses for real,
    // this catalogue fails at `job[0].schedule` with the parser's message, which names the
    // expression.
    let text = small("").replace("schedule = \"0 2 * * *\"", "schedule = \"61 25 * * *\"");
    match parse(&text) {
        Ok(c) => assert_eq!(c.jobs[0].schedules()[0].1.as_str(), "61 25 * * *"),
        Err(e) => {
            assert_eq!(e.0.len(), 1, "{e}");
            assert_eq!(e.0[0].key, "job[0] \"db-dump\".schedule");
            assert!(e.0[0].message.contains("61 25 * * *"), "{e}");
        }
    }
    // A schedule of the wrong type never reaches the parser.
    let text = small("").replace("schedule = \"0 2 * * *\"", "schedule = 2");
    assert_eq!(
        errors(&text),
        pairs(&[(
            "job[0] \"db-dump\".schedule",
            "expected a string, found an integer"
        )])
    );
}

#[test]
fn bad_timezone() {
    let text = small("[daemon]\ntimezone = \"Mars/Olympus_Mons\"\n");
    assert_eq!(
        errors(&text),
        pairs(&[(
            "daemon.timezone",
            "\"Mars/Olympus_Mons\" is not a known IANA timezone (such as \"Europe/Istanbul\" or \"UTC\")"
        )])
    );
}

#[test]
fn passwords_in_urls_are_rejected() {
    let text = small(
        r#"
[repository.offsite]
url = "s3://AKIA:hunter2@bdc-backups/prod"
endpoint = "https://key:hunter2@s3.example.net"
"#,
    )
    .replace(
        "postgresql://bdc_backup@localhost/bdc_db",
        "postgresql://bdc_backup:hunter2@localhost/bdc_db",
    )
    .replace(
        "retention = \"standard\"",
        "retention = \"standard\"\nconnection = \"postgres://postgres@/postgres?password=hunter2\"",
    );
    let errs = errors(&text);
    assert_eq!(
        errs,
        pairs(&[
            (
                "postgres.url",
                "the URL contains a password; remove it and put the password in `password-file` (secrets never go into the catalogue)"
            ),
            (
                "repository.offsite.url",
                "the URL contains a password; remove it and put the store's credentials in `credentials-file` (secrets never go into the catalogue)"
            ),
            (
                "repository.offsite.endpoint",
                "the endpoint URL contains credentials; remove them and put them in `credentials-file` (secrets never go into the catalogue)"
            ),
            (
                "job[0] \"db-dump\".connection",
                "the URL contains a password; remove it and use a ~/.pgpass entry (PGPASSFILE) or peer authentication for this role (secrets never go into the catalogue)"
            ),
        ])
    );
    assert!(
        errs.iter().all(|(_, m)| !m.contains("hunter2")),
        "a message echoes the secret"
    );
}

/// libpq's socket forms (an empty host after the user, the socket in `host=`) are accepted as
/// written, for `[postgres] url` and a job's `connection`; a URL that is not one still fails.
#[test]
fn libpq_socket_urls_with_an_empty_host_are_accepted() {
    for url in [
        "postgresql://u@/db?host=/var/run/postgresql",
        "postgresql://u@:5433/db?host=/run/postgresql",
        "postgres://u@/db",
        "postgresql:///db?host=/run/postgresql",
    ] {
        let text = small(&format!("connection = \"{url}\"\n"))
            .replace("postgresql://bdc_backup@localhost/bdc_db", url);
        let cat = parse(&text).unwrap_or_else(|e| panic!("{url}: {e:?}"));
        assert_eq!(cat.postgres.as_ref().map(|p| p.url.as_str()), Some(url));
    }
    let errs = errors(&small("").replace(
        "postgresql://bdc_backup@localhost/bdc_db",
        "postgresql://u@[::1/db",
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, "postgres.url");
    assert!(errs[0].1.starts_with("not a valid URL ("), "{errs:?}");
}

#[test]
fn missing_identity_and_secret_files() {
    let text = small("")
        .replace(
            "[encryption]",
            "[encryption]\nidentity-file = \"/nonexistent/restore.key\"",
        )
        .replace("[postgres]", "[postgres]\npassword-file = \"keys/pgpass\"");
    assert_eq!(
        errors(&text),
        pairs(&[
            (
                "postgres.password-file",
                "password file /etc/bdc-backup/keys/pgpass does not exist"
            ),
            (
                "encryption.identity-file",
                "identity file /nonexistent/restore.key does not exist"
            ),
        ])
    );
}

/// A password file that group or others may read is refused (as identity and credentials files
/// are), naming the file and the fix, never its content.
#[test]
fn readable_password_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = temp_file(&dir, "pgpass");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let text = small("").replace(
        "[postgres]",
        &format!("[postgres]\npassword-file = \"{path}\""),
    );
    assert_eq!(
        errors(&text),
        pairs(&[(
            "postgres.password-file",
            &format!("password file {path}: mode 0644 lets other users read it; chmod 600 it"),
        )])
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let text = small("").replace(
        "[postgres]",
        &format!("[postgres]\npassword-file = \"{path}\""),
    );
    assert!(parse(&text).is_ok());
}

#[test]
fn relative_paths_resolve_against_the_catalogue_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    temp_file(&dir, "restore.key");
    let file = dir.path().join("catalogue.toml");
    let text = small("[daemon]\nstate-db = \"state/state.db\"\n").replace(
        "[encryption]",
        "[encryption]\nidentity-file = \"restore.key\"",
    );
    let c = match parse_str(&text, &file, &[]) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.daemon.state_db, dir.path().join("state/state.db"));
    assert_eq!(c.daemon.state_directory, dir.path().join("state"));
    assert_eq!(
        c.encryption.identity_file,
        Some(dir.path().join("restore.key"))
    );
}

#[test]
fn environment_overrides_only_the_documented_scalars() {
    let env: Vec<(String, String)> = [
        ("BDC_BACKUP_STATE_DB", "/srv/state/bdc.db"),
        ("BDC_BACKUP_SOCKET", "/tmp/bdc.sock"),
        ("BDC_BACKUP_LOG", "stderr"),
        ("BDC_FOO", "whatever"),
        ("BDC_BACKUP_TIMEZONE", "Not/AZone"),
        ("BDC_BACKUP_CATALOGUE", "/elsewhere.toml"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let text = small("[daemon]\nstate-db = \"/var/lib/x.db\"\nlog = \"journal\"\n");
    let c = match parse_str(&text, Path::new(FILE), &env) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.daemon.state_db, Path::new("/srv/state/bdc.db"));
    assert_eq!(c.daemon.state_directory, Path::new("/srv/state"));
    assert_eq!(c.daemon.socket, Path::new("/tmp/bdc.sock"));
    assert_eq!(c.daemon.log, LogTarget::Stderr);
    assert_eq!(c.daemon.timezone, chrono_tz::UTC);

    // A bad override names its variable.
    let env = vec![
        ("BDC_BACKUP_LOG".to_string(), "syslog".to_string()),
        ("BDC_BACKUP_SOCKET".to_string(), "relative.sock".to_string()),
    ];
    let e = parse_str(&small(""), Path::new(FILE), &env).unwrap_err();
    let got: Vec<(String, String)> = e.0.into_iter().map(|e| (e.key, e.message)).collect();
    assert_eq!(
        got,
        pairs(&[
            (
                "daemon.socket",
                "\"relative.sock\" must be an absolute path (this value comes from the environment variable BDC_BACKUP_SOCKET)"
            ),
            (
                "daemon.log",
                "\"syslog\" is not one of \"auto\", \"journal\", \"stderr\" (this value comes from the environment variable BDC_BACKUP_LOG)"
            ),
        ])
    );
}

mod jobs;
