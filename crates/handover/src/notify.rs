//! The `sd_notify` protocol (sd_notify(3)), both ways.
//!
//! **Sending** ([`Notifier`]): a service tells its supervisor (systemd, or
//! `handover run`) how it is doing by sending one datagram of
//! newline-separated `KEY=VALUE` lines to the Unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without
//! `NOTIFY_SOCKET` every send is a no-op.
//!
//! ```no_run
//! use handover::notify::{Notifier, State};
//! # fn main() -> Result<(), handover::notify::NotifyError> {
//! let notifier = Notifier::from_env()?;
//! notifier.notify(&[State::Ready, State::Status("serving on :8080")])?;
//! # Ok(()) }
//! ```
//!
//! **Receiving** ([`NotifySocket`]): a supervisor binds a datagram socket,
//! hands [`NotifySocket::env_value`] to each child as its `NOTIFY_SOCKET`, and
//! reads [`Message`]s, each with the sender's pid (the kernel attaches it
//! because the socket has `SO_PASSCRED`), so it knows which child spoke.
//!
//! The `sd-notify` crate was considered for sending; it reads the environment
//! on every call and cannot reach `@abstract` sockets, both of which this
//! module needs, and the protocol is a single `send`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::socket::MAX_UNIX_PATH as MAX_PATH_LEN;

/// The largest message [`NotifySocket`] reads; longer ones are an error.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Errors of the notify protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` (or an address given) is not a socket address.
    #[error(
        "NOTIFY_SOCKET={value:?} is not valid: expected an absolute socket path (at most \
         {MAX_PATH_LEN} bytes) or @name for the abstract namespace. Fix the supervisor's \
         setting, or unset it"
    )]
    BadAddress {
        /// The rejected value.
        value: String,
    },
    /// A state would break the line-based message format.
    #[error("{key} value {value:?} contains a newline or NUL: a notify value must be one line")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// The supervisor's socket could not be reached.
    #[error(
        "could not send {message:?} to NOTIFY_SOCKET {target:?}: {source}. Is the supervisor \
         still running, and may this user write to its socket?"
    )]
    Send {
        /// The message text.
        message: String,
        /// Where it was sent.
        target: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Binding the receiving socket failed.
    #[error("could not bind the notify socket at {target}: {source}")]
    Bind {
        /// The address.
        target: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Receiving failed.
    #[error("could not receive a notify message: {0}")]
    Recv(#[source] io::Error),
    /// A message longer than [`MAX_MESSAGE_LEN`] arrived (and was dropped).
    #[error("a notify message longer than {MAX_MESSAGE_LEN} bytes arrived and was dropped")]
    TooLong,
    /// More descriptors than one message can carry.
    #[error(
        "{count} descriptors cannot travel in one notify message: at most {MAX_FDS_PER_MESSAGE} \
         (SCM_MAX_FD); send them in several messages"
    )]
    TooManyFds {
        /// How many were given.
        count: usize,
    },
    /// A descriptor given as a bound notify socket is not one.
    #[error(
        "the descriptor given as the notify socket {target} is not a bound Unix datagram socket: \
         {problem}"
    )]
    NotANotifySocket {
        /// The address it should have.
        target: String,
        /// What is wrong.
        problem: String,
    },
}

/// The most descriptors one message carries (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// One state change to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State<'a> {
    /// `READY=1`: start-up is finished (or a reload is).
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC=` now, as `Type=notify-reload` wants.
    Reloading,
    /// `STOPPING=1`: shutting down.
    Stopping,
    /// `STATUS=`: a one-line status text.
    Status(&'a str),
    /// `MAINPID=`: the main process of the service is now this pid.
    MainPid(u32),
    /// Any other `KEY=VALUE` line, sent as is.
    Custom(&'a str),
    /// `FDSTORE=1`: keep the descriptors sent with this message in the
    /// service manager's fd store (see [`Notifier::notify_with_fds`]).
    FdStore,
    /// `FDSTOREREMOVE=1`: drop the stored descriptors named by
    /// [`State::FdName`].
    FdStoreRemove,
    /// `FDNAME=`: the name of the descriptors stored or removed (a
    /// `LISTEN_FDNAMES` name: 1 to 255 printable ASCII characters, no `:`).
    FdName(&'a str),
}

/// Renders `states` as the protocol's message text.
pub(crate) fn render(states: &[State<'_>]) -> Result<String, NotifyError> {
    let check = |key: &'static str, v: &str| {
        if v.contains(['\n', '\0']) {
            Err(NotifyError::BadValue {
                key,
                value: v.to_string(),
            })
        } else {
            Ok(())
        }
    };
    let mut out = String::new();
    for s in states {
        match *s {
            State::Ready => out.push_str("READY=1\n"),
            State::Reloading => {
                let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
                let usec = now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1000;
                out.push_str(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\n"));
            }
            State::Stopping => out.push_str("STOPPING=1\n"),
            State::Status(t) => {
                check("STATUS", t)?;
                out.push_str(&format!("STATUS={t}\n"));
            }
            State::MainPid(p) => out.push_str(&format!("MAINPID={p}\n")),
            State::Custom(t) => {
                check("custom", t)?;
                out.push_str(t);
                out.push('\n');
            }
            State::FdStore => out.push_str("FDSTORE=1\n"),
            State::FdStoreRemove => out.push_str("FDSTOREREMOVE=1\n"),
            State::FdName(n) => {
                if !crate::activation::is_valid_name(n) {
                    return Err(NotifyError::BadValue {
                        key: "FDNAME",
                        value: n.to_string(),
                    });
                }
                out.push_str(&format!("FDNAME={n}\n"));
            }
        }
    }
    Ok(out)
}

/// Parses a `NOTIFY_SOCKET` value: an absolute path, or `@name`.
pub(crate) fn parse_address(value: &OsStr) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::BadAddress {
        value: value.to_string_lossy().into_owned(),
    };
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'@') if bytes.len() > 1 && bytes.len() <= MAX_PATH_LEN + 1 => {
            SocketAddr::from_abstract_name(&bytes[1..]).map_err(|_| bad())
        }
        Some(b'/') if bytes.len() <= MAX_PATH_LEN && !bytes.contains(&0) => {
            SocketAddr::from_pathname(Path::new(value)).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Sends state changes to a supervisor.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<(SocketAddr, OsString)>,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, read once now. Without the variable,
    /// every send does nothing; with a malformed one, this is an error.
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(Notifier { target: None }),
            Some(v) if v.is_empty() => Ok(Notifier { target: None }),
            Some(v) => Notifier::to(&v),
        }
    }

    /// A notifier for the given address (`/path` or `@name`).
    pub fn to(address: &OsStr) -> Result<Notifier, NotifyError> {
        Ok(Notifier {
            target: Some((parse_address(address)?, address.to_owned())),
        })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// Whether sends go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `states` as one datagram. Does nothing when disabled.
    pub fn notify(&self, states: &[State<'_>]) -> Result<(), NotifyError> {
        let Some((addr, name)) = &self.target else {
            return Ok(());
        };
        let message = render(states)?;
        let fail = |source| NotifyError::Send {
            message: message.clone(),
            target: name.to_string_lossy().into_owned(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(fail)?;
        let sent = sock.send_to_addr(message.as_bytes(), addr).map_err(fail)?;
        if sent != message.len() {
            return Err(fail(io::Error::new(io::ErrorKind::WriteZero, "short send")));
        }
        Ok(())
    }

    /// Sends `states` with descriptors attached (`SCM_RIGHTS`), and this
    /// process's credentials (`SCM_CREDENTIALS`, which systemd before
    /// version 247 requires on a message with descriptors). Does nothing
    /// when disabled.
    ///
    /// With [`State::FdStore`] and [`State::FdName`], systemd keeps the
    /// descriptors in the service's fd store (the unit needs
    /// `FileDescriptorStoreMax=`; without it they are closed) and passes
    /// them back with `LISTEN_FDS`/`LISTEN_FDNAMES` when the service starts
    /// again, after a crash for example.
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// use handover::notify::{Notifier, State};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
    /// Notifier::from_env()?.notify_with_fds(
    ///     &[State::FdStore, State::FdName("http")],
    ///     &[listener.as_fd()],
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn notify_with_fds(
        &self,
        states: &[State<'_>],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), NotifyError> {
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(NotifyError::TooManyFds { count: fds.len() });
        }
        let Some((addr, name)) = &self.target else {
            return Ok(());
        };
        if fds.is_empty() {
            return self.notify(states);
        }
        let message = render(states)?;
        let fail = |source| NotifyError::Send {
            message: message.clone(),
            target: name.to_string_lossy().into_owned(),
            source,
        };
        let sock = UnixDatagram::unbound().map_err(fail)?;
        sock.connect_addr(addr).map_err(fail)?;
        let cred = rustix::net::UCred {
            pid: rustix::process::getpid(),
            uid: rustix::process::getuid(),
            gid: rustix::process::getgid(),
        };
        let mut space = vec![
            std::mem::MaybeUninit::uninit();
            rustix::cmsg_space!(ScmRights(fds.len()), ScmCredentials(1))
        ];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        let pushed = control.push(rustix::net::SendAncillaryMessage::ScmRights(fds))
            && control.push(rustix::net::SendAncillaryMessage::ScmCredentials(cred));
        if !pushed {
            return Err(fail(io::Error::other(
                "the control message buffer is too small",
            )));
        }
        let sent = rustix::net::sendmsg(
            &sock,
            &[io::IoSlice::new(message.as_bytes())],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .map_err(|e| fail(e.into()))?;
        if sent != message.len() {
            return Err(fail(io::Error::new(io::ErrorKind::WriteZero, "short send")));
        }
        Ok(())
    }
}

/// A message received by a [`NotifySocket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's pid, from the kernel. Absent when the sender is in a
    /// pid namespace this process cannot see (the kernel reports pid 0), or
    /// if credentials were not attached (which `SO_PASSCRED` prevents).
    pub pid: Option<u32>,
    /// The sender's uid.
    pub uid: Option<u32>,
    /// The `KEY=VALUE` lines, in order (values decoded lossily as UTF-8).
    /// Lines without `=` are skipped.
    pub fields: Vec<(String, String)>,
}

impl Message {
    /// Parses the text of a datagram (never fails; odd lines are skipped).
    pub fn parse(data: &[u8]) -> Vec<(String, String)> {
        data.split(|&b| b == b'\n')
            .filter_map(|line| {
                let eq = line.iter().position(|&b| b == b'=')?;
                let key = String::from_utf8_lossy(&line[..eq]).into_owned();
                if key.is_empty() {
                    return None;
                }
                Some((key, String::from_utf8_lossy(&line[eq + 1..]).into_owned()))
            })
            .collect()
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `READY=1`.
    pub fn is_ready(&self) -> bool {
        self.get("READY") == Some("1")
    }

    /// `RELOADING=1`.
    pub fn is_reloading(&self) -> bool {
        self.get("RELOADING") == Some("1")
    }

    /// `STOPPING=1`.
    pub fn is_stopping(&self) -> bool {
        self.get("STOPPING") == Some("1")
    }

    /// `STATUS=`.
    pub fn status(&self) -> Option<&str> {
        self.get("STATUS")
    }

    /// `MAINPID=`, when it is a valid pid.
    pub fn main_pid(&self) -> Option<u32> {
        self.get("MAINPID")?.parse().ok().filter(|&p| p > 0)
    }
}

/// A datagram socket a supervisor binds to hear its children.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    env_value: OsString,
    _file: SocketFile,
}

/// Removes a bound socket's file on drop.
#[derive(Debug, Default)]
struct SocketFile(Option<PathBuf>);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl NotifySocket {
    /// Binds at `path` (the file must not exist; its directory should be
    /// private to the supervisor's user). The file is removed on drop.
    pub fn bind(path: &Path) -> Result<NotifySocket, NotifyError> {
        let target = path.display().to_string();
        if path.as_os_str().len() > MAX_PATH_LEN {
            return Err(NotifyError::Bind {
                target,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the path is {} bytes; Unix socket paths are limited to {MAX_PATH_LEN}: \
                         choose a shorter directory",
                        path.as_os_str().len()
                    ),
                ),
            });
        }
        let sock = UnixDatagram::bind(path).map_err(|source| NotifyError::Bind {
            target: target.clone(),
            source,
        })?;
        let file = SocketFile(Some(path.to_owned()));
        Self::finish(sock, path.as_os_str().to_owned(), target, file)
    }

    /// Binds `@name` in the abstract namespace (no file; visible to every
    /// process in the network namespace, which is why messages carry the
    /// sender's pid).
    pub fn bind_abstract(name: &[u8]) -> Result<NotifySocket, NotifyError> {
        let mut env = b"@".to_vec();
        env.extend_from_slice(name);
        let target = String::from_utf8_lossy(&env).into_owned();
        let addr = SocketAddr::from_abstract_name(name).map_err(|source| NotifyError::Bind {
            target: target.clone(),
            source,
        })?;
        let sock = UnixDatagram::bind_addr(&addr).map_err(|source| NotifyError::Bind {
            target: target.clone(),
            source,
        })?;
        Self::finish(sock, OsString::from_vec(env), target, SocketFile::default())
    }

    /// Takes over a notify socket that is already bound, for example one a
    /// supervisor kept across an in-place re-exec ([`crate::reexec`]).
    /// `address` is its [`env_value`](Self::env_value) (`/path` or `@name`);
    /// a path's file is removed on drop, as with [`bind`](Self::bind).
    pub fn from_fd(fd: OwnedFd, address: &OsStr) -> Result<NotifySocket, NotifyError> {
        let target = address.to_string_lossy().into_owned();
        let wrong = |problem: String| NotifyError::NotANotifySocket {
            target: target.clone(),
            problem,
        };
        match rustix::net::sockopt::socket_type(&fd) {
            Ok(rustix::net::SocketType::DGRAM) => {}
            Ok(other) => return Err(wrong(format!("its type is {other:?}"))),
            Err(e) => return Err(wrong(io::Error::from(e).to_string())),
        }
        let want = parse_address(address)?;
        let sock = UnixDatagram::from(fd);
        let have = sock
            .local_addr()
            .map_err(|e| wrong(format!("it has no local address: {e}")))?;
        let same = match (want.as_pathname(), have.as_pathname()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => want.as_abstract_name() == have.as_abstract_name(),
            _ => false,
        };
        if !same {
            return Err(wrong(format!("it is bound to {have:?}")));
        }
        let file = SocketFile(want.as_pathname().map(Path::to_path_buf));
        Self::finish(sock, address.to_owned(), target, file)
    }

    fn finish(
        sock: UnixDatagram,
        env_value: OsString,
        target: String,
        file: SocketFile,
    ) -> Result<Self, NotifyError> {
        rustix::net::sockopt::set_socket_passcred(&sock, true).map_err(|e| NotifyError::Bind {
            target,
            source: e.into(),
        })?;
        Ok(NotifySocket {
            sock,
            env_value,
            _file: file,
        })
    }

    /// The value to give a child as `NOTIFY_SOCKET`.
    pub fn env_value(&self) -> &OsStr {
        &self.env_value
    }

    /// Waits up to `timeout` (forever with `None`) for one message.
    /// `Ok(None)` when the time passed.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Option<Message>, NotifyError> {
        self.sock
            .set_read_timeout(timeout.map(|t| t.max(Duration::from_micros(1))))
            .map_err(NotifyError::Recv)?;
        match recv_message(self.sock.as_fd(), false) {
            Err(NotifyError::Recv(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Waits for one message.
    pub fn recv(&self) -> Result<Message, NotifyError> {
        loop {
            if let Some(m) = self.recv_timeout(None)? {
                return Ok(m);
            }
        }
    }

    /// Makes this socket usable from tokio (call inside a runtime).
    #[cfg(feature = "tokio")]
    pub fn into_async(self) -> Result<AsyncNotifySocket, NotifyError> {
        self.sock.set_nonblocking(true).map_err(NotifyError::Recv)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NotifyError::Recv(io::Error::other(
                "into_async must be called inside a tokio runtime",
            )));
        }
        let NotifySocket {
            sock,
            env_value,
            _file,
        } = self;
        let inner = tokio::net::UnixDatagram::from_std(sock).map_err(NotifyError::Recv)?;
        Ok(AsyncNotifySocket {
            inner,
            env_value,
            _file,
        })
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Receives one datagram with its credentials; closes any fds that came with
/// it (a child may send `FDSTORE=1` with fds, which we do not keep).
fn recv_message(fd: BorrowedFd<'_>, nonblocking: bool) -> Result<Message, NotifyError> {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
    let msg = crate::sys::recv_with_creds(fd, &mut buf, nonblocking).map_err(NotifyError::Recv)?;
    // Dropping the OwnedFds closes them.
    drop(msg.fds);
    // A pid of 0: the sender is in a pid namespace this process cannot see
    // (a supervisor in a container, a child outside it). Unknown, not 0.
    let (pid, uid) = match msg.creds {
        Some((pid, uid, _)) => (u32::try_from(pid).ok().filter(|&p| p > 0), Some(uid)),
        None => (None, None),
    };
    if msg.len > MAX_MESSAGE_LEN {
        return Err(NotifyError::TooLong);
    }
    Ok(Message {
        pid,
        uid,
        fields: Message::parse(&buf[..msg.len]),
    })
}

/// A [`NotifySocket`] for tokio.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub struct AsyncNotifySocket {
    inner: tokio::net::UnixDatagram,
    env_value: OsString,
    _file: SocketFile,
}

#[cfg(feature = "tokio")]
impl AsyncNotifySocket {
    /// The value to give a child as `NOTIFY_SOCKET`.
    pub fn env_value(&self) -> &OsStr {
        &self.env_value
    }

    /// Waits for one message (cancel-safe: a message is either returned or
    /// left in the socket).
    pub async fn recv(&self) -> Result<Message, NotifyError> {
        let fd = self.inner.as_fd();
        self.inner
            .async_io(tokio::io::Interest::READABLE, || {
                match recv_message(fd, true) {
                    // Tells tokio to wait for readiness again.
                    Err(NotifyError::Recv(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                    other => Ok(other),
                }
            })
            .await
            .map_err(NotifyError::Recv)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_states() {
        let t = render(&[
            State::Ready,
            State::Status("ok"),
            State::MainPid(42),
            State::Stopping,
        ])
        .unwrap();
        assert_eq!(t, "READY=1\nSTATUS=ok\nMAINPID=42\nSTOPPING=1\n");
        let r = render(&[State::Reloading]).unwrap();
        assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
        let usec: u64 = r.trim_end().rsplit('=').next().unwrap().parse().unwrap();
        assert!(usec > 0);
        assert!(render(&[State::Status("two\nlines")]).is_err());
    }

    #[test]
    fn addresses() {
        assert!(parse_address(OsStr::new("/run/x.sock")).is_ok());
        assert!(parse_address(OsStr::new("@abstract")).is_ok());
        for bad in ["", "relative", "@", &format!("/{}", "a".repeat(107))] {
            let e = parse_address(OsStr::new(bad)).unwrap_err().to_string();
            assert!(e.contains("expected an absolute socket path"), "{e}");
        }
    }

    #[test]
    fn parse_lines() {
        let f = Message::parse(b"READY=1\nnoequals\n=x\nSTATUS=a=b\n\xff=1");
        assert_eq!(
            f,
            [
                ("READY".to_string(), "1".to_string()),
                ("STATUS".to_string(), "a=b".to_string()),
                ("\u{fffd}".to_string(), "1".to_string())
            ]
        );
    }

    #[test]
    fn roundtrip_with_pid_over_path_and_abstract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let name = format!("handover-test-{}-{}", std::process::id(), fastrand::u64(..));
        for sock in [
            NotifySocket::bind(&path).unwrap(),
            NotifySocket::bind_abstract(name.as_bytes()).unwrap(),
        ] {
            let n = Notifier::to(sock.env_value()).unwrap();
            n.notify(&[State::Ready, State::Status("hi")]).unwrap();
            let m = sock
                .recv_timeout(Some(Duration::from_secs(5)))
                .unwrap()
                .unwrap();
            assert!(m.is_ready());
            assert_eq!(m.status(), Some("hi"));
            assert_eq!(m.pid, Some(std::process::id()));
            assert!(
                sock.recv_timeout(Some(Duration::from_millis(20)))
                    .unwrap()
                    .is_none()
            );
        }
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[test]
    fn too_long_path_is_explained() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let e = NotifySocket::bind(&long).unwrap_err().to_string();
        assert!(e.contains("limited to 107"), "{e}");
    }

    #[test]
    fn fd_store_states_render_and_names_are_checked() {
        let t = render(&[State::FdStore, State::FdName("http")]).unwrap();
        assert_eq!(t, "FDSTORE=1\nFDNAME=http\n");
        let t = render(&[State::FdStoreRemove, State::FdName("a.b")]).unwrap();
        assert_eq!(t, "FDSTOREREMOVE=1\nFDNAME=a.b\n");
        for bad in ["", "a:b", "new\nline", &"x".repeat(256)] {
            let e = render(&[State::FdName(bad)]).unwrap_err().to_string();
            assert!(e.starts_with("FDNAME value"), "{e}");
        }
    }

    #[test]
    fn fds_travel_with_credentials() {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let sock = NotifySocket::bind(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let n = Notifier::to(sock.env_value()).unwrap();
        n.notify_with_fds(
            &[State::FdStore, State::FdName("http")],
            &[listener.as_fd()],
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let mut space =
            [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4), ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &sock,
            &mut [io::IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        assert_eq!(&buf[..got.bytes], b"FDSTORE=1\nFDNAME=http\n");
        let (mut fds, mut pid) = (Vec::new(), None);
        for m in control.drain() {
            match m {
                RecvAncillaryMessage::ScmRights(r) => fds.extend(r),
                RecvAncillaryMessage::ScmCredentials(c) => pid = Some(c.pid.as_raw_nonzero().get()),
                _ => {}
            }
        }
        assert_eq!(pid, Some(std::process::id() as i32));
        assert_eq!(fds.len(), 1);
        let a = rustix::fs::fstat(&fds[0]).unwrap();
        let b = rustix::fs::fstat(&listener).unwrap();
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
        // Too many for one message.
        let many = vec![listener.as_fd(); MAX_FDS_PER_MESSAGE + 1];
        assert!(matches!(
            n.notify_with_fds(&[State::FdStore], &many),
            Err(NotifyError::TooManyFds { count: 254 })
        ));
        // Disabled: nothing is sent, nothing fails.
        Notifier::disabled()
            .notify_with_fds(&[State::FdStore], &[listener.as_fd()])
            .unwrap();
    }

    #[test]
    fn a_bound_socket_is_taken_over_by_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let sock = NotifySocket::bind(&path).unwrap();
        let env = sock.env_value().to_owned();
        let fd = sock.sock.try_clone().unwrap();
        let again = NotifySocket::from_fd(OwnedFd::from(fd), &env).unwrap();
        Notifier::to(&env).unwrap().notify(&[State::Ready]).unwrap();
        let m = again
            .recv_timeout(Some(Duration::from_secs(5)))
            .unwrap()
            .unwrap();
        assert!(m.is_ready() && m.pid == Some(std::process::id()));
        // Another address, or not a datagram socket: refused.
        let fd = OwnedFd::from(sock.sock.try_clone().unwrap());
        let e = NotifySocket::from_fd(fd, OsStr::new("/elsewhere.sock"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is bound to"), "{e}");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = NotifySocket::from_fd(OwnedFd::from(tcp), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a bound Unix datagram socket"), "{e}");
        drop(sock);
        drop(again);
        assert!(!path.exists());
    }

    #[test]
    fn disabled_is_noop() {
        Notifier::disabled().notify(&[State::Ready]).unwrap();
    }
}
