//! Test harness: a real `bdc-backupd` process on a catalogue in a temp folder, and the real
//! `bdc-backupctl` to talk to it.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_bdc-backupd");
pub const CTL: &str = env!("CARGO_BIN_EXE_bdc-backupctl");

/// A temp folder with an age identity, a local repository and a catalogue.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub recipient: String,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("bdc-test-")
            .tempdir()
            .expect("tempdir");
        // Readable by the postgres user (clusters and pg_dump run as it in some tests).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let key = dir.path().join("restore.key");
        let out = Command::new(CTL)
            .args(["keygen", "--output"])
            .arg(&key)
            .output()
            .expect("run keygen");
        assert!(
            out.status.success(),
            "keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            recipient.starts_with("age1"),
            "keygen printed {recipient:?}"
        );
        Setup { dir, recipient }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn catalogue_path(&self) -> PathBuf {
        self.path("catalogue.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/control.sock")
    }

    /// The `[daemon]`, `[encryption]` and `[repository.local]` sections, then `extra`.
    pub fn write_catalogue(&self, extra: &str) -> PathBuf {
        let text = format!(
            r#"[daemon]
state-db = "{dir}/state/state.db"
socket = "{dir}/run/control.sock"
timezone = "Europe/Berlin"
max-concurrent-runs = 2
log = "stderr"
log-level = "info,bdc_backup=debug"
shutdown-timeout = "20s"

[encryption]
recipients = ["{recipient}"]
identity-file = "{dir}/restore.key"

[repository.local]
url = "file://{dir}/repo"

{extra}
"#,
            dir = self.dir.path().display(),
            recipient = self.recipient,
        );
        let path = self.catalogue_path();
        std::fs::write(&path, text).expect("write catalogue");
        path
    }

    pub fn start_daemon(&self) -> TestDaemon {
        self.start_daemon_with(&[])
    }

    pub fn start_daemon_with(&self, env: &[(&str, &str)]) -> TestDaemon {
        let log = std::fs::File::create(self.path("daemon.log")).expect("log file");
        let mut cmd = Command::new(DAEMON);
        cmd.arg("--catalogue")
            .arg(self.catalogue_path())
            .stdout(Stdio::null())
            .stderr(log);
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let child = cmd.spawn().expect("spawn bdc-backupd");
        let daemon = TestDaemon {
            child: Some(child),
            socket: self.socket(),
            log: self.path("daemon.log"),
            started,
        };
        daemon.wait_for_socket();
        daemon
    }

    /// Runs the ctl with `--catalogue`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let out = Command::new(CTL)
            .arg("--catalogue")
            .arg(self.catalogue_path())
            .args(args)
            .output()
            .expect("run bdc-backupctl");
        eprintln!(
            "$ bdc-backupctl {}\n[exit {:?}]\n{}{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs the ctl with `--json` and parses stdout.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        assert!(out.status.success(), "bdc-backupctl {args:?} failed");
        serde_json::from_slice(&out.stdout).expect("ctl --json printed JSON")
    }
}

pub struct TestDaemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub started: Instant,
}

impl TestDaemon {
    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "bdc-backupd did not open its socket; log:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal the daemon");
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(Duration::from_secs(40))
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "bdc-backupd did not exit in {limit:?}; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("daemon running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `f` until it returns Some, or panics after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
