//! The cost of `drain::http` against the raw hyper server it wraps, side by
//! side: HTTP/2 (h2c), h2 over TLS, HTTP/1.1 over TLS, and plain HTTP/1.1
//! keep-alive. Part 1 measures CPU time per request on one in-memory
//! connection (robust on a busy machine); part 2 throughput over TCP.
//!
//! ```text
//! cargo bench -p handover --bench http_drain
//! ```
//!
//! One process: the servers on a tokio runtime of their own (1 worker
//! thread), the clients on another (1 worker thread), on 127.0.0.1. The raw
//! server is what a hyper user writes: a `tokio::net::TcpListener` accept
//! loop, `hyper::server::conn::http2` (or `http1`) on each connection, with
//! the same hyper settings as the drain's (a timer; HTTP/1.1's 30 s header
//! read timeout), and for TLS `tokio_rustls` with the same rustls
//! configuration first, the hyper builder chosen by ALPN. The drained one is `drain::http::serve` on
//! a drain `Listener` (tracked connections, HTTP/1.1 and HTTP/2 told apart by
//! the preface, the drain hooks on every connection and request), the same
//! service. Each workload runs for a fixed time per round; the rounds
//! alternate the order of the two servers; the ratio drain/raw of each
//! round and their median are printed (a single round on a shared 2-core
//! machine varies by 10% or more). Without `--bench` (as `cargo test
//! --benches` runs it), one short round as a smoke test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use handover::drain::http::{self, HttpOptions, serve};
use handover::drain::tls::TlsAcceptor;
use handover::drain::{Drain, Listener};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Server {
    Raw,
    Drain,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Workload {
    H2c,
    H2Tls,
    H1Tls,
    H1,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::H2c => "h2c, 4 conns x 16 streams",
            Workload::H2Tls => "h2 over TLS, 4 x 16",
            Workload::H1Tls => "HTTP/1.1 over TLS, 16 conns",
            Workload::H1 => "HTTP/1.1 keep-alive, 16",
        }
    }
    fn tls(self) -> bool {
        matches!(self, Workload::H2Tls | Workload::H1Tls)
    }
    fn h2(self) -> bool {
        matches!(self, Workload::H2c | Workload::H2Tls)
    }
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"hello, world\n",
    ))))
}

struct Tls {
    acceptor: TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

fn tls() -> Tls {
    let made = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
    let acceptor = TlsAcceptor::from_pem(
        made.cert.pem().as_bytes(),
        made.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        acceptor,
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
    }
}

/// Starts `kind` for `workload` on a fresh port, on `rt`; the returned
/// closure stops it.
fn start(
    rt: &tokio::runtime::Runtime,
    kind: Server,
    workload: Workload,
    tls: &Tls,
) -> (SocketAddr, Box<dyn FnOnce()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.acceptor.clone();
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    match kind {
        Server::Raw => {
            let task = rt.spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if workload.tls() {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            raw_serve(TokioIo::new(tls), h2).await;
                        } else {
                            raw_serve(TokioIo::new(stream), workload.h2()).await;
                        }
                    });
                }
            });
            (addr, Box::new(move || task.abort()))
        }
        Server::Drain => {
            let drain = Drain::new();
            let listener = Listener::new(listener, &drain);
            let mut options = HttpOptions::default();
            if workload.tls() {
                options = options.tls(acceptor);
            }
            rt.spawn(async move {
                serve(&listener, service_fn(hello), &options).await.unwrap();
            });
            (addr, Box::new(move || drain.close()))
        }
    }
}

async fn raw_serve<I>(io: I, h2: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // The same hyper settings as `drain::http` uses (a timer, and the
    // default 30 s header read timeout for HTTP/1.1), so that the
    // difference is the drain's.
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, service_fn(hello))
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(io, service_fn(hello))
            .await;
    }
}

/// Open client connections to one server: HTTP/2 senders (each used by
/// `STREAMS` concurrent tasks) or HTTP/1.1 senders (one task each).
enum Pool {
    H2(Vec<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>),
    H1(Vec<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>),
}

const STREAMS: usize = 16;

/// Connects the clients of `workload` (`tls` offers its ALPN protocol).
async fn connect(addr: SocketAddr, workload: Workload, tls: tokio_rustls::TlsConnector) -> Pool {
    let connections = if workload.h2() { 4 } else { 16 };
    let mut ios: Vec<Box<dyn Io>> = Vec::new();
    for _ in 0..connections {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        if workload.tls() {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            ios.push(Box::new(tls.connect(name, tcp).await.unwrap()));
        } else {
            ios.push(Box::new(tcp));
        }
    }
    if workload.h2() {
        let mut senders = Vec::new();
        for io in ios {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            senders.push(send);
        }
        Pool::H2(senders)
    } else {
        let mut senders = Vec::new();
        for io in ios {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(conn);
            senders.push(send);
        }
        Pool::H1(senders)
    }
}

/// Requests completed in `time` on `pool`.
async fn load(pool: &mut Pool, time: Duration) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    match pool {
        Pool::H2(senders) => {
            for send in senders.iter() {
                for _ in 0..STREAMS {
                    let (mut send, done, stop) = (send.clone(), done.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let req = Request::get("http://localhost/")
                                .body(Empty::<Bytes>::new())
                                .unwrap();
                            let res = send.send_request(req).await.unwrap();
                            res.into_body().collect().await.unwrap();
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        None
                    }));
                }
            }
        }
        Pool::H1(senders) => {
            for mut send in senders.drain(..) {
                let (done, stop) = (done.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get("http://localhost/")
                            .header("host", "localhost")
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        let res = send.send_request(req).await.unwrap();
                        res.into_body().collect().await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(send)
                }));
            }
        }
    }
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        if let (Some(send), Pool::H1(senders)) = (t.await.unwrap(), &mut *pool) {
            senders.push(send);
        }
    }
    done.load(Ordering::Relaxed)
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// CPU time the servers' worker thread has used (`/proc/self/task/TID/schedstat`,
/// nanoseconds).
fn cpu(tid: i32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The middle half of `v`: `[first quartile–third quartile]`.
fn quartiles(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!("[{:.3}–{:.3}]", v[v.len() / 4], v[v.len() * 3 / 4])
}

fn main() {
    // `HTTP_DRAIN_ONE=raw:h1:5000` (raw|drain, h2c|h2tls|h1tls|h1, requests):
    // one in-memory connection and nothing else, to count instructions with
    // `valgrind --tool=cachegrind --cache-sim=no` (see BENCHMARKS.md).
    if let Ok(one) = std::env::var("HTTP_DRAIN_ONE") {
        return only_one(&one);
    }
    let full = std::env::args().any(|a| a == "--bench");
    in_memory(full);
    println!();
    tcp(full);
}

/// Part 2: real sockets, clients and servers on their own threads.
fn tcp(full: bool) {
    let (pairs, time) = if full {
        (40, Duration::from_millis(250))
    } else {
        (1, Duration::from_millis(50))
    };
    let server_tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let tid = server_tid.clone();
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || {
            tid.store(
                rustix::thread::gettid().as_raw_nonzero().get(),
                Ordering::SeqCst,
            );
        })
        .enable_all()
        .build()
        .unwrap();
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The worker thread starts with the first task.
    servers.block_on(async { tokio::spawn(async {}).await.unwrap() });
    let tid = server_tid.load(Ordering::SeqCst);
    let started = Instant::now();
    println!(
        "{:>28}  {:>22}  {:>22}  {:>26}",
        "",
        "requests/s, raw  drain",
        "server CPU/request, raw  drain",
        "drain/raw: throughput  CPU"
    );
    for workload in [
        Workload::H2c,
        Workload::H2Tls,
        Workload::H1Tls,
        Workload::H1,
    ] {
        let tls_config = tls();
        let connector = {
            let mut config = rustls::ClientConfig::clone(&tls_config.connector.config().clone());
            config.alpn_protocols = vec![if workload.h2() {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        };
        let (raw_addr, stop_raw) = start(&servers, Server::Raw, workload, &tls_config);
        let (drain_addr, stop_drain) = start(&servers, Server::Drain, workload, &tls_config);
        let mut raw_pool = clients.block_on(connect(raw_addr, workload, connector.clone()));
        let mut drain_pool = clients.block_on(connect(drain_addr, workload, connector.clone()));
        // Warm-up, not counted.
        clients.block_on(load(&mut raw_pool, time / 2));
        clients.block_on(load(&mut drain_pool, time / 2));
        let measure = |pool: &mut Pool| {
            let (cpu0, t0) = (cpu(tid), Instant::now());
            let n = clients.block_on(load(pool, time));
            let (cpu1, t1) = (cpu(tid), Instant::now());
            let per_request = (cpu1 - cpu0).as_secs_f64() / n as f64;
            (n as f64 / (t1 - t0).as_secs_f64(), per_request)
        };
        let (mut tput, mut cpu_ratio) = (Vec::new(), Vec::new());
        let (mut raw_rps, mut drain_rps, mut raw_cpu, mut drain_cpu) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let (r, d) = if pair % 2 == 0 {
                let r = measure(&mut raw_pool);
                (r, measure(&mut drain_pool))
            } else {
                let d = measure(&mut drain_pool);
                (measure(&mut raw_pool), d)
            };
            tput.push(d.0 / r.0);
            cpu_ratio.push(r.1 / d.1);
            raw_rps.push(r.0);
            drain_rps.push(d.0);
            raw_cpu.push(r.1 * 1e6);
            drain_cpu.push(d.1 * 1e6);
        }
        println!(
            "{:>28}  {:>10.0} {:>11.0}  {:>14.1}us {:>7.1}us  {:>8.3}x {:<15} {:>6.3}x {}",
            workload.name(),
            median(&mut raw_rps),
            median(&mut drain_rps),
            median(&mut raw_cpu),
            median(&mut drain_cpu),
            median(&mut tput),
            quartiles(&mut tput),
            median(&mut cpu_ratio),
            quartiles(&mut cpu_ratio),
        );
        drop(raw_pool);
        drop(drain_pool);
        stop_raw();
        stop_drain();
    }
    println!(
        "medians (and quartiles) of {pairs} alternating pairs of {time:?} runs; CPU: the \
         servers' worker thread, per request (drain/raw CPU: raw CPU / drain CPU, 1.0 = no \
         overhead)"
    );
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}

/// Part 1: one connection in memory (`tokio::io::duplex`), client and
/// server on one thread (a current-thread runtime), `requests` requests per
/// run. The measure is that thread's CPU time (`/proc/thread-self/schedstat`:
/// time on a CPU, so a busy machine preempting it does not count), per
/// request, client included: the server's share is smaller, so the drain's
/// overhead shows here at most as it is. No syscalls: the drain's layers are
/// a larger part of the work than over TCP.
fn in_memory(full: bool) {
    let (pairs, requests) = if full { (30, 8_000) } else { (1, 200) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    println!(
        "{:>28}  {:>30}  raw CPU / drain CPU [quartiles]",
        "in memory, one thread", "CPU per request, raw  drain"
    );
    for workload in [
        Workload::H2c,
        Workload::H2Tls,
        Workload::H1Tls,
        Workload::H1,
    ] {
        let tls_config = tls();
        let mut client_config = rustls::ClientConfig::clone(&tls_config.connector.config().clone());
        client_config.alpn_protocols = vec![if workload.h2() {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let run = |kind: Server, requests: u64| -> f64 {
            rt.block_on(one_connection(
                kind,
                workload,
                &tls_config,
                connector.clone(),
                requests,
            ))
        };
        run(Server::Raw, requests / 4);
        run(Server::Drain, requests / 4);
        let (mut raw, mut drained, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let (r, d) = if pair % 2 == 0 {
                let r = run(Server::Raw, requests);
                (r, run(Server::Drain, requests))
            } else {
                let d = run(Server::Drain, requests);
                (run(Server::Raw, requests), d)
            };
            raw.push(r * 1e6);
            drained.push(d * 1e6);
            ratio.push(r / d);
        }
        println!(
            "{:>28}  {:>21.2}us {:>6.2}us  {:.3}x {}",
            workload.name(),
            median(&mut raw),
            median(&mut drained),
            median(&mut ratio),
            quartiles(&mut ratio)
        );
    }
    println!(
        "medians of {pairs} alternating pairs of {requests} requests; total time {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn only_one(spec: &str) {
    let mut parts = spec.split(':');
    let kind = match parts.next() {
        Some("raw") => Server::Raw,
        Some("drain") => Server::Drain,
        other => panic!("raw or drain, not {other:?}"),
    };
    let workload = match parts.next() {
        Some("h2c") => Workload::H2c,
        Some("h2tls") => Workload::H2Tls,
        Some("h1tls") => Workload::H1Tls,
        Some("h1") => Workload::H1,
        other => panic!("h2c, h2tls, h1tls or h1, not {other:?}"),
    };
    let requests: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let tls_config = tls();
    let mut client_config = rustls::ClientConfig::clone(&tls_config.connector.config().clone());
    client_config.alpn_protocols = vec![if workload.h2() {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(one_connection(
        kind,
        workload,
        &tls_config,
        connector,
        requests,
    ));
}

/// This thread's CPU time (on a CPU, not waiting), in seconds.
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse::<f64>().unwrap() / 1e9
}

/// Serves one in-memory connection with `kind`, sends `requests` requests
/// on it, and returns the thread's CPU seconds per request.
async fn one_connection(
    kind: Server,
    workload: Workload,
    tls: &Tls,
    connector: tokio_rustls::TlsConnector,
    requests: u64,
) -> f64 {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tls.acceptor.clone();
    let drain = Drain::new();
    let server = {
        let drain = drain.clone();
        tokio::spawn(async move {
            let options = HttpOptions::default();
            match (kind, workload.tls()) {
                (Server::Raw, false) => raw_serve(TokioIo::new(server_io), workload.h2()).await,
                (Server::Raw, true) => {
                    let tls = acceptor.accept(server_io).await.unwrap();
                    raw_serve(TokioIo::new(tls), workload.h2()).await;
                }
                (Server::Drain, false) => {
                    let io = drain.track(server_io);
                    let _ =
                        http::serve_connection_auto(io, service_fn(hello), &drain, &options).await;
                }
                (Server::Drain, true) => {
                    let io = drain.track(server_io);
                    let tls = acceptor.accept(io).await.unwrap();
                    let _ =
                        http::serve_connection_auto(tls, service_fn(hello), &drain, &options).await;
                }
            }
        })
    };
    let io: Box<dyn Io> = if workload.tls() {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        Box::new(connector.connect(name, client_io).await.unwrap())
    } else {
        Box::new(client_io)
    };
    let cpu0 = thread_cpu();
    if workload.h2() {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..requests / STREAMS as u64 {
                    let req = Request::get("http://localhost/")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let res = send.send_request(req).await.unwrap();
                    res.into_body().collect().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        drop(send);
        let _ = conn.await;
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        for _ in 0..requests {
            let req = Request::get("http://localhost/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = send.send_request(req).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
        drop(send);
        let _ = conn.await;
    }
    let cpu = thread_cpu() - cpu0;
    let _ = server.await;
    cpu / requests as f64
}
