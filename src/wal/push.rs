//! Archiving one WAL file into one repository (docs/design.md §5): read and check the file, the
//! repository's `wal/archive.json`, the duplicate rules, the durable store. The daemon
//! (`daemon::wal`) runs this for every sync repository of the postgres-wal job at once.

use super::format::{ARCHIVE_INFO_KEY, ArchiveInfo, file_prefix, object_key, parse_object_key};
use super::header::{ClusterIdentity, HeaderError};
use super::name::WalName;
use crate::error::{Classify, Retry};
use crate::pipeline::{PipelineError, PipelineSettings};
use crate::repository::local::LocalWriter;
use crate::repository::{ObjectRecord, Repository, StoreError};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::io;
use std::time::Duration;

/// Bumped every time a WAL file became durable in every sync repository (the daemon's archiver
/// calls [`note_durable`]); a base backup waiting for its stop segment subscribes with
/// [`durable_signal`] and re-checks the repository when it changes instead of only polling.
static DURABLE: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(0));

/// Tells the waiters that a WAL file is durable now (called after it was acknowledged).
pub fn note_durable() {
    DURABLE.send_modify(|n| *n = n.wrapping_add(1));
}

/// A receiver that sees every [`note_durable`] after this call (subscribe before checking the
/// repository, then wait for `changed()`: no notification is lost in between).
pub fn durable_signal() -> tokio::sync::watch::Receiver<u64> {
    DURABLE.subscribe()
}

/// History and backup-label files larger than this are refused (they are a few hundred bytes).
pub(super) const MAX_SMALL_FILE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("`{0}` is not a WAL file name PostgreSQL archives")]
    BadName(String),
    #[error("{name}: cannot read the file: {source}")]
    Read {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name}: {size} bytes, but its header says segments are {expected} bytes")]
    Size {
        name: String,
        size: u64,
        expected: u64,
    },
    #[error("{name}: {source}")]
    Header {
        name: String,
        #[source]
        source: HeaderError,
    },
    #[error(
        "{name}: its first page is at WAL position {found}, but the name means {expected}: the file is not the segment its name says"
    )]
    WrongPosition {
        name: String,
        found: String,
        expected: String,
    },
    #[error(
        "{name}: the segment belongs to system {segment}, but the request says {request}: refusing to archive another cluster's WAL"
    )]
    WrongSegmentCluster {
        name: String,
        segment: u64,
        request: u64,
    },
    #[error(
        "repository `{repository}`: its WAL archive belongs to cluster {theirs_sysid} (PostgreSQL {theirs_major}), not to this cluster {ours_sysid} (PostgreSQL {ours_major}); see wal/archive.json"
    )]
    OtherCluster {
        repository: String,
        theirs_sysid: u64,
        theirs_major: u32,
        ours_sysid: u64,
        ours_major: u32,
    },
    #[error("repository `{repository}`: {ARCHIVE_INFO_KEY} is malformed: {source}")]
    BadArchiveInfo {
        repository: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "repository `{repository}`: {name} is already archived with different content (stored sha256 {existing}, this file {sha256}); refusing to overwrite"
    )]
    Duplicate {
        repository: String,
        name: String,
        existing: String,
        sha256: String,
    },
    #[error("repository `{repository}`: {source}")]
    Store {
        repository: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("repository `{repository}`: storing {name}: {source}")]
    Pipeline {
        repository: String,
        name: String,
        #[source]
        source: Box<PipelineError>,
    },
    #[error("repository `{repository}`: {action}: no answer within {:.1} s", .after.as_secs_f64())]
    TimedOut {
        repository: String,
        action: String,
        after: Duration,
    },
}

impl Classify for PushError {
    fn retry(&self) -> Retry {
        match self {
            PushError::Read { source, .. } => crate::error::io_retry(source),
            PushError::Store { source, .. } => source.retry(),
            PushError::Pipeline { source, .. } => source.retry(),
            PushError::TimedOut { .. } => Retry::Transient,
            _ => Retry::Permanent,
        }
    }
}

pub use super::seal::{
    SealedWal, WalFile, read_wal_file, recycle_object, seal, seal_wal_file, seal_wal_file_staged,
};

/// Runs a store call with a bound.
pub async fn bounded<T, E>(
    repository: &str,
    action: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
    map: impl FnOnce(E) -> PushError,
) -> Result<T, PushError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(map),
        Err(_) => Err(PushError::TimedOut {
            repository: repository.to_string(),
            action: action.to_string(),
            after: limit,
        }),
    }
}

fn store_err(repo: &Repository) -> impl FnOnce(StoreError) -> PushError + '_ {
    move |source| PushError::Store {
        repository: repo.name.clone(),
        source: Box::new(source),
    }
}

/// Reads `wal/archive.json` of `repo`; None when there is none yet.
pub async fn read_archive_info(
    repo: &Repository,
    limit: Duration,
) -> Result<Option<ArchiveInfo>, PushError> {
    let got = tokio::time::timeout(limit, repo.store.get(ARCHIVE_INFO_KEY)).await;
    let bytes = match got {
        Err(_) => {
            return Err(PushError::TimedOut {
                repository: repo.name.clone(),
                action: format!("reading {ARCHIVE_INFO_KEY}"),
                after: limit,
            });
        }
        Ok(Err(StoreError::NotFound { .. })) => return Ok(None),
        Ok(Err(e)) => return Err(store_err(repo)(e)),
        Ok(Ok(b)) => b,
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| PushError::BadArchiveInfo {
            repository: repo.name.clone(),
            source,
        })
}

/// Checks that `info` names `cluster`.
pub fn check_archive_info(
    repository: &str,
    info: &ArchiveInfo,
    cluster: &ClusterIdentity,
) -> Result<(), PushError> {
    if info.identity != *cluster {
        return Err(PushError::OtherCluster {
            repository: repository.to_string(),
            theirs_sysid: info.identity.system_identifier,
            theirs_major: info.identity.pg_major,
            ours_sysid: cluster.system_identifier,
            ours_major: cluster.pg_major,
        });
    }
    Ok(())
}

/// Makes sure `repo`'s `wal/archive.json` names `cluster`, creating it (create-only) on the
/// first push.
pub async fn ensure_archive_info(
    repo: &Repository,
    cluster: &ClusterIdentity,
    now: DateTime<Utc>,
    limit: Duration,
) -> Result<(), PushError> {
    if let Some(info) = read_archive_info(repo, limit).await? {
        return check_archive_info(&repo.name, &info, cluster);
    }
    let info = ArchiveInfo::new(*cluster, now);
    let mut text = serde_json::to_vec_pretty(&info).expect("archive info serializes");
    text.push(b'\n');
    let put = tokio::time::timeout(limit, repo.store.put_create(ARCHIVE_INFO_KEY, text.into()));
    match put.await {
        Err(_) => Err(PushError::TimedOut {
            repository: repo.name.clone(),
            action: format!("creating {ARCHIVE_INFO_KEY}"),
            after: limit,
        }),
        Ok(Ok(())) => Ok(()),
        // Another push created it meanwhile: check what it says.
        Ok(Err(StoreError::AlreadyExists { .. })) => match read_archive_info(repo, limit).await? {
            Some(info) => check_archive_info(&repo.name, &info, cluster),
            None => Err(PushError::Store {
                repository: repo.name.clone(),
                source: Box::new(StoreError::NotFound {
                    key: ARCHIVE_INFO_KEY.into(),
                }),
            }),
        },
        Ok(Err(e)) => Err(store_err(repo)(e)),
    }
}

/// The plaintext hashes stored for `name` in `repo` (normally zero or one).
pub async fn stored_hashes(
    repo: &Repository,
    cluster: &ClusterIdentity,
    name: &WalName,
    limit: Duration,
) -> Result<Vec<String>, PushError> {
    let prefix = file_prefix(cluster, name);
    let listed = bounded(
        &repo.name,
        &format!("listing {prefix}"),
        limit,
        repo.store.list(&prefix),
        store_err(repo),
    )
    .await?;
    let mut hashes: Vec<String> = listed
        .iter()
        .filter_map(|m| parse_object_key(&m.key))
        .filter(|k| k.name == *name && k.identity == *cluster)
        .map(|k| k.sha256)
        .collect();
    hashes.sort();
    hashes.dedup();
    Ok(hashes)
}

/// What [`store_wal`] did.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Newly stored.
    New(ObjectRecord),
    /// A sealed object newly written ([`store_sealed`], [`store_prechecked`]): its key and size.
    /// The ciphertext is not hashed (a WAL object is identified and checked by the plaintext
    /// hash its key carries), so there is no full [`ObjectRecord`].
    Written { key: String, size: u64 },
    /// The same content was already there (a warning, not an error).
    AlreadyThere { key: String },
}

/// Applies the duplicate rules and stores `wal` into `repo` (durable on return: a local store
/// fsyncs the file and its folder; a cloud PUT completed). `archive.json` must have been checked.
pub async fn store_wal(
    repo: &Repository,
    cluster: &ClusterIdentity,
    wal: &WalFile,
    settings: &PipelineSettings,
    limit: Duration,
) -> Result<Stored, PushError> {
    let key = object_key(cluster, &wal.name, &wal.sha256);
    if let Some(there) = check_duplicates(repo, cluster, &wal.name, &wal.sha256, limit).await? {
        return Ok(there);
    }
    let stored = tokio::time::timeout(
        limit,
        crate::pipeline::store_bytes_unlimited(&repo.store, &key, wal.bytes.clone(), settings),
    )
    .await;
    match stored {
        Err(_) => Err(PushError::TimedOut {
            repository: repo.name.clone(),
            action: format!("storing {}", wal.name),
            after: limit,
        }),
        Ok(Ok(record)) => Ok(Stored::New(record)),
        // A concurrent push of the same content won the race: same key, same content.
        Ok(Err(PipelineError::Store(StoreError::AlreadyExists { .. }))) => {
            Ok(Stored::AlreadyThere { key })
        }
        Ok(Err(source)) => Err(PushError::Pipeline {
            repository: repo.name.clone(),
            name: wal.name.name.clone(),
            source: Box::new(source),
        }),
    }
}

/// The duplicate rules: `Some(AlreadyThere)` when `sha256` is stored for `name`, the
/// `Duplicate` error when another content is, `None` when nothing is.
async fn check_duplicates(
    repo: &Repository,
    cluster: &ClusterIdentity,
    name: &WalName,
    sha256: &str,
    limit: Duration,
) -> Result<Option<Stored>, PushError> {
    let hashes = stored_hashes(repo, cluster, name, limit).await?;
    if let Some(other) = hashes.iter().find(|h| **h != sha256) {
        return Err(PushError::Duplicate {
            repository: repo.name.clone(),
            name: name.name.clone(),
            existing: other.clone(),
            sha256: sha256.to_string(),
        });
    }
    if !hashes.is_empty() {
        return Ok(Some(Stored::AlreadyThere {
            key: object_key(cluster, name, sha256),
        }));
    }
    Ok(None)
}

/// What a repository holds for a WAL file, read before the file is sealed (the push overlaps
/// these look-ups with reading, hashing and compressing it): see [`precheck`].
#[derive(Debug, Clone)]
pub struct Precheck {
    /// `wal/archive.json` is there and names this cluster (else [`store_prechecked`] creates it).
    pub archive_info: bool,
    /// The plaintext hashes stored under the file's name (normally none).
    pub hashes: Vec<String>,
}

/// Reads `archive.json` (checked when present, never created here) and lists what is stored
/// under `name`: nothing is written, so a file that turns out to be bad leaves no trace.
pub async fn precheck(
    repo: &Repository,
    cluster: &ClusterIdentity,
    name: &WalName,
    limit: Duration,
) -> Result<Precheck, PushError> {
    let archive_info = match read_archive_info(repo, limit).await? {
        Some(info) => {
            check_archive_info(&repo.name, &info, cluster)?;
            true
        }
        None => false,
    };
    Ok(Precheck {
        archive_info,
        hashes: stored_hashes(repo, cluster, name, limit).await?,
    })
}

/// [`store_sealed`] after a [`precheck`] of `repo`: `archive.json` created if it was missing,
/// the duplicate rules applied to the hashes listed then, the object written (durable on return).
pub async fn store_prechecked(
    repo: &Repository,
    cluster: &ClusterIdentity,
    wal: &SealedWal,
    checked: &Precheck,
    staged: Option<LocalWriter>,
    now: DateTime<Utc>,
    limit: Duration,
) -> Result<Stored, PushError> {
    if !checked.archive_info {
        ensure_archive_info(repo, cluster, now, limit).await?;
    }
    if let Some(other) = checked.hashes.iter().find(|h| **h != wal.sha256) {
        return Err(PushError::Duplicate {
            repository: repo.name.clone(),
            name: wal.name.name.clone(),
            existing: other.clone(),
            sha256: wal.sha256.clone(),
        });
    }
    if !checked.hashes.is_empty() {
        return Ok(Stored::AlreadyThere {
            key: object_key(cluster, &wal.name, &wal.sha256),
        });
    }
    match staged {
        // Written while sealed (exactly the object: see `seal_wal_file_staged`).
        Some(staged) => {
            super::staged::publish(repo, staged, cluster, &wal.name, &wal.sha256, limit).await
        }
        None => write_sealed(repo, cluster, wal, limit).await,
    }
}

/// [`store_wal`] for a [`SealedWal`]: the duplicate rules, then its bytes written as they are
/// (durable on return). `archive.json` must have been checked.
pub async fn store_sealed(
    repo: &Repository,
    cluster: &ClusterIdentity,
    wal: &SealedWal,
    limit: Duration,
) -> Result<Stored, PushError> {
    if let Some(there) = check_duplicates(repo, cluster, &wal.name, &wal.sha256, limit).await? {
        return Ok(there);
    }
    write_sealed(repo, cluster, wal, limit).await
}

/// Writes the sealed object under its key (create-only; durable on return).
async fn write_sealed(
    repo: &Repository,
    cluster: &ClusterIdentity,
    wal: &SealedWal,
    limit: Duration,
) -> Result<Stored, PushError> {
    let key = object_key(cluster, &wal.name, &wal.sha256);
    let write = async {
        let mut w = repo.store.writer_unlimited(&key).await?;
        w.write(wal.object.clone()).await?;
        w.finish().await
    };
    match tokio::time::timeout(limit, write).await {
        Err(_) => Err(PushError::TimedOut {
            repository: repo.name.clone(),
            action: format!("storing {}", wal.name),
            after: limit,
        }),
        Ok(Ok(size)) => Ok(Stored::Written { key, size }),
        // A concurrent push of the same content won the race: same key, same content.
        Ok(Err(StoreError::AlreadyExists { .. })) => Ok(Stored::AlreadyThere { key }),
        Ok(Err(e)) => Err(store_err(repo)(e)),
    }
}

/// Whether the object of `key` is present in `repo` (bounded).
pub async fn is_stored(repo: &Repository, key: &str, limit: Duration) -> Result<bool, PushError> {
    bounded(
        &repo.name,
        &format!("looking up {key}"),
        limit,
        repo.store.head(key),
        store_err(repo),
    )
    .await
    .map(|m| m.is_some())
}

/// Copies an archived object byte for byte from `from` to `to` (the async repositories' backlog:
/// the ciphertext is the committed sync copy's), applying the duplicate rules in `to`.
pub async fn copy_archived(
    from: &Repository,
    to: &Repository,
    key: &str,
    now: DateTime<Utc>,
    limit: Duration,
) -> Result<Stored, PushError> {
    let parsed = parse_object_key(key).ok_or_else(|| PushError::BadName(key.to_string()))?;
    ensure_archive_info(to, &parsed.identity, now, limit).await?;
    let hashes = stored_hashes(to, &parsed.identity, &parsed.name, limit).await?;
    if let Some(other) = hashes.iter().find(|h| **h != parsed.sha256) {
        return Err(PushError::Duplicate {
            repository: to.name.clone(),
            name: parsed.name.name.clone(),
            existing: other.clone(),
            sha256: parsed.sha256.clone(),
        });
    }
    if !hashes.is_empty() {
        return Ok(Stored::AlreadyThere { key: key.into() });
    }
    let bytes = bounded(
        &from.name,
        &format!("reading {key}"),
        limit,
        from.store.get(key),
        store_err(from),
    )
    .await?;
    let size = bytes.len() as u64;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let write = async {
        let mut w = to.store.writer_unlimited(key).await?;
        w.write(bytes).await?;
        w.finish().await
    };
    match tokio::time::timeout(limit, write).await {
        Err(_) => Err(PushError::TimedOut {
            repository: to.name.clone(),
            action: format!("copying {key}"),
            after: limit,
        }),
        Ok(Ok(_)) => Ok(Stored::New(ObjectRecord {
            key: key.to_string(),
            size,
            sha256,
            content_size: 0,
            content_sha256: parsed.sha256,
            compression: "zstd".into(),
            encryption: "age".into(),
        })),
        Ok(Err(StoreError::AlreadyExists { .. })) => Ok(Stored::AlreadyThere { key: key.into() }),
        Ok(Err(e)) => Err(store_err(to)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::testing::{cluster, file_with, segment, zstd_settings};

    #[test]
    fn checks_size_and_system() {
        let id = ClusterIdentity {
            system_identifier: 42,
            pg_major: 15,
        };
        let name = WalName::parse("000000010000000000000001").unwrap();
        let ok = read_wal_file(&file_with(&segment(42, 1 << 20)), &name, &id).unwrap();
        assert_eq!(ok.segment_size, Some(1 << 20));
        assert_eq!(ok.sha256.len(), 64);
        let short = read_wal_file(&file_with(&segment(42, 1 << 20)[..4096]), &name, &id);
        assert!(matches!(short, Err(PushError::Size { .. })), "{short:?}");
        let other = read_wal_file(&file_with(&segment(43, 1 << 20)), &name, &id);
        assert!(
            matches!(
                other,
                Err(PushError::WrongSegmentCluster { segment: 43, .. })
            ),
            "{other:?}"
        );
        let misnamed = WalName::parse("000000010000000000000002").unwrap();
        let wrong = read_wal_file(&file_with(&segment(42, 1 << 20)), &misnamed, &id);
        assert!(
            matches!(&wrong, Err(PushError::WrongPosition { found, expected, .. }) if found == "0/100000" && expected == "0/200000"),
            "{wrong:?}"
        );
        let garbage = read_wal_file(&file_with(&[0u8; 1 << 20]), &name, &id);
        assert!(matches!(garbage, Err(PushError::Header { .. })));
        let history = WalName::parse("00000002.history").unwrap();
        let h = read_wal_file(
            &file_with(b"1\t0/3000000\tno recovery target\n"),
            &history,
            &id,
        )
        .unwrap();
        assert_eq!(h.segment_size, None);
    }

    #[test]
    fn sealing_checks_the_file_like_reading_it() {
        let id = cluster();
        let key = age::x25519::Identity::generate();
        let settings = zstd_settings(&key);
        let name = WalName::parse("000000010000000000000001").unwrap();
        let seal = |bytes: &[u8], name: &WalName| {
            seal_wal_file(&file_with(bytes), name, &id, &settings).map(|s| s.sha256)
        };
        let good = segment(42, 1 << 20);
        assert_eq!(
            seal(&good, &name).unwrap(),
            hex::encode(Sha256::digest(&good))
        );
        let empty = seal(&[], &name);
        assert!(matches!(empty, Err(PushError::Header { .. })), "{empty:?}");
        let short = seal(&good[..4096], &name);
        assert!(matches!(short, Err(PushError::Size { .. })), "{short:?}");
        let misnamed = WalName::parse("000000010000000000000002").unwrap();
        let wrong = seal(&good, &misnamed);
        assert!(
            matches!(wrong, Err(PushError::WrongPosition { .. })),
            "{wrong:?}"
        );
        let other = seal(&segment(43, 1 << 20), &name);
        assert!(
            matches!(other, Err(PushError::WrongSegmentCluster { .. })),
            "{other:?}"
        );
    }

    #[tokio::test]
    async fn duplicate_rules_and_archive_info() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::with_store(
            "r",
            crate::repository::Store::local(dir.path().join("repo")).unwrap(),
        );
        let id = ClusterIdentity {
            system_identifier: 42,
            pg_major: 15,
        };
        let other = ClusterIdentity {
            system_identifier: 43,
            pg_major: 15,
        };
        let limit = Duration::from_secs(10);
        ensure_archive_info(&repo, &id, Utc::now(), limit)
            .await
            .unwrap();
        ensure_archive_info(&repo, &id, Utc::now(), limit)
            .await
            .unwrap();
        let err = ensure_archive_info(&repo, &other, Utc::now(), limit)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("belongs to cluster 42"), "{err}");

        let key = age::x25519::Identity::generate();
        let settings = PipelineSettings::new(
            crate::catalogue::CompressionSettings {
                algorithm: crate::catalogue::Compression::Zstd,
                level: 3,
                workers: 1,
            },
            vec![key.to_public()],
        );
        let name = WalName::parse("00000002.history").unwrap();
        let wal = read_wal_file(&file_with(b"first\n"), &name, &id).unwrap();
        assert!(matches!(
            store_wal(&repo, &id, &wal, &settings, limit).await.unwrap(),
            Stored::New(_)
        ));
        assert!(matches!(
            store_wal(&repo, &id, &wal, &settings, limit).await.unwrap(),
            Stored::AlreadyThere { .. }
        ));
        let changed = read_wal_file(&file_with(b"second\n"), &name, &id).unwrap();
        let err = store_wal(&repo, &id, &changed, &settings, limit)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("already archived with different content"),
            "{err}"
        );
        assert_eq!(
            stored_hashes(&repo, &id, &name, limit).await.unwrap(),
            vec![wal.sha256.clone()]
        );
    }

    #[tokio::test]
    async fn sealed_objects_read_back_and_follow_the_duplicate_rules() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::with_store(
            "r",
            crate::repository::Store::local(dir.path().join("repo")).unwrap(),
        );
        let id = ClusterIdentity {
            system_identifier: 42,
            pg_major: 15,
        };
        let limit = Duration::from_secs(10);
        let key = age::x25519::Identity::generate();
        let name = WalName::parse("000000010000000000000001").unwrap();
        let mut bytes = segment(42, 1 << 20);
        for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
            *b = (i % 251) as u8;
        }
        for (algorithm, level) in [
            (crate::catalogue::Compression::Zstd, 1),
            (crate::catalogue::Compression::Gzip, 6),
        ] {
            let mut settings = PipelineSettings::new(
                crate::catalogue::CompressionSettings {
                    algorithm,
                    level,
                    workers: 2,
                },
                vec![key.to_public()],
            );
            settings.frame_size = 100_000; // several frames
            let sealed = seal_wal_file(&file_with(&bytes), &name, &id, &settings).unwrap();
            assert_eq!(sealed.sha256, hex::encode(Sha256::digest(&bytes)));
            assert_eq!(sealed.size, bytes.len() as u64);
            let sub = Repository::with_store(
                "r",
                crate::repository::Store::local(dir.path().join(format!("{algorithm:?}"))).unwrap(),
            );
            let Stored::Written {
                key: stored_key,
                size,
            } = store_sealed(&sub, &id, &sealed, limit).await.unwrap()
            else {
                panic!("not stored")
            };
            let object = sub.store.get(&stored_key).await.unwrap();
            assert_eq!(object.len() as u64, size);
            let record = ObjectRecord {
                key: stored_key,
                size,
                sha256: hex::encode(Sha256::digest(&object)),
                content_size: sealed.size,
                content_sha256: sealed.sha256.clone(),
                compression: sealed.compression.into(),
                encryption: "age".into(),
            };
            let back = crate::pipeline::load_bytes(
                &sub.store,
                &record,
                &crate::pipeline::Identities::from_keys(vec![key.clone()]),
            )
            .await
            .unwrap();
            assert!(back[..] == bytes[..]);
            if algorithm == crate::catalogue::Compression::Zstd {
                // Independent frames of the frame size, as the pipeline writes them.
                let plain_frames = bytes.len().div_ceil(100_000);
                let identity = key.clone();
                let mut zst = Vec::new();
                std::io::Read::read_to_end(
                    &mut age::Decryptor::new(&object[..])
                        .unwrap()
                        .decrypt(std::iter::once(&identity as &dyn age::Identity))
                        .unwrap(),
                    &mut zst,
                )
                .unwrap();
                let sizes = crate::pipeline::compress::zstd_frame_sizes(&zst).unwrap();
                assert_eq!(sizes.len(), plain_frames);
                assert!(plain_frames > 1);
            }
            assert!(matches!(
                store_sealed(&sub, &id, &sealed, limit).await.unwrap(),
                Stored::AlreadyThere { .. }
            ));
        }
        // Another content under the same name: the duplicate error.
        let settings = PipelineSettings::new(
            crate::catalogue::CompressionSettings {
                algorithm: crate::catalogue::Compression::Zstd,
                level: 1,
                workers: 1,
            },
            vec![key.to_public()],
        );
        let first = seal_wal_file(&file_with(&bytes), &name, &id, &settings).unwrap();
        store_sealed(&repo, &id, &first, limit).await.unwrap();
        bytes[9000] ^= 1;
        let other = seal_wal_file(&file_with(&bytes), &name, &id, &settings).unwrap();
        let err = store_sealed(&repo, &id, &other, limit).await.unwrap_err();
        assert!(matches!(err, PushError::Duplicate { .. }), "{err}");
        let bad = seal_wal_file(&file_with(&segment(43, 1 << 20)), &name, &id, &settings);
        assert!(matches!(bad, Err(PushError::WrongSegmentCluster { .. })));
    }
}
