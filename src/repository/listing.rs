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
    let what = if parts.is_empty() {
        format!("{} objects", record.objects.len())
    } else {
        parts.join(", ")
    };
    match crate::dr::provenance::Provenance::of(record) {
        Some(p) => {
            let mut from = Vec::new();
            if let Some(h) = p.host.filter(|h| !h.is_empty()) {
                from.push(format!("host {h}"));
            }
            if let Some(v) = p.bdc_backup_version {
                from.push(format!("bdc-backup {v}"));
            }
            if let Some(s) = p.system_identifier {
                from.push(format!("system {s}"));
            }
            if let Some(a) = p.application_version {
                from.push(format!("application {a}"));
            }
            if from.is_empty() {
                what
            } else {
                format!("{what}; from {}", from.join(", "))
            }
        }
        None => what,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackupType, JobKindName};
    use crate::repository::{BackupId, FORMAT_VERSION, ObjectRecord, Store, format};
    use bytes::Bytes;
    use chrono::{Duration, Utc};

    fn object(key: &str) -> ObjectRecord {
        ObjectRecord {
            key: key.to_string(),
            size: 5,
            sha256: "00".repeat(32),
            content_size: 5,
            content_sha256: "00".repeat(32),
            compression: "zstd".into(),
            encryption: "age".into(),
        }
    }

    async fn commit(repo: &Repository, job: &str, hours_ago: i64) -> String {
        let stop = Utc::now() - Duration::hours(hours_ago);
        let start = stop - Duration::minutes(5);
        let id = BackupId::new(start, BackupType::Full).0;
        let manifest = format::manifest_key(job, &id);
        let mut details = serde_json::Map::new();
        details.insert("database-count".into(), 1.into());
        details.insert("globals".into(), true.into());
        repo.commit(&CommitRecord {
            format_version: FORMAT_VERSION,
            id: id.clone(),
            job: job.into(),
            kind: JobKindName::PostgresDump,
            backup_type: BackupType::Full,
            ancestors: vec![],
            started_at: start,
            stopped_at: stop,
            bytes_read: 2000,
            bytes_stored: 1000,
            objects: vec![object(&format::data_key(job, &id, 0))],
            manifest: object(&manifest),
            details,
            software: "test".into(),
        })
        .await
        .unwrap();
        id
    }

    #[tokio::test]
    async fn offline_listing_returns_rows_oldest_first_and_bad_records_as_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let recipient = age::x25519::Identity::generate().to_public();
        let text = format!(
            "[daemon]\nstate-db = \"{d}/state.db\"\nsocket = \"{d}/s.sock\"\n\
             [encryption]\nrecipients = [\"{recipient}\"]\n\
             [repository.one]\nurl = \"file://{d}/one\"\n\
             [repository.two]\nurl = \"file://{d}/two\"\n",
            d = dir.path().display()
        );
        let catalogue = crate::catalogue::parse_str(&text, &dir.path().join("catalogue.toml"), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let one = Repository::with_store("one", Store::local(dir.path().join("one")).unwrap());
        let two = Repository::with_store("two", Store::local(dir.path().join("two")).unwrap());
        let newer = commit(&one, "db-dump", 1).await;
        let older = commit(&two, "db-dump", 5).await;
        let other = commit(&two, "files", 3).await;
        let broken = BackupId::new(Utc::now() - Duration::hours(2), BackupType::Full).0;
        one.store
            .put_create(
                &format::commit_key("db-dump", &broken),
                Bytes::from_static(b"{ not json"),
            )
            .await
            .unwrap();

        let all = list_backups_offline(&catalogue, None, None).await.unwrap();
        let ids: Vec<&str> = all.rows.iter().map(|r| r.backup_id.as_str()).collect();
        assert_eq!(ids, [older.as_str(), other.as_str(), newer.as_str()]);
        assert_eq!(all.rows[2].repository, "one");
        assert_eq!(all.rows[2].summary, "1 database, globals");
        assert_eq!(all.warnings.len(), 1, "{:?}", all.warnings);
        let warning = crate::error::error_chain_of(&all.warnings[0]);
        assert!(warning.contains(&broken), "{warning}");

        let dumps_in_two = list_backups_offline(&catalogue, Some("db-dump"), Some("two"))
            .await
            .unwrap();
        let ids: Vec<&str> = dumps_in_two
            .rows
            .iter()
            .map(|r| r.backup_id.as_str())
            .collect();
        assert_eq!(ids, [older.as_str()]);
        assert!(dumps_in_two.warnings.is_empty());
    }
}
