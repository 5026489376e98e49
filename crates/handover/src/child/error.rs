//! [`ChildError`]: what can go wrong starting, signalling or running a child.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::{ExitStatus, Signal};
use crate::process::SpawnError;

/// Errors of child supervision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The program was not found.
    #[error(
        "cannot start `{label}`: program {program:?} was not found (searched {searched}); expected \
         an executable file: install it, fix PATH, or give the program's full path"
    )]
    ProgramNotFound {
        /// The command, for logs.
        label: String,
        /// The program as given.
        program: String,
        /// Where it was looked for: `each directory of PATH=...` or a path.
        searched: String,
    },
    /// The program exists but cannot be executed.
    #[error(
        "cannot start `{label}`: {path:?} is not executable ({reason}); expected a file with \
         execute permission on a filesystem not mounted noexec: `chmod +x` it, or run it through \
         its interpreter"
    )]
    NotExecutable {
        /// The command, for logs.
        label: String,
        /// The file that was found.
        path: PathBuf,
        /// Why it cannot run.
        reason: String,
    },
    /// The working directory is not usable.
    #[error(
        "cannot start `{label}`: its working directory {dir:?} {problem}; expected an existing \
         directory the child may enter: create it, or fix the path given to \
         Command::current_dir"
    )]
    BadDirectory {
        /// The command, for logs.
        label: String,
        /// The directory given to `Command::current_dir`.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Spawning failed for another reason (a script's interpreter is
    /// missing, a step before `exec` failed, ...).
    #[error("{source} (command: `{label}`)")]
    Spawn {
        /// The command, for logs.
        label: String,
        /// What failed, and what it most likely means.
        #[source]
        source: SpawnError,
    },
    /// A signal could not be sent.
    #[error(
        "cannot send {signal} to `{label}` (pid {pid}): {source}; expected this process to be \
         allowed to signal its child: did the child change its user id?"
    )]
    Signal {
        /// The command, for logs.
        label: String,
        /// The child's pid.
        pid: u32,
        /// The signal.
        signal: Signal,
        /// The error from `kill`.
        #[source]
        source: io::Error,
    },
    /// A one-shot command ran past its execution timeout and was killed.
    #[error(
        "`{label}` did not finish within its execution timeout of {timeout:?} and was killed; \
         expected a one-shot command to exit in time: make it finish sooner, raise the timeout, \
         or supervise it as a long-running child without one"
    )]
    TimedOut {
        /// The command, for logs.
        label: String,
        /// The execution timeout.
        timeout: Duration,
    },
    /// A one-shot command ended unsuccessfully.
    #[error(
        "`{label}` {status}; expected exit code 0, which a one-shot command must return on \
         success: see its output for the cause"
    )]
    Failed {
        /// The command, for logs.
        label: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// A supporting thread could not be started.
    #[error("cannot start `{label}`: {context}: {source}")]
    Thread {
        /// The command, for logs.
        label: String,
        /// Which thread.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}
