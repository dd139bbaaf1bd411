//! Archiving one WAL file into one repository (DESIGN §5): read and check the file, the
//! repository's `wal/archive.json`, the duplicate rules, the durable store. The daemon
//! (`daemon::wal`) runs this for every sync repository of the postgres-wal job at once.

use super::format::{ARCHIVE_INFO_KEY, ArchiveInfo, file_prefix, object_key, parse_object_key};
use super::header::{ClusterIdentity, HeaderError, WalHeader};
use super::name::{WalKind, WalName};
use crate::error::{Classify, Retry};
use crate::pipeline::{PipelineError, PipelineSettings};
use crate::repository::{ObjectRecord, Repository, StoreError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::io;
use std::time::Duration;

/// History and backup-label files larger than this are refused (they are a few hundred bytes).
const MAX_SMALL_FILE: u64 = 16 << 20;

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

/// A WAL file read and checked, ready to store.
#[derive(Debug, Clone)]
pub struct WalFile {
    pub name: WalName,
    pub bytes: Bytes,
    /// SHA-256 of `bytes`, lowercase hex.
    pub sha256: String,
    /// The segment size from the long header (segments and partials).
    pub segment_size: Option<u64>,
}

/// Reads the whole file from offset 0 (pread: the descriptor's offset is not used) and checks
/// it: a segment or `.partial` must be exactly its header's segment size and carry the system
/// identifier of `cluster`. Blocking.
pub fn read_wal_file(
    file: &std::fs::File,
    name: &WalName,
    cluster: &ClusterIdentity,
) -> Result<WalFile, PushError> {
    use std::os::unix::fs::FileExt;
    let read_err = |source| PushError::Read {
        name: name.name.clone(),
        source,
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let size = meta.len();
    let segment = matches!(name.kind, WalKind::Segment | WalKind::Partial);
    if !segment && size > MAX_SMALL_FILE {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{size} bytes is too large for a {:?} file", name.kind),
        )));
    }
    if segment && size > (1 << 30) {
        return Err(PushError::Size {
            name: name.name.clone(),
            size,
            expected: 1 << 30,
        });
    }
    let mut buf = vec![0u8; size as usize];
    let mut off = 0usize;
    while off < buf.len() {
        match file.read_at(&mut buf[off..], off as u64) {
            Ok(0) => {
                return Err(read_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file shrank to {off} bytes while reading"),
                )));
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    let mut segment_size = None;
    if segment {
        let header = WalHeader::parse(&buf).map_err(|source| PushError::Header {
            name: name.name.clone(),
            source,
        })?;
        if u64::from(header.segment_size) != size {
            return Err(PushError::Size {
                name: name.name.clone(),
                size,
                expected: u64::from(header.segment_size),
            });
        }
        let per_log = 0x1_0000_0000u64 / size;
        let expected = (u64::from(name.log) * per_log + u64::from(name.seg)) * size;
        if header.page_address != expected {
            return Err(PushError::WrongPosition {
                name: name.name.clone(),
                found: super::name::format_lsn(header.page_address),
                expected: super::name::format_lsn(expected),
            });
        }
        if header.system_identifier != cluster.system_identifier {
            return Err(PushError::WrongSegmentCluster {
                name: name.name.clone(),
                segment: header.system_identifier,
                request: cluster.system_identifier,
            });
        }
        segment_size = Some(size);
    }
    let sha256 = hex::encode(Sha256::digest(&buf));
    Ok(WalFile {
        name: name.clone(),
        bytes: Bytes::from(buf),
        sha256,
        segment_size,
    })
}

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
    let hashes = stored_hashes(repo, cluster, &wal.name, limit).await?;
    if let Some(other) = hashes.iter().find(|h| **h != wal.sha256) {
        return Err(PushError::Duplicate {
            repository: repo.name.clone(),
            name: wal.name.name.clone(),
            existing: other.clone(),
            sha256: wal.sha256.clone(),
        });
    }
    if !hashes.is_empty() {
        return Ok(Stored::AlreadyThere { key });
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
    use std::io::Write;

    fn segment(sysid: u64, size: usize) -> Vec<u8> {
        let mut b = vec![7u8; size];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        // segment 1 of 1 MiB segments
        b[8..16].copy_from_slice(&(1u64 << 20).to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&((1u32 << 20).to_le_bytes()));
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    fn file_with(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

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
}
