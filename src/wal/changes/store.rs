//! Segment summaries on disk: one file per segment under
//! `<state-directory>/wal-changes/<system-identifier>/<segment name>`, written once (a temporary
//! file renamed into place, no fsync: a summary lost in a crash is only a slower incremental),
//! checked by an XXH3 of its content when read; pruned below the newest base backup's start.

use super::{Changes, ChangesError, ForkChanges, RelFork, SegmentChanges, Tail};
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BDCWCS1\n";

/// The folder of a cluster's summaries.
pub fn cluster_dir(state_dir: &Path, system_identifier: u64) -> PathBuf {
    state_dir
        .join("wal-changes")
        .join(system_identifier.to_string())
}

/// The file's bytes.
pub fn encode(s: &SegmentChanges) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        64 + s.head.len()
            + s.changes
                .forks
                .values()
                .map(|f| 24 + 4 * f.blocks.len())
                .sum::<usize>(),
    );
    let u32s = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&s.magic.to_le_bytes());
    u32s(&mut b, s.head_remaining);
    u32s(&mut b, s.head.len() as u32);
    b.extend_from_slice(&s.head);
    u32s(&mut b, s.end_remaining);
    match &s.tail {
        Some(t) => {
            b.push(1);
            u32s(&mut b, t.total);
            u32s(&mut b, t.bytes.len() as u32);
            b.extend_from_slice(&t.bytes);
        }
        None => b.push(0),
    }
    let opaque = s.changes.opaque.as_deref().unwrap_or("");
    u32s(&mut b, opaque.len() as u32);
    b.extend_from_slice(opaque.as_bytes());
    let mut forks: Vec<_> = s.changes.forks.iter().collect();
    forks.sort_by_key(|(k, _)| **k);
    u32s(&mut b, forks.len() as u32);
    for (k, f) in forks {
        u32s(&mut b, k.spc);
        u32s(&mut b, k.db);
        u32s(&mut b, k.rel);
        b.push(k.fork);
        b.push(u8::from(f.created));
        u32s(&mut b, f.truncated.map_or(u32::MAX, |t| t));
        b.push(u8::from(f.truncated.is_some()));
        u32s(&mut b, f.blocks.len() as u32);
        for blk in &f.blocks {
            u32s(&mut b, *blk);
        }
    }
    let sum = twox_hash::XxHash3_128::oneshot(&b).to_le_bytes();
    b.extend_from_slice(&sum);
    b
}

/// Reads a file's bytes back; None when they are not a whole summary.
pub fn decode(bytes: &[u8]) -> Option<SegmentChanges> {
    if bytes.len() < MAGIC.len() + 16 || &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 16);
    if twox_hash::XxHash3_128::oneshot(body).to_le_bytes() != sum {
        return None;
    }
    let mut r = Reader {
        b: body,
        at: MAGIC.len(),
    };
    let magic = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
    let head_remaining = r.u32()?;
    let n = r.u32()? as usize;
    let head = r.take(n)?.to_vec();
    let end_remaining = r.u32()?;
    let tail = match r.take(1)?[0] {
        1 => {
            let total = r.u32()?;
            let n = r.u32()? as usize;
            Some(Tail {
                bytes: r.take(n)?.to_vec(),
                total,
            })
        }
        _ => None,
    };
    let n = r.u32()? as usize;
    let opaque = String::from_utf8(r.take(n)?.to_vec()).ok()?;
    let mut changes = Changes {
        forks: Default::default(),
        opaque: (!opaque.is_empty()).then_some(opaque),
    };
    let forks = r.u32()?;
    for _ in 0..forks {
        let (spc, db, rel) = (r.u32()?, r.u32()?, r.u32()?);
        let fork = r.take(1)?[0];
        let created = r.take(1)?[0] == 1;
        let truncated = r.u32()?;
        let truncated = (r.take(1)?[0] == 1).then_some(truncated);
        let n = r.u32()? as usize;
        let raw = r.take(n.checked_mul(4)?)?;
        let blocks = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        changes.forks.insert(
            RelFork { spc, db, rel, fork },
            ForkChanges {
                created,
                truncated,
                blocks,
            },
        );
    }
    (r.at == body.len()).then_some(SegmentChanges {
        magic,
        changes,
        head_remaining,
        head,
        end_remaining,
        tail,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// Writes a segment's summary (blocking). An existing one is replaced: it describes the same
/// WAL.
pub fn save(dir: &Path, name: &str, s: &SegmentChanges) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&encode(s))?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A segment's summary: Ok(None) when there is none, Err when it cannot be read or is damaged.
pub fn load(dir: &Path, name: &str) -> Result<Option<SegmentChanges>, String> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .ok_or_else(|| format!("{} is damaged", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Removes the summaries of segments before `name`'s position (any timeline; blocking).
/// Returns how many were removed.
pub fn prune_before(dir: &Path, name: &super::super::WalName) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(n) = file.to_str().and_then(super::super::WalName::parse) else {
            continue;
        };
        if n.position() < name.position() && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Summarizes a segment file of `pg_wal` (blocking), up to `stop` when given.
pub fn summarize_file(
    path: &Path,
    start: u64,
    segment_size: u64,
    stop: Option<u64>,
) -> Result<SegmentChanges, String> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut s = super::Summarizer::new(start, segment_size);
    if let Some(stop) = stop {
        s = s.stop_at(stop);
    }
    let mut buf = vec![0u8; 1 << 20];
    while !s.done() {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        s.feed(&buf[..n]);
    }
    s.finish()
        .map_err(|e: ChangesError| format!("{}: {e}", path.display()))
}
