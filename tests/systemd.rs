//! systemd integration: the unit passes `systemd-analyze verify`, and logs reach a (fake) journal
//! with the structured fields `JOB`, `RUN_ID`, `BACKUP_ID` and no `F_` prefix.

mod common;

use common::daemon::{CTL, DAEMON, Setup};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/bdc-backupd.service"
    ))
    .unwrap();
    for needle in [
        "Type=notify",
        "User=postgres",
        "AmbientCapabilities=CAP_DAC_READ_SEARCH",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=bdc-backup",
        "RuntimeDirectory=bdc-backup",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Before=postgresql.service",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(needle), "the unit has {needle}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bdc-backupd.service");
    std::fs::write(&path, unit.replace("/usr/bin/bdc-backupd", DAEMON)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.contains("bdc-backupd.service")
                && !l.contains("sysinit.target")
                && !l.contains("Failed to create")
        })
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

/// Parses journald's native protocol datagrams into (key, value) pairs.
fn journal_fields(datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into(),
                String::from_utf8_lossy(&line[eq + 1..]).into(),
            ));
            rest = rest.get(line_end + 1..).unwrap_or(&[]);
        } else {
            // Binary form: KEY\n, u64 LE length, value, \n
            let key = String::from_utf8_lossy(line).to_string();
            let after = &rest[line_end + 1..];
            let len = u64::from_le_bytes(after[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&after[8..8 + len]).to_string();
            fields.push((key, value));
            rest = after.get(8 + len + 1..).unwrap_or(&[]);
        }
    }
    fields
}

#[test]
fn logs_reach_the_journal_with_job_run_and_backup_fields() {
    let setup = Setup::new();
    setup.write_catalogue(
        r#"
[postgres]
url = "postgresql://postgres@127.0.0.1:1/postgres"

[[job]]
name = "db-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local"]
"#,
    );
    let text = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace("log = \"stderr\"", "log = \"auto\"");
    std::fs::write(setup.catalogue_path(), text).unwrap();

    // A fake journal: our datagram socket, bind-mounted over /run/systemd/journal in a private
    // mount namespace of the daemon only.
    let jdir = setup.path("journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let journal = UnixDatagram::bind(jdir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let script = format!(
        "mkdir -p /run/systemd/journal && mount --bind '{}' /run/systemd/journal && exec '{}' --catalogue '{}'",
        jdir.display(),
        DAEMON,
        setup.catalogue_path().display()
    );
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(setup.socket()).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(CTL)
        .arg("--catalogue")
        .arg(setup.catalogue_path())
        .args(["run", "db-dump", "--wait"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the run fails: the server is down"
    );

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    let mut started = None;
    let mut ended = None;
    while Instant::now() < deadline && (started.is_none() || ended.is_none()) {
        if let Ok(n) = journal.recv(&mut buf) {
            let fields = journal_fields(&buf[..n]);
            let get = |k: &str| {
                fields
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            if let Some(msg) = get("MESSAGE") {
                seen.push(msg.clone());
                if msg.contains("run started") {
                    started = Some(fields.clone());
                }
                if msg.contains("run ended") {
                    ended = Some(fields.clone());
                }
            }
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let started =
        started.unwrap_or_else(|| panic!("no 'run started' in the journal; saw {seen:?}"));
    let ended = ended.unwrap_or_else(|| panic!("no 'run ended' in the journal; saw {seen:?}"));
    let keys: Vec<&str> = started.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.contains(&"JOB") && keys.contains(&"RUN_ID") && keys.contains(&"BACKUP_ID"),
        "fields: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("F_")),
        "no F_ prefix: {keys:?}"
    );
    assert!(started.iter().any(|(k, v)| k == "JOB" && v == "db-dump"));
    assert!(ended.iter().any(|(k, _)| k == "PRIORITY"), "priority set");
    assert!(
        ended
            .iter()
            .any(|(k, v)| k == "SYSLOG_IDENTIFIER" && v == "bdc-backupd")
    );
}
