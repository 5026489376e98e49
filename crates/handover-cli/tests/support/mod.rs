//! Helpers for end-to-end tests of the `handover` binary: start it in a
//! private temporary directory, talk to it, and kill everything it started
//! when the test ends, however it ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

#[path = "../../../handover/tests/common/runtime.rs"]
pub mod runtime;

/// The `handover` binary under test.
pub fn handover_bin() -> &'static str {
    env!("CARGO_BIN_EXE_handover")
}

/// The Python test server's source.
pub const SERVER_PY: &str = include_str!("../servers/server.py");

/// A free TCP port on 127.0.0.1 (bound then released: a test that needs
/// the port number before handover binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `handover run`. Kills it, and every generation it reported,
/// on drop.
pub struct Handover {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub control: PathBuf,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<Vec<String>>>,
    seen_pids: Mutex<Vec<u32>>,
}

/// What to run and how.
#[derive(Default)]
pub struct Setup {
    /// Extra `handover run` options.
    pub options: Vec<String>,
    /// The program (after `--`); `None`: the Python server through a
    /// wrapper script that obeys `<dir>/mode` (ok, crash, hang).
    pub program: Option<Vec<String>>,
    /// Environment for handover (and so its generations).
    pub env: Vec<(String, String)>,
    /// The handover binary to run (default: the one under test), for
    /// tests that replace it while it runs.
    pub binary: Option<PathBuf>,
}

/// Writes the Python server and its mode wrapper into `dir`; returns the
/// wrapper's path. The wrapper reads `<dir>/mode` at every start: `ok` runs
/// the server, `crash` prints to stderr and exits 3, `hang` never becomes
/// ready, `ready-crash` (once: it sets the mode back to `ok`) runs the
/// server with SERVER_CRASH_AFTER_READY_MS=300 (ready, then holds what it
/// accepts for 300 ms and exits 4).
pub fn write_server(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("server.py"), SERVER_PY).unwrap();
    std::fs::write(dir.join("mode"), "ok").unwrap();
    let wrapper = dir.join("serve.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$(cat '{d}/mode')\" in\n  crash) echo 'boom: bad config on line 7' >&2; exit 3;;\n  hang) exec sleep 60;;\n  ready-crash) echo ok > '{d}/mode'; export SERVER_CRASH_AFTER_READY_MS=300;;\nesac\nexec python3 '{d}/server.py'\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

impl Handover {
    /// Starts `handover run --bind http=tcp://127.0.0.1:0` and waits until
    /// its first generation serves.
    pub fn start(setup: Setup) -> Handover {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("ctl.sock");
        let program = setup
            .program
            .unwrap_or_else(|| vec![write_server(dir.path()).display().to_string()]);
        let mut cmd = Command::new(setup.binary.as_deref().unwrap_or(handover_bin().as_ref()));
        cmd.arg("run")
            .args(["--bind", "http=tcp://127.0.0.1:0", "--control"])
            .arg(&control)
            .args(&setup.options)
            .arg("--")
            .args(&program)
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("SERVER_MARK_DIR", dir.path())
            .env("RUST_LOG", "info")
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Handover::adopt(dir, cmd.spawn().unwrap(), control, Duration::from_secs(30))
    }

    /// Takes charge of a `handover run` started another way (a script that
    /// execs it, with its stderr piped): waits up to `timeout` until it
    /// answers on `control`, and learns its first socket's address.
    pub fn adopt(
        dir: tempfile::TempDir,
        mut child: Child,
        control: PathBuf,
        timeout: Duration,
    ) -> Handover {
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut h = Handover {
            dir,
            child,
            control,
            addr: "127.0.0.1:1".parse().unwrap(),
            stderr,
            seen_pids: Mutex::new(Vec::new()),
        };
        // The control socket answers while the first generation starts: wait
        // until one is current (serves).
        let deadline = Instant::now() + timeout;
        let status = loop {
            let status = h.wait_status(timeout);
            let serving = status["generations"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g["current"] == true));
            if serving {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "no generation became current:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let address = status["sockets"][0]["address"]
            .as_str()
            .unwrap()
            .to_string();
        h.addr = address.strip_prefix("tcp://").unwrap().parse().unwrap();
        h
    }

    /// `handover status --json`, parsed; waits until it answers.
    pub fn wait_status(&mut self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("handover exited ({s}) before serving:\n{}", self.log());
            }
            let out = self.cli(&["status", "--json", "--timeout", "10s"]);
            if out.status.success() {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                        panic!("status --json is not JSON ({e}): {:?}", out.stdout)
                    });
                self.remember(&v);
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "handover never answered:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn remember(&self, status: &serde_json::Value) {
        let mut seen = self.seen_pids.lock().unwrap();
        for g in status["generations"].as_array().into_iter().flatten() {
            if let Some(pid) = g["pid"].as_u64() {
                let pid = pid as u32;
                if !seen.contains(&pid) {
                    seen.push(pid);
                }
            }
        }
    }

    /// Runs `handover ARGS --control <this>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(handover_bin())
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()
            .unwrap();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            self.remember(&v);
        }
        out
    }

    /// The current generation's pid.
    pub fn current_pid(&mut self) -> u32 {
        let s = self.wait_status(Duration::from_secs(10));
        s["generations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["current"] == true)
            .and_then(|g| g["pid"].as_u64())
            .expect("no current generation") as u32
    }

    /// All generation pids listed in status.
    pub fn generation_pids(&mut self) -> Vec<u32> {
        let s = self.wait_status(Duration::from_secs(10));
        s["generations"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|g| g["pid"].as_u64().map(|p| p as u32))
            .collect()
    }

    /// `handover reload`: (success, stdout, stderr).
    pub fn reload(&self) -> (bool, String, String) {
        let out = self.cli(&["reload"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sets the Python server wrapper's mode for the next start.
    pub fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: Signal) {
        rustix::process::kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), sig).unwrap();
    }

    /// Waits for handover to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "handover did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &pid in self.seen_pids.lock().unwrap().iter() {
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(p, Signal::KILL);
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
    }
}

/// Whether `pid` is gone (or at most a zombie).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')),
    }
}

/// Zombie children of `pid`.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        for c in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if std::fs::read_to_string(format!("/proc/{c}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            {
                out.push(c);
            }
        }
    }
    out
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `pid`'s descriptor count once it has stopped moving (the same in three
/// reads 100 ms apart; at most 5 s): a baseline taken while a control
/// client's connection is still being closed would count it.
pub fn settled_fd_count(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = fd_count(pid);
    let mut same = 0;
    while same < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Waits until `f` is true.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Child processes of `pid` (forked by any of its threads).
pub fn children_of(pid: u32) -> Vec<u32> {
    children(pid)
}

/// Child processes of `pid` (from /proc/PID/task/*/children).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Resident memory of `pid` in KiB (VmRSS in /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Sends one raw request line to a control socket and returns the answer
/// line (empty when the connection closed without one).
pub fn control_raw(path: &Path, request: &[u8], timeout: Duration) -> std::io::Result<String> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    Ok(answer)
}

/// A control request (`{"cmd":CMD}`) answered as JSON.
pub fn control_json(path: &Path, cmd: &str, timeout: Duration) -> Option<serde_json::Value> {
    let line = format!("{{\"cmd\":\"{cmd}\"}}\n");
    let answer = control_raw(path, line.as_bytes(), timeout).ok()?;
    serde_json::from_str(&answer).ok()
}

/// One `GET path` on a new connection; the whole response (empty on any
/// error: refused, reset, timed out).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The pid in a `pid=N` response body.
pub fn pid_in(response: &str) -> Option<u32> {
    response
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.trim().parse().ok())
}

/// Kills `pid` (SIGKILL) on drop, for processes a test starts itself.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
