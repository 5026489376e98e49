//! The state machine of one supervised child: the thread that waits for it
//! and reaps it, signals sent under the same lock (so no signal reaches a
//! reaped pid), the kill sequence (splay, kill signal, kill timeout,
//! `SIGKILL` to the group) and the execution timeout.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, WaitId, WaitIdOptions, WaitOptions};

use crate::sync::Event;

use super::{ChildConfig, ChildError, Exit, ExitStatus, Report, Signal, group};

/// How long [`Child::kill`] waits, after the leader is reaped, for the other
/// members of its group to finish dying before it gives up with a warning.
const GROUP_CLEAR_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the graceful phase of a kill looks for group members once the
/// leader has exited.
const GROUP_POLL: Duration = Duration::from_millis(10);

#[derive(Default)]
pub(super) struct State {
    /// The leader has exited: it is a zombie or already reaped.
    pub(super) exited: bool,
    /// Set once the leader is reaped. From then on its pid may belong to
    /// another process and must never be signalled.
    pub(super) exit: Option<Exit>,
    /// What watchers get; set with `exit`.
    pub(super) report: Option<Report>,
    /// A kill sequence is running and reaps the leader itself, after giving
    /// the rest of the group its time.
    pub(super) killer_reaps: bool,
    /// We asked the child to end.
    pub(super) requested: bool,
    /// `stop` was called before the child ended: suppress the report.
    pub(super) stop_requested: bool,
    /// The execution timeout fired.
    pub(super) timed_out: bool,
    /// `stop_immediately` was called: cut any splay short.
    pub(super) hurry: bool,
    /// The leader exited on its own while other members of its group lived.
    pub(super) leftovers: bool,
}

pub(super) struct Shared {
    pub(super) label: String,
    pub(super) pid: Pid,
    pub(super) group: bool,
    pub(super) config: ChildConfig,
    pub(super) state: Mutex<State>,
    pub(super) changed: Condvar,
    /// Set with the report when the child has ended: what [`ExitFuture`](super::ExitFuture)s await.
    pub(super) ended: Arc<Event<Report>>,
    /// Serializes kill sequences (kill, stop, the execution timeout).
    pub(super) sequence: Mutex<()>,
}

pub(super) fn relock<T>(r: Result<T, PoisonError<T>>) -> T {
    r.unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn random_splay(splay: Duration) -> Duration {
    let nanos = u64::try_from(splay.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(fastrand::u64(0..nanos))
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        relock(self.state.lock())
    }

    pub(super) fn pid_u32(&self) -> u32 {
        self.pid.as_raw_pid() as u32
    }

    /// Sends `signal` to the group (or the child) unless the child was
    /// reaped. Holding the state lock is what makes this safe.
    pub(super) fn send(&self, st: &State, signal: Signal) -> Result<(), ChildError> {
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
    pub(super) fn reap(&self) -> ExitStatus {
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
    pub(super) fn record(&self, st: &mut State, status: ExitStatus) {
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
        self.ended.set(report);
        self.changed.notify_all();
    }

    /// The body of the thread that spawned the child: wait for the leader to
    /// exit without reaping it, then reap it unless a kill sequence will.
    pub(super) fn watch(&self) {
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
    pub(super) fn splay_wait<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        what: &str,
    ) -> MutexGuard<'a, State> {
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
    pub(super) fn terminate(&self, immediately: bool, stop: bool) -> Exit {
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
    pub(super) fn clear_group(&self, leftovers: bool) {
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
    pub(super) fn wait_report(&self, timeout: Option<Duration>) -> Option<Report> {
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

    pub(super) fn reload(&self) -> Result<(), ChildError> {
        let st = self.lock();
        let st = self.splay_wait(st, "reloading");
        if st.exit.is_some() {
            return Ok(());
        }
        tracing::info!(label = %self.label, pid = self.pid_u32(),
            signal = %self.config.reload_signal, "asking the child to reload");
        self.send(&st, self.config.reload_signal)
    }

    pub(super) fn timeout_watch(&self, timeout: Duration) {
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
}
