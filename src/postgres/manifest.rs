//! The manifest of a `postgres-dump` backup (stored encrypted: it names databases and tables):
//! each database's raw `pg_dump -Fc` object, the globals SQL object, and the versions involved.

use crate::repository::ObjectRecord;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The manifest's `kind`.
pub const DUMP_MANIFEST_KIND: &str = "postgres-dump";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DumpManifest {
    pub format_version: u32,
    /// Always [`DUMP_MANIFEST_KIND`].
    pub kind: String,
    pub job: String,
    pub backup_id: String,
    pub started_at: DateTime<Utc>,
    pub stopped_at: DateTime<Utc>,
    /// The server dumped, `host:port` (no credentials).
    pub server: String,
    pub server_version_num: u32,
    pub server_version: String,
    /// `pg_dump --version`.
    pub pg_dump_version: String,
    pub databases: Vec<DumpedDatabase>,
    pub globals: Option<DumpedGlobals>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DumpedDatabase {
    pub name: String,
    /// The stored object: its `content-size`/`content-sha256` are the raw archive's.
    pub object: ObjectRecord,
    /// "custom" (`pg_dump -Fc -Z0`).
    pub format: String,
    /// The `-t` patterns given to pg_dump (empty: the whole database).
    #[serde(default)]
    pub selected_tables: Vec<String>,
    /// The database's tables (`schema.table`) when it was dumped.
    #[serde(default)]
    pub tables: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DumpedGlobals {
    /// `pg_dumpall --globals-only` SQL.
    pub object: ObjectRecord,
    /// True when the dumping role was not a superuser: roles come without their passwords.
    pub no_role_passwords: bool,
}

impl DumpManifest {
    /// The entry of `database`, or the only one when `database` is None.
    pub fn database(&self, database: Option<&str>) -> Result<&DumpedDatabase, String> {
        match database {
            Some(name) => self
                .databases
                .iter()
                .find(|d| d.name == name)
                .ok_or_else(|| {
                    format!(
                        "database `{name}` is not in this backup (it has: {})",
                        self.database_names().join(", ")
                    )
                }),
            None if self.databases.len() == 1 => Ok(&self.databases[0]),
            None => Err(format!(
                "this backup holds several databases ({}); name one with --database",
                self.database_names().join(", ")
            )),
        }
    }

    pub fn database_names(&self) -> Vec<&str> {
        self.databases.iter().map(|d| d.name.as_str()).collect()
    }
}
