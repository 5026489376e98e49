//! The hand-over protocol's codec, without I/O (see the [parent](super)).

use std::os::fd::OwnedFd;

use crate::pass::{ClosedDuring, HEADER_LEN, HELLO_LEN, Malformed, PassError};

/// The version of the hand-over protocol this module speaks.
pub const VERSION: u16 = 1;
/// The first four bytes of each hello.
pub const MAGIC: [u8; 4] = *b"HOVC";
/// Longest reason in `REFUSE` and `DECLINED`, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// The most buffered bytes one `CONN` may carry (a taker announces its own
/// limit, at most this).
pub const MAX_BUFFERED: usize = 1 << 20;
/// Connection state: HTTP/1.x, between two requests.
pub const STATE_HTTP1: u8 = 1;
/// Connection state: the protocol is not known yet (nothing, or part of the
/// HTTP/2 preface, was received).
pub const STATE_UNIDENTIFIED: u8 = 2;

const FRAME_WELCOME: u8 = 1;
const FRAME_REFUSE: u8 = 2;
const FRAME_CONN: u8 = 3;
const FRAME_TAKEN: u8 = 4;
const FRAME_DECLINED: u8 = 5;
const FRAME_END: u8 = 6;

/// Payload length of `WELCOME`.
const WELCOME_LEN: usize = 8;

/// Which end of a session a [`Decoder`] reads for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The old process: reads the taker's hello, `WELCOME` or `REFUSE`,
    /// then `TAKEN` and `DECLINED`.
    Giver,
    /// The new process: reads the giver's hello, then `CONN` and `END`.
    Taker,
}

/// One message of the protocol (see the [protocol docs](crate::pass::connection)); `F` is the
/// descriptor type (normally [`OwnedFd`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<F = OwnedFd> {
    /// The hello: the giver's highest version, or the taker's choice.
    Hello {
        /// The version.
        version: u16,
    },
    /// The taker takes connections, within these limits.
    Welcome {
        /// The most connections it takes in this session.
        max_connections: u32,
        /// The most buffered bytes it takes with one connection.
        max_buffered: u32,
    },
    /// The taker takes none.
    Refuse {
        /// Why.
        reason: String,
    },
    /// A connection.
    Conn {
        /// 1 for the session's first, then one more each time.
        id: u32,
        /// [`STATE_HTTP1`] or [`STATE_UNIDENTIFIED`].
        state: u8,
        /// The TCP socket.
        fd: F,
        /// Bytes read from it and not answered yet.
        buffered: Vec<u8>,
    },
    /// The taker serves connection `id` from now on.
    Taken {
        /// The `CONN`'s id.
        id: u32,
    },
    /// The taker closed its copy of connection `id` without reading it.
    Declined {
        /// The `CONN`'s id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// The giver sent its last connection.
    End {
        /// How many `CONN`s it sent.
        conns: u32,
    },
}

fn malformed(
    what: &'static str,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> PassError {
    PassError::Malformed {
        reason: Malformed::Handoff {
            part: what,
            expected: expected.into(),
            found: found.into(),
        },
    }
}

fn reason_bytes(reason: &str) -> Result<&[u8], PassError> {
    if reason.len() > MAX_REASON_LEN {
        return Err(PassError::TooLarge {
            field: "a hand-over reason",
            len: reason.len(),
            max: MAX_REASON_LEN,
            hint: "use a shorter reason",
        });
    }
    Ok(reason.as_bytes())
}

fn frame(kind: u8, nfds: u16, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + payload.len());
    b.push(kind);
    b.push(0);
    b.extend_from_slice(&nfds.to_be_bytes());
    b.extend_from_slice(&id.to_be_bytes());
    // Callers bound every payload far below 4 GiB.
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// Encodes `message` (the descriptor of a `CONN` is not in the bytes: send
/// it with their first byte). Fails on a reason or buffer over its limit.
pub fn encode<F>(message: &Message<F>) -> Result<Vec<u8>, PassError> {
    Ok(match message {
        Message::Hello { version } => {
            let mut b = Vec::with_capacity(HELLO_LEN);
            b.extend_from_slice(&MAGIC);
            b.extend_from_slice(&version.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b
        }
        Message::Welcome {
            max_connections,
            max_buffered,
        } => {
            let mut p = [0u8; WELCOME_LEN];
            p[..4].copy_from_slice(&max_connections.to_be_bytes());
            p[4..].copy_from_slice(&max_buffered.to_be_bytes());
            frame(FRAME_WELCOME, 0, 0, &p)
        }
        Message::Refuse { reason } => frame(FRAME_REFUSE, 0, 0, reason_bytes(reason)?),
        Message::Conn {
            id,
            state,
            buffered,
            ..
        } => {
            if buffered.len() > MAX_BUFFERED {
                return Err(PassError::TooLarge {
                    field: "the buffered bytes of a connection",
                    len: buffered.len(),
                    max: MAX_BUFFERED,
                    hint: "end this connection the old way instead",
                });
            }
            let mut p = Vec::with_capacity(1 + buffered.len());
            p.push(*state);
            p.extend_from_slice(buffered);
            frame(FRAME_CONN, 1, *id, &p)
        }
        Message::Taken { id } => frame(FRAME_TAKEN, 0, *id, &[]),
        Message::Declined { id, reason } => frame(FRAME_DECLINED, 0, *id, reason_bytes(reason)?),
        Message::End { conns } => frame(FRAME_END, 0, *conns, &[]),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hello,
    Header,
    Payload,
    Done,
    Failed,
}

/// A frame header, as read.
#[derive(Debug, Clone, Copy)]
struct Header {
    kind: u8,
    flags: u8,
    nfds: u16,
    id: u32,
    len: u32,
}

/// Incremental decoder of what one end of a session reads.
///
/// Read at most [`want`](Decoder::want) bytes at a time (reads must not
/// cross a frame boundary, so that a descriptor is known to belong to the
/// frame whose first byte it came with), and [`feed`](Decoder::feed) them
/// with the descriptors that arrived in the same read. At end of stream,
/// [`eof`](Decoder::eof) says whether that was a clean end.
///
/// No input panics; a descriptor is either handed out in a
/// [`Message::Conn`] or dropped (closed). After an error the decoder holds
/// no descriptor and fails every later call.
#[derive(Debug)]
pub struct Decoder<F = OwnedFd> {
    side: Side,
    state: State,
    buf: Vec<u8>,
    need: usize,
    frame_start: bool,
    arrived: usize,
    fd: Option<F>,
    header: Option<Header>,
    /// Giver side: whether `WELCOME` came.
    welcomed: bool,
    /// Taker side: `CONN`s decoded. Giver side: answers decoded.
    count: u32,
}

impl<F> Decoder<F> {
    /// A decoder expecting the other end's hello.
    pub fn new(side: Side) -> Self {
        Decoder {
            side,
            state: State::Hello,
            buf: Vec::with_capacity(HEADER_LEN),
            need: HELLO_LEN,
            frame_start: true,
            arrived: 0,
            fd: None,
            header: None,
            welcomed: false,
            count: 0,
        }
    }

    /// The most bytes the next read may take (0 when done or failed).
    pub fn want(&self) -> usize {
        match self.state {
            State::Done | State::Failed => 0,
            _ => self.need - self.buf.len(),
        }
    }

    /// Whether the last message (`REFUSE` or `END`) was decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the bytes of one read (at most [`want`](Decoder::want)) and
    /// the descriptors that came with them; returns the message they
    /// complete, if any. On error every descriptor held is dropped and the
    /// decoder stays failed.
    pub fn feed(&mut self, bytes: &[u8], fds: Vec<F>) -> Result<Option<Message<F>>, PassError> {
        match self.step(bytes, fds) {
            Ok(m) => Ok(m),
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    /// The stream ended: `Ok` when that was a clean place to end (after the
    /// last message, or between frames), else an error that says what was
    /// cut short. Drops any descriptor held.
    pub fn eof(&mut self) -> Result<(), PassError> {
        let result = match self.state {
            State::Done => Ok(()),
            State::Header if self.buf.is_empty() => Ok(()),
            State::Failed => Err(PassError::DecoderMisused {
                misuse: "used after it failed",
            }),
            State::Hello if self.buf.is_empty() => Err(PassError::Closed {
                during: match self.side {
                    Side::Giver => ClosedDuring::BeforeTakerHello,
                    Side::Taker => ClosedDuring::BeforeGiverHello,
                },
            }),
            _ => Err(PassError::Closed {
                during: ClosedDuring::MidFrame {
                    part: match self.state {
                        State::Hello => "the hello",
                        State::Payload => "a frame's payload",
                        _ => "a frame header",
                    },
                    read: self.buf.len(),
                    expected: self.need,
                },
            }),
        };
        self.state = match result {
            Ok(()) => State::Done,
            Err(_) => State::Failed,
        };
        self.fd = None;
        self.buf = Vec::new();
        result
    }

    /// Drops every descriptor held and fails every later call: for errors
    /// the decoder cannot see (a failed read, a timeout).
    pub fn abort(&mut self) {
        self.fail();
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.fd = None;
        self.buf = Vec::new();
        self.header = None;
    }

    fn step(&mut self, bytes: &[u8], mut fds: Vec<F>) -> Result<Option<Message<F>>, PassError> {
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
                return Err(malformed(
                    "hand-over stream",
                    "nothing after the last message",
                    format!("{} more byte(s), {} descriptor(s)", bytes.len(), fds.len()),
                ));
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
                misuse: "fed more bytes than it wanted (a read crossed a frame boundary)",
            });
        }
        if self.frame_start {
            self.frame_start = false;
            self.arrived = fds.len();
            if self.state == State::Hello && !fds.is_empty() {
                return Err(PassError::FdsOutOfPlace {
                    arrived: fds.len(),
                    at: "with the hello",
                });
            }
            if fds.len() > 1 {
                return Err(PassError::FdCountMismatch {
                    declared: 1,
                    arrived: fds.len(),
                });
            }
            self.fd = fds.pop();
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

    fn hello_done(&mut self) -> Result<Option<Message<F>>, PassError> {
        let b = &self.buf;
        if b[..4] != MAGIC {
            return Err(malformed(
                "hello",
                "the magic \"HOVC\" of the connection hand-over protocol",
                format!("bytes {:02x?}: the other end does not speak it", &b[..4]),
            ));
        }
        let version = u16::from_be_bytes([b[4], b[5]]);
        let flags = u16::from_be_bytes([b[6], b[7]]);
        // The giver may speak newer versions (the taker answers in one it
        // knows); a taker must answer with one the giver offered.
        let ok = match self.side {
            Side::Taker => version >= 1,
            Side::Giver => version == VERSION,
        };
        if !ok {
            return Err(PassError::Version {
                found: version,
                supported: VERSION,
            });
        }
        if flags != 0 {
            return Err(malformed("hello", "flags 0", format!("flags {flags:#06x}")));
        }
        self.next_frame();
        Ok(Some(Message::Hello { version }))
    }

    fn header_done(&mut self) -> Result<Option<Message<F>>, PassError> {
        let b = &self.buf;
        let h = Header {
            kind: b[0],
            flags: b[1],
            nfds: u16::from_be_bytes([b[2], b[3]]),
            id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        };
        if usize::from(h.nfds) != self.arrived {
            return Err(PassError::FdCountMismatch {
                declared: usize::from(h.nfds),
                arrived: self.arrived,
            });
        }
        if h.flags != 0 {
            return Err(malformed(
                "frame header",
                "flags 0",
                format!("flags {:#04x}", h.flags),
            ));
        }
        let len = h.len as usize;
        let (name, nfds, max_len) = match (self.side, h.kind, self.welcomed) {
            (Side::Giver, FRAME_WELCOME, false) => ("WELCOME", 0, WELCOME_LEN),
            (Side::Giver, FRAME_REFUSE, false) => ("REFUSE", 0, MAX_REASON_LEN),
            (Side::Giver, FRAME_TAKEN, true) => ("TAKEN", 0, 0),
            (Side::Giver, FRAME_DECLINED, true) => ("DECLINED", 0, MAX_REASON_LEN),
            (Side::Taker, FRAME_CONN, _) => ("CONN", 1, 1 + MAX_BUFFERED),
            (Side::Taker, FRAME_END, _) => ("END", 0, 0),
            (side, kind, welcomed) => {
                let expected = match (side, welcomed) {
                    (Side::Giver, false) => "WELCOME (1) or REFUSE (2)",
                    (Side::Giver, true) => "TAKEN (4) or DECLINED (5)",
                    (Side::Taker, _) => "CONN (3) or END (6)",
                };
                return Err(malformed(
                    "frame header",
                    format!("a frame of type {expected}"),
                    format!("type {kind}"),
                ));
            }
        };
        if h.nfds != nfds {
            return Err(malformed(
                "frame header",
                format!("{nfds} descriptor(s) with {name}"),
                format!("{}", h.nfds),
            ));
        }
        if len > max_len
            || (name == "WELCOME" && len != WELCOME_LEN)
            || (name == "CONN" && len == 0)
        {
            return Err(malformed(
                "frame header",
                match name {
                    "WELCOME" => format!("a payload of {WELCOME_LEN} bytes with WELCOME"),
                    "CONN" => format!("a payload of 1 to {} bytes with CONN", 1 + MAX_BUFFERED),
                    _ => format!("a payload of at most {max_len} bytes with {name}"),
                },
                format!("{len} bytes"),
            ));
        }
        let expected_id = match h.kind {
            FRAME_WELCOME | FRAME_REFUSE => Some(0),
            FRAME_CONN | FRAME_TAKEN | FRAME_DECLINED => Some(self.count.saturating_add(1)),
            FRAME_END => Some(self.count),
            _ => None,
        };
        if let Some(want) = expected_id
            && h.id != want
        {
            return Err(malformed(
                "frame header",
                format!("id {want} with {name}"),
                format!("id {}", h.id),
            ));
        }
        if len == 0 {
            return self.complete(h, Vec::new());
        }
        self.header = Some(h);
        self.state = State::Payload;
        self.need = len;
        self.buf.clear();
        Ok(None)
    }

    fn payload_done(&mut self) -> Result<Option<Message<F>>, PassError> {
        let h = self.header.take().expect("set before the payload");
        let payload = std::mem::take(&mut self.buf);
        self.complete(h, payload)
    }

    fn complete(&mut self, h: Header, payload: Vec<u8>) -> Result<Option<Message<F>>, PassError> {
        let text = |payload: Vec<u8>| {
            String::from_utf8(payload).map_err(|_| {
                malformed("hand-over reason", "UTF-8 text", "bytes that are not UTF-8")
            })
        };
        let message = match h.kind {
            FRAME_WELCOME => {
                let p = &payload;
                let max_buffered = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                if max_buffered as usize > MAX_BUFFERED {
                    return Err(malformed(
                        "WELCOME",
                        format!("at most {MAX_BUFFERED} buffered bytes per connection"),
                        format!("{max_buffered}"),
                    ));
                }
                self.welcomed = true;
                Message::Welcome {
                    max_connections: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                    max_buffered,
                }
            }
            FRAME_REFUSE => {
                let reason = text(payload)?;
                self.state = State::Done;
                self.buf = Vec::new();
                return Ok(Some(Message::Refuse { reason }));
            }
            FRAME_CONN => {
                let Some(fd) = self.fd.take() else {
                    return Err(PassError::FdCountMismatch {
                        declared: 1,
                        arrived: 0,
                    });
                };
                self.count += 1;
                let mut payload = payload;
                let state = payload.remove(0);
                Message::Conn {
                    id: h.id,
                    state,
                    fd,
                    buffered: payload,
                }
            }
            FRAME_TAKEN => {
                self.count += 1;
                Message::Taken { id: h.id }
            }
            FRAME_DECLINED => {
                let reason = text(payload)?;
                self.count += 1;
                Message::Declined { id: h.id, reason }
            }
            FRAME_END => {
                self.state = State::Done;
                self.buf = Vec::new();
                return Ok(Some(Message::End { conns: h.id }));
            }
            _ => unreachable!("checked in header_done"),
        };
        self.next_frame();
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` (bytes, descriptors with them) and collects messages.
    fn run(
        side: Side,
        chunks: &[(&[u8], usize)],
    ) -> Result<(Vec<Message<u32>>, Decoder<u32>), PassError> {
        let mut d = Decoder::new(side);
        let mut out = Vec::new();
        for (bytes, n) in chunks {
            let mut at = 0;
            let mut first = true;
            while at < bytes.len() {
                let k = d.want().min(bytes.len() - at).max(1);
                let fds = if first { vec![7u32; *n] } else { vec![] };
                first = false;
                if let Some(m) = d.feed(&bytes[at..at + k], fds)? {
                    out.push(m);
                }
                at += k;
            }
        }
        Ok((out, d))
    }

    fn enc(m: Message<u32>) -> Vec<u8> {
        encode(&m).unwrap()
    }

    /// The session in the module docs, byte for byte.
    #[test]
    fn documented_example_bytes() {
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            hex(&enc(Message::Hello { version: 1 })),
            "48 4F 56 43 00 01 00 00"
        );
        assert_eq!(
            hex(&enc(Message::Welcome {
                max_connections: 65536,
                max_buffered: 65536
            })),
            "01 00 00 00 00 00 00 00 00 00 00 08 00 01 00 00 00 01 00 00"
        );
        assert_eq!(
            hex(&enc(Message::Conn {
                id: 1,
                state: STATE_HTTP1,
                fd: 0,
                buffered: vec![]
            })),
            "03 00 00 01 00 00 00 01 00 00 00 01 01"
        );
        assert_eq!(
            hex(&enc(Message::Taken { id: 1 })),
            "04 00 00 00 00 00 00 01 00 00 00 00"
        );
        assert_eq!(
            hex(&enc(Message::End { conns: 1 })),
            "06 00 00 00 00 00 00 01 00 00 00 00"
        );
    }

    #[test]
    fn a_whole_session_both_ways() {
        let hello = enc(Message::Hello { version: 1 });
        let c1 = enc(Message::Conn {
            id: 1,
            state: STATE_HTTP1,
            fd: 0,
            buffered: b"GET /a HTTP/1.1\r\n\r\nGET /b".to_vec(),
        });
        let c2 = enc(Message::Conn {
            id: 2,
            state: STATE_UNIDENTIFIED,
            fd: 0,
            buffered: vec![],
        });
        let end = enc(Message::End { conns: 2 });
        let (m, d) = run(Side::Taker, &[(&hello, 0), (&c1, 1), (&c2, 1), (&end, 0)]).unwrap();
        assert!(d.is_done());
        assert_eq!(m.len(), 4);
        assert!(
            matches!(&m[1], Message::Conn { id: 1, state: 1, fd: 7, buffered } if buffered.ends_with(b"GET /b"))
        );
        assert!(matches!(
            &m[2],
            Message::Conn {
                id: 2,
                state: 2,
                ..
            }
        ));
        assert_eq!(m[3], Message::End { conns: 2 });

        let welcome = enc(Message::Welcome {
            max_connections: 10,
            max_buffered: 100,
        });
        let taken = enc(Message::Taken { id: 1 });
        let declined = enc(Message::Declined {
            id: 2,
            reason: "draining".into(),
        });
        let (m, _) = run(
            Side::Giver,
            &[(&hello, 0), (&welcome, 0), (&taken, 0), (&declined, 0)],
        )
        .unwrap();
        assert_eq!(
            m[1],
            Message::Welcome {
                max_connections: 10,
                max_buffered: 100
            }
        );
        assert_eq!(m[2], Message::Taken { id: 1 });
        assert_eq!(
            m[3],
            Message::Declined {
                id: 2,
                reason: "draining".into()
            }
        );
    }

    #[test]
    fn refuse_ends_the_session() {
        let hello = enc(Message::Hello { version: 1 });
        let refuse = enc(Message::Refuse {
            reason: "incompatible".into(),
        });
        let (m, mut d) = run(Side::Giver, &[(&hello, 0), (&refuse, 0)]).unwrap();
        assert_eq!(
            m[1],
            Message::Refuse {
                reason: "incompatible".into()
            }
        );
        assert!(d.is_done());
        assert!(d.eof().is_ok());
        // Nothing may follow.
        let (_, mut d) = run(Side::Giver, &[(&hello, 0), (&refuse, 0)]).unwrap();
        assert!(d.feed(b"x", vec![]).is_err());
    }

    #[test]
    fn out_of_order_ids_and_misplaced_frames_are_errors() {
        let hello = enc(Message::Hello { version: 1 });
        let c2 = enc(Message::Conn {
            id: 2,
            state: 1,
            fd: 0,
            buffered: vec![],
        });
        let e = run(Side::Taker, &[(&hello, 0), (&c2, 1)]).unwrap_err();
        assert!(e.to_string().contains("id 1 with CONN"), "{e}");
        // TAKEN before WELCOME.
        let taken = enc(Message::Taken { id: 1 });
        let e = run(Side::Giver, &[(&hello, 0), (&taken, 0)]).unwrap_err();
        assert!(e.to_string().contains("WELCOME (1) or REFUSE (2)"), "{e}");
        // A CONN without its descriptor, and one with two.
        let c1 = enc(Message::Conn {
            id: 1,
            state: 1,
            fd: 0,
            buffered: vec![],
        });
        let e = run(Side::Taker, &[(&hello, 0), (&c1, 0)]).unwrap_err();
        assert!(matches!(e, PassError::FdCountMismatch { .. }), "{e}");
        let e = run(Side::Taker, &[(&hello, 0), (&c1, 2)]).unwrap_err();
        assert!(matches!(e, PassError::FdCountMismatch { .. }), "{e}");
        // END with the wrong count.
        let end = enc(Message::End { conns: 3 });
        let e = run(Side::Taker, &[(&hello, 0), (&c1, 1), (&end, 0)]).unwrap_err();
        assert!(e.to_string().contains("id 1 with END"), "{e}");
    }

    #[test]
    fn hello_checks() {
        let e = run(Side::Taker, &[(b"HOVR\0\x01\0\0", 0)]).unwrap_err();
        assert!(e.to_string().contains("HOVC"), "{e}");
        // A newer giver is fine for a taker; a taker answering with a
        // version the giver does not speak is not.
        assert!(run(Side::Taker, &[(&enc(Message::Hello { version: 7 }), 0)]).is_ok());
        let e = run(Side::Giver, &[(&enc(Message::Hello { version: 2 }), 0)]).unwrap_err();
        assert!(matches!(e, PassError::Version { found: 2, .. }), "{e}");
        let e = run(Side::Taker, &[(&enc(Message::Hello { version: 0 }), 0)]).unwrap_err();
        assert!(matches!(e, PassError::Version { found: 0, .. }), "{e}");
    }

    #[test]
    fn eof_places() {
        let hello = enc(Message::Hello { version: 1 });
        let (_, mut d) = run(Side::Giver, &[]).unwrap();
        let e = d.eof().unwrap_err();
        assert!(e.to_string().contains("does not take connections"), "{e}");
        let (_, mut d) = run(Side::Taker, &[(&hello, 0)]).unwrap();
        assert!(d.eof().is_ok(), "between frames is a clean end");
        let (_, mut d) = run(Side::Taker, &[(&hello, 0), (&[3, 0, 0], 1)]).unwrap();
        let e = d.eof().unwrap_err();
        assert!(e.to_string().contains("3 of 12 bytes"), "{e}");
    }

    #[test]
    fn limits() {
        let big = Message::<u32>::Conn {
            id: 1,
            state: 1,
            fd: 0,
            buffered: vec![0; MAX_BUFFERED + 1],
        };
        assert!(encode(&big).is_err());
        let long = Message::<u32>::Refuse {
            reason: "x".repeat(MAX_REASON_LEN + 1),
        };
        assert!(encode(&long).is_err());
        // A header that announces too much is refused before the payload.
        let mut h = enc(Message::Conn {
            id: 1,
            state: 1,
            fd: 0,
            buffered: vec![],
        });
        h.truncate(HEADER_LEN);
        h[8..12].copy_from_slice(&((MAX_BUFFERED as u32) + 2).to_be_bytes());
        let hello = enc(Message::Hello { version: 1 });
        let e = run(Side::Taker, &[(&hello, 0), (&h, 1)]).unwrap_err();
        assert!(e.to_string().contains("1 to"), "{e}");
    }

    fn message_strategy() -> impl proptest::strategy::Strategy<Value = Message<u32>> {
        use proptest::prelude::*;
        prop_oneof![
            (any::<u32>(), 0..=MAX_BUFFERED as u32).prop_map(|(c, b)| Message::Welcome {
                max_connections: c,
                max_buffered: b
            }),
            ".{0,40}".prop_map(|reason| Message::Refuse { reason }),
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
                |(state, buffered)| Message::Conn {
                    id: 0,
                    state,
                    fd: 7,
                    buffered
                }
            ),
            Just(Message::Taken { id: 0 }),
            ".{0,40}".prop_map(|reason| Message::Declined { id: 0, reason }),
        ]
    }

    proptest::proptest! {
        /// Any session of valid messages, cut into reads anywhere (within
        /// what the decoder wants), decodes to the same messages.
        #[test]
        fn any_session_round_trips(
            messages in proptest::collection::vec(message_strategy(), 0..8),
            cut in 1usize..40,
        ) {
            // Split into what a giver sends and what a taker sends,
            // numbering CONN and the answers in order.
            let (mut to_taker, mut to_giver) = (vec![Message::Hello { version: 1 }], vec![Message::Hello { version: 1 }]);
            let mut welcomed = false;
            let (mut conns, mut answers) = (0u32, 0u32);
            for m in messages {
                match m {
                    Message::Conn { state, fd, buffered, .. } => {
                        conns += 1;
                        to_taker.push(Message::Conn { id: conns, state, fd, buffered });
                    }
                    Message::Welcome { .. } | Message::Refuse { .. } if welcomed => {}
                    Message::Welcome { .. } => {
                        welcomed = true;
                        to_giver.push(m);
                    }
                    Message::Refuse { .. } => {}
                    Message::Taken { .. } if welcomed => {
                        answers += 1;
                        to_giver.push(Message::Taken { id: answers });
                    }
                    Message::Declined { reason, .. } if welcomed => {
                        answers += 1;
                        to_giver.push(Message::Declined { id: answers, reason });
                    }
                    _ => {}
                }
            }
            to_taker.push(Message::End { conns });
            for (side, sent) in [(Side::Taker, to_taker), (Side::Giver, to_giver)] {
                let mut d: Decoder<u32> = Decoder::new(side);
                let mut got = Vec::new();
                for m in &sent {
                    let bytes = encode(m).unwrap();
                    let nfds = usize::from(matches!(m, Message::Conn { .. }));
                    let mut at = 0;
                    while at < bytes.len() {
                        let k = d.want().min(cut).min(bytes.len() - at);
                        let fds = if at == 0 { vec![7u32; nfds] } else { vec![] };
                        if let Some(m) = d.feed(&bytes[at..at + k], fds).unwrap() {
                            got.push(m);
                        }
                        at += k;
                    }
                }
                proptest::prop_assert!(d.eof().is_ok());
                proptest::prop_assert_eq!(got, sent);
            }
        }
    }
}
