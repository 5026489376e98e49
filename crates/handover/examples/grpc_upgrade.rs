//! A gRPC server (tonic) that upgrades itself with zero downtime.
//!
//! ```text
//! cargo run -p handover --example grpc_upgrade -- --listen 127.0.0.1:50051 --pid-file /tmp/grpc_upgrade.pid
//! cargo run -p handover --example grpc_upgrade -- client 127.0.0.1:50051     # a unary call and a stream
//! kill -HUP $(cat /tmp/grpc_upgrade.pid)   # the new process answers; streams in flight finish
//! handover verify --grpc --addr 127.0.0.1:50051 --keep-alive --streams 8 \
//!     --signal HUP --pid-file /tmp/grpc_upgrade.pid --reload-every 1s
//! ```
//!
//! The service `handover.demo.Pid` has a unary RPC `Get` (the reply carries
//! the pid of the process that answered, and the request's `seq`) and a
//! server-streaming RPC `Count` (`count` replies, `interval_ms` apart, each
//! with the pid and its index). It also answers the standard health check
//! `grpc.health.v1.Health/Check` (SERVING, with the pid in a `pid` header),
//! which `handover verify --grpc` calls.
//!
//! No protoc: the messages are written by hand with `prost`'s derive, and
//! the service is routed by hand, as tonic's generated code would be (this
//! is the `.proto` it implements):
//!
//! ```proto
//! syntax = "proto3";
//! package handover.demo;
//! message PidRequest { uint64 seq = 1; uint32 delay_ms = 2; }
//! message CountRequest { uint32 count = 1; uint32 interval_ms = 2; }
//! message PidReply { uint32 pid = 1; uint64 seq = 2; uint32 index = 3; }
//! service Pid {
//!   rpc Get(PidRequest) returns (PidReply);
//!   rpc Count(CountRequest) returns (stream PidReply);
//! }
//! ```
//!
//! The server is `handover::drain::http::serve` with the service wrapped by
//! `drain::http::tower`: HTTP/2 with the two-step GOAWAY on upgrade, so a
//! client's calls in flight (a `Count` stream included) finish on the old
//! process while its new calls go to the new one.
//!
//! Options: `--listen ADDR` (required), `--pid-file PATH`,
//! `--ready-timeout SECS` (default 60), `--drain-timeout SECS` (default 30),
//! `--idle-grace-ms MS` (default 2000).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use handover::address::Address;
use handover::drain::http::{self, HttpOptions};
use handover::drain::{Drain, Listener};
use handover::upgrade::{Options, RunOptions, Upgrader};
use tonic::{Request, Response, Status};

/// `handover.demo.PidRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PidRequest {
    /// Echoed in the reply.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Wait this long before answering.
    #[prost(uint32, tag = "2")]
    pub delay_ms: u32,
}

/// `handover.demo.CountRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CountRequest {
    /// How many replies.
    #[prost(uint32, tag = "1")]
    pub count: u32,
    /// Pause before each reply.
    #[prost(uint32, tag = "2")]
    pub interval_ms: u32,
}

/// `handover.demo.PidReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PidReply {
    /// The pid of the process that answered.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    /// The request's `seq` (unary).
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// The reply's index in its stream (`Count`).
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service asked about; empty: the server.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// 1: SERVING.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// Method paths.
pub const GET: &str = "/handover.demo.Pid/Get";
/// Method paths.
pub const COUNT: &str = "/handover.demo.Pid/Count";
/// Method paths.
pub const HEALTH: &str = "/grpc.health.v1.Health/Check";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type ReplyStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<PidReply, Status>> + Send>>;

/// The server: routes the three methods, as tonic's generated code does.
#[derive(Clone, Debug, Default)]
pub struct PidServer;

struct Get;

impl tonic::server::UnaryService<PidRequest> for Get {
    type Response = PidReply;
    type Future = BoxFuture<Result<Response<PidReply>, Status>>;

    fn call(&mut self, request: Request<PidRequest>) -> Self::Future {
        Box::pin(async move {
            let req = request.into_inner();
            if req.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms))).await;
            }
            Ok(Response::new(PidReply {
                pid: std::process::id(),
                seq: req.seq,
                index: 0,
            }))
        })
    }
}

struct Count;

impl tonic::server::ServerStreamingService<CountRequest> for Count {
    type Response = PidReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Result<Response<ReplyStream>, Status>>;

    fn call(&mut self, request: Request<CountRequest>) -> Self::Future {
        Box::pin(async move {
            let req = request.into_inner();
            if req.count > 100_000 {
                return Err(Status::invalid_argument("count must be at most 100000"));
            }
            let interval = Duration::from_millis(u64::from(req.interval_ms));
            let stream = async_stream(req.count, interval);
            Ok(Response::new(stream))
        })
    }
}

/// `count` replies, `interval` apart.
fn async_stream(count: u32, interval: Duration) -> ReplyStream {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        for index in 0..count {
            tokio::time::sleep(interval).await;
            let reply = PidReply {
                pid: std::process::id(),
                seq: 0,
                index,
            };
            if tx.send(Ok(reply)).await.is_err() {
                return; // The client went away.
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

struct Health;

impl tonic::server::UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<Result<Response<HealthCheckResponse>, Status>>;

    fn call(&mut self, _request: Request<HealthCheckRequest>) -> Self::Future {
        Box::pin(async move {
            let mut response = Response::new(HealthCheckResponse { status: 1 });
            response
                .metadata_mut()
                .insert("pid", std::process::id().into());
            Ok(response)
        })
    }
}

impl<B> tonic::codegen::Service<hyper::Request<B>> for PidServer
where
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        match req.uri().path() {
            GET => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Get, req).await)
            }),
            COUNT => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.server_streaming(Count, req).await)
            }),
            HEALTH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Health, req).await)
            }),
            _ => Box::pin(async move {
                Ok(Status::unimplemented("no such method").into_http::<tonic::body::Body>())
            }),
        }
    }
}

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
    /// Idle grace while draining.
    pub idle_grace: Duration,
}

impl Args {
    /// Parses `--listen ADDR [--pid-file PATH] [--ready-timeout SECS]
    /// [--drain-timeout SECS] [--idle-grace-ms MS]`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut it = args.into_iter();
        let (mut listen, mut pid_file) = (None, None);
        let (mut ready, mut drain, mut grace) = (60.0, 30.0, 2000u64);
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
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Args {
            listen: listen
                .ok_or("--listen ADDR is required (for example --listen 127.0.0.1:50051)")?,
            pid_file,
            ready_timeout: Duration::from_secs_f64(ready),
            drain_timeout: Duration::from_secs_f64(drain),
            idle_grace: Duration::from_millis(grace),
        })
    }
}

/// Runs the server until it has handed over or was stopped.
pub fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Created first, before any thread: it takes the inherited sockets.
    let mut options = Options::default().ready_timeout(args.ready_timeout);
    if let Some(p) = &args.pid_file {
        options = options.pid_file(p);
    }
    let upgrader = Upgrader::new(options)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let drain = Drain::new();
        let listener: tokio::net::TcpListener = upgrader.listen("http", &args.listen)?;
        let listener = Listener::new(listener, &drain);
        let signals = upgrader.signals()?;
        upgrader.ready()?;
        let options = HttpOptions::default().idle_grace(args.idle_grace);
        let serving = tokio::spawn(async move {
            if let Err(e) = http::serve(&listener, http::tower(PidServer), &options).await {
                tracing::error!(error = %e, "the listening socket failed");
            }
        });
        tracing::info!(pid = std::process::id(), address = %args.listen, "serving gRPC");
        let outcome = signals
            .run(
                &drain,
                RunOptions::default().drain_timeout(args.drain_timeout),
            )
            .await?;
        let _ = serving.await;
        tracing::info!(reason = ?outcome.reason, drained = outcome.drained.is_ok(), "exiting");
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// A tonic client: one `Get`, then a `Count` stream of 5.
pub async fn client(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let reply: Response<PidReply> = grpc
        .unary(
            Request::new(PidRequest {
                seq: 1,
                delay_ms: 0,
            }),
            GET.parse()?,
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    println!(
        "Get: pid={} seq={}",
        reply.get_ref().pid,
        reply.get_ref().seq
    );
    grpc.ready().await?;
    let mut stream = grpc
        .server_streaming(
            Request::new(CountRequest {
                count: 5,
                interval_ms: 200,
            }),
            COUNT.parse()?,
            tonic_prost::ProstCodec::<CountRequest, PidReply>::default(),
        )
        .await?
        .into_inner();
    while let Some(reply) = stream.message().await? {
        println!("Count: pid={} index={}", reply.pid, reply.index);
    }
    Ok(())
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
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        let addr = args
            .get(1)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:50051".into());
        let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
        if let Err(e) = rt.block_on(client(&addr)) {
            eprintln!("grpc_upgrade client: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = match Args::parse(args.drain(..)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("grpc_upgrade: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("grpc_upgrade: {e}");
        std::process::exit(1);
    }
}
