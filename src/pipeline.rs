//! The streaming pipeline (DESIGN §2, §4): source bytes are cut into frames, compressed in
//! parallel as independent zstd frames (or one gzip stream), encrypted with age to the catalogue's
//! recipients, hashed (SHA-256 of content and of stored bytes) and written to a store — in bounded
//! memory. The reverse direction decrypts, checks the stored hash and decompresses.

pub mod compress;
pub mod decode;
pub mod encrypt;

use crate::catalogue::CompressionSettings;
use crate::repository::{ObjectRecord, Store};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

/// Everything the pipeline needs to write.
#[derive(Clone)]
pub struct PipelineSettings {
    pub compression: CompressionSettings,
    /// Parsed age recipients (at least one).
    pub recipients: Vec<age::x25519::Recipient>,
    /// Uncompressed bytes per zstd frame (default 2 MiB).
    pub frame_size: usize,
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
}

/// The identities that decrypt (from the catalogue's identity file).
#[derive(Clone)]
pub struct Identities(pub Vec<age::x25519::Identity>);

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

impl Identities {
    /// Loads an age identity file, refusing one readable by group or others.
    pub fn load(_path: &Path) -> Result<Identities, IdentityError> {
        todo!("pipeline helper")
    }
}

/// Streams `source` through the pipeline into a new object at `key`; the object is durable and
/// visible only when this returns Ok. On error or cancellation the upload is aborted.
pub async fn store_stream<R: AsyncRead + Unpin + Send>(
    _store: &Store,
    _key: &str,
    _source: R,
    _settings: &PipelineSettings,
    _progress: &ProgressCounter,
    _cancel: &CancellationToken,
) -> Result<ObjectRecord, PipelineError> {
    todo!("pipeline helper")
}

/// Stores a small in-memory object (a manifest) through the same pipeline.
pub async fn store_bytes(
    _store: &Store,
    _key: &str,
    _bytes: Bytes,
    _settings: &PipelineSettings,
) -> Result<ObjectRecord, PipelineError> {
    todo!("pipeline helper")
}

/// Opens an object for reading: fetched as a stream, decrypted, decompressed. The stored size and
/// SHA-256 are checked as it streams; a mismatch is an `InvalidData` error at the end (before EOF
/// is reported), naming the key.
pub async fn open_stream(
    _store: &Store,
    _record: &ObjectRecord,
    _identities: &Identities,
) -> Result<Box<dyn AsyncRead + Send + Unpin>, crate::repository::StoreError> {
    todo!("pipeline helper")
}

/// Reads a small object whole (manifests), checked like [`open_stream`].
pub async fn load_bytes(
    _store: &Store,
    _record: &ObjectRecord,
    _identities: &Identities,
) -> Result<Bytes, PipelineError> {
    todo!("pipeline helper")
}
