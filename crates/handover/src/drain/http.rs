//! HTTP/1.1 keep-alive connections that drain without losing a request
//! (feature `hyper`).
//!
//! Closing an idle keep-alive connection at once when draining starts is how
//! servers lose requests during restarts: the client may be sending its next
//! request on that connection at that very moment, and it gets a reset or an
//! empty reply instead of an answer. [`serve_connection`] drains differently:
//!
//! - once the [`Drain`] is closed, every response carries
//!   `Connection: close`, so the client sends its next request on a new
//!   connection, which the successor process accepts;
//! - a request in progress is finished (and answered with
//!   `Connection: close`);
//! - a connection with no request in progress is closed only after it has
//!   been idle (no request, no byte received or sent) for
//!   [`HttpOptions::idle_grace`]; a request whose bytes arrive during the
//!   grace is answered, with `Connection: close`.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{Request, Response, body::Incoming, service::service_fn};
//! use handover::drain::{self, Drain, Listener, http::{HttpOptions, serve_connection}};
//!
//! # async fn run() -> std::io::Result<()> {
//! let drain = Drain::new();
//! let listener = Listener::new(tokio::net::TcpListener::bind("127.0.0.1:8080").await?, &drain);
//! let options = HttpOptions::default();
//! loop {
//!     let stream = match listener.accept().await {
//!         Ok((stream, _)) => stream,
//!         Err(e) if drain::is_closed_error(&e) => break,
//!         Err(_) => continue,
//!     };
//!     let (drain, options) = (drain.clone(), options.clone());
//!     tokio::spawn(async move {
//!         let service = service_fn(|_req: Request<Incoming>| async {
//!             Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
//!         });
//!         let _ = serve_connection(stream, service, &drain, &options).await;
//!     });
//! }
//! // `drain.close()` was called elsewhere (on SIGTERM, say): wait for the rest.
//! let _ = drain.wait_async(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! Limits: only HTTP/1.x is served (HTTP/2 has its own `GOAWAY` mechanism),
//! without upgrades (WebSocket). The grace makes the keep-alive close race
//! rare, not impossible: a request whose first bytes reach the server at the
//! very instant the grace ends still meets a closing connection, as with any
//! HTTP/1.1 server that closes an idle connection; a client that retries a
//! request failing before any response byte (as most do for idempotent
//! requests) recovers.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Drain;

/// Settings for [`serve_connection`].
///
/// Make one with `HttpOptions::default()` and the `with_*` methods (or set
/// the fields of a default value).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Once draining, how long a connection with no request in progress
    /// must stay idle (no byte received or sent) before it is closed.
    /// Default: 2 s.
    ///
    /// This gives a client that is about to send its next request time to do
    /// so: that request is answered (with `Connection: close`) instead of
    /// racing the close.
    pub idle_grace: Duration,
    /// How long the client may take to send a request's headers, counted
    /// from the end of the previous response (so it also closes keep-alive
    /// connections idle this long, draining or not). `None`: no limit.
    /// Default: 30 s.
    pub header_read_timeout: Option<Duration>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            idle_grace: Duration::from_secs(2),
            header_read_timeout: Some(Duration::from_secs(30)),
        }
    }
}

impl HttpOptions {
    /// Sets [`idle_grace`](HttpOptions::idle_grace).
    pub fn with_idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// Sets [`header_read_timeout`](HttpOptions::header_read_timeout).
    pub fn with_header_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.header_read_timeout = timeout;
        self
    }
}

/// Serves HTTP/1.1 on `io` with `service` until the connection is done,
/// draining it without loss once `drain` is closed (see the
/// [module docs](self)).
///
/// `io` is usually the [`Tracked`](super::Tracked) stream from a
/// [`Listener`](super::Listener), so the drain also waits for this
/// connection. Returns when the connection is closed: by the client, after
/// a `Connection: close` response, after the idle grace, or on an error
/// (which is returned; a client that goes away mid-request is one).
pub async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    drain: &Drain,
    options: &HttpOptions,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let state = Arc::new(ConnState {
        drain: drain.clone(),
        base: Instant::now(),
        last_activity: AtomicU64::new(0),
        busy: AtomicUsize::new(0),
    });
    let io = TokioIo::new(Activity {
        io,
        state: state.clone(),
    });
    let service = DrainService {
        inner: service,
        state: state.clone(),
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.header_read_timeout);
    let mut conn = std::pin::pin!(builder.serve_connection(io, service));

    tokio::select! {
        biased;
        done = conn.as_mut() => return done,
        () = drain.closed() => {}
    }

    // Draining. Responses from now on carry `Connection: close` (added by
    // `DrainService`), and hyper closes the connection after writing one.
    // What is left: a connection with no request in progress, closed once
    // idle for the grace.
    state.touch();
    let grace = options.idle_grace;
    loop {
        let deadline = state.idle_since() + grace;
        tokio::select! {
            biased;
            done = conn.as_mut() => return done,
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
        // A request in progress: shutting down now lets hyper finish it and
        // close. Otherwise only once idle for the whole grace.
        if state.busy.load(Relaxed) == 0 && state.idle_since() + grace > Instant::now() {
            continue;
        }
        break;
    }
    tracing::trace!("drain: closing a keep-alive connection after its idle grace");
    // Closes at once when hyper is between requests; otherwise finishes the
    // response in progress (with `Connection: close`), then closes.
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// What the drain loop of one connection knows about it.
struct ConnState {
    drain: Drain,
    /// Origin of `last_activity`.
    base: Instant,
    /// Nanoseconds from `base` to the last byte received or sent, or to the
    /// last response, recorded only while draining.
    last_activity: AtomicU64,
    /// Service calls in progress (one at a time with HTTP/1.1).
    busy: AtomicUsize,
}

impl ConnState {
    fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_activity.fetch_max(nanos, Relaxed);
    }

    /// Records activity, but only while draining (so the time is not read
    /// on every byte of a connection in normal service).
    fn touch_if_draining(&self) {
        if self.drain.is_closed() {
            self.touch();
        }
    }

    fn idle_since(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_activity.load(Relaxed))
    }
}

/// The connection's I/O, noting activity while draining.
struct Activity<I> {
    io: I,
    state: Arc<ConnState>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Activity<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() != before {
            this.state.touch_if_draining();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Activity<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.state.touch_if_draining();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.state.touch_if_draining();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The user's service, marking requests in progress and adding
/// `Connection: close` to responses made while draining.
struct DrainService<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, B> Service<Request<Incoming>> for DrainService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.state.busy.fetch_add(1, Relaxed);
        DrainFuture {
            // Boxed so that any future works (most are not `Unpin`) without
            // `unsafe` pin projection.
            inner: Box::pin(self.inner.call(req)),
            busy: Some(Busy(self.state.clone())),
        }
    }
}

/// Uncounts a request in progress when dropped.
struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch_if_draining();
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

/// The future of [`DrainService`].
struct DrainFuture<F> {
    inner: Pin<Box<F>>,
    /// `None` once the response is out.
    busy: Option<Busy>,
}

impl<F, B, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut result = ready!(this.inner.as_mut().poll(cx));
        if let (Ok(response), Some(busy)) = (&mut result, &this.busy) {
            if busy.0.drain.is_closed() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        this.busy = None;
        Poll::Ready(result)
    }
}
