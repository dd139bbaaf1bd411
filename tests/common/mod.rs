//! Shared harness of the integration tests.
#![allow(dead_code)]

pub mod daemon;
pub mod objstores;
pub mod pg;
pub mod physical;
pub mod wal;
