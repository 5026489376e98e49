//! The processes `handover run` starts: generations (with the sockets, the
//! notify socket, a process group of their own and the death signal) and
//! readiness probes (`exec:` commands, `http:` requests). Both are spawned on the runtime's thread (the
//! main thread, which lives as long as handover: the death signal fires when
//! the thread that forked a child exits) and reaped by the [`Reaper`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};

use tokio::sync::{mpsc, oneshot};

use handover::activation::Activation;
use handover::child::ChildConfig;
use handover::process::{Command, Stdio};

use super::config::{Config, ReadyMode};
use super::machine::{Event, ProbeOutcome};
use super::procfs;
use super::reaper::{KillGroupOnDrop, Reaper, Waiter};
use super::sockets::Socket;

/// How long one run of a readiness probe may take before it is killed.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause between two runs of a readiness probe (they run until the
/// generation is current, or its in-place reload done).
pub(super) const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Where generations meet to hand keep-alive connections over
/// (`HANDOVER_HANDOFF_SOCKET`, see `handover::drain::http::Handoff::listen_at`):
/// next to the notify socket, in the supervisor's private socket directory,
/// named after the supervisor's pid (which a re-exec keeps). The newest
/// generation that takes connections binds it; handover itself never does.
pub(super) fn handoff_socket_path(notify_env: &OsString) -> OsString {
    let notify = std::path::Path::new(notify_env);
    let dir = notify.parent().unwrap_or(std::path::Path::new("."));
    dir.join(format!("handoff-{}.sock", std::process::id()))
        .into_os_string()
}

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
        .env(
            handover::drain::http::HANDOFF_SOCKET_ENV,
            handoff_socket_path(notify_env),
        )
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
    // Dropping a Process neither waits for nor kills the process: the
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

/// Runs readiness probe `index` of generation `id` (main pid `pid`) again
/// and again, each run's outcome an [`Event::ProbeResult`], until the task is
/// aborted ([`Action::CancelProbe`](super::machine::Action::CancelProbe)) or
/// an `exec:` probe passed; dropping it kills an `exec:` run in progress.
pub(super) async fn probe(
    reaper: Arc<Reaper>,
    id: u64,
    pid: u32,
    index: usize,
    mode: ReadyMode,
    target: Option<Target>,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let (outcome, again_soon) = match (&mode, &target) {
            (ReadyMode::Exec(command), _) => (exec_once(&reaper, command, id, pid).await, false),
            (ReadyMode::Http { path, .. }, Some(target)) => {
                let (target, path) = (target.clone(), path.clone());
                tokio::task::spawn_blocking(move || http_once(&target, pid, &path))
                    .await
                    .unwrap_or_else(|e| (ProbeOutcome::Fail(format!("could not run: {e}")), false))
            }
            _ => return,
        };
        tracing::debug!(generation = id, probe = %mode, ?outcome, "readiness probe");
        // An exec: probe cannot tell "the old generation answered" from a
        // failure (both generations serve the socket until the settle window
        // is over): its first pass is final. An http: probe goes on (it
        // knows who answered), so a failure while settling counts.
        let done = matches!(mode, ReadyMode::Exec(_)) && outcome == ProbeOutcome::Pass;
        if events
            .send(Event::ProbeResult { id, index, outcome })
            .is_err()
            || done
        {
            return;
        }
        tokio::time::sleep(if again_soon {
            PROBE_AGAIN_SOON
        } else {
            PROBE_INTERVAL
        })
        .await;
    }
}

/// One run of an `exec:` probe: `sh -c COMMAND` in a process group of its
/// own, with `HANDOVER_PID` and `HANDOVER_GENERATION`; killed (the whole
/// group) after [`PROBE_TIMEOUT`].
async fn exec_once(reaper: &Reaper, command: &str, id: u64, pid: u32) -> ProbeOutcome {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", command])
        .env("HANDOVER_PID", pid.to_string())
        .env("HANDOVER_GENERATION", id.to_string())
        .env_remove(handover::reexec::PID_ENV)
        .env_remove(handover::reexec::FDS_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    let (tx, rx) = oneshot::channel();
    let (probe, child) = match reaper.spawn_command(Waiter::Probe(tx), cmd) {
        Ok(spawned) => spawned,
        Err(e) => return ProbeOutcome::Fail(format!("could not be started (sh -c): {e}")),
    };
    drop(child);
    let _kill = KillGroupOnDrop {
        reaper,
        pgid: probe,
    };
    match tokio::time::timeout(PROBE_TIMEOUT, rx).await {
        Ok(Ok(status)) if status.success() => ProbeOutcome::Pass,
        Ok(Ok(status)) => ProbeOutcome::Fail(status.to_string()),
        Ok(Err(_)) => ProbeOutcome::Unsure("its exit status was lost".into()),
        Err(_) => ProbeOutcome::Fail(format!(
            "did not exit within {}; killed it",
            crate::duration::format(PROBE_TIMEOUT)
        )),
    }
}

/// Where an `http:` probe connects: one of handover's listening sockets.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// A TCP listener (a wildcard address is reached on loopback).
    Tcp(std::net::SocketAddr),
    /// A Unix stream listener (a path or an abstract name).
    Unix(rustix::net::SocketAddrUnix),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "tcp://{a}"),
            Target::Unix(u) => match (u.path_bytes(), u.abstract_name()) {
                (Some(p), _) => write!(f, "unix:{}", String::from_utf8_lossy(p)),
                (_, Some(n)) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
                _ => f.write_str("unix:(unnamed)"),
            },
        }
    }
}

/// The socket an `http:` probe connects to: the one named `name`, or the
/// first stream listener.
pub(super) fn probe_target(sockets: &[Socket], name: Option<&str>) -> Result<Target, String> {
    let streams: Vec<&Socket> = sockets
        .iter()
        .filter(|s| {
            rustix::net::sockopt::socket_type(&s.fd)
                .is_ok_and(|t| t == rustix::net::SocketType::STREAM)
        })
        .collect();
    let names = || {
        streams
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let socket = match name {
        Some(n) => streams.iter().find(|s| s.name == n).ok_or_else(|| {
            format!(
                "--ready http:{n}/...: no stream socket (tcp:// or unix:) is named {n:?}; \
                 expected one of: {}",
                names()
            )
        })?,
        None => streams.first().ok_or_else(|| {
            "--ready http:PATH needs a stream socket (a --bind tcp:// or unix:) to probe; \
             there is none"
                .to_string()
        })?,
    };
    let addr = rustix::net::getsockname(&socket.fd)
        .map_err(|e| format!("socket {:?}: getsockname: {e}", socket.name))?;
    if let Ok(a) = std::net::SocketAddr::try_from(addr.clone()) {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        return Ok(Target::Tcp(std::net::SocketAddr::new(ip, a.port())));
    }
    rustix::net::SocketAddrUnix::try_from(addr)
        .map(Target::Unix)
        .map_err(|_| format!("socket {:?} is neither TCP nor Unix", socket.name))
}

/// How long an `http:` probe waits for some process to accept its
/// connection.
const ACCEPT_WAIT: Duration = Duration::from_secs(2);

/// After another generation accepted the probe connection: try again this
/// soon.
const PROBE_AGAIN_SOON: Duration = Duration::from_millis(20);

/// One run of an `http:` probe: connect, wait until a process accepts the
/// connection and check (with the kernel's `sock_diag`) that it belongs to
/// process group `pgid`; only then send `GET path` and require a 2xx
/// status. The second value: try again soon (another generation took it).
fn http_once(target: &Target, pgid: u32, path: &str) -> (ProbeOutcome, bool) {
    use std::os::unix::fs::MetadataExt;
    let diag = match procfs::Diag::open() {
        Ok(d) => d,
        Err(e) => return (cannot_tell(e), false),
    };
    let failed = |what: &str, e: std::io::Error| {
        (
            ProbeOutcome::Fail(format!("could not {what} {target}: {e}")),
            false,
        )
    };
    match target {
        Target::Tcp(addr) => {
            let stream = match std::net::TcpStream::connect_timeout(addr, PROBE_CONNECT) {
                Ok(s) => s,
                Err(e) => return failed("connect to", e),
            };
            let (Ok(local), Ok(server)) = (stream.local_addr(), stream.peer_addr()) else {
                return (
                    ProbeOutcome::Unsure("the connection closed at once".into()),
                    false,
                );
            };
            if let Err(e) = accepted_by(pgid, || diag.tcp_server_inode(server, local)) {
                return e;
            }
            (exchange(stream, &addr.to_string(), path), false)
        }
        Target::Unix(addr) => {
            let fd = match rustix::net::socket(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                None,
            ) {
                Ok(fd) => fd,
                Err(e) => return failed("connect to", e.into()),
            };
            // A full accept queue blocks a Unix connect: bounded.
            let _ = rustix::net::sockopt::set_socket_timeout(
                &fd,
                rustix::net::sockopt::Timeout::Send,
                Some(PROBE_CONNECT),
            );
            if let Err(e) = rustix::net::connect(&fd, addr) {
                return failed("connect to", e.into());
            }
            let mine = match std::fs::metadata(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            )) {
                Ok(m) => m.ino(),
                Err(e) => return (cannot_tell(e), false),
            };
            if let Err(e) = accepted_by(pgid, || diag.unix_peer_inode(mine)) {
                return e;
            }
            (
                exchange(std::os::unix::net::UnixStream::from(fd), "localhost", path),
                false,
            )
        }
    }
}

/// How long an `http:` probe may take to connect.
const PROBE_CONNECT: Duration = Duration::from_secs(2);

fn cannot_tell(e: std::io::Error) -> ProbeOutcome {
    ProbeOutcome::Fail(format!(
        "cannot ask the kernel which process accepted its connection (sock_diag netlink: {e}); \
         use --ready exec:COMMAND instead"
    ))
}

/// Waits until the connection whose server side `lookup` finds was
/// accepted, then checks that a process of group `pgid` holds it.
fn accepted_by(
    pgid: u32,
    lookup: impl Fn() -> std::io::Result<Option<u64>>,
) -> Result<(), (ProbeOutcome, bool)> {
    let deadline = std::time::Instant::now() + ACCEPT_WAIT;
    let inode = loop {
        match lookup() {
            Ok(Some(inode)) if inode != 0 => break inode,
            Ok(_) => {}
            Err(e) => return Err((cannot_tell(e), false)),
        }
        if std::time::Instant::now() >= deadline {
            return Err((
                ProbeOutcome::Unsure(format!(
                    "no process accepted its connection within {}",
                    crate::duration::format(ACCEPT_WAIT)
                )),
                false,
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // The inode exists from accept(); the descriptor lands in the process's
    // table a moment later: look twice more before saying "not ours".
    for _ in 0..3 {
        if procfs::group_holds(pgid, inode) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err((
        ProbeOutcome::Unsure(
            "another generation accepted its connection (generations share the listening \
             socket); trying again"
                .into(),
        ),
        true,
    ))
}

/// Sends `GET path` on `stream` and reads the status line: 2xx passes.
fn exchange<S: Read + Write + AsFd>(mut stream: S, host: &str, path: &str) -> ProbeOutcome {
    let fd = stream.as_fd();
    for which in [
        rustix::net::sockopt::Timeout::Recv,
        rustix::net::sockopt::Timeout::Send,
    ] {
        let _ = rustix::net::sockopt::set_socket_timeout(fd, which, Some(PROBE_TIMEOUT));
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: handover-ready-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return ProbeOutcome::Fail(format!("could not send its request: {e}"));
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.contains(&b'\n') && got.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return ProbeOutcome::Fail(format!(
                    "got no answer within {}",
                    crate::duration::format(PROBE_TIMEOUT)
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return ProbeOutcome::Fail(format!("got no answer: {e}")),
        }
    }
    if got.is_empty() {
        return ProbeOutcome::Fail("closed the connection without an answer".into());
    }
    status_outcome(&got)
}

/// The outcome for the first line of an HTTP answer.
fn status_outcome(answer: &[u8]) -> ProbeOutcome {
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim_end().to_string();
    let mut parts = line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    match (version, code.and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => {
            if (200..300).contains(&code) {
                ProbeOutcome::Pass
            } else {
                ProbeOutcome::Fail(format!("answered {code} {reason}").trim_end().to_string())
            }
        }
        _ => {
            let shown: String = line.chars().take(80).collect();
            ProbeOutcome::Fail(format!("answered something that is not HTTP: {shown:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_answer_is_an_outcome(answer in proptest::collection::vec(proptest::num::u8::ANY, 0..100)) {
            let _ = status_outcome(&answer);
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_outcome(b"HTTP/1.1 200 OK\r\n"), ProbeOutcome::Pass);
        assert_eq!(
            status_outcome(b"HTTP/1.0 204 No Content\r\n\r\n"),
            ProbeOutcome::Pass
        );
        assert_eq!(
            status_outcome(b"HTTP/1.1 503 Service Unavailable\r\n"),
            ProbeOutcome::Fail("answered 503 Service Unavailable".into())
        );
        assert_eq!(
            status_outcome(b"HTTP/1.1 302\r\n"),
            ProbeOutcome::Fail("answered 302".into())
        );
        assert!(matches!(
            status_outcome(b"SSH-2.0-OpenSSH\r\n"),
            ProbeOutcome::Fail(e) if e.contains("not HTTP")
        ));
    }
}
