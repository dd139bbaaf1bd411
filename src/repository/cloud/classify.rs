//! How a failed object_store call is classified: [`RemoteKind`] (in the operator's words) and
//! whether a retry makes sense.

use crate::error::Retry;

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
