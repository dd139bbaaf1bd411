//! PostgreSQL data page checksums (`storage/checksum_impl.h`), verified while a base backup
//! reads relation files: pages newer than the backup's start LSN are skipped (WAL replay
//! rewrites them), a page that fails is re-read once (a torn read of a page being written),
//! all-zero new pages are fine. Only 8 KiB pages on little-endian hosts (as PostgreSQL here).

use std::os::unix::fs::FileExt;

/// PostgreSQL's page size (BLCKSZ); clusters with another page size are not verified.
pub const PAGE_SIZE: usize = 8192;
/// Blocks per relation segment file (1 GiB / 8 KiB, RELSEG_SIZE).
pub const BLOCKS_PER_SEGMENT: u64 = 131_072;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline]
fn comp(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// `pg_checksum_page`: the checksum PostgreSQL stores in `pd_checksum` for block `blkno`
/// (the page's own `pd_checksum` field is treated as zero).
pub fn checksum_page(page: &[u8], blkno: u32) -> u16 {
    assert_eq!(page.len(), PAGE_SIZE, "a page is {PAGE_SIZE} bytes");
    let mut sums = BASE_OFFSETS;
    for (row_index, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, word) in row.chunks_exact(4).enumerate() {
            let mut w = u32::from_le_bytes(word.try_into().expect("4 bytes"));
            if row_index == 0 && j == 2 {
                // Bytes 8..12: pd_checksum (low half) and pd_flags.
                w &= 0xFFFF_0000;
            }
            sums[j] = comp(sums[j], w);
        }
    }
    for _ in 0..2 {
        for s in &mut sums {
            *s = comp(*s, 0);
        }
    }
    let result = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ blkno;
    ((result % 65_535) + 1) as u16
}

/// `pd_lsn` of a page.
pub fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes"));
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `pd_checksum` of a page.
pub fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_le_bytes([page[8], page[9]])
}

/// A new (never initialised) page: `pd_upper == 0`; PostgreSQL requires such pages to be all
/// zero to count as valid.
fn is_new(page: &[u8]) -> bool {
    u16::from_le_bytes([page[14], page[15]]) == 0
}

/// Whether a data-directory path is a relation file whose pages carry checksums:
/// `base/<db>/<relfilenode>[_fsm|_vm|_init][.<segment>]`, the same under `global/` and
/// `pg_tblspc/<oid>/<version dir>/<db>/`. Returns the segment number.
pub fn relation_segment(path: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(path).ok()?;
    let parts: Vec<&str> = text.split('/').collect();
    let name = match parts.as_slice() {
        ["base", db, name] if db.bytes().all(|b| b.is_ascii_digit()) => *name,
        ["global", name] => *name,
        ["pg_tblspc", oid, _version, db, name]
            if oid.bytes().all(|b| b.is_ascii_digit())
                && db.bytes().all(|b| b.is_ascii_digit()) =>
        {
            *name
        }
        _ => return None,
    };
    let (stem, segment) = match name.split_once('.') {
        Some((s, seg)) => (s, seg.parse::<u64>().ok()?),
        None => (name, 0),
    };
    let node = stem
        .strip_suffix("_fsm")
        .or_else(|| stem.strip_suffix("_vm"))
        .or_else(|| stem.strip_suffix("_init"))
        .unwrap_or(stem);
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit())).then_some(segment)
}

/// One page that failed verification (after a re-read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPage {
    pub block: u64,
    pub expected: u16,
    pub found: u16,
}

/// Verifies the whole pages of `data`, read from `file` at byte `offset`, of relation segment
/// `segment`. Pages with an LSN at or past `start_lsn` are skipped; a failing page is re-read
/// from `file` once and checked again (a page being written while read is torn, not corrupt).
pub fn verify_pages(
    file: &std::fs::File,
    offset: u64,
    data: &[u8],
    segment: u64,
    start_lsn: u64,
) -> Vec<BadPage> {
    let mut bad = Vec::new();
    if !offset.is_multiple_of(PAGE_SIZE as u64) {
        return bad;
    }
    let first_block = segment * BLOCKS_PER_SEGMENT + offset / PAGE_SIZE as u64;
    for (i, page) in data.chunks_exact(PAGE_SIZE).enumerate() {
        let block = first_block + i as u64;
        if let Some(b) = check(page, block, start_lsn) {
            let mut again = vec![0u8; PAGE_SIZE];
            let at = offset + (i * PAGE_SIZE) as u64;
            let reread = file.read_exact_at(&mut again, at).is_ok();
            if !reread || check(&again, block, start_lsn).is_some() {
                bad.push(b);
            }
        }
    }
    bad
}

fn check(page: &[u8], block: u64, start_lsn: u64) -> Option<BadPage> {
    if is_new(page) {
        return if page.iter().all(|b| *b == 0) {
            None
        } else {
            Some(BadPage {
                block,
                expected: 0,
                found: stored_checksum(page),
            })
        };
    }
    if page_lsn(page) >= start_lsn {
        return None;
    }
    let expected = checksum_page(page, block as u32);
    let found = stored_checksum(page);
    (expected != found).then_some(BadPage {
        block,
        expected,
        found,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_paths() {
        assert_eq!(relation_segment(b"base/5/16384"), Some(0));
        assert_eq!(relation_segment(b"base/5/16384.3"), Some(3));
        assert_eq!(relation_segment(b"base/5/16384_fsm"), Some(0));
        assert_eq!(relation_segment(b"base/5/16384_vm.1"), Some(1));
        assert_eq!(relation_segment(b"global/1262"), Some(0));
        assert_eq!(
            relation_segment(b"pg_tblspc/16400/PG_15_202209061/5/16401"),
            Some(0)
        );
        for no in [
            &b"base/5/pg_filenode.map"[..],
            b"base/5/PG_VERSION",
            b"global/pg_control",
            b"global/pg_internal.init",
            b"base/5/t3_16384",
            b"pg_xact/0000",
            b"base/pgsql_tmp/pgsql_tmp1.0",
        ] {
            assert_eq!(
                relation_segment(no),
                None,
                "{}",
                String::from_utf8_lossy(no)
            );
        }
    }

    #[test]
    fn zero_page_is_valid_and_a_flipped_byte_is_not() {
        let file = tempfile::tempfile().unwrap();
        let zero = vec![0u8; PAGE_SIZE];
        assert!(verify_pages(&file, 0, &zero, 0, u64::MAX).is_empty());
        // A page with a header and a correct checksum.
        let mut page = vec![0u8; PAGE_SIZE];
        page[0..8].copy_from_slice(&[0, 0, 0, 0, 0x28, 0, 0, 1]);
        page[12..14].copy_from_slice(&24u16.to_le_bytes());
        page[14..16].copy_from_slice(&8192u16.to_le_bytes());
        page[100] = 7;
        let sum = checksum_page(&page, 3);
        page[8..10].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(
            checksum_page(&page, 3),
            sum,
            "pd_checksum does not feed the sum"
        );
        let mut data = zero.clone();
        data.extend_from_slice(&zero);
        data.extend_from_slice(&zero);
        data.extend_from_slice(&page);
        assert!(verify_pages(&file, 0, &data, 0, u64::MAX).is_empty());
        // The same page at another block number fails: the block number is in the sum.
        let bad = verify_pages(&file, 0, &page, 0, u64::MAX);
        assert_eq!(bad.len(), 1);
        // Newer than the backup's start: skipped.
        assert!(verify_pages(&file, 0, &page, 0, 1).is_empty());
    }
}
