//! [`UpgradeError`].

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::READY_FD_NAME;
use crate::activation::ActivationError;
use crate::address::AddressError;
use crate::child::ExitStatus;
use crate::notify::NotifyError;
use crate::process::SpawnError;
use crate::socket::ConvertError;

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
    /// Talking to the service manager (systemd) failed.
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
        "the new process (pid {pid}) {status} before it was ready; this process keeps serving. \
         Run the new version by hand to see why"
    )]
    ExitedEarly {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The new process closed its end of the readiness pipe without being
    /// ready (it has been killed).
    #[error(
        "the new process (pid {pid}) closed its readiness pipe ({READY_FD_NAME:?}) before it \
         was ready, so it was killed; this process keeps serving. Expected the new version to \
         keep its inherited descriptors open until it calls ready()"
    )]
    ReadyPipeClosed {
        /// Its pid.
        pid: u32,
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
