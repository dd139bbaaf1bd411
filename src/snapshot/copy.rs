//! Streamed plaintext local copies of snapshot manifests, in the file format and at the paths of
//! [`crate::repository::local_copy`] (`bdc-manifest-copy v1 <sha256>` line, then the manifest),
//! but written from and read as files so a manifest of millions of entries never sits in memory.

use crate::repository::local_copy::{self, LocalCopyError};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

const MAGIC: &str = "bdc-manifest-copy v1 ";

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalCopyError {
    let path = path.to_path_buf();
    move |source| LocalCopyError::Io {
        action,
        path,
        source,
    }
}

/// Saves the copy of a committed manifest from its plaintext spool file (blocking).
pub fn save_from_file(
    state_dir: &Path,
    job: &str,
    backup_id: &str,
    manifest_sha256: &str,
    plaintext: &mut File,
    plaintext_sha256: &str,
) -> Result<(), LocalCopyError> {
    let path = local_copy::copy_path(state_dir, job, backup_id, manifest_sha256)?;
    let dir = path.parent().unwrap_or(state_dir).to_path_buf();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err("creating folder", &dir))?;
    let tmp = dir.join(format!(".tmp-{}-{backup_id}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating temporary file", &tmp))?;
        f.write_all(format!("{MAGIC}{plaintext_sha256}\n").as_bytes())
            .map_err(io_err("writing", &tmp))?;
        plaintext
            .seek(SeekFrom::Start(0))
            .map_err(io_err("rewinding", &tmp))?;
        io::copy(plaintext, &mut f).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("fsync of", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
        let d = File::open(&dir).map_err(io_err("opening folder", &dir))?;
        d.sync_all().map_err(io_err("fsync of folder", &dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens a copy positioned at the manifest, after checking its whole content against the
/// hash in its first line; None if missing or not matching (blocking).
pub fn open_checked(
    state_dir: &Path,
    job: &str,
    backup_id: &str,
    manifest_sha256: &str,
) -> Result<Option<BufReader<File>>, LocalCopyError> {
    let path = local_copy::copy_path(state_dir, job, backup_id, manifest_sha256)?;
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", &path)(e)),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return Ok(None);
    }
    let Some(want) = first.trim_end().strip_prefix(MAGIC).map(str::to_string) else {
        return Ok(None);
    };
    let header_len = first.len() as u64;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(io_err("reading", &path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hex::encode(hasher.finalize()) != want {
        return Ok(None);
    }
    reader
        .seek(SeekFrom::Start(header_len))
        .map_err(io_err("rewinding", &path))?;
    Ok(Some(reader))
}
