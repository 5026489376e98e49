//! HTTP connections that drain without losing a request (feature `hyper`):
//! HTTP/1.1 keep-alive, HTTP/2 (h2c with prior knowledge, and h2 over TLS),
//! and upgraded connections such as WebSockets.
//!
//! Closing an idle keep-alive connection at once when draining starts is how
//! servers lose requests during restarts: the client may be sending its next
//! request on that connection at that very moment, and it gets a reset or an
//! empty reply instead of an answer. This module drains differently.
//!
//! **HTTP/1.1** ([`serve_connection`], and [`serve_connection_auto`] when the
//! client speaks HTTP/1.x):
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
//! **HTTP/2** ([`serve_connection_auto`], when the connection starts with
//! the HTTP/2 preface): once the drain is closed, the server sends the
//! two-step GOAWAY of RFC 9113 (section 6.8): a first GOAWAY with the highest
//! possible stream id and a PING, then, once the PING has come back (one
//! round trip later) and [`HttpOptions::http2_goaway_delay`] has passed, a
//! second GOAWAY with the last stream id actually received. Every stream up
//! to it is served to the end, including response bodies still streaming (a
//! gRPC server stream); none is refused or reset. The connection closes when
//! its last stream is done. A client that wants to send more opens a new
//! connection, which the successor accepts. The delay is there because the
//! common client libraries (`h2`, nghttp2) send the PING acknowledgement
//! ahead of the requests they had queued: without it, the second GOAWAY
//! would leave those out. There is no idle grace before the first GOAWAY:
//! unlike closing an HTTP/1.1 connection, a GOAWAY cannot race with a
//! request the client is sending, since the streams it opened in the
//! meantime are still served.
//!
//! **A connection that has sent nothing yet** (accepted just before the
//! drain, or idle before its first request) follows the HTTP/1.1 grace rule
//! under both protocols (unless it is handed over, below): it is closed once the drain is closed and it stayed
//! silent for the grace; if its first bytes arrive in time, they are served.
//!
//! **Upgraded connections** (`Connection: Upgrade`, a WebSocket, with
//! [`serve_connection_auto`] and [`serve`]): the connection stays counted by
//! the drain after the upgrade, for as long as the upgraded I/O
//! ([`hyper::upgrade::Upgraded`]) lives. The handler learns that the drain
//! began from the [`Drain`] that every request asking for an upgrade carries
//! in its extensions (`req.extensions().get::<Drain>()`, or axum's
//! `Extension<Drain>`): it can `drain.closed().await` and say goodbye (a
//! WebSocket close frame) so the client reconnects to the successor. The
//! drain deadline ends the connections that are still open.
//!
//! **Hand-over** ([`Handoff`], in [`HttpOptions::handoff`]): instead of
//! ending its HTTP/1.1 keep-alive connections, a draining [`serve`] hands
//! each one, at a request boundary and with the bytes it had read and not
//! answered, to the new process, which serves it on; clients keep their
//! connections across upgrades. A refusal or any failure falls back to the
//! rules above. Plain TCP and HTTP/1.1 only: HTTP/2 connections get the
//! GOAWAY (one reconnect per client, since HTTP/2 multiplexes; handing one
//! over would need its HPACK tables and stream states, which `h2` keeps to
//! itself), and TLS sessions live in the process (kernel TLS, with the
//! secrets rustls can export, would be the way; see the README).
//!
//! **Whole servers**: [`serve`] accepts on a drained [`Listener`] and serves
//! every connection with [`serve_connection_auto`] until the drain is
//! closed; [`tower()`](tower()) (feature `tower`) serves an `axum::Router` or
//! a tonic service with it; [`HttpOptions::tls`] (feature `tls`) adds TLS.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{Request, Response, body::Incoming, service::service_fn};
//! use handover::drain::{Drain, Listener, http::{HttpOptions, serve}};
//!
//! # async fn run() -> std::io::Result<()> {
//! let drain = Drain::new();
//! let listener = Listener::new(tokio::net::TcpListener::bind("127.0.0.1:8080").await?, &drain);
//! let service = service_fn(|_req: Request<Incoming>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
//! });
//! // Serves HTTP/1.1 and HTTP/2 until `drain.close()` is called elsewhere
//! // (on SIGTERM, or once a successor took over the socket)...
//! serve(&listener, service, &HttpOptions::default()).await?;
//! // ...then waits for the connections still open.
//! let _ = drain.wait_async(Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! Limits: the grace makes the HTTP/1.1 keep-alive close race rare, not
//! impossible: a request whose first bytes reach the server at the very
//! instant the grace ends still meets a closing connection, as with any
//! HTTP/1.1 server that closes an idle connection; a client that retries a
//! request failing before any response byte (as most do for idempotent
//! requests) recovers. HTTP/2 has no such race. Clients that handle a
//! GOAWAY less well than they could: h2load does not open a new connection
//! after one (its clients stop sending); tonic's client returns `CANCELLED`
//! for a call it had queued on a connection that was going away and had not
//! sent (grpc-go and grpc-java retry those transparently).

use std::future::Future;
use std::io;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Drain, Listener, is_closed_error};

mod conn;
mod goaway;
mod handoff;
mod sniff;
#[cfg(feature = "tower")]
mod tower;

#[cfg(feature = "tower")]
pub use self::tower::{TowerService, tower};

pub use handoff::{HANDOFF_SOCKET_ENV, HANDOFF_TIMEOUT, Handoff, HandoffError};

use conn::{Activity, ConnState, DrainService, Proto, drive_http1, drive_http2};
use sniff::{NoRequest, Protocol, Rewind, sniff};

/// Boxed error, as hyper takes them from services and bodies.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Settings for [`serve_connection`], [`serve_connection_auto`] and
/// [`serve`].
///
/// Make one with `HttpOptions::default()` and by-value setters, like the
/// crate's other option structs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpOptions {
    idle_grace: Duration,
    header_read_timeout: Option<Duration>,
    http2: bool,
    http2_goaway_delay: Duration,
    tcp_nodelay: bool,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::TlsAcceptor>,
    handoff: Option<Handoff>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            idle_grace: Duration::from_secs(2),
            header_read_timeout: Some(Duration::from_secs(30)),
            http2: true,
            http2_goaway_delay: Duration::from_secs(1),
            tcp_nodelay: true,
            #[cfg(feature = "tls")]
            tls: None,
            handoff: None,
        }
    }
}

impl HttpOptions {
    /// Once draining, how long an HTTP/1.1 connection with no request in
    /// progress, or a connection of either protocol that has sent nothing
    /// yet, must stay idle (no byte received or sent) before it is closed.
    /// Default: 2 s.
    ///
    /// This gives a client that is about to send its next request time to do
    /// so: that request is answered (with `Connection: close`) instead of
    /// racing the close.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// How long the client may take to send a request's headers, counted
    /// from the end of the previous response (so it also closes keep-alive
    /// connections idle this long, draining or not), and from the accept for
    /// the first bytes of a connection. `None`: no limit. Default: 30 s.
    pub fn header_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Whether [`serve_connection_auto`] and [`serve`] serve HTTP/2 to
    /// clients that start with its preface (h2c with prior knowledge, and
    /// h2 over TLS). When false they serve HTTP/1.x only. Default: true.
    pub fn http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }

    /// HTTP/2: once the client has acknowledged the first GOAWAY's PING,
    /// how much longer the server waits before the second GOAWAY, which
    /// fixes the last stream it serves. Default: 1 s.
    ///
    /// One round trip (the PING) is what RFC 9113 asks for, but the common
    /// client libraries (`h2`, nghttp2) send the PING acknowledgement before
    /// the requests they had queued, so a few streams opened just before
    /// the client saw the first GOAWAY would arrive after it and be dropped
    /// (a client may retry them, but many count them as errors). The
    /// acknowledgement is held back this long while the frames after it are
    /// read; Envoy's `drain_timeout` (default 5 s) is the same wait. It only
    /// delays the end of a draining connection, never a response.
    pub fn http2_goaway_delay(mut self, delay: Duration) -> Self {
        self.http2_goaway_delay = delay;
        self
    }

    /// Whether [`serve`] sets `TCP_NODELAY` on accepted TCP connections, as
    /// HTTP servers usually do (responses are written whole). Default: true.
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Hands idle HTTP/1.1 keep-alive connections to a successor when
    /// draining, and serves those a predecessor hands over (plain TCP only:
    /// ignored by [`serve`] with TLS; see [`Handoff`]). The first [`serve`]
    /// with a given `Handoff` serves the connections it takes: use one
    /// `Handoff` per listener. Default: none (every keep-alive connection
    /// is ended with `Connection: close` when draining).
    pub fn handoff(mut self, handoff: Handoff) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// TLS for [`serve`] (feature `tls`): each accepted connection does the
    /// handshake first (in its own task), then speaks what ALPN chose.
    /// Default: none (plain TCP).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: super::tls::TlsAcceptor) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// Why [`serve_connection_auto`] ended a connection with an error.
///
/// None of these loses a request that the client had sent and could be
/// answered; they are worth a debug log line, not an alarm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Reading the first bytes (to tell HTTP/1.1 from HTTP/2) failed.
    #[error("reading the first bytes of the connection failed: {0}")]
    Io(#[source] io::Error),
    /// hyper ended the connection with an error: a malformed request, a
    /// client that went away mid-request, a protocol error.
    #[error("HTTP connection error: {0}")]
    Http(#[source] hyper::Error),
    /// The TLS handshake failed (feature `tls`): the client does not trust
    /// the certificate, does not speak TLS, or offered nothing in common.
    #[cfg(feature = "tls")]
    #[error(
        "TLS handshake failed: {0}; check that the client trusts the certificate and \
         speaks TLS 1.2 or 1.3"
    )]
    Tls(#[source] io::Error),
    /// The TLS handshake did not finish in time (feature `tls`).
    #[cfg(feature = "tls")]
    #[error(
        "TLS handshake not finished after {0:?}; the client is too slow or not speaking \
         TLS (raise TlsAcceptor::handshake_timeout if the network is that slow)"
    )]
    TlsTimeout(Duration),
}

/// Serves HTTP/1.1 on `io` with `service` until the connection is done,
/// draining it without loss once `drain` is closed (see the
/// [module docs](self)).
///
/// HTTP/1.x only, without upgrades, and without `Send` bounds; for HTTP/2
/// and upgrades (WebSocket) use [`serve_connection_auto`].
///
/// `io` is usually the [`Tracked`](super::Tracked) stream from a
/// [`Listener`], so the drain also waits for this connection. Returns when
/// the connection is closed: by the client, after a `Connection: close`
/// response, after the idle grace, or on an error (which is returned; a
/// client that goes away mid-request is one).
pub async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    drain: &Drain,
    options: &HttpOptions,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    let state = ConnState::new(drain);
    let io = TokioIo::new(Activity::new(io, state.clone()));
    let service = DrainService::new(service, state.clone(), Proto::Http1);
    let conn = http1_builder(options).serve_connection(io, service);
    drive_http1(conn, &state, options.idle_grace).await
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on `io` with `service`, as the
/// client's first bytes say (the HTTP/2 preface: h2c with prior knowledge,
/// or h2 after TLS ALPN), until the connection is done, draining it without
/// loss once `drain` is closed (see the [module docs](self)).
///
/// `io` is usually the [`Tracked`](super::Tracked) stream from a
/// [`Listener`] (or a TLS stream over it), so the drain waits for this
/// connection, and for what it was upgraded to. With
/// [`HttpOptions::http2`] false, serves HTTP/1.x only.
///
/// Returns when the connection is closed: by the client, after a
/// `Connection: close` response or the last stream after a GOAWAY, after
/// the idle grace, when upgraded (the upgraded I/O lives on with the
/// handler), or on an error.
pub async fn serve_connection_auto<I, S, B>(
    io: I,
    service: S,
    drain: &Drain,
    options: &HttpOptions,
) -> Result<(), ConnectionError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let state = ConnState::new(drain);
    let io = Activity::new(io, state.clone());
    serve_activity(io, service, state, options).await
}

/// [`serve_connection_auto`] on an I/O already wrapped in [`Activity`] for
/// `state` (below TLS, when there is TLS).
async fn serve_activity<I, S, B>(
    io: I,
    service: S,
    state: std::sync::Arc<ConnState>,
    options: &HttpOptions,
) -> Result<(), ConnectionError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (protocol, io) = match sniffed(io, &state, options).await? {
        Sniffed::Protocol(protocol, io) => (protocol, io),
        // No hand-over without a `Handoff`.
        Sniffed::Closed | Sniffed::HandOver(..) => return Ok(()),
    };
    match protocol {
        Protocol::Http1 => {
            let io = TokioIo::new(io);
            let service = DrainService::new(service, state.clone(), Proto::Http1Upgrades);
            let conn = http1_builder(options)
                .serve_connection(io, service)
                .with_upgrades();
            drive_http1(conn, &state, options.idle_grace)
                .await
                .map_err(ConnectionError::Http)
        }
        Protocol::Http2 => serve_http2(io, service, state, options).await,
    }
}

/// [`serve_activity`] for a connection that may be handed over.
async fn serve_handoff_io<S, B>(
    io: handoff::HandoffIo,
    service: S,
    state: std::sync::Arc<ConnState>,
    options: &HttpOptions,
) -> Result<(), ConnectionError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (protocol, io) = match sniffed(io, &state, options).await? {
        Sniffed::Protocol(protocol, io) => (protocol, io),
        Sniffed::Closed => return Ok(()),
        // Nothing asked yet when the drain began: handed over as it is.
        Sniffed::HandOver(prefix, io) => {
            let state_byte = crate::pass::connection::STATE_UNIDENTIFIED;
            return handoff::give_or_serve(io, prefix, state_byte, service, &state, options).await;
        }
    };
    match protocol {
        Protocol::Http1 => {
            let io = TokioIo::new(io);
            let service = DrainService::new(service, state.clone(), Proto::Http1Upgrades);
            let conn = http1_builder(options)
                .serve_connection(io, service)
                .with_upgrades();
            handoff::drive_http1_handoff(conn, state, options).await
        }
        Protocol::Http2 => {
            // HTTP/2 connections are not handed over: the two-step GOAWAY.
            state.stop_handoff();
            serve_http2(io, service, state, options).await
        }
    }
}

/// What [`sniffed`] found.
enum Sniffed<I> {
    /// The protocol, and the I/O giving the bytes read back.
    Protocol(Protocol, Rewind<I>),
    /// The client sent no request.
    Closed,
    /// The drain closed before a request, and the connection can be handed
    /// over: the bytes read so far, and the I/O.
    HandOver(Vec<u8>, I),
}

/// Tells HTTP/1.x from HTTP/2 (unless HTTP/2 is off), and gives the bytes
/// read to do so back.
async fn sniffed<I>(
    mut io: I,
    state: &ConnState,
    options: &HttpOptions,
) -> Result<Sniffed<I>, ConnectionError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (protocol, prefix) = if options.http2 {
        match sniff(
            &mut io,
            state,
            options.idle_grace,
            options.header_read_timeout,
        )
        .await
        {
            Ok(found) => found,
            Err(NoRequest::Closed) => return Ok(Sniffed::Closed),
            Err(NoRequest::HandOver(prefix)) => {
                return Ok(Sniffed::HandOver(prefix.bytes().to_vec(), io));
            }
            Err(NoRequest::Io(e)) => return Err(ConnectionError::Io(e)),
        }
    } else {
        (Protocol::Http1, sniff::Prefix::empty())
    };
    Ok(Sniffed::Protocol(protocol, Rewind::new(prefix, io)))
}

async fn serve_http2<I, S, B>(
    io: Rewind<I>,
    service: S,
    state: std::sync::Arc<ConnState>,
    options: &HttpOptions,
) -> Result<(), ConnectionError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let io = TokioIo::new(goaway::HoldPingAck::new(
        io,
        state.clone(),
        options.http2_goaway_delay,
    ));
    let service = DrainService::new(service, state.clone(), Proto::Http2);
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let conn = Box::pin(builder.serve_connection(io, service));
    drive_http2(conn, &state)
        .await
        .map_err(ConnectionError::Http)
}

fn http1_builder(options: &HttpOptions) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.header_read_timeout);
    builder
}

/// Accepts connections on `listener` and serves each, in a task of its own,
/// with [`serve_connection_auto`] (after the TLS handshake, when
/// [`HttpOptions::tls`] is set), until the listener's drain is closed; then
/// returns at once.
///
/// The connections still open keep going in their tasks: wait for them with
/// [`Drain::wait_async`] on the listener's drain. `service` is cloned for
/// each connection (a `service_fn`, an `Arc`, or, through
/// [`tower()`](tower()), an `axum::Router` or a tonic service).
///
/// Accept errors that concern one connection (it was reset while queued)
/// are skipped; running out of descriptors or memory is logged and retried
/// after a short pause, as the connections in progress free some.
///
/// # Errors
///
/// Only an accept error that will not go away (the socket is not a
/// listening socket, say).
pub async fn serve<L, S, B>(
    listener: &Listener<L>,
    service: S,
    options: &HttpOptions,
) -> io::Result<()>
where
    L: Accept,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    #[cfg(feature = "tls")]
    let plain = options.tls.is_none();
    #[cfg(not(feature = "tls"))]
    let plain = true;
    let handoff = options.handoff.clone().filter(|_| plain);
    if let (Some(h), false) = (&options.handoff, plain) {
        // Answered at once, so the old process drains without waiting.
        let refuse = Some("TLS connections are not handed over");
        handoff::spawn_taker(h, listener.drain().clone(), refuse, |_, _| async {});
    }
    if let Some(h) = &handoff {
        // Connections from a predecessor, served like accepted ones.
        let (service, drain, options) =
            (service.clone(), listener.drain().clone(), options.clone());
        let h2 = h.clone();
        handoff::spawn_taker(
            h,
            listener.drain().clone(),
            None,
            move |stream, buffered| {
                let fut = handoff::serve_tcp(
                    drain.track(stream),
                    buffered,
                    service.clone(),
                    Some(h2.clone()),
                    options.clone(),
                );
                async move { log_connection_error(fut.await) }
            },
        );
    }
    loop {
        let io = match L::accept_http(listener, options.tcp_nodelay).await {
            Ok(io) => io,
            Err(e) if is_closed_error(&e) => return Ok(()),
            Err(e) => match accept_error(&e) {
                AcceptError::Skip => continue,
                AcceptError::Pause => {
                    tracing::warn!(error = %e, "accept failed; retrying in 50ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                AcceptError::Fatal => return Err(e),
            },
        };
        let service = service.clone();
        let io = match &handoff {
            Some(h) => match tcp_stream(io) {
                Ok(tcp) => {
                    let fut = handoff::serve_tcp(
                        tcp,
                        Vec::new(),
                        service,
                        Some(h.clone()),
                        options.clone(),
                    );
                    tokio::spawn(async move { log_connection_error(fut.await) });
                    continue;
                }
                Err(io) => io,
            },
            None => io,
        };
        let state = ConnState::new(listener.drain());
        let options = options.clone();
        tokio::spawn(async move {
            let io = Activity::new(io, state.clone());
            #[cfg(feature = "tls")]
            if let Some(tls) = &options.tls {
                let result = match tls_handshake(tls, io, &state, options.idle_grace).await {
                    Ok(Some(tls_io)) => serve_activity(tls_io, service, state, &options).await,
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                log_connection_error(result);
                return;
            }
            log_connection_error(serve_activity(io, service, state, &options).await);
        });
    }
}

/// The TCP stream of an accepted connection, or the connection as it was.
fn tcp_stream<T: 'static>(io: T) -> Result<super::Tracked<tokio::net::TcpStream>, T> {
    let any: Box<dyn std::any::Any> = Box::new(io);
    match any.downcast::<super::Tracked<tokio::net::TcpStream>>() {
        Ok(tracked) => Ok(*tracked),
        // `T` is what went in.
        Err(any) => Err(*any.downcast::<T>().expect("the same type")),
    }
}

/// The TLS handshake on a connection of [`serve`], under the handshake
/// timeout, and under the drain's grace rule: once draining, a connection
/// silent for the grace is closed (`None`).
#[cfg(feature = "tls")]
async fn tls_handshake<I>(
    tls: &super::tls::TlsAcceptor,
    io: I,
    state: &ConnState,
    grace: Duration,
) -> Result<Option<super::tls::TlsStream<I>>, ConnectionError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = tls.handshake_deadline();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut handshake = tls.handshake(io);
    let result = async {
        tokio::select! {
            biased;
            done = &mut handshake => return Some(done),
            () = state.drain.closed() => {}
        }
        state.touch();
        loop {
            let idle_ends = state.idle_since() + grace;
            tokio::select! {
                biased;
                done = &mut handshake => return Some(done),
                () = tokio::time::sleep_until(idle_ends.into()) => {}
            }
            if state.idle_since() + grace <= std::time::Instant::now() {
                return None;
            }
        }
    };
    match tokio::time::timeout_at(deadline, result).await {
        Ok(Some(Ok(stream))) => Ok(Some(stream)),
        Ok(Some(Err(e))) => Err(ConnectionError::Tls(e)),
        Ok(None) => Ok(None),
        Err(_) => Err(ConnectionError::TlsTimeout(timeout)),
    }
}

fn log_connection_error(result: Result<(), ConnectionError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

enum AcceptError {
    /// This connection failed; the next one may be fine.
    Skip,
    /// Out of a resource that the connections in progress will free.
    Pause,
    /// The listener itself is broken.
    Fatal,
}

fn accept_error(e: &io::Error) -> AcceptError {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return AcceptError::Pause;
    };
    match Errno::from_raw_os_error(code) {
        Errno::CONNABORTED | Errno::CONNRESET | Errno::PROTO | Errno::PERM | Errno::INTR => {
            AcceptError::Skip
        }
        Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM | Errno::AGAIN => {
            AcceptError::Pause
        }
        Errno::BADF | Errno::INVAL | Errno::NOTSOCK | Errno::OPNOTSUPP | Errno::FAULT => {
            AcceptError::Fatal
        }
        // Network errors passed on by accept(2) (ENETDOWN, EHOSTUNREACH...).
        _ => AcceptError::Skip,
    }
}

/// The tokio listeners [`serve`] accepts on: `tokio::net::TcpListener` and
/// `tokio::net::UnixListener` (wrapped in a drain [`Listener`]).
///
/// Sealed: it cannot be implemented outside this crate.
pub trait Accept: sealed::Sealed + Send + Sync + Sized + 'static {
    /// The accepted connection.
    #[doc(hidden)]
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Accepts the next connection.
    #[doc(hidden)]
    fn accept_http(
        listener: &Listener<Self>,
        nodelay: bool,
    ) -> impl Future<Output = io::Result<Self::Io>> + Send + '_;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for tokio::net::TcpListener {}
    impl Sealed for tokio::net::UnixListener {}
}

impl Accept for tokio::net::TcpListener {
    type Io = super::Tracked<tokio::net::TcpStream>;

    async fn accept_http(listener: &Listener<Self>, nodelay: bool) -> io::Result<Self::Io> {
        let (io, _) = listener.accept().await?;
        if nodelay {
            // Best effort: a failure only costs latency.
            let _ = io.set_nodelay(true);
        }
        Ok(io)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = super::Tracked<tokio::net::UnixStream>;

    async fn accept_http(listener: &Listener<Self>, _nodelay: bool) -> io::Result<Self::Io> {
        Ok(listener.accept().await?.0)
    }
}
