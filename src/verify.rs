//! Verification of backups: integrity reads ([`integrity`], per-file hashes [`content`]), WAL continuity ([`wal`]), restore
//! drills and SQL checks ([`drill`]), each reported as a [`check::Check`]; one verify run over
//! them all ([`run`]).

pub mod check;
pub mod content;
pub mod drill;
pub mod integrity;
pub mod record;
pub mod run;
pub mod scope;
pub mod wal;
