//! Harness of the WAL streaming tests (issue 12): a cluster that accepts replication
//! connections, a catalogue whose `wal` job streams (`stream = true`), the daemon, the wal job's
//! `status --json` streaming part and the waits on it, the receiver's spool, a standby to
//! promote, and the continuity check of the archived segments.

use super::daemon::{Setup, TestDaemon, wait_for};
use super::pg::PgCluster;
use super::physical::{Restored, as_postgres, free_port, restore_base};
use super::wal::stored;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// How long the waits on the streaming status take at most.
pub const WAIT: Duration = Duration::from_secs(60);

/// `X/Y` → the LSN.
pub fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// stdout then stderr of a command.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `replication` line for 127.0.0.1 in pg_hba.conf (`all` does not match replication), reloaded.
pub fn allow_replication(cluster: &PgCluster) {
    let hba = cluster.data_dir().join("pg_hba.conf");
    let mut lines = std::fs::read_to_string(&hba).unwrap();
    lines.push_str("host replication all 127.0.0.1/32 trust\n");
    std::fs::write(&hba, lines).unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf();");
}

/// The catalogue's `[postgres]` (on `port`) and the streaming `wal` job, then `extra` (more
/// jobs). `partial_interval`: None keeps the default.
pub fn stream_catalogue(
    port: u16,
    data: Option<&Path>,
    partial_interval: Option<&str>,
    extra: &str,
) -> String {
    let data = data.map_or(String::new(), |d| {
        format!("data-directory = \"{}\"\n", d.display())
    });
    let interval =
        partial_interval.map_or(String::new(), |i| format!("partial-interval = \"{i}\"\n"));
    format!(
        r#"
[postgres]
url = "postgresql://postgres@127.0.0.1:{port}/postgres"
{data}
[[job]]
name = "wal"
kind = "postgres-wal"
stream = true
{interval}repositories = ["local"]
{extra}"#
    )
}

/// The base job of the RPO test (its WAL comes from the stream).
pub const BASE_JOB: &str = r#"
[[job]]
name = "base"
kind = "postgres-base"
full = "0 4 * * 0"
wal-job = "wal"
wal-timeout = "90s"
repositories = ["local"]
"#;

/// A streaming daemon beside the cluster it was pointed at.
pub struct Streaming {
    pub setup: Setup,
    pub cluster: PgCluster,
    pub daemon: Option<TestDaemon>,
}

impl Streaming {
    /// A cluster without archive_command that accepts replication, the catalogue (a base job
    /// and the streaming wal job, `.partial` every 2 s) and the daemon, streaming.
    pub fn start() -> Streaming {
        let cluster = PgCluster::start_with(
            "wal_level = replica\narchive_mode = off\nmax_wal_senders = 5\n\
             max_slot_wal_keep_size = '1GB'\nmax_wal_size = 64MB\n",
        );
        allow_replication(&cluster);
        let catalogue = stream_catalogue(
            cluster.port,
            Some(&cluster.data_dir()),
            Some("2s"),
            BASE_JOB,
        );
        Streaming::with(Setup::new(), cluster, &catalogue)
    }

    /// A plain cluster (`wal_level = replica`) that accepts replication.
    pub fn replicating_cluster() -> PgCluster {
        let cluster = PgCluster::start_with("wal_level = replica\nmax_wal_senders = 5\n");
        allow_replication(&cluster);
        cluster
    }

    /// Writes `catalogue`, starts the daemon and waits until it streams.
    pub fn with(setup: Setup, cluster: PgCluster, catalogue: &str) -> Streaming {
        setup.write_catalogue(catalogue);
        let daemon = setup.start_daemon();
        let s = Streaming {
            setup,
            cluster,
            daemon: Some(daemon),
        };
        s.wait_state("streaming");
        s
    }

    pub fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    /// The wal job's `status --json` streaming part.
    pub fn stream(&self) -> serde_json::Value {
        let status = self.setup.ctl_json(&["status"]);
        status["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["name"] == "wal"))
            .map(|j| j["wal"]["stream"].clone())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits (up to `within`) until the streaming status satisfies `ok`; returns it.
    pub fn wait_stream(
        &self,
        within: Duration,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(within, what, || {
            let st = self.stream();
            ok(&st).then_some(st)
        })
    }

    /// Waits until the state is `state` (`streaming`: with a receiver).
    pub fn wait_state(&self, state: &str) -> serde_json::Value {
        self.wait_stream(WAIT, &format!("streaming state {state}"), |s| {
            s["state"] == state && (state != "streaming" || s["receiver_pid"].is_u64())
        })
    }

    /// Waits until it streams again after more than `restarts` restarts.
    pub fn wait_restarted(&self, within: Duration, restarts: u64, what: &str) -> serde_json::Value {
        self.wait_stream(within, what, |st| {
            st["restarts"].as_u64() > Some(restarts) && st["state"] == "streaming"
        })
    }

    /// The restart count now.
    pub fn restarts(&self) -> u64 {
        self.stream()["restarts"]
            .as_u64()
            .expect("restarts in the status")
    }

    /// Writes a little on the cluster and switches WAL; the completed segment's name.
    pub fn switch(&self) -> String {
        switch_on(|sql| self.cluster.psql("postgres", sql))
    }

    /// Waits until the complete segment `name` is in the repository.
    pub fn wait_archived(&self, name: &str) {
        self.wait_repo(&format!("{name} archived"), |names| {
            names.iter().any(|n| n == name)
        });
    }

    /// Waits until the names archived in the repository satisfy `ok`.
    pub fn wait_repo(&self, what: &str, ok: impl Fn(&[String]) -> bool) {
        let repo = self.setup.path("repo");
        wait_for(WAIT, what, || {
            let names: Vec<String> = stored(&repo).into_iter().map(|(n, _, _)| n).collect();
            ok(&names).then_some(())
        });
    }

    /// The receiver's spool (`<state-directory>/wal-stream`).
    pub fn spool(&self) -> PathBuf {
        self.setup.path("state/wal-stream")
    }

    /// The file names in the spool, sorted.
    pub fn spool_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.spool())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// `restore cluster --job base --no-archive --start` into the folder `name`, plus `extra`.
    pub fn restore(&self, name: &str, extra: &[&str]) -> (Output, Restored) {
        let mut args = vec!["--no-archive"];
        args.extend_from_slice(extra);
        restore_base(&self.setup, name, &args)
    }

    /// Kills the server with SIGKILL and waits until it is gone.
    pub fn kill9_server(&self) {
        let pid_line =
            std::fs::read_to_string(self.cluster.data_dir().join("postmaster.pid")).unwrap();
        let pid: i32 = pid_line.lines().next().unwrap().trim().parse().unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_for(Duration::from_secs(30), "the server gone", || {
            nix::sys::signal::kill(pid, None).is_err().then_some(())
        });
    }
}

/// Writes a little through `psql` and switches WAL; the completed segment's name.
fn switch_on(psql: impl Fn(&str) -> String) -> String {
    psql(
        "CREATE TABLE IF NOT EXISTS walt (x int, pad text); \
         INSERT INTO walt SELECT g, repeat('x', 100) FROM generate_series(1, 200) g;",
    );
    psql("SELECT pg_walfile_name(pg_switch_wal());")
}

/// The segments of `timeline` in the repository, and the first one missing between the first
/// and the newest (the continuity check).
pub fn continuity(repo: &Path, timeline: u32) -> (Vec<String>, Option<String>) {
    let tl = format!("{timeline:08X}");
    let mut segs: Vec<u64> = stored(repo)
        .iter()
        .filter(|(n, _, _)| n.len() == 24 && n.starts_with(&tl))
        .map(|(n, _, _)| u64::from_str_radix(&n[8..], 16).unwrap())
        .collect();
    segs.sort();
    segs.dedup();
    let names = segs.iter().map(|s| format!("{tl}{s:016X}")).collect();
    let missing = segs
        .windows(2)
        .find(|w| w[1] != w[0] + 1)
        .map(|w| format!("{tl}{:016X}", w[0] + 1));
    (names, missing)
}

/// A standby of `primary` made with pg_basebackup -R, on its own port; stopped on drop.
pub struct Standby {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Standby {
    pub fn start(primary: &PgCluster) -> Standby {
        let dir = tempfile::Builder::new()
            .prefix("bdc-standby-")
            .tempdir()
            .unwrap();
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(dir.path(), Some(pg.uid), Some(pg.gid)).unwrap();
        let data = dir.path().join("data");
        let out = as_postgres("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-p",
            ])
            .arg(primary.port.to_string())
            .arg("-D")
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_basebackup: {}", text(&out));
        let port = free_port();
        let mut auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
        auto.push_str(&format!(
            "port = {port}\nunix_socket_directories = '{}'\n",
            dir.path().display()
        ));
        std::fs::write(data.join("postgresql.auto.conf"), auto).unwrap();
        let out = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "standby start: {}", text(&out));
        Standby { dir, port }
    }

    pub fn psql(&self, sql: &str) -> String {
        super::physical::psql_port(self.port, "postgres", sql)
            .unwrap_or_else(|e| panic!("psql on the standby: {e}"))
    }

    /// Writes a little on it and switches WAL; the completed segment's name.
    pub fn switch(&self) -> String {
        switch_on(|sql| self.psql(sql))
    }

    pub fn promote(&self) {
        let out = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-w", "promote"])
            .output()
            .unwrap();
        assert!(out.status.success(), "promote: {}", text(&out));
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}
