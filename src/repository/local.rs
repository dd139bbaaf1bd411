//! Our durable local store: temp file in a staging folder, fsync, no-replace rename, directory fsync.
//!
//! Why our own store and not object_store's `LocalFileSystem`: every step that makes an object
//! durable is ours to prove (each fsync is reported to an optional observer and asserted in
//! tests), the final rename never replaces an existing object (`renameat2(RENAME_NOREPLACE)`,
//! falling back to `link` + `unlink`), objects are created mode 0600, and errors name the path
//! and the action. Layout: objects at `<root>/<key>`, uploads in progress at
//! `<root>/.staging/<unique>`.
//!
//! The functions here are blocking; [`super::store::Store`] runs them on blocking threads.

use super::store::{ObjectMeta, StoreError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The folder (below the root) that holds uploads in progress; never listed.
pub const STAGING_DIR: &str = ".staging";

/// Chunk size of [`LocalStore::read_at`] streams.
pub const READ_CHUNK: usize = 1 << 20;

/// The default deadline of one read (a whole object, a range, one chunk of a stream, a head, a
/// listing): a hung file system (a hard NFS mount, a dying disk) ends the call with an error
/// instead of holding a restore for ever. The catalogue's `call-timeout` overrides it.
pub const DEFAULT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// A durability step, reported to the sync observer (tests prove the order with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// `fsync` of a file.
    File(PathBuf),
    /// `fsync` of a directory.
    Dir(PathBuf),
    /// The no-replace rename that makes an object visible.
    Rename { from: PathBuf, to: PathBuf },
}

/// Called with every [`SyncEvent`], in order.
pub type SyncObserver = Arc<dyn Fn(SyncEvent) + Send + Sync>;

/// A repository in a local folder.
#[derive(Clone)]
pub struct LocalStore {
    pub root: PathBuf,
    observer: Option<SyncObserver>,
    /// Test hook: writes past this many bytes of one object fail with ENOSPC.
    enospc_after: Option<u64>,
    /// The deadline of one read ([`DEFAULT_READ_TIMEOUT`]).
    pub read_timeout: std::time::Duration,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Why a key was refused.
fn invalid_key(key: &str, why: &str) -> StoreError {
    StoreError::InvalidKey {
        key: key.to_string(),
        reason: why.to_string(),
    }
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` segments, no NUL, not inside
/// the staging folder.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(invalid_key(key, "empty key"));
    }
    if key.starts_with('/') {
        return Err(invalid_key(key, "absolute key"));
    }
    if key.contains('\0') {
        return Err(invalid_key(key, "NUL byte in key"));
    }
    for seg in key.split('/') {
        match seg {
            "" => return Err(invalid_key(key, "empty path segment")),
            "." | ".." => return Err(invalid_key(key, "`.` or `..` segment")),
            _ => {}
        }
    }
    if key == STAGING_DIR || key.starts_with(".staging/") {
        return Err(invalid_key(key, "the staging folder is reserved"));
    }
    Ok(())
}

fn local_err(action: &'static str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Local {
        action,
        path: path.to_path_buf(),
        source,
    }
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

fn staging_name() -> String {
    let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}-{n}.tmp", std::process::id())
}

impl LocalStore {
    /// A store rooted at `root` (which must exist; see [`LocalStore::open`]).
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore {
            root: root.into(),
            observer: None,
            enospc_after: None,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }

    /// Creates the root (mode 0700) and the staging folder if missing, then returns the store.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore, StoreError> {
        let store = LocalStore::new(root);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&store.root)
            .map_err(|e| local_err("creating repository folder", &store.root, e))?;
        let staging = store.staging_dir();
        match std::fs::DirBuilder::new().mode(0o700).create(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(local_err("creating staging folder", &staging, e)),
        }
        Ok(store)
    }

    /// Reports every fsync and rename to `observer` (tests prove durability order with it).
    pub fn with_sync_observer(mut self, observer: SyncObserver) -> LocalStore {
        self.observer = Some(observer);
        self
    }

    /// Bounds every read by `limit` (see [`DEFAULT_READ_TIMEOUT`]).
    pub fn with_read_timeout(mut self, limit: std::time::Duration) -> LocalStore {
        self.read_timeout = limit;
        self
    }

    /// Fault injection for tests: any object growing past `bytes` fails with ENOSPC ("no space
    /// left on device"), as a full disk would.
    #[doc(hidden)]
    pub fn with_enospc_after(mut self, bytes: u64) -> LocalStore {
        self.enospc_after = Some(bytes);
        self
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING_DIR)
    }

    /// The path of a (validated) key.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn event(&self, ev: SyncEvent) {
        if let Some(obs) = &self.observer {
            obs(ev);
        }
    }

    fn fsync_file(&self, file: &File, path: &Path) -> Result<(), StoreError> {
        file.sync_all()
            .map_err(|e| local_err("fsync of", path, e))?;
        self.event(SyncEvent::File(path.to_path_buf()));
        Ok(())
    }

    fn fsync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        let f = File::open(dir).map_err(|e| local_err("opening directory for fsync", dir, e))?;
        f.sync_all()
            .map_err(|e| local_err("fsync of directory", dir, e))?;
        self.event(SyncEvent::Dir(dir.to_path_buf()));
        Ok(())
    }

    /// Starts an upload: a new staging file, mode 0600.
    pub fn writer(&self, key: &str) -> Result<LocalWriter, StoreError> {
        let target = self.path_of(key)?;
        let staging_dir = self.staging_dir();
        if !staging_dir.is_dir() {
            match std::fs::DirBuilder::new().mode(0o700).create(&staging_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(local_err("creating staging folder", &staging_dir, e)),
            }
        }
        let staging = staging_dir.join(staging_name());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)
            .map_err(|e| local_err("creating staging file", &staging, e))?;
        Ok(LocalWriter {
            store: self.clone(),
            key: key.to_string(),
            target,
            staging,
            file: Some(Arc::new(file)),
            written: 0,
            kicked: 0,
        })
    }

    /// Creates the missing parent folders of `target` (mode 0700), fsyncing the parent of each
    /// new folder.
    fn create_parents(&self, target: &Path) -> Result<(), StoreError> {
        let Some(parent) = target.parent() else {
            return Ok(());
        };
        let rel = parent.strip_prefix(&self.root).unwrap_or(Path::new(""));
        let mut dir = self.root.clone();
        for comp in rel.components() {
            let next = dir.join(comp);
            match std::fs::DirBuilder::new().mode(0o700).create(&next) {
                Ok(()) => self.fsync_dir(&dir)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !next.is_dir() {
                        return Err(local_err(
                            "creating folder",
                            &next,
                            io::Error::other("a file is in the way"),
                        ));
                    }
                }
                Err(e) => return Err(local_err("creating folder", &next, e)),
            }
            dir = next;
        }
        Ok(())
    }

    /// fsync'd staging file → parents → no-replace rename → fsync of the destination folder.
    fn publish(&self, key: &str, staging: &Path, target: &Path) -> Result<(), StoreError> {
        self.create_parents(target)?;
        rename_noreplace(staging, target).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                StoreError::AlreadyExists {
                    key: key.to_string(),
                }
            } else {
                local_err("renaming staging file into place as", target, e)
            }
        })?;
        self.event(SyncEvent::Rename {
            from: staging.to_path_buf(),
            to: target.to_path_buf(),
        });
        crate::faults::kill_point("local-before-dir-fsync", key);
        let parent = target.parent().unwrap_or(&self.root);
        self.fsync_dir(parent)
    }

    /// Create-only write of a small object, durable on return.
    pub fn put_create(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let target = self.path_of(key)?;
        if target.exists() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let mut w = self.writer(key)?;
        w.write(bytes)?;
        w.finish()?;
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        let path = self.path_of(key)?;
        match std::fs::read(&path) {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            Err(e) => Err(local_err("reading", &path, e)),
        }
    }

    /// Opens an object for reading (`NotFound` if missing).
    pub fn open_file(&self, key: &str) -> Result<(File, PathBuf), StoreError> {
        let path = self.path_of(key)?;
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            Err(e) => Err(local_err("opening", &path, e)),
        }
    }

    /// Reads `range` of an object by `pread` (the range must lie inside the object).
    pub fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
        let (file, path) = self.open_file(key)?;
        let len = range.end.saturating_sub(range.start);
        let len = usize::try_from(len).map_err(|_| {
            local_err(
                "reading range of",
                &path,
                io::Error::other("range too large"),
            )
        })?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, range.start).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                local_err(
                    "reading range of",
                    &path,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "range {}..{} lies beyond the end of the object",
                            range.start, range.end
                        ),
                    ),
                )
            } else {
                local_err("reading range of", &path, e)
            }
        })?;
        Ok(Bytes::from(buf))
    }

    /// Reads up to [`READ_CHUNK`] bytes at `offset` (empty at EOF).
    /// The buffer is not zeroed first (`read_to_end` reads into its spare capacity): a fresh
    /// zeroed MiB per chunk cost restores a page fault per 4 KiB.
    pub fn read_chunk(file: &File, path: &Path, offset: u64) -> Result<Bytes, StoreError> {
        use std::io::{Read, Seek};
        let mut reader = file;
        reader
            .seek(io::SeekFrom::Start(offset))
            .map_err(|e| local_err("reading", path, e))?;
        let mut buf = Vec::with_capacity(READ_CHUNK);
        reader
            .take(READ_CHUNK as u64)
            .read_to_end(&mut buf)
            .map_err(|e| local_err("reading", path, e))?;
        Ok(Bytes::from(buf))
    }

    pub fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = self.path_of(key)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(meta_of(key.to_string(), &m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(local_err("reading metadata of", &path, e)),
        }
    }

    /// Every object whose key starts with `prefix`, recursively, sorted by key; the staging
    /// folder is never listed.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        if prefix.starts_with('/') || prefix.split('/').any(|s| s == "..") {
            return Err(invalid_key(prefix, "invalid prefix"));
        }
        // Walk from the deepest folder the prefix names completely.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
                Err(e) => return Err(local_err("listing", &dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| local_err("listing", &dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if rel.is_empty() && name == STAGING_DIR {
                    continue;
                }
                let key = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry
                    .file_type()
                    .map_err(|e| local_err("listing", &entry.path(), e))?;
                if ft.is_dir() {
                    // Only descend where the prefix can still match.
                    let as_dir = format!("{key}/");
                    if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                        stack.push((entry.path(), key));
                    }
                } else if ft.is_file() && key.starts_with(prefix) {
                    let m = entry
                        .metadata()
                        .map_err(|e| local_err("reading metadata of", &entry.path(), e))?;
                    out.push(meta_of(key, &m));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Removes an object (no error if it is already gone); the folder is fsync'd.
    pub fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let parent = path.parent().unwrap_or(&self.root);
                self.fsync_dir(parent)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(local_err("deleting", &path, e)),
        }
    }
}

fn meta_of(key: String, m: &std::fs::Metadata) -> ObjectMeta {
    let modified: DateTime<Utc> = m.modified().map(DateTime::<Utc>::from).unwrap_or_default();
    ObjectMeta {
        key,
        size: m.len(),
        modified,
    }
}

/// Renames without ever replacing `to`: `renameat2(RENAME_NOREPLACE)`, or `link` + `unlink`
/// on file systems (or kernels) without it. `AlreadyExists` if `to` exists.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL)
        | Err(nix::errno::Errno::ENOSYS)
        | Err(nix::errno::Errno::EOPNOTSUPP) => link_unlink(from, to),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// The fallback of [`rename_noreplace`]: `link` fails with `EEXIST` rather than replacing.
pub fn link_unlink(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// A local upload in progress. Dropped without `finish` = aborted (the staging file is removed).
pub struct LocalWriter {
    store: LocalStore,
    key: String,
    target: PathBuf,
    staging: PathBuf,
    file: Option<Arc<File>>,
    written: u64,
    /// Bytes whose writeback [`LocalWriter::start_writeback`] has started.
    kicked: u64,
}

impl LocalWriter {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Points the upload at another key (validated as [`LocalStore::path_of`] does): a WAL
    /// object is written while it is sealed, before the hash its key carries is known.
    pub fn retarget(&mut self, key: &str) -> Result<(), StoreError> {
        self.target = self.store.path_of(key)?;
        self.key = key.to_string();
        Ok(())
    }

    /// Starts the writeback of what was written since the last call (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`: asynchronous, a hint), so that the fsync of
    /// [`LocalWriter::finish`] finds little left to write. Durability is that fsync's alone.
    pub fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let Some(file) = &self.file else { return };
        let (Ok(from), Ok(len)) = (
            i64::try_from(self.kicked),
            i64::try_from(self.written - self.kicked),
        ) else {
            return;
        };
        if len == 0 {
            return;
        }
        // SAFETY: a plain system call on a descriptor this writer keeps open; it reads no
        // memory of ours. Its result is ignored: it only starts writeback early.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE);
        }
        self.kicked = self.written;
    }

    pub fn staging_path(&self) -> &Path {
        &self.staging
    }

    /// A handle on the staging file, for writes on another thread.
    pub fn file(&self) -> Option<Arc<File>> {
        self.file.clone()
    }

    /// Fails like a full disk if the injected limit ([`LocalStore::with_enospc_after`]) would be
    /// passed by writing `n` more bytes.
    pub fn check_space(&self, n: u64) -> Result<(), StoreError> {
        match self.store.enospc_after {
            Some(limit) if self.written + n > limit => Err(local_err(
                "writing staging file for",
                &self.target,
                io::Error::from_raw_os_error(libc::ENOSPC),
            )),
            _ => Ok(()),
        }
    }

    /// Appends bytes (blocking).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.check_space(bytes.len() as u64)?;
        let file = self.file.as_ref().ok_or_else(|| {
            local_err(
                "writing",
                &self.staging,
                io::Error::other("writer already closed"),
            )
        })?;
        let mut f: &File = file;
        f.write_all(bytes)
            .map_err(|e| local_err("writing staging file for", &self.target, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Counts bytes written through a [`LocalWriter::file`] handle.
    pub fn add_written(&mut self, n: u64) {
        self.written += n;
    }

    /// fsync → parent folders → no-replace rename → folder fsync. Returns the size.
    pub fn finish(mut self) -> Result<u64, StoreError> {
        let file = self.file.take().ok_or_else(|| {
            local_err(
                "finishing",
                &self.staging,
                io::Error::other("writer already closed"),
            )
        })?;
        crate::faults::kill_point("local-before-fsync", &self.key);
        let result = self
            .store
            .fsync_file(&file, &self.staging)
            .and_then(|()| self.store.publish(&self.key, &self.staging, &self.target));
        drop(file);
        match result {
            Ok(()) => Ok(self.written),
            Err(e) => {
                let _ = std::fs::remove_file(&self.staging);
                Err(e)
            }
        }
    }

    /// Removes the staging file.
    pub fn abort(mut self) -> Result<(), StoreError> {
        self.file.take();
        match std::fs::remove_file(&self.staging) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(local_err("removing staging file", &self.staging, e)),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.staging);
        }
    }
}
