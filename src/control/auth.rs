//! Authorization by peer credentials (SO_PEERCRED): read-only requests for the read group,
//! mutations for root, the daemon's own user or the admin group (docs/design.md §8).

use crate::protocol::Request;
use nix::unistd::{Gid, Group, Uid, User};

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// The user name, when the uid resolves.
    pub user: Option<String>,
    /// Supplementary groups of the peer process (from `/proc/<pid>/status`, else the user's
    /// group list); the primary `gid` is checked separately.
    pub groups: Vec<u32>,
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

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// status, runs, backups, follow: root, the daemon's user, the read or admin group.
    Read,
    /// run, cancel, reload: root, the daemon's user or the admin group.
    Mutate,
    /// wal-push: only the PostgreSQL OS user.
    WalPush,
}

impl Access {
    /// The access a request needs. The match is exhaustive on purpose: a new request kind must
    /// be classified here.
    pub fn of(request: &Request) -> Access {
        match request {
            Request::Status | Request::Runs { .. } | Request::Backups { .. } | Request::Follow => {
                Access::Read
            }
            Request::Retention { dry_run: true, .. }
            | Request::Usage { .. }
            | Request::Alerts { .. }
            | Request::Show { .. } => Access::Read,
            // A reported restore is recorded under the reporter's own credentials.
            Request::Metrics | Request::Audit { .. } | Request::AuditReport { .. } => Access::Read,
            Request::Run { .. }
            | Request::Verify { .. }
            | Request::Cancel { .. }
            | Request::Reload
            | Request::Retention { dry_run: false, .. }
            | Request::AlertTest { .. } => Access::Mutate,
            Request::WalPush { .. } => Access::WalPush,
        }
    }
}

impl AccessPolicy {
    /// Resolves group and user names. Names that do not exist (or cannot be looked up) give
    /// `None`; the caller logs that.
    pub fn resolve(
        daemon_uid: u32,
        read_group: &str,
        admin_group: &str,
        postgres_os_user: &str,
    ) -> AccessPolicy {
        let gid = |name: &str| {
            Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        };
        AccessPolicy {
            daemon_uid,
            read_gid: gid(read_group),
            admin_gid: gid(admin_group),
            postgres_uid: User::from_name(postgres_os_user)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw()),
        }
    }
}

impl Peer {
    /// The peer of a connected Unix stream: SO_PEERCRED, then the user name and the
    /// supplementary groups.
    pub fn from_stream(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        Ok(Peer::from_ids(cred.uid(), cred.gid(), cred.pid()))
    }

    /// Builds a peer from its ids, looking up the user name and supplementary groups.
    pub fn from_ids(uid: u32, gid: u32, pid: Option<i32>) -> Peer {
        let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
        let groups = pid
            .and_then(|pid| proc_groups(pid, uid))
            .or_else(|| {
                let u = user.as_ref()?;
                let name = std::ffi::CString::new(u.name.as_bytes()).ok()?;
                nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
                    .ok()
                    .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
            })
            .unwrap_or_default();
        Peer {
            uid,
            gid,
            pid,
            user: user.map(|u| u.name),
            groups,
        }
    }

    fn in_group(&self, gid: Option<u32>) -> bool {
        gid.is_some_and(|g| self.gid == g || self.groups.contains(&g))
    }

    /// "user nobody (uid 65534)" or "uid 65534".
    pub fn describe(&self) -> String {
        match &self.user {
            Some(name) => format!("user {name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// The supplementary groups of a process from `/proc/<pid>/status`, if the process still runs
/// as `uid` (guards against a reused pid).
fn proc_groups(pid: i32, uid: u32) -> Option<Vec<u32>> {
    if pid <= 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_proc_status_groups(&status, uid)
}

fn parse_proc_status_groups(status: &str, uid: u32) -> Option<Vec<u32>> {
    let mut groups = None;
    let mut uid_ok = false;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            // real, effective, saved, fs: SO_PEERCRED reports the effective uid.
            uid_ok = rest
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok())
                == Some(uid);
        } else if let Some(rest) = line.strip_prefix("Groups:") {
            groups = Some(
                rest.split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect(),
            );
        }
    }
    if uid_ok { groups } else { None }
}

/// Decides whether `peer` may make `request`. The error names the peer and what is required.
pub fn authorize(policy: &AccessPolicy, peer: &Peer, request: &Request) -> Result<(), String> {
    let verb = request.verb();
    let privileged = peer.uid == 0 || peer.uid == policy.daemon_uid;
    let group_name = |gid: Option<u32>| match gid {
        Some(g) => Group::from_gid(Gid::from_raw(g))
            .ok()
            .flatten()
            .map(|gr| format!("group {} (gid {g})", gr.name))
            .unwrap_or_else(|| format!("gid {g}")),
        None => "a group that does not exist on this host".to_string(),
    };
    match Access::of(request) {
        Access::Read => {
            if privileged || peer.in_group(policy.read_gid) || peer.in_group(policy.admin_gid) {
                return Ok(());
            }
            Err(format!(
                "{} may not `{verb}`: needs root, the daemon's user (uid {}), or membership of {} or {}",
                peer.describe(),
                policy.daemon_uid,
                group_name(policy.read_gid),
                group_name(policy.admin_gid)
            ))
        }
        Access::Mutate => {
            if privileged || peer.in_group(policy.admin_gid) {
                return Ok(());
            }
            Err(format!(
                "{} may not `{verb}`: needs root, the daemon's user (uid {}), or membership of the admin {}",
                peer.describe(),
                policy.daemon_uid,
                group_name(policy.admin_gid)
            ))
        }
        Access::WalPush => {
            if policy.postgres_uid == Some(peer.uid) {
                return Ok(());
            }
            Err(format!(
                "{} may not `{verb}`: only the PostgreSQL OS user ({}) may",
                peer.describe(),
                policy
                    .postgres_uid
                    .map_or("not resolved".to_string(), |u| format!("uid {u}"))
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            user: Some(format!("u{uid}")),
            groups: groups.to_vec(),
        }
    }
    const POLICY: AccessPolicy = AccessPolicy {
        daemon_uid: 100,
        read_gid: Some(500),
        admin_gid: Some(501),
        postgres_uid: Some(100),
    };
    const RUN: Request = Request::Run {
        job: String::new(),
        backup_type: None,
        wait: false,
    };

    #[test]
    fn read_requests() {
        for p in [
            peer(0, 0, &[]),
            peer(100, 100, &[]),
            peer(7, 500, &[]),
            peer(7, 7, &[500]),
            peer(7, 7, &[501]),
        ] {
            assert_eq!(authorize(&POLICY, &p, &Request::Status), Ok(()), "{p:?}");
            assert_eq!(authorize(&POLICY, &p, &Request::Follow), Ok(()), "{p:?}");
        }
        let err = authorize(&POLICY, &peer(7, 7, &[8]), &Request::Status).unwrap_err();
        assert!(
            err.contains("user u7 (uid 7)") && err.contains("gid 500") && err.contains("`status`"),
            "{err}"
        );
    }

    #[test]
    fn mutations() {
        for p in [
            peer(0, 0, &[]),
            peer(100, 100, &[]),
            peer(7, 501, &[]),
            peer(7, 7, &[9, 501]),
        ] {
            assert_eq!(authorize(&POLICY, &p, &RUN), Ok(()), "{p:?}");
            assert_eq!(authorize(&POLICY, &p, &Request::Reload), Ok(()), "{p:?}");
        }
        let err = authorize(
            &POLICY,
            &peer(7, 500, &[500]),
            &Request::Cancel { run_id: 1 },
        )
        .unwrap_err();
        assert!(
            err.contains("admin") && err.contains("gid 501") && err.contains("`cancel`"),
            "{err}"
        );
        let no_groups = AccessPolicy {
            read_gid: None,
            admin_gid: None,
            ..POLICY
        };
        let err = authorize(&no_groups, &peer(7, 7, &[]), &RUN).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn access_levels() {
        assert_eq!(
            Access::of(&Request::Backups {
                job: None,
                repository: None
            }),
            Access::Read
        );
        assert_eq!(Access::of(&RUN), Access::Mutate);
        for r in [
            Request::Status,
            Request::Reload,
            Request::Cancel { run_id: 3 },
            RUN,
        ] {
            assert_eq!(Access::of(&r) == Access::Mutate, r.is_mutation());
        }
    }

    #[test]
    fn proc_status_parsing() {
        let s = "Name:\tx\nUid:\t0\t65534\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t4 27 500 \n";
        assert_eq!(parse_proc_status_groups(s, 65534), Some(vec![4, 27, 500]));
        assert_eq!(
            parse_proc_status_groups(s, 0),
            None,
            "uid mismatch: pid reused"
        );
        let own = proc_groups(std::process::id() as i32, nix::unistd::geteuid().as_raw());
        assert!(own.is_some());
    }

    #[test]
    fn resolve_names() {
        let p = AccessPolicy::resolve(100, "root", "no-such-group-xyz", "root");
        assert_eq!(p.read_gid, Some(0));
        assert_eq!(p.admin_gid, None);
        assert_eq!(p.postgres_uid, Some(0));
        let me = Peer::from_ids(0, 0, Some(std::process::id() as i32));
        assert_eq!(me.user.as_deref(), Some("root"));
    }
}
