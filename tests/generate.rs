//! The hidden `bdc-backupctl generate` (for packagers, issue 9): man pages for the ctl, every
//! subcommand and the daemon, with the README's examples; completions for bash, zsh and fish;
//! and `generate` itself absent from `--help`.

use std::process::Command;

fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bdc-backupctl"))
}

#[test]
fn man_pages_for_every_subcommand_and_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let out = ctl()
        .args(["generate", "man"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for page in [
        "bdc-backupctl.1",
        "bdc-backupd.8",
        "bdc-backupctl-status.1",
        "bdc-backupctl-restore-cluster.1",
        "bdc-backupctl-verify.1",
    ] {
        assert!(names.iter().any(|n| n == page), "no {page} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.contains("generate")),
        "the hidden command got a page: {names:?}"
    );
    let top = std::fs::read_to_string(dir.path().join("bdc-backupctl.1")).unwrap();
    assert!(top.contains("EXAMPLES"), "{top}");
    assert!(top.contains("bdc\\-backupctl status") || top.contains("bdc-backupctl status"));
}

#[test]
fn completions_for_three_shells_and_generate_is_hidden() {
    for (shell, marker) in [
        ("bash", "complete "),
        ("zsh", "#compdef bdc-backupctl"),
        ("fish", "complete -c bdc-backupctl"),
    ] {
        let out = ctl()
            .args(["generate", "completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        assert!(text.contains("restore"), "{shell}: subcommands missing");
    }
    let out = ctl()
        .args(["generate", "completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    let help = ctl().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("status") && !help.contains("generate"),
        "{help}"
    );
}
