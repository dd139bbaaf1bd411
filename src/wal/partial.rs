//! The shipped `.partial` segment of WAL streaming (docs/design.md §5, issue 12): the one object
//! of the archive that a newer one replaces. It is stored like every archived file, under
//! `<segment>.partial-<sha256>` (the plaintext hash in the key, so readers check it); a newer
//! copy is written under its own hash first, then the older ones are deleted — so a reader finds
//! one copy, or for a moment two, both valid prefixes of the same segment (it takes the one with
//! the most WAL). `wal-fetch --use-partial` serves it in place of a segment only when that
//! segment is the very last of the newest timeline: never where a complete segment exists, and
//! never on an older timeline ([`may_serve`]).

use super::fetch::{CALL_TIMEOUT, FetchError, Fetched, decode_object};
use super::format::{file_prefix, object_key, parse_object_key};
use super::header::ClusterIdentity;
use super::name::{WalKind, WalName};
use super::push::{PushError, SealedWal, bounded};
use crate::pipeline::Identities;
use crate::repository::{Repository, StoreError};
use sha2::{Digest, Sha256};
use std::time::Duration;

fn store_err(repo: &Repository) -> impl FnOnce(StoreError) -> PushError + '_ {
    move |source| PushError::Store {
        repository: repo.name.clone(),
        source: Box::new(source),
    }
}

/// The `.partial` name of a segment (`<segment>.partial`).
pub fn partial_of(segment: &WalName) -> Option<WalName> {
    (segment.kind == WalKind::Segment)
        .then(|| WalName::parse(&format!("{}.partial", segment.name)))
        .flatten()
}

/// Writes a sealed `.partial` into `repo` under its hash (durable on return), then deletes every
/// other copy of that `.partial` there. Returns the key written.
pub async fn store_partial(
    repo: &Repository,
    cluster: &ClusterIdentity,
    wal: &SealedWal,
    limit: Duration,
) -> Result<String, PushError> {
    debug_assert_eq!(wal.name.kind, WalKind::Partial);
    let key = object_key(cluster, &wal.name, &wal.sha256);
    let write = async {
        let mut w = repo.store.writer_unlimited(&key).await?;
        w.write(wal.object.clone()).await?;
        w.finish().await
    };
    match tokio::time::timeout(limit, write).await {
        Err(_) => {
            return Err(PushError::TimedOut {
                repository: repo.name.clone(),
                action: format!("storing {}", wal.name),
                after: limit,
            });
        }
        // This very content is there already.
        Ok(Ok(_)) | Ok(Err(StoreError::AlreadyExists { .. })) => {}
        Ok(Err(e)) => return Err(store_err(repo)(e)),
    }
    remove_partials(repo, cluster, &wal.name, Some(&wal.sha256), limit).await?;
    Ok(key)
}

/// Deletes the copies of the `.partial` `name` in `repo`, except the one of hash `keep`.
/// Returns how many were deleted.
pub async fn remove_partials(
    repo: &Repository,
    cluster: &ClusterIdentity,
    name: &WalName,
    keep: Option<&str>,
    limit: Duration,
) -> Result<usize, PushError> {
    let prefix = file_prefix(cluster, name);
    let listed = bounded(
        &repo.name,
        &format!("listing {prefix}"),
        limit,
        repo.store.list(&prefix),
        store_err(repo),
    )
    .await?;
    let mut deleted = 0;
    for m in listed {
        let Some(k) = parse_object_key(&m.key) else {
            continue;
        };
        if k.name != *name || k.identity != *cluster || Some(k.sha256.as_str()) == keep {
            continue;
        }
        match bounded(
            &repo.name,
            &format!("deleting {}", m.key),
            limit,
            repo.store.delete(&m.key),
            store_err(repo),
        )
        .await
        {
            Ok(()) => deleted += 1,
            Err(PushError::Store { source, .. })
                if matches!(*source, StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// What the archive of one cluster holds at its end: the newest timeline (of any file) and, on
/// it, the newest complete segment and the newest `.partial`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveEnd {
    pub newest_timeline: u32,
    pub last_segment: Option<WalName>,
    pub last_partial: Option<WalName>,
}

impl ArchiveEnd {
    /// From the archived names of one cluster.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a WalName>) -> ArchiveEnd {
        let names: Vec<&WalName> = names.into_iter().collect();
        let newest_timeline = names.iter().map(|n| n.timeline).max().unwrap_or(0);
        let newest = |kind: WalKind| {
            names
                .iter()
                .filter(|n| n.kind == kind && n.timeline == newest_timeline)
                .max_by_key(|n| n.position())
                .map(|n| (*n).clone())
        };
        ArchiveEnd {
            newest_timeline,
            last_segment: newest(WalKind::Segment),
            last_partial: newest(WalKind::Partial),
        }
    }

    /// The `.partial` past the last complete segment of the newest timeline, if there is one:
    /// the WAL that only `--use-partial` replays.
    pub fn partial_beyond(&self) -> Option<&WalName> {
        let p = self.last_partial.as_ref()?;
        match &self.last_segment {
            Some(s) if s.position() >= p.position() => None,
            _ => Some(p),
        }
    }
}

/// The rule of `wal-fetch --use-partial`: the `.partial` of `segment` may stand in for it only
/// if `segment` is on the newest timeline and no complete segment at or past it is archived.
pub fn may_serve(segment: &WalName, end: &ArchiveEnd) -> bool {
    segment.kind == WalKind::Segment
        && segment.timeline == end.newest_timeline
        && end
            .last_segment
            .as_ref()
            .is_none_or(|s| s.position() < segment.position())
}

/// Every archived name of `cluster` in `repo` (one listing of its archive).
pub async fn archived_names(
    repo: &Repository,
    cluster: &ClusterIdentity,
    limit: Duration,
) -> Result<Vec<WalName>, PushError> {
    let prefix = super::format::archive_prefix(cluster);
    let listed = bounded(
        &repo.name,
        &format!("listing {prefix}"),
        limit,
        repo.store.list(&prefix),
        store_err(repo),
    )
    .await?;
    Ok(listed
        .iter()
        .filter_map(|m| parse_object_key(&m.key))
        .filter(|k| k.identity == *cluster)
        .map(|k| k.name)
        .collect())
}

/// The length of a segment's WAL without its zero padding (pg_receivewal pre-sizes the file).
pub fn filled_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1)
}

/// Fetches the `.partial` of `segment` from `repo` when [`may_serve`] allows it: Ok(None) when
/// the rule refuses or no copy is there. Of two copies (a replacement caught half way) the one
/// with the most WAL; each is checked against the hash in its key.
pub async fn fetch_partial(
    repo: &Repository,
    cluster: &ClusterIdentity,
    segment: &WalName,
    identities: &Identities,
) -> Result<Option<Fetched>, FetchError> {
    let Some(partial) = partial_of(segment) else {
        return Ok(None);
    };
    let names = archived_names(repo, cluster, CALL_TIMEOUT).await?;
    if !may_serve(segment, &ArchiveEnd::of(names.iter())) {
        return Ok(None);
    }
    let prefix = file_prefix(cluster, &partial);
    let listed = bounded(
        &repo.name,
        &format!("listing {prefix}"),
        CALL_TIMEOUT,
        repo.store.list(&prefix),
        store_err(repo),
    )
    .await?;
    let mut best: Option<(usize, Fetched)> = None;
    for m in listed {
        let Some(k) = parse_object_key(&m.key) else {
            continue;
        };
        if k.name != partial || k.identity != *cluster {
            continue;
        }
        let stored = match tokio::time::timeout(CALL_TIMEOUT, repo.store.get(&m.key)).await {
            Err(_) => {
                return Err(PushError::TimedOut {
                    repository: repo.name.clone(),
                    action: format!("reading {}", m.key),
                    after: CALL_TIMEOUT,
                }
                .into());
            }
            // Replaced by a newer copy since the listing.
            Ok(Err(StoreError::NotFound { .. })) => continue,
            Ok(Err(e)) => return Err(store_err(repo)(e).into()),
            Ok(Ok(b)) => b,
        };
        let ids = identities.clone();
        let bytes = tokio::task::spawn_blocking(move || decode_object(&stored, &ids))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| FetchError::Corrupt {
                repository: repo.name.clone(),
                key: m.key.clone(),
                reason,
            })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != k.sha256 {
            return Err(FetchError::Corrupt {
                repository: repo.name.clone(),
                key: m.key.clone(),
                reason: format!("its content has sha256 {actual}"),
            });
        }
        let filled = filled_len(&bytes);
        if best.as_ref().is_none_or(|(f, _)| filled > *f) {
            best = Some((
                filled,
                Fetched {
                    repository: repo.name.clone(),
                    sha256: k.sha256,
                    bytes,
                },
            ));
        }
    }
    Ok(best.map(|(_, f)| f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> WalName {
        WalName::parse(s).unwrap()
    }

    #[test]
    fn the_partial_serves_only_as_the_last_segment_of_the_newest_timeline() {
        let names = [
            n("000000010000000000000003"),
            n("000000010000000000000004"),
            n("000000010000000000000005.partial"),
        ];
        let end = ArchiveEnd::of(names.iter());
        assert_eq!(end.partial_beyond(), Some(&names[2]));
        assert!(may_serve(&n("000000010000000000000005"), &end));
        // A complete segment exists: never replaced by a partial.
        assert!(!may_serve(&n("000000010000000000000004"), &end));
        // A newer timeline exists: the old timeline's partial is not its end.
        let names2 = [names[0].clone(), names[2].clone(), n("00000002.history")];
        let end2 = ArchiveEnd::of(names2.iter());
        assert!(!may_serve(&n("000000010000000000000005"), &end2));
        assert_eq!(end2.partial_beyond(), None);
        // The segment completed after the partial was shipped: no partial beyond it.
        let names3 = [n("000000010000000000000005"), names[2].clone()];
        assert_eq!(ArchiveEnd::of(names3.iter()).partial_beyond(), None);
        assert!(!may_serve(
            &n("000000010000000000000005"),
            &ArchiveEnd::of(names3.iter())
        ));
    }

    #[test]
    fn filled_length_ignores_padding() {
        assert_eq!(filled_len(&[1, 2, 0, 3, 0, 0]), 4);
        assert_eq!(filled_len(&[0, 0]), 0);
        assert_eq!(
            partial_of(&n("000000010000000000000005")).unwrap().name,
            "000000010000000000000005.partial"
        );
        assert!(partial_of(&n("00000002.history")).is_none());
    }
}
