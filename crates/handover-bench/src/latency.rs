//! Figure 2: how long a restart takes, against the floor of starting the
//! same program cold, and against ecdysis.
//!
//! For each server, samples alternate: a cold start (spawn the program, it
//! binds; time until the first successful answer), then a restart of a
//! running instance (time from the trigger until the new process is ready,
//! until it answers, and until the old process has exited). A prober thread
//! sends `GET /` on a new connection every 200 µs during each measurement,
//! the same way for both.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use handover::activation::Activation;
use handover::process::Command;
use rustix::process::Signal;
use serde::Serialize;

use crate::common::*;

#[derive(Args, Debug)]
pub struct LatencyArgs {
    /// Samples per row (cold starts and restarts alternate).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Servers, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "upgrade-http,ecdysis,run-demo,run-python"
    )]
    pub servers: Vec<LatencyServer>,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyServer {
    /// upgrade_http: cold start vs SIGHUP self-upgrade (handover `Upgrader`).
    UpgradeHttp,
    /// ecdysis_server: cold start vs SIGHUP self-upgrade (ecdysis crate).
    Ecdysis,
    /// demo-server: cold start vs `handover run` reload.
    RunDemo,
    /// py_server.py: cold start vs `handover run` reload.
    RunPython,
}

impl LatencyServer {
    fn kind(self) -> ServerKind {
        match self {
            LatencyServer::UpgradeHttp => ServerKind::UpgradeHttp,
            LatencyServer::Ecdysis => ServerKind::Ecdysis,
            LatencyServer::RunDemo => ServerKind::Demo,
            LatencyServer::RunPython => ServerKind::Python,
        }
    }

    fn restart_label(self) -> &'static str {
        match self {
            LatencyServer::UpgradeHttp => "restart: handover `Upgrader` (SIGHUP)",
            LatencyServer::Ecdysis => "restart: ecdysis (SIGHUP)",
            LatencyServer::RunDemo | LatencyServer::RunPython => {
                "restart: `handover run` reload (control socket)"
            }
        }
    }

    fn supervised(self) -> bool {
        matches!(self, LatencyServer::RunDemo | LatencyServer::RunPython)
    }
}

/// One row's samples, in milliseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Row {
    pub server: &'static str,
    pub what: String,
    /// Trigger to ready: the pid file names the new process (self-upgrade),
    /// or `handover reload` was answered (handover run).
    pub ready_ms: Vec<f64>,
    /// As measured by the supervisor: spawn to READY=1 (handover run only).
    pub supervisor_ready_ms: Vec<f64>,
    /// Trigger (or spawn) to the first answer from the new process.
    pub answers_ms: Vec<f64>,
    /// Trigger to the old process's exit.
    pub old_gone_ms: Vec<f64>,
    pub errors: Vec<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns the program cold on `addr` and returns the time to its first answer.
pub fn cold_start(
    bins: &Bins,
    kind: ServerKind,
    addr: SocketAddr,
    dir: &std::path::Path,
) -> Result<f64, String> {
    let grace = Duration::from_secs(2);
    let prober = Prober::start(addr, BTreeSet::new(), TIMEOUT);
    let (t0, proc) = match kind {
        ServerKind::UpgradeHttp => {
            let mut cmd = Command::new(&bins.upgrade_http);
            cmd.arg("--listen")
                .arg(addr.to_string())
                .env("RUST_LOG", "warn")
                .stderr(bins.stderr("cold-upgrade_http"));
            let t0 = Instant::now();
            (t0, Proc::spawn(cmd, &Activation::new()))
        }
        ServerKind::Ecdysis => {
            let mut cmd = Command::new(&bins.ecdysis_server);
            cmd.arg("--listen")
                .arg(addr.to_string())
                .arg("--pid-file")
                .arg(dir.join("cold-ecdysis.pid"))
                .stderr(bins.stderr("cold-ecdysis_server"));
            let t0 = Instant::now();
            (t0, Proc::spawn(cmd, &Activation::new()))
        }
        ServerKind::Python => {
            let mut cmd = Command::new(&bins.python);
            cmd.arg(&bins.py_server)
                .arg("--bind")
                .arg(addr.to_string())
                .stderr(bins.stderr("cold-py_server"));
            let t0 = Instant::now();
            (t0, Proc::spawn(cmd, &Activation::new()))
        }
        ServerKind::Demo => {
            // demo-server only serves an inherited socket: bound here, right
            // before the spawn, as part of the measured time.
            let mut cmd = kind.activated_command(bins, grace);
            cmd.stderr(bins.stderr("cold-demo-server"));
            let t0 = Instant::now();
            let listener = bind_reuse(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            let mut fds = Activation::new();
            fds.fd("http", listener.as_fd())
                .map_err(|e| e.to_string())?;
            let proc = Proc::spawn(cmd, &fds);
            drop(listener);
            (t0, proc)
        }
    };
    let mut proc = proc.map_err(|e| format!("spawn {}: {e}", kind.name()))?;
    let answered = prober.wait();
    let took = answered.map(|(_, at)| ms(at - t0));
    proc.stop(Duration::from_secs(15));
    took.ok_or_else(|| format!("{} (cold) never answered", kind.name()))
}

/// Starts `handover run` with the program cold and returns the time to the
/// first answer.
fn cold_start_supervised(bins: &Bins, kind: ServerKind, addr: SocketAddr) -> Result<f64, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let program = kind.activated_command(bins, Duration::from_secs(2));
    let mut cmd = Command::new(&bins.handover);
    cmd.args(["--log-level", "warn", "run", "--bind"])
        .arg(format!("http=tcp://{addr}"))
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .arg("--")
        .arg(program.get_program())
        .args(program.get_args())
        .env("XDG_RUNTIME_DIR", dir.path())
        .stderr(bins.stderr("cold-handover-run"));
    let prober = Prober::start(addr, BTreeSet::new(), TIMEOUT);
    let t0 = Instant::now();
    let mut proc =
        Proc::spawn(cmd, &Activation::new()).map_err(|e| format!("handover run: {e}"))?;
    let took = prober.wait().map(|(_, at)| ms(at - t0));
    proc.stop(Duration::from_secs(30));
    took.ok_or_else(|| "handover run (cold) never answered".to_string())
}

pub enum Running {
    SelfUp(SelfUpgrading),
    Run(Supervisor),
}

pub fn restart_once(r: &Running, row: &mut Row) -> Result<(), String> {
    match r {
        Running::SelfUp(s) => {
            let old = s.pid().ok_or("no pid file")?;
            let prober = Prober::start(s.addr, BTreeSet::from([old]), TIMEOUT);
            let t0 = Instant::now();
            signal_pid(old, Signal::HUP);
            let deadline = t0 + TIMEOUT;
            let ready = loop {
                if s.pid().is_some_and(|p| p != old) {
                    break Instant::now();
                }
                if Instant::now() >= deadline {
                    return Err(format!("{}: no new pid in the pid file", s.kind.name()));
                }
                thread::sleep(Duration::from_micros(100));
            };
            let answered = prober.wait().ok_or("the new process never answered")?;
            let gone =
                wait_gone(old, Duration::from_secs(60)).ok_or("the old process did not exit")?;
            row.ready_ms.push(ms(ready - t0));
            row.answers_ms.push(ms(answered.1 - t0));
            row.old_gone_ms.push(ms(gone - t0));
        }
        Running::Run(s) => {
            let old = s.current_pid()?;
            let prober = Prober::start(s.addr, BTreeSet::from([old]), TIMEOUT);
            let t0 = Instant::now();
            let answer = s.reload()?;
            let ready = Instant::now();
            let answered = prober.wait().ok_or("the new generation never answered")?;
            let gone =
                wait_gone(old, Duration::from_secs(60)).ok_or("the old generation did not exit")?;
            row.ready_ms.push(ms(ready - t0));
            if let Some(r) = answer["ready_after_ms"].as_f64() {
                row.supervisor_ready_ms.push(r);
            }
            row.answers_ms.push(ms(answered.1 - t0));
            row.old_gone_ms.push(ms(gone - t0));
        }
    }
    Ok(())
}

pub fn run(bins: &Bins, args: &LatencyArgs) -> Result<serde_json::Value, String> {
    let kinds: Vec<ServerKind> = args.servers.iter().map(|s| s.kind()).collect();
    bins.check(&kinds)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    struct Entry {
        server: LatencyServer,
        running: Running,
        cold_port: u16,
        cold: Row,
        cold_supervised: Option<Row>,
        restart: Row,
    }
    let mut entries = Vec::new();
    for &server in &args.servers {
        let kind = server.kind();
        let running = if server.supervised() {
            Running::Run(Supervisor::start(
                bins,
                &["tcp://127.0.0.1:0".to_string()],
                &["--stop-timeout", "60s"],
                kind.activated_command(bins, Duration::from_secs(2)),
                &format!("latency-run-{}", kind.name()),
            )?)
        } else {
            Running::SelfUp(SelfUpgrading::start(bins, kind, Duration::from_secs(2))?)
        };
        let row = |what: &str| Row {
            server: kind.name(),
            what: what.to_string(),
            ..Default::default()
        };
        entries.push(Entry {
            server,
            running,
            cold_port: free_port().map_err(|e| e.to_string())?,
            cold: row(if kind == ServerKind::Demo {
                "cold start (bind, spawn, first answer)"
            } else {
                "cold start (spawn, it binds, first answer)"
            }),
            cold_supervised: server
                .supervised()
                .then(|| row("cold start under `handover run` (spawn handover, first answer)")),
            restart: row(server.restart_label()),
        });
    }
    for i in 0..args.samples {
        eprintln!("latency: sample {}/{}", i + 1, args.samples);
        for e in &mut entries {
            let kind = e.server.kind();
            let addr = localhost(e.cold_port);
            match cold_start(bins, kind, addr, dir.path()) {
                Ok(v) => e.cold.answers_ms.push(v),
                Err(err) => e.cold.errors.push(err),
            }
            if let Err(err) = restart_once(&e.running, &mut e.restart) {
                e.restart.errors.push(err);
            }
            if let Some(row) = e.cold_supervised.as_mut() {
                match cold_start_supervised(bins, kind, addr) {
                    Ok(v) => row.answers_ms.push(v),
                    Err(err) => row.errors.push(err),
                }
            }
            // Let the new process settle (signal handlers installed).
            thread::sleep(Duration::from_millis(50));
        }
    }
    let mut rows: Vec<(Row, Option<f64>)> = Vec::new();
    for e in entries {
        let cold = median(&e.cold.answers_ms);
        rows.push((e.cold, None));
        if let Some(r) = e.cold_supervised {
            rows.push((r, cold));
        }
        rows.push((e.restart, cold));
        drop(e.running);
    }
    if args.json {
        return Ok(serde_json::json!({
            "figure": "latency",
            "samples": args.samples,
            "rows": rows.iter().map(|(r, _)| r).collect::<Vec<_>>(),
        }));
    }
    let mut t = Table::new(&[
        "server",
        "start",
        "ok samples",
        "trigger → ready",
        "→ new process answers",
        "÷ cold start",
        "→ old process gone",
    ]);
    let mut notes = String::new();
    for (r, cold) in &rows {
        let ready = if r.supervisor_ready_ms.is_empty() {
            fmt_spread(&r.ready_ms)
        } else {
            format!(
                "{} (spawn → READY=1: {})",
                fmt_spread(&r.ready_ms),
                fmt_ms(median(&r.supervisor_ready_ms))
            )
        };
        t.row(vec![
            r.server.to_string(),
            r.what.clone(),
            r.answers_ms.len().to_string(),
            ready,
            fmt_spread(&r.answers_ms),
            match cold {
                Some(_) => fmt_ratio(median(&r.answers_ms), *cold),
                None => "1×".into(),
            },
            fmt_spread(&r.old_gone_ms),
        ]);
        for err in r.errors.iter().take(3) {
            notes.push_str(&format!("- {} / {}: {err}\n", r.server, r.what));
        }
    }
    Ok(serde_json::Value::String(format!(
        "{} samples per row, alternating cold start and restart; medians [min–max].\n\n{}{}",
        args.samples,
        t.render(),
        if notes.is_empty() {
            String::new()
        } else {
            format!("\nErrors:\n{notes}")
        }
    )))
}
