//! Keep-alive connections survive upgrades (issue 18): `upgrade_http
//! --handoff` hands its idle HTTP/1.1 keep-alive connections to the new
//! process on every upgrade, with the bytes it had read and not answered.
//!
//! The clients are raw keep-alive HTTP/1.1 clients over TCP that count
//! every connection they open and every request that is not answered with
//! a `200`. The server is `examples/upgrade_http.rs`, compiled into this
//! test binary and run as a role, as in `upgrade.rs`.

#[path = "../examples/upgrade_http.rs"]
#[allow(dead_code)]
mod upgrade_http;

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ARGS, ROLE, Server};

#[test]
fn child_role() {
    if std::env::var(ROLE).as_deref() != Ok("upgrade_http") {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let args = std::env::var(ARGS).unwrap();
    let args = upgrade_http::Args::parse(args.split_whitespace().map(String::from)).unwrap();
    upgrade_http::run(args).unwrap();
}

/// One HTTP/1.1 response as read by [`read_response`].
#[derive(Debug)]
struct Answer {
    status: u16,
    close: bool,
    pid: u32,
}

/// Reads one response (status line, headers, a `Content-Length` body of
/// `pid=N`).
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Answer> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().unwrap_or(0);
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let pid = String::from_utf8_lossy(&body)
        .trim()
        .strip_prefix("pid=")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Ok(Answer { status, close, pid })
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    BufReader::new(s)
}

/// Keep-alive clients, each sending one request after the other on its
/// connection; a connection is replaced only when the server says
/// `Connection: close` (or fails it: a failed request).
struct Clients {
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<BTreeSet<u32>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    fn start(addr: SocketAddr, n: usize) -> Clients {
        let c = Clients {
            stop: Arc::default(),
            connects: Arc::default(),
            requests: Arc::default(),
            failures: Arc::default(),
            pids: Arc::default(),
            threads: Vec::new(),
        };
        let threads = (0..n)
            .map(|_| {
                let (stop, connects, requests, failures, pids) = (
                    c.stop.clone(),
                    c.connects.clone(),
                    c.requests.clone(),
                    c.failures.clone(),
                    c.pids.clone(),
                );
                std::thread::spawn(move || {
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let r = conn.get_or_insert_with(|| {
                            connects.fetch_add(1, Ordering::Relaxed);
                            connect(addr)
                        });
                        let result = r.get_mut().write_all(GET).and_then(|()| read_response(r));
                        requests.fetch_add(1, Ordering::Relaxed);
                        match result {
                            Ok(a) if a.status == 200 => {
                                pids.lock().unwrap().insert(a.pid);
                                if a.close {
                                    conn = None;
                                }
                            }
                            Ok(a) => {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("status {}", a.status));
                                conn = None;
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(e.to_string());
                                conn = None;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Clients { threads, ..c }
    }

    fn pids_seen(&self) -> BTreeSet<u32> {
        self.pids.lock().unwrap().clone()
    }

    fn wait_for_new_pid(&self, seen: &BTreeSet<u32>, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(p) = self.pids_seen().difference(seen).next() {
                return Some(*p);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn stop(mut self) -> (u64, u64, Vec<String>, BTreeSet<u32>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        (
            self.connects.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
            self.pids_seen(),
        )
    }
}

/// The kernel's count of TCP connections opened by this host (system-wide:
/// a cross-check only; other processes open connections too).
fn tcp_active_opens() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names.split_whitespace().position(|n| n == "ActiveOpens")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// 32 keep-alive clients across 20 upgrades: no request fails, every
/// upgrade is answered by the new pid, and the clients open at most one
/// new connection per 4 clients over the whole run (without hand-over:
/// one per client per upgrade, 640).
///
/// `HANDOVER_TEST_NO_HANDOFF=1` runs the same without `--handoff`, to see
/// this test fail on the connection count.
#[test]
fn keepalive_connections_survive_twenty_upgrades() {
    let handoff = std::env::var_os("HANDOVER_TEST_NO_HANDOFF").is_none();
    let extra = if handoff { "--handoff" } else { "" };
    let mut server = Server::spawn("pid", extra, &[("RUST_LOG", "info")]);
    const CLIENTS: u64 = 32;
    const UPGRADES: usize = 20;
    let clients = Clients::start(server.addr, CLIENTS as usize);
    // Every client connected and answered.
    let deadline = Instant::now() + Duration::from_secs(20);
    while clients.requests.load(Ordering::Relaxed) < CLIENTS * 4 {
        assert!(Instant::now() < deadline, "no load: {}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let opens_before = tcp_active_opens();
    let mut pids = vec![server.current().unwrap()];
    for _ in 0..UPGRADES {
        let new = server.upgrade_seen(
            || clients.pids_seen(),
            |seen, timeout| clients.wait_for_new_pid(seen, timeout),
        );
        pids.push(new);
    }
    // A little more load on the last generation.
    std::thread::sleep(Duration::from_millis(200));
    let opens_after = tcp_active_opens();
    let (connects, requests, failures, seen) = clients.stop();
    let new_connections = connects - CLIENTS;
    eprintln!(
        "hand-over {handoff}: {requests} requests, {} failed, {new_connections} new connections \
         over {UPGRADES} upgrades by {CLIENTS} clients (kernel TcpActiveOpens, system-wide: {:?})",
        failures.len(),
        opens_before.zip(opens_after).map(|(a, b)| b - a),
    );
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\nstderr:\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        server.log()
    );
    for p in &pids {
        assert!(seen.contains(p), "generation {p} answered nothing");
    }
    assert!(
        new_connections <= CLIENTS / 4,
        "the clients opened {new_connections} new connections over {UPGRADES} upgrades \
         (at most {} expected): keep-alive connections were not handed over\nstderr:\n{}",
        CLIENTS / 4,
        server.log()
    );
    if handoff {
        assert!(
            server.log().contains("handing idle keep-alive connections"),
            "{}",
            server.log()
        );
    }
}

/// Requests pipelined or half-sent when an upgrade hands the connection
/// over are answered exactly once: a slow request in progress, a second
/// one pipelined behind it and the first half of a third are on the
/// connection when the upgrade starts; the old process answers the first
/// two, the new one the third once its second half is sent, and nothing
/// else comes.
#[test]
fn pipelined_and_half_sent_requests_are_answered_exactly_once() {
    let mut server = Server::spawn("pid", "--handoff", &[("RUST_LOG", "info")]);
    let old = server.current().unwrap();
    let mut r = connect(server.addr);
    r.get_mut().write_all(GET).unwrap();
    let first = read_response(&mut r).unwrap();
    assert_eq!((first.status, first.pid, first.close), (200, old, false));
    // Another connection keeps watching for the new pid.
    let watcher = Clients::start(server.addr, 1);
    r.get_mut()
        .write_all(
            b"GET /slow?ms=700 HTTP/1.1\r\nHost: test\r\n\r\n\
              GET / HTTP/1.1\r\nHost: test\r\n\r\n\
              GET / HTTP/1.1\r\nHo",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let new = server.upgrade_seen(
        || watcher.pids_seen(),
        |seen, timeout| watcher.wait_for_new_pid(seen, timeout),
    );
    // The old process has exited: the connection is the new one's now.
    r.get_mut().write_all(b"st: test\r\n\r\n").unwrap();
    let answers: Vec<Answer> = (0..3).map(|_| read_response(&mut r).unwrap()).collect();
    assert_eq!(
        answers
            .iter()
            .map(|a| (a.status, a.pid, a.close))
            .collect::<Vec<_>>(),
        vec![(200, old, false), (200, old, false), (200, new, false)],
        "{}",
        server.log()
    );
    // Nothing more: each request was answered once.
    r.get_mut()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut extra = [0u8; 64];
    match r.read(&mut extra) {
        Ok(n) => panic!("{n} more bytes after the answers: {:?}", &extra[..n]),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    // And the connection goes on with the new process.
    r.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    r.get_mut().write_all(GET).unwrap();
    let last = read_response(&mut r).unwrap();
    assert_eq!((last.status, last.pid), (200, new));
    let (_, _, failures, _) = watcher.stop();
    assert!(failures.is_empty(), "{failures:?}");
}

/// A new version that does not take connections (here: the same program
/// deployed without `--handoff`, as an older version would be) closes the
/// hand-over socket in its `ready()`; the old process then drains the usual
/// way: every client reconnects once (`Connection: close`), and no request
/// fails.
#[test]
fn a_successor_that_does_not_take_connections_gets_the_usual_drain() {
    let mut server = Server::spawn("pid", "--handoff", &[("RUST_LOG", "info")]);
    let exe = std::env::current_exe().unwrap();
    let without = server.script(
        "without-handoff",
        &format!(
            "export {ARGS}=\"--listen tcp://127.0.0.1:0 --pid-file {}\"\nexec '{}' \"$@\"",
            server.pid_file().display(),
            exe.display()
        ),
    );
    server.deploy(&without);
    const CLIENTS: u64 = 8;
    let clients = Clients::start(server.addr, CLIENTS as usize);
    let deadline = Instant::now() + Duration::from_secs(20);
    while clients.requests.load(Ordering::Relaxed) < CLIENTS * 4 {
        assert!(Instant::now() < deadline, "no load: {}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let new = server.upgrade_seen(
        || clients.pids_seen(),
        |seen, timeout| clients.wait_for_new_pid(seen, timeout),
    );
    std::thread::sleep(Duration::from_millis(200));
    let (connects, _, failures, seen) = clients.stop();
    assert!(failures.is_empty(), "{failures:?}\n{}", server.log());
    assert!(seen.contains(&new));
    assert_eq!(
        connects - CLIENTS,
        CLIENTS,
        "each client reconnects once after the usual drain\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        log.contains("keep-alive connections are not handed over"),
        "{log}"
    );
}

/// A connection that has sent nothing yet when the upgrade begins (a
/// client's pre-connection) is handed over too, and its first request is
/// answered by the new process.
#[test]
fn a_connection_that_has_sent_nothing_yet_is_handed_over() {
    let mut server = Server::spawn("pid", "--handoff", &[("RUST_LOG", "info")]);
    let old = server.current().unwrap();
    let mut idle = connect(server.addr);
    let watcher = Clients::start(server.addr, 1);
    while !watcher.pids_seen().contains(&old) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let new = server.upgrade_seen(
        || watcher.pids_seen(),
        |seen, timeout| watcher.wait_for_new_pid(seen, timeout),
    );
    // The old process has exited; the connection is the new one's.
    idle.get_mut().write_all(GET).unwrap();
    let a = read_response(&mut idle).unwrap();
    assert_eq!(
        (a.status, a.pid, a.close),
        (200, new, false),
        "{}",
        server.log()
    );
    let (_, _, failures, _) = watcher.stop();
    assert!(failures.is_empty(), "{failures:?}");
}
