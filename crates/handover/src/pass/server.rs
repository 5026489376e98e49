//! The server: a Unix socket that hands descriptors to each allowed client,
//! with composable [`Handler`]s.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::socket::{UnixPath, probe_unix_path};
use crate::sync::Event;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::stream::Sender;
use super::{Metadata, PassError, PeerCred, Peers, check_path};
use crate::socket::FdKind;

/// Default deadline of one session.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit of concurrent sessions.
const DEFAULT_MAX_SESSIONS: usize = 32;

/// One step of what a server does for each allowed client.
///
/// Implemented by the handlers of this module ([`listener`], [`file()`],
/// [`fds`], [`callback`], [`confirm`], [`stop_serving`], [`sequence`]),
/// by tuples of handlers (run in order), by `Vec<Box<dyn Handler>>`, and by
/// any `Fn(&mut Session<'_>) -> Result<(), PassError>`.
pub trait Handler: Send + Sync + 'static {
    /// Runs this step of a session. An error ends the session (the client
    /// gets no `END`, so it fails too) and is logged.
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError>;
}

impl<F> Handler for F
where
    F: Fn(&mut Session<'_>) -> Result<(), PassError> + Send + Sync + 'static,
{
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        self(session)
    }
}

impl Handler for Box<dyn Handler> {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        (**self).handle(session)
    }
}

impl<H: Handler> Handler for Arc<H> {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        (**self).handle(session)
    }
}

impl Handler for Vec<Box<dyn Handler>> {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        self.iter().try_for_each(|h| h.handle(session))
    }
}

macro_rules! tuple_handler {
    ($($name:ident),+) => {
        impl<$($name: Handler),+> Handler for ($($name,)+) {
            #[allow(non_snake_case)]
            fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
                let ($($name,)+) = self;
                $($name.handle(session)?;)+
                Ok(())
            }
        }
    };
}
tuple_handler!(A);
tuple_handler!(A, B);
tuple_handler!(A, B, C);
tuple_handler!(A, B, C, D);
tuple_handler!(A, B, C, D, E);
tuple_handler!(A, B, C, D, E, F);
tuple_handler!(A, B, C, D, E, F, G);
tuple_handler!(A, B, C, D, E, F, G, H);

/// Handlers run one after the other; see [`sequence`].
#[derive(Debug, Clone)]
pub struct Sequence<H>(H);

/// Runs `handlers` (a tuple of up to 8 handlers, or a
/// `Vec<Box<dyn Handler>>`) in order, stopping at the first error.
pub fn sequence<H: Handler>(handlers: H) -> Sequence<H> {
    Sequence(handlers)
}

impl<H: Handler> Handler for Sequence<H> {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        self.0.handle(session)
    }
}

/// Sends a listening socket; see [`listener`].
#[derive(Debug)]
pub struct ListenerHandler<F> {
    fd: F,
    meta: Metadata,
}

/// Sends `fd`, a listening TCP or Unix socket or a UDP socket, as one
/// record with `meta`. Keep using the socket: the client gets another
/// descriptor of the same socket.
///
/// Takes anything that owns a descriptor (`TcpListener`, `OwnedFd`, an
/// `Arc<TcpListener>`, ...). Any other kind of descriptor fails the
/// session with an error that names it.
pub fn listener<F: AsFd + Send + Sync + 'static>(
    fd: F,
    meta: impl Into<Metadata>,
) -> ListenerHandler<F> {
    ListenerHandler {
        fd,
        meta: meta.into(),
    }
}

impl<F: AsFd + Send + Sync + 'static> Handler for ListenerHandler<F> {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        let kind = FdKind::of(self.fd.as_fd())
            .map_err(|e| PassError::io("inspecting the descriptor to send", e))?;
        let ok = matches!(
            kind,
            FdKind::TcpListener { .. }
                | FdKind::UnixListener
                | FdKind::Udp { .. }
                | FdKind::UnixDatagram
                | FdKind::UnixSeqpacket { listening: true }
        );
        if !ok {
            return Err(PassError::NotAListener { found: kind });
        }
        session.send(&[self.fd.as_fd()], &self.meta)
    }
}

/// Sends a file; see [`file()`].
#[derive(Debug)]
pub struct FileHandler<F> {
    fd: F,
    meta: Metadata,
}

/// Sends `fd`, an open file, pipe or device (not a socket), as one record
/// with `meta`.
pub fn file<F: AsFd + Send + Sync + 'static>(fd: F, meta: impl Into<Metadata>) -> FileHandler<F> {
    FileHandler {
        fd,
        meta: meta.into(),
    }
}

impl<F: AsFd + Send + Sync + 'static> Handler for FileHandler<F> {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        let kind = FdKind::of(self.fd.as_fd())
            .map_err(|e| PassError::io("inspecting the descriptor to send", e))?;
        if kind.is_socket() {
            return Err(PassError::NotAFile { found: kind });
        }
        session.send(&[self.fd.as_fd()], &self.meta)
    }
}

/// Sends several descriptors as one record; see [`fds`].
#[derive(Debug)]
pub struct FdsHandler {
    fds: Vec<OwnedFd>,
    meta: Metadata,
}

/// Sends `fds` (of any kind, at least one) as one record with `meta`.
pub fn fds(fds: impl IntoIterator<Item = OwnedFd>, meta: impl Into<Metadata>) -> FdsHandler {
    FdsHandler {
        fds: fds.into_iter().collect(),
        meta: meta.into(),
    }
}

impl Handler for FdsHandler {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        let fds: Vec<BorrowedFd<'_>> = self.fds.iter().map(AsFd::as_fd).collect();
        session.send(&fds, &self.meta)
    }
}

/// Runs a function; see [`callback`].
pub struct CallbackHandler<F>(F);

impl<F> std::fmt::Debug for CallbackHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackHandler")
    }
}

/// Runs `f` at this point of each session. Put it after [`confirm`] to run
/// it only once the client has everything.
pub fn callback<F: Fn() + Send + Sync + 'static>(f: F) -> CallbackHandler<F> {
    CallbackHandler(f)
}

impl<F: Fn() + Send + Sync + 'static> Handler for CallbackHandler<F> {
    fn handle(&self, _: &mut Session<'_>) -> Result<(), PassError> {
        (self.0)();
        Ok(())
    }
}

/// Waits for the client's confirmation; see [`confirm`].
#[derive(Debug, Clone, Copy)]
pub struct ConfirmHandler;

/// Sends `END` and waits until the client confirms (`ACK`) that it has
/// every record; the steps after it run only then. Every session ends with
/// this step, whether or not the handler has it.
pub fn confirm() -> ConfirmHandler {
    ConfirmHandler
}

impl Handler for ConfirmHandler {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        session.confirm()
    }
}

/// Stops the server; see [`stop_serving`].
#[derive(Debug, Clone, Copy)]
pub struct StopServingHandler;

/// Stops the server from accepting clients, removes its socket file and
/// closes its socket, before the step after it runs (see
/// [`Session::stop_serving`]).
pub fn stop_serving() -> StopServingHandler {
    StopServingHandler
}

impl Handler for StopServingHandler {
    fn handle(&self, session: &mut Session<'_>) -> Result<(), PassError> {
        session.stop_serving()
    }
}

/// One client's session, as seen by a [`Handler`].
#[derive(Debug)]
pub struct Session<'a> {
    sender: Sender<'a>,
    peer: PeerCred,
    stopper: Stopper,
}

impl Session<'_> {
    /// The client's credentials.
    pub fn peer(&self) -> PeerCred {
        self.peer
    }

    /// Sends one record: `fds` (at least one) with `meta`.
    pub fn send(&mut self, fds: &[BorrowedFd<'_>], meta: &Metadata) -> Result<(), PassError> {
        self.sender.send(fds, meta)
    }

    /// Sends `END` and waits for the client's `ACK`. Idempotent.
    pub fn confirm(&mut self) -> Result<(), PassError> {
        self.sender.finish()
    }

    /// Whether [`confirm`](Session::confirm) was called.
    pub fn is_confirmed(&self) -> bool {
        self.sender.is_finished()
    }

    /// Records sent so far.
    pub fn records(&self) -> u32 {
        self.sender.records()
    }

    /// When this session's time runs out.
    pub fn deadline(&self) -> Instant {
        self.sender.deadline()
    }

    /// Stops the server from accepting new clients and returns once its
    /// socket file is removed and its socket closed (sessions under way,
    /// like this one, go on). A client waits for its session's connection
    /// to close before [`receive`](super::receive) returns, so by then a
    /// new server can bind the same path.
    pub fn stop_serving(&self) -> Result<(), PassError> {
        if self.stopper.stop_and_wait(Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(PassError::Timeout {
                waiting_for: "the server to stop accepting",
                after: Duration::from_secs(5),
            })
        }
    }

    /// A handle that stops the server.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }
}

struct StopState {
    efd: OwnedFd,
    requested: AtomicBool,
    /// Set once the socket is closed and its file removed.
    closed: Event<()>,
}

/// Stops a [`Server`] from another thread, or from a handler.
#[derive(Clone)]
pub struct Stopper(Arc<StopState>);

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("requested", &self.is_stopped())
            .finish()
    }
}

impl Stopper {
    fn new() -> Result<Stopper, PassError> {
        let efd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| PassError::io("creating an eventfd to stop the server", e))?;
        Ok(Stopper(Arc::new(StopState {
            efd,
            requested: AtomicBool::new(false),
            closed: Event::new(),
        })))
    }

    /// Asks the server to stop accepting; returns at once. The server
    /// removes its socket file, closes its socket, waits for the sessions
    /// under way, and [`Server::serve`] returns.
    pub fn stop(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        // An eventfd counter cannot overflow from a few writes; EAGAIN
        // would only mean it is already readable.
        let _ = rustix::io::write(&self.0.efd, &1u64.to_ne_bytes());
    }

    /// [`stop`](Stopper::stop), then waits up to `timeout` until the socket
    /// is closed and its file removed. Returns whether it was.
    pub fn stop_and_wait(&self, timeout: Duration) -> bool {
        self.stop();
        self.0.closed.wait_timeout(timeout).is_some()
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    fn mark_closed(&self) {
        self.0.closed.set(());
    }
}

/// A socket file this process created; removed on drop if it is still the
/// same file.
#[derive(Debug)]
struct Bound {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Ok(st) = rustix::fs::lstat(&self.path)
            && st.st_dev == self.dev
            && st.st_ino == self.ino
        {
            let _ = rustix::fs::unlink(&self.path);
        }
    }
}

/// A descriptor-passing server on a Unix socket.
///
/// Each client that connects is checked with `SO_PEERCRED` (see
/// [`allow`](Server::allow)), then served by the handler on a thread of
/// its own, within a deadline ([`timeout`](Server::timeout)): a client that
/// stalls or sends garbage fails alone.
pub struct Server {
    // Dropped first: the file goes before the socket closes.
    bound: Option<Bound>,
    listener: UnixListener,
    peers: Peers,
    timeout: Duration,
    max_sessions: usize,
    stopper: Stopper,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path())
            .field("peers", &self.peers)
            .field("timeout", &self.timeout)
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

impl Server {
    /// Creates the socket file at `path` (mode `0600`) and listens on it.
    ///
    /// A socket file left behind by a process that exited (connecting to it
    /// is refused) is replaced; a live one is
    /// [`PassError::AlreadyServing`]; a path that is not a socket is left
    /// alone ([`PassError::NotASocket`]). Paths longer than 107 bytes are
    /// [`PassError::PathTooLong`]. The directory must exist, and should not
    /// be writable by other users.
    pub fn bind(path: impl AsRef<Path>) -> Result<Server, PassError> {
        let path = path.as_ref();
        check_path(path)?;
        let addr =
            SocketAddrUnix::new(path).map_err(|e| PassError::io_at("socket address", path, e))?;
        for _ in 0..3 {
            let sock = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .map_err(|e| PassError::io("creating a Unix socket", e))?;
            match rustix::net::bind(&sock, &addr) {
                Ok(()) => {}
                Err(Errno::ADDRINUSE) => {
                    let probed = probe_unix_path(path).map_err(|e| {
                        PassError::io_at(
                            "connecting to check whether a server is still running at",
                            path,
                            e,
                        )
                    })?;
                    match probed {
                        UnixPath::Live => {
                            return Err(PassError::AlreadyServing {
                                path: path.to_path_buf(),
                            });
                        }
                        UnixPath::Missing => {}
                        UnixPath::Refused => {
                            let st = rustix::fs::lstat(path);
                            if let Ok(st) = st
                                && rustix::fs::FileType::from_raw_mode(st.st_mode)
                                    != rustix::fs::FileType::Socket
                            {
                                return Err(PassError::NotASocket {
                                    path: path.to_path_buf(),
                                });
                            }
                            tracing::info!(path = %path.display(), "replacing a stale socket file");
                            match rustix::fs::unlink(path) {
                                Ok(()) | Err(Errno::NOENT) => {}
                                Err(e) => {
                                    return Err(PassError::io_at(
                                        "removing the stale socket file",
                                        path,
                                        e,
                                    ));
                                }
                            }
                        }
                    }
                    continue;
                }
                Err(e) => {
                    return Err(PassError::io_at(
                        "binding the socket (its directory must exist) at",
                        path,
                        e,
                    ));
                }
            }
            // Nobody can connect before listen(): tighten the mode first.
            let st = rustix::fs::lstat(path)
                .map_err(|e| PassError::io_at("inspecting the new socket", path, e))?;
            let bound = Bound {
                path: path.to_path_buf(),
                dev: st.st_dev,
                ino: st.st_ino,
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| PassError::io_at("setting mode 0600 on", path, e))?;
            rustix::net::listen(&sock, 128)
                .map_err(|e| PassError::io_at("listening on", path, e))?;
            let mut server = Server::from_listener(UnixListener::from(sock))?;
            server.bound = Some(bound);
            return Ok(server);
        }
        Err(PassError::BindRace {
            path: path.to_path_buf(),
        })
    }

    /// Serves on a listener made elsewhere (its socket file is never
    /// removed by this server).
    pub fn from_listener(listener: UnixListener) -> Result<Server, PassError> {
        Ok(Server {
            bound: None,
            listener,
            peers: Peers::default(),
            timeout: DEFAULT_TIMEOUT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            stopper: Stopper::new()?,
        })
    }

    /// Which clients get descriptors (default: [`Peers::SameUser`]).
    pub fn allow(mut self, peers: Peers) -> Server {
        self.peers = peers;
        self
    }

    /// The deadline of each session, from accept to the end (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Server {
        self.timeout = timeout;
        self
    }

    /// Most sessions served at once (default 32); clients beyond are
    /// closed at once, with a warning.
    pub fn max_sessions(mut self, n: usize) -> Server {
        self.max_sessions = n.max(1);
        self
    }

    /// The socket file this server created, if it did.
    pub fn path(&self) -> Option<&Path> {
        self.bound.as_ref().map(|b| b.path.as_path())
    }

    /// A handle that stops [`serve`](Server::serve).
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serves clients with `handler` until stopped (by a [`Stopper`] or a
    /// [`stop_serving`] step), then removes the socket file, closes the
    /// socket, waits for the sessions under way, and returns.
    pub fn serve(self, handler: impl Handler) -> Result<(), PassError> {
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let Server {
            bound,
            listener,
            peers,
            timeout,
            max_sessions,
            stopper,
        } = self;
        let peers = Arc::new(peers);
        let mut open = Open {
            bound,
            listener: Some(listener),
            stopper: stopper.clone(),
        };
        let active = Arc::new(AtomicUsize::new(0));
        let mut sessions: Vec<JoinHandle<()>> = Vec::new();
        let result = (|| -> Result<(), PassError> {
            let listener = open.listener.as_ref().expect("set above");
            listener
                .set_nonblocking(true)
                .map_err(|e| PassError::io("making the listener non-blocking", e))?;
            loop {
                let mut pfds = [
                    PollFd::new(listener, PollFlags::IN),
                    PollFd::new(&stopper.0.efd, PollFlags::IN),
                ];
                match rustix::event::poll(&mut pfds, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(PassError::io("waiting for clients (poll)", e)),
                }
                if !pfds[1].revents().is_empty() || stopper.is_stopped() {
                    return Ok(());
                }
                if pfds[0].revents().is_empty() {
                    continue;
                }
                sessions.retain(|t| !t.is_finished());
                loop {
                    let stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a descriptor-passing client");
                            if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            break;
                        }
                    };
                    if active.load(Ordering::SeqCst) >= max_sessions {
                        tracing::warn!(
                            max_sessions,
                            "closing a descriptor-passing client: too many sessions at once"
                        );
                        continue;
                    }
                    active.fetch_add(1, Ordering::SeqCst);
                    let (handler, peers, stopper, counter) = (
                        handler.clone(),
                        peers.clone(),
                        stopper.clone(),
                        active.clone(),
                    );
                    let spawned = std::thread::Builder::new()
                        .name("handover-pass".into())
                        .spawn(move || {
                            run_session(stream, &peers, &*handler, timeout, stopper);
                            counter.fetch_sub(1, Ordering::SeqCst);
                        });
                    match spawned {
                        Ok(t) => sessions.push(t),
                        Err(e) => {
                            active.fetch_sub(1, Ordering::SeqCst);
                            tracing::warn!(error = %e, "could not start a session thread");
                        }
                    }
                }
            }
        })();
        open.close();
        for t in sessions {
            let _ = t.join();
        }
        result
    }

    /// Runs [`serve`](Server::serve) on a thread of its own.
    pub fn spawn(self, handler: impl Handler) -> Result<ServerHandle, PassError> {
        let stopper = self.stopper.clone();
        let thread = std::thread::Builder::new()
            .name("handover-pass-server".into())
            .spawn(move || self.serve(handler))
            .map_err(|e| PassError::io("starting the server thread", e))?;
        Ok(ServerHandle {
            stopper,
            thread: Some(thread),
        })
    }
}

/// The socket while it is open; closing removes the file first.
struct Open {
    bound: Option<Bound>,
    listener: Option<UnixListener>,
    stopper: Stopper,
}

impl Open {
    fn close(&mut self) {
        drop(self.bound.take());
        drop(self.listener.take());
        self.stopper.mark_closed();
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.close();
    }
}

fn run_session(
    stream: UnixStream,
    peers: &Peers,
    handler: &dyn Handler,
    timeout: Duration,
    stopper: Stopper,
) {
    let peer = match super::peer_cred(stream.as_fd()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "refused a descriptor-passing client");
            return;
        }
    };
    if let Err(e) = peers.check("client", &peer) {
        tracing::warn!(
            pid = peer.pid,
            uid = peer.uid,
            "refused a descriptor-passing client: {e}"
        );
        return;
    }
    let sender = match Sender::handshake(&stream, timeout) {
        Ok(s) => s,
        Err(PassError::Closed { .. }) => {
            // Typically a server checking whether this one is alive.
            tracing::debug!(
                pid = peer.pid,
                "a client closed the connection before its hello"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(
                pid = peer.pid,
                uid = peer.uid,
                "descriptor-passing session failed: {e}"
            );
            return;
        }
    };
    let mut session = Session {
        sender,
        peer,
        stopper,
    };
    match handler
        .handle(&mut session)
        .and_then(|()| session.confirm())
    {
        Ok(()) => tracing::info!(
            pid = peer.pid,
            uid = peer.uid,
            records = session.records(),
            "handed descriptors to a client"
        ),
        Err(e) => tracing::warn!(
            pid = peer.pid,
            uid = peer.uid,
            "descriptor-passing session failed: {e}"
        ),
    }
}

/// A [`Server`] running on its own thread. Dropping it stops the server
/// and waits for it.
#[derive(Debug)]
pub struct ServerHandle {
    stopper: Stopper,
    thread: Option<JoinHandle<Result<(), PassError>>>,
}

impl ServerHandle {
    /// A handle that stops the server.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Whether the server has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the server and waits for it to return.
    pub fn stop(mut self) -> Result<(), PassError> {
        self.stopper.stop();
        self.join_inner()
    }

    /// Waits for the server to return (after a [`Stopper`] or a
    /// [`stop_serving`] step stopped it).
    pub fn join(mut self) -> Result<(), PassError> {
        self.join_inner()
    }

    fn join_inner(&mut self) -> Result<(), PassError> {
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err(PassError::ServerPanicked)),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stopper.stop();
            let _ = self.join_inner();
        }
    }
}

/// Serves `listener` with `handler` until stopped; see [`Server::serve`].
pub fn serve(listener: UnixListener, handler: impl Handler) -> Result<(), PassError> {
    Server::from_listener(listener)?.serve(handler)
}

/// Creates the socket at `path` and serves it with `handler` until
/// stopped; see [`Server::bind`] and [`Server::serve`].
pub fn listen_and_serve(path: impl AsRef<Path>, handler: impl Handler) -> Result<(), PassError> {
    Server::bind(path)?.serve(handler)
}
