//! WAL retention for `postgres-base` jobs (docs/retention.md, "WAL"): after the backups of a
//! base job are thinned in a repository, the archived WAL of its `wal-job` in that repository
//! is thinned to what the kept backups need.
//!
//! - **Continuous WAL** is kept from the *anchor* on: the start segment of the newest kept
//!   backup that stopped at or before `now − pitr-window` (so every point inside the window is
//!   reachable), or of the oldest kept backup when none is that old; without `pitr-window`, from
//!   the oldest kept backup (every kept backup can be rolled forward to the present).
//! - Older kept backups keep only their own WAL: start to stop segment on their timeline
//!   (pinned; the objects stay where they are).
//! - `.history` files never expire; WAL of other clusters (another system identifier or major
//!   version) is never touched; with no kept base backup nothing is deleted.

pub use crate::model::{Pin, WalPlan, WalRetentionReport};
use crate::postgres::base_record::BaseBackupInfo;
use crate::repository::{ObjectMeta, Repository};
use crate::wal::format::{self, ArchivedKey};
use crate::wal::{ClusterIdentity, WalKind, WalName};
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::time::Duration;

/// A kept base backup, as WAL retention sees it.
#[derive(Debug, Clone)]
pub struct KeptBase {
    pub id: String,
    pub stopped_at: DateTime<Utc>,
    pub info: BaseBackupInfo,
}

fn position_of(segment: &str) -> Option<(u32, u64)> {
    let n = WalName::parse(segment)?;
    Some((n.timeline, n.position()))
}

/// Plans WAL retention over the archived `objects` (any keys; non-WAL keys are ignored).
pub fn plan(
    objects: &[ObjectMeta],
    kept: &[KeptBase],
    pitr_window: Option<Duration>,
    now: DateTime<Utc>,
) -> WalPlan {
    let mut out = WalPlan::default();
    let mut usable: Vec<&KeptBase> = kept
        .iter()
        .filter(|k| {
            position_of(&k.info.start_wal).is_some() && position_of(&k.info.stop_wal).is_some()
        })
        .collect();
    if usable.is_empty() {
        return out;
    }
    usable.sort_by_key(|k| k.stopped_at);
    let anchor = match pitr_window {
        Some(window) => {
            let edge = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
            usable
                .iter()
                .rev()
                .find(|k| k.stopped_at <= edge)
                .copied()
                .unwrap_or(usable[0])
        }
        None => usable[0],
    };
    let (_, anchor_pos) = position_of(&anchor.info.start_wal).expect("checked");
    out.continuous_from = Some(anchor.info.start_wal.clone());
    out.anchor_backup = Some(anchor.id.clone());
    let clusters: BTreeSet<(u64, u32)> = usable
        .iter()
        .map(|k| (k.info.cluster.system_identifier, k.info.cluster.pg_major))
        .collect();
    let pins: Vec<(u32, u64, u64, &KeptBase)> = usable
        .iter()
        .filter(|k| k.id != anchor.id)
        .filter_map(|k| {
            let (tl, a) = position_of(&k.info.start_wal)?;
            let (_, b) = position_of(&k.info.stop_wal)?;
            Some((tl, a, b, *k))
        })
        .filter(|(_, a, _, _)| *a < anchor_pos)
        .collect();
    out.pins = pins
        .iter()
        .map(|(_, _, _, k)| Pin {
            backup: k.id.clone(),
            start_wal: k.info.start_wal.clone(),
            stop_wal: k.info.stop_wal.clone(),
        })
        .collect();
    let mut delete: Vec<(u64, &ObjectMeta)> = Vec::new();
    for o in objects {
        let Some(ArchivedKey { identity, name, .. }) = format::parse_object_key(&o.key) else {
            continue;
        };
        if !clusters.contains(&(identity.system_identifier, identity.pg_major)) {
            continue;
        }
        if name.kind == WalKind::History {
            out.history_files += 1;
            continue;
        }
        let pos = name.position();
        let pinned = pins.iter().any(|(tl, a, b, k)| {
            *tl == name.timeline && (*a..=*b).contains(&pos) && k.info.cluster == identity
        });
        if pos >= anchor_pos || pinned {
            out.kept_files += 1;
        } else {
            delete.push((pos, o));
        }
    }
    delete.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key.cmp(&b.1.key)));
    out.bytes_to_free = delete.iter().map(|(_, o)| o.size).sum();
    out.delete = delete.into_iter().map(|(_, o)| o.key.clone()).collect();
    out
}

/// The kept backups of a base job, from its commit records (records without base-backup info
/// are skipped: they cannot anchor anything).
pub fn kept_from_records(records: &[crate::repository::CommitRecord]) -> Vec<KeptBase> {
    records
        .iter()
        .filter_map(|r| {
            let info = BaseBackupInfo::from_record(r)?.ok()?;
            Some(KeptBase {
                id: r.id.clone(),
                stopped_at: r.stopped_at,
                info,
            })
        })
        .collect()
}

/// Lists the WAL of the kept backups' clusters in `repository`, plans, and deletes (unless
/// `dry_run`), then confirms by listing.
pub async fn run(
    repository: &Repository,
    wal_job: &str,
    kept: &[KeptBase],
    pitr_window: Option<Duration>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> WalRetentionReport {
    let mut report = WalRetentionReport {
        wal_job: wal_job.to_string(),
        ..Default::default()
    };
    let clusters: BTreeSet<ClusterIdentity> = kept.iter().map(|k| k.info.cluster).collect();
    let mut objects = Vec::new();
    for c in &clusters {
        match repository.store.list(&format::archive_prefix(c)).await {
            Ok(mut l) => objects.append(&mut l),
            Err(err) => {
                report.errors.push(format!(
                    "cannot list the WAL archive {}: {}",
                    format::archive_prefix(c),
                    crate::error::error_chain_of(&err)
                ));
                return report;
            }
        }
    }
    report.plan = plan(&objects, kept, pitr_window, now);
    if dry_run || report.plan.delete.is_empty() {
        return report;
    }
    let sizes: std::collections::HashMap<&str, u64> =
        objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    for key in &report.plan.delete {
        match repository.store.delete(key).await {
            Ok(()) | Err(crate::repository::StoreError::NotFound { .. }) => {
                report.deleted += 1;
                report.bytes_freed += sizes.get(key.as_str()).copied().unwrap_or(0);
            }
            Err(err) => {
                report.failed += 1;
                if report.errors.len() < 10 {
                    report.errors.push(format!(
                        "deleting {key}: {}",
                        crate::error::error_chain_of(&err)
                    ));
                }
            }
        }
    }
    if report.deleted > 0 {
        let wanted: BTreeSet<&str> = report.plan.delete.iter().map(String::as_str).collect();
        let mut left = 0u64;
        for c in &clusters {
            match repository.store.list(&format::archive_prefix(c)).await {
                Ok(l) => {
                    left += l.iter().filter(|o| wanted.contains(o.key.as_str())).count() as u64
                }
                Err(err) => {
                    report.errors.push(format!(
                        "cannot confirm the WAL deletions by listing: {}",
                        crate::error::error_chain_of(&err)
                    ));
                    report.confirmed = Some(false);
                    return report;
                }
            }
        }
        report.confirmed = Some(left <= report.failed);
    }
    tracing::info!(
        repository = %repository.name,
        wal_job,
        deleted = report.deleted,
        continuous_from = report.plan.continuous_from.as_deref().unwrap_or("-"),
        "WAL retention"
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SYS: u64 = 7_000_000_000_000_000_001;

    fn id() -> ClusterIdentity {
        ClusterIdentity {
            system_identifier: SYS,
            pg_major: 15,
        }
    }

    fn seg(tl: u32, n: u32) -> String {
        format!("{tl:08X}{:08X}{:08X}", 0, n)
    }

    fn obj(name: &str) -> ObjectMeta {
        let n = WalName::parse(name).unwrap();
        ObjectMeta {
            key: format::object_key(&id(), &n, &"0".repeat(64)),
            size: 1000,
            modified: Utc::now(),
        }
    }

    fn base(idn: &str, day: u32, tl: u32, start: u32, stop: u32) -> KeptBase {
        KeptBase {
            id: idn.into(),
            stopped_at: Utc.with_ymd_and_hms(2026, 11, day, 4, 0, 0).unwrap(),
            info: BaseBackupInfo {
                cluster: id(),
                server_version: 150004,
                timeline: tl,
                start_lsn: "0/0".into(),
                stop_lsn: "0/0".into(),
                start_wal: seg(tl, start),
                stop_wal: seg(tl, stop),
                wal_segment_size: 16 << 20,
                wal_job: Some("wal".into()),
                data_checksums: true,
                checksum_failures: 0,
                backup_label_key: String::new(),
                tablespace_map_key: None,
                tablespaces: vec![],
            },
        }
    }

    fn names(p: &WalPlan) -> Vec<String> {
        p.delete
            .iter()
            .map(|k| format::parse_object_key(k).unwrap().name.name)
            .collect()
    }

    #[test]
    fn keeps_continuous_wal_from_the_window_edge_and_pins_older_backups() {
        let mut objects: Vec<ObjectMeta> = (1..=40).map(|n| obj(&seg(1, n))).collect();
        objects.push(obj("00000002.history"));
        objects.push(obj(&format!("{}.00000028.backup", seg(1, 11))));
        let kept = vec![
            base("A", 1, 1, 1, 2),
            base("B", 10, 1, 11, 12),
            base("C", 20, 1, 21, 22),
            base("D", 25, 1, 31, 31),
        ];
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        // Window 14 days → edge 2026-11-12: B is the newest backup stopped before the edge.
        let p = plan(&objects, &kept, Some(Duration::from_secs(14 * 86400)), now);
        assert_eq!(p.anchor_backup.as_deref(), Some("B"));
        assert_eq!(p.continuous_from, Some(seg(1, 11)));
        assert_eq!(p.pins.len(), 1);
        let expected: Vec<String> = (3..=10).map(|n| seg(1, n)).collect();
        assert_eq!(names(&p), expected);
        assert_eq!(p.history_files, 1);
        // No window: continuous from the oldest kept backup — nothing older to delete.
        let p = plan(&objects, &kept, None, now);
        assert_eq!(p.anchor_backup.as_deref(), Some("A"));
        assert!(p.delete.is_empty());
        // A window shorter than every backup's age: anchor on the newest old-enough backup.
        let p = plan(&objects, &kept, Some(Duration::from_secs(3600)), now);
        assert_eq!(p.anchor_backup.as_deref(), Some("D"));
        let del = names(&p);
        assert!(del.contains(&seg(1, 3)) && del.contains(&seg(1, 30)));
        for keep in [1, 2, 11, 12, 21, 22, 31, 40] {
            assert!(!del.contains(&seg(1, keep)), "segment {keep} must stay");
        }
        // The .backup file of B's start segment is pinned with B.
        assert!(!p.delete.iter().any(|k| k.contains(".backup")));
    }

    #[test]
    fn never_deletes_without_backups_history_or_other_clusters() {
        let mut objects: Vec<ObjectMeta> = (1..=5).map(|n| obj(&seg(1, n))).collect();
        let other = ClusterIdentity {
            system_identifier: 42,
            pg_major: 15,
        };
        objects.push(ObjectMeta {
            key: format::object_key(
                &other,
                &WalName::parse(&seg(1, 1)).unwrap(),
                &"1".repeat(64),
            ),
            size: 1,
            modified: Utc::now(),
        });
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        assert!(plan(&objects, &[], None, now).delete.is_empty());
        let p = plan(&objects, &[base("X", 20, 1, 4, 4)], None, now);
        assert_eq!(names(&p), vec![seg(1, 1), seg(1, 2), seg(1, 3)]);
        assert!(p.delete.iter().all(|k| !k.contains("/42-15/")));
    }

    #[test]
    fn pins_respect_timelines() {
        // A kept backup on timeline 1 pins only timeline 1's segments in its range.
        let objects: Vec<ObjectMeta> = vec![obj(&seg(1, 3)), obj(&seg(2, 3)), obj(&seg(2, 9))];
        let kept = vec![base("old", 1, 1, 3, 3), base("new", 20, 2, 9, 9)];
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        let p = plan(&objects, &kept, Some(Duration::from_secs(86400)), now);
        assert_eq!(names(&p), vec![seg(2, 3)]);
    }
}
