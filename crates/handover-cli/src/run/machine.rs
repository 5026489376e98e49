//! The supervisor's state machine: every decision of `handover run`, and no
//! I/O. [`Machine::handle`] takes the time and one [`Event`] and returns the
//! [`Action`]s to carry out; [`Machine::next_deadline`] says when to come
//! back with [`Event::Tick`]. The driver (`driver.rs`) owns the processes,
//! sockets, timers and channels; it feeds events in and carries actions out.
//! See the [module docs](super) for the states and transitions.
//!
//! The state is plain data (pids, times on `CLOCK_MONOTONIC`, counters,
//! stderr tails, ids of pending replies): it serializes with serde, so that a
//! re-executed supervisor can take it over.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use handover::child::Signal;

use super::config::ReadyMode;
use crate::duration;

/// A point in time on `CLOCK_MONOTONIC` (time since boot): unlike
/// `std::time::Instant` it has a value that means the same in a re-executed
/// image of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mono(Duration);

impl Mono {
    /// Now.
    pub fn now() -> Mono {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        Mono(Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    }

    /// `d` later.
    pub fn after(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(d))
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Mono) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// For tests: a time `d` after boot.
    #[cfg(test)]
    pub fn at(d: Duration) -> Mono {
        Mono(d)
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// It exited with this code.
    Code(i32),
    /// This signal ended it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

impl Status {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Status::Code(0)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Status::Code(c) => write!(f, "exited with code {c}"),
            Status::Signaled {
                signal,
                core_dumped,
            } => {
                match Signal::from_raw(signal) {
                    Some(s) => write!(f, "was killed by {s}")?,
                    None => write!(f, "was killed by signal {signal}")?,
                }
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// Identifies a client waiting for an answer (the driver keeps the channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplyId(pub u64);

/// What the machine is told.
#[derive(Debug, Clone)]
pub enum Event {
    /// Start the first generation.
    Start,
    /// A reload was asked for, by the control socket (with a reply) or SIGHUP.
    Reload {
        /// Who waits for the outcome.
        reply: Option<ReplyId>,
    },
    /// `handover stop`: stop gracefully, answer when done.
    Stop {
        /// Who waits for the end.
        reply: ReplyId,
    },
    /// A signal reached handover (one event per delivery, never coalesced).
    Signal(Signal),
    /// The process of generation `id` was started.
    Spawned {
        /// Which generation.
        id: u64,
        /// Its pid, which is also its process group id.
        pid: u32,
        /// Wall-clock start, for `status`.
        unix_ms: u128,
    },
    /// Generation `id` could not be started at all.
    SpawnFailed {
        /// Which generation.
        id: u64,
        /// Why.
        error: String,
    },
    /// A child process of handover was reaped.
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: Status,
    },
    /// No process is left in the process group of generation `id`.
    GroupEmpty {
        /// Which generation.
        id: u64,
    },
    /// A datagram on the notify socket.
    Notify {
        /// The sender's pid (from the kernel).
        pid: u32,
        /// The sender's process group, if it was still alive to ask.
        pgid: Option<u32>,
        /// `READY=1`.
        ready: bool,
        /// `STATUS=`.
        status: Option<String>,
    },
    /// The readiness probe of generation `id` exited 0.
    ProbePassed {
        /// Which generation.
        id: u64,
    },
    /// Lines generation `id` wrote to stderr.
    Stderr {
        /// Which generation.
        id: u64,
        /// The lines (without newlines).
        lines: Vec<String>,
    },
    /// Generation `id`'s stderr pipe closed (every writer is gone).
    StderrClosed {
        /// Which generation.
        id: u64,
    },
    /// Time passed: act on every deadline that is due.
    Tick,
}

/// What systemd is told (`NOTIFY_SOCKET` of handover itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sd {
    /// `READY=1` and `STATUS=`.
    Ready(String),
    /// `RELOADING=1` (with `MONOTONIC_USEC=`).
    Reloading,
    /// `STATUS=` alone.
    Status(String),
    /// `STOPPING=1` and `STATUS=`.
    Stopping(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start generation `id`'s process; answer with [`Event::Spawned`] or
    /// [`Event::SpawnFailed`].
    Spawn {
        /// Which generation.
        id: u64,
    },
    /// Run the `exec:` readiness probe for generation `id` until it exits 0,
    /// then send [`Event::ProbePassed`].
    Probe {
        /// Which generation.
        id: u64,
        /// Its pid (the probe gets it as `HANDOVER_PID`).
        pid: u32,
        /// The shell command.
        command: String,
    },
    /// Stop running generation `id`'s probe (and kill one that runs).
    CancelProbe {
        /// Which generation.
        id: u64,
    },
    /// Send `signal` to process group `pgid`.
    Signal {
        /// The process group (a generation's pid).
        pgid: u32,
        /// The signal.
        signal: Signal,
    },
    /// Watch generation `id`'s process group; send [`Event::GroupEmpty`]
    /// once no process is left in it.
    WatchGroup {
        /// Which generation.
        id: u64,
        /// Its process group.
        pgid: u32,
    },
    /// Answer a client.
    Reply {
        /// Who.
        to: ReplyId,
        /// The JSON answer.
        answer: serde_json::Value,
    },
    /// Tell systemd.
    Notify(Sd),
    /// Everything is stopped: exit, with this outcome.
    Exit(Result<(), String>),
}

/// The machine's settings (from the command line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// When a generation counts as ready.
    pub ready: ReadyMode,
    /// How long a generation has to become ready.
    pub ready_timeout: Duration,
    /// How long a ready generation must stay up before the old one is told
    /// to stop (zero: at once). Issue 13 sets it from `--settle`.
    pub settle: Duration,
    /// The stop signal.
    #[serde(with = "signal_number")]
    pub stop_signal: Signal,
    /// Then SIGKILL to the group.
    pub stop_timeout: Duration,
    /// Random delay before a graceful stop signal.
    pub splay: Duration,
    /// Reload by signalling the current generation instead.
    #[serde(with = "opt_signal_number")]
    pub reload_signal: Option<Signal>,
    /// Longest crash-restart delay.
    pub max_backoff: Duration,
    /// A generation that stayed current this long resets the backoff.
    pub backoff_reset: Duration,
    /// Crash restarts allowed within `start_limit_interval` (0: no limit).
    pub start_limit_burst: u32,
    /// See `start_limit_burst`.
    pub start_limit_interval: Duration,
    /// How many replaced generations may drain while a reload starts
    /// another; more reloads wait. Issue 13 makes this `--max-draining`.
    pub max_draining: usize,
}

/// The first crash-restart delay; each crash in a row doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A generation that stays current this long resets the crash backoff.
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// Lines of a generation's stderr kept for error reports.
pub const STDERR_TAIL: usize = 20;

/// After a generation's last process is gone, how long to wait for its
/// stderr pipe to close (so the last lines are in its report). A process
/// outside the group that inherited the pipe could hold it open for ever.
pub const STDERR_LINGER: Duration = Duration::from_millis(200);

/// After SIGKILL, how often SIGKILL is sent again to a group that is still
/// not empty.
pub const KILL_AGAIN: Duration = Duration::from_secs(1);

/// Why a generation was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// The first one, at start-up: if it fails, handover exits.
    First,
    /// A reload (control socket or SIGHUP).
    Reload,
    /// A restart after the current generation died.
    Restart,
}

/// Why a generation is ending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// A newer generation took over: it drains.
    Replaced,
    /// Its main process died on its own while it was current; the rest of
    /// its process group is stopped.
    Crashed,
    /// It failed to become ready (or to settle); the text says how. The
    /// reload that started it is answered once it is gone.
    Failed(String),
    /// handover is stopping.
    Stopping,
}

impl EndReason {
    /// Its name in `status`.
    pub fn name(&self) -> &'static str {
        match self {
            EndReason::Replaced => "replaced",
            EndReason::Crashed => "crashed",
            EndReason::Failed(_) => "failed",
            EndReason::Stopping => "stopping",
        }
    }
}

/// A generation on its way out: the stop signal (after a random splay),
/// SIGKILL at the stop timeout, and gone once its main process is reaped,
/// its process group is empty and its stderr has closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ending {
    /// Why.
    pub reason: EndReason,
    /// When the stop signal is due (`None` once sent).
    pub signal_at: Option<Mono>,
    /// When SIGKILL is due.
    pub kill_at: Option<Mono>,
    /// SIGKILL was sent.
    pub killed: bool,
    /// A signal was sent while its main process was alive.
    pub signalled: bool,
    /// How its main process ended, once reaped.
    pub leader: Option<Status>,
    /// No process is left in its group.
    pub group_empty: bool,
    /// Until when to wait for its stderr to close.
    pub linger_until: Option<Mono>,
}

/// Where a generation is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GenState {
    /// Started, not yet ready; failed at `deadline`.
    Starting {
        /// The ready timeout.
        deadline: Mono,
        /// With `--ready delay:`: ready then.
        ready_at: Option<Mono>,
    },
    /// Ready; the previous generation still serves until `until`.
    Settling {
        /// End of the settle window.
        until: Mono,
    },
    /// The generation that serves.
    Current {
        /// Since when.
        since: Mono,
    },
    /// Stopping (see [`Ending`]).
    Draining(Ending),
}

impl GenState {
    /// The name `status` shows. The current generation shows as `ready`
    /// (its `current` field says it serves), as it always has.
    pub fn name(&self) -> &'static str {
        match self {
            GenState::Starting { .. } => "starting",
            GenState::Settling { .. } => "settling",
            GenState::Current { .. } => "ready",
            GenState::Draining(_) => "draining",
        }
    }
}

/// One generation of the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// 1, 2, ... in start order.
    pub id: u64,
    /// Its main process (also its process group), once started.
    pub pid: Option<u32>,
    /// Why it was started.
    pub purpose: Purpose,
    /// Where it is.
    pub state: GenState,
    /// When it was started.
    pub started: Mono,
    /// The same, as wall-clock milliseconds since the epoch.
    pub started_unix_ms: u128,
    /// How long it took to become ready.
    pub ready_after: Option<Duration>,
    /// Its last `STATUS=`.
    pub status: Option<String>,
    /// Whether it wrote anything to the notify socket.
    pub notified: bool,
    /// The last lines of its stderr.
    pub stderr: VecDeque<String>,
    /// Its stderr pipe closed.
    pub stderr_closed: bool,
}

impl Generation {
    /// Its last `n` stderr lines.
    pub fn tail(&self, n: usize) -> String {
        let skip = self.stderr.len().saturating_sub(n);
        self.stderr
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn label(&self) -> String {
        match self.pid {
            Some(pid) => format!("generation {} (pid {pid})", self.id),
            None => format!("generation {}", self.id),
        }
    }
}

/// Counters for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Starts that were answered (the first start, reloads, restarts).
    pub reloads: u64,
    /// Of which failed.
    pub failed_reloads: u64,
    /// Restarts after the current generation died.
    pub restarts: u64,
    /// The outcome of the last start.
    pub last_reload: Option<serde_json::Value>,
}

/// A start in progress and who waits for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InFlight {
    /// The generation being started.
    pub id: u64,
    /// Who waits for the outcome.
    pub replies: Vec<ReplyId>,
    /// When it was asked for.
    pub started: Mono,
}

/// Crash restarts: backoff and start limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Restarts {
    /// Crash restarts in a row without a generation that stayed up.
    pub attempt: u32,
    /// When the next restart is due.
    pub due: Option<Mono>,
    /// When the current generation will have stayed up long enough to
    /// reset `attempt`.
    pub reset_at: Option<Mono>,
    /// When recent restarts started (for the start limit).
    pub recent: VecDeque<Mono>,
    /// Clients whose reload the pending restart answers.
    pub replies: Vec<ReplyId>,
}

/// Where handover is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Supervising.
    Running,
    /// Stopping every generation; then exit with `error` (if any).
    Stopping {
        /// Why handover gives up, when it does.
        error: Option<String>,
        /// A second stop signal came: everything was SIGKILLed.
        hurried: bool,
    },
    /// Done.
    Exited,
}

/// The supervisor's whole state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Settings.
    pub settings: Settings,
    /// Generations, oldest first (exited ones are removed).
    pub gens: Vec<Generation>,
    /// The next generation's id.
    pub next_id: u64,
    /// Where handover is.
    pub phase: Phase,
    /// The start in progress, if any.
    pub in_flight: Option<InFlight>,
    /// Reloads asked for during a start: answered by the next one.
    pub queued: Option<Vec<ReplyId>>,
    /// Crash restarts.
    pub restarts: Restarts,
    /// Clients of `handover stop`.
    pub stop_replies: Vec<ReplyId>,
    /// Counters.
    pub stats: Stats,
    /// Random state for the splay.
    rng_seed: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The delay before crash restart number `attempt` (1, 2, ...).
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max)
}

impl Machine {
    /// A supervisor with nothing started yet; [`Event::Start`] starts it.
    pub fn new(settings: Settings) -> Machine {
        Machine {
            settings,
            gens: Vec::new(),
            next_id: 1,
            phase: Phase::Running,
            in_flight: None,
            queued: None,
            restarts: Restarts::default(),
            stop_replies: Vec::new(),
            stats: Stats::default(),
            rng_seed: fastrand::u64(..),
        }
    }

    /// The generation that serves.
    pub fn current(&self) -> Option<&Generation> {
        self.gens
            .iter()
            .find(|g| matches!(g.state, GenState::Current { .. }))
    }

    fn gen_mut(&mut self, id: u64) -> Option<&mut Generation> {
        self.gens.iter_mut().find(|g| g.id == id)
    }

    fn find(&self, id: u64) -> Option<&Generation> {
        self.gens.iter().find(|g| g.id == id)
    }

    fn draining_replaced(&self) -> usize {
        self.gens
            .iter()
            .filter(
                |g| matches!(&g.state, GenState::Draining(e) if e.reason == EndReason::Replaced),
            )
            .count()
    }

    /// When [`Event::Tick`] is next needed.
    pub fn next_deadline(&self) -> Option<Mono> {
        let mut times = vec![self.restarts.due, self.restarts.reset_at];
        for g in &self.gens {
            match &g.state {
                GenState::Starting { deadline, ready_at } => {
                    times.push(Some(*deadline));
                    // Only once it runs: a delay counts from the start.
                    if g.pid.is_some() {
                        times.push(*ready_at);
                    }
                }
                GenState::Settling { until } => times.push(Some(*until)),
                GenState::Current { .. } => {}
                GenState::Draining(e) => {
                    times.extend([e.signal_at, e.kill_at, e.linger_until]);
                }
            }
        }
        times.into_iter().flatten().min()
    }

    /// One event in, the actions out. Every path of the supervisor is a
    /// match arm here or in the methods it calls.
    pub fn handle(&mut self, now: Mono, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.phase == Phase::Exited {
            return out;
        }
        match event {
            Event::Start => self.start(now, Purpose::First, Vec::new(), &mut out),
            Event::Reload { reply } => self.reload(now, reply, &mut out),
            Event::Stop { reply } => {
                self.stop_replies.push(reply);
                if self.phase == Phase::Running {
                    tracing::info!("stop requested: stopping");
                    self.begin_stop(now, None, &mut out);
                }
            }
            Event::Signal(sig) => self.signal(now, sig, &mut out),
            Event::Spawned { id, pid, unix_ms } => self.spawned(now, id, pid, unix_ms, &mut out),
            Event::SpawnFailed { id, error } => self.spawn_failed(now, id, error, &mut out),
            Event::Exited { pid, status } => self.exited(now, pid, status, &mut out),
            Event::GroupEmpty { id } => {
                if let Some(g) = self.gen_mut(id)
                    && let GenState::Draining(e) = &mut g.state
                {
                    e.group_empty = true;
                }
                self.check_gone(now, id, &mut out);
            }
            Event::Notify {
                pid,
                pgid,
                ready,
                status,
            } => self.notify(now, pid, pgid, ready, status, &mut out),
            Event::ProbePassed { id } => {
                if self
                    .find(id)
                    .is_some_and(|g| matches!(g.state, GenState::Starting { .. }))
                {
                    self.became_ready(now, id, &mut out);
                }
            }
            Event::Stderr { id, lines } => {
                if let Some(g) = self.gen_mut(id) {
                    for line in lines {
                        if g.stderr.len() == STDERR_TAIL {
                            g.stderr.pop_front();
                        }
                        g.stderr.push_back(line);
                    }
                }
            }
            Event::StderrClosed { id } => {
                if let Some(g) = self.gen_mut(id) {
                    g.stderr_closed = true;
                }
                self.check_gone(now, id, &mut out);
            }
            Event::Tick => self.tick(now, &mut out),
        }
        out
    }

    /// Starts a generation for `purpose`; `replies` wait for its outcome.
    fn start(&mut self, now: Mono, purpose: Purpose, replies: Vec<ReplyId>, out: &mut Vec<Action>) {
        let id = self.next_id;
        self.next_id += 1;
        let ready_at = match &self.settings.ready {
            ReadyMode::Delay(d) => Some(now.after(*d)),
            _ => None,
        };
        if purpose == Purpose::Reload && self.current().is_some() {
            out.push(Action::Notify(Sd::Reloading));
        }
        self.gens.push(Generation {
            id,
            pid: None,
            purpose,
            state: GenState::Starting {
                deadline: now.after(self.settings.ready_timeout),
                ready_at,
            },
            started: now,
            started_unix_ms: 0,
            ready_after: None,
            status: None,
            notified: false,
            stderr: VecDeque::new(),
            stderr_closed: false,
        });
        self.in_flight = Some(InFlight {
            id: id,
            replies,
            started: now,
        });
        out.push(Action::Spawn { id: id });
    }

    fn spawned(&mut self, now: Mono, id: u64, pid: u32, unix_ms: u128, out: &mut Vec<Action>) {
        let (probe, delay) = match &self.settings.ready {
            ReadyMode::Exec(c) => (Some(c.clone()), None),
            ReadyMode::Delay(d) => (None, Some(*d)),
            ReadyMode::Notify => (None, None),
        };
        let Some(g) = self.gen_mut(id) else { return };
        g.pid = Some(pid);
        g.started_unix_ms = unix_ms;
        // Readiness counts from when the process runs.
        g.started = now;
        if let (GenState::Starting { ready_at, .. }, Some(d)) = (&mut g.state, delay) {
            *ready_at = Some(now.after(d));
        }
        tracing::info!(
            generation = id,
            pid,
            "started a new generation; waiting until it is ready"
        );
        if let Some(command) = probe {
            out.push(Action::Probe { id, pid, command });
        }
    }

    fn spawn_failed(&mut self, now: Mono, id: u64, error: String, out: &mut Vec<Action>) {
        let Some(pos) = self.gens.iter().position(|g| g.id == id) else {
            return;
        };
        let g = self.gens.remove(pos);
        let message = format!("could not start a new generation: {error}");
        self.start_failed(now, id, g.purpose, message, out);
    }

    /// A reload was asked for.
    fn reload(&mut self, now: Mono, reply: Option<ReplyId>, out: &mut Vec<Action>) {
        if self.phase != Phase::Running {
            if let Some(to) = reply {
                out.push(Action::Reply {
                    to,
                    answer: error_answer("handover is stopping"),
                });
            }
            return;
        }
        if let (Some(signal), Some(cur)) = (self.settings.reload_signal, self.current())
            && let Some(pid) = cur.pid
        {
            tracing::info!(%signal, pid, "reload: signalled the current generation");
            out.push(Action::Signal { pgid: pid, signal });
            self.record(now, now, true, Some(pid), None);
            if let Some(to) = reply {
                out.push(Action::Reply {
                    to,
                    answer: json!({"ok": true, "signalled": signal.to_string(), "pid": pid}),
                });
            }
            return;
        }
        let replies: Vec<ReplyId> = reply.into_iter().collect();
        if self.in_flight.is_some() {
            // Answered by the start after the one in progress.
            self.queued.get_or_insert_with(Vec::new).extend(replies);
        } else if self.restarts.due.is_some() {
            // Nothing serves and a crash restart waits for its backoff: an
            // operator's reload starts it now.
            self.restarts.due = None;
            let mut waiting = std::mem::take(&mut self.restarts.replies);
            waiting.extend(replies);
            self.start(now, Purpose::Reload, waiting, out);
        } else if self.current().is_some() && self.draining_replaced() >= self.settings.max_draining
        {
            // Waits until an old generation has drained.
            self.queued.get_or_insert_with(Vec::new).extend(replies);
        } else {
            self.start(now, Purpose::Reload, replies, out);
        }
    }

    /// Starts the queued reload if nothing stands in its way.
    fn start_queued(&mut self, now: Mono, out: &mut Vec<Action>) {
        if self.phase != Phase::Running || self.in_flight.is_some() || self.queued.is_none() {
            return;
        }
        if self.current().is_some() && self.draining_replaced() >= self.settings.max_draining {
            return;
        }
        if self.restarts.due.is_some() {
            self.restarts.due = None;
        }
        let mut replies = self.queued.take().unwrap_or_default();
        replies.append(&mut self.restarts.replies);
        self.start(now, Purpose::Reload, replies, out);
    }

    fn signal(&mut self, now: Mono, sig: Signal, out: &mut Vec<Action>) {
        if sig == Signal::HUP {
            tracing::info!("SIGHUP: reload requested");
            self.reload(now, None, out);
        } else if sig == Signal::TERM || sig == Signal::INT {
            match self.phase {
                Phase::Running => {
                    tracing::info!(signal = %sig, "stopping");
                    self.begin_stop(now, None, out);
                }
                Phase::Stopping { hurried: false, .. } => self.hurry(now, sig, out),
                _ => {}
            }
        } else {
            match self.current().and_then(|c| c.pid) {
                Some(pid) => {
                    tracing::info!(signal = %sig, pid, "forwarding a signal to the current generation");
                    out.push(Action::Signal {
                        pgid: pid,
                        signal: sig,
                    });
                }
                None => tracing::warn!(signal = %sig, "no generation to forward the signal to"),
            }
        }
    }

    /// A second stop signal: SIGKILL to every generation now.
    fn hurry(&mut self, now: Mono, sig: Signal, out: &mut Vec<Action>) {
        if let Phase::Stopping { hurried, .. } = &mut self.phase {
            *hurried = true;
        }
        tracing::warn!(signal = %sig, "second stop signal: killing every generation now");
        for g in &mut self.gens {
            if let (Some(pid), GenState::Draining(e)) = (g.pid, &mut g.state)
                && !e.group_empty
            {
                out.push(Action::Signal {
                    pgid: pid,
                    signal: Signal::KILL,
                });
                e.signal_at = None;
                e.killed = true;
                e.signalled |= e.leader.is_none();
                e.kill_at = Some(now.after(KILL_AGAIN));
            }
        }
    }

    fn notify(
        &mut self,
        now: Mono,
        pid: u32,
        pgid: Option<u32>,
        ready: bool,
        status: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let notify_mode = self.settings.ready == ReadyMode::Notify;
        let Some(g) = self
            .gens
            .iter_mut()
            .find(|g| g.pid.is_some() && (g.pid == Some(pid) || (pgid.is_some() && g.pid == pgid)))
        else {
            tracing::debug!(
                pid,
                "a notify message from a process that is not a generation; ignored"
            );
            return;
        };
        g.notified = true;
        if let Some(s) = status {
            g.status = Some(s);
        }
        let id = g.id;
        if ready && notify_mode && matches!(g.state, GenState::Starting { .. }) {
            self.became_ready(now, id, out);
        }
    }

    /// Generation `id` (starting) is ready.
    fn became_ready(&mut self, now: Mono, id: u64, out: &mut Vec<Action>) {
        let settle = self.settings.settle;
        let exec = matches!(self.settings.ready, ReadyMode::Exec(_));
        let has_current = self.current().is_some();
        let Some(g) = self.gen_mut(id) else { return };
        g.ready_after = Some(now.since(g.started));
        if exec {
            out.push(Action::CancelProbe { id });
        }
        if !settle.is_zero() && has_current {
            g.state = GenState::Settling {
                until: now.after(settle),
            };
            tracing::info!(generation = id, settle = ?settle, "generation is ready; settling");
            return;
        }
        self.promote(now, id, out);
    }

    /// Generation `id` becomes the current one; the previous one drains.
    fn promote(&mut self, now: Mono, id: u64, out: &mut Vec<Action>) {
        let old = self.current().map(|g| g.id);
        if let Some(old) = old {
            self.begin_ending(now, old, EndReason::Replaced, out);
        }
        let reset_after = self.settings.backoff_reset;
        let Some(g) = self.gen_mut(id) else { return };
        g.state = GenState::Current { since: now };
        let (pid, ready_after) = (g.pid, g.ready_after.unwrap_or_default());
        self.restarts.reset_at = Some(now.after(reset_after));
        tracing::info!(generation = id, pid, ready_after = ?ready_after, "generation is ready");
        out.push(Action::Notify(Sd::Ready("serving".into())));
        let started = self
            .in_flight
            .as_ref()
            .filter(|f| f.id == id)
            .map_or(now, |f| f.started);
        self.record(now, started, true, pid, None);
        let answer = json!({
            "ok": true, "generation": id, "pid": pid,
            "ready_after_ms": ms(ready_after), "took_ms": ms(now.since(started)),
        });
        if let Some(f) = self.in_flight.take_if(|f| f.id == id) {
            for to in f.replies {
                out.push(Action::Reply {
                    to,
                    answer: answer.clone(),
                });
            }
        }
        self.start_queued(now, out);
    }

    /// Generation `id` starts ending for `reason`.
    fn begin_ending(&mut self, now: Mono, id: u64, reason: EndReason, out: &mut Vec<Action>) {
        let splay = self.settings.splay;
        let graceful = matches!(reason, EndReason::Replaced | EndReason::Stopping);
        let delay = if graceful && !splay.is_zero() {
            self.rng_seed = self
                .rng_seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let nanos = u64::try_from(splay.as_nanos()).unwrap_or(u64::MAX).max(1);
            Duration::from_nanos((self.rng_seed >> 11) % nanos)
        } else {
            Duration::ZERO
        };
        let exec = matches!(self.settings.ready, ReadyMode::Exec(_));
        let Some(g) = self.gen_mut(id) else { return };
        let leader = match &g.state {
            GenState::Draining(_) => return,
            GenState::Starting { .. } if exec => {
                out.push(Action::CancelProbe { id });
                None
            }
            _ => None,
        };
        g.state = GenState::Draining(Ending {
            reason,
            signal_at: Some(now.after(delay)),
            kill_at: None,
            killed: false,
            signalled: false,
            leader,
            group_empty: false,
            linger_until: None,
        });
        if let Some(pid) = g.pid {
            out.push(Action::WatchGroup { id, pgid: pid });
        }
        self.drain_due(now, id, out);
    }

    /// Sends what is due to ending generation `id`.
    fn drain_due(&mut self, now: Mono, id: u64, out: &mut Vec<Action>) {
        let (stop_signal, stop_timeout) = (self.settings.stop_signal, self.settings.stop_timeout);
        let Some(g) = self.gen_mut(id) else { return };
        let (id, pid) = (g.id, g.pid);
        let GenState::Draining(e) = &mut g.state else {
            return;
        };
        let Some(pid) = pid else { return };
        if e.signal_at.is_some_and(|t| t <= now) {
            e.signal_at = None;
            if !e.group_empty {
                out.push(Action::Signal {
                    pgid: pid,
                    signal: stop_signal,
                });
                // A stopped process acts on the stop signal only once it is
                // continued (systemd does the same).
                if stop_signal != Signal::KILL && stop_signal != Signal::CONT {
                    out.push(Action::Signal {
                        pgid: pid,
                        signal: Signal::CONT,
                    });
                }
                e.signalled |= e.leader.is_none();
                e.kill_at = Some(now.after(stop_timeout));
            }
        }
        if e.kill_at.is_some_and(|t| t <= now) {
            if e.group_empty {
                e.kill_at = None;
            } else {
                if !e.killed {
                    tracing::warn!(generation = id, pid, stop_timeout = ?stop_timeout,
                        leader_exited = e.leader.is_some(),
                        "the generation did not end within its stop timeout; sending SIGKILL to its process group");
                }
                out.push(Action::Signal {
                    pgid: pid,
                    signal: Signal::KILL,
                });
                e.killed = true;
                e.signalled |= e.leader.is_none();
                e.kill_at = Some(now.after(KILL_AGAIN));
            }
        }
    }

    /// A child of handover was reaped.
    fn exited(&mut self, now: Mono, pid: u32, status: Status, out: &mut Vec<Action>) {
        let Some(g) = self.gens.iter().find(|g| g.pid == Some(pid)) else {
            return;
        };
        let id = g.id;
        match g.state.clone() {
            GenState::Starting { .. } => {
                let why = format!("exited before it was ready: it {status}");
                self.begin_ending(now, id, EndReason::Failed(why), out);
            }
            GenState::Settling { .. } => {
                let why = format!("exited while it settled, after it was ready: it {status}");
                self.begin_ending(now, id, EndReason::Failed(why), out);
            }
            GenState::Current { since } => {
                tracing::error!(
                    generation = id, pid, status = %status, uptime = ?now.since(since),
                    stderr = %g.tail(5),
                    "the current generation died on its own; starting a new one"
                );
                self.restarts.reset_at = None;
                self.begin_ending(now, id, EndReason::Crashed, out);
                self.after_crash(now, id, status, out);
            }
            GenState::Draining(_) => {}
        }
        if let Some(g) = self.gen_mut(id)
            && let GenState::Draining(e) = &mut g.state
        {
            e.leader = Some(status);
        }
        self.check_gone(now, id, out);
    }

    /// The current generation `id` died: who serves next.
    fn after_crash(&mut self, now: Mono, id: u64, status: Status, out: &mut Vec<Action>) {
        if let Some(settling) = self
            .gens
            .iter()
            .find(|g| matches!(g.state, GenState::Settling { .. }))
            .map(|g| g.id)
        {
            tracing::info!(
                generation = settling,
                "the generation that settles takes over at once"
            );
            self.promote(now, settling, out);
            return;
        }
        if let Some(f) = &self.in_flight {
            tracing::info!(
                generation = f.id,
                "the generation being started takes over once it is ready"
            );
            out.push(Action::Notify(Sd::Status(format!(
                "no generation serves: generation {id} {status}; generation {} is starting",
                f.id
            ))));
            return;
        }
        let cause = format!("generation {id} {status}");
        self.schedule_restart(now, cause, out);
    }

    /// Nothing serves: starts a generation again after the backoff, or gives
    /// up at the start limit.
    fn schedule_restart(&mut self, now: Mono, cause: String, out: &mut Vec<Action>) {
        if self.phase != Phase::Running || self.restarts.due.is_some() {
            return;
        }
        let (burst, interval) = (
            self.settings.start_limit_burst,
            self.settings.start_limit_interval,
        );
        while self
            .restarts
            .recent
            .front()
            .is_some_and(|t| now.since(*t) >= interval)
        {
            self.restarts.recent.pop_front();
        }
        if burst > 0 && self.restarts.recent.len() >= burst as usize {
            let error = format!(
                "the program keeps failing: it was restarted {} times within {} \
                 (--start-limit-burst {burst}, --start-limit-interval {}); giving up. The last \
                 failure: {cause}",
                self.restarts.recent.len(),
                duration::format(interval),
                duration::format(interval),
            );
            self.begin_stop(now, Some(error), out);
            return;
        }
        self.restarts.attempt += 1;
        let delay = backoff(self.restarts.attempt, self.settings.max_backoff);
        self.restarts.due = Some(now.after(delay));
        tracing::info!(attempt = self.restarts.attempt, delay = ?delay, "restarting the program after a crash");
        out.push(Action::Notify(Sd::Status(format!(
            "restarting in {} (crash restart {} in a row): {}",
            duration::format(delay),
            self.restarts.attempt,
            first_line(&cause)
        ))));
    }

    /// Generation `id` ended, or may have: once its main process is reaped,
    /// its group is empty and its stderr closed (or lingered), it is gone.
    fn check_gone(&mut self, now: Mono, id: u64, out: &mut Vec<Action>) {
        let Some(g) = self.gen_mut(id) else { return };
        let closed = g.stderr_closed;
        let GenState::Draining(e) = &mut g.state else {
            return;
        };
        if e.leader.is_none() || !e.group_empty {
            return;
        }
        if !closed && e.linger_until.is_none_or(|t| t > now) {
            e.linger_until.get_or_insert(now.after(STDERR_LINGER));
            return;
        }
        self.gone(now, id, out);
    }

    /// Generation `id` is gone as a whole.
    fn gone(&mut self, now: Mono, id: u64, out: &mut Vec<Action>) {
        let Some(pos) = self.gens.iter().position(|g| g.id == id) else {
            return;
        };
        let g = self.gens.remove(pos);
        let GenState::Draining(e) = &g.state else {
            return;
        };
        let status = e.leader.map(|s| s.to_string()).unwrap_or_default();
        match &e.reason {
            EndReason::Replaced => {
                tracing::info!(generation = id, pid = g.pid, status = %status, "old generation is gone")
            }
            EndReason::Crashed => {
                tracing::info!(
                    generation = id,
                    pid = g.pid,
                    "the crashed generation is gone, with every process of its group"
                )
            }
            EndReason::Stopping => {
                tracing::info!(generation = id, pid = g.pid, status = %status, "generation stopped")
            }
            EndReason::Failed(why) => {
                let mut message = format!("the new {} {why}", g.label());
                if e.signalled {
                    message.push_str("; it was killed");
                }
                let tail = g.tail(10);
                if !tail.is_empty() {
                    message.push_str(&format!("\nits last stderr lines:\n{tail}"));
                }
                self.start_failed(now, id, g.purpose, message, out);
            }
        }
        if let Phase::Stopping { error, .. } = &self.phase
            && self.gens.is_empty()
        {
            let result = match error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            };
            self.exit(result, out);
            return;
        }
        self.start_queued(now, out);
    }

    /// The start of generation `id` failed with `message`.
    fn start_failed(
        &mut self,
        now: Mono,
        id: u64,
        purpose: Purpose,
        message: String,
        out: &mut Vec<Action>,
    ) {
        let Some(flight) = self.in_flight.take_if(|f| f.id == id) else {
            return;
        };
        self.record(now, flight.started, false, None, Some(message.clone()));
        for to in flight.replies {
            out.push(Action::Reply {
                to,
                answer: error_answer(message.clone()),
            });
        }
        if self.phase != Phase::Running {
            return;
        }
        if self.current().is_some() {
            tracing::error!(error = %message, "reload failed; the current generation serves on");
            out.push(Action::Notify(Sd::Ready(format!(
                "reload failed: {}",
                first_line(&message)
            ))));
        } else if purpose == Purpose::First {
            // Never served: failing here is failing to start.
            self.begin_stop(
                now,
                Some(format!("the first generation did not start: {message}")),
                out,
            );
            return;
        } else {
            tracing::error!(error = %message, "no generation serves; trying again");
            self.schedule_restart(now, message, out);
        }
        self.start_queued(now, out);
    }

    /// Stops every generation; exits when they are gone.
    fn begin_stop(&mut self, now: Mono, error: Option<String>, out: &mut Vec<Action>) {
        let status = match &error {
            Some(e) => format!("gave up: {}", first_line(e)),
            None => "stopping".to_string(),
        };
        if let Some(e) = &error {
            tracing::error!("{e}");
        }
        self.phase = Phase::Stopping {
            error: error.clone(),
            hurried: false,
        };
        out.push(Action::Notify(Sd::Stopping(status)));
        self.restarts.due = None;
        let mut waiting: Vec<ReplyId> = Vec::new();
        if let Some(f) = self.in_flight.take() {
            waiting.extend(f.replies);
        }
        waiting.extend(self.queued.take().unwrap_or_default());
        waiting.append(&mut self.restarts.replies);
        for to in waiting {
            out.push(Action::Reply {
                to,
                answer: error_answer("handover is stopping"),
            });
        }
        let ids: Vec<u64> = self.gens.iter().map(|g| g.id).collect();
        tracing::info!(generations = ids.len(), "stopping");
        for id in ids {
            if let Some(g) = self.gen_mut(id)
                && let GenState::Draining(e) = &mut g.state
            {
                // Already ending: it now ends for the stop (a failed start
                // is no longer answered).
                if matches!(e.reason, EndReason::Failed(_)) {
                    e.reason = EndReason::Stopping;
                }
                continue;
            }
            self.begin_ending(now, id, EndReason::Stopping, out);
        }
        if self.gens.is_empty() {
            let result = match error {
                Some(e) => Err(e),
                None => Ok(()),
            };
            self.exit(result, out);
        }
    }

    fn exit(&mut self, result: Result<(), String>, out: &mut Vec<Action>) {
        self.phase = Phase::Exited;
        for to in self.stop_replies.drain(..) {
            out.push(Action::Reply {
                to,
                answer: json!({"ok": true, "stopped": true}),
            });
        }
        tracing::info!("stopped");
        out.push(Action::Exit(result));
    }

    /// Acts on every deadline that is due.
    fn tick(&mut self, now: Mono, out: &mut Vec<Action>) {
        if self.restarts.reset_at.is_some_and(|t| t <= now) {
            self.restarts.reset_at = None;
            if self.restarts.attempt > 0 {
                tracing::debug!("the current generation stayed up: crash backoff reset");
            }
            self.restarts.attempt = 0;
        }
        if self.restarts.due.is_some_and(|t| t <= now) {
            self.restarts.due = None;
            self.restarts.recent.push_back(now);
            self.stats.restarts += 1;
            let replies = std::mem::take(&mut self.restarts.replies);
            self.start(now, Purpose::Restart, replies, out);
        }
        let ids: Vec<u64> = self.gens.iter().map(|g| g.id).collect();
        for id in ids {
            let Some(g) = self.find(id) else { continue };
            match g.state.clone() {
                GenState::Starting { deadline, ready_at } => {
                    if g.pid.is_some() && ready_at.is_some_and(|t| t <= now) {
                        self.became_ready(now, id, out);
                    } else if deadline <= now {
                        let why = self.timeout_reason(g);
                        self.begin_ending(now, id, EndReason::Failed(why), out);
                    }
                }
                GenState::Settling { until } if until <= now => self.promote(now, id, out),
                GenState::Draining(e) => {
                    self.drain_due(now, id, out);
                    if e.linger_until.is_some_and(|t| t <= now) {
                        self.gone(now, id, out);
                    }
                }
                _ => {}
            }
        }
    }

    fn timeout_reason(&self, g: &Generation) -> String {
        let t = duration::format(self.settings.ready_timeout);
        match &self.settings.ready {
            ReadyMode::Notify if g.notified => format!(
                "was not ready within {t}: it wrote to NOTIFY_SOCKET but never sent READY=1. \
                 Raise --ready-timeout if it needs longer"
            ),
            ReadyMode::Notify => format!(
                "was not ready within {t}: it never wrote to NOTIFY_SOCKET. Make the program send \
                 READY=1 there (sd_notify), or choose another --ready mode: delay:DURATION (ready \
                 once it stays up that long) or exec:COMMAND (ready once a probe command exits 0)"
            ),
            ReadyMode::Delay(_) => format!("was not ready within {t}"),
            ReadyMode::Exec(c) => {
                format!("was not ready within {t}: the probe {c:?} never exited 0")
            }
        }
    }

    fn record(
        &mut self,
        now: Mono,
        started: Mono,
        ok: bool,
        pid: Option<u32>,
        error: Option<String>,
    ) {
        let st = &mut self.stats;
        st.reloads += 1;
        if !ok {
            st.failed_reloads += 1;
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        st.last_reload = Some(json!({
            "ok": ok, "pid": pid, "error": error,
            "at_unix_ms": at, "took_ms": ms(now.since(started)),
        }));
    }
}

/// An error answer.
pub fn error_answer(msg: impl Into<String>) -> serde_json::Value {
    crate::control::error_answer(msg)
}

/// Serde for a [`Signal`] as its number.
mod signal_number {
    use handover::child::Signal;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_i32(s.as_raw())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Signal, D::Error> {
        let n = i32::deserialize(de)?;
        Signal::from_raw(n).ok_or_else(|| D::Error::custom(format!("{n} is not a signal")))
    }
}

/// Serde for an optional [`Signal`] as its number.
mod opt_signal_number {
    use handover::child::Signal;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(s: &Option<Signal>, ser: S) -> Result<S::Ok, S::Error> {
        match s {
            Some(s) => ser.serialize_some(&s.as_raw()),
            None => ser.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Signal>, D::Error> {
        match Option::<i32>::deserialize(de)? {
            None => Ok(None),
            Some(n) => Signal::from_raw(n)
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("{n} is not a signal"))),
        }
    }
}
