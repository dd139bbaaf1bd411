//! Where a backup came from, as the commit record's `details.provenance` stores it and `show`
//! carries it; reading and writing it in commit records is [`crate::dr::provenance`]'s job.

use serde::{Deserialize, Serialize};

/// The provenance of one backup (every field optional when read: old or partial records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Provenance {
    pub host: Option<String>,
    pub bdc_backup_version: Option<String>,
    /// `server_version_num` (150004) of the cluster the backup read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<u32>,
    /// `system_identifier` of the cluster (as a string: it does not fit a JSON number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// The trimmed stdout of `[application] version-command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_version: Option<String>,
    /// Why the version command gave no version (a warning on the run, never a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_version_error: Option<String>,
}
