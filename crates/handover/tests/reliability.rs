//! Reliability of the library under faults and hostile input (issue 8): a
//! self-upgrading server whose successor cannot write its pid file, and
//! `LISTEN_*` variables that lie (closed fds, fds that are not sockets,
//! names with `:` or control characters, counts that overflow).
//!
//! Real processes: this test binary re-executes itself in a role selected by
//! `HANDOVER_TEST_ROLE` (the `upgrade_http` example, or a receiver of fds),
//! as `tests/upgrade.rs` and `tests/activation.rs` do. See RELIABILITY.md.

#[path = "../examples/upgrade_http.rs"]
#[allow(dead_code)]
mod upgrade_http;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover::activation::{Activation, EnvVars, ListenFds, parse_env};
use handover_verify::{Load, LoadConfig, Mode};
use rustix::process::{Pid, Signal, WaitOptions};

const ROLE: &str = "HANDOVER_TEST_ROLE";
const ARGS: &str = "HANDOVER_TEST_ARGS";

/// The child side; a no-op in the normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "upgrade_http" => {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_env_filter("info")
                .try_init();
            let args = std::env::var(ARGS).unwrap();
            let args =
                upgrade_http::Args::parse(args.split_whitespace().map(String::from)).unwrap();
            if let Err(e) = upgrade_http::run(args) {
                eprintln!("upgrade_http: {e}");
                std::process::exit(1);
            }
        }
        // Takes fd "http" as a TCP listener, like a server would.
        "take-tcp" => match ListenFds::from_env() {
            Err(e) => println!("report:env-error={e}"),
            Ok(mut fds) => match fds.take::<TcpListener>("http") {
                Ok(_) => println!("report:ok"),
                Err(e) => println!("report:take-error={e}"),
            },
        },
        other => panic!("unknown role {other}"),
    }
}

/// Kills a child we started, by pid, when dropped.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn role_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_role",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env(ROLE, role)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    cmd
}

/// The `report:` lines of a child, with a deadline.
fn reports(guard: &mut Guard, deadline: Duration) -> Vec<String> {
    let out = guard.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("report:").map(String::from))
            .collect();
        let _ = tx.send(lines);
    });
    rx.recv_timeout(deadline)
        .expect("child did not finish in time")
}

// ---------------------------------------------------------------------------
// Self-upgrade: the new process cannot write the pid file.

/// Orphaned generations are re-parented to this process, which reaps them.
fn become_subreaper() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
}

fn reap(pid: u32, timeout: Duration) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return !Path::new(&format!("/proc/{pid}")).exists(),
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A chain of `upgrade_http` generations started through a symlink, with
/// the pid file in a directory of its own. Kills every generation it saw on
/// drop.
struct Server {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    first: std::process::Child,
    pids: Mutex<Vec<u32>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pids = self.pids.lock().unwrap().clone();
        for &pid in &pids {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
        for &pid in &pids {
            reap(pid, Duration::from_millis(200));
        }
    }
}

impl Server {
    fn start() -> Server {
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        let app = dir.path().join("app");
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &app).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
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
                "--listen tcp://127.0.0.1:0 --pid-file {} --ready-timeout 20 --idle-grace-ms 2000",
                dir.path().join("run/pid").display()
            ),
        )
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
            addr,
            first,
            pids: Mutex::new(vec![pid]),
            stderr,
        };
        s.wait_pid_file(pid, Duration::from_secs(30));
        s
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn current(&self) -> Option<u32> {
        std::fs::read_to_string(self.run_dir().join("pid"))
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

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pids of started successors, from the log, remembered for cleanup.
    fn note_started_pids(&self) {
        let started: Vec<u32> = self
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("started the new process"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("pid="))
                    .and_then(|p| p.parse().ok())
            })
            .collect();
        let mut pids = self.pids.lock().unwrap();
        for p in started {
            if !pids.contains(&p) {
                pids.push(p);
            }
        }
    }

    fn hup(&self, pid: u32) {
        rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::HUP).unwrap();
    }
}

#[test]
fn upgrade_whose_successor_cannot_write_the_pid_file_is_rolled_back() {
    let server = Server::start();
    let first = server.current().unwrap();
    let mut loads = Vec::new();
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let mut cfg = LoadConfig::new(server.addr, mode);
        cfg.connections = 4;
        let load = Load::start(cfg).unwrap();
        assert!(
            load.wait_for_ok(30, Duration::from_secs(30)),
            "no load got through:\n{}",
            server.log()
        );
        loads.push(load);
    }

    // The pid file's directory becomes a regular file: as root, chmod would
    // not stop the new process, but ENOTDIR does.
    std::fs::remove_dir_all(server.run_dir()).unwrap();
    std::fs::write(server.run_dir(), "not a directory").unwrap();
    server.hup(first);
    let failed = server.wait_log("upgrade failed", Duration::from_secs(60));
    server.note_started_pids();
    assert!(
        failed.contains("before it was ready; this process keeps serving"),
        "{failed}"
    );
    // The successor said why before it exited.
    let why = server.wait_log("could not write the pid file", Duration::from_secs(10));
    assert!(why.contains("run/pid"), "{why}");
    assert!(why.contains("Not a directory"), "{why}");

    // The old process is still the only one serving.
    for load in &loads {
        let before = load.snapshot().ok;
        assert!(
            load.wait_for_ok(before + 30, Duration::from_secs(30)),
            "the old process stopped serving:\n{}",
            server.log()
        );
    }

    // Once the directory is back, an upgrade succeeds.
    std::fs::remove_file(server.run_dir()).unwrap();
    std::fs::create_dir(server.run_dir()).unwrap();
    let seen: BTreeSet<u32> = loads.iter().flat_map(|l| l.pids_seen()).collect();
    assert_eq!(seen, BTreeSet::from([first]), "only the old process served");
    server.hup(first);
    let new = loads[0]
        .wait_for_new_pid(&seen, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no new pid answered:\n{}", server.log()));
    server.pids.lock().unwrap().push(new);
    server.wait_pid_file(new, Duration::from_secs(30));

    for load in loads {
        let report = load.stop();
        assert_eq!(
            report.failures_total(),
            0,
            "failed requests around a rolled-back upgrade:\n{}\nstderr:\n{}",
            report.render_table(),
            server.log()
        );
    }
}

#[test]
fn a_sighup_sent_as_soon_as_the_pid_file_names_a_new_process_upgrades_it() {
    // ready() writes the pid file; an operator (or script) may signal that
    // pid at once. Before the fix, the example installed its signal handlers
    // only after ready(): a SIGHUP in between killed the new process (the
    // default action) with its connections.
    let server = Server::start();
    let mut cfg = LoadConfig::new(server.addr, Mode::KeepAlive);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(30, Duration::from_secs(30)));
    let mut pid = server.current().unwrap();
    server.hup(pid);
    for i in 0..15 {
        // Spin: signal the next process the moment the pid file names it.
        let deadline = Instant::now() + Duration::from_secs(60);
        let next = loop {
            match server.current() {
                Some(p) if p != pid => break p,
                _ => {}
            }
            let dead = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
            });
            assert!(
                !dead || server.current() != Some(pid),
                "upgrade {i}: process {pid} died of the SIGHUP sent as the pid file named it:\n{}",
                server.log()
            );
            assert!(
                Instant::now() < deadline,
                "upgrade {i}: the pid file never changed:\n{}",
                server.log()
            );
            std::hint::spin_loop();
        };
        server.pids.lock().unwrap().push(next);
        if i < 14 {
            server.hup(next);
        }
        pid = next;
    }
    let before = load.snapshot().ok;
    assert!(
        load.wait_for_ok(before + 30, Duration::from_secs(30)),
        "the last process does not serve:\n{}",
        server.log()
    );
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        server.log()
    );
    assert!(report.pids.contains_key(&pid), "{}", report.render_table());
}

// ---------------------------------------------------------------------------
// LISTEN_* that lie.

fn vars<'a>(pid: &'a str, fds: Option<&'a [u8]>, names: Option<&'a [u8]>) -> EnvVars<'a> {
    EnvVars {
        pid: Some(OsStr::new(pid)),
        fds: fds.map(OsStr::from_bytes),
        names: names.map(OsStr::from_bytes),
    }
}

#[test]
fn listen_fds_counts_that_overflow_or_are_not_numbers_are_clear_errors() {
    let me = "4242";
    // Never a panic, never an allocation in proportion to the count: two
    // billion used to mean a 48 GB Vec and an abort.
    let cases: &[(&[u8], &str)] = &[
        (b"2000000000", "at most"),
        (b"2147483644", "at most"),
        (b"2147483645", "expected a count of descriptors"),
        (b"4294967299", "expected a count of descriptors"),
        (b"18446744073709551616", "expected a count of descriptors"),
        (
            b"99999999999999999999999",
            "expected a count of descriptors",
        ),
        (b"-1", "expected a count of descriptors"),
        (b"+1", "expected a count of descriptors"),
        (b" 1", "expected a count of descriptors"),
        (b"1 ", "expected a count of descriptors"),
        (b"0x3", "expected a count of descriptors"),
        (b"", "expected a count of descriptors"),
        (b"\xff", "expected a count of descriptors"),
    ];
    for (fds, needle) in cases {
        let e = parse_env(vars(me, Some(fds), None), 4242)
            .map(|v| v.len())
            .expect_err(&format!("{:?} was accepted", String::from_utf8_lossy(fds)))
            .to_string();
        assert!(e.contains("LISTEN_FDS="), "{e}");
        assert!(e.contains(needle), "{e}");
        assert!(e.contains("Fix the program that started this one"), "{e}");
    }
    // A large but possible count parses (the fds are checked when received).
    assert_eq!(
        parse_env(vars(me, Some(b"1000"), None), 4242)
            .unwrap()
            .len(),
        1000
    );
    // Bad LISTEN_PID values.
    for pid in ["abc", "0", "-5", "99999999999", ""] {
        let e = parse_env(vars(pid, Some(b"1"), None), 4242)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LISTEN_PID=") && e.contains("expected a process id"),
            "{e}"
        );
    }
}

#[test]
fn listen_fdnames_with_colons_or_control_characters_are_clear_errors() {
    let me = "7";
    // A name cannot contain ':' (it separates names): "a:b" for one fd is
    // two names.
    let e = parse_env(vars(me, Some(b"1"), Some(b"a:b")), 7)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has 2 name(s) but LISTEN_FDS=1") && e.contains("must not contain ':'"),
        "{e}"
    );
    for names in [
        &b"ht\x01tp"[..],
        b"web\n",
        b"a\x7fb",
        b"tab\there",
        b"\xc3\xa9t\xc3\xa9",
    ] {
        let e = parse_env(vars(me, Some(b"1"), Some(names)), 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("LISTEN_FDNAMES="), "{e}");
        assert!(e.contains("expected"), "{e}");
        assert!(e.contains("printable ASCII"), "{e}");
    }
    let long = vec![b'x'; 256];
    let e = parse_env(vars(me, Some(b"1"), Some(&long)), 7)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 255"), "{e}");
    // Empty names are "unknown", as sd_listen_fds_with_names(3) says.
    assert_eq!(
        parse_env(vars(me, Some(b"2"), Some(b":web")), 7).unwrap(),
        ["unknown", "web"]
    );
}

/// A child that takes fd "http" as a TCP listener, given `fd` under that
/// name: its error message.
fn take_tcp_given(fd: std::os::fd::BorrowedFd<'_>) -> String {
    let mut a = Activation::new();
    a.fd("http", fd).unwrap();
    let mut child = Guard(a.spawn(role_command("take-tcp")).unwrap());
    let lines = reports(&mut child, Duration::from_secs(30));
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines[0].clone()
}

#[test]
fn an_fd_that_is_not_a_tcp_listener_is_named_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("data")).unwrap();
    let r = take_tcp_given(file.as_fd());
    assert!(
        r.starts_with("take-error=") && r.contains("inherited fd 3 (named \"http\")"),
        "{r}"
    );
    assert!(
        r.contains("expected a TCP listener") && r.contains("found a regular file"),
        "{r}"
    );

    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let r = take_tcp_given(pipe_r.as_fd());
    assert!(
        r.contains("expected a TCP listener") && r.contains("found a pipe"),
        "{r}"
    );

    let null = std::fs::File::open("/dev/null").unwrap();
    let r = take_tcp_given(null.as_fd());
    assert!(r.contains("found a character device"), "{r}");

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = take_tcp_given(udp.as_fd());
    assert!(r.contains("found a UDP socket"), "{r}");

    // A connected TCP socket is not a listener either.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let conn = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let r = take_tcp_given(conn.as_fd());
    assert!(r.contains("expected a TCP listener"), "{r}");
    assert!(r.contains("found a TCP"), "{r}");
}

#[test]
fn listen_fds_claiming_more_fds_than_were_passed_closes_nothing_it_does_not_own() {
    // fd 3 is passed; LISTEN_FDS says 4. Before the fix, the receiver adopted
    // fd 3, then failed on fd 4 and closed fd 3; worse, had the process
    // opened fds of its own at 4.. (a runtime), it closed those: an abort
    // ("IO Safety violation"). Now every fd is checked first.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = Activation::new();
    a.fd("http", l.as_fd()).unwrap();
    let exe = std::env::current_exe().unwrap();
    // `exec` keeps the pid, so LISTEN_PID stays right; LISTEN_FDS is raised
    // after Activation set it.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "export LISTEN_PID=$$ LISTEN_FDS=4 LISTEN_FDNAMES=http:b:c:d; exec \"$0\" --exact \
         child_role --nocapture --test-threads=1 -q",
    ])
    .arg(&exe)
    .env(ROLE, "take-tcp")
    .stdout(Stdio::piped());
    let mut child = Guard(a.spawn(cmd).unwrap());
    let lines = reports(&mut child, Duration::from_secs(30));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("env-error=")
            && lines[0].contains("LISTEN_FDS=4 says fds 3..=6 were passed, but fd 4 is not open"),
        "{lines:?}"
    );
}
