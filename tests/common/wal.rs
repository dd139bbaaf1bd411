//! WAL archiving harness: a cluster whose archive_command is the real `bdc-backupctl wal-push`
//! talking to the real daemon, `pg_stat_archiver` polling, running the ctl as the postgres OS
//! user, reading what the repository holds.

#![allow(dead_code)]

use super::daemon::{CTL, Setup, wait_for};
use super::pg::PgCluster;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// `postgresql.conf` lines: archiving through `bdc-backupctl --socket SOCKET wal-push %p`, and
/// enough WAL kept in pg_wal to compare archived segments with the originals.
pub fn archive_conf(socket: &Path) -> String {
    format!(
        "wal_level = replica\narchive_mode = on\n\
         archive_command = '{CTL} --socket {} wal-push %p'\n\
         wal_keep_size = '1GB'\nmax_wal_size = '2GB'\n",
        socket.display()
    )
}

/// The daemon runs as root and binds its socket 0660 root:root; the postgres OS user must reach
/// it (production: the socket's group). Tests open it up.
pub fn open_socket(socket: &Path) {
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).expect("chmod socket");
}

/// `pg_stat_archiver`: (archived_count, failed_count, last_archived_wal).
pub fn archiver(cluster: &PgCluster) -> (i64, i64, String) {
    let out = cluster.psql(
        "postgres",
        "SELECT archived_count, failed_count, coalesce(last_archived_wal, '') FROM pg_stat_archiver;",
    );
    let parts: Vec<&str> = out.split('|').collect();
    (
        parts[0].parse().unwrap(),
        parts[1].parse().unwrap(),
        parts.get(2).unwrap_or(&"").to_string(),
    )
}

/// Writes a little and switches to a new segment; returns the name of the completed segment.
pub fn switch_wal(cluster: &PgCluster) -> String {
    cluster.psql(
        "postgres",
        "CREATE TABLE IF NOT EXISTS walt (x int, pad text); \
         INSERT INTO walt SELECT g, repeat('x', 100) FROM generate_series(1, 500) g;",
    );
    cluster.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal());")
}

/// Waits until PostgreSQL reports `name` (or a later one) archived.
pub fn wait_archived(cluster: &PgCluster, name: &str) {
    wait_for(Duration::from_secs(60), &format!("{name} archived"), || {
        let (_, _, last) = archiver(cluster);
        (last.as_str() >= name && last.len() == 24).then_some(())
    });
}

/// Runs the ctl as the postgres OS user in `cwd`.
pub fn ctl_as_postgres(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(CTL)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("runuser bdc-backupctl");
    eprintln!(
        "$ (postgres) bdc-backupctl {}\n[exit {:?}]\n{}{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every archived file under a local repository: (file name, sha256, path), sorted.
pub fn stored(repo: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let root = repo.join("wal");
    let Ok(clusters) = std::fs::read_dir(&root) else {
        return out;
    };
    for c in clusters.flatten().filter(|e| e.path().is_dir()) {
        for tl in std::fs::read_dir(c.path()).unwrap().flatten() {
            for f in std::fs::read_dir(tl.path()).unwrap().flatten() {
                let file = f.file_name().to_string_lossy().into_owned();
                if let Some((name, sha)) = file.rsplit_once('-') {
                    out.push((name.to_string(), sha.to_string(), f.path()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Catalogue text for a postgres-wal job over `repositories`, with `[postgres]` for status.
pub fn wal_job(cluster: &PgCluster, repositories: &[&str]) -> String {
    format!(
        "[postgres]\nurl = \"{}\"\n\n[[job]]\nname = \"wal\"\nkind = \"postgres-wal\"\nrepositories = [{}]\n",
        cluster.url("postgres"),
        repositories
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `wal-fetch` as root with the cluster's data directory.
pub fn fetch(
    setup: &Setup,
    cluster: &PgCluster,
    name: &str,
    dest: &Path,
    extra: &[&str],
) -> Output {
    let data = cluster.data_dir();
    let mut args = vec![
        "wal-fetch",
        name,
        dest.to_str().unwrap(),
        "--data-directory",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    setup.ctl(&args)
}
