//! The backup side of the engine (docs/design.md §3, §4). On a blocking thread: walk the source in
//! manifest order, merge with the parent manifest (unchanged rule + racy-clean), write the tar
//! stream of what is new or changed into parts (objects) cut into frames at entry boundaries,
//! and write the complete manifest to a spool file as entries resolve. Strict mode hashes 64 KiB
//! blocks; an incremental stores only the changed blocks of a changed file whose parent entry
//! has block hashes (`.bdc-blocks/<n>` tar entries) and points the rest at the parent's bytes.
//!
//! Parts are stored by [`crate::pipeline::store_frames`] tasks on the runtime; the frame table a
//! part returns turns its entries' plaintext offsets into frame locations. Entries wait in an
//! in-order queue until their part is stored; a part is closed early when the queue grows, so
//! memory stays bounded (≈ frame buffers + ≤ `MAX_QUEUE` entries + one folder listing per depth).

use super::SnapshotError;
use super::manifest::{
    BlockHasher, BlockHashes, Entry, EntryKind, Extent, Header, Location, ManifestWriter, Mode,
    ParentCursor, Trailer, block_hash, content_pieces, push_extent,
};
use super::path::ByteName;
use super::tar::{self, HeaderInfo, TarKind};
use super::walk::{Event, Item};
use crate::pipeline::{
    self, FrameInfo, PipelineError, PipelineSettings, ProgressCounter, StoredObject,
};
use crate::repository::{Store, format};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Entries waiting for their part before the part is closed early.
const MAX_QUEUE: usize = 50_000;
/// Parts being stored at once (each has its own compression pipeline).
const MAX_OUTSTANDING: usize = 2;
/// Read size for file content.
const READ_CHUNK: usize = 256 * 1024;
/// Frame buffers have this much room beyond the frame size (tar headers and padding of the entry
/// that fills the frame), so they are not reallocated.
const FRAME_SLACK: usize = 64 * 1024;
/// Strict mode: the block size of per-block hashes and block incrementals.
pub const BLOCK_SIZE: u64 = 64 * 1024;
/// Changed blocks in a row stored as one `.bdc-blocks` tar entry, at most.
const RUN_BLOCKS: u64 = 64;

/// The parent snapshot an incremental compares with.
pub struct Parent {
    /// The plaintext manifest (local copy), positioned at the manifest's first line.
    pub manifest: Box<dyn BufRead + Send>,
    /// When the parent backup started (the racy-clean cut-off is this minus one second).
    pub started_at: DateTime<Utc>,
}

/// One engine run.
pub struct EngineConfig {
    pub job: String,
    pub backup_id: String,
    pub backup_type: crate::model::BackupType,
    pub mode: Mode,
    pub started_at: DateTime<Utc>,
    pub ancestors: Vec<String>,
    /// The header's `source` (the folder, or `/` for config jobs).
    pub source: ByteName,
    /// Plaintext bytes per part (object); a larger file gets a part of its own.
    pub part_size: u64,
    pub parent: Option<Parent>,
    /// Where the manifest is spooled (a private folder: it holds names).
    pub spool_dir: PathBuf,
    /// Test hook: opening this relative path fails with "permission denied" (root reads any
    /// file, so tests cannot make one unreadable honestly otherwise).
    #[doc(hidden)]
    pub fault_unreadable: Option<ByteName>,
    /// Test hook: called after a file is opened and examined, before its content is read
    /// (with the attempt number), so tests can make it grow or shrink "while being read".
    #[doc(hidden)]
    pub before_read: Option<ReadHook>,
    /// Called with each chunk of a regular file's content as read (its offset in the file, and
    /// the open file for re-reads with `read_at`); the strings it returns become run warnings.
    /// Base backups verify page checksums here.
    pub inspect: Option<InspectHook>,
}

/// See [`EngineConfig::before_read`].
pub type ReadHook = std::sync::Arc<dyn Fn(&ByteName, &std::path::Path, u32) + Send + Sync>;

/// See [`EngineConfig::inspect`].
pub type InspectHook =
    std::sync::Arc<dyn Fn(&ByteName, &File, u64, &[u8]) -> Vec<String> + Send + Sync>;

/// What the engine produced.
pub struct EngineOutput {
    /// Data objects in order.
    pub objects: Vec<StoredObject>,
    /// The plaintext manifest (a deleted-on-drop temp file), rewound.
    pub manifest: tempfile::NamedTempFile,
    pub manifest_size: u64,
    pub manifest_sha256: String,
    pub trailer: Trailer,
    /// Content bytes read from the source.
    pub bytes_read: u64,
    /// Content bytes written into this backup's tar stream (whole files and changed blocks).
    pub bytes_stored: u64,
    /// Files stored as block extents (block incrementals).
    pub files_by_blocks: u64,
    pub warnings: Vec<String>,
}

/// Content waiting for its part: a whole file (`at` None) or a run of changed blocks at file
/// offset `at`.
struct Pending {
    seq: u64,
    start: u64,
    len: u64,
    at: Option<u64>,
}

struct OpenPart {
    seq: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    /// Plaintext offset of `buf[0]`.
    sent: u64,
    entries: usize,
}

impl OpenPart {
    fn offset(&self) -> u64 {
        self.sent + self.buf.len() as u64
    }
}

type PartTask = tokio::task::JoinHandle<Result<StoredObject, PipelineError>>;

/// The tar stream split into parts and frames.
struct Parts {
    store: Store,
    settings: PipelineSettings,
    progress: ProgressCounter,
    cancel: CancellationToken,
    handle: tokio::runtime::Handle,
    job: String,
    backup_id: String,
    frame_size: usize,
    part_size: u64,
    next_seq: u64,
    current: Option<OpenPart>,
    outstanding: VecDeque<(u64, PartTask)>,
    finished: BTreeMap<u64, StoredObject>,
}

impl Parts {
    fn part(&mut self) -> &mut OpenPart {
        if self.current.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let key = format::data_key(&self.job, &self.backup_id, seq);
            let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
            let stream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
            let (store, settings, progress, cancel, k) = (
                self.store.clone(),
                self.settings.clone(),
                self.progress.clone(),
                self.cancel.clone(),
                key.clone(),
            );
            let task = self.handle.spawn(async move {
                pipeline::store_frames(&store, &k, stream, &settings, &progress, &cancel).await
            });
            self.outstanding.push_back((seq, task));
            self.current = Some(OpenPart {
                seq,
                tx,
                buf: pipeline::buffers::take(self.frame_size + FRAME_SLACK),
                sent: 0,
                entries: 0,
            });
        }
        self.current.as_mut().expect("just opened")
    }

    fn send_frame(&mut self) -> Result<(), SnapshotError> {
        let frame_size = self.frame_size;
        let Some(p) = self.current.as_mut() else {
            return Ok(());
        };
        if p.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(
            &mut p.buf,
            pipeline::buffers::take(frame_size + FRAME_SLACK),
        );
        p.sent += data.len() as u64;
        if p.tx.blocking_send(Ok(Bytes::from(data))).is_err() {
            // The store task ended early (failed or cancelled): its error says why.
            self.current = None;
            while !self.outstanding.is_empty() {
                self.wait_oldest()?;
            }
            return Err(SnapshotError::Cancelled);
        }
        if p.sent > frame_size as u64 {
            crate::faults::kill_point(
                "part-upload",
                &format::data_key(&self.job, &self.backup_id, p.seq),
            );
        }
        Ok(())
    }

    /// Called before an entry of `total` tar bytes: a new part if it would not fit.
    fn room_for(&mut self, total: u64) -> Result<(), SnapshotError> {
        if let Some(p) = &self.current
            && p.offset() > 0
            && p.offset() + total > self.part_size
        {
            self.close()?;
        }
        // A new entry starts a new frame once the current one is big enough, or when the entry
        // would make the frame much larger than the target.
        let frame_size = self.frame_size as u64;
        if let Some(p) = &self.current {
            let b = p.buf.len() as u64;
            if b >= frame_size || (b > 0 && b + total > 2 * frame_size) {
                self.send_frame()?;
            }
        }
        Ok(())
    }

    /// After an entry: close the part when full.
    fn entry_done(&mut self) -> Result<(), SnapshotError> {
        let part_size = self.part_size;
        if let Some(p) = self.current.as_mut() {
            p.entries += 1;
            if p.offset() >= part_size {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), SnapshotError> {
        if let Some(p) = self.current.as_mut() {
            tar::end_of_archive(&mut p.buf);
        }
        self.send_frame()?;
        // Dropping the sender ends the part's frame stream.
        self.current = None;
        while self.outstanding.len() > MAX_OUTSTANDING {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), SnapshotError> {
        let Some((seq, task)) = self.outstanding.pop_front() else {
            return Ok(());
        };
        let stored = self
            .handle
            .block_on(task)
            .map_err(|e| SnapshotError::Store(PipelineError::Task(e.to_string())))?
            .map_err(|e| match e {
                PipelineError::Cancelled => SnapshotError::Cancelled,
                e => SnapshotError::Store(e),
            })?;
        crate::faults::kill_point("between-parts", &stored.record.key);
        self.finished.insert(seq, stored);
        Ok(())
    }

    fn close_and_wait_all(&mut self) -> Result<(), SnapshotError> {
        if self.current.is_some() {
            self.close()?;
        }
        while !self.outstanding.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) {
        self.part().buf.extend_from_slice(bytes);
    }
}

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

/// Runs the engine (blocking; call from `spawn_blocking`).
#[allow(clippy::too_many_arguments)]
pub fn run(
    mut cfg: EngineConfig,
    walk: Box<dyn Iterator<Item = Event> + Send>,
    store: Store,
    settings: PipelineSettings,
    progress: ProgressCounter,
    cancel: CancellationToken,
    handle: tokio::runtime::Handle,
) -> Result<EngineOutput, SnapshotError> {
    let spool = tempfile::Builder::new()
        .prefix(".manifest-")
        .tempfile_in(&cfg.spool_dir)
        .map_err(|source| SnapshotError::Spool {
            path: cfg.spool_dir.clone(),
            source,
        })?;
    let spool_path = spool.path().to_path_buf();
    let spool_err = |source| SnapshotError::Spool {
        path: spool_path.clone(),
        source,
    };
    let out = HashWriter::new(io::BufWriter::new(spool.reopen().map_err(spool_err)?));
    let header = Header {
        format_version: crate::repository::FORMAT_VERSION,
        kind: super::manifest::SNAPSHOT_KIND.into(),
        job: cfg.job.clone(),
        backup_id: cfg.backup_id.clone(),
        backup_type: cfg.backup_type,
        mode: cfg.mode,
        source: cfg.source.clone(),
        started_at: cfg.started_at,
        ancestors: cfg.ancestors.clone(),
    };
    let writer = ManifestWriter::new(out, &header).map_err(spool_err)?;
    let parent = match cfg.parent.take() {
        Some(p) => {
            let reader = super::manifest::ManifestReader::new(p.manifest)
                .map_err(SnapshotError::ParentManifest)?;
            let cutoff = p.started_at - chrono::Duration::seconds(1);
            Some((
                ParentCursor::new(reader).map_err(SnapshotError::ParentManifest)?,
                cutoff,
            ))
        }
        None => None,
    };
    let frame_size = settings.effective_frame_size();
    let mut engine = Engine {
        parts: Parts {
            store,
            settings,
            progress,
            cancel: cancel.clone(),
            handle,
            job: cfg.job.clone(),
            backup_id: cfg.backup_id.clone(),
            frame_size,
            part_size: cfg.part_size.max(1),
            next_seq: 0,
            current: None,
            outstanding: VecDeque::new(),
            finished: BTreeMap::new(),
        },
        cfg,
        parent,
        writer: Some(writer),
        queue: VecDeque::new(),
        groups: HashMap::new(),
        names: Names::default(),
        warnings: Vec::new(),
        bytes_read: 0,
        bytes_stored: 0,
        files_by_blocks: 0,
        runs: 0,
        files_stored: 0,
    };
    let result = engine.walk(walk, &cancel);
    if let Err(e) = result {
        // Let running uploads end (they abort on the closed stream or on cancellation).
        engine.parts.current = None;
        for (_, task) in engine.parts.outstanding.drain(..) {
            task.abort();
        }
        return Err(e);
    }
    engine.parts.close_and_wait_all()?;
    engine.flush(true)?;
    let objects: Vec<StoredObject> = std::mem::take(&mut engine.parts.finished)
        .into_values()
        .collect();
    let trailer = Trailer {
        entries: 0,
        objects: objects.iter().map(|o| o.record.key.clone()).collect(),
        files_stored: engine.files_stored,
        warnings: engine.warnings.len() as u64,
    };
    let writer = engine.writer.take().expect("writer present until the end");
    let entries = writer.entries();
    let hashed = writer.finish(trailer.clone()).map_err(spool_err)?;
    let (size, sha256) = hashed.finish().map_err(spool_err)?;
    let mut manifest = spool;
    manifest.rewind().map_err(spool_err)?;
    Ok(EngineOutput {
        objects,
        manifest,
        manifest_size: size,
        manifest_sha256: sha256,
        trailer: Trailer { entries, ..trailer },
        bytes_read: engine.bytes_read,
        bytes_stored: engine.bytes_stored,
        files_by_blocks: engine.files_by_blocks,
        warnings: engine.warnings,
    })
}

/// Owner names by id (cached).
#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }
    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

struct GroupInfo {
    id: u64,
    tar_name: Vec<u8>,
    /// The first member's content went into this backup's tar stream.
    in_tar: bool,
    size: u64,
    sha256: Option<String>,
}

/// The parent manifest's cursor and the racy-clean cut-off.
type ParentState = (ParentCursor<Box<dyn BufRead + Send>>, DateTime<Utc>);

struct Engine {
    cfg: EngineConfig,
    parts: Parts,
    parent: Option<ParentState>,
    writer: Option<ManifestWriter<HashWriter<io::BufWriter<File>>>>,
    queue: VecDeque<(Entry, Vec<Pending>)>,
    groups: HashMap<(u64, u64), GroupInfo>,
    names: Names,
    warnings: Vec<String>,
    bytes_read: u64,
    bytes_stored: u64,
    files_by_blocks: u64,
    /// `.bdc-blocks/<n>` entries written so far.
    runs: u64,
    files_stored: u64,
}

fn tar_name(path: &ByteName, dir: bool) -> Vec<u8> {
    if path.as_bytes().is_empty() {
        return b"./".to_vec();
    }
    let mut v = path.0.clone();
    if dir {
        v.push(b'/');
    }
    v
}

impl Engine {
    fn lenient(&self) -> bool {
        self.cfg.mode == Mode::Lenient
    }

    fn warn_or_fail(&mut self, path: &ByteName, what: String) -> Result<(), SnapshotError> {
        if self.lenient() {
            tracing::warn!(path = %path.display(), "{what}");
            self.warnings.push(format!("{}: {what}", path.display()));
            Ok(())
        } else {
            Err(SnapshotError::Strict {
                path: path.display(),
                reason: what,
            })
        }
    }

    fn walk(
        &mut self,
        walk: Box<dyn Iterator<Item = Event> + Send>,
        cancel: &CancellationToken,
    ) -> Result<(), SnapshotError> {
        for event in walk {
            if cancel.is_cancelled() {
                return Err(SnapshotError::Cancelled);
            }
            match event {
                Event::Item(item) => self.item(item)?,
                Event::Error { path, error } => {
                    self.warn_or_fail(&path, format!("cannot be read: {error}"))?
                }
                Event::Missing { path } => {
                    self.warnings
                        .push(format!("/{}: does not exist", path.display()));
                }
            }
            if self.queue.len() > MAX_QUEUE && self.parts.current.is_some() {
                self.parts.close()?;
                while !self.parts.outstanding.is_empty() {
                    self.parts.wait_oldest()?;
                }
            }
            self.flush(false)?;
        }
        Ok(())
    }

    fn parent_entry(&mut self, path: &ByteName) -> Result<Option<Entry>, SnapshotError> {
        match &mut self.parent {
            Some((cursor, _)) => cursor
                .find(path.as_bytes())
                .map_err(SnapshotError::ParentManifest),
            None => Ok(None),
        }
    }

    /// The unchanged rule (docs/design.md §3).
    fn unchanged(&self, new: &Entry, old: &Entry) -> bool {
        let Some((_, cutoff)) = &self.parent else {
            return false;
        };
        let old_enough =
            (new.mtime, new.mtime_nsec) < (cutoff.timestamp(), cutoff.timestamp_subsec_nanos());
        new.kind == old.kind
            && new.size == old.size
            && new.mtime == old.mtime
            && new.mtime_nsec == old.mtime_nsec
            && new.ctime == old.ctime
            && new.ctime_nsec == old.ctime_nsec
            && new.ino == old.ino
            && old_enough
    }

    fn base_entry(&mut self, item: &Item, kind: EntryKind) -> Entry {
        let m = &item.meta;
        Entry {
            path: item.path.clone(),
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            user: self.names.user(m.uid()),
            group: self.names.group(m.gid()),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec() as u32,
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec() as u32,
            ino: m.ino(),
            size: 0,
            sha256: None,
            target: None,
            link_group: None,
            sparse: None,
            data: None,
            blocks: None,
            extents: None,
        }
    }

    fn header(
        &mut self,
        e: &Entry,
        kind: TarKind,
        size: u64,
        link: &[u8],
    ) -> Result<(), SnapshotError> {
        let name = tar_name(&e.path, kind == TarKind::Dir);
        self.header_named(e, &name, kind, size, link)
    }

    fn header_named(
        &mut self,
        e: &Entry,
        name: &[u8],
        kind: TarKind,
        size: u64,
        link: &[u8],
    ) -> Result<(), SnapshotError> {
        let mut h = Vec::with_capacity(tar::BLOCK * 2);
        tar::write_header(
            &mut h,
            &HeaderInfo {
                name,
                kind,
                mode: e.mode,
                uid: u64::from(e.uid),
                gid: u64::from(e.gid),
                size,
                mtime: e.mtime,
                user: e.user.as_deref(),
                group: e.group.as_deref(),
                link,
            },
        );
        let total = h.len() as u64
            + if kind == TarKind::File {
                tar::padded(size)
            } else {
                0
            };
        self.parts.room_for(total)?;
        self.parts.write(&h);
        Ok(())
    }

    fn item(&mut self, item: Item) -> Result<(), SnapshotError> {
        let ft = item.meta.file_type();
        let old = self.parent_entry(&item.path)?;
        if ft.is_dir() {
            let e = self.base_entry(&item, EntryKind::Dir);
            let same = old.as_ref().is_some_and(|o| self.unchanged(&e, o));
            if !same {
                self.header(&e, TarKind::Dir, 0, b"")?;
                self.parts.entry_done()?;
            }
            self.queue.push_back((e, Vec::new()));
        } else if ft.is_symlink() {
            let mut e = self.base_entry(&item, EntryKind::Symlink);
            let target = match std::fs::read_link(&item.abs) {
                Ok(t) => t,
                Err(err) => {
                    return self.warn_or_fail(&item.path, format!("cannot read the link: {err}"));
                }
            };
            use std::os::unix::ffi::OsStrExt;
            let target = ByteName(target.as_os_str().as_bytes().to_vec());
            let same = old
                .as_ref()
                .is_some_and(|o| self.unchanged(&e, o) && o.target.as_ref() == Some(&target));
            if !same {
                self.header(&e, TarKind::Symlink, 0, target.as_bytes())?;
                self.parts.entry_done()?;
            }
            e.target = Some(target);
            self.queue.push_back((e, Vec::new()));
        } else if ft.is_file() {
            self.file(item, old)?;
        } else {
            self.warnings.push(format!(
                "{}: special file (fifo, socket or device) not backed up",
                item.path.display()
            ));
        }
        Ok(())
    }

    fn file(&mut self, item: Item, old: Option<Entry>) -> Result<(), SnapshotError> {
        let mut e = self.base_entry(&item, EntryKind::File);
        e.size = item.meta.size();
        let key = (item.meta.dev(), item.meta.ino());
        if item.meta.nlink() > 1 {
            if let Some(g) = self.groups.get(&key) {
                // A further member of a hard-link group: no data of its own.
                e.link_group = Some(g.id);
                e.size = g.size;
                e.sha256 = g.sha256.clone();
                if g.in_tar {
                    let link = g.tar_name.clone();
                    self.header(&e, TarKind::HardLink, 0, &link)?;
                    self.parts.entry_done()?;
                }
                self.queue.push_back((e, Vec::new()));
                return Ok(());
            }
            let id = self.groups.len() as u64;
            e.link_group = Some(id);
        }
        let reusable = |o: &Entry| {
            (o.sha256.is_some() && (o.size == 0 || o.data.is_some())) || o.extents.is_some()
        };
        let reuse = old
            .as_ref()
            .is_some_and(|o| self.unchanged(&e, o) && reusable(o));
        let mut in_tar = false;
        if reuse {
            let o = old.expect("checked");
            e.sha256 = o.sha256;
            e.sparse = o.sparse;
            e.data = o.data;
            e.blocks = o.blocks;
            e.extents = o.extents;
            self.queue.push_back((e.clone(), Vec::new()));
        } else {
            // Block incremental: strict mode, and the parent hashed this file's blocks.
            let base = old.filter(|o| {
                !self.lenient()
                    && o.kind == EntryKind::File
                    && o.blocks.as_ref().is_some_and(|b| b.size == BLOCK_SIZE)
                    && o.has_content()
            });
            match self.read_file(&item, &mut e, base.as_ref())? {
                Some(pending) => {
                    let by_blocks = e.extents.is_some();
                    in_tar = !by_blocks;
                    if by_blocks {
                        self.files_by_blocks += 1;
                    }
                    self.files_stored += 1;
                    self.queue.push_back((e.clone(), pending));
                }
                None => return Ok(()), // unreadable, reported
            }
        }
        if let Some(id) = e.link_group {
            self.groups.insert(
                key,
                GroupInfo {
                    id,
                    tar_name: tar_name(&e.path, false),
                    in_tar,
                    size: e.size,
                    sha256: e.sha256.clone(),
                },
            );
        }
        Ok(())
    }

    /// Stores a file's content; None when it could not be read (lenient: reported).
    #[allow(clippy::type_complexity)]
    fn read_file(
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
    fn copy_content(
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
    fn copy_blocks(
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
    fn store_run(&mut self, e: &Entry, at: u64, run: &[u8]) -> Result<Pending, SnapshotError> {
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

    /// Writes resolved entries from the queue's front (all of them at the end).
    fn flush(&mut self, end: bool) -> Result<(), SnapshotError> {
        while let Some((_, pending)) = self.queue.front() {
            if pending
                .iter()
                .any(|p| !self.parts.finished.contains_key(&p.seq))
            {
                if end {
                    return Err(SnapshotError::Store(PipelineError::Task(
                        "a part was never stored".into(),
                    )));
                }
                return Ok(());
            }
            let (mut e, pending) = self.queue.pop_front().expect("front exists");
            let mut stored_runs = Vec::new();
            for p in pending {
                let stored = &self.parts.finished[&p.seq];
                let loc = locate(&self.cfg.backup_id, stored, p.start, p.len);
                match p.at {
                    None => e.data = Some(loc),
                    Some(at) => stored_runs.push(Extent {
                        at,
                        len: p.len,
                        data: loc,
                    }),
                }
            }
            if !stored_runs.is_empty() {
                let mut all = e.extents.take().unwrap_or_default();
                all.extend(stored_runs);
                all.sort_by_key(|x| x.at);
                let mut merged = Vec::with_capacity(all.len());
                for x in all {
                    push_extent(&mut merged, x);
                }
                e.extents = Some(merged);
            }
            let w = self.writer.as_mut().expect("writer present");
            w.entry(&e).map_err(|source| SnapshotError::Spool {
                path: self.cfg.spool_dir.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The frames of `stored` covering `[start, start + len)`.
fn locate(backup: &str, stored: &StoredObject, start: u64, len: u64) -> Location {
    let frames: &[FrameInfo] = &stored.frames;
    let first = frames.partition_point(|f| f.content_offset + f.content_len <= start);
    let end = start + len;
    let covering: Vec<[u64; 4]> = frames[first..]
        .iter()
        .take_while(|f| f.content_offset < end)
        .map(|f| {
            [
                f.compressed_offset,
                f.compressed_len,
                f.content_offset,
                f.content_len,
            ]
        })
        .collect();
    let offset = covering.first().map(|f| start - f[2]).unwrap_or(0);
    Location {
        backup: backup.to_string(),
        key: stored.record.key.clone(),
        offset,
        frames: covering,
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

/// A writer that hashes and counts what passes.
pub struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Flushes; the size and SHA-256 of everything written.
    pub fn finish(mut self) -> io::Result<(u64, String)> {
        self.inner.flush()?;
        Ok((self.size, hex::encode(self.hasher.finalize())))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
