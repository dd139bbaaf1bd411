//! The control socket: the daemon-side server ([`server`]), who may do what ([`auth`]), and the
//! client the ctl and the tests use ([`client`]). Wire types are in [`crate::protocol`].

pub mod auth;
pub mod client;
pub(crate) mod fds;
pub mod server;

use serde::Serialize;
use std::io;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// The outcome of reading one line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// A complete line is in the buffer (without its `\n`).
    Line,
    /// The peer closed the connection (a partial last line is dropped).
    Eof,
    /// The line exceeded the cap; the rest of it was not read.
    TooLong,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), never holding more than
/// `max` bytes plus one read buffer: a longer line gives [`LineRead::TooLong`] as soon as the
/// cap is passed, without reading the rest.
pub(crate) async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > max {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(chunk);
        match done {
            Some(used) => {
                reader.consume(used);
                return Ok(LineRead::Line);
            }
            None => {
                let used = chunk.len();
                reader.consume(used);
            }
        }
    }
}

/// Writes one value as a JSON line and flushes.
pub(crate) async fn write_json_line<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn capped_lines() {
        let data = b"one\n\ntoo long line\nx".to_vec();
        let mut r = tokio::io::BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_capped(&mut r, &mut buf, 8).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"one");
        assert_eq!(
            read_line_capped(&mut r, &mut buf, 8).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"");
        assert_eq!(
            read_line_capped(&mut r, &mut buf, 8).await.unwrap(),
            LineRead::TooLong
        );
        assert!(buf.len() <= 8);
        let mut r = tokio::io::BufReader::new(&b"12345678\n123"[..]);
        assert_eq!(
            read_line_capped(&mut r, &mut buf, 8).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(
            read_line_capped(&mut r, &mut buf, 8).await.unwrap(),
            LineRead::Eof
        );
    }
}
