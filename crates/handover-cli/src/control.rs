//! The control socket of `handover run`: one JSON request per connection,
//! one JSON answer.
//!
//! ```text
//! -> {"cmd":"reload"}\n
//! <- {"ok":true,"pid":1234,"ready_after_ms":152.3,...}\n
//! ```
//!
//! The socket file has mode 0600 and the peer's uid is checked with
//! `SO_PEERCRED` (same uid as handover, or root), on both sides: the server
//! answers only such clients, and [`request`] talks only to such a server. A request must arrive
//! within [`REQUEST_TIMEOUT`] and be at most [`MAX_REQUEST`] bytes; anything
//! else gets an error answer (or nothing, for a refused peer) and never
//! blocks other clients: each connection is served on a task of its own.
//!
//! Idle and slow clients cannot lock others out. A client whose whole
//! request has arrived is served at once. One that is still sending needs
//! one of [`MAX_CLIENTS`] slots, held only until its request line is in (not
//! while it waits for the answer: a reload may take minutes). When every
//! slot is taken, up to [`MAX_WAITING`] more clients wait for one (beyond
//! that: "busy"), and while anyone waits, a slot holder that has sent no
//! complete request for [`IDLE_UNDER_PRESSURE`] is closed with an error to
//! make room. So a well-behaved client (which writes its request right after
//! connecting) is answered at once however many slow-loris connections
//! there are, and a slow one waits a fraction of a second, never the full
//! [`REQUEST_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use handover::address::{Address, BindOptions};

/// The largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 4096;

/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How many clients may be sending their request at once; more wait for a
/// slot (see the [module docs](self)).
pub const MAX_CLIENTS: usize = 64;

/// How many clients may wait for a slot; more get "busy".
pub const MAX_WAITING: usize = 64;

/// While clients wait for a slot, a slot holder that has not sent a complete
/// request for this long is closed to make room.
pub const IDLE_UNDER_PRESSURE: Duration = Duration::from_millis(250);

/// How often a client that is still sending checks whether it must make room.
const PRESSURE_CHECK: Duration = Duration::from_millis(50);

/// The slots for clients that are sending their request.
struct Slots {
    free: Arc<Semaphore>,
    /// Clients waiting for a slot.
    waiting: AtomicUsize,
}

/// Counts a waiting client while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Slots {
    fn new() -> Slots {
        Slots {
            free: Arc::new(Semaphore::new(MAX_CLIENTS)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// A slot: at once, or after waiting (in order) behind at most
    /// [`MAX_WAITING`] others. `None`: busy. The caller bounds the wait.
    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.free.clone().try_acquire_owned() {
            return Some(p);
        }
        let _waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            return None;
        }
        self.free.clone().acquire_owned().await.ok()
    }

    /// Whether some client waits for a slot.
    fn contended(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }
}

/// A request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Start a new generation and switch to it when ready.
    Reload,
    /// Describe the supervisor.
    Status,
    /// Drain and exit.
    Stop,
    /// Re-execute handover itself in place (same pid, same generations),
    /// after proving the new binary can take over.
    Reexec,
}

/// Parses a request line.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_string())?;
    serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "the request {:?} is not valid: {e}; expected one JSON object per line, \
             {{\"cmd\":\"reload\"}}, {{\"cmd\":\"status\"}}, {{\"cmd\":\"stop\"}} or \
             {{\"cmd\":\"reexec\"}}",
            truncate(text.trim(), 80)
        )
    })
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// An answer: `{"ok":true, ...fields}` or `{"ok":false,"error":"..."}`.
pub type Answer = serde_json::Value;

/// Builds an error answer.
pub fn error_answer(msg: impl Into<String>) -> Answer {
    serde_json::json!({"ok": false, "error": msg.into()})
}

/// A request from a client, with the channel for its answer.
#[derive(Debug)]
pub struct Incoming {
    /// The request.
    pub request: Request,
    /// Where the answer goes (the client may have gone; sending then fails
    /// quietly).
    pub reply: oneshot::Sender<Answer>,
    /// Resolves once the answer was written (or given up on), for callers
    /// that exit right after answering.
    pub written: oneshot::Receiver<()>,
    /// The client's id in [`Clients`] (unique for the supervisor's life,
    /// across re-executions).
    pub client: u64,
}

/// Binds the control socket at `path` (mode 0600; a stale file is replaced,
/// a live one is an error naming the path).
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    let fd = Address::Unix(path.to_owned())
        .bind(&BindOptions::default().unix_mode(0o600))
        .map_err(|e| match e {
            handover::address::AddressError::UnixInUse { .. } => format!(
                "another handover instance is serving at {}; stop it, or give this one its own \
                 --control PATH",
                path.display()
            ),
            other => format!("control socket: {other}"),
        })?;
    let std = std::os::unix::net::UnixListener::from(fd);
    std.set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    UnixListener::from_std(std).map_err(|e| format!("control socket: {e}"))
}

/// Serves the control socket forever, sending each valid request to `tx`.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Incoming>) {
    serve_clients(listener, tx, Clients::starting_at(1)).await
}

/// [`serve`], with every connection registered in `clients` until it is
/// answered (see [`Clients`]).
pub async fn serve_clients(listener: UnixListener, tx: mpsc::Sender<Incoming>, clients: Clients) {
    let slots = clients.slots.clone();
    let me = rustix::process::getuid();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A client in another pid namespace (the host, for a handover in a
        // container) has pid 0 here; its uid is what is checked. Checked
        // before the client is registered, so that only trusted clients are
        // ever carried across a re-exec.
        match handover::socket::PeerCred::of(std::os::fd::AsFd::as_fd(&stream)) {
            Ok(cred) if cred.uid == me.as_raw() || cred.uid == 0 => {}
            Ok(cred) => {
                tracing::warn!(
                    pid = cred.pid,
                    uid = cred.uid,
                    "control socket: refused a client of another user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: could not check a client");
                continue;
            }
        }
        let tx = tx.clone();
        let slots = slots.clone();
        let clients = clients.clone();
        // Registered before anything else runs, so a supervisor that
        // re-executes itself carries every accepted connection over.
        let stream = Arc::new(stream);
        let id = clients.register(&stream, Stage::Reading(Vec::new()));
        tokio::spawn(async move {
            let _gone = Unregister(&clients, id);
            handle(&stream, id, tx, &slots, &clients, Start::Read(Vec::new())).await;
        });
    }
}

/// How reading a request ended.
enum Read {
    /// The request line (with its newline), or what came before end of file
    /// or the size limit.
    Done(Vec<u8>),
    Failed(std::io::Error),
    TimedOut,
    MadeRoom,
    Busy,
}

/// Moves what has arrived on `stream` into `line`, without waiting. `true`
/// once the request is complete: a newline, end of file, or more than
/// [`MAX_REQUEST`] bytes.
fn read_available(stream: &UnixStream, line: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut buf = [0u8; 1024];
    loop {
        if line.contains(&b'\n') || line.len() > MAX_REQUEST {
            return Ok(true);
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where a client that is still sending stands.
enum Slot {
    Acquiring,
    Held(#[allow(dead_code)] OwnedSemaphorePermit),
    /// No slot and too many waiting: it gets [`IDLE_UNDER_PRESSURE`] for its
    /// request to arrive, then "busy".
    Busy,
}

/// Reads one request within [`REQUEST_TIMEOUT`]. A request that has arrived
/// takes no slot; until it has, the client needs one (see the module docs).
async fn read_request(
    stream: &UnixStream,
    slots: &Slots,
    mut line: Vec<u8>,
    clients: &Clients,
    id: u64,
) -> Read {
    let started = tokio::time::Instant::now();
    let deadline = tokio::time::sleep(REQUEST_TIMEOUT);
    tokio::pin!(deadline);
    let grace = tokio::time::sleep(IDLE_UNDER_PRESSURE);
    tokio::pin!(grace);
    let acquire = slots.acquire();
    tokio::pin!(acquire);
    // The slot, if any, is released when this returns.
    let mut slot = Slot::Acquiring;
    let mut check = tokio::time::interval(PRESSURE_CHECK);
    loop {
        let read = read_available(stream, &mut line);
        clients.set(id, Stage::Reading(line.clone()));
        match read {
            Ok(true) => {
                if let Some(end) = line.iter().position(|&b| b == b'\n') {
                    line.truncate(end + 1);
                }
                return Read::Done(line);
            }
            Ok(false) => {}
            Err(e) => return Read::Failed(e),
        }
        tokio::select! {
            // What has arrived is read before anything else.
            biased;
            r = stream.readable() => {
                if let Err(e) = r {
                    return Read::Failed(e);
                }
            }
            _ = &mut deadline => return Read::TimedOut,
            got = &mut acquire, if matches!(slot, Slot::Acquiring) => {
                slot = got.map_or(Slot::Busy, Slot::Held);
            }
            _ = &mut grace, if matches!(slot, Slot::Busy) => return Read::Busy,
            _ = check.tick(), if matches!(slot, Slot::Held(_)) => {
                if slots.contended() && started.elapsed() >= IDLE_UNDER_PRESSURE {
                    return Read::MadeRoom;
                }
            }
        }
    }
}

/// Where a client's handling starts: a fresh connection (or one carried
/// over a re-exec while its request was arriving) is read; a request read
/// before a re-exec is submitted; a client the supervisor already owes an
/// answer waits for it.
enum Start {
    Read(Vec<u8>),
    Submit(Request),
    Wait(oneshot::Receiver<Answer>, oneshot::Sender<()>),
}

async fn handle(
    stream: &UnixStream,
    id: u64,
    tx: mpsc::Sender<Incoming>,
    slots: &Slots,
    clients: &Clients,
    start: Start,
) {
    let mut done_tx: Option<oneshot::Sender<()>> = None;
    let request = match start {
        Start::Read(received) => match read_request(stream, slots, received, clients, id).await {
            Read::TimedOut => Err(error_answer(format!(
                "no complete request within {REQUEST_TIMEOUT:?}; send one JSON line ending in a newline"
            ))),
            Read::MadeRoom => Err(error_answer(format!(
                "closed to make room for waiting clients: no complete request within \
                 {IDLE_UNDER_PRESSURE:?} while all {MAX_CLIENTS} slots were taken; send one JSON line \
                 ending in a newline right after connecting"
            ))),
            Read::Busy => Err(error_answer(format!(
                "busy: {MAX_CLIENTS} control clients are sending requests and {MAX_WAITING} more are \
                 waiting; try again"
            ))),
            Read::Failed(e) => Err(error_answer(format!(
                "could not read the request: {e}; send one JSON line ending in a newline"
            ))),
            Read::Done(line) if line.len() > MAX_REQUEST => Err(error_answer(format!(
                "the request is longer than {MAX_REQUEST} bytes; expected one short JSON line \
                     like {{\"cmd\":\"status\"}}"
            ))),
            Read::Done(line) if !line.ends_with(b"\n") => Err(error_answer(
                "the request ended without a newline; send one JSON line ending in a newline",
            )),
            Read::Done(line) => parse_request(&line).map_err(error_answer),
        },
        Start::Submit(request) => Ok(request),
        Start::Wait(rx, done) => {
            done_tx = Some(done);
            Err(rx
                .await
                .unwrap_or_else(|_| error_answer("handover is shutting down")))
        }
    };
    let reply = match request {
        Err(answer) => answer,
        Ok(request) => {
            let (reply, rx) = oneshot::channel();
            let (done, written) = oneshot::channel();
            done_tx = Some(done);
            clients.set(id, Stage::Submitted(request));
            if tx
                .send(Incoming {
                    request,
                    reply,
                    written,
                    client: id,
                })
                .await
                .is_err()
            {
                error_answer("handover is shutting down")
            } else {
                rx.await
                    .unwrap_or_else(|_| error_answer("handover is shutting down"))
            }
        }
    };
    let mut text = serde_json::to_vec(&reply).unwrap_or_default();
    text.push(b'\n');
    clients.set(id, Stage::Answering(text.clone()));
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, write_all(stream, &text, clients, id)).await;
    if let Some(done) = done_tx {
        let _ = done.send(());
    }
}

/// Writes `text`, keeping what is left to write in the client's
/// [`Stage::Answering`].
async fn write_all(
    stream: &UnixStream,
    mut text: &[u8],
    clients: &Clients,
    id: u64,
) -> std::io::Result<()> {
    while !text.is_empty() {
        stream.writable().await?;
        match stream.try_write(text) {
            Ok(n) => {
                text = &text[n..];
                clients.set(id, Stage::Answering(text.to_vec()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where an unanswered control client stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Its request is arriving: the bytes received so far.
    Reading(Vec<u8>),
    /// Its request was read and sent to the supervisor.
    Submitted(Request),
    /// Its answer is being written: what is left of it.
    Answering(Vec<u8>),
}

struct Entry {
    stream: Arc<UnixStream>,
    stage: Stage,
}

struct Registry {
    next: u64,
    live: std::collections::BTreeMap<u64, Entry>,
}

/// The control connections not answered yet, each with its [`Stage`]: what
/// a supervisor that re-executes itself in place hands to its new image,
/// so that no client loses its request or its answer. Every connection is
/// registered as it is accepted, and leaves once its answer is written.
#[derive(Clone)]
pub struct Clients {
    registry: Arc<std::sync::Mutex<Registry>>,
    slots: Arc<Slots>,
}

/// An unanswered control client, as [`Clients::unanswered`] lists it.
pub struct Unanswered {
    /// Its id ([`Incoming::client`]).
    pub id: u64,
    /// Its connection.
    pub stream: Arc<UnixStream>,
    /// Where it stands.
    pub stage: Stage,
}

/// Takes a client off the registry when its task ends.
struct Unregister<'a>(&'a Clients, u64);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0.lock().live.remove(&self.1);
    }
}

impl Clients {
    /// An empty registry whose first client gets id `first` (a re-executed
    /// supervisor goes on from where the old image stopped).
    pub fn starting_at(first: u64) -> Clients {
        Clients {
            registry: Arc::new(std::sync::Mutex::new(Registry {
                next: first.max(1),
                live: Default::default(),
            })),
            slots: Arc::new(Slots::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn register(&self, stream: &Arc<UnixStream>, stage: Stage) -> u64 {
        let mut r = self.lock();
        let id = r.next;
        r.next += 1;
        r.live.insert(
            id,
            Entry {
                stream: stream.clone(),
                stage,
            },
        );
        id
    }

    fn set(&self, id: u64, stage: Stage) {
        if let Some(e) = self.lock().live.get_mut(&id) {
            e.stage = stage;
        }
    }

    /// The id the next client will get.
    pub fn next_id(&self) -> u64 {
        self.lock().next
    }

    /// Records that `answer` was handed to client `id`'s task (which may not
    /// have run yet): from now on the client is owed those bytes, not a
    /// decision.
    pub fn answered(&self, id: u64, answer: &Answer) {
        let mut text = serde_json::to_vec(answer).unwrap_or_default();
        text.push(b'\n');
        self.set(id, Stage::Answering(text));
    }

    /// Every client not answered yet.
    pub fn unanswered(&self) -> Vec<Unanswered> {
        self.lock()
            .live
            .iter()
            .map(|(&id, e)| Unanswered {
                id,
                stream: e.stream.clone(),
                stage: e.stage.clone(),
            })
            .collect()
    }

    /// Takes over a client carried across a re-exec: its request goes on
    /// arriving ([`Stage::Reading`]), is submitted again
    /// ([`Stage::Submitted`]), or what is left of its answer is written
    /// ([`Stage::Answering`]). Must run inside the runtime.
    pub fn resume(
        &self,
        id: u64,
        stream: std::os::unix::net::UnixStream,
        stage: Stage,
        tx: mpsc::Sender<Incoming>,
    ) -> std::io::Result<()> {
        let stream = self.adopt(id, stream, stage.clone())?;
        let clients = self.clone();
        tokio::spawn(async move {
            let _gone = Unregister(&clients, id);
            let start = match stage {
                Stage::Reading(received) => Start::Read(received),
                Stage::Submitted(request) => Start::Submit(request),
                Stage::Answering(text) => {
                    let _ = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        write_all(&stream, &text, &clients, id),
                    )
                    .await;
                    return;
                }
            };
            let slots = clients.slots.clone();
            handle(&stream, id, tx, &slots, &clients, start).await;
        });
        Ok(())
    }

    /// Takes over a client carried across a re-exec that waits for an
    /// answer the supervisor owes it: the answer sent on the returned
    /// channel is written to it; the second resolves once it was.
    pub fn resume_waiting(
        &self,
        id: u64,
        stream: std::os::unix::net::UnixStream,
        request: Request,
        tx: mpsc::Sender<Incoming>,
    ) -> std::io::Result<(oneshot::Sender<Answer>, oneshot::Receiver<()>)> {
        let stream = self.adopt(id, stream, Stage::Submitted(request))?;
        let (reply, rx) = oneshot::channel();
        let (done, written) = oneshot::channel();
        let clients = self.clone();
        tokio::spawn(async move {
            let _gone = Unregister(&clients, id);
            let slots = clients.slots.clone();
            handle(&stream, id, tx, &slots, &clients, Start::Wait(rx, done)).await;
        });
        Ok((reply, written))
    }

    fn adopt(
        &self,
        id: u64,
        stream: std::os::unix::net::UnixStream,
        stage: Stage,
    ) -> std::io::Result<Arc<UnixStream>> {
        stream.set_nonblocking(true)?;
        let stream = Arc::new(UnixStream::from_std(stream)?);
        let mut r = self.lock();
        r.next = r.next.max(id + 1);
        r.live.insert(
            id,
            Entry {
                stream: stream.clone(),
                stage,
            },
        );
        Ok(stream)
    }
}

/// Sends `request` to the handover at `path` and waits up to `timeout` for
/// the answer (blocking; used by the `reload`, `status` and `stop`
/// commands).
pub fn request(path: &Path, request: Request, timeout: Duration) -> Result<Answer, String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach handover at {}: {e}. Is `handover run` running with this --control path?",
            path.display()
        )
    })?;
    // Whatever answers on the path must be a handover of this user (or
    // root's): anyone who can create the socket file first could answer
    // "stopped" while the real one runs on.
    let me = rustix::process::getuid().as_raw();
    match handover::socket::PeerCred::of(std::os::fd::AsFd::as_fd(&s)) {
        Ok(cred) if cred.uid == me || cred.uid == 0 => {}
        Ok(cred) => {
            return Err(format!(
                "the process answering at {} runs as uid {}{}, not as this user (uid {me}) or \
                 root: it is not a handover of yours, so nothing was sent to it. Check the \
                 --control path, and who created that socket",
                path.display(),
                cred.uid,
                if cred.pid > 0 {
                    format!(" (pid {})", cred.pid)
                } else {
                    String::new()
                }
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot check who answers at {}: {e}; refusing to talk to it",
                path.display()
            ));
        }
    }
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).ok();
    let mut line = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    // A refused client's connection is closed at once, its request unread:
    // sending may fail (EPIPE), or reading sees a reset or end of file. A
    // "busy" answer may also come before the request was sent: whatever
    // arrived is read even when sending failed.
    let refused = || {
        format!(
            "handover closed the connection without an answer: was this user refused? handover \
             answers only its own user and root, and this is uid {}; run this command as the \
             user that runs `handover run`",
            rustix::process::getuid().as_raw()
        )
    };
    let closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    };
    let sent = s.write_all(&line);
    if let Err(e) = &sent
        && !closed(e)
    {
        return Err(format!("sending the request to {}: {e}", path.display()));
    }
    let mut reader = std::io::BufReader::new(s);
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(_) if answer.ends_with('\n') => {}
        Ok(_) => return Err(refused()),
        Err(e) if closed(&e) => return Err(refused()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(format!("no answer from handover within {timeout:?}"));
        }
        Err(e) => return Err(format!("reading the answer: {e}")),
    }
    serde_json::from_str(&answer)
        .map_err(|e| format!("handover's answer is not JSON ({e}): {answer}"))
}

/// The default control socket path: `$XDG_RUNTIME_DIR/handover/control.sock`,
/// else `/tmp/handover-UID/control.sock`.
pub fn default_path() -> PathBuf {
    runtime_dir().join("control.sock")
}

/// handover's private runtime directory (created with mode 0700 by
/// [`ensure_private_dir`]).
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("handover"),
        _ => PathBuf::from(format!(
            "/tmp/handover-{}",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// Creates `dir` with mode 0700 if missing; refuses a symlink, and a
/// directory owned by another user or open to others. (In `/tmp`, anyone can
/// create `/tmp/handover-UID` first, as a directory or a link to one.)
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let advice = "set XDG_RUNTIME_DIR to a directory of your own, or give --control a path in a \
                  directory you own";
    let existed = std::fs::symlink_metadata(dir).is_ok();
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) if existed => {}
        Ok(()) => tracing::info!(
            dir = %dir.display(),
            "created the directory for handover's control and notify sockets (mode 0700)"
        ),
        // A dangling symlink or a file in the way says more below.
        Err(e) if std::fs::symlink_metadata(dir).is_err() => {
            return Err(format!(
                "cannot create the directory {} for handover's control socket (--control) and \
                 notify socket: {e}; create it first, or pass --control PATH with a path in a \
                 directory this user can write",
                dir.display()
            ));
        }
        Err(_) => {}
    }
    // Not followed: the directory itself, not what a link points to.
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{} is a symbolic link, not a directory: handover keeps its sockets only in a \
             directory of its own user, and someone may have made this link for handover to \
             follow; remove it, or {advice}",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return Err(format!(
            "{} is not a directory; remove it, or {advice}",
            dir.display()
        ));
    }
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to this user ({me}): another user created it first; {advice}",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by other users; fix its mode (chmod 700), or {advice}",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse_request(b"{\"cmd\":\"reload\"}\n").unwrap(),
            Request::Reload
        );
        assert_eq!(
            parse_request(b" {\"cmd\":\"status\"} ").unwrap(),
            Request::Status
        );
        for bad in [&b"reload"[..], b"{\"cmd\":\"explode\"}", b"\xff", b""] {
            let e = parse_request(bad).unwrap_err();
            assert!(
                e.contains("expected one JSON object") || e.contains("UTF-8"),
                "{e}"
            );
        }
    }

    proptest! {
        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&data);
        }
    }

    #[tokio::test]
    async fn bad_clients_get_errors_and_do_not_block_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some(i) = rx.recv().await {
                let _ = i
                    .reply
                    .send(serde_json::json!({"ok": true, "echo": format!("{:?}", i.request)}));
            }
        });
        // A slow-loris client holds a connection open without a newline.
        let mut slow = UnixStream::connect(&path).await.unwrap();
        slow.write_all(b"{\"cmd\":").await.unwrap();
        // Meanwhile good and bad clients are answered at once.
        let p = path.clone();
        let ok = tokio::task::spawn_blocking(move || {
            request(&p, Request::Status, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(ok["ok"], true);
        let mut garbage = UnixStream::connect(&path).await.unwrap();
        garbage.write_all(b"not json\n").await.unwrap();
        let mut buf = String::new();
        BufReader::new(garbage).read_line(&mut buf).await.unwrap();
        assert!(buf.contains("expected one JSON object"), "{buf}");
        let mut big = UnixStream::connect(&path).await.unwrap();
        let _ = big.write_all(&vec![b'x'; MAX_REQUEST + 10]).await;
        let mut buf = String::new();
        BufReader::new(big).read_line(&mut buf).await.unwrap();
        assert!(buf.contains("longer than 4096"), "{buf}");
        // The slow client gets a timeout answer eventually.
        let mut buf = String::new();
        tokio::time::timeout(
            REQUEST_TIMEOUT + Duration::from_secs(5),
            BufReader::new(slow).read_line(&mut buf),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(buf.contains("no complete request within"), "{buf}");
        // Mode 0600.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second instance at the same path is refused.
        let e = bind(&path).unwrap_err();
        assert!(e.contains("another handover instance is serving at"), "{e}");
    }
}
