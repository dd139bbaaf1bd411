//! Our durable local store: temp file in a staging folder, fsync, no-replace rename, directory fsync.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct LocalStore {
    pub root: PathBuf,
}

pub struct LocalWriter {}
