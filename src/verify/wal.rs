//! WAL continuity: from a base backup's start segment to the newest archived segment of its
//! cluster, every segment archived (on the backup's timeline or a later one), and a `.history`
//! file for every timeline after the first that the range uses. Gaps are named by segment.
//! Pure: works on the archive's parsed keys and the backup's recorded facts.

use crate::postgres::base_record::BaseBackupInfo;
use crate::wal::format::ArchivedKey;
use crate::wal::{WalKind, WalName};
use std::collections::{BTreeMap, BTreeSet};

/// What the continuity check of one base backup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuity {
    /// The newest archived segment of the cluster (None when it has none).
    pub newest: Option<String>,
    /// Segments checked (start to newest).
    pub segments: u64,
    /// Missing segments, as `(first, last, timeline, count)` runs.
    pub gaps: Vec<(String, String, u32, u64)>,
    /// Timelines used by the range whose `.history` file is missing.
    pub missing_history: Vec<u32>,
}

impl Continuity {
    pub fn is_complete(&self) -> bool {
        self.newest.is_some() && self.gaps.is_empty() && self.missing_history.is_empty()
    }

    /// One line naming every problem (or the range checked), for the check's detail.
    pub fn describe(&self, backup_id: &str, info: &BaseBackupInfo) -> String {
        let Some(newest) = &self.newest else {
            return format!(
                "no archived WAL segment of cluster {}-{} in this repository: base backup {backup_id} (start {}) cannot be recovered",
                info.cluster.system_identifier, info.cluster.pg_major, info.start_wal
            );
        };
        let mut parts = Vec::new();
        for (first, last, tl, n) in self.gaps.iter().take(5) {
            let what = if n == &1 {
                format!("missing {first} (timeline {tl})")
            } else {
                format!("missing {first} … {last} ({n} segments, timeline {tl})")
            };
            parts.push(what);
        }
        if self.gaps.len() > 5 {
            parts.push(format!("and {} more gaps", self.gaps.len() - 5));
        }
        for tl in &self.missing_history {
            parts.push(format!("missing {tl:08X}.history (timeline {tl} is used)"));
        }
        if parts.is_empty() {
            format!(
                "{} segments from {} (start of base backup {backup_id}) to the newest, {newest}, all archived",
                self.segments, info.start_wal
            )
        } else {
            format!(
                "{} between base backup {backup_id}'s start ({}) and the newest segment ({newest})",
                parts.join("; "),
                info.start_wal
            )
        }
    }
}

/// Checks the archive (`archived`: every parsed WAL key of the repository, any cluster) for the
/// base backup described by `info`.
pub fn continuity(archived: &[ArchivedKey], info: &BaseBackupInfo) -> Continuity {
    let size = info.wal_segment_size.max(1);
    let per_log = (0x1_0000_0000u64 / size).max(1);
    let segno = |n: &WalName| u64::from(n.log) * per_log + u64::from(n.seg);
    let name_of =
        |tl: u32, segno: u64| format!("{:08X}{:08X}{:08X}", tl, segno / per_log, segno % per_log);
    let mut segments: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    let mut histories: BTreeSet<u32> = BTreeSet::new();
    for k in archived.iter().filter(|k| k.identity == info.cluster) {
        match k.name.kind {
            WalKind::Segment if k.name.timeline >= info.timeline => {
                segments
                    .entry(segno(&k.name))
                    .or_default()
                    .insert(k.name.timeline);
            }
            WalKind::History => {
                histories.insert(k.name.timeline);
            }
            _ => {}
        }
    }
    let Some(start) = WalName::parse(&info.start_wal).map(|n| segno(&n)) else {
        return Continuity {
            newest: None,
            segments: 0,
            gaps: Vec::new(),
            missing_history: Vec::new(),
        };
    };
    let Some((&last, tls)) = segments.iter().next_back() else {
        return Continuity {
            newest: None,
            segments: 0,
            gaps: Vec::new(),
            missing_history: Vec::new(),
        };
    };
    let newest_tl = tls.iter().next_back().copied().unwrap_or(info.timeline);
    let mut gaps: Vec<(String, String, u32, u64)> = Vec::new();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    used.insert(info.timeline);
    let mut current = info.timeline;
    let mut open: Option<(u64, u64, u32)> = None;
    let end = last.max(start);
    for n in start..=end {
        match segments.get(&n) {
            Some(tls) => {
                if let Some((a, b, tl)) = open.take() {
                    gaps.push((name_of(tl, a), name_of(tl, b), tl, b - a + 1));
                }
                current = tls.iter().next_back().copied().unwrap_or(current);
                used.extend(tls.iter().copied());
            }
            None => {
                open = match open {
                    Some((a, _, tl)) => Some((a, n, tl)),
                    None => Some((n, n, current)),
                };
            }
        }
    }
    if let Some((a, b, tl)) = open.take() {
        gaps.push((name_of(tl, a), name_of(tl, b), tl, b - a + 1));
    }
    let missing_history = used
        .into_iter()
        .filter(|tl| *tl > 1 && !histories.contains(tl))
        .collect();
    Continuity {
        newest: Some(name_of(newest_tl, last)),
        segments: end - start + 1,
        gaps,
        missing_history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::ClusterIdentity;

    fn cluster() -> ClusterIdentity {
        ClusterIdentity {
            system_identifier: 7,
            pg_major: 15,
        }
    }

    fn key(name: &str) -> ArchivedKey {
        ArchivedKey {
            identity: cluster(),
            name: WalName::parse(name).unwrap(),
            sha256: "0".repeat(64),
        }
    }

    fn info(start: &str, timeline: u32) -> BaseBackupInfo {
        BaseBackupInfo {
            cluster: cluster(),
            server_version: 150004,
            timeline,
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            start_wal: start.into(),
            stop_wal: start.into(),
            wal_segment_size: 16 << 20,
            wal_job: Some("wal".into()),
            data_checksums: false,
            checksum_failures: 0,
            backup_label_key: String::new(),
            tablespace_map_key: None,
            tablespaces: Vec::new(),
        }
    }

    #[test]
    fn complete_range_passes() {
        let keys: Vec<_> = (2..=6)
            .map(|i| key(&format!("0000000100000000000000{i:02X}")))
            .collect();
        let c = continuity(&keys, &info("000000010000000000000002", 1));
        assert!(c.is_complete(), "{c:?}");
        assert_eq!(c.segments, 5);
        assert_eq!(c.newest.as_deref(), Some("000000010000000000000006"));
    }

    #[test]
    fn a_gap_is_named() {
        let keys: Vec<_> = [2, 3, 4, 6, 7]
            .iter()
            .map(|i| key(&format!("0000000100000000000000{i:02X}")))
            .collect();
        let i = info("000000010000000000000002", 1);
        let c = continuity(&keys, &i);
        assert!(!c.is_complete());
        let text = c.describe("B", &i);
        assert!(
            text.contains("missing 000000010000000000000005 (timeline 1)"),
            "{text}"
        );
        assert!(text.contains("base backup B's start"), "{text}");
    }

    #[test]
    fn a_later_timeline_needs_its_history() {
        let mut keys: Vec<_> = [2, 3]
            .iter()
            .map(|i| key(&format!("0000000100000000000000{i:02X}")))
            .collect();
        keys.push(key("000000020000000000000004"));
        let i = info("000000010000000000000002", 1);
        let c = continuity(&keys, &i);
        assert_eq!(c.missing_history, vec![2]);
        keys.push(key("00000002.history"));
        assert!(continuity(&keys, &i).is_complete());
    }

    #[test]
    fn other_clusters_and_no_wal() {
        let mut other = key("000000010000000000000002");
        other.identity.system_identifier = 8;
        let i = info("000000010000000000000002", 1);
        let c = continuity(&[other], &i);
        assert!(c.newest.is_none() && !c.is_complete());
        assert!(c.describe("B", &i).contains("no archived WAL segment"));
    }
}
