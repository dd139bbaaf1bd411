//! Harness of the physical backup tests: a PostgreSQL cluster that archives its WAL into the
//! test repository, a daemon with a `postgres-base` job (`base`) and a `postgres-wal` job
//! (`wal`), restores with `bdc-backupctl restore cluster --start`, and data fingerprints of any
//! server by port.
//!
//! WAL archiving: `archive_command` is the real `bdc-backupctl --socket S wal-push %p` through
//! the daemon.

use super::daemon::{CTL, Setup, TestDaemon, wait_for};
use super::pg::{PgCluster, pg_bin};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A cluster archiving into the setup's repository, and the daemon.
pub struct Physical {
    pub setup: Setup,
    pub cluster: PgCluster,
    pub daemon: Option<TestDaemon>,
}

/// Makes a path readable (and folders listable) by everyone: restore_command runs as the
/// postgres OS user and reads the catalogue, the identity and the repository.
pub fn open_up(path: &Path) {
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(path)
        .status();
    // The identity must stay private (0600): it belongs to postgres then (root reads it anyway).
    let key = path.join("restore.key");
    let _ = Command::new("chown").arg("postgres").arg(&key).status();
    let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
}

/// A port for a PostgreSQL server (which takes a number, not a bound socket).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Physical {
    /// The cluster (wal_level replica, archiving), the catalogue and the daemon.
    pub fn start(wal_timeout: &str) -> Physical {
        Self::start_as(wal_timeout, false)
    }

    /// With `least_privilege`, backups run as `bdc_backup`, a role with only the grants
    /// docs/operator-guide.md lists (not a superuser).
    pub fn start_as(wal_timeout: &str, least_privilege: bool) -> Physical {
        let setup = Setup::new();
        let archive_command = format!("{CTL} --socket {} wal-push %p", setup.socket().display());
        let cluster = PgCluster::start_with(&format!(
            "wal_level = replica\narchive_mode = on\narchive_command = '{archive_command}'\n\
             max_wal_size = 64MB\n"
        ));
        let url = if least_privilege {
            cluster.psql("postgres", BACKUP_ROLE_SQL);
            cluster.url_as("bdc_backup", "postgres")
        } else {
            cluster.url("postgres")
        };
        setup.write_catalogue(&format!(
            r#"
[postgres]
url = "{url}"
data-directory = "{data}"

[[job]]
name = "base"
kind = "postgres-base"
full = "0 4 * * 0"
incremental = "0 2 * * *"
wal-job = "wal"
wal-timeout = "{wal_timeout}"
repositories = ["local"]

[[job]]
name = "wal"
kind = "postgres-wal"
repositories = ["local"]
"#,
            data = cluster.data_dir().display(),
        ));
        let daemon = setup.start_daemon();
        super::wal::open_socket(&setup.socket());
        Physical {
            setup,
            cluster,
            daemon: Some(daemon),
        }
    }

    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    /// `run base --full|--incremental --wait`; the run's JSON row.
    pub fn backup(&self, kind: &str) -> serde_json::Value {
        let out = self.setup.ctl(&["run", "base", kind, "--wait"]);
        let run = self
            .setup
            .ctl_json(&["runs", "--job", "base", "--limit", "1"])[0]
            .clone();
        assert!(
            out.status.success(),
            "base backup failed: {run}\n{}\n{}",
            self.daemon_log(),
            self.cluster.log()
        );
        run
    }

    /// Switches WAL and waits until the segment is in the archive.
    pub fn switch_wal(&self) {
        let name = self.cluster.psql(
            "postgres",
            "SELECT pg_walfile_name(pg_current_wal_lsn()) FROM (SELECT pg_switch_wal()) s;",
        );
        self.wait_archived(&name);
    }

    /// Waits until `name` (a segment) is archived.
    pub fn wait_archived(&self, name: &str) {
        let repo = self.setup.path("repo/wal");
        wait_for(Duration::from_secs(60), &format!("{name} archived"), || {
            find_file(&repo, name).then_some(())
        });
    }

    /// The stored object of the archived segment `seg` in `local`: its path and its key.
    pub fn archived_object(&self, seg: &str) -> (PathBuf, String) {
        let object = super::files_under(&self.setup.path("repo/wal"))
            .into_iter()
            .find(|f| f.file_name().unwrap().to_string_lossy().starts_with(seg))
            .unwrap_or_else(|| panic!("no archived object of {seg}"));
        let key = object
            .strip_prefix(self.setup.path("repo"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        (object, key)
    }

    /// Restores each backup (`--immediate --no-archive`: the state at its end) and compares the
    /// data of database `db` with the fingerprint taken right after it.
    pub fn restores_each(&self, db: &str, runs: &[(&serde_json::Value, &Fingerprint)]) {
        for (run, want) in runs {
            let id = run["backup_id"].as_str().unwrap();
            let (out, restored) = self.restore(
                &format!("r-{id}"),
                &["--backup", id, "--immediate", "--no-archive"],
            );
            assert!(
                out.status.success(),
                "restore {id} failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                restored.log()
            );
            assert_eq!(&&fingerprints(restored.port, db), want, "backup {id}");
            restored.stop();
        }
    }

    /// `restore cluster` into a new folder with `--start` on a free port, plus `extra` flags.
    pub fn restore(&self, name: &str, extra: &[&str]) -> (Output, Restored) {
        restore_base(&self.setup, name, extra)
    }
}

/// `restore cluster --job base` of `setup` into the folder `name` with `--start` on a free
/// port, plus `extra` flags (as [`Physical::restore`], for harnesses without a [`Physical`]).
pub fn restore_base(setup: &Setup, name: &str, extra: &[&str]) -> (Output, Restored) {
    open_up(setup.dir.path());
    let target = setup.path(name);
    let port = free_port();
    let port_s = port.to_string();
    let mut args = vec![
        "restore",
        "cluster",
        "--job",
        "base",
        "--target-dir",
        target.to_str().unwrap(),
        "--start",
        "--port",
        &port_s,
    ];
    args.extend_from_slice(extra);
    let out = setup.ctl(&args);
    (out, Restored { dir: target, port })
}

/// The backup role of docs/operator-guide.md (PostgreSQL 15).
pub const BACKUP_ROLE_SQL: &str = "CREATE ROLE bdc_backup LOGIN; \
     GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO bdc_backup; \
     GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO bdc_backup; \
     GRANT pg_read_all_settings TO bdc_backup;";

fn find_file(dir: &Path, prefix: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if find_file(&p, prefix) {
                return true;
            }
        } else if e.file_name().to_string_lossy().starts_with(prefix) {
            return true;
        }
    }
    false
}

/// A restored (and started) cluster; stopped on drop.
pub struct Restored {
    pub dir: PathBuf,
    pub port: u16,
}

impl Restored {
    pub fn psql(&self, db: &str, sql: &str) -> String {
        psql_port(self.port, db, sql).unwrap_or_else(|e| panic!("psql on the restored {db}: {e}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bdc-restore-start.log")).unwrap_or_default()
    }

    pub fn stop(&self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub fn running(&self) -> bool {
        self.dir.join("postmaster.pid").exists()
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A PostgreSQL tool run as the postgres OS user.
pub fn as_postgres(tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(pg_bin().join(tool));
    c
}

/// psql against 127.0.0.1:port as postgres.
pub fn psql_port(port: u16, db: &str, sql: &str) -> Result<String, String> {
    let mut child = Command::new(pg_bin().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .arg("-p")
        .arg(port.to_string())
        .args(["-U", "postgres", "-d", db, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every user table of `db` → (row count, md5 of its rows in sorted order).
/// Row count and md5 of every table of a database, by name ([`fingerprints`]).
pub type Fingerprint = BTreeMap<String, (i64, String)>;

pub fn fingerprints(port: u16, db: &str) -> Fingerprint {
    let tables = psql_port(
        port,
        db,
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1;",
    )
    .expect("list tables");
    let mut out = BTreeMap::new();
    for table in tables.lines() {
        let (schema, name) = table.split_once('.').unwrap();
        let row = psql_port(
            port,
            db,
            &format!(
                "SELECT count(*) || '|' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM \"{schema}\".\"{name}\" t;"
            ),
        )
        .expect("fingerprint");
        let (count, md5) = row.split_once('|').unwrap();
        out.insert(table.to_string(), (count.parse().unwrap(), md5.to_string()));
    }
    out
}
