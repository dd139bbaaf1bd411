//! WAL file names: segments (`000000010000000A000000FF`), `.partial` segments, `.backup` history
//! labels (`…FF.00000028.backup`), timeline history files (`00000002.history`); LSNs and the
//! segments an LSN range covers.

use std::fmt;

/// What a WAL file name denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WalKind {
    /// A complete segment.
    Segment,
    /// The last, incomplete segment of a timeline, archived at promotion (`….partial`).
    Partial,
    /// A backup history file (`<segment>.<offset>.backup`), written by `pg_backup_stop`.
    Backup,
    /// A timeline history file (`<timeline>.history`): never overwritten, never expires.
    History,
}

/// A parsed WAL file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalName {
    /// The file name as PostgreSQL gave it (no folder).
    pub name: String,
    pub kind: WalKind,
    pub timeline: u32,
    /// `log` and `seg` parts of a segment name (0 for history files).
    pub log: u32,
    pub seg: u32,
}

impl WalName {
    /// Parses a bare file name; None when it is not a WAL file name PostgreSQL archives.
    pub fn parse(name: &str) -> Option<WalName> {
        // Every name PostgreSQL archives is ASCII; slicing below is by byte offsets.
        if !name.is_ascii() {
            return None;
        }
        let hex8 = |s: &str| -> Option<u32> {
            (s.len() == 8
                && s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
        };
        if let Some(tl) = name.strip_suffix(".history") {
            let timeline = hex8(tl)?;
            return Some(WalName {
                name: name.into(),
                kind: WalKind::History,
                timeline,
                log: 0,
                seg: 0,
            });
        }
        let base = name.get(..24)?;
        let rest = &name[24..];
        let kind = match rest {
            "" => WalKind::Segment,
            ".partial" => WalKind::Partial,
            r if r.len() == 16 && r.starts_with('.') && r.ends_with(".backup") => {
                hex8(&r[1..9])?;
                WalKind::Backup
            }
            _ => return None,
        };
        Some(WalName {
            name: name.into(),
            kind,
            timeline: hex8(&base[..8])?,
            log: hex8(&base[8..16])?,
            seg: hex8(&base[16..24])?,
        })
    }

    /// The 24-character segment this name belongs to (None for history files).
    pub fn segment(&self) -> Option<&str> {
        (self.kind != WalKind::History).then(|| &self.name[..24])
    }

    /// The LSN of a segment's first byte, for segments of `segment_size` bytes.
    pub fn start_lsn(&self, segment_size: u64) -> u64 {
        let per_log = segments_per_log(segment_size.max(1));
        (u64::from(self.log) * per_log + u64::from(self.seg)) * segment_size
    }

    /// A position that orders segments of one cluster (fixed segment size) regardless of
    /// timeline: `log << 32 | seg`.
    pub fn position(&self) -> u64 {
        (u64::from(self.log) << 32) | u64::from(self.seg)
    }
}

impl fmt::Display for WalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Parses `16/B374D848` into an LSN.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some((hi << 32) | lo)
}

/// Formats an LSN as PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// The name of the segment holding `lsn` on `timeline` (PostgreSQL's `XLogFileName`).
pub fn segment_name(timeline: u32, lsn: u64, segment_size: u64) -> String {
    let segno = lsn / segment_size;
    let per = segments_per_log(segment_size);
    format!("{:08X}{:08X}{:08X}", timeline, segno / per, segno % per)
}

/// Every segment from the one holding `start` to the one holding `stop`, inclusive, on one
/// timeline. When `stop` sits exactly on a segment boundary the segment it starts is not
/// included (PostgreSQL's `XLByteToPrevSeg`, as `pg_backup_stop` switches there).
pub fn segments_between(timeline: u32, start: u64, stop: u64, segment_size: u64) -> Vec<String> {
    let first = start / segment_size;
    let last = if stop > start && stop.is_multiple_of(segment_size) {
        stop / segment_size - 1
    } else {
        stop / segment_size
    };
    let per = segments_per_log(segment_size);
    (first..=last.max(first))
        .map(|segno| format!("{:08X}{:08X}{:08X}", timeline, segno / per, segno % per))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let s = WalName::parse("000000010000000A000000FF").unwrap();
        assert_eq!(
            (s.kind, s.timeline, s.log, s.seg),
            (WalKind::Segment, 1, 10, 255)
        );
        assert_eq!(s.position(), (10 << 32) | 255);
        let p = WalName::parse("000000020000000A000000FF.partial").unwrap();
        assert_eq!((p.kind, p.timeline), (WalKind::Partial, 2));
        assert_eq!(p.segment(), Some("000000020000000A000000FF"));
        let b = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!(b.kind, WalKind::Backup);
        let h = WalName::parse("0000000A.history").unwrap();
        assert_eq!(
            (h.kind, h.timeline, h.segment()),
            (WalKind::History, 10, None)
        );
        for bad in [
            "",
            "00000001",
            "000000010000000A000000F",
            "000000010000000a000000ff",
            "000000010000000A000000FF.tmp",
            "../00000001.history",
            "0000000G0000000A000000FF",
            "000000010000000000000002.0000028.backup",
        ] {
            assert!(WalName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn lsns_and_segments() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x/1"), None);
        assert_eq!(parse_lsn("1"), None);
        let mb16 = 16 << 20;
        assert_eq!(
            segment_name(1, 0x16_B374_D848, mb16),
            "0000000100000016000000B3"
        );
        assert_eq!(
            segments_between(1, 0x2_0000_0028, 0x2_0100_0000, mb16),
            vec!["000000010000000200000000"]
        );
        assert_eq!(
            segments_between(3, 0x0_FF00_0028, 0x1_0100_0100, mb16),
            vec![
                "0000000300000000000000FF",
                "000000030000000100000000",
                "000000030000000100000001"
            ]
        );
        // 1 GiB segments: 4 per log file.
        assert_eq!(
            segment_name(1, 0x1_C000_0000, 1 << 30),
            "000000010000000100000003"
        );
    }
}
