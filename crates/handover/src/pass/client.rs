//! The client: connect to a server's socket and take its descriptors.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::stream::{Deadline, Receiver};
use super::{Metadata, PassError, Peers, Received, Record, check_path};

/// How a client connects and how long it waits: `ReceiveOptions::new()`
/// and by-value setters, like the crate's other option structs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiveOptions {
    connect_timeout: Duration,
    timeout: Duration,
    allow: Peers,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            allow: Peers::SameUser,
        }
    }
}

impl ReceiveOptions {
    /// The defaults.
    pub fn new() -> ReceiveOptions {
        ReceiveOptions::default()
    }

    /// How long to keep trying to connect while the server's backlog is
    /// full (default 1 s). A missing or stale socket fails at once with
    /// [`PassError::NoServer`].
    pub fn connect_timeout(mut self, d: Duration) -> ReceiveOptions {
        self.connect_timeout = d;
        self
    }

    /// Deadline of the whole exchange, connecting included (default 10 s).
    pub fn timeout(mut self, d: Duration) -> ReceiveOptions {
        self.timeout = d;
        self
    }

    /// Which servers to trust, checked with `SO_PEERCRED` (default: the
    /// same user, [`Peers::SameUser`]).
    pub fn allow(mut self, peers: Peers) -> ReceiveOptions {
        self.allow = peers;
        self
    }
}

/// Connects (non-blocking) to the socket at `path`, retrying while the
/// backlog is full.
fn connect(
    path: &Path,
    opts: &ReceiveOptions,
    deadline: Deadline,
) -> Result<UnixStream, PassError> {
    check_path(path)?;
    let addr =
        SocketAddrUnix::new(path).map_err(|e| PassError::io_at("socket address", path, e))?;
    let give_up = (Instant::now() + opts.connect_timeout).min(deadline.at);
    loop {
        let s = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| PassError::io("creating a Unix socket", e))?;
        match rustix::net::connect(&s, &addr) {
            Ok(()) => return Ok(UnixStream::from(s)),
            Err(Errno::AGAIN) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(Errno::AGAIN) => {
                return Err(PassError::Timeout {
                    waiting_for: "a connection to the server (its backlog stayed full)",
                    after: opts.connect_timeout,
                });
            }
            Err(e @ (Errno::NOENT | Errno::CONNREFUSED)) => {
                return Err(PassError::NoServer {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
            Err(e) => return Err(PassError::io_at("connecting to", path, e)),
        }
    }
}

/// Receives every descriptor the server at `path` hands out, calling `f`
/// with each one and its record's metadata; returns how many arrived.
///
/// Uses [`ReceiveOptions::default`]: see [`receive_with`].
pub fn receive<F>(path: impl AsRef<Path>, f: F) -> Result<usize, PassError>
where
    F: FnMut(Received, &Metadata) -> Result<(), PassError>,
{
    receive_with(path, &ReceiveOptions::default(), f)
}

/// Receives every descriptor the server at `path` hands out, calling `f`
/// with each one (in order) and its record's metadata; returns how many
/// arrived.
///
/// After the last record, the client confirms (`ACK`) and waits for the
/// server to close the connection, so when this returns `Ok` the server has
/// run its steps after [`confirm`](super::confirm) (a [`stop_serving`]
/// step included: a new server can then bind the same path).
///
/// When `f` fails, the exchange stops without confirming, the descriptors
/// not yet handed to `f` are closed, and the error is returned. Nobody
/// serving at `path` is [`PassError::NoServer`] (see
/// [`PassError::is_no_server`]).
///
/// [`stop_serving`]: super::stop_serving
pub fn receive_with<F>(
    path: impl AsRef<Path>,
    opts: &ReceiveOptions,
    mut f: F,
) -> Result<usize, PassError>
where
    F: FnMut(Received, &Metadata) -> Result<(), PassError>,
{
    let path = path.as_ref();
    let deadline = Deadline::after(opts.timeout);
    let stream = connect(path, opts, deadline)?;
    opts.allow
        .check("server", &super::peer_cred(stream.as_fd())?)?;
    let mut r = Receiver::with_deadline(&stream, deadline)?;
    let mut count = 0;
    let mut index = 0;
    while let Some(Record { fds, meta }) = r.next_record()? {
        for (i, fd) in fds.into_iter().enumerate() {
            f(Received::new(fd, index, i), &meta)?;
            count += 1;
        }
        index += 1;
    }
    r.ack()?;
    r.wait_closed()?;
    Ok(count)
}

/// The tokio version of [`receive_with`]: the same exchange, without
/// blocking a runtime thread.
#[cfg(feature = "tokio")]
pub async fn receive_async<F>(
    path: impl AsRef<Path>,
    opts: &ReceiveOptions,
    mut f: F,
) -> Result<usize, PassError>
where
    F: FnMut(Received, &Metadata) -> Result<(), PassError>,
{
    use super::stream::AsyncReceiver;
    let path = path.as_ref();
    let deadline = Deadline::after(opts.timeout);
    // Connecting to a Unix socket does not block unless the backlog is
    // full; retry that case without holding the runtime.
    let give_up = (Instant::now() + opts.connect_timeout).min(deadline.at);
    let stream = loop {
        let quick = ReceiveOptions {
            connect_timeout: Duration::ZERO,
            ..opts.clone()
        };
        match connect(path, &quick, deadline) {
            Err(PassError::Timeout { .. }) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(PassError::Timeout { waiting_for, .. }) => {
                return Err(PassError::Timeout {
                    waiting_for,
                    after: opts.connect_timeout,
                });
            }
            other => break other?,
        }
    };
    opts.allow
        .check("server", &super::peer_cred(stream.as_fd())?)?;
    let stream = tokio::net::UnixStream::from_std(stream)
        .map_err(|e| PassError::io("registering the connection with tokio", e))?;
    let mut r = AsyncReceiver::with_deadline(&stream, deadline).await?;
    let mut count = 0;
    let mut index = 0;
    while let Some(Record { fds, meta }) = r.next_record().await? {
        for (i, fd) in fds.into_iter().enumerate() {
            f(Received::new(fd, index, i), &meta)?;
            count += 1;
        }
        index += 1;
    }
    r.ack().await?;
    r.wait_closed().await?;
    Ok(count)
}
