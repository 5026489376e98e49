//! Socket activation between real processes: this test binary re-executes
//! itself as the child (selected by `HANDOVER_TEST_ROLE`), so the receiving
//! side runs exactly as a server started by systemd would.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Guard, ROLE, reports, role_command, wait_exit};
use handover::activation::{Activation, ActivationError, ListenFds};
use handover::process::{Command as HCommand, Stdio as HStdio};

/// The child side. A no-op in the normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "serve" => serve_child(),
        "expect-none" => {
            let fds = ListenFds::from_env().unwrap();
            println!("report:count={}", fds.len());
        }
        "expect-error" => match ListenFds::from_env() {
            Ok(fds) => println!("report:unexpected ok {}", fds.len()),
            Err(e) => println!("report:error={e}"),
        },
        "tokio-outside-runtime" => tokio_outside_runtime(),
        "upgrader-tokio-outside-runtime" => upgrader_tokio_outside_runtime(),
        other => panic!("unknown role {other}"),
    }
}

fn serve_child() {
    // LISTEN_PID must be this very process.
    let listen_pid = std::env::var("LISTEN_PID").unwrap();
    println!(
        "report:listen_pid_matches={}",
        listen_pid == std::process::id().to_string()
    );
    println!("report:names={}", std::env::var("LISTEN_FDNAMES").unwrap());

    let mut fds = ListenFds::from_env().unwrap();
    // A second receive is refused: the fds have one owner.
    println!(
        "report:second_receive={}",
        matches!(ListenFds::from_env(), Err(ActivationError::AlreadyReceived))
    );
    // Asking for the wrong kind names both kinds, and leaves the fd in place.
    let wrong = fds.take::<UdpSocket>("web").unwrap_err().to_string();
    println!("report:wrong={wrong}");
    let missing = fds.take::<TcpListener>("nope").unwrap_err();
    println!("report:missing_is_not_found={}", missing.is_not_found());

    let web: TcpListener = fds.take("web").unwrap();
    let twice = fds.take::<TcpListener>("web").unwrap_err();
    println!(
        "report:twice={}",
        matches!(twice, ActivationError::AlreadyTaken { fd: 3, .. })
    );
    let admin: UnixListener = fds.take("admin").unwrap();
    let dns: UdpSocket = fds.take("dns").unwrap();

    // Received fds are close-on-exec, and a child spawned with strip_env
    // sees no LISTEN_* variables.
    let mut grandchild = Command::new("sh");
    grandchild.args(["-c", "env; ls /proc/self/fd"]);
    handover::activation::strip_env(&mut grandchild);
    let out = grandchild.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "report:grandchild_listen_vars={}",
        text.lines().filter(|l| l.starts_with("LISTEN_")).count()
    );

    // Everything else this process holds above 2 was not inherited.
    let leaked = std::env::var("HANDOVER_TEST_MARKER").unwrap();
    let mut seen_marker = false;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(e.path())
            && target.to_string_lossy() == leaked
        {
            seen_marker = true;
        }
    }
    println!("report:marker_inherited={seen_marker}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let asynch: tokio::net::TcpListener = {
        let _enter = rt.enter();
        fds.take("async").unwrap()
    };
    println!("report:ready");

    let (mut s, _) = web.accept().unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    write!(s, "tcp {} {}", line.trim(), std::process::id()).unwrap();
    drop(s);

    let (mut u, _) = admin.accept().unwrap();
    let mut line = String::new();
    BufReader::new(u.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    write!(u, "unix {}", line.trim()).unwrap();
    drop(u);

    let mut buf = [0u8; 64];
    let (n, from) = dns.recv_from(&mut buf).unwrap();
    let reply = format!("udp {}", String::from_utf8_lossy(&buf[..n]));
    dns.send_to(reply.as_bytes(), from).unwrap();

    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let (mut s, _) = asynch.accept().await.unwrap();
        s.write_all(b"tokio ok").await.unwrap();
    });
    println!("report:done");
}

fn read_all(mut s: impl Read) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn parent_passes_named_sockets_to_a_child() {
    let dir = tempfile::tempdir().unwrap();
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_path = dir.path().join("admin.sock");
    let admin = UnixListener::bind(&admin_path).unwrap();
    let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
    let asynch = TcpListener::bind("127.0.0.1:0").unwrap();

    // A descriptor without FD_CLOEXEC that is NOT on the list: the child
    // must not inherit it.
    let marker_path = dir.path().join("marker");
    let marker = std::fs::File::create(&marker_path).unwrap();
    let marker = OwnedFd::from(marker);
    rustix::io::fcntl_setfd(&marker, rustix::io::FdFlags::empty()).unwrap();

    let mut a = Activation::new();
    a.fd("web", web.as_fd())
        .unwrap()
        .fd("admin", admin.as_fd())
        .unwrap()
        .fd("dns", dns.as_fd())
        .unwrap()
        .fd("async", asynch.as_fd())
        .unwrap();
    let mut cmd = common::handover_role("serve");
    cmd.env("HANDOVER_TEST_MARKER", &marker_path);
    let mut child = Guard(a.spawn(cmd).unwrap());
    drop(marker);

    // Talk to the child through the sockets it received.
    let web_addr = web.local_addr().unwrap();
    let dns_addr = dns.local_addr().unwrap();
    let async_addr = asynch.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut t = TcpStream::connect(web_addr).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        t.write_all(b"hello\n").unwrap();
        let tcp = read_all(&t);

        let mut u = UnixStream::connect(&admin_path).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        u.write_all(b"hi\n").unwrap();
        let unix = read_all(&u);

        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.send_to(b"query", dns_addr).unwrap();
        let mut buf = [0u8; 64];
        let n = c.recv(&mut buf).unwrap();
        let udp = String::from_utf8_lossy(&buf[..n]).into_owned();

        let a = TcpStream::connect(async_addr).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let tokio = read_all(&a);
        (tcp, unix, udp, tokio)
    });

    let child_pid = child.0.id();
    let lines = reports(&mut child, Duration::from_secs(30));
    let (tcp, unix, udp, tokio) = client.join().unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());

    let has = |s: &str| lines.iter().any(|l| l == s);
    assert!(has("listen_pid_matches=true"), "{lines:?}");
    assert!(has("names=web:admin:dns:async"), "{lines:?}");
    assert!(has("second_receive=true"), "{lines:?}");
    assert!(has("missing_is_not_found=true"), "{lines:?}");
    assert!(has("twice=true"), "{lines:?}");
    assert!(has("grandchild_listen_vars=0"), "{lines:?}");
    assert!(has("marker_inherited=false"), "{lines:?}");
    assert!(has("done"), "{lines:?}");
    let wrong = lines.iter().find(|l| l.starts_with("wrong=")).unwrap();
    assert!(wrong.contains("inherited fd 3 (named \"web\")"), "{wrong}");
    assert!(wrong.contains("expected a UDP socket"), "{wrong}");
    assert!(wrong.contains("found a TCP listener"), "{wrong}");

    assert_eq!(tcp, format!("tcp hello {child_pid}"));
    assert_eq!(unix, "unix hi");
    assert_eq!(udp, "udp query");
    assert_eq!(tokio, "tokio ok");
}

#[test]
fn another_pid_means_no_fds() {
    let mut cmd = role_command("expect-none");
    cmd.env("LISTEN_PID", "1").env("LISTEN_FDS", "2");
    let mut child = Guard(cmd.spawn().unwrap());
    let lines = reports(&mut child, Duration::from_secs(30));
    assert_eq!(lines, ["count=0"]);
}

#[test]
fn closed_fds_and_bad_values_are_clear_errors() {
    // `exec` keeps the shell's pid, so LISTEN_PID=$$ is the child's pid; fds
    // 3..7 are not open in it.
    let cases = [
        (
            "LISTEN_FDS=5",
            "LISTEN_FDS=5 says fds 3..=7 were passed, but fd 3 is not open",
        ),
        (
            "LISTEN_FDS=abc",
            "LISTEN_FDS=\"abc\" is not valid: expected a count",
        ),
        (
            "LISTEN_FDS=2 LISTEN_FDNAMES=a:b:c",
            "has 3 name(s) but LISTEN_FDS=2",
        ),
        ("LISTEN_FDS=99999999999", "is not valid"),
    ];
    for (vars, expected) in cases {
        let exe = std::env::current_exe().unwrap();
        let script = format!(
            "export LISTEN_PID=$$ {vars}; exec \"$0\" --exact child_role --nocapture --test-threads=1 -q"
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .arg(&exe) // $0 of the script
            .env(ROLE, "expect-error")
            .stdout(Stdio::piped());
        let mut child = Guard(cmd.spawn().unwrap());
        let lines = reports(&mut child, Duration::from_secs(30));
        assert_eq!(lines.len(), 1, "{vars}: {lines:?}");
        assert!(
            lines[0].starts_with("error=") && lines[0].contains(expected),
            "{vars}: {lines:?}"
        );
    }
}

#[test]
fn program_not_found_is_an_error_from_spawn() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = Activation::new();
    a.fd("x", l.as_fd()).unwrap();
    let err = a
        .spawn(HCommand::new("/nonexistent/handover-no-such-program"))
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let mut cmd = HCommand::new("handover-no-such-program-in-path");
    cmd.env("PATH", "/nonexistent");
    let err = a.spawn(cmd).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn env_clear_and_path_lookup_are_honoured() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = Activation::new();
    a.fd("only", l.as_fd()).unwrap();
    let mut cmd = HCommand::new("sh");
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("KEEP", "yes")
        .args(["-c", "env | sort"])
        .stdout(HStdio::piped());
    let child = a.spawn(cmd).unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut vars: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .collect();
    vars.sort();
    assert_eq!(
        vars,
        [
            "KEEP=yes",
            "LISTEN_FDNAMES=only",
            "LISTEN_FDS=1",
            &format!("LISTEN_PID={pid}"),
            "PATH=/usr/bin:/bin"
        ]
    );
}

#[test]
fn a_script_without_a_shebang_runs_with_sh_as_execvp_would() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("noshebang");
    std::fs::write(&script, "echo \"$LISTEN_FDS $LISTEN_FDNAMES $1\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = Activation::new();
    a.fd("web", l.as_fd()).unwrap();
    let mut cmd = HCommand::new(&script);
    cmd.arg("arg1").stdout(HStdio::piped());
    let out = a.spawn(cmd).unwrap().wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 web arg1\n");
}

/// Takes a tokio listener outside a runtime (an error that leaves it), then
/// inside one.
fn tokio_outside_runtime() {
    use std::os::fd::AsRawFd;
    let mut fds = ListenFds::from_env().unwrap();
    match fds.take::<tokio::net::TcpListener>("web") {
        Ok(_) => println!("report:first=ok"),
        Err(e @ ActivationError::NoRuntime { .. }) => println!("report:first=NoRuntime {e}"),
        Err(e) => println!("report:first=other {e}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in = rt.enter();
    match fds.take::<tokio::net::TcpListener>("web") {
        Ok(l) => println!(
            "report:second=ok fd={} port={}",
            l.as_raw_fd(),
            l.local_addr().unwrap().port()
        ),
        Err(e) => println!("report:second=error {e}"),
    }
}

/// `Upgrader::listen` of a tokio listener outside a runtime, then inside.
fn upgrader_tokio_outside_runtime() {
    use handover::upgrade::{Options, Upgrader};
    let up = Upgrader::new(Options::default()).unwrap();
    let addr = "tcp://127.0.0.1:0".parse().unwrap();
    match up.listen::<tokio::net::TcpListener>("web", &addr) {
        Ok(_) => println!("report:first=ok"),
        Err(e) => println!("report:first=error {e}"),
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in = rt.enter();
    match up.listen::<tokio::net::TcpListener>("web", &addr) {
        Ok(l) => println!("report:second=ok port={}", l.local_addr().unwrap().port()),
        Err(e) => println!("report:second=error {e}"),
    }
}

#[test]
fn a_tokio_listener_taken_outside_a_runtime_stays_in_place() {
    // Before the fix, the failed conversion dropped the inherited socket
    // (and blamed the sender for the wrong kind); the second take, inside a
    // runtime, then found it "already taken".
    for role in ["tokio-outside-runtime", "upgrader-tokio-outside-runtime"] {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut a = Activation::new();
        a.fd("web", l.as_fd()).unwrap();
        let mut child = Guard(a.spawn(common::handover_role(role)).unwrap());
        drop(l);
        let lines = reports(&mut child, Duration::from_secs(30));
        assert_eq!(lines.len(), 2, "{role}: {lines:?}");
        assert!(
            lines[0].contains("tokio runtime") && lines[0].contains("still there"),
            "{role}: {lines:?}"
        );
        assert!(
            !lines[0].contains("another kind"),
            "the error must not blame the sender: {lines:?}"
        );
        assert!(
            lines[1].starts_with("second=ok") && lines[1].ends_with(&format!("port={port}")),
            "{role}: the inherited socket was lost: {lines:?}"
        );
    }
}
