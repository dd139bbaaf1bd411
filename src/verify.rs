//! Verification of backups: integrity reads, WAL continuity, restore drills and SQL checks, each
//! reported as a [`check::Check`].

pub mod check;
pub mod drill;
