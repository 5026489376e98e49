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
    /// The bytes not read again yet.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[usize::from(self.start)..usize::from(self.end)]
    }

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
    /// The drain closed before the client sent a request, and the
    /// connection can be handed to a successor: what was read so far (none,
    /// or the first bytes of the HTTP/2 preface).
    HandOver(Prefix),
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
        if draining && state.handoff_possible() {
            return Err(NoRequest::HandOver(prefix));
        }
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
    /// and the inner I/O: for a hand-over of the connection.
    pub(super) fn into_parts(self) -> (Vec<u8>, I) {
        let Prefix { buf, start, end } = self.prefix;
        (
            buf[usize::from(start)..usize::from(end)].to_vec(),
            self.inner,
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    #[inline]
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
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::Drain;
    use proptest::prelude::*;

    /// Gives `chunks` one per read.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        #[inline]
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if let Some(mut chunk) = this.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    chunk.drain(..n);
                    this.0.push_front(chunk);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn input_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // The preface, whole or cut, then anything.
            (
                0..=PREFACE.len(),
                proptest::collection::vec(any::<u8>(), 0..100)
            )
                .prop_map(|(n, rest)| {
                    let mut v = PREFACE[..n].to_vec();
                    v.extend_from_slice(&rest);
                    v
                }),
            proptest::collection::vec(any::<u8>(), 0..100),
            Just(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ]
    }

    proptest! {
        /// However the first bytes are cut into reads: HTTP/2 exactly when
        /// they start with the preface, HTTP/1.x when they differ from it,
        /// nothing when the client closes before either is clear; and hyper
        /// then reads every byte, in order.
        #[test]
        fn sniffing_decides_on_the_preface_and_gives_every_byte_back(
            input in input_strategy(),
            cuts in proptest::collection::vec(1usize..30, 1..50),
        ) {
            let mut chunks = std::collections::VecDeque::new();
            let mut rest = &input[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                chunks.push_back(rest[..n].to_vec());
                rest = &rest[n..];
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let drain = Drain::new();
            let state = ConnState::new(&drain);
            let result = rt.block_on(async {
                let mut io = Chunks(chunks);
                match sniff(&mut io, &state, Duration::from_secs(1), None).await {
                    Ok((protocol, prefix)) => {
                        let mut all = Vec::new();
                        let mut rewind = Rewind::new(prefix, io);
                        tokio::io::AsyncReadExt::read_to_end(&mut rewind, &mut all).await.unwrap();
                        Some((protocol, all))
                    }
                    Err(NoRequest::Closed) => None,
                    Err(NoRequest::Io(e)) => panic!("{e}"),
                    Err(NoRequest::HandOver(_)) => unreachable!("no hand-over without a Handoff"),
                }
            });
            let is_prefix_of_preface = input.len() < PREFACE.len() && PREFACE.starts_with(&input);
            match result {
                None => prop_assert!(is_prefix_of_preface, "closed on {:?}", input),
                Some((protocol, all)) => {
                    prop_assert!(!is_prefix_of_preface);
                    let h2 = input.starts_with(PREFACE);
                    prop_assert_eq!(protocol, if h2 { Protocol::Http2 } else { Protocol::Http1 });
                    prop_assert_eq!(all, input);
                }
            }
        }
    }
}
