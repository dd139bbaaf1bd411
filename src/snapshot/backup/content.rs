//! Reading a file's content into the snapshot's tar stream: whole files (pinned size, SHA-256
//! and strict mode's block hashes as read, lenient mode's re-read of a file that changed) and
//! block incrementals (only the changed 64 KiB blocks stored, the rest pointing at the parent).

use super::super::SnapshotError;
use super::super::manifest::{
    BlockHasher, BlockHashes, Entry, EntryKind, Extent, block_hash, content_pieces, push_extent,
};
use super::super::path::ByteName;
use super::super::tar::{self, TarKind};
use super::super::walk::Item;
use super::parts::Pending;
use super::{BLOCK_SIZE, Engine, RUN_BLOCKS};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// Read size for file content.
const READ_CHUNK: usize = 256 * 1024;

/// One `read(2)` of at most `want` bytes appended to `buf` (into its spare capacity: no zeroing
/// of memory the read overwrites anyway). Returns the bytes read.
fn read_appending(file: &File, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    buf.reserve(want);
    let spare = &mut buf.spare_capacity_mut()[..want];
    // SAFETY: `spare` is valid for writes of `want` bytes; read(2) writes at most that many and
    // returns how many it wrote, and only those become part of the vector.
    let n = unsafe { libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the first `n` bytes of the spare capacity were just initialised by read(2).
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

impl Engine {
    /// Stores a file's content; None when it could not be read (lenient: reported).
    #[allow(clippy::type_complexity)]
    pub(super) fn read_file(
        &mut self,
        item: &Item,
        e: &mut Entry,
        base: Option<&Entry>,
    ) -> Result<Option<Vec<Pending>>, SnapshotError> {
        let opened = if self.cfg.fault_unreadable.as_ref() == Some(&item.path) {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        } else {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&item.abs)
        };
        let mut file = match opened {
            Ok(f) => f,
            // Deleted since listed: not in this snapshot (strict mode too: PostgreSQL drops
            // relation files during a base backup and WAL replay accounts for it).
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(err) => {
                self.warn_or_fail(&item.path, format!("cannot be opened: {err}"))?;
                return Ok(None);
            }
        };
        let attempts = if self.lenient() { 2 } else { 1 };
        for attempt in 0..attempts {
            let before = match file.metadata() {
                Ok(m) => m,
                Err(err) => {
                    self.warn_or_fail(&item.path, format!("cannot be examined: {err}"))?;
                    return Ok(None);
                }
            };
            if !before.is_file() {
                self.warnings.push(format!(
                    "{}: no longer a regular file; skipped",
                    item.path.display()
                ));
                return Ok(None);
            }
            // The entry describes the file as opened.
            let mut fresh = self.base_entry(
                &Item {
                    path: item.path.clone(),
                    abs: item.abs.clone(),
                    meta: before.clone(),
                },
                EntryKind::File,
            );
            fresh.link_group = e.link_group;
            *e = fresh;
            let size = before.len();
            e.size = size;
            if attempt > 0
                && let Err(err) = file.rewind()
            {
                self.warn_or_fail(&item.path, format!("cannot be re-read: {err}"))?;
                return Ok(None);
            }
            if let Some(hook) = &self.cfg.before_read {
                hook(&item.path, &item.abs, attempt);
            }
            if let Some(base) = base
                && size >= BLOCK_SIZE
            {
                let pending = self.copy_blocks(&mut file, size, e, base)?;
                if before.blocks() * 512 < size {
                    e.sparse = sparse_map(&file, size);
                }
                return Ok(Some(pending));
            }
            self.header(e, TarKind::File, size, b"")?;
            let start = self.parts.part().offset();
            let hash_blocks = !self.lenient() && size >= BLOCK_SIZE;
            let (sha, short, error, blocks) =
                self.copy_content(&mut file, size, &item.path, hash_blocks)?;
            e.blocks = blocks;
            self.bytes_stored += size;
            let seq = self.parts.part().seq;
            let pad = tar::padding(size);
            self.parts.write(&[0u8; tar::BLOCK][..pad]);
            self.parts.entry_done()?;
            if let Some(err) = error {
                self.warn_or_fail(&item.path, format!("read failed: {err}"))?;
                return Ok(None);
            }
            if before.blocks() * 512 < size {
                e.sparse = sparse_map(&file, size);
            }
            e.sha256 = Some(sha);
            let pending: Vec<Pending> = (size > 0)
                .then_some(Pending {
                    seq,
                    start,
                    len: size,
                    at: None,
                })
                .into_iter()
                .collect();
            if !self.lenient() {
                return Ok(Some(pending));
            }
            let after = file.metadata().ok();
            let changed = short
                || after.is_none_or(|a| {
                    a.len() != size
                        || a.mtime() != before.mtime()
                        || a.mtime_nsec() != before.mtime_nsec()
                        || a.ctime() != before.ctime()
                        || a.ctime_nsec() != before.ctime_nsec()
                });
            if !changed {
                return Ok(Some(pending));
            }
            if attempt + 1 == attempts {
                self.warnings.push(format!(
                    "{}: changed while being read; stored as read (the next backup reads it again)",
                    item.path.display()
                ));
                return Ok(Some(pending));
            }
        }
        Ok(None)
    }

    /// Copies exactly `size` bytes into the tar stream (pinned size: a file that grew is cut,
    /// one that shrank is zero-padded). Returns the SHA-256 of what was stored, whether the file
    /// was shorter than `size`, and a read error (the rest then zero-filled).
    #[allow(clippy::type_complexity)]
    pub(super) fn copy_content(
        &mut self,
        file: &mut File,
        size: u64,
        path: &ByteName,
        hash_blocks: bool,
    ) -> Result<(String, bool, Option<io::Error>, Option<BlockHashes>), SnapshotError> {
        let mut hasher = Sha256::new();
        let mut blocks = hash_blocks.then(|| BlockHasher::new(BLOCK_SIZE));
        let mut left = size;
        let mut short = false;
        let mut error = None;
        while left > 0 {
            // Read straight into the frame buffer (no copy), up to the frame's end.
            let frame_size = self.parts.frame_size;
            let buf = &mut self.parts.part().buf;
            let room = frame_size.saturating_sub(buf.len()).max(tar::BLOCK);
            let want = (left.min(READ_CHUNK.min(room) as u64)) as usize;
            let at = buf.len();
            let n = if short || error.is_some() {
                buf.resize(at + want, 0);
                want
            } else {
                match read_appending(file, buf, want) {
                    Ok(0) => {
                        short = true;
                        buf.resize(at + want, 0);
                        want
                    }
                    Ok(n) => {
                        if let Some(hook) = &self.cfg.inspect {
                            let found = hook(path, file, size - left, &buf[at..at + n]);
                            self.warnings.extend(found);
                        }
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        error = Some(e);
                        buf.resize(at + want, 0);
                        want
                    }
                }
            };
            let data = &self.parts.part().buf[at..at + n];
            hasher.update(data);
            if let Some(b) = blocks.as_mut() {
                b.update(data);
            }
            left -= n as u64;
            self.bytes_read += n as u64;
            if self.parts.part().buf.len() >= self.parts.frame_size {
                self.parts.send_frame()?;
            }
        }
        Ok((
            hex::encode(hasher.finalize()),
            short,
            error,
            blocks.map(BlockHasher::finish),
        ))
    }

    /// A block incremental of a changed file (strict mode, the parent entry `base` has block
    /// hashes of [`BLOCK_SIZE`]): every block is read and hashed; a block whose hash and length
    /// equal the parent's block at the same index points at the parent's bytes (its data or
    /// extents), the others are stored in `.bdc-blocks/<n>` tar entries (runs of up to
    /// [`RUN_BLOCKS`]). Exactly `size` bytes as in [`Self::copy_content`] (pinned size).
    /// Sets `e.blocks` and `e.extents` (the inherited ones; the stored runs are returned and
    /// merged in when their part is stored).
    pub(super) fn copy_blocks(
        &mut self,
        file: &mut File,
        size: u64,
        e: &mut Entry,
        base: &Entry,
    ) -> Result<Vec<Pending>, SnapshotError> {
        let old = base.blocks.as_ref().expect("checked by the caller");
        let nblocks = size.div_ceil(BLOCK_SIZE);
        let mut hashes = String::with_capacity(nblocks as usize * 32);
        let mut inherited: Vec<Extent> = Vec::new();
        let mut pending = Vec::new();
        let mut run: Vec<u8> = Vec::new();
        let mut run_at = 0u64;
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        let mut short = false;
        for i in 0..nblocks {
            let at = i * BLOCK_SIZE;
            let want = BLOCK_SIZE.min(size - at) as usize;
            let mut got = 0usize;
            while got < want {
                if short {
                    block[got..want].fill(0);
                    break;
                }
                match file.read(&mut block[got..want]) {
                    Ok(0) => short = true,
                    Ok(n) => {
                        got += n;
                        self.bytes_read += n as u64;
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        return Err(SnapshotError::Strict {
                            path: e.path.display(),
                            reason: format!("read failed: {err}"),
                        });
                    }
                }
            }
            let data = &block[..want];
            let h = block_hash(data);
            let h = std::str::from_utf8(&h).expect("hex");
            hashes.push_str(h);
            let old_len = base.size.saturating_sub(at).min(BLOCK_SIZE) as usize;
            let mut same = old_len == want && old.get(i as usize) == Some(h);
            if same {
                let pieces = content_pieces(base, at, want as u64);
                if pieces.iter().map(|x| x.len).sum::<u64>() == want as u64 {
                    if !run.is_empty() {
                        pending.push(self.store_run(e, run_at, &run)?);
                        run.clear();
                    }
                    for x in pieces {
                        push_extent(&mut inherited, x);
                    }
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
                if run.is_empty() {
                    run_at = at;
                }
                run.extend_from_slice(data);
                if run.len() as u64 >= RUN_BLOCKS * BLOCK_SIZE {
                    pending.push(self.store_run(e, run_at, &run)?);
                    run.clear();
                }
            }
        }
        if !run.is_empty() {
            pending.push(self.store_run(e, run_at, &run)?);
        }
        e.sha256 = None;
        e.data = None;
        e.blocks = Some(BlockHashes {
            size: BLOCK_SIZE,
            xxh3: hashes,
        });
        e.extents = Some(inherited);
        Ok(pending)
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

/// Data extents of a sparse file (SEEK_DATA / SEEK_HOLE); None if the file system cannot say.
fn sparse_map(file: &File, size: u64) -> Option<Vec<[u64; 2]>> {
    use nix::unistd::{Whence, lseek};
    let mut extents = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).ok()?;
    while pos < end {
        let data = match lseek(file, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return None,
        };
        if data >= end {
            break;
        }
        let hole = lseek(file, data, Whence::SeekHole).ok()?.min(end);
        extents.push([data as u64, (hole - data) as u64]);
        pos = hole;
    }
    Some(extents)
}
