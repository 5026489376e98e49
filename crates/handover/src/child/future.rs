//! The async facade: [`ExitFuture`], and running a blocking step on a thread
//! of its own for any runtime.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::Report;
use super::supervise::{Shared, relock};

/// Resolves to the child's [`Report`] once it has ended. Made by
/// [`Child::exit`]; needs no particular async runtime.
pub struct ExitFuture {
    pub(super) shared: Arc<Shared>,
    pub(super) id: Option<u64>,
}

impl fmt::Debug for ExitFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExitFuture")
            .field("label", &self.shared.label)
            .field("pid", &self.shared.pid_u32())
            .finish()
    }
}

impl Clone for ExitFuture {
    fn clone(&self) -> Self {
        ExitFuture {
            shared: Arc::clone(&self.shared),
            id: None,
        }
    }
}

impl Future for ExitFuture {
    type Output = Report;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Report> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        if let Some(report) = st.report {
            return Poll::Ready(report);
        }
        match this.id {
            Some(id) => {
                if let Some((_, w)) = st.wakers.iter_mut().find(|(i, _)| *i == id) {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                } else {
                    st.wakers.push((id, cx.waker().clone()));
                }
            }
            None => {
                let id = st.next_waker;
                st.next_waker += 1;
                st.wakers.push((id, cx.waker().clone()));
                this.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for ExitFuture {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.lock().wakers.retain(|(i, _)| *i != id);
        }
    }
}

/// The result slot of a [`background`] job.
struct Slot<T> {
    value: Option<std::thread::Result<T>>,
    waker: Option<Waker>,
}

/// Runs `job` on a thread of its own; the future resolves to its result.
pub(super) fn background<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = T> + Send + 'static {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        waker: None,
    }));
    let theirs = Arc::clone(&slot);
    let run = move || {
        let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        let mut s = relock(theirs.lock());
        s.value = Some(value);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    };
    // Shared so that, if no thread can be started, the job runs right here
    // (blocking, but correct) instead of being lost.
    let run = Arc::new(Mutex::new(Some(run)));
    let for_thread = Arc::clone(&run);
    let started = std::thread::Builder::new()
        .name("handover-child-kill".to_string())
        .spawn(move || {
            if let Some(run) = relock(for_thread.lock()).take() {
                run();
            }
        });
    if started.is_err()
        && let Some(run) = relock(run.lock()).take()
    {
        run();
    }
    std::future::poll_fn(move |cx| {
        let mut s = relock(slot.lock());
        match s.value.take() {
            Some(Ok(v)) => Poll::Ready(v),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
}
