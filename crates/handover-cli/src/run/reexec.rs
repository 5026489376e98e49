//! `handover reexec`: the supervisor replaces its own program in place.
//!
//! handover `execve`s the file at the path it was started from (a deploy
//! that replaced the file or swapped a symlink starts the new version) *in
//! the same process*: its pid stays, so do its children (the running
//! generations, which never notice), its listening sockets, its control and
//! notify sockets, and under systemd its unit's main pid. The old image
//! hands its state to the new one, which adopts the generations without
//! signalling them.
//!
//! # The steps
//!
//! 1. `{"cmd":"reexec"}` arrives. handover writes its state (below) and runs
//!    the new binary once as a child in check mode:
//!    `PROGRAM --reexec-check <handover's own arguments>` with the state on
//!    stdin. The check parses the arguments as the real exec will, reads the
//!    state (format and version, every field), and prints
//!    [`CHECK_OK`]; anything else (it exits at once, crashes, is an older
//!    handover that does not know the flag, hangs for [`CHECK_TIMEOUT`])
//!    answers the request with the reason, and the old image serves on.
//!    handover keeps supervising while the check runs.
//! 2. Check passed: readiness probes are killed (the new image runs them
//!    again), the stderr readers stop between two reads (what they did not
//!    read stays in the pipes), and handover's signals are blocked: one
//!    that arrives from here on waits (pending, kept across `execve`) until
//!    the new image has its handlers. Every event already on its way (an
//!    exit the reaper saw, a notify message, a signal) is handled.
//! 3. The state is written again, into a memfd, and handover `execve`s with
//!    the descriptors to keep ([`handover::reexec`]); every other descriptor
//!    is close-on-exec. `execve` runs on the main thread: the generations
//!    were spawned from it with `PR_SET_PDEATHSIG`, which an exec from
//!    another thread would fire (it ends the main thread first). If the
//!    exec fails, everything is undone and the request is answered with why.
//! 4. The new image finds the descriptors (`HANDOVER_REEXEC_FDS`), reads the
//!    state, registers the generations' pids with its reaper before it
//!    first reaps (a generation that exited meanwhile is a zombie until
//!    then), starts pumping their stderr again, installs its signal handlers
//!    and unblocks the signals, and answers the `reexec` request.
//!
//! Control clients are never dropped: each connection is registered as it
//! is accepted ([`crate::control::Clients`]), and the exec carries every
//! one that is not answered yet: one still sending its request goes on
//! being read, one whose request was read goes to the new image's
//! supervisor, one the supervisor owes an answer (a reload in progress,
//! the `reexec` itself) gets it from the new image, and one whose answer
//! was being written gets the rest. New connections wait in the control
//! socket's backlog meanwhile.
//!
//! # The state
//!
//! One JSON object ([`State`]), in a memfd kept as the descriptor named
//! `state`:
//!
//! | field | what |
//! |---|---|
//! | `format` | `"handover-reexec-state"` |
//! | `version` | [`VERSION`]; a reader refuses a newer one, with the reason |
//! | `written_by` | the `--version` of the image that wrote it |
//! | `pid` | handover's pid (the same after the exec) |
//! | `executable`, `argv` | what is executed, and its arguments |
//! | `started_unix_ms`, `reexecs` | when handover started; re-executions so far |
//! | `machine` | the supervisor's state machine (`run/machine.rs`): generations with their pids, process groups, states and deadlines (on `CLOCK_MONOTONIC`, which an exec keeps), counters, crash-restart backoff, and the ids of clients waiting for a reload or a stop |
//! | `sockets` | each listening socket: its `--bind` name, address, whether it was inherited, and the name of its descriptor |
//! | `control`, `notify` | the control socket (path) and the notify socket (its `NOTIFY_SOCKET` value), with their descriptors' names |
//! | `stderr` | each generation's stderr pipe (read end) |
//! | `clients` | each unanswered control client: its id, descriptor, and stage (`reading` with the bytes so far, `request` not yet handled, `waiting` for an answer the supervisor owes, `answering` with the bytes left to write) |
//! | `next_client` | the next client id |
//! | `reexec_replies`, `requested_at`, `check_ms`, `previous_version` | who asked for this re-exec, when, how long the check took, and the old version, for the answer |
//!
//! Fields added later must have defaults (`#[serde(default)]`), so that a
//! newer handover reads an older state; a reader ignores fields it does not
//! know, so an older one reads a newer state of the same version. A change
//! that an older reader would misread raises [`VERSION`].

use handover::process::{Command, Stdio};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use handover::activation::ListenFds;
use handover::notify::{Notifier, NotifySocket, State as SdState};
use handover::reexec::{Kept, Reexec, SignalHold, release_signals};

use super::config::Config;
use super::driver::Driver;
use super::machine::{Action, Event, GenState, Machine, Mono, Phase, ReplyId};
use super::reaper::{Reaper, Waiter};
use super::sockets::Socket;
use super::{RemoveOnDrop, listen_notify, signals, write_pid_file};
use crate::control::{self, Answer, Clients, Request, Stage};

/// The `format` field.
pub const FORMAT: &str = "handover-reexec-state";

/// The state format this handover writes and reads.
pub const VERSION: u32 = 1;

/// What the check mode prints when the new binary can take over.
pub const CHECK_OK: &str = "handover-reexec-check: ok";

/// How long the check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

/// The name of the state's descriptor.
const STATE_FD: &str = "state";

/// A listening socket in the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketState {
    /// The `--bind` name.
    pub name: String,
    /// Where it listens, for `status`.
    pub address: String,
    /// Whether the service manager passed it.
    pub inherited: bool,
    /// Its descriptor's name.
    pub fd: String,
}

/// The control socket in the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlState {
    /// Its path.
    pub path: PathBuf,
    /// Its descriptor's name.
    pub fd: String,
}

/// The notify socket in the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyState {
    /// The `NOTIFY_SOCKET` value the generations have.
    pub env: String,
    /// Its descriptor's name.
    pub fd: String,
}

/// A generation's stderr pipe in the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipeState {
    /// The generation.
    pub generation: u64,
    /// Its descriptor's name.
    pub fd: String,
}

/// Where a carried control client stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientStage {
    /// Its request is arriving: the bytes so far.
    Reading(Vec<u8>),
    /// Its request was read; the supervisor has not seen it.
    Request(Request),
    /// The supervisor owes it an answer (its id is in the machine, or it
    /// asked for this re-exec).
    Waiting(Request),
    /// What is left of its answer.
    Answering(Vec<u8>),
}

/// A carried control client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientState {
    /// Its id (the machine's `ReplyId`).
    pub id: u64,
    /// Its descriptor's name.
    pub fd: String,
    /// Where it stands.
    pub stage: ClientStage,
}

/// Everything a re-executed image needs (see the [module docs](self)).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The writer's `--version`.
    #[serde(default)]
    pub written_by: String,
    /// handover's pid.
    pub pid: u32,
    /// The program executed.
    pub executable: PathBuf,
    /// Its arguments (`argv`, with `argv[0]`).
    #[serde(default)]
    pub argv: Vec<String>,
    /// When handover started (wall clock, ms since the epoch).
    pub started_unix_ms: u128,
    /// Re-executions so far (this one included).
    #[serde(default)]
    pub reexecs: u64,
    /// The state machine.
    pub machine: Machine,
    /// The listening sockets, in `--bind` order.
    pub sockets: Vec<SocketState>,
    /// The control socket.
    pub control: ControlState,
    /// The notify socket.
    pub notify: NotifyState,
    /// The generations' stderr pipes.
    #[serde(default)]
    pub stderr: Vec<PipeState>,
    /// Unanswered control clients.
    #[serde(default)]
    pub clients: Vec<ClientState>,
    /// The next client id.
    #[serde(default)]
    pub next_client: u64,
    /// Clients that asked for this re-exec.
    #[serde(default)]
    pub reexec_replies: Vec<u64>,
    /// When this re-exec was asked for.
    #[serde(default)]
    pub requested_at: Option<Mono>,
    /// How long its check took, in ms.
    #[serde(default)]
    pub check_ms: f64,
    /// The version of the image that wrote this.
    #[serde(default)]
    pub previous_version: String,
}

impl State {
    /// Reads a state, refusing another format or a newer version with a
    /// reason that says what to do.
    pub fn parse(bytes: &[u8]) -> Result<State, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("the state is not JSON ({e})"))?;
        let format = value["format"].as_str().unwrap_or("");
        if format != FORMAT {
            return Err(format!(
                "the state's format is {format:?}, expected {FORMAT:?}: it was not written by \
                 `handover reexec`"
            ));
        }
        let Some(version) = value["version"].as_u64() else {
            return Err("the state has no version number".into());
        };
        if version != u64::from(VERSION) {
            let writer = value["written_by"]
                .as_str()
                .unwrap_or("an unknown handover");
            return Err(if version > u64::from(VERSION) {
                format!(
                    "the state is in format version {version} (written by handover {writer}), \
                     but this handover reads only version {VERSION}: it is older than the \
                     running one. Deploy a handover at least as new as the running one, or \
                     restart handover instead of re-executing it"
                )
            } else {
                format!(
                    "the state is in format version {version} (written by handover {writer}), \
                     which this handover no longer reads (it reads version {VERSION}). Upgrade \
                     through an intermediate release, or restart handover instead"
                )
            });
        }
        serde_json::from_value(value).map_err(|e| {
            format!("the state does not read as version {VERSION}: {e}; restart handover instead")
        })
    }
}

/// The path handover was started from: `argv[0]` made absolute (a name
/// without `/` looked up in `PATH`), symlinks kept, so that a swapped
/// symlink or a replaced file starts the new version. Falls back to the
/// running binary.
pub fn executable() -> PathBuf {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let p = Path::new(&argv0);
    if argv0.as_encoded_bytes().contains(&b'/') {
        // `./x` is `x`; symlinks are kept (not resolved).
        let joined = if p.is_absolute() {
            p.to_owned()
        } else {
            cwd.join(p)
        };
        return joined.components().collect();
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = if dir.as_os_str().is_empty() {
                cwd.join(p)
            } else if dir.is_absolute() {
                dir.join(p)
            } else {
                cwd.join(dir).join(p)
            };
            if rustix::fs::access(&c, rustix::fs::Access::EXEC_OK).is_ok() && c.is_file() {
                return c;
            }
        }
    }
    std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| p.to_owned())
}

/// The check mode: reads a state from stdin and says whether this binary
/// can take it over (`CHECK_OK` on stdout).
pub fn check(config: &Config) -> Result<String, String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the state from stdin: {e}"))?;
    let state = State::parse(&bytes)?;
    let have: Vec<&str> = state.sockets.iter().map(|s| s.name.as_str()).collect();
    for b in &config.binds {
        if !have.contains(&b.name.as_str()) {
            return Err(format!(
                "the running handover has no socket named {:?} for --bind {}={}: the arguments \
                 changed? A re-exec keeps the arguments; restart handover to change them",
                b.name, b.name, b.address
            ));
        }
    }
    Ok(format!(
        "{CHECK_OK} version={VERSION} generations={} sockets={}",
        state.machine.gens.len(),
        state.sockets.len()
    ))
}

/// How a check ended.
pub(super) struct Checked {
    result: Result<(), String>,
    took: Duration,
}

/// The re-exec bookkeeping of a running supervisor.
pub(super) struct Bookkeeping {
    /// What is executed.
    pub(super) executable: PathBuf,
    /// handover's own arguments.
    pub(super) argv: Vec<OsString>,
    /// Descriptors of the control and notify sockets (their owners are
    /// tasks), to keep across the exec.
    pub(super) control_fd: Option<OwnedFd>,
    pub(super) notify_fd: Option<OwnedFd>,
    /// Clients waiting for the re-exec in progress.
    waiters: Vec<ReplyId>,
    requested: Option<Mono>,
    checked_tx: mpsc::UnboundedSender<Checked>,
    pub(super) checked: mpsc::UnboundedReceiver<Checked>,
    /// Re-executions so far.
    pub(super) count: u64,
    /// The version of the image before, after a re-exec.
    pub(super) previous_version: Option<String>,
}

impl Default for Bookkeeping {
    fn default() -> Bookkeeping {
        let (checked_tx, checked) = mpsc::unbounded_channel();
        Bookkeeping {
            executable: executable(),
            argv: std::env::args_os().collect(),
            control_fd: None,
            notify_fd: None,
            waiters: Vec::new(),
            requested: None,
            checked_tx,
            checked,
            count: 0,
            previous_version: None,
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn memfd(name: &str, bytes: &[u8]) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

/// How a re-exec attempt ended without an exec.
enum NotDone {
    /// handover must exit (an event handled on the way said so).
    Exit(Result<(), String>),
    /// The exec did not happen; the reason.
    Failed(String),
}

impl Driver {
    /// `{"cmd":"reexec"}` from client `id`: starts the check (or joins the
    /// one running).
    pub(super) fn reexec_requested(&mut self, machine: &Machine, id: ReplyId) {
        if machine.phase != Phase::Running {
            self.reply(
                id,
                control::error_answer("handover is stopping; not re-executed"),
            );
            return;
        }
        self.reexec.waiters.push(id);
        if self.reexec.waiters.len() > 1 {
            return;
        }
        let now = Mono::now();
        self.reexec.requested = Some(now);
        tracing::info!(executable = %self.reexec.executable.display(), "re-exec requested: checking the new binary");
        let state = match self
            .state(machine, Vec::new(), now)
            .and_then(|s| serde_json::to_vec(&s).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => return self.reexec_failed(format!("cannot write the state: {e}")),
        };
        if let Err(e) = self.spawn_check(&state) {
            self.reexec_failed(e);
        }
    }

    /// Runs the new binary in check mode; its outcome arrives on
    /// `reexec.checked`.
    fn spawn_check(&mut self, state: &[u8]) -> Result<(), String> {
        let exe = self.reexec.executable.clone();
        let input = memfd("handover-state", state).map_err(|e| format!("memfd: {e}"))?;
        let output = memfd("handover-check", b"").map_err(|e| format!("memfd: {e}"))?;
        // handover::process never passes LISTEN_* on.
        let mut cmd = Command::new(&exe);
        cmd.arg("--reexec-check")
            .args(self.reexec.argv.iter().skip(1))
            .env_remove(handover::reexec::PID_ENV)
            .env_remove(handover::reexec::FDS_ENV)
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "error")
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(
                output.try_clone().map_err(|e| format!("memfd: {e}"))?,
            ))
            .stderr(Stdio::from(
                output.try_clone().map_err(|e| format!("memfd: {e}"))?,
            ))
            .process_group(0);
        let (tx, rx) = oneshot::channel();
        let (pid, child) = self
            .reaper
            .spawn_command(Waiter::Probe(tx), cmd)
            .map_err(|e| format!("cannot run {} to check it: {e}", exe.display()))?;
        drop(child);
        let (reaper, done) = (self.reaper.clone(), self.reexec.checked_tx.clone());
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let status = tokio::time::timeout(CHECK_TIMEOUT, rx).await;
            // Anything it left behind goes with it.
            reaper.signal_group(pid, handover::child::Signal::KILL);
            let mut out = String::new();
            let mut f = output;
            let _ = f.rewind();
            let _ = f.take(16 * 1024).read_to_string(&mut out);
            let out = out.trim();
            let why = |how: String| {
                let mut m = format!("the new binary {} cannot take over: {how}", exe.display());
                if !out.is_empty() {
                    m.push_str(&format!("; it said: {out}"));
                }
                m.push_str(". The running handover serves on, unchanged");
                m
            };
            let result = match status {
                Ok(Ok(s)) if s.success() && out.lines().any(|l| l.starts_with(CHECK_OK)) => Ok(()),
                Ok(Ok(s)) if s.success() => Err(why(
                    "its check exited 0 without saying it can (is it a handover at all?)".into(),
                )),
                Ok(Ok(s)) => Err(why(format!("its check {s}"))),
                Ok(Err(_)) => Err(why("its check's status was lost".into())),
                Err(_) => Err(why(format!(
                    "its check did not finish within {}s, so it was killed",
                    CHECK_TIMEOUT.as_secs()
                ))),
            };
            let _ = done.send(Checked {
                result,
                took: started.elapsed(),
            });
        });
        Ok(())
    }

    /// Answers every client waiting for the re-exec with `error`.
    fn reexec_failed(&mut self, error: String) {
        tracing::error!("re-exec failed: {error}");
        for id in std::mem::take(&mut self.reexec.waiters) {
            self.reply(id, control::error_answer(error.clone()));
        }
        self.reexec.requested = None;
    }

    fn reply(&mut self, id: ReplyId, answer: Answer) {
        if let Some((reply, written)) = self.replies.remove(&id) {
            self.clients.answered(id.0, &answer);
            let _ = reply.send(answer);
            drop(written);
        }
    }

    /// The check ended: exec now (or answer why not). `Some` when handover
    /// must exit.
    pub(super) fn reexec_checked(
        &mut self,
        machine: &mut Machine,
        checked: Checked,
        queue: &mut VecDeque<Event>,
    ) -> Option<Result<(), String>> {
        if let Err(e) = checked.result {
            self.reexec_failed(e);
            return None;
        }
        if machine.phase != Phase::Running {
            self.reexec_failed("handover began to stop; not re-executed".into());
            return None;
        }
        tracing::info!(took = ?checked.took, "the new binary can take over; re-executing in place");
        let _ = self
            .systemd
            .notify(&[SdState::Reloading, SdState::Status("re-executing handover")]);
        match self.exec(machine, queue, checked.took) {
            NotDone::Exit(result) => Some(result),
            NotDone::Failed(e) => {
                let _ = self.systemd.notify(&[
                    SdState::Ready,
                    SdState::Status(&format!(
                        "re-exec failed: {}",
                        e.lines().next().unwrap_or("")
                    )),
                ]);
                self.reexec_failed(e);
                None
            }
        }
    }

    /// Steps 2 and 3 of the [module docs](self). Returns only when the exec
    /// did not happen.
    fn exec(
        &mut self,
        machine: &mut Machine,
        queue: &mut VecDeque<Event>,
        check: Duration,
    ) -> NotDone {
        self.reaper.kill_probes();
        for (_, task) in self.probes.drain() {
            task.abort();
        }
        let mut stopped = self.pumps.stop_all();
        let hold = match SignalHold::block(&signals::HANDLED) {
            Ok(h) => h,
            Err(e) => {
                self.resume_after_failure(machine);
                return NotDone::Failed(format!("cannot hold signals across the exec: {e}"));
            }
        };
        // Everything on its way is handled first: an exit the reaper saw
        // would otherwise be lost with the channel.
        loop {
            for sig in self.signals.drain() {
                queue.push_back(Event::Signal(sig));
            }
            while let Ok(event) = self.events.try_recv() {
                queue.push_back(event);
            }
            if queue.is_empty() {
                break;
            }
            if let Some(result) = self.process(machine, queue) {
                return NotDone::Exit(result);
            }
            for (_, task) in self.probes.drain() {
                task.abort();
            }
            stopped &= self.pumps.stop_all();
            if machine.phase != Phase::Running {
                drop(hold);
                self.resume_after_failure(machine);
                return NotDone::Failed("handover began to stop; not re-executed".into());
            }
        }
        if !stopped {
            tracing::warn!("a stderr reader did not stop; its last read may be lost");
        }
        let now = Mono::now();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task")
            && tasks.count() > 1
        {
            tracing::warn!(
                "another thread runs: a signal that arrives during the exec may be lost with it"
            );
        }
        let waiters = std::mem::take(&mut self.reexec.waiters);
        let error = match self.state(machine, waiters.clone(), now) {
            Ok(mut state) => {
                state.check_ms = ms(check);
                match self.exec_with(&state) {
                    Ok(never) => match never {},
                    Err(e) => e,
                }
            }
            Err(e) => format!("cannot write the state: {e}"),
        };
        drop(hold);
        self.reexec.waiters = waiters;
        self.resume_after_failure(machine);
        NotDone::Failed(error)
    }

    /// Writes `state` into a memfd and execs with every descriptor it
    /// names. Returns only on failure.
    fn exec_with(&self, state: &State) -> Result<std::convert::Infallible, String> {
        let json = serde_json::to_vec(state).map_err(|e| format!("cannot write the state: {e}"))?;
        let state_fd = memfd("handover-state", &json).map_err(|e| format!("memfd: {e}"))?;
        let clients = self.clients.unanswered();
        let mut r = Reexec::new(&self.reexec.executable);
        if let Some(arg0) = self.reexec.argv.first() {
            r.arg0(arg0.clone());
        }
        r.args(self.reexec.argv.iter().skip(1).cloned());
        let fail = |e: handover::reexec::ReexecError| e.to_string();
        r.fd(STATE_FD, state_fd.as_fd()).map_err(fail)?;
        for (i, s) in self.sockets.iter().enumerate() {
            r.fd(&state.sockets[i].fd, s.fd.as_fd()).map_err(fail)?;
        }
        let (Some(control), Some(notify)) = (&self.reexec.control_fd, &self.reexec.notify_fd)
        else {
            return Err("internal: the control or notify socket is missing".into());
        };
        r.fd(&state.control.fd, control.as_fd()).map_err(fail)?;
        r.fd(&state.notify.fd, notify.as_fd()).map_err(fail)?;
        for (id, pipe) in self.pumps.pipes() {
            r.fd(&format!("stderr.{id}"), pipe.as_fd()).map_err(fail)?;
        }
        for c in &clients {
            if state.clients.iter().any(|s| s.id == c.id) {
                r.fd(&format!("client.{}", c.id), c.stream.as_fd())
                    .map_err(fail)?;
            }
        }
        tracing::info!(
            executable = %self.reexec.executable.display(),
            generations = state.machine.gens.len(),
            clients = state.clients.len(),
            "re-executing"
        );
        Err(r.exec().to_string())
    }

    /// After a re-exec that did not happen: the stderr readers and the
    /// readiness probes run again.
    fn resume_after_failure(&mut self, machine: &Machine) {
        self.pumps.restart_all(&self.events_tx);
        self.restart_probes(machine);
    }

    /// Starts every readiness probe that ran before the re-exec again.
    pub(super) fn restart_probes(&mut self, machine: &Machine) {
        for action in machine.probes_to_resume() {
            if let Action::Probe {
                id,
                pid,
                index,
                mode,
            } = action
                && let Some(failed) = self.start_probe(id, pid, index, mode)
            {
                let _ = self.events_tx.send(failed);
            }
        }
    }

    /// The state to hand over; `waiters` asked for the re-exec.
    fn state(&self, machine: &Machine, waiters: Vec<ReplyId>, now: Mono) -> Result<State, String> {
        let sockets = self
            .sockets
            .iter()
            .enumerate()
            .map(|(i, s)| SocketState {
                name: s.name.clone(),
                address: s.address.clone(),
                inherited: s.inherited,
                fd: format!("socket.{i}"),
            })
            .collect();
        let clients = self
            .clients
            .unanswered()
            .into_iter()
            .map(|c| {
                let owed = self.replies.contains_key(&ReplyId(c.id));
                let stage = match c.stage {
                    Stage::Submitted(r) if owed => ClientStage::Waiting(r),
                    Stage::Submitted(r) => ClientStage::Request(r),
                    Stage::Reading(b) => ClientStage::Reading(b),
                    Stage::Answering(b) => ClientStage::Answering(b),
                };
                ClientState {
                    id: c.id,
                    fd: format!("client.{}", c.id),
                    stage,
                }
            })
            .collect();
        let mut stderr: Vec<PipeState> = self
            .pumps
            .pipes()
            .map(|(generation, _)| PipeState {
                generation,
                fd: format!("stderr.{generation}"),
            })
            .collect();
        stderr.sort_by_key(|p| p.generation);
        let notify_env = self.notify_env.to_str().ok_or_else(|| {
            format!(
                "the notify socket's path {:?} is not UTF-8; give --control a UTF-8 path",
                self.notify_env
            )
        })?;
        Ok(State {
            format: FORMAT.into(),
            version: VERSION,
            written_by: crate::VERSION.into(),
            pid: std::process::id(),
            executable: self.reexec.executable.clone(),
            argv: self
                .reexec
                .argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            started_unix_ms: self.started_unix_ms,
            reexecs: self.reexec.count + 1,
            machine: machine.clone(),
            sockets,
            control: ControlState {
                path: self.config.control.clone(),
                fd: "control".into(),
            },
            notify: NotifyState {
                env: notify_env.to_string(),
                fd: "notify".into(),
            },
            stderr,
            clients,
            next_client: self.clients.next_id(),
            reexec_replies: waiters.iter().map(|r| r.0).collect(),
            requested_at: self.reexec.requested.or(Some(now)),
            check_ms: 0.0,
            previous_version: crate::VERSION.into(),
        })
    }

    /// The re-exec fields of `status`.
    pub(super) fn status_extras(&self, v: &mut serde_json::Value) {
        v["version"] = json!(crate::VERSION);
        v["executable"] = json!(self.reexec.executable.display().to_string());
        v["reexecs"] = json!(self.reexec.count);
        if let Some(p) = &self.reexec.previous_version {
            v["previous_version"] = json!(p);
        }
        if self.reexec.requested.is_some() {
            v["reexec_in_progress"] = json!(true);
        }
    }
}

/// Step 4 of the [module docs](self): the supervisor of a re-executed image
/// takes over from `kept`, and runs until it is stopped.
pub(super) async fn resume(
    config: Config,
    mut kept: Kept,
    inherited: ListenFds,
) -> Result<(), String> {
    drop(inherited);
    let state_file = std::fs::File::from(
        kept.take(STATE_FD)
            .map_err(|e| format!("re-executed without its state: {e}"))?,
    );
    let mut bytes = Vec::new();
    (&state_file)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading the state: {e}"))?;
    drop(state_file);
    let state = State::parse(&bytes)?;
    let take = |kept: &mut Kept, name: &str| {
        kept.take(name)
            .map_err(|e| format!("re-executed without a descriptor it needs: {e}"))
    };
    let mut sockets = Vec::new();
    for s in &state.sockets {
        sockets.push(Socket {
            name: s.name.clone(),
            address: s.address.clone(),
            inherited: s.inherited,
            fd: take(&mut kept, &s.fd)?,
        });
    }
    let notify_fd = take(&mut kept, &state.notify.fd)?;
    let notify_dup = notify_fd
        .try_clone()
        .map_err(|e| format!("notify socket: {e}"))?;
    let notify = NotifySocket::from_fd(notify_fd, std::ffi::OsStr::new(&state.notify.env))
        .map_err(|e| e.to_string())?
        .into_async()
        .map_err(|e| e.to_string())?;
    let control_fd = take(&mut kept, &state.control.fd)?;
    let control_dup = control_fd
        .try_clone()
        .map_err(|e| format!("control socket: {e}"))?;
    let control_std = std::os::unix::net::UnixListener::from(control_fd);
    control_std
        .set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    let control_listener = tokio::net::UnixListener::from_std(control_std)
        .map_err(|e| format!("control socket: {e}"))?;
    let _control_file = RemoveOnDrop(config.control.clone());
    if let Some(p) = &config.pid_file {
        write_pid_file(p)?;
    }
    let _pid_file = config.pid_file.clone().map(RemoveOnDrop);
    let systemd = Notifier::from_env().map_err(|e| e.to_string())?;
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans of generations go to init");
    }
    let machine: Machine = state.machine.clone();

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(|e| format!("installing the SIGCHLD handler: {e}"))?;
    let signal_pipes = signals::install(&events_tx)?;
    let reaper = Arc::new(Reaper::new(events_tx.clone()));
    // Before the first reap: a generation that exited during the exec is a
    // zombie, and its status must reach the machine.
    for g in &machine.gens {
        let leader_reaped = matches!(&g.state, GenState::Draining(e) if e.leader.is_some());
        if let (Some(pid), false) = (g.pid, leader_reaped) {
            reaper.adopt(pid);
        }
    }
    {
        let reaper = reaper.clone();
        tokio::spawn(async move { reaper.run(sigchld).await });
    }
    // The handlers exist: signals that came during the exec arrive now.
    release_signals(&signals::HANDLED).map_err(|e| e.to_string())?;
    let notify_env = OsString::from_vec(state.notify.env.clone().into_bytes());
    tokio::spawn(listen_notify(notify, events_tx.clone()));
    let (ctrl_tx, ctrl_rx) = mpsc::channel(64);
    let clients = Clients::starting_at(state.next_client);
    tokio::spawn(control::serve_clients(
        control_listener,
        ctrl_tx.clone(),
        clients.clone(),
    ));

    let mut driver = Driver::new(
        config,
        sockets,
        notify_env,
        systemd,
        reaper,
        events_tx.clone(),
        events_rx,
        ctrl_rx,
    );
    driver.started_unix_ms = state.started_unix_ms;
    driver.signals = signal_pipes;
    driver.clients = clients.clone();
    driver.reexec.control_fd = Some(control_dup);
    driver.reexec.notify_fd = Some(notify_dup);
    driver.reexec.count = state.reexecs;
    driver.reexec.executable = state.executable.clone();
    driver.reexec.previous_version = Some(state.previous_version.clone());
    for p in &state.stderr {
        match kept.take(&p.fd) {
            Ok(fd) => driver.pumps.start(p.generation, fd, &events_tx),
            Err(e) => {
                tracing::warn!(generation = p.generation, error = %e, "a stderr pipe was not kept")
            }
        }
    }
    for c in &state.clients {
        let fd = match kept.take(&c.fd) {
            Ok(fd) => std::os::unix::net::UnixStream::from(fd),
            Err(e) => {
                tracing::warn!(client = c.id, error = %e, "a control client was not kept");
                continue;
            }
        };
        let resumed = match &c.stage {
            ClientStage::Waiting(request) => clients
                .resume_waiting(c.id, fd, *request, ctrl_tx.clone())
                .map(|channels| {
                    driver.replies.insert(ReplyId(c.id), channels);
                }),
            ClientStage::Reading(b) => {
                clients.resume(c.id, fd, Stage::Reading(b.clone()), ctrl_tx.clone())
            }
            ClientStage::Request(r) => {
                clients.resume(c.id, fd, Stage::Submitted(*r), ctrl_tx.clone())
            }
            ClientStage::Answering(b) => {
                clients.resume(c.id, fd, Stage::Answering(b.clone()), ctrl_tx.clone())
            }
        };
        if let Err(e) = resumed {
            tracing::warn!(client = c.id, error = %e, "could not take over a control client");
        }
    }
    drop(ctrl_tx);
    // --watch: the watcher's descriptors were close-on-exec; watch anew.
    let watch_events = events_tx.clone();
    let _watch = crate::watch::start(
        &driver.config.watch,
        driver.config.watch_debounce,
        move |_| {
            let _ = watch_events.send(Event::Reload { reply: None });
        },
    )?;
    for (name, _) in kept.into_remaining() {
        tracing::warn!(%name, "closing a descriptor the state does not name");
    }
    for g in &machine.gens {
        if let (GenState::Draining(e), Some(pid)) = (&g.state, g.pid)
            && !e.group_empty
        {
            driver.watched.insert(g.id, pid);
        }
    }
    driver.restart_probes(&machine);
    let now = Mono::now();
    let took = state.requested_at.map(|t| ms(now.since(t))).unwrap_or(0.0);
    tracing::info!(
        pid = std::process::id(),
        version = crate::VERSION,
        previous = %state.previous_version,
        generations = machine.gens.len(),
        took_ms = took,
        "re-executed in place; supervising the same generations"
    );
    let answer = json!({
        "ok": true,
        "pid": std::process::id(),
        "executable": state.executable.display().to_string(),
        "version": crate::VERSION,
        "previous_version": state.previous_version,
        "generations": machine.gens.iter().filter(|g| g.pid.is_some()).count(),
        "took_ms": took,
        "check_ms": state.check_ms,
        "reexecs": state.reexecs,
    });
    for id in &state.reexec_replies {
        driver.reply(ReplyId(*id), answer.clone());
    }
    let status = match machine.current() {
        Some(_) => "serving",
        None => "re-executed; no generation serves yet",
    };
    let _ = driver
        .systemd
        .notify(&[SdState::Ready, SdState::Status(status)]);
    driver
        .run_from(machine, VecDeque::from([Event::Tick]))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::machine::Settings;
    use handover::child::Signal;

    fn state() -> State {
        let machine = Machine::new(Settings {
            ready: vec![crate::run::config::ReadyMode::Notify],
            reload_ready: Vec::new(),
            signal_scope: Default::default(),
            stop_delay: Duration::ZERO,
            ready_timeout: Duration::from_secs(60),
            settle: Duration::ZERO,
            stop_signal: Signal::TERM,
            stop_timeout: Duration::from_secs(30),
            splay: Duration::ZERO,
            reload_signal: None,
            max_backoff: Duration::from_secs(30),
            backoff_reset: Duration::from_secs(10),
            start_limit_burst: 5,
            start_limit_interval: Duration::from_secs(10),
            max_draining: 1,
        });
        State {
            format: FORMAT.into(),
            version: VERSION,
            written_by: "test".into(),
            pid: 7,
            executable: "/usr/bin/handover".into(),
            argv: vec!["handover".into(), "run".into()],
            started_unix_ms: 1,
            reexecs: 1,
            machine,
            sockets: vec![SocketState {
                name: "http".into(),
                address: "tcp://127.0.0.1:80".into(),
                inherited: false,
                fd: "socket.0".into(),
            }],
            control: ControlState {
                path: "/run/h/control.sock".into(),
                fd: "control".into(),
            },
            notify: NotifyState {
                env: "/run/h/notify-7.sock".into(),
                fd: "notify".into(),
            },
            stderr: vec![PipeState {
                generation: 1,
                fd: "stderr.1".into(),
            }],
            clients: vec![
                ClientState {
                    id: 3,
                    fd: "client.3".into(),
                    stage: ClientStage::Reading(b"{\"cmd\":".to_vec()),
                },
                ClientState {
                    id: 4,
                    fd: "client.4".into(),
                    stage: ClientStage::Waiting(Request::Reexec),
                },
            ],
            next_client: 5,
            reexec_replies: vec![4],
            requested_at: Some(Mono::now()),
            check_ms: 2.5,
            previous_version: "test".into(),
        }
    }

    #[test]
    fn the_state_round_trips() {
        let s = state();
        let json = serde_json::to_vec(&s).unwrap();
        let back = State::parse(&json).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&s).unwrap()
        );
    }

    #[test]
    fn fields_added_later_and_fields_unknown_are_tolerated() {
        let mut v = serde_json::to_value(state()).unwrap();
        // Written by an older handover: optional fields missing.
        for k in [
            "written_by",
            "argv",
            "reexecs",
            "stderr",
            "clients",
            "next_client",
            "reexec_replies",
            "requested_at",
            "check_ms",
            "previous_version",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        // Written by a newer one of the same version: a field this one
        // does not know.
        v["settle_counters"] = json!({"x": 1});
        let s = State::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(s.clients.is_empty() && s.stderr.is_empty());
    }

    #[test]
    fn another_format_or_version_is_refused_with_the_reason() {
        let mut v = serde_json::to_value(state()).unwrap();
        v["version"] = json!(VERSION + 1);
        v["written_by"] = json!("9.9.9");
        let e = State::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            e.contains(&format!("format version {}", VERSION + 1))
                && e.contains("9.9.9")
                && e.contains("older than the running one"),
            "{e}"
        );
        v["format"] = json!("something-else");
        let e = State::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(e.contains("not written by `handover reexec`"), "{e}");
        let e = State::parse(b"{").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let mut v = serde_json::to_value(state()).unwrap();
        v.as_object_mut().unwrap().remove("machine");
        let e = State::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            e.contains("machine") && e.contains("restart handover instead"),
            "{e}"
        );
    }

    proptest::proptest! {
        #[test]
        fn the_parser_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = State::parse(&data);
        }
    }
}
