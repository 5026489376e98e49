//! The processes `handover run` starts: generations (with the sockets, the
//! notify socket, a process group of their own and the death signal) and
//! `exec:` readiness probes. Both are spawned on the runtime's thread (the
//! main thread, which lives as long as handover: the death signal fires when
//! the thread that forked a child exits) and reaped by the [`Reaper`].

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use handover::activation::Activation;
use handover::child::ChildConfig;
use handover::process::{Command, Stdio};

use super::config::Config;
use super::machine::Event;
use super::reaper::{KillGroupOnDrop, Reaper, Waiter};
use super::sockets::Socket;

/// How long one run of a readiness probe may take before it is killed.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause between two runs of a readiness probe.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Starts generation `id` and registers it with the reaper. Returns its pid.
pub(super) fn spawn_generation(
    id: u64,
    config: &Config,
    sockets: &[Socket],
    notify_env: &OsString,
    reaper: &Reaper,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<u32, String> {
    let mut cmd = Command::new(&config.program[0]);
    cmd.args(&config.program[1..])
        .env("NOTIFY_SOCKET", notify_env)
        .env("HANDOVER_GENERATION", id.to_string())
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
    if let Some(pipe) = child.stderr.take() {
        pump_stderr(pipe, id, events.clone());
    }
    // Dropping a Process neither waits for nor kills the process: the
    // reaper owns it.
    drop(child);
    Ok(pid)
}

/// Copies a generation's stderr to handover's, line by line, and sends the
/// lines to the machine (which keeps the last ones for error reports). A
/// thread, so that a blocked stderr of handover's stalls only this copy.
fn pump_stderr(pipe: std::process::ChildStderr, id: u64, events: mpsc::UnboundedSender<Event>) {
    let spawned = std::thread::Builder::new()
        .name(format!("stderr-{id}"))
        .spawn(move || {
            let mut pipe = pipe;
            let mut buf = vec![0u8; 8192];
            let mut partial: Vec<u8> = Vec::new();
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
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
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the stderr reader");
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
