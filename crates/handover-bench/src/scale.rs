//! Figure 3: how reload latency grows with the number of listening sockets,
//! and with idle keep-alive connections left on the old generation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::latency::{Row, Running, restart_once};

#[derive(Args, Debug)]
pub struct SocketsArgs {
    /// Listening sockets per supervisor, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pub sockets: Vec<usize>,
    /// Reloads per row (the rows take turns).
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

pub fn sockets(bins: &Bins, args: &SocketsArgs) -> Result<serde_json::Value, String> {
    bins.check(&[ServerKind::Demo])?;
    let mut entries = Vec::new();
    for &n in &args.sockets {
        let binds = vec!["tcp://127.0.0.1:0".to_string(); n.max(1)];
        let sup = Supervisor::start(
            bins,
            &binds,
            &["--stop-timeout", "60s"],
            ServerKind::Demo.activated_command(bins, Duration::from_secs(2)),
            &format!("sockets-{n}"),
        )?;
        let row = Row {
            server: ServerKind::Demo.name(),
            what: format!("{n}"),
            ..Default::default()
        };
        entries.push((n, Running::Run(sup), row));
    }
    for i in 0..args.samples {
        eprintln!("sockets: sample {}/{}", i + 1, args.samples);
        for (_, running, row) in &mut entries {
            if let Err(e) = restart_once(running, row) {
                row.errors.push(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let rows: Vec<(usize, Row)> = entries.into_iter().map(|(n, _, row)| (n, row)).collect();
    if args.json {
        return Ok(serde_json::json!({
            "figure": "sockets",
            "samples": args.samples,
            "rows": rows.iter().map(|(n, r)| serde_json::json!({"sockets": n, "result": r})).collect::<Vec<_>>(),
        }));
    }
    let base = rows.first().and_then(|(_, r)| median(&r.ready_ms));
    let mut t = Table::new(&[
        "listening sockets",
        "ok reloads",
        "trigger → ready (reload answered)",
        "÷ first row",
        "spawn → READY=1 (supervisor)",
        "→ new generation answers",
        "→ old generation gone",
    ]);
    let mut notes = String::new();
    for (n, r) in &rows {
        t.row(vec![
            n.to_string(),
            r.ready_ms.len().to_string(),
            fmt_spread(&r.ready_ms),
            fmt_ratio(median(&r.ready_ms), base),
            fmt_ms(median(&r.supervisor_ready_ms)),
            fmt_spread(&r.answers_ms),
            fmt_spread(&r.old_gone_ms),
        ]);
        for e in r.errors.iter().take(3) {
            notes.push_str(&format!("- {n} sockets: {e}\n"));
        }
    }
    Ok(serde_json::Value::String(format!(
        "`handover run` with demo-server and N sockets on 127.0.0.1 (the server serves the first), \
         {} reloads per row, rows taking turns; medians [min–max].\n\n{}{}",
        args.samples,
        t.render(),
        if notes.is_empty() {
            String::new()
        } else {
            format!("\nErrors:\n{notes}")
        }
    )))
}

#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Idle keep-alive connections open on the old generation, per row
    /// (comma-separated; the rows take turns).
    #[arg(long, value_delimiter = ',', default_value = "0,10000")]
    pub connections: Vec<usize>,
    /// Reloads per row.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// `handover run --stop-timeout`: the old generation is killed after it.
    #[arg(long, default_value = "30s")]
    pub stop_timeout: String,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct IdleRow {
    connections: usize,
    result: Row,
    /// Connections that got an answer from the old generation before the reload.
    opened: Vec<usize>,
    /// After the old generation was gone: closed with FIN / reset / still open.
    closed_clean: usize,
    reset: usize,
    still_open: usize,
}

/// Opens `n` keep-alive connections, each with one answered request, on a
/// tokio runtime; returns those answered by `expect_pid`.
fn open_idle(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    n: usize,
    expect_pid: u32,
) -> Vec<TcpStream> {
    rt.block_on(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(256));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let slots = slots.clone();
            set.spawn(async move {
                let _permit = slots.acquire_owned().await.ok()?;
                let mut s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                    .await
                    .ok()?
                    .ok()?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .await
                    .ok()?;
                let mut buf = Vec::with_capacity(256);
                let mut chunk = [0u8; 512];
                loop {
                    let read =
                        tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await;
                    let k = read.ok()?.ok()?;
                    if k == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    if complete_response(&buf) {
                        break;
                    }
                }
                (parse_pid_response(&buf) == Some(expect_pid)).then_some(s)
            });
        }
        let mut out = Vec::with_capacity(n);
        while let Some(r) = set.join_next().await {
            if let Ok(Some(s)) = r {
                out.push(s);
            }
        }
        out
    })
}

/// Whether `buf` holds a whole response with a Content-Length body.
fn complete_response(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

/// How the idle connections ended: (FIN, reset, still open).
fn check_closed(rt: &tokio::runtime::Runtime, conns: Vec<TcpStream>) -> (usize, usize, usize) {
    rt.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for mut s in conns {
            set.spawn(async move {
                let mut b = [0u8; 64];
                match tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
                    Ok(Ok(0)) => 0,
                    Ok(Err(_)) => 1,
                    _ => 2,
                }
            });
        }
        let mut counts = (0, 0, 0);
        while let Some(r) = set.join_next().await {
            match r {
                Ok(0) => counts.0 += 1,
                Ok(1) => counts.1 += 1,
                _ => counts.2 += 1,
            }
        }
        counts
    })
}

pub fn idle(bins: &Bins, args: &IdleArgs) -> Result<serde_json::Value, String> {
    bins.check(&[ServerKind::Demo])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let sup = Supervisor::start(
        bins,
        &["tcp://127.0.0.1:0".to_string()],
        &["--stop-timeout", &args.stop_timeout],
        ServerKind::Demo.activated_command(bins, Duration::from_secs(2)),
        "idle",
    )?;
    let addr = sup.addr;
    let running = Running::Run(sup);
    let mut rows: Vec<IdleRow> = args
        .connections
        .iter()
        .map(|&n| IdleRow {
            connections: n,
            result: Row {
                server: ServerKind::Demo.name(),
                what: n.to_string(),
                ..Default::default()
            },
            ..Default::default()
        })
        .collect();
    for round in 0..args.rounds {
        for row in &mut rows {
            eprintln!(
                "idle: round {}/{}: {} idle connections",
                round + 1,
                args.rounds,
                row.connections
            );
            let Running::Run(sup) = &running else {
                unreachable!()
            };
            let old = sup.current_pid()?;
            let conns = open_idle(&rt, addr, row.connections, old);
            row.opened.push(conns.len());
            if let Err(e) = restart_once(&running, &mut row.result) {
                row.result.errors.push(e);
            }
            let (clean, reset, open) = check_closed(&rt, conns);
            row.closed_clean += clean;
            row.reset += reset;
            row.still_open += open;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(running);
    if args.json {
        return Ok(serde_json::json!({
            "figure": "idle",
            "rounds": args.rounds,
            "rows": rows,
        }));
    }
    let base_ready = rows.first().and_then(|r| median(&r.result.ready_ms));
    let base_gone = rows.first().and_then(|r| median(&r.result.old_gone_ms));
    let mut t = Table::new(&[
        "idle keep-alive connections on the old generation",
        "ok reloads",
        "trigger → ready",
        "÷ first row",
        "→ new generation answers",
        "→ old generation gone",
        "÷ first row",
        "idle connections ended by FIN / reset / still open (all rounds)",
    ]);
    let mut notes = String::new();
    for r in &rows {
        let opened: usize = r.opened.iter().sum();
        t.row(vec![
            format!(
                "{} (answered by the old one: {})",
                r.connections,
                if r.opened.is_empty() {
                    "-".to_string()
                } else {
                    format!("{}", opened / r.opened.len())
                }
            ),
            r.result.ready_ms.len().to_string(),
            fmt_spread(&r.result.ready_ms),
            fmt_ratio(median(&r.result.ready_ms), base_ready),
            fmt_spread(&r.result.answers_ms),
            fmt_spread(&r.result.old_gone_ms),
            fmt_ratio(median(&r.result.old_gone_ms), base_gone),
            format!("{} / {} / {}", r.closed_clean, r.reset, r.still_open),
        ]);
        for e in r.result.errors.iter().take(3) {
            notes.push_str(&format!("- {} connections: {e}\n", r.connections));
        }
    }
    Ok(serde_json::Value::String(format!(
        "`handover run` with demo-server (idle grace 2 s while draining), `--stop-timeout {}`; \
         {} reloads per row, rows taking turns; medians [min–max].\n\n{}{}",
        args.stop_timeout,
        args.rounds,
        t.render(),
        if notes.is_empty() {
            String::new()
        } else {
            format!("\nErrors:\n{notes}")
        }
    )))
}
