//! Streaming uploads to a cloud store ([`CloudWriter`]): one PUT for small objects, our own
//! multipart upload with bounded concurrency for larger ones, aborted at the store on failure.

use super::CloudStore;
use super::limit::TokenBucket;
use crate::error::{Classify, Retry};
use crate::repository::store::StoreError;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// A streaming upload to a cloud store. Small objects (below one part) go up in one PUT at
/// `finish`; larger ones as a multipart upload with at most `max_concurrency` parts in flight.
/// `abort` (or dropping the writer unfinished) aborts the multipart upload at the store.
pub struct CloudWriter {
    store: CloudStore,
    key: String,
    path: Path,
    limiter: Option<Arc<TokenBucket>>,
    pending: Vec<Bytes>,
    pending_len: usize,
    upload: Option<Box<dyn MultipartUpload>>,
    tasks: JoinSet<object_store::Result<()>>,
    written: u64,
}

impl CloudWriter {
    pub(super) fn new(
        store: CloudStore,
        key: String,
        path: Path,
        limiter: Option<Arc<TokenBucket>>,
    ) -> CloudWriter {
        CloudWriter {
            store,
            key,
            path,
            limiter,
            pending: Vec::new(),
            pending_len: 0,
            upload: None,
            tasks: JoinSet::new(),
            written: 0,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether a multipart upload has been started at the store.
    pub fn is_multipart(&self) -> bool {
        self.upload.is_some()
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if let Some(l) = &self.limiter {
            l.acquire(chunk.len() as u64).await;
        }
        self.written += chunk.len() as u64;
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        let part = self.store.options.part_size.max(1);
        while self.pending_len >= part {
            self.send_part(part).await?;
        }
        Ok(())
    }

    /// Cuts `n` bytes off the front of the pending buffer and starts uploading them as a part.
    async fn send_part(&mut self, n: usize) -> Result<(), StoreError> {
        if self.upload.is_none() {
            let up = self
                .store
                .write_call(
                    "starting upload of",
                    &self.key,
                    self.store.store.put_multipart(&self.path),
                )
                .await?;
            self.upload = Some(up);
        }
        // Bounded concurrency: wait until fewer than max_concurrency parts are in flight.
        let max = self.store.options.max_concurrency.max(1);
        while self.tasks.len() >= max {
            self.join_one().await?;
        }
        let mut part = Vec::new();
        let mut need = n;
        while need > 0 {
            let Some(mut b) = (!self.pending.is_empty()).then(|| self.pending.remove(0)) else {
                break;
            };
            if b.len() > need {
                let rest = b.split_off(need);
                self.pending.insert(0, rest);
            }
            need -= b.len();
            part.push(b);
        }
        self.pending_len -= n - need;
        let payload: PutPayload = part.into_iter().collect();
        if let Some(up) = self.upload.as_mut() {
            self.tasks.spawn(up.put_part(payload));
        }
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StoreError> {
        let timeout = self.store.options.call_timeout;
        match tokio::time::timeout(timeout, self.tasks.join_next()).await {
            Err(_) => Err(self
                .store
                .timed_out("uploading part of", &self.key, timeout)),
            Ok(None) | Ok(Some(Ok(Ok(())))) => Ok(()),
            Ok(Some(Ok(Err(e)))) => Err(self.store.err("uploading part of", &self.key, e)),
            Ok(Some(Err(join))) => Err(StoreError::Task {
                action: "uploading part of",
                key: self.key.clone(),
                reason: join.to_string(),
            }),
        }
    }

    /// Uploads what is left and completes the object. Returns its size. On error the upload is
    /// aborted at the store (one bounded call before this returns; a transient failure of it is
    /// retried in the background, see [`CloudWriter::abort`]).
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        match self.finish_inner().await {
            Ok(n) => Ok(n),
            Err(e) => {
                if let Err(abort_err) = self.abort_inner().await {
                    tracing::warn!(key = %self.key, store = %self.store.location, error = %abort_err,
                        "could not abort the failed upload yet; retrying in the background until the deadline");
                }
                Err(e)
            }
        }
    }

    async fn finish_inner(&mut self) -> Result<u64, StoreError> {
        if self.upload.is_none() {
            let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
            self.pending_len = 0;
            self.store
                .write_call(
                    "uploading",
                    &self.key,
                    self.store.store.put(&self.path, payload),
                )
                .await?;
            return Ok(self.written);
        }
        if self.pending_len > 0 {
            let n = self.pending_len;
            self.send_part(n).await?;
        }
        while !self.tasks.is_empty() {
            self.join_one().await?;
        }
        let timeout = self.store.options.call_timeout;
        let Some(up) = self.upload.as_mut() else {
            return Ok(self.written);
        };
        match tokio::time::timeout(timeout, up.complete()).await {
            Ok(Ok(_)) => {
                self.upload = None;
                Ok(self.written)
            }
            Ok(Err(e)) => Err(self.store.err("completing upload of", &self.key, e)),
            Err(_) => Err(self
                .store
                .timed_out("completing upload of", &self.key, timeout)),
        }
    }

    /// Aborts the upload at the store: one call under the call deadline (object_store retries
    /// transient failures inside it). If that fails transiently, the abort is handed to a
    /// background task that keeps trying until the deadline has passed once more since the first
    /// attempt, without holding the caller (a run, a job's lock); after that the bucket's
    /// lifecycle rule removes the incomplete upload. The error of the first attempt is returned.
    pub async fn abort(mut self) -> Result<(), StoreError> {
        self.abort_inner().await
    }

    async fn abort_inner(&mut self) -> Result<(), StoreError> {
        self.tasks.shutdown().await;
        self.pending.clear();
        self.pending_len = 0;
        let Some(mut up) = self.upload.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + self.store.options.call_timeout;
        let err = match self
            .store
            .call("aborting upload of", &self.key, up.abort())
            .await
        {
            Ok(()) | Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => e,
        };
        if err.retry() == Retry::Transient
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            let key = self.key.clone();
            handle.spawn(async move { abort_in_background(store, key, up, deadline).await });
        }
        Err(err)
    }
}

/// Keeps retrying an abort (with backoff) until `deadline`; each attempt is one bounded call.
async fn abort_in_background(
    store: CloudStore,
    key: String,
    mut up: Box<dyn MultipartUpload>,
    deadline: Instant,
) {
    let mut backoff = store.options.init_backoff.max(Duration::from_millis(50));
    loop {
        if Instant::now() + backoff >= deadline {
            tracing::warn!(key, store = %store.location,
                "could not abort the failed upload; the bucket's lifecycle rule will remove it");
            return;
        }
        tokio::time::sleep(backoff).await;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, up.abort()).await {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {
                tracing::info!(key, store = %store.location, "aborted the failed upload");
                return;
            }
            Ok(Err(e)) => {
                let err = store.err("aborting upload of", &key, e);
                if err.retry() == Retry::Permanent {
                    tracing::warn!(key, store = %store.location, error = %err,
                        "could not abort the failed upload; the bucket's lifecycle rule will remove it");
                    return;
                }
            }
            Err(_) => {}
        }
        backoff = (backoff * 2).min(store.options.max_backoff);
    }
}

impl Drop for CloudWriter {
    fn drop(&mut self) {
        // Dropped unfinished (a cancelled task): abort in the background, never leave an
        // incomplete multipart upload behind when the store can be reached.
        if let Some(mut up) = self.upload.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            self.tasks.abort_all();
            let timeout = self.store.options.call_timeout;
            let key = self.key.clone();
            handle.spawn(async move {
                if !matches!(tokio::time::timeout(timeout, up.abort()).await, Ok(Ok(()))) {
                    tracing::warn!(key, "could not abort a dropped upload");
                }
            });
        }
    }
}
