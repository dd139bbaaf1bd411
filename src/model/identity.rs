//! Which PostgreSQL cluster a data directory (and its WAL) belongs to. Reading it from a data
//! directory is [`crate::wal::header`]'s job.

/// Which cluster a data directory belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterIdentity {
    /// `system_identifier` from `pg_control` (as a string on the wire and in JSON records: it
    /// does not fit a JSON number exactly).
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    /// The major version from `PG_VERSION` (12, 13, …).
    pub pg_major: u32,
}

/// Serde helper: a u64 written as a decimal string (read from a string or a number).
pub mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(u64),
        }
        match Either::deserialize(d)? {
            Either::S(s) => s.parse().map_err(serde::de::Error::custom),
            Either::N(n) => Ok(n),
        }
    }
}
