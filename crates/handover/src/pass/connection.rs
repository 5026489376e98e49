//! Handing established HTTP/1.1 keep-alive connections to a successor
//! process: the protocol, and its codec without I/O.
//!
//! When a server upgrades, the old process ends its keep-alive connections
//! (losslessly, with `Connection: close`, but every client then opens a new
//! connection: a reconnect storm per deploy, a TLS handshake storm, cold
//! connection pools). With this protocol the old process (the **giver**)
//! passes each connection that is between two requests to the new process
//! (the **taker**), together with the bytes it had already read from it and
//! not answered yet (a pipelined request, or the first part of one); the
//! taker serves the connection from then on. The client sees nothing but a
//! different pid in its answers.
//!
//! The HTTP side ([`drain::http::Handoff`](crate::drain::http::Handoff)) is
//! what servers use: it decides when a connection can go, and serves the
//! ones that come. This module documents the protocol so that the two
//! processes need not be the same program (any server of any language can
//! speak it), with its constants. Its codec is internal: it never touches a
//! socket, and it is unit-tested, property-tested and fuzzed (the `handoff`
//! target in `fuzz/`).
//!
//! # How the two processes meet
//!
//! - **Self-upgrade** ([`Upgrader`](crate::upgrade::Upgrader)): when the
//!   server asked for hand-overs ([`Options::handoff`]), each upgrade makes
//!   a Unix socket pair and passes one end to the new process among its
//!   inherited descriptors, under the name
//!   [`HANDOFF_FD_NAME`](crate::upgrade::HANDOFF_FD_NAME)
//!   (`handover.handoff`). Once the new process is ready, the old one says
//!   hello on its end and waits (5 s at most) for `WELCOME` or `REFUSE`
//!   before it starts draining. A new process that does not take the
//!   descriptor (an older version, or one that does not hand over) has it
//!   closed by its `ready()`: the old process reads end-of-file and drains
//!   as before.
//! - **`handover run` generations**: the supervisor gives every generation
//!   the same path in `HANDOVER_HANDOFF_SOCKET` (in its private socket
//!   directory). A generation that takes connections binds a Unix socket
//!   there before it reports ready (it binds a temporary name and renames it
//!   over the path, so the newest generation always owns the path); a
//!   generation that drains (after the supervisor's stop signal) connects to
//!   the path, and is the giver on that connection. A draining generation
//!   that reaches itself (no newer generation bound the path: a final stop)
//!   or nobody, gives nothing and drains as before.
//!
//! Both ends check the other with `SO_PEERCRED`: only processes of the same
//! user take part.
//!
//! # Wire format, version 1
//!
//! A connection is a byte stream (`AF_UNIX`, `SOCK_STREAM`). Integers are
//! unsigned, big-endian. A descriptor travels as `SCM_RIGHTS` ancillary data
//! attached to the first byte of its frame (as in [`pass`](super)'s format).
//!
//! **1. Hello.** The giver sends 8 bytes, the taker answers with 8 bytes of
//! the same layout:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"HOVC"` (`48 4F 56 43`) |
//! | 4 | 2 | version: the giver sends the highest it speaks (≥ 1); the taker answers with the one it will use (≤ the giver's); this is version 1 |
//! | 6 | 2 | flags: 0 |
//!
//! **2. Frames.** Then each side sends frames: a 12-byte header and `length`
//! bytes of payload.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | type (below) |
//! | 1 | 1 | flags: 0 |
//! | 2 | 2 | `nfds`: descriptors attached: 1 for `CONN`, 0 for the others |
//! | 4 | 4 | `id` (below) |
//! | 8 | 4 | `length` of the payload |
//!
//! | type | name | from | `id` | payload |
//! |---|---|---|---|---|
//! | 1 | `WELCOME` | taker | 0 | 8 bytes: the most connections the taker takes in this session (`u32`), the most buffered bytes it takes with one connection (`u32`, at most [`MAX_BUFFERED`]) |
//! | 2 | `REFUSE` | taker | 0 | why, UTF-8, at most [`MAX_REASON_LEN`] bytes |
//! | 3 | `CONN` | giver | 1 for the first, then one more each time | 1 byte of connection state (below), then the bytes already read from the connection and not answered, at most [`MAX_BUFFERED`] |
//! | 4 | `TAKEN` | taker | the `CONN`'s | none |
//! | 5 | `DECLINED` | taker | the `CONN`'s | why, UTF-8, at most [`MAX_REASON_LEN`] bytes |
//! | 6 | `END` | giver | how many `CONN`s were sent | none |
//!
//! The taker's first frame is `WELCOME` or `REFUSE`; after `REFUSE` it
//! closes the connection (a taker that cannot speak any version the giver
//! offers answers with its own version and `REFUSE`). After `WELCOME` the
//! giver sends `CONN` frames, each carrying one TCP connection, whenever one
//! reaches a point where it can move, and may wait for each answer before
//! it sends the next; the taker answers every `CONN`, in order, with
//! `TAKEN` or `DECLINED`. The giver ends with `END` (or by closing the
//! connection: it may exit once it has nothing left to give).
//!
//! **Connection state** (the first payload byte of `CONN`):
//!
//! - 1 ([`STATE_HTTP1`]): an HTTP/1.x connection between two requests. The
//!   buffered bytes, if any, are the start of what the client sent next (a
//!   pipelined request, or the first part of one): the taker reads them
//!   before anything from the socket.
//! - 2 ([`STATE_UNIDENTIFIED`]): a connection whose protocol is not known
//!   yet: the client sent nothing, or fewer than 24 bytes that match the
//!   start of the HTTP/2 preface. The buffered bytes are all it sent.
//!
//! A taker declines a state it does not know.
//!
//! **Who owns a connection.** Until the giver has read the answer to a
//! `CONN`, it neither reads from nor writes to that connection. `TAKEN`
//! means the taker serves it from now on: the giver closes its descriptor
//! (without `shutdown(2)`, which would end the connection for both).
//! `DECLINED` means the taker closed its descriptor without reading: the
//! giver serves the connection on (and ends it the old way). If the session
//! fails after a `CONN` was sent and before its answer (the taker died, a
//! timeout), the giver cannot know who owns the connection and closes its
//! descriptor without shutting it down.
//!
//! **Errors.** Any field outside its range, a descriptor count other than
//! `nfds`, descriptors with any other read, `MSG_CTRUNC`, or end-of-file in
//! the middle of a frame ends the session: the reader closes every
//! descriptor of the unfinished frame. Descriptors are received with
//! `MSG_CMSG_CLOEXEC`.
//!
//! **Checks by the taker** before it answers `TAKEN`: the descriptor is a
//! connected TCP stream socket (its peer address is logged), the session
//! stays within the limits it announced, the state is one it knows, and the
//! taker is not draining itself.
//!
//! A session that hands over one idle connection:
//!
//! ```text
//! G→T  48 4F 56 43 00 01 00 00                        hello, version 1
//! T→G  48 4F 56 43 00 01 00 00                        hello, version 1
//! T→G  01 00 00 00 00 00 00 00 00 00 00 08            WELCOME, 8 bytes:
//!      00 01 00 00 00 01 00 00                          65536 connections, 65536 bytes each
//! G→T  03 00 00 01 00 00 00 01 00 00 00 01  [1 fd]    CONN 1, 1 byte:
//!      01                                               HTTP/1.x, nothing buffered
//! T→G  04 00 00 00 00 00 00 01 00 00 00 00            TAKEN 1
//! G→T  06 00 00 00 00 00 00 01 00 00 00 00            END, 1 connection
//! ```
//!
//! [`Options::handoff`]: crate::upgrade::Options::handoff

pub(crate) mod codec;
#[cfg(feature = "tokio")]
pub(crate) mod session;

pub(crate) use codec::{Decoder, Message, Side, encode};
pub use codec::{MAGIC, MAX_BUFFERED, MAX_REASON_LEN, STATE_HTTP1, STATE_UNIDENTIFIED, VERSION};
