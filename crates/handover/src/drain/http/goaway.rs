//! Holding back the client's PING acknowledgement during an HTTP/2 graceful
//! shutdown, so the second GOAWAY leaves out no stream the client opened
//! before it saw the first one.
//!
//! hyper (through the `h2` crate) shuts an HTTP/2 connection down the way
//! RFC 9113 (6.8) describes: a GOAWAY with the highest stream id and a PING;
//! when the PING's acknowledgement arrives, a second GOAWAY with the last
//! stream id received. Streams above it are dropped unprocessed. That is
//! lossless only if every stream the client opened before it saw the first
//! GOAWAY reaches the server before the acknowledgement, and the common
//! client libraries do the opposite: `h2` and nghttp2 write control frames
//! (the PING acknowledgement) before the HEADERS they had queued. Measured:
//! a few streams out of every hundred thousand, under load, refused at each
//! upgrade.
//!
//! So, once draining, this reader holds every PING acknowledgement back for
//! a while (`hold`, [`HttpOptions::http2_goaway_delay`](super::HttpOptions::http2_goaway_delay))
//! and passes on the frames that follow it: the streams the client had
//! queued are received first, and the second GOAWAY counts them. (Envoy's
//! `drain_timeout` is the same idea: time between the two GOAWAYs.)
//! Reordering a PING acknowledgement after other frames changes nothing
//! else: PINGs are not ordered with streams, and HPACK state lives in
//! HEADERS frames, whose order is kept.
//!
//! Before draining the reader only follows the frame boundaries in the bytes
//! it passes on (no copy). Once draining it reads into a buffer of its own
//! and passes on whole frames, minus the acknowledgements it holds.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::conn::ConnState;
use super::sniff::PREFACE;

/// Frame header size (RFC 9113, 4.1).
const HEADER: usize = 9;
/// Frame type PING and its ACK flag.
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
/// A PING frame: header and 8 bytes of opaque data.
const PING_FRAME: usize = HEADER + 8;
/// How much the draining reader reads at once.
const CHUNK: usize = 16 * 1024;

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
struct Frames {
    /// Bytes of the client preface still to come.
    preface_left: usize,
    /// The frame header being received, and how many of its bytes are in.
    header: [u8; PING_FRAME],
    header_len: usize,
    /// Bytes of `header` already passed on (before draining began).
    header_passed: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
}

impl Frames {
    fn new() -> Frames {
        Frames {
            preface_left: PREFACE.len(),
            header: [0; PING_FRAME],
            header_len: 0,
            header_passed: 0,
            payload_left: 0,
        }
    }

    /// Follows `bytes`, passed on as they are (not draining).
    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (HEADER - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == HEADER {
                    self.payload_left = self.length();
                    self.header_len = 0;
                }
            }
        }
        self.header_passed = self.header_len;
    }

    fn length(&self) -> usize {
        usize::from(self.header[0]) << 16
            | usize::from(self.header[1]) << 8
            | usize::from(self.header[2])
    }

    fn is_ping_ack(&self) -> bool {
        self.header[3] == PING && self.header[4] & ACK != 0 && self.length() == 8
    }
}

/// The reader: see the module docs.
pub(super) struct HoldPingAck<I> {
    inner: I,
    state: Arc<ConnState>,
    hold: Duration,
    frames: Frames,
    /// Once draining: bytes read but not passed on yet.
    raw: Vec<u8>,
    /// Once draining: whole frames ready to be passed on.
    out: Vec<u8>,
    out_pos: usize,
    /// PING acknowledgements held back, and when they go.
    held: Vec<u8>,
    release: Option<Pin<Box<Sleep>>>,
    eof: bool,
}

impl<I> HoldPingAck<I> {
    pub(super) fn new(inner: I, state: Arc<ConnState>, hold: Duration) -> Self {
        HoldPingAck {
            inner,
            state,
            hold,
            frames: Frames::new(),
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            held: Vec::new(),
            release: None,
            eof: false,
        }
    }

    /// Moves what `raw` holds into `out` (whole frames) and `held` (PING
    /// acknowledgements), keeping an incomplete frame header in `raw`.
    fn sort(&mut self) {
        let f = &mut self.frames;
        let mut at = 0;
        let raw = &self.raw;
        while at < raw.len() {
            let bytes = &raw[at..];
            if f.preface_left > 0 {
                let n = f.preface_left.min(bytes.len());
                self.out.extend_from_slice(&bytes[..n]);
                f.preface_left -= n;
                at += n;
            } else if f.payload_left > 0 {
                let n = f.payload_left.min(bytes.len());
                self.out.extend_from_slice(&bytes[..n]);
                f.payload_left -= n;
                at += n;
            } else if f.header_len < HEADER {
                let n = (HEADER - f.header_len).min(bytes.len());
                f.header[f.header_len..f.header_len + n].copy_from_slice(&bytes[..n]);
                f.header_len += n;
                at += n;
                if f.header_len < HEADER {
                    continue;
                }
                if f.is_ping_ack() && f.header_passed == 0 {
                    // Collect its payload too (next turn), then hold it.
                    continue;
                }
                self.out
                    .extend_from_slice(&f.header[f.header_passed..HEADER]);
                f.payload_left = f.length();
                f.header_len = 0;
                f.header_passed = 0;
            } else {
                // The payload of a PING acknowledgement.
                let n = (PING_FRAME - f.header_len).min(bytes.len());
                f.header[f.header_len..f.header_len + n].copy_from_slice(&bytes[..n]);
                f.header_len += n;
                at += n;
                if f.header_len < PING_FRAME {
                    continue;
                }
                self.held.extend_from_slice(&f.header);
                if self.release.is_none() {
                    self.release = Some(Box::pin(tokio::time::sleep(self.hold)));
                }
                tracing::trace!(hold = ?self.hold, "drain: holding an HTTP/2 PING acknowledgement");
                f.header_len = 0;
                f.header_passed = 0;
            }
        }
        self.raw.clear();
    }

    /// Passes on what `out` holds.
    fn give(&mut self, buf: &mut ReadBuf<'_>) {
        let left = &self.out[self.out_pos..];
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    fn release_held(&mut self) {
        self.out.extend_from_slice(&self.held);
        self.held.clear();
        self.release = None;
    }
}

impl<I: AsyncRead + Unpin> HoldPingAck<I> {
    fn poll_draining(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.out_pos < self.out.len() {
                self.give(buf);
                return Poll::Ready(Ok(()));
            }
            if let Some(release) = &mut self.release {
                if release.as_mut().poll(cx).is_ready() {
                    self.release_held();
                    continue;
                }
            }
            if self.eof {
                // The client is gone: what was held goes too.
                if !self.held.is_empty() {
                    self.release_held();
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                self.eof = true;
                continue;
            }
            self.raw.extend_from_slice(read.filled());
            self.sort();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HoldPingAck<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.drain.is_closed() {
            return this.poll_draining(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.frames.follow(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HoldPingAck<I> {
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
        bufs: &[io::IoSlice<'_>],
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
