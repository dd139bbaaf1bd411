//! The daemon's runs as the tests read them back: the newest run (of a job), the backup id of
//! a job's newest successful run, and the largest data object of a backup in `local`.

use super::daemon::Setup;
use std::path::PathBuf;

/// The newest run of `job` (`runs --json`), or of any job when `job` is None.
pub fn last_run(setup: &Setup, job: Option<&str>) -> serde_json::Value {
    let mut args = vec!["runs", "--limit", "1"];
    if let Some(j) = job {
        args.extend(["--job", j]);
    }
    setup.ctl_json(&args)[0].clone()
}

/// The backup id of `job`'s newest run, which must have succeeded.
pub fn backup_id(setup: &Setup, job: &str) -> String {
    let run = last_run(setup, Some(job));
    assert_eq!(run["status"], "succeeded", "{run}");
    run["backup_id"].as_str().unwrap().to_string()
}

/// The largest data object of one backup in the repository `local` (not the commit record,
/// not the manifest): its path and its key.
pub fn largest_object(setup: &Setup, job: &str, backup: &str) -> (PathBuf, String) {
    let dir = setup.path(&format!("repo/backups/{job}/{backup}"));
    let path = super::files_under(&dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name != "backup.json" && name != "manifest.age"
        })
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap_or_else(|| panic!("no data object under {}", dir.display()));
    let key = path
        .strip_prefix(setup.path("repo"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (path, key)
}
