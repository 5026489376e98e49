//! `handover run`: supervise a server in any language and reload it with zero
//! downtime.
//!
//! handover binds the sockets (or takes them from systemd) and keeps them for
//! its whole life. Each generation of the program gets them as fds 3.. with
//! `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`, and handover's own notify
//! socket as `NOTIFY_SOCKET`. A reload starts a new generation on the same
//! sockets, waits until it is ready, then stops the old one; if the new one
//! exits or is not ready in time, it is stopped and the old one serves on.
//! Because the sockets never close, no connection is refused or reset: while
//! no generation accepts (say, during a crash restart), connections wait in
//! the kernel's accept queue.
//!
//! # Shape
//!
//! | module | concern |
//! |---|---|
//! | `machine` | the state machine: every decision, no I/O, unit-tested arm by arm |
//! | `driver` | the one task that owns the machine: feeds it events, carries out its actions |
//! | `reaper` | the one reaper: waits for every child (generations, probes, orphans) |
//! | `process` | starting generations and readiness probes (exec:, http:); their stderr |
//! | `procfs` | which process holds a connection (`/proc`, `sock_diag`): http: probes, connection counts |
//! | `signals` | signals as events, one per delivery |
//! | `status` | the `status` answer |
//! | `sockets`, `config` | the listening sockets (and systemd's fd store); the options |
//! | `reexec` | `handover reexec`: the state handed to a re-executed image, the check mode, the exec, the takeover |
//!
//! # The state machine
//!
//! Each generation is in one of these states ([`machine::GenState`]); the
//! events that move it are in brackets.
//!
//! ```text
//!  start: first | reload | crash restart      [spawn failed]
//!  -> spawn (and the probes: exec:, http:) ------------------> gone (start failed)
//!          |
//!          v                  [main process exited | ready timeout]
//!      Starting ------------------------------------------------------+
//!          | [every --ready condition holds: READY=1, probes passed,   |
//!          |  delays over]                                             |
//!          |-- settle > 0 and a generation is current --> Settling     |
//!          |      (the old one serves on;      | [main process exited  |
//!          |       http: probes go on)         |  | http: probe failed]|
//!          |                                   +---------------------->+
//!          |                   [window over | the current one crashed] |
//!          v                                   v                       v
//!      Current <-------------------------------+            Draining (failed)
//!          | [a newer one became current] --------------> Draining (replaced)
//!          | [its main process exited] ------------------> Draining (crashed)
//!  any state [handover stops] ----------------------------> Draining (stopping)
//!
//!  Draining: the stop signal and SIGCONT to the process group (after a random
//!  splay, when replaced or stopping), SIGKILL at --stop-timeout and every
//!  second after that; [a second SIGTERM/SIGINT while stopping] SIGKILL now.
//!          | [main process reaped] + [group empty] + [stderr closed | 200 ms]
//!          v
//!      gone (removed from the list): failed -> its reload is answered with
//!      the reason and the stderr tail; replaced -> a queued reload may start;
//!      stopping and none left -> handover exits.
//! ```
//!
//! Around the generations ([`machine::Machine`]):
//!
//! - **phase**: `Running` → `Stopping` (SIGTERM, SIGINT, `handover stop`, or
//!   the start limit: every generation drains) → `Exited` once none is left
//!   (`handover stop` is answered then).
//! - **the start in flight** (at most one) and **queued reloads**: a reload
//!   that arrives during a start (or its settle window) is answered by the
//!   next start. A reload never waits for old generations to drain unless
//!   `--max-draining` of them already do (each keeps its own stop deadline);
//!   then it starts when one is gone.
//! - **the in-place reload in flight** ([`machine::InPlace`], with
//!   `--reload-signal`): the current generation gets the signal (after the
//!   splay, to its main process or group: `--signal-scope`) and stays
//!   `Current`; the reload is done once `--reload-ready` holds (notify:
//!   `RELOADING=1` newer than the signal, then `READY=1`) and the settle
//!   window passed; it fails at `--ready-timeout`, when an http: probe fails
//!   while it settles, or when the process dies (answered once it is gone,
//!   with its stderr; a crash restart follows as for any crash).
//! - **crash restarts**: when the current generation's main process dies
//!   and no start is in flight, a restart is due after a backoff (100 ms,
//!   doubling up to `--max-backoff`); the backoff resets once a generation
//!   stayed current for 10 s; more than `--start-limit-burst` restarts
//!   within `--start-limit-interval` make handover give up (exit 1).
//!   A crash while a reload is in flight schedules nothing: the new
//!   generation takes over when ready.
//!
//! Every timer is a deadline in the state (`Machine::next_deadline`), so a
//! test drives the machine with made-up times, and the state (pids, times on
//! `CLOCK_MONOTONIC`, counters, stderr tails and cause lines, readiness
//! conditions met, ids of waiting clients) serializes with serde.
//!
//! Probes report every run (`Event::ProbeResult`): pass, fail, or unsure
//! (an http: probe whose connection another generation accepted). An exec:
//! probe's first pass is final: it cannot tell the old generation's answer
//! from a failure. An http: probe connects to the listening socket, waits
//! until some process accepts, asks the kernel (`sock_diag`) for the
//! accepted socket's inode and looks for it among the fds of the new
//! generation's process group (`/proc`): only then does it send its request,
//! so only the new generation's answer counts.
//!
//! Room for what comes next: a re-executed supervisor that takes the
//! serialized machine over and registers its generations' pids with a new
//! reaper.
//!
//! # Processes
//!
//! handover spawns every process itself (not through the library's `child`
//! module, whose per-child threads reap their own child): one reaper
//! ([`reaper`]) owns `waitpid(-1)`, so no status is ever lost to a second
//! reaper, and every spawn happens on the main thread (the death signal,
//! `PR_SET_PDEATHSIG`, fires when the forking thread exits). handover makes
//! itself a child subreaper: processes a generation leaves behind are
//! re-parented to handover, reaped by it, and stopped with their group.
//! A generation ends as a whole: its process group gets the stop signal and
//! then SIGKILL, whether its main process crashed or was asked to stop.

mod config;
mod driver;
mod machine;
mod process;
mod procfs;
mod reaper;
pub mod reexec;
mod signals;
mod sockets;
mod status;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use handover::activation::ListenFds;
use handover::notify::{AsyncNotifySocket, Notifier, NotifySocket};

pub use config::{Bind, Config, ReadyMode, SignalScope};
pub use sockets::receive_inherited;

use crate::control;
use machine::{Event, Machine, Settings};

/// The machine's settings for `config`.
fn settings(config: &Config) -> Settings {
    Settings {
        ready: config.ready.clone(),
        ready_timeout: config.ready_timeout,
        settle: config.settle,
        stop_signal: config.stop_signal,
        stop_timeout: config.stop_timeout,
        splay: config.splay,
        reload_signal: config.reload_signal,
        reload_ready: config.reload_ready.clone(),
        signal_scope: config.signal_scope,
        max_backoff: config.max_backoff,
        backoff_reset: machine::BACKOFF_RESET,
        start_limit_burst: config.start_limit_burst,
        start_limit_interval: config.start_limit_interval,
        max_draining: config.max_draining,
        stop_delay: config.stop_delay,
    }
}

/// The directory of the control socket, made ready: the default one
/// (`$XDG_RUNTIME_DIR/handover` or `/tmp/handover-UID`) must be a private
/// directory of this user, not a symlink; a missing one is created with mode
/// 0700; one the user chose and that exists is taken as it is. The notify
/// socket goes there too, so another user's directory elsewhere is never
/// touched.
fn socket_dir(control_path: &Path) -> Result<PathBuf, String> {
    let dir = match control_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if control_path == control::default_path() || std::fs::symlink_metadata(&dir).is_err() {
        control::ensure_private_dir(&dir)?;
    }
    Ok(dir)
}

/// Runs the supervisor until it is stopped. Must run on a current-thread
/// runtime on the main thread. `inherited` are the fds from the service
/// manager, received with [`ListenFds::from_env`] before anything else
/// opened a descriptor (see [`receive_inherited`]); `kept` those an earlier
/// image of handover kept across `handover reexec` (then handover takes
/// over its state instead of starting afresh).
pub async fn run(
    config: Config,
    inherited: ListenFds,
    kept: handover::reexec::Kept,
) -> Result<(), String> {
    if !kept.is_empty() {
        return reexec::resume(config, kept, inherited).await;
    }
    let systemd = Notifier::from_env().map_err(|e| e.to_string())?;
    let sockets = sockets::open_sockets(&config, inherited, &systemd)?;
    // An http: probe needs a stream socket to connect to: checked now, not
    // at the first reload.
    for mode in config.ready.iter().chain(&config.reload_ready) {
        if let ReadyMode::Http { socket, .. } = mode {
            process::probe_target(&sockets, socket.as_deref())?;
        }
    }
    let dir = socket_dir(&config.control)?;
    let notify_path = dir.join(format!("notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = NotifySocket::bind(&notify_path).map_err(|e| {
        format!(
            "{e}; the notify socket goes next to the control socket: give --control a \
                 shorter path, or one in a directory this user can write to"
        )
    })?;
    let notify_fd = notify
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("notify socket: {e}"))?;
    let notify = notify.into_async().map_err(|e| e.to_string())?;
    let control_listener = control::bind(&config.control)?;
    let control_fd = control_listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("control socket: {e}"))?;
    let _control_file = RemoveOnDrop(config.control.clone());
    // Bound by the generations that take keep-alive connections (issue 18).
    let _handoff_file =
        RemoveOnDrop(process::handoff_socket_path(&notify_path.clone().into_os_string()).into());
    if let Some(p) = &config.pid_file {
        write_pid_file(p)?;
    }
    let _pid_file = config.pid_file.clone().map(RemoveOnDrop);
    // Processes a generation leaves behind come to handover, which reaps
    // them and stops them with their group.
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans of generations go to init");
    }

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    // Before the first child: from here on SIGCHLD wakes the reaper and the
    // handled signals are events.
    let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(|e| format!("installing the SIGCHLD handler: {e}"))?;
    let signal_pipes = signals::install(&events_tx)?;
    // In case whoever started handover left them blocked.
    let _ = handover::reexec::release_signals(&signals::HANDLED);
    let reaper = Arc::new(reaper::Reaper::new(events_tx.clone()));
    {
        let reaper = reaper.clone();
        tokio::spawn(async move { reaper.run(sigchld).await });
    }
    let notify_env = notify.env_value().to_owned();
    tokio::spawn(listen_notify(notify, events_tx.clone()));
    // Served from the start: status and stop work during the first start.
    let (ctrl_tx, ctrl_rx) = mpsc::channel(64);
    let clients = control::Clients::starting_at(1);
    tokio::spawn(control::serve_clients(
        control_listener,
        ctrl_tx,
        clients.clone(),
    ));

    // --watch: a change is a reload, as SIGHUP is.
    let watch_events = events_tx.clone();
    let _watch = crate::watch::start(&config.watch, config.watch_debounce, move |_| {
        let _ = watch_events.send(Event::Reload { reply: None });
    })?;

    let machine = Machine::new(settings(&config));
    let mut driver = driver::Driver::new(
        config, sockets, notify_env, systemd, reaper, events_tx, events_rx, ctrl_rx,
    );
    driver.clients = clients;
    driver.signals = signal_pipes;
    driver.reexec.control_fd = Some(control_fd);
    driver.reexec.notify_fd = Some(notify_fd);
    driver.run(machine).await
}

/// Hears NOTIFY_SOCKET messages; the machine credits them to the generation
/// whose process (or process group) sent them. A message that cannot be
/// received (too long, say) is dropped and the next one read at once; only
/// an error that keeps coming without end is slowed down, so it cannot
/// spin.
async fn listen_notify(sock: AsyncNotifySocket, events: mpsc::UnboundedSender<Event>) {
    let mut errors: u64 = 0;
    loop {
        match sock.recv().await {
            Ok(msg) => {
                errors = 0;
                let Some(pid) = msg.pid else { continue };
                let pgid = i32::try_from(pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                    .and_then(|p| rustix::process::getpgid(Some(p)).ok())
                    .map(|g| g.as_raw_nonzero().get() as u32);
                tracing::debug!(pid, fields = ?msg.fields, "notify");
                let event = Event::Notify {
                    pid,
                    pgid,
                    ready: msg.is_ready(),
                    status: msg.status().map(str::to_string),
                    reloading: msg.is_reloading(),
                    monotonic_usec: msg.get("MONOTONIC_USEC").and_then(|v| v.parse().ok()),
                };
                if events.send(event).is_err() {
                    return;
                }
            }
            Err(e) => {
                errors += 1;
                if errors == 1 || errors % 1000 == 0 {
                    tracing::warn!(error = %e, in_a_row = errors, "notify socket: dropped a message");
                }
                if errors >= 1000 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

fn write_pid_file(path: &Path) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.display().to_string(),
                _ => ".".to_string(),
            };
            format!(
                "cannot write the pid file {}: {e}; expected {dir} to be a directory this user \
                 can write to: create it or fix its permissions, or choose another --pid-file",
                path.display()
            )
        })
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
