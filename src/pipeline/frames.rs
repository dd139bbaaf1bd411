//! The frame-by-frame read path of whole restores: one object read once, front to back, in
//! three stages connected by bounded channels, handing back whole decompressed zstd frames.
//!
//! ```text
//! store stream ─▶ (blocking) SHA-256 + size of the ciphertext as age decrypts it, zstd frames
//!              cut at their boundaries ─▶ decompression of ≤ workers frames at once (they are
//!              independent zstd frames) ─▶ frames in order to the reader
//! ```
//!
//! Buffers come from [`super::buffers`] (none zeroed per frame); memory ≈ (workers + 3) frames.
//! The checks are those of [`super::decode`]: the stored size and SHA-256 against the record
//! (a mismatch is an `InvalidData` error naming the key after the last frame, before the end),
//! age's authentication of every chunk, and each frame's content size against its header.

use super::Identities;
use super::decode::{NO_RETRY, location, size_message};
use crate::repository::{ObjectRecord, Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, Read};
use tokio::sync::{mpsc, oneshot};

/// The largest compressed or decompressed frame accepted (frames are ≈ 2 × frame size at most).
const MAX_FRAME: usize = 256 << 20;
/// The buffer a compressed frame is gathered in starts this large (a 2 MiB frame fits).
const GATHER: usize = (2 << 20) + (256 << 10);

/// A compressed frame: the first `len` bytes of the buffer (kept whole for the pool).
type Gathered = (Vec<u8>, usize);

/// One decompressed frame.
#[derive(Debug)]
pub struct Frame {
    /// Offset of its first byte in the object's content.
    pub content_offset: u64,
    pub data: Bytes,
}

/// The frames of one object, in order (use from blocking threads: [`FrameReader::blocking_next`]).
pub struct FrameReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    offset: u64,
}

impl FrameReader {
    /// The next frame; `None` at the end (the stored size and hash were checked by then).
    pub fn blocking_next(&mut self) -> Option<io::Result<Frame>> {
        let item = self.rx.blocking_recv()?;
        Some(item.map(|data| {
            let content_offset = self.offset;
            self.offset += data.len() as u64;
            Frame {
                content_offset,
                data,
            }
        }))
    }

    /// The next frame (async).
    pub async fn next(&mut self) -> Option<io::Result<Frame>> {
        let item = self.rx.recv().await?;
        Some(item.map(|data| {
            let content_offset = self.offset;
            self.offset += data.len() as u64;
            Frame {
                content_offset,
                data,
            }
        }))
    }

    /// Content offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Opens `record` (age + zstd) for reading frame by frame with `workers` frames decompressed at
/// once. No identity matching the object's recipients is an error here.
pub async fn open_frames(
    store: &Store,
    record: &ObjectRecord,
    identities: &Identities,
    workers: usize,
) -> Result<FrameReader, StoreError> {
    let unsupported = |what: String| StoreError::Io {
        action: "decrypting",
        key: record.key.clone(),
        source: io::Error::new(io::ErrorKind::InvalidData, what),
    };
    if record.encryption != "age" {
        return Err(unsupported(format!(
            "unknown encryption `{}`",
            record.encryption
        )));
    }
    if record.compression != "zstd" {
        return Err(unsupported(format!(
            "frame reads need zstd, this object is {}",
            record.compression
        )));
    }
    let mut stream = store.get_stream(&record.key).await?;
    let (cipher_tx, cipher_rx) = mpsc::channel::<io::Result<Bytes>>(2);
    let (frame_tx, frame_rx) = mpsc::channel::<io::Result<Gathered>>(1);
    let (out_tx, out_rx) = mpsc::channel::<io::Result<Bytes>>(1);
    let (header_tx, header_rx) = oneshot::channel();
    // Stage 0: the store's chunks as they come.
    tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if cipher_tx.send(item.map_err(|e| e.into_io())).await.is_err() {
                return;
            }
        }
    });
    // Stage 1: hash, decrypt, cut.
    let ids = identities.clone();
    let (st, rec) = (store.clone(), record.clone());
    tokio::task::spawn_blocking(move || {
        decrypt_and_cut(cipher_rx, frame_tx, header_tx, &ids, &st, &rec)
    });
    // Stage 2: decompress in parallel, in order.
    tokio::spawn(async move {
        let frames = futures::stream::unfold(frame_rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let decoded = frames
            .map(|item| async move {
                let frame = item?;
                tokio::task::spawn_blocking(move || decompress(frame))
                    .await
                    .map_err(|e| io::Error::other(format!("decompression task failed: {e}")))?
            })
            .buffered(workers.max(1));
        let mut decoded = std::pin::pin!(decoded);
        while let Some(item) = decoded.next().await {
            let stop = item.is_err();
            if out_tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    // Decrypting, or stopped before the header (the reader then reports why), unless:
    if let Ok(Err(e)) = header_rx.await {
        return Err(StoreError::Io {
            action: "decrypting",
            key: record.key.clone(),
            source: e,
        });
    }
    Ok(FrameReader {
        rx: out_rx,
        offset: 0,
    })
}

/// The ciphertext as age reads it: hashed and counted as it is consumed (one pass, while the
/// bytes are in the cache), without copying through an intermediate buffer (`BufRead`).
struct Cipher {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    hasher: Sha256,
    size: u64,
    limit: u64,
    fetch_error: Option<io::Error>,
    too_long: bool,
}

impl Cipher {
    /// Makes `current` non-empty unless at the end; an error stops the reading for good.
    fn fill(&mut self) -> io::Result<()> {
        while self.current.is_empty() {
            if let Some(e) = &self.fetch_error {
                return Err(io::Error::new(e.kind(), e.to_string()));
            }
            if self.too_long {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "longer than the commit record says",
                ));
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => {
                    if self.size + b.len() as u64 > self.limit {
                        // Longer than recorded: no need to read further to know it is wrong.
                        self.hasher.update(&b);
                        self.size += b.len() as u64;
                        self.too_long = true;
                    } else {
                        self.current = b;
                    }
                }
                Some(Err(e)) => self.fetch_error = Some(e),
                None => return Ok(()),
            }
        }
        Ok(())
    }

    fn advance(&mut self, n: usize) {
        self.hasher.update(&self.current[..n]);
        self.size += n as u64;
        let _ = self.current.split_to(n);
    }

    /// Reads (and hashes) what is left, so the verdict covers every stored byte.
    fn drain(&mut self) {
        loop {
            let n = self.current.len();
            if n > 0 {
                self.advance(n);
            }
            if self.fill().is_err() || self.current.is_empty() {
                return;
            }
        }
    }
}

impl Read for Cipher {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill()?;
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.advance(n);
        Ok(n)
    }
}

impl BufRead for Cipher {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill()?;
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        self.advance(n);
    }
}

/// Why stage 1 stopped.
enum Stop {
    Done,
    /// No identity matched (reported through the header channel) or the reader went away.
    Quiet,
    Failed(io::Error),
}

fn decrypt_and_cut(
    rx: mpsc::Receiver<io::Result<Bytes>>,
    tx: mpsc::Sender<io::Result<Gathered>>,
    header_tx: oneshot::Sender<io::Result<()>>,
    identities: &Identities,
    store: &Store,
    record: &ObjectRecord,
) {
    let mut cipher = Cipher {
        rx,
        current: Bytes::new(),
        hasher: Sha256::new(),
        size: 0,
        limit: record.size,
        fetch_error: None,
        too_long: false,
    };
    let stop = decrypt_into(&mut cipher, &tx, header_tx, identities);
    if matches!(stop, Stop::Quiet) {
        return;
    }
    cipher.drain();
    let key = &record.key;
    let actual = hex::encode(std::mem::take(&mut cipher.hasher).finalize());
    let verdict = if let Some(e) = cipher.fetch_error.take() {
        Some(e)
    } else if cipher.size != record.size {
        Some(io::Error::new(
            io::ErrorKind::InvalidData,
            size_message(store, record, cipher.size, cipher.size > record.size),
        ))
    } else if actual != record.sha256 {
        Some(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "object {key} in repository {}: corrupted: the SHA-256 of the stored bytes is {actual}, the commit record says {} ({NO_RETRY})",
                location(store),
                record.sha256
            ),
        ))
    } else {
        None
    };
    let error = match (verdict, stop) {
        (Some(v), _) => Some(v),
        (None, Stop::Failed(e)) => Some(io::Error::new(e.kind(), format!("object {key}: {e}"))),
        (None, _) => None,
    };
    if let Some(e) = error {
        let _ = tx.blocking_send(Err(e));
    }
}

fn decrypt_into(
    cipher: &mut Cipher,
    tx: &mpsc::Sender<io::Result<Gathered>>,
    header_tx: oneshot::Sender<io::Result<()>>,
    identities: &Identities,
) -> Stop {
    let decryptor = match age::Decryptor::new_buffered(&mut *cipher) {
        Ok(d) => d,
        Err(e) => return Stop::Failed(decrypt_error(e)),
    };
    let mut plain = match decryptor.decrypt(identities.keys.iter().map(|i| i as &dyn age::Identity))
    {
        Ok(r) => {
            let _ = header_tx.send(Ok(()));
            r
        }
        Err(age::DecryptError::NoMatchingKeys) => {
            let _ = header_tx.send(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                super::decode::no_identity_message(identities),
            )));
            return Stop::Quiet;
        }
        Err(e) => return Stop::Failed(decrypt_error(e)),
    };
    // `buf[..filled]` holds decrypted bytes not yet handed on (the start of the next frame).
    let mut buf = super::buffers::take_filled(GATHER);
    let mut filled = 0usize;
    loop {
        if filled == buf.len() {
            if buf.len() >= MAX_FRAME {
                return Stop::Failed(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a zstd frame larger than {MAX_FRAME} bytes (or not a zstd stream)"),
                ));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = match plain.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Stop::Failed(e),
        };
        if n == 0 {
            if filled > 0 {
                return Stop::Failed(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the content ends inside a zstd frame ({filled} bytes left over)"),
                ));
            }
            return Stop::Done;
        }
        filled += n;
        // Hand on every complete frame gathered so far.
        while let Ok(len) = zstd::zstd_safe::find_frame_compressed_size(&buf[..filled]) {
            let mut next = super::buffers::take_filled(GATHER.max(filled - len));
            next[..filled - len].copy_from_slice(&buf[len..filled]);
            let frame = std::mem::replace(&mut buf, next);
            filled -= len;
            if tx.blocking_send(Ok((frame, len))).is_err() {
                return Stop::Quiet;
            }
            if filled == 0 {
                break;
            }
        }
    }
}

fn decrypt_error(e: age::DecryptError) -> io::Error {
    match e {
        age::DecryptError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("age: {other}")),
    }
}

thread_local! {
    /// This thread's zstd decompression context (reused: no tables allocated per frame).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one complete zstd frame into a pooled buffer of its recorded content size.
fn decompress((buf, len): Gathered) -> io::Result<Bytes> {
    let frame = &buf[..len];
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) => n,
        // Without a recorded size (no writer of ours omits it), the streaming decoder.
        Ok(None) => return zstd::stream::decode_all(frame).map(Bytes::from),
        Err(_) => return Err(invalid("a damaged zstd frame header".into())),
    };
    let size = usize::try_from(size)
        .ok()
        .filter(|n| *n <= MAX_FRAME)
        .ok_or_else(|| invalid(format!("a zstd frame claims {size} bytes of content")))?;
    let mut out = super::buffers::take(size);
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut()
            .expect("just set")
            .decompress_to_buffer(frame, &mut out)
    })?;
    if out.len() != size {
        return Err(invalid(format!(
            "a zstd frame holds {} bytes, its header says {size}",
            out.len()
        )));
    }
    // Back whole: the pool keeps its initialised length (no zeroing when it is gathered into).
    super::buffers::give(buf);
    Ok(Bytes::from(out))
}
