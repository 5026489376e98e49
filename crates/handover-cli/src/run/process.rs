//! The processes `handover run` starts: generations (with the sockets, the
//! notify socket, a process group of their own and the death signal) and
//! `exec:` readiness probes. Both are spawned on the runtime's thread (the
//! main thread, which lives as long as handover: the death signal fires when
//! the thread that forked a child exits) and reaped by the [`Reaper`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use tokio::sync::{mpsc, oneshot};

use handover::activation::Activation;
use handover::child::ChildConfig;

use super::config::Config;
use super::machine::Event;
use super::reaper::{KillGroupOnDrop, Reaper, Waiter};
use super::sockets::Socket;

/// How long one run of a readiness probe may take before it is killed.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause between two runs of a readiness probe.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Starts generation `id` and registers it with the reaper. Returns its pid
/// and the read end of its stderr pipe (for [`Pumps::start`]).
pub(super) fn spawn_generation(
    id: u64,
    config: &Config,
    sockets: &[Socket],
    notify_env: &OsString,
    reaper: &Reaper,
) -> Result<(u32, Option<OwnedFd>), String> {
    let mut cmd = Command::new(&config.program[0]);
    cmd.args(&config.program[1..])
        .env("NOTIFY_SOCKET", notify_env)
        .env("HANDOVER_GENERATION", id.to_string())
        .env_remove(handover::reexec::PID_ENV)
        .env_remove(handover::reexec::FDS_ENV)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut activation = Activation::new();
    for s in sockets {
        activation
            .fd(&s.name, s.fd.as_fd())
            .map_err(|e| e.to_string())?;
    }
    let spawner = ChildConfig::new()
        .process_group(true)
        .death_signal(config.orphan_signal);
    let (pid, mut child) = reaper
        .spawn(Waiter::Generation, || {
            spawner.spawn_unsupervised(cmd, &activation)
        })
        .map_err(|e| e.to_string())?;
    let pipe = child.stderr.take().map(OwnedFd::from);
    // Dropping a std Child neither waits for nor kills the process: the
    // reaper owns it.
    drop(child);
    Ok((pid, pipe))
}

/// The generations' stderr pipes, each copied by a thread of its own (a
/// pump), and the means to stop every pump at once without losing a byte:
/// a re-exec stops them (no thread may be left to take a signal or a
/// half-copied line with it), keeps the pipes open across the exec, and the
/// new image starts pumping them again.
#[derive(Default)]
pub(super) struct Pumps {
    /// By generation: the pipe's read end, and its pump while it runs (it
    /// returns `true` when stopped, `false` at end of file).
    pipes: HashMap<u64, (Arc<OwnedFd>, Option<JoinHandle<bool>>)>,
    /// A byte in this pipe stops every pump (read end, write end).
    stop: Option<(Arc<OwnedFd>, OwnedFd)>,
    /// The byte is in the pipe.
    stopping: bool,
}

/// How long [`Pumps::stop_all`] waits for the pumps (one stuck writing to
/// a full stderr of handover's may not stop at once).
const PUMP_STOP: Duration = Duration::from_secs(1);

impl Pumps {
    fn stop_pipe(&mut self) -> std::io::Result<Arc<OwnedFd>> {
        if self.stop.is_none() {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
            self.stop = Some((Arc::new(r), w));
        }
        Ok(self.stop.as_ref().expect("just set").0.clone())
    }

    /// Starts copying generation `id`'s stderr `pipe`.
    pub(super) fn start(&mut self, id: u64, pipe: OwnedFd, events: &mpsc::UnboundedSender<Event>) {
        let pipe = Arc::new(pipe);
        let pump = self.spawn(id, &pipe, events);
        self.pipes.insert(id, (pipe, pump));
    }

    fn spawn(
        &mut self,
        id: u64,
        pipe: &Arc<OwnedFd>,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Option<JoinHandle<bool>> {
        let stop = match self.stop_pipe() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not start the stderr reader");
                return None;
            }
        };
        let (pipe, events) = (pipe.clone(), events.clone());
        std::thread::Builder::new()
            .name(format!("stderr-{id}"))
            .spawn(move || pump(&pipe, &stop, id, &events))
            .map_err(|e| tracing::warn!(error = %e, "could not start the stderr reader"))
            .ok()
    }

    /// Generation `id`'s stderr reached end of file: its pipe is closed.
    pub(super) fn closed(&mut self, id: u64) {
        if let Some((_, Some(pump))) = self.pipes.remove(&id) {
            let _ = pump.join();
        }
    }

    /// Stops every pump, each after copying what it read; waits up to
    /// [`PUMP_STOP`]. `false` if some did not stop in time.
    pub(super) fn stop_all(&mut self) -> bool {
        let Some((_, w)) = &self.stop else {
            return true;
        };
        if !self.stopping {
            if rustix::io::write(w, b"s").is_err() {
                return false;
            }
            self.stopping = true;
        }
        let deadline = std::time::Instant::now() + PUMP_STOP;
        let mut all = true;
        for (id, (_, pump)) in self.pipes.iter_mut() {
            let Some(p) = pump.take() else {
                continue;
            };
            while !p.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            if p.is_finished() {
                // At end of file its StderrClosed event is on its way.
                let _ = p.join();
            } else {
                tracing::warn!(generation = id, "the stderr reader did not stop in time");
                *pump = Some(p);
                all = false;
            }
        }
        all
    }

    /// After [`Pumps::stop_all`], when handover does not exec after all:
    /// every pipe is pumped again.
    pub(super) fn restart_all(&mut self, events: &mpsc::UnboundedSender<Event>) {
        if let (Some((r, _)), true) = (&self.stop, self.stopping) {
            let mut b = [0u8; 1];
            let _ = rustix::io::read(&**r, &mut b);
            self.stopping = false;
        }
        let ids: Vec<u64> = self
            .pipes
            .iter()
            .filter(|(_, (_, p))| p.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let pipe = self.pipes[&id].0.clone();
            let pump = self.spawn(id, &pipe, events);
            if let Some(entry) = self.pipes.get_mut(&id) {
                entry.1 = pump;
            }
        }
    }

    /// The pipes, by generation (to keep across an exec).
    pub(super) fn pipes(&self) -> impl Iterator<Item = (u64, &Arc<OwnedFd>)> {
        self.pipes.iter().map(|(&id, (p, _))| (id, p))
    }
}

/// Copies a generation's stderr to handover's, line by line, and sends the
/// lines to the machine (which keeps the last ones for error reports). A
/// thread, so that a blocked stderr of handover's stalls only this copy.
/// Returns `true` when a byte in `stop` ended it, `false` at end of file
/// (after sending [`Event::StderrClosed`]).
fn pump(pipe: &OwnedFd, stop: &OwnedFd, id: u64, events: &mpsc::UnboundedSender<Event>) -> bool {
    {
        let mut buf = vec![0u8; 8192];
        let mut partial: Vec<u8> = Vec::new();
        loop {
            let mut fds = [
                PollFd::new(pipe, PollFlags::IN),
                PollFd::new(stop, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
            if !fds[1].revents().is_empty() {
                // Stopped between two reads: what is unread stays in the
                // pipe for whoever pumps it next.
                if !partial.is_empty() {
                    let lines = vec![String::from_utf8_lossy(&partial).trim_end().to_string()];
                    let _ = events.send(Event::Stderr { id, lines });
                }
                return true;
            }
            let n = match rustix::io::read(pipe, &mut buf) {
                Ok(0) => break,
                Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => continue,
                Err(_) => break,
                Ok(n) => n,
            };
            let _ = std::io::stderr().write_all(&buf[..n]);
            partial.extend_from_slice(&buf[..n]);
            let mut lines = Vec::new();
            while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            // A very long line without a newline is cut, not buffered for ever.
            if partial.len() > 64 * 1024 {
                lines.push(String::from_utf8_lossy(&partial).into_owned());
                partial.clear();
            }
            if !lines.is_empty() {
                let _ = events.send(Event::Stderr { id, lines });
            }
        }
        if !partial.is_empty() {
            let lines = vec![String::from_utf8_lossy(&partial).trim_end().to_string()];
            let _ = events.send(Event::Stderr { id, lines });
        }
        let _ = events.send(Event::StderrClosed { id });
        false
    }
}

/// Runs the readiness probe for generation `id` (pid `pid`) until it exits
/// 0, then sends [`Event::ProbePassed`]. Each run gets [`PROBE_TIMEOUT`];
/// dropping the future (the probing was cancelled) kills a run in progress.
pub(super) async fn probe_until_ok(
    reaper: Arc<Reaper>,
    command: String,
    id: u64,
    pid: u32,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &command])
            .env("HANDOVER_PID", pid.to_string())
            .env("HANDOVER_GENERATION", id.to_string())
            .env_remove(handover::reexec::PID_ENV)
            .env_remove(handover::reexec::FDS_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0);
        let (tx, rx) = oneshot::channel();
        match reaper.spawn_command(Waiter::Probe(tx), cmd) {
            Ok((probe, child)) => {
                drop(child);
                let _kill = KillGroupOnDrop {
                    reaper: &reaper,
                    pgid: probe,
                };
                match tokio::time::timeout(PROBE_TIMEOUT, rx).await {
                    Ok(Ok(status)) if status.success() => {
                        tracing::debug!(generation = id, "readiness probe passed");
                        let _ = events.send(Event::ProbePassed { id });
                        return;
                    }
                    Ok(Ok(status)) => {
                        tracing::debug!(generation = id, %status, "readiness probe not yet")
                    }
                    Ok(Err(_)) => return,
                    Err(_) => tracing::warn!(
                        generation = id,
                        timeout = ?PROBE_TIMEOUT,
                        "the readiness probe did not exit in time; killed it"
                    ),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot run the readiness probe (sh -c)"),
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
