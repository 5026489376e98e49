//! Throughput of a tiny echo server accepting through a raw tokio listener
//! and through a drain `Listener` (tracked streams), side by side.
//!
//! ```text
//! cargo bench -p handover --bench drain_throughput
//! ```
//!
//! One process, one tokio runtime (2 worker threads) for the servers and the
//! clients, on 127.0.0.1. Each round runs both servers, in alternating
//! order, through two workloads:
//!
//! - keep-alive: 16 connections, each doing 2,000 one-byte request/response
//!   round trips (the cost of the `Tracked` wrapper on reads and writes);
//! - connection per request: 16 clients, each opening 150 connections that
//!   do one round trip (the cost of counting in `accept` and on drop).
//!
//! It prints requests per second for both (mean over rounds), the ratio
//! drain/raw (1.0 is the same speed), and the ratio of each round with their
//! median: on a shared 2-core machine a single round varies by 10% or
//! more. Without `--bench` (as `cargo test --benches` runs it), it does one
//! short round as a smoke test.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use handover::drain::{self, Drain, Listener};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const CLIENTS: usize = 16;

#[derive(Clone, Copy)]
struct Sizes {
    rounds: usize,
    round_trips: usize,
    connections: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Raw,
    Drain,
}

/// Echoes bytes until EOF.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Starts `kind` on a fresh port; the returned closure stops it.
async fn start(kind: Server) -> (SocketAddr, Box<dyn FnOnce() -> JoinHandle<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match kind {
        Server::Raw => {
            let task = tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    tokio::spawn(echo(stream));
                }
            });
            (
                addr,
                Box::new(move || {
                    task.abort();
                    tokio::spawn(async {})
                }),
            )
        }
        Server::Drain => {
            let d = Drain::new();
            let listener = Listener::new(listener, &d);
            let task = tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            stream.set_nodelay(true).unwrap();
                            tokio::spawn(echo(stream));
                        }
                        Err(e) if drain::is_closed_error(&e) => return,
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            });
            (
                addr,
                Box::new(move || {
                    d.close();
                    tokio::spawn(async move {
                        task.await.unwrap();
                        d.wait_async(Duration::from_secs(10))
                            .await
                            .expect("clients are gone, so are the connections");
                    })
                }),
            )
        }
    }
}

async fn round_trip(stream: &mut TcpStream) -> io::Result<()> {
    let mut byte = [b'x'];
    stream.write_all(&byte).await?;
    stream.read_exact(&mut byte).await?;
    Ok(())
}

/// Requests per second for one workload on one server.
async fn run(kind: Server, keep_alive: bool, sizes: Sizes) -> f64 {
    let (addr, stop) = start(kind).await;
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                if keep_alive {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    s.set_nodelay(true).unwrap();
                    for _ in 0..sizes.round_trips {
                        round_trip(&mut s).await.unwrap();
                    }
                    sizes.round_trips
                } else {
                    for _ in 0..sizes.connections {
                        let mut s = TcpStream::connect(addr).await.unwrap();
                        s.set_nodelay(true).unwrap();
                        round_trip(&mut s).await.unwrap();
                    }
                    sizes.connections
                }
            })
        })
        .collect();
    let mut requests = 0;
    for c in clients {
        requests += c.await.unwrap();
    }
    let rps = requests as f64 / start.elapsed().as_secs_f64();
    stop().await.unwrap();
    rps
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            rounds: 6,
            round_trips: 2_000,
            connections: 150,
        }
    } else {
        Sizes {
            rounds: 1,
            round_trips: 50,
            connections: 5,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        for (keep_alive, name) in [(true, "keep-alive"), (false, "connection per request")] {
            // Warm-up, not counted.
            run(Server::Raw, keep_alive, sizes).await;
            run(Server::Drain, keep_alive, sizes).await;
            let (mut raw, mut drained) = (Vec::new(), Vec::new());
            for round in 0..sizes.rounds {
                let order = if round % 2 == 0 {
                    [Server::Raw, Server::Drain]
                } else {
                    [Server::Drain, Server::Raw]
                };
                for kind in order {
                    let rps = run(kind, keep_alive, sizes).await;
                    match kind {
                        Server::Raw => raw.push(rps),
                        Server::Drain => drained.push(rps),
                    }
                }
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let (r, d) = (mean(&raw), mean(&drained));
            println!(
                "{name:>24}: raw {r:>9.0} req/s   drain {d:>9.0} req/s   drain/raw {:.3}",
                d / r
            );
            let mut ratios: Vec<f64> = raw.iter().zip(&drained).map(|(r, d)| d / r).collect();
            let shown: Vec<String> = ratios.iter().map(|x| format!("{x:.3}")).collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "{:>24}  per round drain/raw: {} (median {:.3})",
                "",
                shown.join(" "),
                ratios[ratios.len() / 2]
            );
        }
    });
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
}
