//! The stores a repository can live in, behind one enum.
//!
//! Callers use [`Store`] and [`ObjectWriter`] only; each variant maps the operations onto its
//! backend: [`Store::Local`] (our durable local store) and [`Store::Object`] (S3, GCS, Azure through
//! object_store, see [`super::cloud`]). Blocking local I/O runs on Tokio's blocking threads.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use super::cloud::{CloudStore, CloudWriter, RemoteKind};
use super::faulty::{FaultyStore, FaultyWriter};
use super::local::{LocalStore, LocalWriter};
use crate::error::{Classify, Retry};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
    /// A bucket or container (with a key prefix) on a cloud object store.
    Object(CloudStore),
    /// Another store with test faults injected (debug builds only, see [`super::faulty`]).
    Faulty(Arc<FaultyStore>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("object {key} already exists")]
    AlreadyExists { key: String },
    #[error("{action} {key}: {source}")]
    Io {
        action: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// A local file-system error, naming the path and the action.
    #[error("{action} {}: {}", .path.display(), describe_io(.source))]
    Local {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },
    /// A blocking task died (panicked or was cancelled at shutdown).
    #[error("{action} {key}: background task failed: {reason}")]
    Task {
        action: &'static str,
        key: String,
        reason: String,
    },
    /// A cloud store refused or failed a call (after object_store's retries); `kind` says why and
    /// whether trying later may help.
    #[error("{action} {key} in {store}: {} ({}): {source}", .kind.describe(), retry_word(.kind.retry()))]
    Remote {
        action: &'static str,
        key: String,
        /// The repository URL (`s3://bucket/prefix`).
        store: String,
        kind: RemoteKind,
        #[source]
        source: Box<object_store::Error>,
    },
    /// A cloud call did not finish within its bound.
    #[error("{action} {key} in {store}: no answer within {} s (transient)", .after.as_secs_f64())]
    TimedOut {
        action: &'static str,
        key: String,
        store: String,
        after: Duration,
    },
    /// The repository's bucket (or container) does not exist.
    #[error(
        "{store}: the {what} `{bucket}` does not exist (create it first; bdc-backup never creates {what}s)"
    )]
    BucketNotFound {
        store: String,
        what: &'static str,
        bucket: String,
        #[source]
        source: Box<object_store::Error>,
    },
}

fn retry_word(r: Retry) -> &'static str {
    match r {
        Retry::Transient => "transient",
        Retry::Permanent => "permanent",
    }
}

/// A plain-words description of an I/O error for the operator: ENOSPC, EACCES, EROFS and EDQUOT
/// get fixed wording; anything else is the OS message.
pub fn describe_io(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::ENOSPC) => "no space left on device".to_string(),
        Some(libc::EDQUOT) => "disk quota exceeded".to_string(),
        Some(libc::EACCES) | Some(libc::EPERM) => "permission denied".to_string(),
        Some(libc::EROFS) => "read-only file system".to_string(),
        _ => err.to_string(),
    }
}

impl Classify for StoreError {
    fn retry(&self) -> Retry {
        match self {
            StoreError::NotFound { .. }
            | StoreError::AlreadyExists { .. }
            | StoreError::InvalidKey { .. } => Retry::Permanent,
            StoreError::Io { source, .. } => crate::error::io_retry(source),
            StoreError::Local { source, .. } => match source.raw_os_error() {
                // Space can be freed (retention, an operator): worth retrying with backoff.
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => Retry::Transient,
                Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => Retry::Permanent,
                _ => crate::error::io_retry(source),
            },
            StoreError::Task { .. } => Retry::Transient,
            StoreError::Remote { kind, .. } => kind.retry(),
            StoreError::TimedOut { .. } => Retry::Transient,
            StoreError::BucketNotFound { .. } => Retry::Permanent,
        }
    }
}

impl StoreError {
    /// The error as an `io::Error` (kind kept where it has one), for `AsyncRead` streams.
    pub fn into_io(self) -> std::io::Error {
        let kind = match &self {
            StoreError::NotFound { .. } => std::io::ErrorKind::NotFound,
            StoreError::AlreadyExists { .. } => std::io::ErrorKind::AlreadyExists,
            StoreError::Io { source, .. } | StoreError::Local { source, .. } => source.kind(),
            StoreError::InvalidKey { .. } => std::io::ErrorKind::InvalidInput,
            StoreError::Task { .. } => std::io::ErrorKind::Other,
            StoreError::TimedOut { .. } => std::io::ErrorKind::TimedOut,
            StoreError::BucketNotFound { .. } => std::io::ErrorKind::NotFound,
            StoreError::Remote { kind, .. } => match kind {
                RemoteKind::Timeout => std::io::ErrorKind::TimedOut,
                RemoteKind::Connection => std::io::ErrorKind::ConnectionReset,
                RemoteKind::Unauthenticated | RemoteKind::PermissionDenied => {
                    std::io::ErrorKind::PermissionDenied
                }
                _ => std::io::ErrorKind::Other,
            },
        };
        std::io::Error::new(kind, self)
    }
}

/// A local read bounded by the store's read deadline ([`LocalStore::read_timeout`]).
pub(crate) async fn local_read<T>(
    store: &LocalStore,
    action: &'static str,
    key: &str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(store.read_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::TimedOut {
            action,
            key: key.to_string(),
            store: store.root.display().to_string(),
            after: store.read_timeout,
        }),
    }
}

async fn blocking<T: Send + 'static>(
    action: &'static str,
    key: &str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task {
            action,
            key: key.to_string(),
            reason: e.to_string(),
        })?
}

/// A streaming upload. Dropped without `finish` = aborted (nothing visible under the key; a
/// cloud multipart upload is aborted at the store in the background).
pub struct ObjectWriter {
    pub(crate) inner: WriterInner,
}

pub(crate) enum WriterInner {
    Local(LocalWriter),
    Object(Box<CloudWriter>),
    Faulty(Box<FaultyWriter>),
}

impl ObjectWriter {
    /// The key this writer publishes to.
    pub fn key(&self) -> &str {
        match &self.inner {
            WriterInner::Local(w) => w.key(),
            WriterInner::Object(w) => w.key(),
            WriterInner::Faulty(w) => w.key(),
        }
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let w = match &mut self.inner {
            WriterInner::Object(w) => return w.write(chunk).await,
            WriterInner::Faulty(w) => return w.write(chunk).await,
            WriterInner::Local(w) => w,
        };
        let Some(file) = w.file() else {
            return Err(StoreError::Task {
                action: "writing",
                key: w.key().to_string(),
                reason: "writer already closed".into(),
            });
        };
        let n = chunk.len() as u64;
        w.check_space(n)?;
        let path = w.staging_path().to_path_buf();
        blocking("writing", w.key(), move || {
            use std::io::Write;
            let mut f: &std::fs::File = &file;
            f.write_all(&chunk).map_err(|e| StoreError::Local {
                action: "writing staging file",
                path,
                source: e,
            })
        })
        .await?;
        w.add_written(n);
        Ok(())
    }

    /// Makes the object durable and visible under its key. Returns its size.
    pub async fn finish(self) -> Result<u64, StoreError> {
        match self.inner {
            WriterInner::Local(inner) => {
                let key = inner.key().to_string();
                blocking("finishing", &key, move || inner.finish()).await
            }
            WriterInner::Object(w) => w.finish().await,
            WriterInner::Faulty(w) => w.finish().await,
        }
    }

    /// Removes everything written so far.
    pub async fn abort(self) -> Result<(), StoreError> {
        match self.inner {
            WriterInner::Local(inner) => {
                let key = inner.key().to_string();
                blocking("aborting", &key, move || inner.abort()).await
            }
            WriterInner::Object(w) => w.abort().await,
            WriterInner::Faulty(w) => w.abort().await,
        }
    }
}

impl Store {
    /// The local store underneath (through a fault-injecting wrapper too), for what only a
    /// local file system has: the staging folder, empty folders to prune.
    pub fn local_store(&self) -> Option<&LocalStore> {
        match self {
            Store::Local(s) => Some(s),
            Store::Object(_) => None,
            Store::Faulty(s) => s.inner().local_store(),
        }
    }

    /// A local store at `root`, created if missing.
    pub fn local(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        Ok(Store::Local(LocalStore::open(root)?))
    }

    pub async fn writer(&self, key: &str) -> Result<ObjectWriter, StoreError> {
        self.writer_with_limit(key, true).await
    }

    /// A writer that ignores the repository's bandwidth limit (WAL pushes, docs/design.md §5).
    pub async fn writer_unlimited(&self, key: &str) -> Result<ObjectWriter, StoreError> {
        self.writer_with_limit(key, false).await
    }

    pub(crate) async fn writer_with_limit(
        &self,
        key: &str,
        limited: bool,
    ) -> Result<ObjectWriter, StoreError> {
        match self {
            Store::Local(s) => {
                let s = s.clone();
                let k = key.to_string();
                let inner = blocking("starting upload of", key, move || s.writer(&k)).await?;
                Ok(ObjectWriter {
                    inner: WriterInner::Local(inner),
                })
            }
            Store::Object(s) => Ok(ObjectWriter {
                inner: WriterInner::Object(Box::new(s.writer(key, limited)?)),
            }),
            Store::Faulty(s) => Ok(ObjectWriter {
                inner: WriterInner::Faulty(Box::new(s.writer(key, limited).await?)),
            }),
        }
    }

    /// Create-only put of a small object (`AlreadyExists` if present), durable on return.
    pub async fn put_create(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        match self {
            Store::Object(s) => s.put_create(key, bytes).await,
            Store::Faulty(s) => s.put_create(key, bytes).await,
            Store::Local(s) => {
                let s = s.clone();
                let k = key.to_string();
                blocking("creating", key, move || s.put_create(&k, &bytes)).await
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self {
            Store::Object(s) => s.get(key).await,
            Store::Faulty(s) => s.get(key).await,
            Store::Local(s) => {
                let s = s.clone();
                let k = key.to_string();
                local_read(
                    &s,
                    "reading",
                    key,
                    blocking("reading", key, {
                        let s = s.clone();
                        move || s.get(&k)
                    }),
                )
                .await
            }
        }
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        match self {
            Store::Object(s) => s.get_range(key, range).await,
            Store::Faulty(s) => s.get_range(key, range).await,
            Store::Local(s) => {
                let s = s.clone();
                let k = key.to_string();
                local_read(
                    &s,
                    "reading range of",
                    key,
                    blocking("reading range of", key, {
                        let s = s.clone();
                        move || s.get_range(&k, range)
                    }),
                )
                .await
            }
        }
    }

    /// The object as a stream of chunks (1 MiB for local stores); `NotFound` before streaming.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        match self {
            Store::Object(s) => s.get_stream(key).await,
            Store::Faulty(s) => s.get_stream(key).await,
            Store::Local(s) => {
                let s = s.clone();
                let k = key.to_string();
                let (file, path) = local_read(
                    &s,
                    "opening",
                    key,
                    blocking("opening", key, {
                        let s = s.clone();
                        move || s.open_file(&k)
                    }),
                )
                .await?;
                let file = Arc::new(file);
                let key = key.to_string();
                let stream = futures::stream::try_unfold(
                    (file, path, key, 0u64, false),
                    move |(file, path, key, off, done)| {
                        let s = s.clone();
                        async move {
                            if done {
                                return Ok(None);
                            }
                            let (f2, p2) = (file.clone(), path.clone());
                            let chunk = local_read(
                                &s,
                                "reading",
                                &key,
                                blocking("reading", &key, move || {
                                    LocalStore::read_chunk(&f2, &p2, off)
                                }),
                            )
                            .await?;
                            if chunk.is_empty() {
                                return Ok(None);
                            }
                            let n = chunk.len() as u64;
                            let last = chunk.len() < super::local::READ_CHUNK;
                            Ok(Some((chunk, (file, path, key, off + n, last))))
                        }
                    },
                );
                Ok(Box::pin(stream))
            }
        }
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self {
            Store::Object(s) => s.head(key).await,
            Store::Faulty(s) => s.head(key).await,
            Store::Local(s) => {
                let s = s.clone();
                let k = key.to_string();
                local_read(
                    &s,
                    "reading metadata of",
                    key,
                    blocking("reading metadata of", key, {
                        let s = s.clone();
                        move || s.head(&k)
                    }),
                )
                .await
            }
        }
    }

    /// Every object under `prefix`, recursively, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        match self {
            Store::Object(s) => s.list(prefix).await,
            Store::Faulty(s) => s.list(prefix).await,
            Store::Local(s) => {
                let s = s.clone();
                let p = prefix.to_string();
                local_read(
                    &s,
                    "listing",
                    prefix,
                    blocking("listing", prefix, {
                        let s = s.clone();
                        move || s.list(&p)
                    }),
                )
                .await
            }
        }
    }

    /// Removes an object; no error if it is already gone.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Object(s) => s.delete(key).await,
            Store::Faulty(s) => s.delete(key).await,
            Store::Local(s) => {
                let s = s.clone();
                let k = key.to_string();
                blocking("deleting", key, move || s.delete(&k)).await
            }
        }
    }
}
