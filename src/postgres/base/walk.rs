//! PGDATA as a base backup walks it: PostgreSQL's exclusions (as basebackup.c), the forks of
//! unlogged relations left out (all but `_init`), `pg_wal` kept as an empty folder, and the
//! relation file names page checksums and block incrementals go by.

use crate::snapshot::walk::{Event, Filter, Item, TreeWalk};
use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Paths (relative to PGDATA; `*` crosses `/`) a base backup leaves out, as basebackup.c does.
/// The folders `pg_wal`, `pg_wal/archive_status` and the emptied ones stay (empty).
pub const EXCLUDED: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "pg_wal/*",
    "pg_replslot/*",
    "pg_stat_tmp/*",
    "pg_dynshmem/*",
    "pg_notify/*",
    "pg_serial/*",
    "pg_snapshots/*",
    "pg_subtrans/*",
    "pgsql_tmp*",
    "*/pgsql_tmp*",
    "pg_internal.init",
    "*/pg_internal.init",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "recovery.signal",
    "standby.signal",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
];

/// PGDATA walked in manifest order without what a base backup leaves out ([`EXCLUDED`]), without
/// the forks of unlogged relations (all but `_init`), with `pg_wal` as an empty folder (followed
/// when it is a symlink) holding an empty `archive_status`.
pub struct PgDataWalk {
    inner: TreeWalk,
    pending: Option<Event>,
    /// The database folder being walked and its unlogged relfilenodes.
    unlogged: Option<(Vec<u8>, HashSet<Vec<u8>>)>,
}

impl PgDataWalk {
    pub fn new(root: &Path) -> std::io::Result<PgDataWalk> {
        let excluded: Vec<String> = EXCLUDED.iter().map(|s| s.to_string()).collect();
        let filter = Filter::new(&[], &excluded)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(PgDataWalk {
            inner: TreeWalk::new(root, filter, false)?,
            pending: None,
            unlogged: None,
        })
    }
}

/// `base/<oid>` (a database folder).
pub(super) fn is_database_dir(rel: &[u8]) -> bool {
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    let digits = |p: &[u8]| !p.is_empty() && p.iter().all(u8::is_ascii_digit);
    parts.len() == 2 && parts[0] == b"base" && digits(parts[1])
}

/// A relation file name: (relfilenode, fork) for `123`, `123_fsm`, `123_init.1`, …
pub fn relation_file(name: &[u8]) -> Option<(&[u8], &[u8])> {
    let base = match name.iter().position(|&b| b == b'.') {
        Some(i) => {
            let seg = &name[i + 1..];
            if seg.is_empty() || !seg.iter().all(u8::is_ascii_digit) {
                return None;
            }
            &name[..i]
        }
        None => name,
    };
    let (node, fork) = match base.iter().position(|&b| b == b'_') {
        Some(i) => (&base[..i], &base[i + 1..]),
        None => (base, &b""[..]),
    };
    if node.is_empty() || !node.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !matches!(fork, b"" | b"fsm" | b"vm" | b"init") {
        return None;
    }
    Some((node, fork))
}

fn unlogged_in(dir: &Path) -> HashSet<Vec<u8>> {
    let mut set = HashSet::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            if let Some((node, b"init")) = relation_file(name.as_bytes()) {
                set.insert(node.to_vec());
            }
        }
    }
    set
}

impl Iterator for PgDataWalk {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if let Some(e) = self.pending.take() {
            return Some(e);
        }
        loop {
            let event = self.inner.next()?;
            let Event::Item(mut item) = event else {
                return Some(event);
            };
            let rel = item.path.as_bytes().to_vec();
            crate::faults::kill_point("base-walk", &String::from_utf8_lossy(&rel));
            if rel == b"pg_wal" {
                if item.meta.file_type().is_symlink() {
                    // pg_wal elsewhere (initdb -X): restored as a plain folder.
                    match std::fs::metadata(&item.abs) {
                        Ok(m) => item.meta = m,
                        Err(error) => {
                            return Some(Event::Error {
                                path: item.path,
                                error,
                            });
                        }
                    }
                }
                let status = item.abs.join("archive_status");
                if let Ok(meta) = std::fs::metadata(&status) {
                    self.pending = Some(Event::Item(Item {
                        path: item.path.join(b"archive_status"),
                        abs: status,
                        meta,
                    }));
                }
                return Some(Event::Item(item));
            }
            if item.meta.is_dir() {
                if is_database_dir(&rel) {
                    self.unlogged = Some((rel.clone(), unlogged_in(&item.abs)));
                }
                return Some(Event::Item(item));
            }
            if let Some((dir, set)) = &self.unlogged
                && !set.is_empty()
                && rel.len() > dir.len()
                && rel.starts_with(dir)
                && rel[dir.len()] == b'/'
            {
                let name = &rel[dir.len() + 1..];
                if let Some((node, fork)) = relation_file(name)
                    && fork != b"init"
                    && set.contains(node)
                {
                    continue;
                }
            }
            return Some(Event::Item(item));
        }
    }
}
