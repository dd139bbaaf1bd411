//! The read direction: streamed fetch, hash check, age decryption, decompression.
//!
//! A driver task pulls the object from the store, hashes the stored bytes and feeds them to a
//! blocking thread that runs age's sync decryptor and the zstd (multi-frame) or gzip decoder;
//! plaintext comes back through a bounded channel as an `AsyncRead`. When the stored size or
//! SHA-256 differ from the record, the reader returns an `InvalidData` error naming the key
//! instead of EOF. When decryption fails part-way, the driver still reads the rest of the
//! object so it can say whether the stored bytes were damaged. A damaged object's error says
//! what happened — `truncated` (fewer bytes stored than the commit record says) or `corrupted`
//! (other bytes) — with the key, where the repository lives, both sizes, and that retrying will
//! not help ([`size_damage`], [`corrupted`] for readers that do not stream).

use super::Identities;
use crate::repository::{ObjectRecord, Store, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot};

/// The end of every damaged-object message: the answer to "will a retry help?".
pub const NO_RETRY: &str =
    "permanent: retrying will not help; restore from another repository or another backup";

/// Where `store` lives, for messages: the local repository's folder or the cloud URL.
pub fn location(store: &Store) -> String {
    match store {
        Store::Local(s) => s.root.display().to_string(),
        Store::Object(s) => s.location().to_string(),
        Store::Faulty(s) => location(s.inner()),
    }
}

/// The message of an object whose stored size differs from its commit record.
pub(crate) fn size_message(store: &Store, record: &ObjectRecord, found: u64, more: bool) -> String {
    let (what, more) = if more {
        ("corrupted", "more than ")
    } else {
        ("truncated", "")
    };
    format!(
        "object {} in repository {}: {what}: the store holds {more}{found} bytes, the commit record says {} ({NO_RETRY})",
        record.key,
        location(store),
        record.size
    )
}

/// Checks the stored size of `record`'s object against the record (one metadata call): the
/// message when it is missing, truncated or longer; `None` when the size agrees (or the store
/// cannot say).
pub async fn size_damage(store: &Store, record: &ObjectRecord) -> Option<String> {
    match store.head(&record.key).await {
        Ok(Some(meta)) if meta.size == record.size => None,
        Ok(Some(meta)) => Some(size_message(
            store,
            record,
            meta.size,
            meta.size > record.size,
        )),
        Ok(None) => Some(format!(
            "object {} in repository {}: missing: the commit record lists it ({} bytes) but the store does not hold it ({NO_RETRY})",
            record.key,
            location(store),
            record.size
        )),
        Err(_) => None,
    }
}

/// The message of an object of the recorded size whose bytes fail decryption or decompression
/// (`reason`: age's or zstd's words).
pub fn corrupted(store: &Store, record: &ObjectRecord, reason: &dyn std::fmt::Display) -> String {
    format!(
        "object {} in repository {}: corrupted: its stored size agrees with the commit record ({} bytes) but its bytes do not decrypt ({reason}): they differ from what was written ({NO_RETRY})",
        record.key,
        location(store),
        record.size
    )
}

/// Plaintext is handed to the reader in chunks of this size.
const PLAIN_CHUNK: usize = 256 * 1024;

/// A `std::io::Read` over a Tokio channel of chunks (blocking threads only).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Why the decoding thread stopped.
enum DecodeFail {
    /// No identity matched (already reported through the header channel).
    NoIdentity,
    /// The reader went away.
    Closed,
    Failed(io::Error),
}

pub(crate) fn no_identity_message(identities: &Identities) -> String {
    // age cannot tell a wrong identity from a damaged recipient stanza; checking the stored hash
    // would mean reading the whole object first, so the hint covers the rare second case.
    let hint = "(if it is the right identity, the object's header is damaged; `verify` checks stored hashes)";
    match &identities.file {
        Some(p) => format!(
            "no identity in {} matches this object's recipients {hint}",
            p.display()
        ),
        None => format!(
            "none of the {} given identities matches this object's recipients {hint}",
            identities.keys.len()
        ),
    }
}

fn decode_blocking(
    cipher_rx: mpsc::Receiver<io::Result<Bytes>>,
    plain_tx: mpsc::Sender<io::Result<Bytes>>,
    header_tx: oneshot::Sender<Result<(), io::Error>>,
    identities: Identities,
    compression: String,
) -> Result<(), DecodeFail> {
    let reader = io::BufReader::with_capacity(
        64 * 1024,
        ChannelReader {
            rx: cipher_rx,
            current: Bytes::new(),
        },
    );
    let decryptor =
        age::Decryptor::new_buffered(reader).map_err(|e| DecodeFail::Failed(decrypt_error(e)))?;
    let plain = match decryptor.decrypt(identities.keys.iter().map(|i| i as &dyn age::Identity)) {
        Ok(r) => {
            let _ = header_tx.send(Ok(()));
            r
        }
        Err(age::DecryptError::NoMatchingKeys) => {
            let _ = header_tx.send(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                no_identity_message(&identities),
            )));
            return Err(DecodeFail::NoIdentity);
        }
        Err(e) => return Err(DecodeFail::Failed(decrypt_error(e))),
    };
    let mut out: Box<dyn Read> = match compression.as_str() {
        "zstd" => Box::new(zstd::stream::read::Decoder::new(plain).map_err(DecodeFail::Failed)?),
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(plain)),
        other => {
            return Err(DecodeFail::Failed(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown compression `{other}`"),
            )));
        }
    };
    loop {
        // A pooled buffer (given back by [`PlainReader`] once read): no zeroed allocation per chunk.
        let mut buf = super::buffers::take_filled(PLAIN_CHUNK);
        let mut filled = 0;
        while filled < buf.len() {
            match out.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DecodeFail::Failed(e)),
            }
        }
        if filled == 0 {
            super::buffers::give(buf);
            return Ok(());
        }
        buf.truncate(filled);
        if plain_tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return Err(DecodeFail::Closed);
        }
    }
}

fn decrypt_error(e: age::DecryptError) -> io::Error {
    match e {
        age::DecryptError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("age: {other}")),
    }
}

/// Opens `record` for reading; see [`super::open_stream`].
pub(crate) async fn open(
    store: &Store,
    record: &ObjectRecord,
    identities: &Identities,
) -> Result<Box<dyn AsyncRead + Send + Unpin>, StoreError> {
    if record.encryption != "age" {
        return Err(StoreError::Io {
            action: "decrypting",
            key: record.key.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown encryption `{}`", record.encryption),
            ),
        });
    }
    let stream = store.get_stream(&record.key).await?;
    let (cipher_tx, cipher_rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let (plain_tx, plain_rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let (header_tx, header_rx) = oneshot::channel();
    let ids = identities.clone();
    let compression = record.compression.clone();
    let thread_plain_tx = plain_tx.clone();
    let decoder = tokio::task::spawn_blocking(move || {
        decode_blocking(cipher_rx, thread_plain_tx, header_tx, ids, compression)
    });
    tokio::spawn(drive(
        stream,
        store.clone(),
        record.clone(),
        cipher_tx,
        plain_tx,
        decoder,
    ));
    match header_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(StoreError::Io {
                action: "decrypting",
                key: record.key.clone(),
                source: e,
            });
        }
        // The decoder stopped before reading the header: the reader reports why.
        Err(_) => {}
    }
    Ok(Box::new(PlainReader {
        rx: plain_rx,
        current: Bytes::new(),
        pos: 0,
    }))
}

/// The plaintext chunks as an `AsyncRead`; each chunk's buffer goes back to the pool once read
/// (whole, never split: the pool gets it back at its full, initialised length).
struct PlainReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// Bytes of `current` already read.
    pos: usize,
}

impl AsyncRead for PlainReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        while self.pos == self.current.len() {
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(b))) => {
                    super::buffers::recycle(std::mem::replace(&mut self.current, b));
                    self.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
            }
        }
        let this = &mut *self;
        let n = buf.remaining().min(this.current.len() - this.pos);
        buf.put_slice(&this.current[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn with_key(key: &str, e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("object {key}: {e}"))
}

/// Feeds the stored bytes to the decoder, checks size and hash, and reports the final error
/// (if any) to the reader before it can see EOF.
async fn drive(
    mut stream: futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
    store: Store,
    record: ObjectRecord,
    cipher_tx: mpsc::Sender<io::Result<Bytes>>,
    plain_tx: mpsc::Sender<io::Result<Bytes>>,
    mut decoder: tokio::task::JoinHandle<Result<(), DecodeFail>>,
) {
    let key = record.key.as_str();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut decoder_gone = false;
    let mut fetch_error: Option<StoreError> = None;
    while let Some(item) = stream.next().await {
        if plain_tx.is_closed() {
            return; // the reader was dropped
        }
        match item {
            Ok(chunk) => {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                if size > record.size {
                    // Longer than recorded: no need to read further to know it is wrong.
                    break;
                }
                if !decoder_gone && cipher_tx.send(Ok(chunk)).await.is_err() {
                    // The decoder stopped (error, or done without reading to EOF). Keep hashing:
                    // the verdict on the stored bytes decides which error to report.
                    decoder_gone = true;
                }
            }
            Err(e) => {
                fetch_error = Some(e);
                break;
            }
        }
    }
    let actual = hex::encode(hasher.finalize());
    let verdict: Option<io::Error> = if let Some(e) = fetch_error {
        Some(e.into_io())
    } else if size != record.size {
        Some(io::Error::new(
            io::ErrorKind::InvalidData,
            size_message(&store, &record, size, size > record.size),
        ))
    } else if actual != record.sha256 {
        Some(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "object {key} in repository {}: corrupted: the SHA-256 of the stored bytes is {actual}, the commit record says {} ({NO_RETRY})",
                location(&store),
                record.sha256
            ),
        ))
    } else {
        None
    };
    if let Some(v) = &verdict
        && !decoder_gone
    {
        let _ = cipher_tx
            .send(Err(io::Error::new(v.kind(), v.to_string())))
            .await;
    }
    drop(cipher_tx);
    let decoded = (&mut decoder).await;
    let final_error = match (decoded, verdict) {
        (Ok(Err(DecodeFail::NoIdentity)), _) | (Ok(Err(DecodeFail::Closed)), _) => None,
        (_, Some(v)) => Some(v),
        (Ok(Ok(())), None) => None,
        (Ok(Err(DecodeFail::Failed(e))), None) => Some(with_key(key, &e)),
        (Err(join), None) => Some(io::Error::other(format!(
            "object {key}: decoder failed: {join}"
        ))),
    };
    if let Some(e) = final_error {
        let _ = plain_tx.send(Err(e)).await;
    }
}
