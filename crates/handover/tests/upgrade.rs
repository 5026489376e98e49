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

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ARGS, ROLE, Server, become_subreaper, reap};
use handover::activation::Activation;
use handover_verify::{Load, LoadConfig, Mode};
use rustix::process::{Pid, Signal};

#[test]
fn child_role() {
    match std::env::var(ROLE).as_deref() {
        Ok("upgrade_http") => {}
        Ok("signals_first") => return signals_first_role(),
        Ok("run_only") => return run_only_role(),
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

impl Server {
    /// `upgrade_http` with the pid file at `DIR/pid` and `extra` arguments.
    fn start(extra: &str) -> Server {
        Server::spawn("pid", extra, &[("RUST_LOG", "info")])
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
    let pids = server.pids();
    for &pid in &pids[..pids.len() - 1] {
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
    let server = Server::start("");
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
    server.remember(new);
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
    sighup_as_soon_as_ready("signals_first", true);
}

/// A server that only calls `Upgrader::run()` (which must install the
/// handlers, then call `ready()`, then loop).
fn run_only_role() {
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
        up.run(
            &drain,
            RunOptions::default().drain_timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    });
}

#[test]
fn upgrader_run_installs_its_handlers_before_it_calls_ready() {
    // Upgrader::run() used to install its handlers after the caller's
    // ready(): a SIGHUP in between killed the process. Now run() installs
    // them, then calls ready() itself.
    sighup_as_soon_as_ready("run_only", false);
}

/// Starts `role` (which writes a pid file when ready), sends SIGHUP the
/// moment the pid file names it, and checks it survives and upgrades. With
/// `loop_starts_late`, the role waits a second before its loop runs, so it
/// must still be there 300 ms after the signal; either way it must end by
/// exiting 0 after its successor took over, not by the signal.
fn sighup_as_soon_as_ready(role: &str, loop_starts_late: bool) {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = common::handover_self_command();
    cmd.env(ROLE, role)
        .env("HANDOVER_TEST_PID_FILE", &pid_file)
        .stdout(handover::process::Stdio::null())
        .stderr(handover::process::Stdio::null());
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
    if loop_starts_late {
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            first.try_wait().unwrap().is_none(),
            "SIGHUP right after ready() killed the process"
        );
    }
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
    let status = first.wait().unwrap();
    assert!(
        status.success(),
        "the first process {status} (a SIGHUP death is signal 1)"
    );
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

#[test]
fn an_upgrade_to_a_program_that_cannot_be_executed_is_rolled_back_under_load() {
    let mut server = Server::start("--ready-timeout 10");
    let mut cfg = LoadConfig::new(server.addr, Mode::NewConnection);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(20, Duration::from_secs(30)));
    // From the second generation on, the readiness pipe has come and gone.
    let first = server.upgrade(&load);

    // A deploy whose file is there and executable, but cannot run: a
    // script whose interpreter is missing, then a binary whose loader is.
    let broken = server.dir.path().join("broken");
    std::fs::write(&broken, "#!/nonexistent/interpreter\nexit 0\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    server.deploy(&broken);
    server.hup();
    server.wait_log(
        "is a script whose interpreter \"/nonexistent/interpreter\"",
        Duration::from_secs(30),
    );
    let mut bad_binaries = 1;
    if let Some(no_loader) = binary_with_missing_loader(server.dir.path()) {
        server.deploy(&no_loader);
        server.hup();
        server.wait_log("needs the dynamic loader", Duration::from_secs(30));
        bad_binaries += 1;
    }
    assert_eq!(
        server.current(),
        Some(first),
        "the old process must still be in charge:\n{}",
        server.log()
    );
    let ok_before = load.snapshot().ok;
    assert!(
        load.wait_for_ok(ok_before + 50, Duration::from_secs(30)),
        "the old process stopped serving:\n{}",
        server.log()
    );
    let mut seen = load.pids_seen();
    seen.remove(&first);
    assert!(
        seen.iter().all(|p| server.pids().contains(p)),
        "only known generations answered: {seen:?}"
    );
    // No new process was left behind.
    assert_eq!(
        server
            .log()
            .matches("the new process could not be started")
            .count(),
        bad_binaries,
        "{}",
        server.log()
    );

    // The real binary again: the next upgrade succeeds.
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
    assert!(report.pids.contains_key(&new));
}

/// A copy of `/bin/true` whose ELF interpreter points nowhere, when this
/// system's loader path can be found in it.
fn binary_with_missing_loader(dir: &Path) -> Option<std::path::PathBuf> {
    let mut bytes = std::fs::read("/bin/true").ok()?;
    let at = bytes
        .windows(7)
        .position(|w| w == b"/lib64/" || w == b"/lib/ld")?;
    let end = at + bytes[at..].iter().position(|&b| b == 0)?;
    bytes[end - 1] = b'X';
    let p = dir.join("no-loader");
    std::fs::write(&p, bytes).ok()?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).ok()?;
    Some(p)
}

/// What systemd would make of the notify messages, under
/// `NotifyAccess=main`: only the main pid is heard.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Unit {
    main: u32,
    state: &'static str,
    dropped: usize,
}

/// Replays `messages` (sender pid, fields) from a unit whose main pid is
/// `first`.
fn replay(first: u32, messages: &[handover::notify::Message]) -> Unit {
    let mut u = Unit {
        main: first,
        state: "starting",
        dropped: 0,
    };
    for m in messages {
        if m.pid != Some(u.main) {
            u.dropped += 1;
            continue;
        }
        // systemd applies MAINPID= before READY=1 in one message.
        if let Some(p) = m.main_pid() {
            u.main = p;
        }
        if m.is_reloading() {
            u.state = "reloading";
        }
        if m.is_ready() {
            u.state = "ready";
        }
        if m.is_stopping() {
            u.state = "stopping";
        }
    }
    u
}

#[test]
fn under_notify_access_main_every_upgrade_ends_ready() {
    use handover::notify::NotifySocket;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let sock = NotifySocket::bind(&dir.path().join("notify")).unwrap();
    let env = sock.env_value().to_owned();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let (messages, stop) = (messages.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(Some(m)) = sock.recv_timeout(Some(Duration::from_millis(50))) {
                    messages.lock().unwrap().push(m);
                }
            }
        })
    };
    let mut server = Server::spawn(
        "pid",
        "--idle-grace-ms 500",
        &[
            ("RUST_LOG", "info"),
            ("NOTIFY_SOCKET", env.to_str().unwrap()),
        ],
    );
    let first = server.current().unwrap();
    let mut cfg = LoadConfig::new(server.addr, Mode::NewConnection);
    cfg.connections = 2;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(10, Duration::from_secs(30)));
    let wait_unit = |want: Unit| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let u = replay(first, &messages.lock().unwrap());
            if (u.main, u.state) == (want.main, want.state) {
                return u;
            }
            assert!(
                Instant::now() < deadline,
                "the unit is {u:?}, expected main {} {}; messages:\n{:#?}",
                want.main,
                want.state,
                messages.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_unit(Unit {
        main: first,
        state: "ready",
        dropped: 0,
    });
    for _ in 0..20 {
        let new = server.upgrade(&load);
        wait_unit(Unit {
            main: new,
            state: "ready",
            dropped: 0,
        });
    }
    let report = load.stop();
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    listener.join().unwrap();
}
