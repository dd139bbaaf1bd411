//! Where archived WAL lives in a repository (docs/design.md §5, docs/repository-format.md):
//!
//! ```text
//! wal/archive.json                                          which cluster this archive belongs to
//! wal/<system-id>-<pg-major>/<timeline>/<file name>-<sha256>   one archived file (age ⟶ zstd)
//! ```
//!
//! The SHA-256 is of the plaintext file: the ciphertext differs on every push, so the key says
//! what the content is (the same segment pushed twice with the same content lands on the same
//! key; with other content on another key — `wal-fetch` refuses a segment with two hashes).
//! `<timeline>` is 8 hex digits; history files go under their own timeline.

use super::header::ClusterIdentity;
use super::name::WalName;
use chrono::{DateTime, Utc};

/// The prefix of everything WAL.
pub const WAL_PREFIX: &str = "wal/";
/// The archive's identity record (plaintext JSON, create-only).
pub const ARCHIVE_INFO_KEY: &str = "wal/archive.json";

/// `wal/<system-id>-<pg-major>/`
pub fn archive_prefix(id: &ClusterIdentity) -> String {
    format!("{WAL_PREFIX}{}-{}/", id.system_identifier, id.pg_major)
}

/// `wal/<system-id>-<pg-major>/<timeline>/`
pub fn timeline_prefix(id: &ClusterIdentity, timeline: u32) -> String {
    format!("{}{timeline:08X}/", archive_prefix(id))
}

/// `wal/<system-id>-<pg-major>/<timeline>/<name>-`: list this to find every stored copy.
pub fn file_prefix(id: &ClusterIdentity, name: &WalName) -> String {
    format!("{}{}-", timeline_prefix(id, name.timeline), name.name)
}

/// The key of one archived file with plaintext hash `sha256` (lowercase hex).
pub fn object_key(id: &ClusterIdentity, name: &WalName, sha256: &str) -> String {
    format!("{}{sha256}", file_prefix(id, name))
}

/// One archived file, parsed back from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedKey {
    pub identity: ClusterIdentity,
    pub name: WalName,
    pub sha256: String,
}

/// Parses a key written by [`object_key`]; None for anything else (archive.json, staging, …).
pub fn parse_object_key(key: &str) -> Option<ArchivedKey> {
    let rest = key.strip_prefix(WAL_PREFIX)?;
    let mut parts = rest.split('/');
    let (cluster, tl, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (sysid, major) = cluster.split_once('-')?;
    let identity = ClusterIdentity {
        system_identifier: sysid.parse().ok()?,
        pg_major: major.parse().ok()?,
    };
    let (name, sha256) = file.rsplit_once('-')?;
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let name = WalName::parse(name)?;
    if tl != format!("{:08X}", name.timeline) {
        return None;
    }
    Some(ArchivedKey {
        identity,
        name,
        sha256: sha256.into(),
    })
}

/// `wal/archive.json`: written create-only by the first push into a repository; a push or fetch
/// for another cluster is refused with this record named.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ArchiveInfo {
    pub format_version: u32,
    #[serde(flatten)]
    pub identity: ClusterIdentity,
    pub created_at: DateTime<Utc>,
    pub software: String,
}

impl ArchiveInfo {
    pub fn new(identity: ClusterIdentity, created_at: DateTime<Utc>) -> ArchiveInfo {
        ArchiveInfo {
            format_version: crate::repository::FORMAT_VERSION,
            identity,
            created_at,
            software: concat!("bdc-backup ", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let id = ClusterIdentity {
            system_identifier: 7_312_345_678_901_234_567,
            pg_major: 15,
        };
        let sha = "ab".repeat(32);
        for n in [
            "000000010000000A000000FF",
            "000000020000000A000000FF.partial",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
        ] {
            let name = WalName::parse(n).unwrap();
            let key = object_key(&id, &name, &sha);
            assert!(key.starts_with(&file_prefix(&id, &name)));
            let back = parse_object_key(&key).unwrap();
            assert_eq!(
                (back.identity, back.name, back.sha256.as_str()),
                (id, name, sha.as_str())
            );
        }
        assert_eq!(
            object_key(&id, &WalName::parse("00000002.history").unwrap(), &sha),
            format!("wal/7312345678901234567-15/00000002/00000002.history-{sha}")
        );
        assert!(parse_object_key(ARCHIVE_INFO_KEY).is_none());
        assert!(parse_object_key("wal/1-15/00000001/000000010000000A000000FF-xyz").is_none());
        assert!(
            parse_object_key(&format!("wal/1-15/00000002/000000010000000A000000FF-{sha}"))
                .is_none()
        );
    }
}
