//! Supervises one command: SIGHUP is forwarded as a reload, Ctrl-C (or
//! SIGTERM) stops it, and its own exit ends this program with its code.
//!
//! ```text
//! cargo run -p handover --example child_supervise -- \
//!     sh -c 'trap "echo reloading" HUP; trap "echo bye; exit 0" TERM; while :; do sleep 1; done'
//! kill -HUP <pid of child_supervise>     # the child prints "reloading"
//! ^C                                     # the child prints "bye"; both exit
//! ```
//!
//! `RUST_LOG=handover=debug` shows every state change of the child.

use handover::process::Command;
use std::time::Duration;

use handover::child::{ChildConfig, ExitStatus, Report, Signal};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("handover=info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: child_supervise PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let mut cmd = Command::new(program);
    cmd.args(args);

    let config = ChildConfig::new()
        .kill_timeout(Duration::from_secs(10))
        .splay(Duration::from_millis(100))
        // If this supervisor is killed, so is the child.
        .death_signal(Some(Signal::TERM));
    let child = match config.spawn(cmd) {
        Ok(child) => child,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(127);
        }
    };

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut exit = child.exit();
    let exit = loop {
        tokio::select! {
            report = &mut exit => match report {
                Report::Exited(exit) => break exit,
                // Only a stop suppresses the report, and only the arms below stop.
                _ => unreachable!("not stopped"),
            },
            _ = hup.recv() => {
                if let Err(e) = child.reload_async().await {
                    eprintln!("{e}");
                }
            }
            _ = tokio::signal::ctrl_c() => break child.stop_async().await,
            _ = term.recv() => break child.stop_async().await,
        }
    };
    eprintln!("{} {exit}", child.label());
    std::process::exit(match exit.status {
        ExitStatus::Code(code) => code,
        // Ended by the signal we sent: a clean stop.
        ExitStatus::Signaled { .. } if exit.requested => 0,
        ExitStatus::Signaled { signal, .. } => 128 + signal.as_raw(),
        _ => 1,
    });
}
