//! The async facade: [`ExitFuture`]. (Kills and stops run on a thread of
//! their own behind a future, with [`crate::sync::background`].)

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::Report;
use super::supervise::Shared;
use crate::sync::Wait;

/// Resolves to the child's [`Report`] once it has ended. Made by
/// [`Child::exit`](super::Child::exit); needs no particular async runtime.
pub struct ExitFuture {
    pub(super) shared: Arc<Shared>,
    pub(super) wait: Wait<Report>,
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
            wait: self.wait.clone(),
        }
    }
}

impl Future for ExitFuture {
    type Output = Report;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Report> {
        Pin::new(&mut self.get_mut().wait).poll(cx)
    }
}
