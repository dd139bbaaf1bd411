//! The backup side of the engine (docs/design.md §3, §4). On a blocking thread: walk the source in
//! manifest order, merge with the parent manifest (unchanged rule + racy-clean), write the tar
//! stream of what is new or changed into parts (objects) cut into frames at entry boundaries,
//! and write the complete manifest to a spool file as entries resolve. Strict mode hashes 16 KiB
//! blocks; an incremental stores only the changed blocks of a changed file whose parent entry
//! has block hashes (`.bdc-blocks/<n>` tar entries) and points the rest at the parent's bytes.
//!
//! Parts are stored by [`crate::pipeline::store_frames`] tasks on the runtime; the frame table a
//! part returns turns its entries' plaintext offsets into frame locations. Entries wait in an
//! in-order queue until their part is stored; a part is closed early when the queue grows, so
//! memory stays bounded (≈ frame buffers + ≤ `MAX_QUEUE` entries + one folder listing per depth).

mod blocks;
mod content;
mod parts;

use super::SnapshotError;
use super::manifest::{
    Entry, EntryKind, Extent, Header, ManifestWriter, Mode, ParentCursor, Trailer, push_extent,
};
use super::path::ByteName;
use super::tar::{self, HeaderInfo, TarKind};
use super::walk::{Event, Item};
use crate::pipeline::{PipelineError, PipelineSettings, ProgressCounter, StoredObject};
use crate::repository::Store;
use chrono::{DateTime, Utc};
use parts::{Parts, Pending, locate};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Entries waiting for their part before the part is closed early.
const MAX_QUEUE: usize = 50_000;
/// Strict mode: the block size of the per-block hashes a file stored whole gets (two PostgreSQL
/// pages). A block incremental compares at its parent entry's block size instead (older
/// backups: 64 KiB), so a chain keeps one size per file until the next full.
pub const BLOCK_SIZE: u64 = 16 * 1024;
/// The parent block sizes a block incremental compares at (others: the file is stored whole).
pub const PARENT_BLOCK_SIZES: std::ops::RangeInclusive<u64> = 4096..=(1 << 20);
/// Changed bytes in a row stored as one `.bdc-blocks` tar entry, at most (whole blocks).
const RUN_BYTES: u64 = 4 << 20;

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
    /// What a journal says may have changed in a file since the parent backup began (a base
    /// backup: the WAL between the two starts). A block incremental leaves the other blocks
    /// unread and points them at the parent's bytes. None (or None for a file): every block of
    /// a changed file is read and compared.
    pub changed: Option<ChangedHook>,
}

/// See [`EngineConfig::changed`].
pub type ChangedHook = std::sync::Arc<dyn Fn(&ByteName) -> Option<Changed> + Send + Sync>;

/// The byte ranges of a file (sorted, apart) that may differ from the parent backup's copy;
/// every other byte the parent has is the parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed(pub Vec<std::ops::Range<u64>>);

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
    /// Blocks of those left unread because the journal says they did not change.
    pub blocks_unread: u64,
    pub warnings: Vec<String>,
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
        blocks_unread: 0,
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
        blocks_unread: engine.blocks_unread,
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
    blocks_unread: u64,
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
                    && o.blocks
                        .as_ref()
                        .is_some_and(|b| PARENT_BLOCK_SIZES.contains(&b.size))
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
