//! `handover run`: supervise a server in any language and reload it with zero
//! downtime.
//!
//! handover binds the sockets (or takes them from systemd) and keeps them for
//! its whole life. Each generation of the program gets them as fds 3.. with
//! `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`, and handover's own notify
//! socket as `NOTIFY_SOCKET`. A reload starts a new generation on the same
//! sockets, waits until it is ready, then stops the old one; if the new one
//! exits or is not ready in time, it is killed and the old one serves on.
//! Because the sockets never close, no connection is refused or reset: while
//! no generation accepts (say, during a crash restart), connections wait in
//! the kernel's accept queue.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use handover::activation::{Activation, ListenFds};
use handover::address::{Address, BindOptions};
use handover::child::{Child, ChildConfig, ExitStatus, Report, Signal};
use handover::notify::{Notifier, NotifySocket, State as Sd};
use handover::process::{Command, Stdio};

use crate::control::{self, Answer, Incoming, Request, error_answer};
use crate::duration;

/// When a new generation counts as ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyMode {
    /// It sent `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// It stayed alive this long.
    Delay(Duration),
    /// This shell command, with `HANDOVER_PID` set, exited 0.
    Exec(String),
}

impl std::str::FromStr for ReadyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<ReadyMode, String> {
        if s == "notify" {
            Ok(ReadyMode::Notify)
        } else if let Some(d) = s.strip_prefix("delay:") {
            duration::parse(d).map(ReadyMode::Delay)
        } else if let Some(c) = s.strip_prefix("exec:") {
            if c.trim().is_empty() {
                Err(
                    "exec: needs a command, like exec:'curl -fs http://127.0.0.1:8080/health'"
                        .into(),
                )
            } else {
                Ok(ReadyMode::Exec(c.to_string()))
            }
        } else {
            Err(format!(
                "{s:?} is not a readiness mode: expected notify, delay:DURATION (like delay:2s) or \
                 exec:COMMAND"
            ))
        }
    }
}

/// A `--bind [NAME=]ADDRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The name passed in `LISTEN_FDNAMES`.
    pub name: String,
    /// Where.
    pub address: Address,
}

impl std::str::FromStr for Bind {
    type Err = String;

    fn from_str(s: &str) -> Result<Bind, String> {
        let bad_name = |name: &str| {
            format!(
                "{name:?} is not a socket name: expected 1 to 255 printable ASCII characters \
                 without ':' (it separates the names in LISTEN_FDNAMES); rename it"
            )
        };
        let (name, addr) = match s.split_once('=') {
            Some((n, a)) if !n.contains("://") && !n.contains(':') && !n.contains('/') => (n, a),
            // "we:b=tcp://..." is a name with a ':', not an address with a
            // scheme "we:b=tcp".
            Some((n, a)) if !n.contains('/') && a.parse::<Address>().is_ok() => {
                return Err(bad_name(n));
            }
            _ => ("unknown", s),
        };
        if !handover::activation::is_valid_name(name) {
            return Err(bad_name(name));
        }
        let address = addr.parse::<Address>().map_err(|e| e.to_string())?;
        Ok(Bind {
            name: name.to_string(),
            address,
        })
    }
}

/// Everything `handover run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sockets to bind (or take from systemd by name).
    pub binds: Vec<Bind>,
    /// Mode of Unix socket files.
    pub unix_mode: u32,
    /// The program and its arguments.
    pub program: Vec<OsString>,
    /// Readiness.
    pub ready: ReadyMode,
    /// How long a generation has to be ready.
    pub ready_timeout: Duration,
    /// Stop signal.
    pub stop_signal: Signal,
    /// Then SIGKILL.
    pub stop_timeout: Duration,
    /// Random delay before signals.
    pub splay: Duration,
    /// Reload by signalling instead of a new generation.
    pub reload_signal: Option<Signal>,
    /// handover's pid file.
    pub pid_file: Option<PathBuf>,
    /// Control socket.
    pub control: PathBuf,
    /// Signal the program gets if handover dies.
    pub orphan_signal: Option<Signal>,
    /// Longest crash-restart delay.
    pub max_backoff: Duration,
}

/// Lines of a generation's stderr kept for error reports.
const STDERR_TAIL: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenState {
    Starting,
    Ready,
    Draining,
}

impl GenState {
    fn name(self) -> &'static str {
        match self {
            GenState::Starting => "starting",
            GenState::Ready => "ready",
            GenState::Draining => "draining",
        }
    }
}

struct Gen {
    id: u64,
    child: Arc<Child>,
    pid: u32,
    started: Instant,
    started_wall: SystemTime,
    state: GenState,
    ready_after: Option<Duration>,
    status: Option<String>,
    /// Whether it wrote anything to NOTIFY_SOCKET.
    notified: bool,
    ready: watch::Sender<bool>,
    stderr: Arc<StderrTail>,
}

#[derive(Default)]
struct StderrTail {
    lines: Mutex<VecDeque<String>>,
    closed: Mutex<bool>,
}

impl StderrTail {
    fn text(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits briefly for the pipe to close, so the last lines are in.
    async fn settle(&self) {
        for _ in 0..40 {
            if *self.closed.lock().unwrap_or_else(|e| e.into_inner()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[derive(Default)]
struct Stats {
    reloads: u64,
    failed_reloads: u64,
    restarts: u64,
    last_reload: Option<serde_json::Value>,
}

struct Socket {
    name: String,
    address: String,
    inherited: bool,
    fd: OwnedFd,
}

struct Shared {
    config: Config,
    sockets: Vec<Socket>,
    notify_env: OsString,
    gens: Mutex<Vec<Gen>>,
    current: Mutex<Option<u64>>,
    next_id: Mutex<u64>,
    stats: Mutex<Stats>,
    systemd: Notifier,
    child_config: ChildConfig,
    started_wall: SystemTime,
    /// Pids of generations; the orphan reaper leaves them to `child`.
    managed: Mutex<BTreeSet<u32>>,
    events: mpsc::UnboundedSender<Event>,
}

enum Event {
    Exited { id: u64, report: Report },
}

/// A request for a reload: from the control socket (with a reply), SIGHUP
/// (none), or a crash restart.
struct ReloadRequest {
    reply: Option<oneshot::Sender<Answer>>,
    /// Why, for the logs: a restart after a crash, or a reload.
    #[allow(dead_code)]
    restart: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Binds or inherits every socket.
fn open_sockets(config: &Config, mut inherited: ListenFds) -> Result<Vec<Socket>, String> {
    let mut out = Vec::new();
    for b in &config.binds {
        if inherited.get(&b.name).is_some() {
            let fd = take_inherited(&mut inherited, b)?;
            tracing::info!(name = %b.name, "using the socket passed by the service manager");
            out.push(Socket {
                name: b.name.clone(),
                address: format!("{} (inherited)", b.address),
                inherited: true,
                fd,
            });
            continue;
        }
        let fd = b
            .address
            .bind(&BindOptions::default().unix_mode(config.unix_mode))
            .map_err(|e| e.to_string())?;
        let actual = Address::local(&fd, &b.address).unwrap_or_else(|_| b.address.clone());
        tracing::info!(name = %b.name, address = %actual, "listening");
        out.push(Socket {
            name: b.name.clone(),
            address: actual.to_string(),
            inherited: false,
            fd,
        });
    }
    // Sockets from the service manager that no --bind names are passed on
    // as they are.
    for (name, fd) in inherited.into_remaining() {
        tracing::info!(%name, "passing on a socket from the service manager");
        out.push(Socket {
            name,
            address: "(inherited)".into(),
            inherited: true,
            fd,
        });
    }
    if out.is_empty() {
        return Err(
            "no sockets: give at least one --bind ADDRESS (for example --bind tcp://127.0.0.1:8080), \
             or start handover with socket activation"
                .into(),
        );
    }
    Ok(out)
}

/// Receives the fds passed by a service manager. Call it first, before the
/// runtime exists: fds 3.. must still be the inherited ones, so that a
/// `LISTEN_FDS` that claims too many names no descriptor of handover's own.
pub fn receive_inherited() -> Result<ListenFds, String> {
    ListenFds::from_env().map_err(|e| e.to_string())
}

/// Takes the socket the service manager passed under `b.name`, checked to be
/// of the kind `b.address` binds: a regular file or a UDP socket where a TCP
/// listener is expected would otherwise reach every generation, which would
/// then fail on its first accept.
fn take_inherited(inherited: &mut ListenFds, b: &Bind) -> Result<OwnedFd, String> {
    let taken = match &b.address {
        Address::Tcp(_) => inherited
            .take::<std::net::TcpListener>(&b.name)
            .map(OwnedFd::from),
        Address::Udp(_) => inherited
            .take::<std::net::UdpSocket>(&b.name)
            .map(OwnedFd::from),
        Address::Unix(_) => inherited
            .take::<std::os::unix::net::UnixListener>(&b.name)
            .map(OwnedFd::from),
    };
    taken.map_err(|e| {
        format!(
            "--bind {}={}: {e}. For this --bind the socket unit needs ListenStream= (tcp://, \
             unix:) or ListenDatagram= (udp://); or give the --bind another name",
            b.name, b.address
        )
    })
}

/// Runs the supervisor until it is stopped. Must run on a current-thread
/// runtime on the main thread. `inherited` are the fds from the service
/// manager, received with [`ListenFds::from_env`] before anything else
/// opened a descriptor (see [`receive_inherited`]).
pub async fn run(config: Config, inherited: ListenFds) -> Result<(), String> {
    let sockets = open_sockets(&config, inherited)?;
    let runtime_dir = control::runtime_dir();
    control::ensure_private_dir(&runtime_dir)?;
    if let Some(dir) = config.control.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        control::ensure_private_dir(dir)?;
    }
    let notify_path = runtime_dir.join(format!("notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = NotifySocket::bind(&notify_path)
        .map_err(|e| e.to_string())?
        .into_async()
        .map_err(|e| e.to_string())?;
    let control_listener = control::bind(&config.control)?;
    let _control_file = RemoveOnDrop(config.control.clone());
    if let Some(p) = &config.pid_file {
        write_pid_file(p)?;
    }
    let _pid_file = config.pid_file.clone().map(RemoveOnDrop);
    let systemd = Notifier::from_env().map_err(|e| e.to_string())?;
    let child_config = ChildConfig::new()
        .kill_signal(config.stop_signal)
        .kill_timeout(config.stop_timeout)
        .splay(config.splay)
        .reload_signal(config.reload_signal.unwrap_or(Signal::HUP))
        .death_signal(config.orphan_signal)
        .process_group(true);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        notify_env: notify.env_value().to_owned(),
        config,
        sockets,
        gens: Mutex::new(Vec::new()),
        current: Mutex::new(None),
        next_id: Mutex::new(1),
        stats: Mutex::new(Stats::default()),
        systemd,
        child_config,
        started_wall: SystemTime::now(),
        managed: Mutex::new(BTreeSet::new()),
        events: events_tx,
    });

    // Hear the generations.
    tokio::spawn(listen_notify(shared.clone(), notify));

    // Signal handlers first: from here on SIGHUP and SIGTERM are ours (their
    // default actions would kill handover and orphan a starting generation).
    use tokio::signal::unix::{SignalKind, signal};
    let sig = |k: SignalKind| signal(k).map_err(|e| format!("installing a signal handler: {e}"));
    let mut hup = sig(SignalKind::hangup())?;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut forwarded = Vec::new();
    for (kind, signal) in [
        (SignalKind::user_defined1(), Signal::USR1),
        (SignalKind::user_defined2(), Signal::USR2),
        (SignalKind::window_change(), Signal::WINCH),
        (SignalKind::quit(), Signal::QUIT),
    ] {
        forwarded.push((sig(kind)?, signal));
    }

    // The first generation: failing here is failing to start. SIGTERM or
    // SIGINT meanwhile stops whatever was started, through the stop path.
    let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<Incoming>(64);
    let (reload_tx, reload_rx) = mpsc::unbounded_channel::<ReloadRequest>();
    let mut stop_replies = Vec::new();
    let mut no_replies = Vec::new();
    let mut no_draining = None;
    let mut stopping = tokio::select! {
        r = reload_once(&shared, false, &mut no_replies, &mut no_draining) => match r {
            Ok(_) => false,
            Err(e) => return Err(format!("the first generation did not start: {e}")),
        },
        _ = term.recv() => { tracing::info!("SIGTERM during start-up: stopping"); true }
        _ = int.recv() => { tracing::info!("SIGINT during start-up: stopping"); true }
    };
    if !stopping {
        let _ = shared.systemd.notify(&[Sd::Ready, Sd::Status("serving")]);
        tokio::spawn(control::serve(control_listener, ctrl_tx));
    }
    let reloader = tokio::spawn(reload_loop(shared.clone(), reload_tx.clone(), reload_rx));
    let reaper = start_reaper(shared.clone());
    while !stopping {
        let forward = async {
            let futs = forwarded.iter_mut().map(|(s, sig)| {
                let sig = *sig;
                Box::pin(async move {
                    s.recv().await;
                    sig
                })
            });
            futures_select_all(futs).await
        };
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reload requested");
                let _ = reload_tx.send(ReloadRequest { reply: None, restart: false });
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); stopping = true; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); stopping = true; }
            sig = forward => {
                let current = current_child(&shared);
                match current {
                    Some(c) => {
                        tracing::info!(signal = %sig, pid = c.pid(), "forwarding a signal to the current generation");
                        let _ = c.signal(sig);
                    }
                    None => tracing::warn!(signal = %sig, "no generation to forward the signal to"),
                }
            }
            Some(incoming) = ctrl_rx.recv() => match incoming.request {
                Request::Reload => {
                    let _ = reload_tx.send(ReloadRequest { reply: Some(incoming.reply), restart: false });
                }
                Request::Status => { let _ = incoming.reply.send(status(&shared)); }
                Request::Stop => { stop_replies.push((incoming.reply, incoming.written)); stopping = true; }
            },
            Some(event) = events_rx.recv() => handle_event(&shared, event, &reload_tx),
        }
    }

    // Stop: no more reloads; every generation gets the stop signal and the
    // stop timeout; a second SIGTERM/SIGINT kills them at once.
    let _ = shared.systemd.notify(&[Sd::Stopping]);
    reloader.abort();
    drop(reload_tx);
    let children: Vec<Arc<Child>> = lock(&shared.gens).iter().map(|g| g.child.clone()).collect();
    tracing::info!(generations = children.len(), "stopping");
    let stops = futures_join_all(children.iter().map(|c| c.stop_async()));
    tokio::pin!(stops);
    loop {
        tokio::select! {
            _ = &mut stops => break,
            _ = term.recv() => hurry(&children),
            _ = int.recv() => hurry(&children),
            Some(incoming) = ctrl_rx.recv() => match incoming.request {
                Request::Stop => stop_replies.push((incoming.reply, incoming.written)),
                _ => { let _ = incoming.reply.send(error_answer("handover is stopping")); }
            },
        }
    }
    if let Some(r) = reaper {
        r.abort();
    }
    let mut written = Vec::new();
    for (reply, done) in stop_replies {
        let _ = reply.send(json!({"ok": true, "stopped": true}));
        written.push(done);
    }
    // Let the control tasks write the answers before the runtime goes.
    for done in written {
        let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn hurry(children: &[Arc<Child>]) {
    tracing::warn!("second stop signal: killing every generation now");
    for c in children {
        let _ = c.signal(Signal::KILL);
    }
}

fn current_child(shared: &Shared) -> Option<Arc<Child>> {
    let id = (*lock(&shared.current))?;
    lock(&shared.gens)
        .iter()
        .find(|g| g.id == id)
        .map(|g| g.child.clone())
}

fn handle_event(
    shared: &Arc<Shared>,
    event: Event,
    reload_tx: &mpsc::UnboundedSender<ReloadRequest>,
) {
    let Event::Exited { id, report } = event;
    let Report::Exited(exit) = report else {
        return; // stopped by us: nothing to report
    };
    let mut current = lock(&shared.current);
    if *current != Some(id) {
        return; // a starting or draining generation: its reload handles it
    }
    *current = None;
    drop(current);
    let mut gens = lock(&shared.gens);
    let gen_info = gens
        .iter()
        .find(|g| g.id == id)
        .map(|g| (g.pid, g.stderr.clone(), g.started));
    gens.retain(|g| g.id != id);
    drop(gens);
    if let Some((pid, stderr, started)) = gen_info {
        let tail = stderr.text();
        tracing::error!(
            generation = id, pid, status = %exit.status, uptime = ?started.elapsed(),
            stderr = %last_lines(&tail, 5),
            "the current generation died on its own; starting a new one"
        );
    }
    lock(&shared.stats).restarts += 1;
    let _ = reload_tx.send(ReloadRequest {
        reply: None,
        restart: true,
    });
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Serializes reloads: one at a time; requests that arrive during one are
/// all answered by the single reload that follows it. When no generation
/// serves (a crash, or a failed restart), starts one with exponential
/// backoff until one is ready; connections wait in the accept queue.
async fn reload_loop(
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<ReloadRequest>,
    mut rx: mpsc::UnboundedReceiver<ReloadRequest>,
) {
    let mut attempts: u32 = 0;
    let mut last_attempt: Option<Instant> = None;
    // The previous generation, stopping (see reload_once).
    let mut draining: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut replies: Vec<oneshot::Sender<Answer>> =
            batch.into_iter().filter_map(|r| r.reply).collect();
        if lock(&shared.current).is_none() {
            // A restart. Attempts long after the previous one start over.
            if last_attempt.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
                attempts = 0;
            }
            attempts += 1;
            last_attempt = Some(Instant::now());
            let delay = backoff(attempts, shared.config.max_backoff);
            tracing::info!(attempt = attempts, delay = ?delay, "restarting");
            tokio::time::sleep(delay).await;
            // Requests that came during the delay are covered by this start.
            while let Ok(more) = rx.try_recv() {
                replies.extend(more.reply);
            }
        }
        let answer = match reload_once(&shared, true, &mut replies, &mut draining).await {
            Ok(a) => a,
            Err(e) => error_answer(e),
        };
        for r in replies {
            let _ = r.send(answer.clone());
        }
        if lock(&shared.current).is_none() {
            tracing::error!("no generation is serving; trying again");
            let _ = tx.send(ReloadRequest {
                reply: None,
                restart: true,
            });
        }
    }
}

fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100);
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max)
}

/// One reload: start a generation, wait until it is ready, make it current,
/// answer `replies`, then stop the previous one. On failure the new
/// generation is killed and the current one stays.
///
/// The previous generation stops on a task of its own, left in `draining`:
/// the next reload waits for it before starting a generation (so at most two
/// exist), but a restart after the current one died does not. Waiting there
/// would leave nobody accepting for as long as the old one takes to drain
/// (up to --stop-timeout) while connections pile up in the accept queue.
async fn reload_once(
    shared: &Arc<Shared>,
    systemd_reloading: bool,
    replies: &mut Vec<oneshot::Sender<Answer>>,
    draining: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<Answer, String> {
    let has_current = lock(&shared.current).is_some();
    if has_current && let Some(d) = draining.take() {
        let _ = d.await;
    }
    let started = Instant::now();
    if let (Some(sig), true) = (shared.config.reload_signal, has_current) {
        let child = current_child(shared).ok_or("no current generation")?;
        child.reload_async().await.map_err(|e| e.to_string())?;
        tracing::info!(signal = %sig, pid = child.pid(), "reload: signalled the current generation");
        let answer = json!({"ok": true, "signalled": sig.to_string(), "pid": child.pid()});
        record_reload(shared, true, started, Some(child.pid()), None);
        return Ok(answer);
    }
    if systemd_reloading && has_current {
        let _ = shared.systemd.notify(&[Sd::Reloading]);
    }
    let result = start_generation(shared).await;
    match result {
        Ok((id, pid, ready_after)) => {
            let old = lock(&shared.current).replace(id);
            {
                let mut gens = lock(&shared.gens);
                if let Some(g) = gens.iter_mut().find(|g| g.id == id) {
                    g.state = GenState::Ready;
                    g.ready_after = Some(ready_after);
                }
                if let Some(old) = old
                    && let Some(g) = gens.iter_mut().find(|g| g.id == old)
                {
                    g.state = GenState::Draining;
                }
            }
            let _ = shared.systemd.notify(&[Sd::Ready, Sd::Status("serving")]);
            tracing::info!(generation = id, pid, ready_after = ?ready_after, "generation is ready");
            record_reload(shared, true, started, Some(pid), None);
            let answer = json!({
                "ok": true, "generation": id, "pid": pid,
                "ready_after_ms": ms(ready_after), "took_ms": ms(started.elapsed()),
            });
            for r in replies.drain(..) {
                let _ = r.send(answer.clone());
            }
            if let Some(old) = old {
                let shared = shared.clone();
                *draining = Some(tokio::spawn(async move {
                    stop_generation(&shared, old).await;
                }));
            }
            Ok(answer)
        }
        Err(e) => {
            if has_current {
                let status = format!("reload failed: {}", e.lines().next().unwrap_or(""));
                let _ = shared.systemd.notify(&[Sd::Ready, Sd::Status(&status)]);
            }
            tracing::error!(error = %e, "reload failed; the current generation serves on");
            record_reload(shared, false, started, None, Some(e.clone()));
            Err(e)
        }
    }
}

fn record_reload(
    shared: &Shared,
    ok: bool,
    started: Instant,
    pid: Option<u32>,
    error: Option<String>,
) {
    let mut st = lock(&shared.stats);
    st.reloads += 1;
    if !ok {
        st.failed_reloads += 1;
    }
    st.last_reload = Some(json!({
        "ok": ok, "pid": pid, "error": error,
        "at_unix_ms": unix_ms(SystemTime::now()), "took_ms": ms(started.elapsed()),
    }));
}

/// Stops generation `id` (stop signal, stop timeout, SIGKILL) and forgets it.
async fn stop_generation(shared: &Arc<Shared>, id: u64) {
    let child = lock(&shared.gens)
        .iter()
        .find(|g| g.id == id)
        .map(|g| g.child.clone());
    if let Some(child) = child {
        let exit = child.stop_async().await;
        tracing::info!(generation = id, pid = child.pid(), status = %exit, "old generation is gone");
    }
    let mut gens = lock(&shared.gens);
    if let Some(g) = gens.iter().find(|g| g.id == id) {
        lock(&shared.managed).remove(&g.pid);
    }
    gens.retain(|g| g.id != id);
}

/// Starts a generation and waits until it is ready. On failure it is gone
/// when this returns, and the error says why (with its last stderr lines).
async fn start_generation(shared: &Arc<Shared>) -> Result<(u64, u32, Duration), String> {
    let id = {
        let mut n = lock(&shared.next_id);
        let id = *n;
        *n += 1;
        id
    };
    let config = &shared.config;
    let mut cmd = Command::new(&config.program[0]);
    cmd.args(&config.program[1..])
        .env("NOTIFY_SOCKET", &shared.notify_env)
        .env("HANDOVER_GENERATION", id.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut activation = Activation::new();
    for s in &shared.sockets {
        activation
            .fd(&s.name, s.fd.as_fd())
            .map_err(|e| e.to_string())?;
    }
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let stderr = Arc::new(StderrTail::default());
    let started = Instant::now();
    let child = {
        // Registered as managed before the orphan reaper can look.
        let mut managed = lock(&shared.managed);
        let mut child = shared
            .child_config
            .spawn_with_fds(cmd, &activation)
            .map_err(|e| format!("could not start a new generation: {e}"))?;
        managed.insert(child.pid());
        if let Some(pipe) = child.take_stderr() {
            pump_stderr(pipe, stderr.clone(), id);
        }
        Arc::new(child)
    };
    let pid = child.pid();
    tracing::info!(
        generation = id,
        pid,
        "started a new generation; waiting until it is ready"
    );
    lock(&shared.gens).push(Gen {
        id,
        child: child.clone(),
        pid,
        started,
        started_wall: SystemTime::now(),
        state: GenState::Starting,
        ready_after: None,
        status: None,
        notified: false,
        ready: ready_tx,
        stderr: stderr.clone(),
    });
    {
        let child = child.clone();
        let events = shared.events.clone();
        tokio::spawn(async move {
            let report = child.exit().await;
            let _ = events.send(Event::Exited { id, report });
        });
    }
    let readiness = async {
        match &config.ready {
            ReadyMode::Notify => {
                let _ = ready_rx.wait_for(|r| *r).await;
            }
            ReadyMode::Delay(d) => tokio::time::sleep(*d).await,
            ReadyMode::Exec(command) => probe_until_ok(command, pid, id).await,
        }
    };
    let outcome = tokio::select! {
        _ = readiness => Ok(()),
        report = child.exit() => Err(match report {
            Report::Exited(e) => format!("exited before it was ready: it {}", describe(e.status)),
            _ => "was stopped before it was ready".to_string(),
        }),
        _ = tokio::time::sleep(config.ready_timeout) => Err(timeout_reason(shared, id)),
    };
    match outcome {
        Ok(()) => Ok((id, pid, started.elapsed())),
        Err(why) => {
            let exit = child.stop_immediately_async().await;
            stderr.settle().await;
            lock(&shared.gens).retain(|g| g.id != id);
            lock(&shared.managed).remove(&pid);
            let tail = last_lines(&stderr.text(), 10);
            let mut msg = format!("the new generation {id} (pid {pid}) {why}");
            if exit.requested {
                msg.push_str("; it was killed");
            }
            if !tail.is_empty() {
                msg.push_str(&format!("\nits last stderr lines:\n{tail}"));
            }
            Err(msg)
        }
    }
}

fn describe(status: ExitStatus) -> String {
    status.to_string()
}

fn timeout_reason(shared: &Shared, id: u64) -> String {
    let t = duration::format(shared.config.ready_timeout);
    match &shared.config.ready {
        ReadyMode::Notify => {
            let notified = lock(&shared.gens).iter().any(|g| g.id == id && g.notified);
            if notified {
                format!(
                    "was not ready within {t}: it wrote to NOTIFY_SOCKET but never sent READY=1. \
                     Raise --ready-timeout if it needs longer"
                )
            } else {
                format!(
                    "was not ready within {t}: it never wrote to NOTIFY_SOCKET. Make the program send \
                     READY=1 there (sd_notify), or choose another --ready mode: delay:DURATION (ready \
                     once it stays up that long) or exec:COMMAND (ready once a probe command exits 0)"
                )
            }
        }
        ReadyMode::Delay(_) => format!("was not ready within {t}"),
        ReadyMode::Exec(c) => format!("was not ready within {t}: the probe {c:?} never exited 0"),
    }
}

/// Runs the readiness probe until it exits 0 (the caller bounds the time).
async fn probe_until_ok(command: &str, pid: u32, id: u64) {
    let config = ChildConfig::new()
        .execution_timeout(Some(Duration::from_secs(10)))
        .kill_timeout(Duration::from_secs(1));
    loop {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", command])
            .env("HANDOVER_PID", pid.to_string())
            .env("HANDOVER_GENERATION", id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match config.run_async(cmd).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "readiness probe not yet"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Copies a generation's stderr to handover's, keeping the last lines.
fn pump_stderr(pipe: std::process::ChildStderr, tail: Arc<StderrTail>, id: u64) {
    let spawned = std::thread::Builder::new()
        .name(format!("stderr-{id}"))
        .spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = std::io::stderr().write_all(&line);
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        let mut lines = lock(&tail.lines);
                        if lines.len() == STDERR_TAIL {
                            lines.pop_front();
                        }
                        lines.push_back(text);
                    }
                }
            }
            *lock(&tail.closed) = true;
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the stderr reader");
    }
}

/// Hears NOTIFY_SOCKET messages and credits them to the generation whose
/// process (or process group) sent them.
async fn listen_notify(shared: Arc<Shared>, sock: handover::notify::AsyncNotifySocket) {
    loop {
        let msg = match sock.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "notify socket");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(pid) = msg.pid else { continue };
        let pgid = process_group_of(pid);
        let mut gens = lock(&shared.gens);
        let Some(g) = gens
            .iter_mut()
            .find(|g| g.pid == pid || (pgid.is_some() && g.child.pgid() == pgid))
        else {
            tracing::debug!(
                pid,
                "a notify message from a process that is not a generation; ignored"
            );
            continue;
        };
        g.notified = true;
        if let Some(s) = msg.status() {
            g.status = Some(s.to_string());
        }
        if msg.is_ready() {
            let _ = g.ready.send(true);
        }
        tracing::debug!(generation = g.id, pid, fields = ?msg.fields, "notify");
    }
}

fn process_group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// The status answer.
fn status(shared: &Shared) -> Answer {
    let current = *lock(&shared.current);
    let gens: Vec<_> = lock(&shared.gens)
        .iter()
        .map(|g| {
            json!({
                "generation": g.id, "pid": g.pid,
                "state": g.state.name(), "current": Some(g.id) == current,
                "started_unix_ms": unix_ms(g.started_wall),
                "uptime_ms": ms(g.started.elapsed()),
                "ready_after_ms": g.ready_after.map(ms),
                "status": g.status,
            })
        })
        .collect();
    let sockets: Vec<_> = shared
        .sockets
        .iter()
        .map(|s| json!({"name": s.name, "address": s.address, "inherited": s.inherited}))
        .collect();
    let st = lock(&shared.stats);
    json!({
        "ok": true,
        "pid": std::process::id(),
        "program": shared.config.program.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
        "started_unix_ms": unix_ms(shared.started_wall),
        "sockets": sockets,
        "generations": gens,
        "reloads": st.reloads,
        "failed_reloads": st.failed_reloads,
        "restarts": st.restarts,
        "last_reload": st.last_reload,
    })
}

/// As pid 1 (or a subreaper), orphans are re-parented to handover: reap
/// them, but never a generation (its status belongs to `child`).
fn start_reaper(shared: Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    let pid1 = std::process::id() == 1;
    let subreaper = rustix::process::child_subreaper().ok().flatten().is_some();
    if !pid1 && !subreaper {
        return None;
    }
    tracing::info!("reaping orphaned processes (pid 1 or subreaper)");
    Some(tokio::spawn(async move {
        let mut chld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        loop {
            match chld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            reap_orphans(&shared);
        }
    }))
}

fn reap_orphans(shared: &Shared) {
    let managed = lock(&shared.managed);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if managed.contains(&pid) {
                continue;
            }
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
                .unwrap_or(false);
            if zombie && let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
                tracing::debug!(pid, "reaped an orphan");
            }
        }
    }
}

fn write_pid_file(path: &std::path::Path) -> Result<(), String> {
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

/// Resolves to the first of `futs` to finish.
async fn futures_select_all<F: std::future::Future + Unpin>(
    futs: impl Iterator<Item = F>,
) -> F::Output {
    let mut futs: Vec<F> = futs.collect();
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Waits for all of `futs`.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_modes() {
        assert_eq!("notify".parse::<ReadyMode>().unwrap(), ReadyMode::Notify);
        assert_eq!(
            "delay:2s".parse::<ReadyMode>().unwrap(),
            ReadyMode::Delay(Duration::from_secs(2))
        );
        assert_eq!(
            "exec:true".parse::<ReadyMode>().unwrap(),
            ReadyMode::Exec("true".into())
        );
        assert!("exec:".parse::<ReadyMode>().is_err());
        assert!(
            "soon"
                .parse::<ReadyMode>()
                .unwrap_err()
                .contains("expected notify")
        );
    }

    #[test]
    fn binds() {
        let b: Bind = "http=tcp://127.0.0.1:80".parse().unwrap();
        assert_eq!(b.name, "http");
        let b: Bind = "tcp://127.0.0.1:80".parse().unwrap();
        assert_eq!(b.name, "unknown");
        let b: Bind = "unix:/tmp/a=b".parse().unwrap();
        assert_eq!(b.address, Address::Unix("/tmp/a=b".into()));
        assert!(
            "web=tcp://x"
                .parse::<Bind>()
                .unwrap_err()
                .contains("port is missing")
        );
        assert!(
            "a\tb=tcp://127.0.0.1:1"
                .parse::<Bind>()
                .unwrap_err()
                .contains("not a socket name")
        );
        let e = "we:b=tcp://127.0.0.1:1".parse::<Bind>().unwrap_err();
        assert!(
            e.contains("\"we:b\" is not a socket name") && e.contains("without ':'"),
            "{e}"
        );
        assert!("tcp://127.0.0.1".parse::<Bind>().is_err());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, max), Duration::from_millis(100));
        assert_eq!(backoff(2, max), Duration::from_millis(200));
        assert_eq!(backoff(30, max), max);
    }
}
