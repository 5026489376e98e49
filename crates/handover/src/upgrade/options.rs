//! [`Options`]: how an [`Upgrader`](super::Upgrader) behaves.

use std::path::PathBuf;
use std::time::Duration;

use super::DEFAULT_READY_TIMEOUT;
use crate::address::BindOptions;

/// How an [`Upgrader`] behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// How long a new process has to call `ready()` (default 60 s).
    pub ready_timeout: Duration,
    /// Where `ready()` writes this process's pid (atomically).
    pub pid_file: Option<PathBuf>,
    /// The program to re-execute (default: how this one was started).
    pub executable: Option<PathBuf>,
    /// How fresh sockets are bound.
    pub bind: BindOptions,
    /// Under systemd (`NOTIFY_SOCKET` set), keep each socket
    /// [`Upgrader::listen`] returns in the service's fd store as well
    /// (`FDSTORE=1`, `FDNAME=` its name): when the process dies (a crash,
    /// `kill -9`) and systemd starts the service again, the new process
    /// gets the same socket back under its name, with the connections that
    /// arrived meanwhile waiting in its queue instead of being refused. The
    /// unit needs `FileDescriptorStoreMax=` (and `Restart=`); see
    /// [`Notifier::notify_with_fds`]. Default: off.
    pub fd_store: bool,
    /// Pass the successor a socket over which this process hands it its
    /// idle HTTP/1.1 keep-alive connections when it drains
    /// ([`HANDOFF_FD_NAME`](super::HANDOFF_FD_NAME); see
    /// [`Handoff`](crate::drain::http::Handoff)), so clients keep their
    /// connections across upgrades. Default: off.
    pub handoff: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ready_timeout: DEFAULT_READY_TIMEOUT,
            pid_file: None,
            executable: None,
            bind: BindOptions::default(),
            fd_store: false,
            handoff: false,
        }
    }
}

impl Options {
    /// Sets the ready timeout.
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Sets the pid file.
    pub fn pid_file(mut self, p: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(p.into());
        self
    }

    /// Sets the program to re-execute.
    pub fn executable(mut self, p: impl Into<PathBuf>) -> Self {
        self.executable = Some(p.into());
        self
    }

    /// Keeps the sockets in systemd's fd store too (see
    /// [`Options::fd_store`]).
    pub fn fd_store(mut self, on: bool) -> Self {
        self.fd_store = on;
        self
    }

    /// Hands idle keep-alive connections to the successor (see
    /// [`Options::handoff`]).
    pub fn handoff(mut self, on: bool) -> Self {
        self.handoff = on;
        self
    }
}
