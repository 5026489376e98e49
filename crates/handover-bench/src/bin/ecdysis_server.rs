//! The benchmark's tiny HTTP server, restarted by Cloudflare's `ecdysis`
//! crate instead of handover: the comparison column of
//! `handover-bench latency`.
//!
//! ```text
//! ecdysis_server --listen 127.0.0.1:PORT --pid-file PATH [--idle-grace-ms MS] [--drain-timeout-ms MS]
//! ```
//!
//! It answers every request with `pid=<pid>\n`, like handover's
//! `upgrade_http` example. SIGHUP asks ecdysis to re-execute the binary with
//! the listening socket; ecdysis writes the pid file once the new process is
//! ready. SIGTERM stops for good. Either way the old process stops accepting
//! and drains its connections.
//!
//! Only the restart mechanism differs from `upgrade_http`: connections are
//! served and drained by the same code (hyper through
//! `handover::drain::http::serve_connection`: `Connection: close` on the next
//! response, idle keep-alive connections closed after a grace), so a
//! comparison measures ecdysis against handover's `Upgrader`, not two HTTP
//! stacks. ecdysis identifies inherited sockets by address, so the port must
//! be a fixed one (not 0).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use ecdysis::tokio_ecdysis::{SignalKind, StopOnShutdown, TokioEcdysisBuilder};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio_stream::StreamExt;

use handover::drain::Drain;
use handover::drain::http::{HttpOptions, serve_connection};

struct Args {
    listen: SocketAddr,
    pid_file: PathBuf,
    idle_grace: Duration,
    drain_timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut listen, mut pid_file) = (None, None);
    let (mut grace, mut drain) = (2000u64, 30_000u64);
    let num = |v: Option<String>, flag: &str| -> Result<u64, String> {
        v.ok_or(format!("{flag} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{flag}: {e}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                let v = it.next().ok_or("--listen needs HOST:PORT")?;
                listen = Some(v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?);
            }
            "--pid-file" => pid_file = Some(it.next().ok_or("--pid-file needs a path")?.into()),
            "--idle-grace-ms" => grace = num(it.next(), "--idle-grace-ms")?,
            "--drain-timeout-ms" => drain = num(it.next(), "--drain-timeout-ms")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen HOST:PORT is required (a fixed port)")?,
        pid_file: pid_file.ok_or("--pid-file PATH is required")?,
        idle_grace: Duration::from_millis(grace),
        drain_timeout: Duration::from_millis(drain),
    })
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("pid={}\n", std::process::id());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Takes the inherited sockets (when started by an upgrade) and installs
    // the SIGHUP handler, before anything can send one.
    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup())?;
    builder.stop_on_signal(SignalKind::terminate())?;
    builder.set_pid_file(&args.pid_file);
    let mut incoming =
        builder.build_listen_tcp(StopOnShutdown::Yes, args.listen, |socket, addr| {
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            Ok(socket.into())
        })?;
    let drain = Drain::new();
    let http = HttpOptions::default().idle_grace(args.idle_grace);
    let accepting = {
        let drain = drain.clone();
        tokio::spawn(async move {
            // Ends when ecdysis stops the stream (upgrade done, or SIGTERM);
            // the listening socket is closed when `incoming` is dropped.
            while let Some(next) = incoming.next().await {
                match next {
                    Ok(stream) => {
                        // Counted now, not in the task: a task not yet
                        // polled when draining starts must still be waited
                        // for (else its connection is dropped unanswered).
                        let io = drain.track(stream);
                        let (drain, http) = (drain.clone(), http.clone());
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(hello);
                            let _ = serve_connection(io, service, &drain, &http).await;
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };
    // Writes the pid file and tells the parent (if any) that we serve.
    let (_ecdysis, exit) = builder.ready()?;
    let exit = exit.await;
    eprintln!("ecdysis_server {}: exiting: {exit:?}", std::process::id());
    let _ = accepting.await;
    drain.close();
    let _ = drain.wait_async(args.drain_timeout).await;
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ecdysis_server: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ecdysis_server: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(serve(args));
    rt.shutdown_timeout(Duration::from_millis(100));
    if let Err(e) = result {
        eprintln!("ecdysis_server: {e}");
        std::process::exit(1);
    }
}
