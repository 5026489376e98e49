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

use handover::child::Signal;

/// `handover --version`: the crate version, then the commit and profile
/// the binary was built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HANDOVER_BUILD"), ")");

/// Zero-downtime restarts for servers in any language.
///
/// handover binds your server's sockets, runs it as a child, and on reload
/// starts a new generation on the same sockets, waits until it is ready,
/// then stops the old one: no connection is refused or reset.
#[derive(Parser)]
#[command(
    name = "handover",
    version = VERSION,
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

    /// Check mode of `handover reexec`: read a running handover's state on
    /// stdin and say whether this binary can take it over (with the same
    /// arguments), then exit.
    #[arg(long, global = true, hide = true)]
    reexec_check: bool,

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
    /// `handover reload` starts a new generation; once it is ready (and has
    /// stayed up for --settle) the old one gets the stop signal.
    /// SIGTERM/SIGINT stop gracefully; USR1, USR2, WINCH and QUIT are
    /// forwarded to the current generation (--signal-scope).
    Run(RunArgs),
    /// Ask a running handover to reload, and wait for the outcome.
    ///
    /// Exits 0 when the new generation is ready and stayed up for the settle
    /// window (or, with --reload-signal, when the in-place reload is done);
    /// non-zero with the reason (exit code or signal, the stderr lines that
    /// look like the cause, its last lines) when it was not, in which case
    /// the old generation serves on.
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
    /// Upgrade a running handover itself, in place, without a restart.
    ///
    /// The running `handover run` re-executes the file at the path it was
    /// started from (replace the file or swap a symlink there first) in the
    /// same process: its pid, its generations, its sockets, its control and
    /// notify sockets all stay, and the generations are not signalled.
    /// Before, it runs the new binary once in a check mode; if that fails
    /// (a broken binary, a handover too old to read the state), the running
    /// handover serves on and this command exits non-zero with the reason.
    /// Requests that arrive meanwhile wait and are answered afterwards.
    Reexec(ControlArgs),
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
    /// Print a shell completion script on stdout.
    ///
    /// bash: `handover completions bash > ~/.local/share/bash-completion/completions/handover`;
    /// zsh: `handover completions zsh > DIR/_handover` with DIR on $fpath;
    /// fish: `handover completions fish > ~/.config/fish/completions/handover.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff) on stdout: `handover man | man -l -`.
    ///
    /// Without SUBCOMMAND: handover(1); with one: handover-SUBCOMMAND(1), for
    /// example `handover man run`.
    Man {
        /// The subcommand whose page to print.
        subcommand: Option<String>,
    },
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

    /// When a new generation counts as ready; repeat it to require several
    /// (all must hold): notify (it sent READY=1 to NOTIFY_SOCKET),
    /// delay:DURATION (it stayed up that long), exec:COMMAND (a shell
    /// command, run with HANDOVER_PID and HANDOVER_GENERATION of the new
    /// generation, exited 0; check that HANDOVER_PID answered, as the old
    /// generation shares the socket), or http:PATH (GET PATH on the first
    /// stream socket, http:NAME/PATH on the socket named NAME, answered 2xx
    /// by a process of the new generation: handover asks the kernel which
    /// process accepted the connection). Probes run every 200ms until ready.
    #[arg(long, value_name = "MODE", default_value = "notify")]
    ready: Vec<run::ReadyMode>,

    /// How long a new generation has to become ready before it is killed
    /// (the old one serves on).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration::parse)]
    ready_timeout: Duration,

    /// After a new generation is ready, the old one serves on this long
    /// while the new one must stay up and keep passing its probes; only
    /// then is the reload done and the old one stopped. A new generation
    /// that exits (a master whose workers fail to boot) or fails a probe
    /// within it fails the reload. 0 switches at once.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration::parse)]
    settle: Duration,

    /// How many old generations may drain at once. A reload never waits for
    /// draining generations below this; beyond it, it waits until one is
    /// gone (at the latest at its --stop-timeout).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_max_draining)]
    max_draining: usize,

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
    /// starting a new one (for servers that reload themselves in place:
    /// Puma, nginx-style HUP). The reload is done once --reload-ready holds
    /// and the program stayed up for --settle after it; it fails if the
    /// program exits or --ready-timeout passes. Unset: reloads start a new
    /// generation.
    #[arg(long, value_name = "SIGNAL", value_parser = parse_sig)]
    reload_signal: Option<Signal>,

    /// With --reload-signal: when the in-place reload is done; repeatable,
    /// the modes of --ready. notify waits for RELOADING=1 and then READY=1
    /// (systemd's Type=notify-reload contract). Unset: once the signal is
    /// sent (and the program stayed up for --settle).
    #[arg(long, value_name = "MODE", requires = "reload_signal")]
    reload_ready: Vec<run::ReadyMode>,

    /// Who gets the reload signal and the forwarded signals (USR1, USR2,
    /// WINCH, QUIT): main (the program's main process) or group (its whole
    /// process group, workers included). The stop signal always goes to the
    /// whole group.
    #[arg(long, value_name = "SCOPE", default_value = "main")]
    signal_scope: run::SignalScope,

    /// The signal generations get if handover itself dies (PR_SET_PDEATHSIG);
    /// "none" lets them run on.
    #[arg(long, value_name = "SIGNAL", default_value = "SIGTERM", value_parser = parse_sig_or_none)]
    orphan_signal: MaybeSignal,

    /// The longest wait between restarts when the program keeps crashing
    /// (the wait doubles from 100ms up to this, and starts over once a
    /// generation stayed up for 10s).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    max_backoff: Duration,

    /// Give up (exit 1) when the program had to be restarted after a crash
    /// this many times within --start-limit-interval (like systemd's
    /// StartLimitBurst=); 0 never gives up. The restarts wait 100ms, then
    /// twice as long each time (up to --max-backoff) until a generation has
    /// stayed up for 10s.
    #[arg(long, value_name = "N", default_value_t = 5)]
    start_limit_burst: u32,

    /// See --start-limit-burst (like systemd's StartLimitIntervalSec=).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    start_limit_interval: Duration,

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

    /// Do not keep the sockets in systemd's fd store. By default, under
    /// systemd (NOTIFY_SOCKET set), each socket handover binds is stored
    /// (FDSTORE=1, named handover.NAME) and taken back from LISTEN_FDS when
    /// systemd starts handover again after a crash, so connections wait
    /// instead of being refused; the unit needs FileDescriptorStoreMax=.
    #[arg(long)]
    no_fd_store: bool,

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
    s.parse::<Signal>().map_err(|e| e.to_string())
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

fn parse_max_draining(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s:?} is not a number of generations: expected 1 or more (1: a reload waits until \
             the previous old generation is gone)"
        )),
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => with_hints(e).exit(),
    };
    init_logs(cli.log_format, &cli.log_level);
    if cli.reexec_check {
        return match cli.command {
            Cmd::Run(args) => match run::reexec::check(&config(args)) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("handover: {e}");
                    ExitCode::FAILURE
                }
            },
            _ => {
                eprintln!("handover: --reexec-check goes with `handover run` only");
                ExitCode::from(2)
            }
        };
    }
    match cli.command {
        Cmd::Run(args) => cmd_run(args, cli.log_format),
        Cmd::Reload(c) => cmd_control(&c, control::Request::Reload, render_reload),
        Cmd::Reexec(c) => cmd_control(&c, control::Request::Reexec, |a| {
            format!(
                "re-executed: handover (pid {}) now runs {} ({}), serving again {}ms after the \
                 request (check {}ms); generations untouched: {}",
                a["pid"],
                a["executable"].as_str().unwrap_or("?"),
                a["version"].as_str().unwrap_or("?"),
                a["took_ms"],
                a["check_ms"],
                a["generations"]
            )
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
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "handover", &mut out);
            print_bytes(&out)
        }
        Cmd::Man { subcommand } => match man_page(subcommand.as_deref()) {
            Ok(page) => print_bytes(&page),
            Err(e) => {
                eprintln!("handover man: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Writes generated output to stdout; a closed pipe (`| head`) is not an
/// error worth a message.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handover: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The roff manual page of handover, or of one of its subcommands.
fn man_page(subcommand: Option<&str>) -> Result<Vec<u8>, String> {
    use clap::CommandFactory;
    let top = Cli::command();
    let cmd = match subcommand {
        None => top,
        Some(name) => {
            let names: Vec<String> = top
                .get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| c.get_name().to_string())
                .collect();
            let Some(sub) = top.find_subcommand(name).filter(|c| !c.is_hide_set()) else {
                return Err(format!(
                    "no subcommand {name:?}; expected one of: {}",
                    names.join(", ")
                ));
            };
            sub.clone()
                .name(format!("handover-{name}"))
                .bin_name(format!("handover {name}"))
                .version(VERSION)
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .map_err(|e| format!("cannot render the page: {e}"))?;
    Ok(out)
}

/// Adds the tips clap does not give: the `--` that `handover run` needs
/// before the program, and a nearby subcommand for a typo clap's own
/// similarity test misses (`rn` for `run`).
fn with_hints(mut err: clap::Error) -> clap::Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let invalid = |err: &clap::Error, kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let has_tip = err.get(ContextKind::Suggested).is_some()
        || matches!(
            err.get(ContextKind::SuggestedSubcommand),
            Some(ContextValue::String(_) | ContextValue::Strings(_))
        );
    let tip = match err.kind() {
        ErrorKind::UnknownArgument => invalid(&err, ContextKind::InvalidArg)
            .filter(|arg| !arg.starts_with('-'))
            .filter(|_| std::env::args().nth(1).is_some_and(|a| a == "run"))
            .map(|arg| {
                format!(
                    "put `--` before the program and its arguments: \
                     handover run [OPTIONS] -- {arg} ..."
                )
            }),
        ErrorKind::InvalidSubcommand if !has_tip => invalid(&err, ContextKind::InvalidSubcommand)
            .and_then(|typed| {
                let cmd = Cli::command();
                let names: Vec<String> = cmd
                    .get_subcommands()
                    .filter(|c| !c.is_hide_set())
                    .map(|c| c.get_name().to_string())
                    .collect();
                nearest(&typed, &names).map(|n| format!("did you mean `handover {n}`?"))
            }),
        _ => None,
    };
    if let Some(tip) = tip {
        err.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    err
}

/// The name in `names` closest to `typed` by edit distance, if it is within
/// two edits (and `typed` is not shorter than the edits it needs).
fn nearest<'a>(typed: &str, names: &'a [String]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    names
        .iter()
        .map(|n| (distance(typed, n), n))
        .filter(|(d, _)| *d <= 2 && *d < typed.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.as_str())
}

fn cmd_run(args: RunArgs, log_format: LogFormat) -> ExitCode {
    // The reason handover stops is reported once: a plain line for people,
    // or a log record when the logs are JSON (a plain line would break them).
    let report = |e: &str| match log_format {
        LogFormat::Human => eprintln!("handover: {e}"),
        LogFormat::Json => tracing::error!("{e}"),
    };
    // Before the runtime opens its own descriptors (see receive_inherited).
    let inherited = match run::receive_inherited() {
        Ok(fds) => fds,
        Err(e) => {
            report(&e);
            return ExitCode::FAILURE;
        }
    };
    // The descriptors an earlier image kept across `handover reexec`.
    let kept = match handover::reexec::Kept::from_env() {
        Ok(k) => k,
        Err(e) => {
            report(&e.to_string());
            return ExitCode::FAILURE;
        }
    };
    let config = config(args);
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
    match rt.block_on(run::run(config, inherited, kept)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

fn config(args: RunArgs) -> run::Config {
    run::Config {
        binds: args.binds,
        unix_mode: args.unix_mode,
        program: args.program,
        ready: args.ready,
        ready_timeout: args.ready_timeout,
        settle: args.settle,
        max_draining: args.max_draining,
        reload_ready: args.reload_ready,
        signal_scope: args.signal_scope,
        stop_signal: args.stop_signal,
        stop_timeout: args.stop_timeout,
        splay: args.splay,
        reload_signal: args.reload_signal,
        pid_file: args.pid_file,
        control: args.control.unwrap_or_else(control::default_path),
        orphan_signal: args.orphan_signal.0,
        max_backoff: args.max_backoff,
        start_limit_burst: args.start_limit_burst,
        start_limit_interval: args.start_limit_interval,
        watch: args.watch,
        watch_debounce: args.watch_debounce,
        stop_delay: args.stop_delay,
        fd_store: !args.no_fd_store,
    }
}

fn cmd_control(
    args: &ControlArgs,
    request: control::Request,
    render: impl Fn(&serde_json::Value) -> String,
) -> ExitCode {
    match control::request(&args.path(), request, args.timeout) {
        Ok(a) if a["ok"] == true => {
            println!("{}", render(&a).trim_end());
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

/// The line `handover reload` prints when the reload is done.
fn render_reload(a: &serde_json::Value) -> String {
    let ms = |v: &serde_json::Value| format!("{:.0}ms", v.as_f64().unwrap_or(0.0));
    if a["in_place"] == true {
        format!(
            "reloaded in place: generation {} (pid {}) after {}, ready after {}",
            a["generation"],
            a["pid"],
            a["signalled"].as_str().unwrap_or("the signal"),
            ms(&a["ready_after_ms"])
        )
    } else {
        let mut line = format!(
            "reloaded: generation {} (pid {}) ready after {}",
            a["generation"],
            a["pid"],
            ms(&a["ready_after_ms"])
        );
        if a["settled_ms"].is_number() {
            line.push_str(&format!(", then settled {}", ms(&a["settled_ms"])));
        }
        line
    }
}

fn render_status(a: &serde_json::Value) -> String {
    let mut out = format!(
        "handover pid {}  program: {}\n",
        a["pid"],
        join(&a["program"])
    );
    if a["reexecs"].as_u64().is_some_and(|n| n > 0) {
        out.push_str(&format!(
            "handover {} at {}, re-executed {} time(s)\n",
            a["version"].as_str().unwrap_or("?"),
            a["executable"].as_str().unwrap_or("?"),
            a["reexecs"]
        ));
    }
    out.push_str("sockets:\n");
    for s in a["sockets"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<12} {}\n",
            s["name"].as_str().unwrap_or(""),
            s["address"].as_str().unwrap_or("")
        ));
    }
    out.push_str("generations:\n");
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut rows = vec![[
        "GEN".to_string(),
        "PID".into(),
        "STATE".into(),
        "UPTIME".into(),
        "READY AFTER".into(),
        "CONNS".into(),
        "STATUS".into(),
    ]];
    let secs = |v: &serde_json::Value| format!("{:.1}s", v.as_f64().unwrap_or(0.0) / 1000.0);
    for g in a["generations"].as_array().into_iter().flatten() {
        let mut status = text(&g["status"]);
        if g["current"] == true {
            status.push_str(" (current)");
        }
        if g["state"] == "draining" {
            let mut note = format!(
                "{} {} ago",
                g["reason"].as_str().unwrap_or("ending"),
                secs(&g["draining_for_ms"])
            );
            if g["kill_in_ms"].is_number() {
                note.push_str(&format!(", SIGKILL in {}", secs(&g["kill_in_ms"])));
            }
            status.push_str(&format!(" ({note})"));
        }
        rows.push([
            text(&g["generation"]),
            text(&g["pid"]),
            text(&g["state"]),
            secs(&g["uptime_ms"]),
            g["ready_after_ms"]
                .as_f64()
                .map(|m| format!("{m:.0}ms"))
                .unwrap_or_else(|| "-".into()),
            text(&g["connections"]),
            status,
        ]);
    }
    out.push_str(&table(&rows));
    out.push_str(&format!(
        "starts: {}, reloads: {} ({} failed), crash restarts: {}\n",
        a["starts"], a["reloads"], a["failed_reloads"], a["restarts"]
    ));
    if let Some(l) = a["last_reload"].as_object() {
        if l["ok"] == true {
            out.push_str(&format!(
                "last reload: ok{}, took {:.0}ms\n",
                if l["in_place"] == true {
                    " (in place)"
                } else {
                    ""
                },
                l["took_ms"].as_f64().unwrap_or(0.0)
            ));
            if let Some(c) = l.get("crashed").and_then(|c| c.as_object()) {
                out.push_str(&format!(
                    "  but generation {} it made current has since died: it {} after {}\n",
                    c["generation"],
                    c["status"].as_str().unwrap_or(""),
                    secs(&c["uptime_ms"])
                ));
            }
        } else {
            out.push_str(&format!(
                "last reload: FAILED: {}\n",
                l["error"].as_str().unwrap_or("")
            ));
        }
    }
    if let Some(c) = a["crash_loop"].as_object() {
        let last = &c["last_crash"];
        out.push_str(&format!(
            "CRASH LOOP: {} crash restart(s) in a row; last: generation {} {}\n",
            c["restarts_in_a_row"],
            last["generation"],
            last["status"].as_str().unwrap_or("")
        ));
    }
    if a["queued_reloads"].as_u64().is_some_and(|n| n > 0)
        && a["draining"].as_u64() >= a["max_draining"].as_u64()
    {
        out.push_str(&format!(
            "a reload waits ({} generation(s) drain, --max-draining {})\n",
            a["draining"], a["max_draining"]
        ));
    }
    out
}

/// Left-aligned columns, two spaces apart, each as wide as its widest cell;
/// every line indented by two spaces.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (i, cell) in row.iter().enumerate() {
            line.push(' ');
            line.push_str(cell);
            if i + 1 < N {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 1));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = [
            ["GEN".to_string(), "PID".into(), "STATE".into()],
            ["1".into(), "123456".into(), "draining".into()],
            ["10".into(), "7".into(), "ready".into()],
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "  GEN  PID     STATE");
        assert_eq!(lines[1], "  1    123456  draining");
        assert_eq!(lines[2], "  10   7       ready");
    }

    #[test]
    fn status_shows_draining_generations_counters_and_a_crash_loop() {
        let a = serde_json::json!({
            "pid": 10, "program": ["srv"], "sockets": [{"name": "http", "address": "tcp://127.0.0.1:80"}],
            "generations": [
                {"generation": 1, "pid": 100, "state": "draining", "current": false,
                 "reason": "replaced", "uptime_ms": 9000.0, "ready_after_ms": 300.0,
                 "draining_for_ms": 4100.0, "kill_in_ms": 25900.0, "connections": 3,
                 "status": "serving"},
                {"generation": 2, "pid": 200, "state": "ready", "current": true,
                 "uptime_ms": 4100.0, "ready_after_ms": 250.0, "connections": null,
                 "status": "serving"},
            ],
            "starts": 4, "reloads": 2, "failed_reloads": 1, "restarts": 1,
            "last_reload": {"ok": true, "in_place": false, "took_ms": 2300.0,
                "crashed": {"generation": 2, "status": "exited with code 1", "uptime_ms": 1500.0}},
            "crash_loop": {"restarts_in_a_row": 2,
                "last_crash": {"generation": 2, "status": "exited with code 1"}},
            "queued_reloads": 1, "draining": 4, "max_draining": 4,
        });
        let text = render_status(&a);
        assert!(
            text.contains("  1    100  draining  9.0s    300ms        3      serving (replaced 4.1s ago, SIGKILL in 25.9s)"),
            "{text}"
        );
        assert!(
            text.contains("  2    200  ready     4.1s    250ms        -      serving (current)"),
            "{text}"
        );
        assert!(
            text.contains("starts: 4, reloads: 2 (1 failed), crash restarts: 1"),
            "{text}"
        );
        assert!(text.contains("last reload: ok, took 2300ms"), "{text}");
        assert!(
            text.contains(
                "but generation 2 it made current has since died: it exited with code 1 after 1.5s"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "CRASH LOOP: 2 crash restart(s) in a row; last: generation 2 exited with code 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("a reload waits (4 generation(s) drain, --max-draining 4)"),
            "{text}"
        );
    }

    #[test]
    fn reload_lines() {
        let a = serde_json::json!({"generation": 3, "pid": 42, "ready_after_ms": 604.1, "settled_ms": 2000.2});
        assert_eq!(
            render_reload(&a),
            "reloaded: generation 3 (pid 42) ready after 604ms, then settled 2000ms"
        );
        let a = serde_json::json!({"in_place": true, "generation": 1, "pid": 7, "signalled": "SIGUSR2", "ready_after_ms": 900.0});
        assert_eq!(
            render_reload(&a),
            "reloaded in place: generation 1 (pid 7) after SIGUSR2, ready after 900ms"
        );
    }

    #[test]
    fn nearest_subcommand() {
        let names: Vec<String> = ["run", "reload", "status", "stop", "verify"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(nearest("rn", &names), Some("run"));
        assert_eq!(nearest("relaod", &names), Some("reload"));
        assert_eq!(nearest("stpo", &names), Some("stop"));
        assert_eq!(nearest("x", &names), None);
        assert_eq!(nearest("deploy", &names), None);
    }
}
