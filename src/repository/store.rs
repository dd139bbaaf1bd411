//! The stores a repository can live in, behind one enum.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use std::ops::Range;

use super::local::LocalStore;
use crate::error::{Classify, Retry};

#[derive(Debug, Clone)]
pub enum Store {
    Local(LocalStore),
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
}

impl Classify for StoreError {
    fn retry(&self) -> Retry {
        match self {
            StoreError::NotFound { .. } | StoreError::AlreadyExists { .. } => Retry::Permanent,
            StoreError::Io { source, .. } => crate::error::io_retry(source),
        }
    }
}

/// A streaming upload. Dropped without `finish` = aborted (nothing visible under the key).
pub struct ObjectWriter {
    pub(crate) inner: super::local::LocalWriter,
}

impl ObjectWriter {
    pub async fn write(&mut self, _chunk: Bytes) -> Result<(), StoreError> {
        todo!("repository helper")
    }
    /// Makes the object durable and visible under its key.
    pub async fn finish(self) -> Result<u64, StoreError> {
        todo!("repository helper")
    }
    /// Removes everything written so far.
    pub async fn abort(self) -> Result<(), StoreError> {
        todo!("repository helper")
    }
}

impl Store {
    pub async fn writer(&self, _key: &str) -> Result<ObjectWriter, StoreError> {
        todo!()
    }
    /// Create-only put of a small object (`AlreadyExists` if present), durable on return.
    pub async fn put_create(&self, _key: &str, _bytes: Bytes) -> Result<(), StoreError> {
        todo!()
    }
    pub async fn get(&self, _key: &str) -> Result<Bytes, StoreError> {
        todo!()
    }
    pub async fn get_range(&self, _key: &str, _range: Range<u64>) -> Result<Bytes, StoreError> {
        todo!()
    }
    pub async fn get_stream(&self, _key: &str) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        todo!()
    }
    pub async fn head(&self, _key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        todo!()
    }
    /// Every object under `prefix`, recursively.
    pub async fn list(&self, _prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        todo!()
    }
    pub async fn delete(&self, _key: &str) -> Result<(), StoreError> {
        todo!()
    }
}
