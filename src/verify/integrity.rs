//! Integrity reads: one stored object read back and checked, streaming (never held whole,
//! except a WAL segment, at most 16 MiB by default).
//!
//! - An object a commit record lists (data objects, manifests, backup labels): the stored size
//!   and the SHA-256 of the stored bytes against the record; with an identity also decrypted,
//!   decompressed and the plaintext's size and SHA-256 against the record's content hash.
//! - An archived WAL file: its key carries the SHA-256 of the plaintext; with an identity it is
//!   decrypted, decompressed and hashed; without one only its age header is checked (WAL has no
//!   ciphertext hash on record).
//!
//! Objects fall into [`BUCKETS`] buckets by the first hex digit of their hash, which `sample`
//! mode walks through a bucket range at a time ([`crate::verify::run`]).

use crate::pipeline::Identities;
use crate::repository::{ObjectRecord, Store};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// The number of sample buckets (the first hex digit of an object's hash).
pub const BUCKETS: u32 = 16;

/// The bucket of a hex hash (0 when it is not hex).
pub fn bucket_of(sha256_hex: &str) -> u32 {
    sha256_hex
        .chars()
        .next()
        .and_then(|c| c.to_digit(16))
        .unwrap_or(0)
}

/// What is known of a stored object before it is read.
#[derive(Debug, Clone)]
pub enum Expected {
    /// Listed by a commit record.
    Record(ObjectRecord),
    /// An archived WAL file: the plaintext's SHA-256 from its key.
    Wal { sha256: String },
}

/// One stored object to read.
#[derive(Debug, Clone)]
pub struct Item {
    /// The backup job it belongs to.
    pub job: String,
    /// The backup it belongs to (None for archived WAL).
    pub backup_id: Option<String>,
    pub key: String,
    pub expected: Expected,
}

impl Item {
    pub fn bucket(&self) -> u32 {
        match &self.expected {
            Expected::Record(r) => bucket_of(&r.sha256),
            Expected::Wal { sha256 } => bucket_of(sha256),
        }
    }
}

/// The result of reading one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// Stored bytes read.
    pub bytes: u64,
    /// Whether the plaintext was checked too (an identity was given).
    pub content_checked: bool,
    /// Why the object is bad (the cause named), None when it is good.
    pub error: Option<String>,
    /// Files (or blocks) whose manifest hash was checked in this object's plaintext.
    pub files_checked: u64,
}

/// Reads `item` from `store` and checks it; `identities` enables the content check, `spans`
/// (the manifest's files and blocks in this object) the per-file check.
pub async fn read(
    store: &Store,
    item: &Item,
    identities: Option<&Identities>,
    spans: Option<&[super::content::Span]>,
) -> Read {
    match (&item.expected, identities) {
        (Expected::Record(record), Some(ids)) => read_content(store, record, ids, spans).await,
        (Expected::Record(record), None) => read_stored(store, record).await,
        (Expected::Wal { sha256 }, Some(ids)) => read_wal(store, &item.key, sha256, ids).await,
        (Expected::Wal { .. }, None) => read_wal_header(store, &item.key).await,
    }
}

/// The stored bytes against the record: size and SHA-256.
async fn read_stored(store: &Store, record: &ObjectRecord) -> Read {
    let key = &record.key;
    let mut stream = match store.get_stream(key).await {
        Ok(s) => s,
        Err(e) => return failed(0, false, crate::error::error_chain_of(&e)),
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                hasher.update(&c);
                size += c.len() as u64;
            }
            Err(e) => return failed(size, false, crate::error::error_chain_of(&e)),
        }
    }
    let actual = hex::encode(hasher.finalize());
    let error = if size != record.size {
        Some(format!(
            "object {key}: stored size is {size} bytes, the commit record says {}: truncated or damaged",
            record.size
        ))
    } else if actual != record.sha256 {
        Some(format!(
            "object {key}: SHA-256 of the stored bytes is {actual}, the commit record says {}: damaged",
            record.sha256
        ))
    } else {
        None
    };
    Read {
        bytes: size,
        content_checked: false,
        error,
        files_checked: 0,
    }
}

/// Decrypted and decompressed through the pipeline (which checks the stored size and hash as it
/// streams), then the plaintext's size and SHA-256 against the record.
async fn read_content(
    store: &Store,
    record: &ObjectRecord,
    ids: &Identities,
    spans: Option<&[super::content::Span]>,
) -> Read {
    let key = &record.key;
    let mut reader = match crate::pipeline::open_stream(store, record, ids).await {
        Ok(r) => r,
        Err(e) => return failed(0, true, crate::error::error_chain_of(&e)),
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut files = spans.map(super::content::SpanChecker::new);
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                if let Some(f) = &mut files {
                    f.update(&buf[..n]);
                }
                size += n as u64;
            }
            // The pipeline's errors already name the object.
            Err(e) if e.to_string().contains(key.as_str()) => {
                return failed(record.size, true, e.to_string());
            }
            Err(e) => return failed(record.size, true, format!("object {key}: {e}")),
        }
    }
    let actual = hex::encode(hasher.finalize());
    let (files_checked, file_failures) = files.map(|f| f.finish()).unwrap_or_default();
    let error = if size != record.content_size || actual != record.content_sha256 {
        Some(format!(
            "object {key}: the decrypted content is {size} bytes with SHA-256 {actual}, the commit record says {} bytes, {}: damaged content",
            record.content_size, record.content_sha256
        ))
    } else if !file_failures.is_empty() {
        let mut parts: Vec<String> = file_failures.iter().take(3).cloned().collect();
        if file_failures.len() > 3 {
            parts.push(format!("and {} more", file_failures.len() - 3));
        }
        Some(format!(
            "object {key}: {} of {files_checked} files or blocks differ from the manifest: {}",
            file_failures.len(),
            parts.join("; ")
        ))
    } else {
        None
    };
    Read {
        bytes: record.size,
        content_checked: true,
        error,
        files_checked,
    }
}

/// An archived WAL file decrypted, decompressed and hashed against its key.
async fn read_wal(store: &Store, key: &str, sha256: &str, ids: &Identities) -> Read {
    let stored = match store.get(key).await {
        Ok(b) => b,
        Err(e) => return failed(0, true, crate::error::error_chain_of(&e)),
    };
    let n = stored.len() as u64;
    let ids = ids.clone();
    let decoded =
        tokio::task::spawn_blocking(move || crate::wal::fetch::decode_object(&stored, &ids)).await;
    let plain = match decoded {
        Ok(Ok(p)) => p,
        Ok(Err(e)) if e.starts_with("no ") => return failed(n, true, format!("object {key}: {e}")),
        Ok(Err(e)) => return failed(n, true, format!("object {key}: {e}: damaged")),
        Err(e) => return failed(n, true, format!("object {key}: decoder failed: {e}")),
    };
    let actual = hex::encode(Sha256::digest(&plain));
    let error = (actual != sha256).then(|| {
        format!(
            "object {key}: the decrypted WAL file has SHA-256 {actual}, its key says {sha256}: damaged"
        )
    });
    Read {
        bytes: n,
        content_checked: true,
        error,
        files_checked: 0,
    }
}

/// Without an identity a WAL object can only be checked for presence and its age header.
async fn read_wal_header(store: &Store, key: &str) -> Read {
    const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";
    match store.get_range(key, 0..AGE_HEADER.len() as u64).await {
        Ok(b) if b.as_ref() == AGE_HEADER => Read {
            bytes: b.len() as u64,
            content_checked: false,
            error: None,
            files_checked: 0,
        },
        Ok(b) => failed(
            b.len() as u64,
            false,
            format!("object {key}: does not start with an age header: damaged"),
        ),
        Err(e) => failed(0, false, crate::error::error_chain_of(&e)),
    }
}

fn failed(bytes: u64, content_checked: bool, message: String) -> Read {
    Read {
        bytes,
        content_checked,
        error: Some(message),
        files_checked: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_first_hex_digit() {
        assert_eq!(bucket_of("0abc"), 0);
        assert_eq!(bucket_of("f000"), 15);
        assert_eq!(bucket_of("A1"), 10);
        assert_eq!(bucket_of(""), 0);
        assert!((0..BUCKETS).contains(&bucket_of("9")));
    }
}
