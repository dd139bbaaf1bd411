//! Optional watch of a config job's files (issue 3): inotify on their **parent folders** (editors
//! replace files by rename, which a watch on the file itself would lose), filtered to the
//! configured names and globs, debounced; then "job X changed" is sent on a channel and the
//! daemon runs the job (which still stores nothing when nothing really changed). The periodic
//! check keeps running beside it.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("config job `{job}`: inotify: {source}")]
    Init {
        job: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config job `{job}`: watching {}: {source}", .dir.display())]
    Watch {
        job: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for WatchError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            WatchError::Init { source, .. } | WatchError::Watch { source, .. } => {
                crate::error::io_retry(source)
            }
        }
    }
}

/// The folder to watch for a configured path or glob, and how to match names in it.
fn watch_target(path: &str) -> Option<(PathBuf, glob::Pattern)> {
    let p = Path::new(path);
    // The deepest folder without glob characters.
    let mut dir = PathBuf::new();
    for comp in p.parent()?.components() {
        let s = comp.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[']) {
            break;
        }
        dir.push(comp);
    }
    Some((dir, glob::Pattern::new(path).ok()?))
}

/// Watches until `cancel`; sends `job` on `tx` once changes have been quiet for `debounce`.
/// Folders that do not exist are skipped (with a log line); the periodic check covers them.
///
/// # Errors
/// inotify cannot be set up (limits reached, no folder could be watched).
pub async fn watch_config(
    job: String,
    paths: Vec<String>,
    debounce: Duration,
    tx: mpsc::Sender<String>,
    cancel: CancellationToken,
) -> Result<(), WatchError> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| {
        WatchError::Init {
            job: job.clone(),
            source: e.into(),
        }
    })?;
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB;
    let mut watches: HashMap<nix::sys::inotify::WatchDescriptor, (PathBuf, Vec<glob::Pattern>)> =
        HashMap::new();
    let mut by_dir: HashMap<PathBuf, nix::sys::inotify::WatchDescriptor> = HashMap::new();
    let mut last_err = None;
    for p in &paths {
        let Some((dir, pattern)) = watch_target(p) else {
            continue;
        };
        if let Some(wd) = by_dir.get(&dir) {
            if let Some(w) = watches.get_mut(wd) {
                w.1.push(pattern);
            }
            continue;
        }
        match inotify.add_watch(dir.as_path(), flags) {
            Ok(wd) => {
                by_dir.insert(dir.clone(), wd);
                watches.insert(wd, (dir, vec![pattern]));
            }
            Err(e) => {
                tracing::warn!(job = %job, dir = %dir.display(), error = %e, "cannot watch; the periodic check still runs");
                last_err = Some((dir, e));
            }
        }
    }
    if watches.is_empty() {
        if let Some((dir, e)) = last_err {
            return Err(WatchError::Watch {
                job,
                dir,
                source: e.into(),
            });
        }
        return Ok(());
    }
    // inotify is read without blocking every POLL (no unsafe fd registration needed); the
    // debounce restarts at every relevant event.
    const POLL: Duration = Duration::from_millis(100);
    let mut last_change: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(POLL) => {}
        }
        loop {
            match inotify.read_events() {
                Ok(events) => {
                    for ev in events {
                        let Some((dir, patterns)) = watches.get(&ev.wd) else {
                            continue;
                        };
                        let Some(name) = ev.name.as_ref() else {
                            continue;
                        };
                        let full = dir.join(OsString::from(name));
                        let text = String::from_utf8_lossy(full.as_os_str().as_bytes());
                        if patterns.iter().any(|p| p.matches(&text)) {
                            last_change = Some(tokio::time::Instant::now());
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => {
                    return Err(WatchError::Init {
                        job,
                        source: e.into(),
                    });
                }
            }
        }
        if let Some(t) = last_change
            && t.elapsed() >= debounce
        {
            last_change = None;
            if tx.send(job.clone()).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rename_into_place_is_seen_once_unrelated_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join(".env");
        std::fs::write(&env, b"A=1").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch_config(
            "config".into(),
            vec![
                env.display().to_string(),
                format!("{}/*.yml", dir.path().display()),
            ],
            Duration::from_millis(200),
            tx,
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Unrelated file in the same folder: nothing.
        std::fs::write(dir.path().join("other.txt"), b"x").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(600), rx.recv())
                .await
                .is_err()
        );
        // An editor's save: write a temp file, rename over .env — several events, one message.
        std::fs::write(dir.path().join(".env.swp"), b"A=2").unwrap();
        std::fs::rename(dir.path().join(".env.swp"), &env).unwrap();
        std::fs::write(dir.path().join("b.yml"), b"b: 1").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("config"));
        assert!(
            tokio::time::timeout(Duration::from_millis(600), rx.recv())
                .await
                .is_err()
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
