//! systemd integration: the unit passes `systemd-analyze verify` and scores at most 2.0 in
//! `systemd-analyze security --offline=yes`, and logs reach a (fake) journal with the structured
//! fields `JOB`, `RUN_ID`, `BACKUP_ID` and no `F_` prefix.

mod common;

use common::daemon::{CTL, DAEMON, Setup};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn shipped_unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/bdc-backupd.service"
    ))
    .unwrap()
}

/// systemd-analyze, or None (with the reason printed) where it is not installed.
fn systemd_analyze() -> Option<Command> {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => Some(Command::new("systemd-analyze")),
        _ => {
            eprintln!("SKIPPED: systemd-analyze is not installed (tests/setup installs systemd)");
            None
        }
    }
}

/// The unit with ExecStart/ExecStartPre pointing at the binary under test, in a temp folder.
fn unit_under_test(unit: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bdc-backupd.service");
    std::fs::write(&path, unit.replace("/usr/bin/bdc-backupd", DAEMON)).unwrap();
    (dir, path)
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = shipped_unit();
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
        // Starts only once the catalogue validates.
        "ExecStartPre=/usr/bin/bdc-backupd --catalogue /etc/bdc-backup/catalogue.toml --check",
        "SystemCallFilter=@system-service",
        "ReadOnlyPaths=-/var/lib/postgresql",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(unit.contains(needle), "the unit has {needle}");
    }
    // RemoveIPC= would remove the PostgreSQL server's shared memory (the same user) on stop.
    assert!(
        !unit.contains("RemoveIPC=yes"),
        "no RemoveIPC for User=postgres"
    );
    let Some(mut analyze) = systemd_analyze() else {
        return;
    };
    // verify checks that ExecStart exists: point it at the binary under test.
    let (_dir, path) = unit_under_test(&unit);
    let out = analyze.arg("verify").arg(&path).output().unwrap();
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

/// The exposure score stays at most 2.0 (20 on --threshold's 0–100 scale; it was 3.6).
#[test]
fn the_unit_scores_at_most_2_0_in_systemd_analyze_security() {
    let Some(mut analyze) = systemd_analyze() else {
        return;
    };
    let (_dir, path) = unit_under_test(&shipped_unit());
    let out = analyze
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall score:\n{stdout}"));
    assert!(
        out.status.success(),
        "above the threshold: {overall}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And the threshold is real: a bare unit fails it.
    let bare = path.with_file_name("bare.service");
    std::fs::write(
        &bare,
        format!("[Service]\nType=simple\nExecStart={DAEMON}\n"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&bare)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an unhardened unit fails --threshold=20"
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
