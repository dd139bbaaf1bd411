//! Continuous WAL archiving (docs/design.md §5): WAL file names and positions ([`name`]), the WAL page
//! header and `pg_control` ([`header`]), the archive's keys and its `archive.json` ([`format`]).
//! Pushing ([`push`], run by the daemon) and fetching ([`fetch`], the ctl and `restore cluster`,
//! no daemon needed) build on these.

pub mod fetch;
pub mod format;
pub mod header;
pub mod name;
pub mod partial;
pub mod push;
pub mod seal;

pub use fetch::{FetchError, Fetched, fetch};
pub use format::ArchiveInfo;
pub use header::{ClusterIdentity, WalHeader};
pub use name::{WalKind, WalName};
