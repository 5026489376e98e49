//! [`ExitSignal`]: resolves when a successor is ready.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::sync::Wait;

/// Resolves when a successor is ready; from [`Upgrader::exit`](super::Upgrader::exit).
///
/// Await it (any async runtime), or block with [`wait`](ExitSignal::wait).
pub struct ExitSignal {
    pub(super) wait: Wait<()>,
}

impl std::fmt::Debug for ExitSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitSignal")
            .field("set", &self.is_set())
            .finish()
    }
}

impl ExitSignal {
    /// Blocks until a successor is ready.
    pub fn wait(&self) {
        self.wait.event().wait()
    }

    /// Blocks up to `timeout`; `true` when a successor is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait.event().wait_timeout(timeout).is_some()
    }

    /// Whether a successor is ready.
    pub fn is_set(&self) -> bool {
        self.wait.event().is_set()
    }
}

impl Future for ExitSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().wait).poll(cx)
    }
}
