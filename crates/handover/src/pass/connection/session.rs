//! Reading and writing the hand-over protocol on a tokio Unix stream (the
//! I/O around the codec of [`super`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UnixStream;

use super::{Decoder, Message};
use crate::pass::PassError;
use crate::pass::stream::{recv_nb, send_nb};

/// Writes `bytes` whole, `fds` attached to their first byte, before
/// `deadline` (the instant and the timeout it came from; `None`: none).
pub(crate) async fn write(
    stream: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Option<(Instant, Duration)>,
) -> Result<(), PassError> {
    let mut sent = 0;
    while sent < bytes.len() {
        let attach = if sent == 0 { fds } else { &[] };
        let io = stream.async_io(Interest::WRITABLE, || {
            send_nb(stream.as_fd(), &bytes[sent..], attach)
        });
        let result = match deadline {
            Some((at, timeout)) => match tokio::time::timeout_at(at.into(), io).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(PassError::Timeout {
                        waiting_for: "the other process to read the hand-over stream",
                        after: timeout,
                    });
                }
            },
            None => io.await,
        };
        match result {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PassError::io("sending on the hand-over stream", e)),
        }
    }
    Ok(())
}

/// Reads until `decoder` completes a message; `None` at a clean end of
/// the stream. On error, the decoder is failed (it holds no descriptor).
pub(crate) async fn read(
    stream: &UnixStream,
    decoder: &mut Decoder<OwnedFd>,
    deadline: Option<(Instant, Duration)>,
    waiting_for: &'static str,
) -> Result<Option<Message<OwnedFd>>, PassError> {
    let mut buf = Vec::new();
    loop {
        let want = decoder.want();
        if want == 0 {
            return Ok(None);
        }
        buf.resize(want, 0);
        let io = stream.async_io(Interest::READABLE, || recv_nb(stream.as_fd(), &mut buf[..]));
        let result = match deadline {
            Some((at, timeout)) => match tokio::time::timeout_at(at.into(), io).await {
                Ok(r) => r,
                Err(_) => {
                    decoder.abort();
                    return Err(PassError::Timeout {
                        waiting_for,
                        after: timeout,
                    });
                }
            },
            None => io.await,
        };
        let chunk = match result {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                decoder.abort();
                return Err(PassError::Closed {
                    during: crate::pass::ClosedDuring::Reset,
                });
            }
            Err(e) => {
                decoder.abort();
                return Err(PassError::io("receiving on the hand-over stream", e));
            }
        };
        if chunk.truncated {
            decoder.abort();
            return Err(PassError::ControlTruncated);
        }
        if chunk.n == 0 {
            drop(chunk.fds);
            decoder.eof()?;
            return Ok(None);
        }
        if let Some(m) = decoder.feed(&buf[..chunk.n], chunk.fds)? {
            return Ok(Some(m));
        }
    }
}
