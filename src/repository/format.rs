//! Format v1: backup ids, object keys and the commit record (see docs/repository-format.md).
//!
//! Key layout (all keys are relative to the repository root, `/`-separated):
//!
//! ```text
//! backups/<job>/<id>/backup.json        commit record, plaintext JSON, written LAST, create-only
//! backups/<job>/<id>/manifest.age       the backup's manifest (age ⟶ zstd frames)
//! backups/<job>/<id>/data/<n>.age       data objects, n = 000000, 000001, … (age ⟶ zstd frames)
//! ```
//!
//! Data object names are sequence numbers, never file or database names: names are encrypted
//! data and live only in the (encrypted) manifest.

use crate::model::{BackupType, JobKindName};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The repository format version written into every record.
pub const FORMAT_VERSION: u32 = 1;

/// The top-level prefix under which every backup lives.
pub const BACKUPS_PREFIX: &str = "backups/";

/// The file name of the commit record inside a backup's prefix.
pub const COMMIT_RECORD_NAME: &str = "backup.json";

/// A backup id: `20261126T020000Z-F` (UTC start time, type letter); sorts by time, but code
/// orders by recorded times.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackupId(pub String);

impl BackupId {
    /// `20261126T020000Z-F`: the start time in UTC at second precision, then the type letter.
    pub fn new(started: DateTime<Utc>, ty: BackupType) -> BackupId {
        BackupId(format!(
            "{}-{}",
            started.format("%Y%m%dT%H%M%SZ"),
            ty.letter()
        ))
    }

    /// The id with a collision suffix (`20261126T020000Z-F-2`), for a second backup of the same
    /// job and type started within the same second. `n <= 1` gives the plain id.
    pub fn with_suffix(started: DateTime<Utc>, ty: BackupType, n: u32) -> BackupId {
        let base = BackupId::new(started, ty);
        if n <= 1 {
            base
        } else {
            BackupId(format!("{}-{n}", base.0))
        }
    }

    /// The first id from `new`, `with_suffix(.., 2)`, … for which `taken` answers false.
    pub fn unique(
        started: DateTime<Utc>,
        ty: BackupType,
        mut taken: impl FnMut(&BackupId) -> bool,
    ) -> BackupId {
        let mut n = 1;
        loop {
            let id = BackupId::with_suffix(started, ty, n);
            if !taken(&id) {
                return id;
            }
            n += 1;
        }
    }

    /// Parses the start time and type back out of an id (None if it is not a v1 id).
    pub fn parse(&self) -> Option<(DateTime<Utc>, BackupType)> {
        let s = self.0.as_str();
        let stamp = s.get(..16)?;
        let letter = s.get(16..18)?;
        let rest = s.get(18..)?;
        if !(rest.is_empty()
            || (rest.len() > 1
                && rest.starts_with('-')
                && rest[1..].bytes().all(|b| b.is_ascii_digit())))
        {
            return None;
        }
        let ty = match letter {
            "-F" => BackupType::Full,
            "-I" => BackupType::Incremental,
            _ => return None,
        };
        let naive = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
        Some((naive.and_utc(), ty))
    }
}

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `backups/<job>/` — every backup of one job.
pub fn job_prefix(job: &str) -> String {
    format!("{BACKUPS_PREFIX}{job}/")
}

/// `backups/<job>/<id>/` — every object of one backup.
pub fn backup_prefix(job: &str, id: &str) -> String {
    format!("{BACKUPS_PREFIX}{job}/{id}/")
}

/// `backups/<job>/<id>/backup.json` — the commit record.
pub fn commit_key(job: &str, id: &str) -> String {
    format!("{}{COMMIT_RECORD_NAME}", backup_prefix(job, id))
}

/// `backups/<job>/<id>/manifest.age` — the manifest object.
pub fn manifest_key(job: &str, id: &str) -> String {
    format!("{}manifest.age", backup_prefix(job, id))
}

/// `backups/<job>/<id>/data/<n>.age` (n zero-padded to 6 digits) — the n-th data object.
pub fn data_key(job: &str, id: &str, n: u64) -> String {
    format!("{}data/{n:06}.age", backup_prefix(job, id))
}

/// If `key` is a commit record key, its `(job, id)`.
pub fn parse_commit_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(BACKUPS_PREFIX)?;
    let rest = rest.strip_suffix(COMMIT_RECORD_NAME)?.strip_suffix('/')?;
    let (job, id) = rest.split_once('/')?;
    if job.is_empty() || id.is_empty() || id.contains('/') {
        return None;
    }
    Some((job, id))
}

/// If `key` lies inside a backup's prefix, its `(job, id)`.
pub fn parse_backup_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(BACKUPS_PREFIX)?;
    let mut parts = rest.splitn(3, '/');
    let job = parts.next()?;
    let id = parts.next()?;
    parts.next()?;
    if job.is_empty() || id.is_empty() {
        return None;
    }
    Some((job, id))
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

/// `backup.json`: written last, create-only. Holds no file or database names. Unknown fields
/// are ignored when reading (forward compatibility within format version 1).
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

impl CommitRecord {
    /// The key this record is stored under.
    pub fn key(&self) -> String {
        commit_key(&self.job, &self.id)
    }

    /// Pretty JSON with a trailing newline, as stored.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut v = serde_json::to_vec_pretty(self)?;
        v.push(b'\n');
        Ok(v)
    }

    pub fn from_json(bytes: &[u8]) -> Result<CommitRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn backup_id_format_and_parse() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 2, 0, 0).unwrap();
        let id = BackupId::new(t, BackupType::Full);
        assert_eq!(id.0, "20261126T020000Z-F");
        assert_eq!(
            BackupId::new(t, BackupType::Incremental).0,
            "20261126T020000Z-I"
        );
        assert_eq!(id.parse(), Some((t, BackupType::Full)));
        let second = BackupId::with_suffix(t, BackupType::Full, 2);
        assert_eq!(second.0, "20261126T020000Z-F-2");
        assert_eq!(second.parse(), Some((t, BackupType::Full)));
        assert_eq!(BackupId("nonsense".into()).parse(), None);
        assert_eq!(BackupId("20261126T020000Z-X".into()).parse(), None);
        let u = BackupId::unique(t, BackupType::Full, |id| id.0 == "20261126T020000Z-F");
        assert_eq!(u.0, "20261126T020000Z-F-2");
    }

    #[test]
    fn keys() {
        assert_eq!(commit_key("db", "X-F"), "backups/db/X-F/backup.json");
        assert_eq!(manifest_key("db", "X-F"), "backups/db/X-F/manifest.age");
        assert_eq!(data_key("db", "X-F", 7), "backups/db/X-F/data/000007.age");
        assert_eq!(
            parse_commit_key("backups/db/X-F/backup.json"),
            Some(("db", "X-F"))
        );
        assert_eq!(parse_commit_key("backups/db/X-F/data/backup.json"), None);
        assert_eq!(parse_commit_key("wal/x/backup.json"), None);
        assert_eq!(
            parse_backup_key("backups/db/X-F/data/000001.age"),
            Some(("db", "X-F"))
        );
        assert_eq!(parse_backup_key("backups/db"), None);
    }

    #[test]
    fn fixture_v1_keeps_loading() {
        let text = include_str!("../../tests/fixtures/commit-record-v1.json");
        let rec = CommitRecord::from_json(text.as_bytes()).expect("fixture parses");
        assert_eq!(rec.format_version, 1);
        assert_eq!(rec.id, "20261126T020000Z-F");
        assert_eq!(rec.job, "db-dump");
        assert_eq!(rec.kind, JobKindName::PostgresDump);
        assert_eq!(rec.backup_type, BackupType::Full);
        assert_eq!(rec.objects.len(), 2);
        assert_eq!(rec.objects[0].compression, "zstd");
        assert_eq!(rec.manifest.encryption, "age");
        assert_eq!(rec.key(), "backups/db-dump/20261126T020000Z-F/backup.json");
        // Round trip keeps every field.
        let again = CommitRecord::from_json(&rec.to_json().unwrap()).unwrap();
        assert_eq!(again, rec);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let text = include_str!("../../tests/fixtures/commit-record-v1.json");
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["some-future-field"] = serde_json::json!({"x": 1});
        v["manifest"]["future-object-field"] = serde_json::json!(true);
        let rec: CommitRecord = serde_json::from_value(v).unwrap();
        assert_eq!(rec.format_version, 1);
    }
}
