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
    /// The highest stream id a HEADERS frame opened, and how many did.
    max_stream: u32,
    opened: u64,
}

impl Frames {
    fn new() -> Frames {
        Frames {
            preface_left: PREFACE.len(),
            header: [0; PING_FRAME],
            header_len: 0,
            header_passed: 0,
            payload_left: 0,
            max_stream: 0,
            opened: 0,
        }
    }

    /// Notes a whole frame header: counts the streams HEADERS frames open.
    fn header_done(&mut self) {
        const HEADERS: u8 = 0x1;
        let id = u32::from_be_bytes([
            self.header[5] & 0x7f,
            self.header[6],
            self.header[7],
            self.header[8],
        ]);
        if self.header[3] == HEADERS && id > self.max_stream {
            self.max_stream = id;
            self.opened += 1;
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
                    self.header_done();
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
                f.header_done();
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
            self.state
                .streams
                .store(self.frames.opened, std::sync::atomic::Ordering::Relaxed);
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
        this.state
            .streams
            .store(this.frames.opened, std::sync::atomic::Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::Drain;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    /// Gives `chunks` one per read; closes `drain` before giving chunk
    /// `close_at`.
    struct Chunks {
        chunks: Vec<Vec<u8>>,
        next: usize,
        close_at: usize,
        drain: Drain,
    }

    impl AsyncRead for Chunks {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.next == this.close_at {
                this.drain.close();
            }
            if let Some(chunk) = this.chunks.get(this.next) {
                // The reader may ask for less than a chunk: give what fits
                // and keep the rest.
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n == chunk.len() {
                    this.next += 1;
                } else {
                    this.chunks[this.next].drain(..n);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// (type, flags, payload) frames after the preface.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= HEADER, "a cut frame header");
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let frame = (bytes[3], bytes[4], bytes[HEADER..HEADER + len].to_vec());
            out.push(frame);
            bytes = &bytes[HEADER + len..];
        }
        out
    }

    fn is_ack(f: &(u8, u8, Vec<u8>)) -> bool {
        f.0 == PING && f.1 & ACK != 0 && f.2.len() == 8
    }

    fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            // PING acknowledgements (and PINGs).
            (any::<bool>(), any::<[u8; 8]>()).prop_map(|(ack, data)| {
                let mut f = vec![0, 0, 8, PING, u8::from(ack), 0, 0, 0, 0];
                f.extend_from_slice(&data);
                f
            }),
            // Anything else, a PING type with another length included.
            (
                any::<u8>(),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(kind, flags, payload)| {
                    let len = payload.len();
                    let mut f = vec![0, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
                    f.extend_from_slice(&payload);
                    f
                }),
        ]
    }

    proptest! {
        /// Whatever the frames and however they are cut into reads: before
        /// the drain, bytes pass unchanged; once draining, every frame
        /// passes whole and in order, except PING acknowledgements, which
        /// come later; nothing is lost or added.
        #[test]
        fn frames_pass_whole_and_only_ping_acks_are_moved(
            frames_in in proptest::collection::vec(frame_strategy(), 0..40),
            cuts in proptest::collection::vec(1usize..64, 1..200),
            close_at in 0usize..250,
            read_size in 1usize..100,
        ) {
            let mut input = PREFACE.to_vec();
            for f in &frames_in {
                input.extend_from_slice(f);
            }
            let mut chunks = Vec::new();
            let mut rest = &input[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*cut).min(rest.len());
                chunks.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            let n_chunks = chunks.len();
            let drain = Drain::new();
            let state = ConnState::new(&drain);
            let reader = Chunks { chunks, next: 0, close_at, drain: drain.clone() };
            let mut hold = HoldPingAck::new(reader, state.clone(), Duration::from_millis(100));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let output = rt.block_on(async {
                let mut out = Vec::new();
                let mut buf = vec![0u8; read_size];
                loop {
                    let n = hold.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break out;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
            });
            if close_at >= n_chunks {
                prop_assert_eq!(&output, &input);
            }
            let (sent, got) = (frames(&input), frames(&output));
            prop_assert_eq!(sent.len(), got.len());
            let others = |v: &[(u8, u8, Vec<u8>)]| v.iter().filter(|f| !is_ack(f)).cloned().collect::<Vec<_>>();
            let acks = |v: &[(u8, u8, Vec<u8>)]| v.iter().filter(|f| is_ack(f)).cloned().collect::<Vec<_>>();
            prop_assert_eq!(others(&sent), others(&got));
            prop_assert_eq!(acks(&sent), acks(&got));
            // Streams opened: HEADERS frames on ids above the highest so far.
            let (mut max, mut opened) = (0u8, 0u64);
            for f in &frames_in {
                if f[3] == 0x1 && f[8] > max {
                    max = f[8];
                    opened += 1;
                }
            }
            prop_assert_eq!(state.streams.load(std::sync::atomic::Ordering::Relaxed), opened);
        }
    }
}
