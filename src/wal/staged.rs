//! A WAL object written into a local repository's staging file while it is sealed: the ciphertext
//! goes to the file (and its writeback is started) as the frames come out of the encryptor, so
//! the acknowledging fsync finds little left to write. The object is still kept in memory for the
//! other sync repositories; the staged copy is used only when it holds the whole object.

use super::format::object_key;
use super::header::ClusterIdentity;
use super::name::WalName;
use super::push::{PushError, Stored};
use crate::repository::local::LocalWriter;
use crate::repository::{Repository, Store, StoreError};
use std::io::{self, Write};
use std::time::Duration;

/// Ciphertext written to the staging file in pieces of at least this size.
const STAGE_PIECE: usize = 1 << 20;

/// Opens a staging file in `repo` for the object of `name` when `repo` is a local store (its key
/// is set once the hash is known, see [`LocalWriter::retarget`]). `None` for other stores, or when
/// the staging file cannot be created: the object is then written after sealing, as for any
/// store, and that write reports the failure. Blocking.
pub fn open(repo: &Repository, cluster: &ClusterIdentity, name: &WalName) -> Option<LocalWriter> {
    let Store::Local(local) = &repo.store else {
        return None;
    };
    // A placeholder of the right shape: the key's hash is not known before the file is read.
    let provisional = object_key(cluster, name, &"0".repeat(64));
    match local.writer(&provisional) {
        Ok(w) => Some(w),
        Err(err) => {
            tracing::debug!(wal = %name, error = %err, "no staging file for the sealed object");
            None
        }
    }
}

/// The encryptor's output: the whole object in memory, and a copy in the staging file while
/// writing it succeeds (a failed write drops the staged copy, which removes its file).
pub struct Tee {
    buf: Vec<u8>,
    staged: Option<LocalWriter>,
    /// `buf[..sent]` is in the staging file.
    sent: usize,
}

impl Tee {
    pub fn new(buf: Vec<u8>, staged: Option<LocalWriter>) -> Tee {
        Tee {
            buf,
            staged,
            sent: 0,
        }
    }

    /// Writes what the staging file lacks and starts its writeback.
    fn send(&mut self) {
        let Some(w) = self.staged.as_mut() else {
            return;
        };
        match w.write(&self.buf[self.sent..]) {
            Ok(()) => {
                self.sent = self.buf.len();
                w.start_writeback();
            }
            Err(err) => {
                tracing::debug!(error = %err, "writing the staged WAL object failed; it is written after sealing");
                self.staged = None;
            }
        }
    }

    /// The object, and the staging file when it holds exactly the object.
    pub fn finish(mut self) -> (Vec<u8>, Option<LocalWriter>) {
        self.send();
        let whole = self
            .staged
            .take()
            .filter(|w| w.written() == self.buf.len() as u64);
        (self.buf, whole)
    }
}

impl Write for Tee {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() - self.sent >= STAGE_PIECE {
            self.send();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Publishes a staged object of `size` bytes under the key of `name` and `sha256` (fsync,
/// no-replace rename, folder fsync: durable on return), within `limit`.
pub async fn publish(
    repo: &Repository,
    staged: LocalWriter,
    cluster: &ClusterIdentity,
    name: &WalName,
    sha256: &str,
    limit: Duration,
) -> Result<Stored, PushError> {
    let key = object_key(cluster, name, sha256);
    let finish_key = key.clone();
    let finish = tokio::task::spawn_blocking(move || {
        let mut staged = staged;
        staged.retarget(&finish_key)?;
        staged.finish()
    });
    let store_err = |source| PushError::Store {
        repository: repo.name.clone(),
        source: Box::new(source),
    };
    match tokio::time::timeout(limit, finish).await {
        Err(_) => Err(PushError::TimedOut {
            repository: repo.name.clone(),
            action: format!("storing {name}"),
            after: limit,
        }),
        Ok(Err(join)) => Err(store_err(StoreError::Io {
            action: "finishing the staged object",
            key: key.clone(),
            source: io::Error::other(join.to_string()),
        })),
        Ok(Ok(Ok(size))) => Ok(Stored::Written { key, size }),
        // A concurrent push of the same content won the race: same key, same content.
        Ok(Ok(Err(StoreError::AlreadyExists { .. }))) => Ok(Stored::AlreadyThere { key }),
        Ok(Ok(Err(e))) => Err(store_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::push::{Precheck, store_prechecked};
    use crate::wal::seal::seal_wal_file_staged;
    use crate::wal::testing::{cluster, file_with, segment, zstd_settings};

    fn staging_files(root: &std::path::Path) -> usize {
        std::fs::read_dir(root.join(".staging")).unwrap().count()
    }

    /// A segment sealed into the staging file is published under its key with exactly the
    /// object's bytes; a file that fails its checks, and a segment already stored, leave no
    /// staging file behind.
    #[tokio::test]
    async fn a_staged_object_is_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let repo = Repository::with_store("r", Store::local(&root).unwrap());
        let id = cluster();
        let key = age::x25519::Identity::generate();
        // Frames of 100 000 bytes: several frames, several pieces of the staging file.
        let settings = zstd_settings(&key);
        let name = WalName::parse("000000010000000000000001").unwrap();
        // Incompressible after the header: the object exceeds one piece of the staging file.
        // A 4 MiB segment (number 1): its long header says so.
        let mut bytes = segment(42, 4 << 20);
        bytes[8..16].copy_from_slice(&(4u64 << 20).to_le_bytes());
        bytes[32..36].copy_from_slice(&(4u32 << 20).to_le_bytes());
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in bytes.iter_mut().skip(4096) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let limit = Duration::from_secs(10);
        let empty = Precheck {
            archive_info: false,
            hashes: vec![],
        };
        let now = chrono::Utc::now();

        let probe = open(&repo, &id, &name);
        assert!(probe.is_some(), "a local repository gets a staging file");
        assert_eq!(staging_files(&root), 1);
        drop(probe);
        assert_eq!(staging_files(&root), 0, "a dropped staging file is removed");
        let (sealed, staged) =
            seal_wal_file_staged(&file_with(&bytes), &name, &id, &settings, Some(&repo)).unwrap();
        let staged = staged.expect("the staging file holds the whole object");
        assert_eq!(staged.written(), sealed.object.len() as u64);
        assert!(
            sealed.object.len() > STAGE_PIECE,
            "{} bytes",
            sealed.object.len()
        );
        let stored = store_prechecked(&repo, &id, &sealed, &empty, Some(staged), now, limit)
            .await
            .unwrap();
        let Stored::Written { key: k, size } = stored else {
            panic!("not written: {stored:?}")
        };
        assert_eq!(k, object_key(&id, &name, &sealed.sha256));
        assert_eq!(size, sealed.object.len() as u64);
        assert_eq!(repo.store.get(&k).await.unwrap(), sealed.object);
        assert_eq!(staging_files(&root), 0);

        // Stored already: the second staged copy is dropped, with its file.
        let listed = Precheck {
            archive_info: true,
            hashes: vec![sealed.sha256.clone()],
        };
        let (again, staged) =
            seal_wal_file_staged(&file_with(&bytes), &name, &id, &settings, Some(&repo)).unwrap();
        assert!(staged.is_some());
        let stored = store_prechecked(&repo, &id, &again, &listed, staged, now, limit)
            .await
            .unwrap();
        assert!(matches!(stored, Stored::AlreadyThere { .. }), "{stored:?}");
        assert_eq!(staging_files(&root), 0);

        // Another cluster's segment: refused, and its staging file removed.
        let bad = seal_wal_file_staged(
            &file_with(&segment(43, 1 << 20)),
            &name,
            &id,
            &settings,
            Some(&repo),
        );
        assert!(bad.is_err());
        assert_eq!(staging_files(&root), 0);
    }
}
