//! HTTP/1.1 keep-alive draining with hyper, on real sockets: no request is
//! lost, in-flight requests finish, every old connection is told to close,
//! and idle connections are closed only after the grace.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use handover::drain::http::{HttpOptions, serve_connection};
use handover::drain::{self, Drain, Listener};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(20);

/// Answers `<name> <path>`; paths starting with `/slow` take 500 ms, others
/// 1 ms. Each request start is reported on `started`.
async fn handle(
    name: &'static str,
    req: Request<Incoming>,
    started: mpsc::UnboundedSender<String>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let _ = started.send(path.clone());
    let delay = if path.starts_with("/slow") { 500 } else { 1 };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{name} {path}"
    )))))
}

/// Serves `listener` with `serve_connection` until its drain is closed.
fn serve(
    name: &'static str,
    listener: Listener<tokio::net::TcpListener>,
    options: HttpOptions,
    started: mpsc::UnboundedSender<String>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) if drain::is_closed_error(&e) => return,
                Err(e) => panic!("{name}: accept: {e}"),
            };
            let drain = listener.drain().clone();
            let (options, started) = (options.clone(), started.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(name, req, started.clone()));
                let _ = serve_connection(stream, service, &drain, &options).await;
            });
        }
    })
}

/// An old server and its successor on one listening socket: `old` is
/// drained by the test; the successor (another descriptor for the same
/// socket, with a drain nobody closes) is started by the test once `old` is
/// closed, and takes the connections `old` leaves in the queue.
struct Pair {
    addr: SocketAddr,
    old: Drain,
    started: mpsc::UnboundedReceiver<String>,
    successor: Option<(Listener<tokio::net::TcpListener>, HttpOptions)>,
    tx: mpsc::UnboundedSender<String>,
    _successor_drain: Drain,
}

impl Pair {
    async fn new(options: HttpOptions) -> Pair {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let dup = socket.try_clone().unwrap();
        let (tx, started) = mpsc::unbounded_channel();
        let old = Drain::new();
        let successor_drain = Drain::new();
        serve(
            "old",
            Listener::new(tokio::net::TcpListener::from_std(socket).unwrap(), &old),
            options.clone(),
            tx.clone(),
        );
        let successor = Listener::new(
            tokio::net::TcpListener::from_std(dup).unwrap(),
            &successor_drain,
        );
        Pair {
            addr,
            old,
            started,
            successor: Some((successor, options)),
            tx,
            _successor_drain: successor_drain,
        }
    }

    fn start_successor(&mut self) {
        let (listener, options) = self.successor.take().expect("started once");
        serve("new", listener, options, self.tx.clone());
    }
}

/// A hand-written HTTP/1.1 client, so the test sees exactly what is on the
/// wire: each answer whole, its `Connection` header, and the close after it.
struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    close: bool,
    body: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = timeout(DEADLINE, TcpStream::connect(addr)).await??;
        let (r, w) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(r),
            writer: w,
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes).await
    }

    async fn answer(&mut self) -> io::Result<Answer> {
        let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a whole answer");
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(eof());
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let (mut length, mut close) = (0usize, false);
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(eof());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            if name == "content-length" {
                length = value.parse().map_err(io::Error::other)?;
            } else if name == "connection" && value.split(',').any(|v| v.trim() == "close") {
                close = true;
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await?;
        Ok(Answer {
            status,
            close,
            body: String::from_utf8(body).map_err(io::Error::other)?,
        })
    }

    async fn get(&mut self, path: &str) -> io::Result<Answer> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await?;
        self.answer().await
    }

    /// Waits for the server to close (EOF), failing on any byte.
    async fn closed(&mut self) -> io::Result<()> {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte).await? {
            0 => Ok(()),
            _ => Err(io::Error::other("unexpected bytes instead of a close")),
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    failures: Vec<String>,
    /// Connections answered by the old server.
    old_connections: usize,
    /// ... whose last answer said `Connection: close`.
    old_told_to_close: usize,
    answered_by_new: usize,
}

/// Sends requests on a keep-alive connection until `stop`, with a short
/// pause between an answer and the next request (as real clients have: the
/// connection is idle most of the time, which is when closing it loses the
/// next request), reconnecting after each `Connection: close` answer.
async fn hammer(id: usize, addr: SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<(Client, Option<String>)> = None;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        if n > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (client, server) = match &mut conn {
            Some(c) => c,
            None => match Client::connect(addr).await {
                Ok(c) => conn.insert((c, None)),
                Err(e) => {
                    tally.failures.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        n += 1;
        let path = format!("/{id}/{n}");
        tally.requests += 1;
        let answer = match timeout(DEADLINE, client.get(&path)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tally.failures.push(format!("{path}: {e}"));
                conn = None;
                continue;
            }
            Err(_) => {
                tally.failures.push(format!("{path}: no answer in time"));
                conn = None;
                continue;
            }
        };
        let (name, echoed) = answer.body.split_once(' ').unwrap_or(("?", ""));
        if answer.status != 200 || echoed != path {
            tally
                .failures
                .push(format!("{path}: wrong answer {answer:?}"));
        }
        if name == "new" {
            tally.answered_by_new += 1;
        }
        if server.is_none() {
            if name == "old" {
                tally.old_connections += 1;
            }
            *server = Some(name.to_string());
        }
        if answer.close {
            if name == "old" {
                tally.old_told_to_close += 1;
            }
            // The server closes right after such an answer.
            match timeout(DEADLINE, client.closed()).await {
                Ok(Ok(())) => {}
                other => tally.failures.push(format!(
                    "{path}: no close after Connection: close: {other:?}"
                )),
            }
            conn = None;
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_lose_no_request_across_close() {
    let mut pair = Pair::new(HttpOptions::default().idle_grace(Duration::from_secs(1))).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|id| tokio::spawn(hammer(id, pair.addr, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pair.old.close();
    pair.start_successor();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);

    let mut total = Tally::default();
    for c in clients {
        let t = timeout(DEADLINE, c).await.unwrap().unwrap();
        total.requests += t.requests;
        total.failures.extend(t.failures);
        total.old_connections += t.old_connections;
        total.old_told_to_close += t.old_told_to_close;
        total.answered_by_new += t.answered_by_new;
    }
    eprintln!("{total:?}");
    assert!(total.failures.is_empty(), "failed: {:?}", total.failures);
    assert!(total.requests > 50, "{total:?}");
    assert!(total.old_connections >= 16, "{total:?}");
    // Every connection the old server had ended with `Connection: close`.
    assert_eq!(total.old_told_to_close, total.old_connections, "{total:?}");
    assert!(total.answered_by_new > 0, "{total:?}");
    let waited = Instant::now();
    assert_eq!(pair.old.wait_async(DEADLINE).await, Ok(()));
    assert!(waited.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_only_after_the_grace() {
    let grace = Duration::from_millis(800);
    let pair = Pair::new(HttpOptions::default().idle_grace(grace)).await;
    // One connection after a request, one that never sent anything.
    let mut used = Client::connect(pair.addr).await.unwrap();
    let answer = used.get("/first").await.unwrap();
    assert!(!answer.close && answer.body == "old /first", "{answer:?}");
    let mut silent = Client::connect(pair.addr).await.unwrap();
    let start = Instant::now();
    while pair.old.active() < 2 {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let closed_at = Instant::now();
    pair.old.close();
    let (a, b) = tokio::join!(
        timeout(DEADLINE, used.closed()),
        timeout(DEADLINE, silent.closed())
    );
    // Both finish together (within the join) at about the same time.
    a.unwrap().unwrap();
    b.unwrap().unwrap();
    let elapsed = closed_at.elapsed();
    assert!(
        elapsed >= grace,
        "closed after {elapsed:?}, before the grace"
    );
    assert!(
        elapsed < grace + Duration::from_millis(1500),
        "closed after {elapsed:?}"
    );
    assert_eq!(pair.old.wait_async(DEADLINE).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_idle_connection_closes_no_sooner_than_the_grace() {
    // Same as above, measured per connection.
    let grace = Duration::from_millis(600);
    let pair = Pair::new(HttpOptions::default().idle_grace(grace)).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(pair.addr).await.unwrap();
        c.get("/warm").await.unwrap();
        clients.push(c);
    }
    let closed_at = Instant::now();
    pair.old.close();
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                timeout(DEADLINE, c.closed()).await.unwrap().unwrap();
                closed_at.elapsed()
            })
        })
        .collect();
    for w in waits {
        let elapsed = w.await.unwrap();
        assert!(elapsed >= grace, "closed after {elapsed:?}");
        assert!(elapsed < grace + Duration::from_millis(1500), "{elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_during_the_grace_are_answered() {
    let grace = Duration::from_secs(2);
    let pair = Pair::new(HttpOptions::default().idle_grace(grace)).await;
    let mut whole = Client::connect(pair.addr).await.unwrap();
    let mut split = Client::connect(pair.addr).await.unwrap();
    assert!(!whole.get("/a").await.unwrap().close);
    assert!(!split.get("/b").await.unwrap().close);

    let closed_at = Instant::now();
    pair.old.close();
    let sleep_until =
        |ms: u64| tokio::time::sleep_until((closed_at + Duration::from_millis(ms)).into());

    // A whole request during the grace: answered, told to close, closed.
    sleep_until(300).await;
    let answer = whole.get("/during-grace").await.unwrap();
    assert_eq!(answer.body, "old /during-grace");
    assert!(answer.close, "{answer:?}");
    timeout(DEADLINE, whole.closed()).await.unwrap().unwrap();

    // Half a request at 1 s, the rest at 2.5 s: past the grace counted from
    // the close, within the grace counted from the last byte received.
    sleep_until(1000).await;
    split
        .send(b"GET /split HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    sleep_until(2500).await;
    split.send(b"st\r\n\r\n").await.unwrap();
    let answer = timeout(DEADLINE, split.answer()).await.unwrap().unwrap();
    assert_eq!(answer.body, "old /split");
    assert!(answer.close, "{answer:?}");
    timeout(DEADLINE, split.closed()).await.unwrap().unwrap();
    assert_eq!(pair.old.wait_async(DEADLINE).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slow_requests_in_flight_finish_with_connection_close() {
    let mut pair = Pair::new(HttpOptions::default()).await;
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let addr = pair.addr;
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await.unwrap();
                let answer = c.get(&format!("/slow/{i}")).await.unwrap();
                c.closed().await.unwrap();
                answer
            })
        })
        .collect();
    // All 50 handlers have started.
    for _ in 0..50 {
        let path = timeout(DEADLINE, pair.started.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(path.starts_with("/slow/"));
    }
    pair.old.close();
    pair.start_successor();
    assert_eq!(pair.old.active(), 50);

    // A connection made now goes to the successor.
    let mut late = Client::connect(pair.addr).await.unwrap();
    let answer = timeout(DEADLINE, late.get("/late")).await.unwrap().unwrap();
    assert_eq!(answer.body, "new /late");

    for (i, c) in clients.into_iter().enumerate() {
        let answer = timeout(DEADLINE, c).await.unwrap().unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, format!("old /slow/{i}"));
        assert!(answer.close, "{answer:?}");
    }
    assert_eq!(pair.old.wait_async(DEADLINE).await, Ok(()));
}
