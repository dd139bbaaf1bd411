//! Abnormal ends of the real `bdc-backupctl`: a panic in `wal-fetch` must never look like "not
//! found" to PostgreSQL (exit > 125), a panic in `wal-push` never like success, and a closed stdout
//! (`bdc-backupctl … | head`) ends the ctl quietly.

mod common;

use common::daemon::{CTL, Setup};
use std::process::{Command, Output, Stdio};

const SEGMENT: &str = "000000010000000000000001";

/// Runs the ctl with the test-only panic switch (debug builds only) set to `point`.
fn with_panic(point: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(CTL)
        .args(args)
        .current_dir(dir.path())
        .env("BDC_BACKUP_TEST_PANIC", point)
        .env_remove("BDC_BACKUP_CATALOGUE")
        .stdin(Stdio::null())
        .output()
        .expect("run bdc-backupctl")
}

/// PostgreSQL's reading of restore_command: 1–125 "not found" (recovery ends there and the server
/// may be promoted), above 125 or death by a signal fatal (recovery stops).
fn fatal_for_postgres(out: &Output) -> bool {
    match out.status.code() {
        Some(code) => code > 125,
        None => true, // killed by a signal
    }
}

#[test]
fn a_panic_in_wal_fetch_exits_above_125() {
    for point in ["wal-fetch", "wal-fetch:thread"] {
        let out = with_panic(point, &["wal-fetch", SEGMENT, "dest"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("test panic"),
            "{point}: the switch did not fire: {stderr}"
        );
        assert!(
            fatal_for_postgres(&out),
            "{point}: a panic in wal-fetch exited {:?}, which PostgreSQL takes for \"not found\": {stderr}",
            out.status
        );
        assert_eq!(out.status.code(), Some(255), "{point}: {stderr}");
    }
}

#[test]
fn a_panic_in_wal_push_is_a_retryable_failure() {
    for point in ["wal-push", "wal-push:thread"] {
        let out = with_panic(point, &["wal-push", &format!("pg_wal/{SEGMENT}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("test panic"),
            "{point}: the switch did not fire: {stderr}"
        );
        let code = out.status.code();
        // Non-zero (PostgreSQL must keep the segment) and at most 125 (it retries, never stops).
        assert!(
            matches!(code, Some(1..=125)),
            "{point}: a panic in wal-push exited {:?}: {stderr}",
            out.status
        );
    }
}

/// Runs the ctl with stdout a pipe whose read end is already closed.
fn with_closed_stdout(setup: &Setup, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(CTL)
        .arg("--catalogue")
        .arg(setup.catalogue_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run bdc-backupctl");
    eprintln!(
        "$ bdc-backupctl {} >closed-pipe\n[exit {:?}]\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn assert_quiet(args: &[&str], out: &Output, expected_code: i32) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked")
            && !stderr.contains("Broken pipe")
            && !stderr.contains("backtrace"),
        "{args:?} with stdout closed wrote to stderr: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(expected_code),
        "{args:?} with stdout closed: {stderr}"
    );
}

#[test]
fn a_closed_stdout_ends_the_ctl_quietly() {
    let setup = Setup::new();
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
incremental = "0 3 * * *"
repositories = ["local"]
"#,
        src = src.display()
    ));
    let daemon = setup.start_daemon();
    for i in 0..4 {
        std::fs::write(src.join("changing.txt"), format!("version {i}\n")).unwrap();
        let kind = if i == 0 { "--full" } else { "--incremental" };
        assert!(
            setup
                .ctl(&["run", "uploads", kind, "--wait"])
                .status
                .success(),
            "{}",
            daemon.log_text()
        );
    }
    // Enough output for several lines, through the daemon.
    let runs = setup.ctl(&["runs"]);
    assert!(String::from_utf8_lossy(&runs.stdout).lines().count() >= 5);
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["runs"],
        &["--json", "runs"],
        &["backups"],
        &["--json", "backups"],
        &["usage"],
        &["retention", "--dry-run"],
        &["keygen"],
    ] {
        let out = with_closed_stdout(&setup, args);
        assert_quiet(args, &out, 0);
    }
    let restored = setup.path("restored");
    let dry_run = [
        "restore",
        "files",
        "--job",
        "uploads",
        "--target",
        restored.to_str().unwrap(),
        "--dry-run",
    ];
    assert_quiet(&dry_run, &with_closed_stdout(&setup, &dry_run), 0);
    assert!(daemon.stop().success());

    // No daemon: `backups` reads the repository directly and prints a line per backup.
    let offline = setup.ctl(&["backups"]);
    assert!(offline.status.success());
    assert!(String::from_utf8_lossy(&offline.stdout).lines().count() >= 5);
    for args in [&["backups"][..], &["--json", "backups"]] {
        let out = with_closed_stdout(&setup, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?} offline with stdout closed: {stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
