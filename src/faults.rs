//! Test-only kill points: deterministic places where a test makes the process die as by kill -9.
//!
//! `BDC_BACKUP_TEST_KILL_AT=NAME[:TEXT][,…]` makes the process SIGKILL itself when it reaches the
//! kill point NAME whose detail (an object key, a segment name) contains TEXT. Debug builds only:
//! in release builds [`kill_point`] does nothing and reads no environment.
//!
//! Points (detail in brackets):
//! - repository: `local-before-fsync` [key] (an object's bytes written, not yet fsync'd),
//!   `local-before-dir-fsync` [key] (renamed into place, folder not yet fsync'd), `commit-before` /
//!   `commit-after` [commit key] (around the commit record's create-only write),
//!   `retention-after-commit-delete` [commit key] (a backup's commit record deleted, its objects
//!   not yet);
//! - dump: `dump-streaming` [data key] (more than 64 KiB of pg_dump's output read into the object,
//!   the object not complete);
//! - snapshots (files, config, base): `part-upload` [data key] (a part's second frame handed to
//!   its upload), `between-parts` [data key of the part just stored], `manifest-write` [manifest
//!   key] (the manifest's first bytes read into its upload);
//! - base backup: `base-walk` [path in PGDATA] (the walk reached this path, backup started),
//!   `base-wait-stop-segment` [job] (backup stopped, data and backup_label stored, waiting for
//!   the stop segment);
//! - WAL: `wal-before-reply` [segment] (a segment durable everywhere, PostgreSQL not yet answered);
//! - replica copy: `replica-between-objects` [key of the object just copied],
//!   `replica-before-commit` [commit key] (every object copied, the replica's commit record not
//!   yet written);
//! - drills: `drill-dump-restored` [drill database name] (a drill database restored, not yet
//!   checked or dropped), `drill-cluster-started` [job] (a scratch drill cluster restored and
//!   running, not yet checked, stopped or removed).

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

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

/// A reader that passes through [`kill_point`] `name` once more than `after` bytes were read
/// (a kill point in the middle of a stream).
pub struct KillWhileReading<R> {
    inner: R,
    name: &'static str,
    detail: String,
    after: u64,
    read: u64,
}

impl<R> KillWhileReading<R> {
    pub fn new(inner: R, name: &'static str, detail: &str, after: u64) -> Self {
        KillWhileReading {
            inner,
            name,
            detail: detail.to_string(),
            after,
            read: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for KillWhileReading<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if cfg!(debug_assertions) && matches!(poll, Poll::Ready(Ok(()))) {
            let was = self.read;
            self.read += (buf.filled().len() - before) as u64;
            if was <= self.after && self.read > self.after {
                kill_point(self.name, &self.detail);
            }
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_stream_kill_point_passes_every_byte_through_when_not_armed() {
        // No test here sets the environment variable: the point is passed, not taken.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = KillWhileReading::new(&data[..], "no-such-point", "key", 1000);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        assert_eq!(reader.read, data.len() as u64);
    }
}
