//! A timed run of load with reloads triggered at an interval.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::VerifyError;
use crate::load::{Load, LoadConfig};
use crate::report::{ReloadRecord, Report};

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Longest sleep of the verify loop, so trigger results are noticed quickly.
const TICK: Duration = Duration::from_millis(20);
/// Extra time allowed to a trigger command after it was killed for its timeout.
const KILL_SLACK: Duration = Duration::from_secs(2);
/// Bytes of a failed command's stderr quoted in its error.
const STDERR_QUOTE: usize = 2048;
/// Longest run or reload interval accepted, so instants cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How [`verify`] asks the server to reload.
#[non_exhaustive]
pub enum Trigger {
    /// Run this with `sh -c`; success means exit status 0 within the trigger
    /// timeout. Its stdout is discarded; its stderr is quoted when it fails.
    /// On timeout its whole process group is killed.
    Command(String),
    /// Read a pid from `pid_file` (each time, as the server may have been
    /// replaced) and send it `signal` (for example 1 for `SIGHUP`; 0 only
    /// checks the process exists).
    Signal {
        /// Signal number.
        signal: i32,
        /// File holding the pid in decimal, surrounding whitespace allowed.
        pid_file: PathBuf,
    },
    /// Call this; `Err` carries the reason the reload could not be triggered.
    /// It runs on a thread of its own; a panic counts as a failed trigger.
    Custom(Box<dyn FnMut() -> Result<(), String> + Send>),
    /// Like [`Trigger::Custom`], for a trigger that knows how the reload
    /// went: it returns once the reload is done, and says whether the
    /// server reloaded in place ([`Reloaded::InPlace`]: no new pid is
    /// expected).
    Reporting(Box<dyn FnMut() -> Result<Reloaded, String> + Send>),
}

/// How a reload went, as a [`Trigger::Reporting`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reloaded {
    /// Nothing more is known: a new process must answer
    /// ([`ReloadRecord::pid_changed`]).
    Requested,
    /// The server reloaded in place and keeps its pid (a supervisor reported
    /// the in-place reload done): the reload counts without a new pid.
    InPlace,
}

impl Trigger {
    /// A [`Trigger::Custom`] from a closure.
    pub fn custom(f: impl FnMut() -> Result<(), String> + Send + 'static) -> Self {
        Trigger::Custom(Box::new(f))
    }

    /// A [`Trigger::Reporting`] from a closure.
    pub fn reporting(f: impl FnMut() -> Result<Reloaded, String> + Send + 'static) -> Self {
        Trigger::Reporting(Box::new(f))
    }

    /// Pulls the trigger once. `timeout` bounds a command; a signal returns at
    /// once; a custom closure is not bounded here.
    pub fn fire(&mut self, timeout: Duration) -> Result<(), String> {
        self.fire_reporting(timeout).map(|_| ())
    }

    /// [`Trigger::fire`], with what the trigger says about the reload.
    fn fire_reporting(&mut self, timeout: Duration) -> Result<Reloaded, String> {
        fn caught<T>(r: std::thread::Result<Result<T, String>>) -> Result<T, String> {
            r.unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(format!("the custom trigger panicked: {message}"))
            })
        }
        match self {
            Trigger::Command(command) => {
                run_command(command, timeout).map(|()| Reloaded::Requested)
            }
            Trigger::Signal { signal, pid_file } => {
                send_signal(*signal, pid_file).map(|()| Reloaded::Requested)
            }
            Trigger::Custom(f) => {
                caught(catch_unwind(AssertUnwindSafe(f))).map(|()| Reloaded::Requested)
            }
            Trigger::Reporting(f) => caught(catch_unwind(AssertUnwindSafe(f))),
        }
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Command(command) => f.debug_tuple("Command").field(command).finish(),
            Trigger::Signal { signal, pid_file } => f
                .debug_struct("Signal")
                .field("signal", signal)
                .field("pid_file", pid_file)
                .finish(),
            Trigger::Custom(_) => f.write_str("Custom(..)"),
            Trigger::Reporting(_) => f.write_str("Reporting(..)"),
        }
    }
}

/// A timed verification run. Build with [`VerifyConfig::new`], then adjust.
#[derive(Debug)]
#[non_exhaustive]
pub struct VerifyConfig {
    /// The load to run.
    pub load: LoadConfig,
    /// How long to run the load.
    pub duration: Duration,
    /// Interval between reloads, the first one interval after the start.
    /// Set together with `trigger`.
    pub reload_every: Option<Duration>,
    /// How to reload. Set together with `reload_every`.
    pub trigger: Option<Trigger>,
    /// How long after a trigger a new pid may take to answer and still count
    /// as [`ReloadRecord::pid_changed`]. Default 60 s.
    pub ready_timeout: Duration,
    /// How long a trigger may take to return before it counts as failed (a
    /// command is then killed). No reload is triggered while one is still
    /// running. Default 60 s.
    pub trigger_timeout: Duration,
    /// Redraw a one-line status on stderr about 5 times a second. Default
    /// false; see [`stderr_is_terminal`].
    pub progress: bool,
}

impl VerifyConfig {
    /// Runs `load` for `duration` without reloads; see
    /// [`with_reloads`](VerifyConfig::with_reloads).
    pub fn new(load: LoadConfig, duration: Duration) -> Self {
        Self {
            load,
            duration,
            reload_every: None,
            trigger: None,
            ready_timeout: Duration::from_secs(60),
            trigger_timeout: Duration::from_secs(60),
            progress: false,
        }
    }

    /// Adds a reload by `trigger` every `every`.
    pub fn with_reloads(mut self, every: Duration, trigger: Trigger) -> Self {
        self.reload_every = Some(every);
        self.trigger = Some(trigger);
        self
    }
}

/// Whether stderr is a terminal, so a caller can decide to set
/// [`VerifyConfig::progress`].
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Runs the load for `cfg.duration`, triggering a reload every
/// `cfg.reload_every`, and returns the final report with one
/// [`ReloadRecord`] per reload.
///
/// Blocks the calling thread for about `duration` (plus the end of a trigger
/// still running, bounded by the trigger timeout, and requests in flight,
/// bounded by the request timeout).
///
/// # Errors
///
/// [`VerifyError::InvalidConfig`] for an out-of-range configuration (also
/// `reload_every` without `trigger` or the reverse), [`VerifyError::Runtime`]
/// or [`VerifyError::Thread`] when threads cannot be created. Everything the
/// server does wrong is in the report, not an error.
pub fn verify(cfg: VerifyConfig) -> Result<Report, VerifyError> {
    let VerifyConfig {
        load: load_cfg,
        duration,
        reload_every,
        trigger,
        ready_timeout,
        trigger_timeout,
        progress,
    } = cfg;
    let invalid = |field, problem: &str| {
        Err(VerifyError::InvalidConfig {
            field,
            problem: problem.to_owned(),
        })
    };
    match (&reload_every, &trigger) {
        (Some(_), None) => {
            return invalid(
                "trigger",
                "reload_every is set but there is no trigger: set both, or neither",
            );
        }
        (None, Some(_)) => {
            return invalid(
                "reload_every",
                "a trigger is set but no interval: set both, or neither",
            );
        }
        (Some(every), Some(_)) if every.is_zero() => {
            return invalid("reload_every", "expected a positive interval, got zero");
        }
        _ => {}
    }
    if duration > MAX_DURATION {
        return invalid("duration", "expected at most 100 years");
    }
    if reload_every.is_some_and(|every| every > MAX_DURATION) {
        return invalid("reload_every", "expected at most 100 years");
    }
    if let Some(every) = reload_every
        && duration <= every
    {
        return Err(VerifyError::InvalidConfig {
            field: "duration",
            problem: format!(
                "the run ({duration:?}) ends before its first reload ({every:?} after the \
                 start), so it would prove nothing about reloads: run longer than the reload \
                 interval"
            ),
        });
    }
    if trigger_timeout.is_zero() {
        return invalid("trigger_timeout", "expected a positive duration, got zero");
    }
    load_cfg.validate()?;

    let mut worker = match trigger {
        Some(trigger) => Some(TriggerWorker::spawn(trigger, trigger_timeout)?),
        None => None,
    };
    let load = Load::start(load_cfg)?;
    let shared = load.shared();
    let start = shared.started();
    let end = start + duration;
    let mut status = StatusLine::new(progress);
    let mut pending: Vec<PendingReload> = Vec::new();
    let mut next_reload = reload_every.map(|every| start + every);
    let mut next_draw = start;

    loop {
        let now = Instant::now();
        if let Some(worker) = worker.as_mut() {
            worker.collect(&mut pending);
        }
        if now >= end {
            break;
        }
        if let (Some(at), Some(every), Some(worker)) = (next_reload, reload_every, worker.as_mut())
        {
            if now >= at && worker.can_fire() {
                let index = pending.len() + 1;
                pending.push(PendingReload {
                    index,
                    triggered: now,
                    pids_before: load.pids_seen(),
                    failures_before: shared.failures_total(),
                    outcome: None,
                });
                worker.fire(index);
                tracing::debug!(index, "reload triggered");
                // Behind schedule (a slow trigger): keep a full interval from now.
                let scheduled = at + every;
                next_reload = Some(if scheduled > now {
                    scheduled
                } else {
                    now + every
                });
            }
        }
        if now >= next_draw {
            status.draw(&load, pending.len());
            next_draw = now + PROGRESS_EVERY;
        }
        let mut wake = end.min(next_draw).min(now + TICK);
        if let Some(at) = next_reload {
            wake = wake.min(at);
        }
        thread::sleep(wake.saturating_duration_since(Instant::now()));
    }

    if let Some(worker) = worker.take() {
        worker.finish(&mut pending);
    }
    let mut report = load.stop();
    report.reload_every = reload_every;

    let pids = shared.pids();
    let final_failures = report.failures_total();
    let next_failures: Vec<u64> = pending
        .iter()
        .skip(1)
        .map(|p| p.failures_before)
        .chain([final_failures])
        .collect();
    report.reloads = pending
        .into_iter()
        .zip(next_failures)
        .map(|(p, failures_after)| {
            let at = p.triggered.saturating_duration_since(start);
            let newcomer = pids
                .iter()
                .filter(|(pid, _)| !p.pids_before.contains(pid))
                .map(|(&pid, seen)| (seen.first.saturating_sub(at), pid))
                .filter(|&(after, _)| after <= ready_timeout)
                .min();
            let (trigger_ok, trigger_error, trigger_took, in_place) = match p.outcome {
                Some((Ok(how), took)) => (true, None, took, how == Reloaded::InPlace),
                Some((Err(e), took)) => (false, Some(e), took, false),
                None => (
                    false,
                    Some("the trigger never reported back".to_owned()),
                    Duration::ZERO,
                    false,
                ),
            };
            ReloadRecord {
                index: p.index,
                at,
                trigger_ok,
                trigger_error,
                trigger_took,
                ready_after: newcomer.map(|(after, _)| after),
                new_pid: newcomer.map(|(_, pid)| pid),
                pid_changed: newcomer.is_some(),
                in_place,
                failures_during: failures_after.saturating_sub(p.failures_before),
            }
        })
        .collect();
    status.finish(&report);
    Ok(report)
}

/// A reload triggered, waiting for its outcome.
struct PendingReload {
    index: usize,
    triggered: Instant,
    pids_before: BTreeSet<u32>,
    failures_before: u64,
    outcome: Option<(Result<Reloaded, String>, Duration)>,
}

type TriggerResult = (usize, Result<Reloaded, String>, Duration);

/// Runs the trigger on a thread of its own, so a hung trigger cannot stall
/// the run beyond the trigger timeout.
struct TriggerWorker {
    fire_tx: mpsc::Sender<usize>,
    result_rx: mpsc::Receiver<TriggerResult>,
    thread: JoinHandle<()>,
    in_flight: Option<(usize, Instant)>,
    /// Index of a trigger that overran its deadline and has not returned.
    stuck: Option<usize>,
    deadline: Duration,
    timeout: Duration,
}

impl TriggerWorker {
    fn spawn(mut trigger: Trigger, timeout: Duration) -> Result<Self, VerifyError> {
        // A command is killed at `timeout`; allow for that before giving up on it.
        let slack = match trigger {
            Trigger::Command(_) => KILL_SLACK,
            _ => Duration::ZERO,
        };
        let (fire_tx, fire_rx) = mpsc::channel::<usize>();
        let (result_tx, result_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("handover-verify-trigger".to_owned())
            .spawn(move || {
                for index in fire_rx {
                    let started = Instant::now();
                    let result = trigger.fire_reporting(timeout);
                    if result_tx.send((index, result, started.elapsed())).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| VerifyError::Thread {
                what: "reload trigger",
                source,
            })?;
        Ok(Self {
            fire_tx,
            result_rx,
            thread,
            in_flight: None,
            stuck: None,
            deadline: timeout.saturating_add(slack),
            timeout,
        })
    }

    fn can_fire(&self) -> bool {
        self.in_flight.is_none() && self.stuck.is_none()
    }

    fn fire(&mut self, index: usize) {
        if self.fire_tx.send(index).is_ok() {
            self.in_flight = Some((index, Instant::now()));
        } else {
            // The thread is gone; cannot happen short of a panic in it.
            self.stuck = Some(index);
        }
    }

    /// Files finished triggers' outcomes into `pending`, and fails a trigger
    /// that overran its deadline.
    fn collect(&mut self, pending: &mut [PendingReload]) {
        while let Ok((index, result, took)) = self.result_rx.try_recv() {
            if let Some(p) = index.checked_sub(1).and_then(|i| pending.get_mut(i)) {
                p.outcome.get_or_insert((result, took));
            }
            if self.in_flight.is_some_and(|(i, _)| i == index) {
                self.in_flight = None;
            }
            if self.stuck == Some(index) {
                self.stuck = None;
            }
        }
        if let Some((index, since)) = self.in_flight {
            if since.elapsed() > self.deadline {
                if let Some(p) = index.checked_sub(1).and_then(|i| pending.get_mut(i)) {
                    p.outcome.get_or_insert((
                        Err(format!(
                            "the trigger did not return within {:?}; no further reload is \
                             triggered until it does. Make the trigger return once the reload \
                             is requested, or raise the trigger timeout",
                            self.timeout
                        )),
                        since.elapsed(),
                    ));
                }
                self.in_flight = None;
                self.stuck = Some(index);
            }
        }
    }

    /// Waits (bounded) for a trigger in flight, then ends the thread.
    fn finish(mut self, pending: &mut [PendingReload]) {
        while self.in_flight.is_some() {
            self.collect(pending);
            thread::sleep(Duration::from_millis(5));
        }
        if self.stuck.is_some() {
            // Leave the hung trigger's thread behind; it ends with the process.
            return;
        }
        drop(self.fire_tx);
        // The thread is idle in `for index in fire_rx` and ends now.
        let _ = self.thread.join();
    }
}

/// The one-line progress display on stderr.
struct StatusLine {
    enabled: bool,
    width: usize,
}

impl StatusLine {
    fn new(enabled: bool) -> Self {
        Self { enabled, width: 0 }
    }

    fn draw(&mut self, load: &Load, reloads: usize) {
        if !self.enabled {
            return;
        }
        let shared = load.shared();
        let ok = shared.ok();
        let failed = shared.failures_total();
        let line = format!(
            "{:>6.1}s  {} requests  {} ok  {} failed  {} pids  {} reloads",
            load.elapsed().as_secs_f64(),
            ok + failed,
            ok,
            failed,
            load.pids_seen().len(),
            reloads
        );
        let pad = self.width.saturating_sub(line.len());
        self.width = line.len();
        let mut stderr = std::io::stderr().lock();
        // A status line that cannot be written is not worth failing for.
        let _ = write!(stderr, "\r{line}{:pad$}", "");
        let _ = stderr.flush();
    }

    fn finish(&mut self, report: &Report) {
        if self.enabled && self.width > 0 {
            let line = format!(
                "{:>6.1}s  {} requests  {} ok  {} failed  {} pids  {} reloads",
                report.duration.as_secs_f64(),
                report.requests,
                report.ok,
                report.failures_total(),
                report.distinct_pids(),
                report.reloads.len()
            );
            let pad = self.width.saturating_sub(line.len());
            let _ = writeln!(std::io::stderr(), "\r{line}{:pad$}", "");
        }
    }
}

/// Runs `sh -c command` in its own process group, bounded by `timeout`.
fn run_command(command: &str, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not start `sh -c {command:?}`: {e}; is /bin/sh there?"))?;
    // Read stderr on a thread: a command that fills the pipe must not block.
    let (stderr_tx, stderr_rx) = mpsc::channel();
    if let Some(mut stderr) = child.stderr.take() {
        let spawned = thread::Builder::new()
            .name("handover-verify-trigger-stderr".to_owned())
            .spawn(move || {
                let mut kept = Vec::new();
                let _ = (&mut stderr)
                    .take(STDERR_QUOTE as u64)
                    .read_to_end(&mut kept);
                let _ = stderr_tx.send(kept);
                // Keep draining so the command never blocks on a full pipe.
                let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            });
        if let Err(e) = spawned {
            tracing::debug!(%e, "cannot read the trigger's stderr");
        }
    }
    let deadline = Instant::now().checked_add(timeout);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{command}` did not exit within {timeout:?} and was killed; make the \
                     reload command return once the reload is requested, or raise the \
                     trigger timeout"
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for `{command}` failed: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    // The stderr reader finishes soon after the command, unless a background
    // process it left behind holds the pipe: then quote nothing.
    let stderr = stderr_rx
        .recv_timeout(Duration::from_millis(200))
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    if stderr.is_empty() {
        Err(format!(
            "`{command}` failed ({status}) with no output on stderr"
        ))
    } else {
        Err(format!("`{command}` failed ({status}): {stderr}"))
    }
}

fn kill_group(pid: u32) {
    let group = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        // The group may already be gone; nothing to do about an error.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
}

fn send_signal(signal: i32, pid_file: &Path) -> Result<(), String> {
    use rustix::process::{Pid, Signal, kill_process, test_kill_process};
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        format!(
            "cannot read pid file {}: {e}; expected a file holding the server's pid",
            pid_file.display()
        )
    })?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(Pid::from_raw)
        .filter(|pid| pid.as_raw_pid() > 0)
        .ok_or_else(|| {
            format!(
                "pid file {} holds {:?}; expected a positive decimal pid",
                pid_file.display(),
                text.chars().take(40).collect::<String>()
            )
        })?;
    let sent = if signal == 0 {
        test_kill_process(pid)
    } else {
        let sig = Signal::from_named_raw(signal).ok_or_else(|| {
            format!("{signal} is not a known signal number; expected for example 1 (SIGHUP)")
        })?;
        kill_process(pid, sig)
    };
    sent.map_err(|e| {
        format!(
            "kill({pid}, {signal}) failed: {e}; is the pid in {} current?",
            pid_file.display(),
            pid = pid.as_raw_pid()
        )
    })
}
