//! The DR rehearsal (issue 9): a cluster (base + WAL), a dump, an uploads tree and config files
//! are backed up by the daemon with a catalogue naming an `[application] version-command`; then,
//! with nothing but the repository URL and a copy of the identity file, in fresh folders and on
//! a fresh port: `bootstrap`, `restore all --plan` interrupted by a failing hook, `--resume`;
//! the database is compared table by table, the tree file by file (modes, owners, mtimes,
//! links), the config files byte by byte, and finished steps are not redone. The newcomer paths:
//! output piped into `head -1`, `bootstrap` and the dry run as the `postgres` user (errors naming
//! the unreadable identity and the unwritable output folder), a dry run whose estimates name
//! their basis (a drill, or none), the offline audit row beside the plan, `show RUN_ID` with the
//! backup's provenance, and `bootstrap` from an S3 repository (moto).

mod common;

use common::daemon::{CTL, Setup};
use common::dr::bootstrap_args;
use common::objstores::{Moto, credentials_file};
use common::output::{run_logged, text};
use common::physical::{Physical, fingerprints, open_up, psql_port};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ctl(args: &[&str]) -> Output {
    run_ctl(bare(Command::new(CTL)), args)
}

/// No --catalogue, no BDC_BACKUP_* variables: a bare host; `HOME` a folder of its own (tests look
/// at what lands there), and no socket of a running daemon.
fn bare(mut c: Command) -> Command {
    c.env_remove("BDC_BACKUP_CATALOGUE")
        .env_remove("BDC_BACKUP_SOCKET")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", home());
    c
}

fn home() -> PathBuf {
    let h = std::env::temp_dir().join(format!("bdc-dr-home-{}", std::process::id()));
    std::fs::create_dir_all(&h).unwrap();
    h
}

/// The ctl as the postgres OS user (the tests run as root).
fn ctl_as_postgres(args: &[&str]) -> Output {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", CTL]);
    run_ctl(bare(c), args)
}

fn run_ctl(c: Command, args: &[&str]) -> Output {
    run_logged(c, "bdc-backupctl", args)
}

/// The ctl with its stdout a pipe whose reader is already gone (every write fails with EPIPE),
/// and with stdout piped through `head -1` (bash, pipefail: the ctl's own exit status).
fn ctl_into_closed_pipes(args: &[&str]) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut c = bare(Command::new(CTL));
    let out = c.args(args).stdout(writer).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "closed stdout: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = std::iter::once(CTL.to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut c = bare(Command::new("bash"));
    let out = c
        .args(["-o", "pipefail", "-c", &format!("{line} | head -1")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "| head -1: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Every entry under `root` (relative path → kind, mode, uid, gid, mtime, size, content or link).
fn tree(root: &Path) -> Vec<(PathBuf, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                "dir".to_string()
            } else {
                format!("file {}", hex(&std::fs::read(&p).unwrap()))
            };
            let mtime = if m.file_type().is_symlink() {
                0
            } else {
                m.mtime()
            };
            out.push((
                rel,
                format!(
                    "{what} mode {:o} owner {}:{} mtime {mtime}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            ));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for b in bytes.iter().take(64) {
        let _ = write!(s, "{b:02x}");
    }
    format!("{} bytes {s}", bytes.len())
}

#[test]
fn bootstrap_and_restore_all_from_the_repository_and_the_key_alone() {
    let p = Physical::start("60s");
    let dir = p.setup.dir.path().to_path_buf();
    p.cluster.create_database("app");
    p.cluster.load_sample("app", 2);
    p.cluster.load_extras("app");

    // The uploads tree: modes, an owner other than root, a symlink, set mtimes, a nested folder.
    let uploads = dir.join("uploads");
    std::fs::create_dir_all(uploads.join("2026/12")).unwrap();
    std::fs::write(uploads.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(uploads.join("2026/12/photo.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::set_permissions(
        uploads.join("a.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("a.txt", uploads.join("latest")).unwrap();
    let _ = Command::new("chown")
        .args(["postgres"])
        .arg(uploads.join("2026/12/photo.bin"))
        .status();
    let _ = Command::new("touch")
        .args(["-d", "2025-03-04 05:06:07"])
        .arg(uploads.join("a.txt"))
        .status();
    // Config files the config job names (and the catalogue copy carries).
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    std::fs::write(etc.join("app.env"), "APP_MODE=production\nWORKERS=4\n").unwrap();
    // The application: a git checkout whose HEAD is the version recorded.
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    for args in [
        vec!["init", "-q"],
        vec![
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "v1.2.3",
        ],
    ] {
        let st = Command::new("git")
            .arg("-C")
            .arg(&app)
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    }
    let head = String::from_utf8(
        Command::new("git")
            .arg("-C")
            .arg(&app)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();

    let mut catalogue = std::fs::read_to_string(p.setup.catalogue_path()).unwrap();
    catalogue.push_str(&format!(
        r#"
[application]
version-command = ["git", "-C", "{app}", "rev-parse", "HEAD"]

[[job]]
name = "app-dump"
kind = "postgres-dump"
schedule = "0 2 * * *"
databases = ["app"]
repositories = ["local"]

[[job]]
name = "uploads"
kind = "files"
path = "{uploads}"
full = "0 3 * * 0"
repositories = ["local"]

[[job]]
name = "etc"
kind = "config"
paths = ["{etc}/pg_hba.conf", "{etc}/app.env", "{key}"]
schedule = "0 1 * * *"
repositories = ["local"]
"#,
        app = app.display(),
        uploads = uploads.display(),
        etc = etc.display(),
        key = dir.join("restore.key").display(),
    ));
    std::fs::write(p.setup.catalogue_path(), catalogue).unwrap();
    assert!(p.setup.ctl(&["reload"]).status.success());

    let base_run = p.backup("--full");
    p.cluster.psql(
        "app",
        "CREATE TABLE after_base AS SELECT g FROM generate_series(1, 321) g;",
    );
    for job in ["app-dump", "uploads", "etc"] {
        let out = p.setup.ctl(&["run", job, "--wait"]);
        assert!(
            out.status.success(),
            "run {job}: {}\n{}",
            text(&out),
            p.daemon_log()
        );
    }
    // A drill of the uploads job: the dry run's estimate for its step rests on it.
    let out = p
        .setup
        .ctl(&["verify", "--job", "uploads", "--drill-only", "--wait"]);
    assert!(
        out.status.success(),
        "drill: {}\n{}",
        text(&out),
        p.daemon_log()
    );
    p.switch_wal();
    let want_app = fingerprints(p.cluster.port, "app");
    assert!(want_app.contains_key("public.after_base"));

    // Provenance in the commit records, shown by `backups --json`.
    let backups = p.setup.ctl_json(&["backups"]);
    let listed = backups.to_string();
    assert!(
        listed.contains(&head),
        "application version in backups --json: {listed}"
    );
    // `show RUN_ID` of the base backup: where it came from, for people and as JSON.
    let run_id = base_run["id"].as_i64().expect("run id").to_string();
    let system_id = p.cluster.psql(
        "postgres",
        "SELECT system_identifier FROM pg_control_system();",
    );
    let version_num: u32 = p
        .cluster
        .psql("postgres", "SHOW server_version_num;")
        .parse()
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let shown = p.setup.ctl_json(&["show", &run_id]);
    let prov = &shown["provenance"];
    assert_eq!(prov["host"].as_str(), Some(host.as_str()), "{shown}");
    assert_eq!(
        prov["bdc-backup-version"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "{shown}"
    );
    assert_eq!(prov["postgres-version"].as_u64(), Some(version_num.into()));
    assert_eq!(prov["system-identifier"].as_str(), Some(system_id.as_str()));
    assert_eq!(prov["application-version"].as_str(), Some(head.as_str()));
    let out = p.setup.ctl(&["show", &run_id]);
    assert!(out.status.success(), "{}", text(&out));
    let human = text(&out);
    for want in [
        format!("  host {host}\n"),
        format!("  bdc-backup {}\n", env!("CARGO_PKG_VERSION")),
        format!(
            "  PostgreSQL {}.{} ({version_num})\n",
            version_num / 10000,
            version_num % 10000
        ),
        format!("  system identifier {system_id}\n"),
        format!("  application version {head}\n"),
    ] {
        assert!(human.contains(&want), "show lacks {want:?}: {human}");
    }
    // The dump's run: the application version and the server version, no system identifier.
    let dump_run = p
        .setup
        .ctl_json(&["runs", "--job", "app-dump", "--limit", "1"])[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let shown = p.setup.ctl_json(&["show", &dump_run]);
    assert_eq!(
        shown["provenance"]["application-version"].as_str(),
        Some(head.as_str()),
        "{shown}"
    );
    assert_eq!(
        shown["provenance"]["postgres-version"].as_u64(),
        Some(version_num.into())
    );
    // One catalogue copy, deduplicated across the runs (unchanged catalogue).
    let copies: Vec<_> = std::fs::read_dir(dir.join("repo/catalogue"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        copies.iter().filter(|n| n.ends_with(".json")).count(),
        1,
        "{copies:?}"
    );
    // The identity is a secret: never in the copy.
    let key_text = std::fs::read_to_string(dir.join("restore.key")).unwrap();

    // The bare host: a fresh folder with a copy of the identity and nothing else.
    let fresh = tempfile::Builder::new()
        .prefix("bdc-dr-")
        .tempdir()
        .unwrap();
    let fresh = fresh.path().to_path_buf();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = fresh.join("restore.key");
    std::fs::write(&key, &key_text).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = format!("file://{}/repo", dir.display());
    let out_dir = fresh.join("dr");

    // Errors name what is at fault: a wrong identity, an empty repository.
    let wrong = fresh.join("wrong.key");
    assert!(
        ctl(&["keygen", "--output", wrong.to_str().unwrap()])
            .status
            .success()
    );
    let out = ctl(&bootstrap_args(&url, &wrong, &out_dir));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("wrong identity"), "{}", text(&out));
    let empty = fresh.join("empty-repo");
    std::fs::create_dir_all(&empty).unwrap();
    let out = ctl(&bootstrap_args(
        &format!("file://{}", empty.display()),
        &key,
        &out_dir,
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("holds no catalogue copy"),
        "{}",
        text(&out)
    );

    let out = ctl(&bootstrap_args(&url, &key, &out_dir));
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains(&head), "{report}");
    assert!(report.contains("PITR"), "{report}");
    assert!(
        report.contains("a secret"),
        "the identity is listed as not copied: {report}"
    );
    let recovered = std::fs::read_to_string(out_dir.join("catalogue.original.toml")).unwrap();
    assert_eq!(
        recovered,
        std::fs::read_to_string(p.setup.catalogue_path()).unwrap()
    );
    let copied_hba = out_dir
        .join("files")
        .join(etc.strip_prefix("/").unwrap())
        .join("pg_hba.conf");
    assert_eq!(
        std::fs::read(&copied_hba).unwrap(),
        std::fs::read(etc.join("pg_hba.conf")).unwrap()
    );
    assert!(
        !out_dir
            .join("files")
            .join(dir.strip_prefix("/").unwrap())
            .join("restore.key")
            .exists()
    );

    // Point the plan at a fresh port; the dump goes into the restored cluster; a hook that fails
    // until a flag file exists interrupts the run after the files step.
    let plan_path = out_dir.join("plan.toml");
    let mut plan: toml::Table =
        toml::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    assert_eq!(plan["application-version"].as_str(), Some(head.as_str()));
    let port = free_port();
    let flag = fresh.join("services-may-start");
    let steps = plan["step"].as_array_mut().unwrap();
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["config", "cluster", "database", "files"],
        "the seed's order"
    );
    for s in steps.iter_mut() {
        let s = s.as_table_mut().unwrap();
        match s["kind"].as_str().unwrap() {
            "cluster" => {
                s.insert("port".into(), (port as i64).into());
            }
            "database" => {
                s.insert(
                    "url".into(),
                    format!("postgresql://postgres@127.0.0.1:{port}/postgres").into(),
                );
                s.insert("into".into(), "app_from_dump".into());
            }
            _ => {}
        }
    }
    let mut hook = toml::Table::new();
    hook.insert("name".into(), "start services".into());
    hook.insert("kind".into(), "command".into());
    hook.insert(
        "command".into(),
        toml::Value::Array(vec![
            "test".into(),
            "-e".into(),
            flag.display().to_string().into(),
        ]),
    );
    hook.insert("timeout".into(), "30s".into());
    steps.push(hook.into());
    std::fs::write(&plan_path, toml::to_string(&plan).unwrap()).unwrap();
    // Taken before the folders are opened up for the postgres user (chmod a+rX).
    let want_tree = tree(&uploads);
    open_up(&dir);
    open_up(&fresh);
    let plan_s = plan_path.to_str().unwrap();

    let out = ctl(&["restore", "all", "--plan", plan_s, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let dry = text(&out);
    assert!(
        dry.contains("[2/5] cluster base: cluster base backup"),
        "{dry}"
    );
    assert!(dry.contains("nothing written"), "{dry}");
    // Each restore step: from where, to where, its size, an estimate and its basis — the drill
    // for the drilled job, "no drill recorded" (and the fallback rate) for the others.
    let line = |prefix: &str| {
        dry.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix}: {dry}"))
            .to_string()
    };
    let files_line = line("[4/5] files uploads: files uploads backup");
    assert!(files_line.contains("from `local` (file://"), "{files_line}");
    assert!(files_line.contains("stored, about "), "{files_line}");
    assert!(
        files_line.contains("(from drill run ") && files_line.contains(" MiB/s"),
        "{files_line}"
    );
    let cluster_line = line("[2/5] cluster base:");
    assert!(
        cluster_line.contains(&format!(
            "to {} (port {port})",
            fresh.join("dr/restore/pgdata/base").display()
        )),
        "{cluster_line}"
    );
    assert!(
        cluster_line.contains("(no drill recorded for `base` in ")
            && cluster_line.ends_with(": estimate at 50 MiB/s)"),
        "{cluster_line}"
    );
    assert!(
        line("[3/5] database app-dump:").contains("database `app_from_dump` on postgresql://"),
        "{dry}"
    );

    // Piped into `head -1`: a quiet end, exit 0.
    ctl_into_closed_pipes(&["restore", "all", "--plan", plan_s, "--dry-run"]);
    ctl_into_closed_pipes(&bootstrap_args(&url, &key, &fresh.join("dr-piped")));

    // As the postgres user: an identity it cannot read, an output folder it cannot write are
    // named; with its own identity and folder, bootstrap and the dry run work.
    let root_key = fresh.join("root-only.key");
    std::fs::write(&root_key, &key_text).unwrap();
    std::fs::set_permissions(&root_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pg_out = fresh.join("pg-home/dr");
    let out = ctl_as_postgres(&bootstrap_args(&url, &root_key, &pg_out));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("--identity {}: ", root_key.display()))
            && text(&out).contains("Permission denied")
            && text(&out).contains("user `postgres`"),
        "{}",
        text(&out)
    );
    let out = ctl_as_postgres(&bootstrap_args(&url, &key, &pg_out));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "--output {}: cannot write there as user `postgres`: Permission denied",
            pg_out.display()
        )),
        "{}",
        text(&out)
    );
    std::fs::create_dir_all(fresh.join("pg-home")).unwrap();
    let st = Command::new("chown")
        .arg("postgres")
        .arg(fresh.join("pg-home"))
        .status()
        .unwrap();
    assert!(st.success());
    let out = ctl_as_postgres(&bootstrap_args(&url, &key, &pg_out));
    assert!(out.status.success(), "{}", text(&out));
    let pg_plan = pg_out.join("plan.toml");
    let out = ctl_as_postgres(&[
        "restore",
        "all",
        "--plan",
        pg_plan.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let pg_dry = String::from_utf8_lossy(&out.stdout).to_string();
    let steps: Vec<&str> = pg_dry.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(steps.len(), 4, "{pg_dry}");
    for l in steps {
        assert!(
            l.contains(" stored, about ")
                && (l.contains("(from drill run ") || l.contains("(no drill recorded")),
            "{l}"
        );
    }
    // Its audit rows beside its plan, as the postgres user's.
    assert!(pg_out.join("offline-audit.jsonl").exists());
    assert!(
        !fresh.join("dr/restore").exists(),
        "a dry run writes nothing"
    );

    // First run: stops at the hook, naming it.
    let out = ctl(&["restore", "all", "--plan", plan_s]);
    let first = text(&out);
    assert_eq!(out.status.code(), Some(1), "{first}");
    assert!(
        first.contains("step 5 \"start services\" failed"),
        "{first}"
    );
    let progress = std::fs::read_to_string(format!("{plan_s}.progress")).unwrap();
    assert_eq!(progress.lines().count(), 4, "{progress}");
    // Without --resume it refuses to start over silently.
    let out = ctl(&["restore", "all", "--plan", plan_s]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--resume"));

    std::fs::write(&flag, "").unwrap();
    let out = ctl(&["restore", "all", "--plan", plan_s, "--resume"]);
    let second = text(&out);
    assert!(out.status.success(), "{second}");
    assert_eq!(
        second.matches("done in an earlier run, skipped").count(),
        4,
        "{second}"
    );
    let progress2 = std::fs::read_to_string(format!("{plan_s}.progress")).unwrap();
    assert!(
        progress2.starts_with(&progress),
        "finished steps are not rewritten"
    );
    assert_eq!(progress2.lines().count(), 5);

    // No daemon took the audit rows: they are beside the plan (dry run, the failed run, the
    // refused one, the resumed one), not in the home folder.
    let audit = std::fs::read_to_string(out_dir.join("offline-audit.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter().filter(|r| r["action"] == "restore all").count() >= 4,
        "{audit}"
    );
    assert!(
        rows.iter().any(|r| r["result"] == "ok"
            && r["detail"]
                .as_str()
                .unwrap()
                .ends_with(&format!("plan {plan_s} resume"))),
        "{audit}"
    );
    assert!(
        !home().join(".local/state/bdc-backup").exists(),
        "nothing in the home folder"
    );

    // The database, table by table: the PITR cluster and the dump restored into it.
    let restored = common::physical::Restored {
        dir: fresh.join("dr/restore/pgdata/base"),
        port,
    };
    assert_eq!(fingerprints(port, "app"), want_app);
    let mut from_dump = fingerprints(port, "app_from_dump");
    let mut want_dump = want_app.clone();
    want_dump.remove("public.after_base");
    from_dump.remove("public.after_base");
    assert_eq!(from_dump, want_dump);
    assert_eq!(
        psql_port(port, "app", "SELECT pg_is_in_recovery();").unwrap(),
        "f"
    );
    // The tree, file by file.
    let target = fresh
        .join("dr/restore/files")
        .join(uploads.strip_prefix("/").unwrap());
    assert_eq!(tree(&target), want_tree);
    // The config files, byte by byte, beneath the config target.
    let cfg = fresh
        .join("dr/restore/config/etc")
        .join(etc.strip_prefix("/").unwrap());
    for f in ["pg_hba.conf", "app.env"] {
        assert_eq!(
            std::fs::read(cfg.join(f)).unwrap(),
            std::fs::read(etc.join(f)).unwrap(),
            "{f}"
        );
    }
    drop(restored);
}

#[test]
fn bootstrap_from_an_s3_repository_and_restore_its_files() {
    let moto = Moto::start();
    moto.create_bucket("bdc-dr");
    let setup = Setup::new();
    let creds = credentials_file(
        setup.dir.path(),
        "s3.env",
        &[
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ],
    );
    let src = setup.path("uploads");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    std::fs::write(src.join("docs/readme.txt"), "hello from s3\n").unwrap();
    std::fs::write(src.join("data.bin"), vec![3u8; 70_000]).unwrap();
    std::fs::set_permissions(src.join("data.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("docs/readme.txt", src.join("latest")).unwrap();
    setup.write_catalogue(&format!(
        r#"
[repository.offsite]
url = "s3://bdc-dr/prod"
region = "us-east-1"
endpoint = "{endpoint}"
credentials-file = "{creds}"

[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
repositories = ["offsite"]
"#,
        endpoint = moto.endpoint(),
        creds = creds.display(),
        src = src.display(),
    ));
    let daemon = setup.start_daemon();
    let out = setup.ctl(&["run", "uploads", "--wait"]);
    assert!(out.status.success(), "{}", daemon.log_text());
    let want = tree(&src);

    // The bare host: the URL, the endpoint, a credentials file and the identity.
    let fresh = tempfile::Builder::new()
        .prefix("bdc-dr-s3-")
        .tempdir()
        .unwrap();
    let key = fresh.path().join("restore.key");
    std::fs::copy(setup.path("restore.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let fresh_creds = fresh.path().join("s3.env");
    std::fs::copy(&creds, &fresh_creds).unwrap();
    let out_dir = fresh.path().join("dr");
    let endpoint = moto.endpoint();
    let args = [
        "bootstrap",
        "--repository",
        "s3://bdc-dr/prod",
        "--region",
        "us-east-1",
        "--endpoint",
        &endpoint,
        "--credentials-file",
        fresh_creds.to_str().unwrap(),
        "--identity",
        key.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
    ];
    let out = ctl(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("uploads"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("catalogue.original.toml")).unwrap(),
        std::fs::read_to_string(setup.catalogue_path()).unwrap()
    );
    let rewritten = std::fs::read_to_string(out_dir.join("catalogue.toml")).unwrap();
    assert!(
        rewritten.contains(&fresh_creds.display().to_string()),
        "the credentials point at this host's file: {rewritten}"
    );
    // The plan's one files step, run from the recovered catalogue against S3.
    let plan = out_dir.join("plan.toml");
    let plan_s = plan.to_str().unwrap();
    let out = ctl(&["restore", "all", "--plan", plan_s, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("from `offsite` (s3://bdc-dr/prod)"),
        "{}",
        text(&out)
    );
    let out = ctl(&["restore", "all", "--plan", plan_s]);
    assert!(out.status.success(), "{}", text(&out));
    let target = out_dir
        .join("restore/files")
        .join(src.strip_prefix("/").unwrap());
    assert_eq!(tree(&target), want);
    drop(daemon);
}
