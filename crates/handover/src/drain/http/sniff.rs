//! Telling HTTP/1.1 from HTTP/2 by the first bytes of a connection (the
//! HTTP/2 client preface), then giving those bytes back to hyper.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::conn::ConnState;

/// What every HTTP/2 connection starts with (RFC 9113, 3.4), with prior
/// knowledge (h2c) and over TLS alike.
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// The bytes read to decide, to be read again by hyper.
pub(super) struct Prefix {
    buf: [u8; PREFACE.len()],
    start: u8,
    end: u8,
}

impl Prefix {
    pub(super) fn empty() -> Prefix {
        Prefix {
            buf: [0; PREFACE.len()],
            start: 0,
            end: 0,
        }
    }
}

/// Why no protocol was found.
pub(super) enum NoRequest {
    /// The client closed (or reset) before sending a byte; or it sent
    /// nothing within the grace once draining, or within the header read
    /// timeout. Nothing to answer.
    Closed,
    /// A read failed.
    Io(io::Error),
}

/// Reads until the first bytes tell HTTP/1.x from HTTP/2: the first byte
/// that differs from the preface means HTTP/1.x, the whole preface means
/// HTTP/2.
///
/// Before the first byte, the connection is idle, and the drain's grace rule
/// holds: once the drain is closed, a connection that stays silent for
/// `grace` is closed; one whose first bytes arrive in time is served. After
/// the first byte, only `header_timeout` (counted from the start) applies.
pub(super) async fn sniff<I: AsyncRead + Unpin>(
    io: &mut I,
    state: &ConnState,
    grace: Duration,
    header_timeout: Option<Duration>,
) -> Result<(Protocol, Prefix), NoRequest> {
    let started = Instant::now();
    let timeout_at = header_timeout.and_then(|t| started.checked_add(t));
    let mut prefix = Prefix::empty();
    let mut draining = state.drain.is_closed();
    let mut grace_ends = draining.then(|| Instant::now() + grace);
    loop {
        let end = usize::from(prefix.end);
        let deadline = match (timeout_at, grace_ends.filter(|_| end == 0)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            read = io.read(&mut prefix.buf[end..]) => {
                let n = match read {
                    Ok(0) => return Err(NoRequest::Closed),
                    Ok(n) => n,
                    Err(e) if is_disconnect(&e) => return Err(NoRequest::Closed),
                    Err(e) => return Err(NoRequest::Io(e)),
                };
                let new_end = end + n;
                // `new_end` is at most 24: it fits.
                prefix.end = new_end as u8;
                if prefix.buf[..new_end] != PREFACE[..new_end] {
                    return Ok((Protocol::Http1, prefix));
                }
                if new_end == PREFACE.len() {
                    return Ok((Protocol::Http2, prefix));
                }
            }
            () = state.drain.closed(), if !draining => {
                draining = true;
                grace_ends = Some(Instant::now() + grace);
            }
            () = sleep => {
                tracing::trace!(
                    received = end,
                    "closing a connection that sent no request in time"
                );
                return Err(NoRequest::Closed);
            }
        }
    }
}

/// A client that went away: not worth an error.
fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

/// An I/O that first returns the bytes read while sniffing.
pub(super) struct Rewind<I> {
    prefix: Prefix,
    inner: I,
}

impl<I> Rewind<I> {
    pub(super) fn new(prefix: Prefix, inner: I) -> Self {
        Rewind { prefix, inner }
    }

    /// The bytes not read again yet (none once hyper has started reading),
    /// and the inner I/O: for a later hand-over of the connection.
    #[allow(dead_code)]
    pub(super) fn into_parts(self) -> (Vec<u8>, I) {
        let Prefix { buf, start, end } = self.prefix;
        (
            buf[usize::from(start)..usize::from(end)].to_vec(),
            self.inner,
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = &mut this.prefix;
        if p.start < p.end {
            let left = &p.buf[usize::from(p.start)..usize::from(p.end)];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            // `n` is at most 24.
            p.start += n as u8;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
