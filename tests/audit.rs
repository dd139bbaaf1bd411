//! The audit trail end to end (docs/metrics.md "Audit trail"): a real daemon and the real ctl.
//! A manual run, its backup, a retention deletion, a restore reported over the socket and an
//! offline restore (daemon stopped → the 0600 file → imported at the next start) are rows of one
//! SHA-256 chain; editing one row in the state DB makes `audit --verify` fail naming it.

mod common;

use common::daemon::Setup;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn catalogue(setup: &Setup) {
    let src = setup.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "first version\n").unwrap();
    setup.write_catalogue(&format!(
        r#"
[retention.one]
last = 1

[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
repositories = ["local"]
retention = "one"
"#,
        src = src.display()
    ));
}

fn rows(setup: &Setup) -> Vec<serde_json::Value> {
    let v = setup.ctl_json(&["audit"]);
    v["rows"].as_array().expect("rows").clone()
}

fn find<'a>(rows: &'a [serde_json::Value], action: &str) -> Vec<&'a serde_json::Value> {
    rows.iter().filter(|r| r["action"] == action).collect()
}

fn sqlite(db: &std::path::Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn runs_retention_and_restores_are_chained_rows_and_an_edit_is_named() {
    let setup = Setup::new();
    catalogue(&setup);
    let daemon = setup.start_daemon();

    // Two full backups: the pass after the second deletes the first (last = 1).
    assert!(
        setup
            .ctl(&["run", "uploads", "--full", "--wait"])
            .status
            .success()
    );
    std::fs::write(setup.path("src/a.txt"), "second version\n").unwrap();
    assert!(
        setup
            .ctl(&["run", "uploads", "--full", "--wait"])
            .status
            .success()
    );
    let backups = setup.ctl_json(&["backups", "--job", "uploads"]);
    assert_eq!(backups.as_array().unwrap().len(), 1, "{backups}");

    // A restore while the daemon runs is reported over the socket.
    let online = setup.path("online");
    let out = setup.ctl(&[
        "restore",
        "files",
        "--job",
        "uploads",
        "--target",
        online.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(online.join("a.txt")).unwrap(),
        "second version\n"
    );

    let r = rows(&setup);
    let me = nix::unistd::getuid().as_raw();
    let runs = find(&r, "run");
    assert_eq!(runs.len(), 2, "{r:#?}");
    assert_eq!(runs[0]["uid"], me);
    assert_eq!(runs[0]["source"], "socket");
    assert!(
        runs[0]["result"].as_str().unwrap().starts_with("ok: run "),
        "{:?}",
        runs[0]
    );
    let backups = find(&r, "backup");
    assert_eq!(backups.len(), 2, "{r:#?}");
    assert!(
        backups.iter().all(|b| b["result"] == "succeeded"
            && b["source"] == "daemon"
            && b["job"] == "uploads")
    );
    let deleted = find(&r, "retention-delete");
    assert_eq!(deleted.len(), 1, "{r:#?}");
    assert_eq!(deleted[0]["result"], "deleted");
    assert!(
        deleted[0]["detail"]
            .as_str()
            .unwrap()
            .contains("repository local")
    );
    let restore = find(&r, "restore files");
    assert_eq!(restore.len(), 1, "{r:#?}");
    assert_eq!(
        (
            &restore[0]["result"],
            &restore[0]["uid"],
            &restore[0]["source"]
        ),
        (&"ok".into(), &me.into(), &"socket".into())
    );
    // `--job` filters; each row names the hash of the one before it.
    let only = setup.ctl_json(&["audit", "--job", "uploads"]);
    assert!(
        only["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["job"] == "uploads")
    );
    for w in r.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    assert!(daemon.stop().success());

    // Offline: the restore goes to <state-directory>/offline-audit.jsonl (0600) …
    let offline = setup.path("offline");
    let out = setup.ctl(&[
        "restore",
        "files",
        "--job",
        "uploads",
        "--target",
        offline.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let file = setup.path("state/offline-audit.jsonl");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("restore files")
    );
    // … the trail is readable offline (the state DB read-only) and does not have it yet …
    let out = setup.ctl(&["--json", "audit"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        find(v["rows"].as_array().unwrap(), "restore files").len(),
        1
    );
    // … and the next start imports it and removes the file.
    let daemon = setup.start_daemon();
    let r = rows(&setup);
    let restores = find(&r, "restore files");
    assert_eq!(restores.len(), 2, "{r:#?}");
    assert_eq!(restores[1]["source"], "offline");
    assert_eq!(restores[1]["uid"], me);
    assert!(restores[1]["detail"].as_str().unwrap().contains("offline"));
    assert!(!file.exists(), "the offline file is removed once imported");
    let out = setup.ctl(&["audit", "--verify"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain intact"));

    // Editing one row (sqlite UPDATE) breaks the chain at that row.
    let db = setup.path("state/state.db");
    let id = deleted[0]["id"].as_i64().unwrap();
    sqlite(
        &db,
        &format!("UPDATE audit SET result = 'kept' WHERE id = {id}"),
    );
    let out = setup.ctl(&["audit", "--verify"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("broken at row {id}")), "{err}");
    let v: serde_json::Value =
        serde_json::from_slice(&setup.ctl(&["--json", "audit", "--verify"]).stdout).unwrap();
    assert_eq!(v["chain"]["broken"]["id"], id);
    // Offline too.
    assert!(daemon.stop().success());
    let out = setup.ctl(&["audit", "--verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("broken at row {id}")));
}

#[test]
fn denied_requests_reload_and_cancel_of_nothing_are_rows() {
    let setup = Setup::new();
    catalogue(&setup);
    let daemon = setup.start_daemon();
    assert!(setup.ctl(&["reload"]).status.success());
    assert_eq!(setup.ctl(&["cancel", "999"]).status.code(), Some(1));
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    common::daemon::wait_for(std::time::Duration::from_secs(20), "the SIGHUP row", || {
        let r = rows(&setup);
        (find(&r, "reload").len() == 2).then_some(())
    });
    let r = rows(&setup);
    let reloads = find(&r, "reload");
    assert_eq!(reloads[0]["source"], "socket");
    assert!(reloads[0]["result"].as_str().unwrap().starts_with("ok"));
    assert_eq!(
        (&reloads[1]["source"], &reloads[1]["detail"]),
        (&"daemon".into(), &"SIGHUP".into())
    );
    let cancel = find(&r, "cancel");
    assert_eq!(cancel.len(), 1);
    assert!(
        cancel[0]["result"]
            .as_str()
            .unwrap()
            .starts_with("failed: run 999 is not running"),
        "{:?}",
        cancel[0]
    );

    // A peer outside the admin group is denied a run: a row with allowed = false.
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(common::daemon::CTL)
        .arg("--socket")
        .arg(setup.socket())
        .args(["run", "uploads"])
        .output()
        .unwrap();
    // nobody cannot even open the 0660 socket unless it is opened up.
    if out.status.code() == Some(2) {
        std::fs::set_permissions(setup.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(common::daemon::CTL)
            .arg("--socket")
            .arg(setup.socket())
            .args(["run", "uploads"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = rows(&setup);
    let denied: Vec<_> = r.iter().filter(|x| x["allowed"] == false).collect();
    assert_eq!(denied.len(), 1, "{r:#?}");
    assert_eq!(
        (&denied[0]["action"], &denied[0]["result"]),
        (&"run".into(), &"denied".into())
    );
    assert_eq!(denied[0]["user"], "nobody");
    assert!(setup.ctl(&["audit", "--verify"]).status.success());
    drop(daemon);
}
