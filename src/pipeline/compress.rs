//! Frame-parallel zstd compression (ordered output, bounded workers) and gzip.
//!
//! The source is cut into frames ([`fixed_frames`]: fixed-size chunks today; a caller that knows
//! better boundaries, e.g. tar entries, hands its own frame stream to
//! [`super::store_frames`]). Each frame becomes one INDEPENDENT zstd frame, so the object is a
//! valid zstd stream (`zstd -d` reads it) and any frame decompresses on its own. gzip is one
//! stream over the whole content, compressed on the encryption thread.

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Cuts `source` into chunks of exactly `frame_size` bytes (the last one shorter, never empty).
pub fn fixed_frames<R: AsyncRead + Unpin + Send>(
    source: R,
    frame_size: usize,
) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin {
    let frame_size = frame_size.max(1);
    Box::pin(futures::stream::try_unfold(
        (source, false),
        move |(mut source, eof)| async move {
            if eof {
                return Ok(None);
            }
            let mut buf = BytesMut::from(Bytes::from(super::buffers::take(frame_size)));
            let mut at_eof = false;
            while buf.len() < frame_size {
                // A kept buffer may be larger than frame_size: the limit cuts the frame there.
                let room = frame_size - buf.len();
                let n = source.read_buf(&mut (&mut buf).limit(room)).await?;
                if n == 0 {
                    at_eof = true;
                    break;
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            Ok(Some((buf.freeze(), (source, at_eof))))
        },
    ))
}

thread_local! {
    /// This thread's zstd context and the level it is set to: a context is several MiB of
    /// tables, too costly to allocate and fault in for every 2 MiB frame.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses one frame as an independent zstd frame (content size recorded in the header), with
/// this thread's reused context, into a buffer from [`super::buffers`].
pub fn zstd_frame(plain: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut out = super::buffers::take(zstd::zstd_safe::compress_bound(plain.len()));
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, c) = slot.as_mut().expect("just set");
        c.compress_to_buffer(plain, &mut out)
    })?;
    Ok(out)
}

/// The compressed sizes of the zstd frames in `data`, in order (for tests and tools).
pub fn zstd_frame_sizes(mut data: &[u8]) -> io::Result<Vec<usize>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let n = zstd::zstd_safe::find_frame_compressed_size(data).map_err(|code| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                zstd::zstd_safe::get_error_name(code),
            )
        })?;
        out.push(n);
        data = &data[n..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn fixed_frames_cut_exactly() {
        for (len, fs, expect) in [
            (0usize, 4usize, vec![]),
            (1, 4, vec![1]),
            (4, 4, vec![4]),
            (9, 4, vec![4, 4, 1]),
        ] {
            let data = vec![7u8; len];
            let frames: Vec<Bytes> = fixed_frames(&data[..], fs).try_collect().await.unwrap();
            assert_eq!(frames.iter().map(|f| f.len()).collect::<Vec<_>>(), expect);
        }
    }

    #[test]
    fn frames_are_independent() {
        let a = zstd_frame(b"hello ", 3).unwrap();
        let b = zstd_frame(b"world", 3).unwrap();
        let mut both = a.clone();
        both.extend_from_slice(&b);
        assert_eq!(zstd_frame_sizes(&both).unwrap(), vec![a.len(), b.len()]);
        assert_eq!(zstd::decode_all(&both[..]).unwrap(), b"hello world");
        assert_eq!(zstd::decode_all(&both[a.len()..]).unwrap(), b"world");
    }
}
