//! The listening sockets: bound by handover, or taken from the service
//! manager, and kept for handover's whole life.

use std::os::fd::OwnedFd;

use handover::activation::ListenFds;
use handover::address::{Address, BindOptions};

use super::config::{Bind, Config};

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

/// Binds or inherits every socket.
pub(super) fn open_sockets(
    config: &Config,
    mut inherited: ListenFds,
) -> Result<Vec<Socket>, String> {
    let mut out = Vec::new();
    for b in &config.binds {
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
