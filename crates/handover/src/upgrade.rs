//! A server that re-executes itself with zero downtime.
//!
//! The API is four calls, in the spirit of tableflip:
//!
//! - [`Upgrader::listen`]: the socket inherited from the predecessor under a
//!   name, or a freshly bound one when there is none;
//! - [`Upgrader::ready`]: this process is serving (tell the parent, write the
//!   pid file, tell systemd);
//! - [`Upgrader::upgrade`]: start the program again with every registered
//!   socket and wait until it is ready — or roll back if it exits or times
//!   out, and go on serving as if nothing happened;
//! - [`Upgrader::exit`]: resolves when a successor is ready: stop accepting,
//!   drain, exit.
//!
//! ```no_run
//! use handover::address::Address;
//! use handover::upgrade::{Options, Upgrader};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upgrader = Upgrader::new(Options::default())?;
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

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::activation::{Activation, ActivationError, ListenFds};
use crate::address::{Address, AddressError, BindOptions};
use crate::notify::{Notifier, NotifyError, State as NotifyState};
use crate::process::{Command, Process, SpawnError};
use crate::socket::{ConvertError, FdKind, FromFd};

/// The name of the inherited fd that carries readiness from a new process
/// to the one that started it.
pub const READY_FD_NAME: &str = "handover.ready";

/// The default time a new process has to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the upgrade module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Reading the inherited descriptors failed.
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// Binding a socket failed.
    #[error(transparent)]
    Bind(#[from] AddressError),
    /// The socket registered under a name is not of the requested kind.
    #[error("socket {name:?}: {source}")]
    Convert {
        /// The name.
        name: String,
        /// What was wrong.
        #[source]
        source: ConvertError,
    },
    /// Talking to systemd failed.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// An upgrade is running.
    #[error(
        "an upgrade is already in progress (started {elapsed:.1?} ago); this request was refused. \
         Wait for it to finish (it ends within the ready timeout)"
    )]
    InProgress {
        /// Since when.
        elapsed: Duration,
    },
    /// A successor took over already.
    #[error(
        "this process was already upgraded (pid {pid} took over); upgrade the new process instead"
    )]
    AlreadyUpgraded {
        /// The successor's pid.
        pid: u32,
    },
    /// `upgrade()` before `ready()`.
    #[error("cannot upgrade before ready() was called: this process is not serving yet")]
    NotReady,
    /// The program to re-execute is gone.
    #[error(
        "cannot re-execute {path}: {source} (this process was started as {argv0:?}). Was the file \
         removed by a deploy? Put the new version at that path, or set Options::executable",
        path = path.display()
    )]
    Executable {
        /// The path tried.
        path: PathBuf,
        /// `argv[0]` at start-up.
        argv0: OsString,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The new process could not be started.
    #[error("the new process could not be started, so this process keeps serving: {source}")]
    Spawn {
        /// The program.
        path: PathBuf,
        /// What failed.
        #[source]
        source: SpawnError,
    },
    /// The new process ended before it was ready.
    #[error(
        "the new process (pid {pid}) {how} before it was ready; this process keeps serving. Run \
         the new version by hand to see why"
    )]
    ExitedEarly {
        /// Its pid.
        pid: u32,
        /// "exited with code 3", "was killed by signal 11 (SIGSEGV)", ...
        how: String,
    },
    /// The new process did not become ready in time.
    #[error(
        "the new process (pid {pid}) was not ready within {timeout:?}, so it was killed; this \
         process keeps serving. Does the new version call ready()? Raise Options::ready_timeout \
         if it needs longer to start"
    )]
    Timeout {
        /// Its pid.
        pid: u32,
        /// The limit.
        timeout: Duration,
    },
    /// Writing the pid file failed.
    #[error(
        "could not write the pid file {path}: {source}. Check that its directory exists and is \
         writable",
        path = path.display()
    )]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ready_timeout: DEFAULT_READY_TIMEOUT,
            pid_file: None,
            executable: None,
            bind: BindOptions::default(),
            fd_store: false,
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
    exit: Event,
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

/// How this program was started, to start it again the same way.
fn resolve_executable(argv0: &OsString, cwd: &Path) -> PathBuf {
    let p = Path::new(argv0);
    if argv0.as_encoded_bytes().contains(&b'/') {
        return if p.is_absolute() {
            p.to_owned()
        } else {
            cwd.join(p)
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = if dir.as_os_str().is_empty() {
                cwd.join(p)
            } else {
                dir.join(p)
            };
            if is_executable(&candidate) {
                return if candidate.is_absolute() {
                    candidate
                } else {
                    cwd.join(candidate)
                };
            }
        }
    }
    // Not found by name: the running binary (does not follow a swapped file).
    std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| p.to_owned())
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
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
                }),
                exit: Event::default(),
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
        if !crate::activation::is_valid_name(name) || name == READY_FD_NAME {
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
        if !crate::activation::is_valid_name(name) || name == READY_FD_NAME {
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
            write_pid_file(p, std::process::id())?;
        }
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
        let (activation_fds, ready_r, ready_w) = {
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
            let (r, w) =
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
                    UpgradeError::Io {
                        context: "creating the readiness pipe",
                        source: e.into(),
                    }
                })?;
            st.upgrading = Some(started);
            (fds, r, w)
        };
        let result = self.upgrade_inner(activation_fds, ready_r, ready_w);
        let mut st = lock(&self.inner.state);
        st.upgrading = None;
        match &result {
            Ok(pid) => {
                st.successor = Some(*pid);
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
                self.inner.exit.set();
            }
            Err(e) => {
                drop(st);
                tracing::warn!(error = %e, "upgrade failed");
                // The new process may have written the pid file before it
                // failed: it names this process again.
                if let Some(p) = &self.inner.options.pid_file
                    && std::fs::read_to_string(p)
                        .ok()
                        .map(|s| s.trim().to_string())
                        != Some(std::process::id().to_string())
                    && let Err(e) = write_pid_file(p, std::process::id())
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
                let how = match child.wait_timeout(Duration::from_secs(2)).ok().flatten() {
                    Some(status) => describe_exit(status),
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        "closed its readiness pipe".to_string()
                    }
                };
                Err(UpgradeError::ExitedEarly { pid, how })
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
            inner: self.inner.clone(),
            id: self.inner.exit.next_id(),
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
        if let Some(p) = &self.inner.options.pid_file
            && std::fs::read_to_string(p).is_ok_and(|s| s.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(p);
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

/// Writes `pid` to `path` atomically (a temporary file, then rename).
pub(crate) fn write_pid_file(path: &Path, pid: u32) -> Result<(), UpgradeError> {
    let err = |source| UpgradeError::PidFile {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{pid}"));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    let written = f
        .write_all(format!("{pid}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

enum WaitError {
    Timeout,
    Io(io::Error),
}

/// Waits for one byte on the readiness pipe: `Ok(true)` ready, `Ok(false)`
/// end of file.
fn wait_ready(pipe: &OwnedFd, timeout: Duration) -> Result<bool, WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError::Timeout);
        }
        if !poll_in(pipe.as_fd(), left).map_err(WaitError::Io)? {
            continue;
        }
        let mut f = std::fs::File::from(pipe.try_clone().map_err(WaitError::Io)?);
        let mut b = [0u8; 1];
        return match f.read(&mut b) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(WaitError::Io(e)),
        };
    }
}

/// Polls `fd` for input for up to `timeout`; `true` when readable (or hung
/// up).
fn poll_in(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as i64,
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => {
                if Instant::now() >= deadline {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// "exited with code 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with code {code}")
    } else if let Some(sig) = status.signal() {
        let name = rustix::process::Signal::from_named_raw(sig)
            .map(|s| format!(" ({s:?})"))
            .unwrap_or_default();
        format!("was killed by signal {sig}{name}")
    } else {
        format!("ended ({status})")
    }
}

/// A one-shot event: set once, waited on by threads or futures.
#[derive(Default)]
struct Event {
    /// Whether it is set; the wakers of pending futures by their id; the
    /// next id.
    state: Mutex<(bool, BTreeMap<u64, Waker>, u64)>,
    cond: Condvar,
}

impl Event {
    /// The state; a panic elsewhere while holding the lock leaves it
    /// consistent (every update is one assignment), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, (bool, BTreeMap<u64, Waker>, u64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self) {
        let mut s = self.lock();
        s.0 = true;
        for (_, w) in std::mem::take(&mut s.1) {
            w.wake();
        }
        self.cond.notify_all();
    }

    fn is_set(&self) -> bool {
        self.lock().0
    }

    fn next_id(&self) -> u64 {
        let mut s = self.lock();
        s.2 += 1;
        s.2
    }
}

/// Resolves when a successor is ready; from [`Upgrader::exit`].
pub struct ExitSignal {
    inner: Arc<Inner>,
    id: u64,
}

impl std::fmt::Debug for ExitSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitSignal")
            .field("set", &self.inner.exit.is_set())
            .finish()
    }
}

impl ExitSignal {
    /// Blocks until a successor is ready.
    pub fn wait(&self) {
        let ev = &self.inner.exit;
        let mut s = ev.lock();
        while !s.0 {
            s = ev.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks up to `timeout`; `true` when a successor is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let ev = &self.inner.exit;
        let s = ev.lock();
        let (s, _) = ev
            .cond
            .wait_timeout_while(s, timeout, |s| !s.0)
            .unwrap_or_else(|e| e.into_inner());
        s.0
    }

    /// Whether a successor is ready.
    pub fn is_set(&self) -> bool {
        self.inner.exit.is_set()
    }
}

impl Future for ExitSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.inner.exit.lock();
        if s.0 {
            s.1.remove(&self.id);
            return Poll::Ready(());
        }
        s.1.insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for ExitSignal {
    fn drop(&mut self) {
        let mut s = self.inner.exit.lock();
        s.1.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_resolution() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            resolve_executable(&"/usr/bin/x".into(), cwd),
            Path::new("/usr/bin/x")
        );
        assert_eq!(
            resolve_executable(&"./bin/x".into(), cwd),
            Path::new("/srv/app/./bin/x")
        );
        // Found in PATH.
        assert_eq!(
            resolve_executable(&"sh".into(), cwd).file_name().unwrap(),
            "sh"
        );
    }

    #[test]
    fn pid_file_is_atomic_and_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.pid");
        write_pid_file(&p, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1234\n");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);
        let e = write_pid_file(&dir.path().join("no/dir/app.pid"), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("could not write the pid file") && e.contains("writable"),
            "{e}"
        );
    }

    #[test]
    fn exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        let d = describe_exit(std::process::ExitStatus::from_raw(9));
        assert!(d.starts_with("was killed by signal 9"), "{d}");
    }
}

/// Why [`Upgrader::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// A successor is serving; this process drained.
    Upgraded,
    /// SIGTERM or SIGINT: this process drained for a final stop.
    Terminated,
}

/// The outcome of [`Upgrader::run`].
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct RunOutcome {
    /// Why it stopped.
    pub exit: Exit,
    /// `Ok` when every connection finished; else how many were cut short
    /// (the drain timeout passed, or a second SIGTERM/SIGINT came).
    pub drained: Result<(), crate::drain::StillOpen>,
}

/// Settings of [`Upgrader::run`].
#[cfg(feature = "tokio")]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunOptions {
    /// How long to wait for open connections when exiting (default 30 s);
    /// the seed's "term timeout".
    pub drain_timeout: Duration,
}

#[cfg(feature = "tokio")]
impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            drain_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(feature = "tokio")]
impl RunOptions {
    /// Sets the drain timeout.
    pub fn drain_timeout(mut self, t: Duration) -> Self {
        self.drain_timeout = t;
        self
    }
}

/// The signal handlers of the ready-made loop, installed by
/// [`Upgrader::signals`].
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct Signals {
    upgrader: Upgrader,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(feature = "tokio")]
impl Signals {
    /// The ready-made loop: SIGHUP or SIGUSR2 start an upgrade (a failure is
    /// logged and service goes on; a signal during an upgrade is refused
    /// and logged); when a successor is ready, or on SIGTERM/SIGINT, closes
    /// `drain` (stop accepting) and waits for its connections up to the drain
    /// timeout; a second SIGTERM/SIGINT while draining returns at once.
    ///
    /// Call it after [`Upgrader::ready`] (or use [`Upgrader::run`], which
    /// calls `ready()` between installing the handlers and this loop). On
    /// SIGTERM/SIGINT it also calls [`Upgrader::stop`].
    pub async fn run(
        mut self,
        drain: &crate::drain::Drain,
        options: RunOptions,
    ) -> Result<RunOutcome, UpgradeError> {
        let up = self.upgrader.clone();
        let mut exit_signal = up.exit();
        let exit = loop {
            tokio::select! {
                _ = self.hup.recv() => up.spawn_upgrade("SIGHUP"),
                _ = self.usr2.recv() => up.spawn_upgrade("SIGUSR2"),
                _ = &mut exit_signal => break Exit::Upgraded,
                _ = self.term.recv() => break Exit::Terminated,
                _ = self.int.recv() => break Exit::Terminated,
            }
        };
        tracing::info!(?exit, timeout = ?options.drain_timeout, "draining");
        if exit == Exit::Terminated {
            let _ = up.inner.notifier.notify(&[NotifyState::Stopping]);
        }
        drain.close();
        let drained = tokio::select! {
            r = drain.wait_async(options.drain_timeout) => r,
            _ = self.term.recv() => drain.wait_async(Duration::ZERO).await,
            _ = self.int.recv() => drain.wait_async(Duration::ZERO).await,
        };
        match &drained {
            Ok(()) => tracing::info!("drained: every connection finished"),
            Err(e) => tracing::warn!(error = %e, "exiting with connections still open"),
        }
        if exit == Exit::Terminated {
            up.stop();
        }
        Ok(RunOutcome { exit, drained })
    }
}

#[cfg(feature = "tokio")]
impl Upgrader {
    /// Installs the handlers of the ready-made loop (SIGHUP, SIGUSR2,
    /// SIGTERM, SIGINT) now, from inside a tokio runtime; run the loop with
    /// [`Signals::run`].
    ///
    /// Call this *before* [`ready`](Self::ready): once the pid file names
    /// this process, someone may send it SIGHUP at once, and until a handler
    /// exists SIGHUP's default action would kill it.
    pub fn signals(&self) -> Result<Signals, UpgradeError> {
        use tokio::signal::unix::{SignalKind, signal};
        let sig = |k| {
            signal(k).map_err(|source| UpgradeError::Io {
                context: "installing signal handlers",
                source,
            })
        };
        Ok(Signals {
            upgrader: self.clone(),
            hup: sig(SignalKind::hangup())?,
            usr2: sig(SignalKind::user_defined2())?,
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
        })
    }

    /// The ready-made loop in one call: installs the signal handlers
    /// ([`signals`](Self::signals)), *then* calls [`ready`](Self::ready),
    /// then runs [`Signals::run`]. Call it instead of `ready()`: once the pid
    /// file names this process, a SIGHUP may come at once, and the handlers
    /// are in place by then. (Calling `ready()` first reopens that window;
    /// it is logged.) To accept connections only after `ready()`, use
    /// `signals()`, `ready()` and `Signals::run` yourself.
    pub async fn run(
        &self,
        drain: &crate::drain::Drain,
        options: RunOptions,
    ) -> Result<RunOutcome, UpgradeError> {
        let signals = self.signals()?;
        if lock(&self.inner.state).ready {
            tracing::warn!(
                "ready() was called before run(): a SIGHUP between the two would have killed \
                 this process. Let run() call ready(), or call signals() before ready()"
            );
        }
        self.ready()?;
        signals.run(drain, options).await
    }

    fn spawn_upgrade(&self, cause: &'static str) {
        let this = self.clone();
        tracing::info!(cause, "upgrade requested");
        tokio::task::spawn_blocking(move || {
            // Failures after the start are logged by upgrade() itself.
            if let Err(
                e @ (UpgradeError::InProgress { .. }
                | UpgradeError::AlreadyUpgraded { .. }
                | UpgradeError::NotReady),
            ) = this.upgrade()
            {
                tracing::warn!(cause, error = %e, "upgrade refused");
            }
        });
    }
}
