//! The PostgreSQL side: the control connection ([`connection`]), finding the client binaries that
//! match the server ([`binaries`]), `postgres-dump` jobs ([`dump`]), `postgres-base` jobs ([`base`],
//! on the snapshot-job core [`crate::snapshot::job`]), `restore cluster` ([`cluster_restore`]) and
//! logical restores ([`restore`]).
//! [`manifest`] is a dump's encrypted listing, [`toc`] the `pg_restore -l` filtering for table
//! restores, [`process`] the supervision of the client tools.

pub mod base;
pub mod base_record;
pub mod binaries;
pub mod checksum;
pub mod cluster_restore;
pub mod connection;
pub mod dump;
pub mod manifest;
pub mod process;
pub mod restore;
pub mod toc;
