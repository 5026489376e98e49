//! Keep-alive connections pass from generation to generation under
//! `handover run` (issue 18): handover's `upgrade_http` example with
//! `--handoff` runs as the generations (this test binary in the role
//! `upgrade_http`); they meet at `HANDOVER_HANDOFF_SOCKET`, which the
//! supervisor gives them. Keep-alive clients count the connections they
//! open across reloads.

#[path = "../../handover/examples/upgrade_http.rs"]
#[allow(dead_code)]
mod upgrade_http;

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Handover, Setup};

const ROLE: &str = "HANDOVER_TEST_ROLE";
const ARGS: &str = "HANDOVER_TEST_ARGS";

#[test]
fn child_role() {
    if std::env::var(ROLE).as_deref() != Ok("upgrade_http") {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    let args = std::env::var(ARGS).unwrap();
    let args = upgrade_http::Args::parse(args.split_whitespace().map(String::from)).unwrap();
    upgrade_http::run(args).unwrap();
}

/// Reads one response: (status, `Connection: close`, pid).
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, bool, u32)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse().unwrap_or(0);
        } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let pid = String::from_utf8_lossy(&body)
        .trim()
        .strip_prefix("pid=")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Ok((status, close, pid))
}

/// 8 keep-alive clients across 5 reloads: no failed request, every
/// generation answers, and at most 2 new connections (without the
/// hand-over: one per client per reload, 40). `HANDOVER_TEST_NO_HANDOFF=1`
/// runs the generations without `--handoff`, to see this test fail.
#[test]
fn keepalive_connections_pass_between_generations() {
    let handoff = std::env::var_os("HANDOVER_TEST_NO_HANDOFF").is_none();
    let exe = std::env::current_exe().unwrap().display().to_string();
    let mut h = Handover::start(Setup {
        program: Some(
            [
                &exe,
                "--exact",
                "child_role",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: vec![
            (ROLE.into(), "upgrade_http".into()),
            (
                ARGS.into(),
                format!(
                    "--listen tcp://127.0.0.1:0 {}",
                    if handoff { "--handoff" } else { "" }
                ),
            ),
        ],
        ..Setup::default()
    });
    const CLIENTS: u64 = 8;
    const RELOADS: usize = 5;
    let addr: SocketAddr = h.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let pids = Arc::new(Mutex::new(BTreeSet::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, connects, failures, pids) = (
                stop.clone(),
                connects.clone(),
                failures.clone(),
                pids.clone(),
            );
            std::thread::spawn(move || {
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::Relaxed) {
                    let r = conn.get_or_insert_with(|| {
                        connects.fetch_add(1, Ordering::Relaxed);
                        let s = TcpStream::connect(addr).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                        BufReader::new(s)
                    });
                    let result = r
                        .get_mut()
                        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                        .and_then(|()| read_response(r));
                    match result {
                        Ok((200, close, pid)) => {
                            pids.lock().unwrap().insert(pid);
                            if close {
                                conn = None;
                            }
                        }
                        Ok((status, _, _)) => {
                            failures.lock().unwrap().push(format!("status {status}"));
                            conn = None;
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(e.to_string());
                            conn = None;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let mut generations = vec![h.current_pid()];
    for _ in 0..RELOADS {
        let old = h.current_pid();
        let (ok, out, err) = h.reload();
        assert!(ok, "reload failed: {out}{err}\n{}", h.log());
        let new = h.current_pid();
        assert_ne!(new, old);
        generations.push(new);
        // The old generation drains (hands its connections over) and exits.
        support::wait_until(
            "the old generation to exit",
            Duration::from_secs(30),
            || support::gone(old),
        );
        // The clients are answered by the new generation.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pids.lock().unwrap().contains(&new) {
            assert!(
                Instant::now() < deadline,
                "{new} never answered:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let new_connections = connects.load(Ordering::Relaxed) - CLIENTS;
    eprintln!(
        "hand-over {handoff}: {} failed, {new_connections} new connections over {RELOADS} reloads",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}\n{}", h.log());
    let seen = pids.lock().unwrap().clone();
    for g in &generations {
        assert!(seen.contains(g), "generation {g} answered nothing");
    }
    assert!(
        new_connections <= CLIENTS / 4,
        "{new_connections} new connections over {RELOADS} reloads of {CLIENTS} keep-alive \
         clients: connections were not handed over\n{}",
        h.log()
    );
}
