//! Writing one regular file of a restore: its bytes (whole content or block-incremental
//! extents, holes kept where the sparse map says so) checked against the entry's SHA-256 or
//! per-block hashes as they are written.

use super::super::manifest::{BlockHasher, Entry};
use super::{RestoreError, Restorer};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode as NixMode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

/// How a whole file's restored content is checked.
enum Check {
    Sha256(Box<Sha256>),
    Blocks(BlockHasher),
}

impl Check {
    fn update(&mut self, data: &[u8]) {
        match self {
            Check::Sha256(h) => h.update(data),
            Check::Blocks(h) => h.update(data),
        }
    }
}

impl Restorer<'_> {
    /// Writes `e` with the content described by `data_entry` (itself, or the first member of
    /// its hard-link group).
    pub(super) fn write_file(&mut self, e: &Entry, data_entry: &Entry) -> Result<(), FileFail> {
        let (parent, name) = self.parent_of(e)?;
        self.clear(&parent, &name, e)?;
        let fd = openat(
            &parent,
            name.as_slice(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            NixMode::from_bits_truncate(0o600),
        )
        .map_err(|err| self.entry_err(e, "creating the file", err))?;
        let file = File::from(fd);
        let result = self.fill_file(e, data_entry, &file);
        if result.is_err() {
            // No partial file is left behind under the restored name.
            let _ = unlinkat(&parent, name.as_slice(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    pub(super) fn fill_file(
        &mut self,
        e: &Entry,
        data_entry: &Entry,
        file: &File,
    ) -> Result<(), FileFail> {
        if data_entry.extents.is_some() {
            self.fill_extents(e, data_entry, file)?;
            return self.apply_meta(file.as_fd(), e).map_err(FileFail::Other);
        }
        // Strict-mode entries carry per-block xxh3 hashes: checking those is ~5× cheaper than a
        // whole-file SHA-256 and as exact about which bytes came back (age authenticates the
        // stored bytes themselves). Other entries are checked by their SHA-256.
        let mut check = match &data_entry.blocks {
            Some(b) => Check::Blocks(BlockHasher::new(b.size)),
            None => Check::Sha256(Box::default()),
        };
        let mut written = 0u64;
        if let Some(loc) = &data_entry.data {
            let extents = data_entry.sparse.as_deref();
            let mut skip = loc.offset;
            for f in &loc.frames {
                if written >= data_entry.size {
                    break;
                }
                let frame = self
                    .frames
                    .frame(&loc.key, *f)
                    .map_err(|reason| FileFail::Data {
                        key: loc.key.clone(),
                        reason: format!("reading {}: {reason}", loc.key),
                    })?;
                let from = usize::try_from(skip).unwrap_or(usize::MAX).min(frame.len());
                skip = 0;
                let take = ((data_entry.size - written) as usize).min(frame.len() - from);
                let chunk = &frame[from..from + take];
                check.update(chunk);
                write_extents(file, written, chunk, extents)
                    .map_err(|err| self.write_err(e, &err))?;
                written += take as u64;
            }
        }
        if written != data_entry.size {
            return Err(FileFail::Data {
                key: data_entry
                    .data
                    .as_ref()
                    .map(|d| d.key.clone())
                    .unwrap_or_default(),
                reason: format!(
                    "the stored data holds {written} of {} bytes",
                    data_entry.size
                ),
            });
        }
        file.set_len(data_entry.size)
            .map_err(|err| self.entry_err(e, "setting the size", err))?;
        let mismatch = match check {
            Check::Sha256(hasher) => {
                let sha = hex::encode(hasher.finalize());
                (Some(&sha) != data_entry.sha256.as_ref()).then(|| {
                    format!(
                        "SHA-256 mismatch (restored {sha}, manifest {})",
                        data_entry.sha256.as_deref().unwrap_or("none")
                    )
                })
            }
            Check::Blocks(hasher) => {
                let got = hasher.finish();
                let want = data_entry.blocks.as_ref().expect("blocks checked above");
                (got.xxh3 != want.xxh3).then(|| {
                    let bad = (0..got.count().max(want.count()))
                        .find(|&i| got.get(i) != want.get(i))
                        .unwrap_or(0);
                    format!(
                        "block {bad} (byte {}) does not match its hash",
                        bad as u64 * want.size
                    )
                })
            }
        };
        if let Some(reason) = mismatch {
            return Err(FileFail::Data {
                key: data_entry
                    .data
                    .as_ref()
                    .map(|d| d.key.clone())
                    .unwrap_or_default(),
                reason,
            });
        }
        self.apply_meta(file.as_fd(), e).map_err(FileFail::Other)
    }

    /// A block-incremental file: each extent's bytes written at its offset, in file order, then
    /// the per-block hashes checked.
    pub(super) fn fill_extents(
        &mut self,
        e: &Entry,
        data_entry: &Entry,
        file: &File,
    ) -> Result<(), FileFail> {
        let list = data_entry.extents.as_deref().unwrap_or_default();
        let blocks = data_entry.blocks.as_ref().ok_or_else(|| FileFail::Data {
            key: String::new(),
            reason: "block extents without block hashes".into(),
        })?;
        let sparse = data_entry.sparse.as_deref();
        let mut hasher = BlockHasher::new(blocks.size);
        let mut written = 0u64;
        for x in list {
            let key = &x.data.key;
            if x.at != written {
                return Err(FileFail::Data {
                    key: key.clone(),
                    reason: format!("the extents leave a gap at byte {written}"),
                });
            }
            let mut skip = x.data.offset;
            let mut left = x.len;
            for f in &x.data.frames {
                if left == 0 {
                    break;
                }
                let frame = self
                    .frames
                    .frame(key, *f)
                    .map_err(|reason| FileFail::Data {
                        key: key.clone(),
                        reason: format!("reading {key}: {reason}"),
                    })?;
                let from = usize::try_from(skip).unwrap_or(usize::MAX).min(frame.len());
                skip = 0;
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(frame.len() - from);
                let chunk = &frame[from..from + take];
                hasher.update(chunk);
                write_extents(file, written, chunk, sparse)
                    .map_err(|err| self.write_err(e, &err))?;
                written += take as u64;
                left -= take as u64;
            }
            if left > 0 {
                return Err(FileFail::Data {
                    key: key.clone(),
                    reason: format!(
                        "{key} holds {} of the {} bytes at {}",
                        x.len - left,
                        x.len,
                        x.at
                    ),
                });
            }
        }
        if written != data_entry.size {
            return Err(FileFail::Data {
                key: list.last().map(|x| x.data.key.clone()).unwrap_or_default(),
                reason: format!("the extents cover {written} of {} bytes", data_entry.size),
            });
        }
        file.set_len(data_entry.size)
            .map_err(|err| self.entry_err(e, "setting the size", err))?;
        let got = hasher.finish();
        if got.xxh3 != blocks.xxh3 {
            let bad = (0..got.count().max(blocks.count()))
                .find(|&i| got.get(i) != blocks.get(i))
                .unwrap_or(0);
            let at = bad as u64 * blocks.size;
            let key = list
                .iter()
                .find(|x| x.at <= at && at < x.at + x.len)
                .map(|x| x.data.key.clone())
                .unwrap_or_default();
            return Err(FileFail::Data {
                reason: format!("block {bad} (byte {at}) does not match its hash (data in {key})"),
                key,
            });
        }
        Ok(())
    }
}

pub(super) enum FileFail {
    /// The stored data is damaged, missing or does not match.
    Data {
        key: String,
        reason: String,
    },
    Other(RestoreError),
}

impl From<RestoreError> for FileFail {
    fn from(e: RestoreError) -> Self {
        FileFail::Other(e)
    }
}

/// Writes `chunk` (at file offset `at`) but only where the sparse map has data.
fn write_extents(
    file: &File,
    at: u64,
    chunk: &[u8],
    extents: Option<&[[u64; 2]]>,
) -> io::Result<()> {
    let Some(extents) = extents else {
        return file.write_all_at(chunk, at);
    };
    let end = at + chunk.len() as u64;
    for [off, len] in extents {
        let (s, e) = ((*off).max(at), (off + len).min(end));
        if s < e {
            file.write_all_at(&chunk[(s - at) as usize..(e - at) as usize], s)?;
        }
    }
    Ok(())
}
