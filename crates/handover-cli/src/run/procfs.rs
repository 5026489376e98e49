//! Which process holds a connection: the kernel's answer, read from `/proc`
//! and the `sock_diag` netlink interface (what `ss` uses). The `http:`
//! readiness probe uses it to accept only an answer from the new generation
//! (every generation shares the listening socket, so a probe connection may
//! be accepted by the old one), and `status` to count each generation's open
//! connections.
//!
//! Nothing here needs privileges: a process may read the `/proc` entries of
//! its own user's processes, and `sock_diag` looks up sockets by address or
//! inode for anyone.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

/// The processes in process group `pgid` (a generation: its main process
/// leads the group, and the workers it forks stay in it).
pub(super) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process_group(pid) == Some(pgid))
        .collect()
}

/// The process group of `pid`, from `/proc/PID/stat` (`pid (comm) state
/// ppid pgrp ...`; comm may hold spaces and parentheses, so the fields are
/// counted from the last `)`).
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// The socket inodes `pid` holds open (`/proc/PID/fd/N -> socket:[INODE]`).
fn socket_inodes(pid: u32, into: &mut HashSet<u64>) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    for fd in fds.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        {
            into.insert(inode);
        }
    }
}

/// Whether a process of group `pgid` holds the socket with this inode.
pub(super) fn group_holds(pgid: u32, inode: u64) -> bool {
    let mut inodes = HashSet::new();
    for pid in group_members(pgid) {
        socket_inodes(pid, &mut inodes);
        if inodes.contains(&inode) {
            return true;
        }
    }
    false
}

/// Where the listening sockets are, to count the connections accepted on
/// them.
#[derive(Debug, Default, Clone)]
pub(super) struct Listening {
    /// Local ports of TCP listeners.
    pub(super) tcp_ports: Vec<u16>,
    /// Paths of Unix listeners.
    pub(super) unix_paths: Vec<PathBuf>,
}

impl Listening {
    /// Adds the listening socket `fd`.
    pub(super) fn add(&mut self, fd: BorrowedFd<'_>) {
        match rustix::net::getsockname(fd) {
            Ok(addr) => {
                if let Ok(a) = std::net::SocketAddr::try_from(addr.clone()) {
                    self.tcp_ports.push(a.port());
                } else if let Ok(u) = rustix::net::SocketAddrUnix::try_from(addr)
                    && let Some(p) = u.path_bytes()
                {
                    use std::os::unix::ffi::OsStrExt;
                    self.unix_paths
                        .push(PathBuf::from(std::ffi::OsStr::from_bytes(p)));
                }
            }
            Err(e) => tracing::debug!(error = %e, "getsockname of a listening socket"),
        }
    }
}

/// Open connections that processes of each group in `pgids` accepted on
/// the listening sockets (TCP with a process holding it, Unix connected);
/// a group is left out when the kernel cannot tell. It reads `/proc` and
/// asks `sock_diag` (which filters by port in the kernel, so thousands of
/// other sockets, or `TIME_WAIT` ones, cost little): run it off the driver.
pub(super) fn connections(pgids: &[(u64, u32)], listening: &Listening) -> Vec<(u64, usize)> {
    let mut tcp = HashSet::new();
    let mut tcp_known = listening.tcp_ports.is_empty();
    if let Ok(diag) = Diag::open() {
        tcp_known = true;
        for &port in &listening.tcp_ports {
            match diag.tcp_inodes_on_port(port) {
                Ok(found) => tcp.extend(found),
                Err(e) => {
                    tracing::debug!(error = %e, "sock_diag dump");
                    tcp_known = false;
                }
            }
        }
    }
    let unix = if listening.unix_paths.is_empty() {
        Some(String::new())
    } else {
        std::fs::read_to_string("/proc/net/unix").ok()
    };
    if !tcp_known || unix.is_none() {
        return Vec::new();
    }
    let unix = unix.unwrap_or_default();
    pgids
        .iter()
        .map(|&(id, pgid)| {
            let mut inodes = HashSet::new();
            for pid in group_members(pgid) {
                socket_inodes(pid, &mut inodes);
            }
            let n = inodes.intersection(&tcp).count()
                + count_unix(&unix, &listening.unix_paths, &inodes);
            (id, n)
        })
        .collect()
}

/// Rows of `/proc/net/unix` for a path in `paths`, connected (`St` 03),
/// with an inode in `inodes` (an accepted socket shows its listener's path).
fn count_unix(table: &str, paths: &[PathBuf], inodes: &HashSet<u64>) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            let (Some(state), Some(inode), Some(path)) = (f.get(5), f.get(6), f.get(7)) else {
                return false;
            };
            *state == "03"
                && paths.iter().any(|p| Path::new(path) == p)
                && inode.parse::<u64>().is_ok_and(|i| inodes.contains(&i))
        })
        .count()
}

// sock_diag(7): netlink messages, native byte order except where noted.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const TCP_LISTEN: u8 = 10;
const UDIAG_SHOW_PEER: u32 = 4;
const UNIX_DIAG_PEER: u16 = 2;
const NO_COOKIE: u32 = u32::MAX;

/// A netlink socket for `sock_diag` requests.
pub(super) struct Diag(OwnedFd);

impl Diag {
    /// Opens one (with a receive timeout, so a lost answer cannot block).
    pub(super) fn open() -> std::io::Result<Diag> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            Some(rustix::net::netlink::SOCK_DIAG),
        )?;
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_secs(1)),
        )?;
        Ok(Diag(fd))
    }

    /// Sends `payload` as one `SOCK_DIAG_BY_FAMILY` request and returns the
    /// payload of the answer, or `None` for "no such socket".
    fn ask(&self, payload: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        msg.extend_from_slice(payload);
        rustix::net::send(self.0.as_fd(), &msg, SendFlags::empty())?;
        let mut buf = vec![0u8; 8192];
        let (n, _) = rustix::net::recv(self.0.as_fd(), &mut buf[..], RecvFlags::empty())?;
        let buf = &buf[..n];
        if buf.len() < NLMSG_HDRLEN {
            return Err(std::io::Error::other("sock_diag: short answer"));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let mlen = (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(buf.len());
        if kind == NLMSG_ERROR {
            let e = netlink_error(buf);
            return match e.raw_os_error() {
                Some(0) | Some(libc::ENOENT) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(buf[NLMSG_HDRLEN..mlen].to_vec()))
    }

    /// The inode of the server side of a TCP connection from `client` to
    /// `server` (0 while it waits in the accept queue: no process holds it
    /// yet), or `None` when there is no such connection.
    pub(super) fn tcp_server_inode(
        &self,
        server: std::net::SocketAddr,
        client: std::net::SocketAddr,
    ) -> std::io::Result<Option<u64>> {
        let family = match server {
            std::net::SocketAddr::V4(_) => libc::AF_INET as u8,
            std::net::SocketAddr::V6(_) => libc::AF_INET6 as u8,
        };
        let mut req = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        // inet_diag_sockid, ports and addresses in network order: the
        // server side's local end is `server`, its remote end `client`.
        req.extend_from_slice(&server.port().to_be_bytes());
        req.extend_from_slice(&client.port().to_be_bytes());
        req.extend_from_slice(&addr16(server));
        req.extend_from_slice(&addr16(client));
        req.extend_from_slice(&0u32.to_ne_bytes()); // any interface
        req.extend_from_slice(&NO_COOKIE.to_ne_bytes());
        req.extend_from_slice(&NO_COOKIE.to_ne_bytes());
        let Some(msg) = self.ask(&req)? else {
            return Ok(None);
        };
        inet_diag_inode(&msg, client.port())
    }

    /// The inodes of the TCP sockets (IPv4 and IPv6) whose local port is
    /// `port`, in any state where a process can hold them (not LISTEN, not
    /// TIME_WAIT): the connections accepted on a listener of that port
    /// (outgoing connections have other local ports).
    pub(super) fn tcp_inodes_on_port(&self, port: u16) -> std::io::Result<Vec<u64>> {
        // ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
        let states: u32 = [1u32, 4, 5, 8, 9, 11].iter().map(|s| 1 << s).sum();
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let mut req = vec![family, libc::IPPROTO_TCP as u8, 0, 0];
            req.extend_from_slice(&states.to_ne_bytes());
            // The kernel skips sockets whose local port is not this one.
            req.extend_from_slice(&port.to_be_bytes());
            req.extend_from_slice(&[0u8; 2 + 16 + 16 + 4]);
            req.extend_from_slice(&NO_COOKIE.to_ne_bytes());
            req.extend_from_slice(&NO_COOKIE.to_ne_bytes());
            self.dump(&req, |msg| {
                if let Some(inode) = inet_diag_local(msg, port) {
                    out.push(inode);
                }
            })?;
        }
        Ok(out)
    }

    /// Sends `payload` as a `SOCK_DIAG_BY_FAMILY` dump request and hands the
    /// payload of every answer to `each`.
    fn dump(&self, payload: &[u8], mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        msg.extend_from_slice(&2u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        rustix::net::send(self.0.as_fd(), &msg, SendFlags::empty())?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let (n, _) = rustix::net::recv(self.0.as_fd(), &mut buf[..], RecvFlags::empty())?;
            if n == 0 || each_message(&buf[..n], &mut each)? {
                return Ok(());
            }
        }
    }

    /// The inode of the peer of Unix socket `inode` (the server side of a
    /// connection this process made: 0 while it waits in the accept queue),
    /// or `None` when the kernel does not say.
    pub(super) fn unix_peer_inode(&self, inode: u64) -> std::io::Result<Option<u64>> {
        let Ok(ino) = u32::try_from(inode) else {
            return Ok(None);
        };
        let mut req = vec![libc::AF_UNIX as u8, 0, 0, 0];
        req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        req.extend_from_slice(&ino.to_ne_bytes());
        req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
        req.extend_from_slice(&NO_COOKIE.to_ne_bytes());
        req.extend_from_slice(&NO_COOKIE.to_ne_bytes());
        let Some(msg) = self.ask(&req)? else {
            return Ok(None);
        };
        Ok(Some(unix_diag_peer(&msg)))
    }
}

/// Hands the payload of each netlink message in `buf` (one datagram of a
/// dump) to `each`; `Ok(true)` at the end of the dump.
fn each_message(buf: &[u8], each: &mut impl FnMut(&[u8])) -> std::io::Result<bool> {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let b = &buf[at..];
        let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if mlen < NLMSG_HDRLEN || mlen > b.len() {
            return Err(std::io::Error::other("sock_diag: malformed answer"));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => return Err(netlink_error(b)),
            _ => each(&b[NLMSG_HDRLEN..mlen]),
        }
        at = at.saturating_add((mlen + 3) & !3);
    }
    Ok(false)
}

/// The error an `NLMSG_ERROR` message carries (a negative errno after the
/// header).
fn netlink_error(msg: &[u8]) -> std::io::Error {
    let errno = msg
        .get(16..20)
        .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
        .unwrap_or(0);
    std::io::Error::from_raw_os_error(errno.saturating_neg())
}

/// The inode in an `inet_diag_msg` answering an exact lookup of the server
/// side of a connection from local port `client_port`; `None` when the
/// kernel answered with something else.
///
/// `inet_diag_msg`: family, state, timer, retrans, sockid (48 bytes: sport,
/// dport, src, dst, if, cookie), expires, rqueue, wqueue, uid, inode.
fn inet_diag_inode(msg: &[u8], client_port: u16) -> std::io::Result<Option<u64>> {
    if msg.len() < 72 {
        return Err(std::io::Error::other("sock_diag: short inet_diag_msg"));
    }
    let state = msg[1];
    let dport = u16::from_be_bytes([msg[6], msg[7]]);
    // An exact lookup falls back to the listener when the connection is not
    // found: that answer is not the connection.
    if state == TCP_LISTEN || dport != client_port {
        return Ok(None);
    }
    Ok(Some(u64::from(u32::from_ne_bytes([
        msg[68], msg[69], msg[70], msg[71],
    ]))))
}

/// The inode of an `inet_diag_msg` of a dump whose local port is `port`, if
/// a process holds it.
fn inet_diag_local(msg: &[u8], port: u16) -> Option<u64> {
    if msg.len() < 72 || u16::from_be_bytes([msg[4], msg[5]]) != port {
        return None;
    }
    let inode = u32::from_ne_bytes([msg[68], msg[69], msg[70], msg[71]]);
    (inode != 0).then_some(u64::from(inode))
}

/// The peer inode in a `unix_diag_msg` (16 bytes, then attributes: length,
/// type, value, each padded to 4 bytes); 0 when there is none (yet).
fn unix_diag_peer(msg: &[u8]) -> u64 {
    let mut at = 16;
    while at + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
        if len < 4 || at + len > msg.len() {
            break;
        }
        if kind == UNIX_DIAG_PEER && len >= 8 {
            let v = &msg[at + 4..at + 8];
            return u64::from(u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
        }
        at += (len + 3) & !3;
    }
    0
}

/// An address as the 16 bytes of `inet_diag_sockid` (IPv4 in the first 4).
fn addr16(a: std::net::SocketAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        std::net::SocketAddr::V4(v4) => out[..4].copy_from_slice(&v4.ip().octets()),
        std::net::SocketAddr::V6(v6) => out.copy_from_slice(&v6.ip().octets()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_kernel_says_when_a_tcp_connection_was_accepted_and_by_whom() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let diag = Diag::open().unwrap();
        let local = client.local_addr().unwrap();
        // In the accept queue: it exists, nobody holds it.
        assert_eq!(diag.tcp_server_inode(server, local).unwrap(), Some(0));
        let (accepted, _) = listener.accept().unwrap();
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", accepted.as_raw_fd()))
            .unwrap()
            .ino();
        assert_eq!(diag.tcp_server_inode(server, local).unwrap(), Some(inode));
        let me = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
        assert!(group_holds(me, inode));
        assert!(!group_holds(me, inode + 1_000_000_000));
        // A connection that does not exist: not the listener.
        let nobody = "127.0.0.1:1".parse().unwrap();
        assert_eq!(diag.tcp_server_inode(server, nobody).unwrap(), None);
        // The status count sees it.
        let mut l = Listening::default();
        l.add(listener.as_fd());
        assert_eq!(l.tcp_ports, vec![server.port()]);
        let counted = connections(&[(1, me)], &l);
        assert_eq!(counted, vec![(1, 1)]);
        assert!(
            diag.tcp_inodes_on_port(server.port())
                .unwrap()
                .contains(&inode)
        );
        drop(accepted);
    }

    #[test]
    fn the_kernel_says_when_a_unix_connection_was_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let mine = std::fs::metadata(format!("/proc/self/fd/{}", client.as_raw_fd()))
            .unwrap()
            .ino();
        let diag = Diag::open().unwrap();
        assert_eq!(diag.unix_peer_inode(mine).unwrap(), Some(0));
        let (accepted, _) = listener.accept().unwrap();
        let theirs = std::fs::metadata(format!("/proc/self/fd/{}", accepted.as_raw_fd()))
            .unwrap()
            .ino();
        assert_eq!(diag.unix_peer_inode(mine).unwrap(), Some(theirs));
        client.write_all(b"x").unwrap();
        let mut l = Listening::default();
        l.add(listener.as_fd());
        assert_eq!(l.unix_paths, vec![path.clone()]);
        let me = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
        assert_eq!(connections(&[(7, me)], &l), vec![(7, 1)]);
    }

    proptest::proptest! {
        #[test]
        fn kernel_answers_never_panic_the_parsers(
            buf in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            port in proptest::num::u16::ANY,
        ) {
            let _ = each_message(&buf, &mut |m: &[u8]| {
                let _ = inet_diag_local(m, port);
                let _ = inet_diag_inode(m, port);
                let _ = unix_diag_peer(m);
            });
            let _ = inet_diag_inode(&buf, port);
            let _ = unix_diag_peer(&buf);
            let _ = netlink_error(&buf);
        }
    }

    #[test]
    fn proc_net_unix_rows_are_counted_by_path_state_and_inode() {
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 200 /run/a.sock\n\
0000000000000000: 00000003 00000000 00000000 0001 03 201 /run/a.sock\n\
0000000000000000: 00000003 00000000 00000000 0001 03 202\n";
        let inodes: HashSet<u64> = [200, 201, 202].into();
        assert_eq!(
            count_unix(unix, &[PathBuf::from("/run/a.sock")], &inodes),
            1
        );
    }
}
