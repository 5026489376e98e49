//! What kind of descriptor an fd is, and checked conversions into std (and,
//! with the `tokio` feature, tokio) socket types.
//!
//! Descriptors that arrive from another process (through `LISTEN_FDS` or the
//! [`pass`](crate::pass) module) are only numbers until checked: a UDP socket
//! handed over where a TCP listener was expected must be an error that names
//! both kinds, not a server that fails on its first `accept`. [`FromFd`] does
//! that check with `fstat`, `SO_DOMAIN`, `SO_TYPE`, `SO_PROTOCOL` and
//! `SO_ACCEPTCONN`.
//!
//! A note on blocking mode: `O_NONBLOCK` belongs to the open socket, which is
//! shared by every process that holds it. The tokio conversions switch it on
//! (tokio needs it); the std conversions leave it as the sender left it.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::FileType;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};

/// The longest path a Unix socket can be bound to or reached at on Linux,
/// in bytes: `sun_path` holds 108 bytes, including the terminating NUL.
/// (The abstract namespace, `@name`, allows as many bytes of name.)
pub const MAX_UNIX_PATH: usize = 107;

/// What a Unix stream socket path leads to, found by connecting to it
/// without blocking ([`probe_unix_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnixPath {
    /// A process accepts connections there (or its backlog is full).
    Live,
    /// Connecting is refused: a socket file left by a process that exited,
    /// or a file that is not a listening socket.
    Refused,
    /// Nothing is there.
    Missing,
}

/// Connects to `path` without blocking to learn whether anyone listens
/// there (and closes the connection at once). The one stale-socket probe
/// of the crate: binding an address (`unix:`) and a descriptor-passing
/// server both replace a stale socket file, and only a stale one.
pub(crate) fn probe_unix_path(path: &Path) -> io::Result<UnixPath> {
    let addr = SocketAddrUnix::new(path)?;
    let s = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    match rustix::net::connect(&s, &addr) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INPROGRESS) => Ok(UnixPath::Live),
        Err(Errno::CONNREFUSED) => Ok(UnixPath::Refused),
        Err(Errno::NOENT) => Ok(UnixPath::Missing),
        Err(e) => Err(e.into()),
    }
}

/// The kind of an open descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdKind {
    /// A listening TCP socket.
    TcpListener {
        /// IPv6 (else IPv4).
        ipv6: bool,
    },
    /// A TCP socket that is not listening (connected, or not yet).
    TcpStream {
        /// IPv6 (else IPv4).
        ipv6: bool,
    },
    /// A UDP socket.
    Udp {
        /// IPv6 (else IPv4).
        ipv6: bool,
    },
    /// A listening Unix stream socket.
    UnixListener,
    /// A Unix stream socket that is not listening.
    UnixStream,
    /// A Unix datagram socket.
    UnixDatagram,
    /// A Unix sequenced-packet socket.
    UnixSeqpacket {
        /// Whether it is listening.
        listening: bool,
    },
    /// Another kind of socket (netlink, SCTP, ...).
    OtherSocket {
        /// The address family (`AF_*`).
        family: u32,
        /// The socket type (`SOCK_*`).
        socket_type: u32,
    },
    /// A regular file.
    File,
    /// A pipe or FIFO.
    Fifo,
    /// A character device (a terminal, `/dev/null`, ...).
    CharDevice,
    /// A directory.
    Directory,
    /// Anything else (block device, symlink opened with `O_PATH`, ...).
    Other,
}

impl FdKind {
    /// Inspects `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
        let st = rustix::fs::fstat(fd)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Socket => {}
            FileType::RegularFile => return Ok(FdKind::File),
            FileType::Fifo => return Ok(FdKind::Fifo),
            FileType::CharacterDevice => return Ok(FdKind::CharDevice),
            FileType::Directory => return Ok(FdKind::Directory),
            _ => return Ok(FdKind::Other),
        }
        let family = sockopt::socket_domain(fd)?;
        let ty = sockopt::socket_type(fd)?;
        let listening = || sockopt::socket_acceptconn(fd);
        let ip = family == AddressFamily::INET || family == AddressFamily::INET6;
        let ipv6 = family == AddressFamily::INET6;
        let proto = sockopt::socket_protocol(fd)?.map(|p| p.as_raw().get());
        let tcp = proto.is_none_or(|p| p == libc::IPPROTO_TCP as u32);
        let udp = proto.is_none_or(|p| p == libc::IPPROTO_UDP as u32);
        Ok(if ip && ty == SocketType::STREAM && tcp {
            if listening()? {
                FdKind::TcpListener { ipv6 }
            } else {
                FdKind::TcpStream { ipv6 }
            }
        } else if ip && ty == SocketType::DGRAM && udp {
            FdKind::Udp { ipv6 }
        } else if family == AddressFamily::UNIX && ty == SocketType::STREAM {
            if listening()? {
                FdKind::UnixListener
            } else {
                FdKind::UnixStream
            }
        } else if family == AddressFamily::UNIX && ty == SocketType::DGRAM {
            FdKind::UnixDatagram
        } else if family == AddressFamily::UNIX && ty == SocketType::SEQPACKET {
            FdKind::UnixSeqpacket {
                listening: listening()?,
            }
        } else {
            FdKind::OtherSocket {
                family: u32::from(family.as_raw()),
                socket_type: ty.as_raw(),
            }
        })
    }

    /// Whether this is a socket of any kind.
    pub fn is_socket(self) -> bool {
        !matches!(
            self,
            FdKind::File | FdKind::Fifo | FdKind::CharDevice | FdKind::Directory | FdKind::Other
        )
    }
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |ipv6: bool| if ipv6 { "IPv6" } else { "IPv4" };
        match *self {
            FdKind::TcpListener { ipv6 } => {
                write!(f, "a TCP listener ({}, SOCK_STREAM, listening)", v(ipv6))
            }
            FdKind::TcpStream { ipv6 } => write!(
                f,
                "a TCP stream socket ({}, SOCK_STREAM, not listening)",
                v(ipv6)
            ),
            FdKind::Udp { ipv6 } => write!(f, "a UDP socket ({}, SOCK_DGRAM)", v(ipv6)),
            FdKind::UnixListener => {
                f.write_str("a Unix stream listener (AF_UNIX, SOCK_STREAM, listening)")
            }
            FdKind::UnixStream => {
                f.write_str("a Unix stream socket (AF_UNIX, SOCK_STREAM, not listening)")
            }
            FdKind::UnixDatagram => f.write_str("a Unix datagram socket (AF_UNIX, SOCK_DGRAM)"),
            FdKind::UnixSeqpacket { listening } => write!(
                f,
                "a Unix seqpacket socket (AF_UNIX, SOCK_SEQPACKET, {})",
                if listening {
                    "listening"
                } else {
                    "not listening"
                }
            ),
            FdKind::OtherSocket {
                family,
                socket_type,
            } => {
                write!(f, "a socket of address family {family}, type {socket_type}")
            }
            FdKind::File => f.write_str("a regular file"),
            FdKind::Fifo => f.write_str("a pipe or FIFO"),
            FdKind::CharDevice => f.write_str("a character device"),
            FdKind::Directory => f.write_str("a directory"),
            FdKind::Other => {
                f.write_str("a descriptor that is neither a socket nor a regular file")
            }
        }
    }
}

/// The credentials of the process at the other end of a connected Unix
/// socket (`SO_PEERCRED`, as of when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Its pid, or 0 when it is in a pid namespace this process cannot see
    /// (a client on the host talking to a server in a container).
    pub pid: i32,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
}

impl PeerCred {
    /// The credentials of the peer of a connected Unix socket.
    pub fn of(socket: BorrowedFd<'_>) -> io::Result<PeerCred> {
        let (pid, uid, gid) = crate::sys::peer_cred(socket)?;
        Ok(PeerCred { pid, uid, gid })
    }
}

/// Why a descriptor could not become the requested type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The descriptor is of another kind than the one asked for.
    #[error("expected {expected}, found {found}")]
    WrongKind {
        /// What the conversion needs, in words.
        expected: &'static str,
        /// What the descriptor is.
        found: FdKind,
    },
    /// A tokio type was asked for outside a tokio runtime.
    #[error(
        "a tokio socket can only be made inside a tokio runtime with I/O enabled; \
         call this from async code (or inside Runtime::enter)"
    )]
    NoRuntime,
    /// The system refused to inspect or convert the descriptor.
    #[error("could not inspect the descriptor: {0}")]
    Io(#[from] io::Error),
}

/// A type that can be made from an owned descriptor of the right kind.
///
/// Implemented for [`OwnedFd`] (any descriptor), [`std::fs::File`] (any
/// descriptor that is not a socket), the std socket types and, with the
/// `tokio` feature, the tokio socket types.
pub trait FromFd: Sized {
    /// What this type needs, in words, for error messages.
    const EXPECTED: &'static str;

    /// Whether a descriptor of `kind` can become this type.
    fn accepts(kind: FdKind) -> bool;

    /// Makes the value; the kind was already checked.
    fn from_checked_fd(fd: OwnedFd) -> Result<Self, ConvertError>;

    /// Checks that `fd` can become this type, without consuming it (for
    /// tokio types this includes being inside a runtime).
    fn check(fd: BorrowedFd<'_>) -> Result<FdKind, ConvertError> {
        let kind = FdKind::of(fd)?;
        if Self::accepts(kind) {
            Ok(kind)
        } else {
            Err(ConvertError::WrongKind {
                expected: Self::EXPECTED,
                found: kind,
            })
        }
    }

    /// Checks the kind of `fd`, then converts it. On a wrong kind the
    /// descriptor is closed; use [`FromFd::check`] first to keep it.
    fn from_fd(fd: OwnedFd) -> Result<Self, ConvertError> {
        Self::check(fd.as_fd())?;
        Self::from_checked_fd(fd)
    }
}

impl FromFd for OwnedFd {
    const EXPECTED: &'static str = "any descriptor";
    fn accepts(_: FdKind) -> bool {
        true
    }
    fn from_checked_fd(fd: OwnedFd) -> Result<Self, ConvertError> {
        Ok(fd)
    }
}

impl FromFd for std::fs::File {
    const EXPECTED: &'static str = "a file, FIFO or device (not a socket)";
    fn accepts(kind: FdKind) -> bool {
        !kind.is_socket()
    }
    fn from_checked_fd(fd: OwnedFd) -> Result<Self, ConvertError> {
        Ok(fd.into())
    }
}

macro_rules! std_socket {
    ($ty:ty, $expected:literal, $pat:pat) => {
        impl FromFd for $ty {
            const EXPECTED: &'static str = $expected;
            fn accepts(kind: FdKind) -> bool {
                matches!(kind, $pat)
            }
            fn from_checked_fd(fd: OwnedFd) -> Result<Self, ConvertError> {
                Ok(fd.into())
            }
        }
    };
}

std_socket!(
    std::net::TcpListener,
    "a TCP listener (IPv4 or IPv6, SOCK_STREAM, listening)",
    FdKind::TcpListener { .. }
);
std_socket!(
    std::net::TcpStream,
    "a TCP stream socket (IPv4 or IPv6, SOCK_STREAM, not listening)",
    FdKind::TcpStream { .. }
);
std_socket!(
    std::net::UdpSocket,
    "a UDP socket (IPv4 or IPv6, SOCK_DGRAM)",
    FdKind::Udp { .. }
);
std_socket!(
    std::os::unix::net::UnixListener,
    "a Unix stream listener (AF_UNIX, SOCK_STREAM, listening)",
    FdKind::UnixListener
);
std_socket!(
    std::os::unix::net::UnixStream,
    "a Unix stream socket (AF_UNIX, SOCK_STREAM, not listening)",
    FdKind::UnixStream
);
std_socket!(
    std::os::unix::net::UnixDatagram,
    "a Unix datagram socket (AF_UNIX, SOCK_DGRAM)",
    FdKind::UnixDatagram
);

#[cfg(feature = "tokio")]
mod tokio_impls {
    use super::*;

    fn runtime() -> Result<(), ConvertError> {
        tokio::runtime::Handle::try_current()
            .map(|_| ())
            .map_err(|_| ConvertError::NoRuntime)
    }

    macro_rules! tokio_socket {
        ($ty:ty, $std:ty) => {
            impl FromFd for $ty {
                const EXPECTED: &'static str = <$std as FromFd>::EXPECTED;
                fn accepts(kind: FdKind) -> bool {
                    <$std as FromFd>::accepts(kind)
                }
                /// Also fails outside a tokio runtime, so that a caller
                /// that checks first keeps the descriptor.
                fn check(fd: BorrowedFd<'_>) -> Result<FdKind, ConvertError> {
                    runtime()?;
                    <$std as FromFd>::check(fd)
                }
                fn from_checked_fd(fd: OwnedFd) -> Result<Self, ConvertError> {
                    runtime()?;
                    let s = <$std>::from(fd);
                    s.set_nonblocking(true)?;
                    Ok(<$ty>::from_std(s)?)
                }
            }
        };
    }

    tokio_socket!(tokio::net::TcpListener, std::net::TcpListener);
    tokio_socket!(tokio::net::TcpStream, std::net::TcpStream);
    tokio_socket!(tokio::net::UdpSocket, std::net::UdpSocket);
    tokio_socket!(tokio::net::UnixListener, std::os::unix::net::UnixListener);
    tokio_socket!(tokio::net::UnixStream, std::os::unix::net::UnixStream);
    tokio_socket!(tokio::net::UnixDatagram, std::os::unix::net::UnixDatagram);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::unix::net::{UnixDatagram, UnixListener};

    #[test]
    fn kinds_are_detected() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            FdKind::of(tcp.as_fd()).unwrap(),
            FdKind::TcpListener { ipv6: false }
        );
        let stream = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        assert_eq!(
            FdKind::of(stream.as_fd()).unwrap(),
            FdKind::TcpStream { ipv6: false }
        );
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            FdKind::of(udp.as_fd()).unwrap(),
            FdKind::Udp { ipv6: false }
        );
        let dir = tempfile::tempdir().unwrap();
        let ul = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(FdKind::of(ul.as_fd()).unwrap(), FdKind::UnixListener);
        let (a, _b) = UnixDatagram::pair().unwrap();
        assert_eq!(FdKind::of(a.as_fd()).unwrap(), FdKind::UnixDatagram);
        let f = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(FdKind::of(f.as_fd()).unwrap(), FdKind::CharDevice);
    }

    #[test]
    fn wrong_kind_names_both() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = TcpListener::from_fd(OwnedFd::from(udp)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("expected a TCP listener"), "{msg}");
        assert!(msg.contains("found a UDP socket"), "{msg}");
    }

    #[test]
    fn tokio_needs_runtime() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = tokio::net::TcpListener::from_fd(OwnedFd::from(tcp)).unwrap_err();
        assert!(matches!(err, ConvertError::NoRuntime), "{err}");
    }
}
