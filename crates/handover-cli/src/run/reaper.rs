//! The one reaper: the only code in `handover run` that waits for child
//! processes. On every `SIGCHLD` it reaps every child that has exited
//! (`waitpid(-1, WNOHANG)` until none is left) and hands each status to
//! whoever registered that pid: a generation's main process becomes an
//! [`Event::Exited`] for the state machine, a readiness probe's status goes
//! to the task that runs it, and anything else is an orphan that was
//! re-parented to handover (as pid 1, or as the subreaper handover makes
//! itself) and is reaped without a word.
//!
//! Spawning and signalling go through the same lock as reaping: a pid is
//! registered before the reaper can see it exit, and a process is signalled
//! only while it is registered, that is, before it is reaped and its pid can
//! be reused. A process group is signalled after its leader was reaped only
//! while members remain: a group id cannot be reused while it has members.
//!
//! Nothing else in this process may wait for children (`std::process::Child::
//! wait`, `tokio::process`, the library's `child` module): this reaper would
//! take their statuses.

use handover::process::{Command, Process, SpawnError};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions};
use tokio::sync::{mpsc, oneshot};

use handover::child::Signal;

use super::machine::{Event, Status};

/// Who gets a pid's exit status.
pub(super) enum Waiter {
    /// A generation's main process: an event for the machine.
    Generation,
    /// A readiness probe.
    Probe(oneshot::Sender<Status>),
}

/// See the [module docs](self).
pub(super) struct Reaper {
    waiters: Mutex<HashMap<u32, Waiter>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Reaper {
    pub(super) fn new(events: mpsc::UnboundedSender<Event>) -> Reaper {
        Reaper {
            waiters: Mutex::new(HashMap::new()),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Waiter>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `spawn` and registers the pid it returns for `waiter`, under the
    /// lock, so the reaper cannot see the process exit before it is known.
    /// `spawn` must not wait for the child.
    pub(super) fn spawn<E>(
        &self,
        waiter: Waiter,
        spawn: impl FnOnce() -> Result<Process, E>,
    ) -> Result<(u32, Process), E> {
        let mut waiters = self.lock();
        let child = spawn()?;
        let pid = child.id();
        waiters.insert(pid, waiter);
        Ok((pid, child))
    }

    /// Registers `pid`, a child this process already has (a generation a
    /// re-executed image takes over), as a generation's main process. Call
    /// it before the reaper first runs: a child that exited during the exec
    /// is a zombie until then, and its status must reach the machine.
    pub(super) fn adopt(&self, pid: u32) {
        self.lock().insert(pid, Waiter::Generation);
    }

    /// Kills the process group of every readiness probe that runs (before a
    /// re-exec: the probes' tasks do not survive it, and the new image runs
    /// them again).
    pub(super) fn kill_probes(&self) {
        let waiters = self.lock();
        for (&pid, w) in waiters.iter() {
            if matches!(w, Waiter::Probe(_))
                && let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        }
    }

    /// Spawns `cmd` for `waiter` (see [`Reaper::spawn`]).
    pub(super) fn spawn_command(
        &self,
        waiter: Waiter,
        mut cmd: Command,
    ) -> Result<(u32, Process), SpawnError> {
        self.spawn(waiter, || cmd.spawn())
    }

    /// Sends `signal` to process group `pgid` (a process that leads its own
    /// group). While the leader is registered (not reaped) its pid is ours;
    /// after that, only members can keep the group id alive, and a signal to
    /// a group without members fails harmlessly (`ESRCH`).
    pub(super) fn signal_group(&self, pgid: u32, signal: Signal) {
        let _waiters = self.lock();
        let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
            return;
        };
        let Some(raw) = rustix::process::Signal::from_named_raw(signal.as_raw()) else {
            tracing::warn!(%signal, "only named signals can be sent");
            return;
        };
        match rustix::process::kill_process_group(pid, raw) {
            Ok(()) | Err(Errno::SRCH) => {
                tracing::debug!(pgid, %signal, "signal sent to the process group")
            }
            Err(e) => tracing::warn!(pgid, %signal, error = %e, "cannot signal the process group"),
        }
    }

    /// Sends `signal` to the process `pid` alone, if it is a registered
    /// child that was not reaped yet (so the pid is still ours); otherwise
    /// it is gone and nothing is sent.
    pub(super) fn signal_process(&self, pid: u32, signal: Signal) {
        let waiters = self.lock();
        if !waiters.contains_key(&pid) {
            tracing::debug!(pid, %signal, "not signalled: the process is gone");
            return;
        }
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        let Some(raw) = rustix::process::Signal::from_named_raw(signal.as_raw()) else {
            tracing::warn!(%signal, "only named signals can be sent");
            return;
        };
        match rustix::process::kill_process(p, raw) {
            Ok(()) | Err(Errno::SRCH) => {
                tracing::debug!(pid, %signal, "signal sent to the process")
            }
            Err(e) => tracing::warn!(pid, %signal, error = %e, "cannot signal the process"),
        }
    }

    /// Whether process group `pgid` has any process left (alive or not yet
    /// reaped by its parent).
    pub(super) fn group_exists(&self, pgid: u32) -> bool {
        let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
            return false;
        };
        !matches!(
            rustix::process::test_kill_process_group(pid),
            Err(Errno::SRCH)
        )
    }

    /// Reaps every child that has exited and hands out the statuses.
    pub(super) fn reap_all(&self) {
        let mut waiters = self.lock();
        loop {
            let (pid, status) = match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => (pid.as_raw_nonzero().get() as u32, status),
                Ok(None) | Err(Errno::CHILD) => return,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            let status = if let Some(sig) = status.terminating_signal() {
                Status::Signaled {
                    signal: sig,
                    core_dumped: status.as_raw() & 0x80 != 0,
                }
            } else {
                Status::Code(status.exit_status().unwrap_or(-1))
            };
            match waiters.remove(&pid) {
                Some(Waiter::Generation) => {
                    let _ = self.events.send(Event::Exited { pid, status });
                }
                Some(Waiter::Probe(tx)) => {
                    let _ = tx.send(status);
                }
                None => tracing::debug!(pid, %status, "reaped an orphan"),
            }
        }
    }

    /// Reaps on every `SIGCHLD`, for ever. The `SIGCHLD` stream must exist
    /// before the first child is spawned.
    pub(super) async fn run(&self, mut sigchld: tokio::signal::unix::Signal) {
        loop {
            self.reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
}

/// Kills a readiness probe's process group when dropped (its run ended, timed
/// out, or the probing was cancelled).
pub(super) struct KillGroupOnDrop<'a> {
    pub(super) reaper: &'a Reaper,
    pub(super) pgid: u32,
}

impl Drop for KillGroupOnDrop<'_> {
    fn drop(&mut self) {
        self.reaper.signal_group(self.pgid, Signal::KILL);
    }
}
