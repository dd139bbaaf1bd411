//! SQL checks (`[[job.check]]`): one query, one value, the expectations `min`, `max`, `equals`
//! and `compare-with-source` (the same query on the live database must give the same answer).

use crate::postgres::connection::PgControl;
use crate::verify::check::{Check, CheckKind, CheckResult, SqlCheck};
use sqlx::{Row, ValueRef};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where a query runs.
#[derive(Debug, Clone)]
pub struct Target {
    /// A postgresql:// URL (its database is replaced by [`Target::connect`]'s argument).
    pub url: String,
    pub password_file: Option<PathBuf>,
    /// A drill cluster: its socket folder and port instead of the URL's host.
    pub socket: Option<(PathBuf, u16)>,
}

impl Target {
    /// A session on `database`.
    pub async fn connect(&self, database: &str) -> Result<PgControl, String> {
        let url = crate::postgres::process::url_with_database(&self.url, database)
            .map_err(|e| e.to_string())?;
        let pw = self.password_file.as_deref();
        match &self.socket {
            Some((dir, port)) => PgControl::connect_socket(&url, pw, dir, *port).await,
            None => PgControl::connect(&url, pw).await,
        }
        .map_err(|e| crate::error::error_chain_of(&e))
    }
}

/// Runs `sql` on `database` and returns its single value as text (`NULL` for null). More or
/// fewer rows or columns, and a failing query, are errors naming PostgreSQL's message.
pub async fn query_value(target: &Target, database: &str, sql: &str) -> Result<String, String> {
    let mut pg = target.connect(database).await?;
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(pg.conn())
        .await;
    pg.close().await;
    let rows = rows.map_err(|e| match &e {
        sqlx::Error::Database(db) => format!("PostgreSQL said: {}", db.message()),
        _ => e.to_string(),
    })?;
    let [row] = rows.as_slice() else {
        return Err(format!("returned {} rows, not one value", rows.len()));
    };
    if row.len() != 1 {
        return Err(format!("returned {} columns, not one value", row.len()));
    }
    let raw = row.try_get_raw(0).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok("NULL".into());
    }
    // The simple query protocol answers in text.
    raw.as_str().map(str::to_string).map_err(|e| e.to_string())
}

/// Why `value` does not meet the expectations (None: it does). `source` is the live answer for
/// `compare-with-source`.
pub fn judge(check: &SqlCheck, value: &str, source: Option<&str>) -> Option<String> {
    let e = &check.expect;
    let mut wrong = Vec::new();
    if e.min.is_some() || e.max.is_some() {
        match value.trim().parse::<f64>() {
            Ok(n) => {
                if let Some(min) = e.min
                    && n < min
                {
                    wrong.push(format!("{value} is below min {min}"));
                }
                if let Some(max) = e.max
                    && n > max
                {
                    wrong.push(format!("{value} is above max {max}"));
                }
            }
            Err(_) => wrong.push(format!("`{value}` is not a number (min/max need one)")),
        }
    }
    if let Some(want) = &e.equals
        && value != want
    {
        wrong.push(format!("`{value}` is not equal to `{want}`"));
    }
    if let Some(live) = source
        && live != value
    {
        wrong.push(format!(
            "`{value}` differs from the live database's answer `{live}`"
        ));
    }
    (!wrong.is_empty()).then(|| wrong.join("; "))
}

/// Runs one check on `database` of the restored `drill` target (and, for compare-with-source,
/// on `source_database` of the live `source`).
pub(super) async fn run_check(
    req: &super::DrillRequest<'_>,
    check: &SqlCheck,
    drill: &Target,
    database: &str,
    source: &Target,
    source_database: &str,
) -> Check {
    let began = Instant::now();
    let (result, detail) = match query_value(drill, database, &check.sql).await {
        Err(e) => (
            CheckResult::Fail,
            format!("the query `{}` failed on the restored data: {e}", check.sql),
        ),
        Ok(value) => {
            let live = if check.expect.compare_with_source {
                Some(query_value(source, source_database, &check.sql).await)
            } else {
                None
            };
            match live {
                Some(Err(e)) => (
                    CheckResult::Fail,
                    format!(
                        "restored value `{value}`; the query `{}` failed on the live database `{source_database}`: {e}",
                        check.sql
                    ),
                ),
                Some(Ok(live)) => verdict(check, &value, Some(&live)),
                None => verdict(check, &value, None),
            }
        }
    };
    super::new_check(
        req,
        CheckKind::Sql,
        check.display_name(),
        result,
        detail,
        began.elapsed().as_secs_f64(),
        0,
    )
}

fn verdict(check: &SqlCheck, value: &str, live: Option<&str>) -> (CheckResult, String) {
    match judge(check, value, live) {
        Some(why) => (CheckResult::Fail, format!("`{}`: {why}", check.sql)),
        None => (CheckResult::Pass, format!("value `{value}`")),
    }
}

/// The checks of `job`, each with the source database it runs against (`default` when the
/// check names none).
pub fn checks_of<'a>(
    checks: &'a [SqlCheck],
    job: &str,
    default: &str,
) -> Vec<(&'a SqlCheck, String)> {
    checks
        .iter()
        .filter(|c| c.job == job)
        .map(|c| (c, c.database.clone().unwrap_or_else(|| default.to_string())))
        .collect()
}

/// The database of a URL (`postgres` when it names none), for a base job's default.
pub fn url_database(url: &str, password_file: Option<&Path>) -> String {
    crate::postgres::connection::connect_options(url, password_file)
        .ok()
        .and_then(|o| o.get_database().map(str::to_string))
        .unwrap_or_else(|| "postgres".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::check::SqlExpect;

    fn check(expect: SqlExpect) -> SqlCheck {
        SqlCheck {
            job: "db".into(),
            database: None,
            name: None,
            sql: "SELECT 1".into(),
            expect,
        }
    }

    #[test]
    fn expectations() {
        let c = check(SqlExpect {
            min: Some(1.0),
            max: Some(10.0),
            ..Default::default()
        });
        assert_eq!(judge(&c, "5", None), None);
        assert!(judge(&c, "0", None).unwrap().contains("below min 1"));
        assert!(judge(&c, "11", None).unwrap().contains("above max 10"));
        assert!(judge(&c, "abc", None).unwrap().contains("not a number"));
        let c = check(SqlExpect {
            equals: Some("ok".into()),
            compare_with_source: true,
            ..Default::default()
        });
        assert_eq!(judge(&c, "ok", Some("ok")), None);
        assert!(
            judge(&c, "ok", Some("no"))
                .unwrap()
                .contains("live database")
        );
        assert!(judge(&c, "no", Some("no")).unwrap().contains("not equal"));
    }
}
