//! An HTTP/1.1 and HTTP/2 server that upgrades itself with zero downtime.
//!
//! ```text
//! cargo run -p handover --example upgrade_http -- --listen 127.0.0.1:8080 --pid-file /tmp/upgrade_http.pid
//! curl http://127.0.0.1:8080/                          # pid=<its pid>
//! curl --http2-prior-knowledge http://127.0.0.1:8080/  # the same over HTTP/2 (h2c)
//! h2load -D 10 -c 16 -m 8 http://127.0.0.1:8080/       # a third-party HTTP/2 load
//! kill -HUP $(cat /tmp/upgrade_http.pid) # re-executes the binary; the new pid answers
//! kill -TERM $(cat /tmp/upgrade_http.pid)
//! ```
//!
//! Every response body is `pid=<pid>` and a newline; `/slow?ms=N` waits N
//! milliseconds first. HTTP/1.1 and HTTP/2 with prior knowledge (h2c) are
//! served on the same port, told apart by the client's first bytes. SIGHUP
//! (or SIGUSR2) starts the binary again with the listening socket; once the
//! new process is ready the old one stops accepting, answers each HTTP/1.1
//! keep-alive connection's next request with `Connection: close`, sends each
//! HTTP/2 connection the two-step GOAWAY, finishes what is in flight, and
//! exits. SIGTERM drains and exits for good.
//!
//! With `--tls`, it serves TLS instead (ALPN `h2` and `http/1.1`), with the
//! certificate `--tls-cert PEM` and key `--tls-key PEM` (read at start, so an
//! upgrade deploys a renewed certificate), or without them a self-signed
//! certificate for `localhost` and `127.0.0.1` made at start (`curl -k`).
//!
//! Options: `--listen ADDR` (required; `tcp://`, `unix:` or `HOST:PORT`),
//! `--pid-file PATH`, `--ready-timeout SECS` (default 60),
//! `--drain-timeout SECS` (default 30), `--idle-grace-ms MS` (default 2000),
//! `--tls`, `--tls-cert PATH`, `--tls-key PATH`, `--handoff` (hand idle
//! HTTP/1.1 keep-alive connections to the new process on an upgrade, so
//! clients keep their connections; plain TCP only),
//! `--ballast-mb MB` (default 0: hold that much touched heap, like a server
//! with a large cache; only the process started by hand does, not its
//! successors, so that an upgrade's cost is measured in the old process
//! alone. The benchmark of issue 11 uses it to show that an upgrade costs
//! the same at 4 GB as at 0).
//!
//! Under systemd (socket-activated, `Type=notify-reload`):
//!
//! ```ini
//! # upgrade_http.socket
//! [Socket]
//! ListenStream=127.0.0.1:8080
//! FileDescriptorName=http
//!
//! # upgrade_http.service
//! [Service]
//! Type=notify-reload
//! NotifyAccess=main
//! ExecStart=/usr/local/bin/upgrade_http --listen 127.0.0.1:8080
//! ReloadSignal=SIGHUP
//! KillMode=mixed
//! ```
//!
//! systemd passes the socket as "http"; `Upgrader::listen("http", ..)` takes
//! it instead of binding. On `systemctl reload` the process sends
//! `RELOADING=1`, starts its successor, and once the successor is ready
//! sends `MAINPID=` (the successor) and `READY=1` in one message, so
//! `NotifyAccess=main` suffices (`all` works too).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use handover::address::Address;
use handover::drain::http::{HANDOFF_SOCKET_ENV, Handoff, HttpOptions, serve};
use handover::drain::tls::TlsAcceptor;
use handover::drain::{Drain, Listener};
use handover::upgrade::{Options, RunOptions, Upgrader};

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
    /// Idle keep-alive grace while draining.
    pub idle_grace: Duration,
    /// Megabytes of touched heap to hold (first process only).
    pub ballast_mb: usize,
    /// Serve TLS (`--tls`).
    pub tls: bool,
    /// PEM certificate chain and key for TLS (`--tls-cert`, `--tls-key`);
    /// without them, a self-signed certificate.
    pub tls_files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Hand idle keep-alive connections to the successor (`--handoff`).
    pub handoff: bool,
}

impl Args {
    /// Parses `--listen ADDR [--pid-file PATH] [--ready-timeout SECS]
    /// [--drain-timeout SECS] [--idle-grace-ms MS] [--ballast-mb MB]`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut it = args.into_iter();
        let (mut listen, mut pid_file) = (None, None);
        let (mut ready, mut drain, mut grace) = (60.0, 30.0, 2000u64);
        let mut ballast_mb = 0usize;
        let (mut tls, mut tls_cert, mut tls_key) = (false, None, None);
        let mut handoff = false;
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
                "--ballast-mb" => {
                    let v = it
                        .next()
                        .ok_or("--ballast-mb needs a number of megabytes")?;
                    ballast_mb = v.parse().map_err(|e| {
                        format!("--ballast-mb {v:?}: expected a whole number of megabytes ({e})")
                    })?;
                }
                "--tls" => tls = true,
                "--handoff" => handoff = true,
                "--tls-cert" => tls_cert = Some(it.next().ok_or("--tls-cert needs a path")?),
                "--tls-key" => tls_key = Some(it.next().ok_or("--tls-key needs a path")?),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Args {
            listen: listen
                .ok_or("--listen ADDR is required (for example --listen 127.0.0.1:8080)")?,
            pid_file,
            ready_timeout: Duration::from_secs_f64(ready),
            drain_timeout: Duration::from_secs_f64(drain),
            idle_grace: Duration::from_millis(grace),
            ballast_mb,
            tls: tls || tls_cert.is_some(),
            tls_files: match (tls_cert, tls_key) {
                (Some(c), Some(k)) => Some((c.into(), k.into())),
                (None, None) => None,
                _ => return Err("--tls-cert and --tls-key go together".into()),
            },
            handoff,
        })
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/slow" {
        let ms = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = format!("pid={}\n", std::process::id());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Runs the server until it has handed over or was stopped.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Created first, before any thread: it takes the inherited sockets.
    // TLS connections are not handed over (their session lives in this
    // process): `--handoff` applies to plain TCP only.
    let handoff_on = args.handoff && !args.tls;
    let mut options = Options::default()
        .ready_timeout(args.ready_timeout)
        .handoff(handoff_on);
    if let Some(p) = &args.pid_file {
        options = options.pid_file(p);
    }
    let upgrader = Upgrader::new(options)?;
    // Touched, so that every page is resident and mapped (what makes fork
    // slow); held until the process exits.
    let ballast = if args.ballast_mb > 0 && !upgrader.is_upgrade() {
        vec![1u8; args.ballast_mb << 20]
    } else {
        Vec::new()
    };
    std::hint::black_box(&ballast);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let drain = Drain::new();
        let mut http = HttpOptions::default().idle_grace(args.idle_grace);
        if args.tls {
            http = http.tls(tls_acceptor(args.tls_files.as_ref())?);
        }
        let mut run_options = RunOptions::default().drain_timeout(args.drain_timeout);
        if handoff_on {
            // Keep-alive connections pass from generation to generation.
            let handoff = Handoff::new();
            if let Some(session) = upgrader.handoff_from_predecessor() {
                handoff.take_from(session);
            }
            // Under `handover run`, generations meet at the supervisor's path.
            if let Some(path) = std::env::var_os(HANDOFF_SOCKET_ENV) {
                match handoff.listen_at(&path) {
                    Ok(()) => run_options = run_options.handoff_socket(path),
                    // Serving matters more: connections are then drained
                    // the usual way.
                    Err(e) => tracing::warn!(error = %e, "not taking keep-alive connections"),
                }
            }
            http = http.handoff(handoff.clone());
            run_options = run_options.handoff(handoff);
        }
        let listener: tokio::net::TcpListener = upgrader.listen("http", &args.listen)?;
        let listener = Listener::new(listener, &drain);
        // Signal handlers before ready(): once the pid file names this
        // process, a SIGHUP may come at once, and without a handler its
        // default action would kill us.
        let signals = upgrader.signals()?;
        // Ready before accepting. If ready() fails (the pid file cannot be
        // written, say), this process exits having accepted nothing, and the
        // old one, which accepts until it hears "ready", serves everything:
        // a rolled-back upgrade loses no connection. Connections that arrive
        // meanwhile wait in the accept queue.
        upgrader.ready()?;
        // HTTP/1.1 and HTTP/2 (and TLS with --tls) until the drain closes;
        // accept errors such as EMFILE are logged and retried.
        let accepting = tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            if let Err(e) = serve(&listener, service, &http).await {
                tracing::error!(error = %e, "the listening socket failed");
            }
        });
        tracing::info!(pid = std::process::id(), address = %args.listen, "serving");
        let outcome = signals.run(&drain, run_options).await?;
        let _ = accepting.await;
        tracing::info!(reason = ?outcome.reason, drained = outcome.drained.is_ok(), "exiting");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // Connections cut short by the drain timeout are dropped here.
    rt.shutdown_timeout(Duration::from_millis(100));
    drop(ballast);
    Ok(())
}

/// The TLS acceptor: the PEM files, or a self-signed certificate.
fn tls_acceptor(
    files: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<TlsAcceptor, Box<dyn std::error::Error>> {
    if let Some((cert, key)) = files {
        return Ok(TlsAcceptor::from_pem_files(cert, key)?);
    }
    let made =
        rcgen::generate_simple_self_signed(["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    Ok(TlsAcceptor::from_pem(
        made.cert.pem().as_bytes(),
        made.signing_key.serialize_pem().as_bytes(),
    )?)
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
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("upgrade_http: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("upgrade_http: {e}");
        std::process::exit(1);
    }
}
