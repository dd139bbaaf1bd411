//! A config job's path globs, matched one path component at a time: `*`, `?` and `[..]` stay
//! inside one name (`[!..]` negates; `^`, `{` and `}` are ordinary characters), `**` alone is
//! any number of folders, `*` matches dot files, names are case-sensitive. Expansion walks only
//! the folders a component can match; the same walk tells the watcher which folders to watch.
//! Each wildcard component is a [`globset`] matcher (the crate of the `files` job's globs).

use globset::{GlobBuilder, GlobMatcher};
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether a configured path is a glob (else a plain path).
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// A pattern that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("`**` must be a whole path component (as in `a/**/b`), not part of `{0}`")]
    Recursive(String),
    #[error("{0}")]
    Glob(#[source] globset::Error),
}

impl crate::error::Classify for PatternError {
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Permanent
    }
}

#[derive(Debug, Clone)]
enum Comp {
    Literal(OsString),
    Wild(GlobMatcher),
    /// `**`: zero or more folders (trailing: the folders below, not the files).
    Recursive,
}

/// A parsed path glob (a plain path parses too: its last component is a literal).
#[derive(Debug, Clone)]
pub struct PathGlob {
    /// The literal folders before the first wildcard (or before the last component).
    base: PathBuf,
    /// At least one.
    comps: Vec<Comp>,
}

/// What one walk of a pattern found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Existing paths the pattern matches, sorted, once each.
    pub matches: Vec<PathBuf>,
    /// The folders whose entries decide the matches (watch these to see new matches), sorted,
    /// once each; when the literal base does not exist yet, its deepest existing ancestor.
    pub folders: Vec<PathBuf>,
}

fn component(c: &str) -> Result<Comp, PatternError> {
    if c == "**" {
        return Ok(Comp::Recursive);
    }
    if c.contains("**") {
        return Err(PatternError::Recursive(c.to_string()));
    }
    if !is_glob(c) {
        return Ok(Comp::Literal(c.into()));
    }
    let glob = GlobBuilder::new(&globset_text(c))
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map_err(PatternError::Glob)?;
    Ok(Comp::Wild(glob.compile_matcher()))
}

/// One component in globset's syntax with these rules: `{` and `}` are ordinary characters
/// (globset would read alternatives), and `^` first in a class is a member (globset would read a
/// negation), so it moves to the end of the class.
fn globset_text(c: &str) -> String {
    let chars: Vec<char> = c.chars().collect();
    let mut out = String::with_capacity(c.len() + 4);
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '[' => {
                let bang = chars.get(i + 1) == Some(&'!');
                let start = i + 1 + usize::from(bang);
                // The first member may be `]`.
                let mut j = start + 1;
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    // Not closed: globset says so.
                    out.extend(&chars[i..]);
                    break;
                }
                let members = &chars[start..j];
                match members {
                    ['^'] if !bang => out.push('^'),
                    ['^', rest @ ..] => {
                        out.push('[');
                        if bang {
                            out.push('!');
                        }
                        out.extend(rest);
                        out.push_str("^]");
                    }
                    _ => {
                        out.push('[');
                        if bang {
                            out.push('!');
                        }
                        out.extend(members);
                        out.push(']');
                    }
                }
                i = j + 1;
            }
            ch @ ('{' | '}') => {
                out.push('[');
                out.push(ch);
                out.push(']');
                i += 1;
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

impl PathGlob {
    /// Parses `pattern` (absolute in a catalogue; a relative one is taken from the current
    /// folder).
    ///
    /// # Errors
    /// An invalid wildcard component.
    pub fn new(pattern: &str) -> Result<PathGlob, PatternError> {
        let mut base = PathBuf::from(if pattern.starts_with('/') { "/" } else { "" });
        let mut comps = Vec::new();
        for c in pattern.split('/').filter(|c| !c.is_empty()) {
            let comp = component(c)?;
            if matches!(comp, Comp::Recursive) && matches!(comps.last(), Some(Comp::Recursive)) {
                continue;
            }
            comps.push(comp);
        }
        // Fold the leading literals (all but the last component) into the base.
        let literal = comps
            .iter()
            .take(comps.len().saturating_sub(1))
            .take_while(|c| matches!(c, Comp::Literal(_)))
            .count();
        for c in comps.drain(..literal) {
            if let Comp::Literal(name) = c {
                base.push(name);
            }
        }
        if comps.is_empty() {
            comps.push(Comp::Literal(".".into()));
        }
        Ok(PathGlob { base, comps })
    }

    /// Walks the file system: what matches now and which folders decide it.
    pub fn resolve(&self) -> Resolved {
        let mut out = Resolved::default();
        if is_dir(&self.base) {
            let mut seen = HashSet::new();
            self.step(&self.base, 0, &mut out, &mut seen);
        } else {
            let mut up = self.base.as_path();
            while let Some(parent) = up.parent() {
                if is_dir(parent) {
                    out.folders.push(parent.to_path_buf());
                    break;
                }
                up = parent;
            }
        }
        out.matches.sort();
        out.matches.dedup();
        out.folders.sort();
        out.folders.dedup();
        out
    }

    /// The existing paths the pattern matches, sorted.
    pub fn expand(&self) -> Vec<PathBuf> {
        self.resolve().matches
    }

    /// `path` has matched the components before `i` and exists.
    fn step(&self, path: &Path, i: usize, out: &mut Resolved, seen: &mut HashSet<(u64, u64)>) {
        let Some(comp) = self.comps.get(i) else {
            out.matches.push(path.to_path_buf());
            return;
        };
        if !is_dir(path) {
            return;
        }
        out.folders.push(path.to_path_buf());
        match comp {
            Comp::Literal(name) => {
                let next = path.join(name);
                if std::fs::symlink_metadata(&next).is_ok() {
                    self.step(&next, i + 1, out, seen);
                }
            }
            Comp::Wild(m) => {
                for (name, next) in entries(path) {
                    if m.is_match(Path::new(&name)) {
                        self.step(&next, i + 1, out, seen);
                    }
                }
            }
            Comp::Recursive => {
                let trailing = i + 1 == self.comps.len();
                if !trailing {
                    self.step(path, i + 1, out, seen);
                }
                // Folders are followed through symlinks, each real folder once.
                if let Ok(meta) = std::fs::metadata(path)
                    && !seen.insert((meta.dev(), meta.ino()))
                {
                    return;
                }
                for (_, next) in entries(path) {
                    if is_dir(&next) {
                        if trailing {
                            out.matches.push(next.clone());
                        }
                        // `next` has matched `**` too: go on with `**` below it.
                        self.step(&next, i, out, seen);
                    }
                }
            }
        }
    }

    /// Whether `path` (which need not exist) matches, by its components.
    pub fn matches(&self, path: &Path) -> bool {
        let Ok(rest) = path.strip_prefix(&self.base) else {
            return false;
        };
        let names: Vec<&OsStr> = rest.iter().collect();
        self.match_from(0, &names)
    }

    fn match_from(&self, i: usize, names: &[&OsStr]) -> bool {
        let Some(comp) = self.comps.get(i) else {
            return names.is_empty();
        };
        match comp {
            Comp::Recursive if i + 1 == self.comps.len() => !names.is_empty(),
            Comp::Recursive => (0..=names.len()).any(|k| self.match_from(i + 1, &names[k..])),
            _ if names.is_empty() => false,
            Comp::Literal(n) => n.as_os_str() == names[0] && self.match_from(i + 1, &names[1..]),
            Comp::Wild(m) => m.is_match(Path::new(names[0])) && self.match_from(i + 1, &names[1..]),
        }
    }
}

fn is_dir(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_dir())
}

/// A folder's entries sorted by name (unreadable entries and folders are skipped, as before).
fn entries(dir: &Path) -> Vec<(OsString, PathBuf)> {
    let mut v: Vec<(OsString, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| (e.file_name(), e.path())).collect(),
        Err(_) => Vec::new(),
    };
    v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_patterns_are_refused() {
        assert!(matches!(
            PathGlob::new("/a/s**"),
            Err(PatternError::Recursive(_))
        ));
        assert!(matches!(
            PathGlob::new("/a/**x/b"),
            Err(PatternError::Recursive(_))
        ));
        assert!(matches!(PathGlob::new("/a/[x"), Err(PatternError::Glob(_))));
        assert!(PathGlob::new("/a/**/**/b[!c]?.conf").is_ok());
    }

    #[test]
    fn matching_by_components() {
        let g = PathGlob::new("/app/*/x.conf").unwrap();
        assert!(g.matches(Path::new("/app/one/x.conf")));
        assert!(g.matches(Path::new("/app/.dot/x.conf")));
        assert!(!g.matches(Path::new("/app/x.conf")));
        assert!(!g.matches(Path::new("/app/a/b/x.conf")));
        assert!(!g.matches(Path::new("/other/a/x.conf")));
        let g = PathGlob::new("/app/**/x.conf").unwrap();
        assert!(g.matches(Path::new("/app/x.conf")));
        assert!(g.matches(Path::new("/app/a/b/x.conf")));
        assert!(!g.matches(Path::new("/app/a/b/y.conf")));
        let g = PathGlob::new("/app/x[^1]").unwrap();
        assert!(g.matches(Path::new("/app/x1")) && g.matches(Path::new("/app/x^")));
        assert!(!g.matches(Path::new("/app/x2")));
        let g = PathGlob::new("/app/*{a,b}[{]").unwrap();
        assert!(g.matches(Path::new("/app/x{a,b}{")));
        assert!(!g.matches(Path::new("/app/xa{")));
        let g = PathGlob::new("/app/[!^]x[^]").unwrap();
        assert!(g.matches(Path::new("/app/ax^")));
        assert!(!g.matches(Path::new("/app/^x^")));
        let g = PathGlob::new("/app/[]a]*").unwrap();
        assert!(g.matches(Path::new("/app/]z")) && g.matches(Path::new("/app/a")));
        assert!(!g.matches(Path::new("/app/b")));
        let g = PathGlob::new("/etc/app/.env").unwrap();
        assert!(g.matches(Path::new("/etc/app/.env")));
        assert!(!g.matches(Path::new("/etc/app/.envx")));
    }

    #[test]
    fn folders_to_watch() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("app/one")).unwrap();
        std::fs::create_dir_all(d.join("app/two/deeper")).unwrap();
        std::fs::write(d.join("app/one/x.conf"), b"1").unwrap();
        std::fs::write(d.join("app/notdir"), b"1").unwrap();
        let g = PathGlob::new(&format!("{}/app/*/x.conf", d.display())).unwrap();
        let r = g.resolve();
        assert_eq!(r.matches, [d.join("app/one/x.conf")]);
        assert_eq!(
            r.folders,
            [d.join("app"), d.join("app/one"), d.join("app/two")]
        );
        // A base that does not exist yet: its deepest existing ancestor.
        let g = PathGlob::new(&format!("{}/later/sub/*/x.conf", d.display())).unwrap();
        assert_eq!(g.resolve().folders, [d.to_path_buf()]);
        let g = PathGlob::new(&format!("{}/app/**/x.conf", d.display())).unwrap();
        let r = g.resolve();
        assert_eq!(r.matches, [d.join("app/one/x.conf")]);
        assert_eq!(
            r.folders,
            [
                d.join("app"),
                d.join("app/one"),
                d.join("app/two"),
                d.join("app/two/deeper")
            ]
        );
    }
}
