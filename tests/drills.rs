//! Restore drills (`bdc_backup::verify::drill`) on real backups made by the daemon: a dump, a
//! base backup with an incremental, a files and a config backup each pass their drill with the
//! restore time measured and leave nothing behind (`pg_database`, the scratch directory, the
//! process list); failing and erroring SQL checks, a changed live file, a too small scratch file
//! system and a cancel fail with the cause named and leave nothing behind; a drill cluster
//! cannot archive; leftovers of a killed drill are removed by `remove_leftovers`.

mod common;
use common::tmpfs::Tmpfs;

use bdc_backup::catalogue::Catalogue;
use bdc_backup::model::JobKindName;
use bdc_backup::restore::{Choice, RestoreSource};
use bdc_backup::verify::check::{
    Check, CheckKind, CheckResult, DrillSettings, SqlCheck, SqlExpect,
};
use bdc_backup::verify::drill::{self, DrillOutcome, DrillRequest};
use common::daemon::{Setup, wait_for};
use common::pg::{PgCluster, pg_bin};
use common::physical::{Physical, open_up};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn settings(scratch: &Path, checks: Vec<SqlCheck>) -> DrillSettings {
    DrillSettings {
        scratch_directory: scratch.to_path_buf(),
        drill_url: None,
        files_sample: 100,
        checks,
    }
}

fn sql_check(job: &str, name: &str, sql: &str, expect: SqlExpect) -> SqlCheck {
    SqlCheck {
        job: job.into(),
        database: None,
        name: Some(name.into()),
        sql: sql.into(),
        expect,
    }
}

/// Runs the drill of `job`'s newest backup (repository `local`).
async fn drill_job(
    catalogue: &Catalogue,
    job: &str,
    kind: JobKindName,
    settings: &DrillSettings,
    run_id: i64,
    cancel: CancellationToken,
) -> DrillOutcome {
    let job = catalogue.job(job).expect("job");
    let source = RestoreSource::open(catalogue, job, None, &[kind])
        .await
        .expect("open the repository");
    let backup = source.choose(Choice::Newest).expect("a backup").clone();
    drill::run(DrillRequest {
        catalogue,
        job,
        source: &source,
        backup: &backup,
        settings,
        run_id,
        cancel,
        recorder: None,
    })
    .await
}

fn find<'a>(out: &'a DrillOutcome, name: &str) -> &'a Check {
    out.checks
        .iter()
        .find(|c| c.name.contains(name))
        .unwrap_or_else(|| panic!("no check named {name}: {:#?}", out.checks))
}

fn all_pass(out: &DrillOutcome) {
    for c in &out.checks {
        assert_eq!(c.result, CheckResult::Pass, "{c:#?}\n{:#?}", out.checks);
    }
}

/// Nothing under the scratch directory, no process working in it or naming it.
fn nothing_left(scratch: &Path) {
    let left: Vec<_> = std::fs::read_dir(scratch)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the scratch directory: {left:?}");
    let scratch_s = scratch.display().to_string();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = p.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cwd = std::fs::read_link(p.path().join("cwd")).unwrap_or_default();
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cwd.starts_with(scratch) && !cmdline.contains(&scratch_s),
            "process {pid} still runs in the scratch directory: {cmdline}"
        );
        assert!(
            !cmdline.contains("bdc_drill_"),
            "process {pid} still works on a drill database: {cmdline}"
        );
    }
}

fn drill_databases(cluster: &PgCluster) -> String {
    cluster.psql(
        "postgres",
        "SELECT string_agg(datname, ',') FROM pg_database WHERE datname LIKE 'bdc\\_drill\\_%';",
    )
}

fn dump_setup(extra: &str) -> (PgCluster, Setup) {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.load_sample("app", 2);
    cluster.load_extras("app");
    let setup = Setup::new();
    setup.write_catalogue(&format!(
        r#"{dump}compression-workers = 2
{extra}
"#,
        dump = common::catalogue::dump_job(&cluster.url("app"))
    ));
    let daemon = setup.start_daemon();
    let out = setup.ctl(&["run", "db-dump", "--wait"]);
    assert!(out.status.success(), "{}", daemon.log_text());
    daemon.stop();
    (cluster, setup)
}

#[test]
fn a_dump_drill_restores_checks_measures_and_drops_its_database() {
    let (cluster, setup) = dump_setup("");
    let catalogue = Catalogue::load(&setup.catalogue_path()).unwrap();
    let scratch = setup.path("drills");
    let checks = vec![
        sql_check(
            "db-dump",
            "users present",
            "SELECT count(*) FROM users",
            SqlExpect {
                min: Some(1.0),
                ..Default::default()
            },
        ),
        sql_check(
            "db-dump",
            "programs as live",
            "SELECT count(*) FROM programs",
            SqlExpect {
                compare_with_source: true,
                ..Default::default()
            },
        ),
        sql_check(
            "db-dump",
            "no users expected",
            "SELECT count(*) FROM users",
            SqlExpect {
                max: Some(0.0),
                ..Default::default()
            },
        ),
        sql_check(
            "db-dump",
            "a broken query",
            "SELECT count(*) FROM no_such_table",
            SqlExpect::default(),
        ),
        // Another job's check is not run by this drill.
        sql_check("other", "not mine", "SELECT 1/0", SqlExpect::default()),
    ];
    let s = settings(&scratch, checks);
    let out = runtime().block_on(drill_job(
        &catalogue,
        "db-dump",
        JobKindName::PostgresDump,
        &s,
        12,
        CancellationToken::new(),
    ));
    eprintln!("{:#?}", out);
    let restore = find(&out, "restore of `app` into bdc_drill_db_dump_12");
    assert_eq!(restore.kind, CheckKind::Drill);
    assert_eq!(restore.result, CheckResult::Pass, "{restore:#?}");
    let globals = find(&out, "globals");
    assert_eq!(globals.result, CheckResult::Pass, "{globals:#?}");
    assert!(globals.detail.contains("roles, complete"), "{globals:#?}");
    let users = cluster.psql("app", "SELECT count(*) FROM users");
    let c = find(&out, "users present");
    assert_eq!(
        (c.kind, c.result, c.detail.clone()),
        (
            CheckKind::Sql,
            CheckResult::Pass,
            format!("value `{users}`")
        )
    );
    assert_eq!(find(&out, "programs as live").result, CheckResult::Pass);
    let c = find(&out, "no users expected");
    assert_eq!(c.result, CheckResult::Fail);
    assert!(
        c.detail.contains(&format!("{users} is above max 0")),
        "{c:#?}"
    );
    let c = find(&out, "a broken query");
    assert_eq!(c.result, CheckResult::Fail);
    assert!(
        c.detail.contains("SELECT count(*) FROM no_such_table")
            && c.detail
                .contains("relation \"no_such_table\" does not exist"),
        "{c:#?}"
    );
    assert!(!out.checks.iter().any(|c| c.name == "not mine"));
    assert!(out.restore_seconds.is_some_and(|s| s > 0.0), "{out:#?}");
    assert!(out.backup_bytes > 0);
    assert_eq!(drill_databases(&cluster), "");
    nothing_left(&scratch);
}

#[test]
fn a_cancelled_dump_drill_and_a_too_small_scratch_file_system_leave_nothing() {
    let (cluster, setup) = dump_setup("");
    let catalogue = Catalogue::load(&setup.catalogue_path()).unwrap();
    let rt = runtime();

    // Cancelled once its database exists.
    let scratch = setup.path("drills");
    let s = settings(&scratch, Vec::new());
    let cancel = CancellationToken::new();
    let out = rt.block_on(async {
        let c = cancel.clone();
        let url = cluster.url("postgres");
        let watcher = tokio::spawn(async move {
            loop {
                let url = url.clone();
                let n = tokio::task::spawn_blocking(move || {
                    let out = Command::new(pg_bin().join("psql"))
                        .args(["-X", "-A", "-t", "-d", &url, "-c"])
                        .arg(
                            "SELECT count(*) FROM pg_database WHERE datname LIKE 'bdc\\_drill\\_%'",
                        )
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                })
                .await
                .unwrap();
                if n == "1" {
                    c.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let out = drill_job(
            &catalogue,
            "db-dump",
            JobKindName::PostgresDump,
            &s,
            13,
            cancel.clone(),
        )
        .await;
        watcher.abort();
        out
    });
    eprintln!("{out:#?}");
    // The watcher may see the database only once the restore is done: then the drill simply
    // finished; either way nothing is left.
    if let Some(c) = out.checks.iter().find(|c| c.detail.contains("cancelled")) {
        assert_eq!(c.result, CheckResult::Fail);
        assert!(out.restore_seconds.is_none());
    }
    assert_eq!(drill_databases(&cluster), "");
    nothing_left(&scratch);

    // A 16 KiB tmpfs: refused before anything is restored.
    let tiny = setup.path("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&tiny)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs (tests run as root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(tiny.clone());
    let s = settings(&tiny, Vec::new());
    let out = rt.block_on(drill_job(
        &catalogue,
        "db-dump",
        JobKindName::PostgresDump,
        &s,
        14,
        CancellationToken::new(),
    ));
    let c = find(&out, "dump drill");
    assert_eq!(c.result, CheckResult::Fail);
    assert!(
        c.detail.contains("not enough free space")
            && c.detail.contains(&tiny.display().to_string()),
        "{c:#?}"
    );
    assert!(out.restore_seconds.is_none());
    assert_eq!(drill_databases(&cluster), "");
    nothing_left(&tiny);
}

/// `.history` files in the WAL archive.
fn history_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(history_files(&p));
            } else if p.to_string_lossy().contains(".history") {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_cluster_drill_of_a_base_and_incremental_recovers_checks_and_cannot_archive() {
    let p = Physical::start("60s");
    p.cluster.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    );
    p.backup("--full");
    p.cluster.psql(
        "postgres",
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1001, 1500) g;",
    );
    p.backup("--incremental");
    p.cluster.psql(
        "postgres",
        "INSERT INTO t VALUES (1501, 'after the backup');",
    );
    p.switch_wal();
    open_up(p.setup.dir.path());
    let archive_before = history_files(&p.setup.path("repo"));
    let catalogue = Catalogue::load(&p.setup.catalogue_path()).unwrap();
    let scratch = p.setup.path("drills");
    let s = settings(
        &scratch,
        vec![sql_check(
            "base",
            "rows up to the archive's end",
            "SELECT count(*) FROM t",
            SqlExpect {
                equals: Some("1501".into()),
                ..Default::default()
            },
        )],
    );
    // Read the drill cluster's postgresql.auto.conf while it runs.
    let auto_conf = scratch.join("drill-base-21/data/postgresql.auto.conf");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, stop, auto_conf) = (seen.clone(), stop.clone(), auto_conf.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(&auto_conf)
                    && text.contains("bdc-backup restore cluster")
                {
                    *seen.lock().unwrap() = text;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = runtime().block_on(drill_job(
        &catalogue,
        "base",
        JobKindName::PostgresBase,
        &s,
        21,
        CancellationToken::new(),
    ));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    eprintln!("{out:#?}");
    all_pass(&out);
    let restore = find(&out, "cluster restore and recovery");
    assert!(
        restore.detail.contains(" <- "),
        "a chain of two: {restore:#?}"
    );
    assert!(
        out.checks
            .iter()
            .filter(|c| c.kind == CheckKind::Amcheck)
            .count()
            >= 2,
        "pg_amcheck on postgres and template1: {:#?}",
        out.checks
    );
    assert_eq!(
        find(&out, "rows up to the archive's end").detail,
        "value `1501`"
    );
    assert!(out.restore_seconds.is_some_and(|s| s > 0.0));
    assert!(out.backup_bytes > 0);

    let conf = seen.lock().unwrap().clone();
    for line in [
        "archive_mode = 'off'",
        "archive_command = ''",
        "listen_addresses = ''",
        "unix_socket_directories = '",
    ] {
        assert!(
            conf.contains(line),
            "{line} in postgresql.auto.conf:\n{conf}"
        );
    }
    assert!(
        !conf.contains(&format!("port = {}", p.cluster.port)),
        "{conf}"
    );
    // The drill promoted (a new timeline) but archived nothing: no new .history.
    p.switch_wal();
    assert_eq!(history_files(&p.setup.path("repo")), archive_before);
    nothing_left(&scratch);
}

#[test]
fn files_and_config_drills_compare_the_sample_with_the_manifest_and_the_live_tree() {
    let setup = Setup::new();
    let src = setup.path("uploads");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    for i in 0..30 {
        let dir = if i % 3 == 0 {
            src.join("a/b")
        } else {
            src.join("a")
        };
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            format!("file {i} ").repeat(i + 1),
        )
        .unwrap();
    }
    let etc = setup.path("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("app.conf"), "listen = 1\n").unwrap();
    std::fs::write(etc.join("db.conf"), "pool = 5\n").unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{src}"
full = "0 4 * * 0"
repositories = ["local"]

[[job]]
name = "config"
kind = "config"
paths = ["{etc}/*.conf"]
schedule = "0 4 * * *"
repositories = ["local"]
"#,
        src = src.display(),
        etc = etc.display()
    ));
    let daemon = setup.start_daemon();
    for job in ["uploads", "config"] {
        assert!(
            setup.ctl(&["run", job, "--wait"]).status.success(),
            "{}",
            daemon.log_text()
        );
    }
    daemon.stop();
    // One more live file than in the backup.
    std::fs::write(src.join("new.txt"), "new").unwrap();
    let catalogue = Catalogue::load(&setup.catalogue_path()).unwrap();
    let scratch = setup.path("drills");
    let s = settings(&scratch, Vec::new());
    let rt = runtime();
    let out = rt.block_on(drill_job(
        &catalogue,
        "uploads",
        JobKindName::Files,
        &s,
        31,
        CancellationToken::new(),
    ));
    eprintln!("{out:#?}");
    all_pass(&out);
    let sample = find(&out, "sample of 30 files");
    assert_eq!(sample.kind, CheckKind::Sample);
    assert!(
        sample
            .detail
            .contains("30 of them also the unchanged live file")
            && sample
                .detail
                .contains("the backup holds 30 files, the live tree now 31 (+1)"),
        "{sample:#?}"
    );
    assert!(out.restore_seconds.is_some());
    nothing_left(&scratch);

    let out = rt.block_on(drill_job(
        &catalogue,
        "config",
        JobKindName::Config,
        &s,
        32,
        CancellationToken::new(),
    ));
    eprintln!("{out:#?}");
    all_pass(&out);
    assert!(
        find(&out, "sample of 2 files")
            .detail
            .contains("the backup holds 2 files, the live tree now 2 (+0)")
    );
    nothing_left(&scratch);

    // A live file changed behind our back (same size, same mtime): named.
    let victim = src.join("a/f1.txt");
    let meta = std::fs::metadata(&victim).unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&victim, &bytes).unwrap();
    let mtime = meta.modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let out = rt.block_on(drill_job(
        &catalogue,
        "uploads",
        JobKindName::Files,
        &s,
        33,
        CancellationToken::new(),
    ));
    let sample = find(&out, "sample of 30 files");
    assert_eq!(sample.result, CheckResult::Fail, "{sample:#?}");
    assert!(
        sample
            .detail
            .contains("a/f1.txt: differs from the live file"),
        "{sample:#?}"
    );
    nothing_left(&scratch);
}

#[test]
fn leftovers_of_a_killed_drill_are_removed() {
    let (cluster, setup) = dump_setup("");
    let catalogue = Catalogue::load(&setup.catalogue_path()).unwrap();
    let scratch = setup.path("drills");
    // What a daemon killed mid-drill leaves: a drill database, a drill folder with a running
    // cluster (no TCP listener, its socket inside), and an empty drill folder.
    cluster.create_database("bdc_drill_db_dump_77");
    let folder = scratch.join("drill-base-78");
    let data = folder.join("data");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::create_dir_all(scratch.join("drill-uploads-79/files")).unwrap();
    std::fs::create_dir_all(scratch.join("not-a-drill")).unwrap();
    let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    nix::unistd::chown(&folder, Some(pg.uid), Some(pg.gid)).unwrap();
    let as_postgres = |tool: &str| {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin().join(tool));
        c.stdout(Stdio::null());
        c
    };
    assert!(
        as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres"])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(folder.join("log"))
            .arg("-o")
            .arg(format!(
                "-c listen_addresses='' -c unix_socket_directories='{}' -p 5999",
                folder.display()
            ))
            .args(["-w", "start"])
            .status()
            .unwrap()
            .success()
    );
    let pid: i32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let s = settings(&scratch, Vec::new());
    let removed = runtime().block_on(drill::remove_leftovers(&catalogue, &s));
    eprintln!("{removed:#?}");
    let text = removed.join("\n");
    assert!(
        text.contains(&format!("stopped the drill cluster (postmaster pid {pid})")),
        "{text}"
    );
    assert!(
        text.contains("drill-base-78") && text.contains("drill-uploads-79"),
        "{text}"
    );
    assert!(
        text.contains("dropped the database `bdc_drill_db_dump_77`"),
        "{text}"
    );
    assert!(!text.contains("not-a-drill"));
    wait_for(
        Duration::from_secs(30),
        "the leftover postmaster gone",
        || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()),
    );
    assert_eq!(drill_databases(&cluster), "");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(left, vec!["not-a-drill".to_string()]);
}

#[test]
fn a_cluster_drill_whose_scratch_file_system_fills_up_fails_naming_it_and_leaves_nothing() {
    let p = Physical::start("60s");
    p.cluster.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 300000) g;",
    );
    p.backup("--full");
    p.switch_wal();
    open_up(p.setup.dir.path());
    let catalogue = Catalogue::load(&p.setup.catalogue_path()).unwrap();
    let rt = runtime();
    // What the free-space check asks for: the chain's restored size.
    let need: u64 = rt.block_on(async {
        let job = catalogue.job("base").unwrap();
        let source = RestoreSource::open(&catalogue, job, None, &[JobKindName::PostgresBase])
            .await
            .unwrap();
        let chain = source.resolve(Choice::Newest).unwrap();
        chain.objects().values().map(|o| o.content_size).sum()
    });
    assert!(need > 20 << 20, "{need} bytes to restore");
    // The free-space check passes (1 MiB more than the chain's restored size is free), but the
    // restore needs more than that (file system blocks, the WAL recovery replays): it runs into
    // the full disk while writing.
    let scratch = p.setup.path("scratch");
    let tmpfs = Tmpfs::mount(&scratch, &format!("{}k", need / 1024 + 96 * 1024));
    let free = || {
        let st = nix::sys::statvfs::statvfs(&scratch).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    };
    let filled = tmpfs.dir.join("filler");
    std::fs::write(&filled, vec![0x55u8; (free() - need - (1 << 20)) as usize]).unwrap();
    assert!(
        free() >= need && free() < need + (2 << 20),
        "{} free",
        free()
    );
    let s = settings(&scratch, Vec::new());
    let out = rt.block_on(drill_job(
        &catalogue,
        "base",
        JobKindName::PostgresBase,
        &s,
        41,
        CancellationToken::new(),
    ));
    eprintln!("{out:#?}");
    let c = find(&out, "cluster restore and recovery");
    assert_eq!(c.result, CheckResult::Fail, "{c:#?}");
    assert!(
        c.detail.contains(&scratch.display().to_string())
            && c.detail.to_lowercase().contains("no space"),
        "the failure names the scratch path and the full disk: {c:#?}"
    );
    assert!(
        !c.detail.contains("not enough free space"),
        "the write failed, not the free-space check: {c:#?}"
    );
    assert!(out.restore_seconds.is_none());
    // The scratch cluster's folder is gone (the filler is the test's).
    std::fs::remove_file(&filled).unwrap();
    nothing_left(&scratch);
    // Production untouched.
    assert_eq!(
        p.cluster.psql("postgres", "SELECT count(*) FROM t"),
        "300000"
    );
    // With the space back, the next drill passes in the same file system.
    let out = rt.block_on(drill_job(
        &catalogue,
        "base",
        JobKindName::PostgresBase,
        &s,
        42,
        CancellationToken::new(),
    ));
    eprintln!("{out:#?}");
    all_pass(&out);
    nothing_left(&scratch);
}

/// Runs `pg_ctl ARGS` or `pg_checksums ARGS` (`tool`) on `data` as the postgres OS user.
fn as_postgres(tool: &str, data: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin().join(tool))
        .arg("-D")
        .arg(data)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_cluster_drill_of_a_backup_with_a_corrupted_index_fails_with_pg_amcheck_s_finding() {
    let p = Physical::start("60s");
    p.cluster.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         VACUUM ANALYZE t; CHECKPOINT;",
    );
    let relation = p
        .cluster
        .psql("postgres", "SELECT pg_relation_filepath('t_pkey')");
    let data = p.cluster.data_dir();
    // Real corruption: stop the cluster cleanly, turn data checksums off (so PostgreSQL reads
    // the damaged page instead of refusing it), zero 64 bytes in the middle of leaf page 2 of the
    // primary key's btree (index tuples live there), start it again.
    as_postgres("pg_ctl", &data, &["-m", "fast", "-w", "stop"]);
    as_postgres("pg_checksums", &data, &["--disable"]);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::options()
            .write(true)
            .open(data.join(&relation))
            .unwrap();
        f.seek(SeekFrom::Start(2 * 8192 + 4096)).unwrap();
        f.write_all(&[0u8; 64]).unwrap();
    }
    let log = p.cluster.dir().join("server.log");
    as_postgres(
        "pg_ctl",
        &data,
        &["-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
    );
    let seq = "SET enable_indexscan = off; SET enable_indexonlyscan = off; \
               SET enable_bitmapscan = off; SELECT count(*) FROM t;";
    assert_eq!(p.cluster.psql("postgres", seq), "20000");
    // The base backup after that carries the damaged page (its stored hashes are of it).
    p.backup("--full");
    p.switch_wal();
    let scratch = p.setup.path("drills");
    let events = p.setup.path("events.log");
    let catalogue = p.setup.catalogue_path();
    let mut text = std::fs::read_to_string(&catalogue).unwrap();
    text.push_str(&format!(
        r#"
[[job]]
name = "nightly"
kind = "verify"
schedule = "0 5 * * *"
jobs = ["base"]
integrity = "off"
scratch-directory = "{scratch}"

[[alert]]
name = "pager"
kind = "command"
command = ["/bin/sh", "-c", "printf '%s %s\n' \"$BDC_EVENT\" \"$BDC_JOB\" >> '{events}'"]
events = ["verify-failed"]
"#,
        scratch = scratch.display(),
        events = events.display(),
    ));
    std::fs::write(&catalogue, text).unwrap();
    assert!(p.setup.ctl(&["reload"]).status.success());
    open_up(p.setup.dir.path());

    let out = p.setup.ctl(&[
        "--json",
        "verify",
        "--wait",
        "--job",
        "base",
        "--drill-only",
    ]);
    let detail: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(out.status.code(), Some(1), "{detail:#}\n{}", p.daemon_log());
    let checks = detail["checks"].as_array().cloned().unwrap_or_default();
    assert!(
        checks.iter().any(|c| c["kind"] == "drill"
            && c["name"] == "cluster restore and recovery"
            && c["result"] == "pass"),
        "the restore itself worked: {detail:#}"
    );
    let finding = checks
        .iter()
        .find(|c| c["kind"] == "amcheck" && c["result"] == "fail")
        .unwrap_or_else(|| panic!("no failed pg_amcheck check: {detail:#}"));
    let why = finding["detail"].as_str().unwrap();
    assert!(
        why.contains("corruption in `postgres`") && why.contains("t_pkey"),
        "pg_amcheck's finding named: {why}"
    );
    assert_eq!(detail["run"]["status"], "failed");
    assert!(
        detail["run"]["error"].as_str().unwrap().contains("t_pkey"),
        "{detail:#}"
    );
    // `status`: the last drill failed, the newest backup is not proven.
    let status = p.setup.ctl(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    let line = status
        .lines()
        .find(|l| l.contains("base: last drill"))
        .unwrap_or_else(|| panic!("no drill line for base: {status}"));
    assert!(
        line.contains(" fail (restore") && line.contains("newest backup proven by a drill: no"),
        "{line}"
    );
    // The verify-failed event, once.
    wait_for(Duration::from_secs(120), "the verify-failed event", || {
        std::fs::read_to_string(&events)
            .ok()
            .filter(|t| t.contains("verify-failed nightly"))
    });
    nothing_left(&scratch);
    assert_eq!(p.cluster.psql("postgres", seq), "20000");
}

/// The benchmark's driver (tests/bench-drills): one drill of `BDC_BENCH_JOB` (kind
/// `BDC_BENCH_KIND`: postgres-dump or postgres-base) on the catalogue `BDC_BENCH_CATALOGUE`,
/// scratch directory `BDC_BENCH_SCRATCH`; prints one JSON line with the wall time, the measured
/// restore time and the pg_amcheck time. Run only by the script.
#[test]
#[ignore]
fn bench_drill() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let catalogue = Catalogue::load(Path::new(&env("BDC_BENCH_CATALOGUE"))).unwrap();
    let kind = match env("BDC_BENCH_KIND").as_str() {
        "postgres-base" => JobKindName::PostgresBase,
        _ => JobKindName::PostgresDump,
    };
    let s = settings(Path::new(&env("BDC_BENCH_SCRATCH")), Vec::new());
    let t = std::time::Instant::now();
    let out = runtime().block_on(drill_job(
        &catalogue,
        &env("BDC_BENCH_JOB"),
        kind,
        &s,
        1,
        CancellationToken::new(),
    ));
    let wall = t.elapsed().as_secs_f64();
    all_pass(&out);
    let amcheck: f64 = out
        .checks
        .iter()
        .filter(|c| c.kind == CheckKind::Amcheck)
        .map(|c| c.seconds)
        .sum();
    println!(
        "BENCH {}",
        serde_json::json!({
            "wall": wall,
            "restore": out.restore_seconds,
            "amcheck": amcheck,
            "bytes": out.backup_bytes,
        })
    );
}
