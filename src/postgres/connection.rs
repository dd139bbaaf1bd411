//! The control connection to the cluster (sqlx, one session): server version, role attributes,
//! database existence and creation, table listing. Errors name the server and database.

use crate::error::{Classify, Retry, io_retry};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// How long a connection attempt may take before it is abandoned.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid PostgreSQL URL `{url}`: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("password file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PostgreSQL at {target}: authentication failed for user {user}: {source}")]
    AuthFailed {
        target: String,
        user: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("connecting to PostgreSQL at {target} as {user}: {source}")]
    Connect {
        target: String,
        user: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("connecting to PostgreSQL at {target}: no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { target: String },
    #[error("PostgreSQL at {target}: {what}: {source}")]
    Query {
        target: String,
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("PostgreSQL at {target}: database `{database}` already exists")]
    DatabaseExists { target: String, database: String },
}

impl Classify for PgError {
    fn retry(&self) -> Retry {
        match self {
            PgError::InvalidUrl { .. }
            | PgError::PasswordFile { .. }
            | PgError::AuthFailed { .. }
            | PgError::DatabaseExists { .. } => Retry::Permanent,
            PgError::Timeout { .. } => Retry::Transient,
            PgError::Connect { source, .. } | PgError::Query { source, .. } => sqlx_retry(source),
        }
    }
}

/// Classifies a sqlx error: I/O by kind; SQLSTATE class 08 (connection), 53 (resources), 57P0x
/// (shutdown, cannot connect now), 40001/40P01 (serialization, deadlock) are transient.
pub fn sqlx_retry(err: &sqlx::Error) -> Retry {
    match err {
        sqlx::Error::Io(e) => io_retry(e),
        sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => Retry::Transient,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            if code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
            {
                Retry::Transient
            } else {
                Retry::Permanent
            }
        }
        _ => Retry::Permanent,
    }
}

fn is_auth_failure(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("28P01") | Some("28000")),
        _ => false,
    }
}

/// Reads the first line of a password file (trailing newline removed).
pub fn read_password_file(path: &Path) -> Result<String, PgError> {
    crate::secrets::check_private(path).map_err(|source| PgError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    let text = std::fs::read_to_string(path).map_err(|source| PgError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .next()
        .unwrap_or("")
        .trim_end_matches('\r')
        .to_string())
}

/// Parses a URL into sqlx options; with a password file, its password is used.
pub fn connect_options(
    url: &str,
    password_file: Option<&Path>,
) -> Result<PgConnectOptions, PgError> {
    let mut options =
        PgConnectOptions::from_str(&crate::catalogue::validate::with_placeholder_host(url))
            .map_err(|source| PgError::InvalidUrl {
                url: url.to_string(),
                source,
            })?;
    if let Some(path) = password_file {
        options = options.password(&read_password_file(path)?);
    }
    Ok(options.application_name("bdc-backup"))
}

/// `host:port/db` (or `socket/db`) for messages.
pub fn describe(options: &PgConnectOptions) -> String {
    let db = options.get_database().unwrap_or("(default)");
    match options.get_socket() {
        Some(socket) => format!("{}:{}/{}", socket.display(), options.get_port(), db),
        None => format!("{}:{}/{}", options.get_host(), options.get_port(), db),
    }
}

/// One session on the cluster.
pub struct PgControl {
    options: PgConnectOptions,
    target: String,
    conn: PgConnection,
}

impl std::fmt::Debug for PgControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgControl")
            .field("target", &self.target)
            .finish()
    }
}

impl PgControl {
    /// Connects to `url` (no password inside); the password comes from `password_file` if given,
    /// else from PGPASSFILE / ~/.pgpass, else peer or trust authentication. Gives up after
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(url: &str, password_file: Option<&Path>) -> Result<PgControl, PgError> {
        let options = connect_options(url, password_file)?;
        Self::connect_with(options).await
    }

    /// Like [`PgControl::connect`], on another port of the same host (a restored cluster).
    pub async fn connect_port(
        url: &str,
        password_file: Option<&Path>,
        port: u16,
    ) -> Result<PgControl, PgError> {
        let options = connect_options(url, password_file)?.port(port);
        Self::connect_with(options).await
    }

    /// Like [`PgControl::connect`], through the Unix socket folder `dir` on `port` (a drill
    /// cluster that listens on no TCP address).
    pub async fn connect_socket(
        url: &str,
        password_file: Option<&Path>,
        dir: &Path,
        port: u16,
    ) -> Result<PgControl, PgError> {
        let options = connect_options(url, password_file)?.socket(dir).port(port);
        Self::connect_with(options).await
    }

    async fn connect_with(options: PgConnectOptions) -> Result<PgControl, PgError> {
        let target = describe(&options);
        let user = options.get_username().to_string();
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Err(_) => return Err(PgError::Timeout { target }),
            Ok(Err(source)) if is_auth_failure(&source) => {
                return Err(PgError::AuthFailed {
                    target,
                    user,
                    source,
                });
            }
            Ok(Err(source)) => {
                return Err(PgError::Connect {
                    target,
                    user,
                    source,
                });
            }
            Ok(Ok(conn)) => conn,
        };
        Ok(PgControl {
            options,
            target,
            conn,
        })
    }

    /// A new session on another database of the same server, with the same credentials.
    pub async fn connect_database(&self, database: &str) -> Result<PgControl, PgError> {
        Self::connect_with(self.options.clone().database(database)).await
    }

    /// `host:port/db`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The session itself, for queries of other modules (the base backup holds it open).
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// The role this session runs as.
    pub fn user(&self) -> &str {
        self.options.get_username()
    }

    fn query_err(&self, what: &str) -> impl FnOnce(sqlx::Error) -> PgError + '_ {
        let what = what.to_string();
        move |source| PgError::Query {
            target: self.target.clone(),
            what,
            source,
        }
    }

    /// `server_version_num`, e.g. 150014.
    pub async fn server_version_num(&mut self) -> Result<u32, PgError> {
        let v: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|source| PgError::Query {
                target: self.target.clone(),
                what: "reading server_version_num".into(),
                source,
            })?;
        v.trim().parse().map_err(|_| PgError::Query {
            target: self.target.clone(),
            what: "reading server_version_num".into(),
            source: sqlx::Error::Protocol(format!("unexpected server_version_num `{v}`")),
        })
    }

    /// `server_version`, e.g. "15.14 (Debian 15.14-0+deb12u1)".
    pub async fn server_version(&mut self) -> Result<String, PgError> {
        let target = self.target.clone();
        sqlx::query_scalar("SELECT current_setting('server_version')")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|source| PgError::Query {
                target,
                what: "reading server_version".into(),
                source,
            })
    }

    /// The WAL file being written now and `pg_stat_archiver`'s failure figures (WAL status):
    /// `(current segment, failed_count, last_failed_wal, last_failed_time)`.
    pub async fn wal_archiver_status(
        &mut self,
    ) -> Result<
        (
            String,
            i64,
            Option<String>,
            Option<chrono::DateTime<chrono::Utc>>,
        ),
        PgError,
    > {
        let target = self.target.clone();
        sqlx::query_as(
            "SELECT pg_walfile_name(pg_current_wal_lsn()), failed_count, last_failed_wal, last_failed_time \
             FROM pg_stat_archiver",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(|source| PgError::Query {
            target,
            what: "reading pg_stat_archiver".into(),
            source,
        })
    }

    /// `archive_timeout` in seconds (0 = off), for the default `max-age` of a WAL job.
    pub async fn archive_timeout_seconds(&mut self) -> Result<i64, PgError> {
        let target = self.target.clone();
        sqlx::query_scalar("SELECT setting::bigint FROM pg_settings WHERE name = 'archive_timeout'")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|source| PgError::Query {
                target,
                what: "reading archive_timeout".into(),
                source,
            })
    }

    /// Whether the session's role is a superuser.
    pub async fn is_superuser(&mut self) -> Result<bool, PgError> {
        let target = self.target.clone();
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|source| PgError::Query {
                target,
                what: "reading the role's attributes".into(),
                source,
            })
    }

    pub async fn database_exists(&mut self, name: &str) -> Result<bool, PgError> {
        let target = self.target.clone();
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|source| PgError::Query {
                target,
                what: format!("checking whether database `{name}` exists"),
                source,
            })
    }

    /// `CREATE DATABASE "name" TEMPLATE template0` (the empty template, as pg_restore wants).
    /// An existing database is an error.
    pub async fn create_database(&mut self, name: &str) -> Result<(), PgError> {
        if self.database_exists(name).await? {
            return Err(PgError::DatabaseExists {
                target: self.target.clone(),
                database: name.to_string(),
            });
        }
        let sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
        let what = format!("creating database `{name}`");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut self.conn)
            .await
            .map_err(self.query_err(&what))?;
        Ok(())
    }

    /// `DROP DATABASE` (with `FORCE` from PostgreSQL 13 on, so a session a failed tool left
    /// behind does not keep it): undoes a `create_database` whose restore failed.
    pub async fn drop_database(
        &mut self,
        name: &str,
        server_version_num: u32,
    ) -> Result<(), PgError> {
        let force = if server_version_num >= 130_000 {
            " WITH (FORCE)"
        } else {
            ""
        };
        let sql = format!("DROP DATABASE IF EXISTS {}{force}", quote_ident(name));
        let what = format!("dropping database `{name}`");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut self.conn)
            .await
            .map_err(self.query_err(&what))?;
        Ok(())
    }

    /// Ordinary and partitioned tables of `db` as `schema.table`, sorted, system schemas excluded.
    pub async fn list_tables(&self, db: &str) -> Result<Vec<String>, PgError> {
        let mut other = self.connect_database(db).await?;
        let target = other.target.clone();
        let rows = sqlx::query(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1, 2",
        )
        .fetch_all(&mut other.conn)
        .await
        .map_err(|source| PgError::Query {
            target,
            what: "listing tables".into(),
            source,
        })?;
        other.close().await;
        Ok(rows
            .iter()
            .map(|r| format!("{}.{}", r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect())
    }

    /// Functions of `db` as `schema.name`, sorted, system schemas excluded.
    pub async fn list_functions(&self, db: &str) -> Result<Vec<String>, PgError> {
        let mut other = self.connect_database(db).await?;
        let target = other.target.clone();
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        )
        .fetch_all(&mut other.conn)
        .await
        .map_err(|source| PgError::Query {
            target,
            what: "listing functions".into(),
            source,
        })?;
        other.close().await;
        Ok(names)
    }

    /// Closes the session politely.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// Quotes an SQL identifier: `"na""me"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("bdc_db"), "\"bdc_db\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn describes_targets() {
        let o = connect_options("postgresql://bdc@db.example:5433/bdc_db", None).unwrap();
        assert_eq!(describe(&o), "db.example:5433/bdc_db");
    }

    #[test]
    fn auth_failure_is_permanent_refused_is_transient() {
        let refused = PgError::Connect {
            target: "x".into(),
            user: "u".into(),
            source: sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(refused.retry(), Retry::Transient);
        let bad = PgError::PasswordFile {
            path: "/nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(bad.retry(), Retry::Permanent);
    }
}
