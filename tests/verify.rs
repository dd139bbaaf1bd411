//! Verify runs through the real daemon and ctl, on real backups (a PostgreSQL dump, a base
//! backup with an incremental chain and archived WAL, files and config snapshots): `integrity =
//! "full"` passes on good backups; real damage (a flipped byte in a dump object, a snapshot part,
//! a block-incremental object, a WAL object; a deleted WAL segment; a wrong identity) fails the
//! run with the cause named in `show`; `sample` reads every object exactly once per cycle (counted
//! in the state DB); `verify --wait` exit codes, and offline `verify --wait` without the daemon.

mod common;

use common::daemon::Setup;
use common::output::text;
use common::pg::PgCluster;
use common::physical::Physical;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Every file under `dir` whose path contains `part`, sorted.
fn files_under(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(part) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Flips one byte in the middle of `path`; returns the original bytes (to put them back).
fn flip_byte(path: &Path) -> Vec<u8> {
    let original = std::fs::read(path).expect("read object");
    let mut damaged = original.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x40;
    std::fs::write(path, &damaged).expect("write object");
    original
}

/// `verify --wait --json ARGS`: the exit code and the printed run detail.
fn verify(setup: &Setup, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["--json", "verify", "--wait"];
    all.extend_from_slice(args);
    let out = setup.ctl(&all);
    let detail: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), detail)
}

fn checks(detail: &Value) -> Vec<Value> {
    detail["checks"].as_array().cloned().unwrap_or_default()
}

fn failed(detail: &Value) -> Vec<Value> {
    checks(detail)
        .into_iter()
        .filter(|c| c["result"] == "fail")
        .collect()
}

/// `show RUN --json` of the newest run of `job`.
fn show_last(setup: &Setup, job: &str) -> Value {
    let run = setup.ctl_json(&["runs", "--job", job, "--limit", "1"])[0].clone();
    let id = run["id"].as_i64().expect("a run id").to_string();
    setup.ctl_json(&["show", &id])
}

fn run_ok(setup: &Setup, job: &str, extra: &[&str]) {
    let mut args = vec!["run", job, "--wait"];
    args.extend_from_slice(extra);
    let out = setup.ctl(&args);
    assert!(out.status.success(), "run {job} failed");
}

/// A cluster with the sample data, a dump job, a files job and a config job, the verify job
/// `check` (integrity full, no drills) and `drill` (drills only, for the dump).
fn dump_files_config(setup: &Setup) -> PgCluster {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.load_sample("app", 2);
    let uploads = setup.path("uploads");
    std::fs::create_dir_all(uploads.join("2026")).unwrap();
    let mut x: u32 = 99;
    let blob: Vec<u8> = (0..400_000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(uploads.join("2026/scan.pdf"), &blob).unwrap();
    std::fs::write(uploads.join("readme.txt"), b"uploads\n").unwrap();
    let config = setup.path("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("app.env"), b"APP_ENV=production\n").unwrap();
    std::fs::write(config.join("nginx.conf"), b"server { listen 80; }\n").unwrap();
    setup.write_catalogue(&format!(
        r#"{dump}{files_job}
[[job]]
name = "config"
kind = "config"
paths = ["{config}/app.env", "{config}/nginx.conf"]
schedule = "*/30 * * * *"
repositories = ["local"]

[[job]]
name = "check"
kind = "verify"
schedule = "0 5 * * *"
integrity = "full"
drills = false

[[job]]
name = "drill"
kind = "verify"
schedule = "0 6 * * *"
jobs = ["db-dump"]
integrity = "off"
drills = true
{check}"#,
        dump = common::catalogue::dump_job(&cluster.url("app")),
        files_job = common::catalogue::files_job("uploads", &uploads),
        config = config.display(),
        check = common::catalogue::USERS_PRESENT_CHECK,
    ));
    cluster
}

#[test]
fn dump_files_config_pass_then_each_damage_fails_with_its_cause() {
    let setup = Setup::new();
    let _cluster = dump_files_config(&setup);
    let daemon = setup.start_daemon();
    for job in ["db-dump", "uploads", "config"] {
        run_ok(&setup, job, &[]);
    }

    // Good backups: every check passes, content checked (the identity is there).
    let (code, detail) = verify(&setup, &[]);
    assert_eq!(code, Some(0), "{detail:#}\n{}", daemon.log_text());
    let all = checks(&detail);
    for job in ["db-dump", "uploads", "config"] {
        assert!(
            all.iter().any(|c| c["job"] == job
                && c["kind"] == "integrity"
                && c["result"] == "pass"
                && c["detail"]
                    .as_str()
                    .unwrap()
                    .contains("decrypted content match")),
            "no passing integrity check of {job}: {detail:#}"
        );
    }
    // Snapshots: every file's bytes checked against the manifest's SHA-256 as well.
    for job in ["uploads", "config"] {
        let c = all
            .iter()
            .find(|c| c["job"] == job && c["kind"] == "integrity")
            .unwrap();
        let d = c["detail"].as_str().unwrap();
        assert!(
            d.contains("files or blocks match the manifest") && !d.contains("; 0 files"),
            "{job}: {d}"
        );
    }
    assert_eq!(
        detail["run"]["job"], "check",
        "run of the first covering job"
    );
    assert_eq!(detail["run"]["status"], "succeeded");
    let run_id = detail["run"]["id"].as_i64().unwrap();

    // `show` prints the same checks, from the state DB.
    let shown = setup.ctl_json(&["show", &run_id.to_string()]);
    assert_eq!(checks(&shown).len(), all.len());
    let human = setup.ctl(&["show", &run_id.to_string()]);
    assert!(human.status.success());
    assert!(text(&human).contains("checks:"), "{}", text(&human));

    // A flipped byte in the dump object.
    let repo = setup.path("repo/backups");
    let dump_obj = files_under(&repo.join("db-dump"), "/data/")[0].clone();
    let original = flip_byte(&dump_obj);
    let (code, detail) = verify(&setup, &["--job", "db-dump"]);
    assert_eq!(code, Some(1), "{detail:#}");
    let bad = failed(&detail);
    assert_eq!(bad.len(), 1, "{detail:#}");
    let key = dump_obj
        .strip_prefix(setup.path("repo"))
        .unwrap()
        .to_string_lossy()
        .to_string();
    let why = bad[0]["detail"].as_str().unwrap();
    assert!(
        why.contains(&key) && why.contains("SHA-256 of the stored bytes"),
        "{why}"
    );
    assert_eq!(detail["run"]["status"], "failed");
    let err = detail["run"]["error"].as_str().unwrap();
    assert!(
        err.contains(&key),
        "the run's error names the object: {err}"
    );
    std::fs::write(&dump_obj, original).unwrap();

    // A flipped byte in a snapshot part of the files backup.
    let part = files_under(&repo.join("uploads"), "/data/")[0].clone();
    let original = flip_byte(&part);
    let (code, detail) = verify(&setup, &[]);
    assert_eq!(code, Some(1), "{detail:#}");
    let bad = failed(&detail);
    assert!(
        bad.len() == 1 && bad[0]["job"] == "uploads",
        "only the files backup fails: {detail:#}"
    );
    std::fs::write(&part, original).unwrap();

    // A damaged config snapshot part, seen by `show` of the run.
    let part = files_under(&repo.join("config"), "/data/")[0].clone();
    let original = flip_byte(&part);
    let (code, _) = verify(&setup, &["--job", "config"]);
    assert_eq!(code, Some(1));
    let shown = show_last(&setup, "check");
    assert!(
        failed(&shown)
            .iter()
            .any(|c| c["job"] == "config" && c["detail"].as_str().unwrap().contains("corrupted")),
        "{shown:#}"
    );
    std::fs::write(&part, original).unwrap();

    // A wrong identity: the stored bytes are fine, the content cannot be read — named.
    let key_file = setup.path("restore.key");
    let right = std::fs::read(&key_file).unwrap();
    std::fs::remove_file(&key_file).unwrap();
    assert!(
        setup
            .ctl(&["keygen", "--output", key_file.to_str().unwrap()])
            .status
            .success()
    );
    let (code, detail) = verify(&setup, &["--job", "db-dump"]);
    assert_eq!(code, Some(1), "{detail:#}");
    let bad = failed(&detail);
    assert!(!bad.is_empty());
    assert!(
        bad.iter().all(|c| c["detail"]
            .as_str()
            .unwrap()
            .contains("matches this object's recipients")),
        "{detail:#}"
    );
    std::fs::write(&key_file, right).unwrap();

    // Good again.
    let (code, detail) = verify(&setup, &["--integrity-only"]);
    assert_eq!(code, Some(0), "{detail:#}");

    // drills = true: a drill check row is recorded (its result depends on the drills).
    let out = setup.ctl(&["run", "drill", "--wait"]);
    let shown = show_last(&setup, "drill");
    assert!(
        checks(&shown)
            .iter()
            .any(|c| c["kind"] == "drill" && c["job"] == "db-dump"),
        "no drill check: {shown:#}"
    );
    let _ = out;

    // `status` shows the verification of each backup job.
    let status = setup.ctl(&["status"]);
    let status = text(&status);
    assert!(
        status.contains("newest backup proven by a drill:"),
        "{status}"
    );
    assert!(
        status.contains("every object of `uploads` read within the last 1 day"),
        "{status}"
    );

    // Usage errors exit 2.
    let (code, _) = verify(&setup, &["--job", "nope"]);
    assert_eq!(code, Some(2));
    let (code, _) = verify(&setup, &["--job", "check"]);
    assert_eq!(code, Some(2), "a verify job is not a backup job");
    let out = setup.ctl(&["verify", "--integrity-only", "--drill-only"]);
    assert_eq!(out.status.code(), Some(2));

    // Without the daemon: `verify --wait` runs in the ctl and prints the same report.
    daemon.stop();
    let out = setup.ctl(&["verify", "--wait", "--integrity-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("not recorded"), "{}", text(&out));
    assert!(text(&out).contains("db-dump integrity"), "{}", text(&out));
    let part = files_under(&repo.join("uploads"), "/data/")[0].clone();
    let original = flip_byte(&part);
    let out = setup.ctl(&["--json", "verify", "--wait", "--job", "uploads"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let detail: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(detail["run"].is_null());
    assert_eq!(failed(&detail).len(), 1, "{detail:#}");
    std::fs::write(&part, original).unwrap();
    // No daemon and no --wait: exit 2.
    let out = setup.ctl(&["verify"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The number of times each object of repository `local` was read, from the state DB.
fn reads(setup: &Setup) -> Vec<(String, u64)> {
    let db = setup.path("state/state.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let state = bdc_backup::state::StateDb::open_read_only(&db)
            .await
            .expect("state DB");
        state.object_reads("local").await.expect("object reads")
    })
}

#[test]
fn sample_reads_every_object_exactly_once_per_cycle() {
    let setup = Setup::new();
    let uploads = setup.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    setup.write_catalogue(&format!(
        r#"
[[job]]
name = "uploads"
kind = "files"
path = "{uploads}"
full = "0 4 * * 0"
repositories = ["local"]

[[job]]
name = "sample"
kind = "verify"
schedule = "0 5 * * *"
integrity = "sample"
budget = "1ms"
drills = false
"#,
        uploads = uploads.display()
    ));
    let _daemon = setup.start_daemon();
    // Several full backups: a dozen objects or more spread over the buckets.
    for i in 0..6 {
        std::fs::write(uploads.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
        run_ok(&setup, "uploads", &["--full"]);
    }
    let objects = files_under(&setup.path("repo/backups/uploads"), ".age").len();
    assert!(objects >= 12, "{objects} objects");

    for cycle in 1..=2u64 {
        let mut runs = 0;
        loop {
            run_ok(&setup, "sample", &[]);
            runs += 1;
            assert!(
                runs <= 16,
                "a cycle takes at most 16 runs (one bucket each at least)"
            );
            let shown = show_last(&setup, "sample");
            let line = checks(&shown)
                .into_iter()
                .find(|c| c["name"] == "sample of repository local")
                .expect("the sample line");
            if line["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("cycle {cycle} complete"))
            {
                break;
            }
            // Mid-cycle no object was read twice.
            assert!(reads(&setup).iter().all(|(_, n)| *n < cycle + 1));
        }
        let counts = reads(&setup);
        assert_eq!(counts.len(), objects, "every object is known: {counts:?}");
        assert!(
            counts.iter().all(|(_, n)| *n == cycle),
            "after cycle {cycle} every object was read exactly {cycle} times: {counts:?}"
        );
    }
}

#[test]
fn base_chain_and_wal_pass_then_block_wal_damage_and_a_gap_fail() {
    let mut p = Physical::start("60s");
    p.cluster.psql(
        "postgres",
        "CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
    );
    let full_id = p.backup("--full")["backup_id"]
        .as_str()
        .expect("the full's id")
        .to_string();
    p.cluster
        .psql("postgres", "UPDATE t SET v = 'changed' WHERE id % 97 = 0;");
    p.switch_wal();
    let incremental_id = p.backup("--incremental")["backup_id"]
        .as_str()
        .expect("the incremental's id")
        .to_string();
    p.cluster.psql(
        "postgres",
        "INSERT INTO t SELECT g, 'more' FROM generate_series(20001, 21000) g;",
    );
    p.switch_wal();
    p.switch_wal();

    // Add a verify job and reload.
    let catalogue = p.setup.catalogue_path();
    let mut text_ = std::fs::read_to_string(&catalogue).unwrap();
    text_.push_str(
        r#"
[[job]]
name = "nightly"
kind = "verify"
schedule = "0 5 * * *"
integrity = "full"
drills = false
"#,
    );
    std::fs::write(&catalogue, text_).unwrap();
    assert!(p.setup.ctl(&["reload"]).status.success());

    let (code, detail) = verify(&p.setup, &[]);
    assert_eq!(code, Some(0), "{detail:#}\n{}", p.daemon_log());
    let all = checks(&detail);
    let wal_checks: Vec<&Value> = all.iter().filter(|c| c["kind"] == "wal").collect();
    assert_eq!(
        wal_checks.len(),
        2,
        "one continuity check per base backup: {detail:#}"
    );
    assert!(wal_checks.iter().all(|c| c["result"] == "pass"));
    // The incremental's blocks (and the full's files) checked against the manifest's hashes.
    for c in all
        .iter()
        .filter(|c| c["job"] == "base" && c["kind"] == "integrity")
    {
        let d = c["detail"].as_str().unwrap();
        assert!(
            d.contains("files or blocks match the manifest") && !d.contains("; 0 files"),
            "{d}"
        );
    }
    assert!(
        all.iter()
            .any(|c| c["job"] == "wal" && c["name"] == "archived WAL" && c["result"] == "pass"),
        "{detail:#}"
    );

    // A flipped byte in the incremental's block data.
    let repo = p.setup.path("repo");
    let incremental = files_under(&repo.join("backups/base"), "-I/data/")[0].clone();
    let original = flip_byte(&incremental);
    let (code, detail) = verify(&p.setup, &["--job", "base"]);
    assert_eq!(code, Some(1), "{detail:#}");
    let bad = failed(&detail);
    assert_eq!(bad.len(), 1, "{detail:#}");
    assert!(bad[0]["backup_id"].as_str().unwrap().ends_with("-I"));
    std::fs::write(&incremental, original).unwrap();

    // `--backup <incremental>` verifies what a restore of it reads: its parent full's objects
    // and the WAL from the incremental's start to its stop. A flipped byte in the full is found.
    let (code, detail) = verify(
        &p.setup,
        &[
            "--job",
            "base",
            "--backup",
            &incremental_id,
            "--integrity-only",
        ],
    );
    assert_eq!(code, Some(0), "{detail:#}");
    let all = checks(&detail);
    for id in [&full_id, &incremental_id] {
        assert!(
            all.iter().any(|c| c["kind"] == "integrity"
                && c["name"] == format!("objects of backup {id}").as_str()
                && c["result"] == "pass"),
            "backup {id} of the chain read: {detail:#}"
        );
    }
    let consistency = format!("archived WAL backup {incremental_id} needs to be consistent");
    assert!(
        all.iter().any(|c| c["name"] == consistency.as_str()
            && c["result"] == "pass"
            && c["detail"]
                .as_str()
                .unwrap()
                .contains("decrypted content match")),
        "the incremental's WAL read: {detail:#}"
    );
    let wal_lines: Vec<&Value> = all.iter().filter(|c| c["kind"] == "wal").collect();
    assert!(
        wal_lines.len() == 1 && wal_lines[0]["backup_id"] == incremental_id.as_str(),
        "continuity of the chosen backup only: {detail:#}"
    );
    let full_obj = files_under(&repo.join(format!("backups/base/{full_id}")), "/data/")[0].clone();
    let original = flip_byte(&full_obj);
    let (code, detail) = verify(
        &p.setup,
        &[
            "--job",
            "base",
            "--backup",
            &incremental_id,
            "--integrity-only",
        ],
    );
    assert_eq!(code, Some(1), "{detail:#}");
    let bad = failed(&detail);
    let key = full_obj
        .strip_prefix(&repo)
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        bad.len() == 1
            && bad[0]["backup_id"] == full_id.as_str()
            && bad[0]["detail"].as_str().unwrap().contains(&key),
        "the parent's damaged object is named: {detail:#}"
    );
    std::fs::write(&full_obj, original).unwrap();
    // A backup that is not there is named.
    let (code, detail) = verify(&p.setup, &["--job", "base", "--backup", "20000101T000000Z"]);
    assert_eq!(code, Some(1), "{detail:#}");
    assert!(
        failed(&detail)
            .iter()
            .any(|c| c["detail"].as_str().unwrap().contains("20000101T000000Z")),
        "{detail:#}"
    );

    // A flipped byte in an archived WAL segment: decryption fails, named by key.
    let segments: Vec<PathBuf> = files_under(&repo.join("wal"), "/00000001/")
        .into_iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            name.len() == 24 + 1 + 64 && !name.contains('.')
        })
        .collect();
    assert!(segments.len() >= 4, "{segments:?}");
    let seg = segments[segments.len() / 2].clone();
    let original = flip_byte(&seg);
    let (code, detail) = verify(&p.setup, &["--job", "wal"]);
    assert_eq!(code, Some(1), "{detail:#}");
    let bad = failed(&detail);
    let seg_name = seg.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        bad.len() == 1 && bad[0]["detail"].as_str().unwrap().contains(&seg_name),
        "{detail:#}"
    );
    std::fs::write(&seg, original).unwrap();

    // A deleted segment inside the full backup's range: the gap is named.
    let name = seg_name[..24].to_string();
    std::fs::remove_file(&seg).unwrap();
    let (code, detail) = verify(&p.setup, &["--job", "base", "--integrity-only"]);
    assert_eq!(code, Some(1), "{detail:#}");
    let gap = format!("missing {name} (timeline 1) between base backup");
    assert!(
        failed(&detail)
            .iter()
            .any(|c| c["kind"] == "wal" && c["detail"].as_str().unwrap().contains(&gap)),
        "no check names {gap}: {detail:#}"
    );
    let shown = show_last(&p.setup, "nightly");
    assert!(shown["run"]["error"].as_str().unwrap().contains(&name));
    if let Some(d) = p.daemon.take() {
        d.stop();
    }
}
