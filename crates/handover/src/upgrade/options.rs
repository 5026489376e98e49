//! [`Options`]: how an [`Upgrader`](super::Upgrader) behaves.

use std::path::PathBuf;
use std::time::Duration;

use crate::address::BindOptions;

/// How an [`Upgrader`](super::Upgrader) behaves.
///
/// Built like the crate's other option structs: `Options::new()` (or
/// `default()`) and by-value setters.
///
/// ```no_run
/// use std::time::Duration;
/// use handover::upgrade::{Options, Upgrader};
/// # fn main() -> Result<(), handover::upgrade::UpgradeError> {
/// let mut options = Options::new().ready_timeout(Duration::from_secs(20));
/// if std::env::var_os("NOTIFY_SOCKET").is_some() {
///     options = options.fd_store(true);
/// }
/// let upgrader = Upgrader::new(options.pid_file("/run/app.pid"))?;
/// # drop(upgrader);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    pub(super) ready_timeout: Duration,
    pub(super) pid_file: Option<PathBuf>,
    pub(super) executable: Option<PathBuf>,
    pub(super) bind: BindOptions,
    pub(super) fd_store: bool,
    pub(super) handoff: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ready_timeout: super::DEFAULT_READY_TIMEOUT,
            pid_file: None,
            executable: None,
            bind: BindOptions::default(),
            fd_store: false,
            handoff: false,
        }
    }
}

impl Options {
    /// The defaults: a ready timeout of 60 s, no pid file, the program this
    /// one was started as, [`BindOptions`]' defaults, no fd store, no
    /// connection hand-over.
    pub fn new() -> Options {
        Options::default()
    }

    /// How long a new process has to call
    /// [`ready`](super::Upgrader::ready) before the upgrade fails and the
    /// new process is killed (default 60 s). [`Upgrader::upgrade`](super::Upgrader::upgrade)
    /// blocks for up to this long.
    pub fn ready_timeout(mut self, timeout: Duration) -> Options {
        self.ready_timeout = timeout;
        self
    }

    /// A file that [`ready`](super::Upgrader::ready) writes this process's
    /// pid to, atomically (default none). A failed upgrade puts this
    /// process's pid back; a final [`stop`](super::Upgrader::stop) removes
    /// the file while it names this process.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Options {
        self.pid_file = Some(path.into());
        self
    }

    /// The program to re-execute (default: how this one was started:
    /// `argv[0]`, resolved against `PATH` and the starting directory at
    /// start-up, so that a deploy that replaces the file or swaps a symlink
    /// starts the new version).
    pub fn executable(mut self, path: impl Into<PathBuf>) -> Options {
        self.executable = Some(path.into());
        self
    }

    /// How [`Upgrader::listen`](super::Upgrader::listen) binds fresh
    /// sockets: backlog, Unix socket mode, `SO_REUSEPORT`, `IPV6_V6ONLY`,
    /// and a hook for any other option (default [`BindOptions::new`]).
    /// Inherited sockets are used as they are.
    pub fn bind_options(mut self, options: BindOptions) -> Options {
        self.bind = options;
        self
    }

    /// Under systemd (`NOTIFY_SOCKET` set), keep each socket
    /// [`Upgrader::listen`](super::Upgrader::listen) returns in the
    /// service's fd store as well (`FDSTORE=1`, `FDNAME=` its name): when
    /// the process dies (a crash, `kill -9`) and systemd starts the service
    /// again, the new process gets the same socket back under its name,
    /// with the connections that arrived meanwhile waiting in its queue
    /// instead of being refused. The unit needs `FileDescriptorStoreMax=`
    /// (and `Restart=`); see
    /// [`Notifier::notify_with_fds`](crate::notify::Notifier::notify_with_fds).
    /// Default: off.
    pub fn fd_store(mut self, on: bool) -> Options {
        self.fd_store = on;
        self
    }

    /// Pass the successor a socket over which this process hands it its
    /// idle HTTP/1.1 keep-alive connections when it drains
    /// ([`HANDOFF_FD_NAME`](super::HANDOFF_FD_NAME); see
    /// [`Handoff`](crate::drain::http::Handoff)), so clients keep their
    /// connections across upgrades. Default: off.
    pub fn handoff(mut self, on: bool) -> Options {
        self.handoff = on;
        self
    }
}
