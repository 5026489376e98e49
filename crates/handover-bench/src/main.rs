//! `handover-bench`: the benchmark suite of handover (issue 7).
//!
//! Every subcommand prints a markdown table (or JSON with `--json`) whose
//! figures are side-by-side comparisons or ratios from one run on one
//! machine; `bench/run-all.sh` regenerates them all into BENCHMARKS.md.

mod common;
mod failures;
mod keepalive;
mod latency;
mod machine;
mod reexec;
mod scale;
mod spawn_cost;
mod supervisor;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use common::{BinArgs, Bins};

/// The benchmark suite of handover.
#[derive(Parser)]
#[command(name = "handover-bench")]
struct Cli {
    #[command(flatten)]
    bins: BinArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Failed requests during restarts under load (figure 1).
    Failures(failures::FailuresArgs),
    /// Restart latency against a cold start and against ecdysis (figure 2).
    Latency(latency::LatencyArgs),
    /// Reload latency with 1 to 1,000 listening sockets (figure 3a).
    Sockets(scale::SocketsArgs),
    /// Reload with 10,000 idle keep-alive connections on the old generation (figure 3b).
    Idle(scale::IdleArgs),
    /// The supervisor's memory and CPU, idle and during reloads (figure 6).
    Supervisor(supervisor::SupervisorArgs),
    /// Upgrade latency and the old process's longest stall with 0, 1 and 4 GB of heap (figure 7).
    Spawn(spawn_cost::SpawnArgs),
    /// `handover reexec` against a status request and a reload (figure 8).
    Reexec(reexec::ReexecArgs),
    /// Keep-alive connections across upgrades: `Connection: close` against hand-over (figure 9).
    Keepalive(keepalive::KeepaliveArgs),
    /// Describe this machine (CPUs, CPU model, kernel, rustc).
    Machine,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    common::init_process();
    let bins = match Bins::find(&cli.bins) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("handover-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match &cli.command {
        Cmd::Failures(a) => failures::run(&bins, a),
        Cmd::Latency(a) => latency::run(&bins, a),
        Cmd::Sockets(a) => scale::sockets(&bins, a),
        Cmd::Idle(a) => scale::idle(&bins, a),
        Cmd::Supervisor(a) => supervisor::run(&bins, a),
        Cmd::Spawn(a) => spawn_cost::run(&bins, a),
        Cmd::Reexec(a) => reexec::run(&bins, a),
        Cmd::Keepalive(a) => keepalive::run(&bins, a),
        Cmd::Machine => machine::run(&bins.python),
    };
    match result {
        Ok(serde_json::Value::String(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("handover-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
