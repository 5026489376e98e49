//! Figure 1: failed requests during reloads under load.
//!
//! Each variant (a server and a way of restarting it) is loaded by N clients
//! of `handover-verify` in one connection mode while it is restarted R
//! times; every request that did not get a complete 2xx answer is counted by
//! kind. Variants run one after the other, in rounds (A, B, C, A, B, C, ...),
//! each round doing its share of the restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use handover_verify::{FailureKind, Load, LoadConfig, Mode};
use serde::Serialize;

use crate::common::*;

#[derive(Args, Debug)]
pub struct FailuresArgs {
    /// Restarts per variant and connection mode (split over the rounds).
    #[arg(long, default_value_t = 50)]
    pub reloads: usize,
    /// Rounds over all variants (alternating order A, B, ..., A, B, ...).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Pause after each restart (once the new process answers).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Concurrent clients of the load.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Variants, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "upgrade-http,upgrade-http-naive,run-demo,demo-naive,run-python,python-naive,ecdysis"
    )]
    pub variants: Vec<Variant>,
    /// Connection modes, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "new-connection,keep-alive"
    )]
    pub modes: Vec<ModeArg>,
    /// Idle grace of keep-alive connections while a server drains.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub idle_grace: Duration,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeArg {
    NewConnection,
    KeepAlive,
}

impl ModeArg {
    fn mode(self) -> Mode {
        match self {
            ModeArg::NewConnection => Mode::NewConnection,
            ModeArg::KeepAlive => Mode::KeepAlive,
        }
    }

    fn label(self) -> &'static str {
        match self {
            ModeArg::NewConnection => "new connection per request",
            ModeArg::KeepAlive => "keep-alive",
        }
    }
}

/// A server and how it is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// upgrade_http re-executing itself on SIGHUP (handover's `Upgrader`).
    UpgradeHttp,
    /// upgrade_http: SIGTERM, wait, start again binding the port.
    UpgradeHttpNaive,
    /// `handover run` + demo-server, reloaded on the control socket.
    RunDemo,
    /// demo-server: SIGTERM, wait, start again on a fresh socket.
    DemoNaive,
    /// `handover run` + py_server.py, reloaded on the control socket.
    RunPython,
    /// py_server.py: SIGTERM, wait, start again binding the port.
    PythonNaive,
    /// ecdysis_server re-executing itself on SIGHUP (the ecdysis crate).
    Ecdysis,
}

impl Variant {
    pub fn kind(self) -> ServerKind {
        match self {
            Variant::UpgradeHttp | Variant::UpgradeHttpNaive => ServerKind::UpgradeHttp,
            Variant::RunDemo | Variant::DemoNaive => ServerKind::Demo,
            Variant::RunPython | Variant::PythonNaive => ServerKind::Python,
            Variant::Ecdysis => ServerKind::Ecdysis,
        }
    }

    fn restart_label(self) -> &'static str {
        match self {
            Variant::UpgradeHttp => "handover `Upgrader`, SIGHUP",
            Variant::RunDemo | Variant::RunPython => "`handover run`, control socket",
            Variant::UpgradeHttpNaive | Variant::DemoNaive | Variant::PythonNaive => {
                "naive: SIGTERM, wait, start"
            }
            Variant::Ecdysis => "ecdysis crate, SIGHUP",
        }
    }

    /// Restarted by a mechanism meant to lose nothing (handover or ecdysis).
    fn is_graceful(self) -> bool {
        !matches!(
            self,
            Variant::UpgradeHttpNaive | Variant::DemoNaive | Variant::PythonNaive
        )
    }
}

/// A running server of some variant.
enum Target {
    SelfUp(SelfUpgrading),
    Run(Supervisor),
    Naive(Naive),
}

impl Target {
    fn start(bins: &Bins, v: Variant, idle_grace: Duration) -> Result<Target, String> {
        Ok(match v {
            Variant::UpgradeHttp | Variant::Ecdysis => {
                Target::SelfUp(SelfUpgrading::start(bins, v.kind(), idle_grace)?)
            }
            Variant::RunDemo | Variant::RunPython => {
                let program = v.kind().activated_command(bins, idle_grace);
                Target::Run(Supervisor::start(
                    bins,
                    &["tcp://127.0.0.1:0".to_string()],
                    &["--stop-timeout", "60s"],
                    program,
                    &format!("run-{}", v.kind().name()),
                )?)
            }
            Variant::UpgradeHttpNaive | Variant::DemoNaive | Variant::PythonNaive => {
                Target::Naive(Naive::start(bins, v.kind(), idle_grace)?)
            }
        })
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Target::SelfUp(s) => s.addr,
            Target::Run(s) => s.addr,
            Target::Naive(s) => s.addr,
        }
    }

    /// Restarts; returns when the restart was done (self-upgrade: the pid
    /// file names the new process; handover run: the reload was answered;
    /// naive: the new process was started).
    fn restart(&mut self) -> Result<(), String> {
        match self {
            Target::SelfUp(s) => s.upgrade(Duration::from_secs(60)).map(|_| ()),
            Target::Run(s) => s.reload().map(|_| ()),
            Target::Naive(s) => s.restart().map(|_| ()),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Outcome {
    pub variant: Option<Variant>,
    pub server: &'static str,
    pub restart: &'static str,
    pub mode: Option<ModeArg>,
    pub reloads: usize,
    pub new_pid_answered: usize,
    pub trigger_errors: Vec<String>,
    pub requests: u64,
    pub ok: u64,
    pub failures: BTreeMap<FailureKind, u64>,
    pub reloads_with_failures: usize,
    /// Trigger to the first answer from a new pid, per restart (ms).
    pub answered_ms: Vec<f64>,
    /// Descriptions of the first failed requests.
    pub failure_samples: Vec<String>,
}

impl Outcome {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

fn run_one(
    bins: &Bins,
    v: Variant,
    mode: ModeArg,
    reloads: usize,
    args: &FailuresArgs,
    out: &mut Outcome,
) -> Result<(), String> {
    let mut target = Target::start(bins, v, args.idle_grace)?;
    let mut cfg = LoadConfig::new(target.addr(), mode.mode());
    cfg.connections = args.connections;
    let load = Load::start(cfg).map_err(|e| e.to_string())?;
    if !load.wait_for_ok(20, Duration::from_secs(10)) {
        return Err(format!("{}: the load gets no answers", v.kind().name()));
    }
    for _ in 0..reloads {
        let before = load.pids_seen();
        let failed_before = load.snapshot().failures_total();
        let t0 = Instant::now();
        out.reloads += 1;
        if let Err(e) = target.restart() {
            out.trigger_errors.push(e);
        }
        if load
            .wait_for_new_pid(&before, Duration::from_secs(30))
            .is_some()
        {
            out.new_pid_answered += 1;
            out.answered_ms.push(ms(t0.elapsed()));
        }
        thread::sleep(args.interval);
        if load.snapshot().failures_total() > failed_before {
            out.reloads_with_failures += 1;
        }
    }
    let report = load.stop();
    drop(target);
    out.requests += report.requests;
    out.ok += report.ok;
    for (k, n) in &report.failures {
        *out.failures.entry(*k).or_default() += n;
    }
    for s in report
        .failure_samples
        .iter()
        .take(10 - out.failure_samples.len().min(10))
    {
        out.failure_samples.push(s.to_string());
    }
    Ok(())
}

pub fn run(bins: &Bins, args: &FailuresArgs) -> Result<serde_json::Value, String> {
    let kinds: Vec<ServerKind> = args.variants.iter().map(|v| v.kind()).collect();
    bins.check(&kinds)?;
    let rounds = args.rounds.max(1);
    let mut outcomes: BTreeMap<(ModeArg, Variant), Outcome> = BTreeMap::new();
    for round in 0..rounds {
        // Spread the reloads over the rounds; earlier rounds take the rest.
        let share = args.reloads / rounds + usize::from(round < args.reloads % rounds);
        for &mode in &args.modes {
            for &v in &args.variants {
                eprintln!(
                    "failures: round {}/{rounds}: {} ({}), {}: {share} restarts",
                    round + 1,
                    v.kind().name(),
                    v.restart_label(),
                    mode.label()
                );
                let out = outcomes.entry((mode, v)).or_insert_with(|| Outcome {
                    variant: Some(v),
                    server: v.kind().name(),
                    restart: v.restart_label(),
                    mode: Some(mode),
                    ..Default::default()
                });
                run_one(bins, v, mode, share, args, out)?;
            }
        }
    }
    let outcomes: Vec<Outcome> = outcomes.into_values().collect();
    if args.json {
        return Ok(serde_json::json!({
            "figure": "failures",
            "reloads": args.reloads,
            "rounds": rounds,
            "connections": args.connections,
            "interval_ms": ms(args.interval),
            "results": outcomes,
        }));
    }
    let mut t = Table::new(&[
        "server",
        "restarted by",
        "connections",
        "restarts (new pid answered)",
        "requests ok",
        "failed",
        "refused / reset / short / timeout / other",
        "restarts with failures",
        "trigger → new pid answers, median [min–max]",
    ]);
    for o in &outcomes {
        let k = |kind| o.failures.get(&kind).copied().unwrap_or(0).to_string();
        let failed = o.failed();
        t.row(vec![
            o.server.to_string(),
            o.restart.to_string(),
            o.mode.map(|m| m.label()).unwrap_or("").to_string(),
            format!("{} ({})", o.reloads, o.new_pid_answered),
            o.ok.to_string(),
            if failed == 0 {
                "0".to_string()
            } else {
                format!("**{failed}**")
            },
            [
                FailureKind::Refused,
                FailureKind::Reset,
                FailureKind::ShortResponse,
                FailureKind::Timeout,
                FailureKind::Other,
            ]
            .into_iter()
            .map(k)
            .collect::<Vec<_>>()
            .join(" / ")
                + &if o.failures.contains_key(&FailureKind::BadStatus) {
                    format!(" (+{} bad status)", k(FailureKind::BadStatus))
                } else {
                    String::new()
                },
            o.reloads_with_failures.to_string(),
            fmt_spread(&o.answered_ms),
        ]);
    }
    let mut text = format!(
        "{} restarts per row ({} rounds, alternating), {} clients, {} pause after each restart.\n\n{}",
        args.reloads,
        rounds,
        args.connections,
        fmt_ms(Some(ms(args.interval))),
        t.render()
    );
    for o in &outcomes {
        let graceful = o.variant.is_some_and(Variant::is_graceful);
        if (graceful && o.failed() > 0) || !o.trigger_errors.is_empty() {
            text.push_str(&format!(
                "\n{} ({}, {}): {} failed requests, {} trigger errors; first failures:\n",
                o.server,
                o.restart,
                o.mode.map(|m| m.label()).unwrap_or(""),
                o.failed(),
                o.trigger_errors.len()
            ));
            for s in &o.failure_samples {
                text.push_str(&format!("    {s}\n"));
            }
            for e in o.trigger_errors.iter().take(5) {
                text.push_str(&format!("    trigger: {e}\n"));
            }
        }
    }
    Ok(serde_json::Value::String(text))
}
