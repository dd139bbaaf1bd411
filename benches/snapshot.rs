//! Driver for `tests/bench-files`: one files-job backup or one restore per process, so the
//! peak RSS (VmHWM) is that operation's alone. Prints one JSON line.
//!
//! ```text
//! cargo bench --bench snapshot -- backup CATALOGUE JOB full|incremental
//! cargo bench --bench snapshot -- restore CATALOGUE JOB TARGET
//! ```

use bdc_backup::catalogue::{Catalogue, JobSpec};
use bdc_backup::files::{SnapshotRestoreOptions, restore_snapshot, run_files};
use bdc_backup::model::BackupType;
use bdc_backup::pipeline::{PipelineSettings, ProgressCounter};
use bdc_backup::repository::{BackupId, Repository};
use bdc_backup::snapshot::job::{JobOutcome, JobRun};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Peak resident set size (VmHWM) in KiB.
fn max_rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(-1)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() < 3 {
        // `cargo test --all-targets` runs benches once without arguments: nothing to measure.
        println!(
            "usage: snapshot backup|restore CATALOGUE JOB [full|incremental|TARGET] (driven by tests/bench-files)"
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let out = runtime.block_on(run(&args));
    println!("{out}");
}

async fn run(args: &[String]) -> serde_json::Value {
    let catalogue = Catalogue::load(Path::new(&args[1])).expect("catalogue");
    let job = catalogue.job(&args[2]).expect("job").clone();
    let start = Instant::now();
    match args[0].as_str() {
        "backup" => {
            let JobSpec::Files(spec) = &job.spec else {
                panic!("not a files job")
            };
            let repository =
                Repository::open(catalogue.repository(&job.repositories[0]).unwrap()).unwrap();
            let pipeline = PipelineSettings {
                compression: job.compression.clone(),
                recipients: catalogue
                    .encryption
                    .recipients
                    .iter()
                    .map(|r| r.parse().unwrap())
                    .collect(),
                frame_size: 2 << 20,
            };
            let ty = if args[3] == "full" {
                BackupType::Full
            } else {
                BackupType::Incremental
            };
            let started_at = chrono::Utc::now();
            let id = BackupId::new(started_at, ty).0;
            let outcome = run_files(
                JobRun {
                    catalogue: &catalogue,
                    job: &job,
                    repository: &repository,
                    replicas: &[],
                    pipeline: &pipeline,
                    backup_id: &id,
                    started_at,
                    requested: ty,
                    progress: &ProgressCounter::default(),
                    cancel: &CancellationToken::new(),
                    state_dir: &catalogue.daemon.state_directory,
                },
                spec,
            )
            .await
            .expect("backup");
            let JobOutcome::Committed { record, .. } = outcome else {
                panic!("no backup")
            };
            serde_json::json!({"op": "backup", "type": record.backup_type, "id": record.id,
                "seconds": start.elapsed().as_secs_f64(), "max-rss-kib": max_rss_kib(),
                "bytes-read": record.bytes_read, "bytes-stored": record.bytes_stored,
                "objects": record.objects.len(), "files-stored": record.details.get("files-stored")})
        }
        "restore" => {
            let report = restore_snapshot(
                &catalogue,
                SnapshotRestoreOptions {
                    job: args[2].clone(),
                    target: Some(PathBuf::from(&args[3])),
                    ..Default::default()
                },
            )
            .await
            .expect("restore");
            serde_json::json!({"op": "restore", "id": report.backup_id,
                "seconds": start.elapsed().as_secs_f64(), "max-rss-kib": max_rss_kib(),
                "files": report.stats.files, "bytes": report.stats.bytes})
        }
        other => panic!("unknown mode {other}"),
    }
}
