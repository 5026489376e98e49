//! Hostile and bad input to `handover run` (issue 8; see RELIABILITY.md):
//! control clients of another user, malformed, truncated, oversized and
//! slow-loris requests (more of them than there are client slots), and a
//! parent that passes `LISTEN_FDS` that lie.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handover::activation::Activation;
use support::{Handover, KillOnDrop, Setup, control_raw, wait_until};

/// Waits for `child` to exit; its status, stdout and stderr.
fn finish(mut child: KillOnDrop, timeout: Duration) -> (std::process::ExitStatus, String, String) {
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.0.stdout.take() {
        std::io::Read::read_to_string(&mut o, &mut out).unwrap();
    }
    if let Some(mut e) = child.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    (status, out, err)
}

#[test]
fn a_control_client_of_another_user_is_refused_and_logged() {
    assert!(
        rustix::process::getuid().is_root(),
        "this test runs a client as uid 65534 (nobody), which needs root"
    );
    let h = Handover::start(Setup::default());
    // As root the file mode would not stop anyone; open the socket file and
    // its directory to everyone, so only the SO_PEERCRED check is left.
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&h.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let child = KillOnDrop(
        Command::new(support::handover_bin())
            .args(["status", "--timeout", "20s", "--control"])
            .arg(&h.control)
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let client = child.0.id();
    let (status, out, err) = finish(child, Duration::from_secs(30));
    assert!(!status.success(), "nobody got an answer: {out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("handover closed the connection without an answer: was this user refused?")
            && err.contains("this is uid 65534"),
        "{err}"
    );
    h.wait_log(
        "control socket: refused a client of another user",
        Duration::from_secs(10),
    );
    let line = h
        .log()
        .lines()
        .find(|l| l.contains("refused a client of another user"))
        .unwrap()
        .to_string();
    assert!(line.contains(&format!("pid={client}")), "{line}");
    assert!(line.contains("uid=65534"), "{line}");
    // handover is unharmed.
    assert!(h.cli(&["status"]).status.success());
}

#[test]
fn malformed_truncated_oversized_and_slow_requests_get_errors_and_block_nobody() {
    let h = Handover::start(Setup::default());
    let ctl = h.control.clone();
    let t = Duration::from_secs(10);

    // A slow-loris client: half a request, then silence, held throughout.
    let mut slow = UnixStream::connect(&ctl).unwrap();
    slow.write_all(b"{\"cmd\":").unwrap();

    let cases: &[(&[u8], &str)] = &[
        (b"reload\n", "expected one JSON object per line"),
        (b"{\"cmd\":\"explode\"}\n", "unknown variant"),
        (b"{\"cmd\":\"status\"\n", "is not valid"),
        (b"\xff\xfe\n", "the request is not UTF-8"),
        (b"\n", "expected one JSON object per line"),
        (b"{\"cmd\":\"status\"}{\"cmd\":\"stop\"}\n", "is not valid"),
    ];
    for (request, needle) in cases {
        let answer = control_raw(&ctl, request, t).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["ok"], false, "{answer}");
        assert!(answer.contains(needle), "{request:?}: {answer}");
    }
    // Truncated: the client stops writing without a newline.
    let mut s = UnixStream::connect(&ctl).unwrap();
    s.set_read_timeout(Some(t)).unwrap();
    s.write_all(b"{\"cmd\":\"stat").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    assert!(answer.contains("ended without a newline"), "{answer}");
    // Oversized, with and without a newline at the end.
    for newline in [false, true] {
        let mut big = vec![b' '; 10_000];
        big.extend_from_slice(b"{\"cmd\":\"status\"}");
        if newline {
            big.push(b'\n');
        }
        let answer = control_raw(&ctl, &big, t).unwrap();
        assert!(answer.contains("longer than 4096 bytes"), "{answer}");
    }
    // A legitimate client is served meanwhile, and handover still works.
    let out = h.cli(&["status", "--json"]);
    assert!(out.status.success());
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}");

    // The slow client gets a timeout answer.
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    BufReader::new(slow).read_line(&mut answer).unwrap();
    assert!(answer.contains("no complete request within 5s"), "{answer}");
}

#[test]
fn more_slow_loris_clients_than_slots_do_not_lock_out_a_legitimate_one() {
    let h = Handover::start(Setup::default());
    let connect_slow = || {
        let mut s = UnixStream::connect(&h.control).unwrap();
        s.write_all(b"{\"cmd\":").unwrap();
        s
    };
    // 64 is the number of client slots: take them all and wait, so that
    // every slot is held and nobody waits.
    let mut slow: Vec<UnixStream> = (0..64).map(|_| connect_slow()).collect();
    std::thread::sleep(Duration::from_millis(500));
    // A well-behaved client is answered long before the slow ones time out
    // (5 s): while it waits, slot holders that have been idle for 250 ms are
    // closed to make room. (Before the fix it was told "busy" at once.)
    let out = h.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status was locked out by 64 slow clients: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And during a flood of 70 more.
    slow.extend((0..70).map(|_| connect_slow()));
    let out = h.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status was locked out by a flood of slow clients: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, out, err) = h.reload();
    assert!(ok, "reload was locked out by slow clients: {out}{err}");

    // Every slow client got an error answer (none is left hanging): closed
    // to make room, timed out, or busy.
    let mut made_room = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut answer = String::new();
        BufReader::new(&*s).read_line(&mut answer).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["ok"], false, "{answer}");
        if answer.contains("closed to make room") {
            made_room += 1;
        } else {
            assert!(
                answer.contains("no complete request within") || answer.contains("busy"),
                "{answer}"
            );
        }
    }
    assert!(made_room > 0, "no slow client was closed to make room");
}

/// Runs `handover run` the way a socket-activating parent would: with `fd`
/// (if any) as fd 3 and nothing else above 2, then `script` (sh) sets the
/// `LISTEN_*` variables and execs handover, keeping its pid. Returns the
/// exit status and stderr.
fn run_with_listen_env(fd: Option<std::os::fd::BorrowedFd<'_>>, script: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Activation::new();
    if let Some(fd) = fd {
        a.fd("http", fd).unwrap();
    }
    let mut cmd = handover::process::Command::new("sh");
    cmd.args(["-c", &format!("{script}; exec \"$0\" \"$@\"")])
        .arg(support::handover_bin())
        .args(["run", "--bind", "http=tcp://127.0.0.1:0", "--control"])
        .arg(dir.path().join("c.sock"))
        .args(["--", "sleep", "60"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(handover::process::Stdio::null())
        .stdout(handover::process::Stdio::null())
        .stderr(handover::process::Stdio::piped());
    let mut child = a.spawn(cmd).unwrap();
    let Some(status) = child.wait_timeout(Duration::from_secs(30)).unwrap() else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the process did not exit");
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    (status.code().unwrap_or(-1), err)
}

#[test]
fn handover_run_refuses_lying_listen_fds_with_clear_errors() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("data")).unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let cases: Vec<(Option<std::os::fd::BorrowedFd<'_>>, &str, &str)> = vec![
        (
            Some(l.as_fd()),
            "export LISTEN_PID=$$ LISTEN_FDS=abc",
            "LISTEN_FDS=\"abc\" is not valid: expected a count of descriptors",
        ),
        // Two billion used to be a 48 GB allocation and an abort.
        (
            Some(l.as_fd()),
            "export LISTEN_PID=$$ LISTEN_FDS=2000000000",
            "LISTEN_FDS=\"2000000000\" is not valid: expected a count of descriptors this \
             system can have open",
        ),
        // fd 3 is passed, 4..10 are not. This used to abort handover: it
        // built its runtime first (epoll and friends at fds 4..), adopted
        // them as "inherited", and closed them on the error path ("IO
        // Safety violation").
        (
            Some(l.as_fd()),
            "export LISTEN_PID=$$ LISTEN_FDS=8 LISTEN_FDNAMES=http:a:b:c:d:e:f:g",
            "LISTEN_FDS=8 says fds 3..=10 were passed, but fd 4 is not open",
        ),
        (
            None,
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http",
            "LISTEN_FDS=1 says fds 3..=3 were passed, but fd 3 is not open",
        ),
        (
            Some(l.as_fd()),
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=\"$(printf 'ht\\001tp')\"",
            "is not valid: expected names of at most 255 printable ASCII characters",
        ),
        (
            Some(l.as_fd()),
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=ht:tp",
            "has 2 name(s) but LISTEN_FDS=1",
        ),
        (
            Some(l.as_fd()),
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=http LISTEN_PID=-3",
            "LISTEN_PID=\"-3\" is not valid: expected a process id",
        ),
        // A regular file where --bind http=tcp://... expects a TCP listener:
        // refused at start, not handed to every generation.
        (
            Some(file.as_fd()),
            "true",
            "--bind http=tcp://127.0.0.1:0: inherited fd 3 (named \"http\"): expected a TCP \
             listener",
        ),
        (Some(udp.as_fd()), "true", "found a UDP socket"),
    ];
    for (fd, script, needle) in cases {
        let (code, err) = run_with_listen_env(fd, script);
        assert_eq!(code, 1, "{script}: {err}");
        assert!(err.contains(needle), "{script}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("IO Safety") && !err.contains("allocation"),
            "{script}: {err}"
        );
    }
    let (_, err) = run_with_listen_env(Some(file.as_fd()), "true");
    assert!(
        err.contains("found a regular file") && err.contains("ListenStream="),
        "{err}"
    );
}

#[test]
fn a_bind_name_with_a_colon_or_control_character_is_refused() {
    for (bind, needle) in [
        ("we:b=tcp://127.0.0.1:0", "\"we:b\" is not a socket name"),
        ("we\u{1}b=tcp://127.0.0.1:0", "is not a socket name"),
    ] {
        let out = Command::new(support::handover_bin())
            .args(["run", "--bind", bind, "--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(needle) && err.contains("without ':'"), "{err}");
    }
}

#[test]
fn handover_survives_clients_that_vanish_mid_request() {
    let h = Handover::start(Setup::default());
    for _ in 0..50 {
        let mut s = UnixStream::connect(&h.control).unwrap();
        let _ = s.write_all(b"{\"cmd\":\"sta");
        drop(s);
        let s = UnixStream::connect(&h.control).unwrap();
        drop(s);
    }
    // A client that asks for a reload and leaves before the answer: the
    // reload happens anyway, and handover carries on.
    let before = h.cli(&["status", "--json"]).stdout.clone();
    let before: serde_json::Value = serde_json::from_slice(&before).unwrap();
    let mut s = UnixStream::connect(&h.control).unwrap();
    s.write_all(b"{\"cmd\":\"reload\"}\n").unwrap();
    drop(s);
    wait_until(
        "the abandoned reload happened",
        Duration::from_secs(30),
        || {
            let out = h.cli(&["status", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["reloads"].as_u64() > before["reloads"].as_u64())
        },
    );
    assert!(h.cli(&["status"]).status.success());
}
