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

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{ARGS, Guard, ROLE, Server, is_zombie_or_gone, reports};
use handover::__private::{EnvVars, parse_env};
use handover::activation::{Activation, ListenFds};
use handover_verify::{Load, LoadConfig, Mode};

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

// ---------------------------------------------------------------------------
// Self-upgrade: the new process cannot write the pid file.

impl Server {
    /// `upgrade_http` with the pid file in a directory of its own,
    /// `DIR/run`.
    fn start() -> Server {
        Server::spawn("run/pid", "--ready-timeout 20 --idle-grace-ms 2000", &[])
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
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
    server.hup_pid(first);
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
    server.hup_pid(first);
    let new = loads[0]
        .wait_for_new_pid(&seen, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no new pid answered:\n{}", server.log()));
    server.remember(new);
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
    server.hup_pid(pid);
    for i in 0..15 {
        // Spin: signal the next process the moment the pid file names it.
        let deadline = Instant::now() + Duration::from_secs(60);
        let next = loop {
            match server.current() {
                Some(p) if p != pid => break p,
                _ => {}
            }
            let dead = is_zombie_or_gone(pid);
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
        server.remember(next);
        if i < 14 {
            server.hup_pid(next);
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
    let mut child = Guard(a.spawn(common::handover_role("take-tcp")).unwrap());
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
    let mut cmd = handover::process::Command::new("sh");
    cmd.args([
        "-c",
        "export LISTEN_PID=$$ LISTEN_FDS=4 LISTEN_FDNAMES=http:b:c:d; exec \"$0\" --exact \
         child_role --nocapture --test-threads=1 -q",
    ])
    .arg(&exe)
    .env(ROLE, "take-tcp")
    .stdout(handover::process::Stdio::piped());
    let mut child = Guard(a.spawn(cmd).unwrap());
    let lines = reports(&mut child, Duration::from_secs(30));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("env-error=")
            && lines[0].contains("LISTEN_FDS=4 says fds 3..=6 were passed, but fd 4 is not open"),
        "{lines:?}"
    );
}
