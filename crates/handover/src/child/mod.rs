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
mod config;
mod error;
mod exit;
mod future;
mod group;
mod signal;
mod supervise;

pub use config::ChildConfig;
pub use error::ChildError;
pub use exit::{Exit, ExitStatus, Report};
pub use future::ExitFuture;
pub use signal::{ParseSignalError, Signal};

use std::fmt;
use std::future::Future;
use std::io;
use std::process::{ChildStderr, ChildStdin, ChildStdout};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::process::Pid;

use crate::activation::Activation;
use crate::process::{Command, SpawnError};

use crate::sync::{Event, Wait, background};
use supervise::{Shared, State};

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

pub(super) fn spawn(
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
                ended: Arc::new(Event::new()),
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
        background("handover-child-kill", move || shared.reload())
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
        background("handover-child-kill", move || {
            shared.terminate(false, false)
        })
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
        background("handover-child-kill", move || shared.terminate(false, true))
    }

    /// [`Child::stop_immediately`] for async code (any runtime).
    pub fn stop_immediately_async(&self) -> impl Future<Output = Exit> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        background("handover-child-kill", move || shared.terminate(true, true))
    }

    /// A future of the report (for any runtime). Every such future resolves
    /// to the same report; it can be created before or after the end.
    pub fn exit(&self) -> ExitFuture {
        ExitFuture {
            shared: Arc::clone(&self.shared),
            wait: Wait::new(Arc::clone(&self.shared.ended)),
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
