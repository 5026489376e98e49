//! Passing descriptors with metadata between unrelated processes over a Unix
//! socket.
//!
//! A process that owns descriptors (a listening socket, a file, a pipe) is a
//! **server**: it listens on a Unix socket and hands its descriptors to every
//! process that connects and is allowed to. A process that wants them is a
//! **client**. The usual use is a graceful restart: the new instance of a
//! server asks the old one for its listener, then the old one drains.
//!
//! ```no_run
//! use handover::pass::{self, Meta};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The new instance: ask the running one for its listener.
//! let mut listener = None;
//! match pass::receive("/run/app/handoff.sock", |fd, meta| {
//!     if meta.get("name") == Some("http") {
//!         listener = Some(fd.convert::<std::net::TcpListener>()?);
//!     }
//!     Ok(())
//! }) {
//!     Ok(_) => {}
//!     Err(e) if e.is_no_server() => {} // first instance: bind fresh
//!     Err(e) => return Err(e.into()),
//! }
//! let listener = match listener {
//!     Some(l) => l,
//!     None => std::net::TcpListener::bind("127.0.0.1:8080")?,
//! };
//!
//! // Offer it in turn to the next instance, and stop when it has it.
//! let server = pass::Server::bind("/run/app/handoff.sock")?;
//! let handle = server.spawn(pass::sequence((
//!     pass::listener(listener.try_clone()?, Meta::new().with("name", "http")),
//!     pass::confirm(),
//!     pass::stop_serving(),
//!     pass::callback(|| println!("handed over; draining")),
//! )))?;
//! # Ok(()) }
//! ```
//!
//! Lower-level pieces: [`Sender`]/[`Receiver`] run one session on a connected
//! std [`UnixStream`](std::os::unix::net::UnixStream) (and, with the `tokio`
//! feature, `AsyncSender`/`AsyncReceiver` on a tokio one, and
//! `receive_async`); a sans-IO codec (private) encodes and decodes frames.
//!
//! # Security
//!
//! The server's socket file is created with mode `0600` (it is bound, then
//! chmod-ed, and only then listens: nobody can connect while its mode is
//! wider). Every connecting process is checked with `SO_PEERCRED`; by
//! default only processes of the same effective uid get descriptors
//! ([`Peers`]). A refused peer gets nothing, and the refusal is logged with
//! its pid and uid. The client checks the server the same way. Put the
//! socket in a directory that other users cannot write to.
//!
//! # Wire format, version 1
//!
//! A connection is a byte stream (`AF_UNIX`, `SOCK_STREAM`). Integers are
//! unsigned, big-endian. Descriptors travel as `SCM_RIGHTS` ancillary data.
//!
//! **1. Hello.** The client sends 8 bytes, then the server answers with 8
//! bytes of the same layout:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"HOVR"` (`48 4F 56 52`) |
//! | 4 | 2 | version: the client sends the highest it speaks (≥ 1); the server answers with the one it will use (≤ the client's); this is version 1 |
//! | 6 | 2 | flags: 0 (a receiver rejects anything else) |
//!
//! The server checks the client's credentials before it reads or writes
//! anything; a refused client sees the connection closed.
//!
//! **2. Frames.** Then the server sends frames, each a 12-byte header and
//! `length` bytes of payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | type: 1 `RECORD`, 2 `MORE_FDS`, 3 `END` (server to client), 4 `ACK` (client to server) |
//! | 1 | 1 | metadata kind (`RECORD` only, else 0): 0 none, 1 key/value pairs, 2 opaque bytes |
//! | 2 | 2 | `nfds`: descriptors attached to this frame, 0 to 253 |
//! | 4 | 4 | `count`: `RECORD`: descriptors in the whole record (1 to [`MAX_FDS_PER_RECORD`]); `MORE_FDS`: index within the record of this frame's first descriptor; `END`: records sent; `ACK`: records received |
//! | 8 | 4 | `length` of the payload: the metadata for `RECORD` (0 to [`MAX_META_LEN`], and 0 for kind none); 0 for the others |
//!
//! A **record** is one or more descriptors with one metadata value. Its
//! `RECORD` frame carries the metadata and the first 1 to 253 descriptors
//! (`nfds ≤ count`); when `count` is larger, `MORE_FDS` frames follow at
//! once, each with 1 to 253 of the rest, until `count` descriptors were
//! sent. Any number of records may follow each other; then `END`, whose
//! `count` must equal the number of records. The client, once it has
//! processed everything, sends `ACK` (with that same count) and waits for
//! the server to close the connection. The server closes the connection
//! after `ACK`; a server that gets EOF instead knows the client failed.
//!
//! **Descriptors and framing.** The kernel attaches ancillary data to the
//! first byte of the data given to the same `sendmsg` call. So a sender
//! passes each frame's descriptors in the `sendmsg` that writes the frame's
//! first byte (the rest of the frame, if that call was short, follows
//! without ancillary data), and a receiver never lets one `recvmsg` cross
//! the end of a frame: it reads the 12 header bytes (possibly in several
//! reads), then exactly `length` payload bytes. The descriptors that arrive
//! with the first read of a frame are that frame's, and their number must
//! equal `nfds`. Descriptors arriving with any other read, a count other
//! than `nfds`, `MSG_CTRUNC` (a receive buffer too small, or the receiving
//! process out of descriptors), any field outside its range, or EOF before
//! the last frame are errors: the receiver closes every descriptor it got
//! in the unfinished record and the connection. Receivers use
//! `MSG_CMSG_CLOEXEC`, so descriptors are close-on-exec from the start.
//!
//! **Metadata.** Kind 2 is the payload as is. Kind 1 (key/value pairs,
//! [`Meta`]) is a sequence of entries filling the payload exactly:
//!
//! | size | field |
//! |---|---|
//! | 1 | key length, 1 to 255 |
//! | key length | key, UTF-8 |
//! | 2 | value length, 0 to 65535 |
//! | value length | value, UTF-8 |
//!
//! Keys are unique; senders write them in byte order, receivers accept any
//! order. An empty payload is an empty map.
//!
//! Limits: [`MAX_FDS_PER_MESSAGE`], [`MAX_FDS_PER_RECORD`],
//! [`MAX_META_LEN`], [`MAX_KEY_LEN`], [`MAX_VALUE_LEN`], and
//! [`MAX_UNIX_PATH`](crate::socket::MAX_UNIX_PATH) for the socket path.
//!
//! A session of one record with one descriptor and metadata `name=http`:
//!
//! ```text
//! C→S  48 4F 56 52 00 01 00 00                       hello, version 1
//! S→C  48 4F 56 52 00 01 00 00                       hello, version 1
//! S→C  01 01 00 01 00 00 00 01 00 00 00 0B  [1 fd]   RECORD, pairs, 1 fd of 1, 11 bytes
//!      04 6E 61 6D 65 00 04 68 74 74 70              "name" = "http"
//! S→C  03 00 00 00 00 00 00 01 00 00 00 00           END, 1 record
//! C→S  04 00 00 00 00 00 00 01 00 00 00 00           ACK, 1 record
//! S    closes the connection
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::socket::{ConvertError, FdKind, FromFd};

mod client;
pub mod connection;
mod server;
mod stream;
pub(crate) mod wire;

#[cfg(feature = "tokio")]
pub use client::receive_async;
pub use client::{ReceiveOptions, receive, receive_with};
pub use server::{
    CallbackHandler, ConfirmHandler, FdsHandler, FileHandler, Handler, ListenerHandler, Sequence,
    Server, ServerHandle, Session, StopServingHandler, Stopper, callback, confirm, fds, file,
    listen_and_serve, listener, sequence, serve, stop_serving,
};
#[cfg(feature = "tokio")]
pub use stream::{AsyncReceiver, AsyncSender};
pub use stream::{Receiver, Sender};

/// The protocol version this module speaks.
pub const VERSION: u16 = 1;
/// The first four bytes of each hello.
pub(crate) const MAGIC: [u8; 4] = *b"HOVR";
/// Length of the hello.
pub(crate) const HELLO_LEN: usize = 8;
/// Length of a frame header.
pub(crate) const HEADER_LEN: usize = 12;
/// Most descriptors one frame may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;
/// Most descriptors one record may carry (spread over frames of 253).
pub const MAX_FDS_PER_RECORD: usize = 1 << 20;
/// Longest metadata payload of one record, in bytes.
pub const MAX_META_LEN: usize = 64 * 1024;
/// Longest key of a [`Meta`], in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Longest value of a [`Meta`], in bytes.
pub const MAX_VALUE_LEN: usize = 65_535;

/// Errors of descriptor passing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassError {
    /// The socket path does not fit in `sun_path`.
    #[error(
        "socket path {path:?} is {len} bytes long, but a Unix socket path can be at most {max} \
         bytes: pick a shorter directory",
        max = crate::socket::MAX_UNIX_PATH
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// A live server already listens at the path.
    #[error(
        "another instance is serving at {path:?} (it accepted a connection): receive from it \
         first (pass::receive), stop it, or pick another path"
    )]
    AlreadyServing {
        /// The path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error(
        "{path:?} exists and is not a Unix socket: expected a socket or nothing there; remove it \
         or pick another path"
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Nothing is serving at the path (no socket file, or a stale one).
    #[error(
        "nobody is serving descriptors at {path:?} ({source}): this is the first instance, or \
         the previous one has exited"
    )]
    NoServer {
        /// The path.
        path: PathBuf,
        /// `ENOENT` or `ECONNREFUSED`.
        #[source]
        source: io::Error,
    },
    /// The peer's credentials are not allowed.
    #[error(
        "the {role} (pid {pid}, uid {uid}) is not allowed: expected {expected}; run both \
         processes as the same user, or allow this uid"
    )]
    PeerNotAllowed {
        /// "server" or "client".
        role: &'static str,
        /// The peer's pid.
        pid: i32,
        /// The peer's uid.
        uid: u32,
        /// What was allowed, in words.
        expected: String,
    },
    /// A deadline passed.
    #[error(
        "timed out after {after:?} waiting for {waiting_for}: the peer stalled or is overloaded; \
         retry, or raise the timeout"
    )]
    Timeout {
        /// What was awaited.
        waiting_for: &'static str,
        /// The timeout that passed.
        after: Duration,
    },
    /// The peer does not speak this protocol at all.
    #[error(
        "expected the hello of the handover descriptor-passing protocol (magic \"HOVR\"), found \
         bytes {found:02x?}: the process at the other end is not a handover pass server/client"
    )]
    NotHandover {
        /// The first four bytes received.
        found: [u8; 4],
    },
    /// The peer speaks another version.
    #[error(
        "the peer speaks version {found} of the descriptor-passing protocol, this side speaks \
         version {supported}: run compatible handover versions on both sides"
    )]
    Version {
        /// The version received.
        found: u16,
        /// The version spoken here.
        supported: u16,
    },
    /// A frame or the order of frames breaks the protocol.
    #[error(
        "malformed {reason}; the connection was closed with every descriptor it brought (the \
         peer does not follow the protocol)"
    )]
    Malformed {
        /// What was wrong.
        reason: Malformed,
    },
    /// A frame header declares another number of descriptors than arrived.
    #[error(
        "a frame declared {declared} descriptor(s) but {arrived} arrived with it; all were \
         closed (the peer does not follow the protocol, or descriptors were lost in transit)"
    )]
    FdCountMismatch {
        /// `nfds` in the header.
        declared: usize,
        /// Descriptors received with the frame's first read.
        arrived: usize,
    },
    /// Descriptors arrived where none may.
    #[error(
        "{arrived} descriptor(s) arrived {at}; descriptors may only come with the first byte of \
         a RECORD or MORE_FDS frame. They were closed"
    )]
    FdsOutOfPlace {
        /// How many arrived.
        arrived: usize,
        /// Where, in words.
        at: &'static str,
    },
    /// `MSG_CTRUNC`: the kernel dropped ancillary data.
    #[error(
        "the kernel truncated the ancillary data (MSG_CTRUNC), so descriptors were lost; the \
         ones that arrived were closed. Usually this process has run out of descriptors: raise \
         RLIMIT_NOFILE (ulimit -n)"
    )]
    ControlTruncated,
    /// A value exceeds one of the protocol's limits.
    #[error("{field} is {len} (bytes or descriptors), over the limit of {max}: {hint}")]
    TooLarge {
        /// What was too large.
        field: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
        /// What to do.
        hint: &'static str,
    },
    /// A [`Meta`] key or value is not valid UTF-8, or a key is empty or repeated.
    #[error("metadata {problem}: expected unique, non-empty UTF-8 keys and UTF-8 values")]
    BadMeta {
        /// What is wrong.
        problem: MetaProblem,
    },
    /// The peer closed the connection early.
    #[error("the connection was closed {during}")]
    Closed {
        /// When.
        during: ClosedDuring,
    },
    /// A received descriptor is not of the kind asked for.
    #[error("received descriptor {index} of record {record}: {source}")]
    Convert {
        /// The record's index in the session.
        record: usize,
        /// The descriptor's index in its record.
        index: usize,
        /// What was wrong.
        #[source]
        source: ConvertError,
    },
    /// A server handler or client callback failed.
    #[error("{0}")]
    Handler(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A record to send has no descriptor.
    #[error("a record must carry at least one descriptor, got none")]
    EmptyRecord,
    /// [`pass::listener`](fn@listener) was given something other than a
    /// listening or UDP socket.
    #[error(
        "the listener handler expected a listening socket (TCP or Unix) or a UDP socket, found \
         {found}: use pass::file or pass::fds for other descriptors"
    )]
    NotAListener {
        /// What it was given.
        found: FdKind,
    },
    /// [`pass::file`](fn@file) was given a socket.
    #[error(
        "the file handler expected a file, pipe or device, found {found}: use pass::listener for \
         listening sockets or pass::fds for any descriptor"
    )]
    NotAFile {
        /// What it was given.
        found: FdKind,
    },
    /// The socket path is empty or contains a NUL byte.
    #[error("socket path {path:?} must be non-empty and contain no NUL byte")]
    BadPath {
        /// The path.
        path: PathBuf,
    },
    /// Another process kept creating a socket at the path while this one
    /// tried to replace a stale one.
    #[error(
        "could not bind {path:?}: another process keeps creating a socket there; stop it or pick \
         another path"
    )]
    BindRace {
        /// The path.
        path: PathBuf,
    },
    /// The server's thread panicked (see the panic message in the log).
    #[error("the descriptor-passing server's thread panicked")]
    ServerPanicked,
    /// A send on a session that already failed.
    #[error("this session already failed; close the connection")]
    SessionFailed,
    /// A send on a session that was already finished (END sent).
    #[error("this session was already finished (END sent): send every record before finishing")]
    SessionFinished,
    /// [`Receiver::ack`] before the server's END.
    #[error(
        "ack before the server's END: read every record first (until next_record returns None)"
    )]
    AckBeforeEnd,
    /// A protocol decoder was used after it failed, or fed more than it
    /// asked for: a bug in the caller.
    #[error(
        "the protocol decoder was misused ({misuse}): after an error drop the connection, and \
         never feed more bytes than it wants"
    )]
    DecoderMisused {
        /// How.
        misuse: &'static str,
    },
    /// A system call failed.
    #[error("{context}{}: {source}", path.as_ref().map(|p| format!(" {p:?}")).unwrap_or_default())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The socket path concerned, if any.
        path: Option<PathBuf>,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// How a stream broke the protocol; see [`PassError::Malformed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// Bytes or descriptors arrived after the last frame.
    #[error(
        "stream: expected nothing after the last frame, found {bytes} byte(s), {fds} descriptor(s)"
    )]
    TrailingData {
        /// Bytes that arrived.
        bytes: usize,
        /// Descriptors that arrived.
        fds: usize,
    },
    /// A hello with flags other than 0.
    #[error("hello: expected flags 0, found flags {flags:#06x}")]
    HelloFlags {
        /// The flags.
        flags: u16,
    },
    /// Descriptors declared with an END or ACK frame.
    #[error("frame header: expected no descriptors with END or ACK, found {fds} descriptor(s)")]
    FdsWithControlFrame {
        /// How many were declared.
        fds: u16,
    },
    /// A frame type this side does not accept.
    #[error("frame header: expected {expected}, found frame type {found}")]
    FrameType {
        /// The frame types this side accepts, in words.
        expected: &'static str,
        /// The type received.
        found: u8,
    },
    /// A metadata kind other than 0 outside a RECORD frame.
    #[error("frame header: expected metadata kind 0 outside a RECORD frame, found kind {kind}")]
    MetaKindOutsideRecord {
        /// The kind received.
        kind: u8,
    },
    /// A payload outside a RECORD frame.
    #[error(
        "frame header: expected no payload outside a RECORD frame, found a payload of {len} bytes"
    )]
    PayloadOutsideRecord {
        /// Its length.
        len: u32,
    },
    /// An unknown metadata kind.
    #[error(
        "RECORD frame: expected metadata kind 0 (none), 1 (pairs) or 2 (bytes), found kind {kind}"
    )]
    MetaKind {
        /// The kind received.
        kind: u8,
    },
    /// A record that declares no descriptors, or too many.
    #[error("RECORD frame: expected a record of 1 to {max} descriptors, found {total} descriptors")]
    RecordFdCount {
        /// How many it declared.
        total: u64,
        /// The limit.
        max: usize,
    },
    /// A RECORD or MORE_FDS frame with no descriptors or more than it may
    /// carry.
    #[error("{frame} frame: expected 1 to {max} descriptors attached, found {found}")]
    AttachedFds {
        /// "RECORD" or "MORE_FDS".
        frame: &'static str,
        /// How many it may carry.
        max: usize,
        /// How many it declared.
        found: usize,
    },
    /// A payload with metadata kind 0 (none).
    #[error(
        "RECORD frame: expected no payload with metadata kind 0 (none), found a payload of {len} bytes"
    )]
    PayloadWithoutMeta {
        /// Its length.
        len: u32,
    },
    /// MORE_FDS outside a record.
    #[error("stream: expected a RECORD frame before MORE_FDS, found MORE_FDS outside a record")]
    MoreFdsOutsideRecord,
    /// A MORE_FDS frame that does not continue where the record stands.
    #[error("MORE_FDS frame: expected first index {expected}, found first index {found}")]
    MoreFdsIndex {
        /// The index the record is at.
        expected: u32,
        /// The index received.
        found: u32,
    },
    /// END counts other records than arrived.
    #[error("END frame: expected {received} record(s), as received, found {declared} record(s)")]
    EndCount {
        /// Records received.
        received: u32,
        /// Records the frame counts.
        declared: u32,
    },
    /// ACK counts other records than were sent.
    #[error("ACK frame: expected {sent} record(s), as sent, found {acked} record(s)")]
    AckCount {
        /// Records sent.
        sent: u32,
        /// Records the frame counts.
        acked: u32,
    },
    /// A metadata payload that ends in the middle of a pair.
    #[error(
        "metadata pairs: expected {need} byte(s) of {field}, found {have} byte(s) left in the payload"
    )]
    MetaTruncated {
        /// "key", "value length" or "value".
        field: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A record's MORE_FDS frames were cut short by another frame.
    #[error(
        "stream: expected MORE_FDS frames completing record {record} ({received} of {total} \
         descriptors so far), found {found}"
    )]
    RecordUnfinished {
        /// The record's index.
        record: u32,
        /// Its descriptors received so far.
        received: usize,
        /// The descriptors it declared.
        total: usize,
        /// "a new RECORD frame" or "END".
        found: &'static str,
    },
    /// A part of the connection hand-over protocol
    /// ([`connection`]) that breaks it.
    #[error("connection hand-over {part}: expected {expected}, found {found}")]
    Handoff {
        /// Which part: "hello", "frame header", "WELCOME", ...
        part: &'static str,
        /// What the protocol allows there.
        expected: String,
        /// What arrived.
        found: String,
    },
    /// A message where another was due.
    #[error("stream: expected {expected}, found {found}")]
    Unexpected {
        /// What was due.
        expected: &'static str,
        /// What arrived: "a hello", "a record", "END", "ACK", or bytes.
        found: &'static str,
    },
}

/// What is wrong with received or given metadata; see
/// [`PassError::BadMeta`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaProblem {
    /// A key is empty.
    #[error("has an empty key")]
    EmptyKey,
    /// A key is not UTF-8 (shown lossily).
    #[error("key {0:?} is not UTF-8")]
    KeyNotUtf8(String),
    /// The value of this key is not UTF-8.
    #[error("value of key {0:?} is not UTF-8")]
    ValueNotUtf8(String),
    /// This key appears twice.
    #[error("key {0:?} appears twice")]
    DuplicateKey(String),
}

/// When a connection closed early; see [`PassError::Closed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClosedDuring {
    /// Before the server's hello: the server refused this client.
    #[error(
        "before the server's hello: the server refused this process (see its log for the \
         reason; by default only the same user may connect), or it is not a handover pass server"
    )]
    ServerHello,
    /// Before the client's hello (typically a probe checking whether the
    /// server is alive).
    #[error("before the client's hello")]
    ClientHello,
    /// After some records, before the server's END frame.
    #[error(
        "after {records} complete record(s) but before the server's END frame: the server \
         stopped or failed while sending (see its log)"
    )]
    BeforeEnd {
        /// Complete records received.
        records: u32,
    },
    /// Before the client's ACK.
    #[error(
        "before the client's ACK: the client failed or gave up while receiving (see its output)"
    )]
    BeforeAck,
    /// In the middle of a frame.
    #[error("in the middle of {part} ({read} of {expected} bytes read)")]
    MidFrame {
        /// "the hello", "a frame header" or "a record's metadata".
        part: &'static str,
        /// Bytes read.
        read: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// Between the frames of a record, before all its descriptors came.
    #[error("in the middle of record {record} ({received} of {total} descriptors received)")]
    MidRecord {
        /// The record's index.
        record: u32,
        /// Descriptors received.
        received: usize,
        /// Descriptors declared.
        total: usize,
    },
    /// By the peer while this side was still sending.
    #[error("by the peer while this side was still sending")]
    WhileSending,
    /// Reset by the peer while receiving.
    #[error("by the peer (connection reset)")]
    Reset,
    /// Connection hand-over: before the new process's hello (it does not
    /// take connections).
    #[error(
        "before the taker's hello: the new process does not take connections (an older \
         version, or one that does not hand over)"
    )]
    BeforeTakerHello,
    /// Connection hand-over: before the old process's hello.
    #[error("before the giver's hello")]
    BeforeGiverHello,
    /// Connection hand-over: after the hellos, before `WELCOME` or
    /// `REFUSE`.
    #[error("after the hello, before the taker's WELCOME or REFUSE")]
    BeforeWelcome,
}

impl PassError {
    /// Whether this says nobody is serving at the path: the cue for a first
    /// instance to bind its sockets fresh.
    pub fn is_no_server(&self) -> bool {
        matches!(self, PassError::NoServer { .. })
    }

    /// Whether a deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, PassError::Timeout { .. })
    }

    /// Wraps an application error, for handlers and callbacks.
    pub fn handler(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PassError {
        PassError::Handler(e.into())
    }

    pub(crate) fn io(context: &'static str, source: impl Into<io::Error>) -> PassError {
        PassError::Io {
            context,
            path: None,
            source: source.into(),
        }
    }

    pub(crate) fn io_at(
        context: &'static str,
        path: &std::path::Path,
        source: impl Into<io::Error>,
    ) -> PassError {
        PassError::Io {
            context,
            path: Some(path.to_owned()),
            source: source.into(),
        }
    }
}

/// Key/value metadata: a map from UTF-8 keys to UTF-8 values, sorted by key.
///
/// Keys are 1 to [`MAX_KEY_LEN`] bytes, values at most [`MAX_VALUE_LEN`],
/// and the encoded whole at most [`MAX_META_LEN`]; these are checked when a
/// record is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta(BTreeMap<String, String>);

impl Meta {
    /// An empty map.
    pub fn new() -> Meta {
        Meta::default()
    }

    /// Adds `key = value` (builder style).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Meta {
        self.insert(key, value);
        self
    }

    /// Sets `key = value`, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Encodes the entries as the wire format's kind-1 payload.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PassError> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            if k.is_empty() {
                return Err(PassError::BadMeta {
                    problem: MetaProblem::EmptyKey,
                });
            }
            if k.len() > MAX_KEY_LEN {
                return Err(PassError::TooLarge {
                    field: "a metadata key",
                    len: k.len(),
                    max: MAX_KEY_LEN,
                    hint: "use a shorter key",
                });
            }
            if v.len() > MAX_VALUE_LEN {
                return Err(PassError::TooLarge {
                    field: "a metadata value",
                    len: v.len(),
                    max: MAX_VALUE_LEN,
                    hint: "send large values as opaque bytes (Metadata::Bytes) or over the \
                           connection",
                });
            }
            out.push(k.len() as u8);
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u16).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
            if out.len() > MAX_META_LEN {
                return Err(PassError::TooLarge {
                    field: "the encoded metadata",
                    len: out.len(),
                    max: MAX_META_LEN,
                    hint: "send less metadata per record",
                });
            }
        }
        Ok(out)
    }

    /// Decodes a kind-1 payload.
    pub fn from_bytes(mut b: &[u8]) -> Result<Meta, PassError> {
        if b.len() > MAX_META_LEN {
            return Err(PassError::TooLarge {
                field: "the encoded metadata",
                len: b.len(),
                max: MAX_META_LEN,
                hint: "the peer does not follow the protocol",
            });
        }
        let short = |field: &'static str, need: usize, have: usize| PassError::Malformed {
            reason: Malformed::MetaTruncated { field, need, have },
        };
        let mut map = BTreeMap::new();
        while let Some((&klen, rest)) = b.split_first() {
            let klen = usize::from(klen);
            if klen == 0 {
                return Err(PassError::BadMeta {
                    problem: MetaProblem::EmptyKey,
                });
            }
            if rest.len() < klen {
                return Err(short("key", klen, rest.len()));
            }
            let (key, rest) = rest.split_at(klen);
            if rest.len() < 2 {
                return Err(short("value length", 2, rest.len()));
            }
            let vlen = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let rest = &rest[2..];
            if rest.len() < vlen {
                return Err(short("value", vlen, rest.len()));
            }
            let (value, rest) = rest.split_at(vlen);
            let key = std::str::from_utf8(key).map_err(|_| PassError::BadMeta {
                problem: MetaProblem::KeyNotUtf8(String::from_utf8_lossy(key).into_owned()),
            })?;
            let value = std::str::from_utf8(value).map_err(|_| PassError::BadMeta {
                problem: MetaProblem::ValueNotUtf8(key.to_owned()),
            })?;
            if map.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(PassError::BadMeta {
                    problem: MetaProblem::DuplicateKey(key.to_owned()),
                });
            }
            b = rest;
        }
        Ok(Meta(map))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Meta {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Meta(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Meta {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

/// The metadata of a record: nothing, key/value pairs, or opaque bytes the
/// application encodes and decodes itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Metadata {
    /// No metadata.
    #[default]
    None,
    /// Key/value pairs.
    Pairs(Meta),
    /// Opaque bytes.
    Bytes(Vec<u8>),
}

impl Metadata {
    /// The value of `key` when these are pairs that have it.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self {
            Metadata::Pairs(m) => m.get(key),
            _ => None,
        }
    }

    /// The pairs, if these are pairs.
    pub fn pairs(&self) -> Option<&Meta> {
        match self {
            Metadata::Pairs(m) => Some(m),
            _ => None,
        }
    }

    /// The bytes, if these are opaque bytes.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Metadata::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Whether there is no metadata.
    pub fn is_none(&self) -> bool {
        matches!(self, Metadata::None)
    }
}

impl From<Meta> for Metadata {
    fn from(m: Meta) -> Self {
        Metadata::Pairs(m)
    }
}

impl From<Vec<u8>> for Metadata {
    fn from(b: Vec<u8>) -> Self {
        Metadata::Bytes(b)
    }
}

impl From<&[u8]> for Metadata {
    fn from(b: &[u8]) -> Self {
        Metadata::Bytes(b.to_vec())
    }
}

impl From<()> for Metadata {
    fn from(_: ()) -> Self {
        Metadata::None
    }
}

/// One received record: its descriptors (owned, close-on-exec) and metadata.
#[derive(Debug)]
pub struct Record {
    /// The descriptors, in the order they were sent.
    pub fds: Vec<OwnedFd>,
    /// The metadata.
    pub meta: Metadata,
}

/// One received descriptor, as handed to a [`receive`] callback.
///
/// Turn it into the type you expect with [`convert`](Received::convert), which
/// checks the descriptor's kind first (see [`FromFd`]).
#[derive(Debug)]
pub struct Received {
    fd: OwnedFd,
    record: usize,
    index: usize,
}

impl Received {
    pub(crate) fn new(fd: OwnedFd, record: usize, index: usize) -> Received {
        Received { fd, record, index }
    }

    /// The index of this descriptor's record in the session (from 0).
    pub fn record(&self) -> usize {
        self.record
    }

    /// The index of this descriptor within its record (from 0).
    pub fn index(&self) -> usize {
        self.index
    }

    /// What kind of descriptor this is.
    pub fn kind(&self) -> Result<FdKind, PassError> {
        FdKind::of(self.fd.as_fd()).map_err(|e| PassError::io("inspecting a received fd", e))
    }

    /// Converts into `T` (for example `std::net::TcpListener`,
    /// `tokio::net::UdpSocket`, `std::fs::File`) after checking the kind; on
    /// a wrong kind the error names both, and the descriptor is closed.
    pub fn convert<T: FromFd>(self) -> Result<T, PassError> {
        T::from_fd(self.fd).map_err(|source| PassError::Convert {
            record: self.record,
            index: self.index,
            source,
        })
    }

    /// The descriptor, unchecked.
    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Received {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Received> for OwnedFd {
    fn from(r: Received) -> OwnedFd {
        r.fd
    }
}

pub use crate::socket::PeerCred;

/// [`PeerCred::of`] with this module's error.
pub(crate) fn peer_cred(socket: BorrowedFd<'_>) -> Result<PeerCred, PassError> {
    PeerCred::of(socket)
        .map_err(|e| PassError::io("reading the peer's credentials (SO_PEERCRED)", e))
}

/// Which peers may take part in a session, checked with `SO_PEERCRED`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Peers {
    /// Processes with this process's effective uid (the default).
    #[default]
    SameUser,
    /// Processes with one of these uids.
    Uids(std::collections::BTreeSet<u32>),
    /// Any process that can connect to the socket.
    Any,
    /// Processes for which the predicate returns true.
    Custom(std::sync::Arc<dyn Fn(&PeerCred) -> bool + Send + Sync>),
}

impl Peers {
    /// Processes with one of `uids`.
    pub fn uids(uids: impl IntoIterator<Item = u32>) -> Peers {
        Peers::Uids(uids.into_iter().collect())
    }

    /// Processes for which `f` returns true.
    pub fn custom(f: impl Fn(&PeerCred) -> bool + Send + Sync + 'static) -> Peers {
        Peers::Custom(std::sync::Arc::new(f))
    }

    /// Whether `peer` is allowed.
    pub fn allows(&self, peer: &PeerCred) -> bool {
        match self {
            Peers::SameUser => peer.uid == rustix::process::geteuid().as_raw(),
            Peers::Uids(set) => set.contains(&peer.uid),
            Peers::Any => true,
            Peers::Custom(f) => f(peer),
        }
    }

    fn describe(&self) -> String {
        match self {
            Peers::SameUser => format!(
                "uid {} (the same user as this process)",
                rustix::process::geteuid().as_raw()
            ),
            Peers::Uids(set) => format!("one of uids {set:?}"),
            Peers::Any => "anyone".into(),
            Peers::Custom(_) => "a peer the custom predicate accepts".into(),
        }
    }

    pub(crate) fn check(&self, role: &'static str, peer: &PeerCred) -> Result<(), PassError> {
        if self.allows(peer) {
            Ok(())
        } else {
            Err(PassError::PeerNotAllowed {
                role,
                pid: peer.pid,
                uid: peer.uid,
                expected: self.describe(),
            })
        }
    }
}

impl fmt::Debug for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Checks a socket path's length.
pub(crate) fn check_path(path: &std::path::Path) -> Result<(), PassError> {
    use std::os::unix::ffi::OsStrExt;
    let len = path.as_os_str().as_bytes().len();
    if len > crate::socket::MAX_UNIX_PATH {
        return Err(PassError::PathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    if len == 0 || path.as_os_str().as_bytes().contains(&0) {
        return Err(PassError::BadPath {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_example_bytes() {
        let m = Meta::new().with("name", "http");
        let b = m.to_bytes().unwrap();
        assert_eq!(b, [4, b'n', b'a', b'm', b'e', 0, 4, b'h', b't', b't', b'p']);
        assert_eq!(Meta::from_bytes(&b).unwrap(), m);
        assert!(Meta::from_bytes(&[0]).is_err());
        let dup = [1, b'a', 0, 0, 1, b'a', 0, 0];
        assert!(
            Meta::from_bytes(&dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    /// The session shown in the module docs, byte for byte.
    #[test]
    fn documented_example_bytes() {
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(hex(&wire::hello(VERSION)), "48 4F 56 52 00 01 00 00");
        let frames = wire::encode_record(1, &Meta::new().with("name", "http").into()).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].fds, 0..1);
        assert_eq!(
            hex(&frames[0].bytes),
            "01 01 00 01 00 00 00 01 00 00 00 0B 04 6E 61 6D 65 00 04 68 74 74 70"
        );
        assert_eq!(
            hex(&wire::encode_end(1)),
            "03 00 00 00 00 00 00 01 00 00 00 00"
        );
        assert_eq!(
            hex(&wire::encode_ack(1)),
            "04 00 00 00 00 00 00 01 00 00 00 00"
        );
    }

    #[test]
    fn long_path_message() {
        let p = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let e = check_path(&p).unwrap_err().to_string();
        assert!(e.contains("at most 107 bytes"), "{e}");
        assert!(e.contains("shorter directory"), "{e}");
    }
}
