//! The tree-snapshot manifest: a **complete** listing (never a delta), as JSON lines in walk
//! order — one header line, one line per entry, one `{"end": …}` trailer line (a manifest
//! without it is truncated). Each file entry says where its bytes live (backup id, object key,
//! the zstd frames covering it, the offset in the first frame), wherever in the ancestor chain
//! that is. Written and read as a stream: entries never all sit in memory.

use super::path::ByteName;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};

/// The header's `kind`.
pub const SNAPSHOT_KIND: &str = "tree-snapshot";

/// Lenient (files, config) or strict (PGDATA) reading (docs/design.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A file changing while read is re-read once, then reported; unreadable = warning.
    Lenient,
    /// Sizes pinned at stat time (grown → cut, shrunk → zero-padded); unreadable = failure.
    Strict,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Header {
    pub format_version: u32,
    /// Always [`SNAPSHOT_KIND`].
    pub kind: String,
    pub job: String,
    pub backup_id: String,
    pub backup_type: crate::model::BackupType,
    pub mode: Mode,
    /// The folder the paths are relative to (`/` for config jobs).
    pub source: ByteName,
    pub started_at: DateTime<Utc>,
    /// Ancestor ids, nearest first (empty for a full).
    #[serde(default)]
    pub ancestors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// Where a file's bytes live: `frames` are `[compressed offset, compressed length, content
/// offset, content length]` of consecutive zstd frames of `key` (offsets in the decrypted
/// stream and in the object's plaintext); the file's content starts `offset` bytes into the
/// first frame's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Location {
    pub backup: String,
    pub key: String,
    pub offset: u64,
    pub frames: Vec<[u64; 4]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    pub path: ByteName,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub ctime: i64,
    pub ctime_nsec: u32,
    pub ino: u64,
    /// Regular files: bytes stored (the size at stat time in strict mode); others 0.
    pub size: u64,
    /// Regular files: SHA-256 of the content as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlinks: the target, as bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ByteName>,
    /// Hard-linked files share a group number; only the first member (in walk order) has data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_group: Option<u64>,
    /// Sparse files: the data extents `[offset, length]`; the rest are holes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<Vec<[u64; 2]>>,
    /// Files with content (size > 0, first member of a link group) stored as one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Location>,
    /// Strict mode: per-block hashes of the content as stored (what the next incremental
    /// compares with). Optional: older manifests have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<BlockHashes>,
    /// Block incrementals: where each range of the content lives, in file order, covering the
    /// whole file (`data` is then absent, and so is `sha256`: `blocks` is checked instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<Extent>>,
}

impl Entry {
    /// Whether this entry carries content of its own (one run or extents).
    pub fn has_content(&self) -> bool {
        self.data.is_some() || self.extents.is_some()
    }

    /// The data objects the content is read from.
    pub fn content_keys(&self) -> impl Iterator<Item = &str> {
        self.data
            .iter()
            .chain(self.extents.iter().flatten().map(|x| &x.data))
            .map(|l| l.key.as_str())
    }
}

/// Per-block hashes: xxh3-128 of each `size`-byte block (the last one partial), as one string
/// of 32 lowercase hex digits per block, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockHashes {
    pub size: u64,
    pub xxh3: String,
}

/// Hex digits per block hash.
pub const BLOCK_HASH_HEX: usize = 32;

impl BlockHashes {
    pub fn count(&self) -> usize {
        self.xxh3.len() / BLOCK_HASH_HEX
    }

    /// The hash of block `i` (hex), if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.xxh3.get(i * BLOCK_HASH_HEX..(i + 1) * BLOCK_HASH_HEX)
    }
}

/// The hash of one block, as stored in [`BlockHashes`]: XXH3-128, big-endian, hex.
pub fn block_hash(block: &[u8]) -> [u8; BLOCK_HASH_HEX] {
    let h = twox_hash::XxHash3_128::oneshot(block).to_be_bytes();
    let mut out = [0u8; BLOCK_HASH_HEX];
    hex::encode_to_slice(h, &mut out).expect("32 hex digits for 16 bytes");
    out
}

/// Hashes content fed in order into fixed blocks: whole blocks in the input are hashed where
/// they lie, only a block cut by the end of an `update` is gathered first.
pub struct BlockHasher {
    size: u64,
    /// The start of a block cut by the end of the last `update`.
    pending: Vec<u8>,
    out: String,
}

impl BlockHasher {
    pub fn new(size: u64) -> Self {
        BlockHasher {
            size: size.max(1),
            pending: Vec::new(),
            out: String::new(),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let bs = self.size as usize;
        if !self.pending.is_empty() {
            let room = (bs - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..room]);
            data = &data[room..];
            if self.pending.len() < bs {
                return;
            }
            let h = block_hash(&self.pending);
            self.push(&h);
            self.pending.clear();
        }
        let mut blocks = data.chunks_exact(bs);
        for block in &mut blocks {
            let h = block_hash(block);
            self.push(&h);
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    fn push(&mut self, h: &[u8; BLOCK_HASH_HEX]) {
        self.out
            .push_str(std::str::from_utf8(h).expect("hex is ASCII"));
    }

    /// The hashes so far (the last, partial block included).
    pub fn finish(mut self) -> BlockHashes {
        if !self.pending.is_empty() {
            let h = block_hash(&self.pending);
            self.push(&h);
        }
        BlockHashes {
            size: self.size,
            xxh3: self.out,
        }
    }
}

/// `len` bytes of a file's content starting at file offset `at`, stored at `data` (which
/// describes exactly these bytes: its `offset` into the first frame, `len` bytes on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Extent {
    pub at: u64,
    pub len: u64,
    pub data: Location,
}

impl Location {
    /// Offset of the first byte in the object's plaintext.
    pub fn start(&self) -> u64 {
        self.frames.first().map(|f| f[2]).unwrap_or(0) + self.offset
    }

    /// The location of `len` bytes starting `rel` bytes into this one.
    pub fn slice(&self, rel: u64, len: u64) -> Location {
        let start = self.start() + rel;
        let end = start + len;
        let frames: Vec<[u64; 4]> = self
            .frames
            .iter()
            .filter(|f| f[2] + f[3] > start && f[2] < end)
            .copied()
            .collect();
        let offset = frames.first().map(|f| start - f[2]).unwrap_or(0);
        Location {
            backup: self.backup.clone(),
            key: self.key.clone(),
            offset,
            frames,
        }
    }
}

/// Appends an extent, merging it into the last one when both are contiguous in the file and in
/// the same object.
pub fn push_extent(list: &mut Vec<Extent>, x: Extent) {
    if x.len == 0 {
        return;
    }
    if let Some(last) = list.last_mut()
        && last.at + last.len == x.at
        && last.data.key == x.data.key
        && last.data.backup == x.data.backup
        && last.data.start() + last.len == x.data.start()
    {
        last.len += x.len;
        for f in x.data.frames {
            if last.data.frames.last() != Some(&f) {
                last.data.frames.push(f);
            }
        }
        return;
    }
    list.push(x);
}

/// The pieces of `parent`'s content in `[at, at + len)` (from its `data` or its extents).
pub fn content_pieces(parent: &Entry, at: u64, len: u64) -> Vec<Extent> {
    let end = at + len;
    let mut out = Vec::new();
    if let Some(d) = &parent.data {
        if end <= parent.size {
            out.push(Extent {
                at,
                len,
                data: d.slice(at, len),
            });
        }
        return out;
    }
    let Some(list) = &parent.extents else {
        return out;
    };
    let first = list.partition_point(|x| x.at + x.len <= at);
    for x in &list[first..] {
        if x.at >= end {
            break;
        }
        let s = x.at.max(at);
        let e = (x.at + x.len).min(end);
        out.push(Extent {
            at: s,
            len: e - s,
            data: x.data.slice(s - x.at, e - s),
        });
    }
    out
}

/// The last line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Trailer {
    pub entries: u64,
    /// Data objects written by this backup, in order.
    pub objects: Vec<String>,
    /// Files whose content this backup stored (new or changed).
    pub files_stored: u64,
    pub warnings: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct EndLine {
    end: Trailer,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading the manifest: {0}")]
    Io(#[from] io::Error),
    #[error("manifest line {line}: {source}")]
    Json {
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("the manifest is truncated (no end line after {entries} entries)")]
    Truncated { entries: u64 },
    #[error("the manifest says {expected} entries, it holds {found}")]
    Count { expected: u64, found: u64 },
    #[error("manifest line {line}: `{path}` is out of order or listed twice")]
    Order { line: u64, path: String },
    #[error("not a tree-snapshot manifest (kind `{0}`)")]
    Kind(String),
}

/// Writes a manifest line by line.
pub struct ManifestWriter<W: Write> {
    out: W,
    entries: u64,
}

impl<W: Write> ManifestWriter<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        Ok(ManifestWriter { out, entries: 0 })
    }

    pub fn entry(&mut self, e: &Entry) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, e)?;
        self.out.write_all(b"\n")?;
        self.entries += 1;
        Ok(())
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn finish(mut self, mut trailer: Trailer) -> io::Result<W> {
        trailer.entries = self.entries;
        serde_json::to_writer(&mut self.out, &EndLine { end: trailer })?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a manifest as a stream of entries; checks order, the trailer and the entry count.
pub struct ManifestReader<R: BufRead> {
    input: R,
    pub header: Header,
    line: u64,
    entries: u64,
    last: Option<Vec<u8>>,
    trailer: Option<Trailer>,
    buf: Vec<u8>,
}

impl<R: BufRead> ManifestReader<R> {
    pub fn new(mut input: R) -> Result<Self, ManifestError> {
        let mut buf = Vec::new();
        input.read_until(b'\n', &mut buf)?;
        let header: Header = serde_json::from_slice(&buf)
            .map_err(|source| ManifestError::Json { line: 1, source })?;
        if header.kind != SNAPSHOT_KIND {
            return Err(ManifestError::Kind(header.kind));
        }
        Ok(ManifestReader {
            input,
            header,
            line: 1,
            entries: 0,
            last: None,
            trailer: None,
            buf,
        })
    }

    /// The next entry, or None at the (checked) end.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ManifestError> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        self.buf.clear();
        let n = self.input.read_until(b'\n', &mut self.buf)?;
        self.line += 1;
        if n == 0 {
            return Err(ManifestError::Truncated {
                entries: self.entries,
            });
        }
        if self.buf.starts_with(b"{\"end\":") {
            let end: EndLine =
                serde_json::from_slice(&self.buf).map_err(|source| ManifestError::Json {
                    line: self.line,
                    source,
                })?;
            if end.end.entries != self.entries {
                return Err(ManifestError::Count {
                    expected: end.end.entries,
                    found: self.entries,
                });
            }
            self.trailer = Some(end.end);
            return Ok(None);
        }
        let e: Entry = serde_json::from_slice(&self.buf).map_err(|source| ManifestError::Json {
            line: self.line,
            source,
        })?;
        if let Some(last) = &self.last
            && super::path::compare(last, e.path.as_bytes()) != std::cmp::Ordering::Less
        {
            return Err(ManifestError::Order {
                line: self.line,
                path: e.path.display(),
            });
        }
        self.last = Some(e.path.0.clone());
        self.entries += 1;
        Ok(Some(e))
    }

    /// The trailer, once every entry was read.
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }
}

/// A cursor over the parent manifest for the merge with a new walk (both in walk order).
pub struct ParentCursor<R: BufRead> {
    reader: ManifestReader<R>,
    next: Option<Entry>,
}

impl<R: BufRead> ParentCursor<R> {
    pub fn new(mut reader: ManifestReader<R>) -> Result<Self, ManifestError> {
        let next = reader.next_entry()?;
        Ok(ParentCursor { reader, next })
    }

    pub fn header(&self) -> &Header {
        &self.reader.header
    }

    /// The parent's entry for `path`, skipping entries before it.
    pub fn find(&mut self, path: &[u8]) -> Result<Option<Entry>, ManifestError> {
        loop {
            let Some(e) = &self.next else {
                return Ok(None);
            };
            match super::path::compare(e.path.as_bytes(), path) {
                std::cmp::Ordering::Less => self.next = self.reader.next_entry()?,
                std::cmp::Ordering::Equal => {
                    let found = self.next.take();
                    self.next = self.reader.next_entry()?;
                    return Ok(found);
                }
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes `(i * 31 + 7) % 251`.
    fn sample(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| ((i * 31 + 7) % 251) as u8)
            .collect()
    }

    /// XXH3-128 as the manifests written so far hold it (values from the xxhash-rust crate the
    /// block hashes were computed with until stop 23; the empty input is XXH3's reference
    /// value): a new hashing crate must not change a single block hash.
    #[test]
    fn block_hashes_keep_their_values() {
        for (len, want) in [
            (0usize, "99aa06d3014798d86001c324468d497f"),
            (1, "495b62073ef70ca44c5cca45d0f4811f"),
            (3, "46f66cb93538156515f7093b173d005c"),
            (16, "da917c385cc874c00d463cb04ceffbaf"),
            (17, "d443578f2c4e2fb495c34448580e19c8"),
            (128, "22c34350373a38ae5b77925b2c683a12"),
            (129, "c4a7d8f7893f2090d6d9e73553568be1"),
            (240, "e29d70b8920fd24bc6ed4333f79384f8"),
            (241, "f91b3cb8ed0fa91a07525dbc14902c7f"),
            (1024, "f53a1b1e9f1efedfe2898655db7bc9ee"),
            (16384, "33a3d69e0953199435b8e2c248a6f27a"),
            (65543, "3a7f00e456967239fea72e2fe49764e3"),
        ] {
            let got = block_hash(&sample(len));
            assert_eq!(std::str::from_utf8(&got).unwrap(), want, "{len} bytes");
        }
    }

    /// Fed in any cuts, the hasher gives each block's own hash, the last partial one included.
    #[test]
    fn block_hasher_is_independent_of_the_cuts() {
        let data = sample(5 * 4096 + 1000);
        let want: String = data
            .chunks(4096)
            .map(|b| String::from_utf8(block_hash(b).to_vec()).unwrap())
            .collect();
        for cuts in [
            vec![data.len()],
            vec![1, 4095, 4096, 1, 9000],
            vec![4096, 4096, 100, 3996, 7],
            vec![10_000, 3, 3],
        ] {
            let mut h = BlockHasher::new(4096);
            let mut at = 0;
            for c in cuts.iter().copied().chain(std::iter::once(usize::MAX)) {
                let end = at + c.min(data.len() - at);
                h.update(&data[at..end]);
                at = end;
            }
            assert_eq!(at, data.len());
            let got = h.finish();
            assert_eq!(got.size, 4096);
            assert_eq!(got.xxh3, want, "cuts {cuts:?}");
        }
        assert_eq!(BlockHasher::new(4096).finish().xxh3, "");
    }
}
