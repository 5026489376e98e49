//! The `handover` command: zero-downtime restarts for servers in any
//! language.

mod demo;
mod run;
mod verify;
mod watch;

use handover_cli::{control, duration};

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use handover::child::{Signal, parse_signal};

/// Zero-downtime restarts for servers in any language.
///
/// handover binds your server's sockets, runs it as a child, and on reload
/// starts a new generation on the same sockets, waits until it is ready,
/// then stops the old one: no connection is refused or reset.
#[derive(Parser)]
#[command(
    name = "handover",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    /// Log filter (tracing syntax: error, warn, info, debug, or per module);
    /// RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run PROGRAM under handover, with zero-downtime reloads.
    ///
    /// The program gets the sockets as fds 3.. with LISTEN_FDS, LISTEN_PID
    /// (its own pid) and LISTEN_FDNAMES set (the systemd socket activation
    /// protocol), and NOTIFY_SOCKET pointing at handover. SIGHUP or
    /// `handover reload` starts a new generation; once it is ready the old
    /// one gets the stop signal. SIGTERM/SIGINT stop gracefully; USR1, USR2,
    /// WINCH and QUIT are forwarded to the current generation.
    Run(RunArgs),
    /// Ask a running handover to reload, and wait for the outcome.
    ///
    /// Exits 0 when the new generation is ready; non-zero with the reason
    /// (exit code or signal, last lines of its stderr) when it was not, in
    /// which case the old generation serves on.
    Reload(ControlArgs),
    /// Show generations, sockets and the last reload.
    Status {
        #[command(flatten)]
        control: ControlArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running handover to stop gracefully, and wait until it has.
    Stop(ControlArgs),
    /// Prove zero downtime: load a server while reloading it, count every
    /// failed request.
    Verify(verify::VerifyArgs),
    /// Run a built-in server under handover, reload it under load, and print
    /// what happened. Needs nothing installed.
    Demo(demo::DemoArgs),
    /// The built-in server the demo runs (speaks the socket activation and
    /// notify protocols).
    #[command(hide = true)]
    DemoServer(demo::ServerArgs),
}

#[derive(Args)]
struct RunArgs {
    /// A socket to bind and pass on, as [NAME=]ADDRESS: tcp://HOST:PORT
    /// (IPv4 or [IPv6]), udp://HOST:PORT or unix:PATH. Repeatable; the
    /// program gets them in this order, named NAME (default "unknown") in
    /// LISTEN_FDNAMES. A socket handover itself received from systemd under
    /// NAME is passed on instead of bound.
    #[arg(long = "bind", value_name = "[NAME=]ADDRESS")]
    binds: Vec<run::Bind>,

    /// Permission bits of Unix socket files, in octal.
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    unix_mode: u32,

    /// When a new generation counts as ready: notify (it sent READY=1 to
    /// NOTIFY_SOCKET), delay:DURATION (it stayed up that long), or
    /// exec:COMMAND (a shell command, run with HANDOVER_PID set to the new
    /// generation's pid, exited 0; retried until the ready timeout).
    #[arg(long, value_name = "MODE", default_value = "notify")]
    ready: run::ReadyMode,

    /// How long a new generation has to become ready before it is killed
    /// (the old one serves on).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration::parse)]
    ready_timeout: Duration,

    /// The signal that asks a generation to stop (it should finish its
    /// in-flight requests, then exit).
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_sig)]
    stop_signal: Signal,

    /// How long a generation has to exit after the stop signal before its
    /// whole process group gets SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    stop_timeout: Duration,

    /// Wait a random time in [0, DURATION) before sending stop and reload
    /// signals (spreads load when many servers reload at once).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = duration::parse)]
    splay: Duration,

    /// Reload by sending this signal to the current generation instead of
    /// starting a new one (for servers that reload their configuration
    /// themselves). Unset: reloads start a new generation.
    #[arg(long, value_name = "SIGNAL", value_parser = parse_sig)]
    reload_signal: Option<Signal>,

    /// The signal generations get if handover itself dies (PR_SET_PDEATHSIG);
    /// "none" lets them run on.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_sig_or_none)]
    orphan_signal: MaybeSignal,

    /// The longest wait between restarts when the program keeps crashing
    /// (the wait doubles from 100ms up to this).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    max_backoff: Duration,

    /// Write handover's own pid here (it never changes across reloads).
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,

    /// The control socket for `handover reload`, `status` and `stop` (mode
    /// 0600). Default: $XDG_RUNTIME_DIR/handover/control.sock, else
    /// /tmp/handover-UID/control.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// Reload when this file or directory changes (in-place writes,
    /// rename-over saves, Kubernetes ConfigMap symlink swaps; a directory
    /// is watched with everything below it). Repeatable.
    #[arg(long = "watch", value_name = "PATH")]
    watch: Vec<PathBuf>,

    /// With --watch: reload once no change came for this long (a burst of
    /// changes is one reload).
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = duration::parse, requires = "watch")]
    watch_debounce: Duration,

    /// On SIGTERM, SIGINT or `handover stop`, keep serving this long before
    /// stopping the generations (for load balancers that still send traffic
    /// for a moment after a stop began, like Kubernetes endpoint removal). A
    /// second SIGTERM or SIGINT cuts it short.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = duration::parse)]
    stop_delay: Duration,

    /// The program to run, and its arguments.
    #[arg(required = true, last = true, value_name = "PROGRAM")]
    program: Vec<OsString>,
}

#[derive(Args)]
struct ControlArgs {
    /// The control socket of the handover to talk to. Default:
    /// $XDG_RUNTIME_DIR/handover/control.sock, else
    /// /tmp/handover-UID/control.sock.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration::parse)]
    timeout: Duration,
}

impl ControlArgs {
    fn path(&self) -> PathBuf {
        self.control.clone().unwrap_or_else(control::default_path)
    }
}

fn parse_sig(s: &str) -> Result<Signal, String> {
    parse_signal(s).map_err(|e| e.to_string())
}

/// A signal, or none (clap gives `Option` fields a meaning of their own).
#[derive(Clone, Copy, Debug)]
struct MaybeSignal(Option<Signal>);

fn parse_sig_or_none(s: &str) -> Result<MaybeSignal, String> {
    if s.eq_ignore_ascii_case("none") {
        Ok(MaybeSignal(None))
    } else {
        parse_sig(s).map(|s| MaybeSignal(Some(s)))
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not a file mode: expected octal digits like 600 or 660"))
}

fn init_logs(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format, &cli.log_level);
    match cli.command {
        Cmd::Run(args) => cmd_run(args),
        Cmd::Reload(c) => cmd_control(&c, control::Request::Reload, |a| {
            if let Some(sig) = a["signalled"].as_str() {
                format!("reloaded: sent {sig} to pid {}", a["pid"])
            } else {
                format!(
                    "reloaded: generation {} (pid {}) ready after {}ms",
                    a["generation"], a["pid"], a["ready_after_ms"]
                )
            }
        }),
        Cmd::Status { control: c, json } => cmd_control(&c, control::Request::Status, |a| {
            if json {
                serde_json::to_string_pretty(a).unwrap_or_default()
            } else {
                render_status(a)
            }
        }),
        Cmd::Stop(c) => cmd_control(&c, control::Request::Stop, |_| "stopped".to_string()),
        Cmd::Verify(args) => verify::main(args),
        Cmd::Demo(args) => demo::main(args),
        Cmd::DemoServer(args) => demo::server(args),
    }
}

fn cmd_run(args: RunArgs) -> ExitCode {
    // Before the runtime opens its own descriptors (see receive_inherited).
    let inherited = match run::receive_inherited() {
        Ok(fds) => fds,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("handover: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = run::Config {
        binds: args.binds,
        unix_mode: args.unix_mode,
        program: args.program,
        ready: args.ready,
        ready_timeout: args.ready_timeout,
        stop_signal: args.stop_signal,
        stop_timeout: args.stop_timeout,
        splay: args.splay,
        reload_signal: args.reload_signal,
        pid_file: args.pid_file,
        control: args.control.unwrap_or_else(control::default_path),
        orphan_signal: args.orphan_signal.0,
        max_backoff: args.max_backoff,
        watch: args.watch,
        watch_debounce: args.watch_debounce,
        stop_delay: args.stop_delay,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("handover: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run::run(config, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("handover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_control(
    args: &ControlArgs,
    request: control::Request,
    render: impl Fn(&serde_json::Value) -> String,
) -> ExitCode {
    match control::request(&args.path(), request, args.timeout) {
        Ok(a) if a["ok"] == true => {
            println!("{}", render(&a));
            ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!("handover: {}", a["error"].as_str().unwrap_or("failed"));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("handover: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render_status(a: &serde_json::Value) -> String {
    let mut out = format!(
        "handover pid {}  program: {}\n",
        a["pid"],
        join(&a["program"])
    );
    out.push_str("sockets:\n");
    for s in a["sockets"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<12} {}\n",
            s["name"].as_str().unwrap_or(""),
            s["address"].as_str().unwrap_or("")
        ));
    }
    out.push_str("generations:\n  GEN   PID      STATE     UPTIME      READY AFTER  STATUS\n");
    for g in a["generations"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<5} {:<8} {:<9} {:<11} {:<12} {}{}\n",
            g["generation"],
            g["pid"],
            g["state"].as_str().unwrap_or(""),
            format!("{:.1}s", g["uptime_ms"].as_f64().unwrap_or(0.0) / 1000.0),
            g["ready_after_ms"]
                .as_f64()
                .map(|m| format!("{m:.0}ms"))
                .unwrap_or_else(|| "-".into()),
            g["status"].as_str().unwrap_or(""),
            if g["current"] == true {
                "  (current)"
            } else {
                ""
            },
        ));
    }
    out.push_str(&format!(
        "reloads: {} ({} failed), crash restarts: {}\n",
        a["reloads"], a["failed_reloads"], a["restarts"]
    ));
    if let Some(l) = a["last_reload"].as_object() {
        if l["ok"] == true {
            out.push_str(&format!("last reload: ok, took {}ms\n", l["took_ms"]));
        } else {
            out.push_str(&format!(
                "last reload: FAILED: {}\n",
                l["error"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

fn join(v: &serde_json::Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}
