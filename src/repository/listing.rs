//! What the state DB and the CLI show of committed backups: the row for a commit record, its
//! one-line summary, and the listing of a catalogue's repositories without a daemon.

use super::{CommitRecord, Repository, RepositoryError};
use crate::catalogue::Catalogue;
use crate::model::BackupRow;

/// The state DB row for a committed backup.
pub fn backup_row(repository: &str, record: &CommitRecord) -> BackupRow {
    BackupRow {
        job: record.job.clone(),
        backup_id: record.id.clone(),
        repository: repository.to_string(),
        kind: record.kind,
        backup_type: record.backup_type,
        started_at: record.started_at,
        stopped_at: record.stopped_at,
        bytes_read: record.bytes_read,
        bytes_stored: record.bytes_stored,
        ancestors: record.ancestors.clone(),
        summary: summary_of(record),
    }
}

/// One line about what a backup holds, from the commit record's plaintext details.
pub fn summary_of(record: &CommitRecord) -> String {
    let mut parts = Vec::new();
    if let Some(n) = record
        .details
        .get("database-count")
        .and_then(|v| v.as_u64())
    {
        parts.push(format!("{n} database{}", if n == 1 { "" } else { "s" }));
    }
    if record.details.get("globals").and_then(|v| v.as_bool()) == Some(true) {
        parts.push("globals".to_string());
    }
    if let Some(major) = record.details.get("pg-major").and_then(|v| v.as_u64()) {
        parts.push(format!("PostgreSQL {major}"));
    }
    if parts.is_empty() {
        format!("{} objects", record.objects.len())
    } else {
        parts.join(", ")
    }
}

/// The committed backups of a catalogue's repositories, read directly (no daemon).
#[derive(Debug, Default)]
pub struct OfflineListing {
    /// Oldest first.
    pub rows: Vec<BackupRow>,
    /// Commit records that could not be read (listed without them); the caller shows them.
    pub warnings: Vec<RepositoryError>,
}

/// `backups` without a daemon: the commit records of the catalogue's repositories (all, or the
/// one named `repository`), of every job or of `job`.
pub async fn list_backups_offline(
    catalogue: &Catalogue,
    job: Option<&str>,
    repository: Option<&str>,
) -> Result<OfflineListing, RepositoryError> {
    let mut listing = OfflineListing::default();
    for settings in &catalogue.repositories {
        if repository.is_some_and(|r| r != settings.name) {
            continue;
        }
        let repo = Repository::open(settings)?;
        let (records, bad) = repo.list_commits(job).await?;
        listing.warnings.extend(bad);
        listing
            .rows
            .extend(records.iter().map(|r| backup_row(&repo.name, r)));
    }
    listing.rows.sort_by_key(|r| r.started_at);
    Ok(listing)
}
