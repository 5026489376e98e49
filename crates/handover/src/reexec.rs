//! Re-executing this process in place: `execve` in the same process, so its
//! pid, its children and the descriptors it chooses stay, while its program
//! becomes whatever file is now at a path (the new version a deploy put
//! there).
//!
//! A supervisor upgrades itself this way without its children noticing:
//! they keep their parent (and their `PR_SET_PDEATHSIG`, which fires only
//! when the thread that spawned them ends), a service manager keeps its main
//! pid, and the sockets never close. (Compare [`crate::upgrade`], where a
//! *new* process takes over and the old one exits.)
//!
//! **Sending** ([`Reexec`]): name the descriptors to keep, then
//! [`Reexec::exec`]. Every other descriptor above 2 is made close-on-exec
//! first, the kept ones are not; the kernel replaces the image. `exec`
//! returns only when that failed, with every descriptor flag as it was.
//! Call it on the main thread: an `execve` from another thread ends the main
//! thread first, and with it fires the death signal of every child the main
//! thread spawned.
//!
//! **Receiving** ([`Kept::from_env`]): first thing in `main` of the new
//! image, before anything opens a descriptor, take the kept descriptors by
//! name.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use handover::reexec::{Kept, Reexec};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut kept = Kept::from_env()?;
//! let listener = match kept.take("http") {
//!     Ok(fd) => std::net::TcpListener::from(fd),
//!     Err(e) if e.is_not_found() => std::net::TcpListener::bind("127.0.0.1:8080")?,
//!     Err(e) => return Err(e.into()),
//! };
//! // ... later, to upgrade in place:
//! let mut next = Reexec::new("/usr/local/bin/my-server");
//! next.fd("http", listener.as_fd())?;
//! let error = next.exec(); // returns only if the exec failed
//! eprintln!("still the old version: {error}");
//! # Ok(()) }
//! ```
//!
//! **Signals.** Between `execve` and the moment the new image has installed
//! its handlers, a signal whose default action is to terminate (SIGTERM,
//! SIGHUP, ...) would end the process. Block them first with
//! [`SignalHold::block`]: the mask and any pending signal survive `execve`,
//! so they wait, and the new image calls [`release_signals`] once its
//! handlers are in place. (A blocked signal is delivered to another thread
//! that does not block it: stop other threads before the exec.)
//!
//! # Protocol
//!
//! Two variables tell the new image which descriptors are its own, in the
//! spirit of `LISTEN_PID`/`LISTEN_FDS`, but by number (a process cannot
//! renumber its descriptors in place without disturbing its other threads):
//!
//! | variable | value |
//! |---|---|
//! | `HANDOVER_REEXEC_PID` | the pid the descriptors are meant for (an exec keeps it; a child has another, so a leaked variable means nothing to it) |
//! | `HANDOVER_REEXEC_FDS` | `FD=NAME` entries separated by `:`, for example `7=http:9=control`; names follow `LISTEN_FDNAMES` (1 to 255 printable ASCII characters, no `:`) and are unique |
//!
//! [`Reexec`] removes both variables (and `LISTEN_*`, which described
//! descriptors of the old image) from the environment it passes, then sets
//! its own.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::activation::{LISTEN_VARS, is_valid_name};
use crate::child::Signal;
use crate::sys::{self, inplace};

/// The pid the kept descriptors are meant for.
pub const PID_ENV: &str = "HANDOVER_REEXEC_PID";

/// The kept descriptors, as `FD=NAME` entries separated by `:`.
pub const FDS_ENV: &str = "HANDOVER_REEXEC_FDS";

/// Errors of in-place re-execution.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReexecError {
    /// A variable of the protocol has a value it does not allow.
    #[error(
        "{var}={value:?} is not valid: expected {expected}. It is set by a process re-executing \
         itself in place; unset it if it came from anywhere else"
    )]
    BadVariable {
        /// The variable.
        var: &'static str,
        /// Its value (lossily decoded).
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A descriptor listed in `HANDOVER_REEXEC_FDS` is not open.
    #[error(
        "{FDS_ENV} lists fd {fd} as {name:?}, but it is not open: the process before the exec \
         must keep it open (without FD_CLOEXEC)"
    )]
    FdNotOpen {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
    },
    /// [`Kept::from_env`] was called a second time.
    #[error(
        "the descriptors kept across the exec were already received by this process: call \
         Kept::from_env once and keep the result"
    )]
    AlreadyReceived,
    /// No kept descriptor has that name.
    #[error("no descriptor named {name:?} was kept across the exec; kept: {available}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// What was kept, for the message.
        available: String,
    },
    /// A name is not allowed, or used twice.
    #[error(
        "fd name {name:?} is not valid: expected 1 to 255 printable ASCII characters without \
         ':', each name used once"
    )]
    BadName {
        /// The rejected name.
        name: String,
    },
    /// `exec` was called from a thread other than the main one.
    #[error(
        "an in-place exec must run on the main thread (this is thread {tid} of process {pid}): \
         from another thread, the kernel ends the main thread first, which fires the death \
         signal (PR_SET_PDEATHSIG) of every child it spawned"
    )]
    NotMainThread {
        /// This process.
        pid: u32,
        /// The calling thread.
        tid: u32,
    },
    /// The kernel refused the exec; this process goes on unchanged.
    #[error(
        "could not execute {path}: {source}; this process goes on as it was. Check that the \
         file exists, is executable, and is a program for this machine",
        path = path.display()
    )]
    Exec {
        /// The program.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ReexecError {
    /// Whether this says that no descriptor of the name asked for was kept:
    /// the usual cue to open a fresh one.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReexecError::NotFound { .. })
    }
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> ReexecError {
    move |source| ReexecError::Io { context, source }
}

/// Parses `HANDOVER_REEXEC_FDS`: `(fd, name)` pairs.
pub fn parse_fds(value: &OsStr) -> Result<Vec<(RawFd, String)>, ReexecError> {
    let bad = |expected| ReexecError::BadVariable {
        var: FDS_ENV,
        value: value.to_string_lossy().into_owned(),
        expected,
    };
    let text = value
        .to_str()
        .ok_or_else(|| bad("FD=NAME entries in ASCII"))?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<(RawFd, String)> = Vec::new();
    for entry in text.split(':') {
        let (fd, name) = entry
            .split_once('=')
            .ok_or_else(|| bad("FD=NAME entries separated by ':'"))?;
        let fd: RawFd = fd
            .parse()
            .ok()
            .filter(|&n: &RawFd| n >= 3 && fd.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("descriptor numbers of 3 or more (0, 1, 2 are stdio)"))?;
        if !is_valid_name(name) {
            return Err(bad(
                "names of 1 to 255 printable ASCII characters without ':'",
            ));
        }
        if out.iter().any(|(f, n)| *f == fd || n == name) {
            return Err(bad("each descriptor and each name listed once"));
        }
        out.push((fd, name.to_string()));
    }
    Ok(out)
}

static RECEIVED: AtomicBool = AtomicBool::new(false);

/// The descriptors the image before the exec kept for this one, each taken
/// at most once. Dropping it closes those not taken.
#[derive(Default)]
pub struct Kept {
    fds: Vec<(String, RawFd, Option<OwnedFd>)>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.fds.iter().map(|(n, fd, o)| (n, fd, o.is_some())))
            .finish()
    }
}

impl Kept {
    /// Receives the descriptors listed in `HANDOVER_REEXEC_FDS` when
    /// `HANDOVER_REEXEC_PID` is this process's pid (else there are none,
    /// which is not an error), marks each close-on-exec, and owns them.
    ///
    /// Call it first thing in `main`, before anything opens a descriptor,
    /// and once: later calls return [`ReexecError::AlreadyReceived`] (when
    /// there are descriptors). Every listed descriptor is checked to be open
    /// before any is taken; numbers that `LISTEN_FDS` gives this process are
    /// refused, so no descriptor gets two owners.
    pub fn from_env() -> Result<Kept, ReexecError> {
        let Some(pid) = std::env::var_os(PID_ENV) else {
            return Ok(Kept::default());
        };
        let me = std::process::id();
        let pid_ok = pid
            .to_str()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok());
        match pid_ok {
            None => {
                return Err(ReexecError::BadVariable {
                    var: PID_ENV,
                    value: pid.to_string_lossy().into_owned(),
                    expected: "a process id",
                });
            }
            Some(p) if p != me => return Ok(Kept::default()),
            Some(_) => {}
        }
        let Some(value) = std::env::var_os(FDS_ENV) else {
            return Ok(Kept::default());
        };
        let listed = parse_fds(&value)?;
        if listed.is_empty() {
            return Ok(Kept::default());
        }
        if RECEIVED.swap(true, Ordering::SeqCst) {
            return Err(ReexecError::AlreadyReceived);
        }
        // The range socket activation hands this process, if any.
        let (lpid, lfds) = (
            std::env::var_os("LISTEN_PID"),
            std::env::var_os("LISTEN_FDS"),
        );
        let activation = crate::activation::parse_env(
            crate::activation::EnvVars {
                pid: lpid.as_deref(),
                fds: lfds.as_deref(),
                names: None,
            },
            me,
        )
        .map(|names| names.len() as RawFd)
        .unwrap_or(0);
        for (fd, name) in &listed {
            if *fd < crate::activation::LISTEN_FDS_START + activation {
                return Err(ReexecError::BadVariable {
                    var: FDS_ENV,
                    value: value.to_string_lossy().into_owned(),
                    expected: "descriptors outside the LISTEN_FDS range of this process",
                });
            }
            if !sys::fd_is_open(*fd).map_err(io_err("checking a kept descriptor"))? {
                return Err(ReexecError::FdNotOpen {
                    fd: *fd,
                    name: name.clone(),
                });
            }
        }
        let numbers: Vec<RawFd> = listed.iter().map(|(fd, _)| *fd).collect();
        let owned = sys::adopt_kept_fds(&numbers).map_err(|e| match e {
            sys::AdoptError::AlreadyAdopted => ReexecError::AlreadyReceived,
            sys::AdoptError::NotOpen(fd) | sys::AdoptError::Duplicate(fd) => {
                let name = listed
                    .iter()
                    .find(|(f, _)| *f == fd)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                ReexecError::FdNotOpen { fd, name }
            }
            sys::AdoptError::Io(e) => io_err("checking a kept descriptor")(e),
        })?;
        let mut fds = Vec::with_capacity(listed.len());
        for ((name, fd), owned) in listed.into_iter().map(|(f, n)| (n, f)).zip(owned) {
            rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
                .map_err(|e| io_err("setting FD_CLOEXEC on a kept descriptor")(e.into()))?;
            fds.push((name, fd, Some(owned)));
        }
        Ok(Kept { fds })
    }

    /// Whether no descriptor was kept (this process was not re-executed in
    /// place, or kept nothing).
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The names of the descriptors not taken yet.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fds
            .iter()
            .filter(|(_, _, o)| o.is_some())
            .map(|(n, _, _)| n.as_str())
    }

    /// Takes the descriptor named `name`.
    pub fn take(&mut self, name: &str) -> Result<OwnedFd, ReexecError> {
        match self
            .fds
            .iter_mut()
            .find(|(n, _, o)| n == name && o.is_some())
        {
            Some((_, _, o)) => Ok(o.take().expect("filtered")),
            None => Err(ReexecError::NotFound {
                name: name.to_string(),
                available: self.available(),
            }),
        }
    }

    fn available(&self) -> String {
        let names: Vec<String> = self
            .fds
            .iter()
            .map(|(n, fd, o)| format!("fd {fd} {n:?}{}", if o.is_some() { "" } else { " (taken)" }))
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }

    /// The descriptors not taken yet, with their names.
    pub fn into_remaining(self) -> Vec<(String, OwnedFd)> {
        self.fds
            .into_iter()
            .filter_map(|(n, _, o)| o.map(|o| (n, o)))
            .collect()
    }
}

/// Signals blocked in the calling thread until this is dropped (which
/// restores the mask as it was), or across an exec (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct SignalHold {
    old: inplace::SigMask,
}

impl SignalHold {
    /// Blocks `signals` in the calling thread. Deliveries meanwhile wait
    /// (pending), and are handled once the signals are unblocked: when this
    /// is dropped, or by [`release_signals`] in the image after an exec.
    pub fn block(signals: &[Signal]) -> Result<SignalHold, ReexecError> {
        let raw: Vec<i32> = signals.iter().map(|s| s.as_raw()).collect();
        let old = inplace::block_signals(&raw).map_err(io_err("blocking signals"))?;
        Ok(SignalHold { old })
    }
}

impl Drop for SignalHold {
    fn drop(&mut self) {
        if let Err(e) = inplace::restore_mask(&self.old) {
            tracing::warn!(error = %e, "could not restore the signal mask");
        }
    }
}

/// Unblocks `signals` in the calling thread: in the image after an exec
/// made under a [`SignalHold`], once the handlers are installed. Signals
/// that arrived during the exec are delivered now.
pub fn release_signals(signals: &[Signal]) -> Result<(), ReexecError> {
    let raw: Vec<i32> = signals.iter().map(|s| s.as_raw()).collect();
    inplace::unblock_signals(&raw).map_err(io_err("unblocking signals"))
}

/// An in-place exec of a program with named descriptors kept open; see the
/// [module docs](self).
#[derive(Debug)]
pub struct Reexec<'a> {
    program: PathBuf,
    argv: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    fds: Vec<(String, BorrowedFd<'a>)>,
}

impl<'a> Reexec<'a> {
    /// Executes `program` (a path, used as is: a symlink swapped by a deploy
    /// is followed at exec time), with `argv[0]` set to it and no other
    /// argument, and this process's environment without `LISTEN_*` and the
    /// protocol's variables.
    pub fn new(program: impl Into<PathBuf>) -> Reexec<'a> {
        let program = program.into();
        Reexec {
            argv: vec![program.clone().into_os_string()],
            program,
            env: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Sets `argv[0]`.
    pub fn arg0(&mut self, arg0: impl Into<OsString>) -> &mut Self {
        self.argv[0] = arg0.into();
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(&mut self, args: I) -> &mut Self {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable for the new image.
    pub fn env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes a variable for the new image.
    pub fn env_remove(&mut self, key: impl Into<OsString>) -> &mut Self {
        self.env.push((key.into(), None));
        self
    }

    /// Keeps `fd` open across the exec under `name` (unique).
    pub fn fd(&mut self, name: &str, fd: BorrowedFd<'a>) -> Result<&mut Self, ReexecError> {
        if !is_valid_name(name) || self.fds.iter().any(|(n, _)| n == name) {
            return Err(ReexecError::BadName {
                name: name.to_string(),
            });
        }
        self.fds.push((name.to_string(), fd));
        Ok(self)
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The `HANDOVER_REEXEC_FDS` value for the kept descriptors.
    fn fds_value(&self) -> String {
        self.fds
            .iter()
            .map(|(n, fd)| format!("{}={n}", fd.as_raw_fd()))
            .collect::<Vec<_>>()
            .join(":")
    }

    fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os()
            .filter(|(k, _)| !LISTEN_VARS.iter().any(|v| k == v) && k != PID_ENV && k != FDS_ENV)
            .collect();
        for (k, v) in &self.env {
            match v {
                Some(v) => env.insert(k.clone(), v.clone()),
                None => env.remove(k),
            };
        }
        env.insert(PID_ENV.into(), std::process::id().to_string().into());
        env.insert(FDS_ENV.into(), self.fds_value().into());
        env.into_iter().collect()
    }

    /// Replaces this process's image with the program: every descriptor
    /// above 2 that is not kept is made close-on-exec, the kept ones are
    /// not, then `execve`. Returns only when that failed (the program is
    /// missing, not executable, ...), with the descriptors' flags as they
    /// were; the process goes on unchanged.
    ///
    /// Must run on the main thread ([`ReexecError::NotMainThread`]). Other
    /// threads end with the exec; descriptors they open or close meanwhile
    /// may escape the close-on-exec sweep, so stop them first.
    pub fn exec(&self) -> ReexecError {
        let pid = rustix::process::getpid();
        let tid = rustix::thread::gettid();
        if pid != tid {
            return ReexecError::NotMainThread {
                pid: pid.as_raw_nonzero().get() as u32,
                tid: tid.as_raw_nonzero().get() as u32,
            };
        }
        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| ReexecError::Exec {
                path: self.program.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{:?} contains a NUL byte", String::from_utf8_lossy(b)),
                ),
            })
        };
        let prepared = (|| {
            let path = cstr(self.program.as_os_str().as_bytes())?;
            let argv = self
                .argv
                .iter()
                .map(|a| cstr(a.as_bytes()))
                .collect::<Result<Vec<_>, _>>()?;
            let envp = self
                .environment()
                .into_iter()
                .map(|(k, v)| {
                    let mut e = k.into_vec();
                    e.push(b'=');
                    e.extend_from_slice(v.as_bytes());
                    cstr(&e)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, ReexecError>((path, argv, envp))
        })();
        let (path, argv, envp) = match prepared {
            Ok(p) => p,
            Err(e) => return e,
        };
        let changed = match self.set_flags() {
            Ok(c) => c,
            Err((e, changed)) => {
                restore(&changed);
                return e;
            }
        };
        let source = inplace::execve(&path, &argv, &envp);
        restore(&changed);
        ReexecError::Exec {
            path: self.program.clone(),
            source,
        }
    }

    /// Makes every open descriptor above 2 close-on-exec except the kept
    /// ones, which are made inheritable. Returns what was changed (fd, the
    /// close-on-exec flag before), to undo it.
    #[allow(clippy::type_complexity)]
    fn set_flags(&self) -> Result<Vec<(RawFd, bool)>, (ReexecError, Vec<(RawFd, bool)>)> {
        let mut changed = Vec::new();
        let kept: Vec<RawFd> = self.fds.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let open = match open_fds() {
            Ok(o) => o,
            Err(e) => return Err((io_err("listing this process's descriptors")(e), changed)),
        };
        for fd in open.into_iter().filter(|&fd| fd > 2) {
            let want = !kept.contains(&fd);
            match inplace::cloexec(fd) {
                Ok(Some(now)) if now != want => {
                    if let Err(e) = inplace::set_cloexec(fd, want) {
                        return Err((io_err("setting FD_CLOEXEC")(e), changed));
                    }
                    changed.push((fd, now));
                }
                Ok(_) => {}
                Err(e) => return Err((io_err("reading FD_CLOEXEC")(e), changed)),
            }
        }
        // A kept descriptor the listing missed (it cannot, but a wrong flag
        // here would close a socket for good).
        for (_, fd) in &self.fds {
            if rustix::io::fcntl_getfd(fd)
                .map(|f| f.contains(rustix::io::FdFlags::CLOEXEC))
                .unwrap_or(false)
            {
                if let Err(e) = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()) {
                    return Err((io_err("clearing FD_CLOEXEC")(e.into()), changed));
                }
                changed.push((fd.as_raw_fd(), true));
            }
        }
        Ok(changed)
    }
}

fn restore(changed: &[(RawFd, bool)]) {
    for &(fd, was) in changed {
        if let Err(e) = inplace::set_cloexec(fd, was) {
            tracing::warn!(fd, error = %e, "could not restore FD_CLOEXEC after a failed exec");
        }
    }
}

/// The open descriptors of this process (from `/proc/self/fd`).
fn open_fds() -> io::Result<Vec<RawFd>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        if let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        {
            out.push(fd);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn fds_variable() {
        assert_eq!(
            parse_fds(OsStr::new("7=http:12=a=b")).unwrap(),
            [(7, "http".to_string()), (12, "a=b".to_string())]
        );
        assert!(parse_fds(OsStr::new("")).unwrap().is_empty());
        for bad in [
            "7", "x=y", "2=stdio", "-1=a", "+5=a", "7=", "7=a:7=b", "7=a:8=a", "7=a\tb", "7=a:",
        ] {
            let e = parse_fds(OsStr::new(bad)).unwrap_err().to_string();
            assert!(e.starts_with("HANDOVER_REEXEC_FDS="), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fds_variable_never_panics_and_round_trips(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            fds in proptest::collection::btree_map(3i32..100_000, "[a-z.=]{1,12}", 0..6),
        ) {
            let _ = parse_fds(OsStr::from_bytes(&data));
            // Unique names too: keep the first of each.
            let mut seen = std::collections::BTreeSet::new();
            let fds: Vec<(RawFd, String)> = fds
                .into_iter()
                .filter(|(_, n)| seen.insert(n.clone()))
                .collect();
            let text = fds
                .iter()
                .map(|(fd, n)| format!("{fd}={n}"))
                .collect::<Vec<_>>()
                .join(":");
            proptest::prop_assert_eq!(parse_fds(OsStr::new(&text)).unwrap(), fds);
        }
    }

    #[test]
    fn names_are_checked_when_sending() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut r = Reexec::new("/bin/true");
        r.fd("state", f.as_fd()).unwrap();
        assert!(r.fd("state", f.as_fd()).is_err());
        assert!(r.fd("a:b", f.as_fd()).is_err());
        assert_eq!(r.fds_value(), format!("{}=state", f.as_raw_fd()));
    }

    #[test]
    fn the_environment_drops_stale_protocol_variables() {
        let mut r = Reexec::new("/bin/true");
        r.env("HANDOVER_TEST_X", "1").env_remove("PATH");
        let env = r.environment();
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("HANDOVER_TEST_X"), Some("1".into()));
        assert_eq!(get("PATH"), None);
        assert_eq!(get(PID_ENV), Some(std::process::id().to_string().into()));
        assert_eq!(get(FDS_ENV), Some("".into()));
        assert!(get("LISTEN_FDS").is_none());
    }
}
