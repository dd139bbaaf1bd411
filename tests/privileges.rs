//! Production privileges: the real daemon runs as the `postgres` OS user with the read group as a
//! supplementary group and only CAP_DAC_READ_SEARCH (as `systemd/bdc-backupd.service` has it:
//! `User=postgres`, `SupplementaryGroups=`, `AmbientCapabilities=`, `NoNewPrivileges=`), reproduced
//! with `setpriv`. Then, through the real ctl: a member of the read group may `status` but not
//! `run`; `nobody` cannot even connect; a member of the admin group may `run`; and the backup reads
//! a root-owned 0600 file through the capability alone.
//!
//! Groups: the Debian groups `users` (gid 100) stands for the read group and `staff` (gid 50) for
//! the admin group, so the test needs no accounts of its own.

mod common;

use common::daemon::{CTL, DAEMON, Setup};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const READ_GID: u32 = 100; // users
const ADMIN_GID: u32 = 50; // staff
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The ctl as `uid` with exactly these supplementary groups, talking to `socket`.
fn ctl_as(uid: u32, groups: &[u32], socket: &std::path::Path, args: &[&str]) -> Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg(groups)
        .arg("--")
        .arg(CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run setpriv bdc-backupctl");
    eprintln!(
        "$ (uid {uid}) bdc-backupctl {}\n[exit {:?}]\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_daemon_as_postgres_with_the_units_privileges_authorizes_by_group() {
    assert!(
        is_root(),
        "this test runs as root to switch users (CI and tests/run do)"
    );
    let postgres = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("the postgres OS user (tests/setup installs PostgreSQL)");
    let setup = Setup::new();
    let src = setup.path("uploads");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("public.txt"), b"for everyone\n").unwrap();
    // Root-owned and private: only CAP_DAC_READ_SEARCH lets the postgres user read it.
    let secret = src.join("sub/private.conf");
    std::fs::write(&secret, b"root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o700)).unwrap();

    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{}"
full = "0 4 * * 0"
repositories = ["local"]
"#,
        src.display()
    ));
    let text_cat = std::fs::read_to_string(setup.catalogue_path())
        .unwrap()
        .replace(
            "[daemon]\n",
            "[daemon]\npostgres-os-user = \"postgres\"\nread-group = \"users\"\nadmin-group = \"staff\"\n",
        );
    std::fs::write(setup.catalogue_path(), text_cat).unwrap();
    // The daemon's own files belong to its user (as StateDirectory= and the package arrange).
    for p in ["state", "run", "repo"] {
        std::fs::create_dir_all(setup.path(p)).unwrap();
        nix::unistd::chown(&setup.path(p), Some(postgres.uid), Some(postgres.gid)).unwrap();
    }
    nix::unistd::chown(
        &setup.path("restore.key"),
        Some(postgres.uid),
        Some(postgres.gid),
    )
    .unwrap();
    std::fs::set_permissions(setup.path("run"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let log = std::fs::File::create(setup.path("daemon.log")).unwrap();
    let mut daemon = Command::new("setpriv")
        .arg(format!("--reuid={}", postgres.uid))
        .arg(format!("--regid={}", postgres.gid))
        .arg(format!("--groups={READ_GID}"))
        .args([
            "--inh-caps=-all,+dac_read_search",
            "--ambient-caps=-all,+dac_read_search",
            "--bounding-set=-all,+dac_read_search",
            "--no-new-privs",
            "--",
        ])
        .arg(DAEMON)
        .arg("--catalogue")
        .arg(setup.catalogue_path())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn setpriv bdc-backupd");
    let socket = setup.socket();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if Instant::now() > deadline || daemon.try_wait().unwrap().is_some() {
            let _ = daemon.kill();
            panic!(
                "the daemon did not open its socket as postgres; log:\n{}",
                std::fs::read_to_string(setup.path("daemon.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The socket: 0660, owned by the daemon's user, group = the read group.
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        postgres.uid.as_raw()
    );
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), READ_GID);

    // nobody, in no group: the socket's mode keeps it out.
    let out = ctl_as(NOBODY, &[], &socket, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("permission denied"),
        "{}",
        text(&out)
    );

    // A member of the read group: status yes, run no (named as an authorization refusal).
    let out = ctl_as(NOBODY, &[READ_GID], &socket, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("uploads"), "{}", text(&out));
    let out = ctl_as(NOBODY, &[READ_GID], &socket, &["run", "uploads", "--wait"]);
    assert!(!out.status.success(), "{}", text(&out));
    let refused = text(&out);
    assert!(
        refused.contains("nobody") && refused.contains("admin"),
        "the refusal names the peer and what is needed: {refused}"
    );

    // A member of the admin group (and of the read group, to reach the socket): run works, and
    // the backup read the root-only file through CAP_DAC_READ_SEARCH alone.
    let out = ctl_as(
        NOBODY,
        &[ADMIN_GID, READ_GID],
        &socket,
        &["--json", "run", "uploads", "--wait"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let restored = setup.path("restored");
    let out = Command::new(CTL)
        .arg("--catalogue")
        .arg(setup.catalogue_path())
        .args(["restore", "files", "--job", "uploads", "--target"])
        .arg(&restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(restored.join("sub/private.conf")).unwrap(),
        b"root only\n"
    );
    assert_eq!(
        std::fs::read(restored.join("public.txt")).unwrap(),
        b"for everyone\n"
    );
    // Everything the daemon wrote belongs to its user.
    let state = std::fs::metadata(setup.path("state/state.db")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&state),
        postgres.uid.as_raw()
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            assert!(status.success(), "daemon exit {status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
