//! Choosing the base backup for `restore cluster`: `--backup`, else by the recovery target
//! (`--time`, `--lsn`), else the newest.

use super::{ClusterRestoreOptions, RecoveryTarget};
use crate::postgres::base_record::BaseBackupInfo;
use crate::repository::CommitRecord;

/// Picks the backup (see the module docs).
pub(super) fn choose<'a>(
    records: &'a [(CommitRecord, BaseBackupInfo)],
    o: &ClusterRestoreOptions,
    tz: chrono_tz::Tz,
) -> Result<&'a (CommitRecord, BaseBackupInfo), String> {
    if let Some(id) = &o.backup {
        return records
            .iter()
            .find(|(r, _)| &r.id == id)
            .ok_or_else(|| format!("backup {id} is not a committed base backup of this job"));
    }
    match &o.target {
        RecoveryTarget::Time(t) => {
            let at = crate::timeparse::parse_time(t, tz).map_err(|e| format!("--time: {e}"))?;
            records
                .iter()
                .filter(|(r, _)| r.stopped_at < at)
                .max_by_key(|(r, _)| r.stopped_at)
                .ok_or_else(|| format!("no base backup stopped before {at}"))
        }
        RecoveryTarget::Lsn(l) => {
            let lsn =
                crate::wal::name::parse_lsn(l).ok_or_else(|| format!("--lsn {l}: not an LSN"))?;
            records
                .iter()
                .filter(|(_, i)| i.stop_lsn().is_some_and(|s| s <= lsn))
                .max_by_key(|(_, i)| (i.stop_lsn(), i.timeline))
                .ok_or_else(|| format!("no base backup stopped at or before LSN {l}"))
        }
        _ => records
            .iter()
            .max_by_key(|(r, _)| r.stopped_at)
            .ok_or_else(|| "no committed base backup".to_string()),
    }
}
