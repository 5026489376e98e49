//! The tonic server of `examples/grpc_upgrade.rs` upgraded under gRPC load,
//! with real processes: unary calls and server streams from tonic clients,
//! and `handover verify`'s gRPC load, lose nothing across 20 upgrades; a
//! stream that spans an upgrade completes on the old process.

#[path = "../examples/grpc_upgrade.rs"]
#[allow(dead_code)]
mod grpc_upgrade;

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ARGS, ROLE, Server};
use grpc_upgrade::{COUNT, CountRequest, GET, PidReply, PidRequest};
use handover_verify::{Load, LoadConfig, Mode, Protocol};
use tonic::transport::Channel;

#[test]
fn child_role() {
    // `Server` starts its child as the `upgrade_http` role; here that is
    // the gRPC server.
    if std::env::var(ROLE).as_deref() != Ok("upgrade_http") {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter("info")
        .try_init();
    let args = std::env::var(ARGS).unwrap();
    let args = grpc_upgrade::Args::parse(args.split_whitespace().map(String::from)).unwrap();
    grpc_upgrade::run(args).unwrap();
}

fn start() -> Server {
    Server::spawn("pid", "--idle-grace-ms 1000", &[("RUST_LOG", "info")])
}

/// `handover verify`'s gRPC load: unary health checks, 2 connections x 8
/// streams; it sees each new generation (the `pid` header).
fn health_load(server: &Server) -> Load {
    let mut cfg = LoadConfig::new(server.addr, Mode::KeepAlive);
    cfg.protocol = Protocol::Grpc;
    cfg.connections = 2;
    cfg.streams = 8;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(50, Duration::from_secs(30)),
        "no gRPC load got through:\n{}",
        server.log()
    );
    load
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Whether the call was not processed by the server, so that gRPC's
/// transparent retry applies (as grpc-go and grpc-java do; tonic reports
/// these and does not retry): tonic's channel handed it to a connection
/// that was closing after a GOAWAY and hyper gave it back unsent
/// (`Canceled: connection closed`), or h2 refused to open its stream
/// because the connection had received a GOAWAY (`GoAway(NO_ERROR,
/// Remote)`: RFC 9113, 6.8, such a stream was not processed). These test
/// clients retry those, and only those, before any response. Anything else
/// (a refused or reset stream, a stream cut short, a connection error) is a
/// failure.
fn unsent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_canceled() {
                return true;
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = e.source();
    }
    false
}

/// Calls retried because they had not been sent (see [`unsent`]).
static RETRIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn get(grpc: &mut tonic::client::Grpc<Channel>, seq: u64) -> Result<PidReply, tonic::Status> {
    let reply = loop {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
        let result = grpc
            .unary(
                tonic::Request::new(PidRequest { seq, delay_ms: 0 }),
                GET.parse().unwrap(),
                tonic_prost::ProstCodec::<PidRequest, PidReply>::default(),
            )
            .await;
        match result {
            Err(status) if unsent(&status) => {
                RETRIED.fetch_add(1, Ordering::Relaxed);
            }
            other => break other?.into_inner(),
        }
    };
    if reply.seq != seq {
        return Err(tonic::Status::internal(format!(
            "seq {} for {seq}",
            reply.seq
        )));
    }
    Ok(reply)
}

/// One `Count` stream, checked whole: `count` replies, in order, from one
/// process. Returns that pid.
async fn count(
    grpc: &mut tonic::client::Grpc<Channel>,
    count: u32,
    interval_ms: u32,
) -> Result<u32, String> {
    let mut stream = loop {
        grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let result = grpc
            .server_streaming(
                tonic::Request::new(CountRequest { count, interval_ms }),
                COUNT.parse().unwrap(),
                tonic_prost::ProstCodec::<CountRequest, PidReply>::default(),
            )
            .await;
        match result {
            Err(status) if unsent(&status) => {
                RETRIED.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(format!("Count refused: {e}")),
            Ok(response) => break response.into_inner(),
        }
    };
    let mut pid = None;
    for index in 0..count {
        let reply = stream
            .message()
            .await
            .map_err(|e| format!("stream cut at reply {index} of {count}: {e}"))?
            .ok_or_else(|| format!("stream ended after {index} of {count} replies"))?;
        if reply.index != index {
            return Err(format!("reply {} where {index} was expected", reply.index));
        }
        if *pid.get_or_insert(reply.pid) != reply.pid {
            return Err(format!("stream moved from pid {pid:?} to {}", reply.pid));
        }
    }
    match stream.message().await {
        Ok(None) => Ok(pid.unwrap_or(0)),
        Ok(Some(extra)) => Err(format!("an extra reply {extra:?}")),
        Err(e) => Err(format!("the stream's end failed: {e}")),
    }
}

#[derive(Default)]
struct Tally {
    unary_ok: u64,
    streams_ok: u64,
    stream_pids: BTreeSet<u32>,
    failures: Vec<String>,
}

#[test]
fn twenty_upgrades_grpc_unary_and_server_streams_lose_nothing() {
    let mut server = start();
    let load = health_load(&server);
    let addr = server.addr;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    // Tonic clients, one channel each, used for the whole run as a real
    // client would: 2 sending unary calls, 4 running 10-reply streams.
    for i in 0..6 {
        let (tally, stop) = (tally.clone(), stop.clone());
        tasks.push(rt.spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel(addr).await);
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                if i < 2 {
                    let result = get(&mut grpc, seq).await;
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok(_) => t.unary_ok += 1,
                        Err(e) => t.failures.push(format!("Get {seq}: {e}")),
                    }
                } else {
                    let result = count(&mut grpc, 10, 30).await;
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok(pid) => {
                            t.streams_ok += 1;
                            t.stream_pids.insert(pid);
                        }
                        Err(e) => t.failures.push(format!("Count: {e}")),
                    }
                }
            }
        }));
    }
    for _ in 0..20 {
        server.upgrade(&load);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await })
            .expect("a client did not stop")
            .unwrap();
    }
    let report = load.stop();
    let t = tally.lock().unwrap();
    assert!(
        t.failures.is_empty(),
        "{} tonic calls failed: {:#?}\nstderr:\n{}",
        t.failures.len(),
        t.failures,
        server.log()
    );
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        server.log()
    );
    assert!(
        t.unary_ok > 100 && t.streams_ok > 20,
        "{} unary, {} streams",
        t.unary_ok,
        t.streams_ok
    );
    assert!(
        t.stream_pids.len() >= 15,
        "streams were served by {} generations only",
        t.stream_pids.len()
    );
    assert_eq!(report.distinct_pids(), 21, "{}", report.render_table());
    eprintln!(
        "{} unary calls, {} streams, {} calls retried as unsent",
        t.unary_ok,
        t.streams_ok,
        RETRIED.load(Ordering::Relaxed)
    );
}

#[test]
fn a_server_stream_that_spans_an_upgrade_completes_on_the_old_process() {
    let mut server = start();
    let load = health_load(&server);
    let old = server.current().unwrap();
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // 30 replies, 100 ms apart: 3 s, and the upgrade comes after the first.
    let stream = rt.spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel(addr).await);
        count(&mut grpc, 30, 100).await
    });
    std::thread::sleep(Duration::from_millis(300));
    let new = server.upgrade(&load);
    let pid = rt.block_on(stream).unwrap().expect("the stream completes");
    assert_eq!(
        pid, old,
        "every reply of the stream came from the old process"
    );
    assert_ne!(new, old);
    // And the new process serves streams.
    let pid = rt
        .block_on(async move {
            let mut grpc = tonic::client::Grpc::new(channel(addr).await);
            count(&mut grpc, 3, 10).await
        })
        .unwrap();
    assert_eq!(pid, new);
    let report = load.stop();
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
}
