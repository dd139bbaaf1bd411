//! Per-file and per-block content checks of tree snapshots (files, config, postgres-base): the
//! backup's manifest (decrypted, spooled to a temporary file, read as a stream) says where each
//! file's bytes lie in which data object and what they hash to — SHA-256 per file stored in one
//! run, xxh3 per block for the blocks a block incremental stored. While an integrity read streams
//! an object's plaintext, a [`SpanChecker`] hashes those ranges and names every file whose bytes
//! differ. This proves the manifest points at the right bytes, beyond the object's own hash.

use crate::pipeline::Identities;
use crate::repository::{CommitRecord, Store};
use crate::snapshot::manifest::{EntryKind, ManifestReader, block_hash};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// What a range must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A whole file: SHA-256 (hex).
    Sha256(String),
    /// One block of a block incremental: xxh3-128 (hex), `index` in the file.
    Block { xxh3: String, index: u64 },
}

/// A byte range of one data object's plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub len: u64,
    pub expect: Expect,
    /// The file, for messages.
    pub path: String,
}

/// The spans of one backup, per data object key, sorted by start.
pub type Spans = HashMap<String, Vec<Span>>;

/// Reads backup `record`'s manifest and lists the spans stored in its own objects. None for kinds
/// without a tree-snapshot manifest (dumps: each object is one database, its content hash is the
/// check). An unreadable manifest is an error (its own integrity read names the damage).
pub async fn spans_of(
    store: &Store,
    record: &CommitRecord,
    ids: &Identities,
) -> Result<Option<Spans>, String> {
    use crate::model::JobKindName as K;
    if !matches!(record.kind, K::Files | K::Config | K::PostgresBase) {
        return Ok(None);
    }
    let spool = tempfile::tempfile().map_err(|e| format!("cannot make a spool file: {e}"))?;
    let mut writer = tokio::fs::File::from_std(spool.try_clone().map_err(|e| e.to_string())?);
    let mut reader = crate::pipeline::open_stream(store, &record.manifest, ids)
        .await
        .map_err(|e| crate::error::error_chain_of(&e))?;
    tokio::io::copy(&mut reader, &mut writer)
        .await
        .map_err(|e| format!("manifest {}: {e}", record.manifest.key))?;
    drop(writer);
    let id = record.id.clone();
    let key = record.manifest.key.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Seek;
        let mut file = spool;
        file.rewind().map_err(|e| e.to_string())?;
        read_spans(std::io::BufReader::new(file), &id)
            .map(Some)
            .map_err(|e| format!("manifest {key}: {e}"))
    })
    .await
    .map_err(|e| format!("manifest reader failed: {e}"))?
}

fn read_spans(input: impl std::io::BufRead, backup: &str) -> Result<Spans, String> {
    let mut reader = ManifestReader::new(input).map_err(|e| e.to_string())?;
    let mut out: Spans = HashMap::new();
    while let Some(e) = reader.next_entry().map_err(|e| e.to_string())? {
        // Sparse files are stored whole (holes as zeros), the map is only for the restore.
        if e.kind != EntryKind::File {
            continue;
        }
        let path = e.path.display();
        if let (Some(loc), Some(sha)) = (&e.data, &e.sha256) {
            if loc.backup == backup && e.size > 0 {
                out.entry(loc.key.clone()).or_default().push(Span {
                    start: loc.start(),
                    len: e.size,
                    expect: Expect::Sha256(sha.clone()),
                    path: path.clone(),
                });
            }
            continue;
        }
        let (Some(extents), Some(blocks)) = (&e.extents, &e.blocks) else {
            continue;
        };
        let bs = blocks.size.max(1);
        for x in extents.iter().filter(|x| x.data.backup == backup) {
            // Every block lying wholly inside this extent.
            let mut i = x.at.div_ceil(bs);
            loop {
                let b_start = i * bs;
                let b_end = (b_start + bs).min(e.size);
                if b_start >= e.size || b_end > x.at + x.len {
                    break;
                }
                if let Some(h) = blocks.get(i as usize) {
                    out.entry(x.data.key.clone()).or_default().push(Span {
                        start: x.data.start() + (b_start - x.at),
                        len: b_end - b_start,
                        expect: Expect::Block {
                            xxh3: h.to_string(),
                            index: i,
                        },
                        path: path.clone(),
                    });
                }
                i += 1;
            }
        }
    }
    for list in out.values_mut() {
        list.sort_by_key(|s| s.start);
    }
    Ok(out)
}

/// Hashes the spans of one object as its plaintext streams past.
pub struct SpanChecker<'a> {
    spans: &'a [Span],
    next: usize,
    pos: u64,
    sha: Option<Sha256>,
    block: Vec<u8>,
    fed: u64,
    pub checked: u64,
    pub failures: Vec<String>,
}

impl<'a> SpanChecker<'a> {
    pub fn new(spans: &'a [Span]) -> Self {
        SpanChecker {
            spans,
            next: 0,
            pos: 0,
            sha: None,
            block: Vec::new(),
            fed: 0,
            checked: 0,
            failures: Vec::new(),
        }
    }

    /// The next piece of plaintext, in order.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let Some(span) = self.spans.get(self.next) else {
                self.pos += data.len() as u64;
                return;
            };
            let here = self.pos;
            let span_pos = span.start + self.fed;
            if here < span_pos {
                // Bytes before the span (tar headers, other entries).
                let skip = (span_pos - here).min(data.len() as u64) as usize;
                data = &data[skip..];
                self.pos += skip as u64;
                continue;
            }
            if here > span_pos {
                // Overlapping spans (not written by us): skip this one.
                self.next += 1;
                self.reset();
                continue;
            }
            let take = (span.len - self.fed).min(data.len() as u64) as usize;
            match &span.expect {
                Expect::Sha256(_) => self
                    .sha
                    .get_or_insert_with(Sha256::new)
                    .update(&data[..take]),
                Expect::Block { .. } => self.block.extend_from_slice(&data[..take]),
            }
            self.fed += take as u64;
            self.pos += take as u64;
            data = &data[take..];
            if self.fed == span.len {
                self.finish_span();
            }
        }
    }

    fn reset(&mut self) {
        self.sha = None;
        self.block.clear();
        self.fed = 0;
    }

    fn finish_span(&mut self) {
        let span = &self.spans[self.next];
        let bad = match &span.expect {
            Expect::Sha256(want) => {
                let got = hex::encode(self.sha.take().unwrap_or_default().finalize());
                (&got != want).then(|| {
                    format!(
                        "file {}: content SHA-256 {got}, the manifest says {want}",
                        span.path
                    )
                })
            }
            Expect::Block { xxh3, index } => {
                let got = block_hash(&self.block);
                let got = String::from_utf8_lossy(&got).to_string();
                (&got != xxh3).then(|| {
                    format!(
                        "file {}: block {index} hashes to {got}, the manifest says {xxh3}",
                        span.path
                    )
                })
            }
        };
        if let Some(b) = bad {
            self.failures.push(b);
        }
        self.checked += 1;
        self.next += 1;
        self.reset();
    }

    /// At the end of the object: spans it did not reach are failures.
    pub fn finish(mut self) -> (u64, Vec<String>) {
        for span in &self.spans[self.next.min(self.spans.len())..] {
            self.failures.push(format!(
                "file {}: the object ends before its content (at {} of {} bytes)",
                span.path,
                span.start,
                span.start + span.len
            ));
        }
        (self.checked, self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn spans_are_checked_across_chunks() {
        let plain = b"HEADERaaaaaaaaPADbbbbTAIL".to_vec();
        let spans = vec![
            Span {
                start: 6,
                len: 8,
                expect: Expect::Sha256(sha(b"aaaaaaaa")),
                path: "a".into(),
            },
            Span {
                start: 17,
                len: 4,
                expect: Expect::Block {
                    xxh3: String::from_utf8_lossy(&block_hash(b"bbbb")).to_string(),
                    index: 0,
                },
                path: "b".into(),
            },
        ];
        for chunk in [1, 3, 7, 100] {
            let mut c = SpanChecker::new(&spans);
            for piece in plain.chunks(chunk) {
                c.update(piece);
            }
            let (n, failures) = c.finish();
            assert_eq!((n, failures.len()), (2, 0), "chunk {chunk}: {failures:?}");
        }
        let mut damaged = plain.clone();
        damaged[18] ^= 1;
        let mut c = SpanChecker::new(&spans);
        c.update(&damaged);
        let (_, failures) = c.finish();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].starts_with("file b: block 0"), "{failures:?}");
        let mut c = SpanChecker::new(&spans);
        c.update(&plain[..10]);
        let (_, failures) = c.finish();
        assert_eq!(failures.len(), 2, "{failures:?}");
    }
}
