//! The crate's one waiting primitive: a one-shot [`Event`] that threads
//! block on and futures await (for any async runtime), and [`background`],
//! which runs a blocking job on a thread of its own behind a future.
//!
//! Used by `child` (the exit report, the async kill and stop), `pass` (the
//! server's "closed" signal) and `upgrade` (the exit signal, the async
//! upgrade).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// A value set once, waited for by threads ([`wait`](Event::wait)) and by
/// futures ([`Wait`]).
pub(crate) struct Event<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
}

struct State<T> {
    value: Option<T>,
    /// The wakers of pending futures, by their slot id.
    wakers: Vec<(u64, Waker)>,
    next_id: u64,
}

impl<T> Default for Event<T> {
    fn default() -> Self {
        Event {
            state: Mutex::new(State {
                value: None,
                wakers: Vec::new(),
                next_id: 0,
            }),
            cond: Condvar::new(),
        }
    }
}

impl<T: Clone> Event<T> {
    /// A new event, not set.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Every update is one assignment, so a panic elsewhere while holding
    /// the lock leaves the state consistent: poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the value and wakes every waiter, unless it was set before (the
    /// first value stays). Returns whether this call set it.
    pub(crate) fn set(&self, value: T) -> bool {
        let mut s = self.lock();
        if s.value.is_some() {
            return false;
        }
        s.value = Some(value);
        for (_, w) in s.wakers.drain(..) {
            w.wake();
        }
        self.cond.notify_all();
        true
    }

    /// The value, once set.
    #[cfg(test)]
    pub(crate) fn get(&self) -> Option<T> {
        self.lock().value.clone()
    }

    /// Whether it is set.
    pub(crate) fn is_set(&self) -> bool {
        self.lock().value.is_some()
    }

    /// Blocks until it is set.
    pub(crate) fn wait(&self) -> T {
        let s = self.lock();
        let s = self
            .cond
            .wait_while(s, |s| s.value.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        s.value
            .clone()
            .expect("wait_while returns once the value is set")
    }

    /// Blocks until it is set or `timeout` has passed (`None`).
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<T> {
        let s = self.lock();
        let (s, _) = self
            .cond
            .wait_timeout_while(s, timeout, |s| s.value.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        s.value.clone()
    }

    /// The poll of a future waiting under `slot` (its waker is registered,
    /// or updated, until the value is set).
    fn poll(&self, slot: &mut Option<u64>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.lock();
        if let Some(v) = &s.value {
            return Poll::Ready(v.clone());
        }
        let id = match *slot {
            Some(id) => id,
            None => {
                let id = s.next_id;
                s.next_id += 1;
                *slot = Some(id);
                id
            }
        };
        match s.wakers.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) if w.will_wake(cx.waker()) => {}
            Some((_, w)) => *w = cx.waker().clone(),
            None => s.wakers.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// Drops the waker of a future that goes away.
    fn forget(&self, slot: u64) {
        self.lock().wakers.retain(|(i, _)| *i != slot);
    }
}

/// A future of an [`Event`]'s value. Cloning gives an independent waiter.
pub(crate) struct Wait<T: Clone> {
    event: Arc<Event<T>>,
    slot: Option<u64>,
}

impl<T: Clone> Wait<T> {
    /// A future that resolves to `event`'s value.
    pub(crate) fn new(event: Arc<Event<T>>) -> Self {
        Wait { event, slot: None }
    }

    /// The event waited for.
    pub(crate) fn event(&self) -> &Event<T> {
        &self.event
    }
}

impl<T: Clone> Clone for Wait<T> {
    fn clone(&self) -> Self {
        Wait::new(Arc::clone(&self.event))
    }
}

impl<T: Clone> Future for Wait<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        this.event.poll(&mut this.slot, cx)
    }
}

impl<T: Clone> Drop for Wait<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.event.forget(slot);
        }
    }
}

/// Runs `job` on a thread of its own (named `name`); the future resolves to
/// its result, for any async runtime (the thread wakes it). The job runs to
/// its end even if the future is dropped; a panic in it resumes in the
/// future's poll. When no thread can be started, the job runs at once in
/// the caller (blocking, but nothing is lost).
pub(crate) fn background<T: Send + 'static>(
    name: &str,
    job: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = T> + Send + 'static {
    type Outcome<T> = Mutex<Option<std::thread::Result<T>>>;
    let result: Arc<Outcome<T>> = Arc::new(Mutex::new(None));
    let done: Arc<Event<()>> = Arc::new(Event::new());
    let run = {
        let (result, done) = (Arc::clone(&result), Arc::clone(&done));
        move || {
            let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            *result.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
            done.set(());
        }
    };
    // Shared so that, if no thread can be started, the job runs right here.
    let run = Arc::new(Mutex::new(Some(run)));
    let for_thread = Arc::clone(&run);
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let job = for_thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(job) = job {
                job();
            }
        });
    if started.is_err() {
        let job = run.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(job) = job {
            job();
        }
    }
    let mut wait = Wait::new(done);
    std::future::poll_fn(move |cx| match Pin::new(&mut wait).poll(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(()) => match result.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(Ok(v)) => Poll::Ready(v),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => panic!("a background job's result was taken twice (polled after Ready)"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker that counts its wakes.
    fn counting_waker() -> (Waker, Arc<std::sync::atomic::AtomicUsize>) {
        struct W(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for W {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Waker::from(Arc::new(W(Arc::clone(&n)))), n)
    }

    #[test]
    fn set_once_wakes_threads_and_futures() {
        let ev = Arc::new(Event::new());
        let (waker, woken) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut a = Wait::new(Arc::clone(&ev));
        let mut b = a.clone();
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        // Polling again does not register twice.
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert_eq!(ev.wait_timeout(Duration::from_millis(10)), None);
        let thread = {
            let ev = Arc::clone(&ev);
            std::thread::spawn(move || ev.wait())
        };
        assert!(ev.set(7u32));
        assert!(!ev.set(8), "the first value stays");
        assert_eq!(thread.join().unwrap(), 7);
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(Pin::new(&mut a).poll(&mut cx), Poll::Ready(7));
        assert_eq!(ev.get(), Some(7));
        drop((a, b));
        assert!(ev.lock().wakers.is_empty());
    }

    #[test]
    fn dropped_futures_leave_no_waker() {
        let ev = Arc::new(Event::<()>::new());
        let (waker, _) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut w = Wait::new(Arc::clone(&ev));
        assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        assert_eq!(ev.lock().wakers.len(), 1);
        drop(w);
        assert!(ev.lock().wakers.is_empty());
    }

    #[test]
    fn background_jobs_resolve_and_carry_panics() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(background("t", || 40 + 2)), 42);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(background("t", || -> u8 { panic!("boom") }))
        }));
        assert!(panicked.is_err());
    }
}
