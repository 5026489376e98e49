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

mod error;
mod handle;
mod spawn;

pub use error::SpawnError;
pub use handle::Process;
pub(crate) use spawn::{find_executable, spawn};

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

// The variables of socket activation, never inherited (see the module
// docs); `activation` sets them for the descriptors it passes.
use crate::sys::LISTEN_VARS;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
