//! The `config` job: a complete small snapshot of listed files, stored (through the snapshot-job
//! core, [`crate::snapshot::job`]) only when the set of files, a content, a mode or an owner changed.

use crate::catalogue::ConfigJob;
use crate::model::{BackupType, JobKindName};
use crate::snapshot::backup::EngineConfig;
use crate::snapshot::job::{self, JobError, JobOutcome, JobRun, PART_SIZE};
use crate::snapshot::manifest::{EntryKind, ManifestReader, Mode};
use crate::snapshot::path::ByteName;
use crate::snapshot::walk::{Event, ListWalk};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

/// Runs one `config` check of `spec` (the run's job): stores a new version (always a full)
/// only when something changed. The parent need not be in the replicas, and `requested` is
/// ignored.
pub async fn run_config(run: JobRun<'_>, spec: &ConfigJob) -> Result<JobOutcome, JobError> {
    let job = run.job.name.clone();
    let parent = job::choose_parent(
        &job,
        JobKindName::Config,
        run.repository,
        &[],
        None,
        run.state_dir,
    )
    .await?
    .ok();
    if let Some(p) = parent {
        let paths = spec.paths.clone();
        let since = p.record.id.clone();
        let same = tokio::task::spawn_blocking(move || config_unchanged(&paths, p.copy))
            .await
            .map_err(|e| JobError::Task {
                job: job.clone(),
                reason: e.to_string(),
            })?;
        if let Some(warnings) = same {
            return Ok(JobOutcome::Unchanged { since, warnings });
        }
    }
    let backup_id = job::id_for(
        run.repository,
        &job,
        run.backup_id,
        run.started_at,
        BackupType::Full,
    )
    .await?;
    let cfg = EngineConfig {
        job: job.clone(),
        backup_id,
        backup_type: BackupType::Full,
        mode: Mode::Lenient,
        started_at: run.started_at,
        ancestors: Vec::new(),
        source: ByteName(b"/".to_vec()),
        part_size: PART_SIZE,
        parent: None,
        spool_dir: run.state_dir.to_path_buf(),
        fault_unreadable: None,
        before_read: None,
        inspect: None,
        changed: None,
    };
    let (record, warnings) = job::store_snapshot(
        &run,
        JobKindName::Config,
        cfg,
        Box::new(ListWalk::new(&spec.paths)),
    )
    .await?;
    Ok(JobOutcome::Committed {
        record: Box::new(record),
        warnings,
        full_because: None,
    })
}

/// Some(warnings) when the config files equal the parent's (same set of files, kinds,
/// contents, modes and owners); None when a new version is needed (or it cannot tell).
fn config_unchanged(
    paths: &[String],
    copy: std::io::BufReader<std::fs::File>,
) -> Option<Vec<String>> {
    let mut reader = ManifestReader::new(copy).ok()?;
    let mut warnings = Vec::new();
    for event in ListWalk::new(paths) {
        let item = match event {
            Event::Item(item) => item,
            Event::Missing { path } => {
                warnings.push(format!("/{}: does not exist", path.display()));
                continue;
            }
            Event::Error { .. } => return None,
        };
        let old = reader.next_entry().ok()??;
        let m = &item.meta;
        if old.path != item.path
            || old.mode != m.mode() & 0o7777
            || old.uid != m.uid()
            || old.gid != m.gid()
        {
            return None;
        }
        if m.file_type().is_symlink() {
            let target = std::fs::read_link(&item.abs).ok()?;
            if old.kind != EntryKind::Symlink
                || old.target.as_ref().map(|t| t.as_bytes()) != Some(target.as_os_str().as_bytes())
            {
                return None;
            }
        } else if m.is_file() {
            if old.kind != EntryKind::File || old.size != m.size() {
                return None;
            }
            let mut f = std::fs::File::open(&item.abs).ok()?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).ok()?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            if old.sha256.as_deref() != Some(hex::encode(hasher.finalize()).as_str()) {
                return None;
            }
        } else {
            return None;
        }
    }
    // No entries left over in the parent (a file that disappeared is a change).
    match reader.next_entry() {
        Ok(None) => Some(warnings),
        _ => None,
    }
}
