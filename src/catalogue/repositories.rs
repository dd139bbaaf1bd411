//! The `[repository.NAME]` tables of the catalogue: URLs (file, s3, gs, az), endpoints, credentials,
//! wal-ack and limits, validated into [`RepositorySettings`] with every error collected.

use super::fields::{Ctx, Table, join, type_name, valid_name};
use super::raw::Value;
use super::validate::{REPOSITORY_KEYS, has_password};
use super::{RepositoryLocation, RepositorySettings, WalAck};
use std::path::Path;

/// A repository as far as it could be read: name and wal-ack are known even when its URL is bad.
pub(super) struct RepositoryEntry {
    pub(super) name: String,
    pub(super) wal_ack: WalAck,
    pub(super) settings: Option<RepositorySettings>,
}

pub(super) fn repositories(cx: &mut Ctx, root: &Table, order: &[String]) -> Vec<RepositoryEntry> {
    let Some(all) = root.table(
        cx,
        "repository",
        "a table of repositories ([repository.NAME])",
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let names = order
        .iter()
        .filter(|n| all.contains_key(n.as_str()))
        .chain(all.keys().filter(|k| !order.contains(k)));
    for name in names {
        let key = join("repository", name);
        let Some(value) = all.get(name) else { continue };
        let Value::Dict(_, dict) = value else {
            cx.error(
                &key,
                format!("expected a table, found {}: each repository is its own table, e.g. [repository.local]", type_name(value)),
            );
            continue;
        };
        if !valid_name(name) {
            cx.error(
                &key,
                format!(
                    "repository name \"{name}\" may only contain letters, digits, '.', '_' and '-'"
                ),
            );
        }
        let t = Table::new(key, dict);
        out.push(repository(cx, &t, name));
    }
    out
}

pub(super) fn repository(cx: &mut Ctx, t: &Table, name: &str) -> RepositoryEntry {
    t.check_keys(cx, REPOSITORY_KEYS, &|_| None);
    let wal_ack = match t.choice(cx, "wal-ack", &["sync", "async"]) {
        Some("async") => WalAck::Async,
        _ => WalAck::Sync,
    };
    let location = match t.text(cx, "url") {
        Some(u) => repository_url(cx, &t.key("url"), u),
        None => {
            if t.get("url").is_none() {
                t.missing(cx, "url", "where the repository lives: file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://CONTAINER/PREFIX");
            }
            None
        }
    };
    let region = t.text(cx, "region").map(str::to_string);
    let endpoint = t
        .text(cx, "endpoint")
        .and_then(|e| endpoint_url(cx, &t.key("endpoint"), e));
    let credentials_file = t.existing_file(cx, "credentials-file", "credentials file");
    let bandwidth_limit = match t.get("bandwidth-limit") {
        None => None,
        Some(Value::String(_, s)) => {
            match super::fields::parse_size(s) {
                Ok(n) => Some(n),
                Err(reason) => {
                    cx.error(&t.key("bandwidth-limit"), format!("\"{s}\" is not a size: {reason}; write e.g. \"20MiB\" (bytes per second)"));
                    None
                }
            }
        }
        Some(_) => t
            .integer(cx, "bandwidth-limit", 1, i64::MAX)
            .and_then(|n| u64::try_from(n).ok()),
    };
    let call_timeout = t.duration(cx, "call-timeout", false);
    if let Some(RepositoryLocation::File { .. }) = location {
        for k in ["region", "endpoint", "credentials-file"] {
            if t.get(k).is_some() {
                cx.error(
                    &t.key(k),
                    "has no meaning for a file:// repository; remove it",
                );
            }
        }
    }
    let settings = location.map(|location| RepositorySettings {
        name: name.to_string(),
        url: t
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        location,
        wal_ack,
        region,
        endpoint,
        credentials_file,
        bandwidth_limit,
        call_timeout,
    });
    RepositoryEntry {
        name: name.to_string(),
        wal_ack,
        settings,
    }
}

pub(super) fn repository_url(cx: &mut Ctx, key: &str, s: &str) -> Option<RepositoryLocation> {
    if has_password(s) {
        cx.error(key, "the URL contains a password; remove it and put the store's credentials in `credentials-file` (secrets never go into the catalogue)");
        return None;
    }
    let url = match url::Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            cx.error(key, format!("not a valid URL ({e}); expected file:///PATH, s3://BUCKET/PREFIX, gs://… or az://…"));
            return None;
        }
    };
    if !url.username().is_empty() {
        cx.error(key, "the URL contains a user name; remove it and put the store's credentials in `credentials-file`");
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() {
        cx.error(key, "a repository URL takes no ?query or #fragment; use the repository's own keys (region, endpoint, …)");
        return None;
    }
    let prefix = url.path().trim_matches('/').to_string();
    let bucket = url.host_str().unwrap_or_default().to_string();
    let need_bucket = |cx: &mut Ctx, what: &str| {
        if bucket.is_empty() {
            cx.error(
                key,
                format!(
                    "the {what} name is missing: write {}://{}/PREFIX",
                    url.scheme(),
                    what.to_ascii_uppercase()
                ),
            );
            false
        } else {
            true
        }
    };
    match url.scheme() {
        "file" => {
            let rest = s.get("file://".len()..).unwrap_or_default();
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            if !rest.starts_with('/') {
                cx.error(
                    key,
                    "a file URL needs an absolute path: write file:///PATH (three slashes)",
                );
                return None;
            }
            match url.to_file_path() {
                Ok(path) if path != Path::new("/") => Some(RepositoryLocation::File { path }),
                Ok(_) => {
                    cx.error(key, "the repository cannot be the root folder /");
                    None
                }
                Err(()) => {
                    cx.error(
                        key,
                        "a file URL needs an absolute path: write file:///PATH (three slashes)",
                    );
                    None
                }
            }
        }
        "s3" => need_bucket(cx, "bucket").then(|| RepositoryLocation::S3 {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
        }),
        "gs" => need_bucket(cx, "bucket").then(|| RepositoryLocation::Gcs {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
        }),
        "az" => need_bucket(cx, "container").then(|| RepositoryLocation::Azure {
            container: bucket.clone(),
            prefix: prefix.clone(),
        }),
        other => {
            cx.error(
                key,
                format!("unsupported scheme {other}://; use file://, s3://, gs:// or az://"),
            );
            None
        }
    }
}

pub(super) fn endpoint_url(cx: &mut Ctx, key: &str, s: &str) -> Option<String> {
    if has_password(s) {
        cx.error(key, "the endpoint URL contains credentials; remove them and put them in `credentials-file` (secrets never go into the catalogue)");
        return None;
    }
    let url = match url::Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            cx.error(
                key,
                format!("not a valid URL ({e}); expected e.g. https://s3.example.net"),
            );
            return None;
        }
    };
    if url.password().is_some() || !url.username().is_empty() {
        cx.error(key, "the endpoint URL contains credentials; remove them and put them in `credentials-file` (secrets never go into the catalogue)");
        return None;
    }
    if !matches!(url.scheme(), "https" | "http") {
        cx.error(key, format!("the endpoint must be an https:// (or, for local test servers, http://) URL, not {}://", url.scheme()));
        return None;
    }
    Some(s.to_string())
}
