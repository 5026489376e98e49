//! The wire format, without I/O: frame encoders and an incremental decoder.
//!
//! The format itself is specified in the [module documentation](super). This
//! module turns records into frames ([`encode_record`], [`encode_end`],
//! [`encode_ack`], [`hello`]) and frames back into events ([`Decoder`]).
//!
//! The decoder never touches a socket: it is fed the bytes of one read and
//! the descriptors that arrived with them, so it can be tested and fuzzed on
//! plain bytes. It is generic over the descriptor type `F` (normally
//! [`OwnedFd`]) so a test can feed it tokens that count their own drops.
//!
//! ```
//! use handover::__private::wire::{self, Decoder, Event, Side};
//! use handover::pass::{Meta, Metadata, VERSION};
//!
//! // What a server writes (a hello, one record with 2 descriptors, END)...
//! let meta = Metadata::from(Meta::new().with("name", "http"));
//! let mut frames = vec![(wire::hello(VERSION).to_vec(), 0)];
//! for f in wire::encode_record(2, &meta).unwrap() {
//!     frames.push((f.bytes, f.fds.len()));
//! }
//! frames.push((wire::encode_end(1).to_vec(), 0));
//!
//! // ...is read back by a client, one bounded read at a time.
//! let mut decoder: Decoder<&str> = Decoder::new(Side::Client);
//! let mut events = Vec::new();
//! for (bytes, nfds) in frames {
//!     let mut at = 0;
//!     while at < bytes.len() {
//!         let n = decoder.want().min(bytes.len() - at);
//!         // Descriptors come with the first byte of their frame.
//!         let fds = if at == 0 { vec!["fd"; nfds] } else { vec![] };
//!         if let Some(e) = decoder.feed(&bytes[at..at + n], fds).unwrap() {
//!             events.push(e);
//!         }
//!         at += n;
//!     }
//! }
//! assert!(matches!(&events[1], Event::Record { fds, meta: m } if fds.len() == 2 && *m == meta));
//! assert!(matches!(events[2], Event::End { records: 1 }));
//! assert!(decoder.is_done());
//! ```

use std::ops::Range;
use std::os::fd::OwnedFd;

use super::{ClosedDuring, Malformed};
use super::{
    HEADER_LEN, HELLO_LEN, MAGIC, MAX_FDS_PER_MESSAGE, MAX_FDS_PER_RECORD, MAX_META_LEN, Meta,
    Metadata, PassError, VERSION,
};

/// Frame type: the first frame of a record (metadata and first batch).
pub const FRAME_RECORD: u8 = 1;
/// Frame type: another batch of descriptors of the current record.
pub const FRAME_MORE_FDS: u8 = 2;
/// Frame type: the server has sent everything.
pub const FRAME_END: u8 = 3;
/// Frame type: the client received everything.
pub const FRAME_ACK: u8 = 4;

/// Metadata kind: none.
pub const META_NONE: u8 = 0;
/// Metadata kind: key/value pairs ([`Meta`]).
pub const META_PAIRS: u8 = 1;
/// Metadata kind: opaque bytes.
pub const META_BYTES: u8 = 2;

/// The hello both sides send first: magic, version, zero flags.
pub fn hello(version: u16) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&version.to_be_bytes());
    b
}

/// A frame header, as laid out on the wire (12 bytes, big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type (`FRAME_*`).
    pub frame: u8,
    /// Metadata kind (`META_*`); zero except in `FRAME_RECORD`.
    pub meta_kind: u8,
    /// Descriptors attached to this frame.
    pub fds: u16,
    /// Type-specific count: total descriptors of the record (`RECORD`),
    /// index of this batch's first descriptor (`MORE_FDS`), records sent
    /// (`END`) or received (`ACK`).
    pub count: u32,
    /// Payload bytes after the header.
    pub len: u32,
}

impl Header {
    /// The 12 bytes of this header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.frame;
        b[1] = self.meta_kind;
        b[2..4].copy_from_slice(&self.fds.to_be_bytes());
        b[4..8].copy_from_slice(&self.count.to_be_bytes());
        b[8..12].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Reads a header from exactly 12 bytes (no validation).
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            frame: b[0],
            meta_kind: b[1],
            fds: u16::from_be_bytes([b[2], b[3]]),
            count: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// One encoded frame and the descriptors that must ride with its first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Header and payload.
    pub bytes: Vec<u8>,
    /// Which of the record's descriptors (by index) this frame carries.
    pub fds: Range<usize>,
}

fn too_large(field: &'static str, len: usize, max: usize, hint: &'static str) -> PassError {
    PassError::TooLarge {
        field,
        len,
        max,
        hint,
    }
}

/// Encodes a record of `nfds` descriptors with `meta` into frames: a
/// `RECORD` frame with the metadata and up to 253 descriptors, then as many
/// `MORE_FDS` frames as the rest need (253 each, the last one fewer).
pub fn encode_record(nfds: usize, meta: &Metadata) -> Result<Vec<Frame>, PassError> {
    if nfds == 0 {
        return Err(PassError::EmptyRecord);
    }
    if nfds > MAX_FDS_PER_RECORD {
        return Err(too_large(
            "the descriptors of one record",
            nfds,
            MAX_FDS_PER_RECORD,
            "split them into several records",
        ));
    }
    let (kind, payload) = match meta {
        Metadata::None => (META_NONE, Vec::new()),
        Metadata::Pairs(m) => (META_PAIRS, m.to_bytes()?),
        Metadata::Bytes(b) => (META_BYTES, b.clone()),
    };
    if payload.len() > MAX_META_LEN {
        return Err(too_large(
            "the metadata of one record",
            payload.len(),
            MAX_META_LEN,
            "send large data over the connection before or after the descriptors instead",
        ));
    }
    let first = nfds.min(MAX_FDS_PER_MESSAGE);
    let mut frames = Vec::with_capacity(1 + (nfds - first).div_ceil(MAX_FDS_PER_MESSAGE));
    let header = Header {
        frame: FRAME_RECORD,
        meta_kind: kind,
        fds: first as u16,
        count: nfds as u32,
        len: payload.len() as u32,
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&header.to_bytes());
    bytes.extend_from_slice(&payload);
    frames.push(Frame {
        bytes,
        fds: 0..first,
    });
    let mut at = first;
    while at < nfds {
        let n = (nfds - at).min(MAX_FDS_PER_MESSAGE);
        let header = Header {
            frame: FRAME_MORE_FDS,
            meta_kind: META_NONE,
            fds: n as u16,
            count: at as u32,
            len: 0,
        };
        frames.push(Frame {
            bytes: header.to_bytes().to_vec(),
            fds: at..at + n,
        });
        at += n;
    }
    Ok(frames)
}

/// The `END` frame of a session in which `records` records were sent.
pub fn encode_end(records: u32) -> [u8; HEADER_LEN] {
    Header {
        frame: FRAME_END,
        meta_kind: 0,
        fds: 0,
        count: records,
        len: 0,
    }
    .to_bytes()
}

/// The `ACK` frame of a client that received `records` records.
pub fn encode_ack(records: u32) -> [u8; HEADER_LEN] {
    Header {
        frame: FRAME_ACK,
        meta_kind: 0,
        fds: 0,
        count: records,
        len: 0,
    }
    .to_bytes()
}

/// Which end of a connection a [`Decoder`] reads for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Decodes what a client reads: the server's hello, records, `END`.
    Client,
    /// Decodes what a server reads: the client's hello, then `ACK`.
    Server,
}

/// What a [`Decoder`] recognised.
#[derive(Debug)]
pub enum Event<F = OwnedFd> {
    /// The peer's hello. For [`Side::Server`], `version` is the highest
    /// version the client speaks; for [`Side::Client`], the version the
    /// server chose.
    Hello {
        /// The version in the hello.
        version: u16,
    },
    /// A complete record.
    Record {
        /// Its descriptors, in the order they were sent.
        fds: Vec<F>,
        /// Its metadata.
        meta: Metadata,
    },
    /// The server sent everything (client side). Nothing may follow.
    End {
        /// How many records the session had.
        records: u32,
    },
    /// The client received everything (server side). Nothing may follow.
    Ack {
        /// How many records the client says it received.
        records: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hello,
    Header,
    Payload,
    Done,
    Failed,
}

/// A record whose descriptors are still arriving.
#[derive(Debug)]
struct Partial<F> {
    total: usize,
    fds: Vec<F>,
    meta_kind: u8,
    meta: Option<Metadata>,
}

/// Incremental decoder of one direction of a connection.
///
/// Use: read at most [`want`](Decoder::want) bytes (never more: reads must
/// not cross a frame boundary), then [`feed`](Decoder::feed) them together
/// with the descriptors that arrived in the same read. Repeat until
/// [`is_done`](Decoder::is_done). At end of stream, call
/// [`eof`](Decoder::eof) for an error that says what was cut short.
///
/// Guarantees: no input panics; descriptors are either handed out in an
/// [`Event::Record`] or dropped (closed) — when `feed` returns an error, the
/// decoder has dropped every descriptor it held and fails every later call.
#[derive(Debug)]
pub struct Decoder<F = OwnedFd> {
    side: Side,
    state: State,
    /// Bytes of the element being read (hello, header or payload).
    buf: Vec<u8>,
    /// Length of the element being read.
    need: usize,
    /// The next byte fed is the first of a hello or frame.
    frame_start: bool,
    /// Descriptors that arrived with the first read of the current frame.
    arrived: usize,
    header: Option<Header>,
    partial: Option<Partial<F>>,
    records: u32,
}

impl<F> Decoder<F> {
    /// A decoder expecting the peer's hello.
    pub fn new(side: Side) -> Self {
        Decoder {
            side,
            state: State::Hello,
            buf: Vec::with_capacity(HEADER_LEN),
            need: HELLO_LEN,
            frame_start: true,
            arrived: 0,
            header: None,
            partial: None,
            records: 0,
        }
    }

    /// The most bytes the next read may take (0 when done or failed).
    pub fn want(&self) -> usize {
        match self.state {
            State::Done | State::Failed => 0,
            _ => self.need - self.buf.len(),
        }
    }

    /// Whether the last frame (`END` or `ACK`) was decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Complete records decoded so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Feeds the bytes of one read (at most [`want`](Decoder::want)) and
    /// the descriptors that arrived with them.
    ///
    /// Returns the event completed by these bytes, if any. On error every
    /// descriptor held is dropped and the decoder stays failed.
    pub fn feed(&mut self, bytes: &[u8], fds: Vec<F>) -> Result<Option<Event<F>>, PassError> {
        match self.step(bytes, fds) {
            Ok(e) => Ok(e),
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    /// The error to report when the stream ended (the peer closed the
    /// connection) before the decoder was done; `Ok` when it was done.
    /// Drops any descriptors held.
    pub fn eof(&mut self) -> Result<(), PassError> {
        let result = match self.state {
            State::Done => Ok(()),
            State::Failed => Err(PassError::DecoderMisused {
                misuse: "used after it failed",
            }),
            State::Hello if self.buf.is_empty() => Err(PassError::Closed {
                during: match self.side {
                    Side::Client => ClosedDuring::ServerHello,
                    Side::Server => ClosedDuring::ClientHello,
                },
            }),
            State::Header if self.buf.is_empty() && self.partial.is_none() => {
                Err(PassError::Closed {
                    during: match self.side {
                        Side::Client => ClosedDuring::BeforeEnd {
                            records: self.records,
                        },
                        Side::Server => ClosedDuring::BeforeAck,
                    },
                })
            }
            _ => Err(PassError::Closed {
                during: self.mid_frame(),
            }),
        };
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Drops every descriptor held and fails every later call: for errors
    /// the decoder cannot see itself (a failed read, a timeout).
    pub fn abort(&mut self) {
        self.fail();
    }

    /// Where the stream stands, for an early end.
    fn mid_frame(&self) -> ClosedDuring {
        let part = match (self.state, &self.partial) {
            (State::Hello, _) => "the hello",
            (State::Payload, _) => "a record's metadata",
            (_, Some(p)) => {
                return ClosedDuring::MidRecord {
                    record: self.records,
                    received: p.fds.len(),
                    total: p.total,
                };
            }
            _ => "a frame header",
        };
        let (read, expected) = (self.buf.len(), self.need);
        ClosedDuring::MidFrame {
            part,
            read,
            expected,
        }
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.partial = None;
        self.buf = Vec::new();
    }

    fn step(&mut self, bytes: &[u8], fds: Vec<F>) -> Result<Option<Event<F>>, PassError> {
        match self.state {
            State::Failed => {
                return Err(PassError::DecoderMisused {
                    misuse: "used after it failed",
                });
            }
            State::Done => {
                if bytes.is_empty() && fds.is_empty() {
                    return Ok(None);
                }
                return Err(malformed(Malformed::TrailingData {
                    bytes: bytes.len(),
                    fds: fds.len(),
                }));
            }
            _ => {}
        }
        if bytes.is_empty() {
            if fds.is_empty() {
                return Ok(None);
            }
            return Err(PassError::FdsOutOfPlace {
                arrived: fds.len(),
                at: "with no data",
            });
        }
        if bytes.len() > self.want() {
            return Err(PassError::DecoderMisused {
                misuse: "fed more bytes than it wanted: reads must not cross a frame boundary",
            });
        }
        if self.frame_start {
            self.frame_start = false;
            self.arrived = fds.len();
            if fds.len() > MAX_FDS_PER_MESSAGE {
                return Err(too_large(
                    "the descriptors of one message",
                    fds.len(),
                    MAX_FDS_PER_MESSAGE,
                    "the peer does not follow the protocol (the kernel allows at most 253)",
                ));
            }
            if self.state == State::Hello && !fds.is_empty() {
                return Err(PassError::FdsOutOfPlace {
                    arrived: fds.len(),
                    at: "with the hello",
                });
            }
            if !fds.is_empty() {
                match &mut self.partial {
                    Some(p) => p.fds.extend(fds),
                    None => {
                        self.partial = Some(Partial {
                            total: 0,
                            fds,
                            meta_kind: META_NONE,
                            meta: None,
                        })
                    }
                }
            }
        } else if !fds.is_empty() {
            return Err(PassError::FdsOutOfPlace {
                arrived: fds.len(),
                at: "in the middle of a frame",
            });
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() < self.need {
            return Ok(None);
        }
        match self.state {
            State::Hello => self.hello_done(),
            State::Header => self.header_done(),
            State::Payload => self.payload_done(),
            State::Done | State::Failed => unreachable!("handled above"),
        }
    }

    fn next_frame(&mut self) {
        self.state = State::Header;
        self.need = HEADER_LEN;
        self.buf.clear();
        self.frame_start = true;
        self.arrived = 0;
        self.header = None;
    }

    fn hello_done(&mut self) -> Result<Option<Event<F>>, PassError> {
        let b = &self.buf;
        if b[..4] != MAGIC {
            return Err(PassError::NotHandover {
                found: [b[0], b[1], b[2], b[3]],
            });
        }
        let version = u16::from_be_bytes([b[4], b[5]]);
        let flags = u16::from_be_bytes([b[6], b[7]]);
        let ok = match self.side {
            Side::Client => version == VERSION,
            Side::Server => version >= VERSION,
        };
        if !ok {
            return Err(PassError::Version {
                found: version,
                supported: VERSION,
            });
        }
        if flags != 0 {
            return Err(malformed(Malformed::HelloFlags { flags }));
        }
        self.next_frame();
        Ok(Some(Event::Hello { version }))
    }

    fn header_done(&mut self) -> Result<Option<Event<F>>, PassError> {
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&self.buf);
        let h = Header::from_bytes(&raw);
        if usize::from(h.fds) != self.arrived {
            return Err(PassError::FdCountMismatch {
                declared: usize::from(h.fds),
                arrived: self.arrived,
            });
        }
        if matches!(h.frame, FRAME_END | FRAME_ACK) && h.fds != 0 {
            return Err(malformed(Malformed::FdsWithControlFrame { fds: h.fds }));
        }
        let allowed: &[u8] = match self.side {
            Side::Client => &[FRAME_RECORD, FRAME_MORE_FDS, FRAME_END],
            Side::Server => &[FRAME_ACK],
        };
        if !allowed.contains(&h.frame) {
            return Err(malformed(Malformed::FrameType {
                expected: match self.side {
                    Side::Client => "frame type 1 (RECORD), 2 (MORE_FDS) or 3 (END)",
                    Side::Server => "frame type 4 (ACK)",
                },
                found: h.frame,
            }));
        }
        // Whether a record is waiting for more descriptors (the descriptors
        // of this very frame were already added to `partial`).
        let in_record = self.partial.as_ref().is_some_and(|p| p.total > 0);
        if h.frame != FRAME_RECORD && h.meta_kind != META_NONE {
            return Err(malformed(Malformed::MetaKindOutsideRecord {
                kind: h.meta_kind,
            }));
        }
        if h.frame != FRAME_RECORD && h.len != 0 {
            return Err(malformed(Malformed::PayloadOutsideRecord { len: h.len }));
        }
        match h.frame {
            FRAME_RECORD => {
                if in_record {
                    return Err(self.record_unfinished("a new RECORD frame"));
                }
                if h.meta_kind > META_BYTES {
                    return Err(malformed(Malformed::MetaKind { kind: h.meta_kind }));
                }
                let total = h.count as usize;
                if total == 0 || total > MAX_FDS_PER_RECORD {
                    return Err(malformed(Malformed::RecordFdCount {
                        total: total as u64,
                        max: MAX_FDS_PER_RECORD,
                    }));
                }
                if h.fds == 0 || usize::from(h.fds) > total {
                    return Err(malformed(Malformed::AttachedFds {
                        frame: "RECORD",
                        max: total.min(MAX_FDS_PER_MESSAGE),
                        found: usize::from(h.fds),
                    }));
                }
                let len = h.len as usize;
                if len > MAX_META_LEN {
                    return Err(too_large(
                        "the metadata of a record",
                        len,
                        MAX_META_LEN,
                        "the peer does not follow the protocol",
                    ));
                }
                if h.meta_kind == META_NONE && len != 0 {
                    return Err(malformed(Malformed::PayloadWithoutMeta { len: h.len }));
                }
                let p = self
                    .partial
                    .as_mut()
                    .expect("fds > 0 arrived with this frame");
                p.total = total;
                p.meta_kind = h.meta_kind;
                if len > 0 {
                    self.state = State::Payload;
                    self.need = len;
                    self.buf.clear();
                    self.header = Some(h);
                    return Ok(None);
                }
                p.meta = Some(match h.meta_kind {
                    META_PAIRS => Metadata::Pairs(Meta::new()),
                    META_BYTES => Metadata::Bytes(Vec::new()),
                    _ => Metadata::None,
                });
                Ok(self.maybe_complete())
            }
            FRAME_MORE_FDS => {
                let Some(p) = self.partial.as_ref().filter(|p| p.total > 0) else {
                    return Err(malformed(Malformed::MoreFdsOutsideRecord));
                };
                let before = p.fds.len() - usize::from(h.fds);
                let remaining = p.total - before;
                if h.fds == 0 || usize::from(h.fds) > remaining {
                    return Err(malformed(Malformed::AttachedFds {
                        frame: "MORE_FDS",
                        max: remaining.min(MAX_FDS_PER_MESSAGE),
                        found: usize::from(h.fds),
                    }));
                }
                if h.count as usize != before {
                    return Err(malformed(Malformed::MoreFdsIndex {
                        expected: before as u32,
                        found: h.count,
                    }));
                }
                Ok(self.maybe_complete())
            }
            FRAME_END => {
                if self.partial.is_some() {
                    return Err(self.record_unfinished("END"));
                }
                if h.count != self.records {
                    return Err(malformed(Malformed::EndCount {
                        received: self.records,
                        declared: h.count,
                    }));
                }
                self.state = State::Done;
                self.buf = Vec::new();
                Ok(Some(Event::End { records: h.count }))
            }
            FRAME_ACK => {
                self.state = State::Done;
                self.buf = Vec::new();
                Ok(Some(Event::Ack { records: h.count }))
            }
            _ => unreachable!("checked against `allowed`"),
        }
    }

    fn record_unfinished(&self, found: &'static str) -> PassError {
        let (have, total) = self
            .partial
            .as_ref()
            .map_or((0, 0), |p| (p.fds.len(), p.total));
        malformed(Malformed::RecordUnfinished {
            record: self.records,
            received: have,
            total,
            found,
        })
    }

    fn payload_done(&mut self) -> Result<Option<Event<F>>, PassError> {
        let kind = self.partial.as_ref().map_or(META_NONE, |p| p.meta_kind);
        let meta = match kind {
            META_PAIRS => Metadata::Pairs(Meta::from_bytes(&self.buf)?),
            _ => Metadata::Bytes(std::mem::take(&mut self.buf)),
        };
        if let Some(p) = self.partial.as_mut() {
            p.meta = Some(meta);
        }
        Ok(self.maybe_complete())
    }

    /// After a frame: hands out the record if all its descriptors are in,
    /// and gets ready for the next frame.
    fn maybe_complete(&mut self) -> Option<Event<F>> {
        self.next_frame();
        let p = self.partial.as_ref()?;
        if p.fds.len() < p.total || p.meta.is_none() {
            return None;
        }
        let p = self.partial.take()?;
        self.records = self.records.saturating_add(1);
        Some(Event::Record {
            fds: p.fds,
            meta: p.meta.unwrap_or(Metadata::None),
        })
    }
}

fn malformed(reason: Malformed) -> PassError {
    PassError::Malformed { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(side: Side, chunks: &[(&[u8], usize)]) -> Result<Vec<Event<u32>>, PassError> {
        let mut d = Decoder::new(side);
        let mut out = Vec::new();
        for (bytes, n) in chunks {
            if let Some(e) = d.feed(bytes, vec![7u32; *n])? {
                out.push(e);
            }
        }
        d.eof()?;
        Ok(out)
    }

    #[test]
    fn record_across_batches() {
        let frames = encode_record(254, &Metadata::Bytes(b"x".to_vec())).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].fds, 0..253);
        assert_eq!(frames[1].fds, 253..254);
        let h = hello(VERSION);
        let end = encode_end(1);
        let r0 = &frames[0].bytes;
        let evs = run(
            Side::Client,
            &[
                (&h, 0),
                (&r0[..12], 253),
                (&r0[12..], 0),
                (&frames[1].bytes, 1),
                (&end, 0),
            ],
        )
        .unwrap();
        assert_eq!(evs.len(), 3);
        match &evs[1] {
            Event::Record { fds, meta } => {
                assert_eq!(fds.len(), 254);
                assert_eq!(*meta, Metadata::Bytes(b"x".to_vec()));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn mismatched_count_is_an_error() {
        let frames = encode_record(2, &Metadata::None).unwrap();
        let h = hello(VERSION);
        let err = run(Side::Client, &[(&h, 0), (&frames[0].bytes, 1)]).unwrap_err();
        assert!(
            matches!(
                err,
                PassError::FdCountMismatch {
                    declared: 2,
                    arrived: 1
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn fds_in_the_middle_are_an_error() {
        let frames = encode_record(1, &Metadata::None).unwrap();
        let h = hello(VERSION);
        let b = &frames[0].bytes;
        let err = run(Side::Client, &[(&h, 0), (&b[..3], 1), (&b[3..], 1)]).unwrap_err();
        assert!(matches!(err, PassError::FdsOutOfPlace { .. }), "{err}");
        let err = run(Side::Client, &[(&h[..2], 0), (&h[2..], 1)]).unwrap_err();
        assert!(matches!(err, PassError::FdsOutOfPlace { .. }), "{err}");
    }

    #[test]
    fn eof_messages() {
        let err = run(Side::Client, &[]).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        let h = hello(VERSION);
        let err = run(Side::Client, &[(&h, 0)]).unwrap_err();
        assert!(err.to_string().contains("before the server's END"), "{err}");
        let err = run(Side::Client, &[(&h[..3], 0)]).unwrap_err();
        assert!(err.to_string().contains("3 of 8 bytes"), "{err}");
    }

    #[test]
    fn wrong_magic_and_version() {
        let err = run(Side::Client, &[(b"GET / HT", 0)]).unwrap_err();
        assert!(matches!(err, PassError::NotHandover { .. }), "{err}");
        let err = run(Side::Client, &[(&hello(2), 0)]).unwrap_err();
        assert!(matches!(err, PassError::Version { found: 2, .. }), "{err}");
        // A newer client is answered in version 1.
        let evs = run(Side::Server, &[(&hello(9), 0), (&encode_ack(0), 0)]).unwrap();
        assert!(matches!(evs[0], Event::Hello { version: 9 }));
    }
}
