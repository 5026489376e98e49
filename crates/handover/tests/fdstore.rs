//! `Options::fd_store`: a self-upgrading server keeps its socket in the
//! service manager's fd store, so that after a `kill -9` the restarted
//! process takes the same socket back, and connections made meanwhile wait
//! in its queue. The service manager is a stand-in
//! (`common/standin.rs`); the server is this test binary in a role.

mod common;
#[path = "common/standin.rs"]
mod standin;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{ARGS, Guard, ROLE, handover_role, report_stream};
use handover::address::Address;
use handover::upgrade::{Options, Upgrader};
use standin::StandIn;

#[test]
fn child_role() {
    if std::env::var(ROLE).as_deref() != Ok("store") {
        return;
    }
    let addr: Address = std::env::var(ARGS).unwrap().parse().unwrap();
    let up = Upgrader::new(Options::default().fd_store(true)).unwrap();
    let listener: std::net::TcpListener = up.listen("http", &addr).unwrap();
    up.ready().unwrap();
    println!(
        "report:port={} inode={}",
        listener.local_addr().unwrap().port(),
        rustix::fs::fstat(&listener).unwrap().st_ino
    );
    loop {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let body = format!("pid={}\n", std::process::id());
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// Starts the role under `standin`; its port and socket inode.
fn start(standin: &StandIn, address: &str) -> (Guard<handover::process::Process>, u16, u64) {
    let mut cmd = handover_role("store");
    cmd.env(ARGS, address)
        .stdin(handover::process::Stdio::null());
    let mut guard = Guard(standin.spawn(cmd).unwrap());
    let report = report_stream(&mut guard)
        .recv_timeout(Duration::from_secs(20))
        .expect("the server did not start");
    let value = |key: &str| -> u64 {
        report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap()
            .parse()
            .unwrap()
    };
    (guard, value("port") as u16, value("inode"))
}

/// Sends a request on a new connection; the answer, or the connect error.
fn request(port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

fn answer(mut s: TcpStream) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

#[test]
fn a_killed_server_takes_its_socket_back_from_the_fd_store_and_waiting_connections_are_answered() {
    let dir = tempfile::tempdir().unwrap();

    // With the fd store.
    let standin = StandIn::start(&dir.path().join("notify.sock"), true);
    let (mut first, port, inode) = start(&standin, "tcp://127.0.0.1:0");
    assert_eq!(standin.wait_stored("http", Duration::from_secs(10)), inode);
    let pid1 = first.0.id();
    assert_eq!(answer(request(port).unwrap()), format!("pid={pid1}\n"));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // Nothing accepts now, but the socket lives on in the store: these
    // connections wait in its queue.
    let waiting: Vec<TcpStream> = (0..3).map(|_| request(port).unwrap()).collect();
    let (second, port2, inode2) = start(&standin, "tcp://127.0.0.1:0");
    assert_eq!((port2, inode2), (port, inode), "not the same socket");
    let pid2 = second.0.id();
    for s in waiting {
        assert_eq!(answer(s), format!("pid={pid2}\n"));
    }
    // Stored once, however often it was sent.
    assert_eq!(standin.stored(), [("http".to_string(), inode)]);
    // Each start stores its socket (the stand-in may still be reading the
    // second one's message).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sent = standin
            .messages()
            .iter()
            .filter(|m| m.text.contains("FDSTORE=1"))
            .count();
        if sent >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "each start stores its socket: {sent} FDSTORE=1 message(s)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(second);
    drop(standin);

    // The same without the fd store: connections are refused until
    // something binds the port again.
    let standin = StandIn::start(&dir.path().join("notify2.sock"), false);
    let (mut first, port, _) = start(&standin, "tcp://127.0.0.1:0");
    assert!(answer(request(port).unwrap()).starts_with("pid="));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let e = request(port).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(standin.stored().is_empty());
}
