//! Repositories on cloud object stores (S3 and S3-compatible, GCS, Azure Blob) through object_store.
//!
//! [`CloudStore`] wraps an `Arc<dyn ObjectStore>` and a key prefix and implements what
//! [`super::Store`] needs: streaming multipart uploads that we own ([`writer`]: a failed upload is
//! aborted at the store), create-only puts (`PutMode::Create`) for commit records, reads, listing
//! and deletes. Every call is bounded by one deadline, retries included ([`options`],
//! docs/repositories.md); every error is classified transient or permanent ([`classify`]). An
//! optional per-repository bandwidth limit is a token bucket in the upload path ([`limit`]).

mod classify;
mod limit;
mod options;
mod writer;

pub use classify::{RemoteKind, classify};
pub use limit::TokenBucket;
pub use options::CloudOptions;
pub use writer::CloudWriter;

use super::local::validate_key;
use super::store::{ObjectMeta, StoreError};
use crate::catalogue::{RepositoryLocation, RepositorySettings};
use crate::error::Retry;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use limit::shared_limiter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// object_store refused the configuration (e.g. a service-account key that is no PEM key);
    /// the credentials file is named, since object_store's message does not say where the
    /// offending setting came from.
    #[error("configuring {url}{}: {source}", .credentials.as_ref().map(|p| format!(" (settings from credentials file {})", p.display())).unwrap_or_default())]
    Build {
        url: String,
        credentials: Option<PathBuf>,
        #[source]
        source: Box<object_store::Error>,
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

/// A builder for one cloud scheme: from the credentials file's pairs when one is named (each key
/// must carry the scheme's prefix, e.g. `AWS_`, and be a setting object_store knows), else from the
/// environment.
fn configured<B, K: std::str::FromStr>(
    creds: &Option<(PathBuf, Vec<(String, String)>)>,
    scheme: &str,
    env_prefix: &str,
    new: fn() -> B,
    from_env: fn() -> B,
    set: impl Fn(B, K, &str) -> B,
) -> Result<B, CloudConfigError> {
    let Some((path, pairs)) = creds else {
        return Ok(from_env());
    };
    let mut b = new();
    for (k, v) in pairs {
        let key: K = k
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| unknown_key(path, k, scheme))?;
        if !k.starts_with(env_prefix) {
            return Err(unknown_key(path, k, scheme));
        }
        b = set(b, key, v);
    }
    Ok(b)
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
            credentials: settings.credentials_file.clone(),
            source: Box::new(source),
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
                    let mut b = configured(
                        &creds,
                        "s3",
                        "AWS_",
                        AmazonS3Builder::new,
                        AmazonS3Builder::from_env,
                        |b, key: AmazonS3ConfigKey, v| b.with_config(key, v),
                    )?;
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
                    let mut b = configured(
                        &creds,
                        "gs",
                        "GOOGLE_",
                        GoogleCloudStorageBuilder::new,
                        GoogleCloudStorageBuilder::from_env,
                        |b, key: GoogleConfigKey, v| b.with_config(key, v),
                    )?;
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
                    let mut b = configured(
                        &creds,
                        "az",
                        "AZURE_",
                        MicrosoftAzureBuilder::new,
                        MicrosoftAzureBuilder::from_env,
                        |b, key: AzureConfigKey, v| b.with_config(key, v),
                    )?;
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
        Ok(CloudWriter::new(
            self.clone(),
            key.to_string(),
            path,
            if limited { self.limiter.clone() } else { None },
        ))
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
