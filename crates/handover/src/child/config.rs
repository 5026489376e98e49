//! [`ChildConfig`]: how children are started and ended.

use std::time::Duration;

use super::{Child, ChildError, Exit, Signal, command};
use crate::activation::Activation;
use crate::process::Command;

/// How children are started and ended. Reusable: one config can spawn many
/// generations of a server.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    pub(super) kill_signal: Signal,
    pub(super) kill_timeout: Duration,
    pub(super) reload_signal: Signal,
    pub(super) splay: Duration,
    pub(super) execution_timeout: Option<Duration>,
    pub(super) process_group: bool,
    pub(super) death_signal: Option<Signal>,
    pub(super) kill_on_drop: bool,
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
        super::spawn(self, cmd, fds)
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
