//! The pure parts of WAL streaming (issue 12): the receiver's restart backoff, what a file in the
//! `pg_receivewal` spool is (a completed segment or history file to push, the growing `.partial`,
//! or something to leave alone), and the flush lag that liveness is judged by. No I/O here; the
//! supervisor that runs the receiver (src/daemon/stream.rs) is not built yet.

use crate::wal::{WalKind, WalName};
use std::time::Duration;

/// The first wait before restarting the receiver.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Restart backoff: 1 s, doubling to 60 s; reset after a run that stayed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The wait before the next restart (and doubles the one after it, up to the maximum).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    /// The receiver ran long enough to count as healthy: start again from the first wait.
    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// What a file found in the spool is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolFile {
    /// A completed segment or a timeline history file: push it, then delete it once durable.
    Complete(WalName),
    /// The segment `pg_receivewal` is writing (`<segment>.partial`).
    Partial(WalName),
    /// Anything else (temporary files, names PostgreSQL does not archive): left alone.
    Other,
}

/// Classifies a bare file name of the spool.
pub fn classify(name: &str) -> SpoolFile {
    match WalName::parse(name) {
        Some(w) if matches!(w.kind, WalKind::Segment | WalKind::History) => SpoolFile::Complete(w),
        Some(w) if w.kind == WalKind::Partial => SpoolFile::Partial(w),
        _ => SpoolFile::Other,
    }
}

/// The completed files of a spool listing in the order to push them: history files first (a
/// restore needs a timeline's history before its segments), then segments by timeline and
/// position.
pub fn push_order<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<WalName> {
    let mut out: Vec<WalName> = names
        .into_iter()
        .filter_map(|n| match classify(n) {
            SpoolFile::Complete(w) => Some(w),
            _ => None,
        })
        .collect();
    out.sort_by_key(|w| (w.kind != WalKind::History, w.timeline, w.position()));
    out
}

/// Flush lag in bytes: the server's current WAL position minus the receiver's flush position
/// (0 when the receiver is at or past it). An idle server with a caught-up receiver has lag 0,
/// whatever the slot's `restart_lsn` does.
pub fn flush_lag(server_lsn: u64, flushed_lsn: u64) -> u64 {
    server_lsn.saturating_sub(flushed_lsn)
}

/// A receiver that would start below the slot's `restart_lsn` has lost WAL the server no longer
/// keeps: an error to report, not a restart to retry.
pub fn starts_below_slot(start_lsn: u64, restart_lsn: u64) -> bool {
    start_lsn < restart_lsn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.next_wait().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_secs(1));
    }

    #[test]
    fn spool_files_are_classified() {
        assert!(matches!(
            classify("000000010000000000000003"),
            SpoolFile::Complete(_)
        ));
        assert!(matches!(
            classify("00000002.history"),
            SpoolFile::Complete(_)
        ));
        assert!(matches!(
            classify("000000010000000000000004.partial"),
            SpoolFile::Partial(_)
        ));
        assert_eq!(
            classify("000000010000000000000004.partial.tmp"),
            SpoolFile::Other
        );
        assert_eq!(classify("notes.txt"), SpoolFile::Other);
    }

    #[test]
    fn push_order_puts_history_first_then_positions() {
        let names = [
            "000000020000000000000005",
            "000000010000000000000004.partial",
            "000000010000000000000003",
            "00000002.history",
            "000000010000000000000004",
        ];
        let order: Vec<String> = push_order(names).into_iter().map(|w| w.name).collect();
        assert_eq!(
            order,
            [
                "00000002.history",
                "000000010000000000000003",
                "000000010000000000000004",
                "000000020000000000000005"
            ]
        );
    }

    #[test]
    fn lag_and_slot_rules() {
        assert_eq!(flush_lag(0x3000_0000, 0x2F00_0000), 0x0100_0000);
        assert_eq!(flush_lag(0x3000_0000, 0x3000_0000), 0);
        assert_eq!(flush_lag(5, 9), 0);
        assert!(starts_below_slot(0x100, 0x200));
        assert!(!starts_below_slot(0x200, 0x200));
    }
}
