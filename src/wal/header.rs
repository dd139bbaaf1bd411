//! The long page header at the start of every WAL segment (system identifier, segment size) and
//! the identity of a cluster read from its data directory (`PG_VERSION`, `global/pg_control`).

pub use crate::model::{ClusterIdentity, u64_string};
use std::path::{Path, PathBuf};

/// `XLP_LONG_HEADER` in `xlp_info`: the first page of a segment carries the long header.
const XLP_LONG_HEADER: u16 = 0x0002;
/// Bytes of the long header we read.
pub const LONG_HEADER_LEN: usize = 40;

/// The fields of a segment's long page header we check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// `XLOG_PAGE_MAGIC`: changes with each major version's WAL format.
    pub magic: u16,
    pub timeline: u32,
    /// The LSN of the segment's first byte.
    pub page_address: u64,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("shorter than a WAL page header ({0} bytes)")]
    Short(usize),
    #[error(
        "the first page has no long header (xlp_info {0:#06x}): not the start of a WAL segment"
    )]
    NotLong(u16),
    #[error("implausible WAL header (segment size {segment_size}, block size {block_size})")]
    Implausible { segment_size: u32, block_size: u32 },
}

impl WalHeader {
    /// Parses the long header of a segment's first page (little-endian hosts: WAL is written in
    /// the host's byte order, and PostgreSQL runs little-endian here).
    pub fn parse(bytes: &[u8]) -> Result<WalHeader, HeaderError> {
        if bytes.len() < LONG_HEADER_LEN {
            return Err(HeaderError::Short(bytes.len()));
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let info = u16_at(2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(HeaderError::NotLong(info));
        }
        let h = WalHeader {
            magic: u16_at(0),
            timeline: u32_at(4),
            page_address: u64_at(8),
            system_identifier: u64_at(24),
            segment_size: u32_at(32),
            block_size: u32_at(36),
        };
        let pow2_between = |v: u32, lo: u32, hi: u32| v.is_power_of_two() && (lo..=hi).contains(&v);
        if !pow2_between(h.segment_size, 1 << 20, 1 << 30)
            || !pow2_between(h.block_size, 1 << 10, 1 << 16)
        {
            return Err(HeaderError::Implausible {
                segment_size: h.segment_size,
                block_size: h.block_size,
            });
        }
        Ok(h)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not look like a PostgreSQL file: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl ClusterIdentity {
    /// Reads `PG_VERSION` and the system identifier (the first 8 bytes of
    /// `global/pg_control`) of the data directory `dir`. PostgreSQL runs `archive_command` and
    /// `restore_command` in its data directory, so `Path::new(".")` works there.
    pub fn read(dir: &Path) -> Result<ClusterIdentity, IdentityError> {
        let version_path = dir.join("PG_VERSION");
        let text =
            std::fs::read_to_string(&version_path).map_err(|source| IdentityError::Read {
                path: version_path.clone(),
                source,
            })?;
        let pg_major = parse_pg_version(&text).ok_or_else(|| IdentityError::Invalid {
            path: version_path.clone(),
            reason: format!("unexpected content {:?}", text.trim()),
        })?;
        let control_path = dir.join("global/pg_control");
        let mut buf = [0u8; 8];
        {
            use std::io::Read;
            let mut f =
                std::fs::File::open(&control_path).map_err(|source| IdentityError::Read {
                    path: control_path.clone(),
                    source,
                })?;
            f.read_exact(&mut buf)
                .map_err(|source| IdentityError::Read {
                    path: control_path.clone(),
                    source,
                })?;
        }
        let system_identifier = u64::from_le_bytes(buf);
        if system_identifier == 0 {
            return Err(IdentityError::Invalid {
                path: control_path,
                reason: "system identifier 0".into(),
            });
        }
        Ok(ClusterIdentity {
            system_identifier,
            pg_major,
        })
    }
}

/// `15\n` → 15; `9.6` → None (unsupported before 12 anyway).
pub fn parse_pg_version(text: &str) -> Option<u32> {
    let t = text.trim();
    t.parse::<u32>().ok().filter(|v| *v >= 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(sysid: u64, seg: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&0x0300_0000u64.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&seg.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    #[test]
    fn parses_long_header() {
        let h = WalHeader::parse(&header(7_312_345_678_901_234_567, 16 << 20)).unwrap();
        assert_eq!(h.system_identifier, 7_312_345_678_901_234_567);
        assert_eq!((h.magic, h.timeline, h.segment_size), (0xD110, 1, 16 << 20));
        assert_eq!(h.page_address, 0x0300_0000);
        assert_eq!(WalHeader::parse(&[0; 10]), Err(HeaderError::Short(10)));
        let mut short = header(1, 16 << 20);
        short[2] = 0;
        assert!(matches!(
            WalHeader::parse(&short),
            Err(HeaderError::NotLong(_))
        ));
        assert!(matches!(
            WalHeader::parse(&header(1, 12345)),
            Err(HeaderError::Implausible { .. })
        ));
    }

    #[test]
    fn identity_round_trips_as_string() {
        let id = ClusterIdentity {
            system_identifier: u64::MAX - 1,
            pg_major: 15,
        };
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(
            json,
            r#"{"system-identifier":"18446744073709551614","pg-major":15}"#
        );
        assert_eq!(serde_json::from_str::<ClusterIdentity>(&json).unwrap(), id);
        assert_eq!(parse_pg_version("15\n"), Some(15));
        assert_eq!(parse_pg_version("9.6\n"), None);
    }
}
