//! Continuous WAL archiving (docs/design.md §5): WAL file names and positions ([`name`]), the WAL page
//! header and `pg_control` ([`header`]), the archive's keys and its `archive.json` ([`format`]).
//! Pushing ([`push`], run by the daemon) and fetching ([`fetch`], the ctl and `restore cluster`,
//! no daemon needed) build on these.

pub mod changes;
pub mod fetch;
pub mod format;
pub mod header;
pub mod name;
pub mod partial;
pub mod push;
pub mod seal;
pub mod staged;

pub use fetch::{FetchError, Fetched, fetch};
pub use format::ArchiveInfo;
pub use header::{ClusterIdentity, WalHeader};
pub use name::{WalKind, WalName};

/// WAL files for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::Write;

    /// A segment of `size` bytes (1 MiB segments: segment 1) with a long header naming `sysid`.
    pub fn segment(sysid: u64, size: usize) -> Vec<u8> {
        let mut b = vec![7u8; size];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        // segment 1 of 1 MiB segments
        b[8..16].copy_from_slice(&(1u64 << 20).to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&((1u32 << 20).to_le_bytes()));
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        b
    }

    /// The cluster of [`segment`]`(42, …)`: system identifier 42, PostgreSQL 15.
    pub fn cluster() -> super::ClusterIdentity {
        super::ClusterIdentity {
            system_identifier: 42,
            pg_major: 15,
        }
    }

    /// zstd level 1 on 2 workers, frames of 100 000 bytes (a segment of [`segment`] is several),
    /// encrypted to `key`.
    pub fn zstd_settings(key: &age::x25519::Identity) -> crate::pipeline::PipelineSettings {
        let mut settings = crate::pipeline::PipelineSettings::new(
            crate::catalogue::CompressionSettings {
                algorithm: crate::catalogue::Compression::Zstd,
                level: 1,
                workers: 2,
            },
            vec![key.to_public()],
        );
        settings.frame_size = 100_000;
        settings
    }

    /// An unnamed temporary file holding `bytes`.
    pub fn file_with(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }
}
