//! Walking a source in manifest order: a depth-first walk with each folder's names sorted by
//! bytes (so the walk and the parent manifest merge in one pass), never following symlinks,
//! optionally staying on one file system, with include/exclude globs matched on the relative
//! path's bytes. Memory: one folder's names per level of depth.
//!
//! Config jobs walk a list instead ([`ListWalk`]): absolute files given by the catalogue, kept
//! relative to `/`.

pub mod pattern;

use super::path::{ByteName, compare};
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One thing found.
#[derive(Debug)]
pub struct Item {
    /// Relative to the source (empty for its root).
    pub path: ByteName,
    pub abs: PathBuf,
    /// `lstat`.
    pub meta: Metadata,
}

/// What the walk yields.
#[derive(Debug)]
pub enum Event {
    Item(Item),
    /// A folder that could not be listed or an entry that could not be examined.
    Error {
        path: ByteName,
        error: io::Error,
    },
    /// A configured path that does not exist (config jobs).
    Missing {
        path: ByteName,
    },
}

/// Include/exclude globs (`*` crosses `/`, so `*.tmp` matches at any depth).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, globset::Error> {
        let build = |pats: &[String]| -> Result<Option<GlobSet>, globset::Error> {
            if pats.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in pats {
                b.add(Glob::new(p.trim_start_matches('/'))?);
            }
            Ok(Some(b.build()?))
        };
        Ok(Filter {
            include: build(include)?,
            exclude: build(exclude)?,
        })
    }

    fn excluded(&self, rel: &ByteName) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(|g| g.is_match(rel.as_path()))
    }

    fn included(&self, rel: &ByteName) -> bool {
        self.include
            .as_ref()
            .is_none_or(|g| g.is_match(rel.as_path()))
    }
}

struct Frame {
    rel: ByteName,
    abs: PathBuf,
    names: std::vec::IntoIter<Vec<u8>>,
}

/// A sorted depth-first walk of a folder.
pub struct TreeWalk {
    root: PathBuf,
    root_pending: bool,
    root_dev: u64,
    one_file_system: bool,
    filter: Filter,
    stack: Vec<Frame>,
    deferred: Option<Event>,
}

impl TreeWalk {
    /// Fails when the root cannot be examined or is not a folder.
    pub fn new(root: &Path, filter: Filter, one_file_system: bool) -> io::Result<TreeWalk> {
        let meta = std::fs::symlink_metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a folder", root.display()),
            ));
        }
        Ok(TreeWalk {
            root: root.to_path_buf(),
            root_pending: true,
            root_dev: meta.dev(),
            one_file_system,
            filter,
            stack: Vec::new(),
            deferred: None,
        })
    }

    fn push_dir(&mut self, rel: ByteName, abs: PathBuf) -> Option<Event> {
        match list(&abs) {
            Ok(names) => {
                self.stack.push(Frame {
                    rel,
                    abs,
                    names: names.into_iter(),
                });
                None
            }
            Err(error) => Some(Event::Error { path: rel, error }),
        }
    }
}

fn list(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        names.push(e?.file_name().into_vec());
    }
    names.sort_unstable();
    Ok(names)
}

impl Iterator for TreeWalk {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if let Some(e) = self.deferred.take() {
            return Some(e);
        }
        if self.root_pending {
            self.root_pending = false;
            let meta = match std::fs::symlink_metadata(&self.root) {
                Ok(m) => m,
                Err(error) => {
                    return Some(Event::Error {
                        path: ByteName::default(),
                        error,
                    });
                }
            };
            self.deferred = self.push_dir(ByteName::default(), self.root.clone());
            return Some(Event::Item(Item {
                path: ByteName::default(),
                abs: self.root.clone(),
                meta,
            }));
        }
        loop {
            let frame = self.stack.last_mut()?;
            let Some(name) = frame.names.next() else {
                self.stack.pop();
                continue;
            };
            let rel = frame.rel.join(&name);
            let abs = frame.abs.join(std::ffi::OsStr::from_bytes(&name));
            if self.filter.excluded(&rel) {
                continue;
            }
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                // Deleted since the folder was listed: it is simply not in this snapshot.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Some(Event::Error { path: rel, error }),
            };
            if meta.is_dir() {
                if !self.one_file_system || meta.dev() == self.root_dev {
                    self.deferred = self.push_dir(rel.clone(), abs.clone());
                }
            } else if !self.filter.included(&rel) {
                continue;
            }
            return Some(Event::Item(Item {
                path: rel,
                abs,
                meta,
            }));
        }
    }
}

/// The files of a config job: absolute paths and globs, expanded, sorted in manifest order;
/// paths are stored relative to `/`.
pub struct ListWalk {
    items: std::vec::IntoIter<(ByteName, PathBuf, bool)>,
}

impl ListWalk {
    /// Expands globs (a glob matching nothing and a missing plain path are both `Missing`).
    pub fn new(paths: &[String]) -> ListWalk {
        let mut found: Vec<(ByteName, PathBuf, bool)> = Vec::new();
        for p in paths {
            if pattern::is_glob(p) {
                let mut any = false;
                if let Ok(glob) = pattern::PathGlob::new(p) {
                    for m in glob.expand() {
                        any = true;
                        found.push((rel_of(&m), m, true));
                    }
                }
                if !any {
                    found.push((ByteName(p.trim_start_matches('/').into()), p.into(), false));
                }
            } else {
                let path = PathBuf::from(p);
                found.push((rel_of(&path), path, true));
            }
        }
        found.sort_by(|a, b| compare(a.0.as_bytes(), b.0.as_bytes()));
        found.dedup_by(|a, b| a.0 == b.0);
        ListWalk {
            items: found.into_iter(),
        }
    }
}

fn rel_of(p: &Path) -> ByteName {
    let bytes = p.as_os_str().as_bytes();
    let trimmed: Vec<u8> = bytes
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect::<Vec<_>>()
        .join(&b'/');
    ByteName(trimmed)
}

impl Iterator for ListWalk {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let (rel, abs, exists) = self.items.next()?;
        if !exists {
            return Some(Event::Missing { path: rel });
        }
        Some(match std::fs::symlink_metadata(&abs) {
            Ok(meta) if meta.is_dir() => Event::Error {
                path: rel,
                error: io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "a folder in a config job's paths (list files or globs)",
                ),
            },
            Ok(meta) => Event::Item(Item {
                path: rel,
                abs,
                meta,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Event::Missing { path: rel },
            Err(error) => Event::Error { path: rel, error },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a config job's paths expand to, relative to `root`: `name` for a file, `name/` for a
    /// folder (an error in a config job), `!name` for a glob or path that matched nothing.
    fn expand(root: &Path, patterns: &[&str]) -> Vec<String> {
        let prefix = rel_of(root).0;
        let full: Vec<String> = patterns
            .iter()
            .map(|p| format!("{}/{p}", root.display()))
            .collect();
        ListWalk::new(&full)
            .map(|ev| {
                let (path, mark) = match ev {
                    Event::Item(i) => (i.path, ""),
                    Event::Error { path, .. } => (path, "/"),
                    Event::Missing { path } => (path, "!"),
                };
                let rel = String::from_utf8(path.0[prefix.len() + 1..].to_vec()).unwrap();
                if mark == "!" {
                    format!("!{rel}")
                } else {
                    format!("{rel}{mark}")
                }
            })
            .collect()
    }

    /// The matching rules of a config job's `paths`, pinned on a tree (they are per path
    /// component: `*`, `?` and `[..]` never cross `/`, `**` alone is any number of folders,
    /// dot files are matched by `*`, names are case-sensitive).
    #[test]
    fn config_path_globs_match_per_component() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "a.conf",
            ".hidden.conf",
            "b.txt",
            "A.CONF",
            "x1.conf",
            "x2.conf",
            "xa.conf",
            "sub/c.conf",
            "sub/deep/e.conf",
            ".dot/f.conf",
            "other/c.conf",
            "other/g.txt",
        ] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        let e = |p: &[&str]| expand(d, p);
        assert_eq!(
            e(&["*.conf"]),
            [".hidden.conf", "a.conf", "x1.conf", "x2.conf", "xa.conf"]
        );
        assert_eq!(e(&["*/c.conf"]), ["other/c.conf", "sub/c.conf"]);
        assert_eq!(e(&["s*/*.conf"]), ["sub/c.conf"]);
        assert_eq!(
            e(&["**/*.conf"]),
            [
                ".dot/f.conf",
                ".hidden.conf",
                "a.conf",
                "other/c.conf",
                "sub/c.conf",
                "sub/deep/e.conf",
                "x1.conf",
                "x2.conf",
                "xa.conf",
            ]
        );
        assert_eq!(e(&["**/c.conf"]), ["other/c.conf", "sub/c.conf"]);
        assert_eq!(e(&["sub/**/e.conf"]), ["sub/deep/e.conf"]);
        assert_eq!(e(&["x?.conf"]), ["x1.conf", "x2.conf", "xa.conf"]);
        assert_eq!(e(&["x[12].conf"]), ["x1.conf", "x2.conf"]);
        assert_eq!(e(&["x[0-9].conf"]), ["x1.conf", "x2.conf"]);
        assert_eq!(e(&["x[!1].conf"]), ["x2.conf", "xa.conf"]);
        assert_eq!(e(&["[A]*"]), ["A.CONF"]);
        assert_eq!(e(&["*.CONF"]), ["A.CONF"]);
        assert_eq!(e(&["nothing*.conf"]), ["!nothing*.conf"]);
        assert_eq!(e(&["none/*.conf"]), ["!none/*.conf"]);
        assert_eq!(e(&["missing.conf"]), ["!missing.conf"]);
        // Duplicates from overlapping patterns are kept once; a plain path stays as given.
        assert_eq!(e(&["a.conf", "a.*", "b.txt"]), ["a.conf", "b.txt"]);
        // A folder matched by a glob is reported (a config job keeps files only).
        assert_eq!(e(&["s*"]), ["sub/"]);
        assert_eq!(e(&["sub/*"]), ["sub/c.conf", "sub/deep/"]);
        // A trailing `**` is the folders below (none of the files), not the folder itself.
        assert_eq!(e(&["sub/**"]), ["sub/deep/"]);
        assert_eq!(e(&["**"]), [".dot/", "other/", "sub/", "sub/deep/"]);
        // `^` is no negation (only `!` is); `**` inside a name is invalid (matches nothing).
        assert_eq!(e(&["x[^1].conf"]), ["x1.conf"]);
        assert_eq!(e(&["s**"]), ["!s**"]);
    }
}
