//! Shared harness of the integration tests.
#![allow(dead_code)]

pub mod catalogue;
pub mod daemon;
pub mod dr;
pub mod objstores;
pub mod output;
pub mod pg;
pub mod physical;
pub mod runs;
pub mod stream;
pub mod tmpfs;
pub mod wal;
pub mod webhook;

use std::path::{Path, PathBuf};

/// Every regular file under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
