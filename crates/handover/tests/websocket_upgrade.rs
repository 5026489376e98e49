//! The WebSocket echo server of `examples/websocket_upgrade.rs` upgraded
//! under load, with real processes: clients that reconnect after the
//! server's close frame lose no message and see none twice, across 20
//! upgrades; every old generation exits once its WebSockets are closed.

#[path = "../examples/websocket_upgrade.rs"]
#[allow(dead_code)]
mod websocket_upgrade;

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{ARGS, ROLE, Server};
use handover_verify::{Load, LoadConfig, Mode};

#[test]
fn child_role() {
    // `Server` starts its child as the `upgrade_http` role; here that is
    // the WebSocket server.
    if std::env::var(ROLE).as_deref() != Ok("upgrade_http") {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter("info")
        .try_init();
    let args = std::env::var(ARGS).unwrap();
    let args = websocket_upgrade::Args::parse(args.split_whitespace().map(String::from)).unwrap();
    websocket_upgrade::run(args).unwrap();
}

#[test]
fn twenty_upgrades_websocket_clients_reconnect_and_lose_no_message() {
    // A drain deadline shorter than the test's waits: a server that kept
    // its WebSockets open would have them cut, which the clients report.
    let mut server = Server::spawn(
        "pid",
        "--idle-grace-ms 1000 --drain-timeout 10",
        &[("RUST_LOG", "info")],
    );
    // Plain HTTP requests, to see each new generation answer.
    let mut cfg = LoadConfig::new(server.addr, Mode::KeepAlive);
    cfg.connections = 2;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(20, Duration::from_secs(30)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.addr.to_string();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            rt.spawn(async move {
                websocket_upgrade::client(&addr, u64::MAX, 4, Duration::from_secs(20), &stop).await
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        server.upgrade(&load);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut pids = BTreeSet::new();
    let (mut echoed, mut resent, mut connections) = (0, 0, 0);
    for (i, client) in clients.into_iter().enumerate() {
        let report = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), client).await })
            .expect("a client did not stop")
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i}: {e}\nstderr:\n{}", server.log()));
        assert!(
            report.connections >= 15,
            "client {i} reconnected only {} times: {report:?}",
            report.connections
        );
        echoed += report.echoed;
        resent += report.resent;
        connections += report.connections;
        pids.extend(report.pids.iter().map(|(pid, _)| *pid));
    }
    assert!(
        pids.len() >= 15,
        "WebSockets answered by {} generations only",
        pids.len()
    );
    let report = load.stop();
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
    eprintln!(
        "{echoed} messages echoed exactly once over {connections} WebSocket connections \
         ({resent} sent again after a close frame), {} generations",
        pids.len()
    );
}
