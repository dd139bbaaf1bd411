//! Plaintext local copies of committed manifests in the daemon's state directory (docs/design.md §4).
//!
//! Layout: `<state_dir>/manifests/<job>/<backup_id>-<manifest_sha256>.copy`, folders 0700, files
//! 0600, written atomically (temp file + fsync + rename + folder fsync). The file starts with one
//! line `bdc-manifest-copy v1 <sha256 of the plaintext>` so a damaged copy is detected; the
//! name carries the manifest's *ciphertext* hash from the commit record, so a copy only ever
//! matches the manifest it was made from. A missing or non-matching copy means: the next
//! backup of the job is a full.

use crate::error::{Classify, Retry};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const MAGIC: &str = "bdc-manifest-copy v1 ";

#[derive(Debug, thiserror::Error)]
pub enum LocalCopyError {
    #[error("manifest copy {}: {action}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("manifest copy: invalid {what} `{value}`")]
    InvalidName { what: &'static str, value: String },
    #[error("manifest copy: background task failed: {0}")]
    Task(String),
}

impl Classify for LocalCopyError {
    fn retry(&self) -> Retry {
        match self {
            LocalCopyError::Io { source, .. } => crate::error::io_retry(source),
            LocalCopyError::InvalidName { .. } => Retry::Permanent,
            LocalCopyError::Task(_) => Retry::Transient,
        }
    }
}

fn check_name(what: &'static str, value: &str) -> Result<(), LocalCopyError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && !value.contains('/')
        && !value.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(LocalCopyError::InvalidName {
            what,
            value: value.to_string(),
        })
    }
}

/// Where the copy of one manifest lives.
pub fn copy_path(
    state_dir: &Path,
    job: &str,
    backup_id: &str,
    manifest_sha256: &str,
) -> Result<PathBuf, LocalCopyError> {
    check_name("job name", job)?;
    check_name("backup id", backup_id)?;
    check_name("manifest hash", manifest_sha256)?;
    Ok(state_dir
        .join("manifests")
        .join(job)
        .join(format!("{backup_id}-{manifest_sha256}.copy")))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalCopyError {
    let path = path.to_path_buf();
    move |source| LocalCopyError::Io {
        action,
        path,
        source,
    }
}

fn ensure_dir(dir: &Path) -> Result<(), LocalCopyError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating folder", dir))
}

fn save_blocking(path: &Path, plaintext: &[u8]) -> Result<(), LocalCopyError> {
    let dir = path.parent().ok_or_else(|| LocalCopyError::InvalidName {
        what: "path",
        value: path.display().to_string(),
    })?;
    ensure_dir(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating temporary file", &tmp))?;
        let hash = hex::encode(Sha256::digest(plaintext));
        f.write_all(format!("{MAGIC}{hash}\n").as_bytes())
            .map_err(io_err("writing", &tmp))?;
        f.write_all(plaintext).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("fsync of", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
        let d = std::fs::File::open(dir).map_err(io_err("opening folder", dir))?;
        d.sync_all().map_err(io_err("fsync of folder", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn load_blocking(path: &Path) -> Result<Option<Bytes>, LocalCopyError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", path)(e)),
    };
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let Ok(header) = std::str::from_utf8(&data[..nl]) else {
        return Ok(None);
    };
    let Some(hash) = header.strip_prefix(MAGIC).map(str::to_string) else {
        return Ok(None);
    };
    let body = Bytes::from(data).slice(nl + 1..);
    if hex::encode(Sha256::digest(&body)) != hash {
        return Ok(None);
    }
    Ok(Some(body))
}

/// Saves the plaintext copy of a committed manifest (atomic, 0600 in a 0700 folder).
pub async fn save(
    state_dir: &Path,
    job: &str,
    backup_id: &str,
    manifest_sha256: &str,
    plaintext: Bytes,
) -> Result<PathBuf, LocalCopyError> {
    let path = copy_path(state_dir, job, backup_id, manifest_sha256)?;
    let p = path.clone();
    tokio::task::spawn_blocking(move || save_blocking(&p, &plaintext))
        .await
        .map_err(|e| LocalCopyError::Task(e.to_string()))??;
    Ok(path)
}

/// The copy of a manifest, or None if it is missing or its content no longer matches.
pub async fn load(
    state_dir: &Path,
    job: &str,
    backup_id: &str,
    manifest_sha256: &str,
) -> Result<Option<Bytes>, LocalCopyError> {
    let path = copy_path(state_dir, job, backup_id, manifest_sha256)?;
    tokio::task::spawn_blocking(move || load_blocking(&path))
        .await
        .map_err(|e| LocalCopyError::Task(e.to_string()))?
}

/// Removes the copies of one job's manifests except those of `keep` (backup ids).
pub async fn prune(state_dir: &Path, job: &str, keep: &[String]) -> Result<usize, LocalCopyError> {
    check_name("job name", job)?;
    let dir = state_dir.join("manifests").join(job);
    let keep: Vec<String> = keep.to_vec();
    tokio::task::spawn_blocking(move || {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err("listing", &dir)(e)),
        };
        let mut n = 0;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".copy") else {
                continue;
            };
            let Some((id, _hash)) = stem.rsplit_once('-') else {
                continue;
            };
            if !keep.iter().any(|k| k == id) {
                std::fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
                n += 1;
            }
        }
        Ok(n)
    })
    .await
    .map_err(|e| LocalCopyError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn save_load_modes_and_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let body = Bytes::from_static(b"manifest body\nwith lines\n");
        let path = save(
            dir.path(),
            "db",
            "20261126T020000Z-F",
            "abc123",
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            load(dir.path(), "db", "20261126T020000Z-F", "abc123")
                .await
                .unwrap(),
            Some(body.clone())
        );
        // Other hash (another manifest) or missing: None.
        assert_eq!(
            load(dir.path(), "db", "20261126T020000Z-F", "def456")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            load(dir.path(), "db", "20261127T020000Z-I", "abc123")
                .await
                .unwrap(),
            None
        );
        // Damaged content: None.
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 2;
        data[last] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert_eq!(
            load(dir.path(), "db", "20261126T020000Z-F", "abc123")
                .await
                .unwrap(),
            None
        );
        // Saving again replaces the copy atomically.
        save(
            dir.path(),
            "db",
            "20261126T020000Z-F",
            "abc123",
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(
            load(dir.path(), "db", "20261126T020000Z-F", "abc123")
                .await
                .unwrap(),
            Some(body)
        );
        assert!(
            save(dir.path(), "../x", "id", "h", Bytes::new())
                .await
                .is_err()
        );
        assert_eq!(prune(dir.path(), "db", &[]).await.unwrap(), 1);
    }
}
