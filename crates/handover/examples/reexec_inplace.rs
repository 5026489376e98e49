//! A server that upgrades itself *in place*: on SIGHUP it re-executes the
//! file it was started from in the same process (same pid), keeping its
//! listening socket open, so connections that arrive meanwhile wait in the
//! socket's queue and are answered by the new version.
//!
//! ```text
//! cargo build -p handover --example reexec_inplace
//! target/debug/examples/reexec_inplace --listen 127.0.0.1:8080 &
//! curl http://127.0.0.1:8080/   # pid=<pid> image=1
//! kill -HUP <pid>               # same pid, image=2, same socket
//! curl http://127.0.0.1:8080/   # pid=<pid> image=2
//! kill -TERM <pid>
//! ```
//!
//! This suits a process whose own connections are short, like a
//! supervisor: it serves one request at a time on its main thread and
//! re-executes between two, so nothing is in flight at the exec. A server
//! with long-lived connections upgrades with [`handover::upgrade`] instead
//! (a new process takes over while the old one drains), or keeps them by
//! passing each connection's descriptor too.
//!
//! SIGHUP and SIGTERM are held (blocked) across the exec: one that arrives
//! while the new image starts waits until its handlers are installed,
//! instead of killing it.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

use handover::child::Signal;
use handover::reexec::{Kept, Reexec, SignalHold, release_signals};

/// The variable that counts images, for the responses.
const IMAGE: &str = "REEXEC_INPLACE_IMAGE";

/// The signals this server handles, held across the exec.
const HANDLED: [Signal; 2] = [Signal::HUP, Signal::TERM];

/// Runs the server with `args` (`--listen HOST:PORT`).
pub fn run(args: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    // First, before anything opens a descriptor.
    let mut kept = Kept::from_env()?;
    let listen = match args.iter().position(|a| a == "--listen") {
        Some(i) => args.get(i + 1).cloned().ok_or("--listen needs HOST:PORT")?,
        None => return Err("usage: reexec_inplace --listen HOST:PORT".into()),
    };
    let image: u64 = std::env::var(IMAGE)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let listener = match kept.take("http") {
        Ok(fd) => std::net::TcpListener::from(fd),
        Err(e) if e.is_not_found() => std::net::TcpListener::bind(&listen)?,
        Err(e) => return Err(e.into()),
    };
    // The path this program was started from: a deploy that replaces the
    // file (or swaps a symlink) there starts the new version.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let program = if argv0.as_encoded_bytes().contains(&b'/') {
        std::env::current_dir()?.join(&argv0)
    } else {
        std::env::current_exe()?
    };
    let mut first = true;
    loop {
        if !serve(&listener, image, first)? {
            return Ok(());
        }
        first = false;
        // Held until the new image has its handlers (or given back when
        // the exec fails, as `_held` drops).
        let _held = SignalHold::block(&HANDLED)?;
        let mut next = Reexec::new(PathBuf::from(&program));
        next.arg0(argv0.clone())
            .args(std::env::args_os().skip(1))
            .env(IMAGE, (image + 1).to_string());
        next.fd("http", listener.as_fd())?;
        eprintln!(
            "reexec_inplace: re-executing {} in place",
            program.display()
        );
        let error = next.exec();
        eprintln!("reexec_inplace: {error}; serving on");
    }
}

/// Serves until SIGHUP (`true`) or SIGTERM (`false`).
fn serve(
    listener: &std::net::TcpListener,
    image: u64,
    first: bool,
) -> Result<bool, Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        listener.set_nonblocking(true)?;
        let tokio_listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        // The handlers exist: signals held across the exec may come now.
        release_signals(&HANDLED)?;
        if first {
            println!(
                "listening on {} pid={} image={image}",
                listener.local_addr()?,
                std::process::id()
            );
        }
        loop {
            tokio::select! {
                _ = hup.recv() => return Ok(true),
                _ = term.recv() => return Ok(false),
                accepted = tokio_listener.accept() => {
                    let (mut stream, _) = accepted?;
                    // One request at a time, answered before the next accept.
                    let mut buf = vec![0u8; 4096];
                    let answer = async {
                        let _ = stream.read(&mut buf).await?;
                        let body = format!("pid={} image={image}\n", std::process::id());
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        stream.write_all(head.as_bytes()).await?;
                        stream.write_all(body.as_bytes()).await?;
                        stream.shutdown().await
                    };
                    if tokio::time::timeout(Duration::from_secs(5), answer).await.is_err() {
                        eprintln!("reexec_inplace: a client was too slow; closed it");
                    }
                }
            }
        }
    })
}

#[allow(dead_code)]
fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("reexec_inplace: {e}");
        std::process::exit(1);
    }
}
