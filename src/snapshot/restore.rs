//! Restoring a snapshot (docs/design.md §6), on a blocking thread, from the plaintext manifest:
//!
//! 0. check every path (relative, no `.`/`..`, no NUL) before writing anything; plan;
//! 1. folders (created 0700) and regular files, in manifest order: each file's bytes come from
//!    the frames its entry names (whole restores stream each object front to back, `--path`
//!    restores fetch just those frames by ranged reads), are written with holes
//!    where the sparse map says so, and are checked against the entry's SHA-256 (block-incremental
//!    files: each extent written at its offset, then the per-block hashes checked); then
//!    chown (by name, numeric fallback) **before** chmod (keeps setgid), then times;
//! 2. symlinks and hard links (after every regular file);
//! 3. folder owners, modes and times last (writing into a folder changes its mtime).
//!
//! Every file system call is relative to a folder descriptor opened component by component with
//! `O_NOFOLLOW | O_DIRECTORY` from the target: nothing is written outside it, no symlink is
//! followed. Paths never come from tar headers.

mod content;
mod frames;

use super::manifest::{Entry, EntryKind, ManifestError, ManifestReader};
use super::path::{ByteName, UnsafePath, check_relative};
use crate::error::{Classify, Retry};
use crate::pipeline::Identities;
use crate::repository::{ObjectRecord, Store};
use content::FileFail;
use frames::Frames;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    Mode as NixMode, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Only these paths (files or folders, relative to the snapshot's root); empty = all.
    pub paths: Vec<ByteName>,
    pub dry_run: bool,
    /// Allow a non-empty target; existing entries of the same name are replaced.
    pub overwrite: bool,
    /// Continue past damaged or missing data (the affected files are listed).
    pub ignore_errors: bool,
    /// Restore owners by number, not by name.
    pub numeric_owner: bool,
    /// Files (exact paths) held back: not written (e.g. `global/pg_control`, restored last by
    /// `restore cluster` with a second, selective restore).
    pub skip: Vec<ByteName>,
}

/// What a restore did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RestoreStats {
    pub entries: u64,
    pub files: u64,
    pub folders: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Content bytes written (or to be written).
    pub bytes: u64,
    /// zstd frames fetched and decoded.
    pub frames_fetched: u64,
    /// Stored (ciphertext) bytes fetched by ranged reads: age header + the 64 KiB chunks
    /// covering each frame.
    pub bytes_fetched: u64,
    /// Paths that could not be restored, with the reason.
    pub failed: Vec<String>,
    pub warnings: Vec<String>,
    /// Dry run: the paths that would be restored (first 10,000).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("the manifest holds an unsafe path `{path}` ({reason}); nothing was restored")]
    UnsafePath {
        path: String,
        #[source]
        reason: UnsafePath,
    },
    #[error("target {}: {reason}", .target.display())]
    Target { target: PathBuf, reason: String },
    #[error("target {}: {source}", .target.display())]
    TargetIo {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not in this snapshot")]
    NotInSnapshot { path: String },
    #[error("{path}: {reason}")]
    Entry { path: String, reason: String },
    #[error("{} file(s) could not be restored: {}", .failed.len(), .failed.join("; "))]
    Failed { failed: Vec<String> },
    #[error("restore task failed: {0}")]
    Task(String),
}

impl Classify for RestoreError {
    fn retry(&self) -> Retry {
        match self {
            RestoreError::TargetIo { source, .. } => crate::error::io_retry(source),
            RestoreError::Task(_) => Retry::Transient,
            _ => Retry::Permanent,
        }
    }
}

/// Restores from a plaintext manifest file (blocking; call from `spawn_blocking`).
pub fn restore(
    manifest: &mut File,
    store: &Store,
    objects: &HashMap<String, ObjectRecord>,
    identities: &Identities,
    options: &RestoreOptions,
    handle: tokio::runtime::Handle,
) -> Result<RestoreStats, RestoreError> {
    let mut stats = RestoreStats::default();
    // Pass 0: every path checked, the selection found, hard-link groups' data located.
    let mut groups: HashMap<u64, Entry> = HashMap::new();
    let mut found = vec![false; options.paths.len()];
    for_each(manifest, |e| {
        check_relative(e.path.as_bytes()).map_err(|reason| RestoreError::UnsafePath {
            path: e.path.display(),
            reason,
        })?;
        if let Some(t) = &e.target
            && t.as_bytes().contains(&0)
        {
            return Err(RestoreError::UnsafePath {
                path: e.path.display(),
                reason: UnsafePath::Nul,
            });
        }
        if let Some(g) = e.link_group
            && e.has_content()
        {
            groups.entry(g).or_insert_with(|| e.clone());
        }
        for (i, p) in options.paths.iter().enumerate() {
            if e.path == *p {
                found[i] = true;
            }
        }
        if selected(&e, &options.paths) {
            stats.entries += 1;
            match e.kind {
                EntryKind::Dir => stats.folders += 1,
                EntryKind::Symlink => stats.symlinks += 1,
                EntryKind::File if e.link_group.is_some() && !e.has_content() => {
                    stats.hardlinks += 1
                }
                EntryKind::File => {
                    stats.files += 1;
                    stats.bytes += e.size;
                }
            }
            if options.dry_run && stats.planned.len() < 10_000 {
                stats.planned.push(e.path.display());
            }
        }
        Ok(())
    })?;
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(RestoreError::NotInSnapshot {
            path: options.paths[i].display(),
        });
    }
    let target = prepare_target(options)?;
    if options.dry_run {
        return Ok(stats);
    }
    let Some(target) = target else {
        return Ok(stats);
    };
    let mut r = Restorer {
        target,
        options,
        frames: Frames {
            store,
            objects,
            identities,
            handle,
            cached: VecDeque::new(),
            streaming: options.paths.is_empty(),
            streams: HashMap::new(),
            ranged_only: Default::default(),
            frames: 0,
            bytes: 0,
        },
        dir_cache: None,
        owners: Owners::new(options.numeric_owner),
        failed: Vec::new(),
        failed_keys: Vec::new(),
        aborted: false,
        restored_groups: HashMap::new(),
        groups,
    };
    // Pass 1: folders and files.
    for_each(manifest, |e| {
        if !selected(&e, &options.paths) {
            return Ok(());
        }
        if e.kind != EntryKind::Dir && options.skip.contains(&e.path) {
            return Ok(());
        }
        match e.kind {
            EntryKind::Dir => r.dir(&e),
            EntryKind::File if e.link_group.is_some() && !e.has_content() => Ok(()),
            EntryKind::File => r.file_entry(&e),
            EntryKind::Symlink => Ok(()),
        }
    })?;
    // Pass 2: links.
    if !r.aborted {
        for_each(manifest, |e| {
            if !selected(&e, &options.paths) || r.aborted || options.skip.contains(&e.path) {
                return Ok(());
            }
            match e.kind {
                EntryKind::Symlink => r.symlink(&e),
                EntryKind::File if e.link_group.is_some() && !e.has_content() => r.hardlink(&e),
                _ => Ok(()),
            }
        })?;
    }
    // Pass 3: folder metadata.
    if !r.aborted {
        for_each(manifest, |e| {
            if e.kind == EntryKind::Dir && selected(&e, &options.paths) {
                r.dir_meta(&e)?;
            }
            Ok(())
        })?;
    }
    stats.frames_fetched = r.frames.frames;
    stats.bytes_fetched = r.frames.bytes;
    stats.warnings.extend(r.owners.warnings);
    if !r.failed.is_empty() {
        if options.ignore_errors {
            stats.failed = r.failed;
        } else {
            return Err(RestoreError::Failed { failed: r.failed });
        }
    }
    Ok(stats)
}

fn for_each(
    manifest: &mut File,
    mut f: impl FnMut(Entry) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    manifest
        .seek(SeekFrom::Start(0))
        .map_err(ManifestError::Io)?;
    let mut reader = ManifestReader::new(BufReader::with_capacity(256 * 1024, &mut *manifest))?;
    while let Some(e) = reader.next_entry()? {
        f(e)?;
    }
    Ok(())
}

/// An entry is restored if it lies within a selected path, or is a folder on the way to one.
fn selected(e: &Entry, paths: &[ByteName]) -> bool {
    paths.is_empty()
        || paths
            .iter()
            .any(|p| e.path.is_within(p) || (e.kind == EntryKind::Dir && p.is_within(&e.path)))
}

/// Checks (and creates) the target; None in a dry run when it does not exist yet.
fn prepare_target(options: &RestoreOptions) -> Result<Option<OwnedFd>, RestoreError> {
    let target = &options.target;
    let io_err = |source| RestoreError::TargetIo {
        target: target.clone(),
        source,
    };
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            let non_empty = std::fs::read_dir(target).map_err(io_err)?.next().is_some();
            if non_empty && !options.overwrite {
                return Err(RestoreError::Target {
                    target: target.clone(),
                    reason: "not empty; pass --overwrite to restore into it anyway".into(),
                });
            }
        }
        Ok(_) => {
            return Err(RestoreError::Target {
                target: target.clone(),
                reason: "exists and is not a folder".into(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if options.dry_run {
                return Ok(None);
            }
            std::fs::create_dir_all(target).map_err(io_err)?;
        }
        Err(e) => return Err(io_err(e)),
    }
    let fd = nix::fcntl::open(
        target.as_path(),
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        NixMode::empty(),
    )
    .map_err(|e| io_err(io::Error::from(e)))?;
    Ok(Some(fd))
}

/// Owners by name (cached) with numeric fallback.
struct Owners {
    numeric: bool,
    root: bool,
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
    warnings: Vec<String>,
}

impl Owners {
    fn new(numeric: bool) -> Owners {
        let root = nix::unistd::geteuid().is_root();
        let mut warnings = Vec::new();
        if !root {
            warnings.push("not running as root: owners are not restored".to_string());
        }
        Owners {
            numeric,
            root,
            users: HashMap::new(),
            groups: HashMap::new(),
            warnings,
        }
    }

    fn ids(&mut self, e: &Entry) -> Option<(Uid, Gid)> {
        if !self.root {
            return None;
        }
        let mut uid = e.uid;
        let mut gid = e.gid;
        if !self.numeric {
            if let Some(name) = &e.user
                && let Some(id) = *self.users.entry(name.clone()).or_insert_with(|| {
                    nix::unistd::User::from_name(name)
                        .ok()
                        .flatten()
                        .map(|u| u.uid.as_raw())
                })
            {
                uid = id;
            }
            if let Some(name) = &e.group
                && let Some(id) = *self.groups.entry(name.clone()).or_insert_with(|| {
                    nix::unistd::Group::from_name(name)
                        .ok()
                        .flatten()
                        .map(|g| g.gid.as_raw())
                })
            {
                gid = id;
            }
        }
        Some((Uid::from_raw(uid), Gid::from_raw(gid)))
    }
}

struct Restorer<'a> {
    target: OwnedFd,
    options: &'a RestoreOptions,
    frames: Frames<'a>,
    dir_cache: Option<(ByteName, OwnedFd)>,
    owners: Owners,
    failed: Vec<String>,
    failed_keys: Vec<String>,
    /// Without --ignore-errors: after the first failure nothing more is written, but files in
    /// the same damaged objects are still named.
    aborted: bool,
    restored_groups: HashMap<u64, ByteName>,
    groups: HashMap<u64, Entry>,
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from(e)
}

fn ts(sec: i64, nsec: u32) -> TimeSpec {
    TimeSpec::new(sec, i64::from(nsec))
}

impl Restorer<'_> {
    /// A write into the target failed: names the target (a full disk says "no space left").
    fn write_err(&self, e: &Entry, err: &std::io::Error) -> RestoreError {
        let what = format!("writing into {}", self.options.target.display());
        self.entry_err(e, &what, crate::repository::store::describe_io(err))
    }

    fn entry_err(&self, e: &Entry, what: &str, err: impl std::fmt::Display) -> RestoreError {
        RestoreError::Entry {
            path: e.path.display(),
            reason: format!("{what}: {err}"),
        }
    }

    /// The folder `rel` (beneath the target), opened without following symlinks; missing
    /// folders are created (0700; their metadata comes in pass 3 if they are in the manifest).
    fn open_dir(&mut self, rel: &ByteName) -> Result<OwnedFd, io::Error> {
        if let Some((p, fd)) = &self.dir_cache
            && p == rel
        {
            return fd.try_clone();
        }
        let mut fd = self.target.try_clone()?;
        for comp in rel.components() {
            let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
            fd = match openat(&fd, comp, flags, NixMode::empty()) {
                Ok(next) => next,
                Err(Errno::ENOENT) => {
                    mkdirat(&fd, comp, NixMode::from_bits_truncate(0o700)).map_err(errno_io)?;
                    openat(&fd, comp, flags, NixMode::empty()).map_err(errno_io)?
                }
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                    return Err(io::Error::other(format!(
                        "`{}` on the way is not a folder (symlinks are never followed)",
                        comp.escape_ascii()
                    )));
                }
                Err(e) => return Err(errno_io(e)),
            };
        }
        self.dir_cache = Some((rel.clone(), fd.try_clone()?));
        Ok(fd)
    }

    /// Parent folder and name of an entry.
    fn parent_of(&mut self, e: &Entry) -> Result<(OwnedFd, Vec<u8>), RestoreError> {
        let (parent, name) = e
            .path
            .split_last()
            .ok_or_else(|| self.entry_err(e, "restoring", "the root is not a file"))?;
        let name = name.to_vec();
        let fd = self
            .open_dir(&parent)
            .map_err(|err| self.entry_err(e, "opening its folder", err))?;
        Ok((fd, name))
    }

    /// Removes an existing non-folder entry of that name (only with --overwrite).
    fn clear(&self, dir: &OwnedFd, name: &[u8], e: &Entry) -> Result<(), RestoreError> {
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(err) => Err(self.entry_err(e, "examining the existing entry", err)),
            Ok(st) => {
                if !self.options.overwrite {
                    return Err(self.entry_err(e, "restoring", "already exists"));
                }
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Err(self.entry_err(e, "restoring", "a folder of that name exists"));
                }
                unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|err| self.entry_err(e, "removing the existing entry", err))
            }
        }
    }

    fn dir(&mut self, e: &Entry) -> Result<(), RestoreError> {
        if self.aborted || e.path.as_bytes().is_empty() {
            return Ok(());
        }
        let (parent, name) = self.parent_of(e)?;
        match mkdirat(&parent, name.as_slice(), NixMode::from_bits_truncate(0o700)) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => {
                let st = fstatat(&parent, name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|err| self.entry_err(e, "examining", err))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    Ok(())
                } else {
                    self.clear(&parent, &name, e)?;
                    mkdirat(&parent, name.as_slice(), NixMode::from_bits_truncate(0o700))
                        .map_err(|err| self.entry_err(e, "creating the folder", err))
                }
            }
            Err(err) => Err(self.entry_err(e, "creating the folder", err)),
        }
    }

    fn fail(&mut self, e: &Entry, reason: String) {
        self.failed.push(format!("{}: {reason}", e.path.display()));
        if !self.options.ignore_errors {
            self.aborted = true;
        }
    }

    fn file_entry(&mut self, e: &Entry) -> Result<(), RestoreError> {
        if self.aborted {
            // Name the other files whose data sits in a damaged object.
            if let Some(key) = e
                .content_keys()
                .find(|k| self.failed_keys.iter().any(|f| f == k))
            {
                self.failed.push(format!(
                    "{}: its data is in damaged object {}",
                    e.path.display(),
                    key
                ));
            }
            return Ok(());
        }
        match self.write_file(e, e) {
            Ok(()) => {
                if let Some(g) = e.link_group {
                    self.restored_groups.insert(g, e.path.clone());
                }
                Ok(())
            }
            Err(FileFail::Data { key, reason }) => {
                if !self.failed_keys.contains(&key) {
                    self.failed_keys.push(key);
                }
                self.fail(e, reason);
                Ok(())
            }
            Err(FileFail::Other(err)) => {
                if self.options.ignore_errors {
                    self.failed.push(err.to_string());
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// chown, then chmod (chown clears setuid/setgid), then times.
    fn apply_meta(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        e: &Entry,
    ) -> Result<(), RestoreError> {
        if let Some((uid, gid)) = self.owners.ids(e) {
            fchown(fd, Some(uid), Some(gid)).map_err(|err| self.entry_err(e, "chown", err))?;
        }
        fchmod(fd, NixMode::from_bits_truncate(e.mode & 0o7777))
            .map_err(|err| self.entry_err(e, "chmod", err))?;
        let t = ts(e.mtime, e.mtime_nsec);
        futimens(fd, &t, &t).map_err(|err| self.entry_err(e, "setting times", err))
    }

    fn symlink(&mut self, e: &Entry) -> Result<(), RestoreError> {
        let target = e
            .target
            .as_ref()
            .ok_or_else(|| self.entry_err(e, "restoring", "a symlink without a target"))?;
        let result = (|| {
            let (parent, name) = self.parent_of(e)?;
            self.clear(&parent, &name, e)?;
            symlinkat(target.as_bytes(), &parent, name.as_slice())
                .map_err(|err| self.entry_err(e, "creating the symlink", err))?;
            if let Some((uid, gid)) = self.owners.ids(e) {
                fchownat(
                    &parent,
                    name.as_slice(),
                    Some(uid),
                    Some(gid),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|err| self.entry_err(e, "chown", err))?;
            }
            let t = ts(e.mtime, e.mtime_nsec);
            utimensat(
                &parent,
                name.as_slice(),
                &t,
                &t,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|err| self.entry_err(e, "setting times", err))
        })();
        self.soft(result)
    }

    fn soft(&mut self, result: Result<(), RestoreError>) -> Result<(), RestoreError> {
        match result {
            Err(err) if self.options.ignore_errors => {
                self.failed.push(err.to_string());
                Ok(())
            }
            other => other,
        }
    }

    fn hardlink(&mut self, e: &Entry) -> Result<(), RestoreError> {
        let Some(g) = e.link_group else {
            return Ok(());
        };
        let result = (|| {
            if let Some(first) = self.restored_groups.get(&g).cloned() {
                let (old_parent, old_name) = {
                    let (p, n) = first
                        .split_last()
                        .ok_or_else(|| self.entry_err(e, "linking", "bad group"))?;
                    let n = n.to_vec();
                    let fd = self
                        .open_dir(&p)
                        .map_err(|err| self.entry_err(e, "opening the link's folder", err))?;
                    (fd, n)
                };
                let (parent, name) = self.parent_of(e)?;
                self.clear(&parent, &name, e)?;
                linkat(
                    &old_parent,
                    old_name.as_slice(),
                    &parent,
                    name.as_slice(),
                    AtFlags::empty(),
                )
                .map_err(|err| self.entry_err(e, "creating the hard link", err))
            } else {
                // The group's first member is not being restored: this one carries the data.
                let first =
                    self.groups.get(&g).cloned().ok_or_else(|| {
                        self.entry_err(e, "linking", "its link group has no data")
                    })?;
                match self.write_file(e, &first) {
                    Ok(()) => {
                        self.restored_groups.insert(g, e.path.clone());
                        Ok(())
                    }
                    Err(FileFail::Data { reason, .. }) => {
                        Err(self.entry_err(e, "restoring", reason))
                    }
                    Err(FileFail::Other(err)) => Err(err),
                }
            }
        })();
        self.soft(result)
    }

    fn dir_meta(&mut self, e: &Entry) -> Result<(), RestoreError> {
        let result = (|| {
            let fd = self
                .open_dir(&e.path)
                .map_err(|err| self.entry_err(e, "opening the folder", err))?;
            self.apply_meta(fd.as_fd(), e)
        })();
        self.soft(result)
    }
}
