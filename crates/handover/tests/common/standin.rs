//! A stand-in for systemd in tests: a notify socket that keeps descriptors
//! sent with `FDSTORE=1` (by `FDNAME=`, one copy of each socket, as
//! systemd's fd store does), drops them on `FDSTOREREMOVE=1`, records every
//! message with its sender's pid, and starts a service with the stored
//! descriptors as `LISTEN_FDS`/`LISTEN_FDNAMES` (what systemd does when it
//! restarts a unit with `FileDescriptorStoreMax=`). With `keep: false` it
//! behaves like a unit without `FileDescriptorStoreMax=`: the descriptors
//! are closed on arrival.
//!
//! Include it with `#[path = ".../common/standin.rs"] mod standin;`.

#![allow(dead_code)]

use handover::process::{Command, Process};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// One datagram the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The sender's pid (SCM_CREDENTIALS).
    pub pid: Option<u32>,
    /// The text.
    pub text: String,
    /// How many descriptors came with it.
    pub fds: usize,
}

#[derive(Default)]
struct Store {
    fds: Vec<(String, OwnedFd)>,
    messages: Vec<Received>,
}

/// See the module docs. Stops its thread and closes the store on drop.
pub struct StandIn {
    path: PathBuf,
    keep: bool,
    store: Arc<Mutex<Store>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn identity(fd: impl AsFd) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).expect("fstat");
    (st.st_dev, st.st_ino)
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

impl StandIn {
    /// Binds the notify socket at `path` and starts receiving.
    pub fn start(path: &Path, keep: bool) -> StandIn {
        let sock = UnixDatagram::bind(path).expect("binding the stand-in's notify socket");
        rustix::net::sockopt::set_socket_passcred(&sock, true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match receive(&sock) {
                        Ok(Some((msg, fds))) => {
                            let mut st = store.lock().unwrap();
                            handle(&mut st, keep, &msg, fds);
                            st.messages.push(msg);
                        }
                        Ok(None) => {}
                        Err(e) => panic!("stand-in: {e}"),
                    }
                }
            })
        };
        StandIn {
            path: path.to_owned(),
            keep,
            store,
            stop,
            thread: Some(thread),
        }
    }

    /// The `NOTIFY_SOCKET` value.
    pub fn notify_env(&self) -> OsString {
        self.path.clone().into_os_string()
    }

    /// `(name, inode)` of each stored descriptor.
    pub fn stored(&self) -> Vec<(String, u64)> {
        self.store
            .lock()
            .unwrap()
            .fds
            .iter()
            .map(|(n, fd)| (n.clone(), identity(fd).1))
            .collect()
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Received> {
        self.store.lock().unwrap().messages.clone()
    }

    /// Waits until a message satisfies `f`; returns it.
    pub fn wait_message(&self, timeout: Duration, f: impl Fn(&Received) -> bool) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| f(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "the stand-in never got the message; it got: {:#?}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the store holds a descriptor named `name`; its inode.
    pub fn wait_stored(&self, name: &str, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, ino)) = self.stored().into_iter().find(|(n, _)| n == name) {
                return ino;
            }
            assert!(
                Instant::now() < deadline,
                "nothing named {name:?} was stored; messages: {:#?}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `cmd` as the service: `NOTIFY_SOCKET` is this stand-in, and
    /// the stored descriptors come as fds 3.. with `LISTEN_FDS`,
    /// `LISTEN_FDNAMES` and `LISTEN_PID`.
    pub fn spawn(&self, mut cmd: Command) -> io::Result<Process> {
        cmd.env("NOTIFY_SOCKET", self.notify_env());
        let st = self.store.lock().unwrap();
        let mut activation = handover::activation::Activation::new();
        for (name, fd) in &st.fds {
            activation
                .fd(name, fd.as_fd())
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        activation.spawn(cmd).map_err(io::Error::other)
    }

    /// Whether this stand-in keeps descriptors.
    pub fn keeps(&self) -> bool {
        self.keep
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn handle(st: &mut Store, keep: bool, msg: &Received, fds: Vec<OwnedFd>) {
    let name = field(&msg.text, "FDNAME").unwrap_or("stored").to_string();
    if field(&msg.text, "FDSTOREREMOVE") == Some("1") {
        st.fds.retain(|(n, _)| *n != name);
    }
    if field(&msg.text, "FDSTORE") == Some("1") && keep {
        for fd in fds {
            // One copy of each socket, as systemd keeps.
            let id = identity(&fd);
            if !st.fds.iter().any(|(_, f)| identity(f) == id) {
                st.fds.push((name.clone(), fd));
            }
        }
    }
    // Anything else that came with the message is closed (dropped).
}

fn receive(sock: &UnixDatagram) -> io::Result<Option<(Received, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; 8192];
    let mut space =
        [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = match rustix::net::recvmsg(
        sock,
        &mut [io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let (mut pid, mut fds) = (None, Vec::new());
    for m in control.drain() {
        match m {
            RecvAncillaryMessage::ScmCredentials(c) => {
                pid = Some(c.pid.as_raw_nonzero().get() as u32)
            }
            RecvAncillaryMessage::ScmRights(r) => fds.extend(r),
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
    let n = fds.len();
    Ok(Some((Received { pid, text, fds: n }, fds)))
}
