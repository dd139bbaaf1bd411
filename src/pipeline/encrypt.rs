//! age encryption to recipients on a blocking thread, feeding the store writer.
//!
//! The thread receives (already compressed) frames — or plaintext, which it gzips itself — over
//! a bounded channel, writes them through age's sync `StreamWriter`, whose output goes into a
//! [`ChannelWriter`]: a `std::io::Write` that hands ciphertext chunks to the async uploader
//! through another bounded channel. Memory stays bounded by the channel capacities. The
//! ciphertext's size and SHA-256 are taken here as each chunk is handed on (while it is still in
//! the cache), not in a separate pass; the frames received go back to [`super::buffers`].

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use tokio::sync::mpsc;

/// Ciphertext is handed to the uploader in chunks of this size.
pub const OUTPUT_CHUNK: usize = 256 * 1024;

/// A message to the encryption thread.
pub(crate) enum Input {
    Data(Bytes),
    /// The input is complete: finish the streams. Without it, a closed channel means "abort".
    Finish,
}

/// Why the encryption thread stopped.
#[derive(Debug)]
pub(crate) enum EncryptFail {
    /// The other side went away (its own error is the one to report).
    Closed,
    Failed(String),
}

/// A `std::io::Write` that sends its bytes, in chunks, into a bounded Tokio channel. Must only be
/// used on a blocking thread (it uses `blocking_send`).
/// The size and SHA-256 of what went through are kept as it goes.
pub struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    chunk: usize,
    hasher: Sha256,
    size: u64,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<Bytes>, chunk: usize) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(chunk),
            chunk,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// The bytes written so far and their SHA-256 (lowercase hex), after a flush.
    pub fn digest(self) -> (u64, String) {
        (self.size, hex::encode(self.hasher.finalize()))
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.hasher.update(&self.buf);
        self.size += self.buf.len() as u64;
        let out = self.buf.split().freeze();
        self.buf.reserve(self.chunk);
        self.tx
            .blocking_send(out)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the uploader stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

fn fail(e: io::Error) -> EncryptFail {
    if e.kind() == io::ErrorKind::BrokenPipe {
        EncryptFail::Closed
    } else {
        EncryptFail::Failed(e.to_string())
    }
}

/// Runs on a blocking thread: age-encrypts (after gzip, if `gzip_level` is set) everything
/// received on `rx` until [`Input::Finish`], writing ciphertext into `tx`. Returns the
/// ciphertext's size and SHA-256.
pub(crate) fn encrypt_blocking(
    recipients: Vec<age::x25519::Recipient>,
    gzip_level: Option<u32>,
    mut rx: mpsc::Receiver<Input>,
    tx: mpsc::Sender<Bytes>,
) -> Result<(u64, String), EncryptFail> {
    if recipients.is_empty() {
        return Err(EncryptFail::Failed("no age recipients configured".into()));
    }
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| EncryptFail::Failed(e.to_string()))?;
    let sink = ChannelWriter::new(tx, OUTPUT_CHUNK);
    let age_w = encryptor.wrap_output(sink).map_err(fail)?;
    let age_w = match gzip_level {
        None => {
            let mut w = age_w;
            pump(&mut rx, &mut w)?;
            w
        }
        Some(level) => {
            let mut gz =
                flate2::write::GzEncoder::new(age_w, flate2::Compression::new(level.min(9)));
            pump(&mut rx, &mut gz)?;
            gz.finish().map_err(fail)?
        }
    };
    let mut sink = age_w.finish().map_err(fail)?;
    sink.flush().map_err(fail)?;
    Ok(sink.digest())
}

fn pump(rx: &mut mpsc::Receiver<Input>, w: &mut impl Write) -> Result<(), EncryptFail> {
    loop {
        match rx.blocking_recv() {
            Some(Input::Data(b)) => {
                w.write_all(&b).map_err(fail)?;
                super::buffers::recycle(b);
            }
            Some(Input::Finish) => return Ok(()),
            None => return Err(EncryptFail::Closed),
        }
    }
}
