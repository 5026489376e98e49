//! The `pass_http` example under load: instances started one after the
//! other with the same arguments take the listener over from each other,
//! and the load client (a new connection per request, then keep-alive)
//! sees no failed request while every instance answers.
//!
//! The example is compiled into this test binary and run as a role, so each
//! instance is a real process started exactly like the example binary.

#[path = "../examples/pass_http.rs"]
#[allow(dead_code)]
mod pass_http;

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Guard, self_command};
use handover_verify::{Load, LoadConfig, Mode};

const ROLE: &str = "HANDOVER_PASS_HTTP_ARGS";

#[test]
fn child_role() {
    let Ok(args) = std::env::var(ROLE) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter("info")
        .try_init();
    let args = pass_http::Args::parse(args.split_whitespace().map(String::from)).unwrap();
    pass_http::run(args).unwrap();
}

/// One instance; killed and reaped when dropped, even if the test failed.
struct Instance {
    child: Guard,
    addr: SocketAddr,
    pid: u32,
    how: String,
}

impl Instance {
    /// Starts `pass_http --listen 127.0.0.1:0 --handoff PATH` and waits for
    /// its "listening on" line.
    fn start(handoff: &Path) -> Instance {
        let mut child = self_command()
            .env(
                ROLE,
                format!(
                    "--listen 127.0.0.1:0 --handoff {} --idle-grace-ms 300 --drain-timeout 20",
                    handoff.display()
                ),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = tx.send(line);
                }
            }
        });
        let pid = child.id();
        let mut instance = Instance {
            child: Guard(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            pid,
            how: String::new(),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the instance did not start serving within 30 s");
        // "listening on ADDR pid=PID (HOW)"
        let mut words = line.split_whitespace().skip(2);
        instance.addr = words.next().unwrap().parse().unwrap();
        assert_eq!(words.next().unwrap(), format!("pid={pid}"));
        instance.how = words.collect::<Vec<_>>().join(" ");
        instance
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "pid {} did not exit", self.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn takeovers_under_load(mode: Mode) {
    let dir = tempfile::Builder::new()
        .prefix("ph")
        .tempdir_in("/tmp")
        .unwrap();
    let handoff = dir.path().join("handoff.sock");
    let a = Instance::start(&handoff);
    assert_eq!(a.how, "(bound)");

    let mut cfg = LoadConfig::new(a.addr, mode);
    cfg.connections = 4;
    cfg.request_timeout = Duration::from_secs(10);
    if mode == Mode::KeepAlive {
        // Idle between requests, so a takeover finds idle keep-alive
        // connections, which must get their grace (300 ms), not a close.
        cfg.think_time = Duration::from_millis(5);
    }
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(50, Duration::from_secs(20)),
        "no load flowing"
    );

    // B takes over from A, C from B, and so on.
    let mut pids = vec![a.pid];
    let mut old = a;
    for _ in 0..8 {
        let before = load.snapshot().ok;
        let mut new = Instance::start(&handoff);
        assert_eq!(new.how, "(taken over)");
        assert_eq!(new.addr, old.addr, "same socket, same address");
        // The old one drains and exits by itself.
        assert!(old.wait_exit(Duration::from_secs(30)).success());
        let seen = std::collections::BTreeSet::from_iter(pids.iter().copied());
        assert_eq!(
            load.wait_for_new_pid(&seen, Duration::from_secs(20)),
            Some(new.pid),
            "the new instance answers"
        );
        assert!(
            load.wait_for_ok(before + 200, Duration::from_secs(20)),
            "load stalled after the takeover"
        );
        pids.push(new.pid);
        std::mem::swap(&mut old, &mut new);
        drop(new);
    }
    // Let the last instance answer a while, then stop.
    let now = load.snapshot().ok;
    assert!(load.wait_for_ok(now + 50, Duration::from_secs(20)));
    let report = load.stop();
    println!("{}", report.render_table());
    assert_eq!(
        report.failures_total(),
        0,
        "failed requests:\n{}",
        report.render_table()
    );
    for pid in &pids {
        assert!(
            report.pids.get(pid).is_some_and(|&n| n > 0),
            "pid {pid} never answered: {:?}",
            report.pids
        );
    }
    drop(old);
}

#[test]
fn takeovers_under_load_new_connection_per_request() {
    takeovers_under_load(Mode::NewConnection);
}

#[test]
fn takeovers_under_load_keep_alive() {
    takeovers_under_load(Mode::KeepAlive);
}
