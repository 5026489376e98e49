//! Socket addresses as operators write them, and binding them with errors
//! that say what to do.
//!
//! | form | meaning |
//! |---|---|
//! | `tcp://127.0.0.1:8080`, `tcp://[::1]:8080`, `127.0.0.1:8080` | TCP listener |
//! | `udp://0.0.0.0:5353` | UDP socket |
//! | `unix:/run/app.sock` | Unix stream listener |
//!
//! ```
//! use handover::address::Address;
//! let a: Address = "tcp://127.0.0.1:0".parse().unwrap();
//! let fd = a.bind(&Default::default()).unwrap();
//! let listener = std::net::TcpListener::from(fd);
//! ```

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::socket::{MAX_UNIX_PATH, UnixPath, probe_unix_path};

/// A socket to bind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP listener.
    Tcp(SocketAddr),
    /// A UDP socket.
    Udp(SocketAddr),
    /// A Unix stream listener at a path.
    Unix(PathBuf),
}

/// Why an address could not be parsed or bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The text is not an address.
    #[error(
        "{text:?} is not a socket address: {why}. Expected tcp://HOST:PORT, udp://HOST:PORT or \
         unix:PATH (for example tcp://127.0.0.1:8080, tcp://[::1]:8080, unix:/run/app.sock)"
    )]
    Parse {
        /// The text.
        text: String,
        /// What was wrong.
        why: String,
    },
    /// The port is taken.
    #[error(
        "cannot bind {address}: the address is already in use{}. Stop the other process, \
         choose another port, or pass the socket on from the process that has it",
        match (holder_pid, holder_name) {
            (Some(pid), Some(name)) => format!(" by pid {pid} ({name})"),
            (Some(pid), None) => format!(" by pid {pid}"),
            _ => String::new(),
        }
    )]
    InUse {
        /// The address.
        address: Address,
        /// The pid of the process holding it, when `/proc` tells (only
        /// processes of this user, or any for root).
        holder_pid: Option<u32>,
        /// That process's command name (`/proc/PID/comm`).
        holder_name: Option<String>,
    },
    /// Setting an option on the new socket before `bind` failed (one of
    /// [`BindOptions`], or its [`before_bind`](BindOptions::before_bind)
    /// hook).
    #[error(
        "cannot bind {address}: setting socket options before bind failed: {source}; check the \
         options given in BindOptions (and what its before_bind hook does)"
    )]
    Configure {
        /// The address.
        address: Address,
        /// The error of the option (or the hook).
        #[source]
        source: io::Error,
    },
    /// A port below the unprivileged range needs privileges this process
    /// does not have.
    #[error(
        "cannot bind {address}: ports below {first_unprivileged} are privileged and this process \
         may not bind them (it is not root and lacks CAP_NET_BIND_SERVICE); use a port of \
         {first_unprivileged} or above, grant the capability (systemd: \
         AmbientCapabilities=CAP_NET_BIND_SERVICE; or setcap cap_net_bind_service=+ep on the \
         binary), or let systemd bind the socket and pass it (a .socket unit)"
    )]
    PrivilegedPort {
        /// The address.
        address: Address,
        /// The lowest port anyone may bind (`net.ipv4.ip_unprivileged_port_start`).
        first_unprivileged: u16,
    },
    /// A Unix socket path over the kernel's limit.
    #[error(
        "cannot bind unix:{path}: the path is {len} bytes, and Unix socket paths are limited to \
         {MAX_UNIX_PATH}; choose a shorter directory (for example under /run or /tmp)",
        path = path.display()
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The directory of a Unix socket does not exist.
    #[error(
        "cannot bind unix:{path}: the directory {dir} does not exist; create it first",
        path = path.display(),
        dir = dir.display()
    )]
    NoDirectory {
        /// The path.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// A live process listens on the Unix socket path.
    #[error(
        "cannot bind unix:{path}: another process is listening there; stop it, or choose another path",
        path = path.display()
    )]
    UnixInUse {
        /// The path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error(
        "cannot bind unix:{path}: a file that is not a socket exists there; refusing to remove it",
        path = path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another system error.
    #[error("cannot bind {address}: {source}")]
    Io {
        /// The address.
        address: Address,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Udp(a) => write!(f, "udp://{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

fn host_port(text: &str, rest: &str, resolve: bool) -> Result<SocketAddr, AddressError> {
    let err = |why: String| AddressError::Parse {
        text: text.to_string(),
        why,
    };
    if let Ok(a) = rest.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(err("a port is missing (HOST:PORT)".into()));
    };
    if port.parse::<u16>().is_err() {
        return Err(err(format!(
            "the port {port:?} is not a number from 0 to 65535"
        )));
    }
    if host.is_empty() {
        return Err(err(
            "the host is missing (use 0.0.0.0 or [::] for all interfaces)".into(),
        ));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(err(
            "an IPv6 host must be in brackets, like [::1]:8080".into()
        ));
    }
    if !resolve {
        return Err(err(format!(
            "the host {host:?} is a name, and names are not resolved here"
        )));
    }
    // Resolve names such as localhost; take the first address.
    let mut addrs = rest
        .to_socket_addrs()
        .map_err(|e| err(format!("the host {host:?} could not be resolved ({e})")))?;
    addrs
        .next()
        .ok_or_else(|| err(format!("the host {host:?} has no address")))
}

impl FromStr for Address {
    type Err = AddressError;

    /// Parses an address; a host name (such as `localhost`) is resolved to
    /// its first address.
    fn from_str(text: &str) -> Result<Address, AddressError> {
        Address::parse(text, true)
    }
}

impl Address {
    /// Parses an address without resolving host names (a name is an
    /// error): for untrusted input, and for fuzzing.
    pub fn parse_literal(text: &str) -> Result<Address, AddressError> {
        Address::parse(text, false)
    }

    fn parse(text: &str, resolve: bool) -> Result<Address, AddressError> {
        let err = |why: &str| AddressError::Parse {
            text: text.to_string(),
            why: why.to_string(),
        };
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            return host_port(text, rest, resolve).map(Address::Tcp);
        }
        if let Some(rest) = text.strip_prefix("udp://") {
            return host_port(text, rest, resolve).map(Address::Udp);
        }
        // Only `unix:PATH`: also accepting `unix://` would make a path that
        // starts with `//` print as text that parses to another path.
        if let Some(rest) = text.strip_prefix("unix:") {
            if rest.is_empty() {
                return Err(err("the path is empty"));
            }
            if rest.contains('\0') {
                return Err(err("the path contains a NUL byte"));
            }
            return Ok(Address::Unix(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(err(&format!(
                "the scheme {scheme:?} is not one of tcp, udp, unix"
            )));
        }
        host_port(text, text, resolve).map(Address::Tcp)
    }
}

/// A hook that sets options on a socket before it is bound; see
/// [`BindOptions::before_bind`].
type BeforeBind = Arc<dyn Fn(BorrowedFd<'_>, &Address) -> io::Result<()> + Send + Sync>;

/// How [`Address::bind`] makes a socket: the listen backlog, the mode of a
/// Unix socket file, and options set before `bind`.
///
/// Built like the crate's other option structs: `BindOptions::new()` (or
/// `default()`) and by-value setters.
///
/// ```
/// use handover::address::{Address, BindOptions};
/// let options = BindOptions::new().reuse_port(true).backlog(1024);
/// let a: Address = "tcp://127.0.0.1:0".parse().unwrap();
/// let first = a.bind(&options).unwrap();
/// // Another socket on the same port, as SO_REUSEPORT allows.
/// let port = Address::local(&first, &a).unwrap();
/// let second = port.bind(&options).unwrap();
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct BindOptions {
    backlog: i32,
    unix_mode: u32,
    reuse_port: bool,
    ipv6_only: Option<bool>,
    before_bind: Option<BeforeBind>,
}

impl Default for BindOptions {
    fn default() -> Self {
        BindOptions {
            backlog: 4096,
            unix_mode: 0o600,
            reuse_port: false,
            ipv6_only: None,
            before_bind: None,
        }
    }
}

impl fmt::Debug for BindOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BindOptions")
            .field("backlog", &self.backlog)
            .field("unix_mode", &format_args!("{:#o}", self.unix_mode))
            .field("reuse_port", &self.reuse_port)
            .field("ipv6_only", &self.ipv6_only)
            .field("before_bind", &self.before_bind.as_ref().map(|_| "Fn"))
            .finish()
    }
}

impl BindOptions {
    /// The defaults: backlog 4096, Unix socket files mode `0o600`, no
    /// `SO_REUSEPORT`, the system's `IPV6_V6ONLY`, no hook.
    pub fn new() -> BindOptions {
        BindOptions::default()
    }

    /// The listen backlog of stream sockets (default 4096, capped by the
    /// kernel's `net.core.somaxconn`).
    pub fn backlog(mut self, backlog: i32) -> BindOptions {
        self.backlog = backlog;
        self
    }

    /// The permission bits of a Unix socket file (default `0o600`), set
    /// before the socket listens, so no client connects through a wider
    /// mode.
    pub fn unix_mode(mut self, mode: u32) -> BindOptions {
        self.unix_mode = mode;
        self
    }

    /// `SO_REUSEPORT` on TCP and UDP sockets (default off): several
    /// sockets, in this process or others of the same user, may bind the
    /// same address, and the kernel spreads connections over them.
    ///
    /// Not needed for zero-downtime restarts, where the same socket is
    /// handed over; note that closing one of several `SO_REUSEPORT`
    /// listeners resets the connections in its own accept queue.
    pub fn reuse_port(mut self, on: bool) -> BindOptions {
        self.reuse_port = on;
        self
    }

    /// `IPV6_V6ONLY` on IPv6 TCP and UDP sockets: `true` accepts IPv6 only,
    /// `false` IPv4-mapped addresses too (dual stack). Default: the
    /// system's (`net.ipv6.bindv6only`, usually dual stack).
    pub fn ipv6_only(mut self, on: bool) -> BindOptions {
        self.ipv6_only = Some(on);
        self
    }

    /// Calls `hook` on each new socket after the options above are set and
    /// before it is bound: to set any other option (`SO_RCVBUF`,
    /// `TCP_FASTOPEN`, `IP_FREEBIND`, ...) with `rustix`, `socket2`
    /// (`SockRef::from(&fd)`) or `libc`. An error from the hook fails the
    /// bind with [`AddressError::Configure`], and the socket is closed.
    ///
    /// ```
    /// use handover::address::{Address, BindOptions};
    /// let options = BindOptions::new().before_bind(|fd, _address| {
    ///     rustix::net::sockopt::set_socket_recv_buffer_size(fd, 1 << 20)?;
    ///     Ok(())
    /// });
    /// let fd = "tcp://127.0.0.1:0".parse::<Address>().unwrap().bind(&options).unwrap();
    /// ```
    pub fn before_bind<F>(mut self, hook: F) -> BindOptions
    where
        F: Fn(BorrowedFd<'_>, &Address) -> io::Result<()> + Send + Sync + 'static,
    {
        self.before_bind = Some(Arc::new(hook));
        self
    }
}

impl Address {
    /// Binds (and for stream sockets listens) a new, blocking,
    /// close-on-exec socket, with `options`. TCP listeners get
    /// `SO_REUSEADDR`.
    ///
    /// A Unix socket file left by a dead process (nobody accepts on it) is
    /// replaced; a live one is an error. The file gets the options' mode
    /// before the socket listens, so no client can connect through a wider
    /// mode.
    pub fn bind(&self, options: &BindOptions) -> Result<OwnedFd, AddressError> {
        let io = |source: io::Error| AddressError::Io {
            address: self.clone(),
            source,
        };
        let configure = |source: io::Error| AddressError::Configure {
            address: self.clone(),
            source,
        };
        match self {
            Address::Tcp(a) | Address::Udp(a) => {
                let tcp = matches!(self, Address::Tcp(_));
                let ty = if tcp { Type::STREAM } else { Type::DGRAM };
                let s = Socket::new(Domain::for_address(*a), ty, None).map_err(io)?;
                if tcp {
                    s.set_reuse_address(true).map_err(configure)?;
                }
                if options.reuse_port {
                    s.set_reuse_port(true).map_err(configure)?;
                }
                if let (Some(only), SocketAddr::V6(_)) = (options.ipv6_only, a) {
                    s.set_only_v6(only).map_err(configure)?;
                }
                if let Some(hook) = &options.before_bind {
                    hook(s.as_fd(), self).map_err(configure)?;
                }
                if let Err(e) = s.bind(&SockAddr::from(*a)) {
                    if e.kind() == io::ErrorKind::AddrInUse {
                        let holder = port_holder(*a, tcp);
                        return Err(AddressError::InUse {
                            address: self.clone(),
                            holder_pid: holder.as_ref().map(|h| h.0),
                            holder_name: holder.map(|h| h.1),
                        });
                    }
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        let first = first_unprivileged_port();
                        if a.port() < first {
                            return Err(AddressError::PrivilegedPort {
                                address: self.clone(),
                                first_unprivileged: first,
                            });
                        }
                    }
                    return Err(io(e));
                }
                if tcp {
                    s.listen(options.backlog).map_err(io)?;
                }
                Ok(s.into())
            }
            Address::Unix(path) => {
                let len = path.as_os_str().len();
                if len > MAX_UNIX_PATH {
                    return Err(AddressError::PathTooLong {
                        path: path.clone(),
                        len,
                    });
                }
                let dir = match path.parent() {
                    Some(d) if d.as_os_str().is_empty() => Path::new("."),
                    Some(d) => d,
                    None => Path::new("/"),
                };
                if !dir.is_dir() {
                    return Err(AddressError::NoDirectory {
                        path: path.clone(),
                        dir: dir.to_owned(),
                    });
                }
                remove_stale_socket(path)?;
                let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(io)?;
                if let Some(hook) = &options.before_bind {
                    hook(s.as_fd(), self).map_err(configure)?;
                }
                let addr = SockAddr::unix(path).map_err(io)?;
                match s.bind(&addr) {
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                        return Err(AddressError::UnixInUse { path: path.clone() });
                    }
                    r => r.map_err(io)?,
                }
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(options.unix_mode))
                    .map_err(io)?;
                s.listen(options.backlog).map_err(io)?;
                Ok(s.into())
            }
        }
    }

    /// The address a bound socket actually has (for `tcp://127.0.0.1:0`, the
    /// port the kernel chose), of the same kind as `kind`.
    pub fn local(fd: impl AsFd, kind: &Address) -> io::Result<Address> {
        let a = rustix::net::getsockname(&fd)?;
        Ok(match kind {
            Address::Tcp(_) | Address::Udp(_) => {
                let sa: SocketAddr = a
                    .try_into()
                    .map_err(|_| io::Error::other("not an internet socket"))?;
                if matches!(kind, Address::Tcp(_)) {
                    Address::Tcp(sa)
                } else {
                    Address::Udp(sa)
                }
            }
            Address::Unix(p) => Address::Unix(p.clone()),
        })
    }
}

/// Removes a Unix socket file nobody listens on; errors if someone does, or
/// if the file is not a socket.
fn remove_stale_socket(path: &Path) -> Result<(), AddressError> {
    let io = |source: io::Error| AddressError::Io {
        address: Address::Unix(path.to_owned()),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io(source)),
    };
    if !meta.file_type().is_socket() {
        return Err(AddressError::NotASocket {
            path: path.to_owned(),
        });
    }
    match probe_unix_path(path).map_err(io)? {
        UnixPath::Live => Err(AddressError::UnixInUse {
            path: path.to_owned(),
        }),
        UnixPath::Refused => match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        },
        UnixPath::Missing => Ok(()),
    }
}

/// The lowest port an unprivileged process may bind: the sysctl
/// `net.ipv4.ip_unprivileged_port_start` (it applies to IPv6 too), 1024
/// when it cannot be read.
fn first_unprivileged_port() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Which process holds a local port (pid, command name), from
/// `/proc/net/{tcp,udp}{,6}` and `/proc/*/fd` (only processes this user may
/// inspect).
fn port_holder(addr: SocketAddr, tcp: bool) -> Option<(u32, String)> {
    let proto = if tcp { "tcp" } else { "udp" };
    let mut inodes = Vec::new();
    for file in [format!("/proc/net/{proto}"), format!("/proc/net/{proto}6")] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let port = cols[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // 0A is LISTEN; UDP sockets are 07 (unconnected).
            let state_ok = !tcp || cols[3] == "0A";
            if port == Some(addr.port()) && state_ok {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                let name = std::fs::read_to_string(proc_entry.path().join("comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Some((pid, name));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let p = |s: &str| s.parse::<Address>();
        assert_eq!(
            p("tcp://127.0.0.1:80").unwrap(),
            Address::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            p("127.0.0.1:80").unwrap(),
            Address::Tcp("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            p("tcp://[::1]:80").unwrap(),
            Address::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            p("udp://0.0.0.0:53").unwrap(),
            Address::Udp("0.0.0.0:53".parse().unwrap())
        );
        assert_eq!(
            p("unix:/run/x.sock").unwrap(),
            Address::Unix("/run/x.sock".into())
        );
        assert_eq!(
            p("unix:rel.sock").unwrap(),
            Address::Unix("rel.sock".into())
        );
        assert!(matches!(p("tcp://localhost:80").unwrap(), Address::Tcp(a) if a.port() == 80));
        for (bad, why) in [
            ("", "empty"),
            ("tcp://127.0.0.1", "port is missing"),
            ("tcp://127.0.0.1:99999", "not a number from 0 to 65535"),
            ("tcp://:80", "host is missing"),
            ("tcp://::1:80", "brackets"),
            ("http://x:80", "scheme \"http\""),
            ("unix:", "path is empty"),
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("Expected tcp://HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "tcp://127.0.0.1:80",
            "udp://[::1]:53",
            "unix:/tmp/a",
            "unix:////&x",
        ] {
            let a = Address::parse_literal(s).unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(Address::parse_literal(&a.to_string()).unwrap(), a);
        }
        // Names are resolved by FromStr only.
        assert!(
            Address::parse_literal("tcp://localhost:80")
                .unwrap_err()
                .to_string()
                .contains("not resolved")
        );
    }

    #[test]
    fn port_in_use_names_the_holder() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = Address::Tcp(l.local_addr().unwrap());
        let e = a.bind(&BindOptions::default()).unwrap_err().to_string();
        assert!(e.contains("already in use"), "{e}");
        assert!(e.contains(&format!("by pid {}", std::process::id())), "{e}");
    }

    #[test]
    fn unix_errors_and_stale_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let a = Address::Unix(path.clone());
        let fd = a.bind(&BindOptions::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused.
        let e = a.bind(&BindOptions::default()).unwrap_err();
        assert!(matches!(e, AddressError::UnixInUse { .. }), "{e}");
        // Stale: replaced.
        drop(fd);
        let _fd = a.bind(&BindOptions::default().unix_mode(0o660)).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        // Not a socket: left alone.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let e = Address::Unix(file)
            .bind(&BindOptions::default())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("not a socket exists there; refusing"),
            "{e}"
        );
        let e = Address::Unix(dir.path().join("no/such/dir/s"))
            .bind(&BindOptions::default())
            .unwrap_err();
        assert!(
            e.to_string().contains("does not exist; create it first"),
            "{e}"
        );
        let long = dir.path().join("x".repeat(120));
        let e = Address::Unix(long)
            .bind(&BindOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("limited to 107"), "{e}");
    }

    #[test]
    fn reuse_port_lets_two_sockets_share_an_address() {
        let a: Address = "tcp://127.0.0.1:0".parse().unwrap();
        let shared = BindOptions::new().reuse_port(true);
        let first = a.bind(&shared).unwrap();
        let port = Address::local(&first, &a).unwrap();
        assert!(rustix::net::sockopt::socket_reuseport(&first).unwrap());
        let second = port.bind(&shared).unwrap();
        assert_eq!(Address::local(&second, &a).unwrap(), port);
        // Without the option on the newcomer, the port is taken.
        let e = port.bind(&BindOptions::new()).unwrap_err();
        assert!(matches!(e, AddressError::InUse { .. }), "{e}");
        // UDP too.
        let u: Address = "udp://127.0.0.1:0".parse().unwrap();
        let one = u.bind(&shared).unwrap();
        let uport = Address::local(&one, &u).unwrap();
        uport.bind(&shared).unwrap();
    }

    #[test]
    fn ipv6_only_is_set_before_bind() {
        // Binding a specific IPv6 address (::1) makes the kernel set
        // IPV6_V6ONLY itself, so the option is read where it matters: in
        // the hook, which runs after the options and before bind.
        let a: Address = "tcp://[::1]:0".parse().unwrap();
        for only in [true, false] {
            let seen = Arc::new(std::sync::Mutex::new(None));
            let theirs = Arc::clone(&seen);
            let options = BindOptions::new()
                .ipv6_only(only)
                .before_bind(move |fd, _| {
                    *theirs.lock().unwrap() = Some(rustix::net::sockopt::ipv6_v6only(fd)?);
                    Ok(())
                });
            match a.bind(&options) {
                Ok(_) => {}
                // No IPv6 on this machine: nothing to check.
                Err(AddressError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AddrNotAvailable =>
                {
                    return;
                }
                Err(e) => panic!("{e}"),
            };
            assert_eq!(*seen.lock().unwrap(), Some(only));
        }
    }

    #[test]
    fn the_hook_runs_before_bind_and_its_error_fails_the_bind() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let unix = Address::Unix(dir.path().join("h.sock"));
        for a in [
            "tcp://127.0.0.1:0".parse::<Address>().unwrap(),
            unix.clone(),
        ] {
            let called = Arc::new(AtomicBool::new(false));
            let seen = Arc::clone(&called);
            let options = BindOptions::new().backlog(7).before_bind(move |fd, _| {
                // Not bound yet: an internet socket has port 0, a Unix one
                // no path.
                let local = rustix::net::getsockname(fd)?;
                let unbound = match std::net::SocketAddr::try_from(local.clone()) {
                    Ok(sa) => sa.port() == 0,
                    Err(_) => rustix::net::SocketAddrUnix::try_from(local)
                        .map(|u| u.path().is_none())
                        .unwrap_or(false),
                };
                assert!(unbound, "the hook runs before bind");
                rustix::net::sockopt::set_socket_recv_buffer_size(fd, 256 * 1024)?;
                seen.store(true, Ordering::SeqCst);
                Ok(())
            });
            let fd = a.bind(&options).unwrap();
            assert!(called.load(Ordering::SeqCst));
            // The kernel doubles what was asked for.
            assert!(rustix::net::sockopt::socket_recv_buffer_size(&fd).unwrap() >= 256 * 1024);
            drop(fd);
            let failing =
                BindOptions::new().before_bind(|_, _| Err(io::Error::other("no such option here")));
            let e = a.bind(&failing).unwrap_err();
            assert!(matches!(e, AddressError::Configure { .. }), "{e}");
            assert!(
                e.to_string()
                    .contains("setting socket options before bind failed"),
                "{e}"
            );
        }
        // A failing hook leaves no socket file behind.
        assert!(!dir.path().join("h.sock").exists());
    }
}
