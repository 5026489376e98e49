//! The running load: N HTTP clients on an internal tokio runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::VerifyError;
use crate::histogram::Histogram;
use crate::http::{self, ParseError, Response};
use crate::report::{FailureKind, FailureSample, Report};

/// How long a client waits after a failed request before the next one, so a
/// server that is down is not hammered in a tight loop.
pub(crate) const FAILURE_BACKOFF: Duration = Duration::from_millis(10);
/// Extra time [`Load::stop`] allows beyond the request timeout.
const STOP_SLACK: Duration = Duration::from_secs(1);
/// Read buffer growth per read.
const READ_CHUNK: usize = 8 * 1024;

/// How clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Mode {
    /// A new TCP connection per request, sent with `Connection: close`.
    NewConnection,
    /// Many requests per connection. When the server answers
    /// `Connection: close`, or has closed an idle connection before the next
    /// request is written, the client reconnects: that is not a failure. A
    /// request written onto a kept-alive connection that the server had
    /// already closed, so that it never read it (the write fails with a
    /// reset, or the server's FIN comes back followed by a reset, before any
    /// response byte), is counted apart as
    /// [`Report::retryable`](crate::Report::retryable): clients may retry
    /// exactly that case (RFC 9112, section 9.3.1). Any other request that
    /// was written and got no complete response is a failure. Nothing is
    /// retried.
    KeepAlive,
}

/// Which protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 (the default).
    Http1,
    /// HTTP/2: with prior knowledge (h2c) on plain TCP, ALPN `h2` over TLS.
    /// Each connection carries [`LoadConfig::streams`] concurrent streams.
    /// A GOAWAY is not a failure: the client opens a new connection for its
    /// next requests. A stream the server refused (`RST_STREAM` with
    /// `REFUSED_STREAM`, or left out by the last stream id of a GOAWAY after
    /// it was sent), reset, or cut by the connection's end is.
    Http2,
    /// gRPC over HTTP/2 (as [`Protocol::Http2`]): each request is a unary
    /// `grpc.health.v1.Health/Check` call, which succeeds with
    /// `grpc-status: 0`. The pid comes from a `pid` header or trailer.
    Grpc,
}

impl Protocol {
    /// Short name: `http/1.1`, `h2`, `grpc`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// What load to generate. Build with [`LoadConfig::new`], then adjust fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadConfig {
    /// The server's address.
    pub addr: SocketAddr,
    /// Concurrent clients, each with at most one request in flight. Default 8.
    pub connections: usize,
    /// New connection per request, or keep-alive.
    pub mode: Mode,
    /// Deadline for one request, from connecting (or writing, on a reused
    /// connection) to the last response byte. Default 10 s.
    pub request_timeout: Duration,
    /// Request target, starting with `/`. Default `/`.
    pub path: String,
    /// `Host` header; `None` (the default) sends `addr`.
    pub host_header: Option<String>,
    /// Pause of each client between two requests. Default zero: each client
    /// sends its next request as soon as the previous one is answered.
    pub think_time: Duration,
    /// Worker threads of the internal tokio runtime. Default 2.
    pub worker_threads: usize,
    /// How many failures are kept described in [`Report::failure_samples`].
    /// Default 20.
    pub failure_samples: usize,
    /// HTTP/1.1 (default), HTTP/2 or gRPC.
    pub protocol: Protocol,
    /// With HTTP/2 and gRPC: concurrent streams on each of the
    /// `connections`, each with at most one request in flight. Default 1.
    pub streams: usize,
    /// TLS; `None` (the default): plain TCP.
    pub tls: Option<crate::tls::ClientTls>,
}

impl LoadConfig {
    /// Defaults for a load against `addr` in `mode`: 8 connections, 10 s
    /// request timeout, path `/`, no think time, 2 worker threads.
    pub fn new(addr: SocketAddr, mode: Mode) -> Self {
        Self {
            addr,
            connections: 8,
            mode,
            request_timeout: Duration::from_secs(10),
            path: "/".to_owned(),
            host_header: None,
            think_time: Duration::ZERO,
            worker_threads: 2,
            failure_samples: 20,
            protocol: Protocol::Http1,
            streams: 1,
            tls: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), VerifyError> {
        let invalid = |field, problem: String| Err(VerifyError::InvalidConfig { field, problem });
        if self.connections == 0 || self.connections > 100_000 {
            return invalid(
                "connections",
                format!("expected 1 to 100000 clients, got {}", self.connections),
            );
        }
        if self.request_timeout.is_zero() {
            return invalid(
                "request_timeout",
                "expected a positive duration, got zero".to_owned(),
            );
        }
        if !self.path.starts_with('/') || !self.path.bytes().all(|b| b.is_ascii_graphic()) {
            return invalid(
                "path",
                format!(
                    "expected a request target starting with `/` without spaces or control \
                     characters (percent-encode them), got {:?}",
                    self.path
                ),
            );
        }
        if let Some(host) = &self.host_header {
            if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
                return invalid(
                    "host_header",
                    format!("expected a non-empty host[:port] without spaces, got {host:?}"),
                );
            }
        }
        if self.streams == 0 || self.streams > 10_000 {
            return invalid(
                "streams",
                format!(
                    "expected 1 to 10000 streams per connection, got {}",
                    self.streams
                ),
            );
        }
        if self.streams > 1 && self.protocol == Protocol::Http1 {
            return invalid(
                "streams",
                format!(
                    "{} streams per connection need HTTP/2 (HTTP/1.1 carries one request at a \
                     time); use the HTTP/2 or gRPC protocol, or more connections",
                    self.streams
                ),
            );
        }
        if self.worker_threads == 0 || self.worker_threads > 256 {
            return invalid(
                "worker_threads",
                format!("expected 1 to 256 threads, got {}", self.worker_threads),
            );
        }
        Ok(())
    }
}

/// When a pid first answered and how many times.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PidSeen {
    pub(crate) count: u64,
    /// Since the load started.
    pub(crate) first: Duration,
}

/// Counters shared by the clients and the [`Load`] handle.
pub(crate) struct Shared {
    started: Instant,
    mode: Mode,
    protocol: Protocol,
    streams: usize,
    connections: usize,
    pub(crate) stopping: AtomicBool,
    ok: AtomicU64,
    failures: [AtomicU64; FailureKind::ALL.len()],
    pub(crate) connects: AtomicU64,
    pub(crate) server_closes: AtomicU64,
    retryable: AtomicU64,
    latency: Histogram,
    max_samples: usize,
    samples: Mutex<Vec<FailureSample>>,
    pids: Mutex<BTreeMap<u32, PidSeen>>,
    pid_added: Condvar,
    stopped_after: Mutex<Option<Duration>>,
}

/// Locks a mutex, ignoring poisoning: the data are plain counters that stay
/// consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn record_ok(&self, latency: Duration, pid: Option<u32>) {
        self.latency.record(latency);
        if let Some(pid) = pid {
            let mut pids = lock(&self.pids);
            let first = self.started.elapsed();
            let seen = pids.entry(pid).or_insert(PidSeen { count: 0, first });
            seen.count += 1;
            if seen.count == 1 {
                self.pid_added.notify_all();
            }
        }
        // Counted last, so that a reader seeing `ok` also sees the pid.
        self.ok.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn record_failure(&self, kind: FailureKind, error: String) {
        let at = self.started.elapsed();
        tracing::debug!(%kind, ?at, %error, "request failed");
        {
            let mut samples = lock(&self.samples);
            if samples.len() < self.max_samples {
                samples.push(FailureSample { kind, at, error });
            }
        }
        self.failures[kind.index()].fetch_add(1, Ordering::Release);
    }

    pub(crate) fn failures_total(&self) -> u64 {
        self.failures
            .iter()
            .map(|f| f.load(Ordering::Acquire))
            .sum()
    }

    pub(crate) fn ok(&self) -> u64 {
        self.ok.load(Ordering::Acquire)
    }

    pub(crate) fn pids(&self) -> BTreeMap<u32, PidSeen> {
        lock(&self.pids).clone()
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    fn snapshot(&self) -> Report {
        let ok = self.ok.load(Ordering::Acquire);
        let failures: BTreeMap<FailureKind, u64> = FailureKind::ALL
            .iter()
            .map(|&kind| (kind, self.failures[kind.index()].load(Ordering::Acquire)))
            .filter(|&(_, n)| n > 0)
            .collect();
        let failed: u64 = failures.values().sum();
        let duration = lock(&self.stopped_after).unwrap_or_else(|| self.started.elapsed());
        Report {
            mode: self.mode,
            protocol: self.protocol,
            streams: self.streams,
            connections: self.connections,
            requests: ok + failed,
            ok,
            failures,
            failure_samples: lock(&self.samples).clone(),
            latency: self.latency.summary(),
            pids: lock(&self.pids)
                .iter()
                .map(|(&pid, s)| (pid, s.count))
                .collect(),
            connects: self.connects.load(Ordering::Relaxed),
            server_closes: self.server_closes.load(Ordering::Relaxed),
            retryable: self.retryable.load(Ordering::Acquire),
            reloads: Vec::new(),
            reload_every: None,
            duration,
        }
    }
}

/// A running load: clients sending requests on their own threads until
/// [`stop`](Load::stop) (or drop, which stops without waiting).
///
/// Every method returns within its stated deadline. The blocking methods
/// (`stop`, `wait_*`) must not be called from inside an async task; use
/// `tokio::task::spawn_blocking` there, or plain `#[test]`s.
pub struct Load {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    done_rx: mpsc::Receiver<()>,
    controller: Option<JoinHandle<()>>,
    stop_deadline: Duration,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("mode", &self.shared.mode)
            .field("connections", &self.shared.connections)
            .field("elapsed", &self.shared.started.elapsed())
            .field("running", &self.controller.is_some())
            .finish_non_exhaustive()
    }
}

impl Load {
    /// Starts `cfg.connections` clients and returns at once; they run on an
    /// internal tokio runtime (its own threads) until [`stop`](Load::stop).
    ///
    /// # Errors
    ///
    /// [`VerifyError::InvalidConfig`] for an out-of-range configuration,
    /// [`VerifyError::Runtime`] or [`VerifyError::Thread`] when threads cannot
    /// be created. An unreachable server is not an error: it shows up as
    /// failures in the report.
    pub fn start(cfg: LoadConfig) -> Result<Load, VerifyError> {
        cfg.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.worker_threads)
            .thread_name("handover-verify-client")
            .enable_io()
            .enable_time()
            .build()
            .map_err(VerifyError::Runtime)?;
        let host = cfg
            .host_header
            .clone()
            .unwrap_or_else(|| cfg.addr.to_string());
        let tls = match &cfg.tls {
            Some(tls) => {
                let alpn: &[&[u8]] = match cfg.protocol {
                    Protocol::Http1 => &[b"http/1.1"],
                    Protocol::Http2 | Protocol::Grpc => &[b"h2"],
                };
                Some(tls.connector(alpn, cfg.addr)?)
            }
            None => None,
        };
        let client_cfg = Arc::new(ClientCfg {
            addr: cfg.addr,
            mode: cfg.mode,
            request_timeout: cfg.request_timeout,
            think_time: cfg.think_time,
            request: http::request_bytes(&cfg.path, &host, cfg.mode == Mode::NewConnection),
            tls,
            protocol: cfg.protocol,
            streams: cfg.streams,
            path: cfg.path.clone(),
            host,
        });
        let shared = Arc::new(Shared {
            started: Instant::now(),
            mode: cfg.mode,
            protocol: cfg.protocol,
            streams: cfg.streams,
            connections: cfg.connections,
            stopping: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            failures: Default::default(),
            connects: AtomicU64::new(0),
            server_closes: AtomicU64::new(0),
            retryable: AtomicU64::new(0),
            latency: Histogram::new(),
            max_samples: cfg.failure_samples,
            samples: Mutex::new(Vec::new()),
            pids: Mutex::new(BTreeMap::new()),
            pid_added: Condvar::new(),
            stopped_after: Mutex::new(None),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel();
        // In-flight requests end by their own timeout; give them that long.
        let drain = cfg.request_timeout.saturating_add(STOP_SLACK);
        let controller = {
            let shared = Arc::clone(&shared);
            let connections = cfg.connections;
            thread::Builder::new()
                .name("handover-verify-load".to_owned())
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut clients = JoinSet::new();
                        for _ in 0..connections {
                            let (shared, cfg) = (Arc::clone(&shared), Arc::clone(&client_cfg));
                            match client_cfg.protocol {
                                Protocol::Http1 => clients.spawn(client(shared, cfg, stop_rx.clone())),
                                Protocol::Http2 | Protocol::Grpc => {
                                    clients.spawn(crate::h2::client(shared, cfg, stop_rx.clone()))
                                }
                            };
                        }
                        let mut stop_rx = stop_rx;
                        // Err means the handle was dropped: stop as well.
                        let _ = stop_rx.wait_for(|&stop| stop).await;
                        shared.stopping.store(true, Ordering::Release);
                        let all_done = async { while clients.join_next().await.is_some() {} };
                        if tokio::time::timeout(drain, all_done).await.is_err() {
                            tracing::warn!(
                                ?drain,
                                "load clients still running after the request timeout; aborting them"
                            );
                        }
                        clients.abort_all();
                    });
                    runtime.shutdown_timeout(Duration::from_millis(100));
                    let _ = done_tx.send(());
                })
                .map_err(|source| VerifyError::Thread {
                    what: "load controller",
                    source,
                })?
        };
        Ok(Load {
            shared,
            stop_tx,
            done_rx,
            controller: Some(controller),
            stop_deadline: drain.saturating_add(STOP_SLACK),
        })
    }

    /// The counts so far (cheap: atomic loads and a few small copies).
    pub fn snapshot(&self) -> Report {
        self.shared.snapshot()
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Every pid that has answered successfully so far.
    pub fn pids_seen(&self) -> BTreeSet<u32> {
        lock(&self.shared.pids).keys().copied().collect()
    }

    /// Waits until a pid not in `old` answers successfully, and returns it;
    /// `None` when `timeout` passes first. Returns at once if such a pid has
    /// already answered. When several have, returns the one that answered first.
    pub fn wait_for_new_pid(&self, old: &BTreeSet<u32>, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now().checked_add(timeout);
        let mut pids = lock(&self.shared.pids);
        loop {
            let found = pids
                .iter()
                .filter(|(pid, _)| !old.contains(pid))
                .min_by_key(|(_, seen)| seen.first)
                .map(|(&pid, _)| pid);
            if found.is_some() {
                return found;
            }
            let now = Instant::now();
            let remaining = match deadline {
                Some(deadline) if deadline > now => deadline - now,
                Some(_) => return None,
                None => Duration::from_secs(3600),
            };
            pids = self
                .shared
                .pid_added
                .wait_timeout(pids, remaining)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until at least `ok` requests have succeeded in total; false when
    /// `timeout` passes first. Handy to make sure load flows before a reload.
    pub fn wait_for_ok(&self, ok: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |shared| shared.ok() >= ok)
    }

    /// Waits until at least `failures` requests have failed in total; false
    /// when `timeout` passes first.
    pub fn wait_for_failures(&self, failures: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |shared| shared.failures_total() >= failures)
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Shared) -> bool) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if done(&self.shared) {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the clients, waits for requests in flight to finish (each is
    /// bounded by the request timeout), and returns the final report.
    pub fn stop(mut self) -> Report {
        self.shutdown(true);
        self.shared.snapshot()
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    fn shutdown(&mut self, wait: bool) {
        let Some(controller) = self.controller.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        // Err only when the controller already ended, which is fine.
        let _ = self.stop_tx.send(true);
        if !wait {
            return; // The controller thread finishes on its own.
        }
        match self.done_rx.recv_timeout(self.stop_deadline) {
            Ok(()) => {
                // The thread sent `done` as its last act: this join is immediate.
                let _ = controller.join();
            }
            Err(_) => tracing::warn!(
                deadline = ?self.stop_deadline,
                "load did not stop in time; leaving its thread behind"
            ),
        }
        *lock(&self.shared.stopped_after) = Some(self.shared.started.elapsed());
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

/// What every client needs, prepared once.
pub(crate) struct ClientCfg {
    pub(crate) addr: SocketAddr,
    pub(crate) mode: Mode,
    pub(crate) request_timeout: Duration,
    pub(crate) think_time: Duration,
    request: Vec<u8>,
    pub(crate) tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub(crate) protocol: Protocol,
    pub(crate) streams: usize,
    pub(crate) path: String,
    pub(crate) host: String,
}

/// A client's connection: TCP, or TLS over TCP.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Connects to the server, with TLS when configured. A TLS handshake
/// failure is an error of kind `Other` that says so.
pub(crate) async fn connect(cfg: &ClientCfg) -> io::Result<Stream> {
    let tcp = TcpStream::connect(cfg.addr).await?;
    // Best effort: the requests are small writes.
    let _ = tcp.set_nodelay(true);
    match &cfg.tls {
        None => Ok(Stream::Tcp(tcp)),
        Some((connector, name)) => match connector.connect(name.clone(), tcp).await {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(io::Error::other(format!(
                "TLS handshake failed: {e} (a self-signed certificate needs --insecure)"
            ))),
            Err(e) => Err(e),
        },
    }
}

/// A connection and the bytes received on it but not yet parsed.
struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Requests written on this connection, including the current one.
    requests: u64,
}

impl Conn {
    /// Whether an idle connection can carry another request: the server has
    /// not closed or reset it, nor sent anything unasked. Racy by nature: the
    /// server may still close it right after this check.
    fn idle_and_open(&self) -> bool {
        use rustix::io::Errno;
        use rustix::net::RecvFlags;
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        match rustix::net::recv(
            self.stream.tcp(),
            &mut byte[..],
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Err(Errno::AGAIN | Errno::INTR) => true,
            // 0: orderly close. >0: bytes nobody asked for (a 408, say).
            // Err: reset or another socket error.
            Ok(_) | Err(_) => false,
        }
    }
}

/// Where a request is, for failure messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    Connecting,
    Writing,
    Reading,
}

/// Progress of one request, readable after its future was dropped by a timeout.
pub(crate) struct Progress {
    pub(crate) stage: Stage,
    pub(crate) received: usize,
    /// The request's number on its connection (1 = fresh connection).
    pub(crate) on_conn: u64,
}

impl Progress {
    pub(crate) fn describe(&self) -> String {
        let conn = if self.on_conn <= 1 {
            "on a new connection".to_owned()
        } else {
            format!("request {} on a kept-alive connection", self.on_conn)
        };
        match self.stage {
            Stage::Connecting => "while connecting".to_owned(),
            Stage::Writing => format!("while writing the request ({conn})"),
            Stage::Reading if self.received == 0 => {
                format!("after writing the request, before any response byte ({conn})")
            }
            Stage::Reading => format!(
                "after writing the request, with {} response bytes received ({conn})",
                self.received
            ),
        }
    }
}

pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) error: String,
    /// The server never read the request: it had closed the kept-alive
    /// connection it was written onto (see [`Mode::KeepAlive`]).
    pub(crate) never_read: bool,
}

pub(crate) fn io_failure(progress: &Progress, err: &io::Error) -> Failure {
    use io::ErrorKind as K;
    let kind = match err.kind() {
        K::ConnectionRefused => FailureKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::NotConnected => {
            FailureKind::Reset
        }
        K::TimedOut => FailureKind::Timeout,
        K::UnexpectedEof => FailureKind::ShortResponse,
        _ => FailureKind::Other,
    };
    // Writing onto a reused connection failed with a reset: the server had
    // closed it, and the request never reached it. (A reset while reading,
    // with no FIN before it, is a failure: a server that read the request
    // and aborted the connection looks the same.)
    let never_read = kind == FailureKind::Reset
        && progress.on_conn > 1
        && matches!(progress.stage, Stage::Writing);
    Failure {
        kind,
        error: format!("{}: {err}", progress.describe()),
        never_read,
    }
}

/// One client: sends requests one after another until the load stops.
async fn client(shared: Arc<Shared>, cfg: Arc<ClientCfg>, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<Conn> = None;
    while !shared.stopping.load(Ordering::Acquire) {
        if conn.as_ref().is_some_and(|c| !c.idle_and_open()) {
            conn = None;
            shared.server_closes.fetch_add(1, Ordering::Relaxed);
        }
        let mut progress = Progress {
            stage: Stage::Connecting,
            received: 0,
            on_conn: 1,
        };
        let started = Instant::now();
        let request = exchange(&mut conn, &cfg, &shared, &mut progress);
        let result = match tokio::time::timeout(cfg.request_timeout, request).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Failure {
                kind: FailureKind::Timeout,
                error: format!(
                    "no complete response within {:?}, {}",
                    cfg.request_timeout,
                    progress.describe()
                ),
                never_read: false,
            }),
        };
        match result {
            Ok(response) => {
                let latency = started.elapsed();
                let must_close = response.close || cfg.mode == Mode::NewConnection;
                if must_close && conn.take().is_some() && cfg.mode == Mode::KeepAlive {
                    shared.server_closes.fetch_add(1, Ordering::Relaxed);
                }
                if (200..300).contains(&response.status) {
                    shared.record_ok(latency, http::pid_from_body(&response.body));
                } else {
                    let body =
                        String::from_utf8_lossy(&response.body[..response.body.len().min(60)])
                            .into_owned();
                    shared.record_failure(
                        FailureKind::BadStatus,
                        format!(
                            "status {} (expected 2xx) {}; body starts {body:?}",
                            response.status,
                            progress.describe()
                        ),
                    );
                }
            }
            Err(failure) if failure.never_read => {
                // Not a failure: reconnect and go on at once.
                conn = None;
                tracing::debug!(error = %failure.error, "retryable: the server never read it");
                shared.retryable.fetch_add(1, Ordering::Release);
                shared.server_closes.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(failure) => {
                conn = None;
                shared.record_failure(failure.kind, failure.error);
                pause(FAILURE_BACKOFF, &mut stop).await;
                continue;
            }
        }
        if !cfg.think_time.is_zero() {
            pause(cfg.think_time, &mut stop).await;
        }
    }
}

/// Sleeps for `duration`, or less if the load is stopping.
pub(crate) async fn pause(duration: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        _ = stop.wait_for(|&stop| stop) => {}
    }
}

/// Sends one request on `conn` (connecting first if it is `None`) and reads
/// one response. On a failure the caller drops the connection.
async fn exchange(
    conn: &mut Option<Conn>,
    cfg: &ClientCfg,
    shared: &Shared,
    progress: &mut Progress,
) -> Result<Response, Failure> {
    if conn.is_none() {
        progress.stage = Stage::Connecting;
        let stream = connect(cfg).await.map_err(|e| io_failure(progress, &e))?;
        shared.connects.fetch_add(1, Ordering::Relaxed);
        *conn = Some(Conn {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            requests: 0,
        });
    }
    let Some(c) = conn.as_mut() else {
        // Unreachable: set just above.
        return Err(Failure {
            kind: FailureKind::Other,
            error: "internal error: no connection".to_owned(),
            never_read: false,
        });
    };
    c.requests += 1;
    progress.on_conn = c.requests;
    progress.stage = Stage::Writing;
    c.stream
        .write_all(&cfg.request)
        .await
        .map_err(|e| io_failure(progress, &e))?;
    progress.stage = Stage::Reading;
    loop {
        match http::parse_response(&c.buf, false) {
            Ok(Some((response, used))) => {
                c.buf.drain(..used);
                if !c.buf.is_empty() {
                    // Bytes beyond the response nobody asked for: do not reuse.
                    *conn = None;
                }
                return Ok(response);
            }
            Ok(None) => {}
            Err(e) => return Err(parse_failure(progress, &e, c.stream.tcp()).await),
        }
        c.buf.reserve(READ_CHUNK);
        let n = c
            .stream
            .read_buf(&mut c.buf)
            .await
            .map_err(|e| io_failure(progress, &e))?;
        progress.received = c.buf.len();
        if n == 0 {
            return match http::parse_response(&c.buf, true) {
                Ok(Some((response, _))) => {
                    *conn = None;
                    Ok(response)
                }
                // Unreachable: parse_response never asks for more at EOF.
                Ok(None) => Err(Failure {
                    kind: FailureKind::ShortResponse,
                    error: format!("connection closed {}", progress.describe()),
                    never_read: false,
                }),
                Err(e) => Err(parse_failure(progress, &e, c.stream.tcp()).await),
            };
        }
    }
}

/// How long a client waits, after a kept-alive connection ended before any
/// response byte, for the reset that shows the server never read the
/// request (it follows the server's FIN within a round trip).
const RESET_WAIT: Duration = Duration::from_millis(20);

/// Whether the server reset `stream`, now or within [`RESET_WAIT`]: after
/// its FIN a read returns end of file even when a reset came too, which only
/// the socket's pending error shows.
async fn reset_by_server(stream: &TcpStream) -> bool {
    let deadline = Instant::now() + RESET_WAIT;
    loop {
        if let Ok(Some(e)) = stream.take_error() {
            return matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            );
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn parse_failure(progress: &Progress, err: &ParseError, stream: &TcpStream) -> Failure {
    match err {
        ParseError::Truncated { received: 0, .. } => {
            // On a reused connection, the server's FIN (this end of file)
            // followed by a reset means it had closed the connection before
            // our request arrived: the kernel answers data for a closed
            // socket with a reset. A server that read the request and then
            // closed sends no reset.
            let never_read = progress.on_conn > 1 && reset_by_server(stream).await;
            Failure {
                kind: FailureKind::ShortResponse,
                error: format!(
                    "connection closed by the server {}; a server must answer every request \
                     it has read, and close only idle keep-alive connections",
                    progress.describe()
                ),
                never_read,
            }
        }
        ParseError::Truncated { .. } => Failure {
            kind: FailureKind::ShortResponse,
            error: format!("{}: {err}", progress.describe()),
            never_read: false,
        },
        _ => Failure {
            kind: FailureKind::Other,
            error: format!("malformed response {}: {err}", progress.describe()),
            never_read: false,
        },
    }
}
