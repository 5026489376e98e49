//! A hyper HTTP/1.1 server that drains without losing a request.
//!
//! ```text
//! cargo run -p handover --example drain_http -- [PORT] [DRAIN_TIMEOUT_SECS]
//! ```
//!
//! It listens on 127.0.0.1 (port 0, the default, picks a free one) and
//! prints its address. `GET /?sleep=MS` answers after MS milliseconds, to
//! have requests in flight. On SIGTERM or Ctrl-C it drains: it stops
//! accepting (a successor sharing the socket would accept from then on),
//! finishes requests in progress, answers the next request of each
//! keep-alive connection with `Connection: close`, closes connections idle
//! for 2 s, and exits once all are gone or after the drain timeout
//! (default 30 s), with status 1 when connections were cut.
//!
//! Try it with `curl -v localhost:PORT/?sleep=5000` in one terminal and
//! Ctrl-C (or `kill PID`) in the server's while the request is in flight.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use handover::drain::http::{HttpOptions, serve_connection};
use handover::drain::{self, Drain, Listener};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::signal::unix::{SignalKind, signal};

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let sleep_ms = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sleep=")))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    let body = format!("hello from pid {}\n", std::process::id());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next() {
        Some(p) => p.parse().map_err(|e| format!("PORT {p:?}: {e}"))?,
        None => 0,
    };
    let timeout = match args.next() {
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|e| format!("DRAIN_TIMEOUT_SECS {s:?}: {e}"))?,
        ),
        None => Duration::from_secs(30),
    };

    let drain = Drain::new();
    let listener = Listener::new(
        tokio::net::TcpListener::bind(("127.0.0.1", port)).await?,
        &drain,
    );
    println!("listening on http://{}", listener.get_ref().local_addr()?);

    let mut sigterm = signal(SignalKind::terminate())?;
    let closer = drain.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!(
            "draining: accepting no more connections; {} open",
            closer.active()
        );
        closer.close();
    });

    let options = HttpOptions::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if drain::is_closed_error(&e) => break,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (drain, options) = (drain.clone(), options.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, service_fn(hello), &drain, &options).await {
                tracing::debug!("connection: {e}");
            }
        });
    }

    match drain.wait_async(timeout).await {
        Ok(()) => {
            eprintln!("drained: every connection finished");
            Ok(())
        }
        Err(still_open) => {
            eprintln!("{still_open}");
            std::process::exit(1);
        }
    }
}
