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

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use handover::child::Signal;

use super::config::{ReadyMode, SignalScope};
use crate::duration;

/// A point in time on `CLOCK_MONOTONIC` (time since boot): unlike
/// `std::time::Instant` it has a value that means the same in a re-executed
/// image of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

    /// A time `d` after boot (like `MONOTONIC_USEC=` of a notify message).
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
        /// `RELOADING=1`.
        reloading: bool,
        /// `MONOTONIC_USEC=`: when the sender began reloading.
        monotonic_usec: Option<u64>,
    },
    /// One run of a readiness probe of generation `id` ended.
    ProbeResult {
        /// Which generation.
        id: u64,
        /// Which probe: its index in the readiness modes.
        index: usize,
        /// How it went.
        outcome: ProbeOutcome,
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

/// How one run of a readiness probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// It passed (exec: exited 0; http: the new generation answered 2xx).
    Pass,
    /// It failed; the text says how.
    Fail(String),
    /// It proved nothing either way (http: another generation accepted the
    /// connection); the text says why.
    Unsure(String),
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
    /// Run readiness probe `index` (an `exec:` or `http:` mode) for
    /// generation `id` again and again, each run's outcome an
    /// [`Event::ProbeResult`], until [`Action::CancelProbe`]. An `exec:`
    /// probe stops at its first pass, which is final: it cannot tell an
    /// answer of the old generation (which serves until the settle window is
    /// over) from a failure. An `http:` probe goes on: while the generation
    /// settles, a failure fails the reload.
    Probe {
        /// Which generation.
        id: u64,
        /// Its pid (the probe gets it as `HANDOVER_PID`; an http: answer
        /// must come from its process group).
        pid: u32,
        /// The probe's index in the readiness modes.
        index: usize,
        /// The probe.
        mode: ReadyMode,
    },
    /// Stop running generation `id`'s probes (and kill one that runs).
    CancelProbe {
        /// Which generation.
        id: u64,
    },
    /// Send `signal` to a generation.
    Signal {
        /// The generation's pid, which is also its process group id.
        pgid: u32,
        /// The signal.
        signal: Signal,
        /// To its main process only, or to its whole process group.
        scope: SignalScope,
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
    /// When a generation counts as ready: every condition must hold.
    pub ready: Vec<ReadyMode>,
    /// How long a generation has to become ready.
    pub ready_timeout: Duration,
    /// How long a ready generation must stay up (and keep passing its
    /// probes) before the old one is told to stop (zero: at once); also how
    /// long a generation must stay up after an in-place reload was done.
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
    /// When an in-place reload is done (every condition must hold); empty:
    /// once the signal was sent (and the settle window passed).
    #[serde(default)]
    pub reload_ready: Vec<ReadyMode>,
    /// Who gets reload and forwarded signals.
    #[serde(default)]
    pub signal_scope: SignalScope,
    /// Longest crash-restart delay.
    pub max_backoff: Duration,
    /// A generation that stayed current this long resets the backoff.
    pub backoff_reset: Duration,
    /// Crash restarts allowed within `start_limit_interval` (0: no limit).
    pub start_limit_burst: u32,
    /// See `start_limit_burst`.
    pub start_limit_interval: Duration,
    /// How many replaced generations may drain while a reload starts
    /// another (`--max-draining`); a reload beyond that waits until one is
    /// gone. Each draining generation keeps its own stop deadline.
    pub max_draining: usize,
    /// `--stop-delay`: after a stop request, keep serving (crash restarts
    /// included) this long before the generations get the stop signal.
    #[serde(default)]
    pub stop_delay: Duration,
}

/// The first crash-restart delay; each crash in a row doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A generation that stays current this long resets the crash backoff.
pub const BACKOFF_RESET: Duration = Duration::from_secs(10);

/// Lines of a generation's stderr kept for error reports.
pub const STDERR_TAIL: usize = 20;

/// Lines of a generation's stderr that look like the cause of a failure
/// (see [`looks_like_a_cause`]), kept from its start for error reports.
pub const CAUSE_LINES: usize = 16;

/// With `--ready notify`: a generation that has not written to
/// `NOTIFY_SOCKET` this long after it started gets a warning that says why
/// it may never be ready (long before `--ready-timeout`).
pub const NOTIFY_HINT: Duration = Duration::from_secs(5);

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
    /// When it began ending.
    #[serde(default)]
    pub since: Option<Mono>,
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
        /// The readiness conditions met so far.
        #[serde(default)]
        checks: Checks,
        /// With `--ready notify`: when to warn if it has not written to
        /// `NOTIFY_SOCKET` yet.
        #[serde(default)]
        hint_at: Option<Mono>,
    },
    /// Ready; the previous generation still serves until `until`, and the
    /// new one must stay up (and keep passing its probes) until then.
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
    /// The first lines of its stderr that look like the cause of a failure
    /// (at most [`CAUSE_LINES`]).
    #[serde(default)]
    pub cause: Vec<String>,
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

    /// Keeps `line` (cut to 1000 characters) in the tail, and among the
    /// cause lines when it looks like one (with the indented lines before a
    /// Python-style `SomethingError: ...`, which say where).
    fn push_stderr(&mut self, mut line: String) {
        if line.len() > 1000 {
            let mut end = 1000;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
        if self.cause.len() < CAUSE_LINES && looks_like_a_cause(&line) {
            let mut lines = Vec::new();
            if is_exception_line(&line) {
                lines.extend(
                    self.stderr
                        .iter()
                        .rev()
                        .take(3)
                        .take_while(|l| l.starts_with(char::is_whitespace))
                        .cloned()
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev(),
                );
            }
            lines.push(line.clone());
            for l in lines {
                let key = normalized(&l);
                if self.cause.len() < CAUSE_LINES
                    && !self.cause.iter().any(|c| normalized(c) == key)
                {
                    self.cause.push(l);
                }
            }
        }
        if self.stderr.len() == STDERR_TAIL {
            self.stderr.pop_front();
        }
        self.stderr.push_back(line);
    }

    /// What its stderr says about a failure: the lines that look like the
    /// cause (those not among the last `n`), then its last `n` lines; each
    /// part headed, empty when there is nothing.
    pub fn report(&self, n: usize) -> String {
        let tail = self.tail(n);
        let cause = self.cause_not_in_tail(n);
        let mut out = String::new();
        if !cause.is_empty() {
            out.push_str("\nits stderr lines that look like the cause:\n");
            out.push_str(&cause.join("\n"));
        }
        if !tail.is_empty() {
            out.push_str("\nits last stderr lines:\n");
            out.push_str(&tail);
        }
        out
    }

    /// The cause lines that are not among the last `n` lines.
    pub fn cause_not_in_tail(&self, n: usize) -> Vec<&str> {
        let skip = self.stderr.len().saturating_sub(n);
        let shown: Vec<&String> = self.stderr.iter().skip(skip).collect();
        self.cause
            .iter()
            .filter(|c| !shown.contains(c))
            .map(String::as_str)
            .collect()
    }

    fn label(&self) -> String {
        match self.pid {
            Some(pid) => format!("generation {} (pid {pid})", self.id),
            None => format!("generation {}", self.id),
        }
    }
}

/// Whether a line of stderr looks like it says what went wrong.
pub fn looks_like_a_cause(line: &str) -> bool {
    const WORDS: [&str; 18] = [
        "error",
        "exception",
        "panic",
        "fatal",
        "failed",
        "failure",
        "cannot ",
        "can't ",
        "could not",
        "couldn't",
        "unable to",
        "denied",
        "refused",
        "no such file",
        "not found",
        "invalid",
        "segmentation fault",
        "abort",
    ];
    let lower = line.to_ascii_lowercase();
    !lower
        .trim_start()
        .starts_with("traceback (most recent call last)")
        && WORDS.iter().any(|w| lower.contains(w))
}

/// A Python-style exception line: `SyntaxError: ...`, `ModuleNotFoundError`.
fn is_exception_line(line: &str) -> bool {
    let name = line.split(':').next().unwrap_or("");
    !line.starts_with(char::is_whitespace)
        && (name.ends_with("Error") || name.ends_with("Exception"))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// `line` with every run of digits as `#`: the same message from another
/// worker (another pid, another time) is the same line.
fn normalized(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut digits = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('#');
            }
            digits = true;
        } else {
            out.push(c);
            digits = false;
        }
    }
    out
}

/// Counters for `status`, kept apart: starts of any kind, reloads (asked
/// for, by the control socket or SIGHUP), crash restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Reloads that were answered, done or failed (not the first start, not
    /// crash restarts).
    pub reloads: u64,
    /// Of which failed.
    pub failed_reloads: u64,
    /// Restarts after the current generation died.
    pub restarts: u64,
    /// Generations started (the first, reloads and crash restarts; an
    /// in-place reload starts none).
    #[serde(default)]
    pub starts: u64,
    /// The outcome of the last reload; if the generation it made current
    /// died since, `crashed` says how.
    pub last_reload: Option<serde_json::Value>,
    /// The last time the current generation died on its own.
    #[serde(default)]
    pub last_crash: Option<serde_json::Value>,
}

/// The readiness conditions a generation has met (for a start, or an
/// in-place reload).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checks {
    /// `READY=1` arrived (for an in-place reload: after `RELOADING=1`).
    pub ready_sent: bool,
    /// `RELOADING=1` arrived (in-place reloads).
    pub reloading_sent: bool,
    /// Probes (by index in the modes) whose last run passed.
    pub passing: BTreeSet<usize>,
    /// The last probe run that did not pass, for the error report.
    pub last_probe: Option<String>,
    /// The delays (`delay:`) are over.
    #[serde(default)]
    pub delays_over: bool,
}

impl Checks {
    /// Whether every condition of `modes` holds.
    fn met(&self, modes: &[ReadyMode]) -> bool {
        modes.iter().enumerate().all(|(i, m)| match m {
            ReadyMode::Notify => self.ready_sent,
            ReadyMode::Delay(_) => self.delays_over,
            ReadyMode::Exec(_) | ReadyMode::Http { .. } => self.passing.contains(&i),
        })
    }

    /// Records a probe run; `Some(reason)` when it failed.
    fn probe(
        &mut self,
        index: usize,
        mode: Option<&ReadyMode>,
        outcome: &ProbeOutcome,
    ) -> Option<String> {
        let name = mode.map(ToString::to_string).unwrap_or_default();
        match outcome {
            ProbeOutcome::Pass => {
                self.passing.insert(index);
                None
            }
            // An exec: probe's pass is final (see `Action::Probe`).
            ProbeOutcome::Fail(_)
                if matches!(mode, Some(ReadyMode::Exec(_))) && self.passing.contains(&index) =>
            {
                None
            }
            ProbeOutcome::Fail(why) => {
                self.passing.remove(&index);
                let why = format!("the probe {name} {why}");
                self.last_probe = Some(why.clone());
                Some(why)
            }
            ProbeOutcome::Unsure(why) => {
                self.last_probe = Some(format!("the probe {name}: {why}"));
                None
            }
        }
    }
}

/// The end of the delays among `modes`, counted from `from`.
fn delays_end(modes: &[ReadyMode], from: Mono) -> Option<Mono> {
    modes
        .iter()
        .filter_map(|m| match m {
            ReadyMode::Delay(d) => Some(from.after(*d)),
            _ => None,
        })
        .max()
}

/// An in-place reload: the current generation got `--reload-signal` and
/// reloads itself, keeping its pid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InPlace {
    /// The generation.
    pub id: u64,
    /// Who waits for the outcome.
    pub replies: Vec<ReplyId>,
    /// When it was asked for.
    pub asked: Mono,
    /// When the signal is due (after the splay); `None` once sent.
    pub signal_at: Option<Mono>,
    /// When the signal was sent.
    pub signalled: Option<Mono>,
    /// When it fails if it is not done (the ready timeout, from the signal).
    pub deadline: Option<Mono>,
    /// When the delays of `--reload-ready` are over.
    pub ready_at: Option<Mono>,
    /// The conditions of `--reload-ready` met so far.
    pub checks: Checks,
    /// How long after the signal they were all met.
    pub ready_after: Option<Duration>,
    /// Once met: the end of the settle window.
    pub settle_until: Option<Mono>,
    /// It failed because the generation died: answered once it is gone (so
    /// that the report has its last stderr lines).
    pub failed: Option<String>,
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
    /// A stop was asked for and `--stop-delay` runs until then: handover
    /// serves on, refuses reloads, and stops at this time (or at a second
    /// SIGTERM/SIGINT).
    #[serde(default)]
    pub stop_at: Option<Mono>,
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
    /// The in-place reload in progress, if any.
    #[serde(default)]
    pub in_place: Option<InPlace>,
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
            stop_at: None,
            in_flight: None,
            queued: None,
            restarts: Restarts::default(),
            stop_replies: Vec::new(),
            stats: Stats::default(),
            in_place: None,
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

    /// Replaced generations that still drain (what `max_draining` caps).
    pub fn draining_replaced(&self) -> usize {
        self.gens
            .iter()
            .filter(
                |g| matches!(&g.state, GenState::Draining(e) if e.reason == EndReason::Replaced),
            )
            .count()
    }

    /// Whether a reload has to wait for a replaced generation to be gone.
    fn draining_full(&self) -> bool {
        self.current().is_some() && self.draining_replaced() >= self.settings.max_draining.max(1)
    }

    /// The probes (exec:, http:) among `modes`, with their indices.
    fn probes(modes: &[ReadyMode]) -> impl Iterator<Item = (usize, &ReadyMode)> {
        modes.iter().enumerate().filter(|(_, m)| m.is_probe())
    }

    /// The readiness probes that run now (started by an [`Action::Probe`],
    /// not cancelled, not final): what an image of handover that takes over
    /// this state after `handover reexec` starts again. A passed `exec:`
    /// probe is final; an `http:` probe keeps running until the generation
    /// is current.
    pub fn probes_to_resume(&self) -> Vec<Action> {
        let mut out = Vec::new();
        let mut add =
            |id: u64, pid: u32, modes: &[ReadyMode], passing: Option<&BTreeSet<usize>>| {
                for (index, mode) in Self::probes(modes) {
                    // While settling, every probe has passed.
                    let passed = passing.is_none_or(|p| p.contains(&index));
                    if passed && matches!(mode, ReadyMode::Exec(_)) {
                        continue;
                    }
                    out.push(Action::Probe {
                        id,
                        pid,
                        index,
                        mode: mode.clone(),
                    });
                }
            };
        let in_place = self
            .in_place
            .as_ref()
            .filter(|ip| ip.failed.is_none() && ip.signalled.is_some());
        for g in &self.gens {
            let Some(pid) = g.pid else { continue };
            match &g.state {
                GenState::Starting { checks, .. } => {
                    add(g.id, pid, &self.settings.ready, Some(&checks.passing))
                }
                GenState::Settling { .. } => add(g.id, pid, &self.settings.ready, None),
                _ => {}
            }
            if let Some(ip) = in_place.filter(|ip| ip.id == g.id) {
                let passing = ip.settle_until.is_none().then_some(&ip.checks.passing);
                add(g.id, pid, &self.settings.reload_ready, passing);
            }
        }
        out
    }

    fn has_probes(&self) -> bool {
        self.settings.ready.iter().any(ReadyMode::is_probe)
    }

    /// When [`Event::Tick`] is next needed.
    pub fn next_deadline(&self) -> Option<Mono> {
        let mut times = vec![self.restarts.due, self.restarts.reset_at, self.stop_at];
        for g in &self.gens {
            match &g.state {
                GenState::Starting {
                    deadline,
                    ready_at,
                    hint_at,
                    ..
                } => {
                    times.push(Some(*deadline));
                    // Only once it runs: a delay counts from the start.
                    if g.pid.is_some() {
                        times.extend([*ready_at, *hint_at]);
                    }
                }
                GenState::Settling { until } => times.push(Some(*until)),
                GenState::Current { .. } => {}
                GenState::Draining(e) => {
                    times.extend([e.signal_at, e.kill_at, e.linger_until]);
                }
            }
        }
        if let Some(ip) = self.in_place.as_ref().filter(|ip| ip.failed.is_none()) {
            times.extend([ip.signal_at, ip.settle_until]);
            if ip.settle_until.is_none() {
                times.extend([ip.deadline, ip.ready_at]);
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
                if self.phase == Phase::Running && self.stop_at.is_none() {
                    tracing::info!("stop requested: stopping");
                    self.request_stop(now, &mut out);
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
                reloading,
                monotonic_usec,
            } => {
                let n = Notice {
                    ready,
                    reloading,
                    monotonic_usec,
                };
                self.notify(now, pid, pgid, n, status, &mut out)
            }
            Event::ProbeResult { id, index, outcome } => {
                self.probe_result(now, id, index, outcome, &mut out)
            }
            Event::Stderr { id, lines } => {
                if let Some(g) = self.gen_mut(id) {
                    for line in lines {
                        g.push_stderr(line);
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
        self.stats.starts += 1;
        if purpose == Purpose::Reload && self.current().is_some() {
            out.push(Action::Notify(Sd::Reloading));
        }
        self.gens.push(Generation {
            id,
            pid: None,
            purpose,
            state: GenState::Starting {
                deadline: now.after(self.settings.ready_timeout),
                ready_at: delays_end(&self.settings.ready, now),
                checks: Checks::default(),
                hint_at: None,
            },
            started: now,
            started_unix_ms: 0,
            ready_after: None,
            status: None,
            notified: false,
            stderr: VecDeque::new(),
            cause: Vec::new(),
            stderr_closed: false,
        });
        self.in_flight = Some(InFlight {
            id,
            replies,
            started: now,
        });
        out.push(Action::Spawn { id });
    }

    fn spawned(&mut self, now: Mono, id: u64, pid: u32, unix_ms: u128, out: &mut Vec<Action>) {
        let ready_at = delays_end(&self.settings.ready, now);
        let hint = (self.settings.ready.contains(&ReadyMode::Notify)
            && NOTIFY_HINT < self.settings.ready_timeout)
            .then(|| now.after(NOTIFY_HINT));
        let probes: Vec<(usize, ReadyMode)> = Self::probes(&self.settings.ready)
            .map(|(i, m)| (i, m.clone()))
            .collect();
        let Some(g) = self.gen_mut(id) else { return };
        g.pid = Some(pid);
        g.started_unix_ms = unix_ms;
        // Readiness counts from when the process runs.
        g.started = now;
        if let GenState::Starting {
            ready_at: r,
            hint_at,
            ..
        } = &mut g.state
        {
            *r = ready_at;
            *hint_at = hint;
        }
        tracing::info!(
            generation = id,
            pid,
            "started a new generation; waiting until it is ready"
        );
        for (index, mode) in probes {
            out.push(Action::Probe {
                id,
                pid,
                index,
                mode,
            });
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
        if self.phase != Phase::Running || self.stop_at.is_some() {
            if let Some(to) = reply {
                out.push(Action::Reply {
                    to,
                    answer: error_answer("handover is stopping"),
                });
            }
            return;
        }
        let replies: Vec<ReplyId> = reply.into_iter().collect();
        if self.settings.reload_signal.is_some() && self.current().is_some() {
            if self.in_place.is_some() || self.in_flight.is_some() {
                // Answered by the in-place reload after the one in progress.
                self.queued.get_or_insert_with(Vec::new).extend(replies);
            } else {
                self.begin_in_place(now, replies, out);
            }
            return;
        }
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
        } else if self.draining_full() {
            // Waits until an old generation has drained (--max-draining).
            let draining = self.draining_replaced();
            tracing::info!(
                draining,
                max_draining = self.settings.max_draining,
                "reload waits: as many old generations drain as --max-draining allows; it \
                 starts once one is gone (at the latest at its --stop-timeout)"
            );
            out.push(Action::Notify(Sd::Status(format!(
                "reload waits: {draining} old generation(s) still drain (--max-draining {})",
                self.settings.max_draining
            ))));
            self.queued.get_or_insert_with(Vec::new).extend(replies);
        } else {
            self.start(now, Purpose::Reload, replies, out);
        }
    }

    /// Starts the queued reload if nothing stands in its way.
    fn start_queued(&mut self, now: Mono, out: &mut Vec<Action>) {
        if self.phase != Phase::Running
            || self.in_flight.is_some()
            || self.in_place.is_some()
            || self.queued.is_none()
        {
            return;
        }
        if self.settings.reload_signal.is_some() && self.current().is_some() {
            let replies = self.queued.take().unwrap_or_default();
            self.begin_in_place(now, replies, out);
            return;
        }
        if self.draining_full() {
            return;
        }
        if self.restarts.due.is_some() {
            self.restarts.due = None;
        }
        let mut replies = self.queued.take().unwrap_or_default();
        replies.append(&mut self.restarts.replies);
        self.start(now, Purpose::Reload, replies, out);
    }

    /// A random delay in [0, --splay).
    fn splay_delay(&mut self) -> Duration {
        let splay = self.settings.splay;
        if splay.is_zero() {
            return Duration::ZERO;
        }
        self.rng_seed = self
            .rng_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let nanos = u64::try_from(splay.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos((self.rng_seed >> 11) % nanos)
    }

    /// An in-place reload of the current generation: `--reload-signal` (after
    /// the splay), then wait until `--reload-ready` holds and the settle
    /// window passed.
    fn begin_in_place(&mut self, now: Mono, replies: Vec<ReplyId>, out: &mut Vec<Action>) {
        let Some(id) = self.current().map(|g| g.id) else {
            return;
        };
        out.push(Action::Notify(Sd::Reloading));
        let delay = self.splay_delay();
        self.in_place = Some(InPlace {
            id,
            replies,
            asked: now,
            signal_at: Some(now.after(delay)),
            signalled: None,
            deadline: None,
            ready_at: None,
            checks: Checks::default(),
            ready_after: None,
            settle_until: None,
            failed: None,
        });
        self.in_place_due(now, out);
    }

    /// Moves the in-place reload on: sends the signal when due, and finishes
    /// it once its conditions and the settle window hold, or fails it at its
    /// deadline.
    fn in_place_due(&mut self, now: Mono, out: &mut Vec<Action>) {
        let (settle, timeout, scope) = (
            self.settings.settle,
            self.settings.ready_timeout,
            self.settings.signal_scope,
        );
        let Some(signal) = self.settings.reload_signal else {
            return;
        };
        let Some(id) = self
            .in_place
            .as_ref()
            .filter(|ip| ip.failed.is_none())
            .map(|ip| ip.id)
        else {
            return;
        };
        let Some(pid) = self.find(id).and_then(|g| g.pid) else {
            return;
        };
        let probes: Vec<(usize, ReadyMode)> = Self::probes(&self.settings.reload_ready)
            .map(|(i, m)| (i, m.clone()))
            .collect();
        let ready_at = delays_end(&self.settings.reload_ready, now);
        let Some(ip) = self.in_place.as_mut() else {
            return;
        };
        if ip.signal_at.is_some_and(|t| t <= now) {
            ip.signal_at = None;
            ip.signalled = Some(now);
            ip.deadline = Some(now.after(timeout));
            ip.ready_at = ready_at;
            tracing::info!(generation = id, pid, %signal, ?scope,
                "reload: signalled the current generation; waiting until it has reloaded in place");
            out.push(Action::Signal {
                pgid: pid,
                signal,
                scope,
            });
            for (index, mode) in probes {
                out.push(Action::Probe {
                    id,
                    pid,
                    index,
                    mode,
                });
            }
        }
        let Some(signalled) = ip.signalled else {
            return;
        };
        if ip.ready_at.is_some_and(|t| t <= now) {
            ip.ready_at = None;
        }
        if ip.ready_at.is_none() {
            ip.checks.delays_over = true;
        }
        if ip.settle_until.is_none() && ip.checks.met(&self.settings.reload_ready) {
            ip.ready_after = Some(now.since(signalled));
            if settle.is_zero() {
                self.finish_in_place(now, Ok(()), out);
                return;
            }
            ip.settle_until = Some(now.after(settle));
            tracing::info!(generation = id, pid, settle = ?settle, "reloaded in place; settling");
        }
        if ip.settle_until.is_some_and(|t| t <= now) {
            self.finish_in_place(now, Ok(()), out);
        } else if ip.settle_until.is_none() && ip.deadline.is_some_and(|t| t <= now) {
            let why = self.in_place_timeout_reason(pid, signal);
            self.finish_in_place(now, Err(why), out);
        }
    }

    fn in_place_timeout_reason(&self, pid: u32, signal: Signal) -> String {
        let t = duration::format(self.settings.ready_timeout);
        let Some(ip) = &self.in_place else {
            return String::new();
        };
        let mut unmet = Vec::new();
        for (i, m) in self.settings.reload_ready.iter().enumerate() {
            match m {
                ReadyMode::Notify if ip.checks.reloading_sent => unmet.push(
                    "it sent RELOADING=1 but not READY=1 after it. Raise --ready-timeout if it \
                     needs longer"
                        .to_string(),
                ),
                ReadyMode::Notify => unmet.push(
                    "it never sent RELOADING=1 (with --reload-ready notify the program must send \
                     RELOADING=1 when it begins to reload and READY=1 when it is done: systemd's \
                     Type=notify-reload contract)"
                        .to_string(),
                ),
                ReadyMode::Exec(_) | ReadyMode::Http { .. } if !ip.checks.passing.contains(&i) => {
                    unmet.push(probe_never_passed(m, &ip.checks))
                }
                _ => {}
            }
        }
        format!(
            "the in-place reload ({signal} to pid {pid}) was not done within {t}: {}",
            unmet.join("; ")
        )
    }

    /// The in-place reload ends with `result`.
    fn finish_in_place(&mut self, now: Mono, result: Result<(), String>, out: &mut Vec<Action>) {
        let Some(ip) = self.in_place.take() else {
            return;
        };
        let signal = self
            .settings
            .reload_signal
            .map(|s| s.to_string())
            .unwrap_or_default();
        if self.settings.reload_ready.iter().any(ReadyMode::is_probe) {
            out.push(Action::CancelProbe { id: ip.id });
        }
        let pid = self.find(ip.id).and_then(|g| g.pid);
        let serving = self
            .find(ip.id)
            .is_some_and(|g| matches!(g.state, GenState::Current { .. }));
        let answer = match &result {
            Ok(()) => {
                let ready_after = ip.ready_after.unwrap_or_default();
                tracing::info!(generation = ip.id, pid, ready_after = ?ready_after, "reloaded in place");
                out.push(Action::Notify(Sd::Ready("serving".into())));
                json!({
                    "ok": true, "in_place": true, "generation": ip.id, "pid": pid,
                    "signalled": signal, "ready_after_ms": ms(ready_after),
                    "took_ms": ms(now.since(ip.asked)),
                })
            }
            Err(message) => {
                tracing::error!(error = %message, "in-place reload failed");
                if serving {
                    out.push(Action::Notify(Sd::Ready(format!(
                        "reload failed: {}",
                        first_line(message)
                    ))));
                }
                error_answer(message.clone())
            }
        };
        self.record_reload(
            now,
            ip.asked,
            result.as_ref().err().cloned(),
            pid,
            ip.id,
            true,
        );
        for to in ip.replies {
            out.push(Action::Reply {
                to,
                answer: answer.clone(),
            });
        }
        self.start_queued(now, out);
    }

    fn signal(&mut self, now: Mono, sig: Signal, out: &mut Vec<Action>) {
        if sig == Signal::HUP {
            tracing::info!("SIGHUP: reload requested");
            self.reload(now, None, out);
        } else if sig == Signal::TERM || sig == Signal::INT {
            match self.phase {
                Phase::Running if self.stop_at.is_some() => {
                    tracing::info!(signal = %sig, "second stop signal: ending --stop-delay");
                    self.stop_at = None;
                    self.begin_stop(now, None, out);
                }
                Phase::Running => {
                    tracing::info!(signal = %sig, "stopping");
                    self.request_stop(now, out);
                }
                Phase::Stopping { hurried: false, .. } => self.hurry(now, sig, out),
                _ => {}
            }
        } else {
            let scope = self.settings.signal_scope;
            match self.current().and_then(|c| c.pid) {
                Some(pid) => {
                    tracing::info!(signal = %sig, pid, ?scope, "forwarding a signal to the current generation");
                    out.push(Action::Signal {
                        pgid: pid,
                        signal: sig,
                        scope,
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
                    scope: SignalScope::Group,
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
        n: Notice,
        status: Option<String>,
        out: &mut Vec<Action>,
    ) {
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
        let starting = matches!(g.state, GenState::Starting { .. });
        if let Some(ip) = self
            .in_place
            .as_mut()
            .filter(|ip| ip.id == id && ip.failed.is_none())
            && let Some(signalled) = ip.signalled
        {
            // RELOADING=1 counts when it is newer than the signal (a stale
            // datagram from before it carries an older MONOTONIC_USEC=).
            let fresh = n
                .monotonic_usec
                .is_none_or(|us| Mono::at(Duration::from_micros(us)) >= signalled);
            if n.reloading && fresh {
                ip.checks.reloading_sent = true;
            }
            if n.ready && ip.checks.reloading_sent {
                ip.checks.ready_sent = true;
            }
            self.in_place_due(now, out);
            return;
        }
        if n.ready
            && starting
            && let Some(GenState::Starting { checks, .. }) = self.gen_mut(id).map(|g| &mut g.state)
        {
            checks.ready_sent = true;
            self.check_ready(now, id, out);
        }
    }

    /// One run of a probe of generation `id` ended.
    fn probe_result(
        &mut self,
        now: Mono,
        id: u64,
        index: usize,
        outcome: ProbeOutcome,
        out: &mut Vec<Action>,
    ) {
        if let Some(ip) = self
            .in_place
            .as_mut()
            .filter(|ip| ip.id == id && ip.failed.is_none())
        {
            let mode = self.settings.reload_ready.get(index);
            let failed = ip.checks.probe(index, mode, &outcome);
            if let (Some(why), Some(_)) = (failed, ip.settle_until) {
                let pid = self.find(id).and_then(|g| g.pid).unwrap_or(0);
                let message = format!(
                    "generation {id} (pid {pid}) reloaded in place, then failed a readiness probe \
                     while it settled: {why}"
                );
                self.finish_in_place(now, Err(message), out);
                return;
            }
            self.in_place_due(now, out);
            return;
        }
        let mode = self.settings.ready.get(index).cloned();
        let Some(g) = self.gen_mut(id) else { return };
        match &mut g.state {
            GenState::Starting { checks, .. } => {
                if let Some(why) = checks.probe(index, mode.as_ref(), &outcome) {
                    tracing::debug!(generation = id, "{why}");
                }
                self.check_ready(now, id, out);
            }
            GenState::Settling { .. } if !matches!(mode, Some(ReadyMode::Exec(_))) => {
                if let ProbeOutcome::Fail(why) = outcome {
                    let name = mode.map(|m| m.to_string()).unwrap_or_default();
                    let why = format!(
                        "failed its readiness probe while it settled, after it was ready: the \
                         probe {name} {why}"
                    );
                    self.end(now, id, EndReason::Failed(why), None, out);
                }
            }
            _ => {}
        }
    }

    /// Generation `id` (starting) may now meet every readiness condition.
    fn check_ready(&mut self, now: Mono, id: u64, out: &mut Vec<Action>) {
        let Some(g) = self.find(id) else { return };
        if let GenState::Starting { checks, .. } = &g.state
            && g.pid.is_some()
            && checks.met(&self.settings.ready)
        {
            self.became_ready(now, id, out);
        }
    }

    /// Generation `id` (starting) is ready.
    fn became_ready(&mut self, now: Mono, id: u64, out: &mut Vec<Action>) {
        let settle = self.settings.settle;
        let has_current = self.current().is_some();
        let Some(g) = self.gen_mut(id) else { return };
        g.ready_after = Some(now.since(g.started));
        if !settle.is_zero() && has_current {
            g.state = GenState::Settling {
                until: now.after(settle),
            };
            let (pid, ready_after) = (g.pid, g.ready_after.unwrap_or_default());
            tracing::info!(generation = id, pid, ready_after = ?ready_after, settle = ?settle,
                "generation is ready; settling (the old one serves on until the window is over)");
            out.push(Action::Notify(Sd::Status(format!(
                "generation {id} is ready; settling for {}",
                duration::format(settle)
            ))));
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
        let probes = self.has_probes();
        let Some(g) = self.gen_mut(id) else { return };
        // How long it settled: from ready to now.
        let settled = matches!(g.state, GenState::Settling { .. })
            .then(|| now.since(g.started.after(g.ready_after.unwrap_or_default())));
        g.state = GenState::Current { since: now };
        let (pid, ready_after, purpose) = (g.pid, g.ready_after.unwrap_or_default(), g.purpose);
        if probes {
            out.push(Action::CancelProbe { id });
        }
        self.restarts.reset_at = Some(now.after(reset_after));
        tracing::info!(generation = id, pid, ready_after = ?ready_after, "generation is ready and serves");
        out.push(Action::Notify(Sd::Ready("serving".into())));
        let started = self
            .in_flight
            .as_ref()
            .filter(|f| f.id == id)
            .map_or(now, |f| f.started);
        if purpose == Purpose::Reload {
            self.record_reload(now, started, None, pid, id, false);
        }
        let mut answer = json!({
            "ok": true, "generation": id, "pid": pid,
            "ready_after_ms": ms(ready_after), "took_ms": ms(now.since(started)),
        });
        if let Some(s) = settled {
            answer["settled_ms"] = json!(ms(s));
        }
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
        self.end(now, id, reason, None, out);
    }

    /// [`Machine::begin_ending`] for a generation whose main process already
    /// ended with `leader` (if `Some`).
    fn end(
        &mut self,
        now: Mono,
        id: u64,
        reason: EndReason,
        leader: Option<Status>,
        out: &mut Vec<Action>,
    ) {
        let graceful = matches!(reason, EndReason::Replaced | EndReason::Stopping);
        let delay = if graceful {
            self.splay_delay()
        } else {
            Duration::ZERO
        };
        let probes = self.has_probes();
        let Some(g) = self.gen_mut(id) else { return };
        match &g.state {
            GenState::Draining(_) => return,
            GenState::Starting { .. } | GenState::Settling { .. } if probes => {
                out.push(Action::CancelProbe { id })
            }
            _ => {}
        }
        g.state = GenState::Draining(Ending {
            reason,
            signal_at: Some(now.after(delay)),
            kill_at: None,
            killed: false,
            signalled: false,
            leader,
            group_empty: false,
            linger_until: None,
            since: Some(now),
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
        let group = |signal| Action::Signal {
            pgid: pid,
            signal,
            scope: SignalScope::Group,
        };
        if e.signal_at.is_some_and(|t| t <= now) {
            e.signal_at = None;
            if !e.group_empty {
                out.push(group(stop_signal));
                // A stopped process acts on the stop signal only once it is
                // continued (systemd does the same).
                if stop_signal != Signal::KILL && stop_signal != Signal::CONT {
                    out.push(group(Signal::CONT));
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
                out.push(group(Signal::KILL));
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
                self.end(now, id, EndReason::Failed(why), Some(status), out);
            }
            GenState::Settling { .. } => {
                let why = format!("exited while it settled, after it was ready: it {status}");
                self.end(now, id, EndReason::Failed(why), Some(status), out);
            }
            GenState::Current { since } => {
                let uptime = now.since(since);
                // Its last stderr lines are logged once the generation is
                // gone (its pipe closed): they may still be on their way.
                tracing::error!(
                    generation = id, pid, status = %status, uptime = ?uptime,
                    "the current generation died on its own; starting a new one"
                );
                self.crashed(now, id, pid, status, uptime, out);
                self.restarts.reset_at = None;
                self.end(now, id, EndReason::Crashed, Some(status), out);
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

    /// Records that the current generation `id` died: counters, the last
    /// reload if it made it current, and an in-place reload in progress.
    fn crashed(
        &mut self,
        now: Mono,
        id: u64,
        pid: u32,
        status: Status,
        uptime: Duration,
        out: &mut Vec<Action>,
    ) {
        let crash = json!({
            "generation": id, "pid": pid, "status": status.to_string(),
            "uptime_ms": ms(uptime), "at_unix_ms": unix_ms(),
        });
        if let Some(last) = self.stats.last_reload.as_mut()
            && last["generation"] == id
            && last["ok"] == true
        {
            last["crashed"] = crash.clone();
        }
        self.stats.last_crash = Some(crash);
        let probes = self.settings.reload_ready.iter().any(ReadyMode::is_probe);
        if let Some(ip) = self
            .in_place
            .as_mut()
            .filter(|ip| ip.id == id && ip.failed.is_none())
        {
            let signal = self
                .settings
                .reload_signal
                .map(|s| s.to_string())
                .unwrap_or_default();
            ip.failed = Some(format!(
                "generation {id} (pid {pid}) {status} during its in-place reload ({signal})"
            ));
            if probes {
                out.push(Action::CancelProbe { id });
            }
        }
        let _ = now;
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
                tracing::error!(
                    generation = id,
                    pid = g.pid,
                    status = %status,
                    stderr = %g.tail(5),
                    cause = %g.cause_not_in_tail(5).join("\n"),
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
                message.push_str(&g.report(10));
                self.start_failed(now, id, g.purpose, message, out);
            }
        }
        if let Some(failed) = self
            .in_place
            .as_ref()
            .filter(|ip| ip.id == id)
            .and_then(|ip| ip.failed.clone())
        {
            let message = format!("{failed}{}", g.report(10));
            self.finish_in_place(now, Err(message), out);
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
        if purpose == Purpose::Reload {
            self.record_reload(now, flight.started, Some(message.clone()), None, id, false);
        }
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

    /// A stop was asked for: at once, or after `--stop-delay` (handover
    /// says STOPPING=1 now, so the service manager and load balancers know).
    fn request_stop(&mut self, now: Mono, out: &mut Vec<Action>) {
        let delay = self.settings.stop_delay;
        if delay.is_zero() {
            self.begin_stop(now, None, out);
            return;
        }
        tracing::info!(?delay, "serving on for --stop-delay before stopping");
        self.stop_at = Some(now.after(delay));
        out.push(Action::Notify(Sd::Stopping(format!(
            "stopping in {}",
            crate::duration::format(delay)
        ))));
    }

    /// Stops every generation; exits when they are gone.
    fn begin_stop(&mut self, now: Mono, error: Option<String>, out: &mut Vec<Action>) {
        let status = match &error {
            Some(e) => format!("gave up: {}", first_line(e)),
            None => "stopping".to_string(),
        };
        if error.is_some() {
            // The reason is reported once, when handover exits.
            tracing::info!("giving up: stopping every generation");
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
        if let Some(ip) = self.in_place.take() {
            if self.settings.reload_ready.iter().any(ReadyMode::is_probe) {
                out.push(Action::CancelProbe { id: ip.id });
            }
            waiting.extend(ip.replies);
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
        if self.stop_at.is_some_and(|t| t <= now) {
            self.stop_at = None;
            if self.phase == Phase::Running {
                tracing::info!("--stop-delay is over: stopping");
                self.begin_stop(now, None, out);
            }
        }
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
                GenState::Starting { deadline, .. } => {
                    self.starting_due(now, id);
                    self.check_ready(now, id, out);
                    if deadline <= now
                        && let Some(g) = self.find(id)
                        && matches!(g.state, GenState::Starting { .. })
                    {
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
        self.in_place_due(now, out);
    }

    /// A starting generation's timers: its delays, and the hint for a
    /// program that never writes to `NOTIFY_SOCKET`.
    fn starting_due(&mut self, now: Mono, id: u64) {
        let timeout = self.settings.ready_timeout;
        let Some(g) = self.gen_mut(id) else { return };
        let (pid, notified) = (g.pid, g.notified);
        let GenState::Starting {
            ready_at,
            hint_at,
            checks,
            ..
        } = &mut g.state
        else {
            return;
        };
        if pid.is_none() {
            return;
        }
        if ready_at.is_some_and(|t| t <= now) {
            *ready_at = None;
        }
        if ready_at.is_none() {
            checks.delays_over = true;
        }
        if hint_at.is_some_and(|t| t <= now) {
            *hint_at = None;
            if !notified {
                tracing::warn!(
                    generation = id,
                    pid,
                    "generation {id} has written nothing to NOTIFY_SOCKET after {}: with --ready \
                     notify it is ready only once it sends READY=1 there (sd_notify). If the \
                     program does not speak sd_notify it will fail at --ready-timeout ({}): use \
                     --ready delay:DURATION, exec:COMMAND or http:PATH instead",
                    duration::format(NOTIFY_HINT),
                    duration::format(timeout),
                );
            }
        }
    }

    fn timeout_reason(&self, g: &Generation) -> String {
        let t = duration::format(self.settings.ready_timeout);
        let GenState::Starting { checks, .. } = &g.state else {
            return format!("was not ready within {t}");
        };
        let mut unmet = Vec::new();
        for (i, m) in self.settings.ready.iter().enumerate() {
            match m {
                ReadyMode::Notify if checks.ready_sent => {}
                ReadyMode::Notify if g.notified => unmet.push(
                    "it wrote to NOTIFY_SOCKET but never sent READY=1. Raise --ready-timeout if \
                     it needs longer"
                        .to_string(),
                ),
                ReadyMode::Notify => unmet.push(
                    "it never wrote to NOTIFY_SOCKET. Make the program send READY=1 there \
                     (sd_notify), or choose another --ready mode: delay:DURATION (ready once it \
                     stays up that long), exec:COMMAND (ready once a probe command exits 0) or \
                     http:PATH (ready once the new generation answers GET PATH on its socket)"
                        .to_string(),
                ),
                ReadyMode::Delay(d) if !checks.delays_over => unmet.push(format!(
                    "its delay:{} is longer than --ready-timeout",
                    duration::format(*d)
                )),
                ReadyMode::Exec(_) | ReadyMode::Http { .. } if !checks.passing.contains(&i) => {
                    unmet.push(probe_never_passed(m, checks))
                }
                _ => {}
            }
        }
        if unmet.is_empty() {
            format!("was not ready within {t}")
        } else {
            format!("was not ready within {t}: {}", unmet.join("; "))
        }
    }

    /// Records the outcome of a reload (`error`: it failed).
    fn record_reload(
        &mut self,
        now: Mono,
        started: Mono,
        error: Option<String>,
        pid: Option<u32>,
        generation: u64,
        in_place: bool,
    ) {
        let st = &mut self.stats;
        st.reloads += 1;
        let ok = error.is_none();
        if !ok {
            st.failed_reloads += 1;
        }
        st.last_reload = Some(json!({
            "ok": ok, "pid": pid, "error": error, "generation": generation,
            "in_place": in_place, "at_unix_ms": unix_ms(), "took_ms": ms(now.since(started)),
        }));
    }
}

/// What a notify datagram says, beyond `STATUS=`.
#[derive(Debug, Clone, Copy)]
struct Notice {
    ready: bool,
    reloading: bool,
    monotonic_usec: Option<u64>,
}

/// "the probe P never passed (last: ...)".
fn probe_never_passed(mode: &ReadyMode, checks: &Checks) -> String {
    let mut s = format!("the probe {mode} never passed");
    if let Some(last) = &checks.last_probe {
        s.push_str(&format!(" (last run: {last})"));
    }
    s
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            ready: vec![ReadyMode::Notify],
            ready_timeout: Duration::from_secs(60),
            settle: Duration::ZERO,
            stop_signal: Signal::TERM,
            stop_timeout: Duration::from_secs(30),
            splay: Duration::ZERO,
            reload_signal: None,
            reload_ready: Vec::new(),
            signal_scope: SignalScope::Main,
            max_backoff: Duration::from_secs(30),
            backoff_reset: BACKOFF_RESET,
            start_limit_burst: 5,
            start_limit_interval: Duration::from_secs(10),
            max_draining: 1,
            stop_delay: Duration::ZERO,
        }
    }

    fn t(ms: u64) -> Mono {
        Mono::at(Duration::from_secs(1000) + Duration::from_millis(ms))
    }

    /// A machine under test: events at made-up times.
    struct H {
        m: Machine,
    }

    impl H {
        fn new(s: Settings) -> H {
            H { m: Machine::new(s) }
        }

        fn ev(&mut self, ms: u64, e: Event) -> Vec<Action> {
            self.m.handle(t(ms), e)
        }

        fn spawned(&mut self, ms: u64, id: u64) -> Vec<Action> {
            self.ev(
                ms,
                Event::Spawned {
                    id,
                    pid: pid(id),
                    unix_ms: 0,
                },
            )
        }

        fn ready(&mut self, ms: u64, id: u64) -> Vec<Action> {
            self.ev(
                ms,
                Event::Notify {
                    pid: pid(id),
                    pgid: Some(pid(id)),
                    ready: true,
                    status: Some("serving".into()),
                    reloading: false,
                    monotonic_usec: None,
                },
            )
        }

        /// The first generation, current at `ms`.
        fn first(&mut self, ms: u64) {
            assert_eq!(self.ev(ms, Event::Start), vec![Action::Spawn { id: 1 }]);
            self.spawned(ms, 1);
            let a = self.ready(ms + 50, 1);
            assert!(
                a.contains(&Action::Notify(Sd::Ready("serving".into()))),
                "{a:?}"
            );
            assert_eq!(self.current(), Some(1));
        }

        /// The first generation, made ready by `ready`.
        fn first_with(&mut self, ms: u64, ready: impl FnOnce(&mut H)) {
            self.ev(ms, Event::Start);
            self.spawned(ms, 1);
            ready(self);
            assert_eq!(self.current(), Some(1));
        }

        /// Main process reaped, group empty, stderr closed.
        fn gone(&mut self, ms: u64, id: u64, status: Status) -> Vec<Action> {
            let mut a = self.ev(
                ms,
                Event::Exited {
                    pid: pid(id),
                    status,
                },
            );
            a.extend(self.ev(ms, Event::GroupEmpty { id }));
            a.extend(self.ev(ms, Event::StderrClosed { id }));
            a
        }

        fn current(&self) -> Option<u64> {
            self.m.current().map(|g| g.id)
        }

        fn state(&self, id: u64) -> Option<&GenState> {
            self.m.gens.iter().find(|g| g.id == id).map(|g| &g.state)
        }

        fn ids(&self) -> Vec<u64> {
            self.m.gens.iter().map(|g| g.id).collect()
        }

        /// A notify datagram from generation `id`'s main process.
        fn notice(
            &mut self,
            ms: u64,
            id: u64,
            ready: bool,
            reloading: bool,
            usec: Option<u64>,
        ) -> Vec<Action> {
            self.ev(
                ms,
                Event::Notify {
                    pid: pid(id),
                    pgid: Some(pid(id)),
                    ready,
                    status: None,
                    reloading,
                    monotonic_usec: usec,
                },
            )
        }

        fn probe(&mut self, ms: u64, id: u64, index: usize, outcome: ProbeOutcome) -> Vec<Action> {
            self.ev(ms, Event::ProbeResult { id, index, outcome })
        }

        /// A reload asked for with reply `r`, its generation `id` spawned.
        fn reload(&mut self, ms: u64, r: u64, id: u64) -> Vec<Action> {
            let mut a = self.ev(
                ms,
                Event::Reload {
                    reply: Some(ReplyId(r)),
                },
            );
            a.extend(self.spawned(ms, id));
            a
        }
    }

    /// `MONOTONIC_USEC=` of the time `t(ms)`.
    fn usec(ms: u64) -> u64 {
        t(ms).since(Mono::at(Duration::ZERO)).as_micros() as u64
    }

    fn error_of(actions: &[Action]) -> String {
        let r = replies(actions);
        assert_eq!(r.len(), 1, "{actions:?}");
        assert_eq!(r[0].1["ok"], false, "{r:?}");
        r[0].1["error"].as_str().unwrap().to_string()
    }

    fn pid(id: u64) -> u32 {
        100 * id as u32
    }

    /// A signal to generation `id`'s whole process group.
    fn sig(id: u64, signal: Signal) -> Action {
        Action::Signal {
            pgid: pid(id),
            signal,
            scope: SignalScope::Group,
        }
    }

    /// A signal to generation `id`'s main process.
    fn sig_main(id: u64, signal: Signal) -> Action {
        Action::Signal {
            pgid: pid(id),
            signal,
            scope: SignalScope::Main,
        }
    }

    fn replies(actions: &[Action]) -> Vec<(ReplyId, serde_json::Value)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply { to, answer } => Some((*to, answer.clone())),
                _ => None,
            })
            .collect()
    }

    fn spawns(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { id } => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn statuses(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Notify(Sd::Status(s) | Sd::Ready(s) | Sd::Stopping(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn backoff_grows_and_caps() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(1, max), Duration::from_millis(100));
        assert_eq!(backoff(2, max), Duration::from_millis(200));
        assert_eq!(backoff(30, max), max);
    }

    #[test]
    fn a_reload_starts_a_generation_makes_it_current_and_drains_the_old_one() {
        let mut h = H::new(settings());
        h.first(0);
        let a = h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(7)),
            },
        );
        assert_eq!(
            a,
            vec![Action::Notify(Sd::Reloading), Action::Spawn { id: 2 }]
        );
        h.spawned(1000, 2);
        assert_eq!(h.state(2).map(GenState::name), Some("starting"));
        // READY=1 from another process of its group counts.
        let a = h.ev(
            1300,
            Event::Notify {
                pid: 4242,
                pgid: Some(pid(2)),
                ready: true,
                status: None,
                reloading: false,
                monotonic_usec: None,
            },
        );
        assert_eq!(h.current(), Some(2));
        let r = replies(&a);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, ReplyId(7));
        assert_eq!(r[0].1["generation"], 2);
        assert_eq!(r[0].1["ready_after_ms"], 300.0);
        assert!(a.contains(&sig(1, Signal::TERM)) && a.contains(&sig(1, Signal::CONT)));
        assert!(a.contains(&Action::WatchGroup {
            id: 1,
            pgid: pid(1)
        }));
        assert!(
            matches!(h.state(1), Some(GenState::Draining(e)) if e.reason == EndReason::Replaced)
        );
        // Gone only once the main process, the group and stderr are.
        h.ev(
            2000,
            Event::Exited {
                pid: pid(1),
                status: Status::Code(0),
            },
        );
        assert_eq!(h.ids(), vec![1, 2]);
        h.ev(2000, Event::GroupEmpty { id: 1 });
        assert_eq!(h.ids(), vec![1, 2], "stderr still open: lingers");
        h.ev(2000, Event::StderrClosed { id: 1 });
        assert_eq!(h.ids(), vec![2]);
        // The first start is a start, not a reload.
        assert_eq!(h.m.stats.reloads, 1);
        assert_eq!(h.m.stats.starts, 2);
        assert_eq!(h.m.stats.failed_reloads, 0);
    }

    #[test]
    fn stderr_that_never_closes_lingers_200ms() {
        let mut h = H::new(settings());
        h.first(0);
        h.ev(1000, Event::Reload { reply: None });
        h.spawned(1000, 2);
        h.ready(1100, 2);
        h.ev(
            1200,
            Event::Exited {
                pid: pid(1),
                status: Status::Code(0),
            },
        );
        h.ev(1200, Event::GroupEmpty { id: 1 });
        assert_eq!(h.m.next_deadline(), Some(t(1200).after(STDERR_LINGER)));
        h.ev(1399, Event::Tick);
        assert_eq!(h.ids(), vec![1, 2]);
        h.ev(1400, Event::Tick);
        assert_eq!(h.ids(), vec![2]);
    }

    #[test]
    fn reloads_during_a_start_are_answered_by_the_next_one_after_the_old_one_drained() {
        let mut h = H::new(settings());
        h.first(0);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.spawned(1000, 2);
        assert!(
            spawns(&h.ev(
                1100,
                Event::Reload {
                    reply: Some(ReplyId(2))
                }
            ))
            .is_empty()
        );
        assert!(
            spawns(&h.ev(
                1100,
                Event::Reload {
                    reply: Some(ReplyId(3))
                }
            ))
            .is_empty()
        );
        let a = h.ready(1200, 2);
        assert_eq!(replies(&a).len(), 1);
        // Generation 1 still drains: the queued reload waits (max_draining 1).
        assert!(spawns(&a).is_empty(), "{a:?}");
        let a = h.gone(1500, 1, Status::Code(0));
        assert_eq!(spawns(&a), vec![3]);
        h.spawned(1500, 3);
        let a = h.ready(1600, 3);
        let r = replies(&a);
        assert_eq!(
            r.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![ReplyId(2), ReplyId(3)]
        );
        assert!(r.iter().all(|r| r.1["generation"] == 3));
    }

    #[test]
    fn a_generation_that_exits_before_ready_fails_the_reload_once_it_is_gone() {
        let mut h = H::new(settings());
        h.first(0);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.spawned(1000, 2);
        h.ev(
            1100,
            Event::Stderr {
                id: 2,
                lines: vec!["boom: bad config on line 7".into()],
            },
        );
        let a = h.ev(
            1200,
            Event::Exited {
                pid: pid(2),
                status: Status::Code(3),
            },
        );
        assert!(replies(&a).is_empty(), "answered before it is gone: {a:?}");
        // Its group may hold leftovers: they get the stop signal.
        assert!(a.contains(&sig(2, Signal::TERM)), "{a:?}");
        let a = {
            let mut a = h.ev(1250, Event::GroupEmpty { id: 2 });
            a.extend(h.ev(1250, Event::StderrClosed { id: 2 }));
            a
        };
        let r = replies(&a);
        assert_eq!(r.len(), 1);
        let e = r[0].1["error"].as_str().unwrap();
        assert!(
            e.contains(
                "the new generation 2 (pid 200) exited before it was ready: it exited with code 3"
            ),
            "{e}"
        );
        assert!(
            e.contains("its last stderr lines:\nboom: bad config on line 7"),
            "{e}"
        );
        assert!(!e.contains("it was killed"), "{e}");
        assert_eq!(h.current(), Some(1));
        assert_eq!(h.ids(), vec![1]);
        assert_eq!(h.m.stats.failed_reloads, 1);
        assert!(
            statuses(&a)
                .iter()
                .any(|s| s.starts_with("reload failed: the new generation 2"))
        );
    }

    #[test]
    fn a_generation_not_ready_in_time_is_stopped_then_killed_and_the_reload_fails() {
        let mut s = settings();
        s.ready_timeout = Duration::from_secs(2);
        s.stop_timeout = Duration::from_secs(5);
        let mut h = H::new(s);
        h.first(0);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.spawned(1000, 2);
        assert_eq!(h.m.next_deadline(), Some(t(3000)));
        let a = h.ev(3000, Event::Tick);
        assert!(a.contains(&sig(2, Signal::TERM)), "{a:?}");
        assert_eq!(h.m.next_deadline(), Some(t(8000)));
        let a = h.ev(8000, Event::Tick);
        assert!(a.contains(&sig(2, Signal::KILL)), "{a:?}");
        // Still not gone a second later: SIGKILL again.
        assert!(h.ev(9000, Event::Tick).contains(&sig(2, Signal::KILL)));
        let a = h.gone(
            9100,
            2,
            Status::Signaled {
                signal: 9,
                core_dumped: false,
            },
        );
        let e = replies(&a)[0].1["error"].as_str().unwrap().to_string();
        assert!(
            e.contains("was not ready within 2s: it never wrote to NOTIFY_SOCKET"),
            "{e}"
        );
        assert!(e.contains("; it was killed"), "{e}");
    }

    #[test]
    fn a_crashed_generation_is_stopped_as_a_whole_and_restarted_after_the_backoff() {
        let mut h = H::new(settings());
        h.first(0);
        let a = h.ev(
            5000,
            Event::Exited {
                pid: pid(1),
                status: Status::Code(1),
            },
        );
        // Its worker (same group) gets the stop signal, SIGKILL later.
        assert!(a.contains(&sig(1, Signal::TERM)), "{a:?}");
        assert!(a.contains(&Action::WatchGroup {
            id: 1,
            pgid: pid(1)
        }));
        assert!(
            statuses(&a)
                .iter()
                .any(|s| s.contains("restarting in 100ms")),
            "{a:?}"
        );
        assert_eq!(h.current(), None);
        assert!(spawns(&h.ev(5099, Event::Tick)).is_empty());
        assert_eq!(spawns(&h.ev(5100, Event::Tick)), vec![2]);
        assert_eq!(h.m.stats.restarts, 1);
        // The worker ignores the stop signal: SIGKILL at the stop timeout.
        assert!(h.ev(35000, Event::Tick).contains(&sig(1, Signal::KILL)));
        h.ev(35010, Event::GroupEmpty { id: 1 });
        h.ev(35010, Event::StderrClosed { id: 1 });
        assert_eq!(h.ids(), vec![2]);
    }

    #[test]
    fn a_crash_of_the_old_generation_during_a_reload_starts_nothing_more() {
        let mut h = H::new(settings());
        h.first(0);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.spawned(1000, 2);
        let a = h.ev(
            1100,
            Event::Exited {
                pid: pid(1),
                status: Status::Signaled {
                    signal: 9,
                    core_dumped: false,
                },
            },
        );
        assert!(spawns(&a).is_empty());
        assert_eq!(h.m.restarts.due, None);
        let a = h.ready(1500, 2);
        assert_eq!(replies(&a)[0].1["generation"], 2);
        assert_eq!(h.current(), Some(2));
        let mut all = h.gone(1600, 1, Status::Code(0));
        all.extend(h.ev(60_000, Event::Tick));
        assert!(spawns(&all).is_empty(), "a second start: {all:?}");
        assert_eq!(h.m.stats.restarts, 0);
    }

    #[test]
    fn a_failed_start_while_nothing_serves_schedules_a_restart() {
        let mut h = H::new(settings());
        h.first(0);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.spawned(1000, 2);
        h.ev(
            1100,
            Event::Exited {
                pid: pid(1),
                status: Status::Code(1),
            },
        );
        h.gone(1150, 1, Status::Code(1));
        let a = h.gone(1200, 2, Status::Code(3));
        assert!(replies(&a)[0].1["ok"] == false);
        assert!(
            h.m.restarts.due.is_some(),
            "nothing serves and nothing is due"
        );
        assert_eq!(spawns(&h.ev(1300, Event::Tick)), vec![3]);
    }

    #[test]
    fn the_backoff_doubles_in_a_crash_loop_and_resets_after_10s_up() {
        let mut s = settings();
        s.start_limit_burst = 0;
        let mut h = H::new(s);
        h.first(0);
        let mut now = 1000;
        let mut delays = Vec::new();
        for id in 1..=4u64 {
            h.ev(
                now,
                Event::Exited {
                    pid: pid(id),
                    status: Status::Code(1),
                },
            );
            let due = h.m.restarts.due.unwrap();
            delays.push(due.since(t(now)).as_millis());
            now = due.since(t(0)).as_millis() as u64;
            assert_eq!(spawns(&h.ev(now, Event::Tick)), vec![id + 1]);
            h.spawned(now, id + 1);
            h.ready(now + 10, id + 1);
            now += 1000;
        }
        assert_eq!(delays, vec![100, 200, 400, 800]);
        // Generation 5 stays up 10 s: the next crash starts over at 100 ms.
        now += 10_000;
        h.ev(now, Event::Tick);
        assert_eq!(h.m.restarts.attempt, 0);
        h.ev(
            now + 1,
            Event::Exited {
                pid: pid(5),
                status: Status::Code(1),
            },
        );
        assert_eq!(h.m.restarts.due, Some(t(now + 101)));
    }

    #[test]
    fn the_start_limit_gives_up_with_the_cause_and_tells_systemd() {
        let mut s = settings();
        s.start_limit_burst = 2;
        let mut h = H::new(s);
        h.first(0);
        h.ev(
            1000,
            Event::Exited {
                pid: pid(1),
                status: Status::Code(1),
            },
        );
        h.gone(1000, 1, Status::Code(1));
        let mut now = 1100;
        for id in 2..=3u64 {
            assert_eq!(spawns(&h.ev(now, Event::Tick)), vec![id]);
            h.spawned(now, id);
            h.ev(
                now,
                Event::Stderr {
                    id,
                    lines: vec!["boom".into()],
                },
            );
            let a = h.gone(now + 10, id, Status::Code(3));
            now =
                h.m.restarts
                    .due
                    .map(|d| d.since(t(0)).as_millis() as u64)
                    .unwrap_or(now);
            if id == 3 {
                // Two restarts within 10 s: the third is refused.
                let stop = statuses(&a);
                assert!(
                    stop.iter()
                        .any(|s| s.starts_with("gave up: the program keeps failing")),
                    "{stop:?}"
                );
                let exit = a.iter().find_map(|a| match a {
                    Action::Exit(r) => Some(r.clone()),
                    _ => None,
                });
                let e = exit.expect("no exit").unwrap_err();
                assert!(
                    e.contains("restarted 2 times within 10s") && e.contains("giving up"),
                    "{e}"
                );
                assert!(
                    e.contains("exited with code 3") && e.contains("boom"),
                    "{e}"
                );
            }
        }
        assert_eq!(h.m.phase, Phase::Exited);
    }

    #[test]
    fn stop_drains_everything_a_second_sigterm_kills_and_stop_is_answered_last() {
        let mut h = H::new(settings());
        h.first(0);
        let a = h.ev(1000, Event::Stop { reply: ReplyId(9) });
        assert!(a.contains(&sig(1, Signal::TERM)));
        assert!(a.contains(&Action::Notify(Sd::Stopping("stopping".into()))));
        assert!(replies(&a).is_empty());
        // A reload now is refused.
        let a = h.ev(
            1001,
            Event::Reload {
                reply: Some(ReplyId(10)),
            },
        );
        assert_eq!(replies(&a)[0].1["error"], "handover is stopping");
        let a = h.ev(1002, Event::Signal(Signal::TERM));
        assert!(a.contains(&sig(1, Signal::KILL)), "{a:?}");
        // A third does nothing more.
        assert!(h.ev(1003, Event::Signal(Signal::INT)).is_empty());
        let a = h.gone(
            1100,
            1,
            Status::Signaled {
                signal: 9,
                core_dumped: false,
            },
        );
        assert_eq!(
            replies(&a),
            vec![(ReplyId(9), json!({"ok": true, "stopped": true}))]
        );
        assert_eq!(a.last(), Some(&Action::Exit(Ok(()))));
    }

    #[test]
    fn stop_delay_serves_on_refuses_reloads_then_stops() {
        let mut h = H::new(Settings {
            stop_delay: Duration::from_secs(5),
            ..settings()
        });
        h.first(0);
        let a = h.ev(1000, Event::Stop { reply: ReplyId(9) });
        assert!(!a.contains(&sig(1, Signal::TERM)), "{a:?}");
        assert!(
            a.contains(&Action::Notify(Sd::Stopping("stopping in 5s".into()))),
            "{a:?}"
        );
        assert_eq!(h.m.next_deadline(), Some(t(6000)));
        // Reloads are refused meanwhile; a second stop request just waits.
        let a = h.ev(
            1001,
            Event::Reload {
                reply: Some(ReplyId(10)),
            },
        );
        assert_eq!(replies(&a)[0].1["error"], "handover is stopping");
        assert!(h.ev(1002, Event::Stop { reply: ReplyId(11) }).is_empty());
        // A crash during the delay is restarted as usual.
        h.gone(2000, 1, Status::Code(1));
        let a = h.ev(2100, Event::Tick);
        assert_eq!(spawns(&a), vec![2]);
        h.spawned(2100, 2);
        h.ready(2200, 2);
        assert_eq!(h.current(), Some(2));
        // Then, at the deadline, the stop.
        assert!(h.ev(5999, Event::Tick).is_empty());
        let a = h.ev(6000, Event::Tick);
        assert!(a.contains(&sig(2, Signal::TERM)), "{a:?}");
        let a = h.gone(6100, 2, Status::Code(0));
        assert_eq!(replies(&a).len(), 2);
        assert_eq!(a.last(), Some(&Action::Exit(Ok(()))));
    }

    #[test]
    fn a_second_sigterm_ends_the_stop_delay() {
        let mut h = H::new(Settings {
            stop_delay: Duration::from_secs(30),
            ..settings()
        });
        h.first(0);
        let a = h.ev(1000, Event::Signal(Signal::TERM));
        assert!(!a.contains(&sig(1, Signal::TERM)), "{a:?}");
        let a = h.ev(1200, Event::Signal(Signal::TERM));
        assert!(a.contains(&sig(1, Signal::TERM)), "{a:?}");
        // A third is the usual hurry: SIGKILL.
        let a = h.ev(1300, Event::Signal(Signal::TERM));
        assert!(a.contains(&sig(1, Signal::KILL)), "{a:?}");
    }

    #[test]
    fn sigterm_during_the_first_start_stops_cleanly() {
        let mut h = H::new(settings());
        h.ev(0, Event::Start);
        h.spawned(0, 1);
        let a = h.ev(100, Event::Signal(Signal::TERM));
        assert!(a.contains(&sig(1, Signal::TERM)));
        let a = h.gone(200, 1, Status::Code(0));
        assert_eq!(a.last(), Some(&Action::Exit(Ok(()))));
    }

    #[test]
    fn a_first_start_that_fails_ends_handover_with_the_reason() {
        let mut h = H::new(settings());
        h.ev(0, Event::Start);
        let a = h.ev(
            0,
            Event::SpawnFailed {
                id: 1,
                error: "no such program".into(),
            },
        );
        match a.last() {
            Some(Action::Exit(Err(e))) => assert!(
                e.contains("the first generation did not start: could not start a new generation: no such program"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reload_that_cannot_spawn_fails_at_once_and_the_current_serves_on() {
        let mut h = H::new(settings());
        h.first(0);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        let a = h.ev(
            1000,
            Event::SpawnFailed {
                id: 2,
                error: "Too many open files".into(),
            },
        );
        let e = replies(&a)[0].1["error"].as_str().unwrap().to_string();
        assert!(
            e.starts_with("could not start a new generation: Too many open files"),
            "{e}"
        );
        assert_eq!(h.ids(), vec![1]);
        assert_eq!(h.current(), Some(1));
        // The next reload works.
        assert_eq!(spawns(&h.ev(2000, Event::Reload { reply: None })), vec![3]);
    }

    #[test]
    fn signals_other_than_hup_term_int_go_to_the_current_generation() {
        let mut h = H::new(settings());
        h.first(0);
        // --signal-scope main (the default): its main process only.
        assert_eq!(
            h.ev(10, Event::Signal(Signal::USR1)),
            vec![sig_main(1, Signal::USR1)]
        );
        assert_eq!(spawns(&h.ev(10, Event::Signal(Signal::HUP))), vec![2]);
    }

    #[test]
    fn with_a_reload_signal_a_reload_signals_the_current_generation() {
        let mut s = settings();
        s.reload_signal = Some(Signal::USR2);
        let mut h = H::new(s);
        h.first(0);
        let a = h.ev(
            10,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        assert!(a.contains(&sig_main(1, Signal::USR2)));
        assert_eq!(replies(&a)[0].1["signalled"], "SIGUSR2");
        assert!(spawns(&a).is_empty());
    }

    #[test]
    fn delay_and_exec_readiness() {
        let mut s = settings();
        s.ready = vec![ReadyMode::Delay(Duration::from_millis(500))];
        let mut h = H::new(s);
        h.ev(0, Event::Start);
        h.spawned(100, 1);
        assert_eq!(h.m.next_deadline(), Some(t(600)));
        h.ev(600, Event::Tick);
        assert_eq!(h.current(), Some(1));

        let mut s = settings();
        s.ready = vec![ReadyMode::Exec("true".into())];
        let mut h = H::new(s);
        h.ev(0, Event::Start);
        let a = h.spawned(0, 1);
        assert_eq!(
            a,
            vec![Action::Probe {
                id: 1,
                pid: pid(1),
                index: 0,
                mode: ReadyMode::Exec("true".into()),
            }]
        );
        // READY=1 does not count in exec mode.
        h.ready(10, 1);
        assert_eq!(h.current(), None);
        let a = h.ev(
            20,
            Event::ProbeResult {
                id: 1,
                index: 0,
                outcome: ProbeOutcome::Pass,
            },
        );
        assert_eq!(a[0], Action::CancelProbe { id: 1 });
        assert_eq!(h.current(), Some(1));
    }

    #[test]
    fn with_a_settle_window_the_old_generation_serves_until_it_is_over() {
        let mut s = settings();
        s.settle = Duration::from_secs(2);
        let mut h = H::new(s);
        h.first(0);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.spawned(1000, 2);
        let a = h.ready(1100, 2);
        assert!(replies(&a).is_empty());
        assert_eq!(h.state(2).map(GenState::name), Some("settling"));
        assert_eq!(h.current(), Some(1));
        let a = h.ev(3100, Event::Tick);
        assert_eq!(h.current(), Some(2));
        assert_eq!(replies(&a)[0].1["generation"], 2);
        // A generation that dies while it settles fails the reload.
        h.gone(3200, 1, Status::Code(0));
        h.ev(
            4000,
            Event::Reload {
                reply: Some(ReplyId(2)),
            },
        );
        h.spawned(4000, 3);
        h.ready(4100, 3);
        h.ev(
            4500,
            Event::Exited {
                pid: pid(3),
                status: Status::Code(4),
            },
        );
        let a = {
            let mut a = h.ev(4500, Event::GroupEmpty { id: 3 });
            a.extend(h.ev(4500, Event::StderrClosed { id: 3 }));
            a
        };
        let e = replies(&a)[0].1["error"].as_str().unwrap().to_string();
        assert!(e.contains("exited while it settled"), "{e}");
        assert_eq!(h.current(), Some(2));
    }

    #[test]
    fn a_reload_while_a_restart_waits_for_its_backoff_starts_now() {
        let mut h = H::new(settings());
        h.first(0);
        h.ev(
            1000,
            Event::Exited {
                pid: pid(1),
                status: Status::Code(1),
            },
        );
        assert!(h.m.restarts.due.is_some());
        let a = h.ev(
            1010,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        assert_eq!(spawns(&a), vec![2]);
        assert_eq!(h.m.restarts.due, None);
    }

    #[test]
    fn the_state_serializes_and_a_restored_machine_carries_on() {
        let mut h = H::new(settings());
        h.first(0);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.spawned(1000, 2);
        h.ev(
            1100,
            Event::Stderr {
                id: 2,
                lines: vec!["hello".into()],
            },
        );
        let text = serde_json::to_string(&h.m).unwrap();
        let mut m: Machine = serde_json::from_str(&text).unwrap();
        let a = m.handle(
            t(1200),
            Event::Notify {
                pid: pid(2),
                pgid: None,
                ready: true,
                status: None,
                reloading: false,
                monotonic_usec: None,
            },
        );
        assert_eq!(replies(&a)[0].0, ReplyId(1));
        assert_eq!(m.current().map(|g| g.id), Some(2));
        assert_eq!(m.gens[1].tail(5), "hello");
    }

    #[test]
    fn a_notify_message_from_a_stranger_is_ignored() {
        let mut h = H::new(settings());
        h.ev(0, Event::Start);
        h.spawned(0, 1);
        h.ev(
            10,
            Event::Notify {
                pid: 77,
                pgid: Some(77),
                ready: true,
                status: None,
                reloading: false,
                monotonic_usec: None,
            },
        );
        assert_eq!(h.current(), None);
    }

    #[test]
    fn a_new_generation_that_dies_while_it_settles_fails_the_reload_and_nothing_restarts() {
        let mut s = settings();
        s.settle = Duration::from_secs(2);
        let mut h = H::new(s);
        h.first(0);
        h.reload(1000, 1, 2);
        let a = h.ready(1300, 2);
        // Ready, but the old one serves on: no stop signal, no answer yet.
        assert!(!a.contains(&sig(1, Signal::TERM)), "{a:?}");
        assert!(replies(&a).is_empty());
        assert_eq!(h.current(), Some(1));
        assert_eq!(h.m.next_deadline(), Some(t(3300)));
        // Its workers fail to boot; the master says why and exits.
        h.ev(
            1400,
            Event::Stderr {
                id: 2,
                lines: vec![
                    "[INFO] Booting worker with pid: 17".into(),
                    "[ERROR] Exception in worker process".into(),
                    "Traceback (most recent call last):".into(),
                    "  File \"/srv/app.py\", line 6".into(),
                    "    def broken(".into(),
                    "              ^".into(),
                    "SyntaxError: '(' was never closed".into(),
                    "[ERROR] Exception in worker process".into(),
                ]
                .into_iter()
                .chain((0..30).map(|i| format!("  noise {i}")))
                .chain(["[ERROR] Reason: Worker failed to boot.".to_string()])
                .collect(),
            },
        );
        let a = h.gone(1500, 2, Status::Code(3));
        let e = error_of(&a);
        assert!(
            e.starts_with("the new generation 2 (pid 200) exited while it settled, after it was ready: it exited with code 3"),
            "{e}"
        );
        // The lines that say why, though far from the last ones, once each.
        assert!(
            e.contains("its stderr lines that look like the cause:\n[ERROR] Exception in worker process\n  File \"/srv/app.py\", line 6\n    def broken(\n              ^\nSyntaxError: '(' was never closed\n"),
            "{e}"
        );
        assert_eq!(e.matches("Exception in worker process").count(), 1, "{e}");
        assert!(e.contains("its last stderr lines:\n"), "{e}");
        assert!(e.ends_with("[ERROR] Reason: Worker failed to boot."), "{e}");
        // The old generation serves on, alone; no crash restart of the new
        // version is scheduled.
        assert_eq!(h.current(), Some(1));
        assert_eq!(h.ids(), vec![1]);
        assert_eq!(h.m.restarts.due, None);
        assert!(spawns(&h.ev(60_000, Event::Tick)).is_empty());
        assert_eq!(h.m.stats.failed_reloads, 1);
        assert_eq!(h.m.stats.restarts, 0);
        assert_eq!(h.m.stats.last_reload.as_ref().unwrap()["ok"], false);
    }

    #[test]
    fn the_first_start_does_not_settle() {
        let mut s = settings();
        s.settle = Duration::from_secs(2);
        let mut h = H::new(s);
        h.first(0);
        assert_eq!(h.m.stats.reloads, 0);
        assert_eq!(h.m.stats.starts, 1);
    }

    #[test]
    fn a_reload_answer_says_how_long_it_settled() {
        let mut s = settings();
        s.settle = Duration::from_secs(2);
        let mut h = H::new(s);
        h.first(0);
        h.reload(1000, 1, 2);
        h.ready(1300, 2);
        let a = h.ev(3300, Event::Tick);
        let r = replies(&a);
        assert_eq!(r[0].1["ready_after_ms"], 300.0);
        assert_eq!(r[0].1["settled_ms"], 2000.0);
        assert_eq!(r[0].1["took_ms"], 2300.0);
        assert!(a.contains(&sig(1, Signal::TERM)));
    }

    #[test]
    fn every_readiness_condition_must_hold_in_any_order() {
        let mut s = settings();
        s.ready = vec![
            ReadyMode::Notify,
            ReadyMode::Http {
                socket: None,
                path: "/health".into(),
            },
            ReadyMode::Delay(Duration::from_millis(500)),
        ];
        let mut h = H::new(s);
        h.ev(0, Event::Start);
        let a = h.spawned(0, 1);
        assert_eq!(
            a,
            vec![Action::Probe {
                id: 1,
                pid: pid(1),
                index: 1,
                mode: ReadyMode::Http {
                    socket: None,
                    path: "/health".into()
                },
            }]
        );
        h.probe(100, 1, 1, ProbeOutcome::Pass);
        h.ready(200, 1);
        assert_eq!(h.current(), None, "the delay is not over");
        // A probe that fails again takes its pass back.
        h.probe(300, 1, 1, ProbeOutcome::Fail("answered 503".into()));
        h.ev(500, Event::Tick);
        assert_eq!(h.current(), None);
        // Another generation answering proves nothing either way.
        h.probe(600, 1, 1, ProbeOutcome::Unsure("another generation".into()));
        assert_eq!(h.current(), None);
        let a = h.probe(700, 1, 1, ProbeOutcome::Pass);
        assert_eq!(h.current(), Some(1));
        assert!(a.contains(&Action::CancelProbe { id: 1 }));
        // A deadline in the past is never asked for again.
        assert_eq!(h.m.next_deadline(), Some(t(10_700)));
    }

    #[test]
    fn a_probe_that_never_passes_is_named_in_the_error_with_its_last_run() {
        let mut s = settings();
        s.ready = vec![
            ReadyMode::Notify,
            ReadyMode::Http {
                socket: None,
                path: "/health".into(),
            },
        ];
        s.ready_timeout = Duration::from_secs(5);
        let mut h = H::new(s);
        h.first_with(0, |h| {
            h.ready(10, 1);
            h.probe(20, 1, 1, ProbeOutcome::Pass);
        });
        h.reload(1000, 1, 2);
        h.ready(1100, 2);
        h.probe(
            1200,
            2,
            1,
            ProbeOutcome::Unsure("another generation accepted its connection".into()),
        );
        let a = h.ev(6000, Event::Tick);
        assert!(a.contains(&Action::CancelProbe { id: 2 }), "{a:?}");
        let a = h.gone(6100, 2, Status::Code(0));
        let e = error_of(&a);
        assert!(
            e.contains("was not ready within 5s: the probe http:/health never passed (last run: the probe http:/health: another generation accepted its connection)"),
            "{e}"
        );
        assert!(!e.contains("NOTIFY_SOCKET"), "READY=1 came: {e}");
    }

    #[test]
    fn an_http_probe_that_fails_while_the_generation_settles_fails_the_reload() {
        let mut s = settings();
        s.settle = Duration::from_secs(2);
        s.ready = vec![ReadyMode::Http {
            socket: None,
            path: "/health".into(),
        }];
        let mut h = H::new(s);
        h.first_with(0, |h| {
            h.probe(10, 1, 0, ProbeOutcome::Pass);
        });
        h.reload(1000, 1, 2);
        let a = h.probe(1100, 2, 0, ProbeOutcome::Pass);
        assert!(
            !a.contains(&Action::CancelProbe { id: 2 }),
            "probes go on while it settles"
        );
        assert_eq!(h.state(2).map(GenState::name), Some("settling"));
        // Another generation answering proves nothing.
        let a = h.probe(
            1200,
            2,
            0,
            ProbeOutcome::Unsure("another generation".into()),
        );
        assert!(a.is_empty(), "{a:?}");
        let a = h.probe(
            1300,
            2,
            0,
            ProbeOutcome::Fail("answered 503 Service Unavailable".into()),
        );
        assert!(a.contains(&Action::CancelProbe { id: 2 }), "{a:?}");
        assert!(a.contains(&sig(2, Signal::TERM)), "{a:?}");
        let e = error_of(&h.gone(1400, 2, Status::Code(0)));
        assert!(
            e.contains("failed its readiness probe while it settled, after it was ready: the probe http:/health answered 503 Service Unavailable"),
            "{e}"
        );
        assert_eq!(h.current(), Some(1));
    }

    #[test]
    fn an_exec_probe_passes_once_for_all() {
        let mut s = settings();
        s.settle = Duration::from_secs(2);
        s.ready = vec![ReadyMode::Notify, ReadyMode::Exec("check".into())];
        let mut h = H::new(s);
        h.first_with(0, |h| {
            h.ready(10, 1);
            h.probe(20, 1, 1, ProbeOutcome::Pass);
        });
        h.reload(1000, 1, 2);
        h.probe(1100, 2, 1, ProbeOutcome::Pass);
        // A later run answered by the old generation (a failure to a probe
        // that checks HANDOVER_PID) does not take it back...
        h.probe(1200, 2, 1, ProbeOutcome::Fail("exited with code 1".into()));
        h.ready(1300, 2);
        assert_eq!(h.state(2).map(GenState::name), Some("settling"));
        // ...nor fail the reload while it settles.
        let a = h.probe(1400, 2, 1, ProbeOutcome::Fail("exited with code 1".into()));
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(replies(&h.ev(3300, Event::Tick))[0].1["ok"], true);
    }

    #[test]
    fn reloads_do_not_wait_for_draining_generations_up_to_max_draining() {
        let mut s = settings();
        s.max_draining = 2;
        let mut h = H::new(s);
        h.first(0);
        h.reload(1000, 1, 2);
        h.ready(1100, 2);
        // Generation 1 drains (a long request); the next reload starts now.
        let a = h.reload(1200, 2, 3);
        assert_eq!(spawns(&a), vec![3]);
        let a = h.ready(1300, 3);
        assert_eq!(replies(&a)[0].1["generation"], 3);
        assert_eq!(h.m.draining_replaced(), 2);
        // Each keeps its own stop deadline.
        let kill_at = |h: &H, id| match h.state(id) {
            Some(GenState::Draining(e)) => e.kill_at,
            other => panic!("{other:?}"),
        };
        assert_eq!(kill_at(&h, 1), Some(t(31_100)));
        assert_eq!(kill_at(&h, 2), Some(t(31_300)));
        // A third reload would make three drain: it waits.
        let a = h.ev(
            1400,
            Event::Reload {
                reply: Some(ReplyId(3)),
            },
        );
        assert!(spawns(&a).is_empty(), "{a:?}");
        assert!(
            statuses(&a)
                .iter()
                .any(|s| s.starts_with("reload waits: 2 old generation(s) still drain")),
            "{a:?}"
        );
        // Generation 1 reaches its stop timeout first: SIGKILL, gone, and the
        // waiting reload starts.
        assert!(h.ev(31_100, Event::Tick).contains(&sig(1, Signal::KILL)));
        assert!(!h.ev(31_100, Event::Tick).contains(&sig(2, Signal::KILL)));
        let a = h.gone(
            31_150,
            1,
            Status::Signaled {
                signal: 9,
                core_dumped: false,
            },
        );
        assert_eq!(spawns(&a), vec![4]);
    }

    #[test]
    fn with_max_draining_1_at_most_two_generations_exist() {
        let mut s = settings();
        s.settle = Duration::from_millis(500);
        let mut h = H::new(s);
        h.first(0);
        let mut most = 0;
        let mut now = 1000;
        for r in 1..=5u64 {
            h.ev(
                now,
                Event::Reload {
                    reply: Some(ReplyId(r)),
                },
            );
            most = most.max(h.ids().len());
        }
        for id in 2..=3u64 {
            h.spawned(now, id);
            h.ready(now + 100, id);
            most = most.max(h.ids().len());
            now += 600;
            h.ev(now, Event::Tick);
            most = most.max(h.ids().len());
            h.gone(now + 100, id - 1, Status::Code(0));
            most = most.max(h.ids().len());
            now += 200;
        }
        assert_eq!(most, 2);
        assert_eq!(h.current(), Some(3));
    }

    fn in_place(reload_ready: Vec<ReadyMode>) -> H {
        let mut s = settings();
        s.reload_signal = Some(Signal::USR2);
        s.reload_ready = reload_ready;
        s.settle = Duration::from_secs(1);
        s.ready_timeout = Duration::from_secs(10);
        let mut h = H::new(s);
        h.first(0);
        h
    }

    #[test]
    fn an_in_place_reload_waits_for_reloading_then_ready_then_the_settle_window() {
        let mut h = in_place(vec![ReadyMode::Notify]);
        let a = h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        assert_eq!(
            a,
            vec![Action::Notify(Sd::Reloading), sig_main(1, Signal::USR2)]
        );
        // READY=1 before RELOADING=1 (a periodic one, say) does not count;
        // nor does a RELOADING=1 from before the signal.
        assert!(replies(&h.notice(1010, 1, true, false, None)).is_empty());
        assert!(replies(&h.notice(1020, 1, false, true, Some(usec(900)))).is_empty());
        h.notice(1030, 1, true, false, None);
        assert!(!h.m.in_place.as_ref().unwrap().checks.reloading_sent);
        h.notice(1100, 1, false, true, Some(usec(1050)));
        let a = h.notice(1500, 1, true, false, None);
        assert!(replies(&a).is_empty(), "it settles first");
        assert_eq!(h.m.next_deadline(), Some(t(2500)));
        let a = h.ev(2500, Event::Tick);
        let r = replies(&a);
        assert_eq!(r[0].1["ok"], true);
        assert_eq!(r[0].1["in_place"], true);
        assert_eq!(r[0].1["pid"], pid(1));
        assert_eq!(r[0].1["ready_after_ms"], 500.0);
        assert!(a.contains(&Action::Notify(Sd::Ready("serving".into()))));
        assert_eq!(h.m.stats.reloads, 1);
        assert_eq!(h.m.stats.starts, 1, "no generation was started");
        assert_eq!(h.current(), Some(1));
    }

    #[test]
    fn an_in_place_reload_that_never_says_ready_fails_at_the_timeout() {
        let mut h = in_place(vec![ReadyMode::Notify]);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.notice(1100, 1, false, true, None);
        let a = h.ev(11_000, Event::Tick);
        let e = error_of(&a);
        assert!(
            e.starts_with("the in-place reload (SIGUSR2 to pid 100) was not done within 10s: it sent RELOADING=1 but not READY=1"),
            "{e}"
        );
        assert_eq!(h.m.stats.failed_reloads, 1);
        assert!(h.m.in_place.is_none());
        // It never said RELOADING=1 at all: the error says what is expected.
        h.ev(
            12_000,
            Event::Reload {
                reply: Some(ReplyId(2)),
            },
        );
        let e = error_of(&h.ev(22_000, Event::Tick));
        assert!(
            e.contains("it never sent RELOADING=1") && e.contains("Type=notify-reload"),
            "{e}"
        );
    }

    #[test]
    fn a_program_that_dies_during_its_in_place_reload_fails_it_with_its_stderr_then_restarts() {
        let mut h = in_place(vec![ReadyMode::Notify]);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.notice(1100, 1, false, true, None);
        h.ev(
            1200,
            Event::Stderr {
                id: 1,
                lines: vec!["config error: unknown key 'wrokers'".into()],
            },
        );
        let a = h.ev(
            1300,
            Event::Exited {
                pid: pid(1),
                status: Status::Code(1),
            },
        );
        assert!(replies(&a).is_empty(), "answered once its stderr is in");
        let mut a = h.ev(1300, Event::GroupEmpty { id: 1 });
        a.extend(h.ev(1300, Event::StderrClosed { id: 1 }));
        let e = error_of(&a);
        assert!(
            e.starts_with(
                "generation 1 (pid 100) exited with code 1 during its in-place reload (SIGUSR2)"
            ),
            "{e}"
        );
        assert!(e.contains("config error: unknown key 'wrokers'"), "{e}");
        // Nothing serves: a crash restart is due, as for any crash.
        assert!(h.m.restarts.due.is_some());
        assert_eq!(h.m.stats.failed_reloads, 1);
        assert_eq!(
            h.m.stats.last_crash.as_ref().unwrap()["status"],
            "exited with code 1"
        );
    }

    #[test]
    fn reloads_during_an_in_place_reload_are_answered_by_the_next_one() {
        let mut h = in_place(Vec::new());
        let a = h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        assert!(a.contains(&sig_main(1, Signal::USR2)));
        let a = h.ev(
            1100,
            Event::Reload {
                reply: Some(ReplyId(2)),
            },
        );
        assert!(a.is_empty(), "{a:?}");
        h.ev(
            1200,
            Event::Reload {
                reply: Some(ReplyId(3)),
            },
        );
        // Without --reload-ready: done once it stayed up for the settle window.
        let a = h.ev(2000, Event::Tick);
        assert_eq!(
            replies(&a).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![ReplyId(1)]
        );
        assert!(
            a.contains(&sig_main(1, Signal::USR2)),
            "the next one starts: {a:?}"
        );
        let a = h.ev(3000, Event::Tick);
        assert_eq!(
            replies(&a).iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![ReplyId(2), ReplyId(3)]
        );
        assert_eq!(h.m.stats.reloads, 2);
    }

    #[test]
    fn in_place_probes_run_after_the_signal_and_a_failure_while_settling_fails_it() {
        let health = ReadyMode::Http {
            socket: None,
            path: "/health".into(),
        };
        let mut h = in_place(vec![health.clone()]);
        let a = h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        assert!(a.contains(&Action::Probe {
            id: 1,
            pid: pid(1),
            index: 0,
            mode: health,
        }));
        h.probe(1100, 1, 0, ProbeOutcome::Pass);
        let a = h.probe(
            1300,
            1,
            0,
            ProbeOutcome::Fail("answered 500 Internal Server Error".into()),
        );
        assert!(a.contains(&Action::CancelProbe { id: 1 }));
        let e = error_of(&a);
        assert!(
            e.contains("reloaded in place, then failed a readiness probe while it settled: the probe http:/health answered 500 Internal Server Error"),
            "{e}"
        );
        assert!(a.contains(&Action::Notify(Sd::Ready(format!("reload failed: {e}")))));
    }

    #[test]
    fn the_splay_delays_the_reload_signal() {
        let mut s = settings();
        s.reload_signal = Some(Signal::HUP);
        s.splay = Duration::from_secs(1);
        let mut h = H::new(s);
        h.first(0);
        let a = h.ev(1000, Event::Reload { reply: None });
        let due = h.m.in_place.as_ref().unwrap().signal_at;
        if let Some(at) = due {
            assert!(!a.contains(&sig_main(1, Signal::HUP)));
            assert!(at < t(2000));
            assert_eq!(h.m.next_deadline(), Some(at));
            let ms = at.since(t(0)).as_millis() as u64 + 1;
            assert!(h.ev(ms, Event::Tick).contains(&sig_main(1, Signal::HUP)));
        } else {
            assert!(
                a.contains(&sig_main(1, Signal::HUP)),
                "a zero splay: at once"
            );
        }
    }

    #[test]
    fn with_signal_scope_group_forwarded_signals_reach_the_workers() {
        let mut s = settings();
        s.signal_scope = SignalScope::Group;
        let mut h = H::new(s);
        h.first(0);
        assert_eq!(
            h.ev(10, Event::Signal(Signal::WINCH)),
            vec![sig(1, Signal::WINCH)]
        );
    }

    #[test]
    fn counters_keep_starts_reloads_and_crash_restarts_apart_and_a_crash_marks_the_last_reload() {
        let mut h = H::new(settings());
        h.first(0);
        h.reload(1000, 1, 2);
        h.ready(1100, 2);
        h.gone(1200, 1, Status::Code(0));
        assert_eq!(h.m.stats.last_reload.as_ref().unwrap()["generation"], 2);
        // The generation the reload made current dies: a crash restart, and
        // the last reload says so.
        h.ev(
            5000,
            Event::Exited {
                pid: pid(2),
                status: Status::Code(1),
            },
        );
        let last = h.m.stats.last_reload.clone().unwrap();
        assert_eq!(last["ok"], true);
        assert_eq!(last["crashed"]["status"], "exited with code 1");
        assert_eq!(last["crashed"]["uptime_ms"], 3900.0);
        h.ev(5100, Event::Tick);
        h.spawned(5100, 3);
        h.ready(5200, 3);
        assert_eq!(
            (h.m.stats.starts, h.m.stats.reloads, h.m.stats.restarts),
            (3, 1, 1)
        );
        // A failed restart is not a failed reload.
        h.ev(
            6000,
            Event::Exited {
                pid: pid(3),
                status: Status::Code(1),
            },
        );
        h.ev(6300, Event::Tick);
        h.spawned(6300, 4);
        h.gone(6400, 4, Status::Code(1));
        assert_eq!(h.m.stats.failed_reloads, 0);
        assert_eq!(h.m.restarts.attempt, 3, "a crash loop");
    }

    #[test]
    fn cause_lines_are_kept_once_and_capped() {
        let mut g = Generation {
            id: 1,
            pid: Some(1),
            purpose: Purpose::First,
            state: GenState::Current { since: t(0) },
            started: t(0),
            started_unix_ms: 0,
            ready_after: None,
            status: None,
            notified: false,
            stderr: VecDeque::new(),
            cause: Vec::new(),
            stderr_closed: false,
        };
        for i in 0..100 {
            g.push_stderr(format!("[{i}] [ERROR] worker {i} failed"));
            g.push_stderr(format!("request {i} served"));
        }
        assert_eq!(
            g.cause,
            vec!["[#] [ERROR] worker # failed".replace('#', "0")]
        );
        for i in 0..100 {
            g.push_stderr(format!("error number {} of a kind", "x".repeat(i)));
        }
        assert_eq!(g.cause.len(), CAUSE_LINES);
        g.push_stderr("y".repeat(5000));
        assert_eq!(g.stderr.back().unwrap().len(), 1000);
        assert!(looks_like_a_cause(
            "thread 'main' panicked at src/main.rs:3:5"
        ));
        assert!(looks_like_a_cause(
            "Error: Os { code: 98, kind: AddrInUse }"
        ));
        assert!(!looks_like_a_cause("Traceback (most recent call last):"));
        assert!(!looks_like_a_cause("listening on 127.0.0.1:8080"));
    }

    #[test]
    fn a_machine_in_the_middle_of_an_in_place_reload_serializes() {
        let mut h = in_place(vec![ReadyMode::Notify]);
        h.ev(
            1000,
            Event::Reload {
                reply: Some(ReplyId(1)),
            },
        );
        h.notice(1100, 1, false, true, None);
        let text = serde_json::to_string(&h.m).unwrap();
        let mut m: Machine = serde_json::from_str(&text).unwrap();
        m.handle(
            t(1200),
            Event::Notify {
                pid: pid(1),
                pgid: None,
                ready: true,
                status: None,
                reloading: false,
                monotonic_usec: None,
            },
        );
        let a = m.handle(t(2200), Event::Tick);
        assert_eq!(replies(&a)[0].1["in_place"], true);
    }
}
