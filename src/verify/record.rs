//! Recording a verify run's checks in the state DB as each one finishes (so `show RUN_ID` of a
//! running verify lists what is done, and a run killed mid-way keeps its finished checks), and
//! correcting the figures of rows whose seconds or bytes are known only later (a drill's restore
//! time is measured at its end).

use super::check::Check;
use crate::clock::Clock;
use crate::model::CheckRecord;
use crate::state::StateDb;
use tokio::sync::Mutex;

/// A check as the state DB stores it.
pub fn record_of(run_id: i64, check: &Check, at: chrono::DateTime<chrono::Utc>) -> CheckRecord {
    CheckRecord {
        id: 0,
        run_id,
        job: check.job.clone(),
        repository: check.repository.clone(),
        backup_id: check.backup_id.clone(),
        kind: check.kind.as_str().to_string(),
        name: check.name.clone(),
        result: check.result.as_str().to_string(),
        detail: check.detail.clone(),
        seconds: check.seconds,
        bytes: check.bytes,
        at,
    }
}

/// One recorded check: its row id (None when the write failed) and the figures written.
#[derive(Debug, Clone, Copy)]
struct Row {
    id: Option<i64>,
    seconds: f64,
    bytes: u64,
}

/// Writes the checks of one run, in the order of the run's list of checks, each exactly once.
pub struct Recorder<'a> {
    state: &'a StateDb,
    run_id: i64,
    clock: &'a dyn Clock,
    /// One entry per check of the run recorded so far (its position in the run's list).
    rows: Mutex<Vec<Row>>,
}

impl<'a> Recorder<'a> {
    pub fn new(state: &'a StateDb, run_id: i64, clock: &'a dyn Clock) -> Recorder<'a> {
        Recorder {
            state,
            run_id,
            clock,
            rows: Mutex::new(Vec::new()),
        }
    }

    /// Records the checks of `list` not recorded yet; `list[0]` is the run's check number
    /// `base` (a drill's own list starts where the run's list stood when the drill began).
    /// Each write is committed before this returns. A failed write is logged, never fatal.
    pub async fn catch_up(&self, base: usize, list: &[Check]) {
        let mut rows = self.rows.lock().await;
        if rows.len() < base {
            // Earlier checks are not recorded yet: `finish` records them all in order.
            return;
        }
        for c in list.iter().skip(rows.len() - base) {
            let id = match self
                .state
                .record_check(&record_of(self.run_id, c, self.clock.now()))
                .await
            {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::error!(job = %c.job, run_id = self.run_id, error = %e, "state DB: cannot record a check");
                    None
                }
            };
            rows.push(Row {
                id,
                seconds: c.seconds,
                bytes: c.bytes,
            });
        }
    }

    /// Records whatever of the run's final list `all` is not recorded yet, then corrects the
    /// seconds and bytes of rows whose figures changed since they were written.
    pub async fn finish(&self, all: &[Check]) {
        self.catch_up(0, all).await;
        let rows = self.rows.lock().await;
        for (row, c) in rows.iter().zip(all) {
            let Some(id) = row.id else { continue };
            if (row.seconds != c.seconds || row.bytes != c.bytes)
                && let Err(e) = self.state.set_check_figures(id, c.seconds, c.bytes).await
            {
                tracing::error!(job = %c.job, run_id = self.run_id, error = %e, "state DB: cannot correct a check's figures");
            }
        }
    }
}
