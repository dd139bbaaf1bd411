//! Tar headers, written by us (tar is only framing: restores take paths and metadata from the
//! manifest). GNU format: `././@LongLink` entries (`L`, `K`) carry names and link targets longer
//! than 100 bytes as raw bytes (non-UTF-8 safe); numbers too large for octal fields use GNU
//! base-256. GNU tar, bsdtar and busybox tar read these, so `age -d | zstd -d | tar -x` works.

/// Tar block size.
pub const BLOCK: usize = 512;

/// The entry types we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarKind {
    File,
    Dir,
    Symlink,
    HardLink,
}

impl TarKind {
    fn flag(self) -> u8 {
        match self {
            TarKind::File => b'0',
            TarKind::HardLink => b'1',
            TarKind::Symlink => b'2',
            TarKind::Dir => b'5',
        }
    }
}

/// What one header describes.
pub struct HeaderInfo<'a> {
    pub name: &'a [u8],
    pub kind: TarKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub user: Option<&'a str>,
    pub group: Option<&'a str>,
    pub link: &'a [u8],
}

/// Bytes of padding after `size` content bytes.
pub fn padding(size: u64) -> usize {
    let rem = (size % BLOCK as u64) as usize;
    if rem == 0 { 0 } else { BLOCK - rem }
}

/// The whole tar size of an entry with `size` content bytes (headers excluded).
pub fn padded(size: u64) -> u64 {
    size + padding(size) as u64
}

fn numeric(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits < 22 && value >= 1u64 << (3 * digits) {
        // GNU base-256: high bit set, big-endian value in the rest of the field.
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = field.len();
        let take = bytes.len().min(n - 1);
        field[n - take..].copy_from_slice(&bytes[bytes.len() - take..]);
        field[0] |= 0x80;
    } else {
        let s = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    }
}

fn text(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn block(h: &HeaderInfo<'_>, flag: u8, size: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    text(&mut b[0..100], h.name);
    numeric(&mut b[100..108], u64::from(h.mode & 0o7777));
    numeric(&mut b[108..116], h.uid);
    numeric(&mut b[116..124], h.gid);
    numeric(&mut b[124..136], size);
    numeric(&mut b[136..148], h.mtime.max(0) as u64);
    b[156] = flag;
    text(&mut b[157..257], h.link);
    b[257..263].copy_from_slice(b"ustar ");
    b[263..265].copy_from_slice(b" \0");
    text(&mut b[265..297], h.user.unwrap_or("").as_bytes());
    text(&mut b[297..329], h.group.unwrap_or("").as_bytes());
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let s = format!("{sum:06o}");
    b[148..154].copy_from_slice(s.as_bytes());
    b[154] = 0;
    b[155] = b' ';
    b
}

fn long_link(out: &mut Vec<u8>, flag: u8, value: &[u8]) {
    let size = value.len() as u64 + 1;
    let h = HeaderInfo {
        name: b"././@LongLink",
        kind: TarKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size,
        mtime: 0,
        user: Some("root"),
        group: Some("root"),
        link: b"",
    };
    out.extend_from_slice(&block(&h, flag, size));
    out.extend_from_slice(value);
    out.push(0);
    out.resize(out.len() + padding(size), 0);
}

/// Appends the header block(s) of one entry to `out` (content and padding are the caller's).
pub fn write_header(out: &mut Vec<u8>, h: &HeaderInfo<'_>) {
    if h.name.len() > 100 {
        long_link(out, b'L', h.name);
    }
    if h.link.len() > 100 {
        long_link(out, b'K', h.link);
    }
    let size = if h.kind == TarKind::File { h.size } else { 0 };
    out.extend_from_slice(&block(h, h.kind.flag(), size));
}

/// The end-of-archive marker (two zero blocks).
pub fn end_of_archive(out: &mut Vec<u8>) {
    out.resize(out.len() + 2 * BLOCK, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_base256() {
        let mut f = [0u8; 12];
        numeric(&mut f, 0o755);
        assert_eq!(&f, b"00000000755\0");
        numeric(&mut f, 1 << 40);
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f[4..].try_into().unwrap()), 1 << 40);
        let mut out = Vec::new();
        write_header(
            &mut out,
            &HeaderInfo {
                name: &[b'x'; 150],
                kind: TarKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: 3,
                mtime: 1,
                user: None,
                group: None,
                link: b"",
            },
        );
        assert_eq!(out.len(), 3 * BLOCK);
        assert_eq!(out[156], b'L');
    }
}
