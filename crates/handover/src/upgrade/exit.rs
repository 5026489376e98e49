//! [`ExitSignal`]: resolves when a successor is ready.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::Inner;

/// A one-shot event: set once, waited on by threads or futures.
#[derive(Default)]
pub(super) struct Event {
    /// Whether it is set; the wakers of pending futures by their id; the
    /// next id.
    state: Mutex<(bool, BTreeMap<u64, Waker>, u64)>,
    cond: Condvar,
}

impl Event {
    /// The state; a panic elsewhere while holding the lock leaves it
    /// consistent (every update is one assignment), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, (bool, BTreeMap<u64, Waker>, u64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn set(&self) {
        let mut s = self.lock();
        s.0 = true;
        for (_, w) in std::mem::take(&mut s.1) {
            w.wake();
        }
        self.cond.notify_all();
    }

    fn is_set(&self) -> bool {
        self.lock().0
    }

    pub(super) fn next_id(&self) -> u64 {
        let mut s = self.lock();
        s.2 += 1;
        s.2
    }
}

/// Resolves when a successor is ready; from [`Upgrader::exit`].
pub struct ExitSignal {
    pub(super) inner: Arc<Inner>,
    pub(super) id: u64,
}

impl std::fmt::Debug for ExitSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitSignal")
            .field("set", &self.inner.exit.is_set())
            .finish()
    }
}

impl ExitSignal {
    /// Blocks until a successor is ready.
    pub fn wait(&self) {
        let ev = &self.inner.exit;
        let mut s = ev.lock();
        while !s.0 {
            s = ev.cond.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks up to `timeout`; `true` when a successor is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let ev = &self.inner.exit;
        let s = ev.lock();
        let (s, _) = ev
            .cond
            .wait_timeout_while(s, timeout, |s| !s.0)
            .unwrap_or_else(|e| e.into_inner());
        s.0
    }

    /// Whether a successor is ready.
    pub fn is_set(&self) -> bool {
        self.inner.exit.is_set()
    }
}

impl Future for ExitSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.inner.exit.lock();
        if s.0 {
            s.1.remove(&self.id);
            return Poll::Ready(());
        }
        s.1.insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for ExitSignal {
    fn drop(&mut self) {
        let mut s = self.inner.exit.lock();
        s.1.remove(&self.id);
    }
}
