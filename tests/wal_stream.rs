//! WAL streaming end to end (issue 12): a real PostgreSQL 15 cluster with `archive_command` OFF,
//! the real daemon supervising the real `pg_receivewal` on a physical slot, the shipped
//! `.partial`, and `restore cluster [--use-partial]` recovering from the repository alone —
//! checked by the rows that come back. Also: the receiver killed (restarted, no segment
//! missing), the server restarted under it, the network to the server cut (a TCP relay), the
//! slot dropped (an error in status, no restart loop), a promote (timeline 2 and its history).

mod common;

use common::daemon::{Setup, TestDaemon, wait_for};
use common::pg::PgCluster;
use common::physical::{Restored, open_up};
use common::wal::stored;
use std::process::Output;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `X/Y` → the LSN.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Streaming {
    setup: Setup,
    cluster: PgCluster,
    daemon: Option<TestDaemon>,
}

impl Streaming {
    /// A cluster without archive_command, a replication line in pg_hba, the catalogue (a base
    /// job and the streaming wal job) and the daemon, streaming.
    fn start() -> Streaming {
        let setup = Setup::new();
        let cluster = PgCluster::start_with(
            "wal_level = replica\narchive_mode = off\nmax_wal_senders = 5\n\
             max_slot_wal_keep_size = '1GB'\nmax_wal_size = 64MB\n",
        );
        let hba = cluster.data_dir().join("pg_hba.conf");
        let mut lines = std::fs::read_to_string(&hba).unwrap();
        lines.push_str("host replication all 127.0.0.1/32 trust\n");
        std::fs::write(&hba, lines).unwrap();
        cluster.psql("postgres", "SELECT pg_reload_conf();");
        setup.write_catalogue(&format!(
            r#"
[postgres]
url = "{url}"
data-directory = "{data}"

[[job]]
name = "base"
kind = "postgres-base"
full = "0 4 * * 0"
wal-job = "wal"
wal-timeout = "90s"
repositories = ["local"]

[[job]]
name = "wal"
kind = "postgres-wal"
stream = true
partial-interval = "2s"
repositories = ["local"]
"#,
            url = cluster.url("postgres"),
            data = cluster.data_dir().display(),
        ));
        let daemon = setup.start_daemon();
        let s = Streaming {
            setup,
            cluster,
            daemon: Some(daemon),
        };
        s.wait_state("streaming");
        s
    }

    fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    /// The wal job's `status --json` streaming part.
    fn stream(&self) -> serde_json::Value {
        let status = self.setup.ctl_json(&["status"]);
        status["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["name"] == "wal"))
            .map(|j| j["wal"]["stream"].clone())
            .unwrap_or(serde_json::Value::Null)
    }

    fn wait_state(&self, state: &str) -> serde_json::Value {
        wait_for(
            Duration::from_secs(60),
            &format!("streaming state {state}"),
            || {
                let s = self.stream();
                (s["state"] == state && (state != "streaming" || s["receiver_pid"].is_u64()))
                    .then_some(s)
            },
        )
    }

    /// Switches WAL; the completed segment's name.
    fn switch(&self) -> String {
        self.cluster.psql(
            "postgres",
            "CREATE TABLE IF NOT EXISTS walt (x int, pad text); \
             INSERT INTO walt SELECT g, repeat('x', 100) FROM generate_series(1, 200) g;",
        );
        self.cluster
            .psql("postgres", "SELECT pg_walfile_name(pg_switch_wal());")
    }

    /// Waits until the complete segment `name` is in the repository.
    fn wait_archived(&self, name: &str) {
        let repo = self.setup.path("repo");
        wait_for(Duration::from_secs(60), &format!("{name} archived"), || {
            stored(&repo)
                .iter()
                .any(|(n, _, _)| n == name)
                .then_some(())
        });
    }

    fn restore(&self, name: &str, extra: &[&str]) -> (Output, Restored) {
        open_up(self.setup.dir.path());
        let target = self.setup.path(name);
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
            "--no-archive",
            "--port",
            &port_s,
        ];
        args.extend_from_slice(extra);
        let out = self.setup.ctl(&args);
        (out, Restored { dir: target, port })
    }
}

/// The segments on timeline 1 in the repository, and the first one missing between the first
/// and the newest (the continuity check).
fn continuity(repo: &std::path::Path) -> (Vec<String>, Option<String>) {
    let mut segs: Vec<u64> = stored(repo)
        .iter()
        .filter(|(n, _, _)| n.len() == 24 && n.starts_with("00000001"))
        .map(|(n, _, _)| u64::from_str_radix(&n[8..], 16).unwrap())
        .collect();
    segs.sort();
    segs.dedup();
    let names = segs.iter().map(|s| format!("00000001{s:016X}")).collect();
    let missing = segs
        .windows(2)
        .find(|w| w[1] != w[0] + 1)
        .map(|w| format!("00000001{:016X}", w[0] + 1));
    (names, missing)
}

#[test]
fn a_lost_host_loses_seconds_with_use_partial_and_stops_at_the_last_segment_without() {
    let mut s = Streaming::start();
    s.cluster.psql(
        "postgres",
        "CREATE TABLE rpo (id int primary key, note text); INSERT INTO rpo VALUES (1, 'before the backup');",
    );
    let out = s.setup.ctl(&["run", "base", "--full", "--wait"]);
    assert!(
        out.status.success(),
        "base backup: {}\n{}",
        text(&out),
        s.log()
    );
    // The row of the test, committed into the segment the receiver is writing.
    let before = lsn(&s.cluster.psql("postgres", "SELECT pg_current_wal_lsn();"));
    s.cluster.psql(
        "postgres",
        "INSERT INTO rpo VALUES (2, 'committed seconds before the host died');",
    );
    std::thread::sleep(Duration::from_secs(10));
    let st = s.stream();
    assert!(
        st["partial_shipped"].is_string(),
        "no .partial shipped within 10 s: {st}\n{}",
        s.log()
    );
    // What status says is durable goes past where the row's WAL began (the restore below
    // proves the row itself); the receiver's lag is measured.
    assert!(
        st["durable_lsn"].as_str().map(lsn) > Some(before),
        "durable {} <= {before:X} (before the row): {st}",
        st["durable_lsn"]
    );
    assert!(st["flush_lag_bytes"].is_u64(), "{st}");
    // The host dies: the server killed -9, its data directory gone, the daemon gone too.
    let pid_line = std::fs::read_to_string(s.cluster.data_dir().join("postmaster.pid")).unwrap();
    let pid: i32 = pid_line.lines().next().unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    if let Some(d) = s.daemon.take() {
        d.kill9();
    }
    wait_for(Duration::from_secs(30), "the server gone", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .is_err()
            .then_some(())
    });
    std::fs::remove_dir_all(s.cluster.data_dir()).unwrap();

    // Without --use-partial: the last complete segment, said so; the row is not there.
    let (out, without) = s.restore("without", &[]);
    let said = text(&out);
    assert!(out.status.success(), "restore: {said}");
    assert!(
        said.contains("recovery stops at the end of the last complete segment")
            && said.contains(".partial is not replayed without --use-partial"),
        "{said}"
    );
    assert_eq!(
        without.psql(
            "postgres",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM rpo;"
        ),
        "1",
        "{}",
        without.log()
    );
    without.stop();

    // With --use-partial: the row committed 10 s before the loss is back.
    let (out, with) = s.restore("with", &["--use-partial"]);
    let said = text(&out);
    assert!(out.status.success(), "restore --use-partial: {said}");
    assert!(
        said.contains("recovery replays it (--use-partial)"),
        "{said}"
    );
    assert_eq!(
        with.psql(
            "postgres",
            "SELECT string_agg(note, '|' ORDER BY id) FROM rpo;"
        ),
        "before the backup|committed seconds before the host died",
        "{}",
        with.log()
    );
}

#[test]
fn a_killed_receiver_is_restarted_and_no_segment_is_missing() {
    let s = Streaming::start();
    let first = s.switch();
    s.wait_archived(&first);
    let st = s.stream();
    let pid = st["receiver_pid"].as_u64().expect("receiver pid") as i32;
    let restarts = st["restarts"].as_u64().unwrap();
    // Meanwhile WAL goes on: segments completed while the receiver is down come afterwards.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..3 {
        s.switch();
    }
    let again = wait_for(Duration::from_secs(60), "the receiver restarted", || {
        let st = s.stream();
        (st["restarts"].as_u64() > Some(restarts)
            && st["state"] == "streaming"
            && st["receiver_pid"].as_u64().is_some_and(|p| p as i32 != pid))
        .then_some(st)
    });
    // The server restarted under the receiver: it reconnects after its backoff.
    let before = again["restarts"].as_u64().unwrap();
    s.cluster.restart();
    s.switch();
    wait_for(
        Duration::from_secs(60),
        "streaming after the server restart",
        || {
            let st = s.stream();
            (st["restarts"].as_u64() > Some(before) && st["state"] == "streaming").then_some(())
        },
    );
    let last = s.switch();
    s.wait_archived(&last);
    let metrics = text(&s.setup.ctl(&["metrics"]));
    let restarts_metric = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bdc_backup_wal_stream_restarts_total{job=\"wal\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(restarts_metric.is_some_and(|n| n >= 2), "{metrics}");
    assert!(
        metrics.contains("bdc_backup_wal_stream_lag_bytes{job=\"wal\"}"),
        "{metrics}"
    );
    let (names, missing) = continuity(&s.setup.path("repo"));
    assert_eq!(
        missing,
        None,
        "a segment is missing: {names:?}\n{}",
        s.log()
    );
    assert!(names.contains(&first) && names.contains(&last), "{names:?}");
    assert_eq!(again["state"], "streaming", "{again}");
}

#[test]
fn a_dropped_slot_is_an_error_in_status_not_a_restart_loop() {
    let s = Streaming::start();
    let seg = s.switch();
    s.wait_archived(&seg);
    // The walsender holds the slot: end it and drop the slot (retried: the receiver comes back
    // after its backoff).
    wait_for(Duration::from_secs(30), "the slot dropped", || {
        s.cluster
            .try_psql(
                "postgres",
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'bdc_backup' AND active_pid IS NOT NULL; \
                 SELECT pg_sleep(0.2); SELECT pg_drop_replication_slot('bdc_backup');",
            )
            .ok()
    });
    let failed = s.wait_state("failed");
    let error = failed["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("bdc_backup") && error.contains("vanished"),
        "{failed}"
    );
    // It stays failed: no receiver is started again while the slot is gone.
    let restarts = failed["restarts"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let later2 = s.stream();
    assert_eq!(later2["state"], "failed", "{later2}");
    assert_eq!(
        later2["restarts"].as_u64(),
        Some(restarts),
        "{failed} {later2}"
    );
    assert!(later2["receiver_pid"].is_null(), "{later2}");
    let out = s.setup.ctl(&["status"]);
    assert!(text(&out).contains("vanished"), "{}", text(&out));
}

/// A standby of `primary` made with pg_basebackup -R, on its own port; stopped on drop.
struct Standby {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(tool: &str) -> std::process::Command {
    let mut c = std::process::Command::new("runuser");
    c.args(["-u", "postgres", "--"])
        .arg(common::pg::pg_bin().join(tool));
    c
}

impl Standby {
    fn start(primary: &PgCluster) -> Standby {
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

    fn psql(&self, sql: &str) -> String {
        common::physical::psql_port(self.port, "postgres", sql)
            .unwrap_or_else(|e| panic!("psql on the standby: {e}"))
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

#[test]
fn a_promote_during_streaming_brings_the_new_timeline_and_its_history() {
    let setup = Setup::new();
    let primary = PgCluster::start_with("wal_level = replica\nmax_wal_senders = 5\n");
    let hba = primary.data_dir().join("pg_hba.conf");
    let mut lines = std::fs::read_to_string(&hba).unwrap();
    lines.push_str("host replication all 127.0.0.1/32 trust\n");
    std::fs::write(&hba, lines).unwrap();
    primary.psql("postgres", "SELECT pg_reload_conf();");
    let standby = Standby::start(&primary);
    // The daemon streams from the standby (a cascading walsender), then the standby is promoted.
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "postgresql://postgres@127.0.0.1:{port}/postgres"

[[job]]
name = "wal"
kind = "postgres-wal"
stream = true
partial-interval = "2s"
repositories = ["local"]
"#,
        port = standby.port
    ));
    let daemon = setup.start_daemon();
    let s = Streaming {
        setup,
        cluster: primary,
        daemon: Some(daemon),
    };
    s.wait_state("streaming");
    let old = s.switch();
    s.wait_archived(&old);
    let out = as_postgres("pg_ctl")
        .arg("-D")
        .arg(standby.dir.path().join("data"))
        .args(["-w", "promote"])
        .output()
        .unwrap();
    assert!(out.status.success(), "promote: {}", text(&out));
    standby.psql(
        "CREATE TABLE after_promote AS SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal();",
    );
    let seg = standby.psql("SELECT pg_walfile_name(pg_switch_wal());");
    let repo = s.setup.path("repo");
    wait_for(
        Duration::from_secs(60),
        "timeline 2's history and segments archived",
        || {
            let names: Vec<String> = stored(&repo).into_iter().map(|(n, _, _)| n).collect();
            (names.iter().any(|n| n == "00000002.history")
                && names
                    .iter()
                    .any(|n| n.len() == 24 && n.starts_with("00000002") && *n <= seg))
            .then_some(())
        },
    );
    assert!(seg.starts_with("00000002"), "{seg}");
    let st = s.stream();
    assert_eq!(st["state"], "streaming", "{st}\n{}", s.log());
}

#[test]
fn a_cut_network_to_the_server_is_retried_and_no_segment_is_missing() {
    let setup = Setup::new();
    let cluster = PgCluster::start_with("wal_level = replica\nmax_wal_senders = 5\n");
    let hba = cluster.data_dir().join("pg_hba.conf");
    let mut lines = std::fs::read_to_string(&hba).unwrap();
    lines.push_str("host replication all 127.0.0.1/32 trust\n");
    std::fs::write(&hba, lines).unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf();");
    // The daemon reaches the server only through a TCP relay that the test cuts.
    let relay = common::objstores::Proxy::start(cluster.port);
    setup.write_catalogue(&format!(
        r#"
[postgres]
url = "postgresql://postgres@127.0.0.1:{port}/postgres"

[[job]]
name = "wal"
kind = "postgres-wal"
stream = true
repositories = ["local"]
"#,
        port = relay.port
    ));
    let daemon = setup.start_daemon();
    let s = Streaming {
        setup,
        cluster,
        daemon: Some(daemon),
    };
    s.wait_state("streaming");
    let first = s.switch();
    s.wait_archived(&first);
    let restarts = s.stream()["restarts"].as_u64().unwrap();
    relay.cut();
    // WAL goes on while the network is down (the slot keeps it on the server).
    s.switch();
    s.switch();
    let down = wait_for(Duration::from_secs(60), "the cut noticed", || {
        let st = s.stream();
        (st["state"] != "streaming" && st["error"].is_string()).then_some(st)
    });
    relay.restore();
    wait_for(Duration::from_secs(90), "streaming again", || {
        let st = s.stream();
        (st["state"] == "streaming" && st["restarts"].as_u64() > Some(restarts)).then_some(())
    });
    let last = s.switch();
    s.wait_archived(&last);
    let (names, missing) = continuity(&s.setup.path("repo"));
    assert_eq!(
        missing,
        None,
        "a segment is missing: {names:?}\n{down}\n{}",
        s.log()
    );
    assert!(names.contains(&first) && names.contains(&last), "{names:?}");
}
