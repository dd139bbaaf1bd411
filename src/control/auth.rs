//! Authorization by peer credentials (SO_PEERCRED): read-only requests for the read group,
//! mutations for root, the daemon's own user or the admin group (DESIGN §8).

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// The user name, when the uid resolves.
    pub user: Option<String>,
}

/// The ids the daemon checks against, resolved from the catalogue at start and reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    pub daemon_uid: u32,
    pub read_gid: Option<u32>,
    pub admin_gid: Option<u32>,
    /// The PostgreSQL OS user: the only peer allowed to wal-push.
    pub postgres_uid: Option<u32>,
}

impl AccessPolicy {
    pub fn resolve(_daemon_uid: u32, _read_group: &str, _admin_group: &str, _postgres_os_user: &str) -> AccessPolicy {
        todo!("state/control helper")
    }
}
