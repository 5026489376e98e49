//! handover: zero-downtime restarts for Linux network servers.
//!
//! A new version of a server takes over the listening sockets while the old
//! one finishes its in-flight requests; no connection is refused or reset on
//! the way. The crate is built in layers, each using only those above it:
//!
//! | module | what it does |
//! |---|---|
//! | [`socket`] | what kind of socket an fd is; checked conversions into std/tokio types |
//! | [`address`] | `tcp://`, `udp://`, `unix:` addresses; binding with errors that say what to do |
//! | [`process`] | starting programs without `fork` (`clone(CLONE_VM\|CLONE_VFORK)`): a `Command` builder, typed errors for every failed step |
//! | [`activation`] | systemd socket activation (`LISTEN_FDS`), receiving and sending |
//! | [`notify`] | `sd_notify`: telling a supervisor we are ready, and hearing children |
//! | [`drain`] | listeners that track connections, stop accepting, and wait for them |
//! | [`pass`] | descriptors with metadata between unrelated processes over a Unix socket |
//! | [`child`] | one supervised child process: process group, kill signal, kill timeout, splay, `SIGKILL` |
//! | [`reexec`] | re-executing this process in place (same pid, same children) with named descriptors kept |
//!
//! All `unsafe` code lives in one private module (`sys`), each use with a
//! `SAFETY:` comment (the rest of the crate denies `unsafe_code`); the API
//! speaks `OwnedFd`/`BorrowedFd`, never bare integers that can leak.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![cfg(target_os = "linux")]

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

/// The Rust snippets of the repository's README, compiled as doc tests so
/// that they stay correct as written (`cargo test --doc -p handover`).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
