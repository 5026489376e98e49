//! Signals to handover, one event per delivery.
//!
//! tokio's signal streams coalesce: two deliveries before the task runs are
//! seen once, so "a second SIGTERM kills at once" could wait the whole stop
//! timeout. Here each signal has a socket pair whose write end gets one byte
//! per delivery from the handler (`signal_hook::low_level::pipe`); each byte
//! read becomes one [`Event::Signal`]. (Two deliveries of the same signal
//! while it is blocked in every thread are merged by the kernel itself; a
//! handler is installed for each, so that happens only within the handler.)

use handover::child::Signal;
use tokio::io::AsyncReadExt;
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

/// Installs the handlers; from here on these signals are events (their
/// default actions would kill handover and orphan a starting generation).
pub(super) fn install(events: &mpsc::UnboundedSender<Event>) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("installing a signal handler: {e}");
    for signal in HANDLED {
        let (read, write) = std::os::unix::net::UnixStream::pair().map_err(fail)?;
        read.set_nonblocking(true).map_err(fail)?;
        signal_hook::low_level::pipe::register(signal.as_raw(), write).map_err(fail)?;
        let mut read = tokio::net::UnixStream::from_std(read).map_err(fail)?;
        let events = events.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        for _ in 0..n {
                            if events.send(Event::Signal(signal)).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
    }
    Ok(())
}
