//! Block incrementals (strict mode): a changed file whose parent entry has block hashes is read
//! block by block at the parent's block size; blocks equal to the parent's point at the parent's
//! bytes, the others are stored as `./.bdc-blocks/<n>` tar entries. The file is read in chunks
//! of whole blocks into one reused buffer. Blocks the journal (`EngineConfig::changed`) says
//! did not change are not read at all: they point at the parent's bytes with its hashes.

use super::super::SnapshotError;
use super::super::backup::Changed;
use super::super::manifest::{
    BLOCK_HASH_HEX, BlockHashes, Entry, Extent, block_hash, content_pieces, push_extent,
};
use super::super::tar::{self, TarKind};
use super::content::READ_CHUNK;
use super::parts::Pending;
use super::{Engine, RUN_BYTES};
use std::fs::File;
use std::io;

/// The comparison's state while one file is walked.
struct Walk<'a> {
    base: &'a Entry,
    old: &'a BlockHashes,
    bs: u64,
    hashes: String,
    inherited: Vec<Extent>,
    pending: Vec<Pending>,
    run: Vec<u8>,
    run_at: u64,
}

/// Fills `buf` from the file at `offset`; after its end (`short`: the file shrank while read)
/// with zeros, as the pinned size says. Returns the bytes read from the file.
fn fill_at(file: &File, buf: &mut [u8], offset: u64, short: &mut bool) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut got = 0usize;
    while got < buf.len() {
        if *short {
            buf[got..].fill(0);
            break;
        }
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => *short = true,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(got as u64)
}

impl Engine {
    /// A block incremental of a changed file (strict mode, the parent entry `base` has block
    /// hashes): every block of the parent's block size is read and hashed; a block whose hash
    /// and length equal the parent's block at the same index points at the parent's bytes (its
    /// data or extents), the others are stored in `.bdc-blocks/<n>` tar entries (runs of up to
    /// [`RUN_BYTES`]). Exactly `size` bytes as in [`Self::copy_content`] (pinned size).
    /// Sets `e.blocks` and `e.extents` (the inherited ones; the stored runs are returned and
    /// merged in when their part is stored).
    pub(super) fn copy_blocks(
        &mut self,
        file: &File,
        size: u64,
        e: &mut Entry,
        base: &Entry,
    ) -> Result<Vec<Pending>, SnapshotError> {
        let old = base.blocks.as_ref().expect("checked by the caller");
        let bs = old.size;
        let mut walk = Walk {
            base,
            old,
            bs,
            hashes: String::with_capacity(size.div_ceil(bs) as usize * BLOCK_HASH_HEX),
            inherited: Vec::new(),
            pending: Vec::new(),
            run: Vec::new(),
            run_at: 0,
        };
        let chunk_size = (READ_CHUNK as u64 / bs).max(1) * bs;
        let read_failed = |err: io::Error| SnapshotError::Strict {
            path: e.path.display(),
            reason: format!("read failed: {err}"),
        };
        // What the journal says may have changed (only for the very file the parent saw).
        let changed = self
            .cfg
            .changed
            .as_ref()
            .filter(|_| base.ino == e.ino)
            .and_then(|hook| hook(&e.path));
        // Whole blocks per read; a file smaller than one chunk gets a buffer of its size.
        let mut buf = vec![0u8; chunk_size.min(size.div_ceil(bs) * bs) as usize];
        let mut short = false;
        let mut at = 0u64;
        let mut next = 0usize; // the first changed range not wholly before `at`
        while at < size {
            let mut len = (size - at).min(chunk_size);
            if let Some(Changed(ranges)) = &changed {
                // Blocks no changed range touches are the parent's: not read.
                let touched = |at: u64, next: &mut usize| {
                    while ranges.get(*next).is_some_and(|r| r.end <= at) {
                        *next += 1;
                    }
                    let want = (size - at).min(bs);
                    ranges.get(*next).is_some_and(|r| r.start < at + want)
                };
                while at < size && !touched(at, &mut next) {
                    let want = (size - at).min(bs);
                    if !self.inherit_block(&mut walk, e, at, want)? {
                        break;
                    }
                    at += want;
                }
                if at >= size {
                    break;
                }
                // Read as far as the changed range goes; a block that could not be inherited
                // alone, or everything past the parent's size (a grown file).
                let end = match ranges.get(next) {
                    Some(r) if r.start < at + bs => r.end.min(size).div_ceil(bs) * bs,
                    _ if at + bs > base.size => size,
                    _ => at + bs,
                };
                len = (size - at).min(chunk_size).min(end.max(at + bs) - at);
            }
            let len = len as usize;
            self.bytes_read +=
                fill_at(file, &mut buf[..len], at, &mut short).map_err(read_failed)?;
            self.compare_chunk(&mut walk, e, file, at, &buf[..len])?;
            at += len as u64;
        }
        self.flush_run(&mut walk, e)?;
        e.sha256 = None;
        e.data = None;
        e.blocks = Some(BlockHashes {
            size: bs,
            xxh3: walk.hashes,
        });
        e.extents = Some(walk.inherited);
        Ok(walk.pending)
    }

    /// Points the block at `at` (`want` bytes) at the parent's bytes without reading it, when
    /// the parent has it whole; false when it must be read.
    fn inherit_block(
        &mut self,
        w: &mut Walk<'_>,
        e: &Entry,
        at: u64,
        want: u64,
    ) -> Result<bool, SnapshotError> {
        let old = w.old;
        let old_len = w.base.size.saturating_sub(at).min(w.bs);
        let Some(h) = old.get((at / w.bs) as usize) else {
            return Ok(false);
        };
        if old_len != want {
            return Ok(false);
        }
        let pieces = content_pieces(w.base, at, want);
        if pieces.iter().map(|x| x.len).sum::<u64>() != want {
            return Ok(false);
        }
        self.flush_run(w, e)?;
        w.hashes.push_str(h);
        for x in pieces {
            push_extent(&mut w.inherited, x);
        }
        // Not read: the run's progress does not count it.
        self.blocks_unread += 1;
        Ok(true)
    }

    /// Compares the blocks of one chunk (whole blocks from `chunk_at`, the last one may be
    /// partial) with the parent's (see [`Self::copy_blocks`]).
    fn compare_chunk(
        &mut self,
        w: &mut Walk<'_>,
        e: &Entry,
        file: &File,
        chunk_at: u64,
        chunk: &[u8],
    ) -> Result<(), SnapshotError> {
        let bs = w.bs;
        for (j, data) in chunk.chunks(bs as usize).enumerate() {
            let at = chunk_at + j as u64 * bs;
            let i = (at / bs) as usize;
            let want = data.len();
            let h = block_hash(data);
            let h = std::str::from_utf8(&h).expect("hex");
            w.hashes.push_str(h);
            let old_len = w.base.size.saturating_sub(at).min(bs) as usize;
            let mut same = old_len == want && w.old.get(i) == Some(h);
            if same {
                let pieces = content_pieces(w.base, at, want as u64);
                if pieces.iter().map(|x| x.len).sum::<u64>() == want as u64 {
                    self.flush_run(w, e)?;
                    for x in pieces {
                        push_extent(&mut w.inherited, x);
                    }
                    // Read but not stored: the run's progress counts it as read (the stored
                    // blocks are counted by the pipeline as they pass).
                    self.parts
                        .progress
                        .bytes_read
                        .fetch_add(want as u64, std::sync::atomic::Ordering::Relaxed);
                } else {
                    same = false;
                }
            }
            if !same {
                // Only stored blocks are inspected (page checksums): an unchanged block is the
                // content the parent backup inspected already.
                if let Some(hook) = &self.cfg.inspect {
                    let found = hook(&e.path, file, at, data);
                    self.warnings.extend(found);
                }
                if w.run.is_empty() {
                    w.run_at = at;
                }
                w.run.extend_from_slice(data);
                if w.run.len() as u64 + bs > RUN_BYTES {
                    self.flush_run(w, e)?;
                }
            }
        }
        Ok(())
    }

    /// Stores the run of changed blocks gathered so far (if any) and starts a new one.
    fn flush_run(&mut self, w: &mut Walk<'_>, e: &Entry) -> Result<(), SnapshotError> {
        if w.run.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(&mut w.run);
        w.pending.push(self.store_run(e, w.run_at, &run)?);
        w.run = run;
        w.run.clear();
        Ok(())
    }

    /// Writes changed blocks as one `./.bdc-blocks/<n>` tar entry (no real entry's tar name
    /// starts with `./`).
    pub(super) fn store_run(
        &mut self,
        e: &Entry,
        at: u64,
        run: &[u8],
    ) -> Result<Pending, SnapshotError> {
        let name = format!("./.bdc-blocks/{}", self.runs);
        self.runs += 1;
        let meta = Entry {
            mode: 0o600,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            blocks: None,
            extents: None,
            ..e.clone()
        };
        let len = run.len() as u64;
        self.header_named(&meta, name.as_bytes(), TarKind::File, len, b"")?;
        let start = self.parts.part().offset();
        let seq = self.parts.part().seq;
        for chunk in run.chunks(READ_CHUNK) {
            self.parts.write(chunk);
            if self.parts.part().buf.len() >= self.parts.frame_size {
                self.parts.send_frame()?;
            }
        }
        let pad = tar::padding(len);
        self.parts.write(&vec![0u8; pad]);
        self.parts.entry_done()?;
        self.bytes_stored += len;
        Ok(Pending {
            seq,
            start,
            len,
            at: Some(at),
        })
    }
}
