//! The segment reader against WAL laid out as PostgreSQL lays it out: records across pages and
//! segments, headers cut anywhere, block references of every shape; and the summary files.

use super::store::{decode, encode};
use super::*;

const PAGE: usize = 8192;
const SEG: usize = 1 << 20;
const SYSID: u64 = 7;

/// Writes records into consecutive segments as PostgreSQL does: MAXALIGNed records, page
/// headers (long at segment starts) with `XLP_FIRST_IS_CONTRECORD` and `xlp_rem_len` on pages
/// that continue a record.
struct Wal {
    /// The LSN of the first segment's first byte.
    start: u64,
    bytes: Vec<u8>,
    magic: u16,
}

impl Wal {
    fn new(first_segment: u64, magic: u16) -> Wal {
        Wal {
            start: first_segment * SEG as u64,
            bytes: Vec::new(),
            magic,
        }
    }

    fn lsn(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    fn page_header(&mut self, remaining: u32) {
        let lsn = self.lsn();
        let long = lsn.is_multiple_of(SEG as u64);
        let mut info = 0u16;
        if long {
            info |= XLP_LONG_HEADER;
        }
        if remaining > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        let mut h = vec![
            0u8;
            if long {
                LONG_PAGE_HEADER
            } else {
                SHORT_PAGE_HEADER
            }
        ];
        h[0..2].copy_from_slice(&self.magic.to_le_bytes());
        h[2..4].copy_from_slice(&info.to_le_bytes());
        h[4..8].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&lsn.to_le_bytes());
        h[16..20].copy_from_slice(&remaining.to_le_bytes());
        if long {
            h[24..32].copy_from_slice(&SYSID.to_le_bytes());
            h[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
            h[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        }
        self.bytes.extend_from_slice(&h);
    }

    /// Appends a record; returns its LSN.
    fn put(&mut self, record: &[u8]) -> u64 {
        while !self.bytes.len().is_multiple_of(8) {
            self.bytes.push(0);
        }
        if self.bytes.len().is_multiple_of(PAGE) {
            self.page_header(0);
        }
        let at = self.lsn();
        let mut rest = record;
        while !rest.is_empty() {
            if self.bytes.len().is_multiple_of(PAGE) {
                self.page_header(rest.len() as u32);
            }
            let room = PAGE - self.bytes.len() % PAGE;
            let n = room.min(rest.len());
            self.bytes.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        at
    }

    /// Where a record of `len` bytes put now would end.
    fn end_after(&self, len: usize) -> u64 {
        let hdr = |pos: u64| {
            if pos.is_multiple_of(SEG as u64) {
                LONG_PAGE_HEADER as u64
            } else {
                SHORT_PAGE_HEADER as u64
            }
        };
        let mut pos = self.lsn().next_multiple_of(8);
        let mut rest = len as u64;
        loop {
            if pos.is_multiple_of(PAGE as u64) {
                pos += hdr(pos);
            }
            let n = (PAGE as u64 - pos % PAGE as u64).min(rest);
            pos += n;
            rest -= n;
            if rest == 0 {
                return pos;
            }
        }
    }

    /// Puts one filler record (rmgr 1, no blocks) so that the next record starts at `target`.
    fn fill_to(&mut self, target: u64) {
        let mut len = (target - self.lsn()) as usize;
        while self.end_after(len) > target {
            len -= 1;
        }
        assert_eq!(self.end_after(len), target, "no filler ends at {target:X}");
        let main = if len - 26 < 256 { len - 26 } else { len - 29 };
        assert!(main >= 256 || len - 26 < 256, "filler of {len} bytes");
        let r = record(1, 0, &[], &vec![0; main], false);
        assert_eq!(r.len(), len);
        self.put(&r);
    }

    /// Zero-fills up to the LSN `to` (page headers included), as PostgreSQL does after a switch.
    fn pad_to(&mut self, to: u64) {
        while self.lsn() < to {
            if self.bytes.len().is_multiple_of(PAGE) {
                self.page_header(0);
            } else {
                self.bytes.push(0);
            }
        }
    }

    /// The segments written, zero-padded to whole segments.
    fn segments(mut self) -> Vec<(u64, Vec<u8>)> {
        let end = self.lsn().next_multiple_of(SEG as u64);
        self.pad_to(end);
        let start = self.start;
        self.bytes
            .chunks(SEG)
            .enumerate()
            .map(|(i, c)| (start + (i * SEG) as u64, c.to_vec()))
            .collect()
    }
}

/// A block reference of a record.
#[derive(Clone)]
struct Block {
    fork: RelFork,
    block: u32,
    /// Image bytes and bimg_info.
    image: Option<(u16, u8)>,
    data: u16,
}

fn rel(rel: u32, fork: u8) -> RelFork {
    RelFork {
        spc: 1663,
        db: 5,
        rel,
        fork,
    }
}

fn blk(r: u32, block: u32) -> Block {
    Block {
        fork: rel(r, 0),
        block,
        image: None,
        data: 10,
    }
}

/// A record of `rmid`/`info` with these block references and main data.
fn record(rmid: u8, info: u8, blocks: &[Block], main: &[u8], extras: bool) -> Vec<u8> {
    let mut h = vec![0u8; RECORD_HEADER];
    h[16] = info;
    h[17] = rmid;
    let mut data = Vec::new();
    let mut prev: Option<RelFork> = None;
    if extras {
        h.push(XLR_BLOCK_ID_ORIGIN);
        h.extend_from_slice(&3u16.to_le_bytes());
        h.push(XLR_BLOCK_ID_TOPLEVEL_XID);
        h.extend_from_slice(&999u32.to_le_bytes());
    }
    for (i, b) in blocks.iter().enumerate() {
        h.push(i as u8);
        let same =
            prev.is_some_and(|p| (p.spc, p.db, p.rel) == (b.fork.spc, b.fork.db, b.fork.rel));
        let mut flags = b.fork.fork;
        if b.image.is_some() {
            flags |= BKPBLOCK_HAS_IMAGE;
        }
        if same {
            flags |= BKPBLOCK_SAME_REL;
        }
        h.push(flags);
        h.extend_from_slice(&b.data.to_le_bytes());
        if let Some((len, info)) = b.image {
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&100u16.to_le_bytes());
            h.push(info);
            if image_compressed(0xD110, info) && info & BKPIMAGE_HAS_HOLE != 0 {
                h.extend_from_slice(&50u16.to_le_bytes());
            }
            data.extend(std::iter::repeat_n(0xAB, len as usize));
        }
        if !same {
            for v in [b.fork.spc, b.fork.db, b.fork.rel] {
                h.extend_from_slice(&v.to_le_bytes());
            }
        }
        h.extend_from_slice(&b.block.to_le_bytes());
        data.extend(std::iter::repeat_n(0xCD, b.data as usize));
        prev = Some(b.fork);
    }
    if !main.is_empty() {
        if main.len() < 256 {
            h.push(XLR_BLOCK_ID_DATA_SHORT);
            h.push(main.len() as u8);
        } else {
            h.push(XLR_BLOCK_ID_DATA_LONG);
            h.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
    }
    h.extend_from_slice(&data);
    h.extend_from_slice(main);
    let total = h.len() as u32;
    h[0..4].copy_from_slice(&total.to_le_bytes());
    h
}

/// A heap-like record (rmgr 10) touching these blocks, with `main` bytes of main data.
fn heap(blocks: &[Block], main: usize) -> Vec<u8> {
    record(10, 0x00, blocks, &vec![0x11; main], false)
}

fn blocks_of(c: &Changes, r: u32) -> Vec<u32> {
    c.forks
        .get(&rel(r, 0))
        .map(|f| f.blocks.clone())
        .unwrap_or_default()
}

fn joined(segs: &[(u64, Vec<u8>)]) -> Changes {
    let mut j = Joiner::default();
    for (start, bytes) in segs {
        let s = summarize(*start, bytes).expect("summarized");
        j.add(&format!("{start:X}"), &s).expect("joined");
    }
    j.finish()
}

#[test]
fn block_references_of_every_shape_are_read() {
    let mut w = Wal::new(3, 0xD110);
    let image = |b: Block, len, info| Block {
        image: Some((len, info)),
        ..b
    };
    w.put(&heap(&[blk(100, 7)], 30));
    // Same relation twice (BKPBLOCK_SAME_REL), an image with a hole (uncompressed), a
    // compressed image with a hole (its own length field), another fork, origin and xid.
    w.put(&record(
        11,
        0x10,
        &[
            image(blk(200, 1), 8000, BKPIMAGE_HAS_HOLE),
            image(blk(200, 2), 3000, BKPIMAGE_HAS_HOLE | 0x10),
            Block {
                fork: rel(200, 2),
                ..blk(200, 9)
            },
            blk(300, 4),
        ],
        &[1, 2, 3],
        true,
    ));
    // Main data over 255 bytes (the long data header), no blocks.
    w.put(&record(1, 0x00, &[], &[9; 700], false));
    let segs = w.segments();
    let c = joined(&segs);
    assert_eq!(blocks_of(&c, 100), vec![7]);
    assert_eq!(blocks_of(&c, 200), vec![1, 2]);
    assert_eq!(c.forks[&rel(200, 2)].blocks, vec![9]);
    assert_eq!(blocks_of(&c, 300), vec![4]);
    assert_eq!(c.forks.len(), 4);
    assert!(c.opaque.is_none());
}

#[test]
fn the_older_image_flags_are_read_by_the_page_magic() {
    // PostgreSQL 14: 0x02 is "compressed", so a hole then has its own length field.
    let mut r = record(10, 0, &[blk(1, 1)], &[], false);
    // Rewrite by hand: one block with an image of 100 bytes, bimg_info 0x03, hole length.
    r.truncate(RECORD_HEADER);
    r.extend_from_slice(&[0, BKPBLOCK_HAS_IMAGE, 0, 0]);
    r.extend_from_slice(&100u16.to_le_bytes());
    r.extend_from_slice(&0u16.to_le_bytes());
    r.push(0x03);
    r.extend_from_slice(&7u16.to_le_bytes());
    for v in [1663u32, 5, 42, 77] {
        r.extend_from_slice(&v.to_le_bytes());
    }
    r.extend(std::iter::repeat_n(0, 100));
    let total = r.len() as u32;
    r[0..4].copy_from_slice(&total.to_le_bytes());
    let mut c = Changes::default();
    read_record(0xD10D, &r, total, 0, &mut c).expect("a PostgreSQL 14 record");
    assert_eq!(blocks_of(&c, 42), vec![77]);
    // Read as PostgreSQL 15's format the same bytes do not add up.
    assert!(read_record(0xD110, &r, total, 0, &mut Changes::default()).is_err());
}

#[test]
fn records_cut_by_pages_anywhere_and_cut_headers_are_read() {
    for pad in (8..PAGE - 24)
        .step_by(8)
        .filter(|p| *p < 80 || *p > PAGE - 120)
    {
        let mut w = Wal::new(1, 0xD110);
        // The next record starts `pad` bytes before a page's end.
        w.fill_to(w.start + (PAGE * 3 - pad) as u64);
        let blocks: Vec<Block> = (0..20).map(|i| blk(500 + i, i * 3)).collect();
        w.put(&heap(&blocks, 40));
        w.put(&heap(&[blk(900, 1)], 5));
        let c = joined(&w.segments());
        for i in 0..20 {
            assert_eq!(blocks_of(&c, 500 + i), vec![i * 3], "pad {pad}");
        }
        assert_eq!(blocks_of(&c, 900), vec![1], "pad {pad}");
    }
}

#[test]
fn a_record_cut_by_the_segment_end_is_read_from_both_segments() {
    for pad in [8usize, 16, 24, 40, 64, 200] {
        let mut w = Wal::new(2, 0xD113);
        let target = w.start + (SEG - pad) as u64;
        while w.lsn() + 20_000 < target {
            w.put(&heap(&[blk(1, 1)], 900));
        }
        w.fill_to(target);
        let blocks: Vec<Block> = (0..30).map(|i| blk(600 + i, i)).collect();
        let cut = w.put(&heap(&blocks, 100));
        assert_eq!(cut, target, "pad {pad}");
        let segs = w.segments();
        assert_eq!(segs.len(), 2);
        let first = summarize(segs[0].0, &segs[0].1).expect("first");
        let second = summarize(segs[1].0, &segs[1].1).expect("second");
        assert!(first.end_remaining > 0);
        assert_eq!(first.end_remaining, second.head_remaining);
        let c = joined(&segs);
        for i in 0..30 {
            assert_eq!(blocks_of(&c, 600 + i), vec![i], "pad {pad}");
        }
        // The second segment alone knows nothing of them.
        assert!(second.changes.forks.keys().all(|k| k.rel < 600));
    }
}

#[test]
fn a_record_over_three_segments_is_read_once_and_the_next_ones_after_it() {
    let mut w = Wal::new(4, 0xD110);
    w.put(&heap(&[blk(1, 1)], 10));
    while w.lsn() < w.start + (SEG as u64) - 20_000 {
        w.put(&heap(&[blk(1, 2)], 4000));
    }
    // 2.5 segments of main data, with blocks in the first bytes.
    w.put(&record(
        10,
        0,
        &[blk(77, 5), blk(78, 6)],
        &vec![3; SEG * 5 / 2],
        false,
    ));
    w.put(&heap(&[blk(79, 7)], 10));
    let segs = w.segments();
    assert_eq!(segs.len(), 4);
    let c = joined(&segs);
    assert_eq!(blocks_of(&c, 77), vec![5]);
    assert_eq!(blocks_of(&c, 78), vec![6]);
    assert_eq!(blocks_of(&c, 79), vec![7]);
    let mid = summarize(segs[1].0, &segs[1].1).expect("middle");
    assert!(mid.changes.forks.is_empty());
    assert!(mid.head_remaining > SEG as u32 && mid.end_remaining > 0);
}

#[test]
fn smgr_create_and_truncate_and_database_records() {
    let mut w = Wal::new(1, 0xD110);
    let mut create = Vec::new();
    for v in [1663u32, 5, 4242, 0] {
        create.extend_from_slice(&v.to_le_bytes());
    }
    w.put(&record(RM_SMGR_ID, XLOG_SMGR_CREATE, &[], &create, false));
    let mut trunc = Vec::new();
    for v in [12u32, 1663, 5, 4343, 7] {
        trunc.extend_from_slice(&v.to_le_bytes());
    }
    w.put(&record(RM_SMGR_ID, XLOG_SMGR_TRUNCATE, &[], &trunc, false));
    let segs = w.segments();
    let c = joined(&segs);
    assert!(c.forks[&rel(4242, 0)].created);
    assert_eq!(c.forks[&rel(4343, 0)].truncated, Some(12));
    assert_eq!(c.forks[&rel(4343, 1)].truncated, Some(12));
    assert!(c.opaque.is_none());

    let mut w = Wal::new(1, 0xD110);
    w.put(&heap(&[blk(1, 1)], 10));
    w.put(&record(RM_DBASE_ID, 0x00, &[], &[0; 16], false));
    let c = joined(&w.segments());
    assert!(
        c.opaque.as_deref().is_some_and(|o| o.contains("database")),
        "{c:?}"
    );
}

#[test]
fn the_wal_ends_at_a_switch_and_at_the_stop_lsn() {
    let mut w = Wal::new(1, 0xD110);
    w.put(&heap(&[blk(1, 1)], 10));
    w.put(&record(RM_XLOG_ID, XLOG_SWITCH, &[], &[], false));
    let segs = w.segments();
    // After the switch the rest of the segment is not WAL: garbage there is not read.
    let mut seg = segs[0].1.clone();
    let n = seg.len();
    seg[n - 5000..].fill(0x5A);
    let s = summarize(segs[0].0, &seg).expect("summarized");
    assert_eq!(blocks_of(&s.changes, 1), vec![1]);

    let mut w = Wal::new(1, 0xD110);
    w.put(&heap(&[blk(1, 1)], 10));
    let stop = w.put(&heap(&[blk(2, 2)], 10));
    w.put(&heap(&[blk(3, 3)], 10));
    let segs = w.segments();
    let mut s = Summarizer::new(segs[0].0, SEG as u64).stop_at(stop);
    // The pages after the stop are stale WAL of another position (a recycled segment).
    let mut seg = segs[0].1.clone();
    seg[PAGE * 4 + 8..PAGE * 4 + 16].copy_from_slice(&0x1234_5678u64.to_le_bytes());
    s.feed(&seg);
    let c = s.finish().expect("up to the stop").changes;
    assert_eq!(blocks_of(&c, 1), vec![1]);
    assert!(blocks_of(&c, 2).is_empty() && blocks_of(&c, 3).is_empty());
}

#[test]
fn pieces_of_any_size_give_the_same_summary() {
    let mut w = Wal::new(1, 0xD110);
    for i in 0..3000u32 {
        w.put(&heap(&[blk(i % 17, i)], (i as usize * 37) % 900));
    }
    let segs = w.segments();
    let whole = summarize(segs[0].0, &segs[0].1).expect("whole");
    for piece in [1usize, 7, 39, 4096, 100_000] {
        let mut s = Summarizer::new(segs[0].0, SEG as u64);
        for c in segs[0].1.chunks(piece) {
            s.feed(c);
        }
        assert_eq!(s.finish().expect("in pieces"), whole, "pieces of {piece}");
    }
}

#[test]
fn wal_that_is_not_this_segment_or_damaged_is_an_error() {
    let mut w = Wal::new(1, 0xD110);
    let mut i = 0;
    while w.lsn() < w.start + (SEG - 4096) as u64 {
        w.put(&heap(&[blk(1, i)], 300));
        i += 1;
    }
    let segs = w.segments();
    let (start, seg) = &segs[0];
    // Another segment's position.
    assert!(summarize(start + SEG as u64, seg).is_err());
    // A page of another position inside.
    let mut bad = seg.clone();
    bad[PAGE * 2 + 8..PAGE * 2 + 16].copy_from_slice(&0u64.to_le_bytes());
    assert!(matches!(
        summarize(*start, &bad),
        Err(ChangesError::Malformed { .. })
    ));
    // A record length that is no record's.
    let mut bad = seg.clone();
    bad[LONG_PAGE_HEADER..LONG_PAGE_HEADER + 4].copy_from_slice(&5u32.to_le_bytes());
    assert!(summarize(*start, &bad).is_err());
    // An unknown format.
    let mut bad = seg.clone();
    bad[0..2].copy_from_slice(&0xD0FFu16.to_le_bytes());
    assert_eq!(summarize(*start, &bad), Err(ChangesError::Magic(0xD0FF)));
    // Cut short.
    assert!(summarize(*start, &seg[..SEG / 2]).is_err());
    let mut s = Summarizer::new(*start, SEG as u64);
    s.feed(&seg[..SEG / 2]);
    assert!(matches!(s.finish(), Err(ChangesError::Short(_))));
}

#[test]
fn segments_that_do_not_follow_each_other_are_not_joined() {
    let mut w = Wal::new(1, 0xD110);
    while w.lsn() < w.start + SEG as u64 + 100 {
        w.put(&heap(&[blk(1, 1)], 1500));
    }
    let segs = w.segments();
    let first = summarize(segs[0].0, &segs[0].1).expect("first");
    let mut j = Joiner::default();
    j.add("a", &first).expect("first");
    // The first again, where the second should be.
    assert!(j.add("b", &first).is_err());
}

#[test]
fn summary_files_round_trip_and_damage_is_seen() {
    let mut w = Wal::new(1, 0xD110);
    w.put(&record(RM_DBASE_ID, 0, &[], &[0; 8], false));
    while w.lsn() < w.start + SEG as u64 + 100 {
        w.put(&heap(&[blk(1, 1), blk(2, 9)], 1500));
    }
    let segs = w.segments();
    let s = summarize(segs[0].0, &segs[0].1).expect("first");
    let bytes = encode(&s);
    assert_eq!(decode(&bytes).as_ref(), Some(&s));
    for at in [0, 9, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 1;
        assert_eq!(decode(&bad), None, "flipped byte {at}");
    }
    assert_eq!(decode(&bytes[..bytes.len() - 1]), None);

    let dir = tempfile::tempdir().expect("tempdir");
    let d = store::cluster_dir(dir.path(), SYSID);
    store::save(&d, "000000010000000000000001", &s).expect("saved");
    assert_eq!(
        store::load(&d, "000000010000000000000001").expect("read"),
        Some(s)
    );
    assert_eq!(
        store::load(&d, "000000010000000000000002").expect("none"),
        None
    );
    std::fs::write(d.join("000000010000000000000003"), b"junk").expect("junk");
    assert!(store::load(&d, "000000010000000000000003").is_err());
    let n = store::prune_before(
        &d,
        &crate::wal::WalName::parse("000000020000000000000003").unwrap(),
    )
    .expect("pruned");
    assert_eq!(n, 1);
    assert!(d.join("000000010000000000000003").exists());
}
