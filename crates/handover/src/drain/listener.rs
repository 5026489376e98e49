//! [`Listener`]: std and tokio listeners that count what they accept.

use std::io;
use std::iter::FusedIterator;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::io::Errno;

use super::{Drain, Guard, Tracked, closed_error, is_closed_error};

/// A listener whose accepted connections are counted by a [`Drain`], and
/// which stops accepting when the drain is closed.
///
/// Implemented for [`std::net::TcpListener`] and
/// [`std::os::unix::net::UnixListener`] (blocking `accept`, [`incoming`]) and,
/// with the `tokio` feature, for `tokio::net::TcpListener` and
/// `tokio::net::UnixListener` (async, cancel-safe `accept`).
///
/// Once the drain is closed, `accept` returns an error for which
/// [`is_closed_error`](super::is_closed_error) is true, and never a
/// connection: those still queued in the kernel stay there for the process
/// that shares the socket. The socket itself is never shut down or closed by
/// the drain; [`into_inner`](Listener::into_inner) gives it back.
///
/// [`incoming`]: Listener::<std::net::TcpListener>::incoming
#[derive(Debug)]
pub struct Listener<L> {
    inner: L,
    drain: Drain,
}

impl<L> Listener<L> {
    /// Wraps `listener`; its connections are counted by `drain`.
    pub fn new(listener: L, drain: &Drain) -> Self {
        Listener {
            inner: listener,
            drain: drain.clone(),
        }
    }

    /// The drain counting this listener's connections.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// The wrapped listener (to read its address, or hand it to a successor).
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    /// Unwraps the listener. Connections accepted so far stay counted.
    pub fn into_inner(self) -> L {
        self.inner
    }
}

impl<L: AsFd> AsFd for Listener<L> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl<L: AsRawFd> AsRawFd for Listener<L> {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// Waits until `listener` is readable or the drain is closed, then calls
/// `accept`; repeats when `accept` finds nothing (another process took the
/// connection, and the socket is non-blocking).
fn accept_blocking<T>(
    drain: &Drain,
    listener: BorrowedFd<'_>,
    mut accept: impl FnMut() -> io::Result<T>,
) -> io::Result<(T, Guard)> {
    let inner = &*drain.inner;
    loop {
        if inner.is_closed() {
            return Err(closed_error());
        }
        let wake = inner.wake_fd()?;
        let mut fds = [
            PollFd::from_borrowed_fd(listener, PollFlags::IN),
            PollFd::from_borrowed_fd(wake, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if !fds[1].revents().is_empty() {
            // The eventfd is only signalled by `close`.
            return Err(closed_error());
        }
        // Readable (or in error, which `accept` reports). Count first, so
        // that a connection accepted while `close` runs is never missed.
        let reservation = inner.reserve()?;
        match accept() {
            Ok(conn) => return Ok((conn, reservation.keep(drain))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// An iterator over the connections of a std [`Listener`], made by
/// `incoming`. It ends once the drain is closed; accept errors are yielded
/// (the next call tries again).
#[derive(Debug)]
pub struct Incoming<'a, L> {
    listener: &'a Listener<L>,
}

macro_rules! std_listener {
    ($listener:ty, $stream:ty, $addr:ty, $what:literal) => {
        impl Listener<$listener> {
            #[doc = concat!("Waits for the next ", $what, " connection and returns it, counted.")]
            ///
            /// Blocks whatever the socket's `O_NONBLOCK` flag says. Once the
            /// drain is closed (also while waiting here), returns an error for
            /// which [`is_closed_error`](super::is_closed_error) is true, and
            /// leaves queued connections to the process sharing the socket.
            pub fn accept(&self) -> io::Result<(Tracked<$stream>, $addr)> {
                let ((stream, addr), guard) =
                    accept_blocking(&self.drain, self.inner.as_fd(), || self.inner.accept())?;
                Ok((Tracked::new(stream, guard), addr))
            }

            /// An iterator over accepted connections that ends once the drain
            /// is closed.
            pub fn incoming(&self) -> Incoming<'_, $listener> {
                Incoming { listener: self }
            }
        }

        impl Iterator for Incoming<'_, $listener> {
            type Item = io::Result<Tracked<$stream>>;

            fn next(&mut self) -> Option<Self::Item> {
                match self.listener.accept() {
                    Ok((stream, _)) => Some(Ok(stream)),
                    Err(e) if is_closed_error(&e) => None,
                    Err(e) => Some(Err(e)),
                }
            }
        }

        impl FusedIterator for Incoming<'_, $listener> {}
    };
}

std_listener!(
    std::net::TcpListener,
    std::net::TcpStream,
    std::net::SocketAddr,
    "TCP"
);
std_listener!(
    std::os::unix::net::UnixListener,
    std::os::unix::net::UnixStream,
    std::os::unix::net::SocketAddr,
    "Unix"
);

#[cfg(feature = "tokio")]
mod tokio_impls {
    use std::future::{Future, poll_fn};
    use std::io;
    use std::task::{Context, Poll};

    use super::super::{Drain, Guard, Tracked, closed_error};
    use super::Listener;

    /// Polls `accept` until it gives a connection, or the drain is closed.
    async fn accept_async<T>(
        drain: &Drain,
        mut accept: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<(T, Guard)> {
        let mut closed = std::pin::pin!(drain.closed());
        poll_fn(|cx| {
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(closed_error()));
            }
            // Count first, so that a connection accepted while `close` runs
            // is never missed; the count is given back when nothing came.
            let reservation = drain.inner.reserve()?;
            match accept(cx) {
                Poll::Ready(Ok(conn)) => Poll::Ready(Ok((conn, reservation.keep(drain)))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    macro_rules! tokio_listener {
        ($listener:ty, $stream:ty, $addr:ty, $what:literal) => {
            impl Listener<$listener> {
                #[doc = concat!("Waits for the next ", $what, " connection and returns it, counted.")]
                ///
                /// Cancel-safe: when the future is dropped before it
                /// completes, no connection was taken from the queue. Once the
                /// drain is closed (also while waiting here), returns an error
                /// for which [`is_closed_error`](super::super::is_closed_error)
                /// is true, and leaves queued connections to the process
                /// sharing the socket.
                pub async fn accept(&self) -> io::Result<(Tracked<$stream>, $addr)> {
                    let ((stream, addr), guard) =
                        accept_async(&self.drain, |cx| self.inner.poll_accept(cx)).await?;
                    Ok((Tracked::new(stream, guard), addr))
                }
            }
        };
    }

    tokio_listener!(
        tokio::net::TcpListener,
        tokio::net::TcpStream,
        std::net::SocketAddr,
        "TCP"
    );
    tokio_listener!(
        tokio::net::UnixListener,
        tokio::net::UnixStream,
        tokio::net::unix::SocketAddr,
        "Unix"
    );
}
