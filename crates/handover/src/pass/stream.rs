//! One session on a connected stream: [`Sender`] (server side) and
//! [`Receiver`] (client side) for std, [`AsyncSender`] and [`AsyncReceiver`]
//! for tokio.
//!
//! All reads use `MSG_CMSG_CLOEXEC` and `MSG_DONTWAIT` after waiting for
//! readiness with the session's deadline, so the blocking mode of the
//! stream does not matter and is never changed.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::wire::{self, Decoder, Event, Side};
use super::{ClosedDuring, MAX_FDS_PER_MESSAGE, Malformed, Metadata, PassError, Record, VERSION};

/// Control buffer space for one frame's descriptors.
const CONTROL_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE));

/// What one `recvmsg` brought.
pub(crate) struct Chunk {
    pub(crate) n: usize,
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) truncated: bool,
}

/// One non-blocking `recvmsg` of at most `buf.len()` bytes. Descriptors are
/// owned from the moment they arrive (and close-on-exec).
pub(crate) fn recv_nb(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<Chunk> {
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let r = rustix::net::recvmsg(
        fd,
        &mut iov,
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = msg {
            fds.extend(it);
        }
    }
    Ok(Chunk {
        n: r.bytes,
        fds,
        truncated: r.flags.contains(ReturnFlags::CTRUNC),
    })
}

/// One non-blocking `sendmsg` of `bytes` with `fds` attached to the first
/// byte (no ancillary data when `fds` is empty). Never raises `SIGPIPE`.
pub(crate) fn send_nb(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<usize> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    if fds.is_empty() {
        return Ok(rustix::net::send(fd, bytes, flags)?);
    }
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_FDS_PER_MESSAGE || !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors do not fit in one message (at most {MAX_FDS_PER_MESSAGE})",
                fds.len()
            ),
        ));
    }
    Ok(rustix::net::sendmsg(
        fd,
        &[IoSlice::new(bytes)],
        &mut control,
        flags,
    )?)
}

/// The deadline of a session and the timeout it came from (for messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) timeout: Duration,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            at: now
                .checked_add(timeout)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
            timeout,
        }
    }

    fn expired(&self, waiting_for: &'static str) -> PassError {
        PassError::Timeout {
            waiting_for,
            after: self.timeout,
        }
    }
}

/// Waits until `fd` is ready for `events`, or the deadline passes.
fn wait(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Deadline,
    waiting_for: &'static str,
) -> Result<(), PassError> {
    loop {
        let now = Instant::now();
        if now >= deadline.at {
            return Err(deadline.expired(waiting_for));
        }
        let left = Timespec::try_from(deadline.at - now).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut pfd = [PollFd::from_borrowed_fd(fd, events)];
        match rustix::event::poll(&mut pfd, Some(&left)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(PassError::io("waiting on the connection (poll)", e)),
        }
    }
}

/// Writes a whole frame, its descriptors with its first byte.
fn write_frame(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Deadline,
) -> Result<(), PassError> {
    const WAITING_FOR: &str = "the peer to read what was sent";
    let mut sent = 0;
    while sent < bytes.len() {
        if Instant::now() >= deadline.at {
            return Err(deadline.expired(WAITING_FOR));
        }
        // Try first; wait for room only when the socket buffer is full.
        let attach = if sent == 0 { fds } else { &[] };
        match send_nb(fd, &bytes[sent..], attach) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait(fd, PollFlags::OUT, deadline, WAITING_FOR)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(write_error(e)),
        }
    }
    Ok(())
}

fn write_error(e: std::io::Error) -> PassError {
    match e.raw_os_error() {
        Some(libc::EPIPE) | Some(libc::ECONNRESET) => PassError::Closed {
            during: ClosedDuring::WhileSending,
        },
        _ => PassError::io("sending on the connection", e),
    }
}

/// Applies one received chunk to the decoder.
fn apply(
    decoder: &mut Decoder,
    buf: &[u8],
    chunk: Chunk,
) -> Result<Option<Option<Event>>, PassError> {
    if chunk.truncated {
        decoder.abort();
        return Err(PassError::ControlTruncated);
    }
    if chunk.n == 0 {
        drop(chunk.fds);
        decoder.eof()?;
        return Ok(Some(None));
    }
    Ok(decoder.feed(&buf[..chunk.n], chunk.fds)?.map(Some))
}

/// Reads until the decoder produces an event; `None` at a clean EOF after
/// the last frame.
fn read_event(
    fd: BorrowedFd<'_>,
    decoder: &mut Decoder,
    buf: &mut Vec<u8>,
    deadline: Deadline,
    waiting_for: &'static str,
) -> Result<Option<Event>, PassError> {
    loop {
        let want = decoder.want();
        if want == 0 {
            return Ok(None);
        }
        buf.resize(want, 0);
        if Instant::now() >= deadline.at {
            decoder.abort();
            return Err(deadline.expired(waiting_for));
        }
        // Try first; wait for data only when there is none yet.
        let chunk = match recv_nb(fd, &mut buf[..want]) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = wait(fd, PollFlags::IN, deadline, waiting_for) {
                    decoder.abort();
                    return Err(e);
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                decoder.abort();
                return Err(read_error(e));
            }
        };
        if let Some(e) = apply(decoder, buf, chunk)? {
            return Ok(e);
        }
    }
}

fn read_error(e: std::io::Error) -> PassError {
    if e.raw_os_error() == Some(libc::ECONNRESET) {
        PassError::Closed {
            during: ClosedDuring::Reset,
        }
    } else {
        PassError::io("receiving on the connection", e)
    }
}

fn unexpected(expected: &'static str, found: &Event) -> PassError {
    PassError::Malformed {
        reason: Malformed::Unexpected {
            expected,
            found: match found {
                Event::Hello { .. } => "a hello",
                Event::Record { .. } => "a record",
                Event::End { .. } => "END",
                Event::Ack { .. } => "ACK",
            },
        },
    }
}

fn check_ack(sent: u32, event: Option<Event>) -> Result<(), PassError> {
    match event {
        Some(Event::Ack { records }) if records == sent => Ok(()),
        Some(Event::Ack { records }) => Err(PassError::Malformed {
            reason: Malformed::AckCount {
                sent,
                acked: records,
            },
        }),
        Some(e) => Err(unexpected("ACK", &e)),
        None => Err(PassError::Closed {
            during: ClosedDuring::BeforeAck,
        }),
    }
}

/// A client whose handshake fails because the server closed the
/// connection was most likely refused: say so.
fn refused(e: PassError) -> PassError {
    match e {
        PassError::Closed { .. } => PassError::Closed {
            during: ClosedDuring::ServerHello,
        },
        e => e,
    }
}

fn check_hello(event: Option<Event>) -> Result<u16, PassError> {
    match event {
        Some(Event::Hello { version }) => Ok(version),
        Some(e) => Err(unexpected("a hello", &e)),
        None => Err(PassError::Closed {
            // On the client side, `refused` makes this ServerHello.
            during: ClosedDuring::ClientHello,
        }),
    }
}

fn record_or_end(event: Option<Event>) -> Result<Option<Record>, PassError> {
    match event {
        Some(Event::Record { fds, meta }) => Ok(Some(Record { fds, meta })),
        Some(Event::End { .. }) | None => Ok(None),
        Some(e) => Err(unexpected("a record or END", &e)),
    }
}

fn check_send(finished: bool, failed: bool, fds: usize) -> Result<(), PassError> {
    if failed {
        return Err(PassError::SessionFailed);
    }
    if finished {
        return Err(PassError::SessionFinished);
    }
    if fds == 0 {
        return Err(PassError::EmptyRecord);
    }
    Ok(())
}

/// The server side of one session on a connected std [`UnixStream`].
///
/// ```no_run
/// # use std::os::fd::AsFd;
/// # fn main() -> Result<(), handover::pass::PassError> {
/// use std::time::Duration;
/// use handover::pass::{Meta, Sender};
/// # let (stream, _) = std::os::unix::net::UnixStream::pair().unwrap();
/// # let file = std::fs::File::open("/dev/null").unwrap();
/// let mut s = Sender::handshake(&stream, Duration::from_secs(10))?;
/// s.send(&[file.as_fd()], &Meta::new().with("name", "log").into())?;
/// s.finish()?; // END, then wait for the client's ACK
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Sender<'a> {
    fd: BorrowedFd<'a>,
    deadline: Deadline,
    decoder: Decoder,
    buf: Vec<u8>,
    records: u32,
    finished: bool,
    failed: bool,
}

impl<'a> Sender<'a> {
    /// Reads the client's hello and answers with this side's, all within
    /// `timeout`, which also bounds everything later on this session.
    pub fn handshake(stream: &'a UnixStream, timeout: Duration) -> Result<Sender<'a>, PassError> {
        let mut s = Sender {
            fd: stream.as_fd(),
            deadline: Deadline::after(timeout),
            decoder: Decoder::new(Side::Server),
            buf: Vec::new(),
            records: 0,
            finished: false,
            failed: false,
        };
        let ev = read_event(
            s.fd,
            &mut s.decoder,
            &mut s.buf,
            s.deadline,
            "the client's hello",
        )?;
        check_hello(ev)?;
        write_frame(s.fd, &wire::hello(VERSION), &[], s.deadline)?;
        Ok(s)
    }

    /// Sends one record: `fds` (at least one) with `meta`, in batches of
    /// at most 253 descriptors.
    pub fn send(&mut self, fds: &[BorrowedFd<'_>], meta: &Metadata) -> Result<(), PassError> {
        check_send(self.finished, self.failed, fds.len())?;
        let frames = wire::encode_record(fds.len(), meta)?;
        for f in &frames {
            let r = write_frame(self.fd, &f.bytes, &fds[f.fds.clone()], self.deadline);
            if r.is_err() {
                self.failed = true;
            }
            r?;
        }
        self.records += 1;
        Ok(())
    }

    /// Sends `END` and waits for the client's `ACK`: when this returns
    /// `Ok`, the client has every record. Calling it again does nothing.
    pub fn finish(&mut self) -> Result<(), PassError> {
        if self.finished {
            return Ok(());
        }
        check_send(false, self.failed, 1)?;
        self.finished = true;
        write_frame(self.fd, &wire::encode_end(self.records), &[], self.deadline)?;
        let ev = read_event(
            self.fd,
            &mut self.decoder,
            &mut self.buf,
            self.deadline,
            "the client's ACK",
        )?;
        check_ack(self.records, ev)
    }

    /// Records sent so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Whether [`finish`](Sender::finish) was called.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// When this session's time runs out.
    pub fn deadline(&self) -> Instant {
        self.deadline.at
    }
}

/// The client side of one session on a connected std [`UnixStream`].
///
/// ```no_run
/// # fn main() -> Result<(), handover::pass::PassError> {
/// use std::time::Duration;
/// use handover::pass::Receiver;
/// # let (stream, _) = std::os::unix::net::UnixStream::pair().unwrap();
/// let mut r = Receiver::handshake(&stream, Duration::from_secs(10))?;
/// let mut records = Vec::new();
/// while let Some(record) = r.next_record()? {
///     records.push(record);
/// }
/// r.ack()?; // tell the server everything arrived
/// r.wait_closed()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Receiver<'a> {
    fd: BorrowedFd<'a>,
    deadline: Deadline,
    decoder: Decoder,
    buf: Vec<u8>,
    acked: bool,
}

impl<'a> Receiver<'a> {
    /// Sends this side's hello and reads the server's, all within
    /// `timeout`, which also bounds everything later on this session.
    pub fn handshake(stream: &'a UnixStream, timeout: Duration) -> Result<Receiver<'a>, PassError> {
        Receiver::with_deadline(stream, Deadline::after(timeout))
    }

    pub(crate) fn with_deadline(
        stream: &'a UnixStream,
        deadline: Deadline,
    ) -> Result<Receiver<'a>, PassError> {
        let mut r = Receiver {
            fd: stream.as_fd(),
            deadline,
            decoder: Decoder::new(Side::Client),
            buf: Vec::new(),
            acked: false,
        };
        write_frame(r.fd, &wire::hello(VERSION), &[], r.deadline).map_err(refused)?;
        let ev = read_event(
            r.fd,
            &mut r.decoder,
            &mut r.buf,
            r.deadline,
            "the server's hello",
        )
        .map_err(refused)?;
        check_hello(ev).map_err(refused)?;
        Ok(r)
    }

    /// The next record, or `None` once the server sent `END`.
    pub fn next_record(&mut self) -> Result<Option<Record>, PassError> {
        let ev = read_event(
            self.fd,
            &mut self.decoder,
            &mut self.buf,
            self.deadline,
            "the next frame from the server",
        )?;
        record_or_end(ev)
    }

    /// Records received so far.
    pub fn records(&self) -> u32 {
        self.decoder.records()
    }

    /// Whether the server's `END` was received.
    pub fn is_done(&self) -> bool {
        self.decoder.is_done()
    }

    /// Tells the server that every record arrived. Only after `END`
    /// ([`next_record`](Receiver::next_record) returned `None`).
    pub fn ack(&mut self) -> Result<(), PassError> {
        if !self.decoder.is_done() {
            return Err(PassError::AckBeforeEnd);
        }
        if !self.acked {
            self.acked = true;
            let ack = wire::encode_ack(self.decoder.records());
            write_frame(self.fd, &ack, &[], self.deadline)?;
        }
        Ok(())
    }

    /// Waits for the server to close the connection, which it does after
    /// it ran every step that follows the client's `ACK`.
    pub fn wait_closed(&mut self) -> Result<(), PassError> {
        let mut b = [0u8; 1];
        loop {
            wait(
                self.fd,
                PollFlags::IN,
                self.deadline,
                "the server to close the connection",
            )?;
            match recv_nb(self.fd, &mut b) {
                Ok(c) if c.n == 0 && c.fds.is_empty() => return Ok(()),
                Ok(c) => {
                    return Err(PassError::Malformed {
                        reason: Malformed::TrailingData {
                            bytes: c.n,
                            fds: c.fds.len(),
                        },
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => return Ok(()),
                Err(e) => return Err(read_error(e)),
            }
        }
    }

    /// When this session's time runs out.
    pub fn deadline(&self) -> Instant {
        self.deadline.at
    }
}

#[cfg(feature = "tokio")]
mod asynch {
    use super::*;
    use tokio::io::Interest;
    use tokio::net::UnixStream;

    async fn write_frame(
        stream: &UnixStream,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Deadline,
    ) -> Result<(), PassError> {
        let mut sent = 0;
        while sent < bytes.len() {
            let attach = if sent == 0 { fds } else { &[] };
            let io = stream.async_io(Interest::WRITABLE, || {
                send_nb(stream.as_fd(), &bytes[sent..], attach)
            });
            match tokio::time::timeout_at(deadline.at.into(), io).await {
                Err(_) => return Err(deadline.expired("the peer to read what was sent")),
                Ok(Ok(n)) => sent += n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(write_error(e)),
            }
        }
        Ok(())
    }

    async fn read_event(
        stream: &UnixStream,
        decoder: &mut Decoder,
        buf: &mut Vec<u8>,
        deadline: Deadline,
        waiting_for: &'static str,
    ) -> Result<Option<Event>, PassError> {
        loop {
            let want = decoder.want();
            if want == 0 {
                return Ok(None);
            }
            buf.resize(want, 0);
            let io = stream.async_io(Interest::READABLE, || recv_nb(stream.as_fd(), &mut buf[..]));
            let chunk = match tokio::time::timeout_at(deadline.at.into(), io).await {
                Err(_) => {
                    decoder.abort();
                    return Err(deadline.expired(waiting_for));
                }
                Ok(Ok(c)) => c,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    decoder.abort();
                    return Err(read_error(e));
                }
            };
            if let Some(e) = apply(decoder, buf, chunk)? {
                return Ok(e);
            }
        }
    }

    /// The server side of one session on a connected tokio
    /// [`UnixStream`]; see [`Sender`].
    #[derive(Debug)]
    pub struct AsyncSender<'a> {
        stream: &'a UnixStream,
        deadline: Deadline,
        decoder: Decoder,
        buf: Vec<u8>,
        records: u32,
        finished: bool,
        failed: bool,
    }

    impl<'a> AsyncSender<'a> {
        /// Reads the client's hello and answers, within `timeout`, which
        /// also bounds everything later on this session.
        pub async fn handshake(
            stream: &'a UnixStream,
            timeout: Duration,
        ) -> Result<AsyncSender<'a>, PassError> {
            let mut s = AsyncSender {
                stream,
                deadline: Deadline::after(timeout),
                decoder: Decoder::new(Side::Server),
                buf: Vec::new(),
                records: 0,
                finished: false,
                failed: false,
            };
            let ev = read_event(
                stream,
                &mut s.decoder,
                &mut s.buf,
                s.deadline,
                "the client's hello",
            )
            .await?;
            check_hello(ev)?;
            write_frame(stream, &wire::hello(VERSION), &[], s.deadline).await?;
            Ok(s)
        }

        /// Sends one record; see [`Sender::send`].
        pub async fn send(
            &mut self,
            fds: &[BorrowedFd<'_>],
            meta: &Metadata,
        ) -> Result<(), PassError> {
            check_send(self.finished, self.failed, fds.len())?;
            let frames = wire::encode_record(fds.len(), meta)?;
            for f in &frames {
                let r =
                    write_frame(self.stream, &f.bytes, &fds[f.fds.clone()], self.deadline).await;
                if r.is_err() {
                    self.failed = true;
                }
                r?;
            }
            self.records += 1;
            Ok(())
        }

        /// Sends `END` and waits for the `ACK`; see [`Sender::finish`].
        pub async fn finish(&mut self) -> Result<(), PassError> {
            if self.finished {
                return Ok(());
            }
            check_send(false, self.failed, 1)?;
            self.finished = true;
            write_frame(
                self.stream,
                &wire::encode_end(self.records),
                &[],
                self.deadline,
            )
            .await?;
            let ev = read_event(
                self.stream,
                &mut self.decoder,
                &mut self.buf,
                self.deadline,
                "the client's ACK",
            )
            .await?;
            check_ack(self.records, ev)
        }

        /// Records sent so far.
        pub fn records(&self) -> u32 {
            self.records
        }
    }

    /// The client side of one session on a connected tokio
    /// [`UnixStream`]; see [`Receiver`].
    #[derive(Debug)]
    pub struct AsyncReceiver<'a> {
        stream: &'a UnixStream,
        deadline: Deadline,
        decoder: Decoder,
        buf: Vec<u8>,
        acked: bool,
    }

    impl<'a> AsyncReceiver<'a> {
        /// Sends this side's hello and reads the server's, within
        /// `timeout`, which also bounds everything later on this session.
        pub async fn handshake(
            stream: &'a UnixStream,
            timeout: Duration,
        ) -> Result<AsyncReceiver<'a>, PassError> {
            AsyncReceiver::with_deadline(stream, Deadline::after(timeout)).await
        }

        pub(crate) async fn with_deadline(
            stream: &'a UnixStream,
            deadline: Deadline,
        ) -> Result<AsyncReceiver<'a>, PassError> {
            let mut r = AsyncReceiver {
                stream,
                deadline,
                decoder: Decoder::new(Side::Client),
                buf: Vec::new(),
                acked: false,
            };
            write_frame(stream, &wire::hello(VERSION), &[], r.deadline)
                .await
                .map_err(refused)?;
            let ev = read_event(
                stream,
                &mut r.decoder,
                &mut r.buf,
                r.deadline,
                "the server's hello",
            )
            .await
            .map_err(refused)?;
            check_hello(ev).map_err(refused)?;
            Ok(r)
        }

        /// The next record, or `None` once the server sent `END`.
        pub async fn next_record(&mut self) -> Result<Option<Record>, PassError> {
            let ev = read_event(
                self.stream,
                &mut self.decoder,
                &mut self.buf,
                self.deadline,
                "the next frame from the server",
            )
            .await?;
            record_or_end(ev)
        }

        /// Records received so far.
        pub fn records(&self) -> u32 {
            self.decoder.records()
        }

        /// Tells the server every record arrived; see [`Receiver::ack`].
        pub async fn ack(&mut self) -> Result<(), PassError> {
            if !self.decoder.is_done() {
                return Err(PassError::AckBeforeEnd);
            }
            if !self.acked {
                self.acked = true;
                let ack = wire::encode_ack(self.decoder.records());
                write_frame(self.stream, &ack, &[], self.deadline).await?;
            }
            Ok(())
        }

        /// Waits for the server to close the connection; see
        /// [`Receiver::wait_closed`].
        pub async fn wait_closed(&mut self) -> Result<(), PassError> {
            let mut b = [0u8; 1];
            let io = self
                .stream
                .async_io(Interest::READABLE, || recv_nb(self.stream.as_fd(), &mut b));
            match tokio::time::timeout_at(self.deadline.at.into(), io).await {
                Err(_) => Err(self.deadline.expired("the server to close the connection")),
                Ok(Ok(c)) if c.n == 0 && c.fds.is_empty() => Ok(()),
                Ok(Ok(c)) => Err(PassError::Malformed {
                    reason: Malformed::TrailingData {
                        bytes: c.n,
                        fds: c.fds.len(),
                    },
                }),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => Ok(()),
                Ok(Err(e)) => Err(read_error(e)),
            }
        }
    }
}

#[cfg(feature = "tokio")]
pub use asynch::{AsyncReceiver, AsyncSender};
