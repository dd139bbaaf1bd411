//! Fetching one archived WAL file back (`wal-fetch`, `restore cluster`), without the daemon:
//! the archive's identity check, the "two hashes" refusal, decryption and the plaintext hash
//! check, the retry window for transient faults, the atomic write of the destination and the
//! prefetch spool (docs/design.md §5).

use super::format::{ARCHIVE_INFO_KEY, object_key};
use super::header::{ClusterIdentity, WalHeader};
use super::name::{WalKind, WalName};
use super::push::{PushError, check_archive_info, read_archive_info, stored_hashes};
use crate::catalogue::{Catalogue, JobSpec, WalAck};
use crate::error::{Classify, Retry};
use crate::pipeline::Identities;
use crate::repository::{Repository, StoreError};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// At most this many prefetches run at once.
pub const PREFETCH_CONCURRENCY: usize = 8;

/// One repository call may take at most this long (and never past the caller's window).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("`{0}` is not a WAL file name")]
    BadName(String),
    #[error(
        "repository `{repository}`: {name} is stored with two different contents ({hashes}); refusing to choose"
    )]
    TwoHashes {
        repository: String,
        name: String,
        hashes: String,
    },
    #[error("repository `{repository}`: {key} is damaged: {reason}")]
    Corrupt {
        repository: String,
        key: String,
        reason: String,
    },
    #[error("repository `{repository}`: cannot decrypt {key}: {reason}")]
    Decrypt {
        repository: String,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Repository(Box<PushError>),
    #[error("writing {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no repository to fetch from: the catalogue has no postgres-wal job with repositories, or --repository names none of them"
    )]
    NoRepository,
    /// Transient faults went on for the whole retry window.
    #[error("gave up after {} s of transient errors: {last}", .after.as_secs())]
    GaveUp {
        after: Duration,
        #[source]
        last: Box<FetchError>,
    },
    /// Every repository failed; the errors, one per repository.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    All(Vec<FetchError>),
}

impl From<PushError> for FetchError {
    fn from(e: PushError) -> Self {
        FetchError::Repository(Box::new(e))
    }
}

impl Classify for FetchError {
    fn retry(&self) -> Retry {
        match self {
            FetchError::Repository(e) => e.retry(),
            FetchError::GaveUp { .. } => Retry::Permanent,
            FetchError::All(errors) => {
                if errors.iter().any(|e| e.retry() == Retry::Transient) {
                    Retry::Transient
                } else {
                    Retry::Permanent
                }
            }
            _ => Retry::Permanent,
        }
    }
}

/// A fetched and verified WAL file.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub repository: String,
    pub sha256: String,
    pub bytes: Vec<u8>,
}

/// Decrypts and decompresses an archived object (age ⟶ zstd). Blocking.
pub fn decode_object(stored: &[u8], identities: &Identities) -> Result<Vec<u8>, String> {
    let decryptor = age::Decryptor::new_buffered(stored).map_err(|e| e.to_string())?;
    let plain = decryptor
        .decrypt(identities.keys.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => match &identities.file {
                Some(p) => format!("no identity in {} matches the object", p.display()),
                None => "no given identity matches the object".to_string(),
            },
            other => other.to_string(),
        })?;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(plain)
        .and_then(|mut d| d.read_to_end(&mut out))
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// One attempt in one repository: Ok(None) when it does not hold `name`.
pub async fn fetch_from(
    repo: &Repository,
    cluster: &ClusterIdentity,
    name: &WalName,
    identities: &Identities,
    limit: Duration,
) -> Result<Option<Fetched>, FetchError> {
    match read_archive_info(repo, limit).await? {
        Some(info) => check_archive_info(&repo.name, &info, cluster)?,
        // No archive here at all: nothing was ever pushed into this repository.
        None => {
            tracing::debug!(repository = %repo.name, "no {ARCHIVE_INFO_KEY}");
        }
    }
    let hashes = stored_hashes(repo, cluster, name, limit).await?;
    let sha256 = match hashes.as_slice() {
        [] => return Ok(None),
        [one] => one.clone(),
        many => {
            return Err(FetchError::TwoHashes {
                repository: repo.name.clone(),
                name: name.name.clone(),
                hashes: many.join(", "),
            });
        }
    };
    let key = object_key(cluster, name, &sha256);
    let stored = match tokio::time::timeout(limit, repo.store.get(&key)).await {
        Err(_) => {
            return Err(PushError::TimedOut {
                repository: repo.name.clone(),
                action: format!("reading {key}"),
                after: limit,
            }
            .into());
        }
        // Listed a moment ago, gone now (retention?): "not found" here.
        Ok(Err(StoreError::NotFound { .. })) => return Ok(None),
        Ok(Err(source)) => {
            return Err(PushError::Store {
                repository: repo.name.clone(),
                source: Box::new(source),
            }
            .into());
        }
        Ok(Ok(b)) => b,
    };
    let stored_len = stored.len();
    let ids = identities.clone();
    let decoded = tokio::task::spawn_blocking(move || decode_object(&stored, &ids))
        .await
        .map_err(|e| FetchError::Decrypt {
            repository: repo.name.clone(),
            key: key.clone(),
            reason: e.to_string(),
        })?;
    let bytes = match decoded {
        Ok(b) => b,
        Err(reason) if reason.contains("no identity") || reason.contains("no given identity") => {
            return Err(FetchError::Decrypt {
                repository: repo.name.clone(),
                key,
                reason,
            });
        }
        Err(reason) => {
            let what = if stored_len == 0 {
                "truncated: the stored object is empty (0 bytes)".to_string()
            } else {
                format!("corrupted: its {stored_len} stored bytes do not decrypt ({reason})")
            };
            return Err(FetchError::Corrupt {
                repository: repo.name.clone(),
                key,
                reason: format!("{what}; {}", crate::pipeline::decode::NO_RETRY),
            });
        }
    };
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != sha256 {
        return Err(FetchError::Corrupt {
            repository: repo.name.clone(),
            key,
            reason: format!("its content has sha256 {actual}"),
        });
    }
    // A streamed `.partial` holds only its written prefix: back to a full-size segment file.
    let bytes = if name.kind == WalKind::Partial {
        super::partial::pad_partial(bytes).map_err(|reason| FetchError::Corrupt {
            repository: repo.name.clone(),
            key,
            reason,
        })?
    } else {
        bytes
    };
    Ok(Some(Fetched {
        repository: repo.name.clone(),
        sha256,
        bytes,
    }))
}

/// Fetches `name` from the first repository that holds a good copy, in the given order
/// (sync repositories first). Ok(None) only when every repository answered "not found";
/// transient faults are retried with backoff within `window`; a damaged copy in one repository
/// falls through to the next.
pub async fn fetch(
    repos: &[Repository],
    cluster: &ClusterIdentity,
    name: &WalName,
    identities: &Identities,
    window: Duration,
) -> Result<Option<Fetched>, FetchError> {
    if repos.is_empty() {
        // "Not found" from no repository at all would end a recovery: an error instead.
        return Err(FetchError::NoRepository);
    }
    let deadline = Instant::now() + window;
    let mut backoff = Duration::from_millis(250);
    loop {
        let mut errors = Vec::new();
        for repo in repos {
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = CALL_TIMEOUT.min(left).max(Duration::from_millis(200));
            match fetch_from(repo, cluster, name, identities, limit).await {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(repository = %repo.name, error = %e, "wal-fetch {name}");
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            return Ok(None);
        }
        let transient = errors.iter().any(|e| e.retry() == Retry::Transient);
        let left = deadline.saturating_duration_since(Instant::now());
        if !transient || left.is_zero() {
            let err = if errors.len() == 1 {
                errors.remove(0)
            } else {
                FetchError::All(errors)
            };
            return Err(if transient {
                FetchError::GaveUp {
                    after: window,
                    last: Box::new(err),
                }
            } else {
                err
            });
        }
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The postgres-wal job's repositories, sync first (or only `only`).
/// (`restore cluster` uses this with [`fetch`] and [`write_atomic`].)
pub fn wal_repositories(
    catalogue: &Catalogue,
    only: Option<&str>,
) -> Result<Vec<Repository>, String> {
    let job = catalogue
        .jobs
        .iter()
        .find(|j| matches!(j.spec, JobSpec::PostgresWal(_)))
        .ok_or("the catalogue has no postgres-wal job")?;
    let mut settings = Vec::new();
    for name in &job.repositories {
        let s = catalogue
            .repository(name)
            .ok_or_else(|| format!("repository `{name}` is not in the catalogue"))?;
        settings.push(s);
    }
    if let Some(only) = only {
        let s = catalogue
            .repository(only)
            .ok_or_else(|| format!("repository `{only}` is not in the catalogue"))?;
        settings = vec![s];
    }
    settings.sort_by_key(|s| s.wal_ack != WalAck::Sync);
    settings
        .into_iter()
        .map(|s| Repository::open(s).map_err(|e| crate::error::error_chain_of(&e)))
        .collect()
}

/// Writes `bytes` to `dest` atomically: a temp file in its folder, fsync, rename, folder fsync.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let err = |source| FetchError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".bdc-wal-")
        .tempfile_in(&dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(dest).map_err(|e| err(e.error))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

/// The `n` segments after `name` on its timeline (none for non-segments).
pub fn next_segments(name: &WalName, segment_size: u64, n: u32) -> Vec<WalName> {
    if name.kind != WalKind::Segment || segment_size == 0 {
        return Vec::new();
    }
    let per_log = 0x1_0000_0000u64 / segment_size;
    let segno = u64::from(name.log) * per_log + u64::from(name.seg);
    (1..=u64::from(n))
        .filter_map(|i| {
            let s = segno + i;
            WalName::parse(&format!(
                "{:08X}{:08X}{:08X}",
                name.timeline,
                s / per_log,
                s % per_log
            ))
        })
        .collect()
}

/// The segment size of a fetched segment, from its long header.
pub fn segment_size_of(bytes: &[u8]) -> Option<u64> {
    WalHeader::parse(bytes)
        .ok()
        .map(|h| u64::from(h.segment_size))
}

/// The prefetch spool: verified segments fetched ahead, named as PostgreSQL asks for them.
pub struct Spool {
    pub dir: PathBuf,
}

impl Spool {
    /// Moves `name` from the spool to `dest` if it is there (true when served).
    pub fn take(&self, name: &WalName, dest: &Path) -> Result<bool, FetchError> {
        let path = self.dir.join(&name.name);
        if !path.is_file() {
            return Ok(false);
        }
        match std::fs::rename(&path, dest) {
            Ok(()) => {
                if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(true)
            }
            // Another file system: copy, then remove.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let bytes = std::fs::read(&path).map_err(|source| FetchError::Write {
                    path: path.clone(),
                    source,
                })?;
                write_atomic(dest, &bytes)?;
                let _ = std::fs::remove_file(&path);
                Ok(true)
            }
            Err(source) => Err(FetchError::Write {
                path: dest.to_path_buf(),
                source,
            }),
        }
    }

    /// Removes spooled segments of `name`'s timeline that come before it (and stray temp files).
    pub fn clean_before(&self, name: &WalName) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let stale = match WalName::parse(file) {
                Some(w) => {
                    w.kind == WalKind::Segment
                        && w.timeline == name.timeline
                        && w.position() < name.position()
                }
                None => file.starts_with(".bdc-wal-"),
            };
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Fetches the given segments concurrently into the spool (those not there yet); failures
    /// and "not found" are only logged: the real request for the segment will report them.
    pub async fn prefetch(
        &self,
        repos: &[Repository],
        cluster: &ClusterIdentity,
        names: Vec<WalName>,
        identities: &Identities,
        window: Duration,
    ) -> usize {
        let wanted: Vec<WalName> = names
            .into_iter()
            .filter(|n| !self.dir.join(&n.name).exists())
            .collect();
        use futures::StreamExt;
        let results: Vec<bool> = futures::stream::iter(wanted.iter().map(|n| async move {
            match fetch(repos, cluster, n, identities, window).await {
                Ok(Some(f)) => match write_atomic(&self.dir.join(&n.name), &f.bytes) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "prefetch {n}");
                        false
                    }
                },
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "prefetch {n}");
                    false
                }
            }
        }))
        .buffer_unordered(PREFETCH_CONCURRENCY)
        .collect()
        .await;
        results.into_iter().filter(|ok| *ok).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn following_segments() {
        let n = WalName::parse("0000000200000001000000FE").unwrap();
        let next: Vec<String> = next_segments(&n, 16 << 20, 3)
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(
            next,
            vec![
                "0000000200000001000000FF",
                "000000020000000200000000",
                "000000020000000200000001"
            ]
        );
        assert!(
            next_segments(&WalName::parse("00000002.history").unwrap(), 16 << 20, 3).is_empty()
        );
    }

    #[test]
    fn spool_serves_and_cleans() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool {
            dir: dir.path().join("spool"),
        };
        std::fs::create_dir(&spool.dir).unwrap();
        for n in [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
        ] {
            std::fs::write(spool.dir.join(n), n).unwrap();
        }
        let want = WalName::parse("000000010000000000000002").unwrap();
        spool.clean_before(&want);
        assert!(!spool.dir.join("000000010000000000000001").exists());
        let dest = dir.path().join("RECOVERYXLOG");
        assert!(spool.take(&want, &dest).unwrap());
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "000000010000000000000002"
        );
        assert!(!spool.take(&want, &dest).unwrap());
        assert!(spool.dir.join("000000010000000000000003").exists());
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        write_atomic(&dest, b"one").unwrap();
        write_atomic(&dest, b"two").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
