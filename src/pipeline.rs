//! The streaming pipeline (docs/design.md §2, §4): source bytes are cut into frames, compressed in
//! parallel as independent zstd frames (or one gzip stream), encrypted with age to the catalogue's
//! recipients, hashed (SHA-256 of content and of stored bytes) and written to a store — in bounded
//! memory. The reverse direction decrypts, checks the stored hash and decompresses.
//!
//! Write path, with bounded channels between the stages:
//!
//! ```text
//! source ─▶ frames (frame_size) ─▶ zstd per frame on ≤ workers blocking tasks ─▶ in order ─┐
//!   ┌──────────────────────────────────────────────────────────────────────────────────────┘
//!   ├▶ SHA-256(content) (blocking thread; the plaintext frame)
//!   └▶ age (blocking thread) ─▶ ciphertext chunks ─▶ SHA-256(stored) ─▶ ObjectWriter
//! ```
//!
//! Memory ≈ (2 × workers + 5) × frame_size plus a few 256 KiB ciphertext chunks, whatever the
//! input.

pub mod buffers;
pub mod compress;
pub mod decode;
pub mod encrypt;
pub mod frames;
pub mod ranged;

pub use ranged::read_frame;

use crate::catalogue::{Catalogue, Compression, CompressionSettings, Job};
use crate::error::{Classify, Retry};
use crate::repository::{ObjectRecord, Store};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The default uncompressed bytes per zstd frame.
pub const DEFAULT_FRAME_SIZE: usize = 2 << 20;

/// Everything the pipeline needs to write.
#[derive(Clone)]
pub struct PipelineSettings {
    pub compression: CompressionSettings,
    /// Parsed age recipients (at least one).
    pub recipients: Vec<age::x25519::Recipient>,
    /// Uncompressed bytes per zstd frame (default 2 MiB).
    pub frame_size: usize,
}

impl PipelineSettings {
    /// Settings with the default frame size.
    pub fn new(
        compression: CompressionSettings,
        recipients: Vec<age::x25519::Recipient>,
    ) -> PipelineSettings {
        PipelineSettings {
            compression,
            recipients,
            frame_size: DEFAULT_FRAME_SIZE,
        }
    }
}

/// An age recipient of the catalogue that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("recipient {recipient}: {reason}")]
pub struct RecipientError {
    pub recipient: String,
    pub reason: String,
}

impl Classify for RecipientError {
    fn retry(&self) -> Retry {
        Retry::Permanent
    }
}

impl PipelineSettings {
    /// The settings every run of `job` writes with: the job's compression, the catalogue's
    /// recipients, the default frame size. The one place they are assembled.
    ///
    /// # Errors
    /// A recipient that does not parse (the catalogue's validation normally catches it).
    pub fn for_job(catalogue: &Catalogue, job: &Job) -> Result<PipelineSettings, RecipientError> {
        let recipients = catalogue
            .encryption
            .recipients
            .iter()
            .map(|r| {
                r.parse::<age::x25519::Recipient>()
                    .map_err(|e| RecipientError {
                        recipient: r.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PipelineSettings::new(job.compression.clone(), recipients))
    }

    /// `frame_size`, or the default when it is 0.
    pub fn effective_frame_size(&self) -> usize {
        if self.frame_size == 0 {
            DEFAULT_FRAME_SIZE
        } else {
            self.frame_size
        }
    }
}

/// Live byte counters of a run, shared with the status report.
#[derive(Debug, Clone, Default)]
pub struct ProgressCounter {
    pub bytes_read: Arc<AtomicU64>,
    pub bytes_stored: Arc<AtomicU64>,
}

impl ProgressCounter {
    pub fn read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }
    pub fn stored(&self) -> u64 {
        self.bytes_stored.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("reading the source: {0}")]
    Source(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::repository::StoreError),
    #[error("encryption: {0}")]
    Encrypt(String),
    #[error("cancelled")]
    Cancelled,
    #[error("compressing: {0}")]
    Compress(#[source] std::io::Error),
    /// Reading an object back failed (damaged, truncated, wrong identity, …); names the key.
    #[error("reading object {key}: {source}")]
    Read {
        key: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pipeline task failed: {0}")]
    Task(String),
}

impl Classify for PipelineError {
    fn retry(&self) -> Retry {
        match self {
            PipelineError::Source(e) => crate::error::io_retry(e),
            PipelineError::Store(e) => e.retry(),
            PipelineError::Read { source, .. } if source.kind() == io::ErrorKind::InvalidData => {
                Retry::Permanent
            }
            PipelineError::Read { source, .. } => crate::error::io_retry(source),
            PipelineError::Task(_) => Retry::Transient,
            PipelineError::Encrypt(_) | PipelineError::Cancelled | PipelineError::Compress(_) => {
                Retry::Permanent
            }
        }
    }
}

/// The identities that decrypt (from the catalogue's identity file).
#[derive(Clone)]
pub struct Identities {
    pub keys: Vec<age::x25519::Identity>,
    /// The file they came from (named in "no identity matches" errors).
    pub file: Option<PathBuf>,
}

impl std::fmt::Debug for Identities {
    /// Never prints secret keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("keys", &self.keys.len())
            .field("file", &self.file)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("identity file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
    TooOpen { path: String, mode: u32 },
    #[error("identity file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl Classify for IdentityError {
    fn retry(&self) -> Retry {
        Retry::Permanent
    }
}

impl Identities {
    /// Identities given directly (tests, tools).
    pub fn from_keys(keys: Vec<age::x25519::Identity>) -> Identities {
        Identities { keys, file: None }
    }

    /// Loads an age identity file, refusing one readable by group or others.
    pub fn load(path: &Path) -> Result<Identities, IdentityError> {
        let shown = path.display().to_string();
        let io_err = |source| IdentityError::Io {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::TooOpen { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(io_err)?;
        Identities::parse(&text, &shown).map(|keys| Identities {
            keys,
            file: Some(path.to_path_buf()),
        })
    }

    /// Parses `AGE-SECRET-KEY-1…` lines; `#` comments and blank lines are ignored.
    pub fn parse(text: &str, shown: &str) -> Result<Vec<age::x25519::Identity>, IdentityError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !line.starts_with("AGE-SECRET-KEY-1") {
                return Err(IdentityError::Invalid {
                    path: shown.to_string(),
                    reason: format!(
                        "line {}: not an age X25519 identity (expected AGE-SECRET-KEY-1…)",
                        n + 1
                    ),
                });
            }
            let id: age::x25519::Identity =
                line.parse().map_err(|e: &str| IdentityError::Invalid {
                    path: shown.to_string(),
                    reason: format!("line {}: {e}", n + 1),
                })?;
            keys.push(id);
        }
        if keys.is_empty() {
            return Err(IdentityError::Invalid {
                path: shown.to_string(),
                reason: "no identities in the file".into(),
            });
        }
        Ok(keys)
    }
}

/// Where each zstd frame of a stored object lies (gzip objects have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Offset of the frame's content in the plaintext.
    pub content_offset: u64,
    pub content_len: u64,
    /// Offset of the compressed frame in the decrypted (compressed) stream.
    pub compressed_offset: u64,
    pub compressed_len: u64,
}

/// The result of [`store_frames`]: the record plus the frame table.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub record: ObjectRecord,
    pub frames: Vec<FrameInfo>,
}

/// Streams `source` through the pipeline into a new object at `key`; the object is durable and
/// visible only when this returns Ok. On error or cancellation the upload is aborted.
pub async fn store_stream<R: AsyncRead + Unpin + Send>(
    store: &Store,
    key: &str,
    source: R,
    settings: &PipelineSettings,
    progress: &ProgressCounter,
    cancel: &CancellationToken,
) -> Result<ObjectRecord, PipelineError> {
    let frames = compress::fixed_frames(source, settings.effective_frame_size());
    store_frames(store, key, frames, settings, progress, cancel)
        .await
        .map(|s| s.record)
}

/// Stores a small in-memory object (a manifest) through the same pipeline.
pub async fn store_bytes(
    store: &Store,
    key: &str,
    bytes: Bytes,
    settings: &PipelineSettings,
) -> Result<ObjectRecord, PipelineError> {
    let frame_size = settings.effective_frame_size();
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = frame_size.min(rest.len());
        frames.push(Ok(rest.split_to(n)));
    }
    let stream = futures::stream::iter(frames);
    store_frames(
        store,
        key,
        stream,
        settings,
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .map(|s| s.record)
}

/// [`store_bytes`] past the repository's bandwidth limit (WAL pushes, docs/design.md §5).
pub async fn store_bytes_unlimited(
    store: &Store,
    key: &str,
    bytes: Bytes,
    settings: &PipelineSettings,
) -> Result<ObjectRecord, PipelineError> {
    let frame_size = settings.effective_frame_size();
    let mut frames = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = frame_size.min(rest.len());
        frames.push(Ok(rest.split_to(n)));
    }
    let writer = store.writer_unlimited(key).await?;
    store_frames_into(
        writer,
        key,
        futures::stream::iter(frames),
        settings,
        &ProgressCounter::default(),
        &CancellationToken::new(),
    )
    .await
    .map(|s| s.record)
}

/// The frame hook: stores a stream of plaintext frames the caller has cut (e.g. at tar entry
/// boundaries); each becomes one independent zstd frame (for gzip the frames are just chunks).
/// Empty frames are skipped. See [`store_stream`] for the guarantees.
pub async fn store_frames<S>(
    store: &Store,
    key: &str,
    frames: S,
    settings: &PipelineSettings,
    progress: &ProgressCounter,
    cancel: &CancellationToken,
) -> Result<StoredObject, PipelineError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    if settings.recipients.is_empty() {
        return Err(PipelineError::Encrypt(
            "no age recipients configured".into(),
        ));
    }
    if cancel.is_cancelled() {
        return Err(PipelineError::Cancelled);
    }
    let writer = store.writer(key).await?;
    store_frames_into(writer, key, frames, settings, progress, cancel).await
}

async fn store_frames_into<S>(
    mut writer: crate::repository::ObjectWriter,
    key: &str,
    frames: S,
    settings: &PipelineSettings,
    progress: &ProgressCounter,
    cancel: &CancellationToken,
) -> Result<StoredObject, PipelineError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    if settings.recipients.is_empty() {
        return Err(PipelineError::Encrypt(
            "no age recipients configured".into(),
        ));
    }
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(PipelineError::Cancelled),
        r = run(&mut writer, frames, settings, progress) => r,
    };
    match result {
        Ok(mut out) => {
            writer.finish().await?;
            out.record.key = key.to_string();
            Ok(out)
        }
        Err(e) => {
            if let Err(abort_err) = writer.abort().await {
                tracing::warn!(key, error = %abort_err, "could not remove the aborted upload");
            }
            Err(e)
        }
    }
}

/// Result of the producer side.
struct Produced {
    content_size: u64,
    content_sha256: String,
    frames: Vec<FrameInfo>,
}

async fn run<S>(
    writer: &mut crate::repository::ObjectWriter,
    frames: S,
    settings: &PipelineSettings,
    progress: &ProgressCounter,
) -> Result<StoredObject, PipelineError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    let workers = settings.compression.workers.max(1);
    let level = settings.compression.level;
    let algorithm = settings.compression.algorithm;
    let (gzip_level, compression_name) = match algorithm {
        Compression::Zstd => (None, "zstd"),
        Compression::Gzip => (Some(u32::try_from(level.clamp(0, 9)).unwrap_or(6)), "gzip"),
    };

    let (enc_tx, enc_rx) = mpsc::channel::<encrypt::Input>(1);
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(4);
    let recipients = settings.recipients.clone();
    let encryptor = tokio::task::spawn_blocking(move || {
        encrypt::encrypt_blocking(recipients, gzip_level, enc_rx, out_tx)
    });

    // Producer: read frames, compress them (zstd: on at most `workers` blocking tasks at once,
    // handed on in order), hand them on to the encryption thread and their plaintext to the
    // content hasher (a blocking thread of its own, so hashing never holds up the dispatch of
    // the next compression). Up to 2 × workers frames are in flight so that a frame finished
    // early, waiting for the one before it, does not keep a compression slot idle.
    let producer = async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(workers));
        let (hash_tx, hash_rx) = mpsc::channel::<Bytes>(2);
        let hasher = tokio::task::spawn_blocking(move || hash_frames(hash_rx));
        let mut content_size = 0u64;
        let mut table = Vec::new();
        let mut compressed_offset = 0u64;
        {
            let nonempty = frames
                .filter(|item| futures::future::ready(!matches!(item, Ok(b) if b.is_empty())));
            let mut compressed = nonempty
                .map(|item| {
                    let slots = slots.clone();
                    async move {
                        let plain = item.map_err(|e| Some(PipelineError::Source(e)))?;
                        if gzip_level.is_some() {
                            return Ok((None, plain));
                        }
                        let slot = slots
                            .acquire_owned()
                            .await
                            .map_err(|e| Some(PipelineError::Task(e.to_string())))?;
                        let (out, plain) = tokio::task::spawn_blocking(move || {
                            let out = compress::zstd_frame(&plain, level);
                            drop(slot);
                            (out, plain)
                        })
                        .await
                        .map_err(|e| Some(PipelineError::Task(e.to_string())))?;
                        let out = out.map_err(|e| Some(PipelineError::Compress(e)))?;
                        Ok::<_, Option<PipelineError>>((Some(Bytes::from(out)), plain))
                    }
                })
                .buffered(2 * workers);
            let mut offset = 0u64;
            while let Some(next) = compressed.next().await {
                let (data, plain) = next?;
                let len = plain.len() as u64;
                content_size += len;
                progress.bytes_read.fetch_add(len, Ordering::Relaxed);
                let data = match data {
                    Some(data) => {
                        table.push(FrameInfo {
                            content_offset: offset,
                            content_len: len,
                            compressed_offset,
                            compressed_len: data.len() as u64,
                        });
                        compressed_offset += data.len() as u64;
                        hash_tx.send(plain).await.map_err(|_| hasher_gone())?;
                        data
                    }
                    // gzip: the encryption thread compresses the plaintext itself.
                    None => {
                        hash_tx
                            .send(plain.clone())
                            .await
                            .map_err(|_| hasher_gone())?;
                        plain
                    }
                };
                offset += len;
                enc_tx
                    .send(encrypt::Input::Data(data))
                    .await
                    .map_err(|_| None)?;
            }
        }
        drop(hash_tx);
        let content_sha256 = hasher
            .await
            .map_err(|e| Some(PipelineError::Task(e.to_string())))?;
        if gzip_level.is_none() && table.is_empty() {
            // An empty source still gets one (empty) zstd frame: a valid zstd stream.
            let empty =
                compress::zstd_frame(&[], level).map_err(|e| Some(PipelineError::Compress(e)))?;
            table.push(FrameInfo {
                content_offset: 0,
                content_len: 0,
                compressed_offset: 0,
                compressed_len: empty.len() as u64,
            });
            enc_tx
                .send(encrypt::Input::Data(Bytes::from(empty)))
                .await
                .map_err(|_| None)?;
        }
        enc_tx
            .send(encrypt::Input::Finish)
            .await
            .map_err(|_| None)?;
        Ok::<_, Option<PipelineError>>(Produced {
            content_size,
            content_sha256,
            frames: table,
        })
    };

    // Consumer: upload the ciphertext (the encryption thread hashes it as it hands it on).
    let consumer = async move {
        // Owns `out_rx`: when the upload fails, dropping it stops the encryption thread.
        let mut out_rx = out_rx;
        while let Some(chunk) = out_rx.recv().await {
            let n = chunk.len() as u64;
            writer.write(chunk).await?;
            progress.bytes_stored.fetch_add(n, Ordering::Relaxed);
        }
        Ok::<_, PipelineError>(())
    };

    let (produced, consumed) = tokio::join!(producer, consumer);
    let encrypted = encryptor
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))?;

    // Report the root cause, not the "other side went away" errors it caused.
    let produced = match produced {
        Err(Some(e)) => return Err(e),
        other => other,
    };
    consumed?;
    let (size, sha256) = match encrypted {
        Err(encrypt::EncryptFail::Failed(msg)) => return Err(PipelineError::Encrypt(msg)),
        Err(encrypt::EncryptFail::Closed) => {
            return Err(PipelineError::Task(
                "the encryption stage stopped early".into(),
            ));
        }
        Ok(digest) => digest,
    };
    let produced =
        produced.map_err(|_| PipelineError::Task("the encryption stage stopped early".into()))?;
    Ok(StoredObject {
        record: ObjectRecord {
            key: String::new(),
            size,
            sha256,
            content_size: produced.content_size,
            content_sha256: produced.content_sha256,
            compression: compression_name.to_string(),
            encryption: "age".to_string(),
        },
        frames: produced.frames,
    })
}

/// The content hasher stopped taking frames (it only stops early when its thread failed).
fn hasher_gone() -> Option<PipelineError> {
    Some(PipelineError::Task(
        "the content hashing thread stopped early".into(),
    ))
}

/// The content hasher's thread: SHA-256 of the frames received, in order (each frame's buffer
/// goes back to [`buffers`] once hashed).
fn hash_frames(mut rx: mpsc::Receiver<Bytes>) -> String {
    let mut hasher = Sha256::new();
    while let Some(frame) = rx.blocking_recv() {
        hasher.update(&frame);
        buffers::recycle(frame);
    }
    hex::encode(hasher.finalize())
}

/// Opens an object for reading: fetched as a stream, decrypted, decompressed. The stored size and
/// SHA-256 are checked as it streams; a mismatch is an `InvalidData` error at the end (before EOF
/// is reported), naming the key. No identity matching the object's recipients is an error here.
pub async fn open_stream(
    store: &Store,
    record: &ObjectRecord,
    identities: &Identities,
) -> Result<Box<dyn AsyncRead + Send + Unpin>, crate::repository::StoreError> {
    decode::open(store, record, identities).await
}

/// Reads a small object whole (manifests), checked like [`open_stream`] (and its content hash).
pub async fn load_bytes(
    store: &Store,
    record: &ObjectRecord,
    identities: &Identities,
) -> Result<Bytes, PipelineError> {
    let mut reader = open_stream(store, record, identities).await?;
    let mut buf = Vec::with_capacity(
        usize::try_from(record.content_size)
            .unwrap_or(0)
            .min(64 << 20),
    );
    reader
        .read_to_end(&mut buf)
        .await
        .map_err(|source| PipelineError::Read {
            key: record.key.clone(),
            source,
        })?;
    let hash = hex::encode(Sha256::digest(&buf));
    if buf.len() as u64 != record.content_size || hash != record.content_sha256 {
        return Err(PipelineError::Read {
            key: record.key.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "content differs from the record ({} bytes, sha256 {hash}; recorded {} bytes, {})",
                    buf.len(),
                    record.content_size,
                    record.content_sha256
                ),
            ),
        });
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests;
