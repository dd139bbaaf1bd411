//! The stream's liveness check: the server's position against the receiver's (from the slot's
//! walsender), and the slot's presence, asked every check over one kept session.

use super::Generation;
use crate::postgres::connection::PgControl;
use crate::stream::flush_lag;
use crate::wal::name::parse_lsn;
use std::time::Duration;

impl Generation {
    /// Flush lag: the server's current position (a standby's: its replay position) against the
    /// receiver's position in pg_stat_replication of the slot's walsender — its `flush_lsn`, or
    /// without `--synchronous` (pg_receivewal then fsyncs and reports a flush only when a segment
    /// closes) its `write_lsn`: what it wrote to the spool, which the `.partial` shipping reads.
    /// And the slot's presence.
    pub(super) async fn liveness(&mut self) {
        let slot = self.settings.slot.clone();
        let synchronous = self.settings.synchronous;
        let kept = self.liveness_conn.take();
        let asked = tokio::time::timeout(Duration::from_secs(5), async {
            // A kept session that fails (the server restarted since) is replaced at once.
            if let Some(mut c) = kept
                && let Ok(row) = liveness_row(&mut c, &slot, synchronous).await
            {
                return Ok((row, c));
            }
            let mut c = self.connect().await?;
            let row = liveness_row(&mut c, &slot, synchronous)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((row, c))
        })
        .await;
        match asked {
            Ok(Ok(((server, written, flushed, lag_s, exists), c))) => {
                self.liveness_conn = Some(c);
                let server_lsn = server.as_deref().and_then(parse_lsn);
                let at = if synchronous { &flushed } else { &written };
                let receiver_lsn = at.as_deref().and_then(parse_lsn);
                let failing = self.push_failing.clone();
                self.hub().update(|s| {
                    s.server_lsn = server.clone();
                    s.write_lsn = written.clone();
                    s.flush_lsn = flushed.clone();
                    s.flush_lag_bytes = match (server_lsn, receiver_lsn) {
                        (Some(a), Some(b)) => Some(flush_lag(a, b)),
                        _ => None,
                    };
                    s.flush_lag_seconds = lag_s.or(s.flush_lag_bytes.map(|_| 0.0));
                    s.checked_at = Some(self.shared.clock.now());
                    s.error = if !exists {
                        Some(format!("the replication slot `{slot}` is gone"))
                    } else {
                        failing
                    };
                });
            }
            Ok(Err(e)) => self.hub().update(|s| s.error = Some(e)),
            Err(_) => self
                .hub()
                .update(|s| s.error = Some("the server gave no answer within 5 s".into())),
        }
    }
}

/// The server's position, the slot's walsender's positions and lag, and whether the slot exists.
type LivenessRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    bool,
);

async fn liveness_row(
    c: &mut PgControl,
    slot: &str,
    synchronous: bool,
) -> Result<LivenessRow, sqlx::Error> {
    sqlx::query_as(
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
                r.write_lsn::text, r.flush_lsn::text, \
                extract(epoch FROM CASE WHEN $2 THEN r.flush_lag ELSE r.write_lag END)::float8, \
                EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1) \
         FROM (SELECT 1) one \
         LEFT JOIN pg_replication_slots s ON s.slot_name = $1 \
         LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
    )
    .bind(slot)
    .bind(synchronous)
    .fetch_one(c.conn())
    .await
}
