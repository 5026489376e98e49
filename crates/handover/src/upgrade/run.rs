//! The ready-made tokio loop: signals, upgrade, drain (feature `tokio`).

use std::time::Duration;

use super::{UpgradeError, Upgrader, lock};
use crate::notify::State as NotifyState;

/// Why [`Upgrader::run`] returned. (Not to be confused with
/// [`child::Exit`](crate::child::Exit), how a child process ended.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A successor is serving; this process drained.
    Upgraded,
    /// SIGTERM or SIGINT: this process drained for a final stop.
    Terminated,
}

/// The outcome of [`Upgrader::run`].
#[derive(Debug)]
pub struct RunOutcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// `Ok` when every connection finished; else how many were cut short
    /// (the drain timeout passed, or a second SIGTERM/SIGINT came).
    pub drained: Result<(), crate::drain::StillOpen>,
}

/// Settings of [`Upgrader::run`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunOptions {
    drain_timeout: Duration,
    #[cfg(feature = "hyper")]
    handoff: Option<crate::drain::http::Handoff>,
    #[cfg(feature = "hyper")]
    handoff_socket: Option<std::path::PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            drain_timeout: Duration::from_secs(30),
            #[cfg(feature = "hyper")]
            handoff: None,
            #[cfg(feature = "hyper")]
            handoff_socket: None,
        }
    }
}

impl RunOptions {
    /// The defaults.
    pub fn new() -> RunOptions {
        RunOptions::default()
    }

    /// How long to wait for open connections when exiting (default 30 s).
    pub fn drain_timeout(mut self, t: Duration) -> Self {
        self.drain_timeout = t;
        self
    }

    /// When a successor is ready, hand it this process's idle keep-alive
    /// connections before draining (feature `hyper`; needs
    /// [`Options::handoff`](super::Options::handoff) and the same
    /// [`Handoff`](crate::drain::http::Handoff) in the
    /// [`HttpOptions`](crate::drain::http::HttpOptions) of the server).
    /// Default: none.
    #[cfg(feature = "hyper")]
    pub fn handoff(mut self, handoff: crate::drain::http::Handoff) -> Self {
        self.handoff = Some(handoff);
        self
    }

    /// Under `handover run`: the path where generations meet to hand
    /// connections over (what the supervisor gives in
    /// [`HANDOFF_SOCKET_ENV`](crate::drain::http::HANDOFF_SOCKET_ENV)); on
    /// SIGTERM, the [`handoff`](RunOptions::handoff) gives this process's
    /// connections to the generation that owns it (feature `hyper`).
    /// Default: none.
    #[cfg(feature = "hyper")]
    pub fn handoff_socket(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.handoff_socket = Some(path.into());
        self
    }
}

/// The signal handlers of the ready-made loop, installed by
/// [`Upgrader::signals`].
#[derive(Debug)]
pub struct Signals {
    upgrader: Upgrader,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

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
                _ = &mut exit_signal => break StopReason::Upgraded,
                _ = self.term.recv() => break StopReason::Terminated,
                _ = self.int.recv() => break StopReason::Terminated,
            }
        };
        tracing::info!(?exit, timeout = ?options.drain_timeout, "draining");
        if exit == StopReason::Terminated {
            let _ = up.inner.notifier.notify(&[NotifyState::Stopping]);
        }
        #[cfg(feature = "hyper")]
        if let Some(handoff) = &options.handoff {
            use crate::drain::http::HANDOFF_TIMEOUT;
            let given = match (exit, up.handoff_to_successor(), &options.handoff_socket) {
                (StopReason::Upgraded, Some(session), _) => {
                    Some(handoff.give_to(session, HANDOFF_TIMEOUT).await)
                }
                // A generation of `handover run`, told to stop.
                (StopReason::Terminated, _, Some(path)) => {
                    Some(handoff.give_at(path, HANDOFF_TIMEOUT).await)
                }
                _ => None,
            };
            match given {
                Some(Ok(())) => {
                    tracing::info!("handing idle keep-alive connections to the new process")
                }
                Some(Err(e)) => {
                    tracing::info!(error = %e, "keep-alive connections are not handed over")
                }
                None => {}
            }
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
        if exit == StopReason::Terminated {
            up.stop();
        }
        Ok(RunOutcome {
            reason: exit,
            drained,
        })
    }
}

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
