//! Test-only kill points: deterministic places where a test makes the process die as by kill -9.
//!
//! `BDC_BACKUP_TEST_KILL_AT=NAME[:TEXT][,…]` makes the process SIGKILL itself when it reaches the
//! kill point NAME whose detail (an object key, a segment name) contains TEXT. Debug builds only:
//! in release builds [`kill_point`] does nothing and reads no environment.
//!
//! Points: `local-before-fsync` (an object's bytes written, not yet fsync'd), `local-before-dir-fsync`
//! (renamed into place, folder not yet fsync'd), `commit-before` / `commit-after` (around the commit
//! record's create-only write), `wal-before-reply` (a segment durable everywhere, PostgreSQL not yet
//! answered), `retention-after-commit-delete` (a backup's commit record deleted, its objects not yet).

/// The environment variable naming the kill points of this process.
pub const KILL_AT_ENV: &str = "BDC_BACKUP_TEST_KILL_AT";

/// Dies here (SIGKILL, no cleanup) when the environment names this point; see the module doc.
pub fn kill_point(name: &str, detail: &str) {
    #[cfg(debug_assertions)]
    if let Ok(spec) = std::env::var(KILL_AT_ENV)
        && spec.split(',').any(|one| {
            let (point, text) = one.split_once(':').unwrap_or((one, ""));
            point == name && detail.contains(text)
        })
    {
        eprintln!("{KILL_AT_ENV}: killed at {name} ({detail})");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = (name, detail);
}
