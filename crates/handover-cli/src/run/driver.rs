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
use super::process::{self, Pumps};
use super::procfs;
use super::reaper::Reaper;
use super::reexec::Bookkeeping;
use super::signals::SignalPipes;
use super::sockets::Socket;
use super::status;
use crate::control::{Answer, Clients, Incoming, Request};

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
    pub(super) replies: HashMap<ReplyId, (oneshot::Sender<Answer>, oneshot::Receiver<()>)>,
    /// Answers sent while handling the current event: handover waits for
    /// them to be written before it exits.
    written: Vec<oneshot::Receiver<()>>,
    /// Running probes, by generation and probe index.
    pub(super) probes: HashMap<(u64, usize), JoinHandle<()>>,
    /// Where the listening sockets are, to count connections for `status`.
    listening: procfs::Listening,
    /// Open connections per generation, as last counted (for `status`).
    connections: Arc<std::sync::Mutex<Counts>>,
    /// Process groups of ending generations, by generation.
    pub(super) watched: HashMap<u64, u32>,
    /// Unanswered control clients (a re-exec carries them over).
    pub(super) clients: Clients,
    /// The generations' stderr pipes and their readers.
    pub(super) pumps: Pumps,
    /// The signal socket pairs (a re-exec takes what is in them first).
    pub(super) signals: SignalPipes,
    /// `handover reexec` (see `reexec.rs`).
    pub(super) reexec: Bookkeeping,
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
            written: Vec::new(),
            probes: HashMap::new(),
            listening,
            connections: Arc::default(),
            watched: HashMap::new(),
            clients: Clients::starting_at(1),
            pumps: Pumps::default(),
            signals: SignalPipes::default(),
            reexec: Bookkeeping::default(),
        }
    }

    /// Starts readiness probe `index` (`mode`) of generation `id` (pid
    /// `pid`); it runs until cancelled, reporting each run. Returns the
    /// failure to report at once when it cannot run at all.
    pub(super) fn start_probe(
        &mut self,
        id: u64,
        pid: u32,
        index: usize,
        mode: ReadyMode,
    ) -> Option<Event> {
        let target = match &mode {
            ReadyMode::Http { socket, .. } => {
                match process::probe_target(&self.sockets, socket.as_deref()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        return Some(Event::ProbeResult {
                            id,
                            index,
                            outcome: ProbeOutcome::Fail(e),
                        });
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
        None
    }

    /// Runs `machine` from its first start to its exit.
    pub(super) async fn run(self, machine: Machine) -> Result<(), String> {
        self.run_from(machine, VecDeque::from([Event::Start])).await
    }

    /// Handles every event in `queue` (and those their actions add); `Some`
    /// when handover must exit.
    pub(super) fn process(
        &mut self,
        machine: &mut Machine,
        queue: &mut VecDeque<Event>,
    ) -> Option<Result<(), String>> {
        while let Some(event) = queue.pop_front() {
            if let Event::StderrClosed { id } = &event {
                self.pumps.closed(*id);
            }
            let actions = machine.handle(Mono::now(), event);
            for action in actions {
                if let Some(result) = self.execute(action, queue) {
                    return Some(result);
                }
            }
            self.written.clear();
        }
        None
    }

    /// Runs `machine`, starting with the events in `queue`, until it exits.
    pub(super) async fn run_from(
        mut self,
        mut machine: Machine,
        mut queue: VecDeque<Event>,
    ) -> Result<(), String> {
        loop {
            if let Some(result) = self.process(&mut machine, &mut queue) {
                self.finish().await;
                return result;
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
                Some(checked) = self.reexec.checked.recv() => {
                    if let Some(result) = self.reexec_checked(&mut machine, checked, &mut queue) {
                        self.finish().await;
                        return result;
                    }
                }
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
            client,
        } = incoming;
        if request == Request::Status {
            let connections = self.connections(machine);
            let mut answer = status::answer(
                machine,
                Mono::now(),
                &self.config,
                &self.sockets,
                self.started_unix_ms,
                &connections,
            );
            self.status_extras(&mut answer);
            self.clients.answered(client, &answer);
            let _ = reply.send(answer);
            return;
        }
        let id = ReplyId(client);
        self.replies.insert(id, (reply, written));
        queue.push_back(match request {
            Request::Reload => Event::Reload { reply: Some(id) },
            Request::Reexec => return self.reexec_requested(machine, id),
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
                );
                queue.push_front(match spawned {
                    Ok((pid, pipe)) => {
                        if let Some(pipe) = pipe {
                            self.pumps.start(id, pipe, &self.events_tx);
                        }
                        Event::Spawned {
                            id,
                            pid,
                            unix_ms: unix_ms(),
                        }
                    }
                    Err(error) => Event::SpawnFailed { id, error },
                });
            }
            Action::Probe {
                id,
                pid,
                index,
                mode,
            } => {
                if let Some(failed) = self.start_probe(id, pid, index, mode) {
                    queue.push_back(failed);
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
                    self.clients.answered(to.0, &answer);
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
