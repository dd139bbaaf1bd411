//! Ranged reads: one zstd frame of an object, fetched with ranged GETs.
//!
//! age's payload is 64 KiB chunks (+16-byte tag each) after the header, and its sync reader can
//! seek when the underlying reader can. [`RangedObject`] is such a reader over
//! [`Store::get_range`], so decrypting one frame fetches only the header and the chunks covering
//! the frame. Each age chunk is authenticated, so damage inside them is still detected; the
//! whole-object SHA-256 is not (that is `verify`'s job).

use super::{FrameInfo, Identities, PipelineError};
use crate::repository::{ObjectRecord, Store};
use bytes::Bytes;
use std::io::{self, Read, Seek, SeekFrom};

/// Bytes fetched per ranged GET (one age chunk plus its tag, a little more).
const FETCH: u64 = 64 * 1024 + 16;

/// A `Read + Seek` view of a stored object through ranged GETs (blocking threads only).
struct RangedObject {
    store: Store,
    key: String,
    size: u64,
    pos: u64,
    /// Cached bytes starting at `buf_start`.
    buf: Bytes,
    buf_start: u64,
    runtime: tokio::runtime::Handle,
}

impl Read for RangedObject {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let cached =
            self.pos >= self.buf_start && self.pos < self.buf_start + self.buf.len() as u64;
        if !cached {
            let end = (self.pos + FETCH.max(out.len() as u64)).min(self.size);
            let range = self.pos..end;
            self.buf = self
                .runtime
                .block_on(self.store.get_range(&self.key, range))
                .map_err(|e| e.into_io())?;
            self.buf_start = self.pos;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let at = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangedObject {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Decrypts and decompresses one zstd frame of `record` (from the frame table that
/// [`super::store_frames`] returned), fetching only the byte ranges it needs.
pub async fn read_frame(
    store: &Store,
    record: &ObjectRecord,
    frame: FrameInfo,
    identities: &Identities,
) -> Result<Bytes, PipelineError> {
    let key = record.key.clone();
    let read_err = {
        let key = key.clone();
        move |source: io::Error| PipelineError::Read {
            key: key.clone(),
            source,
        }
    };
    if record.compression != "zstd" {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "ranged reads need zstd frames, this object is {}",
                record.compression
            ),
        )));
    }
    let reader = RangedObject {
        store: store.clone(),
        key: key.clone(),
        size: record.size,
        pos: 0,
        buf: Bytes::new(),
        buf_start: 0,
        runtime: tokio::runtime::Handle::current(),
    };
    let ids = identities.clone();
    let task = tokio::task::spawn_blocking(move || -> Result<Bytes, PipelineError> {
        let read_err = |source: io::Error| PipelineError::Read {
            key: key.clone(),
            source,
        };
        let decryptor = age::Decryptor::new(reader).map_err(|e| read_err(decrypt_io(e)))?;
        let mut plain = decryptor
            .decrypt(ids.keys.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| read_err(decrypt_io(e)))?;
        plain
            .seek(SeekFrom::Start(frame.compressed_offset))
            .map_err(read_err)?;
        let len = usize::try_from(frame.compressed_len).map_err(|_| {
            read_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too large",
            ))
        })?;
        let mut compressed = vec![0u8; len];
        plain.read_exact(&mut compressed).map_err(read_err)?;
        let content = zstd::stream::decode_all(&compressed[..]).map_err(read_err)?;
        if content.len() as u64 != frame.content_len {
            let msg = format!(
                "frame holds {} bytes, the frame table says {}",
                content.len(),
                frame.content_len
            );
            return Err(read_err(io::Error::new(io::ErrorKind::InvalidData, msg)));
        }
        Ok(Bytes::from(content))
    });
    task.await.map_err(|e| PipelineError::Task(e.to_string()))?
}

fn decrypt_io(e: age::DecryptError) -> io::Error {
    match e {
        age::DecryptError::Io(e) => e,
        age::DecryptError::NoMatchingKeys => io::Error::new(
            io::ErrorKind::PermissionDenied,
            "no identity matches this object's recipients",
        ),
        other => io::Error::new(io::ErrorKind::InvalidData, format!("age: {other}")),
    }
}
