//! What a block incremental may leave unread (docs/design.md §4, "WAL change tracking"): the
//! WAL from the parent backup's start to this one's, read from the segment summaries the
//! archiver keeps ([`crate::wal::changes`]) and, for segments not summarized, from `pg_wal`;
//! turned into the byte ranges of each relation file that may differ from the parent's copy.
//! Anything that makes the WAL's account incomplete — a segment neither summarized nor in
//! `pg_wal`, another timeline, data checksums switched, a database or tablespace record — makes
//! the run read every changed file whole, as without WAL (the reason is logged).

use super::walk::relation_file;
use crate::snapshot::backup::{Changed, ChangedHook};
use crate::snapshot::path::ByteName;
use crate::wal::changes::{Changes, Joiner, RelFork, store};
use std::path::Path;
use std::sync::Arc;

/// `DEFAULTTABLESPACE_OID` and `GLOBALTABLESPACE_OID`.
const DEFAULT_TABLESPACE: u32 = 1663;
const GLOBAL_TABLESPACE: u32 = 1664;

/// Where the WAL to read is.
pub struct Span<'a> {
    pub state_dir: &'a Path,
    pub system_identifier: u64,
    pub timeline: u32,
    pub segment_size: u64,
    /// The parent backup's start LSN and this one's.
    pub from: u64,
    pub to: u64,
    pub pg_wal: &'a Path,
}

/// How the changes were found, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub summaries: usize,
    pub from_pg_wal: usize,
}

/// The WAL's changes from `span.from` to `span.to` (blocking); Err says why they are not known.
pub fn between(span: &Span<'_>) -> Result<(Changes, Sources), String> {
    if span.to < span.from {
        return Err("the parent backup starts after this one".into());
    }
    let size = span.segment_size;
    let dir = store::cluster_dir(span.state_dir, span.system_identifier);
    let first = span.from / size;
    // The segment holding `to`, unless `to` is its very first byte.
    let last = if span.to.is_multiple_of(size) && span.to > span.from {
        span.to / size - 1
    } else {
        span.to / size
    };
    let mut joiner = Joiner::default();
    let mut sources = Sources::default();
    for segno in first..=last {
        let name = crate::wal::name::segment_name(span.timeline, segno * size, size);
        let summary = match store::load(&dir, &name)? {
            Some(s) => {
                sources.summaries += 1;
                s
            }
            None => {
                let path = span.pg_wal.join(&name);
                if !path.exists() {
                    return Err(format!(
                        "WAL segment {name} has no change summary (archived before this daemon kept them, or by another) and is no longer in pg_wal"
                    ));
                }
                let stop = (segno == last).then_some(span.to);
                sources.from_pg_wal += 1;
                store::summarize_file(&path, segno * size, size, stop)?
            }
        };
        joiner.add(&name, &summary)?;
    }
    let changes = joiner.finish();
    if let Some(why) = &changes.opaque {
        return Err(why.clone());
    }
    Ok((changes, sources))
}

/// The relation a data-directory path names: (tablespace, database, relfilenode) of a main fork
/// file and its segment number; None for every other file.
fn main_fork_file(path: &[u8]) -> Option<(u32, u32, u32, u64)> {
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let number = |p: &[u8]| -> Option<u32> { std::str::from_utf8(p).ok()?.parse().ok() };
    let (spc, db, file) = match parts.as_slice() {
        [b"global", file] => (GLOBAL_TABLESPACE, 0, *file),
        [b"base", db, file] => (DEFAULT_TABLESPACE, number(db)?, *file),
        _ => return None,
    };
    let (node, fork) = relation_file(file)?;
    if !fork.is_empty() {
        return None;
    }
    let segment = match file.iter().position(|&b| b == b'.') {
        Some(i) => number(&file[i + 1..])?.into(),
        None => 0,
    };
    Some((spc, db, number(node)?, segment))
}

/// The byte ranges of one main-fork file (segment `segment` of its relation) that `changes`
/// says may have changed; None when the file is to be read whole.
fn ranges(
    changes: &Changes,
    key: RelFork,
    segment: u64,
    block_size: u64,
    per_segment: u64,
) -> Option<Changed> {
    let Some(f) = changes.forks.get(&key) else {
        return Some(Changed(Vec::new()));
    };
    if f.created {
        return None;
    }
    let lo = segment * per_segment;
    let hi = lo + per_segment;
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    let from = f.blocks.partition_point(|b| u64::from(*b) < lo);
    for b in &f.blocks[from..] {
        let b = u64::from(*b);
        if b >= hi {
            break;
        }
        let start = (b - lo) * block_size;
        match out.last_mut() {
            Some(r) if r.end == start => r.end = start + block_size,
            _ => out.push(start..start + block_size),
        }
    }
    if let Some(t) = f.truncated.map(u64::from)
        && t < hi
    {
        let start = (t.max(lo) - lo) * block_size;
        out.retain(|r| r.end <= start);
        match out.last_mut() {
            Some(r) if r.end == start => r.end = u64::MAX,
            _ => out.push(start..u64::MAX),
        }
    }
    Some(Changed(out))
}

/// The engine's hook over `changes`: main-fork relation files get their changed ranges, every
/// other file (forks, non-relation files, tablespaces) is read whole.
pub fn hook(changes: Changes, block_size: u64, blocks_per_segment: u64) -> ChangedHook {
    let changes = Arc::new(changes);
    Arc::new(move |path: &ByteName| {
        let (spc, db, rel, segment) = main_fork_file(path.as_bytes())?;
        let key = RelFork {
            spc,
            db,
            rel,
            fork: 0,
        };
        ranges(&changes, key, segment, block_size, blocks_per_segment)
    })
}

/// What this incremental needs to know of its parent and the server.
pub struct Incremental<'a> {
    pub job: &'a str,
    pub state_dir: &'a Path,
    pub data_directory: &'a Path,
    pub parent: Option<&'a crate::postgres::base_record::BaseBackupInfo>,
    pub identity: &'a crate::wal::ClusterIdentity,
    pub segment_size: u64,
    pub checksums: bool,
    pub timeline: u32,
    pub start: u64,
}

/// The engine's hook for an incremental, or None (logged: why every changed file is read
/// whole). `pg` reads the block and relation segment sizes (`pg_control_init()`).
pub async fn for_incremental(
    pg: &mut crate::postgres::connection::PgControl,
    inc: Incremental<'_>,
) -> Option<ChangedHook> {
    let job = inc.job;
    let parent = inc.parent?;
    let why_not = if parent.cluster.system_identifier != inc.identity.system_identifier {
        Some("the parent backup is of another cluster".to_string())
    } else if parent.timeline != inc.timeline {
        Some(format!(
            "the parent backup began on timeline {}, this one on {}",
            parent.timeline, inc.timeline
        ))
    } else if parent.data_checksums != inc.checksums {
        Some("data checksums were switched since the parent backup".into())
    } else if parent.wal_segment_size != inc.segment_size {
        Some("the WAL segment size changed since the parent backup".into())
    } else {
        None
    };
    let from = parent.start_lsn();
    let sizes: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
        "SELECT database_block_size::int8, blocks_per_segment::int8 FROM pg_control_init()",
    )
    .fetch_one(pg.conn())
    .await;
    let why_not = why_not.or_else(|| match (&sizes, from) {
        (Err(e), _) => Some(format!("cannot read pg_control_init(): {e}")),
        (_, None) => Some(format!(
            "the parent's start LSN `{}` is not an LSN",
            parent.start_lsn
        )),
        (Ok((bs, per)), _) if *bs <= 0 || *per <= 0 => Some(format!(
            "implausible block size {bs} or relation segment size {per}"
        )),
        _ => None,
    });
    if let Some(why) = why_not {
        tracing::info!(job = %job, "block incremental reads every changed file whole: {why}");
        return None;
    }
    let (block_size, per_segment) = sizes.ok()?;
    let span = (
        inc.state_dir.to_path_buf(),
        inc.identity.system_identifier,
        inc.timeline,
        inc.segment_size,
        from?,
        inc.start,
        inc.data_directory.join("pg_wal"),
    );
    let found = tokio::task::spawn_blocking(move || {
        let (state_dir, system_identifier, timeline, segment_size, from, to, pg_wal) = span;
        between(&Span {
            state_dir: &state_dir,
            system_identifier,
            timeline,
            segment_size,
            from,
            to,
            pg_wal: &pg_wal,
        })
    })
    .await
    .unwrap_or_else(|e| Err(format!("the WAL reading task failed: {e}")));
    match found {
        Ok((changes, sources)) => {
            tracing::info!(
                job = %job,
                summaries = sources.summaries,
                from_pg_wal = sources.from_pg_wal,
                relations = changes.forks.len(),
                "block incremental reads only the blocks the WAL changed since the parent began"
            );
            Some(hook(changes, block_size as u64, per_segment as u64))
        }
        Err(why) => {
            tracing::info!(job = %job, "block incremental reads every changed file whole: {why}");
            None
        }
    }
}

/// Removes the change summaries of segments before `start_wal` (the start of a base backup
/// just committed: the next incremental's parent); blocking, failures only logged.
pub fn prune(state_dir: &Path, system_identifier: u64, start_wal: &str) {
    let Some(name) = crate::wal::WalName::parse(start_wal) else {
        return;
    };
    let dir = store::cluster_dir(state_dir, system_identifier);
    match store::prune_before(&dir, &name) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(removed = n, before = %start_wal, "WAL change summaries pruned"),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot prune WAL change summaries")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::changes::ForkChanges;

    #[test]
    fn relation_paths() {
        assert_eq!(main_fork_file(b"base/5/16384"), Some((1663, 5, 16384, 0)));
        assert_eq!(main_fork_file(b"base/5/16384.3"), Some((1663, 5, 16384, 3)));
        assert_eq!(main_fork_file(b"global/1262"), Some((1664, 0, 1262, 0)));
        for other in [
            &b"base/5/16384_vm"[..],
            b"base/5/16384_fsm.1",
            b"base/5/16384_init",
            b"base/5/t3_16384",
            b"base/5/PG_VERSION",
            b"global/pg_control",
            b"pg_xact/0000",
            b"pg_tblspc/16400/PG_15_202209061/5/16384",
            b"base/x/16384",
        ] {
            assert_eq!(
                main_fork_file(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    fn with(key: RelFork, f: ForkChanges) -> Changes {
        let mut c = Changes::default();
        c.forks.insert(key, f);
        c
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn blocks_become_byte_ranges_of_their_segment_file() {
        let key = RelFork {
            spc: 1663,
            db: 5,
            rel: 9,
            fork: 0,
        };
        let other = RelFork { rel: 10, ..key };
        let c = with(
            key,
            ForkChanges {
                created: false,
                truncated: None,
                blocks: vec![0, 1, 2, 7, 131_071, 131_072, 131_080],
            },
        );
        let r = |seg| ranges(&c, key, seg, 8192, 131_072).map(|c| c.0);
        assert_eq!(
            r(0),
            Some(vec![
                0..3 * 8192,
                7 * 8192..8 * 8192,
                131_071 * 8192..131_072 * 8192
            ])
        );
        assert_eq!(r(1), Some(vec![0..8192, 8 * 8192..9 * 8192]));
        assert_eq!(r(2), Some(vec![]));
        // A relation WAL never named: nothing changed.
        assert_eq!(
            ranges(&c, other, 0, 8192, 131_072).map(|c| c.0),
            Some(vec![])
        );

        let t = with(
            key,
            ForkChanges {
                created: false,
                truncated: Some(131_075),
                blocks: vec![3, 131_074, 131_076],
            },
        );
        let r = |seg| ranges(&t, key, seg, 8192, 131_072).map(|c| c.0);
        assert_eq!(r(0), Some(vec![3 * 8192..4 * 8192]));
        assert_eq!(r(1), Some(vec![2 * 8192..u64::MAX]));
        assert_eq!(r(2), Some(vec![0..u64::MAX]));
        let n = with(
            key,
            ForkChanges {
                created: true,
                truncated: None,
                blocks: vec![],
            },
        );
        assert_eq!(ranges(&n, key, 0, 8192, 131_072), None);
    }
}
