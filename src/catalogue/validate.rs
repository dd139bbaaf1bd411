//! Validation of the raw catalogue into [`super::Catalogue`], collecting every error.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in the catalogue, with its key path (`job[2].schedule`) and file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueErrors(pub Vec<CatalogueError>);

impl fmt::Display for CatalogueErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CatalogueErrors {}

pub fn load(_path: &Path) -> Result<super::Catalogue, CatalogueErrors> {
    todo!("catalogue helper")
}
