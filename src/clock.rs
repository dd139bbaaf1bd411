//! The injectable clock: the scheduler asks it for the time and sleeps on it, so tests can move time.

use chrono::{DateTime, Utc};
use std::future::Future;
use std::pin::Pin;
use tokio::sync::watch;

/// A source of wall-clock time the scheduler can sleep on. Used as `Arc<dyn Clock>`.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
    /// Resolves at or after `deadline` (wall clock). A manual clock resolves when it is advanced
    /// past the deadline.
    fn sleep_until(&self, deadline: DateTime<Utc>)
    -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    fn sleep_until(
        &self,
        deadline: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
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

/// A clock that only moves when told to (tests of the daemon). Sleepers wake as soon as the time
/// is set or advanced to (or past) their deadline; setting it backwards is allowed (a clock step).
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(start),
        }
    }

    /// Sets the time (forwards or backwards) and wakes the sleepers whose deadline it reached.
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_replace(t);
    }

    /// Moves the time forward by `by` (saturating at the largest representable time).
    pub fn advance(&self, by: std::time::Duration) {
        self.now.send_modify(|now| {
            let step = chrono::TimeDelta::from_std(by).unwrap_or(chrono::TimeDelta::MAX);
            *now = now
                .checked_add_signed(step)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }
    fn sleep_until(
        &self,
        deadline: DateTime<Utc>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives in `self`, which outlives this future, so the channel never closes.
            let _ = rx.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("test timestamp")
    }

    #[tokio::test]
    async fn manual_sleeper_wakes_on_advance_not_before() {
        let manual = Arc::new(ManualClock::new(utc("2026-10-25T00:00:00Z")));
        let as_dyn: Arc<dyn Clock> = manual.clone();
        assert_eq!(as_dyn.now(), utc("2026-10-25T00:00:00Z"));

        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let sleeper = tokio::spawn(async move {
            as_dyn.sleep_until(utc("2026-10-25T01:00:00Z")).await;
            let _ = tx.send(as_dyn.now());
        });
        // Real time passing does not wake it; nor does advancing short of the deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());
        manual.advance(Duration::from_secs(3599));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(manual.now(), utc("2026-10-25T00:59:59Z"));
        // Reaching the deadline wakes it.
        manual.advance(Duration::from_secs(1));
        let woke_at = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("woke")
            .expect("sent");
        assert_eq!(woke_at, utc("2026-10-25T01:00:00Z"));
        sleeper.await.expect("sleeper task");
    }

    #[tokio::test]
    async fn manual_set_jumps_and_past_deadlines_resolve_at_once() {
        let manual = Arc::new(ManualClock::new(utc("2026-06-01T00:00:00Z")));
        let clock: Arc<dyn Clock> = manual.clone();
        // A deadline already reached resolves immediately.
        tokio::time::timeout(
            Duration::from_secs(5),
            clock.sleep_until(utc("2026-05-31T00:00:00Z")),
        )
        .await
        .expect("immediate");
        let c2 = clock.clone();
        let sleeper =
            tokio::spawn(async move { c2.sleep_until(utc("2026-06-03T00:00:00Z")).await });
        // Stepping backwards does not wake it; jumping past the deadline does.
        manual.set(utc("2026-05-01T00:00:00Z"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sleeper.is_finished());
        manual.set(utc("2026-06-05T00:00:00Z"));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woke")
            .expect("task");
        assert_eq!(clock.now(), utc("2026-06-05T00:00:00Z"));
        // Several sleepers, woken in deadline order as time advances.
        let a = tokio::spawn({
            let c = clock.clone();
            async move { c.sleep_until(utc("2026-06-05T00:10:00Z")).await }
        });
        let b = tokio::spawn({
            let c = clock.clone();
            async move { c.sleep_until(utc("2026-06-05T00:20:00Z")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        manual.advance(Duration::from_secs(600));
        tokio::time::timeout(Duration::from_secs(5), a)
            .await
            .expect("a woke")
            .expect("task");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!b.is_finished());
        manual.advance(Duration::from_secs(600));
        tokio::time::timeout(Duration::from_secs(5), b)
            .await
            .expect("b woke")
            .expect("task");
    }

    #[tokio::test]
    async fn system_clock_past_deadline_returns() {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let past = clock.now() - chrono::TimeDelta::seconds(1);
        tokio::time::timeout(Duration::from_secs(5), clock.sleep_until(past))
            .await
            .expect("immediate");
    }
}
