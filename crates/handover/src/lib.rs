//! handover: zero-downtime restarts for Linux network servers.
//!
//! A new version of a server takes over the listening sockets while the old
//! one finishes its in-flight requests; no connection is refused or reset on
//! the way.
//!
//! # Layers
//!
//! The crate is built in layers, each using only those above it (in this
//! table, and the private `sys`, `sync` and `pidfile` below), which
//! `tests/layers.rs` enforces:
//!
//! | module | what it does |
//! |---|---|
//! | `sys` (private) | every `unsafe` block and raw syscall: the vfork-style spawn, in-place `execve`, fd flags |
//! | `sync`, `pidfile` (private) | the one event/waker primitive (threads and futures); atomic pid files |
//! | [`socket`] | what kind of socket an fd is; checked conversions into std/tokio types; the `sun_path` limit |
//! | [`address`] | `tcp://`, `udp://`, `unix:` addresses; binding (with socket options set before `bind`) with errors that say what to do |
//! | [`process`] | starting programs without `fork` (`clone(CLONE_VM\|CLONE_VFORK)`): a `Command` builder, typed errors for every failed step |
//! | [`activation`] | systemd socket activation (`LISTEN_FDS`), receiving and sending |
//! | [`notify`] | `sd_notify`: telling a supervisor we are ready, and hearing children |
//! | [`pass`] | descriptors with metadata between unrelated processes over a Unix socket |
//! | [`drain`] | listeners that track connections, stop accepting, and wait for them; HTTP draining hands keep-alive connections to the successor over `pass` |
//! | [`child`] | one supervised child process: process group, kill signal, kill timeout, splay, `SIGKILL` |
//! | [`reexec`] | re-executing this process in place (same pid, same children) with named descriptors kept |
//! | [`upgrade`] | a server that re-executes itself with its sockets, waits until the new one is ready, or rolls back |
//!
//! What each task needs: receiving or passing on activated sockets,
//! [`activation::ListenFds`] and [`activation::Activation`]; telling systemd,
//! [`notify::Notifier`]; draining, [`drain::Drain`]; passing descriptors,
//! [`pass`]; supervising a child, [`child::Child`]; upgrading in place,
//! [`upgrade::Upgrader`].
//!
//! All `unsafe` code lives in `sys`, each use with a `SAFETY:` comment (the
//! rest of the crate denies `unsafe_code`); the API speaks
//! `OwnedFd`/`BorrowedFd`, never bare integers that can leak.
//!
//! # Public API
//!
//! The public API is listed in `crates/handover/public-api.txt`, and CI
//! (`.ci/run`) fails when it changes without that file changing too, so that
//! every change to it is deliberate. After changing the API on purpose,
//! regenerate the list and commit it with the change:
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo public-api -p handover --all-features -s > crates/handover/public-api.txt
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "handover supports Linux only: it relies on Linux-specific system calls (pidfd, \
     clone(CLONE_VFORK), SO_PEERCRED, /proc). Build it for a Linux target."
);

pub mod activation;
pub mod address;
pub mod child;
pub mod drain;
pub mod notify;
pub mod pass;
mod pidfile;
pub mod process;
pub mod reexec;
pub mod socket;
mod sync;
#[allow(unsafe_code)]
mod sys;
pub mod upgrade;

/// Not part of the API: entry points for the fuzz targets (`fuzz/`) and the
/// property tests, which exercise parsers of outside input directly. May
/// change or go away in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::activation::env::{EnvVars, parse_env};

    /// The descriptor-passing protocol's sans-IO encoder and decoder.
    pub mod wire {
        pub use crate::pass::wire::*;
    }

    /// The connection hand-over protocol's sans-IO codec.
    pub mod connection {
        pub use crate::pass::connection::codec::*;
    }

    /// Renders `sd_notify` states as the protocol's message text.
    pub fn render_notify(
        states: &[crate::notify::State<'_>],
    ) -> Result<String, crate::notify::NotifyError> {
        crate::notify::render(states)
    }

    /// Parses a `NOTIFY_SOCKET` value (an absolute path or `@name`).
    pub fn parse_notify_socket(value: &std::ffi::OsStr) -> Result<(), crate::notify::NotifyError> {
        crate::notify::parse_address(value).map(drop)
    }
}

/// The Rust snippets of the repository's README, compiled as doc tests so
/// that they stay correct as written (`cargo test --doc -p handover`).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
