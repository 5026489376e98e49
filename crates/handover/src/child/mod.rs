//! Supervising one child process: start it, signal it, and end it for sure.
//!
//! A [`Child`] is made from a fully formed [`crate::process::Command`]
//! (program, arguments, environment, working directory, stdio as you want
//! them; by default the child inherits this process's stdin, stdout and
//! stderr) and a [`ChildConfig`]:
//!
//! - **start** ([`ChildConfig::spawn`], [`ChildConfig::spawn_with_fds`]): in a
//!   new process group unless [`ChildConfig::process_group`] is off (turn it
//!   off for interactive programs, which need the terminal's group);
//!   optionally with a death signal, and with named descriptors from
//!   [`Activation`] at fds 3.. (`LISTEN_PID` is the child's own pid).
//! - **signal** ([`Child::signal`]): to the whole group, or to the child when
//!   it has no group of its own. A child that has already ended is not an
//!   error.
//! - **reload** ([`Child::reload`]): the reload signal (default `SIGHUP`)
//!   after a random splay.
//! - **kill** ([`Child::kill`]): a random splay in `[0, splay)`, the kill
//!   signal (default `SIGTERM`, followed by `SIGCONT` so that a stopped
//!   process acts on it) to the group, up to the kill timeout for the group
//!   to leave, then `SIGKILL` to the whole group. Returns only once the
//!   child is gone and reaped.
//! - **stop** ([`Child::stop`], [`Child::stop_immediately`]): kill, and
//!   report the end as [`Report::Stopped`] instead of its exit status.
//!   Idempotent; callable from several threads or tasks at once.
//! - **exit** ([`Child::exit`], [`Child::wait`]): how it ended — exit code or
//!   signal, whether we asked for it, whether the execution timeout did.
//!
//! Every state change is a `tracing` event carrying the child's `label`
//! (`(dir) program args`) and `pid`.
//!
//! Spawning blocks briefly: until the program has been executed (or has
//! failed to be, which gives a [`ChildError`] naming the program and the PATH
//! searched, the working directory, a script's missing interpreter, or the
//! step that failed; see [`crate::process`]). During a kill, the report arrives
//! once the child has been reaped, which is after the rest of its group has
//! left or been killed.
//!
//! ```
//! use std::time::Duration;
//! use handover::child::{ChildConfig, ExitStatus, Report, Signal};
//! use handover::process::Command;
//!
//! # fn main() -> Result<(), handover::child::ChildError> {
//! let config = ChildConfig::new()
//!     .kill_signal(Signal::TERM)
//!     .kill_timeout(Duration::from_secs(5));
//! let mut cmd = Command::new("sleep");
//! cmd.arg("30");
//! let child = config.spawn(cmd)?;
//! println!("started {} as pid {}", child.label(), child.pid());
//!
//! // Elsewhere, `child.exit().await` (or `child.wait()`) reports a crash.
//! let exit = child.stop();
//! assert_eq!(exit.status, ExitStatus::Signaled { signal: Signal::TERM, core_dumped: false });
//! assert!(exit.requested);
//! assert_eq!(child.wait(), Report::Stopped);
//! # Ok(()) }
//! ```
//!
//! # Blocking core, async facade
//!
//! Each child has one thread of its own that spawns it and then waits for it
//! to exit. The blocking methods wait on that thread's findings; the `async`
//! ones ([`Child::exit`], [`Child::kill_async`], [`Child::stop_async`], ...)
//! need no particular runtime: the exit future is woken by that thread, and
//! the async kill runs the blocking sequence on a thread of its own, so it
//! completes even if the future is dropped.
//!
//! # The death signal and threads
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that started the child exits,
//! not only when the process does. Children here are always started by their
//! own waiting thread, which lives until the child is reaped, so the signal
//! only comes when this whole process dies (as intended) — even if you spawn
//! from a short-lived thread or a tokio blocking-pool thread.
//!
//! # Process ids are never reused under our feet
//!
//! A pid (and the process group id, which equals the child's pid) is
//! reserved until the child is reaped. Reaping happens only here, under the
//! same lock that every signal is sent under, so no signal ever goes to a
//! reaped pid. During a kill the child is left a zombie while the rest of its
//! group gets the kill timeout to leave, and the final `SIGKILL` to the group
//! is sent while the zombie still pins the group id. After the child is
//! reaped, its group is signalled again only while `/proc` shows live
//! members in it (a group id cannot be reused while it has members). Nothing
//! else in this process may reap children: setting `SIGCHLD` to `SIG_IGN`,
//! or calling `waitpid(-1)`, makes statuses unknowable
//! ([`ExitStatus::Unknown`]).
//!
//! Processes that leave the group (`setsid`, daemons that double-fork into a
//! new session) cannot be tracked by a process group; a cgroup is the tool
//! for that. A child that exits on its own while other members of its group
//! live on is reported at once; the members are left alone (a warning says
//! so) until [`Child::kill`] or [`Child::stop`] is called, which `SIGKILL`s
//! them.
//!
//! Members orphaned by the child's death go to init, or to the nearest
//! subreaper. Where init does not reap (some containers and sandboxes), make
//! the supervisor a subreaper (`PR_SET_CHILD_SUBREAPER`): a kill then reaps
//! the members of the group it killed that became this process's children.

mod command;
mod group;
mod signal;

pub use signal::{Signal, parse_signal};

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, WaitId, WaitIdOptions, WaitIdStatus, WaitOptions};

use crate::activation::Activation;
use crate::process::{Command, SpawnError};

/// How long [`Child::kill`] waits, after the leader is reaped, for the other
/// members of its group to finish dying before it gives up with a warning.
const GROUP_CLEAR_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the graceful phase of a kill looks for group members once the
/// leader has exited.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// Errors of child supervision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The program was not found.
    #[error(
        "cannot start `{label}`: program {program:?} was not found (searched {searched}); expected \
         an executable file: install it, fix PATH, or give the program's full path"
    )]
    ProgramNotFound {
        /// The command, for logs.
        label: String,
        /// The program as given.
        program: String,
        /// Where it was looked for: `each directory of PATH=...` or a path.
        searched: String,
    },
    /// The program exists but cannot be executed.
    #[error(
        "cannot start `{label}`: {path:?} is not executable ({reason}); expected a file with \
         execute permission on a filesystem not mounted noexec: `chmod +x` it, or run it through \
         its interpreter"
    )]
    NotExecutable {
        /// The command, for logs.
        label: String,
        /// The file that was found.
        path: PathBuf,
        /// Why it cannot run.
        reason: String,
    },
    /// The working directory is not usable.
    #[error(
        "cannot start `{label}`: its working directory {dir:?} {problem}; expected an existing \
         directory the child may enter: create it, or fix the path given to \
         Command::current_dir"
    )]
    BadDirectory {
        /// The command, for logs.
        label: String,
        /// The directory given to `Command::current_dir`.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Spawning failed for another reason (a script's interpreter is
    /// missing, a step before `exec` failed, ...).
    #[error("{source} (command: `{label}`)")]
    Spawn {
        /// The command, for logs.
        label: String,
        /// What failed, and what it most likely means.
        #[source]
        source: SpawnError,
    },
    /// A signal name or number that does not exist.
    #[error("unknown signal {input:?}: expected a signal name or number; valid names are {valid}")]
    UnknownSignal {
        /// What was given.
        input: String,
        /// The valid spellings.
        valid: String,
    },
    /// A signal could not be sent.
    #[error(
        "cannot send {signal} to `{label}` (pid {pid}): {source}; expected this process to be \
         allowed to signal its child: did the child change its user id?"
    )]
    Signal {
        /// The command, for logs.
        label: String,
        /// The child's pid.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// The error from `kill`.
        #[source]
        source: io::Error,
    },
    /// A one-shot command ran past its execution timeout and was killed.
    #[error(
        "`{label}` did not finish within its execution timeout of {timeout:?} and was killed; \
         expected a one-shot command to exit in time: make it finish sooner, raise the timeout, \
         or supervise it as a long-running child without one"
    )]
    TimedOut {
        /// The command, for logs.
        label: String,
        /// The execution timeout.
        timeout: Duration,
    },
    /// A one-shot command ended unsuccessfully.
    #[error(
        "`{label}` {status}; expected exit code 0, which a one-shot command must return on \
         success: see its output for the cause"
    )]
    Failed {
        /// The command, for logs.
        label: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// A supporting thread could not be started.
    #[error("cannot start `{label}`: {context}: {source}")]
    Thread {
        /// The command, for logs.
        label: String,
        /// Which thread.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signaled {
        /// The signal.
        signal: Signal,
        /// Whether it left a core dump.
        core_dumped: bool,
    },
    /// Something else in this process reaped it first (`SIGCHLD` set to
    /// `SIG_IGN`, or a `waitpid(-1)` elsewhere), so its status is lost.
    Unknown,
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            ExitStatus::Code(c) => Some(c),
            _ => None,
        }
    }

    /// The signal that ended it, if one did.
    pub fn signal(self) -> Option<Signal> {
        match self {
            ExitStatus::Signaled { signal, .. } => Some(signal),
            _ => None,
        }
    }

    fn from_waitid(status: &WaitIdStatus) -> ExitStatus {
        if let Some(code) = status.exit_status() {
            ExitStatus::Code(code)
        } else if let Some(sig) = status.terminating_signal() {
            ExitStatus::Signaled {
                signal: Signal::from_reported(sig),
                core_dumped: status.dumped(),
            }
        } else {
            ExitStatus::Unknown
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signaled {
                signal,
                core_dumped: false,
            } => write!(f, "was killed by {signal}"),
            ExitStatus::Signaled {
                signal,
                core_dumped: true,
            } => write!(f, "was killed by {signal} (core dumped)"),
            ExitStatus::Unknown => f.write_str("ended with an unknown status"),
        }
    }
}

/// How a child ended, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Exit {
    /// Its exit code or the signal that ended it.
    pub status: ExitStatus,
    /// Whether it ended after we asked it to (kill, stop, execution timeout,
    /// or a `kill_on_drop`), rather than on its own.
    pub requested: bool,
    /// Whether it was killed because it ran past its execution timeout.
    pub timed_out: bool,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        if self.timed_out {
            f.write_str(" (killed at its execution timeout)")
        } else if self.requested {
            f.write_str(" (as requested)")
        } else {
            Ok(())
        }
    }
}

/// What [`Child::exit`] and [`Child::wait`] report, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Report {
    /// The child ended; how and why.
    Exited(Exit),
    /// The child was ended by [`Child::stop`] or [`Child::stop_immediately`]
    /// before it ended on its own: nothing to report (the caller of `stop`
    /// got the [`Exit`], and [`Child::exited`] still has it).
    Stopped,
}

/// How children are started and ended. Reusable: one config can spawn many
/// generations of a server.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    kill_signal: Signal,
    kill_timeout: Duration,
    reload_signal: Signal,
    splay: Duration,
    execution_timeout: Option<Duration>,
    process_group: bool,
    death_signal: Option<Signal>,
    kill_on_drop: bool,
}

impl Default for ChildConfig {
    fn default() -> Self {
        ChildConfig {
            kill_signal: Signal::TERM,
            kill_timeout: Duration::from_secs(30),
            reload_signal: Signal::HUP,
            splay: Duration::ZERO,
            execution_timeout: None,
            process_group: true,
            death_signal: None,
            kill_on_drop: false,
        }
    }
}

impl ChildConfig {
    /// The defaults: kill with `SIGTERM`, `SIGKILL` 30 s later; reload with
    /// `SIGHUP`; no splay; no execution timeout; a new process group; no
    /// death signal; the child outlives a dropped [`Child`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The signal that asks the child to end (default `SIGTERM`).
    pub fn kill_signal(mut self, signal: Signal) -> Self {
        self.kill_signal = signal;
        self
    }

    /// How long the group may take to end after the kill signal before it is
    /// sent `SIGKILL` (default 30 s).
    pub fn kill_timeout(mut self, timeout: Duration) -> Self {
        self.kill_timeout = timeout;
        self
    }

    /// The signal [`Child::reload`] sends (default `SIGHUP`).
    pub fn reload_signal(mut self, signal: Signal) -> Self {
        self.reload_signal = signal;
        self
    }

    /// The upper bound of the random delay before [`Child::kill`],
    /// [`Child::stop`] and [`Child::reload`] signal, so that many supervised
    /// processes do not all act at once (default zero: no delay).
    pub fn splay(mut self, splay: Duration) -> Self {
        self.splay = splay;
        self
    }

    /// For one-shot commands: kill the child (without splay) when it runs
    /// longer than this (default `None`: no limit). The end is reported with
    /// [`Exit::timed_out`], and [`ChildConfig::run`] returns
    /// [`ChildError::TimedOut`].
    pub fn execution_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.execution_timeout = timeout;
        self
    }

    /// Whether the child gets a process group of its own (default `true`),
    /// so that signals reach everything it started. Turn it off for
    /// interactive programs that read the terminal: only the terminal's
    /// foreground group may. Without a group, signals go to the child alone.
    pub fn process_group(mut self, own_group: bool) -> Self {
        self.process_group = own_group;
        self
    }

    /// A signal the kernel sends the child when this process dies
    /// (`PR_SET_PDEATHSIG`; default `None`). See the module docs on threads.
    pub fn death_signal(mut self, signal: Option<Signal>) -> Self {
        self.death_signal = signal;
        self
    }

    /// Whether dropping the [`Child`] sends `SIGKILL` to it (and its group)
    /// while it runs (default `false`: it runs on, and is still reaped when
    /// it ends).
    pub fn kill_on_drop(mut self, kill: bool) -> Self {
        self.kill_on_drop = kill;
        self
    }

    /// Starts `cmd`. Everything about the program (arguments, environment,
    /// working directory, stdio) is taken from `cmd`; stdio is inherited
    /// unless `cmd` says otherwise, and piped ends are available from
    /// [`Child::take_stdin`] and friends. Descriptors above 2 are not
    /// inherited.
    pub fn spawn(&self, cmd: Command) -> Result<Child, ChildError> {
        self.spawn_with_fds(cmd, &Activation::new())
    }

    /// Starts `cmd` with the named descriptors of `fds` at 3.., and
    /// `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (the child's own pid)
    /// set, as systemd socket activation does.
    pub fn spawn_with_fds(&self, cmd: Command, fds: &Activation<'_>) -> Result<Child, ChildError> {
        spawn(self, cmd, fds)
    }

    /// Starts `cmd` as [`ChildConfig::spawn_with_fds`] does (own process
    /// group, death signal, the descriptors of `fds` at 3.., the same typed
    /// errors), but unsupervised: nothing here waits for it, signals it or
    /// reaps it. The caller owns the process: it must reap it (with
    /// `waitid`/`waitpid`, or a reaper of its own that waits for every
    /// child), and signal it only until then. For supervisors that reap all
    /// their children in one place (`handover run`).
    ///
    /// The death signal fires when the *calling thread* exits: call this from
    /// a thread that lives as long as the child should get its death signal
    /// only when this process dies (the main thread, say).
    #[doc(hidden)]
    pub fn spawn_unsupervised(
        &self,
        mut cmd: Command,
        fds: &Activation<'_>,
    ) -> Result<crate::process::Process, ChildError> {
        let label = command::label(&cmd);
        if self.process_group {
            cmd.process_group(0);
        }
        cmd.death_signal = self.death_signal.map(Signal::as_raw);
        fds.spawn_with(&mut cmd)
            .map_err(|source| command::spawn_error(&label, source))
    }

    /// Runs a one-shot command to its end: `Ok` when it exits with code 0.
    /// Fails with [`ChildError::TimedOut`] when it was killed at its
    /// execution timeout, [`ChildError::Failed`] when it ended otherwise.
    pub fn run(&self, cmd: Command) -> Result<Exit, ChildError> {
        let child = self.spawn(cmd)?;
        child.wait();
        child.check()
    }

    /// [`ChildConfig::run`] for async code (any runtime).
    pub async fn run_async(&self, cmd: Command) -> Result<Exit, ChildError> {
        let child = self.spawn(cmd)?;
        child.exit().await;
        child.check()
    }
}

#[derive(Default)]
struct State {
    /// The leader has exited: it is a zombie or already reaped.
    exited: bool,
    /// Set once the leader is reaped. From then on its pid may belong to
    /// another process and must never be signalled.
    exit: Option<Exit>,
    /// What watchers get; set with `exit`.
    report: Option<Report>,
    /// A kill sequence is running and reaps the leader itself, after giving
    /// the rest of the group its time.
    killer_reaps: bool,
    /// We asked the child to end.
    requested: bool,
    /// `stop` was called before the child ended: suppress the report.
    stop_requested: bool,
    /// The execution timeout fired.
    timed_out: bool,
    /// `stop_immediately` was called: cut any splay short.
    hurry: bool,
    /// The leader exited on its own while other members of its group lived.
    leftovers: bool,
    wakers: Vec<(u64, Waker)>,
    next_waker: u64,
}

struct Shared {
    label: String,
    pid: Pid,
    group: bool,
    config: ChildConfig,
    state: Mutex<State>,
    changed: Condvar,
    /// Serializes kill sequences (kill, stop, the execution timeout).
    sequence: Mutex<()>,
}

fn relock<T>(r: Result<T, PoisonError<T>>) -> T {
    r.unwrap_or_else(PoisonError::into_inner)
}

fn random_splay(splay: Duration) -> Duration {
    let nanos = u64::try_from(splay.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(fastrand::u64(0..nanos))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        relock(self.state.lock())
    }

    fn pid_u32(&self) -> u32 {
        self.pid.as_raw_pid() as u32
    }

    /// Sends `signal` to the group (or the child) unless the child was
    /// reaped. Holding the state lock is what makes this safe.
    fn send(&self, st: &State, signal: Signal) -> Result<(), ChildError> {
        if st.exit.is_some() {
            tracing::debug!(label = %self.label, pid = self.pid_u32(), %signal,
                "not signalling: the child has already ended");
            return Ok(());
        }
        let err = |source: io::Error| ChildError::Signal {
            label: self.label.clone(),
            pid: self.pid_u32(),
            signal,
            source,
        };
        let raw = signal.to_rustix().ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only named signals can be sent (libc reserves the real-time range)",
            ))
        })?;
        let result = if self.group {
            match rustix::process::kill_process_group(self.pid, raw) {
                // The child left its group (setsid makes a new one with the
                // same id, so this is rare): signal the child itself.
                Err(Errno::SRCH) => rustix::process::kill_process(self.pid, raw),
                r => r,
            }
        } else {
            rustix::process::kill_process(self.pid, raw)
        };
        match result {
            Ok(()) | Err(Errno::SRCH) => {
                tracing::debug!(label = %self.label, pid = self.pid_u32(), %signal,
                    group = self.group, "signal sent");
                Ok(())
            }
            Err(e) => Err(err(e.into())),
        }
    }

    /// Reaps the leader, which has exited. Called with the state lock held.
    fn reap(&self) -> ExitStatus {
        loop {
            match rustix::process::waitid(WaitId::Pid(self.pid), WaitIdOptions::EXITED) {
                Ok(Some(status)) => return ExitStatus::from_waitid(&status),
                Err(Errno::INTR) => continue,
                Ok(None) => return ExitStatus::Unknown,
                Err(e) => {
                    tracing::warn!(label = %self.label, pid = self.pid_u32(), error = %e,
                        "cannot reap the child: something else in this process reaps children \
                         (SIGCHLD ignored, or waitpid(-1)); its exit status is lost");
                    return ExitStatus::Unknown;
                }
            }
        }
    }

    /// Records how the child ended and tells everyone waiting.
    fn record(&self, st: &mut State, status: ExitStatus) {
        let exit = Exit {
            status,
            requested: st.requested,
            timed_out: st.timed_out,
        };
        st.exited = true;
        st.exit = Some(exit);
        let report = if st.stop_requested {
            Report::Stopped
        } else {
            Report::Exited(exit)
        };
        st.report = Some(report);
        match report {
            Report::Stopped => tracing::info!(label = %self.label, pid = self.pid_u32(),
                status = %status, "child stopped"),
            Report::Exited(_) if exit.requested => tracing::info!(label = %self.label,
                pid = self.pid_u32(), status = %status, timed_out = exit.timed_out,
                "child ended as requested"),
            Report::Exited(_) => tracing::warn!(label = %self.label, pid = self.pid_u32(),
                status = %status, "child ended on its own"),
        }
        for (_, waker) in st.wakers.drain(..) {
            waker.wake();
        }
        self.changed.notify_all();
    }

    /// The body of the thread that spawned the child: wait for the leader to
    /// exit without reaping it, then reap it unless a kill sequence will.
    fn watch(&self) {
        let lost = loop {
            match rustix::process::waitid(
                WaitId::Pid(self.pid),
                WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
            ) {
                Ok(_) => break false,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(label = %self.label, pid = self.pid_u32(), error = %e,
                        "cannot wait for the child: something else in this process reaps \
                         children (SIGCHLD ignored, or waitpid(-1)); its exit status is lost");
                    break true;
                }
            }
        };
        let mut st = self.lock();
        if lost {
            self.record(&mut st, ExitStatus::Unknown);
            return;
        }
        st.exited = true;
        self.changed.notify_all();
        if st.killer_reaps {
            tracing::debug!(label = %self.label, pid = self.pid_u32(),
                "child exited; the kill in progress reaps it");
            return;
        }
        if self.group {
            // The zombie still pins the group id, so this count is ours.
            if let Some(n) = group::live_members(self.pid.as_raw_pid(), Some(self.pid.as_raw_pid()))
                && n > 0
            {
                st.leftovers = true;
                tracing::warn!(label = %self.label, pid = self.pid_u32(), members = n,
                    "child exited on its own, leaving processes in its group; they are left \
                     running until kill or stop is called");
            }
        }
        let status = self.reap();
        self.record(&mut st, status);
    }

    /// Waits a random splay unless told to hurry or the child exits. Returns
    /// the guard.
    fn splay_wait<'a>(&'a self, st: MutexGuard<'a, State>, what: &str) -> MutexGuard<'a, State> {
        let delay = random_splay(self.config.splay);
        if delay.is_zero() || st.hurry || st.exited {
            return st;
        }
        tracing::debug!(label = %self.label, pid = self.pid_u32(), ?delay,
            "waiting a random splay before {what}");
        relock(
            self.changed
                .wait_timeout_while(st, delay, |s| !s.hurry && !s.exited),
        )
        .0
    }

    /// The kill sequence. Returns how the child ended, once it has been
    /// reaped and the rest of its group is gone.
    fn terminate(&self, immediately: bool, stop: bool) -> Exit {
        {
            let mut st = self.lock();
            if stop && st.report.is_none() {
                st.stop_requested = true;
            }
            if immediately && !st.hurry {
                st.hurry = true;
                self.changed.notify_all();
            }
        }
        let _sequence = relock(self.sequence.lock());
        let mut st = self.lock();
        let mut group_killed = false;
        if st.exit.is_none() && !immediately {
            st = self.splay_wait(st, "killing");
        }
        if st.exit.is_none() {
            st.requested = true;
            st.killer_reaps = true;
            let kill_timeout = self.config.kill_timeout;
            if !st.exited {
                tracing::info!(label = %self.label, pid = self.pid_u32(),
                    signal = %self.config.kill_signal, ?kill_timeout, "asking the child to end");
                if let Err(e) = self.send(&st, self.config.kill_signal) {
                    tracing::warn!(label = %self.label, pid = self.pid_u32(), error = %e,
                        "cannot send the kill signal; will send SIGKILL");
                }
                // A stopped process acts on the kill signal only once it is
                // continued (systemd does the same).
                if ![Signal::KILL, Signal::CONT].contains(&self.config.kill_signal) {
                    let _ = self.send(&st, Signal::CONT);
                }
            }
            // Graceful phase: the leader gets the timeout to exit, and once it
            // has (a zombie pinning the group id), so do the others.
            let deadline = Instant::now() + kill_timeout;
            let mut timed_out = false;
            while st.exit.is_none() {
                if st.exited
                    && (!self.group
                        || group::live_members(self.pid.as_raw_pid(), Some(self.pid.as_raw_pid()))
                            .is_none_or(|n| n == 0))
                {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    timed_out = true;
                    break;
                }
                let step = if st.exited {
                    GROUP_POLL.min(deadline - now)
                } else {
                    deadline - now
                };
                st = relock(self.changed.wait_timeout(st, step)).0;
            }
            if st.exit.is_none() {
                if timed_out {
                    tracing::warn!(label = %self.label, pid = self.pid_u32(), ?kill_timeout,
                        leader_exited = st.exited, "the child did not end within its kill \
                        timeout; sending SIGKILL");
                }
                // The leader is alive or a zombie: its pid and group id are
                // still ours.
                let raw = rustix::process::Signal::KILL;
                let r = if self.group {
                    group_killed = true;
                    rustix::process::kill_process_group(self.pid, raw)
                } else if !st.exited {
                    rustix::process::kill_process(self.pid, raw)
                } else {
                    Ok(())
                };
                if let Err(e) = r
                    && e != Errno::SRCH
                {
                    tracing::error!(label = %self.label, pid = self.pid_u32(), error = %e,
                        "cannot send SIGKILL");
                }
                let mut waited = Duration::ZERO;
                while !st.exited {
                    st = relock(self.changed.wait_timeout(st, Duration::from_secs(10))).0;
                    waited += Duration::from_secs(10);
                    if !st.exited {
                        tracing::warn!(label = %self.label, pid = self.pid_u32(), ?waited,
                            "the child has not ended since SIGKILL (uninterruptible sleep?); \
                             still waiting");
                    }
                }
                if st.exit.is_none() {
                    let status = self.reap();
                    self.record(&mut st, status);
                }
            }
        }
        let leftovers = std::mem::take(&mut st.leftovers);
        let exit = st.exit.expect("the child was reaped above");
        drop(st);
        if self.group && (group_killed || leftovers) {
            self.clear_group(leftovers);
        }
        exit
    }

    /// After the leader is reaped: waits until no live process of its group
    /// remains, `SIGKILL`ing any that do, and reaps the ones that are our
    /// children (when this process is a subreaper).
    fn clear_group(&self, leftovers: bool) {
        let pgid = self.pid;
        if leftovers {
            tracing::info!(label = %self.label, pid = self.pid_u32(),
                "killing the processes the child left in its group");
        }
        let deadline = Instant::now() + GROUP_CLEAR_TIMEOUT;
        loop {
            while let Ok(Some(_)) = rustix::process::waitpgid(pgid, WaitOptions::NOHANG) {}
            // ESRCH: nobody left. The group id cannot have been reused while
            // a member remained, so a success means members of our group.
            if rustix::process::test_kill_process_group(pgid).is_err() {
                return;
            }
            if group::live_members(pgid.as_raw_pid(), None) == Some(0) {
                // All are zombies now, and the children of each were handed
                // to their new parents when it exited: reap what is ours.
                while let Ok(Some(_)) = rustix::process::waitpgid(pgid, WaitOptions::NOHANG) {}
                if rustix::process::test_kill_process_group(pgid).is_ok() {
                    tracing::debug!(label = %self.label, pid = self.pid_u32(),
                        "only zombies of other parents remain in the group; they reap them");
                }
                return;
            }
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            if Instant::now() >= deadline {
                tracing::warn!(label = %self.label, pid = self.pid_u32(),
                    timeout = ?GROUP_CLEAR_TIMEOUT,
                    "processes of the child's group are still alive after SIGKILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the report is in, or for `timeout`.
    fn wait_report(&self, timeout: Option<Duration>) -> Option<Report> {
        let st = self.lock();
        let st = match timeout {
            None => relock(self.changed.wait_while(st, |s| s.report.is_none())),
            Some(t) => {
                relock(
                    self.changed
                        .wait_timeout_while(st, t, |s| s.report.is_none()),
                )
                .0
            }
        };
        st.report
    }

    fn reload(&self) -> Result<(), ChildError> {
        let st = self.lock();
        let st = self.splay_wait(st, "reloading");
        if st.exit.is_some() {
            return Ok(());
        }
        tracing::info!(label = %self.label, pid = self.pid_u32(),
            signal = %self.config.reload_signal, "asking the child to reload");
        self.send(&st, self.config.reload_signal)
    }

    fn timeout_watch(&self, timeout: Duration) {
        let st = self.lock();
        let mut st = relock(
            self.changed
                .wait_timeout_while(st, timeout, |s| s.exit.is_none()),
        )
        .0;
        // Ended, or already being ended by a kill or stop (which finishes
        // within its kill timeout).
        if st.exit.is_some() || st.requested {
            return;
        }
        st.timed_out = true;
        drop(st);
        tracing::warn!(label = %self.label, pid = self.pid_u32(), ?timeout,
            "the child ran past its execution timeout; killing it");
        self.terminate(true, false);
    }
}

/// One supervised child process. See the [module docs](self).
///
/// Methods take `&self`: share it in an `Arc` to stop it from one task while
/// another waits for its exit.
pub struct Child {
    shared: Arc<Shared>,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("label", &self.shared.label)
            .field("pid", &self.shared.pid_u32())
            .field("group", &self.shared.group)
            .field("exit", &self.shared.lock().exit)
            .finish()
    }
}

type Spawned = (
    Arc<Shared>,
    Option<ChildStdin>,
    Option<ChildStdout>,
    Option<ChildStderr>,
);

fn spawn(
    config: &ChildConfig,
    mut cmd: Command,
    fds: &Activation<'_>,
) -> Result<Child, ChildError> {
    let label = command::label(&cmd);
    if config.process_group {
        cmd.process_group(0);
    }
    cmd.death_signal = config.death_signal.map(Signal::as_raw);

    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Spawned, SpawnError>>(1);
    let thread_label = label.clone();
    let thread_config = config.clone();
    // The descriptors are borrowed for the spawn only; the thread gets
    // duplicates (closed right after the spawn).
    let passed: Vec<(String, std::os::fd::OwnedFd)> = fds
        .entries()
        .map(|(name, fd)| fd.try_clone_to_owned().map(|fd| (name.to_string(), fd)))
        .collect::<io::Result<_>>()
        .map_err(|source| {
            command::spawn_error(
                &label,
                SpawnError::Prepare {
                    program: cmd.get_program().to_owned(),
                    what: "duplicating a descriptor to pass",
                    source,
                },
            )
        })?;
    // The child is started by a thread that lives until it is reaped, so a
    // death signal fires only when this process dies.
    let thread = std::thread::Builder::new()
        .name("handover-child".to_string())
        .spawn(move || {
            let mut activation = Activation::new();
            for (name, fd) in &passed {
                // Validated when they were added to `fds`.
                let _ = activation.fd(name, std::os::fd::AsFd::as_fd(fd));
            }
            let spawned = activation.spawn_with(&mut cmd);
            drop(activation);
            drop(passed);
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let shared = Arc::new(Shared {
                label: thread_label,
                pid: Pid::from_raw(child.id() as i32).expect("a spawned pid is positive"),
                group: thread_config.process_group,
                config: thread_config,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                sequence: Mutex::new(()),
            });
            let (stdin, stdout, stderr) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take());
            // Dropping the handle neither waits for nor kills the process;
            // `watch` reaps it.
            drop(child);
            tracing::info!(label = %shared.label, pid = shared.pid_u32(),
                group = shared.group, "child started");
            // Even if nobody receives this, the child is still reaped below.
            let _ = tx.send(Ok((Arc::clone(&shared), stdin, stdout, stderr)));
            shared.watch();
        })
        .map_err(|source| ChildError::Thread {
            label: label.clone(),
            context: "cannot start the thread that spawns and waits for the child",
            source,
        })?;
    let received = rx.recv();
    let (shared, stdin, stdout, stderr) = match received {
        Ok(Ok(spawned)) => spawned,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(command::spawn_error(&label, e));
        }
        Err(_) => {
            let _ = thread.join();
            return Err(ChildError::Thread {
                label,
                context: "the thread that spawns the child ended without a result",
                source: io::Error::other("thread panicked"),
            });
        }
    };
    drop(thread);
    let child = Child {
        shared,
        stdin,
        stdout,
        stderr,
    };
    if let Some(timeout) = config.execution_timeout {
        let shared = Arc::clone(&child.shared);
        if let Err(source) = std::thread::Builder::new()
            .name("handover-child-timeout".to_string())
            .spawn(move || shared.timeout_watch(timeout))
        {
            child.stop_immediately();
            return Err(ChildError::Thread {
                label,
                context: "cannot start the execution-timeout thread",
                source,
            });
        }
    }
    Ok(child)
}

impl Child {
    /// Starts `cmd` with the default [`ChildConfig`].
    pub fn spawn(cmd: Command) -> Result<Child, ChildError> {
        ChildConfig::default().spawn(cmd)
    }

    /// The child's process id. It stays reserved for this child until it
    /// has been reaped (see [`Child::exited`]).
    pub fn pid(&self) -> u32 {
        self.shared.pid_u32()
    }

    /// The child's process group id (equal to its pid), when it has a group
    /// of its own.
    pub fn pgid(&self) -> Option<u32> {
        self.shared.group.then(|| self.shared.pid_u32())
    }

    /// `(dir) program args`, for logs.
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &ChildConfig {
        &self.shared.config
    }

    /// The writing end of the child's stdin, when the command had
    /// [`Stdio::piped()`](crate::process::Stdio::piped) for it. (For tokio, see
    /// `tokio::process::ChildStdin::from_std`.)
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The reading end of the child's stdout, when piped.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The reading end of the child's stderr, when piped.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// Sends `signal` to the child's group (or to the child, when it has no
    /// group of its own). A child that has already ended is not an error,
    /// and is not signalled: its pid may belong to someone else by now.
    pub fn signal(&self, signal: Signal) -> Result<(), ChildError> {
        let st = self.shared.lock();
        self.shared.send(&st, signal)
    }

    /// Waits a random splay, then sends the reload signal (unless the child
    /// has ended meanwhile).
    pub fn reload(&self) -> Result<(), ChildError> {
        self.shared.reload()
    }

    /// [`Child::reload`] for async code (any runtime).
    pub fn reload_async(&self) -> impl Future<Output = Result<(), ChildError>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        background(move || shared.reload())
    }

    /// Ends the child: a random splay (none if it has already ended), the
    /// kill signal to its group, up to the kill timeout for the group to
    /// leave, then `SIGKILL` to the whole group. Returns once the child has
    /// been reaped and no live process remains in its group. The end is
    /// reported to [`Child::exit`] with [`Exit::requested`] set.
    pub fn kill(&self) -> Exit {
        self.shared.terminate(false, false)
    }

    /// [`Child::kill`] for async code (any runtime). The kill starts at once
    /// on a thread of its own and completes even if the future is dropped.
    pub fn kill_async(&self) -> impl Future<Output = Exit> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        background(move || shared.terminate(false, false))
    }

    /// [`Child::kill`], and [`Report::Stopped`] instead of a report, unless
    /// the child had already ended on its own. Idempotent: every caller gets
    /// the same [`Exit`] once the child is gone.
    pub fn stop(&self) -> Exit {
        self.shared.terminate(false, true)
    }

    /// [`Child::stop`] without the splay, cutting short a splay already in
    /// progress in another call.
    pub fn stop_immediately(&self) -> Exit {
        self.shared.terminate(true, true)
    }

    /// [`Child::stop`] for async code (any runtime); runs to completion even
    /// if the future is dropped.
    pub fn stop_async(&self) -> impl Future<Output = Exit> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        background(move || shared.terminate(false, true))
    }

    /// [`Child::stop_immediately`] for async code (any runtime).
    pub fn stop_immediately_async(&self) -> impl Future<Output = Exit> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        background(move || shared.terminate(true, true))
    }

    /// A future of the report (for any runtime). Every such future resolves
    /// to the same report; it can be created before or after the end.
    pub fn exit(&self) -> ExitFuture {
        ExitFuture {
            shared: Arc::clone(&self.shared),
            id: None,
        }
    }

    /// Blocks until the child has ended; returns the report.
    pub fn wait(&self) -> Report {
        self.shared
            .wait_report(None)
            .expect("wait_while returns once the report is in")
    }

    /// Blocks until the child has ended or `timeout` has passed (`None`).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Report> {
        self.shared.wait_report(Some(timeout))
    }

    /// The report, if the child has ended.
    pub fn report(&self) -> Option<Report> {
        self.shared.lock().report
    }

    /// How the child ended, once it has been reaped, whether or not the
    /// report was suppressed by a stop.
    pub fn exited(&self) -> Option<Exit> {
        self.shared.lock().exit
    }

    /// For one-shot use, after the end: `Ok` for exit code 0.
    fn check(&self) -> Result<Exit, ChildError> {
        let exit = self
            .exited()
            .expect("check is called after the child has ended");
        if exit.timed_out {
            Err(ChildError::TimedOut {
                label: self.shared.label.clone(),
                timeout: self.shared.config.execution_timeout.unwrap_or_default(),
            })
        } else if exit.status.success() {
            Ok(exit)
        } else {
            Err(ChildError::Failed {
                label: self.shared.label.clone(),
                status: exit.status,
            })
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.shared.config.kill_on_drop {
            return;
        }
        let mut st = self.shared.lock();
        if st.exit.is_some() || st.killer_reaps {
            return;
        }
        st.requested = true;
        tracing::info!(label = %self.shared.label, pid = self.shared.pid_u32(),
            "child handle dropped; sending SIGKILL");
        // Still unreaped under the lock: the pid and group id are ours. The
        // waiting thread reaps the child.
        let raw = rustix::process::Signal::KILL;
        let _ = if self.shared.group {
            rustix::process::kill_process_group(self.shared.pid, raw)
        } else {
            rustix::process::kill_process(self.shared.pid, raw)
        };
    }
}

/// Resolves to the child's [`Report`] once it has ended. Made by
/// [`Child::exit`]; needs no particular async runtime.
pub struct ExitFuture {
    shared: Arc<Shared>,
    id: Option<u64>,
}

impl fmt::Debug for ExitFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExitFuture")
            .field("label", &self.shared.label)
            .field("pid", &self.shared.pid_u32())
            .finish()
    }
}

impl Clone for ExitFuture {
    fn clone(&self) -> Self {
        ExitFuture {
            shared: Arc::clone(&self.shared),
            id: None,
        }
    }
}

impl Future for ExitFuture {
    type Output = Report;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Report> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        if let Some(report) = st.report {
            return Poll::Ready(report);
        }
        match this.id {
            Some(id) => {
                if let Some((_, w)) = st.wakers.iter_mut().find(|(i, _)| *i == id) {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                } else {
                    st.wakers.push((id, cx.waker().clone()));
                }
            }
            None => {
                let id = st.next_waker;
                st.next_waker += 1;
                st.wakers.push((id, cx.waker().clone()));
                this.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for ExitFuture {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.lock().wakers.retain(|(i, _)| *i != id);
        }
    }
}

/// The result slot of a [`background`] job.
struct Slot<T> {
    value: Option<std::thread::Result<T>>,
    waker: Option<Waker>,
}

/// Runs `job` on a thread of its own; the future resolves to its result.
fn background<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = T> + Send + 'static {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
    }));
    let theirs = Arc::clone(&slot);
    let run = move || {
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let mut s = relock(theirs.lock());
        s.value = Some(value);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    };
    // Shared so that, if no thread can be started, the job runs right here
    // (blocking, but correct) instead of being lost.
    let run = Arc::new(Mutex::new(Some(run)));
    let for_thread = Arc::clone(&run);
    let started = std::thread::Builder::new()
        .name("handover-child-kill".to_string())
        .spawn(move || {
            if let Some(run) = relock(for_thread.lock()).take() {
                run();
            }
        });
    if started.is_err()
        && let Some(run) = relock(run.lock()).take()
    {
        run();
    }
    std::future::poll_fn(move |cx| {
        let mut s = relock(slot.lock());
        match s.value.take() {
            Some(Ok(v)) => Poll::Ready(v),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splay_is_within_bounds_and_varies() {
        let splay = Duration::from_millis(50);
        let draws: Vec<Duration> = (0..1000).map(|_| random_splay(splay)).collect();
        assert!(draws.iter().all(|d| *d < splay));
        assert!(draws.iter().any(|d| *d != draws[0]));
        assert_eq!(random_splay(Duration::ZERO), Duration::ZERO);
        assert!(random_splay(Duration::from_nanos(1)).is_zero());
    }

    #[test]
    fn displays() {
        let exit = Exit {
            status: ExitStatus::Signaled {
                signal: Signal::TERM,
                core_dumped: false,
            },
            requested: true,
            timed_out: false,
        };
        assert_eq!(exit.to_string(), "was killed by SIGTERM (as requested)");
        assert_eq!(ExitStatus::Code(3).to_string(), "exited with code 3");
    }
}
