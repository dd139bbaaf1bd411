//! Where a restore's file bytes come from: whole restores stream each object front to back
//! (read, decryption and decompression overlapping in [`pipeline::frames`], at most
//! [`MAX_STREAMS`] objects at once), `--path` restores and objects whose stream failed fetch just
//! the frames they need by ranged reads; a few frames stay cached for block-incremental files.

use crate::pipeline::{self, FrameInfo, Identities, PipelineError};
use crate::repository::{ObjectRecord, Store};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::io;

pub(super) const AGE_CHUNK: u64 = 64 * 1024 + 16;

/// Frames kept after use.
pub(super) const CACHED_FRAMES: usize = 4;

/// At most this many objects are streamed at once (a chain restore reads several; the others are
/// read by ranges). Each holds ≈ `DECODE_WORKERS` + 3 frames (see [`pipeline::frames`]), so with
/// 2 MiB frames a restore holds ≈ 6 × 5 × 2 MiB = 60 MiB of frames at most. A stream whose last
/// frame was taken is closed at once (its frames stay in the small cache), so a full backup's
/// parts, read one after the other, count as one.
pub(super) const MAX_STREAMS: usize = 6;

/// Frames of one object decompressed at once while the restore writes (see
/// [`pipeline::frames`]).
pub(super) const DECODE_WORKERS: usize = 2;

/// One object read front to back (whole restores): read, decryption, decompression (frames in
/// parallel) and our writing overlap as stages of [`pipeline::frames`]. Frames of one object are
/// requested in increasing order (manifests and parts are both in walk order), so the stream only
/// skips ahead.
pub(super) struct ObjectStream {
    pub(super) reader: pipeline::frames::FrameReader,
    /// The last frame read (content offset, bytes): files of other objects may come between two
    /// files of one frame.
    pub(super) last: Option<(u64, Bytes)>,
}

/// Gets frames: by streaming whole objects (whole restores) or by ranged reads (`--path`, and
/// any object whose stream failed, so a damaged chunk costs only the frames it covers).
pub(super) struct Frames<'a> {
    pub(super) store: &'a Store,
    pub(super) objects: &'a HashMap<String, ObjectRecord>,
    pub(super) identities: &'a Identities,
    pub(super) handle: tokio::runtime::Handle,
    /// The last few frames (block-incremental files alternate between objects).
    pub(super) cached: VecDeque<(String, u64, Bytes)>,
    pub(super) streaming: bool,
    pub(super) streams: HashMap<String, ObjectStream>,
    pub(super) ranged_only: std::collections::HashSet<String>,
    pub(super) frames: u64,
    pub(super) bytes: u64,
}

impl Frames<'_> {
    pub(super) fn frame(&mut self, key: &str, f: [u64; 4]) -> Result<Bytes, String> {
        if let Some((_, _, data)) = self
            .cached
            .iter()
            .find(|(k, off, _)| k == key && *off == f[0])
        {
            return Ok(data.clone());
        }
        let record = self.objects.get(key).ok_or_else(|| {
            format!("object {key} is not listed by any commit record of the chain")
        })?;
        self.frames += 1;
        let data = match self.streamed(key, record, f) {
            Some(data) => data?,
            None => self.ranged(record, f)?,
        };
        if self.cached.len() >= CACHED_FRAMES
            && let Some((_, _, old)) = self.cached.pop_front()
        {
            pipeline::buffers::recycle(old);
        }
        self.cached.push_back((key.to_string(), f[0], data.clone()));
        Ok(data)
    }

    pub(super) fn ranged(&mut self, record: &ObjectRecord, f: [u64; 4]) -> Result<Bytes, String> {
        let info = FrameInfo {
            compressed_offset: f[0],
            compressed_len: f[1],
            content_offset: f[2],
            content_len: f[3],
        };
        let first = f[0] / (64 * 1024);
        let last = (f[0] + f[1].max(1) - 1) / (64 * 1024);
        self.bytes += AGE_CHUNK * (last - first + 2);
        self.handle
            .block_on(pipeline::read_frame(
                self.store,
                record,
                info,
                self.identities,
            ))
            .map_err(|e| self.damage(record, &e))
    }

    /// Says what is wrong with an object whose ranged read failed: truncated (or missing, or
    /// longer) when the store's size differs from the commit record; corrupted when the bytes
    /// fail decryption or decompression; else the read error itself (a store fault).
    pub(super) fn damage(&self, record: &ObjectRecord, e: &PipelineError) -> String {
        if let Some(found) = self
            .handle
            .block_on(pipeline::decode::size_damage(self.store, record))
        {
            return found;
        }
        match e {
            PipelineError::Read { source, .. } if source.kind() == io::ErrorKind::InvalidData => {
                pipeline::decode::corrupted(self.store, record, source)
            }
            other => crate::error::error_chain_of(other),
        }
    }

    /// The frame from the object's stream; None when streaming is off or failed (then the
    /// object is read by ranges from now on). At the object's last frame the stream is read to
    /// its end, so the stored size and SHA-256 are checked (an error names the object), and
    /// closed.
    pub(super) fn streamed(
        &mut self,
        key: &str,
        record: &ObjectRecord,
        f: [u64; 4],
    ) -> Option<Result<Bytes, String>> {
        if !self.streaming || self.ranged_only.contains(key) || record.compression != "zstd" {
            return None;
        }
        if !self.streams.contains_key(key) {
            if self.streams.len() >= MAX_STREAMS {
                return None;
            }
            let opened = self.handle.block_on(pipeline::frames::open_frames(
                self.store,
                record,
                self.identities,
                DECODE_WORKERS,
            ));
            match opened {
                Ok(reader) => {
                    self.bytes += record.size;
                    self.streams
                        .insert(key.to_string(), ObjectStream { reader, last: None });
                }
                Err(_) => {
                    self.ranged_only.insert(key.to_string());
                    return None;
                }
            }
        }
        let result = {
            let stream = self.streams.get_mut(key)?;
            match &stream.last {
                Some((off, data)) if *off == f[2] => Ok(data.clone()),
                _ => next_frame(stream, f[2], f[3]),
            }
        };
        match result {
            Ok(data) if f[2] + f[3] >= record.content_size => {
                // The object's last frame: the verdict on the whole object, and the slot freed
                // (the frame itself stays in the cache).
                let mut done = self.streams.remove(key)?;
                let verdict = match done.reader.blocking_next() {
                    None => Ok(data),
                    Some(Err(e)) => {
                        // Reported once, on this file; the object's other frames are read by
                        // ranges from now on (each still authenticated by age).
                        self.ranged_only.insert(key.to_string());
                        Err(e.to_string())
                    }
                    Some(Ok(extra)) => Err(format!(
                        "object {key}: content goes on past the {} bytes its commit record says \
                         (at offset {})",
                        record.content_size, extra.content_offset
                    )),
                };
                Some(verdict)
            }
            Ok(data) => Some(Ok(data)),
            Err(()) => {
                self.streams.remove(key);
                self.ranged_only.insert(key.to_string());
                None
            }
        }
    }
}

/// The frame at content `offset` (of `len` bytes) from a stream, skipping the frames before it.
pub(super) fn next_frame(stream: &mut ObjectStream, offset: u64, len: u64) -> Result<Bytes, ()> {
    loop {
        match stream.reader.blocking_next() {
            Some(Ok(f)) if f.content_offset < offset => pipeline::buffers::recycle(f.data),
            Some(Ok(f)) if f.content_offset == offset && f.data.len() as u64 == len => {
                if let Some((_, old)) = stream.last.replace((offset, f.data.clone())) {
                    pipeline::buffers::recycle(old);
                }
                return Ok(f.data);
            }
            _ => return Err(()),
        }
    }
}
