//! Verification of backups: integrity reads ([`integrity`]), WAL continuity ([`wal`]), restore
//! drills and SQL checks ([`drill`]), each reported as a [`check::Check`]; one verify run over
//! them all ([`run`]).

pub mod check;
pub mod drill;
pub mod integrity;
pub mod run;
pub mod wal;
