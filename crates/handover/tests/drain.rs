//! Drain listeners on real sockets: counting, closing, waiting, and leaving
//! queued connections to the process that shares the socket.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use handover::drain::{self, Drain, Listener, Tracked};

/// Every wait in these tests has a deadline; this is the usual one.
const DEADLINE: Duration = Duration::from_secs(20);

/// Joins `handle`, failing the test if it takes longer than `within`.
fn join_within<T>(handle: JoinHandle<T>, within: Duration, what: &str) -> T {
    let start = Instant::now();
    while !handle.is_finished() {
        assert!(
            start.elapsed() < within,
            "{what} did not finish within {within:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    handle.join().unwrap()
}

/// Waits until `cond` holds, failing the test after `within`.
fn until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Accepts one connection from `listener` without blocking forever: the
/// socket is put in non-blocking mode (shared by all its descriptors).
fn raw_accept_tcp(listener: &TcpListener, within: Duration) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(start.elapsed() < within, "no connection in the queue");
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("raw accept failed: {e}"),
        }
    }
}

/// Serves one line per connection: reads it, sleeps `delay`, answers
/// `done <line>`; counts the answers it completed.
fn std_slow_server(
    listener: Listener<TcpListener>,
    delay: Duration,
    answered: Arc<AtomicUsize>,
) -> JoinHandle<usize> {
    thread::spawn(move || {
        let mut accepted = 0;
        for stream in listener.incoming() {
            let stream = stream.expect("accept");
            accepted += 1;
            let answered = answered.clone();
            thread::spawn(move || {
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                thread::sleep(delay);
                (&stream)
                    .write_all(format!("done {line}").as_bytes())
                    .unwrap();
                answered.fetch_add(1, Ordering::SeqCst);
                // `stream` (Tracked) dropped here: the drain stops waiting.
            });
        }
        accepted
    })
}

fn std_client(addr: SocketAddr, i: usize) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(format!("req {i}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    })
}

#[test]
fn std_fifty_slow_requests_finish_after_close() {
    let drain = Drain::new();
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    // The successor's descriptor: the same socket, same accept queue.
    let successor = socket.try_clone().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let server = std_slow_server(
        Listener::new(socket, &drain),
        Duration::from_millis(500),
        answered.clone(),
    );

    let clients: Vec<_> = (0..50).map(|i| std_client(addr, i)).collect();
    until(DEADLINE, "50 accepted connections", || drain.active() == 50);
    let closed_at = Instant::now();
    drain.close();

    // The accept loop ends; no request has been answered yet.
    let accepted = join_within(server, DEADLINE, "the accept loop");
    assert_eq!(accepted, 50);
    assert!(answered.load(Ordering::SeqCst) < 50);

    // A connection made now is queued, not accepted by the drained listener:
    // the successor accepts it.
    let late = TcpStream::connect(addr).unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(drain.active(), 50 - answered.load(Ordering::SeqCst));
    let taken = raw_accept_tcp(&successor, DEADLINE);
    assert_eq!(taken.peer_addr().unwrap(), late.local_addr().unwrap());

    drain.wait(DEADLINE).expect("every connection finishes");
    assert_eq!(answered.load(Ordering::SeqCst), 50);
    assert_eq!(drain.active(), 0);
    assert!(closed_at.elapsed() < DEADLINE);
    for (i, client) in clients.into_iter().enumerate() {
        assert_eq!(
            join_within(client, DEADLINE, "a client"),
            format!("done req {i}\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_fifty_slow_requests_finish_after_close() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    let drain = Drain::new();
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    socket.set_nonblocking(true).unwrap();
    let successor = tokio::net::TcpListener::from_std(socket.try_clone().unwrap()).unwrap();
    let listener = Listener::new(tokio::net::TcpListener::from_std(socket).unwrap(), &drain);
    let answered = Arc::new(AtomicUsize::new(0));

    let server = {
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut accepted = 0;
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) if drain::is_closed_error(&e) => return accepted,
                    Err(e) => panic!("accept: {e}"),
                };
                accepted += 1;
                let answered = answered.clone();
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    stream
                        .write_all(format!("done {line}").as_bytes())
                        .await
                        .unwrap();
                    answered.fetch_add(1, Ordering::SeqCst);
                });
            }
        })
    };

    let clients: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(format!("req {i}\n").as_bytes()).await.unwrap();
                let mut answer = String::new();
                s.read_to_string(&mut answer).await.unwrap();
                answer
            })
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while drain.active() < 50 {
        assert!(Instant::now() < deadline, "50 connections not accepted");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drain.close();
    let accepted = tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the accept loop ends")
        .unwrap();
    assert_eq!(accepted, 50);

    let late = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (taken, _) = tokio::time::timeout(DEADLINE, successor.accept())
        .await
        .expect("the late connection is still queued")
        .unwrap();
    assert_eq!(taken.peer_addr().unwrap(), late.local_addr().unwrap());

    drain
        .wait_async(DEADLINE)
        .await
        .expect("every connection finishes");
    assert_eq!(answered.load(Ordering::SeqCst), 50);
    for (i, client) in clients.into_iter().enumerate() {
        let answer = tokio::time::timeout(DEADLINE, client)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, format!("done req {i}\n"));
    }
}

#[test]
fn deadline_reports_how_many_are_open() {
    let drain = Drain::new();
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = Listener::new(socket, &drain);
    let _clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let held: Vec<_> = (0..3).map(|_| listener.accept().unwrap().0).collect();
    drain.close();
    assert_eq!(drain.active(), 3);

    let start = Instant::now();
    let err = drain.wait(Duration::from_millis(300)).unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(start.elapsed() < DEADLINE);
    assert_eq!(err.open, 3);
    assert!(err.waited >= Duration::from_millis(300));
    let msg = err.to_string();
    // "after 300ms", or a few ms more on a loaded machine.
    assert!(
        msg.starts_with("3 connection(s) still open after 3") && msg.contains("ms of draining;"),
        "{msg}"
    );

    let mut held = held.into_iter();
    drop(held.next());
    assert_eq!(drain.wait(Duration::from_millis(50)).unwrap_err().open, 2);
    drop(held);
    assert_eq!(drain.wait(Duration::from_millis(50)), Ok(()));
}

#[tokio::test]
async fn async_deadline_reports_how_many_are_open() {
    let drain = Drain::new();
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let held = [drain.track(a), drain.track(b)];
    drain.close();
    let err = drain
        .wait_async(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.open, 2);
    assert!(err.waited >= Duration::from_millis(200));
    // Dropping them while a waiter sleeps wakes it.
    let waiter = {
        let drain = drain.clone();
        tokio::spawn(async move { drain.wait_async(DEADLINE).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(held);
    let result = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, Ok(()));
}

#[test]
fn blocking_tcp_accept_is_interrupted_by_close() {
    let drain = Drain::new();
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = Listener::new(socket, &drain);
    let acceptor = thread::spawn(move || {
        let result = listener.accept().map(|_| ());
        (result, listener)
    });
    thread::sleep(Duration::from_millis(100));
    assert!(
        !acceptor.is_finished(),
        "accept returned with no connection"
    );
    let closed_at = Instant::now();
    drain.close();
    let (result, listener) = join_within(acceptor, DEADLINE, "the blocked accept");
    assert!(closed_at.elapsed() < Duration::from_secs(5));
    let err = result.unwrap_err();
    assert!(drain::is_closed_error(&err), "{err}");
    assert_eq!(err.kind(), io::ErrorKind::Other);
    assert!(err.to_string().contains("closed for draining"), "{err}");
    // Later accepts fail at once; the iterator ends.
    assert!(drain::is_closed_error(&listener.accept().unwrap_err()));
    assert!(listener.incoming().next().is_none());

    // The socket is untouched: still listening, still blocking, still
    // accepting.
    let socket = listener.into_inner();
    let client = TcpStream::connect(addr).unwrap();
    let (server_side, peer) = socket.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    drop(server_side);
    assert_eq!(drain.active(), 0);
}

#[test]
fn blocking_unix_accept_is_interrupted_by_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let drain = Drain::new();
    let listener = Listener::new(UnixListener::bind(&path).unwrap(), &drain);

    // One connection goes through first.
    let mut client = UnixStream::connect(&path).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    assert_eq!(drain.active(), 1);
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    let acceptor = thread::spawn(move || {
        let result = listener.accept().map(|_| ());
        (result, listener)
    });
    thread::sleep(Duration::from_millis(100));
    assert!(!acceptor.is_finished());
    drain.close();
    let (result, listener) = join_within(acceptor, DEADLINE, "the blocked accept");
    assert!(drain::is_closed_error(&result.unwrap_err()));
    assert_eq!(drain.active(), 1);
    drop(conn);
    assert_eq!(drain.wait(DEADLINE), Ok(()));

    let socket = listener.into_inner();
    let _client = UnixStream::connect(&path).unwrap();
    socket.accept().expect("the socket still accepts");
}

#[test]
fn queued_connections_are_left_for_the_successor() {
    let drain = Drain::new();
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let successor = socket.try_clone().unwrap();
    let listener = Listener::new(socket, &drain);
    // Queued before close, never accepted by us.
    let early = TcpStream::connect(addr).unwrap();
    drain.close();
    let err = listener.accept().unwrap_err();
    assert!(drain::is_closed_error(&err), "{err}");
    assert_eq!(drain.active(), 0);
    let taken = raw_accept_tcp(&successor, DEADLINE);
    assert_eq!(taken.peer_addr().unwrap(), early.local_addr().unwrap());
}

#[tokio::test]
async fn tokio_queued_connections_are_left_for_the_successor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sock");
    let socket = UnixListener::bind(&path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let successor = tokio::net::UnixListener::from_std(socket.try_clone().unwrap()).unwrap();
    let drain = Drain::new();
    let listener = Listener::new(tokio::net::UnixListener::from_std(socket).unwrap(), &drain);

    let _first = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (conn, _) = listener.accept().await.unwrap();
    assert_eq!(drain.active(), 1);

    let mut early = tokio::net::UnixStream::connect(&path).await.unwrap();
    drain.close();
    let err = listener.accept().await.unwrap_err();
    assert!(drain::is_closed_error(&err), "{err}");
    let (mut taken, _) = tokio::time::timeout(DEADLINE, successor.accept())
        .await
        .unwrap()
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    early.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    taken.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    assert_eq!(drain.active(), 1);
    drop(conn);
    assert_eq!(drain.wait_async(DEADLINE).await, Ok(()));
}

#[tokio::test]
async fn tokio_accept_in_progress_is_woken_by_close() {
    let drain = Drain::new();
    let listener = Listener::new(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        &drain,
    );
    let closer = {
        let drain = drain.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drain.close();
        })
    };
    let result = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("close wakes accept");
    assert!(drain::is_closed_error(&result.unwrap_err()));
    closer.await.unwrap();
    tokio::time::timeout(DEADLINE, drain.closed())
        .await
        .unwrap();
}

/// Accept and close race, many times over: whatever the interleaving, every
/// connection the listener returned is counted, every other one is still
/// queued for the successor, and none is lost.
#[test]
fn std_accept_and_close_race_loses_nothing() {
    for round in 0..20 {
        let drain = Drain::new();
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let successor = socket.try_clone().unwrap();
        let listener = Listener::new(socket, &drain);
        let stop = Arc::new(AtomicBool::new(false));
        let server = thread::spawn(move || listener.incoming().collect::<Vec<_>>());
        // At most 80 connections: below the listen backlog, so that a
        // connect never waits for room in a queue nobody empties.
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut conns = Vec::new();
                    while !stop.load(Ordering::SeqCst) && conns.len() < 40 {
                        conns.push(TcpStream::connect(addr).unwrap());
                    }
                    conns
                })
            })
            .collect();
        thread::sleep(Duration::from_micros(200 * round));
        drain.close();
        stop.store(true, Ordering::SeqCst);
        let accepted: Vec<Tracked<TcpStream>> = join_within(server, DEADLINE, "accept loop")
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let connected: usize = clients
            .into_iter()
            .map(|c| join_within(c, DEADLINE, "client").len())
            .sum();
        assert_eq!(drain.active(), accepted.len(), "round {round}");
        // Everything else is in the queue.
        successor.set_nonblocking(true).unwrap();
        let mut queued = 0;
        let start = Instant::now();
        while accepted.len() + queued < connected {
            match successor.accept() {
                Ok(_) => queued += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        start.elapsed() < DEADLINE,
                        "round {round}: lost connections"
                    );
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(accepted.len() + queued, connected, "round {round}");
        drop(accepted);
        assert_eq!(drain.wait(DEADLINE), Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_accept_and_close_race_loses_nothing() {
    for round in 0..20u64 {
        let drain = Drain::new();
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        socket.set_nonblocking(true).unwrap();
        let successor = socket.try_clone().unwrap();
        let listener = Listener::new(tokio::net::TcpListener::from_std(socket).unwrap(), &drain);
        let server = tokio::spawn(async move {
            let mut accepted = Vec::new();
            loop {
                match listener.accept().await {
                    Ok((s, _)) => accepted.push(s),
                    Err(e) if drain::is_closed_error(&e) => return accepted,
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut conns = Vec::new();
                    while !stop.load(Ordering::SeqCst) && conns.len() < 40 {
                        conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
                    }
                    conns
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_micros(200 * round)).await;
        drain.close();
        stop.store(true, Ordering::SeqCst);
        let accepted = tokio::time::timeout(DEADLINE, server)
            .await
            .unwrap()
            .unwrap();
        let mut connected = 0;
        for c in clients {
            connected += tokio::time::timeout(DEADLINE, c)
                .await
                .unwrap()
                .unwrap()
                .len();
        }
        assert_eq!(drain.active(), accepted.len(), "round {round}");
        let mut queued = 0;
        let start = Instant::now();
        while accepted.len() + queued < connected {
            match successor.accept() {
                Ok(_) => queued += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        start.elapsed() < DEADLINE,
                        "round {round}: lost connections"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(accepted.len() + queued, connected, "round {round}");
        drop(accepted);
        assert_eq!(drain.wait_async(DEADLINE).await, Ok(()));
    }
}

/// Two drained listeners share one non-blocking socket (as two processes
/// would): one connection wakes both `poll`s, one accepts it, the other finds
/// the queue empty (`EAGAIN`) and keeps waiting instead of failing.
#[test]
fn losing_an_accept_race_on_a_nonblocking_socket_keeps_waiting() {
    let drain = Drain::new();
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener = Arc::new(Listener::new(socket, &drain));
    let results = Arc::new(Mutex::new(Vec::new()));
    let acceptors: Vec<_> = (0..2)
        .map(|_| {
            let listener = listener.clone();
            let results = results.clone();
            thread::spawn(move || {
                let r = listener.accept();
                let ok = r.is_ok();
                results.lock().unwrap().push(r.map(|(s, _)| s));
                ok
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    let _client = TcpStream::connect(addr).unwrap();
    until(DEADLINE, "one accept", || {
        results.lock().unwrap().len() == 1
    });
    thread::sleep(Duration::from_millis(100));
    assert_eq!(results.lock().unwrap().len(), 1, "the loser gave up");
    assert_eq!(drain.active(), 1);
    drain.close();
    let oks: usize = acceptors
        .into_iter()
        .map(|a| join_within(a, DEADLINE, "acceptor") as usize)
        .sum();
    assert_eq!(oks, 1);
    let results = std::mem::take(&mut *results.lock().unwrap());
    assert!(drain::is_closed_error(results[1].as_ref().unwrap_err()));
    drop(results);
    assert_eq!(drain.wait(DEADLINE), Ok(()));
}

#[tokio::test]
async fn tracked_tokio_stream_keeps_vectored_writes() {
    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

    let drain = Drain::new();
    let listener = Listener::new(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        &drain,
    );
    let addr = listener.get_ref().local_addr().unwrap();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut conn, peer) = listener.accept().await.unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    assert!(AsyncWrite::is_write_vectored(&conn));
    // Deref reaches the inner stream's own methods.
    assert_eq!(conn.peer_addr().unwrap(), peer);

    let parts = [
        IoSlice::new(b"hello, "),
        IoSlice::new(b"vectored "),
        IoSlice::new(b"world"),
    ];
    let n = conn.write_vectored(&parts).await.unwrap();
    assert_eq!(
        n, 21,
        "one vectored write of small buffers goes through whole"
    );
    conn.shutdown().await.unwrap();
    let mut got = String::new();
    client.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello, vectored world");

    client.write_all(b"back").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"back");

    assert_eq!(drain.active(), 1);
    let drain_of_conn = conn.drain();
    assert!(!drain_of_conn.is_closed());
    drain.close();
    assert!(drain_of_conn.is_closed());
    // Unwrapping stops the tracking.
    let inner: tokio::net::TcpStream = conn.into_inner();
    assert_eq!(drain.active(), 0);
    drop(inner);
}

#[test]
fn tracked_std_stream_forwards_io() {
    use std::io::IoSliceMut;
    use std::os::fd::AsFd;

    let drain = Drain::new();
    let (a, b) = UnixStream::pair().unwrap();
    let mut a = drain.track(a);
    let b = drain.track(b);
    assert_eq!(drain.active(), 2);
    let _ = a.as_fd();
    let n = a
        .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
        .unwrap();
    assert_eq!(n, 4);
    let (mut x, mut y) = ([0u8; 1], [0u8; 3]);
    // Reads through `&Tracked`, as through `&UnixStream`.
    let n = (&b)
        .read_vectored(&mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)])
        .unwrap();
    assert_eq!((n, &x, &y), (4, b"a", b"bcd"));
    drain.close();
    // Tracking works after close too: an existing connection must be waited for.
    let c = drain.track(());
    assert_eq!(drain.active(), 3);
    drop((a, b, c));
    assert_eq!(drain.wait(Duration::ZERO), Ok(()));
}

#[tokio::test]
async fn closed_resolves_only_after_close() {
    let drain = Drain::new();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), drain.closed())
            .await
            .is_err()
    );
    let waiter = {
        let drain = drain.clone();
        tokio::spawn(async move { drain.closed().await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    drain.close();
    tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    drain.closed().await;
    assert_eq!(drain.wait_async(Duration::ZERO).await, Ok(()));
}

/// `wait` returning `Ok` means every tracked value was dropped: checked with
/// holders that drop at random moments while the main thread waits.
#[test]
fn wait_never_returns_while_a_connection_is_open() {
    for _ in 0..50 {
        let drain = Drain::new();
        let alive = Arc::new(AtomicUsize::new(0));
        let holders: Vec<_> = (0..8)
            .map(|_| {
                let tracked = drain.track(());
                alive.fetch_add(1, Ordering::SeqCst);
                let alive = alive.clone();
                thread::spawn(move || {
                    thread::sleep(Duration::from_micros(fastrand::u64(0..5_000)));
                    // Marked gone before the drop, so a too-early `Ok` shows.
                    alive.fetch_sub(1, Ordering::SeqCst);
                    drop(tracked);
                })
            })
            .collect();
        drain.close();
        assert_eq!(drain.wait(DEADLINE), Ok(()));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        for h in holders {
            join_within(h, DEADLINE, "holder");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_async_never_returns_while_a_connection_is_open() {
    for _ in 0..50 {
        let drain = Drain::new();
        let alive = Arc::new(AtomicUsize::new(0));
        for _ in 0..8 {
            let tracked = drain.track(());
            alive.fetch_add(1, Ordering::SeqCst);
            let alive = alive.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..5_000))).await;
                alive.fetch_sub(1, Ordering::SeqCst);
                drop(tracked);
            });
        }
        drain.close();
        assert_eq!(drain.wait_async(DEADLINE).await, Ok(()));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }
}
