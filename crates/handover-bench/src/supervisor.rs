//! Figure 6: what the `handover run` supervisor itself costs: resident
//! memory (VmRSS) and CPU time (utime + stime) while idle and during
//! back-to-back reloads, next to the server it supervises.

use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::common::*;

#[derive(Args, Debug)]
pub struct SupervisorArgs {
    /// Length of each idle phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub idle: Duration,
    /// Reloads in each reload phase.
    #[arg(long, default_value_t = 100)]
    pub reloads: usize,
    /// Rounds of (idle, reloads).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    #[serde(skip)]
    at: Instant,
    rss_kib: u64,
    hwm_kib: u64,
    /// Supervisor's own utime + stime, in ms.
    cpu_ms: f64,
    /// utime + stime of its reaped children (the generations), in ms.
    children_cpu_ms: f64,
}

fn sample(pid: u32, tick_ms: f64) -> Result<Sample, String> {
    let (own, children) = cpu_ticks(pid).ok_or("cannot read /proc/PID/stat")?;
    Ok(Sample {
        at: Instant::now(),
        rss_kib: status_kib(pid, "VmRSS").ok_or("cannot read VmRSS")?,
        hwm_kib: status_kib(pid, "VmHWM").ok_or("cannot read VmHWM")?,
        cpu_ms: own as f64 * tick_ms,
        children_cpu_ms: children as f64 * tick_ms,
    })
}

#[derive(Debug, Serialize)]
struct Phase {
    round: usize,
    what: String,
    reloads: usize,
    wall_ms: f64,
    cpu_ms: f64,
    children_cpu_ms: f64,
    rss_start_kib: u64,
    rss_end_kib: u64,
    rss_peak_kib: u64,
    /// VmRSS of the current generation (demo-server) at the end.
    server_rss_kib: Option<u64>,
}

fn phase(
    round: usize,
    what: String,
    reloads: usize,
    a: Sample,
    b: Sample,
    peak: u64,
    server_rss: Option<u64>,
) -> Phase {
    Phase {
        round,
        what,
        reloads,
        wall_ms: ms(b.at - a.at),
        cpu_ms: b.cpu_ms - a.cpu_ms,
        children_cpu_ms: b.children_cpu_ms - a.children_cpu_ms,
        rss_start_kib: a.rss_kib,
        rss_end_kib: b.rss_kib,
        rss_peak_kib: peak.max(a.rss_kib).max(b.rss_kib),
        server_rss_kib: server_rss,
    }
}

pub fn run(bins: &Bins, args: &SupervisorArgs) -> Result<serde_json::Value, String> {
    bins.check(&[ServerKind::Demo])?;
    let tick_ms = 1000.0 / clock_ticks_per_second() as f64;
    let sup = Supervisor::start(
        bins,
        &["tcp://127.0.0.1:0".to_string()],
        &["--stop-timeout", "30s"],
        ServerKind::Demo.activated_command(bins, Duration::from_secs(2)),
        "supervisor",
    )?;
    let pid = sup.proc.pid;
    thread::sleep(Duration::from_millis(500));
    let start = sample(pid, tick_ms)?;
    let server_rss = |sup: &Supervisor| sup.current_pid().ok().and_then(|p| status_kib(p, "VmRSS"));
    let mut phases = Vec::new();
    for round in 1..=args.rounds.max(1) {
        eprintln!("supervisor: round {round}: idle for {:?}", args.idle);
        let a = sample(pid, tick_ms)?;
        let mut peak = a.rss_kib;
        let deadline = Instant::now() + args.idle;
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(500).min(deadline - Instant::now()));
            // Reading /proc costs the supervisor nothing.
            peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
        }
        let b = sample(pid, tick_ms)?;
        phases.push(phase(
            round,
            format!("idle {:.0} s", args.idle.as_secs_f64()),
            0,
            a,
            b,
            peak,
            server_rss(&sup),
        ));

        eprintln!("supervisor: round {round}: {} reloads", args.reloads);
        let a = sample(pid, tick_ms)?;
        let mut peak = a.rss_kib;
        for _ in 0..args.reloads {
            sup.reload()?;
            peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
        }
        // The last old generation is still draining: wait until only one is left.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let s = sup.status()?;
            if s["generations"].as_array().map_or(0, Vec::len) <= 1 {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let b = sample(pid, tick_ms)?;
        phases.push(phase(
            round,
            format!("{} reloads", args.reloads),
            args.reloads,
            a,
            b,
            peak,
            server_rss(&sup),
        ));
    }
    let end = sample(pid, tick_ms)?;
    if args.json {
        return Ok(serde_json::json!({
            "figure": "supervisor",
            "clock_tick_ms": tick_ms,
            "start": start,
            "end": end,
            "phases": phases,
        }));
    }
    let mut t = Table::new(&[
        "round",
        "phase",
        "wall",
        "supervisor CPU (utime+stime)",
        "CPU ÷ wall",
        "CPU per reload",
        "generations' CPU (reaped children)",
        "supervisor VmRSS start → end (peak)",
        "current generation's VmRSS",
    ]);
    for p in &phases {
        t.row(vec![
            p.round.to_string(),
            p.what.clone(),
            fmt_ms(Some(p.wall_ms)),
            fmt_ms(Some(p.cpu_ms)),
            format!("{:.2}%", 100.0 * p.cpu_ms / p.wall_ms.max(1e-9)),
            if p.reloads > 0 {
                fmt_ms(Some(p.cpu_ms / p.reloads as f64))
            } else {
                "-".into()
            },
            if p.reloads > 0 {
                fmt_ms(Some(p.children_cpu_ms))
            } else {
                "-".into()
            },
            format!(
                "{} → {} KiB ({} KiB)",
                p.rss_start_kib, p.rss_end_kib, p.rss_peak_kib
            ),
            p.server_rss_kib.map_or("-".into(), |k| format!("{k} KiB")),
        ]);
    }
    Ok(serde_json::Value::String(format!(
        "`handover run` supervising demo-server; /proc/PID/stat CPU times have a resolution of \
         {tick_ms:.0} ms (a clock tick). Supervisor VmRSS at start {} KiB, at the end {} KiB \
         (VmHWM {} KiB).\n\n{}",
        start.rss_kib,
        end.rss_kib,
        end.hwm_kib,
        t.render()
    )))
}
