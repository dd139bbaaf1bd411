//! Sealing the growing `.partial` ship after ship without redoing the WAL already sealed: its
//! written prefix is cut into independent zstd frames of [`PARTIAL_FRAME`] bytes; the complete
//! frames are compressed once and kept with the SHA-256 state after them, so a ship compresses
//! and hashes only the WAL written since (plus the last, incomplete frame) and encrypts the
//! compressed whole (age needs a fresh file key per object). The object has the format of every
//! WAL object (age ⟶ concatenated zstd frames), read by `wal::fetch::decode_object`.

use crate::pipeline::PipelineError;
use crate::wal::WalName;
use crate::wal::push::{PushError, SealedWal};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::io::Write;

/// Uncompressed bytes per frame of a shipped `.partial` (a multiple of every WAL page size).
pub const PARTIAL_FRAME: usize = 512 << 10;

/// The sealed frames of one spool `.partial`.
pub struct PartialSealer {
    name: WalName,
    level: i32,
    /// Compressed complete frames of [`PARTIAL_FRAME`] plaintext bytes each, in order.
    frames: Vec<Vec<u8>>,
    /// SHA-256 state over the plaintext of `frames`.
    hasher: Sha256,
}

impl PartialSealer {
    pub fn new(name: &WalName, level: i32) -> PartialSealer {
        PartialSealer {
            name: name.clone(),
            level,
            frames: Vec::new(),
            hasher: Sha256::new(),
        }
    }

    pub fn name(&self) -> &WalName {
        &self.name
    }

    /// The plaintext sealed in kept frames: the next ship reads from here.
    pub fn sealed_len(&self) -> u64 {
        (self.frames.len() * PARTIAL_FRAME) as u64
    }

    /// Forgets the kept frames (the file was not the append-only prefix it should be).
    pub fn reset(&mut self) {
        self.frames.clear();
        self.hasher = Sha256::new();
    }

    /// Seals the WAL `0..sealed_len() + tail.len()`, given `tail` (its bytes from
    /// [`Self::sealed_len`] on). Complete frames that end at or before `keep_below` are kept for
    /// the next ship (the caller keeps a margin below the receiver's write position). Blocking.
    pub fn seal(
        &mut self,
        tail: &[u8],
        keep_below: u64,
        recipients: &[age::x25519::Recipient],
    ) -> Result<SealedWal, PushError> {
        let name = self.name.name.clone();
        let failed = |source: PipelineError| PushError::Pipeline {
            repository: "(all)".into(),
            name: name.clone(),
            source: Box::new(source),
        };
        let start = self.sealed_len();
        let mut hasher = self.hasher.clone();
        let mut fresh: Vec<Vec<u8>> = Vec::new();
        for (i, chunk) in tail.chunks(PARTIAL_FRAME).enumerate() {
            let frame = crate::pipeline::compress::zstd_frame(chunk, self.level)
                .map_err(|e| failed(PipelineError::Compress(e)))?;
            hasher.update(chunk);
            let end = start + (i * PARTIAL_FRAME + chunk.len()) as u64;
            if chunk.len() == PARTIAL_FRAME && end <= keep_below && fresh.is_empty() {
                self.hasher.update(chunk);
                self.frames.push(frame);
            } else {
                fresh.push(frame);
            }
        }
        if self.frames.is_empty() && fresh.is_empty() {
            // No WAL at all: still one (empty) zstd frame, a valid stream.
            fresh.push(
                crate::pipeline::compress::zstd_frame(&[], self.level)
                    .map_err(|e| failed(PipelineError::Compress(e)))?,
            );
        }
        if recipients.is_empty() {
            return Err(failed(PipelineError::Encrypt(
                "no age recipients configured".into(),
            )));
        }
        let encrypt_err = |e: std::io::Error| failed(PipelineError::Encrypt(e.to_string()));
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| failed(PipelineError::Encrypt(e.to_string())))?;
        let compressed: usize = self.frames.iter().chain(&fresh).map(Vec::len).sum();
        let mut w = encryptor
            .wrap_output(Vec::with_capacity(compressed + compressed / 64 + 4096))
            .map_err(encrypt_err)?;
        for f in self.frames.iter().chain(&fresh) {
            w.write_all(f).map_err(encrypt_err)?;
        }
        let object = w.finish().map_err(encrypt_err)?;
        for f in fresh {
            crate::pipeline::buffers::give(f);
        }
        Ok(SealedWal {
            name: self.name.clone(),
            size: start + tail.len() as u64,
            sha256: hex::encode(hasher.finalize()),
            object: Bytes::from(object),
            compression: "zstd",
            changes: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ship_after_ship_equals_sealing_the_whole_prefix() {
        let identity = age::x25519::Identity::generate();
        let recipients = vec![identity.to_public()];
        let ids = crate::pipeline::Identities {
            keys: vec![identity],
            file: None,
        };
        let wal: Vec<u8> = (0..3 * PARTIAL_FRAME + 1234)
            .map(|i| (i % 7) as u8 * 31)
            .collect();
        let name = WalName::parse("000000010000000000000005.partial").unwrap();
        let mut s = PartialSealer::new(&name, 1);
        let mut shipped = 0usize;
        for len in [100, PARTIAL_FRAME + 5, 2 * PARTIAL_FRAME, wal.len()] {
            let from = s.sealed_len() as usize;
            assert!(from <= shipped.max(from));
            let sealed = s.seal(&wal[from..len], len as u64, &recipients).unwrap();
            let plain = crate::wal::fetch::decode_object(&sealed.object, &ids).unwrap();
            assert_eq!(plain, wal[..len], "ship of {len} bytes");
            assert_eq!(sealed.sha256, hex::encode(Sha256::digest(&wal[..len])));
            assert_eq!(sealed.size, len as u64);
            shipped = len;
        }
        // Complete frames were kept (3 of them), only below `keep_below`.
        assert_eq!(s.sealed_len(), 3 * PARTIAL_FRAME as u64);
        let mut t = PartialSealer::new(&name, 1);
        t.seal(&wal[..2 * PARTIAL_FRAME], PARTIAL_FRAME as u64, &recipients)
            .unwrap();
        assert_eq!(t.sealed_len(), PARTIAL_FRAME as u64);
        t.reset();
        assert_eq!(t.sealed_len(), 0);
        let empty = t.seal(&[], 0, &recipients).unwrap();
        assert!(
            crate::wal::fetch::decode_object(&empty.object, &ids)
                .unwrap()
                .is_empty()
        );
    }
}
