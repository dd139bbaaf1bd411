//! The newest passed restore drill of a job (`verify_checks`, migration 0007), as the DR plan's
//! `--dry-run` estimates read it: which run, when, the measured restore time and bytes.

use super::{StateDb, StateError, parse_ts, to_u64};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// One passed drill check.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillFact {
    /// The verify run that drilled.
    pub run_id: i64,
    pub at: DateTime<Utc>,
    /// The measured restore time (docs/drills.md: to the first answered query or the last file).
    pub seconds: f64,
    /// The restored backup's stored bytes (its chain's objects and manifests).
    pub bytes: u64,
    /// The check's detail (a files drill names its sample there: "3 of 3 files (… bytes) …").
    pub detail: String,
}

impl StateDb {
    /// The newest passed `drill` check of backup job `job`, if any.
    pub async fn newest_passed_drill(&self, job: &str) -> Result<Option<DrillFact>, StateError> {
        let row = sqlx::query(
            "SELECT run_id, at, seconds, bytes, detail FROM verify_checks \
             WHERE job = ? AND kind = 'drill' AND result = 'pass' \
             ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(DrillFact {
                run_id: r.try_get("run_id")?,
                at: parse_ts("verify_checks", "at", &r.try_get::<String, _>("at")?)?,
                seconds: r.try_get("seconds")?,
                bytes: to_u64("verify_checks", "bytes", r.try_get("bytes")?)?,
                detail: r.try_get("detail")?,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use crate::model::CheckRecord;
    use chrono::TimeZone;

    fn check(run_id: i64, job: &str, kind: &str, result: &str, day: u32) -> CheckRecord {
        CheckRecord {
            id: 0,
            run_id,
            job: job.into(),
            repository: Some("local".into()),
            backup_id: Some("B".into()),
            kind: kind.into(),
            name: "restore drill".into(),
            result: result.into(),
            detail: format!("run {run_id}"),
            seconds: f64::from(day),
            bytes: 1000 * u64::from(day),
            at: chrono::Utc
                .with_ymd_and_hms(2026, 11, day, 3, 0, 0)
                .unwrap(),
        }
    }

    #[tokio::test]
    async fn the_newest_passed_drill_of_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::state::StateDb::open(&dir.path().join("state.db"))
            .await
            .unwrap();
        assert_eq!(db.newest_passed_drill("db").await.unwrap(), None);
        for c in [
            check(1, "db", "drill", "pass", 1),
            check(2, "db", "drill", "pass", 5),
            check(3, "db", "drill", "fail", 7),
            check(4, "db", "integrity", "pass", 8),
            check(5, "other", "drill", "pass", 9),
        ] {
            db.record_check(&c).await.unwrap();
        }
        let got = db.newest_passed_drill("db").await.unwrap().unwrap();
        assert_eq!(
            (got.run_id, got.seconds, got.bytes, got.detail.as_str()),
            (2, 5.0, 5000, "run 2")
        );
        assert_eq!(got.at.format("%F").to_string(), "2026-11-05");
    }
}
