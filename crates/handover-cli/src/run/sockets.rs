//! The listening sockets: bound by handover, or taken from the service
//! manager, and kept for handover's whole life.

use std::os::fd::{AsFd, OwnedFd};

use handover::activation::ListenFds;
use handover::address::{Address, BindOptions};
use handover::notify::{Notifier, State as SdState};

use super::config::{Bind, Config};

/// The names of handover's sockets in systemd's fd store are this prefix
/// and the `--bind` name (`handover.http`), so that on a restart handover
/// tells them from the sockets of a socket unit.
pub(super) const STORE_PREFIX: &str = "handover.";

/// One listening socket every generation gets.
pub(super) struct Socket {
    /// Its name in `LISTEN_FDNAMES`.
    pub(super) name: String,
    /// Where it listens, for `status`.
    pub(super) address: String,
    /// Whether the service manager passed it.
    pub(super) inherited: bool,
    pub(super) fd: OwnedFd,
}

/// Binds or inherits every socket. Under systemd (`systemd` enabled) and
/// with `config.fd_store`, the sockets handover binds are kept in the
/// service's fd store too, and on a restart (after a crash) taken back from
/// it by name instead of bound again: their queues, with the connections
/// made while no handover ran, are intact.
pub(super) fn open_sockets(
    config: &Config,
    mut inherited: ListenFds,
    systemd: &Notifier,
) -> Result<Vec<Socket>, String> {
    let mut out = Vec::new();
    let mut stored = take_stored(&mut inherited);
    let mut fresh = Vec::new();
    for b in &config.binds {
        if inherited.get(&b.name).is_none()
            && let Some(fd) = take_matching_stored(&mut stored, b)
        {
            let actual = Address::local(&fd, &b.address).unwrap_or_else(|_| b.address.clone());
            tracing::info!(name = %b.name, address = %actual, "took the socket back from the service manager's fd store");
            out.push(Socket {
                name: b.name.clone(),
                address: format!("{actual} (from the fd store)"),
                inherited: true,
                fd,
            });
            continue;
        }
        if inherited.get(&b.name).is_some() {
            let fd = take_inherited(&mut inherited, b)?;
            tracing::info!(name = %b.name, "using the socket passed by the service manager");
            out.push(Socket {
                name: b.name.clone(),
                address: format!("{} (inherited)", b.address),
                inherited: true,
                fd,
            });
            continue;
        }
        let fd = b
            .address
            .bind(&BindOptions::default().unix_mode(config.unix_mode))
            .map_err(|e| e.to_string())?;
        let actual = Address::local(&fd, &b.address).unwrap_or_else(|_| b.address.clone());
        tracing::info!(name = %b.name, address = %actual, "listening");
        fresh.push(out.len());
        out.push(Socket {
            name: b.name.clone(),
            address: actual.to_string(),
            inherited: false,
            fd,
        });
    }
    // Sockets from the service manager that no --bind names are passed on
    // as they are.
    for (name, fd) in inherited.into_remaining() {
        tracing::info!(%name, "passing on a socket from the service manager");
        out.push(Socket {
            name,
            address: "(inherited)".into(),
            inherited: true,
            fd,
        });
    }
    // Stored sockets no --bind asks for any more (or for another address).
    for (name, _fd) in stored {
        tracing::info!(%name, "dropping a socket of an earlier configuration from the fd store");
        let full = format!("{STORE_PREFIX}{name}");
        if let Err(e) = systemd.notify(&[SdState::FdStoreRemove, SdState::FdName(&full)]) {
            tracing::warn!(error = %e, "could not remove it from the fd store");
        }
    }
    if config.fd_store && systemd.is_enabled() {
        for &i in &fresh {
            store(systemd, &out[i]);
        }
    }
    if out.is_empty() {
        return Err(
            "no sockets: give at least one --bind ADDRESS (for example --bind tcp://127.0.0.1:8080), \
             or start handover with socket activation"
                .into(),
        );
    }
    Ok(out)
}

/// Receives the fds passed by a service manager. Call it first, before the
/// runtime exists: fds 3.. must still be the inherited ones, so that a
/// `LISTEN_FDS` that claims too many names no descriptor of handover's own.
pub fn receive_inherited() -> Result<ListenFds, String> {
    ListenFds::from_env().map_err(|e| e.to_string())
}

/// Takes the socket the service manager passed under `b.name`, checked to be
/// of the kind `b.address` binds: a regular file or a UDP socket where a TCP
/// listener is expected would otherwise reach every generation, which would
/// then fail on its first accept.
fn take_inherited(inherited: &mut ListenFds, b: &Bind) -> Result<OwnedFd, String> {
    let taken = match &b.address {
        Address::Tcp(_) => inherited
            .take::<std::net::TcpListener>(&b.name)
            .map(OwnedFd::from),
        Address::Udp(_) => inherited
            .take::<std::net::UdpSocket>(&b.name)
            .map(OwnedFd::from),
        Address::Unix(_) => inherited
            .take::<std::os::unix::net::UnixListener>(&b.name)
            .map(OwnedFd::from),
    };
    taken.map_err(|e| {
        format!(
            "--bind {}={}: {e}. For this --bind the socket unit needs ListenStream= (tcp://, \
             unix:) or ListenDatagram= (udp://); or give the --bind another name",
            b.name, b.address
        )
    })
}

/// Takes the sockets handover stored in the fd store (named
/// [`STORE_PREFIX`]`NAME`), by `--bind` name.
fn take_stored(inherited: &mut ListenFds) -> Vec<(String, OwnedFd)> {
    let indices: Vec<(usize, String)> = inherited
        .iter()
        .filter(|fd| fd.is_available())
        .filter_map(|fd| {
            let name = fd.name().strip_prefix(STORE_PREFIX)?;
            Some((fd.index(), name.to_string()))
        })
        .collect();
    indices
        .into_iter()
        .filter_map(|(i, name)| Some((name, inherited.take_index::<OwnedFd>(i).ok()?)))
        .collect()
}

/// The stored socket for `b`, if it is of the kind and at the address `b`
/// asks for (a requested port 0 matches any port).
fn take_matching_stored(stored: &mut Vec<(String, OwnedFd)>, b: &Bind) -> Option<OwnedFd> {
    let i = stored.iter().position(|(n, _)| *n == b.name)?;
    let fd = &stored[i].1;
    let kind = handover::socket::FdKind::of(fd.as_fd()).ok()?;
    use handover::socket::FdKind;
    let matches = match (&b.address, kind) {
        (Address::Tcp(want), FdKind::TcpListener { .. })
        | (Address::Udp(want), FdKind::Udp { .. }) => match Address::local(fd, &b.address) {
            Ok(Address::Tcp(have)) | Ok(Address::Udp(have)) => {
                have.ip() == want.ip() && (want.port() == 0 || want.port() == have.port())
            }
            _ => false,
        },
        (Address::Unix(want), FdKind::UnixListener) => rustix::net::getsockname(fd)
            .ok()
            .and_then(|a| rustix::net::SocketAddrUnix::try_from(a).ok())
            .and_then(|u| u.path().map(|p| p.to_bytes().to_vec()))
            .is_some_and(|p| p == std::os::unix::ffi::OsStrExt::as_bytes(want.as_os_str())),
        _ => false,
    };
    if !matches {
        tracing::warn!(name = %b.name, address = %b.address, found = %kind,
            "the socket in the fd store is not the one --bind asks for; binding a new one");
        return None;
    }
    Some(stored.remove(i).1)
}

/// Keeps `socket` in the service manager's fd store.
fn store(systemd: &Notifier, socket: &Socket) {
    let name = format!("{STORE_PREFIX}{}", socket.name);
    let sent = systemd.notify_with_fds(
        &[SdState::FdStore, SdState::FdName(&name)],
        &[socket.fd.as_fd()],
    );
    match sent {
        Ok(()) => tracing::info!(%name, "socket kept in the service manager's fd store"),
        Err(e) => tracing::warn!(%name, error = %e,
            "could not keep the socket in the service manager's fd store: after a crash of handover it would be closed"),
    }
}
