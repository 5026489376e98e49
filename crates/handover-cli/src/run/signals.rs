//! Signals to handover, one event per delivery.
//!
//! tokio's signal streams coalesce: two deliveries before the task runs are
//! seen once, so "a second SIGTERM kills at once" could wait the whole stop
//! timeout. Here each signal has a socket pair whose write end gets one byte
//! per delivery from the handler (`signal_hook::low_level::pipe`); each byte
//! read becomes one [`Event::Signal`]. (Two deliveries of the same signal
//! while it is blocked in every thread are merged by the kernel itself; a
//! handler is installed for each, so that happens only within the handler.)

use std::sync::Arc;

use handover::child::Signal;
use tokio::sync::mpsc;

use super::machine::Event;

/// The signals handover handles: SIGHUP reloads, SIGTERM and SIGINT stop
/// (a second one kills), the others are forwarded to the current generation.
pub(super) const HANDLED: [Signal; 7] = [
    Signal::HUP,
    Signal::TERM,
    Signal::INT,
    Signal::USR1,
    Signal::USR2,
    Signal::WINCH,
    Signal::QUIT,
];

/// The read ends of the signal socket pairs, to take the deliveries that
/// are in them right now (before a re-exec, which closes the pairs).
#[derive(Default)]
pub(super) struct SignalPipes(Vec<(Signal, Arc<tokio::net::UnixStream>)>);

impl SignalPipes {
    /// The deliveries written so far and not yet read, in no particular
    /// order across signals.
    pub(super) fn drain(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        for (signal, read) in &self.0 {
            while let Ok(n) = read.try_read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend(std::iter::repeat_n(*signal, n));
            }
        }
        out
    }
}

/// Installs the handlers; from here on these signals are events (their
/// default actions would kill handover and orphan a starting generation).
pub(super) fn install(events: &mpsc::UnboundedSender<Event>) -> Result<SignalPipes, String> {
    let fail = |e: std::io::Error| format!("installing a signal handler: {e}");
    let mut pipes = Vec::new();
    for signal in HANDLED {
        let (read, write) = std::os::unix::net::UnixStream::pair().map_err(fail)?;
        read.set_nonblocking(true).map_err(fail)?;
        signal_hook::low_level::pipe::register(signal.as_raw(), write).map_err(fail)?;
        let read = Arc::new(tokio::net::UnixStream::from_std(read).map_err(fail)?);
        pipes.push((signal, read.clone()));
        let events = events.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                if read.readable().await.is_err() {
                    return;
                }
                match read.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        for _ in 0..n {
                            if events.send(Event::Signal(signal)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        });
    }
    Ok(SignalPipes(pipes))
}
