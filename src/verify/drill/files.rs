//! The files/config drill: a sample of the backup's files (part rotating with the run id, so
//! that successive drills cover every file, part random) restored with the ordinary
//! `restore files`/`restore config` code into `<scratch>/files`; each restored file's SHA-256
//! (or block hashes) compared with the manifest and, where the live file is unchanged since
//! the backup (size and mtime), with the live file; the manifest's file count set against the
//! live tree's.

use super::guard::{self, Scratch};
use super::{DrillOutcome, DrillRequest, new_check};
use crate::catalogue::JobSpec;
use crate::error::error_chain_of;
use crate::files::{SnapshotRestoreOptions, restore_snapshot};
use crate::pipeline;
use crate::snapshot::manifest::{BlockHasher, BlockHashes, EntryKind, ManifestReader};
use crate::snapshot::walk::{Event, Filter, ListWalk, TreeWalk};
use crate::verify::check::{CheckKind, CheckResult};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One regular file of the manifest.
#[derive(Debug, Clone)]
struct FileEntry {
    path: Vec<u8>,
    size: u64,
    mtime: (i64, u32),
    sha256: Option<String>,
    blocks: Option<BlockHashes>,
}

/// The indices of the sample: `k` of `n`, half a window that moves by its own length each run,
/// the rest drawn at random from the others.
pub fn sample(n: usize, k: usize, run_id: i64, seed: u64) -> Vec<usize> {
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    let rotating = k.div_ceil(2);
    let start = (run_id.unsigned_abs() as u128 * rotating as u128 % n as u128) as usize;
    let mut chosen: BTreeSet<usize> = (0..rotating).map(|i| (start + i) % n).collect();
    let mut state = seed | 1;
    while chosen.len() < k {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        chosen.insert((r % n as u64) as usize);
    }
    chosen.into_iter().collect()
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

pub(super) async fn drill(req: &DrillRequest<'_>, scratch: &Scratch, out: &mut DrillOutcome) {
    let began = Instant::now();
    let fail = |out: &mut DrillOutcome, detail: String| {
        out.checks.push(new_check(
            req,
            CheckKind::Drill,
            "sample restore",
            CheckResult::Fail,
            detail,
            began.elapsed().as_secs_f64(),
            out.backup_bytes,
        ))
    };
    let (root, counter): (PathBuf, Counter) = match &req.job.spec {
        JobSpec::Files(f) => (
            f.path.clone(),
            Counter::Tree {
                include: f.include.clone(),
                exclude: f.exclude.clone(),
                one_file_system: f.one_file_system,
            },
        ),
        JobSpec::Config(c) => (PathBuf::from("/"), Counter::List(c.paths.clone())),
        _ => return fail(out, "not a files or config job".into()),
    };
    let entries = match manifest_files(req, scratch).await {
        Ok(e) => e,
        Err(e) => return fail(out, e),
    };
    let picked: Vec<FileEntry> = sample(
        entries.len(),
        req.settings.files_sample,
        req.run_id,
        random_seed(),
    )
    .into_iter()
    .map(|i| entries[i].clone())
    .collect();
    if picked.is_empty() {
        // An empty selection would restore everything.
        out.checks.push(new_check(
            req,
            CheckKind::Sample,
            "sample of 0 files",
            CheckResult::Skipped,
            format!(
                "nothing to sample: the backup holds {} files, files-sample is {}",
                entries.len(),
                req.settings.files_sample
            ),
            0.0,
            0,
        ));
        return;
    }
    let need: u64 = picked.iter().map(|e| e.size).sum();
    if let Err(e) = guard::check_space(&scratch.path, need, "the sampled files") {
        return fail(out, e);
    }
    let target = scratch.path.join("files");
    let restored = restore_snapshot(
        req.catalogue,
        SnapshotRestoreOptions {
            job: req.job.name.clone(),
            backup: Some(req.backup.id.clone()),
            target: Some(target.clone()),
            paths: picked
                .iter()
                .map(|e| PathBuf::from(std::ffi::OsStr::from_bytes(&e.path)))
                .collect(),
            ignore_errors: true,
            numeric_owner: true,
            repository: Some(req.source.repository_name().to_string()),
            ..Default::default()
        },
    )
    .await;
    let stats = match restored {
        Ok(r) => r.stats,
        Err(e) => return fail(out, error_chain_of(&e)),
    };
    let seconds = began.elapsed().as_secs_f64();
    let restore_ok = stats.failed.is_empty();
    out.checks.push(new_check(
        req,
        CheckKind::Drill,
        "sample restore",
        if restore_ok {
            CheckResult::Pass
        } else {
            CheckResult::Fail
        },
        if restore_ok {
            format!(
                "{} of {} files ({} bytes) restored in {seconds:.1}s",
                stats.files,
                entries.len(),
                stats.bytes
            )
        } else {
            format!(
                "{} files could not be restored: {}",
                stats.failed.len(),
                stats
                    .failed
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        },
        seconds,
        out.backup_bytes,
    ));
    if restore_ok {
        out.restore_seconds = Some(seconds);
    }
    super::emit(req, out).await;
    let t0 = Instant::now();
    let manifest_count = entries.len();
    let compared = tokio::task::spawn_blocking(move || {
        let verdict = compare(&picked, &target, &root);
        let live = counter.count(&root);
        (verdict, live, picked.len())
    })
    .await;
    let (verdict, live, n) = match compared {
        Ok(x) => x,
        Err(e) => return fail(out, format!("comparing the sample: {e}")),
    };
    let count = match live {
        Ok(live) => format!(
            "; the backup holds {manifest_count} files, the live tree now {live} ({:+})",
            live as i64 - manifest_count as i64
        ),
        Err(e) => format!("; the live tree could not be counted: {e}"),
    };
    let (result, detail) = match verdict {
        Ok(against_live) => (
            CheckResult::Pass,
            format!(
                "{n} sampled files match the manifest, {} of them also the unchanged live file{count}",
                against_live.len()
            ),
        ),
        Err(wrong) => (
            CheckResult::Fail,
            format!(
                "{} of {n} sampled files do not match: {}{count}",
                wrong.len(),
                wrong.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            ),
        ),
    };
    out.checks.push(new_check(
        req,
        CheckKind::Sample,
        &format!("sample of {n} files"),
        result,
        detail,
        t0.elapsed().as_secs_f64(),
        need,
    ));
}

/// Reads the manifest (through a spool file in the scratch folder) into its regular files.
async fn manifest_files(
    req: &DrillRequest<'_>,
    scratch: &Scratch,
) -> Result<Vec<FileEntry>, String> {
    let identities = req.source.identities().map_err(|e| error_chain_of(&e))?;
    let path = scratch.path.join("manifest.spool");
    {
        let mut reader = pipeline::open_stream(
            &req.source.repository.store,
            &req.backup.manifest,
            &identities,
        )
        .await
        .map_err(|e| format!("reading the manifest: {}", error_chain_of(&e)))?;
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(|e| format!("reading the manifest: {e}"))?;
    }
    tokio::task::spawn_blocking(move || -> Result<Vec<FileEntry>, String> {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut reader = ManifestReader::new(std::io::BufReader::new(file))
            .map_err(|e| format!("the manifest: {e}"))?;
        let mut out = Vec::new();
        while let Some(e) = reader
            .next_entry()
            .map_err(|e| format!("the manifest: {e}"))?
        {
            if e.kind == EntryKind::File {
                out.push(FileEntry {
                    path: e.path.0,
                    size: e.size,
                    mtime: (e.mtime, e.mtime_nsec),
                    sha256: e.sha256,
                    blocks: e.blocks,
                });
            }
        }
        let _ = std::fs::remove_file(&path);
        Ok(out)
    })
    .await
    .map_err(|e| format!("reading the manifest: {e}"))?
}

/// SHA-256 and (with a block size) block hashes of a file.
fn hash_file(
    path: &Path,
    block: Option<u64>,
) -> std::io::Result<(String, u64, Option<BlockHashes>)> {
    let mut f = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut blocks = block.map(BlockHasher::new);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        if let Some(b) = blocks.as_mut() {
            b.update(&buf[..n]);
        }
        size += n as u64;
    }
    Ok((
        hex::encode(sha.finalize()),
        size,
        blocks.map(BlockHasher::finish),
    ))
}

/// Whether hashed content matches an entry (its SHA-256, else its block hashes, else its size).
fn matches(e: &FileEntry, sha: &str, size: u64, blocks: Option<&BlockHashes>) -> bool {
    if size != e.size {
        return false;
    }
    match (&e.sha256, &e.blocks) {
        (Some(want), _) => want == sha,
        (None, Some(want)) => blocks == Some(want),
        (None, None) => true,
    }
}

/// Ok(the files also checked against the live tree) or Err(one line per mismatch).
fn compare(picked: &[FileEntry], target: &Path, root: &Path) -> Result<Vec<String>, Vec<String>> {
    let mut wrong = Vec::new();
    let mut live_checked = Vec::new();
    for e in picked {
        let shown = String::from_utf8_lossy(&e.path).into_owned();
        let rel = Path::new(std::ffi::OsStr::from_bytes(&e.path));
        let block = e
            .sha256
            .is_none()
            .then(|| e.blocks.as_ref().map(|b| b.size))
            .flatten();
        let (sha, size, blocks) = match hash_file(&target.join(rel), block) {
            Ok(x) => x,
            Err(err) => {
                wrong.push(format!("{shown}: not restored ({err})"));
                continue;
            }
        };
        if !matches(e, &sha, size, blocks.as_ref()) {
            wrong.push(format!(
                "{shown}: the restored file ({size} bytes) does not match the manifest"
            ));
            continue;
        }
        let live = root.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&live) else {
            continue;
        };
        if !meta.is_file()
            || meta.len() != e.size
            || (meta.mtime(), meta.mtime_nsec() as u32) != e.mtime
        {
            continue;
        }
        match hash_file(&live, block) {
            Ok((lsha, lsize, lblocks)) if matches(e, &lsha, lsize, lblocks.as_ref()) => {
                live_checked.push(shown)
            }
            Ok(_) => wrong.push(format!(
                "{shown}: differs from the live file {} although its size and mtime are unchanged since the backup",
                live.display()
            )),
            // Unreadable now: nothing to compare with.
            Err(_) => {}
        }
    }
    if wrong.is_empty() {
        Ok(live_checked)
    } else {
        Err(wrong)
    }
}

/// How the live tree's files are counted: the files job's walk, or the config job's list.
enum Counter {
    Tree {
        include: Vec<String>,
        exclude: Vec<String>,
        one_file_system: bool,
    },
    List(Vec<String>),
}

impl Counter {
    fn count(&self, root: &Path) -> Result<usize, String> {
        let files = |it: &mut dyn Iterator<Item = Event>| {
            it.filter(|e| matches!(e, Event::Item(i) if i.meta.is_file()))
                .count()
        };
        match self {
            Counter::Tree {
                include,
                exclude,
                one_file_system,
            } => {
                let filter = Filter::new(include, exclude).map_err(|e| e.to_string())?;
                let mut walk = TreeWalk::new(root, filter, *one_file_system)
                    .map_err(|e| format!("{}: {e}", root.display()))?;
                Ok(files(&mut walk))
            }
            Counter::List(paths) => Ok(files(&mut ListWalk::new(paths))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sample;
    use std::collections::BTreeSet;

    #[test]
    fn the_rotating_half_covers_every_file_over_runs() {
        let n = 37;
        let mut seen = BTreeSet::new();
        for run in 0..8 {
            let s = sample(n, 10, run, 42 + run as u64);
            assert_eq!(s.len(), 10);
            assert_eq!(s.iter().collect::<BTreeSet<_>>().len(), 10);
            seen.extend(s);
        }
        assert_eq!(seen.len(), n);
        assert_eq!(sample(3, 10, 5, 1), vec![0, 1, 2]);
        assert!(sample(0, 10, 5, 1).is_empty());
    }
}
