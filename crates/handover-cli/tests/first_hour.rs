//! What a new user meets in the first hour: the messages for common
//! mistakes, `--version`, completions and the man page, and `verify`'s
//! handling of its address and control socket.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::handover_bin;

fn handover(args: &[&str]) -> Output {
    Command::new(handover_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_typo_in_the_subcommand_gets_the_nearest_one() {
    let o = handover(&["rn"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("did you mean `handover run`?"),
        "{}",
        stderr(&o)
    );
    // clap's own suggestion is kept where it has one, and not doubled.
    let o = handover(&["statu"]);
    let e = stderr(&o);
    assert!(e.contains("'status'"), "{e}");
    assert_eq!(e.matches("tip:").count(), 1, "{e}");
    // Nothing near: no tip.
    let o = handover(&["xyzzy"]);
    assert!(!stderr(&o).contains("tip:"), "{}", stderr(&o));
}

#[test]
fn a_program_without_the_double_dash_gets_a_hint() {
    let o = handover(&["run", "--bind", "tcp://127.0.0.1:0", "python3", "server.py"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("put `--` before the program and its arguments")
            && e.contains("handover run [OPTIONS] -- python3"),
        "{e}"
    );
}

#[test]
fn a_privileged_port_says_why_and_what_to_do() {
    let first: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if first <= 80 {
        eprintln!(
            "SKIP: net.ipv4.ip_unprivileged_port_start is {first}: port 80 is not privileged here"
        );
        return;
    }
    // As root, run handover as nobody; as anyone else, run it as is.
    let mut cmd = if rustix::process::getuid().is_root() {
        if support::runtime::find_program("setpriv").is_none() {
            eprintln!("SKIP: running as root and setpriv (util-linux) is missing");
            return;
        }
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            handover_bin(),
        ]);
        c
    } else {
        Command::new(handover_bin())
    };
    let dir = tempfile::tempdir().unwrap();
    let o = cmd
        .args(["run", "--bind", "tcp://127.0.0.1:80", "--control"])
        .arg(dir.path().join("c.sock"))
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("ports below {first} are privileged"))
            && e.contains("CAP_NET_BIND_SERVICE"),
        "{e}"
    );
}

#[test]
fn a_control_directory_that_cannot_be_created_names_the_control_socket() {
    let o = handover(&[
        "run",
        "--bind",
        "tcp://127.0.0.1:0",
        "--control",
        "/proc/no-such-dir/control.sock",
        "--",
        "true",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("cannot create the directory /proc/no-such-dir")
            && e.contains("control socket (--control)"),
        "{e}"
    );
}

#[test]
fn version_says_which_build() {
    let o = handover(&["--version"]);
    let v = stdout(&o);
    assert!(o.status.success());
    assert!(
        v.starts_with(&format!("handover {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(
        (v.contains("commit ") || v.contains("not built from a git checkout"))
            && v.contains("build"),
        "{v}"
    );
}

#[test]
fn completions_and_man_pages() {
    for (shell, marker) in [
        ("bash", "complete -F _handover"),
        ("zsh", "#compdef handover"),
        ("fish", "complete -c handover"),
    ] {
        let o = handover(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("reload") && out.contains("verify"), "{shell}");
    }
    let o = handover(&["man"]);
    assert!(o.status.success());
    let page = stdout(&o);
    assert!(page.contains(".TH handover 1"), "{page}");
    assert!(page.contains("handover\\-run(1)"), "{page}");
    let o = handover(&["man", "run"]);
    let page = stdout(&o);
    assert!(page.contains(".TH handover-run 1"), "{page}");
    assert!(
        page.contains("\\-\\-bind") && page.contains("\\-\\-ready"),
        "{page}"
    );
    let o = handover(&["man", "nope"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("expected one of: run, reload"),
        "{}",
        stderr(&o)
    );
    // A closed pipe is not a panic.
    let mut child = Command::new(handover_bin())
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

/// A plain HTTP server on a thread: `200 ok` to every request, one per
/// connection.
struct Ok200 {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Ok200 {
    fn start() -> Ok200 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                });
            }
        });
        Ok200 { addr, stop }
    }
}

impl Drop for Ok200 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn verify_takes_a_url_and_prints_one_verdict() {
    let server = Ok200::start();
    let url = format!("http://{}/", server.addr);
    let o = handover(&[
        "verify",
        "--addr",
        &url,
        "--duration",
        "1s",
        "--connections",
        "2",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert_eq!(out.matches("PASS").count(), 1, "{out}");
}

#[test]
fn verify_fails_at_once_when_it_cannot_reach_the_control_socket() {
    let server = Ok200::start();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("control.sock");
    let start = Instant::now();
    let o = Command::new(handover_bin())
        .args(["verify", "--addr", &server.addr.to_string()])
        .args(["--duration", "30s", "--reload-every", "1s"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    // The default control path is the one `handover run` uses by default.
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "it ran the load first"
    );
    assert!(
        e.contains(&format!("{}/handover/control.sock", dir.path().display())),
        "{e}"
    );
    // An explicit path that is wrong fails the same way.
    let o = Command::new(handover_bin())
        .args(["verify", "--addr", &server.addr.to_string()])
        .args(["--duration", "30s", "--reload-every", "1s", "--control"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&missing.display().to_string()),
        "{}",
        stderr(&o)
    );
}
