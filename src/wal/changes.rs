//! The relation blocks a WAL segment changes (docs/design.md §4, "WAL change tracking"): the
//! segment's record headers read page by page as it is sealed — the blocks its records
//! reference, the relations it creates and truncates, and whatever no block list describes
//! (database and tablespace records) —, kept as a small summary file per segment in the state
//! directory ([`store`]), so that a block incremental reads only the blocks WAL says changed
//! since its parent began. A summary is a cache: one missing, damaged or unreadable makes the
//! incremental read every changed file whole, as without it.

pub mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

/// `xlp_info` bits of a WAL page header.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
/// Page header sizes (MAXALIGNed on the 64-bit platforms PostgreSQL runs on here).
const SHORT_PAGE_HEADER: usize = 24;
const LONG_PAGE_HEADER: usize = 40;
/// `SizeOfXLogRecord`.
const RECORD_HEADER: usize = 24;
/// The most bytes of a record its headers can take: the fixed header, 33 block references with
/// images and relations, origin, top-level xid and the main-data header are under 1 KiB; the
/// smgr records' main data follows at once. A record is read only this far.
pub(crate) const HEADER_CAP: usize = 2048;
/// Block reference ids: 0..=32; the others mark the main data and optional fields.
const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// Resource managers whose records matter here.
const RM_XLOG_ID: u8 = 0;
const RM_SMGR_ID: u8 = 2;
const RM_DBASE_ID: u8 = 4;
const RM_TBLSPC_ID: u8 = 5;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;

/// The WAL formats read (`XLOG_PAGE_MAGIC` of PostgreSQL 13 to 17); the block reference layout
/// is the same in all of them, only the image compression bits moved in 15.
fn known_magic(magic: u16) -> bool {
    matches!(magic, 0xD106 | 0xD10D | 0xD110 | 0xD113 | 0xD116)
}

/// Whether a block image is compressed (then a hole has its own length field).
fn image_compressed(magic: u16, bimg_info: u8) -> bool {
    if magic >= 0xD110 {
        bimg_info & (0x04 | 0x08 | 0x10) != 0
    } else {
        bimg_info & 0x02 != 0
    }
}

/// A relation fork: tablespace, database and relfilenode, and the fork number (0 main, 1 FSM,
/// 2 visibility map, 3 init).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFork {
    pub spc: u32,
    pub db: u32,
    pub rel: u32,
    pub fork: u8,
}

/// What WAL changed in one relation fork.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForkChanges {
    /// An `smgr` create record: the fork is new (its file is read whole).
    pub created: bool,
    /// The lowest block an `smgr` truncate record cut the relation to: every block from here
    /// on may have changed.
    pub truncated: Option<u32>,
    /// Blocks referenced by records (sorted, without duplicates once [`Changes::tidy`] ran).
    pub blocks: Vec<u32>,
}

/// The changes of a run of WAL: per relation fork, and what makes block lists useless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// (foldhash: a block reference is looked up for every record of a segment as it is sealed.)
    pub forks: HashMap<RelFork, ForkChanges, foldhash::fast::RandomState>,
    /// Set when a record changes files in a way block lists do not describe (a database or
    /// tablespace created, moved or dropped): then nothing is skipped.
    pub opaque: Option<String>,
}

impl Changes {
    fn block(&mut self, fork: RelFork, block: u32) {
        let blocks = &mut self.forks.entry(fork).or_default().blocks;
        // Records in a row often touch the same page.
        if blocks.last() != Some(&block) {
            blocks.push(block);
        }
    }

    /// Sorts and deduplicates every block list.
    pub fn tidy(&mut self) {
        for f in self.forks.values_mut() {
            f.blocks.sort_unstable();
            f.blocks.dedup();
        }
    }

    /// Adds `other`'s changes to these.
    pub fn merge(&mut self, other: &Changes) {
        for (k, o) in &other.forks {
            let f = self.forks.entry(*k).or_default();
            f.created |= o.created;
            f.truncated = match (f.truncated, o.truncated) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            f.blocks.extend_from_slice(&o.blocks);
        }
        if self.opaque.is_none() {
            self.opaque.clone_from(&other.opaque);
        }
    }
}

/// The bytes of a record cut by a segment's end whose headers did not fit in the segment: its
/// first bytes (at most [`HEADER_CAP`]) and how many bytes follow in the next segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub bytes: Vec<u8>,
    pub total: u32,
}

/// One segment's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentChanges {
    /// `XLOG_PAGE_MAGIC` of its pages.
    pub magic: u16,
    pub changes: Changes,
    /// Bytes of a record begun in the previous segment that this one continues (its first
    /// page's `xlp_rem_len`; 0 when it starts with a record).
    pub head_remaining: u32,
    /// The first bytes of that continuation (at most [`HEADER_CAP`]).
    pub head: Vec<u8>,
    /// Bytes of this segment's last record that continue in the next segment (0: none).
    pub end_remaining: u32,
    /// That record, when its headers were not all in this segment.
    pub tail: Option<Tail>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangesError {
    #[error("WAL at {at:X}: {reason}")]
    Malformed { at: u64, reason: String },
    #[error("WAL page magic {0:#06x} is not a format this version reads (PostgreSQL 13 to 17)")]
    Magic(u16),
    #[error("the segment ended after {0} bytes, before its end")]
    Short(u64),
}

fn malformed(at: u64, reason: impl Into<String>) -> ChangesError {
    ChangesError::Malformed {
        at,
        reason: reason.into(),
    }
}

/// Why a record's headers could not be read.
#[derive(Debug)]
enum RecordError {
    /// Its bytes end before its headers do (they continue in the next segment).
    NeedMore,
    Bad(String),
}

/// A record's bytes read in order.
struct Cursor<'a> {
    bytes: &'a [u8],
    /// The record's `xl_tot_len`.
    total: usize,
    off: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.off + n > self.total {
            return Err(RecordError::Bad(format!(
                "its headers run past its length ({} bytes)",
                self.total
            )));
        }
        if self.off + n > self.bytes.len() {
            return Err(
                if self.bytes.len() < self.total && self.bytes.len() < HEADER_CAP {
                    RecordError::NeedMore
                } else {
                    RecordError::Bad("its headers are longer than any record's".into())
                },
            );
        }
        let s = &self.bytes[self.off..self.off + n];
        self.off += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Reads one record's headers from `bytes` (its first bytes, at most [`HEADER_CAP`]; `total` is
/// its `xl_tot_len`) into `out`. Returns whether it is an `XLOG_SWITCH` (the segment's WAL ends).
fn read_record(
    magic: u16,
    bytes: &[u8],
    total: u32,
    at: u64,
    out: &mut Changes,
) -> Result<bool, RecordError> {
    if bytes.len() < RECORD_HEADER {
        return Err(RecordError::NeedMore);
    }
    let info = bytes[16];
    let rmid = bytes[17];
    let mut c = Cursor {
        bytes,
        total: total as usize,
        off: RECORD_HEADER,
    };
    // As PostgreSQL's DecodeXLogRecord: headers while more bytes remain than the data they
    // announce.
    let mut block_data = 0usize;
    let mut main_data = 0usize;
    let mut prev: Option<(u32, u32, u32)> = None;
    while c.total - c.off > block_data + main_data {
        match c.u8()? {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_data = usize::from(c.u8()?);
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_data = c.u32()? as usize;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                c.u16()?;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                c.u32()?;
            }
            0..=XLR_MAX_BLOCK_ID => {
                let fork_flags = c.u8()?;
                block_data += usize::from(c.u16()?);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    block_data += usize::from(c.u16()?); // bimg_len
                    c.u16()?; // hole_offset
                    let bimg_info = c.u8()?;
                    if image_compressed(magic, bimg_info) && bimg_info & BKPIMAGE_HAS_HOLE != 0 {
                        c.u16()?; // hole_length
                    }
                }
                let rel = if fork_flags & BKPBLOCK_SAME_REL != 0 {
                    prev.ok_or_else(|| {
                        RecordError::Bad("BKPBLOCK_SAME_REL without a previous relation".into())
                    })?
                } else {
                    (c.u32()?, c.u32()?, c.u32()?)
                };
                prev = Some(rel);
                let block = c.u32()?;
                let fork = fork_flags & BKPBLOCK_FORK_MASK;
                if fork > 3 {
                    return Err(RecordError::Bad(format!("fork number {fork}")));
                }
                let (spc, db, rel) = rel;
                // Noted at once: a record that turns out malformed fails the whole segment,
                // and one re-read across a segment boundary only repeats its blocks.
                out.block(RelFork { spc, db, rel, fork }, block);
            }
            other => return Err(RecordError::Bad(format!("block id {other}"))),
        }
    }
    if c.off + block_data + main_data != c.total {
        return Err(RecordError::Bad(format!(
            "its parts ({} + {block_data} + {main_data} bytes) do not add up to its length ({})",
            c.off, c.total
        )));
    }
    // The main data follows the blocks' data.
    let main_at = c.off + block_data;
    let main = |n: usize| -> Result<Cursor<'_>, RecordError> {
        if main_data < n {
            return Err(RecordError::Bad(format!(
                "main data of {main_data} bytes, {n} expected"
            )));
        }
        Ok(Cursor {
            bytes,
            total: total as usize,
            off: main_at,
        })
    };
    let kind = info & 0xF0;
    match rmid {
        RM_SMGR_ID if kind == XLOG_SMGR_CREATE => {
            let mut m = main(16)?;
            let (spc, db, rel) = (m.u32()?, m.u32()?, m.u32()?);
            let fork = m.u32()?;
            let fork = u8::try_from(fork)
                .ok()
                .filter(|f| *f <= 3)
                .ok_or_else(|| RecordError::Bad(format!("smgr create of fork {fork}")))?;
            let key = RelFork { spc, db, rel, fork };
            out.forks.entry(key).or_default().created = true;
        }
        RM_SMGR_ID if kind == XLOG_SMGR_TRUNCATE => {
            let mut m = main(20)?;
            let block = m.u32()?;
            let (spc, db, rel) = (m.u32()?, m.u32()?, m.u32()?);
            // Every fork of the relation: which ones the flags name does not matter here.
            for fork in 0..=3 {
                let f = out.forks.entry(RelFork { spc, db, rel, fork }).or_default();
                f.truncated = Some(f.truncated.map_or(block, |t| t.min(block)));
            }
        }
        RM_DBASE_ID | RM_TBLSPC_ID if out.opaque.is_none() => {
            let what = if rmid == RM_DBASE_ID {
                "a database"
            } else {
                "a tablespace"
            };
            out.opaque = Some(format!(
                "{what} was created, moved or dropped (WAL record at {})",
                super::name::format_lsn(at)
            ));
        }
        _ => {}
    }
    Ok(rmid == RM_XLOG_ID && kind == XLOG_SWITCH)
}

/// The record being read across pages.
#[derive(Debug)]
struct Open {
    /// Its LSN (0 for the continuation a segment starts with).
    at: u64,
    total: u32,
    /// Bytes still to come.
    remaining: u32,
    /// Its first bytes (at most [`HEADER_CAP`]).
    bytes: Vec<u8>,
    /// The continuation of a record from the previous segment (not read here).
    head: bool,
}

/// Reads a segment page by page, fed in pieces of any size ([`Summarizer::feed`]).
#[derive(Debug)]
pub struct Summarizer {
    /// The LSN of the segment's first byte.
    start: u64,
    segment_size: u64,
    /// Records at or after this LSN are not read (the segment being written).
    stop: Option<u64>,
    page_size: usize,
    magic: u16,
    /// Bytes of the segment consumed (whole pages).
    offset: u64,
    /// A page not yet complete.
    partial: Vec<u8>,
    open: Option<Open>,
    done: bool,
    error: Option<ChangesError>,
    out: SegmentChanges,
}

impl Summarizer {
    /// The summarizer of the segment starting at LSN `start`, of `segment_size` bytes.
    pub fn new(start: u64, segment_size: u64) -> Summarizer {
        Summarizer {
            start,
            segment_size,
            stop: None,
            page_size: 0,
            magic: 0,
            offset: 0,
            partial: Vec::new(),
            open: None,
            done: false,
            error: None,
            out: SegmentChanges {
                magic: 0,
                changes: Changes::default(),
                head_remaining: 0,
                head: Vec::new(),
                end_remaining: 0,
                tail: None,
            },
        }
    }

    /// Records starting at or after `lsn` are left out (and the segment may end there).
    pub fn stop_at(mut self, lsn: u64) -> Summarizer {
        self.stop = Some(lsn);
        self
    }

    /// Whether nothing more needs to be fed (an error, the stop LSN or the WAL's end reached).
    pub fn done(&self) -> bool {
        self.done || self.error.is_some()
    }

    /// Feeds the segment's next bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.done() {
            if self.page_size == 0 {
                // The first page's long header gives the page size.
                let want = LONG_PAGE_HEADER.saturating_sub(self.partial.len());
                let n = want.min(data.len());
                self.partial.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.partial.len() < LONG_PAGE_HEADER {
                    return;
                }
                match super::header::WalHeader::parse(&self.partial) {
                    Ok(h) if u64::from(h.segment_size) == self.segment_size => {
                        self.page_size = h.block_size as usize;
                        self.magic = h.magic;
                        self.out.magic = h.magic;
                        if !known_magic(h.magic) {
                            self.error = Some(ChangesError::Magic(h.magic));
                        }
                    }
                    Ok(h) => {
                        self.error = Some(malformed(
                            self.start,
                            format!(
                                "segment size {} in the header, {} expected",
                                h.segment_size, self.segment_size
                            ),
                        ))
                    }
                    Err(e) => self.error = Some(malformed(self.start, e.to_string())),
                }
                continue;
            }
            if !self.partial.is_empty() || data.len() < self.page_size {
                let n = (self.page_size - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.partial.len() == self.page_size {
                    let page = std::mem::take(&mut self.partial);
                    self.page(&page);
                    self.partial = page;
                    self.partial.clear();
                }
                continue;
            }
            let (page, rest) = data.split_at(self.page_size);
            self.page(page);
            data = rest;
        }
    }

    /// The summary, once the whole segment (or everything before the stop LSN) was fed.
    pub fn finish(mut self) -> Result<SegmentChanges, ChangesError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.done && self.offset < self.segment_size {
            return Err(ChangesError::Short(self.offset + self.partial.len() as u64));
        }
        if let Some(open) = self.open.take() {
            self.out.end_remaining = open.remaining;
            if open.head {
                // A record spanning this whole segment: its headers are read with the segment
                // it began in, from its first bytes here.
                self.out.head = open.bytes;
            } else {
                match read_record(
                    self.magic,
                    &open.bytes,
                    open.total,
                    open.at,
                    &mut self.out.changes,
                ) {
                    Ok(_) => {}
                    Err(RecordError::NeedMore) => {
                        self.out.tail = Some(Tail {
                            bytes: open.bytes,
                            total: open.total,
                        })
                    }
                    Err(RecordError::Bad(reason)) => return Err(malformed(open.at, reason)),
                }
            }
        }
        self.out.changes.tidy();
        Ok(self.out)
    }

    fn fail(&mut self, at: u64, reason: impl Into<String>) {
        self.error = Some(malformed(at, reason));
    }

    /// One whole page.
    fn page(&mut self, page: &[u8]) {
        let page_lsn = self.start + self.offset;
        self.offset += page.len() as u64;
        let u16_at = |o: usize| u16::from_le_bytes([page[o], page[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(page[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(page[o..o + 8].try_into().expect("8 bytes"));
        let first = page_lsn == self.start;
        let (magic, info, address, remaining) = (u16_at(0), u16_at(2), u64_at(8), u32_at(16));
        if magic != self.magic || address != page_lsn {
            if let Some(stop) = self.stop
                && page_lsn >= stop
            {
                // Past the stop LSN: a page not written yet.
                self.done = true;
                return;
            }
            return self.fail(
                page_lsn,
                format!("page header magic {magic:#06x} at address {address:X}: not this WAL"),
            );
        }
        if (info & XLP_LONG_HEADER != 0) != first {
            return self.fail(page_lsn, "long page header where it does not belong");
        }
        let mut p = if first {
            LONG_PAGE_HEADER
        } else {
            SHORT_PAGE_HEADER
        };
        let contrecord = info & XLP_FIRST_IS_CONTRECORD != 0;
        if first && contrecord {
            self.out.head_remaining = remaining;
            self.open = Some(Open {
                at: 0,
                total: remaining,
                remaining,
                bytes: Vec::new(),
                head: true,
            });
        }
        match (&self.open, contrecord) {
            (Some(open), true) if open.remaining == remaining => {}
            (None, false) => {}
            (Some(open), _) => {
                let expected = open.remaining;
                return self.fail(
                    page_lsn,
                    format!(
                        "the page should continue a record with {expected} bytes to come (xlp_info {info:#06x}, xlp_rem_len {remaining})"
                    ),
                );
            }
            (None, true) => {
                return self.fail(page_lsn, "a continuation where a record should begin");
            }
        }
        if let Some(mut open) = self.open.take() {
            let n = (open.remaining as usize).min(page.len() - p);
            let keep = n.min(HEADER_CAP.saturating_sub(open.bytes.len()));
            open.bytes.extend_from_slice(&page[p..p + keep]);
            open.remaining -= n as u32;
            p += n;
            if open.remaining > 0 {
                self.open = Some(open);
                return;
            }
            if open.head {
                self.out.head = open.bytes;
            } else if !self.record(&open.bytes, open.total, open.at) {
                return;
            }
            p = p.next_multiple_of(8);
        }
        while p + 4 <= page.len() {
            let at = page_lsn + p as u64;
            if self.stop.is_some_and(|s| at >= s) {
                self.done = true;
                return;
            }
            let total = u32_at(p);
            if total == 0 {
                // Zeros: the end of the WAL written into this segment.
                self.done = true;
                return;
            }
            if (total as usize) < RECORD_HEADER {
                return self.fail(at, format!("record length {total}"));
            }
            let avail = page.len() - p;
            if total as usize <= avail {
                let bytes = &page[p..p + (total as usize).min(HEADER_CAP)];
                if !self.record(bytes, total, at) {
                    return;
                }
                p = (p + total as usize).next_multiple_of(8);
            } else {
                let keep = avail.min(HEADER_CAP);
                self.open = Some(Open {
                    at,
                    total,
                    remaining: total - avail as u32,
                    bytes: page[p..p + keep].to_vec(),
                    head: false,
                });
                return;
            }
        }
    }

    /// Reads a whole record's headers; false when the segment's reading ends here (an error or
    /// an `XLOG_SWITCH`).
    fn record(&mut self, bytes: &[u8], total: u32, at: u64) -> bool {
        match read_record(self.magic, bytes, total, at, &mut self.out.changes) {
            Ok(false) => true,
            Ok(true) => {
                self.done = true;
                false
            }
            Err(RecordError::NeedMore) => {
                self.fail(at, "its headers are cut short");
                false
            }
            Err(RecordError::Bad(reason)) => {
                self.fail(at, reason);
                false
            }
        }
    }
}

/// Summarizes a whole segment held in memory.
pub fn summarize(start: u64, bytes: &[u8]) -> Result<SegmentChanges, ChangesError> {
    let mut s = Summarizer::new(start, bytes.len() as u64);
    s.feed(bytes);
    s.finish()
}

/// Joins the summaries of consecutive segments, oldest first, into the changes of their WAL:
/// a record cut by a segment's end is read from both. The first segment's continuation of an
/// earlier record is left out (that record began before this WAL).
#[derive(Debug, Default)]
pub struct Joiner {
    changes: Changes,
    /// The previous segment's end: bytes still to come and its unread record.
    previous: Option<(u32, Option<Tail>)>,
    magic: Option<u16>,
}

impl Joiner {
    /// Adds the next segment's summary (`name` for the errors).
    pub fn add(&mut self, name: &str, s: &SegmentChanges) -> Result<(), String> {
        if let Some(m) = self.magic
            && m != s.magic
        {
            return Err(format!(
                "segment {name} has WAL page magic {:#06x}, the ones before {m:#06x}",
                s.magic
            ));
        }
        self.magic = Some(s.magic);
        if let Some((remaining, tail)) = self.previous.take() {
            if remaining != s.head_remaining {
                return Err(format!(
                    "segment {name} continues a record with {} bytes, the one before left {remaining} bytes to come",
                    s.head_remaining
                ));
            }
            if let Some(tail) = tail {
                let mut bytes = tail.bytes;
                let more = HEADER_CAP.saturating_sub(bytes.len()).min(s.head.len());
                bytes.extend_from_slice(&s.head[..more]);
                read_record(s.magic, &bytes, tail.total, 0, &mut self.changes).map_err(|e| {
                    format!("the record continued in segment {name} cannot be read: {e:?}")
                })?;
            }
        }
        self.changes.merge(&s.changes);
        self.previous = Some((s.end_remaining, s.tail.clone()));
        Ok(())
    }

    /// The changes of all segments added.
    pub fn finish(mut self) -> Changes {
        self.changes.tidy();
        self.changes
    }
}
