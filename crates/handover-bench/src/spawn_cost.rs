//! Issue 11: an upgrade whose cost does not grow with the server.
//!
//! `upgrade_http --ballast-mb N` holds N MB of touched heap (the process
//! started by hand only; its successor does not). For each heap size, side
//! by side in one run and alternating, a fresh server is started, a
//! keep-alive connection pinned to it sends `GET /` every 0.5 ms, and the
//! server is sent SIGHUP. Measured:
//! - trigger → the new process answers (a prober opens a new connection
//!   every 200 µs, as in figure 2);
//! - the longest stall of the old process's request handling: the slowest
//!   request on the pinned connection that overlapped the upgrade (from the
//!   trigger until the new process answered), against the slowest one in
//!   the same length of time just before the trigger.
//!
//! With `--baseline-upgrade-http PATH` (an `upgrade_http` built from the
//! code before issue 11, which started the new process with `fork`), both
//! binaries are measured in the same rounds. The cold-start floor (spawn
//! `upgrade_http`, it binds, first answer) is measured in the same rounds.
//!
//! A second table isolates the start itself: this benchmark process holds
//! the same heap sizes and times `spawn()` of `/bin/true` (which returns
//! once the program has been executed) with `handover::process::Command`
//! and with `std::process::Command` plus an empty `pre_exec` hook (which
//! makes std `fork`, as the code before issue 11 did).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use handover::activation::Activation;
use handover::process::Command;
use rustix::process::Signal;
use serde::Serialize;

use crate::common::*;

#[derive(Args, Debug)]
pub struct SpawnArgs {
    /// Upgrades per row.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Heap sizes of the old process, in MB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1024,4096")]
    pub ballast_mb: Vec<usize>,
    /// Another `upgrade_http` (built before issue 11: `fork`) to measure in
    /// the same rounds.
    #[arg(long)]
    pub baseline_upgrade_http: Option<PathBuf>,
    /// How the baseline starts its successor, for the table.
    #[arg(long, default_value = "fork (before: std Command + pre_exec)")]
    pub baseline_label: String,
    /// How long a fresh server is left alone before the trigger (touching
    /// GBs of memory leaves the kernel reclaiming for a while).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Spawns of /bin/true per heap size and method in each round, for the
    /// second table (0: skip it).
    #[arg(long, default_value_t = 20)]
    pub spawns: usize,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

/// `spawn()` of /bin/true from this process: (handover, std+fork) times.
fn spawn_true(n: usize, handover: &mut Vec<f64>, fork: &mut Vec<f64>) -> Result<(), String> {
    for _ in 0..n {
        let t = Instant::now();
        let mut p = Command::new("/bin/true")
            .spawn()
            .map_err(|e| e.to_string())?;
        handover.push(ms(t.elapsed()));
        // This benchmark reaps its orphans in the background (see
        // `init_process`), which may have reaped it first: ECHILD is fine.
        let _ = p.wait();
        let mut c = std::process::Command::new("/bin/true");
        // SAFETY: the hook does nothing; it is there to make std fork.
        unsafe { std::os::unix::process::CommandExt::pre_exec(&mut c, || Ok(())) };
        let t = Instant::now();
        let mut p = c.spawn().map_err(|e| e.to_string())?;
        fork.push(ms(t.elapsed()));
        let _ = p.wait();
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub spawn: String,
    pub ballast_mb: usize,
    /// VmRSS of the old process before the trigger, MB.
    pub rss_mb: Vec<f64>,
    /// Trigger to the pid file naming the new process (it is ready).
    pub ready_ms: Vec<f64>,
    /// Trigger to the first answer from the new process.
    pub answers_ms: Vec<f64>,
    /// The slowest request on the pinned connection during the upgrade.
    pub stall_ms: Vec<f64>,
    /// The slowest one in as long a time just before the trigger.
    pub quiet_ms: Vec<f64>,
    pub errors: Vec<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// A running `upgrade_http` chain; every generation is stopped on drop.
struct Server {
    first: Proc,
    addr: SocketAddr,
    pid_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(bins: &Bins, program: &std::path::Path, ballast_mb: usize) -> Result<Server, String> {
        let dir = tempfile::Builder::new()
            .prefix("handover-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let pid_file = dir.path().join("server.pid");
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(program);
        cmd.args(["--listen", "tcp://127.0.0.1:0", "--idle-grace-ms", "200"])
            .args(["--drain-timeout", "5", "--ballast-mb"])
            .arg(ballast_mb.to_string())
            .arg("--pid-file")
            .arg(&pid_file)
            .env("RUST_LOG", "warn")
            .stderr(bins.stderr("spawn-upgrade_http"));
        let mut fds = Activation::new();
        fds.fd("http", listener.as_fd())
            .map_err(|e| e.to_string())?;
        let first = Proc::spawn(cmd, &fds).map_err(|e| format!("upgrade_http: {e}"))?;
        let server = Server {
            first,
            addr,
            pid_file,
            _dir: dir,
        };
        // Touching 4 GB takes a while.
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.pid() != Some(server.first.pid) {
            if Instant::now() >= deadline {
                return Err("upgrade_http did not become ready".into());
            }
            thread::sleep(Duration::from_millis(5));
        }
        wait_answering(addr, TIMEOUT)?;
        Ok(server)
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = self.pid().filter(|&p| p != self.first.pid) {
            signal_pid(pid, Signal::TERM);
            if wait_gone(pid, Duration::from_secs(15)).is_none() {
                signal_pid(pid, Signal::KILL);
            }
        }
        self.first.stop(Duration::from_secs(15));
    }
}

/// One request on a keep-alive connection: (sent at, latency, pid, closed).
type Sample = (Instant, Duration, u32, bool);

/// Sends `GET /` on one keep-alive connection every 0.5 ms until `stop` or
/// the server closes it (it does when it drains).
fn pinned(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Sample>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let Ok(mut s) = TcpStream::connect(addr) else {
            return out;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(TIMEOUT));
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                .is_err()
            {
                break;
            }
            let Some((pid, close)) = read_response(&mut s) else {
                break;
            };
            out.push((t, t.elapsed(), pid, close));
            if close {
                break;
            }
            thread::sleep(Duration::from_micros(500));
        }
        out
    })
}

/// Reads one HTTP/1.1 response with a Content-Length body: the pid in it,
/// and whether the server closes the connection after it.
fn read_response(s: &mut TcpStream) -> Option<(u32, bool)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let close = head.contains("connection: close");
    let pid = parse_pid_response(&buf[..head_end + len])?;
    Some((pid, close))
}

fn sample(
    bins: &Bins,
    program: &std::path::Path,
    ballast_mb: usize,
    settle: Duration,
    row: &mut Row,
) -> Result<(), String> {
    let server = Server::start(bins, program, ballast_mb)?;
    let old = server.first.pid;
    let rss = status_kib(old, "VmRSS").unwrap_or(0) as f64 / 1024.0;
    thread::sleep(settle);
    let stop = Arc::new(AtomicBool::new(false));
    let requests = pinned(server.addr, stop.clone());
    thread::sleep(Duration::from_millis(300));
    let prober = Prober::start(server.addr, BTreeSet::from([old]), TIMEOUT);
    let t0 = Instant::now();
    signal_pid(old, Signal::HUP);
    let deadline = t0 + TIMEOUT;
    let ready = loop {
        if server.pid().is_some_and(|p| p != old) {
            break Instant::now();
        }
        if Instant::now() >= deadline {
            return Err("no new pid in the pid file".into());
        }
        thread::sleep(Duration::from_micros(100));
    };
    let answered = prober.wait();
    let gone = wait_gone(old, TIMEOUT);
    stop.store(true, Ordering::Relaxed);
    let requests = requests.join().unwrap_or_default();
    let (new_pid, t_answer) = answered.ok_or("the new process never answered")?;
    if gone.is_none() {
        return Err("the old process did not exit".into());
    }
    // Requests to the old process that overlapped [t0, t_answer].
    let on_old = |&&(t, lat, pid, _): &&Sample| pid == old && t < t_answer && t + lat > t0;
    let stall = requests.iter().filter(on_old).map(|r| r.1).max();
    let window = t_answer - t0;
    let before = requests
        .iter()
        .filter(|&&(t, lat, _, _)| t + lat <= t0 && t + window >= t0)
        .map(|r| r.1)
        .max();
    if new_pid == old {
        return Err("the prober saw the old pid".into());
    }
    row.rss_mb.push(rss);
    row.ready_ms.push(ms(ready - t0));
    row.answers_ms.push(ms(t_answer - t0));
    row.stall_ms.push(stall.map(ms).unwrap_or(0.0));
    row.quiet_ms.push(before.map(ms).unwrap_or(0.0));
    drop(server);
    Ok(())
}

pub fn run(bins: &Bins, args: &SpawnArgs) -> Result<serde_json::Value, String> {
    bins.check(&[ServerKind::UpgradeHttp])?;
    if let Some(b) = &args.baseline_upgrade_http
        && !b.exists()
    {
        return Err(format!(
            "--baseline-upgrade-http {}: no such file; build upgrade_http from the commit before \
             issue 11 (cargo build --release -p handover --example upgrade_http)",
            b.display()
        ));
    }
    let mut programs: Vec<(String, PathBuf)> = vec![(
        "vfork-style clone (this build)".to_string(),
        bins.upgrade_http.clone(),
    )];
    if let Some(b) = &args.baseline_upgrade_http {
        programs.push((args.baseline_label.clone(), b.clone()));
    }
    let mut rows: Vec<Row> = Vec::new();
    for (label, _) in &programs {
        for &mb in &args.ballast_mb {
            rows.push(Row {
                spawn: label.clone(),
                ballast_mb: mb,
                rss_mb: Vec::new(),
                ready_ms: Vec::new(),
                answers_ms: Vec::new(),
                stall_ms: Vec::new(),
                quiet_ms: Vec::new(),
                errors: Vec::new(),
            });
        }
    }
    // Second table: per heap size, (handover, fork) spawn times.
    let mut micro: Vec<(usize, Vec<f64>, Vec<f64>)> = args
        .ballast_mb
        .iter()
        .map(|&mb| (mb, Vec::new(), Vec::new()))
        .collect();
    let mut micro_errors = Vec::new();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cold = Vec::new();
    let mut cold_errors = Vec::new();
    let cold_port = free_port().map_err(|e| e.to_string())?;
    for i in 0..args.samples {
        eprintln!("spawn: round {}/{}", i + 1, args.samples);
        match crate::latency::cold_start(
            bins,
            ServerKind::UpgradeHttp,
            localhost(cold_port),
            dir.path(),
        ) {
            Ok(v) => cold.push(v),
            Err(e) => cold_errors.push(e),
        }
        if args.spawns > 0 {
            for (mb, h, f) in &mut micro {
                // Touched, like the servers' ballast; freed before the next.
                let ballast = vec![1u8; *mb << 20];
                std::hint::black_box(&ballast);
                if let Err(e) = spawn_true(args.spawns, h, f) {
                    micro_errors.push(e);
                }
                drop(ballast);
            }
        }
        let mut r = 0;
        for (_, program) in &programs {
            for &mb in &args.ballast_mb {
                if let Err(e) = sample(bins, program, mb, args.settle, &mut rows[r]) {
                    rows[r].errors.push(e);
                }
                r += 1;
            }
        }
    }
    if args.json {
        return Ok(serde_json::json!({
            "figure": "spawn",
            "samples": args.samples,
            "cold_start_ms": cold,
            "rows": rows,
            "spawn_true_ms": micro.iter().map(|(mb, h, f)| serde_json::json!({
                "ballast_mb": mb, "handover": h, "std_fork": f,
            })).collect::<Vec<_>>(),
        }));
    }
    let mut t = Table::new(&[
        "starts the new process with",
        "old process heap",
        "ok",
        "old VmRSS",
        "trigger → new process ready",
        "÷ same at 0 MB",
        "trigger → new process answers",
        "÷ same at 0 MB",
        "÷ cold start",
        "old process: longest stall during upgrade",
        "longest stall just before",
    ]);
    let cold_med = median(&cold);
    t.row(vec![
        "— (cold start: spawn, it binds, first answer)".into(),
        "0 MB".into(),
        cold.len().to_string(),
        "-".into(),
        "-".into(),
        "-".into(),
        fmt_spread(&cold),
        "-".into(),
        "1×".into(),
        "-".into(),
        "-".into(),
    ]);
    let mut notes = String::new();
    for r in &rows {
        let zero_row = rows
            .iter()
            .find(|z| z.spawn == r.spawn && z.ballast_mb == 0);
        let zero = zero_row.and_then(|z| median(&z.answers_ms));
        let zero_ready = zero_row.and_then(|z| median(&z.ready_ms));
        t.row(vec![
            r.spawn.clone(),
            format!("{} MB", r.ballast_mb),
            r.answers_ms.len().to_string(),
            median(&r.rss_mb)
                .map(|v| format!("{v:.0} MB"))
                .unwrap_or("-".into()),
            fmt_spread(&r.ready_ms),
            fmt_ratio(median(&r.ready_ms), zero_ready),
            fmt_spread(&r.answers_ms),
            fmt_ratio(median(&r.answers_ms), zero),
            fmt_ratio(median(&r.answers_ms), cold_med),
            fmt_spread(&r.stall_ms),
            fmt_spread(&r.quiet_ms),
        ]);
        for e in r.errors.iter().take(3) {
            notes.push_str(&format!("- {} / {} MB: {e}\n", r.spawn, r.ballast_mb));
        }
    }
    for e in cold_errors.iter().take(3) {
        notes.push_str(&format!("- cold start: {e}\n"));
    }
    let mut micro_table = String::new();
    if args.spawns > 0 {
        let mut m = Table::new(&[
            "this process's heap",
            "spawns",
            "handover::process (vfork-style clone)",
            "÷ same at 0 MB",
            "std Command + pre_exec (fork)",
            "÷ same at 0 MB",
            "fork ÷ handover",
        ]);
        let h0 = micro.first().and_then(|(_, h, _)| median(h));
        let f0 = micro.first().and_then(|(_, _, f)| median(f));
        for (mb, h, f) in &micro {
            m.row(vec![
                format!("{mb} MB"),
                h.len().to_string(),
                fmt_spread(h),
                fmt_ratio(median(h), h0),
                fmt_spread(f),
                fmt_ratio(median(f), f0),
                fmt_ratio(median(f), median(h)),
            ]);
        }
        micro_table = format!(
            "\nThe start alone: `spawn()` of /bin/true from this benchmark process holding \
             that much touched heap ({} per method and size per round, alternating; spawn \
             returns once the program has been executed).\n\n{}",
            args.spawns,
            m.render()
        );
        for e in micro_errors.iter().take(3) {
            notes.push_str(&format!("- spawn of /bin/true: {e}\n"));
        }
    }
    Ok(serde_json::Value::String(format!(
        "{} rounds; in each, every row once (a fresh server per sample, left alone {:?} \
         before the trigger); medians [min–max].\n\n{}{}{}",
        args.samples,
        args.settle,
        t.render(),
        micro_table,
        if notes.is_empty() {
            String::new()
        } else {
            format!("\nErrors:\n{notes}")
        }
    )))
}
