//! Continuous WAL archiving (DESIGN §5): WAL file names and positions ([`name`]), the WAL page
//! header and `pg_control` ([`header`]), the archive's keys and its `archive.json` ([`format`]).
//! Pushing (daemon) and fetching (ctl, no daemon needed) build on these.

pub mod format;
pub mod header;
pub mod name;

pub use format::ArchiveInfo;
pub use header::{ClusterIdentity, WalHeader};
pub use name::{WalKind, WalName};
