//! `Upgrader::listen` binds fresh sockets with the options given in
//! `Options::bind_options`, set before `bind` (in a test binary of its own:
//! an `Upgrader` takes this process's inherited descriptors once).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use handover::address::{Address, BindOptions};
use handover::upgrade::{Options, Upgrader};

#[test]
fn listen_applies_the_bind_options_and_the_hook_before_bind() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let bind = BindOptions::new()
        .reuse_port(true)
        .backlog(16)
        .before_bind(move |fd, address| {
            // Not bound yet: the port is still 0.
            let local = rustix::net::getsockname(fd)?;
            let port = std::net::SocketAddr::try_from(local).map(|a| a.port());
            assert_eq!(port.ok(), Some(0), "the hook runs before bind ({address})");
            rustix::net::sockopt::set_socket_keepalive(fd, true)?;
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
    let up = Upgrader::new(Options::new().bind_options(bind)).unwrap();
    let addr: Address = "tcp://127.0.0.1:0".parse().unwrap();
    let listener: TcpListener = up.listen("http", &addr).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(rustix::net::sockopt::socket_reuseport(&listener).unwrap());
    assert!(rustix::net::sockopt::socket_keepalive(&listener).unwrap());
    // SO_REUSEPORT in effect: a second socket with the option binds the
    // same port.
    let port = Address::local(&listener, &addr).unwrap();
    let again: TcpListener = up.listen("again", &port).unwrap();
    assert_eq!(Address::local(&again, &addr).unwrap(), port);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    up.stop();
}
