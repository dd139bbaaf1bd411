//! Paths as bytes: a snapshot never converts a file name to a string lossily. In JSON a name is a
//! string when it is valid UTF-8 and `{"hex": "…"}` otherwise. Relative snapshot paths use `/`
//! between components; the root of a snapshot is the empty path. Ordering is component-wise
//! (the order of a depth-first walk with each folder's names sorted by bytes), which is the order
//! of every manifest.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A name or path as raw bytes.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ByteName(pub Vec<u8>);

impl std::fmt::Debug for ByteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl ByteName {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    pub fn as_path(&self) -> &Path {
        Path::new(self.as_os_str())
    }

    /// For messages only: escapes what is not printable UTF-8 (never used to name files).
    pub fn display(&self) -> String {
        self.0.escape_ascii().to_string()
    }

    /// The path joined with one more component.
    pub fn join(&self, name: &[u8]) -> ByteName {
        if self.0.is_empty() {
            return ByteName(name.to_vec());
        }
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        v.push(b'/');
        v.extend_from_slice(name);
        ByteName(v)
    }

    /// Components of a relative path (the root has none).
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// The parent path and the last component (None for the root).
    pub fn split_last(&self) -> Option<(ByteName, &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some((ByteName(self.0[..i].to_vec()), &self.0[i + 1..])),
            None => Some((ByteName::default(), &self.0[..])),
        }
    }

    /// True if `self` is `other` or lies beneath it (component-wise).
    pub fn is_within(&self, other: &ByteName) -> bool {
        if other.0.is_empty() {
            return true;
        }
        self.0.starts_with(&other.0)
            && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/')
    }
}

/// Component-wise order: the order of a sorted depth-first walk (a folder before its contents,
/// `a/b` before `a-c` because `a` < `a-c`).
pub fn compare(a: &[u8], b: &[u8]) -> Ordering {
    let mut ai = a.split(|&c| c == b'/');
    let mut bi = b.split(|&c| c == b'/');
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len()).then(Ordering::Equal);
    }
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Equal => continue,
                other => return other,
            },
        }
    }
}

/// Why a manifest path is refused at restore time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    #[error("absolute path")]
    Absolute,
    #[error("`..` or `.` component")]
    DotComponent,
    #[error("empty component")]
    EmptyComponent,
    #[error("NUL byte")]
    Nul,
}

/// Checks a relative manifest path: no leading `/`, no `.`/`..`/empty components, no NUL.
/// The empty path (the snapshot's root) is allowed.
pub fn check_relative(p: &[u8]) -> Result<(), UnsafePath> {
    if p.is_empty() {
        return Ok(());
    }
    if p[0] == b'/' {
        return Err(UnsafePath::Absolute);
    }
    if p.contains(&0) {
        return Err(UnsafePath::Nul);
    }
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" => return Err(UnsafePath::EmptyComponent),
            b"." | b".." => return Err(UnsafePath::DotComponent),
            _ => {}
        }
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for ByteName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Repr::Hex {
                hex: hex::encode(&self.0),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ByteName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(ByteName(t.into_bytes())),
            Repr::Hex { hex } => hex::decode(hex)
                .map(ByteName)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_walk_order() {
        let mut v: Vec<&[u8]> = vec![b"a-c", b"a/b", b"a", b"", b"b", b"a/b/c", b"a/a"];
        v.sort_by(|a, b| compare(a, b));
        let want: Vec<&[u8]> = vec![b"", b"a", b"a/a", b"a/b", b"a/b/c", b"a-c", b"b"];
        assert_eq!(v, want);
    }

    #[test]
    fn json_keeps_bytes() {
        for raw in [
            &b"plain/name"[..],
            b"caf\xc3\xa9",
            b"bad\xff\xfename",
            b"new\nline",
        ] {
            let n = ByteName(raw.to_vec());
            let json = serde_json::to_string(&n).unwrap();
            let back: ByteName = serde_json::from_str(&json).unwrap();
            assert_eq!(back, n, "{json}");
        }
        let j = serde_json::to_string(&ByteName(b"\xff".to_vec())).unwrap();
        assert_eq!(j, r#"{"hex":"ff"}"#);
    }

    #[test]
    fn unsafe_paths() {
        assert_eq!(check_relative(b"../x"), Err(UnsafePath::DotComponent));
        assert_eq!(check_relative(b"a/../../x"), Err(UnsafePath::DotComponent));
        assert_eq!(check_relative(b"/etc/passwd"), Err(UnsafePath::Absolute));
        assert_eq!(check_relative(b"a//b"), Err(UnsafePath::EmptyComponent));
        assert_eq!(check_relative(b"a/\0"), Err(UnsafePath::Nul));
        assert!(check_relative(b"a/b c/\xff").is_ok());
        assert!(ByteName(b"a/b".to_vec()).is_within(&ByteName(b"a".to_vec())));
        assert!(!ByteName(b"ab".to_vec()).is_within(&ByteName(b"a".to_vec())));
    }
}
