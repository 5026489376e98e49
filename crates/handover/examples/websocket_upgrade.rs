//! A WebSocket echo server that upgrades itself with zero downtime, and a
//! client that loses no message across upgrades.
//!
//! ```text
//! cargo run -p handover --example websocket_upgrade -- --listen 127.0.0.1:8090 --pid-file /tmp/ws.pid
//! cargo run -p handover --example websocket_upgrade -- client 127.0.0.1:8090 1000   # 1000 messages
//! kill -HUP $(cat /tmp/ws.pid)    # meanwhile: the client reconnects to the new process
//! ```
//!
//! `GET /ws` upgrades to a WebSocket that answers each text message `M`
//! with `pid=<pid> M`; any other path answers `pid=<pid>` over plain HTTP.
//!
//! **On upgrade**, the old process stops accepting, and each WebSocket
//! handler, which watches the [`Drain`] that hyper's request carried in its
//! extensions, finishes the message it is echoing, sends a close frame
//! (1001, going away), and from then on echoes nothing (RFC 6455: no data
//! after a close frame); it waits for the client's close frame, then ends.
//! The connections stay counted by the drain while they live, so the old
//! process exits once they are closed (or at the drain deadline).
//!
//! **The client** numbers its messages and keeps those not yet echoed. When
//! the server's close frame comes, it answers it, connects again (the new
//! process accepts), and sends the unanswered messages again: every message
//! is echoed exactly once, in order, none is lost, and no connection ends
//! without a close frame.
//!
//! Options: `--listen ADDR` (required), `--pid-file PATH`,
//! `--ready-timeout SECS` (default 60), `--drain-timeout SECS` (default 30),
//! `--idle-grace-ms MS` (default 2000).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message};

use handover::address::Address;
use handover::drain::http::{HttpOptions, serve};
use handover::drain::{Drain, Listener};
use handover::upgrade::{Options, RunOptions, Upgrader};

/// How long a handler waits for the client's close frame after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

fn text(body: String) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(body)))
}

/// The HTTP handler: upgrades `/ws`, answers the pid elsewhere.
async fn handle(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let pid = std::process::id();
    if req.uri().path() != "/ws" {
        return Ok(text(format!("pid={pid}\n")));
    }
    let wants_ws = req
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
        let mut r = text("expected a WebSocket upgrade (Sec-WebSocket-Key)\n".into());
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(r);
    };
    if !wants_ws {
        let mut r = text("expected `Upgrade: websocket`\n".into());
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(r);
    }
    // `drain::http` puts the drain in the extensions of every request that
    // asks for an upgrade.
    let drain = req.extensions().get::<Drain>().cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                if let Err(e) = echo(ws, drain).await {
                    tracing::debug!(error = %e, "WebSocket ended with an error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok(response)
}

/// Echoes text messages until the client closes, or the drain begins: then
/// a close frame (1001), and nothing more is echoed.
async fn echo<S>(mut ws: WebSocketStream<S>, drain: Option<Drain>) -> Result<(), tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let pid = std::process::id();
    let draining = async {
        match &drain {
            Some(d) => d.closed().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(draining);
    loop {
        tokio::select! {
            // A message already received is echoed before the drain is
            // looked at: the client then does not send it again.
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => ws.send(Message::text(format!("pid={pid} {t}"))).await?,
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            },
            () = &mut draining => break,
        }
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "server upgrading; reconnect".into(),
    })))
    .await?;
    // After a close frame, no data (RFC 6455, 5.5.1): what the client sent
    // meanwhile is dropped, and it sends that again on its new connection.
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    Ok(())
}

/// What a [`client`] run saw.
#[derive(Debug, Default, Clone)]
pub struct ClientReport {
    /// Messages echoed (each exactly once, in order, or the run fails).
    pub echoed: u64,
    /// Connections made.
    pub connections: u64,
    /// Messages sent again on a new connection after the server's close
    /// frame.
    pub resent: u64,
    /// Echoes per pid, in the order the pids first answered.
    pub pids: Vec<(u32, u64)>,
}

/// Sends `count` numbered messages to `ws://addr/ws` (fewer if `stop` is
/// set meanwhile: then it stops sending and waits for the echoes still due),
/// at most `window` unanswered at a time; on the server's close frame,
/// reconnects and sends the unanswered ones again.
///
/// # Errors
///
/// Anything that loses or repeats a message: a connection that fails or
/// ends without a close frame, a close code other than 1001, an echo out of
/// order or repeated, no echo within `timeout`.
pub async fn client(
    addr: &str,
    count: u64,
    window: usize,
    timeout: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<ClientReport, String> {
    use std::sync::atomic::Ordering::Relaxed;
    let url = format!("ws://{addr}/ws");
    let mut report = ClientReport::default();
    let mut next = 0u64;
    let mut unanswered: VecDeque<u64> = VecDeque::new();
    while report.echoed < next || (next < count && !stop.load(Relaxed)) {
        let (mut ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(&url))
            .await
            .map_err(|_| format!("no WebSocket connection to {url} within {timeout:?}"))?
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        report.connections += 1;
        for &seq in &unanswered {
            ws.send(Message::text(seq.to_string()))
                .await
                .map_err(|e| format!("sending {seq} again: {e}"))?;
            report.resent += 1;
        }
        loop {
            while unanswered.len() < window && next < count && !stop.load(Relaxed) {
                ws.send(Message::text(next.to_string()))
                    .await
                    .map_err(|e| format!("sending {next}: {e}"))?;
                unanswered.push_back(next);
                next += 1;
            }
            if unanswered.is_empty() {
                break;
            }
            let msg = tokio::time::timeout(timeout, ws.next())
                .await
                .map_err(|_| format!("no echo for {:?} within {timeout:?}", unanswered.front()))?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let (pid, seq) = parse_echo(&t)?;
                    let expected = unanswered.pop_front();
                    if Some(seq) != expected {
                        return Err(format!("echo of {seq} where {expected:?} was expected"));
                    }
                    report.echoed += 1;
                    match report.pids.last_mut() {
                        Some((p, n)) if *p == pid => *n += 1,
                        _ => report.pids.push((pid, 1)),
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map(|f| f.code);
                    if code != Some(CloseCode::Away) {
                        return Err(format!("closed with {frame:?}, expected 1001 (going away)"));
                    }
                    // Answer the close (tungstenite does it while flushing)
                    // and go to the new process.
                    let _ = ws.close(None).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(format!("connection failed without a close frame: {e}"));
                }
                None => return Err("connection ended without a close frame".to_owned()),
            }
        }
    }
    Ok(report)
}

fn parse_echo(t: &str) -> Result<(u32, u64), String> {
    let bad = || format!("unexpected echo {t:?} (expected `pid=P N`)");
    let (pid, seq) = t.split_once(' ').ok_or_else(bad)?;
    let pid = pid
        .strip_prefix("pid=")
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    Ok((pid, seq.parse().map_err(|_| bad())?))
}

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen.
    pub listen: Address,
    /// Pid file.
    pub pid_file: Option<std::path::PathBuf>,
    /// Ready timeout.
    pub ready_timeout: Duration,
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// Idle grace while draining.
    pub idle_grace: Duration,
}

impl Args {
    /// Parses `--listen ADDR [--pid-file PATH] [--ready-timeout SECS]
    /// [--drain-timeout SECS] [--idle-grace-ms MS]`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut it = args.into_iter();
        let (mut listen, mut pid_file) = (None, None);
        let (mut ready, mut drain, mut grace) = (60.0, 30.0, 2000u64);
        let num = |v: Option<String>, flag: &str| -> Result<f64, String> {
            v.ok_or(format!("{flag} needs a value"))?
                .parse::<f64>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--listen" => {
                    let v = it.next().ok_or("--listen needs an address")?;
                    listen = Some(v.parse::<Address>().map_err(|e| e.to_string())?);
                }
                "--pid-file" => pid_file = Some(it.next().ok_or("--pid-file needs a path")?.into()),
                "--ready-timeout" => ready = num(it.next(), "--ready-timeout")?,
                "--drain-timeout" => drain = num(it.next(), "--drain-timeout")?,
                "--idle-grace-ms" => grace = num(it.next(), "--idle-grace-ms")? as u64,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Args {
            listen: listen
                .ok_or("--listen ADDR is required (for example --listen 127.0.0.1:8090)")?,
            pid_file,
            ready_timeout: Duration::from_secs_f64(ready),
            drain_timeout: Duration::from_secs_f64(drain),
            idle_grace: Duration::from_millis(grace),
        })
    }
}

/// Runs the server until it has handed over or was stopped.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Created first, before any thread: it takes the inherited sockets.
    let mut options = Options::default().ready_timeout(args.ready_timeout);
    if let Some(p) = &args.pid_file {
        options = options.pid_file(p);
    }
    let upgrader = Upgrader::new(options)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let drain = Drain::new();
        let listener: tokio::net::TcpListener = upgrader.listen("http", &args.listen)?;
        let listener = Listener::new(listener, &drain);
        let signals = upgrader.signals()?;
        upgrader.ready()?;
        let options = HttpOptions::default().idle_grace(args.idle_grace);
        let serving = tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            if let Err(e) = serve(&listener, service, &options).await {
                tracing::error!(error = %e, "the listening socket failed");
            }
        });
        tracing::info!(pid = std::process::id(), address = %args.listen, "serving WebSockets");
        let outcome = signals
            .run(
                &drain,
                RunOptions::default().drain_timeout(args.drain_timeout),
            )
            .await?;
        let _ = serving.await;
        tracing::info!(reason = ?outcome.reason, drained = outcome.drained.is_ok(), "exiting");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

#[allow(dead_code)]
fn main() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        let addr = args
            .get(1)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:8090".into());
        let count = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
        let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
        let stop = std::sync::atomic::AtomicBool::new(false);
        match rt.block_on(client(&addr, count, 4, Duration::from_secs(10), &stop)) {
            Ok(r) => println!(
                "{} messages echoed exactly once over {} connection(s), {} sent again; pids {:?}",
                r.echoed, r.connections, r.resent, r.pids
            ),
            Err(e) => {
                eprintln!("websocket_upgrade client: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let args = match Args::parse(args.drain(..)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("websocket_upgrade: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("websocket_upgrade: {e}");
        std::process::exit(1);
    }
}
