//! A server that re-executes itself with zero downtime.
//!
//! Four calls do the work, in the spirit of tableflip:
//!
//! - [`Upgrader::listen`]: the socket inherited from the predecessor under a
//!   name, or a freshly bound one when there is none (bound with
//!   [`Options::bind_options`]: backlog, `SO_REUSEPORT`, `IPV6_V6ONLY`, or a
//!   hook for any option, set before `bind`);
//! - [`Upgrader::ready`]: this process is serving (tell the parent, write the
//!   pid file, tell systemd);
//! - [`Upgrader::upgrade`]: start the program again with every registered
//!   socket and wait until it is ready — or roll back if it exits or times
//!   out, and go on serving as if nothing happened. It blocks for up to
//!   [`Options::ready_timeout`] (60 s by default): call it from a thread of
//!   its own, or `upgrade_async` (feature `tokio`);
//! - [`Upgrader::exit`]: resolves when a successor is ready: stop accepting,
//!   drain, exit.
//!
//! The rest is optional: [`add_fd`](Upgrader::add_fd) and
//! [`fd`](Upgrader::fd) pass other descriptors on, [`stop`](Upgrader::stop)
//! cleans up after a final stop, [`wait_for_parent`](Upgrader::wait_for_parent)
//! waits for the old process to be gone, and a few queries
//! ([`is_upgrade`](Upgrader::is_upgrade), [`executable`](Upgrader::executable),
//! [`successor`](Upgrader::successor)). With the `tokio` feature,
//! `Upgrader::run` is the whole loop: signals, upgrade, drain.
//!
//! ```no_run
//! use handover::address::Address;
//! use handover::upgrade::{Options, Upgrader};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upgrader = Upgrader::new(Options::new())?;
//! let addr: Address = "tcp://127.0.0.1:8080".parse()?;
//! let listener: std::net::TcpListener = upgrader.listen("http", &addr)?;
//! // ... start serving on `listener` ...
//! upgrader.ready()?;
//! // on SIGHUP: upgrader.upgrade()  (errors mean: still serving, nothing changed)
//! upgrader.exit().wait();           // a successor is ready
//! // stop accepting, drain with handover::drain, exit
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! The new process gets the registered sockets as fds 3.. through the socket
//! activation protocol ([`crate::activation`]), plus one more: the write end
//! of a pipe named [`READY_FD_NAME`]. Its `ready()` writes one byte to it. The
//! old process waits for that byte: a byte means ready; end-of-file means the
//! new process exited (or closed the pipe) first; silence until the timeout
//! means it hangs. Both failures kill the new process, reap it, and return an
//! error that says which; the old process keeps every socket and goes on.
//! The same listening sockets pass from generation to generation, so no
//! connection waiting in their accept queues is ever reset.
//!
//! The program re-executed is the path it was started from (`argv[0]`,
//! resolved against `PATH` and the starting directory once at start-up, with
//! symlinks kept), so a deploy that replaces the file or swaps a symlink
//! starts the new version. The arguments, working directory and environment
//! are this process's own (without the `LISTEN_*` variables).
//!
//! The new process is started with [`crate::process`] (a vfork-style clone,
//! not `fork`), so an upgrade costs the same whether this process holds
//! 10 MB or 10 GB, and a program that cannot be executed (a missing `#!`
//! interpreter, a binary for another system) is a [`UpgradeError::Spawn`]
//! that says why, with this process still serving.
//!
//! Under systemd (`NOTIFY_SOCKET` set) an upgrade sends `RELOADING=1` with
//! `MONOTONIC_USEC` first (for `Type=notify-reload`). Once the successor is
//! ready, the old process sends `MAINPID=` the successor and `READY=1` in
//! one datagram: under `NotifyAccess=main` systemd accepts messages only
//! from the main pid, so the successor's own `READY=1` (which its `ready()`
//! also sends, for `NotifyAccess=all`) may be dropped when it arrives before
//! the main pid changed. A failed upgrade sends `READY=1` with a `STATUS=`
//! saying why.

mod error;
mod exit;
mod options;
#[cfg(feature = "tokio")]
mod run;
mod successor;

pub use error::UpgradeError;
pub use exit::ExitSignal;
pub use options::Options;
#[cfg(feature = "tokio")]
pub use run::{RunOptions, RunOutcome, Signals, StopReason};

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::activation::{Activation, ActivationError, ListenFds};
use crate::address::Address;
use crate::notify::{Notifier, State as NotifyState};
use crate::process::{Command, Process};
use crate::socket::{ConvertError, FdKind, FromFd};

use crate::pidfile;
use crate::sync::{Event, Wait};
use successor::{WaitError, poll_in, resolve_executable, wait_ready};

/// The name of the inherited fd that carries readiness from a new process
/// to the one that started it.
pub const READY_FD_NAME: &str = "handover.ready";

/// The name of the inherited fd over which a process hands its idle
/// keep-alive connections to its successor, when
/// [`Options::handoff`] is on (one end of a Unix socket pair; the protocol
/// is [`pass::connection`](crate::pass::connection)).
pub const HANDOFF_FD_NAME: &str = "handover.handoff";

/// The default time a new process has to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Names of the descriptors the upgrade itself passes.
fn is_reserved(name: &str) -> bool {
    name == READY_FD_NAME || name == HANDOFF_FD_NAME
}

/// A socket or descriptor passed to the successor.
struct Registered {
    name: String,
    fd: OwnedFd,
    /// The socket file of a Unix listener, unlinked on a final stop.
    unix_path: Option<PathBuf>,
}

struct State {
    inherited: ListenFds,
    registered: Vec<Registered>,
    /// Write end of the pipe to the parent, until `ready()`.
    ready_pipe: Option<OwnedFd>,
    ready: bool,
    upgrading: Option<Instant>,
    successor: Option<u32>,
    stopped: bool,
    /// The predecessor's hand-over socket, until taken or `ready()`.
    handoff_in: Option<OwnedFd>,
    /// This process's end of the successor's hand-over socket.
    handoff_out: Option<OwnedFd>,
}

struct Inner {
    options: Options,
    argv0: OsString,
    executable: PathBuf,
    args: Vec<OsString>,
    cwd: PathBuf,
    /// The parent's pid when this process was started by an upgrade.
    parent: Option<u32>,
    notifier: Notifier,
    state: Mutex<State>,
    exit: Arc<Event<()>>,
}

/// Re-executes this program with its sockets; see the [module docs](self).
///
/// Create one at start-up, before anything else looks at the inherited fds.
/// Cheap to clone (all clones share state).
#[derive(Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrader")
            .field("executable", &self.inner.executable)
            .field("parent", &self.inner.parent)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves consistent data (every update is
    // a single assignment), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Upgrader {
    /// Receives the sockets passed by a predecessor (or systemd), if any.
    pub fn new(options: Options) -> Result<Upgrader, UpgradeError> {
        let mut inherited = ListenFds::from_env()?;
        let ready_pipe = match inherited.take::<OwnedFd>(READY_FD_NAME) {
            Ok(fd) => Some(fd),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let handoff_in = match inherited.take::<OwnedFd>(HANDOFF_FD_NAME) {
            Ok(fd) => Some(fd),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let cwd = std::env::current_dir().map_err(|source| UpgradeError::Io {
            context: "reading the working directory",
            source,
        })?;
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        let executable = options
            .executable
            .clone()
            .unwrap_or_else(|| resolve_executable(&argv0, &cwd));
        let parent = ready_pipe
            .as_ref()
            .and_then(|_| rustix::process::getppid())
            .map(|p| p.as_raw_nonzero().get() as u32);
        let notifier = Notifier::from_env()?;
        Ok(Upgrader {
            inner: Arc::new(Inner {
                options,
                argv0,
                executable,
                args: args.collect(),
                cwd,
                parent,
                notifier,
                state: Mutex::new(State {
                    inherited,
                    registered: Vec::new(),
                    ready_pipe,
                    ready: false,
                    upgrading: None,
                    successor: None,
                    stopped: false,
                    handoff_in,
                    handoff_out: None,
                }),
                exit: Arc::new(Event::new()),
            }),
        })
    }

    /// Whether this process was started by an upgrade (as opposed to by
    /// hand, systemd, or a supervisor).
    pub fn is_upgrade(&self) -> bool {
        self.inner.parent.is_some()
    }

    /// The program [`Upgrader::upgrade`] will execute.
    pub fn executable(&self) -> &Path {
        &self.inner.executable
    }

    /// The socket named `name`: inherited from the predecessor when it has
    /// one for the same address, else bound fresh. Either way it is
    /// registered and passed on by the next upgrade.
    ///
    /// `T` is any [`FromFd`] type of the right kind: `std::net::TcpListener`,
    /// `tokio::net::TcpListener`, `std::os::unix::net::UnixListener`,
    /// `std::net::UdpSocket`, `OwnedFd`, ...
    pub fn listen<T: FromFd>(&self, name: &str, address: &Address) -> Result<T, UpgradeError> {
        if !crate::activation::is_valid_name(name) || is_reserved(name) {
            return Err(ActivationError::BadName { name: name.into() }.into());
        }
        let mut st = lock(&self.inner.state);
        if let Some(r) = st.registered.iter().find(|r| r.name == name) {
            let dup = r.fd.try_clone().map_err(|source| UpgradeError::Io {
                context: "duplicating a registered socket",
                source,
            })?;
            return T::from_fd(dup).map_err(|source| UpgradeError::Convert {
                name: name.into(),
                source,
            });
        }
        let (fd, fresh) = match take_matching::<T>(&mut st.inherited, name, address)? {
            Some(fd) => {
                tracing::info!(name, %address, "using the inherited socket");
                (fd, false)
            }
            None => {
                let fd = address.bind(&self.inner.options.bind)?;
                tracing::info!(name, %address, "bound a new socket");
                (fd, true)
            }
        };
        T::check(fd.as_fd()).map_err(|source| UpgradeError::Convert {
            name: name.into(),
            source,
        })?;
        let keep = fd.try_clone().map_err(|source| UpgradeError::Io {
            context: "duplicating a socket",
            source,
        })?;
        st.registered.push(Registered {
            name: name.into(),
            fd: keep,
            unix_path: match address {
                Address::Unix(p) => Some(p.clone()),
                _ => None,
            },
        });
        drop(st);
        if self.inner.options.fd_store {
            self.store(name, fd.as_fd(), fresh);
        }
        T::from_checked_fd(fd).map_err(|source| UpgradeError::Convert {
            name: name.into(),
            source,
        })
    }

    /// Keeps `fd` in systemd's fd store under `name` (see
    /// [`Options::fd_store`]). A freshly bound socket first replaces
    /// whatever is stored under the name (a socket of an earlier
    /// configuration); storing the same socket twice keeps one copy.
    /// Failures are logged: the socket serves regardless.
    fn store(&self, name: &str, fd: std::os::fd::BorrowedFd<'_>, fresh: bool) {
        let notifier = &self.inner.notifier;
        if !notifier.is_enabled() {
            return;
        }
        let removed = if fresh {
            notifier.notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
        } else {
            Ok(())
        };
        let stored = removed.and_then(|()| {
            notifier.notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
        });
        match stored {
            Ok(()) => tracing::debug!(name, "socket kept in the service manager's fd store"),
            Err(e) => tracing::warn!(
                name, error = %e,
                "could not keep the socket in the service manager's fd store; a crash would close it"
            ),
        }
    }

    /// Registers any descriptor (a file, an established connection, ...) to
    /// pass to the successor under `name`. A duplicate is kept; `fd` stays
    /// yours.
    pub fn add_fd(&self, name: &str, fd: impl AsFd) -> Result<(), UpgradeError> {
        if !crate::activation::is_valid_name(name) || is_reserved(name) {
            return Err(ActivationError::BadName { name: name.into() }.into());
        }
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| UpgradeError::Io {
                context: "duplicating a descriptor",
                source,
            })?;
        let mut st = lock(&self.inner.state);
        st.registered.retain(|r| r.name != name);
        st.registered.push(Registered {
            name: name.into(),
            fd,
            unix_path: None,
        });
        Ok(())
    }

    /// Takes the descriptor the predecessor passed under `name` (any kind),
    /// if any. It is not passed on unless you [`add_fd`](Self::add_fd) it.
    pub fn fd(&self, name: &str) -> Result<Option<OwnedFd>, UpgradeError> {
        match lock(&self.inner.state).inherited.take::<OwnedFd>(name) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The socket over which the predecessor hands its idle keep-alive
    /// connections to this process (when it upgraded with
    /// [`Options::handoff`] on): give it to
    /// [`Handoff::take_from`](crate::drain::http::Handoff::take_from)
    /// before [`ready`](Self::ready), which closes it when nobody took it
    /// (the predecessor then drains its connections the usual way).
    pub fn handoff_from_predecessor(&self) -> Option<std::os::unix::net::UnixStream> {
        lock(&self.inner.state).handoff_in.take().map(Into::into)
    }

    /// This process's end of the socket over which it hands its idle
    /// keep-alive connections to the successor started by the last
    /// [`upgrade`](Self::upgrade) (with [`Options::handoff`] on): give it
    /// to [`Handoff::give_to`](crate::drain::http::Handoff::give_to)
    /// before the drain closes ([`Signals::run`] does, with
    /// [`RunOptions::handoff`]).
    pub fn handoff_to_successor(&self) -> Option<std::os::unix::net::UnixStream> {
        lock(&self.inner.state).handoff_out.take().map(Into::into)
    }

    /// This process is serving: closes inherited sockets nobody asked for
    /// (unlinking Unix ones that are not registered again), writes the pid
    /// file, tells the parent (when started by an upgrade) and systemd.
    /// Idempotent. When the pid file cannot be written, nothing is told and
    /// the error is returned (a parent then keeps serving).
    pub fn ready(&self) -> Result<(), UpgradeError> {
        let mut st = lock(&self.inner.state);
        if st.ready {
            return Ok(());
        }
        if let Some(p) = &self.inner.options.pid_file {
            pidfile::write(p, std::process::id()).map_err(|source| UpgradeError::PidFile {
                path: p.clone(),
                source,
            })?;
        }
        // Nobody takes connections here: the predecessor reads end-of-file.
        st.handoff_in = None;
        let unused = std::mem::take(&mut st.inherited).into_remaining();
        for (name, fd) in unused {
            let path = unix_path_of(&fd);
            let registered_again = st
                .registered
                .iter()
                .any(|r| r.unix_path.is_some() && r.unix_path == path);
            if let (Some(path), false) = (path, registered_again) {
                let _ = std::fs::remove_file(&path);
            }
            tracing::info!(name, "closing an inherited socket that was not asked for");
        }
        if let Some(pipe) = st.ready_pipe.take() {
            let mut f = std::fs::File::from(pipe);
            // A parent that gave up (timeout) closed its end: EPIPE, which
            // is reported, since the parent killed or will kill us.
            f.write_all(b"R").map_err(|source| UpgradeError::Io {
                context: "telling the parent process this one is ready",
                source,
            })?;
        }
        st.ready = true;
        drop(st);
        self.inner.notifier.notify(&[
            NotifyState::Ready,
            NotifyState::MainPid(std::process::id()),
            NotifyState::Status("serving"),
        ])?;
        tracing::info!(pid = std::process::id(), "ready");
        Ok(())
    }

    /// Starts the program again with every registered socket and waits up
    /// to the ready timeout for it to call `ready()`. Returns the new pid;
    /// then [`exit`](Self::exit) resolves. On error the new process is gone
    /// and this one goes on as before. One upgrade at a time; a second call
    /// meanwhile is refused.
    pub fn upgrade(&self) -> Result<u32, UpgradeError> {
        let started = Instant::now();
        let (activation_fds, ready_r, ready_w, handoff_out) = {
            let mut st = lock(&self.inner.state);
            if let Some(pid) = st.successor {
                return Err(UpgradeError::AlreadyUpgraded { pid });
            }
            if let Some(since) = st.upgrading {
                return Err(UpgradeError::InProgress {
                    elapsed: since.elapsed(),
                });
            }
            if !st.ready {
                return Err(UpgradeError::NotReady);
            }
            let mut fds = Vec::with_capacity(st.registered.len());
            for r in &st.registered {
                let dup = r.fd.try_clone().map_err(|source| UpgradeError::Io {
                    context: "duplicating a socket for the new process",
                    source,
                })?;
                fds.push((r.name.clone(), dup));
            }
            let mut handoff_out = None;
            if self.inner.options.handoff {
                let (mine, theirs) =
                    std::os::unix::net::UnixStream::pair().map_err(|source| UpgradeError::Io {
                        context: "creating the connection hand-over socket pair",
                        source,
                    })?;
                fds.push((HANDOFF_FD_NAME.to_string(), theirs.into()));
                handoff_out = Some(OwnedFd::from(mine));
            }
            st.handoff_out = None;
            let (r, w) =
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
                    UpgradeError::Io {
                        context: "creating the readiness pipe",
                        source: e.into(),
                    }
                })?;
            st.upgrading = Some(started);
            (fds, r, w, handoff_out)
        };
        let result = self.upgrade_inner(activation_fds, ready_r, ready_w);
        let mut st = lock(&self.inner.state);
        st.upgrading = None;
        match &result {
            Ok(pid) => {
                st.successor = Some(*pid);
                st.handoff_out = handoff_out;
                drop(st);
                tracing::info!(pid, elapsed = ?started.elapsed(), "upgrade done: the new process is ready");
                // One datagram, so that NotifyAccess=main suffices: this
                // process is still the main pid when it arrives.
                if let Err(e) = self
                    .inner
                    .notifier
                    .notify(&[NotifyState::MainPid(*pid), NotifyState::Ready])
                {
                    tracing::warn!(error = %e, "could not tell the supervisor about the new main pid");
                }
                self.inner.exit.set(());
            }
            Err(e) => {
                drop(st);
                tracing::warn!(error = %e, "upgrade failed");
                // The new process may have written the pid file before it
                // failed: it names this process again.
                if let Some(p) = &self.inner.options.pid_file
                    && !pidfile::names(p, std::process::id())
                    && let Err(e) = pidfile::write(p, std::process::id())
                {
                    tracing::warn!(error = %e, "could not restore the pid file");
                }
                let status = format!("upgrade failed: {e}");
                let status: String = status.chars().filter(|c| *c != '\n').collect();
                let _ = self
                    .inner
                    .notifier
                    .notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
        }
        result
    }

    fn upgrade_inner(
        &self,
        fds: Vec<(String, OwnedFd)>,
        ready_r: OwnedFd,
        ready_w: OwnedFd,
    ) -> Result<u32, UpgradeError> {
        let inner = &self.inner;
        let path = &inner.executable;
        if let Err(source) = std::fs::metadata(path).and_then(|m| {
            if m.permissions().mode() & 0o111 == 0 {
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the file is not executable",
                ))
            } else {
                Ok(())
            }
        }) {
            return Err(UpgradeError::Executable {
                path: path.clone(),
                argv0: inner.argv0.clone(),
                source,
            });
        }
        inner.notifier.notify(&[NotifyState::Reloading])?;
        let mut activation = Activation::new();
        for (name, fd) in &fds {
            activation.fd(name, fd.as_fd())?;
        }
        activation.fd(READY_FD_NAME, ready_w.as_fd())?;
        let mut cmd = Command::new(path);
        cmd.args(&inner.args).current_dir(&inner.cwd);
        let mut child: Process = activation
            .spawn(cmd)
            .map_err(|source| UpgradeError::Spawn {
                path: path.clone(),
                source,
            })?;
        // Only the child holds the write end now: EOF means it is gone.
        drop(ready_w);
        drop(fds);
        let pid = child.id();
        tracing::info!(pid, program = %path.display(), "started the new process; waiting until it is ready");
        match wait_ready(&ready_r, inner.options.ready_timeout) {
            Ok(true) => {
                // Not reaped here: it outlives this process (and is adopted
                // by init or the subreaper when this one exits).
                drop(child);
                Ok(pid)
            }
            Ok(false) => {
                // EOF: it exited, or closed the pipe without being ready.
                match child.wait_timeout(Duration::from_secs(2)).ok().flatten() {
                    Some(status) => Err(UpgradeError::ExitedEarly {
                        pid,
                        status: status.into(),
                    }),
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        Err(UpgradeError::ReadyPipeClosed { pid })
                    }
                }
            }
            Err(WaitError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(UpgradeError::Timeout {
                    pid,
                    timeout: inner.options.ready_timeout,
                })
            }
            Err(WaitError::Io(source)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(UpgradeError::Io {
                    context: "waiting for the new process",
                    source,
                })
            }
        }
    }

    /// [`upgrade`](Self::upgrade) on tokio's blocking pool.
    #[cfg(feature = "tokio")]
    pub async fn upgrade_async(&self) -> Result<u32, UpgradeError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.upgrade())
            .await
            .map_err(|e| UpgradeError::Io {
                context: "running the upgrade",
                source: io::Error::other(e),
            })?
    }

    /// Resolves when a successor is ready: time to stop accepting, drain,
    /// and exit. Await it, or call [`ExitSignal::wait`] to block.
    pub fn exit(&self) -> ExitSignal {
        ExitSignal {
            wait: Wait::new(Arc::clone(&self.inner.exit)),
        }
    }

    /// The successor's pid, once one is ready.
    pub fn successor(&self) -> Option<u32> {
        lock(&self.inner.state).successor
    }

    /// When this process was started by an upgrade, waits up to `timeout`
    /// for the parent (the old process) to exit. `true` when it has (or this
    /// process was not started by an upgrade).
    pub fn wait_for_parent(&self, timeout: Duration) -> Result<bool, UpgradeError> {
        let Some(ppid) = self.inner.parent else {
            return Ok(true);
        };
        let Some(pid) = rustix::process::Pid::from_raw(ppid as i32) else {
            return Ok(true);
        };
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(true),
            Err(e) => {
                return Err(UpgradeError::Io {
                    context: "watching the parent process",
                    source: e.into(),
                });
            }
        };
        // The pid may have been reused if the parent died before pidfd_open:
        // then we are no longer its child.
        if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(ppid) {
            return Ok(true);
        }
        let ready = poll_in(pidfd.as_fd(), timeout).map_err(|source| UpgradeError::Io {
            context: "waiting for the parent process",
            source,
        })?;
        Ok(ready)
    }

    /// A final stop (not a handover): when no successor took over, unlinks
    /// the socket files of registered Unix listeners, removes the pid file
    /// if it still names this process, and tells systemd `STOPPING=1`.
    /// Call it when shutting down for good; idempotent.
    pub fn stop(&self) {
        let mut st = lock(&self.inner.state);
        if st.stopped {
            return;
        }
        st.stopped = true;
        if st.successor.is_some() {
            return;
        }
        for r in &st.registered {
            if let Some(p) = &r.unix_path {
                let _ = std::fs::remove_file(p);
            }
        }
        drop(st);
        if let Some(p) = &self.inner.options.pid_file {
            pidfile::remove_if_names(p, std::process::id());
        }
        let _ = self.inner.notifier.notify(&[NotifyState::Stopping]);
    }
}

/// Takes the inherited fd named `name` if it is bound to `address` (a
/// requested port 0 matches any port). A mismatch (the configuration
/// changed) is left for `ready()` to close.
fn take_matching<T: FromFd>(
    inherited: &mut ListenFds,
    name: &str,
    address: &Address,
) -> Result<Option<OwnedFd>, UpgradeError> {
    let Some(fd) = inherited.get(name) else {
        return Ok(None);
    };
    let kind = FdKind::of(fd).map_err(|source| UpgradeError::Io {
        context: "inspecting an inherited socket",
        source,
    })?;
    let matches = match (address, kind) {
        (Address::Tcp(want), FdKind::TcpListener { .. })
        | (Address::Udp(want), FdKind::Udp { .. }) => match Address::local(fd, address) {
            Ok(Address::Tcp(have)) | Ok(Address::Udp(have)) => {
                have.ip() == want.ip() && (want.port() == 0 || want.port() == have.port())
            }
            _ => false,
        },
        (Address::Unix(want), FdKind::UnixListener) => {
            let have =
                unix_path_of(&fd.try_clone_to_owned().map_err(|source| UpgradeError::Io {
                    context: "inspecting an inherited socket",
                    source,
                })?);
            have.as_deref() == Some(want.as_path())
        }
        _ => false,
    };
    if !matches {
        tracing::warn!(
            name, %address, found = %kind,
            "the inherited socket does not match the requested address; binding a new one"
        );
        return Ok(None);
    }
    // Checked before it is taken: a wrong kind, or a tokio type outside a
    // runtime, leaves it in place.
    T::check(fd).map_err(|source| match source {
        ConvertError::NoRuntime => ActivationError::NoRuntime {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            name: name.into(),
            source,
        }
        .into(),
        source => UpgradeError::Convert {
            name: name.into(),
            source,
        },
    })?;
    Ok(Some(inherited.take::<OwnedFd>(name)?))
}

/// The path a Unix socket is bound to, if it is one.
fn unix_path_of(fd: &OwnedFd) -> Option<PathBuf> {
    let addr = rustix::net::getsockname(fd).ok()?;
    let unix = rustix::net::SocketAddrUnix::try_from(addr).ok()?;
    unix.path()
        .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
}
