//! Alert events (docs/alerts.md, docs/design.md §14): the versioned body, the state-change rule
//! (one event when a thing turns bad, one when it recovers, `remind` repeating a still-bad state),
//! the HMAC signature, and delivery to the sinks ([`sinks`]: webhook, command, `ping-url`).
//! The daemon writes every event to the state DB's outbox before delivery (`daemon::alerts`).

pub mod sinks;

use crate::model::alerts::{EventBody, EventKind};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// The body version this build writes.
pub const BODY_VERSION: u32 = 1;
/// A delivery not made within this long after the event is given up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Bdc-Signature";

/// An event about to be queued.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub job: Option<String>,
    pub objective: Option<String>,
    pub run_id: Option<i64>,
    pub summary: String,
    pub details: serde_json::Value,
    pub reminder: bool,
}

impl NewEvent {
    pub fn new(kind: EventKind, summary: impl Into<String>) -> NewEvent {
        NewEvent {
            kind,
            job: None,
            objective: None,
            run_id: None,
            summary: summary.into(),
            details: serde_json::Value::Object(Default::default()),
            reminder: false,
        }
    }

    pub fn job(mut self, job: &str) -> NewEvent {
        self.job = Some(job.to_string());
        self
    }

    pub fn objective(mut self, objective: &str) -> NewEvent {
        self.objective = Some(objective.to_string());
        self
    }

    pub fn run(mut self, run_id: i64) -> NewEvent {
        self.run_id = Some(run_id);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> NewEvent {
        self.details = details;
        self
    }

    /// The body every sink receives.
    pub fn body(&self, host: &str, at: DateTime<Utc>) -> EventBody {
        EventBody {
            version: BODY_VERSION,
            event: self.kind,
            severity: self.kind.severity(),
            host: host.to_string(),
            job: self.job.clone(),
            objective: self.objective.clone(),
            run_id: self.run_id,
            at,
            summary: self.summary.clone(),
            details: self.details.clone(),
            reminder: self.reminder,
        }
    }
}

/// This host's name, as the body's `host`.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `sha256=HEX`: the HMAC-SHA256 of `body` under `secret` (the header's value).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What the state-change rule decides for one thing (a job's runs, its freshness, an objective).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It turned bad: send the bad event, open the state.
    Opened,
    /// Still bad and `remind` has passed since the last announcement: send a reminder.
    Remind,
    /// It recovered: send the recovery event, close the state.
    Closed,
    /// Nothing to say.
    None,
}

/// The state-change rule. `open` is when the state was last announced (None: not open);
/// `remind` is the shortest reminder interval of the sinks that want the event.
pub fn transition(
    bad: bool,
    open: Option<DateTime<Utc>>,
    remind: Option<Duration>,
    now: DateTime<Utc>,
) -> Transition {
    match (bad, open) {
        (true, None) => Transition::Opened,
        (false, Some(_)) => Transition::Closed,
        (false, None) => Transition::None,
        (true, Some(last)) => match remind {
            Some(r)
                if now - last >= chrono::Duration::from_std(r).unwrap_or(chrono::Duration::MAX) =>
            {
                Transition::Remind
            }
            _ => Transition::None,
        },
    }
}

/// The wait before attempt `attempts + 1` of a delivery: 2 s doubling, at most 5 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let secs = 2u64.saturating_pow(attempts.saturating_add(1).min(20));
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn state_changes_only_and_reminders_after_remind() {
        let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let h = |n: i64| t0 + chrono::Duration::hours(n);
        let six = Some(Duration::from_secs(6 * 3600));
        assert_eq!(transition(true, None, six, t0), Transition::Opened);
        assert_eq!(transition(true, Some(t0), six, h(5)), Transition::None);
        assert_eq!(transition(true, Some(t0), six, h(6)), Transition::Remind);
        assert_eq!(transition(true, Some(t0), None, h(600)), Transition::None);
        assert_eq!(transition(false, Some(t0), six, h(1)), Transition::Closed);
        assert_eq!(transition(false, None, six, h(1)), Transition::None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(1), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn the_body_has_every_documented_field() {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 2, 0, 0).unwrap();
        let body = NewEvent::new(EventKind::RunFailed, "db-dump failed")
            .job("db-dump")
            .run(7)
            .body("db1", at);
        let v = serde_json::to_value(&body).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "version",
            "event",
            "severity",
            "host",
            "job",
            "objective",
            "run_id",
            "at",
            "summary",
            "details",
            "reminder",
        ] {
            assert!(keys.contains(&k), "{k} missing from {v}");
        }
        assert_eq!(v["event"], "run-failed");
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["version"], 1);
    }
}
