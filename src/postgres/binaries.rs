//! Finding `pg_dump`, `pg_dumpall`, `pg_restore` and `psql` that match the server's major version:
//! the catalogue's `bin-dir` if set, else `/usr/lib/postgresql/<major>/bin`, else `PATH` (each
//! candidate's `--version` major must be at least the server's).

use crate::error::{Classify, Retry};
use std::path::{Path, PathBuf};

/// Where Debian installs each major version's binaries.
pub const DEBIAN_LIB: &str = "/usr/lib/postgresql";

#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error(
        "no PostgreSQL client tools of major version {wanted} or newer (server {server_version_num}); looked in {}",
        looked.join(", ")
    )]
    NotFound {
        wanted: u32,
        server_version_num: u32,
        looked: Vec<String>,
    },
    #[error("{}: {source}", path.display())]
    Run {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for BinariesError {
    fn retry(&self) -> Retry {
        Retry::Permanent
    }
}

/// The client tools of one PostgreSQL installation.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub pg_dump: PathBuf,
    pub pg_dumpall: PathBuf,
    pub pg_restore: PathBuf,
    pub psql: PathBuf,
    /// The major version `pg_dump --version` reported.
    pub major: u32,
    /// `pg_dump --version`'s line, e.g. "pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)".
    pub version: String,
}

/// The major version of a `server_version_num` (150014 → 15; 90624 → 9).
pub fn major_of(server_version_num: u32) -> u32 {
    server_version_num / 10000
}

/// Parses "pg_dump (PostgreSQL) 15.14 (Debian …)" → 15. Pre-10 "9.6.24" → 9.
pub fn parse_version_major(line: &str) -> Option<u32> {
    let after = line.split(')').nth(1).unwrap_or(line);
    let token = after.split_whitespace().next()?;
    token.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

async fn version_of(tool: &Path) -> Option<(u32, String)> {
    let out = tokio::process::Command::new(tool)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    parse_version_major(&line).map(|m| (m, line))
}

/// Checks one directory: all four tools present, pg_dump's major at least `wanted`.
async fn check_dir(dir: &Path, wanted: u32) -> Option<PgBinaries> {
    let tool = |n: &str| dir.join(n);
    for name in ["pg_dump", "pg_dumpall", "pg_restore", "psql"] {
        if !tool(name).is_file() {
            return None;
        }
    }
    let (major, version) = version_of(&tool("pg_dump")).await?;
    if major < wanted {
        return None;
    }
    Some(PgBinaries {
        pg_dump: tool("pg_dump"),
        pg_dumpall: tool("pg_dumpall"),
        pg_restore: tool("pg_restore"),
        psql: tool("psql"),
        major,
        version,
    })
}

impl PgBinaries {
    /// Finds the tools for a server of `server_version_num`. An explicit `bin_dir` is the only
    /// place looked at when given.
    pub async fn find(
        bin_dir: Option<&Path>,
        server_version_num: u32,
    ) -> Result<PgBinaries, BinariesError> {
        let wanted = major_of(server_version_num);
        let mut looked = Vec::new();
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = bin_dir {
            candidates.push(dir.to_path_buf());
        } else {
            candidates.push(Path::new(DEBIAN_LIB).join(wanted.to_string()).join("bin"));
            if let Some(path) = std::env::var_os("PATH") {
                candidates.extend(std::env::split_paths(&path));
            }
        }
        for dir in candidates {
            if let Some(found) = check_dir(&dir, wanted).await {
                return Ok(found);
            }
            looked.push(dir.display().to_string());
        }
        Err(BinariesError::NotFound {
            wanted,
            server_version_num,
            looked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_version_major("pg_dump (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_version_major("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(
            parse_version_major("pg_dump (PostgreSQL) 17beta1"),
            Some(17)
        );
        assert_eq!(parse_version_major("garbage"), None);
        assert_eq!(major_of(150014), 15);
        assert_eq!(major_of(90624), 9);
    }

    #[tokio::test]
    async fn explicit_dir_without_tools_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = PgBinaries::find(Some(dir.path()), 150000)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("major version 15"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[tokio::test]
    async fn finds_installed_tools() {
        let found = PgBinaries::find(None, 150000).await.unwrap();
        assert!(found.major >= 15);
    }
}
