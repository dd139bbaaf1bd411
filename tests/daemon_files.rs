//! `files` and `config` jobs through the daemon: full and incremental runs over the socket,
//! restores of each snapshot, config checks that store nothing when nothing changed, and a
//! watched config file whose change is stored within seconds.

mod common;

use common::daemon::{Setup, wait_for};
use std::time::Duration;

#[test]
fn files_full_then_incremental_through_the_daemon_restore_each_state() {
    let setup = Setup::new();
    let src = setup.path("uploads");
    std::fs::create_dir_all(src.join("2026/11")).unwrap();
    // Incompressible, so the full stores clearly more than the incremental.
    let mut x: u32 = 12345;
    let pdf: Vec<u8> = (0..300_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(src.join("2026/11/a.pdf"), &pdf).unwrap();
    std::fs::write(src.join("readme.txt"), b"version 1\n").unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{src}"
exclude = ["*.tmp"]
full = "0 4 * * 0"
incremental = "0 3 * * *"
max-chain = 13
repositories = ["local"]
"#,
        src = src.display()
    ));
    let daemon = setup.start_daemon();
    // Files younger than the backup's start minus 1 s are re-read by the next incremental (racy
    // clean); let them age so the incremental stores only real changes.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        setup
            .ctl(&["run", "uploads", "--full", "--wait"])
            .status
            .success(),
        "{}",
        daemon.log_text()
    );
    let full = setup.ctl_json(&["runs", "--limit", "1"])[0].clone();
    assert_eq!(full["status"], "succeeded", "{full}");
    assert_eq!(full["backup_type"], "full");

    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(src.join("readme.txt"), b"version 2, longer\n").unwrap();
    std::fs::write(src.join("new.txt"), b"new\n").unwrap();
    std::fs::write(src.join("scratch.tmp"), b"excluded\n").unwrap();
    assert!(
        setup
            .ctl(&["run", "uploads", "--incremental", "--wait"])
            .status
            .success()
    );
    let incr = setup.ctl_json(&["runs", "--limit", "1"])[0].clone();
    assert_eq!(incr["status"], "succeeded", "{incr}");
    let backups = setup.ctl_json(&["backups", "--job", "uploads"]);
    let types: Vec<&str> = backups
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["full", "incremental"], "{backups}");
    assert!(
        incr["bytes_stored"].as_u64().unwrap() < full["bytes_stored"].as_u64().unwrap(),
        "only changes stored"
    );

    for (id, readme, has_new) in [
        (full["backup_id"].as_str().unwrap(), "version 1\n", false),
        (
            incr["backup_id"].as_str().unwrap(),
            "version 2, longer\n",
            true,
        ),
    ] {
        let target = setup.path(&format!("restore-{id}"));
        let out = setup.ctl(&[
            "restore",
            "files",
            "--job",
            "uploads",
            "--backup",
            id,
            "--target",
            target.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        let root = if target.join("readme.txt").exists() {
            target.clone()
        } else {
            target.join(src.strip_prefix("/").unwrap())
        };
        assert_eq!(
            std::fs::read_to_string(root.join("readme.txt")).unwrap(),
            readme,
            "{id}"
        );
        assert_eq!(root.join("new.txt").exists(), has_new, "{id}");
        assert!(!root.join("scratch.tmp").exists(), "excluded");
        assert_eq!(std::fs::read(root.join("2026/11/a.pdf")).unwrap(), pdf);
    }
    assert!(daemon.stop().success());
}

#[test]
fn config_checks_store_only_changes_and_a_watched_change_is_stored_within_seconds() {
    let setup = Setup::new();
    let etc = setup.path("app-config");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join(".env"), b"SECRET=1\n").unwrap();
    std::fs::write(etc.join("nginx.conf"), b"server {}\n").unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "config"
kind = "config"
paths = ["{etc}/.env", "{etc}/*.conf"]
schedule = "*/30 * * * *"
watch = true
repositories = ["local"]
"#,
        etc = etc.display()
    ));
    let daemon = setup.start_daemon();
    assert!(
        setup.ctl(&["run", "config", "--wait"]).status.success(),
        "{}",
        daemon.log_text()
    );
    assert!(setup.ctl(&["run", "config", "--wait"]).status.success());
    let runs = setup.ctl_json(&["runs", "--job", "config"]);
    assert_eq!(runs[0]["status"], "unchanged", "{runs}");
    assert_eq!(runs[0]["bytes_stored"], 0);
    assert_eq!(runs[1]["status"], "succeeded");
    assert_eq!(
        setup
            .ctl_json(&["backups", "--job", "config"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // An editor saves by rename: the watcher notices and a `change` run stores it.
    std::fs::write(etc.join(".env.new"), b"SECRET=2\n").unwrap();
    std::fs::rename(etc.join(".env.new"), etc.join(".env")).unwrap();
    let run = wait_for(
        Duration::from_secs(30),
        "a run triggered by the change",
        || {
            let runs = setup.ctl_json(&["runs", "--job", "config"]);
            let r = runs[0].clone();
            (r["trigger"] == "change" && r["status"] != "running").then_some(r)
        },
    );
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        setup
            .ctl_json(&["backups", "--job", "config"])
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let target = setup.path("restored-config");
    let out = setup.ctl(&[
        "restore",
        "config",
        "--job",
        "config",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let env = target.join(etc.strip_prefix("/").unwrap()).join(".env");
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "SECRET=2\n");
    assert!(daemon.stop().success());
}
