//! The audit trail in the state DB: rows chained by SHA-256 (each row carries the hash of the
//! previous one), listing, checking the chain, and chaining rows written before the chain existed.
//!
//! A row's hash is the lowercase hex SHA-256 of the compact JSON array
//! `["bdc-audit-v1", id, at, uid, gid, pid, user, action, job, allowed, result, detail, source,
//! origin, prev_hash]` — the values exactly as stored (`at` as its stored text, absent values as
//! `null`, `allowed` as `true`/`false`); `prev_hash` of the first row is 64 zeros. Inserts are
//! serialized (one lock per process, `BEGIN IMMEDIATE` against other processes).

use super::{StateDb, StateError, parse_ts, ts};
use crate::model::{AuditBreak, AuditChainReport, AuditRow};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where a row comes from (the `source` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditSource {
    /// A request on the control socket; who = its peer.
    #[default]
    Socket,
    /// The daemon's own work (scheduled runs, retention, SIGHUP).
    Daemon,
    /// A ctl without the daemon (an offline restore), imported from the offline file.
    Offline,
}

impl AuditSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSource::Socket => "socket",
            AuditSource::Daemon => "daemon",
            AuditSource::Offline => "offline",
        }
    }
}

/// One audited request on the control socket, piece of the daemon's work, or offline restore.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    pub user: Option<String>,
    /// The verb, e.g. "run", "cancel", "restore database", "backup", "retention-delete".
    pub action: String,
    pub allowed: bool,
    /// Arguments, without secrets.
    pub detail: String,
    pub job: Option<String>,
    /// What came of it: `ok`, `denied`, `failed: …`, a run's status.
    pub result: String,
    pub source: AuditSource,
    /// An offline row's id from the ctl: imported once.
    pub origin: Option<String>,
}

/// The stored values a hash covers.
struct Stored {
    id: i64,
    at: String,
    uid: Option<i64>,
    gid: Option<i64>,
    pid: Option<i64>,
    user: Option<String>,
    action: String,
    job: Option<String>,
    allowed: bool,
    result: String,
    detail: String,
    source: String,
    origin: Option<String>,
}

impl Stored {
    fn from_row(row: &SqliteRow) -> Result<Stored, StateError> {
        Ok(Stored {
            id: row.try_get("id")?,
            at: row.try_get("at")?,
            uid: row.try_get("uid")?,
            gid: row.try_get("gid")?,
            pid: row.try_get("pid")?,
            user: row.try_get("user")?,
            action: row.try_get("action")?,
            job: row.try_get("job")?,
            allowed: row.try_get("allowed")?,
            result: row.try_get("result")?,
            detail: row.try_get("detail")?,
            source: row.try_get("source")?,
            origin: row.try_get("origin")?,
        })
    }

    /// The row's hash given the previous row's (docs: the module comment).
    fn hash(&self, prev_hash: &str) -> String {
        let canonical = serde_json::json!([
            "bdc-audit-v1",
            self.id,
            self.at,
            self.uid,
            self.gid,
            self.pid,
            self.user,
            self.action,
            self.job,
            self.allowed,
            self.result,
            self.detail,
            self.source,
            self.origin,
            prev_hash,
        ]);
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

const COLUMNS: &str = "id, at, uid, gid, pid, user, action, job, allowed, result, detail, source, \
                       origin, prev_hash, hash";

fn row_from(row: &SqliteRow) -> Result<AuditRow, StateError> {
    const T: &str = "audit";
    let id_u32 = |col: &'static str| -> Result<Option<u32>, StateError> {
        let v: Option<i64> = row.try_get(col)?;
        v.map(|v| {
            u32::try_from(v).map_err(|_| StateError::BadValue {
                table: T,
                column: col,
                message: v.to_string(),
            })
        })
        .transpose()
    };
    Ok(AuditRow {
        id: row.try_get("id")?,
        at: parse_ts(T, "at", row.try_get::<&str, _>("at")?)?,
        source: row.try_get("source")?,
        uid: id_u32("uid")?,
        gid: id_u32("gid")?,
        pid: row.try_get("pid")?,
        user: row.try_get("user")?,
        action: row.try_get("action")?,
        job: row.try_get("job")?,
        allowed: row.try_get("allowed")?,
        result: row.try_get("result")?,
        detail: row.try_get("detail")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

fn event_from(row: &AuditRow) -> AuditEvent {
    AuditEvent {
        at: row.at,
        uid: row.uid,
        gid: row.gid,
        pid: row.pid,
        user: row.user.clone(),
        action: row.action.clone(),
        allowed: row.allowed,
        detail: row.detail.clone(),
        job: row.job.clone(),
        result: row.result.clone(),
        source: match row.source.as_str() {
            "daemon" => AuditSource::Daemon,
            "offline" => AuditSource::Offline,
            _ => AuditSource::Socket,
        },
        origin: None,
    }
}

/// Chains the rows after the newest chained one (rows written before migration 0006, or by an
/// older program). A row whose hash was removed in the middle of the chain stays unchained, so
/// `verify` names it.
async fn chain_pending(conn: &mut sqlx::SqliteConnection) -> Result<String, StateError> {
    let last: Option<(i64, String)> = sqlx::query_as(
        "SELECT id, hash FROM audit WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let (after, mut prev) = match last {
        Some((id, hash)) => (id, hash),
        None => (i64::MIN, GENESIS.to_string()),
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit WHERE id > ? ORDER BY id"
    )))
    .bind(after)
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let stored = Stored::from_row(row)?;
        let hash = stored.hash(&prev);
        sqlx::query("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?")
            .bind(&prev)
            .bind(&hash)
            .bind(stored.id)
            .execute(&mut *conn)
            .await?;
        prev = hash;
    }
    Ok(prev)
}

impl StateDb {
    /// Appends a row to the audit trail (chained to the previous row); returns its id.
    pub async fn audit(&self, event: &AuditEvent) -> Result<i64, StateError> {
        let _one_writer = self.audit_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(origin) = &event.origin {
            let seen: Option<i64> = sqlx::query_scalar("SELECT id FROM audit WHERE origin = ?")
                .bind(origin)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(id) = seen {
                return Ok(id);
            }
        }
        let prev = chain_pending(&mut tx).await?;
        let at = ts(event.at);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit (at, uid, gid, pid, user, action, allowed, detail, job, result, source, origin)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&at)
        .bind(event.uid.map(i64::from))
        .bind(event.gid.map(i64::from))
        .bind(event.pid)
        .bind(event.user.as_deref())
        .bind(&event.action)
        .bind(event.allowed)
        .bind(&event.detail)
        .bind(event.job.as_deref())
        .bind(&event.result)
        .bind(event.source.as_str())
        .bind(event.origin.as_deref())
        .fetch_one(&mut *tx)
        .await?;
        let stored = Stored {
            id,
            at,
            uid: event.uid.map(i64::from),
            gid: event.gid.map(i64::from),
            pid: event.pid.map(i64::from),
            user: event.user.clone(),
            action: event.action.clone(),
            job: event.job.clone(),
            allowed: event.allowed,
            result: event.result.clone(),
            detail: event.detail.clone(),
            source: event.source.as_str().to_string(),
            origin: event.origin.clone(),
        };
        sqlx::query("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?")
            .bind(&prev)
            .bind(stored.hash(&prev))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Chains rows written before the chain existed (the daemon calls it at start).
    pub async fn chain_audit(&self) -> Result<(), StateError> {
        let _one_writer = self.audit_lock.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        chain_pending(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Newest first (the events as written).
    pub async fn audit_events(&self, limit: u32) -> Result<Vec<AuditEvent>, StateError> {
        Ok(self
            .audit_rows(None, None, limit)
            .await?
            .iter()
            .rev()
            .map(event_from)
            .collect())
    }

    /// The newest `limit` rows from `since` on, of one job or all, oldest first.
    pub async fn audit_rows(
        &self,
        since: Option<DateTime<Utc>>,
        job: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StateError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR job = ?2)
             ORDER BY id DESC LIMIT ?3"
        )))
        .bind(since.map(ts))
        .bind(job)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows.iter().map(row_from).collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Checks the whole chain in id order and names the first row that does not verify.
    pub async fn verify_audit(&self) -> Result<AuditChainReport, StateError> {
        use futures::TryStreamExt;
        let mut conn = self.pool.acquire().await?;
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit ORDER BY id"
        )))
        .fetch(&mut *conn);
        let mut prev = GENESIS.to_string();
        let mut count = 0u64;
        while let Some(row) = rows.try_next().await? {
            count += 1;
            let stored = Stored::from_row(&row)?;
            let prev_hash: Option<String> = row.try_get("prev_hash")?;
            let hash: Option<String> = row.try_get("hash")?;
            let broken = |reason: String| AuditChainReport {
                rows: count,
                head: None,
                broken: Some(AuditBreak {
                    id: stored.id,
                    reason,
                }),
            };
            let (Some(prev_hash), Some(hash)) = (prev_hash, hash) else {
                return Ok(broken("the row is not chained (no hash)".into()));
            };
            if prev_hash != prev {
                return Ok(broken(format!(
                    "its previous-row hash {prev_hash} is not the previous row's {prev} (a row before it was removed, inserted or changed)"
                )));
            }
            let expect = stored.hash(&prev_hash);
            if hash != expect {
                return Ok(broken(format!(
                    "its content does not match its hash (stored {hash}, computed {expect}): the row was changed"
                )));
            }
            prev = hash;
        }
        Ok(AuditChainReport {
            rows: count,
            head: (count > 0).then_some(prev),
            broken: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    async fn db() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.db")).await.unwrap();
        (dir, db)
    }

    fn ev(action: &str, minute: u32) -> AuditEvent {
        AuditEvent {
            at: Utc.with_ymd_and_hms(2026, 12, 1, 2, minute, 0).unwrap(),
            uid: Some(0),
            user: Some("root".into()),
            action: action.into(),
            allowed: true,
            job: Some("db".into()),
            result: "ok".into(),
            ..AuditEvent::default()
        }
    }

    #[tokio::test]
    async fn rows_chain_and_an_edit_names_its_row() {
        let (_d, db) = db().await;
        assert_eq!(db.verify_audit().await.unwrap().head, None);
        let a = db.audit(&ev("run", 1)).await.unwrap();
        let b = db.audit(&ev("backup", 2)).await.unwrap();
        let c = db.audit(&ev("retention-delete", 3)).await.unwrap();
        let rows = db.audit_rows(None, None, 10).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [a, b, c]);
        assert_eq!(rows[0].prev_hash.as_deref(), Some(GENESIS));
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        let ok = db.verify_audit().await.unwrap();
        assert_eq!((ok.rows, ok.broken.clone()), (3, None));
        assert_eq!(ok.head, rows[2].hash);

        sqlx::query("UPDATE audit SET result = 'failed' WHERE id = ?")
            .bind(b)
            .execute(db.pool())
            .await
            .unwrap();
        let bad = db.verify_audit().await.unwrap().broken.unwrap();
        assert_eq!(bad.id, b, "{bad:?}");
        assert!(bad.reason.contains("changed"), "{bad:?}");
        // A new row does not heal the edited one.
        db.audit(&ev("reload", 4)).await.unwrap();
        assert_eq!(db.verify_audit().await.unwrap().broken.unwrap().id, b);
    }

    #[tokio::test]
    async fn a_removed_row_is_named_by_its_successor() {
        let (_d, db) = db().await;
        db.audit(&ev("run", 1)).await.unwrap();
        let b = db.audit(&ev("backup", 2)).await.unwrap();
        let c = db.audit(&ev("backup", 3)).await.unwrap();
        sqlx::query("DELETE FROM audit WHERE id = ?")
            .bind(b)
            .execute(db.pool())
            .await
            .unwrap();
        let bad = db.verify_audit().await.unwrap().broken.unwrap();
        assert_eq!(bad.id, c);
        assert!(bad.reason.contains("removed"), "{bad:?}");
    }

    #[tokio::test]
    async fn rows_from_before_the_chain_are_chained_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).await.unwrap();
            for action in ["run", "cancel"] {
                // As the program before migration 0006 wrote them.
                sqlx::query("INSERT INTO audit (at, uid, action, allowed, detail) VALUES (?, 0, ?, 1, '{}')")
                    .bind("2026-11-30T01:00:00.000000Z")
                    .bind(action)
                    .execute(db.pool())
                    .await
                    .unwrap();
            }
            assert!(db.verify_audit().await.unwrap().broken.is_some());
        }
        let db = StateDb::open(&path).await.unwrap();
        let report = db.verify_audit().await.unwrap();
        assert_eq!((report.rows, report.broken), (2, None));
        db.audit(&ev("run", 1)).await.unwrap();
        assert_eq!(db.verify_audit().await.unwrap().broken, None);
        // A hash removed in the middle is not silently re-chained.
        sqlx::query("UPDATE audit SET hash = NULL WHERE id = 1")
            .execute(db.pool())
            .await
            .unwrap();
        db.audit(&ev("run", 2)).await.unwrap();
        assert_eq!(db.verify_audit().await.unwrap().broken.unwrap().id, 1);
    }

    #[tokio::test]
    async fn filters_and_offline_rows_imported_once() {
        let (dir, db) = db().await;
        db.audit(&ev("run", 1)).await.unwrap();
        db.audit(&AuditEvent {
            job: Some("files".into()),
            ..ev("run", 5)
        })
        .await
        .unwrap();
        let files = db.audit_rows(None, Some("files"), 10).await.unwrap();
        assert_eq!(files.len(), 1);
        let since = Utc.with_ymd_and_hms(2026, 12, 1, 2, 3, 0).unwrap();
        assert_eq!(db.audit_rows(Some(since), None, 10).await.unwrap().len(), 1);

        let file = crate::state::offline_audit_path(dir.path());
        crate::state::append_offline_audit(&file, &ev("restore database", 7)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let events = crate::state::read_offline_audit(&file).unwrap().unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].source, AuditSource::Offline);
        let first = db.audit(&events[0]).await.unwrap();
        assert_eq!(db.audit(&events[0]).await.unwrap(), first, "imported once");
        let rows = db.audit_rows(None, None, 10).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].source, "offline");
        assert_eq!(db.verify_audit().await.unwrap().broken, None);

        std::fs::write(&file, "{not json\n").unwrap();
        let err = crate::state::read_offline_audit(&file)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
