//! postgres: dump

use crate::catalogue::{Catalogue, DumpJob, Job};
use crate::pipeline::{PipelineSettings, ProgressCounter};
use crate::repository::{CommitRecord, Repository};
use chrono::{DateTime, Utc};
use std::path::Path;
use tokio_util::sync::CancellationToken;

pub struct DumpContext<'a> {
    pub catalogue: &'a Catalogue,
    pub job: &'a Job,
    pub spec: &'a DumpJob,
    pub repository: &'a Repository,
    pub pipeline: &'a PipelineSettings,
    pub backup_id: &'a str,
    pub started_at: DateTime<Utc>,
    pub progress: &'a ProgressCounter,
    pub cancel: &'a CancellationToken,
    pub state_dir: &'a Path,
}

#[derive(Debug, thiserror::Error)]
#[error("dump failed")]
pub struct DumpError;

pub async fn run_dump(_ctx: DumpContext<'_>) -> Result<CommitRecord, DumpError> {
    todo!("pg helper")
}
