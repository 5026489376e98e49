//! A web server that hands its listening socket to its successor over a Unix
//! socket: the example application of the `graceful` seed, in Rust.
//!
//! ```text
//! cargo run -p handover --example pass_http -- --listen 127.0.0.1:8080 --handoff /tmp/pass_http.sock
//! curl http://127.0.0.1:8080/     # pid=<first pid>
//! # in another terminal, the same command again:
//! cargo run -p handover --example pass_http -- --listen 127.0.0.1:8080 --handoff /tmp/pass_http.sock
//! curl http://127.0.0.1:8080/     # pid=<second pid>; the first one has exited
//! ```
//!
//! The first instance finds nobody at `--handoff`, binds `--listen`, and
//! offers its listener at `--handoff`. An instance started later with the
//! same arguments asks the running one for the listener instead of binding,
//! and offers it in turn. The old instance, once the new one confirms it
//! has the listener, stops accepting (the new one accepts from the same
//! socket, so no connection is refused), answers the requests in flight —
//! keep-alive connections get `Connection: close` with their next response,
//! idle ones are closed after a grace period — and exits.
//!
//! Every response body is `pid=<pid>` and a newline. SIGINT or SIGTERM
//! drains and exits without a successor.
//!
//! Options: `--listen HOST:PORT` (required), `--handoff PATH` (required),
//! `--idle-grace-ms MS` (default 2000), `--drain-timeout SECS` (default 30).
//! Prints `listening on ADDR pid=PID (bound|taken over)` on stdout once it
//! serves.

use std::convert::Infallible;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use handover::drain::http::{HttpOptions, serve_connection};
use handover::drain::{Drain, Listener, is_closed_error};
use handover::pass::{self, Meta, Server};

/// Command-line settings.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where to listen when no predecessor hands a listener over.
    pub listen: SocketAddr,
    /// The Unix socket where listeners are handed over.
    pub handoff: PathBuf,
    /// Grace before closing an idle keep-alive connection while draining.
    pub idle_grace: Duration,
    /// How long to wait for connections in flight before exiting anyway.
    pub drain_timeout: Duration,
}

impl Args {
    /// Parses the arguments (without the program name).
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let (mut listen, mut handoff) = (None, None);
        let mut idle_grace = Duration::from_secs(2);
        let mut drain_timeout = Duration::from_secs(30);
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--listen" => {
                    let v = value()?;
                    listen = Some(v.parse().map_err(|e| {
                        format!("--listen {v:?}: expected HOST:PORT (like 127.0.0.1:8080): {e}")
                    })?);
                }
                "--handoff" => handoff = Some(PathBuf::from(value()?)),
                "--idle-grace-ms" => {
                    let v = value()?;
                    let ms = v
                        .parse()
                        .map_err(|_| format!("--idle-grace-ms {v:?}: expected milliseconds"))?;
                    idle_grace = Duration::from_millis(ms);
                }
                "--drain-timeout" => {
                    let v = value()?;
                    let s = v
                        .parse()
                        .map_err(|_| format!("--drain-timeout {v:?}: expected seconds"))?;
                    drain_timeout = Duration::from_secs(s);
                }
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; usage: pass_http --listen HOST:PORT \
                         --handoff PATH [--idle-grace-ms MS] [--drain-timeout SECS]"
                    ));
                }
            }
        }
        Ok(Args {
            listen: listen.ok_or("--listen HOST:PORT is required")?,
            handoff: handoff.ok_or("--handoff PATH is required")?,
            idle_grace,
            drain_timeout,
        })
    }
}

/// Takes the listener from the instance serving at `handoff`, if any.
fn take_over(handoff: &std::path::Path) -> Result<Option<TcpListener>, pass::PassError> {
    let mut listener = None;
    let result = pass::receive(handoff, |fd, meta| {
        if meta.get("name") == Some("http") {
            listener = Some(fd.convert::<TcpListener>()?);
        }
        Ok(())
    });
    match result {
        Ok(_) => Ok(listener),
        // The first instance (or the previous one is gone): bind.
        Err(e) if e.is_no_server() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs the server until it has handed over (or got SIGINT/SIGTERM) and
/// drained.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (listener, how) = match take_over(&args.handoff)? {
        Some(l) => (l, "taken over"),
        None => (TcpListener::bind(args.listen)?, "bound"),
    };
    let addr = listener.local_addr()?;

    // Offer the listener to the next instance. Once it confirms it has it:
    // stop offering (so it can offer in its turn), then stop accepting.
    let drain = Drain::new();
    let on_handover = drain.clone();
    let handoff = Server::bind(&args.handoff)?.spawn(pass::sequence((
        pass::listener(listener.try_clone()?, Meta::new().with("name", "http")),
        pass::confirm(),
        pass::stop_serving(),
        pass::callback(move || {
            tracing::info!("listener handed over; draining");
            on_handover.close();
        }),
    )))?;
    let stopper = handoff.stopper();

    println!("listening on {addr} pid={} ({how})", std::process::id());
    std::io::stdout().flush()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pid_body = Bytes::from(format!("pid={}\n", std::process::id()));
    let options = HttpOptions::default().idle_grace(args.idle_grace);
    let drained = runtime.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = Listener::new(tokio::net::TcpListener::from_std(listener)?, &drain);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tokio::signal::ctrl_c() => { drain.close(); continue; }
                _ = term.recv() => { drain.close(); continue; }
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_closed_error(&e) => break,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let (drain, options, body) = (drain.clone(), options.clone(), pid_body.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                if let Err(e) = serve_connection(stream, service, &drain, &options).await {
                    tracing::debug!("connection: {e}");
                }
            });
        }
        Ok::<_, std::io::Error>(drain.wait_async(args.drain_timeout).await)
    })?;
    if let Err(still_open) = drained {
        tracing::warn!("exiting with connections still open: {still_open}");
    }
    // Handed over (the pass server stopped itself), or a signal: stop it.
    stopper.stop();
    handoff.join()?;
    Ok(())
}

#[allow(dead_code)]
fn main() {
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pass_http: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("pass_http: {e}");
        std::process::exit(1);
    }
}
