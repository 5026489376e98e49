//! `handover verify`, the command: it must fail on a server that loses
//! requests, and pass on handover.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{Handover, Setup};

/// An HTTP server on its own threads that resets one connection in
/// `every` (SO_LINGER 0, then close: the client sees ECONNRESET).
struct Flaky {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Flaky {
    fn start(every: u64) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (mut conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                };
                let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got.extend_from_slice(&buf[..k]),
                        }
                    }
                    if n % every == 0 {
                        let _ =
                            rustix::net::sockopt::set_socket_linger(&conn, Some(Duration::ZERO));
                        return; // dropped: RST
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\npid=1\n",
                    );
                });
            }
        });
        Flaky { addr, stop }
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn verify(args: &[&str]) -> (Output, serde_json::Value) {
    let out = Command::new(support::handover_bin())
        .arg("verify")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

fn failures(report: &serde_json::Value, kind: &str) -> u64 {
    report["failures"][kind].as_u64().unwrap_or(0)
}

#[test]
fn it_fails_on_a_server_that_resets_one_connection_in_a_hundred() {
    let server = Flaky::start(100);
    let addr = server.addr.to_string();
    let (out, report) = verify(&["--addr", &addr, "--duration", "2s", "--connections", "4"]);
    assert!(
        !out.status.success(),
        "verify passed a server that resets connections: {report}"
    );
    assert_eq!(out.status.code(), Some(1));
    let ok = report["ok"].as_u64().unwrap();
    let resets = failures(&report, "reset") + failures(&report, "short_response");
    assert!(ok > 200, "{report}");
    assert!(resets > 0, "no reset counted: {report}");
    // About one in a hundred.
    assert!(
        resets * 30 < ok,
        "far more failures than the server caused: {report}"
    );
}

#[test]
fn it_passes_on_handover_reloading_through_the_control_socket_and_by_signal() {
    // A reload takes a start plus the settle window (default 2s): a short
    // window keeps two reloads within each 3 s run.
    let mut h = Handover::start(Setup {
        options: vec!["--settle".into(), "300ms".into()],
        ..Setup::default()
    });
    let addr = h.addr.to_string();
    let control = h.control.display().to_string();
    let (out, report) = verify(&[
        "--addr",
        &addr,
        "--duration",
        "3s",
        "--reload-every",
        "1s",
        "--control",
        &control,
    ]);
    assert!(out.status.success(), "{report}\n{}", h.log());
    assert_eq!(
        report["failures"]
            .as_object()
            .map(|f| f.values().filter_map(|v| v.as_u64()).sum::<u64>()),
        Some(0),
        "{report}"
    );
    let reloads = report["reloads"].as_array().unwrap();
    assert!(reloads.len() >= 2, "{report}");
    assert!(reloads.iter().all(|r| r["pid_changed"] == true), "{report}");
    // The same through SIGHUP to the pid in a pid file (handover's pid:
    // SIGHUP to handover is a reload).
    let pid_file = h.dir.path().join("handover.pid");
    std::fs::write(&pid_file, format!("{}\n", h.pid())).unwrap();
    let (out, report) = verify(&[
        "--addr",
        &addr,
        "--duration",
        "3s",
        "--reload-every",
        "1s",
        "--signal",
        "HUP",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--keep-alive",
    ]);
    assert!(out.status.success(), "{report}\n{}", h.log());
    assert!(
        report["reloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["pid_changed"] == true),
        "{report}"
    );
    let _ = h.wait_status(Duration::from_secs(5));
}

#[test]
fn bad_options_are_explained() {
    // Reloads without a trigger go through handover's default control
    // socket (as `handover reload` does); nobody serves it here, which is
    // said at once.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::handover_bin())
        .args(["verify", "--addr", "127.0.0.1:1", "--reload-every", "1s"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("verify reloads through this control socket")
            && err.contains("--signal SIG --pid-file PATH or --command CMD"),
        "{err}"
    );
    let out = Command::new(support::handover_bin())
        .args(["verify", "--addr", "nowhere", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected HOST:PORT"));
}
