//! Timeouts, retries and upload shape of a cloud repository, and how they map onto object_store's
//! client options and retry configuration (one deadline per store call, docs/repositories.md).

use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use std::time::Duration;

/// Timeouts, retries and upload shape of a cloud repository. [`CloudOptions::default`] holds the
/// documented production numbers (docs/repositories.md); tests shorten them.
///
/// One deadline bounds every store call: `call_timeout`. object_store's own retry window is
/// derived from it ([`CloudOptions::retry_window`]) so that the last retry it may start still
/// ends (request timeout, backoff included) by the deadline; the outer Tokio timeout at the same
/// deadline is only a backstop. An abort of a failed multipart upload is one more call under the
/// same deadline; if it fails transiently it is retried in the background (never holding the
/// caller) until the deadline has passed once more.
#[derive(Debug, Clone)]
pub struct CloudOptions {
    /// TCP/TLS connect timeout of one HTTP request.
    pub connect_timeout: Duration,
    /// Timeout of one HTTP request, body included (an 8 MiB part needs ≥ ~140 KiB/s).
    pub request_timeout: Duration,
    /// object_store retries of one request: at most this many, within the retry window.
    pub max_retries: usize,
    /// First backoff between retries (random up to twice the previous one, at most
    /// `max_backoff`).
    pub init_backoff: Duration,
    pub max_backoff: Duration,
    /// The deadline of one store call, retries included (and of the wait for one chunk of a
    /// streamed read, and of one abort).
    pub call_timeout: Duration,
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
            init_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            call_timeout: Duration::from_secs(180),
            part_size: 8 << 20,
            max_concurrency: 4,
        }
    }
}

impl CloudOptions {
    /// How long after a call's first attempt object_store may still start a retry: the deadline
    /// less one request and one backoff, so no retry outlives `call_timeout` (at least one
    /// backoff, so a short deadline still retries once).
    pub fn retry_window(&self) -> Duration {
        self.call_timeout
            .saturating_sub(self.request_timeout)
            .saturating_sub(self.max_backoff)
            .max(self.init_backoff)
    }

    pub(super) fn client_options(&self, allow_http: bool) -> ClientOptions {
        ClientOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_allow_http(allow_http)
    }

    pub(super) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.init_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_window(),
        }
    }
}
