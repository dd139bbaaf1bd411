//! What a `postgres-base` commit record says about the cluster and the backup, under
//! `details.postgres` (plaintext: LSNs, timeline, version — no file names or paths).
//! Written by the base backup, read by `restore cluster`, WAL retention and drills.

use crate::repository::CommitRecord;
use crate::wal::ClusterIdentity;
use serde::{Deserialize, Serialize};

/// The `details` key under which [`BaseBackupInfo`] is stored.
pub const DETAILS_KEY: &str = "postgres";

/// The name of the encrypted object holding the `backup_label` returned by the stop call
/// (inside the backup's prefix: `backups/<job>/<id>/backup_label.age`).
pub const BACKUP_LABEL_OBJECT: &str = "backup_label.age";
/// The same for `tablespace_map` (only when the cluster has tablespaces).
pub const TABLESPACE_MAP_OBJECT: &str = "tablespace_map.age";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BaseBackupInfo {
    #[serde(flatten)]
    pub cluster: ClusterIdentity,
    /// `server_version_num` (150004).
    pub server_version: u32,
    /// The timeline the backup started on.
    pub timeline: u32,
    /// `pg_backup_start`'s LSN (`0/2000028`).
    pub start_lsn: String,
    /// `pg_backup_stop`'s LSN.
    pub stop_lsn: String,
    /// The first and last WAL segment the backup needs (inclusive).
    pub start_wal: String,
    pub stop_wal: String,
    pub wal_segment_size: u64,
    /// The postgres-wal job whose archive holds the WAL (the base job's `wal-job`).
    pub wal_job: Option<String>,
    /// Whether the cluster has data checksums; if so, pages were verified while read.
    pub data_checksums: bool,
    /// Pages whose checksum failed (after re-reading torn pages); listed in the run's warnings.
    #[serde(default)]
    pub checksum_failures: u64,
    /// Key (relative to the repository root) of the encrypted `backup_label`.
    pub backup_label_key: String,
    /// Key of the encrypted `tablespace_map`, when there is one.
    #[serde(default)]
    pub tablespace_map_key: Option<String>,
    /// Tablespaces outside the data directory (oid and name; locations are in the encrypted
    /// tablespace map, not here).
    #[serde(default)]
    pub tablespaces: Vec<TablespaceInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TablespaceInfo {
    pub oid: u32,
    pub name: String,
}

impl BaseBackupInfo {
    /// Reads the info from a commit record (None when it is not a base backup's record).
    pub fn from_record(record: &CommitRecord) -> Option<Result<BaseBackupInfo, serde_json::Error>> {
        record
            .details
            .get(DETAILS_KEY)
            .map(|v| serde_json::from_value(v.clone()))
    }

    /// Stores the info into a commit record's details.
    pub fn into_details(&self, details: &mut serde_json::Map<String, serde_json::Value>) {
        details.insert(
            DETAILS_KEY.into(),
            serde_json::to_value(self).expect("BaseBackupInfo serialises"),
        );
    }

    pub fn start_lsn(&self) -> Option<u64> {
        crate::wal::name::parse_lsn(&self.start_lsn)
    }

    pub fn stop_lsn(&self) -> Option<u64> {
        crate::wal::name::parse_lsn(&self.stop_lsn)
    }
}
