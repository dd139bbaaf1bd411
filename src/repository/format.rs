//! Format v1: backup ids, object keys and the commit record.

use crate::model::{BackupType, JobKindName};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The repository format version written into every record.
pub const FORMAT_VERSION: u32 = 1;

/// A backup id: `20261126T020000Z-F` (UTC start time, type letter); sorts by time, but code
/// orders by recorded times.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackupId(pub String);

impl BackupId {
    pub fn new(_started: DateTime<Utc>, _ty: BackupType) -> BackupId {
        todo!("repository helper")
    }
}

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored object: key, stored size, SHA-256 of the stored (encrypted) bytes, and of the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ObjectRecord {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub content_size: u64,
    pub content_sha256: String,
    /// "zstd" or "gzip".
    pub compression: String,
    /// "age".
    pub encryption: String,
}

/// `backup.json`: written last, create-only. Holds no file or database names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommitRecord {
    pub format_version: u32,
    pub id: String,
    pub job: String,
    pub kind: JobKindName,
    pub backup_type: BackupType,
    /// Ancestor ids, nearest first.
    #[serde(default)]
    pub ancestors: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub stopped_at: DateTime<Utc>,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub objects: Vec<ObjectRecord>,
    pub manifest: ObjectRecord,
    /// Kind-specific plaintext facts without names (e.g. PostgreSQL version, LSNs).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
    pub software: String,
}
