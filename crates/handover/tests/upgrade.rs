//! Self-upgrade with real processes under load.
//!
//! The server is `examples/upgrade_http.rs`, compiled into this test binary
//! and run as a role: the test binary re-executes itself on upgrade exactly
//! like the example binary does. Each server is started through a symlink in
//! a temporary directory, so a test can "deploy" another version (a script
//! that crashes, hangs, or is slow) by swapping the symlink, as a deploy
//! would.

#[path = "../examples/upgrade_http.rs"]
#[allow(dead_code)]
mod upgrade_http;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover::activation::Activation;
use handover_verify::{Load, LoadConfig, Mode};
use rustix::process::{Pid, Signal, WaitOptions};

const ROLE: &str = "HANDOVER_TEST_ROLE";
const ARGS: &str = "HANDOVER_TEST_ARGS";

#[test]
fn child_role() {
    match std::env::var(ROLE).as_deref() {
        Ok("upgrade_http") => {}
        Ok("signals_first") => return signals_first_role(),
        _ => return,
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter("info")
        .try_init();
    let args = std::env::var(ARGS).unwrap();
    let args = upgrade_http::Args::parse(args.split_whitespace().map(String::from)).unwrap();
    upgrade_http::run(args).unwrap();
}

/// A running chain of server generations. Kills every generation it saw
/// when dropped, even when the test failed.
struct Server {
    dir: tempfile::TempDir,
    app: PathBuf,
    addr: SocketAddr,
    inode: u64,
    first: std::process::Child,
    pids: Vec<u32>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
        for &pid in &self.pids {
            reap(pid, Duration::from_millis(200));
        }
    }
}

/// Orphaned generations are re-parented to this process, so it can reap
/// them and check none is left a zombie.
fn become_subreaper() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
}

/// Reaps `pid` (a child or an adopted orphan); true once it is gone.
fn reap(pid: u32, timeout: Duration) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            // Not our child (any more): gone, or reaped elsewhere.
            Err(_) => return !Path::new(&format!("/proc/{pid}")).exists(),
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

impl Server {
    fn start(extra: &str) -> Server {
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &app).unwrap();
        // The socket is bound here and passed as "http", as systemd would;
        // this process then closes its copy, so only the chain holds it.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inode = rustix::fs::fstat(&listener).unwrap().st_ino;
        let pid_file = dir.path().join("pid");
        let mut cmd = Command::new(&app);
        cmd.args([
            "--exact",
            "child_role",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE, "upgrade_http")
        .env(
            ARGS,
            format!(
                "--listen tcp://127.0.0.1:0 --pid-file {} {extra}",
                pid_file.display()
            ),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut a = Activation::new();
        a.fd("http", listener.as_fd()).unwrap();
        let mut first = a.spawn(cmd).unwrap();
        drop(listener);
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = first.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let pid = first.id();
        let s = Server {
            dir,
            app,
            addr,
            inode,
            first,
            pids: vec![pid],
            stderr,
        };
        s.wait_pid_file(pid, Duration::from_secs(30));
        s
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    fn current(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn wait_pid_file(&self, pid: u32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.current() != Some(pid) {
            assert!(
                Instant::now() < deadline,
                "pid file never said {pid}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn hup(&self) {
        let pid = self.current().unwrap();
        rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::HUP).unwrap();
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Points the symlink at `target` (atomically, as a deploy would).
    fn deploy(&self, target: &Path) {
        let tmp = self.dir.path().join("app.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, &self.app).unwrap();
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// One upgrade that must succeed: returns the new pid after the old
    /// process has exited and been reaped.
    fn upgrade(&mut self, load: &Load) -> u32 {
        let old = self.current().unwrap();
        let mut seen: BTreeSet<u32> = load.pids_seen();
        seen.insert(old);
        self.hup();
        let new = load
            .wait_for_new_pid(&seen, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no new pid answered; stderr:\n{}", self.log()));
        assert_ne!(new, old);
        self.pids.push(new);
        self.wait_pid_file(new, Duration::from_secs(10));
        if old == self.first.id() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.first.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "first process did not exit:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            assert!(
                reap(old, Duration::from_secs(30)),
                "old process {old} did not exit:\n{}",
                self.log()
            );
        }
        assert!(is_zombie_or_gone(old));
        assert!(
            !Path::new(&format!("/proc/{old}")).exists(),
            "{old} is still there"
        );
        new
    }

    fn serves_same_socket(&self, pid: u32) -> bool {
        let want = format!("socket:[{}]", self.inode);
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
    }
}

fn twenty_upgrades(mode: Mode) {
    let mut server = Server::start("--idle-grace-ms 1000");
    let first = server.current().unwrap();
    assert!(server.serves_same_socket(first));
    let mut cfg = LoadConfig::new(server.addr, mode);
    cfg.connections = 8;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(50, Duration::from_secs(30)),
        "no load got through"
    );
    let mut last = first;
    for _ in 0..20 {
        last = server.upgrade(&load);
    }
    assert!(load.wait_for_ok(load.snapshot().ok + 50, Duration::from_secs(30)));
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "failed requests during 20 upgrades:\n{}\nstderr:\n{}",
        report.render_table(),
        server.log()
    );
    assert_eq!(report.distinct_pids(), 21, "{}", report.render_table());
    assert!(
        server.serves_same_socket(last),
        "the last generation uses another socket"
    );
    // Only the last generation is alive; every other one is gone (reaped).
    for &pid in &server.pids[..server.pids.len() - 1] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "generation {pid} is still there"
        );
    }
}

#[test]
fn twenty_upgrades_new_connection_per_request_lose_nothing() {
    twenty_upgrades(Mode::NewConnection);
}

#[test]
fn twenty_upgrades_keep_alive_lose_nothing() {
    twenty_upgrades(Mode::KeepAlive);
}

#[test]
fn failed_upgrades_roll_back_and_a_later_one_succeeds() {
    let mut server = Server::start("--ready-timeout 2");
    let mut cfg = LoadConfig::new(server.addr, Mode::NewConnection);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(20, Duration::from_secs(30)));
    let first = server.current().unwrap();

    // A new version that exits with code 3 before ready().
    server.deploy(&server.script("crash", "echo 'crashing on purpose' >&2; exit 3"));
    server.hup();
    server.wait_log(
        "exited with code 3 before it was ready",
        Duration::from_secs(30),
    );
    // A new version that never calls ready().
    server.deploy(&server.script("hang", "exec sleep 60"));
    server.hup();
    server.wait_log(
        "was not ready within 2s, so it was killed",
        Duration::from_secs(30),
    );
    assert_eq!(
        server.current(),
        Some(first),
        "the old process must still be in charge"
    );
    let ok_before = load.snapshot().ok;
    assert!(
        load.wait_for_ok(ok_before + 20, Duration::from_secs(30)),
        "old process stopped serving"
    );
    assert_eq!(load.pids_seen(), BTreeSet::from([first]));

    // The real binary again: the third upgrade succeeds.
    server.deploy(&std::env::current_exe().unwrap());
    let new = server.upgrade(&load);
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        server.log()
    );
    assert_eq!(report.pids.keys().copied().collect::<Vec<_>>(), {
        let mut v = vec![first, new];
        v.sort();
        v
    });
}

#[test]
fn a_second_upgrade_during_a_slow_one_is_refused() {
    let mut server = Server::start("");
    let exe = std::env::current_exe().unwrap();
    server.deploy(&server.script(
        "slow",
        &format!("sleep 1.5; exec '{}' \"$@\"", exe.display()),
    ));
    let mut cfg = LoadConfig::new(server.addr, Mode::KeepAlive);
    cfg.connections = 2;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(10, Duration::from_secs(30)));
    let seen = load.pids_seen();
    server.hup();
    std::thread::sleep(Duration::from_millis(300));
    server.hup();
    server.wait_log("an upgrade is already in progress", Duration::from_secs(10));
    let new = load
        .wait_for_new_pid(&seen, Duration::from_secs(30))
        .expect("the slow upgrade finished");
    server.pids.push(new);
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        server.log()
    );
}

#[test]
fn a_long_request_in_flight_completes_on_the_old_process() {
    let mut server = Server::start("");
    let old = server.current().unwrap();
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /slow?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let mut out = String::new();
        let mut buf = [0u8; 1024];
        // Read until the body arrives (the server closes after it, since
        // it is draining by then).
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
            if out.contains("pid=") && out.ends_with('\n') {
                break;
            }
        }
        (out, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut cfg = LoadConfig::new(server.addr, Mode::NewConnection);
    cfg.connections = 2;
    let load = Load::start(cfg).unwrap();
    let new = server.upgrade(&load);
    let (response, took) = slow.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(&format!("pid={old}")), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(took >= Duration::from_millis(4500), "{took:?}");
    let report = load.stop();
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
    assert!(report.pids.contains_key(&new));
}

/// A server that installs its signal handlers, becomes ready, and only a
/// second later runs the loop: a SIGHUP in that second must neither kill it
/// nor be lost.
fn signals_first_role() {
    use handover::drain::Drain;
    use handover::upgrade::{Options, RunOptions, Upgrader};
    let pid_file = std::env::var("HANDOVER_TEST_PID_FILE").unwrap();
    let up = Upgrader::new(Options::default().pid_file(pid_file)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _l: tokio::net::TcpListener = up
            .listen("http", &"tcp://127.0.0.1:0".parse().unwrap())
            .unwrap();
        let drain = Drain::new();
        let signals = up.signals().unwrap();
        up.ready().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        signals
            .run(
                &drain,
                RunOptions::default().drain_timeout(Duration::from_secs(1)),
            )
            .await
            .unwrap();
    });
}

#[test]
fn a_sighup_right_after_ready_is_handled_not_fatal() {
    // Found by the benchmarks: a deploy script that upgrades twice in a row
    // signals the new pid as soon as the pid file names it, before the
    // ready-made loop runs. Handlers installed by signals() before ready()
    // keep it alive, and the upgrade it asked for still happens.
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_role",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE, "signals_first")
    .env("HANDOVER_TEST_PID_FILE", &pid_file)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut a = Activation::new();
    a.fd("http", listener.as_fd()).unwrap();
    let mut first = a.spawn(cmd).unwrap();
    struct Kill(Vec<u32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for &p in &self.0 {
                let _ =
                    rustix::process::kill_process(Pid::from_raw(p as i32).unwrap(), Signal::KILL);
                reap(p, Duration::from_millis(200));
            }
        }
    }
    let mut guard = Kill(vec![first.id()]);
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_pid() != Some(first.id()) {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    rustix::process::kill_process(Pid::from_raw(first.id() as i32).unwrap(), Signal::HUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        first.try_wait().unwrap().is_none(),
        "SIGHUP right after ready() killed the process"
    );
    // Once the loop runs, the buffered SIGHUP starts the upgrade.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        match read_pid() {
            Some(p) if p != first.id() => break p,
            _ => assert!(
                Instant::now() < deadline,
                "the SIGHUP was lost: no upgrade happened"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    guard.0.push(new);
    assert!(first.wait().unwrap().success());
}

#[test]
fn a_failed_upgrade_restores_the_pid_file() {
    let server = Server::start("--ready-timeout 5");
    let first = server.current().unwrap();
    // A "new version" that announces itself in the pid file, then fails.
    let pid_file = server.pid_file();
    server.deploy(&server.script(
        "liar",
        &format!("echo $$ > '{}'; exit 3", pid_file.display()),
    ));
    server.hup();
    server.wait_log(
        "exited with code 3 before it was ready",
        Duration::from_secs(30),
    );
    server.wait_pid_file(first, Duration::from_secs(10));
}
