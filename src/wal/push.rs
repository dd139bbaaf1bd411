//! Archiving one WAL file into one repository (docs/design.md §5): read and check the file, the
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
use std::io::{self, Write};
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
    let mut buf = Vec::new();
    let segment_size = read_checked(file, name, cluster, &mut buf)?;
    let sha256 = hex::encode(Sha256::digest(&buf));
    Ok(WalFile {
        name: name.clone(),
        bytes: Bytes::from(buf),
        sha256,
        segment_size,
    })
}

/// Reads the whole file into `buf` (resized to the file's size; one large `pread` in the normal
/// case) and checks it like [`read_wal_file`], without hashing. Returns the segment size.
fn read_checked(
    file: &std::fs::File,
    name: &WalName,
    cluster: &ClusterIdentity,
    buf: &mut Vec<u8>,
) -> Result<Option<u64>, PushError> {
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
    // A reused buffer keeps its pages: no page faults for 16 MiB on every push.
    buf.resize(size as usize, 0);
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
        let header = WalHeader::parse(buf).map_err(|source| PushError::Header {
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
    Ok(segment_size)
}

/// Read buffers kept between pushes (at most this many).
const KEPT_BUFFERS: usize = 4;
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn take_buffer() -> Vec<u8> {
    BUFFERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default()
}

fn give_buffer(buf: Vec<u8>) {
    // Only segment-sized buffers are worth keeping (1 GiB segments are not kept).
    if buf.capacity() > 64 << 20 {
        return;
    }
    let mut kept = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    if kept.len() < KEPT_BUFFERS {
        kept.push(buf);
    }
}

/// A WAL file read, checked, compressed and encrypted once, ready to be written as is into every
/// sync repository (the recipients are the catalogue's, the same for all of them).
#[derive(Debug, Clone)]
pub struct SealedWal {
    pub name: WalName,
    /// Plaintext size.
    pub size: u64,
    /// SHA-256 of the plaintext, lowercase hex (the key carries it).
    pub sha256: String,
    /// The object's bytes: age(zstd frames) or age(gzip).
    pub object: Bytes,
    /// SHA-256 of `object`.
    pub object_sha256: String,
    pub compression: &'static str,
}

/// Reads and checks the file (as [`read_wal_file`]), then hashes the plaintext on one thread
/// while its frames are compressed on `settings.compression.workers` others, then encrypts.
/// The object has the pipeline's format (independent zstd frames of the frame size, or one gzip
/// stream, inside age). Blocking.
pub fn seal_wal_file(
    file: &std::fs::File,
    name: &WalName,
    cluster: &ClusterIdentity,
    settings: &PipelineSettings,
) -> Result<SealedWal, PushError> {
    let mut buf = take_buffer();
    let result =
        read_checked(file, name, cluster, &mut buf).and_then(|_| seal(&buf, name, settings));
    give_buffer(buf);
    result
}

/// Compresses and encrypts `plain` (already read and checked) as [`seal_wal_file`] does: the
/// streamed `.partial` seals only its written prefix (src/wal/partial.rs). Blocking.
pub fn seal(
    plain: &[u8],
    name: &WalName,
    settings: &PipelineSettings,
) -> Result<SealedWal, PushError> {
    use crate::catalogue::Compression;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let failed = |source: PipelineError| PushError::Pipeline {
        repository: "(all)".into(),
        name: name.name.clone(),
        source: Box::new(source),
    };
    if settings.recipients.is_empty() {
        return Err(failed(PipelineError::Encrypt(
            "no age recipients configured".into(),
        )));
    }
    let level = settings.compression.level;
    let frame_size = settings.effective_frame_size();
    let frames: Vec<&[u8]> = plain.chunks(frame_size).collect();
    let workers = settings.compression.workers.clamp(1, frames.len().max(1));
    let zstd = settings.compression.algorithm == Compression::Zstd;
    let encrypt_err = |e: io::Error| failed(PipelineError::Encrypt(e.to_string()));
    let encryptor = age::Encryptor::with_recipients(
        settings.recipients.iter().map(|r| r as &dyn age::Recipient),
    )
    .map_err(|e| failed(PipelineError::Encrypt(e.to_string())))?;
    // The object is hashed as age writes it (no second pass over it).
    let mut w = encryptor
        .wrap_output(HashingVec::with_capacity(plain.len() / 2 + 4096))
        .map_err(encrypt_err)?;
    // The plaintext is hashed on one thread while frames are compressed on `workers` others;
    // this thread encrypts each frame as soon as it and the ones before it are compressed.
    let next = AtomicUsize::new(0);
    let (sha256, compression) = std::thread::scope(|scope| {
        let hasher = scope.spawn(|| hex::encode(Sha256::digest(plain)));
        let compression = if zstd {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, io::Result<Vec<u8>>)>();
            for _ in 0..workers {
                let tx = tx.clone();
                let (next, frames) = (&next, &frames);
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = frames.get(i) else { break };
                        let out = crate::pipeline::compress::zstd_frame(f, level);
                        if tx.send((i, out)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut waiting: std::collections::BTreeMap<usize, Vec<u8>> = Default::default();
            let mut written = 0usize;
            while written < frames.len() {
                let Ok((i, out)) = rx.recv() else {
                    return Err(PipelineError::Task(format!(
                        "frame {written} was not compressed (a compression thread failed)"
                    )));
                };
                waiting.insert(i, out.map_err(PipelineError::Compress)?);
                while let Some(f) = waiting.remove(&written) {
                    w.write_all(&f)
                        .map_err(|e| PipelineError::Encrypt(e.to_string()))?;
                    crate::pipeline::buffers::give(f);
                    written += 1;
                }
            }
            if frames.is_empty() {
                // An empty file still gets one (empty) zstd frame: a valid zstd stream.
                let empty = crate::pipeline::compress::zstd_frame(&[], level)
                    .map_err(PipelineError::Compress)?;
                w.write_all(&empty)
                    .map_err(|e| PipelineError::Encrypt(e.to_string()))?;
            }
            "zstd"
        } else {
            let level = u32::try_from(level.clamp(0, 9)).unwrap_or(6);
            let mut gz = flate2::write::GzEncoder::new(&mut w, flate2::Compression::new(level));
            gz.write_all(plain)
                .and_then(|_| gz.finish().map(|_| ()))
                .map_err(|e| PipelineError::Encrypt(e.to_string()))?;
            "gzip"
        };
        let sha256 = hasher
            .join()
            .map_err(|_| PipelineError::Task("the hashing thread failed".into()))?;
        Ok((sha256, compression))
    })
    .map_err(failed)?;
    let (object, object_sha256) = w.finish().map_err(encrypt_err)?.finish();
    Ok(SealedWal {
        name: name.clone(),
        size: plain.len() as u64,
        sha256,
        object: Bytes::from(object),
        object_sha256,
        compression,
    })
}

/// A `Vec` that hashes what is written into it (the sealed object and its SHA-256 in one pass).
struct HashingVec {
    out: Vec<u8>,
    hasher: Sha256,
}

impl HashingVec {
    fn with_capacity(n: usize) -> HashingVec {
        HashingVec {
            out: Vec::with_capacity(n),
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> (Vec<u8>, String) {
        (self.out, hex::encode(self.hasher.finalize()))
    }
}

impl Write for HashingVec {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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

/// [`store_wal`] for a [`SealedWal`]: the duplicate rules, then its bytes written as they are
/// (durable on return). `archive.json` must have been checked.
pub async fn store_sealed(
    repo: &Repository,
    cluster: &ClusterIdentity,
    wal: &SealedWal,
    limit: Duration,
) -> Result<Stored, PushError> {
    let key = object_key(cluster, &wal.name, &wal.sha256);
    if let Some(there) = check_duplicates(repo, cluster, &wal.name, &wal.sha256, limit).await? {
        return Ok(there);
    }
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
        Ok(Ok(size)) => Ok(Stored::New(ObjectRecord {
            key,
            size,
            sha256: wal.object_sha256.clone(),
            content_size: wal.size,
            content_sha256: wal.sha256.clone(),
            compression: wal.compression.into(),
            encryption: "age".into(),
        })),
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
            let Stored::New(record) = store_sealed(&sub, &id, &sealed, limit).await.unwrap() else {
                panic!("not stored")
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
                let object = sub.store.get(&record.key).await.unwrap();
                assert_eq!(object.len() as u64, record.size);
                assert_eq!(hex::encode(Sha256::digest(&object)), record.sha256);
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
