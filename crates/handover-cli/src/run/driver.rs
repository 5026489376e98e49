//! The driver: one task that owns the [`Machine`] and everything it cannot
//! touch (processes, timers, channels). It receives events (child exits from
//! the reaper, notify messages, control requests, signals, stderr lines,
//! probe results, timers), hands each to [`Machine::handle`], and carries
//! out the actions that come back. No other task changes the supervisor's
//! state.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use handover::notify::{Notifier, State as SdState};

use super::config::{Config, ReadyMode, SignalScope};
use super::machine::{Action, Event, Machine, Mono, ProbeOutcome, ReplyId, Sd};
use super::process;
use super::procfs;
use super::reaper::Reaper;
use super::sockets::Socket;
use super::status;
use crate::control::{Answer, Incoming, Request};

/// How often process groups of ending generations are checked for members,
/// besides after every reaped child.
const GROUP_POLL: Duration = Duration::from_millis(100);

/// How long the answer to `handover stop` may take to be written before
/// handover exits anyway.
const LAST_ANSWER: Duration = Duration::from_secs(2);

/// How long a count of open connections is shown again before it is
/// counted anew.
const CONNECTIONS_FRESH: Duration = Duration::from_secs(1);

/// Open connections per generation (see `Driver::connections`).
#[derive(Default)]
struct Counts {
    at: Option<std::time::Instant>,
    counting: bool,
    by_generation: HashMap<u64, usize>,
}

pub(super) struct Driver {
    pub(super) config: Config,
    pub(super) sockets: Vec<Socket>,
    pub(super) notify_env: OsString,
    pub(super) systemd: Notifier,
    pub(super) reaper: Arc<Reaper>,
    pub(super) events_tx: mpsc::UnboundedSender<Event>,
    pub(super) events: mpsc::UnboundedReceiver<Event>,
    pub(super) control: mpsc::Receiver<Incoming>,
    pub(super) started_unix_ms: u128,
    replies: HashMap<ReplyId, (oneshot::Sender<Answer>, oneshot::Receiver<()>)>,
    next_reply: u64,
    /// Answers sent while handling the current event: handover waits for
    /// them to be written before it exits.
    written: Vec<oneshot::Receiver<()>>,
    /// Running probes, by generation and probe index.
    probes: HashMap<(u64, usize), JoinHandle<()>>,
    /// Where the listening sockets are, to count connections for `status`.
    listening: procfs::Listening,
    /// Open connections per generation, as last counted (for `status`).
    connections: Arc<std::sync::Mutex<Counts>>,
    /// Process groups of ending generations, by generation.
    watched: HashMap<u64, u32>,
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: Config,
        sockets: Vec<Socket>,
        notify_env: OsString,
        systemd: Notifier,
        reaper: Arc<Reaper>,
        events_tx: mpsc::UnboundedSender<Event>,
        events: mpsc::UnboundedReceiver<Event>,
        control: mpsc::Receiver<Incoming>,
    ) -> Driver {
        let mut listening = procfs::Listening::default();
        for s in &sockets {
            listening.add(std::os::fd::AsFd::as_fd(&s.fd));
        }
        Driver {
            config,
            sockets,
            notify_env,
            systemd,
            reaper,
            events_tx,
            events,
            control,
            started_unix_ms: unix_ms(),
            replies: HashMap::new(),
            next_reply: 0,
            written: Vec::new(),
            probes: HashMap::new(),
            listening,
            connections: Arc::default(),
            watched: HashMap::new(),
        }
    }

    /// Runs `machine` from its first start to its exit.
    pub(super) async fn run(mut self, mut machine: Machine) -> Result<(), String> {
        let mut queue = VecDeque::from([Event::Start]);
        loop {
            while let Some(event) = queue.pop_front() {
                let actions = machine.handle(Mono::now(), event);
                for action in actions {
                    if let Some(result) = self.execute(action, &mut queue) {
                        self.finish().await;
                        return result;
                    }
                }
                self.written.clear();
            }
            self.check_groups(&mut queue);
            if !queue.is_empty() {
                continue;
            }
            let deadline = machine.next_deadline();
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep(d.since(Mono::now())).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(event) = self.events.recv() => queue.push_back(event),
                Some(incoming) = self.control.recv() => self.control_request(&machine, incoming, &mut queue),
                () = timer => queue.push_back(Event::Tick),
                () = tokio::time::sleep(GROUP_POLL), if !self.watched.is_empty() => {}
            }
            while let Ok(event) = self.events.try_recv() {
                queue.push_back(event);
            }
        }
    }

    fn control_request(
        &mut self,
        machine: &Machine,
        incoming: Incoming,
        queue: &mut VecDeque<Event>,
    ) {
        let Incoming {
            request,
            reply,
            written,
        } = incoming;
        if request == Request::Status {
            let connections = self.connections(machine);
            let _ = reply.send(status::answer(
                machine,
                Mono::now(),
                &self.config,
                &self.sockets,
                self.started_unix_ms,
                &connections,
            ));
            return;
        }
        self.next_reply += 1;
        let id = ReplyId(self.next_reply);
        self.replies.insert(id, (reply, written));
        queue.push_back(match request {
            Request::Reload => Event::Reload { reply: Some(id) },
            Request::Stop | Request::Status => Event::Stop { reply: id },
        });
    }

    /// Open connections of each generation, as last counted. Counting reads
    /// `/proc` and asks the kernel, which takes a while on a busy machine:
    /// it runs on a blocking thread, at most once per
    /// [`CONNECTIONS_FRESH`], started by a `status` request; the driver never
    /// waits for it (a count is up to that old, and missing at first).
    fn connections(&mut self, machine: &Machine) -> HashMap<u64, usize> {
        let mut counts = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = !counts.counting && counts.at.is_none_or(|at| at.elapsed() >= CONNECTIONS_FRESH);
        if due {
            counts.counting = true;
            let pgids: Vec<(u64, u32)> = machine
                .gens
                .iter()
                .filter_map(|g| Some((g.id, g.pid?)))
                .collect();
            let (listening, shared) = (self.listening.clone(), self.connections.clone());
            tokio::task::spawn_blocking(move || {
                let found = procfs::connections(&pgids, &listening);
                let mut c = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                c.by_generation = found.into_iter().collect();
                c.at = Some(std::time::Instant::now());
                c.counting = false;
            });
        }
        counts.by_generation.clone()
    }

    /// Reports groups of ending generations that have no process left.
    fn check_groups(&mut self, queue: &mut VecDeque<Event>) {
        let reaper = &self.reaper;
        self.watched.retain(|&id, &mut pgid| {
            if reaper.group_exists(pgid) {
                true
            } else {
                queue.push_back(Event::GroupEmpty { id });
                false
            }
        });
    }

    /// Carries out `action`; `Some` when handover must exit.
    fn execute(
        &mut self,
        action: Action,
        queue: &mut VecDeque<Event>,
    ) -> Option<Result<(), String>> {
        match action {
            Action::Spawn { id } => {
                let spawned = process::spawn_generation(
                    id,
                    &self.config,
                    &self.sockets,
                    &self.notify_env,
                    &self.reaper,
                    &self.events_tx,
                );
                queue.push_front(match spawned {
                    Ok(pid) => Event::Spawned {
                        id,
                        pid,
                        unix_ms: unix_ms(),
                    },
                    Err(error) => Event::SpawnFailed { id, error },
                });
            }
            Action::Probe {
                id,
                pid,
                index,
                mode,
            } => {
                let target = match &mode {
                    ReadyMode::Http { socket, .. } => {
                        match process::probe_target(&self.sockets, socket.as_deref()) {
                            Ok(t) => Some(t),
                            Err(e) => {
                                queue.push_back(Event::ProbeResult {
                                    id,
                                    index,
                                    outcome: ProbeOutcome::Fail(e),
                                });
                                return None;
                            }
                        }
                    }
                    _ => None,
                };
                let task = tokio::spawn(process::probe(
                    self.reaper.clone(),
                    id,
                    pid,
                    index,
                    mode,
                    target,
                    self.events_tx.clone(),
                ));
                if let Some(old) = self.probes.insert((id, index), task) {
                    old.abort();
                }
            }
            Action::CancelProbe { id } => {
                self.probes.retain(|&(gen_id, _), task| {
                    if gen_id == id {
                        task.abort();
                    }
                    gen_id != id
                });
            }
            Action::Signal {
                pgid,
                signal,
                scope,
            } => match scope {
                SignalScope::Group => self.reaper.signal_group(pgid, signal),
                SignalScope::Main => self.reaper.signal_process(pgid, signal),
            },
            Action::WatchGroup { id, pgid } => {
                self.watched.insert(id, pgid);
            }
            Action::Reply { to, answer } => {
                if let Some((reply, written)) = self.replies.remove(&to) {
                    let _ = reply.send(answer);
                    self.written.push(written);
                }
            }
            Action::Notify(sd) => {
                let result = match &sd {
                    Sd::Ready(s) => self.systemd.notify(&[SdState::Ready, SdState::Status(s)]),
                    Sd::Reloading => self.systemd.notify(&[SdState::Reloading]),
                    Sd::Status(s) => self.systemd.notify(&[SdState::Status(s)]),
                    Sd::Stopping(s) => self
                        .systemd
                        .notify(&[SdState::Stopping, SdState::Status(s)]),
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "could not notify the service manager");
                }
            }
            Action::Exit(result) => return Some(result),
        }
        None
    }

    /// Before exit: let the control tasks write the last answers.
    async fn finish(&mut self) {
        for (_, task) in self.probes.drain() {
            task.abort();
        }
        for done in std::mem::take(&mut self.written) {
            let _ = tokio::time::timeout(LAST_ANSWER, done).await;
        }
    }
}
