//! `drain::http::serve` on real sockets, in one process: HTTP/2 (h2c and
//! over TLS) and HTTP/1.1 on one listener, upgraded connections, the grace
//! for connections that sent nothing, axum through `drain::http::tower`.
//!
//! Each test runs an "old" server and its "successor" on one listening
//! socket (two descriptors of it), as an upgrade does: the old one is
//! drained while clients keep going, and the successor accepts what the old
//! one no longer does. The process-level tests (`http_upgrade.rs`,
//! `grpc_upgrade.rs`, `websocket_upgrade.rs`) do the same across real
//! upgrades.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use handover::drain::http::{self, HttpOptions, serve};
use handover::drain::tls::TlsAcceptor;
use handover::drain::{Drain, Listener};
use handover_verify::{ClientTls, Load, LoadConfig, Mode, Protocol};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(20);

/// Answers `pid=<id>` (`id` 1 for the old server, 2 for the successor, so
/// the verify load counts them apart); `/slow` takes 500 ms; `/ws` upgrades
/// to a connection that says `hi` and, once the drain begins, `bye` and
/// closes.
async fn handle(id: u32, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/slow" => tokio::time::sleep(Duration::from_millis(500)).await,
        "/ws" => {
            let drain = req.extensions().get::<Drain>().cloned();
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let _ = io.write_all(b"hi\n").await;
                match drain {
                    Some(d) => d.closed().await,
                    None => {
                        let _ = io.write_all(b"no drain in the extensions\n").await;
                    }
                }
                let _ = io.write_all(b"bye\n").await;
                let _ = io.shutdown().await;
            });
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "test".parse().expect("a header value"));
            r.headers_mut()
                .insert("connection", "upgrade".parse().expect("a header value"));
            return Ok(r);
        }
        _ => {}
    }
    Ok(Response::new(Full::new(Bytes::from(format!("pid={id}\n")))))
}

/// Serves `listener` with `serve` (HTTP/1.1, HTTP/2, TLS per `options`).
fn start(id: u32, listener: Listener<tokio::net::TcpListener>, options: HttpOptions) {
    tokio::spawn(async move {
        let service = service_fn(move |req| handle(id, req));
        serve(&listener, service, &options).await.expect("serve");
    });
}

/// An old server and its successor on one listening socket.
struct Pair {
    addr: SocketAddr,
    old: Drain,
    successor: Option<(Listener<tokio::net::TcpListener>, HttpOptions)>,
    _successor_drain: Drain,
}

impl Pair {
    fn new(options: HttpOptions) -> Pair {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let dup = socket.try_clone().unwrap();
        let old = Drain::new();
        start(
            1,
            Listener::new(tokio::net::TcpListener::from_std(socket).unwrap(), &old),
            options.clone(),
        );
        let successor_drain = Drain::new();
        let successor = Listener::new(
            tokio::net::TcpListener::from_std(dup).unwrap(),
            &successor_drain,
        );
        Pair {
            addr,
            old,
            successor: Some((successor, options)),
            _successor_drain: successor_drain,
        }
    }

    /// What an upgrade does: the old one stops accepting and drains, the
    /// successor accepts.
    fn hand_over(&mut self) {
        self.old.close();
        let (listener, options) = self.successor.take().expect("once");
        start(2, listener, options);
    }
}

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2_connect(addr: SocketAddr) -> H2 {
    let stream = timeout(DEADLINE, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_get(send: &mut H2, path: &str) -> Result<String, hyper::Error> {
    let req = Request::get(format!("http://test{path}"))
        .body(Empty::new())
        .unwrap();
    let response = send.send_request(req).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_in_flight_finish_and_the_next_ones_go_to_the_successor() {
    let mut pair = Pair::new(HttpOptions::default().http2_goaway_delay(Duration::from_millis(50)));
    let send = h2_connect(pair.addr).await;
    // 20 slow streams in flight on one connection.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut send = send.clone();
        slow.push(tokio::spawn(
            async move { h2_get(&mut send, "/slow").await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pair.old.active(), 1);
    pair.hand_over();
    for s in slow {
        let body = timeout(DEADLINE, s).await.unwrap().unwrap().unwrap();
        assert_eq!(
            body, "pid=1\n",
            "a stream in flight is finished by the old server"
        );
    }
    // The GOAWAY closed the connection once its streams were done, and the
    // old server's drain is empty.
    timeout(DEADLINE, pair.old.wait_async(DEADLINE))
        .await
        .unwrap()
        .unwrap();
    // The client's connection task learns of the close on its own time:
    // wait (with a deadline) until it has.
    let mut send2 = send.clone();
    let gave_up_at = Instant::now() + DEADLINE;
    while timeout(DEADLINE, send2.ready()).await.unwrap().is_ok() {
        assert!(
            Instant::now() < gave_up_at,
            "the old connection takes no more streams after the GOAWAY"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A new connection reaches the successor.
    let mut fresh = h2_connect(pair.addr).await;
    assert_eq!(h2_get(&mut fresh, "/").await.unwrap(), "pid=2\n");
}

/// Verify's HTTP/2 load (4 connections, 16 streams each) across the hand
/// over, `rounds` times; returns the reports.
fn http2_load_across_hand_overs(rounds: usize, options: HttpOptions, tls: bool) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut failed = Vec::new();
    for round in 0..rounds {
        let mut pair = rt.block_on(async { Pair::new(options.clone()) });
        let mut cfg = LoadConfig::new(pair.addr, Mode::KeepAlive);
        cfg.protocol = Protocol::Http2;
        cfg.connections = 4;
        cfg.streams = 16;
        if tls {
            cfg.tls = Some(ClientTls::insecure());
        }
        let load = Load::start(cfg).unwrap();
        assert!(load.wait_for_ok(500, DEADLINE), "no load got through");
        rt.block_on(async { pair.hand_over() });
        let seen = load.pids_seen();
        assert!(
            load.wait_for_new_pid(&seen, DEADLINE).is_some(),
            "the successor never answered"
        );
        let ok = load.snapshot().ok;
        assert!(load.wait_for_ok(ok + 500, DEADLINE));
        let report = load.stop();
        assert_eq!(report.distinct_pids(), 2, "{}", report.render_table());
        if report.failures_total() > 0 {
            failed.push(format!("round {round}:\n{}", report.render_table()));
        }
        rt.block_on(async { pair.old.wait_async(DEADLINE).await })
            .unwrap();
    }
    failed
}

#[test]
fn http2_load_with_many_streams_per_connection_loses_nothing_across_hand_overs() {
    let failed = http2_load_across_hand_overs(5, HttpOptions::default(), false);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn tls_http2_load_loses_nothing_across_hand_overs() {
    let tls = self_signed();
    let failed = http2_load_across_hand_overs(3, HttpOptions::default().tls(tls), true);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn tls_http1_keep_alive_load_loses_nothing_across_a_hand_over() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let options = HttpOptions::default()
        .tls(self_signed())
        .idle_grace(Duration::from_millis(500));
    let mut pair = rt.block_on(async { Pair::new(options) });
    let mut cfg = LoadConfig::new(pair.addr, Mode::KeepAlive);
    cfg.tls = Some(ClientTls::insecure());
    cfg.connections = 8;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(200, DEADLINE), "no load got through");
    rt.block_on(async { pair.hand_over() });
    let seen = load.pids_seen();
    assert!(load.wait_for_new_pid(&seen, DEADLINE).is_some());
    let ok = load.snapshot().ok;
    assert!(load.wait_for_ok(ok + 200, DEADLINE));
    let report = load.stop();
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
    assert!(report.server_closes >= 8, "{}", report.render_table());
    rt.block_on(async { pair.old.wait_async(DEADLINE).await })
        .unwrap();
}

fn self_signed() -> TlsAcceptor {
    let made = rcgen::generate_simple_self_signed(["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap();
    TlsAcceptor::from_pem(
        made.cert.pem().as_bytes(),
        made.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_grace_one_that_speaks_in_time_is_served() {
    // Long enough that the two late speakers below get in well within it
    // on a loaded machine.
    let grace = Duration::from_millis(2000);
    let mut pair = Pair::new(HttpOptions::default().idle_grace(grace));
    // Accepted before the drain, silent.
    let mut silent = TcpStream::connect(pair.addr).await.unwrap();
    // Accepted before the drain; their first bytes come during the grace.
    let mut h1 = TcpStream::connect(pair.addr).await.unwrap();
    let h2_late = TcpStream::connect(pair.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pair.old.active(), 3);
    let closed_at = Instant::now();
    pair.hand_over();
    tokio::time::sleep(grace / 4).await;
    h1.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    timeout(DEADLINE, h1.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.ends_with("pid=1\n"), "{answer}");
    // HTTP/2 whose preface comes during the grace, with its first request
    // in the same write (a client library that opens its stream only after
    // the server's SETTINGS may find the GOAWAY first and not send it at
    // all): served, then GOAWAY.
    let mut late = RawH2 { stream: h2_late };
    let mut first = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    first.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    first.extend_from_slice(&headers_frame(1));
    late.stream.write_all(&first).await.unwrap();
    let mut seen = Vec::new();
    assert_eq!(late.response(1, &mut seen).await, "pid=1\n");
    // This bare client does not answer the server's PING, so it closes its
    // side itself, as a client does once it has its answer and a GOAWAY.
    drop(late);
    // The silent one: closed, but not before the grace.
    let mut byte = [0u8; 1];
    let n = timeout(DEADLINE, silent.read(&mut byte))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        closed_at.elapsed() >= grace,
        "closed after {:?}, before the grace",
        closed_at.elapsed()
    );
    timeout(DEADLINE, pair.old.wait_async(DEADLINE))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_stay_tracked_and_learn_that_the_drain_began() {
    let mut pair = Pair::new(HttpOptions::default().idle_grace(Duration::from_millis(300)));
    let mut ws = TcpStream::connect(pair.addr).await.unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("hi\n") {
        let n = timeout(DEADLINE, ws.read(&mut buf)).await.unwrap().unwrap();
        assert_ne!(n, 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(pair.old.active(), 1, "the upgraded connection is counted");
    pair.hand_over();
    // Still counted after the grace: it is not an idle HTTP connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut rest = Vec::new();
    timeout(DEADLINE, ws.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "bye\n");
    timeout(DEADLINE, pair.old.wait_async(DEADLINE))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_answered_while_draining_keeps_its_connection_upgrade() {
    let mut pair = Pair::new(HttpOptions::default().idle_grace(Duration::from_secs(2)));
    let mut ws = TcpStream::connect(pair.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    pair.hand_over();
    // Sent during the grace: answered, and upgraded.
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    timeout(DEADLINE, ws.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let all = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(all.starts_with("http/1.1 101"), "{all}");
    assert!(all.contains("connection: upgrade"), "{all}");
    assert!(!all.contains("connection: close"), "{all}");
    assert!(all.ends_with("hi\nbye\n"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_is_served_over_http1_and_http2_until_the_drain_closes() {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { format!("pid={}\n", std::process::id()) }),
    );
    let drain = Drain::new();
    let listener = Listener::new(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        &drain,
    );
    let addr = listener.get_ref().local_addr().unwrap();
    let server =
        tokio::spawn(
            async move { serve(&listener, http::tower(app), &HttpOptions::default()).await },
        );
    let mut send = h2_connect(addr).await;
    let expected = format!("pid={}\n", std::process::id());
    assert_eq!(h2_get(&mut send, "/").await.unwrap(), expected);
    let mut h1 = TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    timeout(DEADLINE, h1.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).ends_with(&expected));
    drain.close();
    timeout(DEADLINE, server).await.unwrap().unwrap().unwrap();
    timeout(DEADLINE, drain.wait_async(DEADLINE))
        .await
        .unwrap()
        .unwrap();
}

/// A hand-written HTTP/2 client, to put frames on the wire in the order
/// `h2` and nghttp2 do under load: at a graceful GOAWAY, the PING
/// acknowledgement first, then the HEADERS of a stream the client had
/// queued before it saw the GOAWAY, in one write.
struct RawH2 {
    stream: TcpStream,
}

/// A request for `/` on stream `id` (HPACK: static entries, a literal
/// authority without indexing), END_STREAM | END_HEADERS.
fn headers_frame(id: u32) -> Vec<u8> {
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b't'];
    let mut f = vec![0, 0, block.len() as u8, 0x1, 0x5];
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&block);
    f
}

impl RawH2 {
    async fn connect(addr: SocketAddr) -> RawH2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        // Empty SETTINGS.
        stream
            .write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        RawH2 { stream }
    }

    /// The next frame: (type, flags, stream id, payload). SETTINGS are
    /// acknowledged on the way.
    async fn frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        loop {
            let mut h = [0u8; 9];
            if let Err(e) = timeout(DEADLINE, self.stream.read_exact(&mut h))
                .await
                .unwrap()
            {
                panic!("the server closed the connection ({e}) where a frame was expected");
            }
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let id = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
            let mut payload = vec![0u8; len];
            timeout(DEADLINE, self.stream.read_exact(&mut payload))
                .await
                .unwrap()
                .unwrap();
            if h[3] == 0x4 && h[4] & 1 == 0 {
                self.stream
                    .write_all(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0])
                    .await
                    .unwrap();
                continue;
            }
            return (h[3], h[4], id, payload);
        }
    }

    /// Reads until stream `id` ends; returns its DATA.
    async fn response(&mut self, id: u32, seen: &mut Vec<(u8, u8, u32, Vec<u8>)>) -> String {
        let mut data = Vec::new();
        loop {
            let f = self.frame().await;
            let ends = f.2 == id && f.1 & 0x1 != 0 && (f.0 == 0x0 || f.0 == 0x1);
            if f.0 == 0x0 && f.2 == id {
                data.extend_from_slice(&f.3);
            }
            seen.push(f);
            if ends {
                return String::from_utf8_lossy(&data).into_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_a_stream_sent_right_after_the_ping_ack_is_still_served() {
    let mut pair = Pair::new(HttpOptions::default().http2_goaway_delay(Duration::from_millis(200)));
    let mut c = RawH2::connect(pair.addr).await;
    c.stream.write_all(&headers_frame(1)).await.unwrap();
    let mut seen = Vec::new();
    assert_eq!(c.response(1, &mut seen).await, "pid=1\n");
    pair.hand_over();
    // The first GOAWAY (last stream id 2^31-1), then its PING.
    let ping = loop {
        let (kind, flags, _, payload) = c.frame().await;
        if kind == 0x7 {
            assert_eq!(
                payload[..4],
                [0x7f, 0xff, 0xff, 0xff],
                "first GOAWAY: highest id"
            );
        }
        if kind == 0x6 && flags & 1 == 0 {
            break payload;
        }
    };
    // The acknowledgement, then stream 3, queued before the GOAWAY was read.
    let mut burst = vec![0, 0, 8, 0x6, 0x1, 0, 0, 0, 0];
    burst.extend_from_slice(&ping);
    burst.extend_from_slice(&headers_frame(3));
    c.stream.write_all(&burst).await.unwrap();
    let mut seen = Vec::new();
    let body = timeout(Duration::from_secs(5), c.response(3, &mut seen))
        .await
        .unwrap_or_else(|_| panic!("no answer on stream 3; frames: {seen:?}"));
    assert_eq!(body, "pid=1\n", "stream 3 is served by the old server");
    // The second GOAWAY counts stream 3.
    let goaway_last = |f: &(u8, u8, u32, Vec<u8>)| {
        (f.0 == 0x7).then(|| u32::from_be_bytes([f.3[0] & 0x7f, f.3[1], f.3[2], f.3[3]]))
    };
    let last = match seen.iter().find_map(goaway_last) {
        Some(last) => last,
        None => loop {
            if let Some(last) = goaway_last(&c.frame().await) {
                break last;
            }
        },
    };
    assert_eq!(last, 3, "the second GOAWAY's last stream id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_a_silent_connection_is_closed_after_the_grace_a_late_handshake_is_served() {
    let grace = Duration::from_millis(600);
    let made = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
    let acceptor = TlsAcceptor::from_pem(
        made.cert.pem().as_bytes(),
        made.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut pair = Pair::new(HttpOptions::default().tls(acceptor).idle_grace(grace));
    let mut silent = TcpStream::connect(pair.addr).await.unwrap();
    let late = TcpStream::connect(pair.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pair.old.active(), 2);
    let closed_at = Instant::now();
    pair.hand_over();
    tokio::time::sleep(grace / 2).await;
    // Its handshake starts during the grace: served by the old server.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, late).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = timeout(DEADLINE, tls.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.ends_with("pid=1\n"), "{answer}");
    // The silent one: closed, not before the grace.
    let mut byte = [0u8; 1];
    let n = timeout(DEADLINE, silent.read(&mut byte))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        closed_at.elapsed() >= grace,
        "closed after {:?}",
        closed_at.elapsed()
    );
    timeout(DEADLINE, pair.old.wait_async(DEADLINE))
        .await
        .unwrap()
        .unwrap();
}
