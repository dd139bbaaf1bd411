//! What keeps drills safe: one drill at a time process-wide, the names drills use (and
//! leftovers are recognised by), the drill's scratch folder and the free-space check.

use crate::units::human_bytes;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::sync::Semaphore;

/// At most one drill at a time in this process (and `remove_leftovers` waits for it).
pub(super) static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

/// Scratch folders of drills start with this.
pub const FOLDER_PREFIX: &str = "drill-";
/// Temporary databases of dump drills start with this.
pub const DATABASE_PREFIX: &str = "bdc_drill_";
/// PostgreSQL's identifier limit (bytes).
const NAME_MAX: usize = 63;

/// `s` lowercased with everything but ASCII letters, digits and `_` turned into `_`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `drill-<job>-<run_id>` (the job sanitised).
pub fn folder_name(job: &str, run_id: i64) -> String {
    format!("{FOLDER_PREFIX}{}-{run_id}", sanitize(job))
}

/// `bdc_drill_<job>_<run_id>` (and `_<n>` for the n-th further database of a backup), the job
/// part shortened so that the name fits PostgreSQL's 63 bytes.
pub fn database_name(job: &str, run_id: i64, index: usize) -> String {
    let suffix = if index == 0 {
        format!("_{run_id}")
    } else {
        format!("_{run_id}_{index}")
    };
    let mut job = sanitize(job);
    job.truncate(NAME_MAX - DATABASE_PREFIX.len() - suffix.len());
    format!("{DATABASE_PREFIX}{job}{suffix}")
}

/// A drill's own folder under the scratch directory, removed by [`Scratch::remove`].
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    /// Creates `<scratch_directory>/drill-<job>-<run_id>` (a leftover of the same name is
    /// removed first). Both are 0755: a drill cluster's server (the postgres user) must reach its
    /// data directory and socket folder inside; what is private inside is 0700.
    pub fn create(scratch_directory: &Path, job: &str, run_id: i64) -> Result<Scratch, String> {
        let err = |p: &Path, e: std::io::Error| format!("scratch folder {}: {e}", p.display());
        if !scratch_directory.exists() {
            std::fs::create_dir_all(scratch_directory).map_err(|e| err(scratch_directory, e))?;
            std::fs::set_permissions(scratch_directory, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| err(scratch_directory, e))?;
        }
        let path = scratch_directory.join(folder_name(job, run_id));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| err(&path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| err(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| err(&path, e))?;
        Ok(Scratch { path })
    }

    /// Removes the folder and everything in it.
    pub fn remove(&self) -> Result<(), String> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!(
                "removing the scratch folder {}: {e}",
                self.path.display()
            )),
        }
    }
}

/// Bytes available to us in the file system holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Refuses a drill that needs `need` bytes in `dir` (what: what they are for) when fewer are free.
pub fn check_space(dir: &Path, need: u64, what: &str) -> Result<(), String> {
    let have =
        free_space(dir).map_err(|e| format!("checking free space in {}: {e}", dir.display()))?;
    if have < need {
        return Err(format!(
            "not enough free space in {} for the drill: {} needed ({what}), {} available; \
             nothing was restored (give the verify job a larger scratch-directory)",
            dir.display(),
            human_bytes(need),
            human_bytes(have)
        ));
    }
    Ok(())
}

/// Below this much free space a scratch file system counts as full (a WAL segment, the least
/// a cluster drill's recovery writes).
const NEARLY_FULL: u64 = 16 << 20;

/// "no space left …" naming `dir`'s file system, when it has less than [`NEARLY_FULL`] free.
pub fn full_note(dir: &Path) -> Option<String> {
    let have = free_space(dir).ok()?;
    (have < NEARLY_FULL).then(|| {
        format!(
            "no space left in the scratch file system of {} ({} free)",
            dir.display(),
            human_bytes(have)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_and_fit() {
        assert_eq!(folder_name("db-dump", 12), "drill-db_dump-12");
        assert_eq!(database_name("DB dump", 7, 0), "bdc_drill_db_dump_7");
        assert_eq!(database_name("x", 7, 2), "bdc_drill_x_7_2");
        let long = database_name(&"é".repeat(80), 123456, 3);
        assert_eq!(long.len(), 63, "{long}");
        assert!(long.starts_with(DATABASE_PREFIX) && long.ends_with("_123456_3"));
    }

    #[test]
    fn too_little_space_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_space(dir.path(), u64::MAX / 2, "the archive").unwrap_err();
        assert!(err.contains("not enough free space"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        check_space(dir.path(), 1, "x").unwrap();
    }
}
