//! Listeners that track every connection they accept, stop accepting on
//! [`Drain::close`], and let the process wait until the last connection is
//! gone ([`Drain::wait`]).
//!
//! A restart hands the listening socket to a successor process. The old
//! process then *drains*: it stops accepting (the successor, which shares the
//! socket, accepts from now on), finishes the connections it already has, and
//! exits when the last one is gone or a deadline passes.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::TcpListener;
//! use std::time::Duration;
//! use handover::drain::{Drain, Listener};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let drain = Drain::new();
//! let listener = Listener::new(TcpListener::bind("127.0.0.1:0")?, &drain);
//! let server = std::thread::spawn(move || {
//!     // Ends when the drain is closed.
//!     for stream in listener.incoming() {
//!         let mut stream = stream?;
//!         std::thread::spawn(move || {
//!             let mut byte = [0u8; 1];
//!             while stream.read(&mut byte).unwrap_or(0) == 1 {
//!                 let _ = stream.write_all(&byte);
//!             }
//!         });
//!     }
//!     std::io::Result::Ok(())
//! });
//! // On SIGTERM, or once a successor has taken over the socket:
//! drain.close();
//! server.join().unwrap()?;
//! drain.wait(Duration::from_secs(30))?;
//! # Ok(()) }
//! ```
//!
//! **What `close` does, and what it does not.** [`Drain::close`] makes every
//! [`Listener`] wrapping that drain stop accepting: a pending or later
//! `accept` returns an error for which [`is_closed_error`] is true (and
//! [`Listener::incoming`] ends). The listening socket itself is left exactly
//! as it was: it is not shut down, not closed, and its `O_NONBLOCK` flag is
//! not touched, because another process is using it. Connections waiting in
//! the kernel's accept queue are **not** accepted by this process after
//! `close`: they stay queued for the process that shares the socket. (When no
//! other process holds the socket, those connections are reset when this
//! process closes its descriptor, as with any listener.)
//!
//! **Counting.** A connection counts from the moment it is accepted (the
//! count is taken *before* the `accept` call, so one accepted just as `close`
//! runs is never missed) until its [`Tracked`] wrapper is dropped; the
//! socket is closed before the count goes down. [`Drain::wait`] never
//! returns `Ok` while a tracked connection is open. Connections accepted by
//! other means can be counted with [`Drain::track`].
//!
//! **Blocking std listeners.** [`Listener::accept`] for std listeners waits
//! with `poll(2)` on the listening socket and on an `eventfd` that `close`
//! signals, then accepts; it works whatever the socket's `O_NONBLOCK` flag
//! (which is shared with every process holding the socket) says. One corner
//! remains with a socket in blocking mode: if another process takes the
//! connection between our `poll` and our `accept`, the `accept` waits for the
//! next connection, and `close` cannot interrupt it without touching the
//! shared socket. The connection it then gets is returned (and counted),
//! because a connection that was accepted must be served. Tokio listeners
//! (always non-blocking) do not have this corner.
//!
//! **Tokio** (feature `tokio`): the same [`Listener`] wraps
//! `tokio::net::TcpListener` and `UnixListener`, with a cancel-safe `async`
//! accept; `Drain::wait_async` and `Drain::closed` are the async
//! counterparts. **HTTP** (feature `hyper`): `http::serve` and
//! `http::serve_connection_auto` serve HTTP/1.1 (keep-alive and upgraded
//! connections) and HTTP/2 (with the two-step GOAWAY) so that draining loses
//! no request; `http::tower` (feature `tower`) serves an `axum::Router` or a
//! tonic service that way. **TLS** (feature `tls`): `tls::TlsAcceptor`,
//! rustls with ALPN `h2` and `http/1.1`.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

#[cfg(feature = "hyper")]
pub mod http;
mod listener;
#[cfg(feature = "tls")]
pub mod tls;
mod tracked;

pub use listener::{Incoming, Listener};
pub use tracked::Tracked;

/// The high bit of [`Inner::state`]: `close` was called.
const CLOSED: usize = 1 << (usize::BITS - 1);
/// The other bits: connections counted (tracked, or being accepted).
const COUNT: usize = !CLOSED;

/// Shared draining state: a closed flag, the number of open connections, and
/// whoever waits on either.
///
/// Cloning is cheap and gives another handle to the same state; every
/// [`Listener`] made with it stops accepting when any handle calls
/// [`close`](Drain::close).
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    /// `CLOSED` bit, and the count in the other bits. One word, so that
    /// "count a new connection unless closed" is a single atomic operation.
    state: AtomicUsize,
    /// Threads and tasks inside `wait`/`wait_async`; the count going to zero
    /// only takes the lock and wakes when there is one.
    waiters: AtomicUsize,
    /// With `idle`: blocking waiters sleep here.
    lock: Mutex<()>,
    idle: Condvar,
    /// An eventfd made at the first blocking accept, readable once closed:
    /// it wakes accepts blocked in `poll`.
    wake: OnceLock<OwnedFd>,
    /// Orders making `wake` against `close` (see `Inner::wake_fd`).
    wake_lock: Mutex<()>,
    #[cfg(feature = "tokio")]
    idle_async: tokio::sync::Notify,
    #[cfg(feature = "tokio")]
    closed_async: tokio::sync::Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("closed", &self.is_closed())
            .field("active", &self.active())
            .finish()
    }
}

impl Drain {
    /// A new drain: open (accepting), with no connections.
    pub fn new() -> Drain {
        Drain {
            inner: Arc::new(Inner {
                state: AtomicUsize::new(0),
                waiters: AtomicUsize::new(0),
                lock: Mutex::new(()),
                idle: Condvar::new(),
                wake: OnceLock::new(),
                wake_lock: Mutex::new(()),
                #[cfg(feature = "tokio")]
                idle_async: tokio::sync::Notify::new(),
                #[cfg(feature = "tokio")]
                closed_async: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Starts draining: every [`Listener`] wrapping this drain stops
    /// accepting, including accepts already waiting (in other threads or
    /// tasks), which return an error for which [`is_closed_error`] is true.
    ///
    /// The listening sockets are not touched (not shut down, not closed):
    /// connections still in their accept queue are left to the process that
    /// shares them. Connections already accepted keep going; wait for them
    /// with [`wait`](Drain::wait). Calling `close` again does nothing.
    pub fn close(&self) {
        let inner = &*self.inner;
        let prev = inner.state.fetch_or(CLOSED, SeqCst);
        if prev & CLOSED != 0 {
            return;
        }
        {
            let _guard = inner
                .wake_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(fd) = inner.wake.get() {
                signal(fd.as_fd());
            }
        }
        #[cfg(feature = "tokio")]
        inner.closed_async.notify_waiters();
        tracing::debug!(
            open = prev & COUNT,
            "drain closed: accepting no more connections"
        );
    }

    /// Whether [`close`](Drain::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The number of tracked connections still open (a connection being
    /// accepted at this instant counts too).
    pub fn active(&self) -> usize {
        self.inner.count()
    }

    /// Counts `stream`, a connection accepted some other way, until the
    /// returned wrapper is dropped. This works after `close` too: a
    /// connection that exists must be waited for.
    pub fn track<S>(&self, stream: S) -> Tracked<S> {
        self.inner.state.fetch_add(1, SeqCst);
        Tracked::new(
            stream,
            Guard {
                inner: self.inner.clone(),
            },
        )
    }

    /// Blocks until no tracked connection is open, or `timeout` has passed.
    ///
    /// Returns at once when none is open. This does not call
    /// [`close`](Drain::close): call it first, or listeners keep adding
    /// connections. On timeout the error says how many were still open; the
    /// usual reaction is to log it and exit anyway.
    pub fn wait(&self, timeout: Duration) -> Result<(), StillOpen> {
        let start = Instant::now();
        let inner = &*self.inner;
        if inner.count() == 0 {
            return Ok(());
        }
        let _waiter = Waiter::new(inner);
        let deadline = start.checked_add(timeout);
        let mut guard = inner.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let open = inner.count();
            if open == 0 {
                return Ok(());
            }
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if now >= deadline => {
                    return Err(StillOpen {
                        open,
                        waited: now - start,
                    });
                }
                Some(deadline) => deadline - now,
                // `timeout` too large to add: wait forever, an hour at a time.
                None => Duration::from_secs(3600),
            };
            guard = inner
                .idle
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Like [`wait`](Drain::wait), for async code: resolves when no tracked
    /// connection is open, or with [`StillOpen`] once `timeout` has passed.
    ///
    /// Needs a tokio runtime with the time driver enabled. Cancel-safe.
    #[cfg(feature = "tokio")]
    pub async fn wait_async(&self, timeout: Duration) -> Result<(), StillOpen> {
        let start = tokio::time::Instant::now();
        let inner = &*self.inner;
        if inner.count() == 0 {
            return Ok(());
        }
        let _waiter = Waiter::new(inner);
        let deadline = start.checked_add(timeout);
        loop {
            let mut notified = std::pin::pin!(inner.idle_async.notified());
            // Registered before the check, so a wake-up in between is kept.
            notified.as_mut().enable();
            if inner.count() == 0 {
                return Ok(());
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        let open = inner.count();
                        if open == 0 {
                            return Ok(());
                        }
                        return Err(StillOpen {
                            open,
                            waited: start.elapsed(),
                        });
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Resolves once [`close`](Drain::close) has been called (at once if it
    /// was). Cancel-safe, so it can sit in a `select!`.
    #[cfg(feature = "tokio")]
    pub async fn closed(&self) {
        let mut notified = std::pin::pin!(self.inner.closed_async.notified());
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }
}

impl Inner {
    fn is_closed(&self) -> bool {
        self.state.load(SeqCst) & CLOSED != 0
    }

    fn count(&self) -> usize {
        self.state.load(SeqCst) & COUNT
    }

    /// Counts a connection about to be accepted, unless the drain is closed.
    fn reserve(&self) -> io::Result<Reservation<'_>> {
        let prev = self.state.fetch_add(1, SeqCst);
        let reservation = Reservation { inner: self };
        if prev & CLOSED != 0 {
            drop(reservation);
            return Err(closed_error());
        }
        Ok(reservation)
    }

    /// Uncounts one connection, waking waiters when it was the last.
    fn release(&self) {
        let prev = self.state.fetch_sub(1, SeqCst);
        debug_assert!(prev & COUNT != 0, "drain count underflow");
        if prev & COUNT == 1 && self.waiters.load(SeqCst) != 0 {
            // Taking the lock orders this wake-up after a blocking waiter's
            // check of the count (it holds the lock from the check until it
            // sleeps), so the wake-up cannot be lost.
            drop(self.lock.lock().unwrap_or_else(PoisonError::into_inner));
            self.idle.notify_all();
            #[cfg(feature = "tokio")]
            self.idle_async.notify_waiters();
        }
    }

    /// The eventfd that `close` signals, made on first use.
    ///
    /// Made and signalled under `wake_lock`, which `close` also takes after
    /// setting `CLOSED`: either `close` finds the fd and signals it, or the
    /// fd is made after `close` and signalled here. So once closed, the fd is
    /// readable for every `poll` that could block on it.
    fn wake_fd(&self) -> io::Result<BorrowedFd<'_>> {
        if let Some(fd) = self.wake.get() {
            return Ok(fd.as_fd());
        }
        let _guard = self
            .wake_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(fd) = self.wake.get() {
            return Ok(fd.as_fd());
        }
        use rustix::event::{EventfdFlags, eventfd};
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        if self.is_closed() {
            signal(fd.as_fd());
        }
        // Under the lock nobody else sets it, so this stores `fd`.
        Ok(self.wake.get_or_init(|| fd).as_fd())
    }
}

/// Makes the eventfd readable (for good: nobody reads it).
fn signal(fd: BorrowedFd<'_>) {
    // Cannot fail for a valid eventfd whose counter is far from u64::MAX; a
    // failure would only delay wake-ups until the next connection.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Counts one open connection; dropping it uncounts.
pub(crate) struct Guard {
    inner: Arc<Inner>,
}

impl Guard {
    fn drain(&self) -> Drain {
        Drain {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.inner.release();
    }
}

/// A count taken before an `accept` call: dropped when nothing was
/// accepted, turned into a [`Guard`] when something was.
struct Reservation<'a> {
    inner: &'a Inner,
}

impl Reservation<'_> {
    fn keep(self, drain: &Drain) -> Guard {
        debug_assert!(std::ptr::eq(self.inner, &*drain.inner));
        // The count moves to the guard; skip our `Drop`, which would undo it.
        std::mem::forget(self);
        Guard {
            inner: drain.inner.clone(),
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.inner.release();
    }
}

/// Registers a waiter for the duration of a wait (also when the wait is
/// cancelled).
struct Waiter<'a> {
    inner: &'a Inner,
}

impl<'a> Waiter<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.waiters.fetch_add(1, SeqCst);
        Waiter { inner }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.inner.waiters.fetch_sub(1, SeqCst);
    }
}

/// Connections were still open when the drain deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{open} connection(s) still open after {} of draining; they are cut when this \
     process exits. Give connections more time to finish (a longer drain timeout), \
     or make them close sooner (e.g. an idle timeout on keep-alive connections)",
    Secs(*waited)
)]
#[non_exhaustive]
pub struct StillOpen {
    /// How many tracked connections were open at the deadline.
    pub open: usize,
    /// How long the wait lasted.
    pub waited: Duration,
}

/// Formats a duration for people: `250ms`, `1.5s`, `2s`, `30s`.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms < 1000 {
            write!(f, "{ms}ms")
        } else if ms < 9_950 {
            let tenths = (ms + 50) / 100;
            match tenths % 10 {
                0 => write!(f, "{}s", tenths / 10),
                t => write!(f, "{}.{t}s", tenths / 10),
            }
        } else {
            write!(f, "{}s", (ms + 500) / 1000)
        }
    }
}

/// The error inside the [`io::Error`] that `accept` returns once the drain is
/// closed (its kind is [`io::ErrorKind::Other`]). Test for it with
/// [`is_closed_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "listener closed for draining: Drain::close was called, so this process accepts \
     no more connections (those still queued are left to the process sharing the \
     socket); stop the accept loop when drain::is_closed_error(&err) is true"
)]
#[non_exhaustive]
pub struct ListenerClosed;

/// Whether `err` is the error a [`Listener`] returns once its drain is
/// closed (as opposed to a real accept failure).
pub fn is_closed_error(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Other
        && err
            .get_ref()
            .is_some_and(|inner| inner.is::<ListenerClosed>())
}

fn closed_error() -> io::Error {
    io::Error::other(ListenerClosed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_wakes() {
        let drain = Drain::new();
        let a = drain.track(1u8);
        let b = drain.track(2u8);
        assert_eq!(drain.active(), 2);
        drain.close();
        drain.close();
        assert!(drain.is_closed());
        assert_eq!(drain.active(), 2);
        let err = drain.wait(Duration::from_millis(20)).unwrap_err();
        assert_eq!(err.open, 2);
        drop(a);
        let waiter = {
            let drain = drain.clone();
            std::thread::spawn(move || drain.wait(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(b);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(drain.active(), 0);
    }

    #[test]
    fn reservation_fails_once_closed() {
        let drain = Drain::new();
        let r = drain.inner.reserve().unwrap();
        let g = r.keep(&drain);
        assert_eq!(drain.active(), 1);
        drain.close();
        let err = drain.inner.reserve().err().unwrap();
        assert!(is_closed_error(&err), "{err}");
        assert_eq!(drain.active(), 1);
        drop(g);
        assert_eq!(drain.active(), 0);
        assert!(!is_closed_error(&io::Error::other("x")));
    }

    #[test]
    fn still_open_message() {
        let e = StillOpen {
            open: 3,
            waited: Duration::from_millis(30_004),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("3 connection(s) still open after 30s of draining;"),
            "{msg}"
        );
        assert_eq!(Secs(Duration::from_millis(250)).to_string(), "250ms");
        assert_eq!(Secs(Duration::from_millis(1500)).to_string(), "1.5s");
        assert_eq!(Secs(Duration::from_millis(1999)).to_string(), "2s");
        assert_eq!(Secs(Duration::from_millis(2040)).to_string(), "2s");
        assert_eq!(Secs(Duration::from_millis(9_960)).to_string(), "10s");
        assert_eq!(Secs(Duration::from_millis(30_450)).to_string(), "30s");
    }
}
