//! Optional watch of a config job's files (issue 3): inotify, read through tokio's `AsyncFd` (no
//! polling), on the folders a configured path or glob can match in ([`PathGlob::resolve`]): the
//! parent folder of a plain path (editors replace files by rename, which a watch on the file
//! itself would lose), every folder a wildcard component matches (followed as folders appear and
//! go), or the deepest existing ancestor of a folder not made yet. An event on a matching path,
//! a queue overflow or a watched folder deleted or moved away counts as a change; changes are
//! debounced, then "job X changed" is sent on a channel and the daemon runs the job (which still
//! stores nothing when nothing really changed). The periodic check keeps running beside it.

use crate::snapshot::walk::pattern::PathGlob;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
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

/// What one inotify event asks of the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Ignore,
    /// A configured file changed.
    Change,
    /// A folder appeared or went in a watched folder: walk the globs again (a change if what
    /// they match changed).
    Resolve,
    /// Events were lost or a watched folder itself went away: walk again and check everything.
    Full,
}

/// Maps one event to what it means; `known` says whether its watch is still ours and
/// `matching` whether its path matches a configured path or glob.
fn classify(mask: AddWatchFlags, known: bool, matching: bool) -> Action {
    if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return Action::Full;
    }
    if !known {
        return Action::Ignore;
    }
    if mask.intersects(
        AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_IGNORED
            | AddWatchFlags::IN_UNMOUNT,
    ) {
        return Action::Full;
    }
    let structural = mask.contains(AddWatchFlags::IN_ISDIR)
        && mask.intersects(
            AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO,
        );
    match (structural, matching) {
        (true, true) => Action::Full,
        (true, false) => Action::Resolve,
        (false, true) => Action::Change,
        (false, false) => Action::Ignore,
    }
}

/// The inotify descriptor for tokio (nix gives `AsFd`, `AsyncFd` wants `AsRawFd`).
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

const FLAGS: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The watches of one config job, kept in line with what its globs can match.
struct Watcher {
    job: String,
    fd: AsyncFd<Fd>,
    globs: Vec<PathGlob>,
    /// A folder reached by two paths (a symlink) has one watch descriptor.
    paths: HashMap<WatchDescriptor, Vec<PathBuf>>,
    folders: HashMap<PathBuf, WatchDescriptor>,
    /// What the globs matched at the last walk.
    matched: BTreeSet<PathBuf>,
    /// Folders that could not be watched (logged once).
    failed: HashSet<PathBuf>,
}

impl Watcher {
    fn new(job: &str, paths: &[String]) -> Result<Watcher, WatchError> {
        let init = |source: std::io::Error| WatchError::Init {
            job: job.to_string(),
            source,
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| init(e.into()))?;
        // SAFETY: `Fd` owns the inotify descriptor, which stays open (and the same) until the
        // `AsyncFd` that owns `Fd` is dropped.
        let fd = unsafe { AsyncFd::register(Fd(inotify)) }.map_err(|e| init(e.into()))?;
        // The catalogue checked the patterns; one that does not parse is left to the schedule.
        let globs = paths.iter().filter_map(|p| PathGlob::new(p).ok()).collect();
        Ok(Watcher {
            job: job.to_string(),
            fd,
            globs,
            paths: HashMap::new(),
            folders: HashMap::new(),
            matched: BTreeSet::new(),
            failed: HashSet::new(),
        })
    }

    fn forget(&mut self, wd: WatchDescriptor) {
        if let Some(dirs) = self.paths.remove(&wd) {
            for d in dirs {
                self.folders.remove(&d);
            }
            // Gone already when the folder was deleted.
            let _ = self.fd.get_ref().0.rm_watch(wd);
        }
    }

    /// Walks the globs again and adds and drops watches to match; returns whether the set of
    /// matching paths changed, and the last error when no folder at all is watched.
    fn resolve(&mut self) -> (bool, Option<WatchError>) {
        let mut want = BTreeSet::new();
        let mut matched = BTreeSet::new();
        for g in &self.globs {
            let r = g.resolve();
            want.extend(r.folders);
            matched.extend(r.matches);
        }
        let stale: Vec<PathBuf> = self
            .folders
            .keys()
            .filter(|d| !want.contains(*d))
            .cloned()
            .collect();
        for d in stale {
            if let Some(wd) = self.folders.remove(&d)
                && let Some(dirs) = self.paths.get_mut(&wd)
            {
                dirs.retain(|x| *x != d);
                if dirs.is_empty() {
                    self.paths.remove(&wd);
                    let _ = self.fd.get_ref().0.rm_watch(wd);
                }
            }
        }
        let mut last_err = None;
        for d in want {
            if self.folders.contains_key(&d) {
                continue;
            }
            match self.fd.get_ref().0.add_watch(d.as_path(), FLAGS) {
                Ok(wd) => {
                    self.failed.remove(&d);
                    self.paths.entry(wd).or_default().push(d.clone());
                    self.folders.insert(d, wd);
                }
                Err(e) => {
                    if self.failed.insert(d.clone()) {
                        tracing::warn!(job = %self.job, dir = %d.display(), error = %e, "cannot watch; the periodic check still runs");
                    }
                    last_err = Some(WatchError::Watch {
                        job: self.job.clone(),
                        dir: d,
                        source: e.into(),
                    });
                }
            }
        }
        let changed = matched != self.matched;
        self.matched = matched;
        (changed, last_err.filter(|_| self.folders.is_empty()))
    }

    /// Reads what is queued (waits until something is).
    async fn read(&self) -> std::io::Result<Vec<InotifyEvent>> {
        loop {
            let mut guard = self.fd.readable().await?;
            if let Ok(r) = guard.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
                return r;
            }
        }
    }

    /// Applies a batch of events; returns whether a configured file (may have) changed.
    fn handle(&mut self, events: Vec<InotifyEvent>) -> bool {
        let mut change = false;
        let mut resolve = false;
        let mut dead = Vec::new();
        for ev in events {
            let dirs = self.paths.get(&ev.wd);
            let matching = match (dirs, ev.name.as_ref()) {
                (Some(dirs), Some(name)) => dirs.iter().any(|d| {
                    let full = d.join(OsString::from(name));
                    self.globs.iter().any(|g| g.matches(&full))
                }),
                _ => false,
            };
            match classify(ev.mask, dirs.is_some(), matching) {
                Action::Ignore => {}
                Action::Change => change = true,
                Action::Resolve => resolve = true,
                Action::Full => {
                    tracing::debug!(job = %self.job, mask = ?ev.mask, "full check");
                    change = true;
                    resolve = true;
                    if ev.mask.intersects(
                        AddWatchFlags::IN_DELETE_SELF
                            | AddWatchFlags::IN_MOVE_SELF
                            | AddWatchFlags::IN_IGNORED
                            | AddWatchFlags::IN_UNMOUNT,
                    ) {
                        dead.push(ev.wd);
                    }
                }
            }
        }
        for wd in dead {
            self.forget(wd);
        }
        if resolve {
            let (changed, _) = self.resolve();
            change |= changed;
        }
        change
    }
}

/// Watches until `cancel`; sends `job` on `tx` once changes have been quiet for `debounce`.
/// Folders that cannot be watched are skipped (with a log line); the periodic check covers them.
///
/// # Errors
/// inotify cannot be set up or read, or no folder at all could be watched.
pub async fn watch_config(
    job: String,
    paths: Vec<String>,
    debounce: Duration,
    tx: mpsc::Sender<String>,
    cancel: CancellationToken,
) -> Result<(), WatchError> {
    let mut w = Watcher::new(&job, &paths)?;
    if let (_, Some(e)) = w.resolve() {
        return Err(e);
    }
    if w.folders.is_empty() {
        return Ok(());
    }
    // The debounce restarts at every relevant event.
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let events = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                due = None;
                if tx.send(job.clone()).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            r = w.read() => r.map_err(|source| WatchError::Init { job: job.clone(), source })?,
        };
        if w.handle(events) {
            due = Some(tokio::time::Instant::now() + debounce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    struct Running {
        rx: mpsc::Receiver<String>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), WatchError>>,
    }

    impl Running {
        async fn start(paths: Vec<String>) -> Running {
            let (tx, rx) = mpsc::channel(8);
            let cancel = CancellationToken::new();
            let task = tokio::spawn(watch_config(
                "config".into(),
                paths,
                Duration::from_millis(200),
                tx,
                cancel.clone(),
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
            Running { rx, cancel, task }
        }

        /// One message within a few seconds.
        async fn fired(&mut self) {
            let got = tokio::time::timeout(Duration::from_secs(3), self.rx.recv()).await;
            assert_eq!(got.expect("a change").as_deref(), Some("config"));
        }

        /// Nothing for a while.
        async fn quiet(&mut self) {
            let got = tokio::time::timeout(Duration::from_millis(600), self.rx.recv()).await;
            assert!(got.is_err(), "unexpected change message {got:?}");
        }

        async fn stop(self) {
            self.cancel.cancel();
            self.task.await.unwrap().unwrap();
        }
    }

    fn glob(dir: &Path, rest: &str) -> String {
        format!("{}/{rest}", dir.display())
    }

    #[tokio::test]
    async fn rename_into_place_is_seen_once_unrelated_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join(".env");
        std::fs::write(&env, b"A=1").unwrap();
        let mut w =
            Running::start(vec![env.display().to_string(), glob(dir.path(), "*.yml")]).await;
        // Unrelated file in the same folder: nothing.
        std::fs::write(dir.path().join("other.txt"), b"x").unwrap();
        w.quiet().await;
        // An editor's save: write a temp file, rename over .env — several events, one message.
        std::fs::write(dir.path().join(".env.swp"), b"A=2").unwrap();
        std::fs::rename(dir.path().join(".env.swp"), &env).unwrap();
        std::fs::write(dir.path().join("b.yml"), b"b: 1").unwrap();
        w.fired().await;
        w.quiet().await;
        w.stop().await;
    }

    #[tokio::test]
    async fn a_file_in_a_wildcard_folder_made_after_the_start_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        // `x` does not exist yet either.
        let mut w = Running::start(vec![glob(dir.path(), "x/*/a.conf")]).await;
        let sub = dir.path().join("x/new");
        std::fs::create_dir_all(&sub).unwrap();
        // New folders with nothing matching in them, and a name that does not match: nothing.
        std::fs::write(sub.join("b.conf"), b"b").unwrap();
        std::fs::create_dir_all(dir.path().join("x/new/deeper")).unwrap();
        std::fs::write(dir.path().join("x/new/deeper/a.conf"), b"too deep").unwrap();
        std::fs::write(dir.path().join("x/a.conf"), b"not deep enough").unwrap();
        w.quiet().await;
        std::fs::write(sub.join("a.conf"), b"a").unwrap();
        w.fired().await;
        w.quiet().await;
        // Saved by rename (as `sed -i` does) in that folder.
        std::fs::write(sub.join(".a.conf.tmp"), b"a2").unwrap();
        std::fs::rename(sub.join(".a.conf.tmp"), sub.join("a.conf")).unwrap();
        w.fired().await;
        w.stop().await;
    }

    #[tokio::test]
    async fn a_folder_made_with_the_file_already_in_it_counts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        let mut w = Running::start(vec![glob(dir.path(), "x/*/a.conf")]).await;
        // Made elsewhere and moved in: no event inside the new folder is ever seen.
        let made = dir.path().join("made");
        std::fs::create_dir(&made).unwrap();
        std::fs::write(made.join("a.conf"), b"a").unwrap();
        std::fs::rename(&made, dir.path().join("x/made")).unwrap();
        w.fired().await;
        w.stop().await;
    }

    #[tokio::test]
    async fn a_replaced_watched_folder_counts_and_is_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("x/one");
        std::fs::create_dir_all(&one).unwrap();
        std::fs::write(one.join("a.conf"), b"a").unwrap();
        let mut w = Running::start(vec![glob(dir.path(), "x/one/a.conf")]).await;
        // The watched folder is moved away and a new one put in its place.
        std::fs::rename(&one, dir.path().join("old")).unwrap();
        std::fs::create_dir(&one).unwrap();
        w.fired().await;
        w.quiet().await;
        // The new folder is watched.
        std::fs::write(one.join("a.conf"), b"a2").unwrap();
        w.fired().await;
        // Moves inside the old folder (still the same inode) are no longer ours.
        std::fs::write(dir.path().join("old/a.conf"), b"a3").unwrap();
        w.quiet().await;
        w.stop().await;
    }

    #[test]
    fn an_overflow_or_a_lost_folder_is_a_full_check() {
        use AddWatchFlags as F;
        assert_eq!(classify(F::IN_Q_OVERFLOW, false, false), Action::Full);
        assert_eq!(classify(F::IN_DELETE_SELF, true, false), Action::Full);
        assert_eq!(classify(F::IN_MOVE_SELF, true, false), Action::Full);
        assert_eq!(classify(F::IN_IGNORED, true, false), Action::Full);
        assert_eq!(classify(F::IN_IGNORED, false, false), Action::Ignore);
        assert_eq!(
            classify(F::IN_CREATE | F::IN_ISDIR, true, false),
            Action::Resolve
        );
        assert_eq!(classify(F::IN_MOVED_TO, true, true), Action::Change);
        assert_eq!(classify(F::IN_CLOSE_WRITE, true, false), Action::Ignore);
        assert_eq!(classify(F::IN_CLOSE_WRITE, false, true), Action::Ignore);
    }

    /// A real overflow: more events than the kernel queues (`fs.inotify.max_queued_events`),
    /// none of them about a configured file, still make a change.
    #[tokio::test]
    async fn a_real_queue_overflow_makes_a_change() {
        let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16384);
        if max > 100_000 {
            eprintln!("max_queued_events = {max}: flood skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watcher::new("config", &[glob(dir.path(), "a.conf")]).unwrap();
        assert!(matches!(w.resolve(), (false, None)));
        // Not read meanwhile: create + close-write per file, distinct names (no merging).
        for i in 0..max / 2 + 100 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        let mut overflow = false;
        let mut change = false;
        while let Ok(Ok(events)) = tokio::time::timeout(Duration::from_millis(300), w.read()).await
        {
            overflow |= events
                .iter()
                .any(|e| e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW));
            change |= w.handle(events);
        }
        assert!(overflow, "the kernel queue overflowed");
        assert!(change, "an overflow is a full check");
    }
}
