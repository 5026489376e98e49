//! How a child ended: [`ExitStatus`], [`Exit`] and the [`Report`] watchers get.

use std::fmt;

use rustix::process::WaitIdStatus;

use super::Signal;

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

    pub(super) fn from_waitid(status: &WaitIdStatus) -> ExitStatus {
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

impl From<std::process::ExitStatus> for ExitStatus {
    /// The status of a process waited for with std (or with
    /// [`Process::wait`](crate::process::Process::wait)).
    fn from(status: std::process::ExitStatus) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        if let Some(code) = status.code() {
            ExitStatus::Code(code)
        } else if let Some(signal) = status.signal() {
            ExitStatus::Signaled {
                signal: Signal::from_reported(signal),
                core_dumped: status.core_dumped(),
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

/// What [`Child::exit`](super::Child::exit) and [`Child::wait`](super::Child::wait) report, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Report {
    /// The child ended; how and why.
    Exited(Exit),
    /// The child was ended by [`Child::stop`](super::Child::stop) or [`Child::stop_immediately`](super::Child::stop_immediately)
    /// before it ended on its own: nothing to report (the caller of `stop`
    /// got the [`Exit`], and [`Child::exited`](super::Child::exited) still has it).
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        use std::os::unix::process::ExitStatusExt;
        let std = |raw| ExitStatus::from(std::process::ExitStatus::from_raw(raw));
        assert_eq!(std(3 << 8), ExitStatus::Code(3));
        assert_eq!(std(9).to_string(), "was killed by SIGKILL");
        assert_eq!(
            std(11 | 0x80).to_string(),
            "was killed by SIGSEGV (core dumped)"
        );
    }
}
