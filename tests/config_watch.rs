//! A watched config job whose glob has a wildcard folder (`apps/*/app.conf`), through the real
//! daemon: a file that appears in a folder made after the daemon started is stored by a `change`
//! run within seconds, and restoring each backup gives back the files as they were.

mod common;

use common::daemon::{Setup, wait_for};
use std::time::Duration;

#[test]
fn a_file_in_a_folder_made_after_start_is_stored_by_the_watcher() {
    let setup = Setup::new();
    let apps = setup.path("apps");
    std::fs::create_dir_all(apps.join("one")).unwrap();
    std::fs::write(apps.join("one/app.conf"), b"one = 1\n").unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "config"
kind = "config"
paths = ["{apps}/*/app.conf"]
schedule = "0 0 1 1 *"
watch = true
repositories = ["local"]
"#,
        apps = apps.display()
    ));
    let daemon = setup.start_daemon();
    assert!(
        setup.ctl(&["run", "config", "--wait"]).status.success(),
        "{}",
        daemon.log_text()
    );
    let first = setup.ctl_json(&["runs", "--job", "config"])[0].clone();
    assert_eq!(first["status"], "succeeded", "{first}");

    // A new folder, then (after the watcher could have missed it) the file in it.
    std::fs::create_dir(apps.join("two")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(apps.join("two/notes.txt"), b"not configured\n").unwrap();
    std::fs::write(apps.join("two/app.conf"), b"two = 2\n").unwrap();
    let run = wait_for(
        Duration::from_secs(30),
        "a run triggered by the new file",
        || {
            let runs = setup.ctl_json(&["runs", "--job", "config"]);
            let r = runs[0].clone();
            (r["trigger"] == "change" && r["status"] != "running").then_some(r)
        },
    );
    assert_eq!(run["status"], "succeeded", "{run}\n{}", daemon.log_text());
    let backups = setup.ctl_json(&["backups", "--job", "config"]);
    let ids: Vec<&str> = backups
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{backups}");
    assert!(
        ids.contains(&run["backup_id"].as_str().unwrap()),
        "{backups}"
    );

    let rel = apps.strip_prefix("/").unwrap();
    for (id, has_two) in [
        (first["backup_id"].as_str().unwrap(), false),
        (run["backup_id"].as_str().unwrap(), true),
    ] {
        let target = setup.path(&format!("restored-{id}"));
        let out = setup.ctl(&[
            "restore",
            "config",
            "--job",
            "config",
            "--backup",
            id,
            "--target",
            target.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{id}");
        let root = target.join(rel);
        assert_eq!(
            std::fs::read_to_string(root.join("one/app.conf")).unwrap(),
            "one = 1\n"
        );
        assert_eq!(root.join("two/app.conf").exists(), has_two, "{id}");
        if has_two {
            assert_eq!(
                std::fs::read_to_string(root.join("two/app.conf")).unwrap(),
                "two = 2\n"
            );
        }
        assert!(!root.join("two/notes.txt").exists(), "not configured");
    }
    assert!(daemon.stop().success());
}
