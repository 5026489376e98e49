//! Load generator and reload verifier: proves that a server restarts with
//! zero downtime.
//!
//! A [`Load`] drives an HTTP/1.1 server with N concurrent clients, either a
//! new TCP connection per request or keep-alive connections, and counts every
//! request that did not get a complete 2xx response, by [`FailureKind`]. It
//! runs on its own threads (an internal tokio runtime), so tests and the CLI
//! use it from plain blocking code. [`verify`] runs a load for a while and
//! triggers a reload at an interval, recording for each reload how long a new
//! pid took to answer.
//!
//! Responses whose body holds a line `pid=<N>` are counted per pid, which is
//! how a run sees the server being replaced.
//!
//! # A test that upgrades a server under load
//!
//! ```no_run
//! use std::collections::BTreeSet;
//! use std::time::Duration;
//! use handover_verify::{Load, LoadConfig, Mode};
//!
//! # fn upgrade_server() {}
//! let addr = "127.0.0.1:8080".parse().unwrap();
//! let load = Load::start(LoadConfig::new(addr, Mode::KeepAlive))?;
//! assert!(load.wait_for_ok(100, Duration::from_secs(5)), "the server does not answer");
//! for _ in 0..3 {
//!     let before = load.pids_seen();
//!     upgrade_server();
//!     let new_pid = load.wait_for_new_pid(&before, Duration::from_secs(10));
//!     assert!(new_pid.is_some(), "no new pid answered after the upgrade");
//! }
//! let report = load.stop();
//! assert_eq!(report.failures_total(), 0, "{}", report.render_table());
//! assert!(report.distinct_pids() >= 4);
//! # Ok::<(), handover_verify::VerifyError>(())
//! ```
//!
//! # What `handover verify` does
//!
//! ```no_run
//! use std::time::Duration;
//! use handover_verify::{LoadConfig, Mode, Trigger, VerifyConfig, verify};
//!
//! let load = LoadConfig::new("127.0.0.1:8080".parse().unwrap(), Mode::NewConnection);
//! let mut cfg = VerifyConfig::new(load, Duration::from_secs(30)).with_reloads(
//!     Duration::from_secs(5),
//!     Trigger::Command("handover reload".to_owned()),
//! );
//! cfg.progress = handover_verify::stderr_is_terminal();
//! let report = verify(cfg)?;
//! print!("{}", report.render_table());
//! std::process::exit(if report.passed() { 0 } else { 1 });
//! # Ok::<(), handover_verify::VerifyError>(())
//! ```
#![deny(missing_docs)]

mod h2;
mod histogram;
pub mod http;
mod load;
mod report;
mod tls;
mod verify;

pub use histogram::Latency;
pub use load::{Load, LoadConfig, Mode, Protocol};
pub use report::{FailureKind, FailureSample, ReloadRecord, Report};
pub use tls::ClientTls;
pub use verify::{Reloaded, Trigger, VerifyConfig, stderr_is_terminal, verify};

/// Why a load or verification could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A configuration value is out of range.
    #[error("invalid {field}: {problem}")]
    InvalidConfig {
        /// The configuration field.
        field: &'static str,
        /// What was expected and what was found.
        problem: String,
    },
    /// The internal tokio runtime could not be built.
    #[error(
        "could not start the load's tokio runtime: {0}; the system may be out of threads \
         or file descriptors (check `ulimit -u` and `ulimit -n`)"
    )]
    Runtime(#[source] std::io::Error),
    /// A thread could not be spawned.
    #[error(
        "could not spawn the {what} thread: {source}; the system may be out of threads \
         (check `ulimit -u`)"
    )]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The spawn error.
        source: std::io::Error,
    },
}
