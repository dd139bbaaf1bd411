//! The tar stream of a snapshot backup cut into parts (objects) and frames: each part is stored by
//! a [`crate::pipeline::store_frames`] task on the runtime, at most [`MAX_OUTSTANDING`] + 1 at
//! once; a stored part's frame table turns plaintext offsets into frame locations ([`locate`]).

use super::super::SnapshotError;
use super::super::manifest::Location;
use super::super::tar;
use crate::pipeline::{
    self, FrameInfo, PipelineError, PipelineSettings, ProgressCounter, StoredObject,
};
use crate::repository::{Store, format};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Parts being stored at once (each has its own compression pipeline).
pub(super) const MAX_OUTSTANDING: usize = 2;
/// Frame buffers have this much room beyond the frame size (tar headers and padding of the entry
/// that fills the frame), so they are not reallocated.
pub(super) const FRAME_SLACK: usize = 64 * 1024;

/// Content waiting for its part: a whole file (`at` None) or a run of changed blocks at file
/// offset `at`.
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) start: u64,
    pub(super) len: u64,
    pub(super) at: Option<u64>,
}

pub(super) struct OpenPart {
    pub(super) seq: u64,
    pub(super) tx: mpsc::Sender<io::Result<Bytes>>,
    pub(super) buf: Vec<u8>,
    /// Plaintext offset of `buf[0]`.
    pub(super) sent: u64,
    pub(super) entries: usize,
}

impl OpenPart {
    pub(super) fn offset(&self) -> u64 {
        self.sent + self.buf.len() as u64
    }
}

pub(super) type PartTask = tokio::task::JoinHandle<Result<StoredObject, PipelineError>>;

/// The tar stream split into parts and frames.
pub(super) struct Parts {
    pub(super) store: Store,
    pub(super) settings: PipelineSettings,
    pub(super) progress: ProgressCounter,
    pub(super) cancel: CancellationToken,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) job: String,
    pub(super) backup_id: String,
    pub(super) frame_size: usize,
    pub(super) part_size: u64,
    pub(super) next_seq: u64,
    pub(super) current: Option<OpenPart>,
    pub(super) outstanding: VecDeque<(u64, PartTask)>,
    pub(super) finished: BTreeMap<u64, StoredObject>,
}

impl Parts {
    pub(super) fn part(&mut self) -> &mut OpenPart {
        if self.current.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let key = format::data_key(&self.job, &self.backup_id, seq);
            let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
            let stream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
            let (store, settings, progress, cancel, k) = (
                self.store.clone(),
                self.settings.clone(),
                self.progress.clone(),
                self.cancel.clone(),
                key.clone(),
            );
            let task = self.handle.spawn(async move {
                pipeline::store_frames(&store, &k, stream, &settings, &progress, &cancel).await
            });
            self.outstanding.push_back((seq, task));
            self.current = Some(OpenPart {
                seq,
                tx,
                buf: pipeline::buffers::take(self.frame_size + FRAME_SLACK),
                sent: 0,
                entries: 0,
            });
        }
        self.current.as_mut().expect("just opened")
    }

    pub(super) fn send_frame(&mut self) -> Result<(), SnapshotError> {
        let frame_size = self.frame_size;
        let Some(p) = self.current.as_mut() else {
            return Ok(());
        };
        if p.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(
            &mut p.buf,
            pipeline::buffers::take(frame_size + FRAME_SLACK),
        );
        p.sent += data.len() as u64;
        if p.tx.blocking_send(Ok(Bytes::from(data))).is_err() {
            // The store task ended early (failed or cancelled): its error says why.
            self.current = None;
            while !self.outstanding.is_empty() {
                self.wait_oldest()?;
            }
            return Err(SnapshotError::Cancelled);
        }
        if p.sent > frame_size as u64 {
            crate::faults::kill_point(
                "part-upload",
                &format::data_key(&self.job, &self.backup_id, p.seq),
            );
        }
        Ok(())
    }

    /// Called before an entry of `total` tar bytes: a new part if it would not fit.
    pub(super) fn room_for(&mut self, total: u64) -> Result<(), SnapshotError> {
        if let Some(p) = &self.current
            && p.offset() > 0
            && p.offset() + total > self.part_size
        {
            self.close()?;
        }
        // A new entry starts a new frame once the current one is big enough, or when the entry
        // would make the frame much larger than the target.
        let frame_size = self.frame_size as u64;
        if let Some(p) = &self.current {
            let b = p.buf.len() as u64;
            if b >= frame_size || (b > 0 && b + total > 2 * frame_size) {
                self.send_frame()?;
            }
        }
        Ok(())
    }

    /// After an entry: close the part when full.
    pub(super) fn entry_done(&mut self) -> Result<(), SnapshotError> {
        let part_size = self.part_size;
        if let Some(p) = self.current.as_mut() {
            p.entries += 1;
            if p.offset() >= part_size {
                self.close()?;
            }
        }
        Ok(())
    }

    pub(super) fn close(&mut self) -> Result<(), SnapshotError> {
        if let Some(p) = self.current.as_mut() {
            tar::end_of_archive(&mut p.buf);
        }
        self.send_frame()?;
        // Dropping the sender ends the part's frame stream.
        self.current = None;
        while self.outstanding.len() > MAX_OUTSTANDING {
            self.wait_oldest()?;
        }
        Ok(())
    }

    pub(super) fn wait_oldest(&mut self) -> Result<(), SnapshotError> {
        let Some((seq, task)) = self.outstanding.pop_front() else {
            return Ok(());
        };
        let stored = self
            .handle
            .block_on(task)
            .map_err(|e| SnapshotError::Store(PipelineError::Task(e.to_string())))?
            .map_err(|e| match e {
                PipelineError::Cancelled => SnapshotError::Cancelled,
                e => SnapshotError::Store(e),
            })?;
        crate::faults::kill_point("between-parts", &stored.record.key);
        self.finished.insert(seq, stored);
        Ok(())
    }

    pub(super) fn close_and_wait_all(&mut self) -> Result<(), SnapshotError> {
        if self.current.is_some() {
            self.close()?;
        }
        while !self.outstanding.is_empty() {
            self.wait_oldest()?;
        }
        Ok(())
    }

    pub(super) fn write(&mut self, bytes: &[u8]) {
        self.part().buf.extend_from_slice(bytes);
    }
}

/// The frames of `stored` covering `[start, start + len)`.
pub(super) fn locate(backup: &str, stored: &StoredObject, start: u64, len: u64) -> Location {
    let frames: &[FrameInfo] = &stored.frames;
    let first = frames.partition_point(|f| f.content_offset + f.content_len <= start);
    let end = start + len;
    let covering: Vec<[u64; 4]> = frames[first..]
        .iter()
        .take_while(|f| f.content_offset < end)
        .map(|f| {
            [
                f.compressed_offset,
                f.compressed_len,
                f.content_offset,
                f.content_len,
            ]
        })
        .collect();
    let offset = covering.first().map(|f| start - f[2]).unwrap_or(0);
    Location {
        backup: backup.to_string(),
        key: stored.record.key.clone(),
        offset,
        frames: covering,
    }
}
