//! Figure 9: keep-alive connections across upgrades (issue 18).
//!
//! `upgrade_http` as it drains by default (each keep-alive connection's
//! next response says `Connection: close`, so every client opens a new
//! connection after every upgrade) against `upgrade_http --handoff` (idle
//! keep-alive connections are handed to the new process), side by side in
//! one run, in alternating rounds. Keep-alive HTTP/1.1 clients send one
//! request after the other and count the connections they open, the
//! requests that fail, and each request's latency, split into requests
//! sent while an upgrade is in progress (from the SIGHUP until the old
//! process has exited) and the others (steady state).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::common::*;

#[derive(Args, Debug)]
pub struct KeepaliveArgs {
    /// Upgrades per variant (split over the rounds).
    #[arg(long, default_value_t = 20)]
    pub upgrades: usize,
    /// Rounds (alternating: close, handoff, close, handoff, ...).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Keep-alive clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Pause between upgrades (steady state).
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Figures {
    upgrades: usize,
    requests: u64,
    failed: u64,
    new_connections: u64,
    /// Latency of requests sent during upgrades, ms.
    during_ms: Vec<f64>,
    /// Latency of the others, ms.
    steady_ms: Vec<f64>,
}

/// One keep-alive client's record.
#[derive(Default)]
struct Record {
    connects: u64,
    requests: u64,
    failed: u64,
    /// (sent at, latency).
    samples: Vec<(Instant, Duration)>,
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Reads one response; `Ok(close)` for a 200.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<bool> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let ok = line.split_whitespace().nth(1) == Some("200");
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse().unwrap_or(0);
        } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    if !ok {
        return Err(std::io::Error::other("not a 200"));
    }
    Ok(close)
}

fn client(addr: SocketAddr, stop: Arc<AtomicBool>) -> Record {
    let mut rec = Record::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            rec.connects += 1;
            match TcpStream::connect(addr) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    conn = Some(BufReader::new(s));
                }
                Err(_) => {
                    rec.failed += 1;
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let r = conn.as_mut().expect("set above");
        let sent = Instant::now();
        let result = r.get_mut().write_all(GET).and_then(|()| read_response(r));
        rec.requests += 1;
        match result {
            Ok(close) => {
                rec.samples.push((sent, sent.elapsed()));
                if close {
                    conn = None;
                }
            }
            Err(_) => {
                rec.failed += 1;
                conn = None;
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    rec
}

/// One round of one variant: `upgrades` upgrades under the clients' load.
fn round(
    bins: &Bins,
    args: &KeepaliveArgs,
    handoff: bool,
    upgrades: usize,
    figures: &mut Figures,
) -> Result<(), String> {
    let extra: &[&str] = if handoff { &["--handoff"] } else { &[] };
    let server =
        SelfUpgrading::start_with(bins, ServerKind::UpgradeHttp, Duration::from_secs(2), extra)?;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.clients)
        .map(|_| {
            let stop = stop.clone();
            let addr = server.addr;
            thread::spawn(move || client(addr, stop))
        })
        .collect();
    let windows = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
    thread::sleep(args.interval);
    let mut result = Ok(());
    for _ in 0..upgrades {
        let start = Instant::now();
        let (old, _new) = match server.upgrade(Duration::from_secs(30)) {
            Ok(p) => p,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        if wait_gone(old, Duration::from_secs(30)).is_none() {
            result = Err(format!("the old process {old} did not exit within 30 s"));
            break;
        }
        windows.lock().unwrap().push((start, Instant::now()));
        figures.upgrades += 1;
        thread::sleep(args.interval);
    }
    stop.store(true, Ordering::Relaxed);
    let windows = windows.lock().unwrap().clone();
    for c in clients {
        let rec = c.join().map_err(|_| "a client panicked".to_string())?;
        figures.requests += rec.requests;
        figures.failed += rec.failed;
        figures.new_connections += rec.connects.saturating_sub(1);
        for (sent, latency) in rec.samples {
            let during = windows.iter().any(|(a, b)| sent >= *a && sent <= *b);
            let v = ms(latency);
            if during {
                figures.during_ms.push(v);
            } else {
                figures.steady_ms.push(v);
            }
        }
    }
    drop(server);
    result
}

pub fn run(bins: &Bins, args: &KeepaliveArgs) -> Result<serde_json::Value, String> {
    bins.check(&[ServerKind::UpgradeHttp])?;
    let rounds = args.rounds.max(1);
    let mut close = Figures::default();
    let mut handoff = Figures::default();
    for r in 0..rounds {
        // This round's share of the upgrades.
        let n = args.upgrades / rounds + usize::from(r < args.upgrades % rounds);
        eprintln!("keepalive: round {} of {rounds}: Connection: close", r + 1);
        round(bins, args, false, n, &mut close)?;
        eprintln!("keepalive: round {} of {rounds}: hand-over", r + 1);
        round(bins, args, true, n, &mut handoff)?;
    }
    if args.json {
        return Ok(serde_json::json!({ "close": close, "handoff": handoff }));
    }
    let mut t = Table::new(&[
        "upgrade_http",
        "upgrades",
        "requests",
        "failed",
        "new connections",
        "per upgrade",
        "p99 steady",
        "p99 during upgrades",
        "÷ steady",
    ]);
    for (name, f) in [
        ("drain with `Connection: close` (today)", &close),
        ("`--handoff` (connections handed over)", &handoff),
    ] {
        let (steady, during) = (
            percentile(&f.steady_ms, 99.0),
            percentile(&f.during_ms, 99.0),
        );
        t.row(vec![
            name.into(),
            f.upgrades.to_string(),
            f.requests.to_string(),
            f.failed.to_string(),
            f.new_connections.to_string(),
            format!("{:.2}", f.new_connections as f64 / f.upgrades.max(1) as f64),
            fmt_ms(steady),
            fmt_ms(during),
            fmt_ratio(during, steady),
        ]);
    }
    Ok(serde_json::Value::String(format!(
        "{} keep-alive HTTP/1.1 clients, one request after the other (1 ms apart); {} upgrades \
         per variant in {rounds} alternating rounds, {:?} apart. \"During upgrades\": requests \
         sent between the SIGHUP and the old process's exit.\n\n{}",
        args.clients,
        args.upgrades,
        args.interval,
        t.render()
    )))
}
