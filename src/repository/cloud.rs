//! Repositories on cloud object stores (S3 and S3-compatible, GCS, Azure Blob) through object_store.
//!
//! [`CloudStore`] wraps an `Arc<dyn ObjectStore>` and a key prefix and implements what
//! [`super::Store`] needs: streaming multipart uploads that we own (so a failed upload is aborted
//! at the store), create-only puts (`PutMode::Create`) for commit records, reads, listing and
//! deletes. Every call has a timeout (per HTTP request inside object_store, plus an outer Tokio
//! timeout per call), transient failures are retried by object_store's `RetryConfig`, and every
//! error is classified transient or permanent ([`RemoteKind`]). An optional per-repository
//! bandwidth limit is a token bucket in the upload path.

use super::local::validate_key;
use super::store::{ObjectMeta, StoreError};
use crate::catalogue::{RepositoryLocation, RepositorySettings};
use crate::error::Retry;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Timeouts, retries and upload shape of a cloud repository. [`CloudOptions::default`] holds the
/// documented production numbers (docs/repositories.md); tests shorten them.
#[derive(Debug, Clone)]
pub struct CloudOptions {
    /// TCP/TLS connect timeout of one HTTP request.
    pub connect_timeout: Duration,
    /// Timeout of one HTTP request, body included (an 8 MiB part needs ≥ ~140 KiB/s).
    pub request_timeout: Duration,
    /// object_store retries of one request: at most this many…
    pub max_retries: usize,
    /// …and none started after this long since the first attempt.
    pub retry_timeout: Duration,
    /// First backoff between retries (doubles, with jitter, up to `max_backoff`).
    pub init_backoff: Duration,
    pub max_backoff: Duration,
    /// Outer bound of one call (and of the wait for one chunk of a streamed read).
    pub call_timeout: Duration,
    /// How long an abort keeps retrying transient failures before it gives up (the bucket's
    /// lifecycle rule then removes the incomplete upload).
    pub abort_timeout: Duration,
    /// Multipart part size (S3 needs ≥ 5 MiB except for the last part).
    pub part_size: usize,
    /// Parts uploading at once per writer.
    pub max_concurrency: usize,
}

impl Default for CloudOptions {
    fn default() -> Self {
        CloudOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            max_retries: 6,
            retry_timeout: Duration::from_secs(120),
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            call_timeout: Duration::from_secs(300),
            abort_timeout: Duration::from_secs(60),
            part_size: 8 << 20,
            max_concurrency: 4,
        }
    }
}

impl CloudOptions {
    fn client_options(&self, allow_http: bool) -> ClientOptions {
        ClientOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_allow_http(allow_http)
    }

    fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.init_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// What went wrong with a remote call, in the operator's words; decides [`Retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    /// The credentials were refused (HTTP 401, or a signature / key the store does not know).
    Unauthenticated,
    /// The credentials lack a permission (HTTP 403).
    PermissionDenied,
    /// A condition failed (HTTP 412) other than create-only.
    Precondition,
    /// The store does not support the operation, or the configuration is invalid.
    Unsupported,
    /// No answer in time (connect or request timeout).
    Timeout,
    /// The connection failed or broke (refused, reset, DNS).
    Connection,
    /// The server answered with an error status (5xx, throttling) after the retries.
    Server,
    /// The server refused the request as malformed (4xx other than the above).
    Rejected,
    /// HTTP 404 where an object was not asked for (a missing bucket or container).
    Missing,
    /// Anything else object_store reports.
    Other,
}

impl RemoteKind {
    pub fn retry(self) -> Retry {
        match self {
            RemoteKind::Timeout
            | RemoteKind::Connection
            | RemoteKind::Server
            | RemoteKind::Other => Retry::Transient,
            RemoteKind::Unauthenticated
            | RemoteKind::PermissionDenied
            | RemoteKind::Precondition
            | RemoteKind::Unsupported
            | RemoteKind::Rejected
            | RemoteKind::Missing => Retry::Permanent,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            RemoteKind::Unauthenticated => "credentials refused",
            RemoteKind::PermissionDenied => "permission denied",
            RemoteKind::Precondition => "precondition failed",
            RemoteKind::Unsupported => "not supported by this store",
            RemoteKind::Timeout => "timed out",
            RemoteKind::Connection => "connection failed",
            RemoteKind::Server => "server error",
            RemoteKind::Rejected => "request rejected",
            RemoteKind::Missing => "not found",
            RemoteKind::Other => "store error",
        }
    }
}

/// Classifies an object_store error: the variant first, then the HTTP failure in its source chain.
pub fn classify(err: &object_store::Error) -> RemoteKind {
    match classify_inner(err) {
        // S3 answers an unknown access key or a bad signature with 403, Azure a bad key too.
        RemoteKind::PermissionDenied
            if chain_mentions(
                err,
                &[
                    "InvalidAccessKeyId",
                    "SignatureDoesNotMatch",
                    "AuthenticationFailed",
                ],
            ) =>
        {
            RemoteKind::Unauthenticated
        }
        k => k,
    }
}

fn classify_inner(err: &object_store::Error) -> RemoteKind {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => return RemoteKind::Missing,
        E::Unauthenticated { .. } => return RemoteKind::Unauthenticated,
        E::PermissionDenied { .. } => return RemoteKind::PermissionDenied,
        E::Precondition { .. } | E::NotModified { .. } => return RemoteKind::Precondition,
        E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }
        | E::InvalidPath { .. } => return RemoteKind::Unsupported,
        _ => {}
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            return match h.kind() {
                K::Timeout => RemoteKind::Timeout,
                K::Connect | K::Request | K::Interrupted => RemoteKind::Connection,
                _ => RemoteKind::Other,
            };
        }
        // object_store's request error type is not public: read its status from the message
        // ("Server returned non-2xx status code: 503 Service Unavailable: …").
        let text = e.to_string();
        if let Some(rest) = text.strip_prefix("Server returned non-2xx status code: ") {
            let code: u16 = rest.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return match code {
                401 => RemoteKind::Unauthenticated,
                403 => RemoteKind::PermissionDenied,
                404 => RemoteKind::Missing,
                408 | 429 | 500..=599 => RemoteKind::Server,
                400..=499 => RemoteKind::Rejected,
                _ => RemoteKind::Other,
            };
        }
        if text.starts_with("Server returned error response") {
            return RemoteKind::Server;
        }
        cur = e.source();
    }
    RemoteKind::Other
}

fn chain_mentions(err: &(dyn std::error::Error + 'static), words: &[&str]) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if words.iter().any(|w| text.contains(w)) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A token bucket: `rate` bytes per second, bursts up to one second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(bytes_per_second: u64) -> TokenBucket {
        let rate = bytes_per_second.max(1) as f64;
        TokenBucket {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes `n` bytes' worth of tokens, sleeping off any debt (so concurrent writers share the
    /// rate).
    pub async fn acquire(&self, n: u64) {
        let wait = {
            let mut s = match self.state.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.rate);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The token bucket of a repository URL and rate, shared by every `open` of it in this process
/// (a daemon that opens a repository per run still gets one limit for all of them).
fn shared_limiter(url: &str, rate: u64) -> Arc<TokenBucket> {
    use std::collections::HashMap;
    use std::sync::{OnceLock, Weak};
    type Limiters = Mutex<HashMap<(String, u64), Weak<TokenBucket>>>;
    static LIMITERS: OnceLock<Limiters> = OnceLock::new();
    let map = LIMITERS.get_or_init(Default::default);
    let mut map = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.retain(|_, w| w.strong_count() > 0);
    let key = (url.to_string(), rate);
    if let Some(b) = map.get(&key).and_then(Weak::upgrade) {
        return b;
    }
    let b = Arc::new(TokenBucket::new(rate));
    map.insert(key, Arc::downgrade(&b));
    b
}

/// A repository in a bucket (or container) under a key prefix.
#[derive(Clone)]
pub struct CloudStore {
    store: Arc<dyn ObjectStore>,
    /// `""` or `"a/b"` (no leading or trailing slash).
    prefix: String,
    /// `s3://bucket/prefix` as shown in messages.
    location: String,
    /// `bucket` or `container`.
    container_word: &'static str,
    bucket: String,
    options: CloudOptions,
    limiter: Option<Arc<TokenBucket>>,
}

impl std::fmt::Debug for CloudStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Why a cloud repository could not be configured (before any network call).
#[derive(Debug, thiserror::Error)]
pub enum CloudConfigError {
    #[error("credentials file {}: {reason}", .path.display())]
    Credentials { path: PathBuf, reason: String },
    #[error("credentials file {}: {}", .path.display(), super::store::describe_io(.source))]
    CredentialsIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuring {url}: {source}")]
    Build {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
}

impl crate::error::Classify for CloudConfigError {
    fn retry(&self) -> Retry {
        Retry::Permanent
    }
}

/// Reads a `KEY=VALUE` credentials file (blank lines and `#` comments skipped, an optional
/// `export ` prefix and surrounding quotes removed). Refused if group or others may read it.
/// Values are never put into errors or logs.
pub fn read_credentials_file(
    path: &std::path::Path,
) -> Result<Vec<(String, String)>, CloudConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| CloudConfigError::CredentialsIo {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(CloudConfigError::Credentials {
            path: path.to_path_buf(),
            reason: format!(
                "mode {:04o} lets other users read secrets; chmod 0600 (or 0640 with a group) it",
                mode & 0o7777
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| CloudConfigError::CredentialsIo {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(CloudConfigError::Credentials {
                path: path.to_path_buf(),
                reason: format!("line {}: expected KEY=VALUE", n + 1),
            });
        };
        let k = k.trim();
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(CloudConfigError::Credentials {
                path: path.to_path_buf(),
                reason: format!("line {}: invalid key name", n + 1),
            });
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn unknown_key(path: &std::path::Path, key: &str, scheme: &str) -> CloudConfigError {
    CloudConfigError::Credentials {
        path: path.to_path_buf(),
        reason: format!("{key} is not a setting {scheme}:// repositories understand"),
    }
}

impl CloudStore {
    /// Builds the store of a cloud repository of the catalogue (no network call yet).
    pub fn open(
        settings: &RepositorySettings,
        options: CloudOptions,
    ) -> Result<CloudStore, CloudConfigError> {
        let url = settings.url.clone();
        let build_err = |source| CloudConfigError::Build {
            url: url.clone(),
            source,
        };
        let creds = match &settings.credentials_file {
            Some(p) => Some((p.clone(), read_credentials_file(p)?)),
            None => None,
        };
        let allow_http = settings
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let client = options.client_options(allow_http);
        let (store, bucket, prefix, word): (Arc<dyn ObjectStore>, _, _, _) =
            match &settings.location {
                RepositoryLocation::S3 { bucket, prefix } => {
                    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                    let mut b = match &creds {
                        Some((path, pairs)) => {
                            let mut b = AmazonS3Builder::new();
                            for (k, v) in pairs {
                                let key: AmazonS3ConfigKey = k
                                    .to_ascii_lowercase()
                                    .parse()
                                    .map_err(|_| unknown_key(path, k, "s3"))?;
                                if !k.starts_with("AWS_") {
                                    return Err(unknown_key(path, k, "s3"));
                                }
                                b = b.with_config(key, v);
                            }
                            b
                        }
                        None => AmazonS3Builder::from_env(),
                    };
                    b = b.with_bucket_name(bucket);
                    if let Some(r) = &settings.region {
                        b = b.with_region(r);
                    }
                    if let Some(e) = &settings.endpoint {
                        // S3-compatible stores: path-style requests to the given endpoint.
                        b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                    }
                    let s = b
                        .with_allow_http(allow_http)
                        .with_client_options(client)
                        .with_retry(options.retry_config())
                        .build()
                        .map_err(build_err)?;
                    (Arc::new(s) as _, bucket, prefix, "bucket")
                }
                RepositoryLocation::Gcs { bucket, prefix } => {
                    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                    let mut b = match &creds {
                        Some((path, pairs)) => {
                            let mut b = GoogleCloudStorageBuilder::new();
                            for (k, v) in pairs {
                                let key: GoogleConfigKey = k
                                    .to_ascii_lowercase()
                                    .parse()
                                    .map_err(|_| unknown_key(path, k, "gs"))?;
                                if !k.starts_with("GOOGLE_") {
                                    return Err(unknown_key(path, k, "gs"));
                                }
                                b = b.with_config(key, v);
                            }
                            b
                        }
                        None => GoogleCloudStorageBuilder::from_env(),
                    };
                    b = b.with_bucket_name(bucket);
                    if let Some(e) = &settings.endpoint {
                        b = b.with_base_url(e);
                    }
                    let s = b
                        .with_client_options(client)
                        .with_retry(options.retry_config())
                        .build()
                        .map_err(build_err)?;
                    (Arc::new(s) as _, bucket, prefix, "bucket")
                }
                RepositoryLocation::Azure { container, prefix } => {
                    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                    let mut b = match &creds {
                        Some((path, pairs)) => {
                            let mut b = MicrosoftAzureBuilder::new();
                            for (k, v) in pairs {
                                let key: AzureConfigKey = k
                                    .to_ascii_lowercase()
                                    .parse()
                                    .map_err(|_| unknown_key(path, k, "az"))?;
                                if !k.starts_with("AZURE_") {
                                    return Err(unknown_key(path, k, "az"));
                                }
                                b = b.with_config(key, v);
                            }
                            b
                        }
                        None => MicrosoftAzureBuilder::from_env(),
                    };
                    b = b.with_container_name(container);
                    if let Some(e) = &settings.endpoint {
                        // e.g. Azurite: http://127.0.0.1:10000/devstoreaccount1
                        b = b.with_endpoint(e.clone());
                    }
                    let s = b
                        .with_allow_http(allow_http)
                        .with_client_options(client)
                        .with_retry(options.retry_config())
                        .build()
                        .map_err(build_err)?;
                    (Arc::new(s) as _, container, prefix, "container")
                }
                RepositoryLocation::File { .. } => {
                    return Err(CloudConfigError::Invalid {
                        url,
                        reason: "not a cloud repository".into(),
                    });
                }
            };
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            validate_key(&prefix).map_err(|e| CloudConfigError::Invalid {
                url: settings.url.clone(),
                reason: format!("invalid prefix: {e}"),
            })?;
        }
        Ok(CloudStore {
            store,
            prefix,
            location: settings.url.clone(),
            container_word: word,
            bucket: bucket.clone(),
            options,
            limiter: settings
                .bandwidth_limit
                .map(|r| shared_limiter(&settings.url, r)),
        })
    }

    /// A store over any object_store implementation (tests, tools).
    pub fn from_object_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        location: &str,
        options: CloudOptions,
    ) -> CloudStore {
        CloudStore {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            location: location.to_string(),
            container_word: "bucket",
            bucket: location.to_string(),
            options,
            limiter: None,
        }
    }

    /// The repository URL this store serves.
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn options(&self) -> &CloudOptions {
        &self.options
    }

    fn path(&self, key: &str) -> Result<Path, StoreError> {
        validate_key(key)?;
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        Path::parse(&full).map_err(|e| StoreError::InvalidKey {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    fn key_of(&self, path: &Path) -> String {
        let s = path.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.prefix)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(s)
                .to_string()
        }
    }

    pub(crate) fn err(
        &self,
        action: &'static str,
        key: &str,
        source: object_store::Error,
    ) -> StoreError {
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: key.to_string(),
            },
            object_store::Error::AlreadyExists { .. } => StoreError::AlreadyExists {
                key: key.to_string(),
            },
            source => StoreError::Remote {
                action,
                key: key.to_string(),
                store: self.location.clone(),
                kind: classify(&source),
                source: Box::new(source),
            },
        }
    }

    /// A NotFound where only a missing bucket can cause one (writes, listings).
    fn missing_bucket(&self, source: object_store::Error) -> StoreError {
        StoreError::BucketNotFound {
            store: self.location.clone(),
            what: self.container_word,
            bucket: self.bucket.clone(),
            source: Box::new(source),
        }
    }

    fn timed_out(&self, action: &'static str, key: &str, after: Duration) -> StoreError {
        StoreError::TimedOut {
            action,
            key: key.to_string(),
            store: self.location.clone(),
            after,
        }
    }

    async fn call<T>(
        &self,
        action: &'static str,
        key: &str,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.options.call_timeout, fut).await {
            Ok(r) => r.map_err(|e| self.err(action, key, e)),
            Err(_) => Err(self.timed_out(action, key, self.options.call_timeout)),
        }
    }

    /// Like `call`, for writes: a 404 can only mean a missing bucket or container.
    async fn write_call<T>(
        &self,
        action: &'static str,
        key: &str,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.options.call_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if classify(&e) == RemoteKind::Missing => Err(self.missing_bucket(e)),
            Ok(Err(e)) => Err(self.err(action, key, e)),
            Err(_) => Err(self.timed_out(action, key, self.options.call_timeout)),
        }
    }

    /// Starts a streaming upload; `limited` = subject to the repository's bandwidth limit.
    pub fn writer(&self, key: &str, limited: bool) -> Result<CloudWriter, StoreError> {
        let path = self.path(key)?;
        Ok(CloudWriter {
            store: self.clone(),
            key: key.to_string(),
            path,
            limiter: if limited { self.limiter.clone() } else { None },
            pending: Vec::new(),
            pending_len: 0,
            upload: None,
            tasks: JoinSet::new(),
            written: 0,
        })
    }

    pub async fn put_create(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let opts = PutOptions::from(PutMode::Create);
        let r = tokio::time::timeout(
            self.options.call_timeout,
            self.store.put_opts(&path, PutPayload::from(bytes), opts),
        )
        .await;
        match r {
            Err(_) => Err(self.timed_out("creating", key, self.options.call_timeout)),
            Ok(Ok(_)) => Ok(()),
            // S3 answers a lost If-None-Match race with 412.
            Ok(Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            )) => Err(StoreError::AlreadyExists {
                key: key.to_string(),
            }),
            Ok(Err(e)) if classify(&e) == RemoteKind::Missing => Err(self.missing_bucket(e)),
            Ok(Err(e)) => Err(self.err("creating", key, e)),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        self.call("reading", key, async {
            self.store.get(&path).await?.bytes().await
        })
        .await
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        self.call("reading range of", key, self.store.get_range(&path, range))
            .await
    }

    /// The object as a stream; each chunk must arrive within the call timeout.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let path = self.path(key)?;
        let result = self.call("reading", key, self.store.get(&path)).await?;
        let inner = result.into_stream();
        let this = self.clone();
        let key = key.to_string();
        let stream = futures::stream::unfold(Some(inner), move |state| {
            let this = this.clone();
            let key = key.clone();
            async move {
                let mut inner = state?;
                match tokio::time::timeout(this.options.call_timeout, inner.next()).await {
                    Ok(Some(Ok(b))) => Some((Ok(b), Some(inner))),
                    Ok(Some(Err(e))) => Some((Err(this.err("reading", &key, e)), None)),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(this.timed_out("reading", &key, this.options.call_timeout)),
                        None,
                    )),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path(key)?;
        match self
            .call("reading metadata of", key, self.store.head(&path))
            .await
        {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.size,
                modified: m.last_modified,
            })),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object whose key starts with `prefix`, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        if prefix.starts_with('/') || prefix.split('/').any(|s| s == "..") {
            return Err(StoreError::InvalidKey {
                key: prefix.to_string(),
                reason: "invalid prefix".into(),
            });
        }
        // object_store lists whole path segments: list the folder part, filter by the rest.
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let full = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (true, false) => Some(dir.to_string()),
            (false, true) => Some(self.prefix.clone()),
            (false, false) => Some(format!("{}/{dir}", self.prefix)),
        };
        let path = match full {
            Some(f) => Some(Path::parse(&f).map_err(|e| StoreError::InvalidKey {
                key: prefix.to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        // A prefix ending inside a name (`…/000000010000000A000000FF-`, WAL duplicate checks):
        // start the listing there (S3 `start-after`) and stop past the matches (the stores list
        // in lexicographic key order), instead of walking the whole folder each time.
        let name_part = &prefix[prefix.rfind('/').map_or(0, |i| i + 1)..];
        // The offset is exclusive: start just before the prefix (its last character dropped), so
        // a key equal to the prefix is still listed.
        let offset = if name_part.chars().count() < 2 {
            None
        } else {
            let mut before = if self.prefix.is_empty() {
                prefix.to_string()
            } else {
                format!("{}/{prefix}", self.prefix)
            };
            before.pop();
            Path::parse(&before).ok()
        };
        let collect = async {
            let mut stream = match &offset {
                Some(o) => self.store.list_with_offset(path.as_ref(), o),
                None => self.store.list(path.as_ref()),
            };
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                let m = item?;
                let key = self.key_of(&m.location);
                if offset.is_some() && key.as_str() > prefix && !key.starts_with(prefix) {
                    break;
                }
                if key.starts_with(prefix) {
                    out.push(ObjectMeta {
                        key,
                        size: m.size,
                        modified: m.last_modified,
                    });
                }
            }
            Ok::<_, object_store::Error>(out)
        };
        let mut out = match tokio::time::timeout(self.options.call_timeout, collect).await {
            Err(_) => return Err(self.timed_out("listing", prefix, self.options.call_timeout)),
            Ok(Ok(v)) => v,
            Ok(Err(e)) if classify(&e) == RemoteKind::Missing => {
                return Err(self.missing_bucket(e));
            }
            Ok(Err(e)) => return Err(self.err("listing", prefix, e)),
        };
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match self.call("deleting", key, self.store.delete(&path)).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

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
    /// aborted at the store before this returns.
    pub async fn finish(mut self) -> Result<u64, StoreError> {
        match self.finish_inner().await {
            Ok(n) => Ok(n),
            Err(e) => {
                if let Err(abort_err) = self.abort_inner().await {
                    tracing::warn!(key = %self.key, store = %self.store.location, error = %abort_err,
                        "could not abort the failed upload; the bucket's lifecycle rule will remove it");
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

    /// Aborts the upload at the store (retrying transient failures for `abort_timeout`).
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
        let deadline = Instant::now() + self.store.options.abort_timeout;
        let mut backoff = self
            .store
            .options
            .init_backoff
            .max(Duration::from_millis(50));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = tokio::time::timeout(left.max(Duration::from_millis(1)), up.abort()).await;
            let err = match r {
                Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => return Ok(()),
                Ok(Err(e)) => self.store.err("aborting upload of", &self.key, e),
                Err(_) => self.store.timed_out(
                    "aborting upload of",
                    &self.key,
                    self.store.options.abort_timeout,
                ),
            };
            use crate::error::Classify;
            if err.retry() == Retry::Permanent || Instant::now() + backoff >= deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.store.options.max_backoff);
        }
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
            let timeout = self.store.options.abort_timeout;
            let key = self.key.clone();
            handle.spawn(async move {
                if !matches!(tokio::time::timeout(timeout, up.abort()).await, Ok(Ok(()))) {
                    tracing::warn!(key, "could not abort a dropped upload");
                }
            });
        }
    }
}
