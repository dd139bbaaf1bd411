//! The injectable clock: the scheduler asks it for the time and sleeps on it, so tests can move time.

use chrono::{DateTime, Utc};
use std::future::Future;
use std::pin::Pin;

/// A source of wall-clock time the scheduler can sleep on.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves at or after `deadline` (wall clock). A manual clock resolves when it is advanced
    /// past the deadline.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // Sleep in slices of at most a minute so a wall-clock jump (suspend, NTP) is noticed.
            loop {
                let now = Utc::now();
                if now >= deadline {
                    return;
                }
                let left = (deadline - now).to_std().unwrap_or_default();
                tokio::time::sleep(left.min(std::time::Duration::from_secs(60))).await;
            }
        })
    }
}
