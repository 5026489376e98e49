//! Handing idle HTTP/1.1 keep-alive connections to a successor process
//! ([`Handoff`]), and taking them from a predecessor; the protocol is
//! [`pass::connection`](crate::pass::connection).

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::conn::{ConnState, DrainService};
use super::sniff::Rewind;
use super::{BoxError, HttpOptions};
use crate::drain::{Drain, Tracked};
use crate::pass::PassError;
use crate::pass::connection::{
    self, Decoder, MAX_BUFFERED, Message, STATE_HTTP1, STATE_UNIDENTIFIED, Side, session,
};

/// The environment variable in which `handover run` gives each generation
/// the path where generations meet to hand connections over (see
/// [`Handoff::listen_at`] and [`Handoff::give_at`]).
pub const HANDOFF_SOCKET_ENV: &str = "HANDOVER_HANDOFF_SOCKET";

/// How long the giver waits for the taker's hello and `WELCOME`, and for
/// each answer to a `CONN`.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`Handoff::give_to`] found no taker for this process's connections.
///
/// None of these loses a connection: the connections are then drained the
/// usual way (`Connection: close` on their next response).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// The new process refused (an incompatible version, or it is
    /// draining itself).
    #[error(
        "the new process refused to take connections: {reason}; they are drained the usual \
         way (Connection: close)"
    )]
    Refused {
        /// Its reason.
        reason: String,
    },
    /// The session failed: the new process does not take connections (an
    /// older version, or one without a [`Handoff`] in its
    /// [`HttpOptions`]), did not answer in time, or broke the protocol.
    #[error(
        "no connection hand-over with the new process ({source}); connections are drained the \
         usual way (Connection: close)"
    )]
    Session {
        /// What failed.
        #[source]
        source: PassError,
    },
    /// The session's socket could not be set up.
    #[error("setting up the connection hand-over socket failed: {source}")]
    Io {
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl From<PassError> for HandoffError {
    fn from(source: PassError) -> Self {
        HandoffError::Session { source }
    }
}

/// Hands this process's idle HTTP/1.1 keep-alive connections to its
/// successor when it drains, and serves the connections its predecessor
/// hands to it (feature `hyper`).
///
/// Without it, each keep-alive connection of a draining server is ended
/// (without loss: its next response carries `Connection: close`), so every
/// client reconnects after every upgrade. With it, [`serve`](super::serve)
/// passes each connection that is between two requests to the new process
/// (the socket itself, over a Unix socket, with the bytes already read from
/// it and not answered: a pipelined request, or the first part of one),
/// which serves it from then on. The client notices nothing.
///
/// Put the same `Handoff` in the [`HttpOptions`] of [`serve`](super::serve)
/// ([`HttpOptions::handoff`]); then, in a new process,
/// [`take_from`](Handoff::take_from) the session socket the predecessor
/// gave, and in an old one, once its successor is ready and before the
/// drain closes, [`give_to`](Handoff::give_to) the successor's. The
/// [`Upgrader`](crate::upgrade::Upgrader) does both when asked to
/// ([`Options::handoff`](crate::upgrade::Options::handoff) and
/// [`RunOptions::handoff`](crate::upgrade::RunOptions::handoff)).
///
/// What is handed over: plain TCP connections (not TLS, not Unix sockets)
/// speaking HTTP/1.1, at a request boundary, when the last request neither
/// asked to close (`Connection: close`, HTTP/1.0), had a body, nor was
/// upgraded; and connections that have sent nothing yet (or part of the
/// HTTP/2 preface) when the drain begins. A request in progress when the drain begins is finished first
/// (its response is sent without `Connection: close`), then the connection
/// goes. HTTP/2 connections get the two-step GOAWAY as before (the client
/// opens one new connection). Any refusal or failure falls back to the
/// usual drain for the connections concerned: nothing is lost.
///
/// Cheap to clone (clones share state).
#[derive(Clone)]
pub struct Handoff {
    max_connections: u32,
    max_buffered: u32,
    inner: Arc<Inner>,
}

struct Inner {
    sessions_tx: mpsc::UnboundedSender<std::os::unix::net::UnixStream>,
    sessions_rx: Mutex<Option<mpsc::UnboundedReceiver<std::os::unix::net::UnixStream>>>,
    /// Set once a successor welcomed this process's connections.
    giver: Mutex<Option<mpsc::UnboundedSender<Offer>>>,
    giving: AtomicBool,
    /// Connections offered (the successor's limit applies to it).
    offered: AtomicU32,
    given_limit: AtomicU32,
    given: AtomicU64,
    taken: AtomicU64,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("max_connections", &self.max_connections)
            .field("max_buffered", &self.max_buffered)
            .field("giving", &self.inner.giving.load(Relaxed))
            .field("given", &self.given())
            .field("taken", &self.taken())
            .finish()
    }
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff::new()
    }
}

/// One connection offered to the successor.
struct Offer {
    state: u8,
    fd: OwnedFd,
    buffered: Vec<u8>,
    reply: oneshot::Sender<Answer>,
}

enum Answer {
    Taken,
    /// Declined, or never sent: the connection is still this process's.
    Back(OwnedFd, Vec<u8>),
    /// Sent, and the session failed before the answer: nobody knows who
    /// has it; this process closes its descriptor (without a shutdown).
    Lost,
}

impl Handoff {
    /// A hand-over that takes at most 65 536 connections per session with
    /// at most 64 KiB of buffered bytes each.
    pub fn new() -> Handoff {
        let (sessions_tx, sessions_rx) = mpsc::unbounded_channel();
        Handoff {
            max_connections: 65_536,
            max_buffered: 64 * 1024,
            inner: Arc::new(Inner {
                sessions_tx,
                sessions_rx: Mutex::new(Some(sessions_rx)),
                giver: Mutex::new(None),
                giving: AtomicBool::new(false),
                offered: AtomicU32::new(0),
                given_limit: AtomicU32::new(0),
                given: AtomicU64::new(0),
                taken: AtomicU64::new(0),
            }),
        }
    }

    /// The most connections this process takes from one predecessor
    /// (default 65 536); more are declined, and drained by the
    /// predecessor the usual way.
    pub fn max_connections(mut self, max: u32) -> Handoff {
        self.max_connections = max;
        self
    }

    /// The most bytes read and not answered yet that may come with one
    /// connection (default 64 KiB, at most 1 MiB); a connection with more
    /// is declined.
    pub fn max_buffered(mut self, max: usize) -> Handoff {
        self.max_buffered = max.min(MAX_BUFFERED) as u32;
        self
    }

    /// Connections handed to a successor so far.
    pub fn given(&self) -> u64 {
        self.inner.given.load(Relaxed)
    }

    /// Connections taken from a predecessor so far.
    pub fn taken(&self) -> u64 {
        self.inner.taken.load(Relaxed)
    }

    /// Serves the connections a predecessor gives on `session` (its end of
    /// the session socket): [`serve`](super::serve), with this `Handoff`
    /// in its options, answers the predecessor's hello and serves every
    /// connection it takes with the same service.
    pub fn take_from(&self, session: std::os::unix::net::UnixStream) {
        // The receiver lives as long as `inner`: this cannot fail.
        let _ = self.inner.sessions_tx.send(session);
    }

    /// Offers this process's connections to a successor on `session` (this
    /// process's end of the session socket): says hello and waits (at most
    /// `timeout`) for the successor to welcome or refuse them. Call it once
    /// the successor is ready and before the drain closes; once it returned
    /// `Ok`, [`serve`](super::serve) hands each connection over as it
    /// reaches a request boundary.
    ///
    /// # Errors
    ///
    /// The successor refused, does not take connections, or did not answer
    /// in time: connections are then drained the usual way.
    pub async fn give_to(
        &self,
        session: std::os::unix::net::UnixStream,
        timeout: Duration,
    ) -> Result<(), HandoffError> {
        let stream = async_stream(session)?;
        check_peer(&stream)?;
        let deadline = Some((Instant::now() + timeout, timeout));
        let hello = connection::encode(&Message::<OwnedFd>::Hello {
            version: connection::VERSION,
        })?;
        session::write(&stream, &hello, &[], deadline).await?;
        let mut decoder = Decoder::new(Side::Giver);
        let waiting = "the new process's answer to the connection hand-over hello";
        match session::read(&stream, &mut decoder, deadline, waiting).await? {
            Some(Message::Hello { .. }) => {}
            _ => unreachable!("the decoder's first message is a hello"),
        }
        let (max_connections, max_buffered) =
            match session::read(&stream, &mut decoder, deadline, waiting).await? {
                Some(Message::Welcome {
                    max_connections,
                    max_buffered,
                }) => (max_connections, max_buffered),
                Some(Message::Refuse { reason }) => return Err(HandoffError::Refused { reason }),
                None => {
                    return Err(PassError::Closed {
                        during: crate::pass::ClosedDuring::BeforeWelcome,
                    }
                    .into());
                }
                Some(_) => unreachable!("the decoder allows only WELCOME or REFUSE here"),
            };
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.given_limit.store(max_connections, Relaxed);
        *self.inner.giver.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self.inner.giving.store(true, Relaxed);
        tracing::debug!(
            max_connections,
            max_buffered,
            "the new process takes keep-alive connections"
        );
        tokio::spawn(give_session(
            stream,
            decoder,
            rx,
            max_buffered as usize,
            self.inner.clone(),
        ));
        Ok(())
    }

    /// For generations of `handover run`: takes connections from older
    /// generations at `path` (the supervisor gives it in
    /// [`HANDOFF_SOCKET_ENV`]): binds a Unix socket under a temporary name
    /// next to it, mode 0600, and renames it over `path`, so the newest
    /// generation always owns the path; then serves every session that
    /// connects, as [`take_from`](Handoff::take_from) does. Call it from
    /// inside a tokio runtime, before the generation reports ready.
    ///
    /// # Errors
    ///
    /// The socket could not be bound or renamed (the directory is not
    /// writable, the path is too long).
    pub fn listen_at(&self, path: impl AsRef<std::path::Path>) -> Result<(), HandoffError> {
        use std::os::unix::fs::PermissionsExt;
        let path = path.as_ref();
        let io = |source| HandoffError::Io { source };
        // In the same directory (for the rename), and no longer than the
        // path itself is likely to be (`sun_path` holds 107 bytes).
        let tmp = path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(format!(".hovc-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(io)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(io)?;
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => match stream.into_std() {
                        Ok(s) => this.take_from(s),
                        Err(e) => tracing::warn!(error = %e, "hand-over socket"),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting on the hand-over socket failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(())
    }

    /// For generations of `handover run`: offers this generation's
    /// connections to the newest generation, which owns `path` (see
    /// [`listen_at`](Handoff::listen_at)), as
    /// [`give_to`](Handoff::give_to) does. Call it when told to stop
    /// (SIGTERM), before the drain closes.
    ///
    /// # Errors
    ///
    /// Nobody listens at `path`, or this generation does itself (no newer
    /// generation: a final stop), or the session fails as with `give_to`.
    pub async fn give_at(
        &self,
        path: impl AsRef<std::path::Path>,
        timeout: Duration,
    ) -> Result<(), HandoffError> {
        let stream = std::os::unix::net::UnixStream::connect(path.as_ref())
            .map_err(|source| HandoffError::Io { source })?;
        let peer = crate::pass::peer_cred(stream.as_fd())?;
        if peer.pid == std::process::id() as i32 {
            return Err(HandoffError::Refused {
                reason: "no newer generation took the hand-over socket (a final stop)".into(),
            });
        }
        self.give_to(stream, timeout).await
    }

    /// Whether connections can be offered now.
    pub(super) fn is_giving(&self) -> bool {
        self.inner.giving.load(Relaxed)
            && self.inner.offered.load(Relaxed) < self.inner.given_limit.load(Relaxed)
    }

    /// Offers one connection; `Err` gives it back (declined, or no session).
    async fn give(
        &self,
        state: u8,
        fd: OwnedFd,
        buffered: Vec<u8>,
    ) -> Result<(), (OwnedFd, Vec<u8>)> {
        let tx = self
            .inner
            .giver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(tx) = tx else {
            return Err((fd, buffered));
        };
        self.inner.offered.fetch_add(1, Relaxed);
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(offer)) = tx.send(Offer {
            state,
            fd,
            buffered,
            reply,
        }) {
            return Err((offer.fd, offer.buffered));
        }
        match answer.await {
            Ok(Answer::Taken) => Ok(()),
            Ok(Answer::Back(fd, buffered)) => Err((fd, buffered)),
            // Lost, or the session task is gone (the runtime is shutting
            // down): the descriptor is closed, without a shutdown.
            Ok(Answer::Lost) | Err(_) => Ok(()),
        }
    }

    /// The queue of sessions from predecessors, for the one `serve` that
    /// takes them.
    fn sessions(&self) -> Option<mpsc::UnboundedReceiver<std::os::unix::net::UnixStream>> {
        self.inner
            .sessions_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn async_stream(
    session: std::os::unix::net::UnixStream,
) -> Result<tokio::net::UnixStream, HandoffError> {
    session
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(session))
        .map_err(|source| HandoffError::Io { source })
}

/// Only processes of the same user take part.
fn check_peer(stream: &tokio::net::UnixStream) -> Result<(), PassError> {
    let peer = crate::pass::peer_cred(stream.as_fd())?;
    let me = rustix::process::geteuid().as_raw();
    if peer.uid != me {
        return Err(PassError::PeerNotAllowed {
            role: "other process of the connection hand-over",
            pid: peer.pid,
            uid: peer.uid,
            expected: format!("uid {me}"),
        });
    }
    Ok(())
}

/// The giver's side of a session, once welcomed: sends each offered
/// connection as it comes (without waiting for the answers to the ones
/// before: the taker answers in order), and reads the answers.
async fn give_session(
    stream: tokio::net::UnixStream,
    mut decoder: Decoder,
    mut offers: mpsc::UnboundedReceiver<Offer>,
    max_buffered: usize,
    inner: Arc<Inner>,
) {
    /// A connection sent and not answered yet.
    struct Pending {
        fd: OwnedFd,
        buffered: Vec<u8>,
        reply: oneshot::Sender<Answer>,
        sent: Instant,
    }
    let failed = AtomicBool::new(false);
    let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Pending>();
    let fail = || {
        failed.store(true, Relaxed);
        inner.giving.store(false, Relaxed);
    };
    let send = async {
        let mut id = 0u32;
        while let Some(offer) = offers.recv().await {
            if failed.load(Relaxed)
                || offer.buffered.len() > max_buffered
                || id >= inner.given_limit.load(Relaxed)
            {
                let _ = offer.reply.send(Answer::Back(offer.fd, offer.buffered));
                continue;
            }
            id += 1;
            let bytes = match connection::encode(&Message::Conn {
                id,
                state: offer.state,
                fd: (),
                buffered: offer.buffered,
            }) {
                Ok(b) => b,
                Err(_) => unreachable!("the buffered bytes were checked against the limit"),
            };
            let buffered = bytes[connection_payload_start()..].to_vec();
            let deadline = Some((Instant::now() + HANDOFF_TIMEOUT, HANDOFF_TIMEOUT));
            if let Err(e) = session::write(&stream, &bytes, &[offer.fd.as_fd()], deadline).await {
                // The frame did not reach the taker whole, so it closed the
                // descriptor it may have received: the connection is still
                // ours.
                tracing::warn!(error = %e, "connection hand-over failed; draining the usual way");
                fail();
                let _ = offer.reply.send(Answer::Back(offer.fd, buffered));
                continue;
            }
            let _ = pending_tx.send(Pending {
                fd: offer.fd,
                buffered,
                reply: offer.reply,
                sent: Instant::now(),
            });
        }
        drop(pending_tx);
    };
    let receive = async {
        while let Some(p) = pending_rx.recv().await {
            if failed.load(Relaxed) {
                let _ = p.reply.send(Answer::Lost);
                continue;
            }
            let deadline = Some((p.sent + HANDOFF_TIMEOUT, HANDOFF_TIMEOUT));
            let waiting = "the new process's answer to a connection handed over";
            let answer = match session::read(&stream, &mut decoder, deadline, waiting).await {
                Ok(Some(Message::Taken { .. })) => {
                    inner.given.fetch_add(1, Relaxed);
                    Answer::Taken
                }
                Ok(Some(Message::Declined { reason, .. })) => {
                    tracing::debug!(%reason, "the new process declined a connection");
                    Answer::Back(p.fd, p.buffered)
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(
                        "the connection hand-over session failed while a connection was on \
                         its way; closing this process's copy of it"
                    );
                    fail();
                    Answer::Lost
                }
            };
            let _ = p.reply.send(answer);
        }
    };
    tokio::join!(send, receive);
}

/// Where the buffered bytes start in an encoded `CONN` (header, state).
const fn connection_payload_start() -> usize {
    crate::pass::HEADER_LEN + 1
}

/// Takes the sessions queued on `handoff` and serves every connection
/// they bring with `serve_one`, until the process exits.
///
/// With `refuse`, every session is refused with that reason instead.
pub(super) fn spawn_taker<F, Fut>(
    handoff: &Handoff,
    drain: Drain,
    refuse: Option<&'static str>,
    serve_one: F,
) where
    F: Fn(tokio::net::TcpStream, Vec<u8>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(mut sessions) = handoff.sessions() else {
        return;
    };
    let handoff = handoff.clone();
    tokio::spawn(async move {
        while let Some(session) = sessions.recv().await {
            let (handoff, drain, serve_one) = (handoff.clone(), drain.clone(), serve_one.clone());
            tokio::spawn(async move {
                if let Err(e) = take_session(session, &handoff, &drain, refuse, serve_one).await {
                    tracing::warn!(error = %e, "taking connections from the old process failed");
                }
            });
        }
    });
}

async fn take_session<F, Fut>(
    session: std::os::unix::net::UnixStream,
    handoff: &Handoff,
    drain: &Drain,
    refuse: Option<&'static str>,
    serve_one: F,
) -> Result<(), HandoffError>
where
    F: Fn(tokio::net::TcpStream, Vec<u8>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stream = async_stream(session)?;
    check_peer(&stream)?;
    let mut decoder = Decoder::new(Side::Taker);
    // The old process says hello once this one is ready: no deadline (a
    // new process whose predecessor does not hand over just never hears).
    match session::read(&stream, &mut decoder, None, "the old process's hello").await? {
        Some(Message::Hello { .. }) => {}
        None => return Ok(()),
        Some(_) => unreachable!("the decoder's first message is a hello"),
    }
    let deadline = Some((Instant::now() + HANDOFF_TIMEOUT, HANDOFF_TIMEOUT));
    let send = |m: Message<OwnedFd>| connection::encode(&m);
    session::write(
        &stream,
        &send(Message::Hello {
            version: connection::VERSION,
        })?,
        &[],
        deadline,
    )
    .await?;
    let refusal = refuse.or(drain
        .is_closed()
        .then_some("this process is draining itself"));
    if let Some(reason) = refusal {
        let refuse = send(Message::Refuse {
            reason: reason.into(),
        })?;
        session::write(&stream, &refuse, &[], deadline).await?;
        return Ok(());
    }
    let welcome = send(Message::Welcome {
        max_connections: handoff.max_connections,
        max_buffered: handoff.max_buffered,
    })?;
    session::write(&stream, &welcome, &[], deadline).await?;
    let mut count = 0u32;
    loop {
        let message = session::read(&stream, &mut decoder, None, "a connection").await?;
        let (id, state, fd, buffered) = match message {
            Some(Message::Conn {
                id,
                state,
                fd,
                buffered,
            }) => (id, state, fd, buffered),
            Some(Message::End { .. }) | None => return Ok(()),
            Some(_) => unreachable!("the decoder allows only CONN or END here"),
        };
        let verdict = if count >= handoff.max_connections {
            Err(format!(
                "over the limit of {} connections",
                handoff.max_connections
            ))
        } else if buffered.len() > handoff.max_buffered as usize {
            Err(format!(
                "{} buffered bytes, over the limit of {}",
                buffered.len(),
                handoff.max_buffered
            ))
        } else if state != STATE_HTTP1 && state != STATE_UNIDENTIFIED {
            Err(format!("unknown connection state {state}"))
        } else if drain.is_closed() {
            Err("this process is draining itself".into())
        } else {
            check_tcp(fd)
        };
        let reply = match verdict {
            Ok(tcp) => {
                count += 1;
                handoff.inner.taken.fetch_add(1, Relaxed);
                tokio::spawn(serve_one(tcp, buffered));
                Message::Taken { id }
            }
            Err(reason) => {
                tracing::warn!(%reason, "declined a connection from the old process");
                Message::Declined { id, reason }
            }
        };
        session::write(&stream, &send(reply)?, &[], deadline_from_now()).await?;
    }
}

fn deadline_from_now() -> Option<(Instant, Duration)> {
    Some((Instant::now() + HANDOFF_TIMEOUT, HANDOFF_TIMEOUT))
}

/// The received descriptor must be a connected TCP stream socket.
fn check_tcp(fd: OwnedFd) -> Result<tokio::net::TcpStream, String> {
    let socket = socket2::Socket::from(fd);
    let kind = socket.r#type().map_err(|e| format!("not a socket ({e})"))?;
    if kind != socket2::Type::STREAM {
        return Err(format!("expected a stream socket, found type {kind:?}"));
    }
    let domain = socket.domain().map_err(|e| format!("SO_DOMAIN: {e}"))?;
    if domain != socket2::Domain::IPV4 && domain != socket2::Domain::IPV6 {
        return Err(format!("expected a TCP socket, found domain {domain:?}"));
    }
    let peer = socket
        .peer_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| "expected a connected TCP socket, found one with no peer".to_string())?;
    let local = socket.local_addr().ok().and_then(|a| a.as_socket());
    let stream = std::net::TcpStream::from(socket);
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("O_NONBLOCK: {e}"))?;
    let stream =
        tokio::net::TcpStream::from_std(stream).map_err(|e| format!("registering it: {e}"))?;
    tracing::debug!(%peer, ?local, "took a keep-alive connection from the old process");
    Ok(stream)
}

/// An I/O that first returns bytes read by another process (or another
/// hyper connection) from the same socket.
pub(super) struct Replay<I> {
    bytes: Vec<u8>,
    at: usize,
    inner: I,
}

impl<I> Replay<I> {
    pub(super) fn new(bytes: Vec<u8>, inner: I) -> Self {
        Replay {
            bytes,
            at: 0,
            inner,
        }
    }

    fn into_parts(mut self) -> (Vec<u8>, I) {
        self.bytes.drain(..self.at);
        (self.bytes, self.inner)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.bytes.len() {
            let n = (this.bytes.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.bytes[this.at..this.at + n]);
            this.at += n;
            if this.at == this.bytes.len() {
                this.bytes = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
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

/// The I/O of a connection that can be handed over.
pub(super) type HandoffIo = Replay<super::conn::Activity<Tracked<tokio::net::TcpStream>>>;

/// Serves one TCP connection that may be handed over: accepted by
/// [`serve`](super::serve), or taken from a predecessor (with the bytes
/// it had read), or given back by a successor that declined it (then
/// `handoff` is `None`: it is drained the usual way).
pub(super) fn serve_tcp<S, B>(
    stream: Tracked<tokio::net::TcpStream>,
    buffered: Vec<u8>,
    service: S,
    handoff: Option<Handoff>,
    options: HttpOptions,
) -> Pin<Box<dyn Future<Output = Result<(), super::ConnectionError>> + Send>>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let state = ConnState::with_handoff(&stream.drain(), handoff);
    let io = Replay::new(buffered, super::conn::Activity::new(stream, state.clone()));
    Box::pin(async move { super::serve_handoff_io(io, service, state, &options).await })
}

/// Serves an HTTP/1.1 connection that may be handed over (see
/// [`Handoff`]): as [`drive_http1`](super::conn::drive_http1) until the
/// drain closes; then, when a successor takes connections, waits for a
/// request boundary and hands the connection over; if that is not possible,
/// drains it the usual way.
pub(super) async fn drive_http1_handoff<S, B>(
    mut conn: hyper::server::conn::http1::UpgradeableConnection<
        TokioIo<Rewind<HandoffIo>>,
        DrainService<S>,
    >,
    state: Arc<ConnState>,
    options: &HttpOptions,
) -> Result<(), super::ConnectionError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    use super::ConnectionError;
    use super::conn::{drive_http1, until_closed};
    use std::sync::atomic::Ordering::Relaxed;

    let grace = options.idle_grace;
    if let Some(done) = until_closed(&mut conn, &state.drain).await {
        return done.map_err(ConnectionError::Http);
    }
    state.touch();
    // A request boundary, or the idle grace of a connection that has not
    // finished its first request.
    loop {
        if !state.handoff_possible() {
            break;
        }
        let idle = state.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        let requests = state.requests.load(Relaxed);
        if state.busy.load(Relaxed) == 0 && requests > 0 {
            break;
        }
        let deadline = state.idle_since() + grace;
        tokio::select! {
            biased;
            done = &mut conn => return done.map_err(ConnectionError::Http),
            () = idle => {}
            () = tokio::time::sleep_until(deadline.into()), if requests == 0 => {
                if state.idle_since() + grace <= Instant::now() {
                    state.stop_handoff();
                }
            }
        }
    }
    if !state.handoff_possible() {
        state.stop_handoff();
        return drive_http1(conn, &state, grace)
            .await
            .map_err(ConnectionError::Http);
    }
    // Between two requests: hyper ends at once, without shutting the
    // socket down (the successor will go on with it).
    state.no_shutdown.store(true, Relaxed);
    Pin::new(&mut conn).graceful_shutdown();
    (&mut conn).await.map_err(ConnectionError::Http)?;
    let Some(parts) = conn.into_parts() else {
        // Upgraded meanwhile: the upgraded I/O lives on with its handler.
        return Ok(());
    };
    let hyper::server::conn::http1::Parts {
        io,
        read_buf,
        service,
        ..
    } = parts;
    // hyper's unparsed bytes came first, then what the sniffing and the
    // replay of a predecessor's bytes have not given out yet.
    let (rewound, replay) = io.into_inner().into_parts();
    let mut buffered = read_buf.to_vec();
    buffered.extend_from_slice(&rewound);
    give_or_serve(
        replay,
        buffered,
        STATE_HTTP1,
        service.into_inner(),
        &state,
        options,
    )
    .await
}

/// Hands the connection over in `conn_state` (`buffered`: the bytes read
/// from it and not answered, before what `io` still replays); if the
/// successor declines, serves it here again, drained the usual way.
pub(super) async fn give_or_serve<S, B>(
    io: HandoffIo,
    mut buffered: Vec<u8>,
    conn_state: u8,
    service: S,
    state: &ConnState,
    options: &HttpOptions,
) -> Result<(), super::ConnectionError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    use super::ConnectionError;
    let (replayed, activity) = io.into_parts();
    buffered.extend_from_slice(&replayed);
    let tracked = activity.into_inner();
    let drain = tracked.drain();
    // Counted until handed over or served again: the drain (and so the
    // process) must not end while the connection is on its way.
    let _counted = drain.track(());
    let std = match tracked.into_inner().into_std() {
        Ok(s) => s,
        Err(e) => return Err(ConnectionError::Io(e)),
    };
    let handoff = state.handoff.clone().expect("handoff_possible");
    match handoff.give(conn_state, OwnedFd::from(std), buffered).await {
        Ok(()) => Ok(()),
        Err((fd, buffered)) => {
            // Declined: served here again, drained the usual way.
            let stream = std::net::TcpStream::from(fd);
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(stream))
                .map_err(ConnectionError::Io)?;
            serve_tcp(
                drain.track(stream),
                buffered,
                service,
                None,
                options.clone(),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn expect(g: &tokio::net::UnixStream, d: &mut Decoder) -> Message<OwnedFd> {
        let deadline = deadline_from_now();
        session::read(g, d, deadline, "test")
            .await
            .unwrap()
            .unwrap()
    }

    /// The taker's checks: a descriptor that is not a connected TCP socket,
    /// or one with more buffered bytes than announced, is declined (and
    /// closed); a TCP connection is taken and served with its bytes.
    #[tokio::test]
    async fn the_taker_checks_what_it_takes() {
        let handoff = Handoff::new().max_buffered(8);
        let drain = Drain::new();
        let (giver, taker) = std::os::unix::net::UnixStream::pair().unwrap();
        handoff.take_from(taker);
        let (served_tx, mut served_rx) = mpsc::unbounded_channel();
        spawn_taker(&handoff, drain.clone(), None, move |stream, buffered| {
            let _ = served_tx.send((stream.peer_addr().unwrap(), buffered));
            async {}
        });
        giver.set_nonblocking(true).unwrap();
        let g = tokio::net::UnixStream::from_std(giver).unwrap();
        let hello = connection::encode(&Message::<()>::Hello { version: 1 }).unwrap();
        session::write(&g, &hello, &[], None).await.unwrap();
        let mut d = Decoder::new(Side::Giver);
        assert!(matches!(
            expect(&g, &mut d).await,
            Message::Hello { version: 1 }
        ));
        assert!(matches!(
            expect(&g, &mut d).await,
            Message::Welcome {
                max_connections: 65_536,
                max_buffered: 8
            }
        ));
        let conn = |id, buffered: &[u8]| {
            connection::encode(&Message::Conn {
                id,
                state: STATE_HTTP1,
                fd: (),
                buffered: buffered.to_vec(),
            })
            .unwrap()
        };
        // A Unix socket is not a TCP connection.
        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        session::write(&g, &conn(1, b""), &[unix.as_fd()], None)
            .await
            .unwrap();
        match expect(&g, &mut d).await {
            Message::Declined { id: 1, reason } => assert!(reason.contains("TCP"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A TCP connection with too many buffered bytes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        session::write(&g, &conn(2, b"GET / HTTP/1.1"), &[accepted.as_fd()], None)
            .await
            .unwrap();
        match expect(&g, &mut d).await {
            Message::Declined { id: 2, reason } => assert!(reason.contains("limit"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // The same within the limit: taken, served with its bytes.
        session::write(&g, &conn(3, b"GET /"), &[accepted.as_fd()], None)
            .await
            .unwrap();
        assert!(matches!(expect(&g, &mut d).await, Message::Taken { id: 3 }));
        let (peer, buffered) = served_rx.recv().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(buffered, b"GET /");
        assert_eq!(handoff.taken(), 1);
        // A draining taker declines.
        drain.close();
        session::write(&g, &conn(4, b""), &[accepted.as_fd()], None)
            .await
            .unwrap();
        match expect(&g, &mut d).await {
            Message::Declined { id: 4, reason } => assert!(reason.contains("draining"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// A giver whose successor refuses gets the reason, and gives nothing.
    #[tokio::test]
    async fn a_refusal_is_an_error_and_nothing_is_given() {
        let (giver, taker) = std::os::unix::net::UnixStream::pair().unwrap();
        let refusing = Handoff::new();
        refusing.take_from(taker);
        spawn_taker(
            &refusing,
            Drain::new(),
            Some("incompatible"),
            |_, _| async {},
        );
        let handoff = Handoff::new();
        let e = handoff
            .give_to(giver, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, HandoffError::Refused { reason } if reason == "incompatible"),
            "{e}"
        );
        assert!(!handoff.is_giving());
        // A successor that closes its end without a word.
        let (giver, taker) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(taker);
        let e = handoff
            .give_to(giver, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HandoffError::Session { .. }), "{e}");
        assert!(!handoff.is_giving());
    }
}
