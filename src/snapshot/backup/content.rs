//! Reading a file's content into the snapshot's tar stream: whole files (pinned size, SHA-256
//! and strict mode's block hashes as read, lenient mode's re-read of a file that changed); block
//! incrementals are [`super::blocks`]'.

use super::super::SnapshotError;
use super::super::manifest::{BlockHasher, BlockHashes, Entry, EntryKind};
use super::super::path::ByteName;
use super::super::tar::{self, TarKind};
use super::super::walk::Item;
use super::parts::Pending;
use super::{BLOCK_SIZE, Engine};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Seek};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// Read size for file content.
pub(super) const READ_CHUNK: usize = 256 * 1024;

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
                && base.blocks.as_ref().is_some_and(|b| size >= b.size)
            {
                let pending = self.copy_blocks(&file, size, e, base)?;
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
