//! The HTTP/2 and gRPC clients of the load: connections carrying several
//! concurrent streams, reconnecting after a GOAWAY.
//!
//! What counts as a failure: a stream that was sent and did not get a
//! complete 2xx response (and, for gRPC, `grpc-status: 0`): refused
//! (`RST_STREAM` with `REFUSED_STREAM`, or above the last stream id of a
//! GOAWAY, so the server dropped it unprocessed), reset, cut by the end of
//! the connection, or timed out. What does not: a GOAWAY itself, and
//! requests the client did not send because it had seen a GOAWAY on that
//! connection; they go out on a new connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::http::pid_from_body;
use crate::load::{
    ClientCfg, FAILURE_BACKOFF, Failure, Mode, Progress, Protocol, Shared, Stage, connect,
    io_failure, pause,
};
use crate::report::FailureKind;

/// Largest response body read, in bytes.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One connection slot: a connection with `cfg.streams` stream workers,
/// replaced by a new connection when the server ends it (GOAWAY, close).
pub(crate) async fn client(shared: Arc<Shared>, cfg: Arc<ClientCfg>, stop: watch::Receiver<bool>) {
    let mut stop = stop;
    while !shared.stopping.load(Ordering::Acquire) {
        let started = Instant::now();
        let connected = tokio::time::timeout(cfg.request_timeout, handshake(&cfg)).await;
        let send = match connected {
            Ok(Ok(send)) => send,
            Ok(Err(failure)) => {
                shared.record_failure(failure.kind, failure.error);
                pause(FAILURE_BACKOFF, &mut stop).await;
                continue;
            }
            Err(_) => {
                shared.record_failure(
                    FailureKind::Timeout,
                    format!(
                        "no HTTP/2 connection within {:?} (connecting, TLS, or the \
                         server's SETTINGS)",
                        started.elapsed()
                    ),
                );
                pause(FAILURE_BACKOFF, &mut stop).await;
                continue;
            }
        };
        shared.connects.fetch_add(1, Ordering::Relaxed);
        let mut workers = JoinSet::new();
        for _ in 0..cfg.streams {
            workers.spawn(stream_worker(
                Arc::clone(&shared),
                Arc::clone(&cfg),
                send.clone(),
                stop.clone(),
            ));
        }
        drop(send);
        let mut ended_by_server = false;
        while let Some(result) = workers.join_next().await {
            if matches!(result, Ok(End::ServerEnded)) {
                ended_by_server = true;
            }
        }
        if ended_by_server && cfg.mode == Mode::KeepAlive {
            shared.server_closes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Connects (with TLS when configured) and does the HTTP/2 handshake; the
/// connection is driven by a task of its own until every handle is gone.
async fn handshake(cfg: &ClientCfg) -> Result<SendRequest<Bytes>, Failure> {
    let connecting = Progress {
        stage: Stage::Connecting,
        received: 0,
        on_conn: 1,
    };
    let stream = connect(cfg)
        .await
        .map_err(|e| io_failure(&connecting, &e))?;
    let (send, connection) = h2::client::Builder::new()
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|e| Failure {
            kind: FailureKind::Other,
            error: format!("HTTP/2 handshake failed: {e} (does the server speak h2c/h2?)"),
            never_read: false,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
        }
    });
    Ok(send)
}

/// Why a stream worker stopped.
enum End {
    /// The load is stopping, or one request per connection was done.
    Done,
    /// The server ended the connection (GOAWAY, or closed it): reconnect.
    ServerEnded,
}

/// Sends one request after another on the connection until it cannot carry
/// more (or the load stops).
async fn stream_worker(
    shared: Arc<Shared>,
    cfg: Arc<ClientCfg>,
    send: SendRequest<Bytes>,
    mut stop: watch::Receiver<bool>,
) -> End {
    let mut on_conn = 0u64;
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return End::Done;
        }
        // Err: the connection saw a GOAWAY or ended; nothing was sent.
        let Ok(mut ready) = send.clone().ready().await else {
            return End::ServerEnded;
        };
        on_conn += 1;
        let mut progress = Progress {
            stage: Stage::Writing,
            received: 0,
            on_conn,
        };
        let started = Instant::now();
        let exchange = exchange(&mut ready, &cfg, &mut progress);
        let outcome = match tokio::time::timeout(cfg.request_timeout, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed(
                Failure {
                    kind: FailureKind::Timeout,
                    error: format!(
                        "no complete response within {:?}, {}",
                        cfg.request_timeout,
                        describe(&progress)
                    ),
                    never_read: false,
                },
                false,
            ),
        };
        match outcome {
            Outcome::NotSent => return End::ServerEnded,
            Outcome::Answered {
                status,
                pid,
                grpc_error,
            } => {
                if let Some(e) = grpc_error {
                    shared.record_failure(
                        FailureKind::BadStatus,
                        format!("{e} {}", describe(&progress)),
                    );
                } else if (200..300).contains(&status) {
                    shared.record_ok(started.elapsed(), pid);
                } else {
                    shared.record_failure(
                        FailureKind::BadStatus,
                        format!("status {status} (expected 2xx) {}", describe(&progress)),
                    );
                }
            }
            Outcome::Failed(failure, connection_broken) => {
                shared.record_failure(failure.kind, failure.error);
                if connection_broken {
                    pause(FAILURE_BACKOFF, &mut stop).await;
                    return End::ServerEnded;
                }
                pause(FAILURE_BACKOFF, &mut stop).await;
            }
        }
        if cfg.mode == Mode::NewConnection {
            return End::Done;
        }
        if !cfg.think_time.is_zero() {
            pause(cfg.think_time, &mut stop).await;
        }
    }
}

fn describe(progress: &Progress) -> String {
    let stream = format!("stream {} on its HTTP/2 connection", progress.on_conn);
    match progress.stage {
        Stage::Connecting => "while connecting".to_owned(),
        Stage::Writing => format!("while sending the request ({stream})"),
        Stage::Reading if progress.received == 0 => {
            format!("after sending the request, before any response ({stream})")
        }
        Stage::Reading => format!(
            "after sending the request, with the response head and {} body bytes \
             received ({stream})",
            progress.received
        ),
    }
}

enum Outcome {
    /// The connection had seen a GOAWAY before the request went out.
    NotSent,
    /// A complete response.
    Answered {
        status: u16,
        pid: Option<u32>,
        /// gRPC: why the call failed (`grpc-status` not 0, or missing).
        grpc_error: Option<String>,
    },
    /// A failed request; true when the connection is unusable too.
    Failed(Failure, bool),
}

/// Sends one request and reads its whole response.
async fn exchange(
    send: &mut SendRequest<Bytes>,
    cfg: &ClientCfg,
    progress: &mut Progress,
) -> Outcome {
    let grpc = cfg.protocol == Protocol::Grpc;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let (method, path) = if grpc {
        ("POST", "/grpc.health.v1.Health/Check")
    } else {
        ("GET", cfg.path.as_str())
    };
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("{scheme}://{}{path}", cfg.host));
    if grpc {
        request = request
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    let request = match request.body(()) {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed(
                Failure {
                    kind: FailureKind::Other,
                    error: format!("cannot build the request: {e}"),
                    never_read: false,
                },
                true,
            );
        }
    };
    let (response, mut body_tx) = match send.send_request(request, !grpc) {
        Ok(sent) => sent,
        // A GOAWAY arrived since `ready`: not sent, not a failure.
        Err(e) if e.is_go_away() && e.is_remote() => return Outcome::NotSent,
        Err(e) => return Outcome::Failed(stream_failure(progress, &e), true),
    };
    if grpc {
        // An empty HealthCheckRequest: uncompressed, length 0.
        if let Err(e) = body_tx.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true) {
            return Outcome::Failed(stream_failure(progress, &e), true);
        }
    }
    progress.stage = Stage::Reading;
    let response = match response.await {
        Ok(r) => r,
        Err(e) => {
            let broken = e.is_io() || e.is_go_away();
            return Outcome::Failed(stream_failure(progress, &e), broken);
        }
    };
    let status = response.status().as_u16();
    let header_pid = pid_header(response.headers());
    let trailers_only = response.headers().get("grpc-status").cloned();
    let mut body = response.into_body();
    let mut received = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let broken = e.is_io() || e.is_go_away();
                return Outcome::Failed(stream_failure(progress, &e), broken);
            }
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        if received.len() + chunk.len() > MAX_BODY {
            return Outcome::Failed(
                Failure {
                    kind: FailureKind::Other,
                    error: format!("response body over {MAX_BODY} bytes {}", describe(progress)),
                    never_read: false,
                },
                false,
            );
        }
        received.extend_from_slice(&chunk);
        progress.received = received.len();
    }
    let trailers = match body.trailers().await {
        Ok(t) => t,
        Err(e) => {
            let broken = e.is_io() || e.is_go_away();
            return Outcome::Failed(stream_failure(progress, &e), broken);
        }
    };
    let mut pid = header_pid.or_else(|| trailers.as_ref().and_then(pid_header));
    let mut grpc_error = None;
    if grpc {
        let grpc_status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(trailers_only);
        match grpc_status.as_ref().map(|v| v.as_bytes()) {
            Some(b"0") => {}
            Some(code) => {
                let message = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-message"))
                    .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                    .unwrap_or_default();
                grpc_error = Some(format!(
                    "grpc-status {} ({message})",
                    String::from_utf8_lossy(code)
                ));
            }
            None => grpc_error = Some("no grpc-status in the response".to_owned()),
        }
    } else if pid.is_none() {
        pid = pid_from_body(&received);
    }
    Outcome::Answered {
        status,
        pid,
        grpc_error,
    }
}

/// A `pid` header: the pid of the process that answered.
fn pid_header(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("pid")?.to_str().ok()?.trim().parse().ok()
}

/// Classifies a failed stream.
fn stream_failure(progress: &Progress, e: &h2::Error) -> Failure {
    let at = describe(progress);
    if e.is_io() {
        if let Some(io) = e.get_io() {
            let mut failure = io_failure(progress, io);
            failure.error = format!("{at}: the connection failed: {io}");
            return failure;
        }
    }
    if e.is_go_away() && e.is_remote() {
        return Failure {
            kind: FailureKind::Refused,
            error: format!(
                "{at}: refused by the server's GOAWAY ({e}): the stream was sent but the server \
                 did not process it; a graceful server sends the two-step GOAWAY (RFC 9113, \
                 6.8) and serves every stream opened before the client saw it"
            ),
            never_read: false,
        };
    }
    if e.is_reset() && e.is_remote() {
        if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            return Failure {
                kind: FailureKind::Refused,
                error: format!("{at}: stream refused by the server (RST_STREAM REFUSED_STREAM)"),
                never_read: false,
            };
        }
        return Failure {
            kind: FailureKind::Reset,
            error: format!("{at}: stream reset by the server ({e})"),
            never_read: false,
        };
    }
    if e.is_go_away() {
        return Failure {
            kind: FailureKind::ShortResponse,
            error: format!("{at}: the connection ended ({e})"),
            never_read: false,
        };
    }
    Failure {
        kind: FailureKind::Other,
        error: format!("{at}: {e}"),
        never_read: false,
    }
}
