//! The shipped `.partial` segment of WAL streaming (docs/design.md §5, issue 12): the one object
//! of the archive that a newer one replaces. It is stored like every archived file, under
//! `<segment>.partial-<sha256>` (the plaintext hash in the key, so readers check it); a newer
//! copy is written under its own hash first, then the older ones are deleted — so a reader finds
//! one copy, or for a moment two, both valid prefixes of the same segment (it takes the one with
//! the most WAL). `wal-fetch --use-partial` serves it in place of a segment only when that
//! segment is the very last of the newest timeline: never where a complete segment exists, and
//! never on an older timeline ([`may_serve`]).
//!
//! Only the written prefix is shipped ([`SpoolPartial`]): pg_receivewal pre-sizes the file with
//! zeros and writes WAL from its start, so the object holds the bytes up to the receiver's write
//! position (its length is the object's plaintext length, the key's hash is of those bytes), and
//! readers pad it back to the segment size of its long header ([`pad_partial`]) — PostgreSQL wants
//! full-size segment files. Objects of older versions hold the whole padded file; padding leaves
//! them as they are.

use super::fetch::{CALL_TIMEOUT, FetchError, Fetched, decode_object};
use super::format::{file_prefix, object_key, parse_object_key};
use super::header::{ClusterIdentity, LONG_HEADER_LEN, WalHeader};
use super::name::{WalKind, WalName};
use super::push::{PushError, SealedWal, bounded};
use crate::pipeline::Identities;
use crate::repository::{Repository, StoreError};
use sha2::{Digest, Sha256};
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

mod sealer;
pub use sealer::{PARTIAL_FRAME, PartialSealer};

fn store_err(repo: &Repository) -> impl FnOnce(StoreError) -> PushError + '_ {
    move |source| PushError::Store {
        repository: repo.name.clone(),
        source: Box::new(source),
    }
}

/// The `.partial` name of a segment (`<segment>.partial`).
pub fn partial_of(segment: &WalName) -> Option<WalName> {
    (segment.kind == WalKind::Segment)
        .then(|| WalName::parse(&format!("{}.partial", segment.name)))
        .flatten()
}

/// Writes a sealed `.partial` into `repo` under its hash (durable on return), then deletes every
/// other copy of that `.partial` there. Returns the key written.
pub async fn store_partial(
    repo: &Repository,
    cluster: &ClusterIdentity,
    wal: &SealedWal,
    limit: Duration,
) -> Result<String, PushError> {
    debug_assert_eq!(wal.name.kind, WalKind::Partial);
    let key = object_key(cluster, &wal.name, &wal.sha256);
    let write = async {
        let mut w = repo.store.writer_unlimited(&key).await?;
        w.write(wal.object.clone()).await?;
        w.finish().await
    };
    match tokio::time::timeout(limit, write).await {
        Err(_) => {
            return Err(PushError::TimedOut {
                repository: repo.name.clone(),
                action: format!("storing {}", wal.name),
                after: limit,
            });
        }
        // This very content is there already.
        Ok(Ok(_)) | Ok(Err(StoreError::AlreadyExists { .. })) => {}
        Ok(Err(e)) => return Err(store_err(repo)(e)),
    }
    remove_partials(repo, cluster, &wal.name, Some(&wal.sha256), limit).await?;
    Ok(key)
}

/// Deletes the copies of the `.partial` `name` in `repo`, except the one of hash `keep`.
/// Returns how many were deleted.
pub async fn remove_partials(
    repo: &Repository,
    cluster: &ClusterIdentity,
    name: &WalName,
    keep: Option<&str>,
    limit: Duration,
) -> Result<usize, PushError> {
    let prefix = file_prefix(cluster, name);
    let listed = bounded(
        &repo.name,
        &format!("listing {prefix}"),
        limit,
        repo.store.list(&prefix),
        store_err(repo),
    )
    .await?;
    let mut deleted = 0;
    for m in listed {
        let Some(k) = parse_object_key(&m.key) else {
            continue;
        };
        if k.name != *name || k.identity != *cluster || Some(k.sha256.as_str()) == keep {
            continue;
        }
        match bounded(
            &repo.name,
            &format!("deleting {}", m.key),
            limit,
            repo.store.delete(&m.key),
            store_err(repo),
        )
        .await
        {
            Ok(()) => deleted += 1,
            Err(PushError::Store { source, .. })
                if matches!(*source, StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// What the archive of one cluster holds at its end: the newest timeline (of any file) and, on
/// it, the newest complete segment and the newest `.partial`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveEnd {
    pub newest_timeline: u32,
    pub last_segment: Option<WalName>,
    pub last_partial: Option<WalName>,
}

impl ArchiveEnd {
    /// From the archived names of one cluster.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a WalName>) -> ArchiveEnd {
        let names: Vec<&WalName> = names.into_iter().collect();
        let newest_timeline = names.iter().map(|n| n.timeline).max().unwrap_or(0);
        let newest = |kind: WalKind| {
            names
                .iter()
                .filter(|n| n.kind == kind && n.timeline == newest_timeline)
                .max_by_key(|n| n.position())
                .map(|n| (*n).clone())
        };
        ArchiveEnd {
            newest_timeline,
            last_segment: newest(WalKind::Segment),
            last_partial: newest(WalKind::Partial),
        }
    }

    /// The `.partial` past the last complete segment of the newest timeline, if there is one:
    /// the WAL that only `--use-partial` replays.
    pub fn partial_beyond(&self) -> Option<&WalName> {
        let p = self.last_partial.as_ref()?;
        match &self.last_segment {
            Some(s) if s.position() >= p.position() => None,
            _ => Some(p),
        }
    }
}

/// The rule of `wal-fetch --use-partial`: the `.partial` of `segment` may stand in for it only
/// if `segment` is on the newest timeline and no complete segment at or past it is archived.
pub fn may_serve(segment: &WalName, end: &ArchiveEnd) -> bool {
    segment.kind == WalKind::Segment
        && segment.timeline == end.newest_timeline
        && end
            .last_segment
            .as_ref()
            .is_none_or(|s| s.position() < segment.position())
}

/// Every archived name of `cluster` in `repo` (one listing of its archive).
pub async fn archived_names(
    repo: &Repository,
    cluster: &ClusterIdentity,
    limit: Duration,
) -> Result<Vec<WalName>, PushError> {
    let prefix = super::format::archive_prefix(cluster);
    let listed = bounded(
        &repo.name,
        &format!("listing {prefix}"),
        limit,
        repo.store.list(&prefix),
        store_err(repo),
    )
    .await?;
    Ok(listed
        .iter()
        .filter_map(|m| parse_object_key(&m.key))
        .filter(|k| k.identity == *cluster)
        .map(|k| k.name)
        .collect())
}

/// The length of a segment's WAL without its zero padding (pg_receivewal pre-sizes the file).
pub fn filled_len(bytes: &[u8]) -> usize {
    // Word by word from the end: the padding is most of a young segment.
    let mut end = bytes.len();
    while end >= 8 && bytes[end - 8..end] == [0u8; 8] {
        end -= 8;
    }
    bytes[..end]
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i + 1)
}

/// A stored `.partial` (its written prefix, or the whole padded file of older versions) back to
/// the full segment file PostgreSQL expects: zero-padded to the segment size of its long header.
pub fn pad_partial(mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let header = WalHeader::parse(&bytes).map_err(|e| format!("its WAL header: {e}"))?;
    let size = header.segment_size as usize;
    if bytes.len() > size {
        return Err(format!(
            "{} bytes, more than its header's segment size {size}",
            bytes.len()
        ));
    }
    bytes.resize(size, 0);
    Ok(bytes)
}

/// The `.partial` pg_receivewal is writing, opened and checked like a pushed segment (its size
/// is its long header's segment size, the header's position is the name's, the system
/// identifier is the cluster's). It tells how much WAL it holds without reading the padding.
pub struct SpoolPartial {
    file: std::fs::File,
    name: WalName,
    segment_size: u64,
    page: u64,
}

impl SpoolPartial {
    /// Opens and checks `file` (the spool's `name`). Blocking.
    pub fn open(
        file: std::fs::File,
        name: &WalName,
        cluster: &ClusterIdentity,
    ) -> Result<SpoolPartial, PushError> {
        let read_err = |source| PushError::Read {
            name: name.name.clone(),
            source,
        };
        let size = file.metadata().map_err(read_err)?.len();
        let mut head = [0u8; LONG_HEADER_LEN];
        let got = read_full_at(&file, &mut head, 0).map_err(read_err)?;
        let header = WalHeader::parse(&head[..got]).map_err(|source| PushError::Header {
            name: name.name.clone(),
            source,
        })?;
        // The same size, position and cluster checks as a pushed segment's.
        let segment_size =
            super::seal::check_header(&head[..got], name, size, cluster)?.unwrap_or(size);
        Ok(SpoolPartial {
            file,
            name: name.clone(),
            segment_size,
            page: u64::from(header.block_size),
        })
    }

    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    fn read_err(&self, source: io::Error) -> PushError {
        PushError::Read {
            name: self.name.name.clone(),
            source,
        }
    }

    /// Whether page `i` was written: every WAL page starts with a non-zero `xlp_magic`; the
    /// pages past the receiver's write position are still zero.
    fn page_written(&self, i: u64) -> Result<bool, PushError> {
        let mut magic = [0u8; 2];
        let got =
            read_full_at(&self.file, &mut magic, i * self.page).map_err(|e| self.read_err(e))?;
        Ok(got == 2 && magic != [0, 0])
    }

    /// The bytes written so far (the receiver's write position in this segment): a binary
    /// search for the first page still zero, then the zeros of the page before it trimmed — a
    /// dozen small reads, not the segment.
    pub fn written_len(&self) -> Result<u64, PushError> {
        let pages = self.segment_size / self.page;
        // Page 0 is written (its long header was checked); find the first unwritten one.
        let (mut lo, mut hi) = (1u64, pages);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.page_written(mid)? {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let last = (lo - 1) * self.page;
        let mut buf = vec![0u8; self.page as usize];
        let got = read_full_at(&self.file, &mut buf, last).map_err(|e| self.read_err(e))?;
        Ok(last + filled_len(&buf[..got]) as u64)
    }

    /// Reads the bytes `from..len` (`len` from [`Self::written_len`]; WAL written since is not
    /// included) and checks that every page starting in them was written. If one is still zero,
    /// the file is not the append-only prefix it should be: the whole file is read instead (its
    /// zero padding trimmed) and `from` is 0. Returns (`from`, the bytes). Blocking.
    pub fn read_written(&self, from: u64, len: u64) -> Result<(u64, Vec<u8>), PushError> {
        let len = len.min(self.segment_size);
        let from = from.min(len);
        let mut buf = vec![0u8; (len - from) as usize];
        let got = read_full_at(&self.file, &mut buf, from).map_err(|e| self.read_err(e))?;
        buf.truncate(got);
        let page = self.page as usize;
        // Offset of the first page start at or after `from`.
        let skip = ((page as u64 - from % self.page) % self.page) as usize;
        let pages_ok = buf
            .get(skip..)
            .is_none_or(|b| b.chunks(page).all(|p| p.len() < 2 || p[..2] != [0, 0]));
        if pages_ok {
            return Ok((from, buf));
        }
        tracing::warn!(wal = %self.name, "a page before the write position is zero: shipping the whole file");
        let mut all = vec![0u8; self.segment_size as usize];
        let got = read_full_at(&self.file, &mut all, 0).map_err(|e| self.read_err(e))?;
        all.truncate(filled_len(&all[..got]));
        Ok((0, all))
    }

    /// The page size of its WAL.
    pub fn page_size(&self) -> u64 {
        self.page
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; the bytes read.
fn read_full_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut off = 0usize;
    while off < buf.len() {
        match file.read_at(&mut buf[off..], offset + off as u64) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}

/// Fetches the `.partial` of `segment` from `repo` when [`may_serve`] allows it: Ok(None) when
/// the rule refuses or no copy is there. Of two copies (a replacement caught half way) the one
/// with the most WAL; each is checked against the hash in its key.
pub async fn fetch_partial(
    repo: &Repository,
    cluster: &ClusterIdentity,
    segment: &WalName,
    identities: &Identities,
) -> Result<Option<Fetched>, FetchError> {
    let Some(partial) = partial_of(segment) else {
        return Ok(None);
    };
    let names = archived_names(repo, cluster, CALL_TIMEOUT).await?;
    if !may_serve(segment, &ArchiveEnd::of(names.iter())) {
        return Ok(None);
    }
    let prefix = file_prefix(cluster, &partial);
    let listed = bounded(
        &repo.name,
        &format!("listing {prefix}"),
        CALL_TIMEOUT,
        repo.store.list(&prefix),
        store_err(repo),
    )
    .await?;
    let mut best: Option<(usize, Fetched)> = None;
    for m in listed {
        let Some(k) = parse_object_key(&m.key) else {
            continue;
        };
        if k.name != partial || k.identity != *cluster {
            continue;
        }
        let stored = match tokio::time::timeout(CALL_TIMEOUT, repo.store.get(&m.key)).await {
            Err(_) => {
                return Err(PushError::TimedOut {
                    repository: repo.name.clone(),
                    action: format!("reading {}", m.key),
                    after: CALL_TIMEOUT,
                }
                .into());
            }
            // Replaced by a newer copy since the listing.
            Ok(Err(StoreError::NotFound { .. })) => continue,
            Ok(Err(e)) => return Err(store_err(repo)(e).into()),
            Ok(Ok(b)) => b,
        };
        let ids = identities.clone();
        let bytes = tokio::task::spawn_blocking(move || decode_object(&stored, &ids))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| FetchError::Corrupt {
                repository: repo.name.clone(),
                key: m.key.clone(),
                reason,
            })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != k.sha256 {
            return Err(FetchError::Corrupt {
                repository: repo.name.clone(),
                key: m.key.clone(),
                reason: format!("its content has sha256 {actual}"),
            });
        }
        let filled = filled_len(&bytes);
        let bytes = pad_partial(bytes).map_err(|reason| FetchError::Corrupt {
            repository: repo.name.clone(),
            key: m.key.clone(),
            reason,
        })?;
        if best.as_ref().is_none_or(|(f, _)| filled > *f) {
            best = Some((
                filled,
                Fetched {
                    repository: repo.name.clone(),
                    sha256: k.sha256,
                    bytes,
                },
            ));
        }
    }
    Ok(best.map(|(_, f)| f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> WalName {
        WalName::parse(s).unwrap()
    }

    #[test]
    fn the_partial_serves_only_as_the_last_segment_of_the_newest_timeline() {
        let names = [
            n("000000010000000000000003"),
            n("000000010000000000000004"),
            n("000000010000000000000005.partial"),
        ];
        let end = ArchiveEnd::of(names.iter());
        assert_eq!(end.partial_beyond(), Some(&names[2]));
        assert!(may_serve(&n("000000010000000000000005"), &end));
        // A complete segment exists: never replaced by a partial.
        assert!(!may_serve(&n("000000010000000000000004"), &end));
        // A newer timeline exists: the old timeline's partial is not its end.
        let names2 = [names[0].clone(), names[2].clone(), n("00000002.history")];
        let end2 = ArchiveEnd::of(names2.iter());
        assert!(!may_serve(&n("000000010000000000000005"), &end2));
        assert_eq!(end2.partial_beyond(), None);
        // The segment completed after the partial was shipped: no partial beyond it.
        let names3 = [n("000000010000000000000005"), names[2].clone()];
        assert_eq!(ArchiveEnd::of(names3.iter()).partial_beyond(), None);
        assert!(!may_serve(
            &n("000000010000000000000005"),
            &ArchiveEnd::of(names3.iter())
        ));
    }

    const SEG: usize = 1 << 20;
    const PAGE: usize = 8192;

    fn cluster() -> ClusterIdentity {
        ClusterIdentity {
            system_identifier: 7_000_000_000_000_000_001,
            pg_major: 15,
        }
    }

    /// A pg_receivewal-like `.partial` of segment 5 (1 MiB segments): `written` bytes of WAL
    /// (none zero, so every written page starts non-zero as a magic does), then zeros.
    fn spool_file(dir: &std::path::Path, written: usize) -> (std::path::PathBuf, Vec<u8>) {
        let mut b = vec![0u8; SEG];
        for (i, byte) in b.iter_mut().enumerate().take(written) {
            *byte = (i % 251) as u8 | 1;
        }
        b[2..4].copy_from_slice(&2u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&(5 * SEG as u64).to_le_bytes());
        b[24..32].copy_from_slice(&cluster().system_identifier.to_le_bytes());
        b[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        b[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        let path = dir.join("000000010000000000000005.partial");
        std::fs::write(&path, &b).unwrap();
        (path, b)
    }

    fn open(path: &std::path::Path) -> Result<SpoolPartial, PushError> {
        SpoolPartial::open(
            std::fs::File::open(path).unwrap(),
            &n("000000010000000000000005.partial"),
            &cluster(),
        )
    }

    #[test]
    fn only_the_written_prefix_is_read_and_padding_restores_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        for written in [100, PAGE, PAGE + 1, 3 * PAGE + 77, SEG - 5, SEG] {
            let (path, full) = spool_file(dir.path(), written);
            let f = open(&path).unwrap();
            assert_eq!(f.segment_size(), SEG as u64);
            assert_eq!(
                f.written_len().unwrap(),
                written as u64,
                "written {written}"
            );
            let (from, prefix) = f.read_written(0, written as u64).unwrap();
            assert_eq!(
                (from, &prefix[..]),
                (0, &full[..written]),
                "written {written}"
            );
            assert_eq!(pad_partial(prefix).unwrap(), full);
            let from = (written / 2) as u64;
            let (got_from, rest) = f.read_written(from, written as u64).unwrap();
            assert_eq!((got_from, &rest[..]), (from, &full[from as usize..written]));
        }
        // An object of an older version (the whole padded file) stays as it is.
        let (_, full) = spool_file(dir.path(), 3 * PAGE);
        assert_eq!(pad_partial(full.clone()).unwrap(), full);
        // Longer than its header's segment size, or no header: damaged.
        let mut long = full.clone();
        long.push(1);
        assert!(
            pad_partial(long)
                .unwrap_err()
                .contains("more than its header's segment size")
        );
        assert!(
            pad_partial(vec![0u8; 100])
                .unwrap_err()
                .contains("WAL header")
        );
    }

    #[test]
    fn a_zero_page_before_the_write_position_reads_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut full) = spool_file(dir.path(), 10 * PAGE);
        // Page 3 is zero, but WAL follows it: not an append-only prefix.
        full[3 * PAGE..4 * PAGE].fill(0);
        std::fs::write(&path, &full).unwrap();
        let f = open(&path).unwrap();
        let (from, prefix) = f.read_written(PAGE as u64, 10 * PAGE as u64).unwrap();
        assert_eq!((from, &prefix[..]), (0, &full[..10 * PAGE]));
    }

    #[test]
    fn a_spool_partial_is_checked_like_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (path, full) = spool_file(dir.path(), PAGE);
        let other = SpoolPartial::open(
            std::fs::File::open(&path).unwrap(),
            &n("000000010000000000000006.partial"),
            &cluster(),
        );
        assert!(
            matches!(other, Err(PushError::WrongPosition { .. })),
            "{:?}",
            other.err()
        );
        let foreign = SpoolPartial::open(
            std::fs::File::open(&path).unwrap(),
            &n("000000010000000000000005.partial"),
            &ClusterIdentity {
                system_identifier: 1,
                pg_major: 15,
            },
        );
        assert!(matches!(
            foreign,
            Err(PushError::WrongSegmentCluster { .. })
        ));
        std::fs::write(&path, &full[..SEG / 2]).unwrap();
        assert!(matches!(open(&path), Err(PushError::Size { .. })));
    }

    #[test]
    fn filled_length_ignores_padding() {
        assert_eq!(filled_len(&[1, 2, 0, 3, 0, 0]), 4);
        assert_eq!(filled_len(&[0, 0]), 0);
        let mut long = vec![0u8; 100];
        long[41] = 7;
        assert_eq!(filled_len(&long), 42);
        long[99] = 1;
        assert_eq!(filled_len(&long), 100);
        assert_eq!(
            partial_of(&n("000000010000000000000005")).unwrap().name,
            "000000010000000000000005.partial"
        );
        assert!(partial_of(&n("00000002.history")).is_none());
    }
}
