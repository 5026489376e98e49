//! What one connection's drain needs: its state, its I/O noting activity,
//! the service wrapper, and the loops that end HTTP/1.1 and HTTP/2
//! connections without loss.
//!
//! Shaped so that an HTTP/1.1 connection can later be stopped at a request
//! boundary and handed over with its I/O and read buffer (issue 18):
//!
//! - the hyper connection (`http1::Connection`, or `UpgradeableConnection`
//!   with upgrades) is held by value in [`drive_http1`], not pinned in place:
//!   it is `Unpin` because [`DrainService`] is, so `into_parts()` can take
//!   it apart after it returned;
//! - hyper shuts the I/O down (`poll_shutdown`, a FIN) when a connection
//!   ends, upgradeable ones included: a hand-over makes [`Activity`]'s
//!   `poll_shutdown` a no-op first (a flag in [`ConnState`]), calls
//!   `graceful_shutdown` while no request is in progress (`busy` is 0; hyper
//!   then ends at once, without adding `Connection: close` to anything), and
//!   takes `Parts { io, read_buf, .. }`;
//! - every I/O layer unwraps: `TokioIo::into_inner`, [`Rewind::into_parts`]
//!   (the bytes read to tell HTTP/1.1 from HTTP/2, none once hyper read
//!   them), [`Activity::into_inner`], then the [`Tracked`](super::super::Tracked)
//!   stream.
//!
//! [`Rewind::into_parts`]: super::sniff::Rewind::into_parts

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::super::Drain;

/// What the drain loop of one connection knows about it.
pub(super) struct ConnState {
    pub(super) drain: Drain,
    /// Origin of `last_activity`.
    base: Instant,
    /// Nanoseconds from `base` to the last byte received or sent, or to the
    /// last response, recorded only while draining.
    last_activity: AtomicU64,
    /// Service calls in progress (one at a time with HTTP/1.1, any number
    /// with HTTP/2).
    pub(super) busy: AtomicUsize,
    /// Service calls made (requests received whole enough to be served).
    pub(super) requests: AtomicU64,
    /// HTTP/2: streams the client opened (HEADERS frames on new stream
    /// ids, counted as they are read).
    pub(super) streams: AtomicU64,
    /// Set when this connection may be handed to a successor (a plain TCP
    /// connection served with a [`Handoff`](super::Handoff)).
    pub(super) handoff: Option<super::Handoff>,
    /// Set when handing this connection over is no longer possible.
    handoff_stopped: AtomicBool,
    /// Whether the last request leaves the connection at a boundary where it
    /// can be handed over (not `Connection: close`, no body, no upgrade).
    last_clean: AtomicBool,
    /// Woken when a request ends while draining.
    pub(super) idle: tokio::sync::Notify,
    /// Makes [`Activity`]'s `poll_shutdown` do nothing: the connection is
    /// being handed over, and a shutdown would end it for both processes.
    pub(super) no_shutdown: AtomicBool,
}

impl ConnState {
    pub(super) fn new(drain: &Drain) -> Arc<ConnState> {
        ConnState::with_handoff(drain, None)
    }

    pub(super) fn with_handoff(drain: &Drain, handoff: Option<super::Handoff>) -> Arc<ConnState> {
        Arc::new(ConnState {
            drain: drain.clone(),
            base: Instant::now(),
            last_activity: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            handoff,
            handoff_stopped: AtomicBool::new(false),
            last_clean: AtomicBool::new(true),
            idle: tokio::sync::Notify::new(),
            no_shutdown: AtomicBool::new(false),
        })
    }

    /// Whether this connection can still be handed to a successor.
    pub(super) fn handoff_possible(&self) -> bool {
        self.handoff.as_ref().is_some_and(|h| h.is_giving())
            && !self.handoff_stopped.load(Relaxed)
            && self.last_clean.load(Relaxed)
    }

    /// From now on, this connection is drained the usual way.
    pub(super) fn stop_handoff(&self) {
        self.handoff_stopped.store(true, Relaxed);
    }

    pub(super) fn touch(&self) {
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

    pub(super) fn idle_since(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_activity.load(Relaxed))
    }
}

/// The connection's I/O, noting activity while draining.
pub(super) struct Activity<I> {
    io: I,
    state: Arc<ConnState>,
}

impl<I> Activity<I> {
    pub(super) fn new(io: I, state: Arc<ConnState>) -> Self {
        Activity { io, state }
    }

    /// The wrapped I/O (for a hand-over of the connection).
    pub(super) fn into_inner(self) -> I {
        self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Activity<I> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.state.drain.is_closed() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() != before {
            this.state.touch();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Activity<I> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if this.state.drain.is_closed() && matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.state.touch();
        }
        result
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if this.state.drain.is_closed() && matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.state.touch();
        }
        result
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.no_shutdown.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Which protocol a [`DrainService`] serves: what it may add to responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proto {
    /// HTTP/1.x: `Connection: close` on responses made while draining.
    Http1,
    /// HTTP/1.x with upgrades (`Connection: Upgrade`): as `Http1`, except
    /// for `101 Switching Protocols`; requests asking for an upgrade carry
    /// the [`Drain`] in their extensions.
    Http1Upgrades,
    /// HTTP/2: connection headers are not allowed; the drain speaks GOAWAY.
    Http2,
}

/// The user's service, marking requests in progress and adding
/// `Connection: close` to HTTP/1.1 responses made while draining.
pub(super) struct DrainService<S> {
    inner: S,
    state: Arc<ConnState>,
    proto: Proto,
}

// Nothing is pinned through a `DrainService` (its futures are boxed), so it
// is `Unpin` whatever `S` is: the hyper connection holding it can then be
// held by value, and taken apart (`into_parts`) at a request boundary.
impl<S> Unpin for DrainService<S> {}

impl<S> DrainService<S> {
    pub(super) fn new(inner: S, state: Arc<ConnState>, proto: Proto) -> Self {
        DrainService {
            inner,
            state,
            proto,
        }
    }

    /// The user's service.
    pub(super) fn into_inner(self) -> S {
        self.inner
    }
}

/// Whether a connection can be handed over after answering `req`: HTTP/1.1
/// keeping the connection alive, no body (which might not have been read to
/// its end), no upgrade.
fn leaves_clean_boundary(req: &Request<Incoming>) -> bool {
    use hyper::body::Body as _;
    req.version() == hyper::Version::HTTP_11
        && req.body().is_end_stream()
        && req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_none()
        && !req.headers().get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        })
}

impl<S, B> Service<Request<Incoming>> for DrainService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DrainFuture<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.state.busy.fetch_add(1, Relaxed);
        self.state.requests.fetch_add(1, Relaxed);
        if self.state.handoff.is_some() {
            self.state
                .last_clean
                .store(leaves_clean_boundary(&req), Relaxed);
        }
        // hyper puts `OnUpgrade` only in requests it can upgrade (an
        // `Upgrade` header, or CONNECT): cheaper than a header lookup.
        if self.proto == Proto::Http1Upgrades
            && req
                .extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .is_some()
        {
            // So the handler of an upgraded connection (a WebSocket) can
            // watch for the drain and say goodbye (a close frame).
            req.extensions_mut().insert(self.state.drain.clone());
        }
        DrainFuture {
            inner: self.inner.call(req),
            busy: Some(Busy(self.state.clone())),
            http1: self.proto != Proto::Http2,
        }
    }
}

/// Uncounts a request in progress when dropped.
struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch_if_draining();
        self.0.busy.fetch_sub(1, Relaxed);
        if self.0.handoff.is_some() && self.0.drain.is_closed() {
            self.0.idle.notify_one();
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`DrainService`].
    pub(super) struct DrainFuture<F> {
        #[pin]
        inner: F,
        // `None` once the response is out.
        busy: Option<Busy>,
        http1: bool,
    }
}

impl<F, B, E> Future for DrainFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(busy), true) = (&mut result, &*this.busy, *this.http1) {
            // A `101 Switching Protocols` keeps its `Connection: Upgrade`:
            // the upgraded connection stays tracked, and its handler learns
            // of the drain from the `Drain` in the request's extensions.
            let state = &busy.0;
            if state.handoff.is_some()
                && response.headers().get_all(CONNECTION).iter().any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
                })
            {
                state.last_clean.store(false, Relaxed);
            }
            // A connection about to be handed to a successor stays open.
            if state.drain.is_closed()
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
                && !state.handoff_possible()
            {
                state.stop_handoff();
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        *this.busy = None;
        Poll::Ready(result)
    }
}

/// A hyper server connection that can be shut down gracefully.
pub(super) trait Graceful: Future<Output = hyper::Result<()>> + Unpin {
    /// HTTP/1.1: close once the response in progress is written (at once
    /// when between requests). HTTP/2: the two-step GOAWAY.
    fn graceful_shutdown(&mut self);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    Self: Unpin,
{
    fn graceful_shutdown(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    Self: Unpin,
{
    fn graceful_shutdown(&mut self) {
        Pin::new(self).graceful_shutdown();
    }
}

impl<I, S, B> Graceful
    for Pin<Box<hyper::server::conn::http2::Connection<I, S, hyper_util::rt::TokioExecutor>>>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::Future: Send + 'static,
{
    fn graceful_shutdown(&mut self) {
        self.as_mut().graceful_shutdown();
    }
}

/// Polls `conn` until it is done (`Some` of its result) or the drain is
/// closed (`None`).
///
/// The same as a `select!` on `conn` and `drain.closed()`, without polling
/// the drain's notification at each of the connection's wake-ups: it is
/// polled when the waker changes, and otherwise only once the drain's
/// closed flag (one atomic load) is set.
pub(super) async fn until_closed<C: Future + Unpin>(
    conn: &mut C,
    drain: &Drain,
) -> Option<C::Output> {
    let mut closed = std::pin::pin!(drain.closed());
    let mut waker: Option<std::task::Waker> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = Pin::new(&mut *conn).poll(cx) {
            return Poll::Ready(Some(out));
        }
        let registered = waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !registered || drain.is_closed() {
            if closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            waker = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}

/// Serves an HTTP/1.1 connection until it is done, draining it without loss
/// once the drain is closed: responses from then on carry
/// `Connection: close` (added by [`DrainService`]), a request in progress is
/// finished, and a connection with none is closed once idle for `grace`.
pub(super) async fn drive_http1<C: Graceful>(
    mut conn: C,
    state: &ConnState,
    grace: Duration,
) -> hyper::Result<()> {
    if let Some(done) = until_closed(&mut conn, &state.drain).await {
        return done;
    }
    state.touch();
    loop {
        let deadline = state.idle_since() + grace;
        tokio::select! {
            biased;
            done = &mut conn => return done,
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
    conn.graceful_shutdown();
    conn.await
}

/// Serves an HTTP/2 connection until it is done; once the drain is closed,
/// sends the two-step GOAWAY (RFC 9113, 6.8: first with the highest stream
/// id, then, after a PING round trip, with the last stream actually
/// received), lets every stream the client opened finish, and closes.
pub(super) async fn drive_http2<C: Graceful>(mut conn: C, state: &ConnState) -> hyper::Result<()> {
    let result = async {
        if let Some(done) = until_closed(&mut conn, &state.drain).await {
            return done;
        }
        tracing::trace!("drain: GOAWAY on an HTTP/2 connection");
        conn.graceful_shutdown();
        conn.await
    }
    .await;
    // Every stream the client sent was served, or the connection failed:
    // these two numbers say which (tests compare them with the client's).
    tracing::debug!(
        streams = state.streams.load(Relaxed),
        requests = state.requests.load(Relaxed),
        draining = state.drain.is_closed(),
        ok = result.is_ok(),
        "HTTP/2 connection ended"
    );
    result
}
