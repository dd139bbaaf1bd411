//! Data page checksums (PostgreSQL's `pg_checksum_page`, `storage/checksum_impl.h`: 32 parallel
//! FNV-1a-like lanes over the 8 KiB page as little-endian u32 words with `pd_checksum` read as
//! zero, two extra rounds of zeros, folded, mixed with the block number, reduced to 1..=65535)
//! and their verification while a base backup reads relation files, as `basebackup.c` does:
//! new pages (`pd_upper == 0`) and pages with an LSN at or after the backup's start are skipped
//! (WAL replay rewrites them); a mismatch is re-read once (a torn page being written), and only a
//! second mismatch is a failure, reported as a run warning.

use crate::snapshot::path::ByteName;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// PostgreSQL's block size (the default build; other sizes are not verified).
pub const BLCKSZ: usize = 8192;
/// Blocks per relation segment file (1 GiB / 8 KiB).
pub const RELSEG_SIZE: u64 = 131072;
/// Individual failures listed as warnings; the rest are counted.
const LISTED: u64 = 50;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16777619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

fn comp(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL stores in `pd_checksum` for `page` (8 KiB) at block `blkno`.
pub fn page_checksum(page: &[u8], blkno: u32) -> u16 {
    assert_eq!(page.len(), BLCKSZ, "a page is {BLCKSZ} bytes");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { page_checksum_avx2(page, blkno) };
    }
    checksum_lanes(page, blkno)
}

/// [`checksum_lanes`] compiled for AVX2: the 32 lanes become four 8-lane vectors (PostgreSQL
/// builds `checksum.c` with the same vectorization in mind).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn page_checksum_avx2(page: &[u8], blkno: u32) -> u16 {
    checksum_lanes(page, blkno)
}

/// The algorithm, written so that the lanes vectorize: one 128-byte row of 32 words at a time.
#[inline(always)]
fn checksum_lanes(page: &[u8], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (r, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        let mut words = [0u32; N_SUMS];
        for (w, b) in words.iter_mut().zip(row.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if r == 0 {
            // pd_checksum (bytes 8..10: the low half of word 2) counts as zero.
            words[2] &= 0xFFFF_0000;
        }
        for (sum, w) in sums.iter_mut().zip(words) {
            *sum = comp(*sum, w);
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = comp(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// `pd_lsn` (xlogid << 32 | xrecoff, little-endian halves).
pub fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]);
    (u64::from(hi) << 32) | u64::from(lo)
}

fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_le_bytes([page[8], page[9]])
}

fn is_new(page: &[u8]) -> bool {
    u16::from_le_bytes([page[14], page[15]]) == 0
}

/// The first block number of a relation file (`base/<db>/<node>[_fork][.seg]`, `global/…`), or
/// None when the file carries no page checksums.
pub fn first_block(path: &ByteName) -> Option<u64> {
    let bytes = path.as_bytes();
    let slash = bytes.iter().rposition(|&b| b == b'/')?;
    let (dir, name) = (&bytes[..slash], &bytes[slash + 1..]);
    let in_db = dir == b"global"
        || (dir.starts_with(b"base/") && dir.len() > 5 && dir[5..].iter().all(u8::is_ascii_digit));
    if !in_db {
        return None;
    }
    super::base::relation_file(name)?;
    let seg = match name.iter().position(|&b| b == b'.') {
        Some(i) => std::str::from_utf8(&name[i + 1..])
            .ok()?
            .parse::<u64>()
            .ok()?,
        None => 0,
    };
    Some(seg * RELSEG_SIZE)
}

/// Verifies pages as the engine reads them (see the module docs); shared by the engine's threads.
#[derive(Debug)]
pub struct Verifier {
    start_lsn: u64,
    failures: AtomicU64,
}

impl Verifier {
    pub fn new(start_lsn: u64) -> Arc<Verifier> {
        Arc::new(Verifier {
            start_lsn,
            failures: AtomicU64::new(0),
        })
    }

    /// Pages whose checksum failed twice.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// A summary warning for the failures not listed one by one.
    pub fn unlisted(&self) -> Option<String> {
        let n = self.failures();
        (n > LISTED).then(|| format!("{} more pages failed their checksum", n - LISTED))
    }

    /// Checks the whole pages of `chunk` (read at `offset` of `file`); warnings for failures.
    pub fn check(&self, path: &ByteName, file: &File, offset: u64, chunk: &[u8]) -> Vec<String> {
        let Some(first) = first_block(path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let skip = (BLCKSZ as u64 - offset % BLCKSZ as u64) % BLCKSZ as u64;
        let mut pos = skip as usize;
        while pos + BLCKSZ <= chunk.len() {
            let page = &chunk[pos..pos + BLCKSZ];
            let page_offset = offset + pos as u64;
            let blkno = first + page_offset / BLCKSZ as u64;
            pos += BLCKSZ;
            if !self.bad(page, blkno) {
                continue;
            }
            // A torn page (being written while read): read it again.
            let mut again = vec![0u8; BLCKSZ];
            if file.read_exact_at(&mut again, page_offset).is_ok() && !self.bad(&again, blkno) {
                continue;
            }
            let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= LISTED {
                out.push(format!(
                    "{}: block {blkno}: checksum {:#06x} stored, {:#06x} computed (page checksum failure)",
                    path.display(),
                    stored_checksum(page),
                    page_checksum(page, blkno as u32)
                ));
            }
        }
        out
    }

    fn bad(&self, page: &[u8], blkno: u64) -> bool {
        !is_new(page)
            && page_lsn(page) < self.start_lsn
            && stored_checksum(page) != page_checksum(page, blkno as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL's loop as written in checksum_impl.h, word by word.
    fn reference(page: &[u8], blkno: u32) -> u16 {
        let mut sums = BASE_OFFSETS;
        for row in 0..BLCKSZ / (4 * N_SUMS) {
            for (lane, sum) in sums.iter_mut().enumerate() {
                let off = (row * N_SUMS + lane) * 4;
                let mut w = [page[off], page[off + 1], page[off + 2], page[off + 3]];
                if off == 8 {
                    w[0] = 0;
                    w[1] = 0;
                }
                *sum = comp(*sum, u32::from_le_bytes(w));
            }
        }
        for _ in 0..2 {
            for sum in sums.iter_mut() {
                *sum = comp(*sum, 0);
            }
        }
        let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
        ((folded % 65535) + 1) as u16
    }

    #[test]
    fn the_vectorized_checksum_equals_the_word_by_word_loop() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..64u32 {
            let page: Vec<u8> = (0..BLCKSZ)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            let blkno = round.wrapping_mul(2_654_435_761);
            assert_eq!(page_checksum(&page, blkno), reference(&page, blkno));
            assert_eq!(checksum_lanes(&page, blkno), reference(&page, blkno));
        }
        let zeros = vec![0u8; BLCKSZ];
        assert_eq!(page_checksum(&zeros, 0), reference(&zeros, 0));
    }

    #[test]
    fn relation_files_and_their_blocks() {
        let b = |s: &str| first_block(&ByteName(s.as_bytes().to_vec()));
        assert_eq!(b("base/5/16384"), Some(0));
        assert_eq!(b("base/5/16384.2"), Some(2 * RELSEG_SIZE));
        assert_eq!(b("base/5/16384_fsm"), Some(0));
        assert_eq!(b("global/1262"), Some(0));
        assert_eq!(b("global/pg_control"), None);
        assert_eq!(b("base/5/PG_VERSION"), None);
        assert_eq!(b("pg_xact/0000"), None);
        assert_eq!(b("base/pgsql_tmp/1"), None);
    }

    #[test]
    fn a_page_with_its_checksum_verifies_and_a_flipped_byte_does_not() {
        let mut page = vec![0u8; BLCKSZ];
        page[14] = 0x20; // pd_upper != 0: not a new page
        page[100] = 7;
        let sum = page_checksum(&page, 3);
        page[8..10].copy_from_slice(&sum.to_le_bytes());
        // The stored checksum does not feed into the computation.
        assert_eq!(page_checksum(&page, 3), sum);
        let v = Verifier::new(u64::MAX);
        let file = tempfile::tempfile().unwrap();
        let path = ByteName(b"base/1/100".to_vec());
        let mut chunk = vec![0u8; BLCKSZ * 4];
        chunk[3 * BLCKSZ..].copy_from_slice(&page);
        assert!(v.check(&path, &file, 0, &chunk).is_empty());
        chunk[3 * BLCKSZ + 500] ^= 1;
        file.write_all_at(&chunk, 0).unwrap();
        let w = v.check(&path, &file, 0, &chunk);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("block 3"), "{w:?}");
        assert_eq!(v.failures(), 1);
        // A page written after the backup started is not checked.
        let v = Verifier::new(0);
        assert!(v.check(&path, &file, 0, &chunk).is_empty());
    }
}
