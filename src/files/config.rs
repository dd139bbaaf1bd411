//! The `config` job: a complete small snapshot of listed files, stored only when something changed.

use super::{FilesError, JobOutcome, PART_SIZE};
use crate::catalogue::{Catalogue, ConfigJob, Job};
use crate::model::{BackupType, JobKindName};
use crate::pipeline::{PipelineSettings, ProgressCounter};
use crate::repository::Repository;
use crate::snapshot::backup::EngineConfig;
use crate::snapshot::manifest::{EntryKind, ManifestReader, Mode};
use crate::snapshot::path::ByteName;
use crate::snapshot::walk::{Event, ListWalk};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use tokio_util::sync::CancellationToken;

use super::run::{Common, choose_parent, id_for, store_snapshot};
/// Everything one `config` run needs.
pub struct ConfigContext<'a> {
    pub catalogue: &'a Catalogue,
    pub job: &'a Job,
    pub spec: &'a ConfigJob,
    pub repository: &'a Repository,
    pub pipeline: &'a PipelineSettings,
    pub backup_id: &'a str,
    pub started_at: DateTime<Utc>,
    pub progress: &'a ProgressCounter,
    pub cancel: &'a CancellationToken,
    pub state_dir: &'a Path,
}

/// Runs one `config` check: stores a new version only when something changed.
pub async fn run_config(ctx: ConfigContext<'_>) -> Result<JobOutcome, FilesError> {
    let job = ctx.job.name.clone();
    let parent = choose_parent(
        &job,
        JobKindName::Config,
        ctx.repository,
        &[],
        None,
        ctx.state_dir,
    )
    .await?
    .ok();
    if let Some(p) = parent {
        let paths = ctx.spec.paths.clone();
        let since = p.record.id.clone();
        let same = tokio::task::spawn_blocking(move || config_unchanged(&paths, p.copy))
            .await
            .map_err(|e| FilesError::Task {
                job: job.clone(),
                reason: e.to_string(),
            })?;
        if let Some(warnings) = same {
            return Ok(JobOutcome::Unchanged { since, warnings });
        }
    }
    let backup_id = id_for(
        ctx.repository,
        &job,
        ctx.backup_id,
        ctx.started_at,
        BackupType::Full,
    )
    .await?;
    let cfg = EngineConfig {
        job: job.clone(),
        backup_id,
        backup_type: BackupType::Full,
        mode: Mode::Lenient,
        started_at: ctx.started_at,
        ancestors: Vec::new(),
        source: ByteName(b"/".to_vec()),
        part_size: PART_SIZE,
        parent: None,
        spool_dir: ctx.state_dir.to_path_buf(),
        fault_unreadable: None,
        before_read: None,
        inspect: None,
    };
    let (record, warnings) = store_snapshot(
        Common {
            job: &job,
            kind: JobKindName::Config,
            repository: ctx.repository,
            pipeline: ctx.pipeline,
            started_at: ctx.started_at,
            progress: ctx.progress,
            cancel: ctx.cancel,
            state_dir: ctx.state_dir,
        },
        cfg,
        Box::new(ListWalk::new(&ctx.spec.paths)),
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
