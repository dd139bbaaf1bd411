//! The `files` job: a folder tree, full or incremental, through the snapshot-job core
//! ([`crate::snapshot::job`]: parent, id and type, store and commit).

use crate::catalogue::FilesJob;
use crate::model::JobKindName;
use crate::snapshot::SnapshotError;
use crate::snapshot::backup::EngineConfig;
use crate::snapshot::job::{self, JobError, JobOutcome, JobRun, PART_SIZE};
use crate::snapshot::manifest::Mode;
use crate::snapshot::path::ByteName;
use crate::snapshot::walk::{Filter, TreeWalk};
use std::os::unix::ffi::OsStrExt;

/// Runs one `files` backup of `spec` (the run's job): full or incremental (see
/// [`crate::snapshot::job`] for the parent rule).
///
/// # Errors
/// The source missing or unreadable as a whole, a store failure, cancellation. Unreadable
/// files inside the tree are warnings in the outcome (lenient mode).
pub async fn run_files(run: JobRun<'_>, spec: &FilesJob) -> Result<JobOutcome, JobError> {
    let job = run.job.name.clone();
    let plan = job::plan(&run, JobKindName::Files, spec.max_chain).await?;
    let filter = Filter::new(&spec.include, &spec.exclude).map_err(|e| JobError::Snapshot {
        job: job.clone(),
        source: SnapshotError::Glob(e),
    })?;
    let walk = TreeWalk::new(&spec.path, filter, spec.one_file_system).map_err(|source| {
        JobError::Snapshot {
            job: job.clone(),
            source: SnapshotError::Source {
                path: spec.path.clone(),
                source,
            },
        }
    })?;
    let (ancestors, parent) = match plan.parent.map(job::ChosenParent::into_engine) {
        Some((a, p)) => (a, Some(p)),
        None => (Vec::new(), None),
    };
    let cfg = EngineConfig {
        job: job.clone(),
        backup_id: plan.backup_id,
        backup_type: plan.backup_type,
        mode: Mode::Lenient,
        started_at: run.started_at,
        ancestors,
        source: ByteName(spec.path.as_os_str().as_bytes().to_vec()),
        part_size: PART_SIZE,
        parent,
        spool_dir: run.state_dir.to_path_buf(),
        fault_unreadable: None,
        before_read: None,
        inspect: None,
        changed: None,
    };
    let (record, warnings) =
        job::store_snapshot(&run, JobKindName::Files, cfg, Box::new(walk)).await?;
    Ok(JobOutcome::Committed {
        record: Box::new(record),
        warnings,
        full_because: plan.full_because,
    })
}
