//! Reading, checking and sealing one WAL file for the archive (docs/design.md §5): the file's size
//! and long header checked against its name and the cluster, the plaintext hashed (the key carries
//! the hash), compressed frame by frame and encrypted once for every sync repository; the buffers
//! and zstd contexts kept between pushes. Storing is [`super::push`]'s.

use super::changes::{SegmentChanges, Summarizer};
use super::header::{ClusterIdentity, WalHeader};
use super::name::{WalKind, WalName};
use super::push::{MAX_SMALL_FILE, PushError};
use super::staged::Tee;
use crate::pipeline::{PipelineError, PipelineSettings};
use crate::repository::Repository;
use crate::repository::local::LocalWriter;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::{self, Write};

/// A WAL file read and checked, ready to store.
#[derive(Debug, Clone)]
pub struct WalFile {
    pub name: WalName,
    pub bytes: Bytes,
    /// SHA-256 of `bytes`, lowercase hex.
    pub sha256: String,
    /// The segment size from the long header (segments and partials).
    pub segment_size: Option<u64>,
}

/// Reads the whole file from offset 0 (pread: the descriptor's offset is not used) and checks
/// it: a segment or `.partial` must be exactly its header's segment size and carry the system
/// identifier of `cluster`. Blocking.
pub fn read_wal_file(
    file: &std::fs::File,
    name: &WalName,
    cluster: &ClusterIdentity,
) -> Result<WalFile, PushError> {
    let mut buf = Vec::new();
    let segment_size = read_checked(file, name, cluster, &mut buf)?;
    let sha256 = hex::encode(Sha256::digest(&buf));
    Ok(WalFile {
        name: name.clone(),
        bytes: Bytes::from(buf),
        sha256,
        segment_size,
    })
}

/// Checks what the file is before reading it: a regular file of a plausible size for its kind.
/// Returns its size.
fn checked_size(file: &std::fs::File, name: &WalName) -> Result<u64, PushError> {
    let read_err = |source| PushError::Read {
        name: name.name.clone(),
        source,
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let size = meta.len();
    if !is_segment(name) && size > MAX_SMALL_FILE {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{size} bytes is too large for a {:?} file", name.kind),
        )));
    }
    if is_segment(name) && size > (1 << 30) {
        return Err(PushError::Size {
            name: name.name.clone(),
            size,
            expected: 1 << 30,
        });
    }
    Ok(size)
}

fn is_segment(name: &WalName) -> bool {
    matches!(name.kind, WalKind::Segment | WalKind::Partial)
}

/// Fills `buf` from the file at `offset` (pread: the descriptor's offset is not used).
fn read_at(
    file: &std::fs::File,
    name: &WalName,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), PushError> {
    use std::os::unix::fs::FileExt;
    let mut off = 0usize;
    while off < buf.len() {
        match file.read_at(&mut buf[off..], offset + off as u64) {
            Ok(0) => {
                return Err(PushError::Read {
                    name: name.name.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file shrank to {} bytes while reading", offset + off as u64),
                    ),
                });
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(PushError::Read {
                    name: name.name.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Checks a segment's long header (in `first`, its first bytes) against the file's size, its name
/// and `cluster`. Returns the segment size; `None` for files that are not segments.
pub(crate) fn check_header(
    first: &[u8],
    name: &WalName,
    size: u64,
    cluster: &ClusterIdentity,
) -> Result<Option<u64>, PushError> {
    if !is_segment(name) {
        return Ok(None);
    }
    let header = WalHeader::parse(first).map_err(|source| PushError::Header {
        name: name.name.clone(),
        source,
    })?;
    if u64::from(header.segment_size) != size {
        return Err(PushError::Size {
            name: name.name.clone(),
            size,
            expected: u64::from(header.segment_size),
        });
    }
    let expected = name.start_lsn(size);
    if header.page_address != expected {
        return Err(PushError::WrongPosition {
            name: name.name.clone(),
            found: super::name::format_lsn(header.page_address),
            expected: super::name::format_lsn(expected),
        });
    }
    if header.system_identifier != cluster.system_identifier {
        return Err(PushError::WrongSegmentCluster {
            name: name.name.clone(),
            segment: header.system_identifier,
            request: cluster.system_identifier,
        });
    }
    Ok(Some(size))
}

/// Reads the whole file into `buf` (resized to the file's size; one large `pread` in the normal
/// case) and checks it like [`read_wal_file`], without hashing. Returns the segment size.
fn read_checked(
    file: &std::fs::File,
    name: &WalName,
    cluster: &ClusterIdentity,
    buf: &mut Vec<u8>,
) -> Result<Option<u64>, PushError> {
    let size = checked_size(file, name)?;
    // A reused buffer keeps its pages: no page faults for 16 MiB on every push.
    buf.resize(size as usize, 0);
    read_at(file, name, buf, 0)?;
    check_header(buf, name, size, cluster)
}

/// Read buffers kept between pushes (at most this many).
const KEPT_BUFFERS: usize = 4;
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Object (ciphertext) buffers kept between pushes, given back by [`recycle_object`].
static OBJECTS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn take_from(pool: &std::sync::Mutex<Vec<Vec<u8>>>) -> Vec<u8> {
    pool.lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default()
}

fn give_to(pool: &std::sync::Mutex<Vec<Vec<u8>>>, buf: Vec<u8>) {
    // Only segment-sized buffers are worth keeping (1 GiB segments are not kept).
    if buf.capacity() > 64 << 20 {
        return;
    }
    let mut kept = pool.lock().unwrap_or_else(|e| e.into_inner());
    if kept.len() < KEPT_BUFFERS {
        kept.push(buf);
    }
}

/// Gives the buffer of a stored [`SealedWal`]'s object back for the next push (when nothing
/// else holds it): no fresh, page-faulted megabytes for every segment.
pub fn recycle_object(object: Bytes) {
    if let Ok(m) = object.try_into_mut() {
        let mut v = Vec::from(m);
        v.clear();
        give_to(&OBJECTS, v);
    }
}

/// zstd contexts kept between pushes (the compression threads of a push are new every time, so
/// the pipeline's per-thread context would be allocated and faulted in afresh for every segment).
static COMPRESSORS: std::sync::Mutex<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
    std::sync::Mutex::new(Vec::new());
/// Contexts kept at most (one per compression worker is enough).
const KEPT_COMPRESSORS: usize = 8;

/// One independent zstd frame of `plain` (as `pipeline::compress::zstd_frame`: content size in
/// the header, output buffer from the pipeline's pool), with a kept context of `level`.
fn zstd_frame_pooled(plain: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let kept = {
        let mut pool = COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner());
        pool.iter()
            .position(|(l, _)| *l == level)
            .map(|i| pool.swap_remove(i).1)
    };
    let mut c = match kept {
        Some(c) => c,
        None => zstd::bulk::Compressor::new(level)?,
    };
    let mut out = crate::pipeline::buffers::take(zstd::zstd_safe::compress_bound(plain.len()));
    let result = c.compress_to_buffer(plain, &mut out);
    let mut pool = COMPRESSORS.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < KEPT_COMPRESSORS {
        pool.push((level, c));
    }
    drop(pool);
    result.map(|_| out)
}

/// A WAL file read, checked, compressed and encrypted once, ready to be written as is into every
/// sync repository (the recipients are the catalogue's, the same for all of them).
#[derive(Debug, Clone)]
pub struct SealedWal {
    pub name: WalName,
    /// Plaintext size.
    pub size: u64,
    /// SHA-256 of the plaintext, lowercase hex (the key carries it).
    pub sha256: String,
    /// The object's bytes: age(zstd frames) or age(gzip). The ciphertext is not hashed: a WAL
    /// object is identified and checked by the plaintext hash its key carries.
    pub object: Bytes,
    pub compression: &'static str,
    /// A segment's changed blocks ([`super::changes`]), read as it was sealed: None for other
    /// files, Err (why) when the segment's records could not be read.
    pub changes: Option<Result<SegmentChanges, String>>,
}

/// Reads and checks the file (as [`read_wal_file`]) and seals it. zstd: frame by frame as it is
/// read, each frame hashed on one thread and compressed on one of
/// `settings.compression.workers` others as soon as it is read, and encrypted in order on this
/// one as soon as it and the ones before it are compressed. The object has the pipeline's format
/// (independent zstd frames of the frame size, or one gzip stream, inside age). Blocking.
pub fn seal_wal_file(
    file: &std::fs::File,
    name: &WalName,
    cluster: &ClusterIdentity,
    settings: &PipelineSettings,
) -> Result<SealedWal, PushError> {
    seal_wal_file_staged(file, name, cluster, settings, None).map(|(sealed, _)| sealed)
}

/// [`seal_wal_file`], writing a zstd segment's object also into a staging file of `stage_in`
/// when that is a local repository (see [`super::staged`]) as it is encrypted. The staging file
/// comes back only when it holds exactly the object (otherwise it is dropped, which removes it).
/// Blocking.
pub fn seal_wal_file_staged(
    file: &std::fs::File,
    name: &WalName,
    cluster: &ClusterIdentity,
    settings: &PipelineSettings,
    stage_in: Option<&Repository>,
) -> Result<(SealedWal, Option<LocalWriter>), PushError> {
    let mut buf = take_from(&BUFFERS);
    let zstd = settings.compression.algorithm == crate::catalogue::Compression::Zstd;
    let result = if zstd && is_segment(name) {
        let staged = stage_in.and_then(|repo| super::staged::open(repo, cluster, name));
        seal_frames(file, name, cluster, settings, &mut buf, staged)
    } else {
        read_checked(file, name, cluster, &mut buf)
            .and_then(|_| seal_whole(&buf, name, settings))
            .map(|sealed| (sealed, None))
    };
    give_to(&BUFFERS, buf);
    result
}

fn pipeline_failed(name: &WalName) -> impl Fn(PipelineError) -> PushError + '_ {
    move |source| PushError::Pipeline {
        repository: "(all)".into(),
        name: name.name.clone(),
        source: Box::new(source),
    }
}

/// The age writer of an object, into `out`.
fn age_writer<W: Write>(
    name: &WalName,
    settings: &PipelineSettings,
    out: W,
) -> Result<age::stream::StreamWriter<W>, PushError> {
    let failed = pipeline_failed(name);
    if settings.recipients.is_empty() {
        return Err(failed(PipelineError::Encrypt(
            "no age recipients configured".into(),
        )));
    }
    let encryptor = age::Encryptor::with_recipients(
        settings.recipients.iter().map(|r| r as &dyn age::Recipient),
    )
    .map_err(|e| failed(PipelineError::Encrypt(e.to_string())))?;
    encryptor
        .wrap_output(out)
        .map_err(|e| failed(PipelineError::Encrypt(e.to_string())))
}

/// A kept object buffer with room for `size_hint` bytes.
fn object_buffer(size_hint: usize) -> Vec<u8> {
    let mut out = take_from(&OBJECTS);
    out.clear();
    out.reserve(size_hint);
    out
}

/// A zstd segment, frame by frame (see [`seal_wal_file`]).
fn seal_frames(
    file: &std::fs::File,
    name: &WalName,
    cluster: &ClusterIdentity,
    settings: &PipelineSettings,
    buf: &mut Vec<u8>,
    staged: Option<LocalWriter>,
) -> Result<(SealedWal, Option<LocalWriter>), PushError> {
    use std::sync::mpsc;
    let failed = pipeline_failed(name);
    let size = checked_size(file, name)?;
    // A reused buffer keeps its pages: no page faults for 16 MiB on every push.
    buf.resize(size as usize, 0);
    let frame_size = settings.effective_frame_size();
    let level = settings.compression.level;
    let count = buf.len().div_ceil(frame_size);
    let workers = settings.compression.workers.clamp(1, count.max(1));
    if count == 0 {
        // An empty file has no header: the header error names it.
        check_header(&[], name, size, cluster)?;
    }
    let out = Tee::new(object_buffer(buf.len() / 2 + 4096), staged);
    let mut w = age_writer(name, settings, out)?;
    let (sha256, changes) = std::thread::scope(|scope| -> Result<_, PushError> {
        let (hash_tx, hash_rx) = mpsc::channel::<&[u8]>();
        let summarize = name.kind == WalKind::Segment;
        let hasher = scope.spawn(move || {
            let mut h = Sha256::new();
            // The records' block references are read on this thread too, frame by frame.
            let mut changes = summarize.then(|| Summarizer::new(name.start_lsn(size), size));
            for frame in hash_rx {
                h.update(frame);
                if let Some(c) = changes.as_mut().filter(|c| !c.done()) {
                    c.feed(frame);
                }
            }
            let changes = changes.map(|c| c.finish().map_err(|e| e.to_string()));
            (hex::encode(h.finalize()), changes)
        });
        let (work_tx, work_rx) = mpsc::channel::<(usize, &[u8])>();
        let work_rx = std::sync::Arc::new(std::sync::Mutex::new(work_rx));
        let (done_tx, done_rx) = mpsc::channel::<(usize, io::Result<Vec<u8>>)>();
        for _ in 0..workers {
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                loop {
                    let next = work_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((i, frame)) = next else { break };
                    if done_tx.send((i, zstd_frame_pooled(frame, level))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        // Read frame by frame; each goes to the hasher and the compressors at once.
        let mut offset = 0u64;
        for (i, chunk) in buf.chunks_mut(frame_size).enumerate() {
            read_at(file, name, chunk, offset)?;
            offset += chunk.len() as u64;
            let chunk: &[u8] = chunk;
            if i == 0 {
                check_header(chunk, name, size, cluster)?;
            }
            // The receivers live until the scope ends unless they panicked.
            let sent = hash_tx.send(chunk).is_ok() && work_tx.send((i, chunk)).is_ok();
            if !sent {
                return Err(failed(PipelineError::Task(
                    "a hashing or compression thread failed".into(),
                )));
            }
        }
        drop((hash_tx, work_tx));
        if count == 0 {
            // Not reached: an empty file fails its header check above.
            return Err(failed(PipelineError::Task("empty segment".into())));
        }
        // Encrypt in order as frames come back compressed.
        let mut waiting: std::collections::BTreeMap<usize, Vec<u8>> = Default::default();
        let mut written = 0usize;
        while written < count {
            let Ok((i, out)) = done_rx.recv() else {
                return Err(failed(PipelineError::Task(format!(
                    "frame {written} was not compressed (a compression thread failed)"
                ))));
            };
            waiting.insert(i, out.map_err(|e| failed(PipelineError::Compress(e)))?);
            while let Some(f) = waiting.remove(&written) {
                w.write_all(&f)
                    .map_err(|e| failed(PipelineError::Encrypt(e.to_string())))?;
                crate::pipeline::buffers::give(f);
                written += 1;
            }
        }
        hasher
            .join()
            .map_err(|_| failed(PipelineError::Task("the hashing thread failed".into())))
    })?;
    let (object, whole) = w
        .finish()
        .map_err(|e| failed(PipelineError::Encrypt(e.to_string())))?
        .finish();
    let sealed = SealedWal {
        name: name.clone(),
        size,
        sha256,
        object: Bytes::from(object),
        compression: "zstd",
        changes,
    };
    Ok((sealed, whole))
}

/// Compresses and encrypts `plain` (already read and checked) as a file read whole: the streamed
/// `.partial` of a gzip catalogue seals its written prefix this way (src/daemon/stream.rs). Blocking.
pub fn seal(
    plain: &[u8],
    name: &WalName,
    settings: &PipelineSettings,
) -> Result<SealedWal, PushError> {
    seal_whole(plain, name, settings)
}

/// A file read whole (history and backup-label files, gzip): hashed on one thread while it is
/// compressed (zstd: frames on `settings.compression.workers` threads) and encrypted on this one.
fn seal_whole(
    plain: &[u8],
    name: &WalName,
    settings: &PipelineSettings,
) -> Result<SealedWal, PushError> {
    use crate::catalogue::Compression;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let failed = pipeline_failed(name);
    let level = settings.compression.level;
    let frame_size = settings.effective_frame_size();
    let frames: Vec<&[u8]> = plain.chunks(frame_size).collect();
    let workers = settings.compression.workers.clamp(1, frames.len().max(1));
    let zstd = settings.compression.algorithm == Compression::Zstd;
    let encrypt_err = |e: io::Error| failed(PipelineError::Encrypt(e.to_string()));
    let mut w = age_writer(name, settings, object_buffer(plain.len() / 2 + 4096))?;
    let next = AtomicUsize::new(0);
    let (sha256, compression) = std::thread::scope(|scope| {
        let hasher = scope.spawn(|| hex::encode(Sha256::digest(plain)));
        let compression = if zstd {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, io::Result<Vec<u8>>)>();
            for _ in 0..workers {
                let tx = tx.clone();
                let (next, frames) = (&next, &frames);
                scope.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = frames.get(i) else { break };
                        if tx.send((i, zstd_frame_pooled(f, level))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut waiting: std::collections::BTreeMap<usize, Vec<u8>> = Default::default();
            let mut written = 0usize;
            while written < frames.len() {
                let Ok((i, out)) = rx.recv() else {
                    return Err(PipelineError::Task(format!(
                        "frame {written} was not compressed (a compression thread failed)"
                    )));
                };
                waiting.insert(i, out.map_err(PipelineError::Compress)?);
                while let Some(f) = waiting.remove(&written) {
                    w.write_all(&f)
                        .map_err(|e| PipelineError::Encrypt(e.to_string()))?;
                    crate::pipeline::buffers::give(f);
                    written += 1;
                }
            }
            if frames.is_empty() {
                // An empty file still gets one (empty) zstd frame: a valid zstd stream.
                let empty = zstd_frame_pooled(&[], level).map_err(PipelineError::Compress)?;
                w.write_all(&empty)
                    .map_err(|e| PipelineError::Encrypt(e.to_string()))?;
            }
            "zstd"
        } else {
            let level = u32::try_from(level.clamp(0, 9)).unwrap_or(6);
            let mut gz = flate2::write::GzEncoder::new(&mut w, flate2::Compression::new(level));
            gz.write_all(plain)
                .and_then(|_| gz.finish().map(|_| ()))
                .map_err(|e| PipelineError::Encrypt(e.to_string()))?;
            "gzip"
        };
        let sha256 = hasher
            .join()
            .map_err(|_| PipelineError::Task("the hashing thread failed".into()))?;
        Ok((sha256, compression))
    })
    .map_err(&failed)?;
    let object = w.finish().map_err(encrypt_err)?;
    let changes = (name.kind == WalKind::Segment).then(|| {
        super::changes::summarize(name.start_lsn(plain.len() as u64), plain)
            .map_err(|e| e.to_string())
    });
    Ok(SealedWal {
        name: name.clone(),
        size: plain.len() as u64,
        sha256,
        object: Bytes::from(object),
        compression,
        changes,
    })
}
