//! Starting programs: a small [`Command`] builder whose methods mirror
//! `std::process::Command`, and a [`Process`] handle.
//!
//! Everything in this crate that starts a program
//! ([`Activation::spawn`](crate::activation::Activation::spawn),
//! [`crate::child`], [`crate::upgrade`], `handover run`) goes through here,
//! and through one primitive underneath: a vfork-style
//! `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own, as `posix_spawn`
//! and Go's `forkExec` do. Compared with `fork`:
//!
//! - **Its cost does not grow with this process.** `fork` copies the page
//!   tables (tens of milliseconds for a server with a few GB of heap, and
//!   copy-on-write faults afterwards); this takes the same time at 4 GB as
//!   at 0.
//! - **It cannot report success for a failed start.** The new process
//!   reports a failed step (`dup2`, `setpgid`, `prctl`, `chdir`, `execve`)
//!   into memory this process reads once the clone returns, not through a
//!   pipe a descriptor move could replace. [`SpawnError`] names the program
//!   and the step, and says what most likely went wrong: the program is not
//!   in `PATH`, a script's `#!` interpreter is missing, the working
//!   directory cannot be entered, ...
//! - **Descriptors land where they are asked for.** Passed descriptors are
//!   placed at 3, 4, ... even when their sources sit at those numbers, stdio
//!   is set as asked, and nothing else is inherited.
//!
//! ```no_run
//! use handover::process::{Command, Stdio};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut child = Command::new("sh")
//!     .args(["-c", "echo hello"])
//!     .stdout(Stdio::piped())
//!     .spawn()?;
//! let mut out = String::new();
//! std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out)?;
//! assert!(child.wait()?.success());
//! # Ok(()) }
//! ```
//!
//! Why not `std::process::Command`: its stdio settings and whether
//! `env_clear` was called cannot be read back, and any hook that runs before
//! `exec` forces `fork`. Differences from std worth knowing:
//! - the variables of socket activation (`LISTEN_PID`, `LISTEN_FDS`,
//!   `LISTEN_FDNAMES`) are never inherited from this process's environment
//!   (they describe descriptors meant for this process only); pass
//!   descriptors with [`Activation`](crate::activation::Activation);
//! - every descriptor above 2 is closed on exec, even one without
//!   `FD_CLOEXEC`;
//! - a relative program path (`./app`) is resolved in the new working
//!   directory, after [`Command::current_dir`], as std does on Linux.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, ExitStatus};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::sys::spawn::{self as raw_spawn, Failure, Request, Step};

/// The variables of socket activation, never inherited (see the module
/// docs); `activation` sets them for the descriptors it passes.
const LISTEN_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The `PATH` searched when the new process's environment has none (glibc's
/// `execvp` default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// What a standard stream of the new process is connected to.
#[derive(Debug)]
pub struct Stdio(StdioKind);

#[derive(Debug)]
enum StdioKind {
    Inherit,
    Null,
    Piped,
    Fd(OwnedFd),
}

impl Stdio {
    /// The same as this process's (the default).
    pub fn inherit() -> Stdio {
        Stdio(StdioKind::Inherit)
    }

    /// `/dev/null`.
    pub fn null() -> Stdio {
        Stdio(StdioKind::Null)
    }

    /// A new pipe; this process gets the other end in [`Process::stdin`],
    /// [`Process::stdout`] or [`Process::stderr`].
    pub fn piped() -> Stdio {
        Stdio(StdioKind::Piped)
    }
}

impl From<OwnedFd> for Stdio {
    /// This descriptor (a duplicate is placed at 0, 1 or 2 in the new
    /// process; the command keeps this one for later spawns).
    fn from(fd: OwnedFd) -> Stdio {
        Stdio(StdioKind::Fd(fd))
    }
}

impl From<std::fs::File> for Stdio {
    /// This file, as with `From<OwnedFd>`.
    fn from(file: std::fs::File) -> Stdio {
        Stdio(StdioKind::Fd(file.into()))
    }
}

/// A program to start, with its arguments, environment, working directory,
/// stdio and process group. Method names mirror `std::process::Command`.
#[derive(Debug)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: BTreeMap<OsString, Option<OsString>>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
    process_group: Option<i32>,
    /// `PR_SET_PDEATHSIG`, set by `crate::child`.
    pub(crate) death_signal: Option<i32>,
}

impl Command {
    /// Starts a command for `program`: looked up in `PATH` (of the new
    /// process's environment) unless it contains a `/`. No arguments, this
    /// process's environment (without the `LISTEN_*` variables), working
    /// directory and stdio.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_clear: false,
            cwd: None,
            stdin: Stdio::inherit(),
            stdout: Stdio::inherit(),
            stderr: Stdio::inherit(),
            process_group: None,
            death_signal: None,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Sets a variable in the new process's environment.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Command {
        self.env
            .insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    /// Sets several variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Command
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Removes a variable from the new process's environment.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Command {
        self.env.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Starts from an empty environment instead of this process's (and
    /// forgets the variables set so far).
    pub fn env_clear(&mut self) -> &mut Command {
        self.env.clear();
        self.env_clear = true;
        self
    }

    /// The working directory of the new process.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Command {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Its standard input.
    pub fn stdin(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.stdin = cfg.into();
        self
    }

    /// Its standard output.
    pub fn stdout(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.stdout = cfg.into();
        self
    }

    /// Its standard error.
    pub fn stderr(&mut self, cfg: impl Into<Stdio>) -> &mut Command {
        self.stderr = cfg.into();
        self
    }

    /// Puts the new process in process group `pgroup`; 0 makes a new group
    /// whose id is its pid.
    pub fn process_group(&mut self, pgroup: i32) -> &mut Command {
        self.process_group = Some(pgroup);
        self
    }

    /// The program, as given.
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }

    /// The arguments (without the program).
    pub fn get_args(&self) -> impl ExactSizeIterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    /// The variables set (`Some`) or removed (`None`) by this command.
    pub fn get_envs(&self) -> impl ExactSizeIterator<Item = (&OsStr, Option<&OsStr>)> {
        self.env.iter().map(|(k, v)| (k.as_os_str(), v.as_deref()))
    }

    /// The working directory, if set.
    pub fn get_current_dir(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// Whether [`Command::env_clear`] was called.
    pub fn get_env_clear(&self) -> bool {
        self.env_clear
    }

    /// Starts the program. Returns once it has been executed; any failure
    /// on the way is a [`SpawnError`] and leaves no process behind.
    pub fn spawn(&mut self) -> Result<Process, SpawnError> {
        spawn(self, &Extra::default())
    }

    /// The environment the new process gets (without `LISTEN_*`).
    pub(crate) fn child_env(&self) -> Vec<(OsString, OsString)> {
        let mut env: BTreeMap<OsString, OsString> = if self.env_clear {
            BTreeMap::new()
        } else {
            std::env::vars_os()
                .filter(|(k, _)| !LISTEN_VARS.iter().any(|l| k == l))
                .collect()
        };
        for (k, v) in &self.env {
            match v {
                Some(v) => env.insert(k.clone(), v.clone()),
                None => env.remove(k),
            };
        }
        env.into_iter().collect()
    }
}

/// What a layer above adds to a spawn: descriptors at 3.., variables, and
/// the name of a variable set to the new process's own pid.
#[derive(Default)]
pub(crate) struct Extra<'a> {
    pub(crate) fds: &'a [BorrowedFd<'a>],
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) pid_var: Option<&'a str>,
}

/// A started process. Method names mirror `std::process::Child`.
///
/// Dropping it neither kills nor waits for the process (as with std's
/// `Child`): wait for it, or use [`crate::child::Child`], so that no zombie is
/// left.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
    /// The writing end of its stdin, when it was [`Stdio::piped`].
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

/// Why a program could not be started. The new process, if one was made,
/// is gone (reaped) when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// No candidate path exists.
    #[error(
        "cannot start {program:?}: it was not found (searched {searched}); expected an executable \
         file: install it, fix PATH, or give the program's full path"
    )]
    NotFound {
        /// The program, as given.
        program: OsString,
        /// Where it was looked for: a path, or `each directory of PATH=...`.
        searched: String,
    },
    /// The file exists but cannot be executed.
    #[error(
        "cannot start {program:?}: {path:?} is not executable ({reason}); expected a file with \
         execute permission on a filesystem not mounted noexec: `chmod +x` it, or run it through \
         its interpreter"
    )]
    NotExecutable {
        /// The program, as given.
        program: OsString,
        /// The file found.
        path: PathBuf,
        /// Why it cannot run.
        reason: String,
        /// The error from `execve`.
        #[source]
        source: io::Error,
    },
    /// A script whose `#!` interpreter does not exist.
    #[error(
        "cannot start {program:?}: {path:?} is a script whose interpreter {interpreter:?} (its #! \
         line) is missing; expected that interpreter to be installed: install it, or fix the #! \
         line"
    )]
    InterpreterMissing {
        /// The program, as given.
        program: OsString,
        /// The script.
        path: PathBuf,
        /// The interpreter its first line names.
        interpreter: PathBuf,
    },
    /// A binary whose dynamic loader (ELF interpreter) does not exist.
    #[error(
        "cannot start {program:?}: {path:?} needs the dynamic loader {loader:?}, which is \
         missing; expected a binary built for this system: rebuild it for this system (or \
         statically), or install the loader (check with `file` and `ldd`)"
    )]
    LoaderMissing {
        /// The program, as given.
        program: OsString,
        /// The binary.
        path: PathBuf,
        /// The loader it names (`PT_INTERP`).
        loader: PathBuf,
    },
    /// The working directory could not be entered.
    #[error(
        "cannot start {program:?}: its working directory {dir:?} {problem}; expected an existing \
         directory the new process may enter: create it, or fix the path given to current_dir"
    )]
    WorkingDirectory {
        /// The program, as given.
        program: OsString,
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The error from `chdir`.
        #[source]
        source: io::Error,
    },
    /// `execve` failed for another reason.
    #[error(
        "cannot start {program:?}: executing {path:?} failed: {source}{}",
        hint(source)
    )]
    Exec {
        /// The program, as given.
        program: OsString,
        /// The path tried last.
        path: PathBuf,
        /// The error from `execve`.
        #[source]
        source: io::Error,
    },
    /// A step in the new process before `execve` failed.
    #[error(
        "cannot start {program:?}: {step} failed in the new process, before it could execute \
         the program: {source}{}",
        hint(source)
    )]
    Setup {
        /// The program, as given.
        program: OsString,
        /// The step (`dup2 onto fd 3`, `setpgid`, ...).
        step: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Preparing the start in this process failed (no process was made).
    #[error("cannot start {program:?}: {what}: {source}{}", hint(source))]
    Prepare {
        /// The program, as given.
        program: OsString,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The new process was killed by a signal before it executed the program.
    #[error(
        "cannot start {program:?}: the new process was killed by signal {signal} before it could \
         execute the program; expected nothing to signal it while it starts: look for what sent it"
    )]
    Killed {
        /// The program, as given.
        program: OsString,
        /// The signal.
        signal: i32,
    },
}

impl SpawnError {
    /// Whether the program (or a file it needs: a script's interpreter, a
    /// binary's loader) was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            SpawnError::NotFound { .. }
                | SpawnError::InterpreterMissing { .. }
                | SpawnError::LoaderMissing { .. }
        )
    }
}

/// What an errno most likely means when starting a process, as advice.
fn hint(source: &io::Error) -> String {
    match Errno::from_io_error(source) {
        Some(Errno::MFILE) => format!(
            "; this process has reached its limit of open files (RLIMIT_NOFILE{}): raise it \
             (`ulimit -n` in the shell that starts it, LimitNOFILE= in a systemd unit) or find \
             what holds so many descriptors (ls /proc/{}/fd)",
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .map(|n| format!(" = {n}"))
                .unwrap_or_default(),
            std::process::id()
        ),
        Some(Errno::NFILE) => "; the whole system is out of file descriptors: raise fs.file-max \
             (sysctl) or stop what holds them"
            .to_string(),
        Some(Errno::AGAIN) => "; a limit on processes was reached: raise `ulimit -u` \
             (LimitNPROC= or TasksMax= under systemd)"
            .to_string(),
        Some(Errno::NOMEM) => "; the system is out of memory".to_string(),
        Some(Errno::TOOBIG) => "; the arguments and environment are too large".to_string(),
        Some(Errno::TXTBSY) => "; the file is open for writing (still being copied?): deploy by \
             writing a new file and renaming it over the old one"
            .to_string(),
        Some(Errno::LOOP) => "; too many symbolic links on the way".to_string(),
        _ => String::new(),
    }
}

/// The paths `execvp` would try for `program`, with the `PATH` given.
fn candidates(program: &OsStr, path_var: &OsStr) -> Vec<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(program)];
    }
    path_var
        .as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b"." } else { dir };
            Path::new(OsStr::from_bytes(dir)).join(program)
        })
        .collect()
}

/// Starts `cmd` with what `extra` adds; see [`Command::spawn`].
pub(crate) fn spawn(cmd: &Command, extra: &Extra<'_>) -> Result<Process, SpawnError> {
    let program = &cmd.program;
    let prepare = |what: &'static str| {
        move |source: io::Error| SpawnError::Prepare {
            program: program.clone(),
            what,
            source,
        }
    };
    let invalid = |what: &'static str, msg: String| SpawnError::Prepare {
        program: program.clone(),
        what,
        source: io::Error::new(io::ErrorKind::InvalidInput, msg),
    };
    if program.is_empty() {
        return Err(invalid(
            "checking the program name",
            "the program name is empty; expected a program name or path".into(),
        ));
    }
    let nul = |s: &OsStr| s.as_bytes().contains(&0);
    if nul(program) || cmd.args.iter().any(|a| nul(a)) {
        return Err(invalid(
            "checking the arguments",
            "an argument contains a NUL byte, which no program can receive".into(),
        ));
    }
    let mut env = cmd.child_env();
    for (k, v) in &extra.env {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    if let Some(var) = extra.pid_var {
        env.retain(|(key, _)| key != var);
    }
    if env
        .iter()
        .any(|(k, v)| nul(k) || nul(v) || k.as_bytes().contains(&b'='))
    {
        return Err(invalid(
            "checking the environment",
            "a variable name contains '=' or NUL, or a value contains NUL".into(),
        ));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let candidates = candidates(program, &path_var);

    // Stdio: the ends for the new process, and ours.
    let mut child_ends: Vec<(OwnedFd, RawFd)> = Vec::new();
    let mut borrowed: Vec<(BorrowedFd<'_>, RawFd)> = Vec::new();
    let mut ours: [Option<OwnedFd>; 3] = [None, None, None];
    for (target, stdio) in [(0, &cmd.stdin), (1, &cmd.stdout), (2, &cmd.stderr)] {
        match &stdio.0 {
            StdioKind::Inherit => {}
            StdioKind::Null => {
                let null = rustix::fs::open(
                    "/dev/null",
                    rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| prepare("opening /dev/null")(e.into()))?;
                child_ends.push((null, target));
            }
            StdioKind::Piped => {
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| prepare("creating a pipe for stdio")(e.into()))?;
                let (theirs, mine) = if target == 0 { (r, w) } else { (w, r) };
                child_ends.push((theirs, target));
                ours[target as usize] = Some(mine);
            }
            StdioKind::Fd(fd) => borrowed.push((fd.as_fd(), target)),
        }
    }
    let mut fds: Vec<(BorrowedFd<'_>, RawFd)> = child_ends
        .iter()
        .map(|(fd, t)| (fd.as_fd(), *t))
        .chain(borrowed)
        .collect();
    let first_cloexec = 3 + extra.fds.len() as RawFd;
    for (i, fd) in extra.fds.iter().enumerate() {
        fds.push((*fd, 3 + i as RawFd));
    }

    let argv: Vec<&OsStr> = std::iter::once(program.as_os_str())
        .chain(cmd.args.iter().map(OsString::as_os_str))
        .collect();
    let req = Request {
        candidates: &candidates,
        argv: &argv,
        env: &env,
        pid_var: extra.pid_var,
        cwd: cmd.cwd.as_deref().map(Path::as_os_str),
        fds: &fds,
        first_cloexec,
        process_group: cmd.process_group,
        death_signal: cmd.death_signal,
    };
    let spawned = match raw_spawn::spawn(&req) {
        Ok(s) => s,
        Err(failure) => return Err(explain(cmd, &candidates, &path_var, failure)),
    };
    drop(fds);
    drop(child_ends);
    let [stdin, stdout, stderr] = ours;
    Ok(Process {
        pid: spawned.pid as u32,
        pidfd: spawned.pidfd,
        status: None,
        stdin: stdin.map(ChildStdin::from),
        stdout: stdout.map(ChildStdout::from),
        stderr: stderr.map(ChildStderr::from),
    })
}

/// Turns a failure of the primitive into an error that names the program,
/// the step, and what most likely went wrong.
fn explain(cmd: &Command, candidates: &[PathBuf], path_var: &OsStr, f: Failure) -> SpawnError {
    let program = cmd.program.clone();
    let (step, errno) = match f {
        Failure::Prepare { what, source } => {
            return SpawnError::Prepare {
                program,
                what,
                source,
            };
        }
        Failure::Vanished { wait_status } => {
            return SpawnError::Killed {
                program,
                signal: ExitStatus::from_raw(wait_status).signal().unwrap_or(0),
            };
        }
        Failure::Child { step, errno } => (step, errno),
    };
    let source = io::Error::from_raw_os_error(errno);
    let setup = |step: String, source| SpawnError::Setup {
        program: program.clone(),
        step,
        source,
    };
    match step {
        Step::Signals => setup("resetting signal handlers".into(), source),
        Step::DeathSignal => setup("prctl(PR_SET_PDEATHSIG)".into(), source),
        Step::ParentGone => setup(
            "arming the death signal".into(),
            io::Error::other("this process was exiting while the new one started"),
        ),
        Step::ProcessGroup => setup(
            format!("setpgid(0, {})", cmd.process_group.unwrap_or(0)),
            source,
        ),
        Step::Fd(target) => setup(
            format!("placing a descriptor at fd {target} (dup2)"),
            source,
        ),
        Step::CloseOnExec => setup("marking descriptors close-on-exec".into(), source),
        Step::Chdir => {
            let dir = cmd.cwd.clone().unwrap_or_default();
            let problem = match Errno::from_raw_os_error(errno) {
                Errno::NOENT => "does not exist".to_string(),
                Errno::NOTDIR => "is not a directory".to_string(),
                Errno::ACCESS => "cannot be entered (permission denied)".to_string(),
                _ => format!("cannot be entered ({source})"),
            };
            SpawnError::WorkingDirectory {
                program,
                dir,
                problem,
                source,
            }
        }
        Step::Exec(index) => {
            // Relative paths were resolved by the new process in its
            // working directory.
            let base = cmd.cwd.clone().unwrap_or_default();
            let resolve = |p: &Path| base.join(p);
            let tried = candidates.get(index).cloned().unwrap_or_default();
            match Errno::from_raw_os_error(errno) {
                Errno::NOENT | Errno::NOTDIR | Errno::STALE | Errno::NODEV | Errno::TIMEDOUT => {
                    match candidates
                        .iter()
                        .map(|c| resolve(c))
                        .find(|c| c.symlink_metadata().is_ok())
                    {
                        None => SpawnError::NotFound {
                            program,
                            searched: if cmd.program.as_bytes().contains(&b'/') {
                                resolve(&tried).display().to_string()
                            } else {
                                format!("each directory of PATH={}", path_var.to_string_lossy())
                            },
                        },
                        Some(path) => missing_interpreter(program, path, source),
                    }
                }
                Errno::ACCESS => {
                    let path = resolve(&tried);
                    let reason = match std::fs::metadata(&path) {
                        Ok(m) if m.is_dir() => "it is a directory".to_string(),
                        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                            "it has no execute permission".to_string()
                        }
                        Ok(_) => "permission denied: a directory on the way is not searchable, \
                                  or the filesystem is mounted noexec"
                            .to_string(),
                        Err(_) => "permission denied on a directory on the way".to_string(),
                    };
                    SpawnError::NotExecutable {
                        program,
                        path,
                        reason,
                        source,
                    }
                }
                _ => SpawnError::Exec {
                    program,
                    path: resolve(&tried),
                    source,
                },
            }
        }
    }
}

/// `execve` said "no such file" for a file that exists: its `#!`
/// interpreter or its ELF loader is missing (or a race removed it).
fn missing_interpreter(program: OsString, path: PathBuf, source: io::Error) -> SpawnError {
    let head = std::fs::File::open(&path)
        .and_then(|f| {
            let mut buf = Vec::with_capacity(4096);
            io::Read::read_to_end(&mut io::Read::take(f, 4096), &mut buf)?;
            Ok(buf)
        })
        .unwrap_or_default();
    if let Some(interpreter) = shebang_interpreter(&head) {
        return SpawnError::InterpreterMissing {
            program,
            path,
            interpreter,
        };
    }
    if let Some(loader) = elf_interpreter(&path) {
        return SpawnError::LoaderMissing {
            program,
            path,
            loader,
        };
    }
    SpawnError::Exec {
        program,
        path,
        source,
    }
}

/// The interpreter a `#!` line names, from the first bytes of a file.
fn shebang_interpreter(head: &[u8]) -> Option<PathBuf> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let interp = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or(&[]);
    Some(PathBuf::from(OsStr::from_bytes(interp)))
}

/// The `PT_INTERP` of a 64- or 32-bit little-endian ELF file.
fn elf_interpreter(path: &Path) -> Option<PathBuf> {
    elf_interpreter_of(&mut std::fs::File::open(path).ok()?)
}

/// [`elf_interpreter`] of any seekable bytes (the file is outside input:
/// every offset is checked).
fn elf_interpreter_of(f: &mut (impl io::Read + io::Seek)) -> Option<PathBuf> {
    use std::io::SeekFrom;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"\x7fELF" || h[5] != 1 {
        return None;
    }
    let is64 = h[4] == 2;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at =
        |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64;
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (u64_at(&h, 32), u16_at(&h, 54), u16_at(&h, 56))
    } else {
        (u32_at(&h, 28), u16_at(&h, 42), u16_at(&h, 44))
    };
    for i in 0..phnum.min(64) {
        let mut ph = [0u8; 56];
        let len = if is64 { 56 } else { 32 };
        f.seek(SeekFrom::Start(phoff.checked_add(i * phentsize)?))
            .ok()?;
        f.read_exact(&mut ph[..len]).ok()?;
        if u32_at(&ph, 0) != 3 {
            continue; // not PT_INTERP
        }
        let (off, size) = if is64 {
            (u64_at(&ph, 8), u64_at(&ph, 32))
        } else {
            (u32_at(&ph, 4), u32_at(&ph, 16))
        };
        let mut name = vec![0u8; size.min(4096) as usize];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut name).ok()?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        return Some(PathBuf::from(OsStr::from_bytes(&name[..end])));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        let c = candidates(OsStr::new("srv"), OsStr::new("/a::/b"));
        assert_eq!(
            c,
            [
                PathBuf::from("/a/srv"),
                PathBuf::from("./srv"),
                PathBuf::from("/b/srv")
            ]
        );
        let c = candidates(OsStr::new("./x/srv"), OsStr::new("/a"));
        assert_eq!(c, [PathBuf::from("./x/srv")]);
    }

    #[test]
    fn env_clear_is_tracked() {
        let mut c = Command::new("prog");
        c.env("X", "1");
        assert!(!c.get_env_clear());
        c.env_clear();
        assert!(c.get_env_clear());
        c.env("A", "b");
        assert_eq!(c.child_env(), [(OsString::from("A"), OsString::from("b"))]);
    }

    #[test]
    fn child_env_applies_changes_and_drops_listen_vars() {
        let mut c = Command::new("prog");
        c.env("HANDOVER_TEST_X", "1")
            .env_remove("PATH")
            .env("LISTEN_FDS", "9");
        let env = c.child_env();
        assert!(env.iter().any(|(k, v)| k == "HANDOVER_TEST_X" && v == "1"));
        assert!(!env.iter().any(|(k, _)| k == "PATH"));
        // Set explicitly: passed as given.
        assert!(env.iter().any(|(k, _)| k == "LISTEN_FDS"));
    }

    #[test]
    fn shebang_lines() {
        assert_eq!(
            shebang_interpreter(b"#!/usr/bin/env python3\nprint()"),
            Some(PathBuf::from("/usr/bin/env"))
        );
        assert_eq!(
            shebang_interpreter(b"#! \t/bin/sh -e\n"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(shebang_interpreter(b"\x7fELF"), None);
    }

    /// An ELF header (64-bit when `is64`) with the given program header
    /// table, then `rest`.
    fn elf(is64: bool, phoff: u64, phentsize: u16, phnum: u16, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', if is64 { 2 } else { 1 }, 1]);
        if is64 {
            h[32..40].copy_from_slice(&phoff.to_le_bytes());
            h[54..56].copy_from_slice(&phentsize.to_le_bytes());
            h[56..58].copy_from_slice(&phnum.to_le_bytes());
        } else {
            h[28..32].copy_from_slice(&(phoff as u32).to_le_bytes());
            h[42..44].copy_from_slice(&phentsize.to_le_bytes());
            h[44..46].copy_from_slice(&phnum.to_le_bytes());
        }
        h.extend_from_slice(rest);
        h
    }

    proptest::proptest! {
        #[test]
        fn file_heads_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            is64 in proptest::prelude::any::<bool>(),
            phoff in proptest::prelude::any::<u64>(),
            phentsize in proptest::prelude::any::<u16>(),
            phnum in proptest::prelude::any::<u16>(),
        ) {
            let _ = shebang_interpreter(&data);
            let _ = elf_interpreter_of(&mut io::Cursor::new(&data));
            for off in [phoff, phoff % 2048, u64::MAX - phoff % 4096] {
                let bytes = elf(is64, off, phentsize, phnum, &data);
                let _ = elf_interpreter_of(&mut io::Cursor::new(&bytes));
            }
        }
    }

    #[test]
    fn reads_elf_interpreter_of_self() {
        let me = std::env::current_exe().unwrap();
        // Test binaries are dynamically linked on glibc targets.
        if let Some(l) = elf_interpreter(&me) {
            assert!(l.to_string_lossy().contains("ld"), "{l:?}");
        }
    }
}
