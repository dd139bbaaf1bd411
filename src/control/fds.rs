//! File descriptors beside request lines (SCM_RIGHTS): the server's line reader that also
//! receives the descriptors sent with a line, and the client's send of a line with one descriptor
//! in the same `sendmsg` (`wal-push`, docs/protocol.md).

use crate::control::LineRead;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// At most this many descriptors are accepted with one `recvmsg` (more are closed by the kernel
/// and the message is flagged truncated).
const MAX_FDS: usize = 4;
/// At most this many received descriptors wait for their line; more are closed at once (a
/// legitimate client sends one, with a `wal-push` line).
const MAX_PENDING_FDS: usize = 8;
/// Bytes read per `recvmsg`.
const READ_CHUNK: usize = 64 * 1024;

/// A line reader over the read half of a Unix stream that also collects SCM_RIGHTS descriptors.
///
/// Linux delivers the descriptors of one `sendmsg` with the bytes of that `sendmsg` and never
/// reads past such a message in the same `recvmsg`; so the descriptors belong to the line holding
/// the last byte of the chunk they arrived with. Descriptors of consumed lines that nobody took
/// are closed.
pub(crate) struct FdLineReader {
    stream: OwnedReadHalf,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Descriptors with the stream offset of the byte they belong to.
    fds: VecDeque<(u64, OwnedFd)>,
    scratch: Vec<u8>,
    eof: bool,
}

fn recv_with_fds(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    Ok((msg.bytes, fds))
}

impl FdLineReader {
    pub(crate) fn new(stream: OwnedReadHalf) -> FdLineReader {
        FdLineReader {
            stream,
            buf: Vec::new(),
            base: 0,
            fds: VecDeque::new(),
            scratch: vec![0; READ_CHUNK],
            eof: false,
        }
    }

    /// Reads more from the socket; 0 at end of stream. Cancel-safe (what was read is kept).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let unix: &UnixStream = self.stream.as_ref();
        let raw = unix.as_raw_fd();
        loop {
            unix.readable().await?;
            let scratch = &mut self.scratch;
            match unix.try_io(Interest::READABLE, || recv_with_fds(raw, scratch)) {
                Ok((n, fds)) => {
                    if n == 0 {
                        self.eof = true;
                        return Ok(0);
                    }
                    let last = self.base + self.buf.len() as u64 + n as u64 - 1;
                    self.buf.extend_from_slice(&self.scratch[..n]);
                    for fd in fds {
                        if self.fds.len() < MAX_PENDING_FDS {
                            self.fds.push_back((last, fd));
                        }
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The buffered bytes, reading more first when there are none (empty at end of stream).
    pub(crate) async fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.buf.is_empty() {
            self.fill().await?;
        }
        Ok(&self.buf)
    }

    /// Drops `n` buffered bytes (and closes descriptors that came with them).
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.base += n as u64;
        while self.fds.front().is_some_and(|(pos, _)| *pos < self.base) {
            self.fds.pop_front();
        }
    }

    /// Reads one `\n`-terminated line into `line` (without the `\n`), with the descriptors sent
    /// with it. Never buffers much more than `max` bytes: a longer line gives
    /// [`LineRead::TooLong`] without reading the rest.
    pub(crate) async fn read_line(
        &mut self,
        line: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<(LineRead, Vec<OwnedFd>)> {
        line.clear();
        let mut scanned = 0;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i;
                if end > max {
                    return Ok((LineRead::TooLong, Vec::new()));
                }
                line.extend_from_slice(&self.buf[..end]);
                let last = self.base + end as u64;
                let mut taken = Vec::new();
                while self.fds.front().is_some_and(|(pos, _)| *pos <= last) {
                    if let Some((_, fd)) = self.fds.pop_front() {
                        taken.push(fd);
                    }
                }
                self.consume(end + 1);
                return Ok((LineRead::Line, taken));
            }
            scanned = self.buf.len();
            if scanned > max {
                return Ok((LineRead::TooLong, Vec::new()));
            }
            if self.fill().await? == 0 {
                return Ok((LineRead::Eof, Vec::new()));
            }
        }
    }
}

/// Sends `line` (a complete JSON line with its `\n`) with `fd` as SCM_RIGHTS in the same
/// `sendmsg`; the rest of a partial send is written normally.
pub(crate) async fn send_line_with_fd(
    writer: &mut OwnedWriteHalf,
    line: &[u8],
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let sent = {
        let unix: &UnixStream = writer.as_ref();
        let raw = unix.as_raw_fd();
        let fds = [fd.as_raw_fd()];
        loop {
            unix.writable().await?;
            let r = unix.try_io(Interest::WRITABLE, || {
                sendmsg::<()>(
                    raw,
                    &[io::IoSlice::new(line)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(io::Error::from)
            });
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    };
    if sent < line.len() {
        writer.write_all(&line[sent..]).await?;
    }
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[tokio::test]
    async fn descriptors_travel_with_their_line() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_ar, mut aw) = a.into_split();
        let (br, _bw) = b.into_split();
        let mut reader = FdLineReader::new(br);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"segment bytes").unwrap();
        aw.write_all(b"{\"hello\":1}\n").await.unwrap();
        let mut line = Vec::new();
        let (r, fds) = reader.read_line(&mut line, 1024).await.unwrap();
        assert_eq!(
            (r, fds.len(), line.as_slice()),
            (LineRead::Line, 0, &b"{\"hello\":1}"[..])
        );
        send_line_with_fd(&mut aw, b"{\"push\":1}\n", std::os::fd::AsFd::as_fd(&file))
            .await
            .unwrap();
        aw.write_all(b"{\"after\":1}\n").await.unwrap();
        let (r, fds) = reader.read_line(&mut line, 1024).await.unwrap();
        assert_eq!((r, fds.len()), (LineRead::Line, 1));
        assert_eq!(line, b"{\"push\":1}");
        let mut got = std::fs::File::from(fds.into_iter().next().unwrap());
        got.rewind().unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "segment bytes");
        let (r, fds) = reader.read_line(&mut line, 1024).await.unwrap();
        assert_eq!(
            (r, fds.len(), line.as_slice()),
            (LineRead::Line, 0, &b"{\"after\":1}"[..])
        );
        aw.write_all(&vec![b'x'; 5000]).await.unwrap();
        let (r, _) = reader.read_line(&mut line, 1000).await.unwrap();
        assert_eq!(r, LineRead::TooLong);
        drop(aw);
    }
}
