//! [`Process`]: a started program.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ChildStderr, ChildStdin, ChildStdout, ExitStatus};
use std::time::{Duration, Instant};

use rustix::io::Errno;

/// A started process. Method names mirror `std::process::Child`.
///
/// Dropping it neither kills nor waits for the process (as with std's
/// `Child`): wait for it, or use [`crate::child::Child`], so that no zombie is
/// left.
#[derive(Debug)]
pub struct Process {
    pub(super) pid: u32,
    pub(super) pidfd: Option<OwnedFd>,
    pub(super) status: Option<ExitStatus>,
    /// The writing end of its stdin, when it was [`Stdio::piped`](super::Stdio::piped).
    pub stdin: Option<ChildStdin>,
    /// The reading end of its stdout, when piped.
    pub stdout: Option<ChildStdout>,
    /// The reading end of its stderr, when piped.
    pub stderr: Option<ChildStderr>,
}

impl Process {
    /// Its process id. It stays reserved for this process until it has
    /// been waited for.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// A pidfd for it (Linux 5.3 and later): becomes readable when it
    /// exits, and signals through it cannot reach a recycled pid.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|p| p.as_fd())
    }

    fn rustix_pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.pid as i32).expect("a spawned pid is positive")
    }

    /// How it ended, if it has; reaps it then.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let pid = self.rustix_pid();
        loop {
            match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
                Ok(Some((_, st))) => {
                    let s = ExitStatus::from_raw(st.as_raw());
                    self.status = Some(s);
                    return Ok(Some(s));
                }
                Ok(None) => return Ok(None),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits for it to end (closing its stdin first, as std does) and reaps
    /// it.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        drop(self.stdin.take());
        if let Some(s) = self.status {
            return Ok(s);
        }
        let pid = self.rustix_pid();
        loop {
            match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
                Ok(Some((_, st))) => {
                    let s = ExitStatus::from_raw(st.as_raw());
                    self.status = Some(s);
                    return Ok(s);
                }
                Ok(None) => continue,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads all of its piped stdout and stderr, then waits for it (as
    /// std's `Child::wait_with_output`).
    pub fn wait_with_output(mut self) -> io::Result<std::process::Output> {
        use std::io::Read;
        drop(self.stdin.take());
        let err = self.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                e.read_to_end(&mut v).map(|_| v)
            })
        });
        let mut stdout = Vec::new();
        if let Some(mut o) = self.stdout.take() {
            o.read_to_end(&mut stdout)?;
        }
        let stderr = match err {
            Some(t) => t
                .join()
                .map_err(|_| io::Error::other("the stderr reader panicked"))??,
            None => Vec::new(),
        };
        let status = self.wait()?;
        Ok(std::process::Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Waits up to `timeout` for it to end; `None` when it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match &self.pidfd {
                Some(fd) => {
                    let ts = rustix::time::Timespec {
                        tv_sec: left.as_secs() as i64,
                        tv_nsec: left.subsec_nanos() as i64,
                    };
                    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                    match rustix::event::poll(&mut fds, Some(&ts)) {
                        Ok(_) | Err(Errno::INTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                None => std::thread::sleep(left.min(Duration::from_millis(5))),
            }
        }
    }

    /// Sends `SIGKILL` (through the pidfd when there is one). Not an error
    /// once it has ended.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let sig = rustix::process::Signal::KILL;
        let r = match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, sig),
            // Not reaped yet (no status), so the pid is still ours.
            None => rustix::process::kill_process(self.rustix_pid(), sig),
        };
        match r {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// [`wait`](Self::wait) for tokio: waits on the pidfd without blocking a
    /// thread (call inside a runtime).
    #[cfg(feature = "tokio")]
    pub async fn wait_async(&mut self) -> io::Result<ExitStatus> {
        drop(self.stdin.take());
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        match &self.pidfd {
            Some(fd) => {
                // Deprecated in tokio 1.54 because any `T: AsRawFd` may close
                // its fd under the registration; an `OwnedFd` does not.
                // (`register_with_interest`, its replacement, needs 1.54.)
                #[allow(deprecated)]
                let fd = tokio::io::unix::AsyncFd::with_interest(
                    fd.try_clone()?,
                    tokio::io::Interest::READABLE,
                )?;
                loop {
                    let mut guard = fd.readable().await?;
                    if let Some(s) = self.try_wait()? {
                        return Ok(s);
                    }
                    guard.clear_ready();
                }
            }
            None => {
                let pid = self.rustix_pid();
                let st = tokio::task::spawn_blocking(move || {
                    loop {
                        match rustix::process::waitpid(
                            Some(pid),
                            rustix::process::WaitOptions::empty(),
                        ) {
                            Ok(Some((_, st))) => return Ok(st),
                            Ok(None) | Err(Errno::INTR) => continue,
                            Err(e) => return Err(io::Error::from(e)),
                        }
                    }
                })
                .await
                .map_err(io::Error::other)??;
                let s = ExitStatus::from_raw(st.as_raw());
                self.status = Some(s);
                Ok(s)
            }
        }
    }
}
