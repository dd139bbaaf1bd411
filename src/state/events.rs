//! Alert states and the delivery outbox (migration 0005, docs/alerts.md), and the facts health
//! reads: the newest success, backup and WAL per job, and the newest drill when the verify
//! tables exist.

use super::{StateDb, StateError, parse_ts, ts};
use crate::model::alerts::{Delivery, EventKind, OpenAlert};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// A pending delivery, with the body to send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub id: i64,
    pub sink: String,
    pub event: EventKind,
    pub job: Option<String>,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
}

/// Per sink: counts and the last error and success.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkCounts {
    pub pending: u64,
    pub delivered: u64,
    pub gave_up: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_delivered_at: Option<DateTime<Utc>>,
}

fn opt(
    table: &'static str,
    column: &'static str,
    v: Option<String>,
) -> Result<Option<DateTime<Utc>>, StateError> {
    v.map(|s| parse_ts(table, column, &s)).transpose()
}

fn event_of(table: &'static str, s: &str) -> Result<EventKind, StateError> {
    s.parse().map_err(|message| StateError::BadValue {
        table,
        column: "event",
        message,
    })
}

fn delivery_from_row(row: &SqliteRow) -> Result<Delivery, StateError> {
    const T: &str = "alert_outbox";
    Ok(Delivery {
        id: row.try_get("id")?,
        sink: row.try_get("sink")?,
        event: event_of(T, row.try_get::<&str, _>("event")?)?,
        job: row.try_get("job")?,
        created_at: parse_ts(T, "created_at", row.try_get::<&str, _>("created_at")?)?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        next_attempt_at: parse_ts(
            T,
            "next_attempt_at",
            row.try_get::<&str, _>("next_attempt_at")?,
        )?,
        last_error: row.try_get("last_error")?,
        last_attempt_at: opt(T, "last_attempt_at", row.try_get("last_attempt_at")?)?,
        delivered_at: opt(T, "delivered_at", row.try_get("delivered_at")?)?,
        gave_up_at: opt(T, "gave_up_at", row.try_get("gave_up_at")?)?,
    })
}

impl StateDb {
    /// The open (bad) alert states.
    pub async fn open_alerts(&self) -> Result<Vec<OpenAlert>, StateError> {
        const T: &str = "alert_states";
        let rows = sqlx::query(
            "SELECT key, event, job, objective, since, reminded_at, summary FROM alert_states ORDER BY since, key",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OpenAlert {
                    key: row.try_get("key")?,
                    event: event_of(T, row.try_get::<&str, _>("event")?)?,
                    job: row.try_get("job")?,
                    objective: row.try_get("objective")?,
                    since: parse_ts(T, "since", row.try_get::<&str, _>("since")?)?,
                    reminded_at: parse_ts(
                        T,
                        "reminded_at",
                        row.try_get::<&str, _>("reminded_at")?,
                    )?,
                    summary: row.try_get("summary")?,
                })
            })
            .collect()
    }

    /// Opens a bad state, or (when it is open) updates its summary. Returns whether it was new.
    pub async fn open_alert(&self, alert: &OpenAlert) -> Result<bool, StateError> {
        let done = sqlx::query(
            "INSERT INTO alert_states (key, event, job, objective, since, reminded_at, summary)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&alert.key)
        .bind(alert.event.as_str())
        .bind(alert.job.as_deref())
        .bind(alert.objective.as_deref())
        .bind(ts(alert.since))
        .bind(ts(alert.reminded_at))
        .bind(&alert.summary)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that a still-bad state was announced again.
    pub async fn alert_reminded(&self, key: &str, at: DateTime<Utc>) -> Result<(), StateError> {
        sqlx::query("UPDATE alert_states SET reminded_at = ? WHERE key = ?")
            .bind(ts(at))
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Closes a bad state. Returns whether it was open.
    pub async fn close_alert(&self, key: &str) -> Result<bool, StateError> {
        let done = sqlx::query("DELETE FROM alert_states WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Writes one event for one sink into the outbox, due now. Returns its id.
    pub async fn enqueue_delivery(
        &self,
        sink: &str,
        event: EventKind,
        job: Option<&str>,
        body: &str,
        at: DateTime<Utc>,
    ) -> Result<i64, StateError> {
        let id = sqlx::query(
            "INSERT INTO alert_outbox (sink, event, job, body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(sink)
        .bind(event.as_str())
        .bind(job)
        .bind(body)
        .bind(ts(at))
        .bind(ts(at))
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    /// Pending deliveries of `sink` due at `now`, oldest first (at most `limit`).
    pub async fn due_deliveries(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, StateError> {
        const T: &str = "alert_outbox";
        let rows = sqlx::query(
            "SELECT id, sink, event, job, body, created_at, attempts FROM alert_outbox
             WHERE delivered_at IS NULL AND gave_up_at IS NULL AND sink = ? AND next_attempt_at <= ?
             ORDER BY next_attempt_at, id LIMIT ?",
        )
        .bind(sink)
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxItem {
                    id: row.try_get("id")?,
                    sink: row.try_get("sink")?,
                    event: event_of(T, row.try_get::<&str, _>("event")?)?,
                    job: row.try_get("job")?,
                    body: row.try_get("body")?,
                    created_at: parse_ts(T, "created_at", row.try_get::<&str, _>("created_at")?)?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// The earliest next attempt of a pending delivery of `sink`.
    pub async fn next_delivery_at(&self, sink: &str) -> Result<Option<DateTime<Utc>>, StateError> {
        let v: Option<String> = sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM alert_outbox
             WHERE delivered_at IS NULL AND gave_up_at IS NULL AND sink = ?",
        )
        .bind(sink)
        .fetch_one(&self.pool)
        .await?;
        opt("alert_outbox", "next_attempt_at", v)
    }

    pub async fn delivery_done(&self, id: i64, at: DateTime<Utc>) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE alert_outbox SET delivered_at = ?, last_attempt_at = ?, attempts = attempts + 1 WHERE id = ?",
        )
        .bind(ts(at))
        .bind(ts(at))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A failed attempt: retried at `next`, or given up when `give_up`.
    pub async fn delivery_failed(
        &self,
        id: i64,
        at: DateTime<Utc>,
        error: &str,
        next: DateTime<Utc>,
        give_up: bool,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE alert_outbox SET attempts = attempts + 1, last_error = ?, last_attempt_at = ?,
                 next_attempt_at = ?, gave_up_at = CASE WHEN ? THEN ? ELSE NULL END
             WHERE id = ?",
        )
        .bind(error)
        .bind(ts(at))
        .bind(ts(next))
        .bind(give_up)
        .bind(ts(at))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest deliveries, newest first.
    pub async fn recent_deliveries(&self, limit: u32) -> Result<Vec<Delivery>, StateError> {
        let rows = sqlx::query(
            "SELECT id, sink, event, job, created_at, attempts, next_attempt_at, last_error,
                    last_attempt_at, delivered_at, gave_up_at
             FROM alert_outbox ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// Delivery attempts per (sink, result) over the whole outbox, for
    /// `alert_deliveries_total`: `delivered` (events delivered), `failed` (attempts that failed,
    /// retried or not) and `gave-up` (events given up after 24 h). Outbox rows are never deleted,
    /// so each count only grows.
    pub async fn delivery_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, String), u64>, StateError> {
        const T: &str = "alert_outbox";
        let rows = sqlx::query(
            "SELECT sink,
                 count(delivered_at) AS delivered,
                 coalesce(sum(attempts), 0) - count(delivered_at) AS failed,
                 count(gave_up_at) AS gave_up
             FROM alert_outbox GROUP BY sink",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let sink: String = row.try_get("sink")?;
            for (result, column) in [
                ("delivered", "delivered"),
                ("failed", "failed"),
                ("gave-up", "gave_up"),
            ] {
                let n = super::to_u64(T, column, row.try_get(column)?)?;
                out.insert((sink.clone(), result.to_string()), n);
            }
        }
        Ok(out)
    }

    /// Counts and the last error and success of one sink.
    pub async fn sink_counts(&self, sink: &str) -> Result<SinkCounts, StateError> {
        const T: &str = "alert_outbox";
        let row = sqlx::query(
            "SELECT
                 count(*) FILTER (WHERE delivered_at IS NULL AND gave_up_at IS NULL) AS pending,
                 count(delivered_at) AS delivered,
                 count(gave_up_at) AS gave_up,
                 max(delivered_at) AS last_delivered_at
             FROM alert_outbox WHERE sink = ?",
        )
        .bind(sink)
        .fetch_one(&self.pool)
        .await?;
        let last = sqlx::query(
            "SELECT last_error, last_attempt_at FROM alert_outbox
             WHERE sink = ? AND last_error IS NOT NULL ORDER BY last_attempt_at DESC LIMIT 1",
        )
        .bind(sink)
        .fetch_optional(&self.pool)
        .await?;
        let (last_error, last_error_at) = match last {
            Some(r) => (
                r.try_get("last_error")?,
                opt(T, "last_attempt_at", r.try_get("last_attempt_at")?)?,
            ),
            None => (None, None),
        };
        Ok(SinkCounts {
            pending: super::to_u64(T, "pending", row.try_get("pending")?)?,
            delivered: super::to_u64(T, "delivered", row.try_get("delivered")?)?,
            gave_up: super::to_u64(T, "gave_up", row.try_get("gave_up")?)?,
            last_error,
            last_error_at,
            last_delivered_at: opt(T, "delivered_at", row.try_get("last_delivered_at")?)?,
        })
    }

    /// When the job was first seen, without recording it.
    pub async fn job_first_seen(&self, job: &str) -> Result<Option<DateTime<Utc>>, StateError> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT first_seen FROM jobs_seen WHERE job = ?")
                .bind(job)
                .fetch_optional(&self.pool)
                .await?;
        opt("jobs_seen", "first_seen", v)
    }

    /// The newest passed drill of `job` (migration 0007's `verify_checks`): when, restore
    /// seconds, bytes of the restored backup.
    pub async fn newest_drill(
        &self,
        job: &str,
    ) -> Result<Option<(DateTime<Utc>, f64, u64)>, StateError> {
        let row = sqlx::query(
            "SELECT at, seconds, bytes FROM verify_checks
             WHERE job = ? AND kind = 'drill' AND result = 'pass' ORDER BY at DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let at: String = row.try_get("at")?;
        let seconds: f64 = row.try_get("seconds")?;
        let bytes: i64 = row.try_get("bytes")?;
        Ok(Some((
            parse_ts("verify_checks", "at", &at)?,
            seconds,
            u64::try_from(bytes).unwrap_or(0),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 2, m, 0).unwrap()
    }

    async fn db() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn the_outbox_keeps_pending_rows_until_delivered_or_given_up() {
        let (_d, db) = db().await;
        let a = db
            .enqueue_delivery("ops", EventKind::RunFailed, Some("db"), "{}", t(0))
            .await
            .unwrap();
        let b = db
            .enqueue_delivery("ops", EventKind::AlertTest, None, "{}", t(1))
            .await
            .unwrap();
        db.enqueue_delivery("pager", EventKind::Stale, Some("db"), "{}", t(1))
            .await
            .unwrap();
        let due: Vec<i64> = db
            .due_deliveries("ops", t(1), 10)
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(due, vec![a, b]);
        db.delivery_failed(a, t(2), "refused", t(5), false)
            .await
            .unwrap();
        let due: Vec<i64> = db
            .due_deliveries("ops", t(3), 10)
            .await
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(due, vec![b], "a waits for its retry");
        assert_eq!(db.next_delivery_at("ops").await.unwrap(), Some(t(1)));
        db.delivery_done(b, t(3)).await.unwrap();
        assert_eq!(db.next_delivery_at("ops").await.unwrap(), Some(t(5)));
        let c = db.sink_counts("ops").await.unwrap();
        assert_eq!((c.pending, c.delivered, c.gave_up), (1, 1, 0));
        assert_eq!(c.last_error.as_deref(), Some("refused"));
        assert_eq!(c.last_delivered_at, Some(t(3)));
        db.delivery_failed(a, t(6), "refused again", t(10), true)
            .await
            .unwrap();
        let c = db.sink_counts("ops").await.unwrap();
        assert_eq!((c.pending, c.delivered, c.gave_up), (0, 1, 1));
        assert!(
            db.due_deliveries("ops", t(59), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let recent = db.recent_deliveries(10).await.unwrap();
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[2].attempts, 2);
        assert_eq!(recent[2].gave_up_at, Some(t(6)));
    }

    #[tokio::test]
    async fn alert_states_open_once_and_close() {
        let (_d, db) = db().await;
        let alert = OpenAlert {
            key: "run:db".into(),
            event: EventKind::RunFailed,
            job: Some("db".into()),
            objective: None,
            since: t(0),
            reminded_at: t(0),
            summary: "failed".into(),
        };
        assert!(db.open_alert(&alert).await.unwrap());
        assert!(!db.open_alert(&alert).await.unwrap(), "already open");
        db.alert_reminded("run:db", t(7)).await.unwrap();
        assert_eq!(db.open_alerts().await.unwrap()[0].reminded_at, t(7));
        assert!(db.close_alert("run:db").await.unwrap());
        assert!(!db.close_alert("run:db").await.unwrap());
        assert!(db.open_alerts().await.unwrap().is_empty());
        // No drill recorded yet.
        assert_eq!(db.newest_drill("db").await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_newest_passed_drill_is_read_from_the_verify_table() {
        let (_d, db) = db().await;
        for (kind, result, seconds, at) in [
            ("drill", "pass", 40.0, t(1)),
            ("drill", "pass", 55.5, t(3)),
            ("drill", "fail", 1.0, t(4)),
            ("integrity", "pass", 9.0, t(5)),
        ] {
            sqlx::query(
                "INSERT INTO verify_checks (run_id, job, kind, name, result, detail, seconds, bytes, at)
                 VALUES (1, 'db', ?, 'x', ?, '', ?, 1000, ?)",
            )
            .bind(kind)
            .bind(result)
            .bind(seconds)
            .bind(super::ts(at))
            .execute(db.pool())
            .await
            .unwrap();
        }
        assert_eq!(
            db.newest_drill("db").await.unwrap(),
            Some((t(3), 55.5, 1000))
        );
        assert_eq!(db.newest_drill("other").await.unwrap(), None);
    }
}
