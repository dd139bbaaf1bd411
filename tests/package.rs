//! The Debian package and the container recipe (docs/packaging.md).
//!
//! The package is built by `packaging/build-deb --profile dev --no-build` from the binaries this
//! `cargo test` built (or taken from `BDC_BACKUP_TEST_DEB`, as `.ci/run` sets it after a release
//! build), then read with `dpkg-deb -f/-e/-c/-x` and `lintian`: control fields, conffiles, maintainer
//! scripts, every path with its mode and owner, man pages that render, completions that parse, the
//! conffile that is the example catalogue and validates with the packaged daemon. The container
//! recipe is tested without a container engine: `build-rootfs` lays the image's files into a folder,
//! compose.yaml is parsed, and the entrypoint's checks run against good and bad folders.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const CTL: &str = env!("CARGO_BIN_EXE_bdc-backupctl");
const DAEMON: &str = env!("CARGO_BIN_EXE_bdc-backupd");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const EXAMPLE_RECIPIENT: &str = "age1seyd6yqn0m6e2k6kkgtf0n4m9n58tjffvqrv7e90kgahzxdwc2gqcdz53w";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The .deb under test: `BDC_BACKUP_TEST_DEB`, else built once per test binary by build-deb.
fn deb() -> &'static Path {
    static DEB: OnceLock<(Option<tempfile::TempDir>, PathBuf)> = OnceLock::new();
    let (_keep, path) = DEB.get_or_init(|| {
        if let Some(p) = std::env::var_os("BDC_BACKUP_TEST_DEB") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "BDC_BACKUP_TEST_DEB={} is not a file",
                p.display()
            );
            eprintln!("package: reusing {}", p.display());
            return (None, p);
        }
        let out_dir = tempfile::tempdir().unwrap();
        let out = run(Command::new(format!("{ROOT}/packaging/build-deb"))
            .args(["--profile", "dev", "--no-build", "--out"])
            .arg(out_dir.path()));
        let path = PathBuf::from(stdout(&out).trim());
        assert!(
            path.is_file() && path.starts_with(out_dir.path()),
            "build-deb printed {path:?}"
        );
        eprintln!("package: built {}", path.display());
        (Some(out_dir), path)
    });
    path
}

fn field(name: &str) -> String {
    stdout(&run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb())
        .arg(name)))
    .trim()
    .to_string()
}

#[test]
fn control_fields_conffiles_and_maintainer_scripts() {
    assert_eq!(field("Package"), "bdc-backup");
    assert_eq!(field("Version"), "0.1.0-1");
    let arch = stdout(&run(Command::new("dpkg").arg("--print-architecture")));
    assert_eq!(field("Architecture"), arch.trim());
    assert_eq!(field("Section"), "admin");
    let depends = field("Depends");
    for dep in ["libc6", "postgresql-common", "postgresql-client", "systemd"] {
        assert!(depends.contains(dep), "Depends: {depends} lacks {dep}");
    }
    assert!(!field("Description").is_empty());

    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(deb())
        .arg(control.path()));
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap();
    assert_eq!(read("conffiles"), "/etc/bdc-backup/catalogue.toml\n");
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.path().join(script);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{script} mode {mode:o}");
        let text = read(script);
        assert!(
            text.starts_with("#!/bin/sh\n"),
            "{script}: a POSIX sh script"
        );
        assert!(
            !text.contains("#DEBHELPER#"),
            "{script}: cargo-deb filled #DEBHELPER#"
        );
        assert!(text.trim_end().ends_with("exit 0"), "{script} never fails");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    let postinst = read("postinst");
    for needle in [
        "systemd-sysusers",
        "bdc-backup.conf",
        "deb-systemd-helper enable bdc-backupd.service",
        "systemd-tmpfiles --create bdc-backup.conf",
        "chgrp bdc-backup \"$CATALOGUE\" && chmod 0640",
        "/usr/bin/bdc-backupd --catalogue \"$CATALOGUE\" --check",
        "deb-systemd-invoke start \"$UNIT\"",
        "deb-systemd-invoke restart \"$UNIT\"",
        EXAMPLE_RECIPIENT,
        "bdc-backupctl keygen",
        "systemctl start $UNIT",
    ] {
        assert!(postinst.contains(needle), "postinst has {needle}");
    }
    // cargo-deb's unconditional start/restart fragments are off: ours decide.
    assert!(!postinst.contains("deb-systemd-invoke start bdc-backupd.service"));
    assert!(!postinst.contains("_dh_action"));
    // The example recipient in the postinst is the one of the shipped catalogue.
    let example = std::fs::read_to_string(format!("{ROOT}/etc/bdc-backup/catalogue.toml")).unwrap();
    assert!(example.contains(EXAMPLE_RECIPIENT));
    let prerm = read("prerm");
    assert!(prerm.contains("deb-systemd-invoke stop bdc-backupd.service"));
    assert!(prerm.contains("\"$1\" = remove"), "stopped only on remove");
    let postrm = read("postrm");
    assert!(postrm.contains("rm -rf /var/lib/bdc-backup /run/bdc-backup"));
    assert!(
        !postrm.contains("rm -rf /var/backups") && !postrm.contains("rm -rf /etc/bdc-backup"),
        "purge never removes a repository or an operator's keys"
    );
}

/// `dpkg-deb -c`: (mode string, owner, path without the leading ".").
fn contents() -> Vec<(String, String, String)> {
    stdout(&run(Command::new("dpkg-deb").arg("-c").arg(deb())))
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert!(cols.len() >= 6, "dpkg-deb -c line {l:?}");
            let path = cols[5].trim_start_matches('.').to_string();
            (cols[0].to_string(), cols[1].to_string(), path)
        })
        .collect()
}

#[test]
fn every_file_in_its_place_with_its_mode_and_owner() {
    let entries = contents();
    let files: BTreeSet<&str> = entries
        .iter()
        .filter(|(m, _, _)| m.starts_with('-'))
        .map(|(_, _, p)| p.as_str())
        .collect();
    for (mode, owner, path) in &entries {
        assert!(
            owner == "0/0" || owner == "root/root",
            "{path} owned by {owner}, not root"
        );
        let want = if mode.starts_with('d') {
            "drwxr-xr-x"
        } else if path.starts_with("/usr/bin/") {
            "-rwxr-xr-x"
        } else if path == "/etc/bdc-backup/catalogue.toml" {
            "-rw-r-----"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "mode of {path}");
    }
    // The man pages: exactly what `bdc-backupctl generate man` writes, gzipped.
    let gen_dir = tempfile::tempdir().unwrap();
    run(Command::new(CTL)
        .args(["generate", "man"])
        .arg(gen_dir.path()));
    let mut pages = 0;
    for entry in std::fs::read_dir(gen_dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let section = name.rsplit('.').next().unwrap();
        let want = format!("/usr/share/man/man{section}/{name}.gz");
        assert!(files.contains(want.as_str()), "the package has {want}");
        pages += 1;
    }
    let packaged_pages = files
        .iter()
        .filter(|p| p.starts_with("/usr/share/man/"))
        .count();
    assert_eq!(packaged_pages, pages, "no stale man pages");
    assert!(pages > 10, "one page per subcommand ({pages})");
    for path in [
        "/usr/bin/bdc-backupd",
        "/usr/bin/bdc-backupctl",
        "/usr/lib/systemd/system/bdc-backupd.service",
        "/usr/lib/sysusers.d/bdc-backup.conf",
        "/usr/lib/tmpfiles.d/bdc-backup.conf",
        "/etc/bdc-backup/catalogue.toml",
        "/usr/share/man/man1/bdc-backupctl.1.gz",
        "/usr/share/man/man8/bdc-backupd.8.gz",
        "/usr/share/bash-completion/completions/bdc-backupctl",
        "/usr/share/zsh/vendor-completions/_bdc-backupctl",
        "/usr/share/fish/vendor_completions.d/bdc-backupctl.fish",
        "/usr/share/doc/bdc-backup/copyright",
        "/usr/share/doc/bdc-backup/changelog.Debian.gz",
        "/usr/share/doc/bdc-backup/examples/catalogue.toml",
        "/usr/share/doc/bdc-backup/README.md",
        // named by the unit's Documentation= and the man pages' SEE ALSO
        "/usr/share/doc/bdc-backup/operator-guide.md",
        "/usr/share/doc/bdc-backup/catalogue.md",
        "/usr/share/doc/bdc-backup/design.md",
        "/usr/share/doc/bdc-backup/packaging.md",
    ] {
        assert!(files.contains(path), "the package has {path}");
    }
}

#[test]
fn unpacked_the_files_work() {
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb())
        .arg(root.path()));
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));

    // The packaged binaries run; the packaged daemon validates the conffile, which is the example.
    let version = stdout(&run(
        Command::new(at("/usr/bin/bdc-backupctl")).arg("--version")
    ));
    assert!(version.contains("0.1.0"), "{version}");
    let conffile = at("/etc/bdc-backup/catalogue.toml");
    assert_eq!(
        std::fs::read(&conffile).unwrap(),
        std::fs::read(format!("{ROOT}/etc/bdc-backup/catalogue.toml")).unwrap(),
        "the conffile is the example catalogue"
    );
    let check = run(Command::new(at("/usr/bin/bdc-backupd"))
        .arg("--catalogue")
        .arg(&conffile)
        .arg("--check"));
    assert!(stdout(&check).contains("OK"), "{}", stdout(&check));
    // The packaged unit is the repository's; its ExecStartPre is that same check.
    let unit = std::fs::read_to_string(at("/usr/lib/systemd/system/bdc-backupd.service")).unwrap();
    assert_eq!(
        unit,
        std::fs::read_to_string(format!("{ROOT}/systemd/bdc-backupd.service")).unwrap()
    );
    assert!(unit.contains("ConditionPathExists=/etc/bdc-backup/catalogue.toml"));

    // Man pages: gzip of roff with a .TH line; `man -l` renders them where man-db is installed.
    let man_dirs = [at("/usr/share/man/man1"), at("/usr/share/man/man8")];
    let can_render = have("man") && have("groff");
    if !can_render {
        eprintln!("man -l: SKIPPED (man-db or groff not installed); checking the roff only");
    }
    for dir in man_dirs {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let gz = std::fs::File::open(&path).unwrap();
            let mut roff = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut roff)
                .unwrap_or_else(|e| panic!("{}: not gzip: {e}", path.display()));
            assert!(
                roff.lines().any(|l| l.starts_with(".TH ")),
                "{}: no .TH",
                path.display()
            );
            let stem = path.file_name().unwrap().to_str().unwrap();
            let command = stem.split('.').next().unwrap();
            if can_render && (command == "bdc-backupctl" || command == "bdc-backupd") {
                let out = run(Command::new("man")
                    .arg("-l")
                    .arg(&path)
                    .env("MANPAGER", "cat")
                    .env("MANWIDTH", "100"));
                let text = stdout(&out);
                assert!(
                    text.contains("NAME") && text.contains(command),
                    "man -l {}:\n{text}",
                    path.display()
                );
            }
        }
    }

    // Completions: non-empty, for bdc-backupctl, and valid for each shell that is installed.
    for (path, shell, args) in [
        (
            "/usr/share/bash-completion/completions/bdc-backupctl",
            "bash",
            &["-n"][..],
        ),
        (
            "/usr/share/zsh/vendor-completions/_bdc-backupctl",
            "zsh",
            &["-n"][..],
        ),
        (
            "/usr/share/fish/vendor_completions.d/bdc-backupctl.fish",
            "fish",
            &["--no-execute"][..],
        ),
    ] {
        let text = std::fs::read_to_string(at(path)).unwrap();
        assert!(
            text.len() > 1000 && text.contains("bdc-backupctl") && text.contains("restore"),
            "{path}"
        );
        if have(shell) {
            run(Command::new(shell).args(args).arg(at(path)));
        } else {
            eprintln!("{shell} syntax check of {path}: SKIPPED ({shell} not installed)");
        }
    }
    let copyright = std::fs::read_to_string(at("/usr/share/doc/bdc-backup/copyright")).unwrap();
    assert!(
        copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        )
    );
    assert!(copyright.contains("License: Apache-2.0"));
}

#[test]
fn lintian_finds_no_errors() {
    if !have("lintian") {
        eprintln!("lintian: SKIPPED (not installed; tests/setup installs it)");
        return;
    }
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb())
        .output()
        .unwrap();
    let text = stdout(&out);
    eprintln!("lintian:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
    assert!(out.status.success(), "lintian exit {}", out.status);
}

// ---- the container recipe ----

fn container(file: &str) -> PathBuf {
    Path::new(ROOT).join("packaging/container").join(file)
}

/// (source, destination, mode) lines of rootfs.list.
fn rootfs_list() -> Vec<(String, String, u32)> {
    std::fs::read_to_string(container("rootfs.list"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols.len(), 3, "rootfs.list line {l:?}");
            (
                cols[0].to_string(),
                cols[1].to_string(),
                u32::from_str_radix(cols[2], 8).unwrap(),
            )
        })
        .collect()
}

#[test]
fn build_rootfs_lays_out_the_images_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(container("build-rootfs"))
        .args(["--profile", "dev"])
        .arg(dir.path()));
    let rootfs = PathBuf::from(stdout(&out).trim());
    assert_eq!(rootfs, dir.path().join("rootfs"));
    let list = rootfs_list();
    let mut want = BTreeSet::new();
    for (src, dest, mode) in &list {
        let built = rootfs.join(dest);
        let meta = std::fs::metadata(&built).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
        assert_eq!(meta.permissions().mode() & 0o777, *mode, "mode of {dest}");
        let from = Path::new(ROOT).join(src.replace("PROFILE", "debug"));
        assert_eq!(
            std::fs::read(&built).unwrap(),
            std::fs::read(&from).unwrap(),
            "{dest} is {src}"
        );
        want.insert(dest.clone());
    }
    // Nothing else is in the tree.
    let mut found = BTreeSet::new();
    let mut stack = vec![rootfs.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.insert(
                    p.strip_prefix(&rootfs)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    assert_eq!(found, want);
    for bin in ["usr/bin/bdc-backupd", "usr/bin/bdc-backupctl"] {
        assert!(want.contains(bin), "the image has {bin}");
    }
    // The laid-out daemon validates the image's example catalogue (the entrypoint, not --check,
    // refuses its example recipient).
    run(Command::new(rootfs.join("usr/bin/bdc-backupd"))
        .arg("--catalogue")
        .arg(rootfs.join("usr/share/doc/bdc-backup/examples/catalogue.toml"))
        .arg("--check"));

    // The Containerfile copies that tree and nothing else; its entrypoint is in the list.
    let containerfile = std::fs::read_to_string(dir.path().join("Containerfile")).unwrap();
    assert_eq!(
        containerfile,
        std::fs::read_to_string(container("Containerfile")).unwrap()
    );
    let copies: Vec<&str> = containerfile
        .lines()
        .filter(|l| l.starts_with("COPY") || l.starts_with("ADD"))
        .collect();
    assert_eq!(copies, ["COPY rootfs/ /"]);
    for needle in [
        "FROM debian:bookworm-slim",
        "postgresql-client-$PG_MAJOR",
        "ARG PG_MAJOR=15",
        "--uid 999 --gid 999",
        "--gid 999 postgres",
        "USER 999:999",
        "VOLUME [\"/var/lib/bdc-backup\"",
        "ENTRYPOINT [\"/usr/local/bin/bdc-backup-entrypoint\"]",
    ] {
        assert!(containerfile.contains(needle), "Containerfile has {needle}");
    }
    assert!(want.contains("usr/local/bin/bdc-backup-entrypoint"));

    // A missing source is an error that names it.
    let out = Command::new(container("build-rootfs"))
        .args(["--profile", "dev"])
        .arg(dir.path())
        .env("CARGO_TARGET_DIR", dir.path().join("no-such-target"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-target/debug/bdc-backupd is missing"),
        "{err}"
    );
}

#[test]
fn compose_file_parses_and_shares_the_right_mounts() {
    let yaml_ok = Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !yaml_ok {
        eprintln!(
            "compose.yaml: SKIPPED (python3 with the yaml module is not installed; tests/setup installs python3-yaml)"
        );
        return;
    }
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(container("compose.yaml")));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let services = &doc["services"];
    let pg = &services["postgres"];
    let bdc = &services["bdc-backup"];
    assert_eq!(pg["image"], "postgres:15");
    assert_eq!(bdc["user"], "999:999");
    let mounts = |svc: &serde_json::Value| -> Vec<String> {
        svc["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let (pg_mounts, bdc_mounts) = (mounts(pg), mounts(bdc));
    for m in [
        "pgdata:/var/lib/postgresql/data",
        "pgsocket:/var/run/postgresql",
        "bdc-control:/run/bdc-backup",
    ] {
        assert!(pg_mounts.contains(&m.to_string()), "postgres mounts {m}");
    }
    assert!(
        pg_mounts
            .iter()
            .any(|m| m.ends_with(":/usr/local/bin/bdc-backupctl:ro")),
        "the ctl is mounted into the postgres container: {pg_mounts:?}"
    );
    for m in [
        "pgdata:/var/lib/postgresql/data:ro",
        "pgsocket:/var/run/postgresql:ro",
        "bdc-control:/run/bdc-backup",
        "./catalogue.toml:/etc/bdc-backup/catalogue.toml:ro",
    ] {
        assert!(bdc_mounts.contains(&m.to_string()), "bdc-backup mounts {m}");
    }
    let command: Vec<&str> = pg["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(command.contains(&"archive_command=/usr/local/bin/bdc-backupctl wal-push %p"));
    assert!(command.contains(&"archive_mode=on"));
    for volume in [
        "pgdata",
        "pgsocket",
        "bdc-control",
        "bdc-state",
        "bdc-repository",
    ] {
        assert!(
            doc["volumes"].get(volume).is_some(),
            "volume {volume} declared"
        );
    }
    // Each named volume a service mounts is declared.
    for m in pg_mounts.iter().chain(&bdc_mounts) {
        let src = m.split(':').next().unwrap();
        if !src.starts_with('.') {
            assert!(doc["volumes"].get(src).is_some(), "{m}: volume declared");
        }
    }
    let entrypoint_env = &bdc["environment"];
    assert_eq!(entrypoint_env["PGDATA"], "/var/lib/postgresql/data");
    assert_eq!(entrypoint_env["PGHOST"], "/var/run/postgresql");
}

/// Folders standing in for the container's mounts, readable by the service user.
struct Mounts {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Mounts {
    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }
}

/// The uid the entrypoint runs as here: postgres when we are root (so a root-owned folder is
/// read-only to it, as a `:ro` mount is), else ourselves.
fn as_service_user() -> Option<(u32, u32)> {
    if nix::unistd::geteuid().is_root() {
        let u = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("the postgres OS user (tests/setup)");
        Some((u.uid.as_raw(), u.gid.as_raw()))
    } else {
        None
    }
}

fn good_mounts() -> Mounts {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mounts { _dir: dir, root };
    for d in ["etc", "socket", "pgdata", "state", "control"] {
        std::fs::create_dir(m.path(d)).unwrap();
    }
    std::fs::write(m.path("pgdata/PG_VERSION"), "15\n").unwrap();
    // A real recipient in place of the example's.
    let key = run(Command::new(CTL)
        .args(["keygen", "--output"])
        .arg(m.path("restore.key")));
    let text = stdout(&key) + &String::from_utf8_lossy(&key.stderr);
    let recipient = text
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .unwrap_or_else(|| panic!("keygen printed no recipient: {text}"))
        .to_string();
    let example = std::fs::read_to_string(container("catalogue.toml")).unwrap();
    std::fs::write(
        m.path("etc/catalogue.toml"),
        example.replace(EXAMPLE_RECIPIENT, &recipient),
    )
    .unwrap();
    let (dir_mode, file_mode) = (0o755, 0o644);
    for d in ["etc", "socket", "pgdata"] {
        std::fs::set_permissions(m.path(d), std::fs::Permissions::from_mode(dir_mode)).unwrap();
    }
    std::fs::set_permissions(
        m.path("etc/catalogue.toml"),
        std::fs::Permissions::from_mode(file_mode),
    )
    .unwrap();
    match as_service_user() {
        Some((uid, gid)) => {
            for d in ["state", "control"] {
                nix::unistd::chown(
                    &m.path(d),
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .unwrap();
            }
        }
        // Not root: PGDATA read-only by its mode.
        None => std::fs::set_permissions(m.path("pgdata"), std::fs::Permissions::from_mode(0o555))
            .unwrap(),
    }
    m
}

fn entrypoint(m: &Mounts, extra_env: &[(&str, String)]) -> Output {
    let mut cmd = match as_service_user() {
        Some(_) => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "env"]);
            c
        }
        None => Command::new("env"),
    };
    let mut env: Vec<(&str, String)> = vec![
        ("BDC_ENTRYPOINT_CHECK_ONLY", "1".into()),
        ("BDC_BACKUPD", DAEMON.into()),
        (
            "BDC_BACKUP_CATALOGUE",
            m.path("etc/catalogue.toml").display().to_string(),
        ),
        ("PGHOST", m.path("socket").display().to_string()),
        ("PGDATA", m.path("pgdata").display().to_string()),
        (
            "BDC_BACKUP_STATE_DB",
            m.path("state/state.db").display().to_string(),
        ),
        (
            "BDC_BACKUP_SOCKET",
            m.path("control/control.sock").display().to_string(),
        ),
    ];
    for (k, v) in extra_env {
        env.retain(|(key, _)| key != k);
        env.push((k, v.clone()));
    }
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(container("entrypoint"));
    cmd.output().unwrap()
}

fn assert_fails(m: &Mounts, env: &[(&str, String)], naming: &[&str]) {
    let out = entrypoint(m, env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the entrypoint accepted {env:?}: {err}"
    );
    for n in naming {
        assert!(err.contains(n), "the message names {n}: {err}");
    }
    eprintln!("entrypoint rejects as expected: {}", err.trim());
}

#[test]
fn entrypoint_checks_each_mount_before_starting_the_daemon() {
    let m = good_mounts();
    let out = entrypoint(&m, &[]);
    assert!(
        out.status.success(),
        "good mounts pass: {}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("all checks passed"));

    let p = |s: &str| m.path(s).display().to_string();
    // The catalogue: missing, still the example, invalid.
    assert_fails(
        &m,
        &[("BDC_BACKUP_CATALOGUE", p("etc/missing.toml"))],
        &["no catalogue at", &p("etc/missing.toml")],
    );
    let example = m.path("etc/example.toml");
    std::fs::copy(container("catalogue.toml"), &example).unwrap();
    std::fs::set_permissions(&example, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_fails(
        &m,
        &[("BDC_BACKUP_CATALOGUE", p("etc/example.toml"))],
        &["example recipient", &p("etc/example.toml")],
    );
    let good = std::fs::read_to_string(m.path("etc/catalogue.toml")).unwrap();
    let invalid = m.path("etc/invalid.toml");
    std::fs::write(
        &invalid,
        good.replace("wal-ack = \"sync\"", "wal-akc = \"sync\""),
    )
    .unwrap();
    std::fs::set_permissions(&invalid, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_fails(
        &m,
        &[("BDC_BACKUP_CATALOGUE", p("etc/invalid.toml"))],
        &["does not validate", "wal-akc"],
    );
    // An identity file the catalogue names but that is not mounted.
    let with_identity = m.path("etc/identity.toml");
    std::fs::write(
        &with_identity,
        good.replace(
            "[encryption]\n",
            "[encryption]\nidentity-file = \"/nonexistent/restore.key\"\n",
        ),
    )
    .unwrap();
    std::fs::set_permissions(&with_identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_fails(
        &m,
        &[("BDC_BACKUP_CATALOGUE", p("etc/identity.toml"))],
        &["/nonexistent/restore.key", "encryption.identity-file"],
    );
    // The socket folder, PGDATA, the state and control folders.
    assert_fails(
        &m,
        &[("PGHOST", p("no-socket"))],
        &["PostgreSQL socket folder", &p("no-socket")],
    );
    assert_fails(
        &m,
        &[("PGDATA", p("no-pgdata"))],
        &["no PGDATA at", &p("no-pgdata")],
    );
    assert_fails(&m, &[("PGDATA", p("etc"))], &["PG_VERSION", &p("etc")]);
    // A writable PGDATA (the service user's own folder) is refused: mount it :ro.
    std::fs::write(m.path("control/PG_VERSION"), "15\n").unwrap();
    std::fs::set_permissions(
        m.path("control/PG_VERSION"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_fails(
        &m,
        &[("PGDATA", p("control"))],
        &["is writable", "read-only", &p("control")],
    );
    std::fs::remove_file(m.path("control/PG_VERSION")).unwrap();
    assert_fails(
        &m,
        &[("BDC_BACKUP_STATE_DB", p("pgdata/state.db"))],
        &["state folder", &p("pgdata")],
    );
    assert_fails(
        &m,
        &[("BDC_BACKUP_SOCKET", p("no-control/control.sock"))],
        &["control socket's folder", &p("no-control")],
    );
    // And the good set still passes (no check left anything behind).
    assert!(entrypoint(&m, &[]).status.success());
}
