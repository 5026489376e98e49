//! Helpers shared by the integration tests: each test binary includes this
//! module with `mod common;`.
//!
//! Tests that need another process re-execute their own test binary in a
//! role: the binary runs only its `#[test] fn child_role()`, which reads the
//! role from an environment variable and is a no-op in the normal test run.
//! Every child is killed and reaped by a guard, even when a test fails, and
//! every wait has a deadline.

// Not every test binary uses every helper.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "runtime.rs"]
pub mod runtime;

use handover::activation::Activation;
use handover_verify::Load;
use rustix::process::{Pid, Signal, WaitOptions};

/// The role a re-executed test binary plays in `child_role`.
pub const ROLE: &str = "HANDOVER_TEST_ROLE";
/// The arguments of the `upgrade_http` role, as one string.
pub const ARGS: &str = "HANDOVER_TEST_ARGS";

// ------------------------------------------------------------ children

/// A child process started with std or with `handover::process`.
pub trait Kid {
    /// Its piped stdout, once.
    fn take_stdout(&mut self) -> Option<std::process::ChildStdout>;
    /// `try_wait`.
    fn poll_exit(&mut self) -> std::io::Result<Option<ExitStatus>>;
    /// `kill`, then `wait`.
    fn kill_and_reap(&mut self);
}

impl Kid for Child {
    fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.stdout.take()
    }
    fn poll_exit(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.try_wait()
    }
    fn kill_and_reap(&mut self) {
        let _ = self.kill();
        let _ = self.wait();
    }
}

impl Kid for handover::process::Process {
    fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.stdout.take()
    }
    fn poll_exit(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.try_wait()
    }
    fn kill_and_reap(&mut self) {
        let _ = self.kill();
        let _ = self.wait();
    }
}

/// Kills and reaps the child when dropped, even if the test failed.
pub struct Guard<K: Kid = Child>(pub K);

impl<K: Kid> Drop for Guard<K> {
    fn drop(&mut self) {
        self.0.kill_and_reap();
    }
}

/// Runs `program` (this test binary, or a link to it) as the test harness,
/// but only its `child_role` test, with the output not captured.
pub fn child_role_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.args([
        "--exact",
        "child_role",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]);
    cmd
}

/// [`child_role_command`] as a [`handover::process::Command`], for the
/// library's spawning APIs.
pub fn handover_role_command(program: impl AsRef<std::ffi::OsStr>) -> handover::process::Command {
    let mut cmd = handover::process::Command::new(program);
    cmd.args([
        "--exact",
        "child_role",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]);
    cmd
}

/// [`self_command`] as a [`handover::process::Command`].
pub fn handover_self_command() -> handover::process::Command {
    handover_role_command(std::env::current_exe().unwrap())
}

/// This test binary, re-executed to run `child_role`. The caller sets the
/// role and the standard I/O.
pub fn self_command() -> Command {
    child_role_command(std::env::current_exe().unwrap())
}

/// [`role_command`] as a [`handover::process::Command`].
pub fn handover_role(role: &str) -> handover::process::Command {
    let mut cmd = handover_self_command();
    cmd.env(ROLE, role)
        .stdout(handover::process::Stdio::piped())
        .stderr(handover::process::Stdio::inherit());
    cmd
}

/// This test binary, re-executed to run `child_role` as `role`: stdout is
/// piped (for [`reports`]), stderr inherited.
pub fn role_command(role: &str) -> Command {
    let mut cmd = self_command();
    cmd.env(ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// The child's stdout lines that start with `report:` (without the prefix),
/// as they come.
pub fn report_stream<K: Kid>(guard: &mut Guard<K>) -> mpsc::Receiver<String> {
    let out = guard.0.take_stdout().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(r) = line.strip_prefix("report:")
                && tx.send(r.to_string()).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Collects all the child's `report:` lines, until it closes its stdout;
/// fails after `deadline`.
pub fn reports<K: Kid>(guard: &mut Guard<K>, deadline: Duration) -> Vec<String> {
    let rx = report_stream(guard);
    let start = Instant::now();
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_sub(start.elapsed())) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Disconnected) => return lines,
            Err(RecvTimeoutError::Timeout) => panic!("child did not finish in time"),
        }
    }
}

/// Waits for the child to exit; fails after `deadline`.
pub fn wait_exit<K: Kid>(guard: &mut Guard<K>, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = guard.0.poll_exit().unwrap() {
            return s;
        }
        assert!(start.elapsed() < deadline, "child did not exit in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ----------------------------------------------------------- processes

/// Orphaned descendants (killed children's children, earlier generations of
/// a self-upgrading server) are re-parented to this process instead of
/// init, so the test can reap them and check none is left a zombie. The init
/// of some sandboxes never reaps.
pub fn become_subreaper() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("PR_SET_CHILD_SUBREAPER");
}

/// Reaps `pid` (a child or an adopted orphan); true once it is gone.
pub fn reap(pid: u32, timeout: Duration) -> bool {
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

pub fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// `(pid, /proc/PID/stat)` of every process whose stat could be read.
pub fn proc_stats() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        out.push((pid, stat));
    }
    out
}

// ------------------------------------------- a self-upgrading server

/// A running chain of generations of the `upgrade_http` example, which the
/// test binary runs as the role `upgrade_http` (given [`ARGS`]) in its
/// `child_role`. The server is started through a symlink in a temporary
/// directory, so a test can "deploy" another version by swapping the
/// symlink, as a deploy would. Kills every generation it saw when dropped,
/// even when the test failed.
///
/// Each test binary adds its own `Server::start`, with its arguments.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    app: PathBuf,
    inode: u64,
    first: handover::process::Process,
    pids: Mutex<Vec<u32>>,
    pid_file: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = self.first.id();
        if let Some(p) = Pid::from_raw(group as i32) {
            let _ = rustix::process::kill_process_group(p, Signal::KILL);
        }
        let mut pids = self.pids();
        // Members of the group this harness never learned about.
        for (pid, stat) in proc_stats() {
            let pgrp = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|p| p.parse::<u32>().ok());
            if pgrp == Some(group) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
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
    /// Starts `upgrade_http --listen tcp://127.0.0.1:0 --pid-file
    /// DIR/{pid_file} {extra}` with `env`, and waits until the pid file
    /// names it. Directories on the way to the pid file are created.
    pub fn spawn(pid_file: &str, extra: &str, env: &[(&str, &str)]) -> Server {
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join(pid_file);
        std::fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
        let app = dir.path().join("app");
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &app).unwrap();
        // The socket is bound here and passed as "http", as systemd would;
        // this process then closes its copy, so only the chain holds it.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inode = rustix::fs::fstat(&listener).unwrap().st_ino;
        let mut cmd = handover_role_command(&app);
        cmd.env(ROLE, "upgrade_http")
            .env(
                ARGS,
                format!(
                    "--listen tcp://127.0.0.1:0 --pid-file {} {extra}",
                    pid_file.display()
                ),
            )
            .envs(env.iter().copied())
            .stdout(handover::process::Stdio::null())
            .stderr(handover::process::Stdio::piped());
        // A process group of its own, which every generation inherits: on
        // drop the whole chain is killed, including a generation started
        // just before a failing assertion that this harness never saw.
        cmd.process_group(0);
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
            pids: Mutex::new(vec![pid]),
            pid_file,
            stderr,
        };
        s.wait_pid_file(pid, Duration::from_secs(30));
        s
    }

    pub fn pid_file(&self) -> PathBuf {
        self.pid_file.clone()
    }

    /// The pid the pid file names.
    pub fn current(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn wait_pid_file(&self, pid: u32, timeout: Duration) {
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

    /// Every generation seen so far (killed on drop).
    pub fn pids(&self) -> Vec<u32> {
        self.pids.lock().unwrap().clone()
    }

    /// Remembers a generation, to kill it on drop.
    pub fn remember(&self, pid: u32) {
        self.pids.lock().unwrap().push(pid);
    }

    /// SIGHUP to the process the pid file names.
    pub fn hup(&self) {
        self.hup_pid(self.current().unwrap());
    }

    pub fn hup_pid(&self, pid: u32) {
        rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::HUP).unwrap();
    }

    /// Everything the generations wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
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
    pub fn note_started_pids(&self) {
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

    /// Points the symlink at `target` (atomically, as a deploy would).
    pub fn deploy(&self, target: &Path) {
        let tmp = self.dir.path().join("app.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, &self.app).unwrap();
    }

    /// An executable shell script `name` in the server's directory.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// One upgrade that must succeed: returns the new pid after the old
    /// process has exited and been reaped.
    pub fn upgrade(&mut self, load: &Load) -> u32 {
        self.upgrade_seen(
            || load.pids_seen(),
            |seen, timeout| load.wait_for_new_pid(seen, timeout),
        )
    }

    /// [`upgrade`](Self::upgrade) with any load: `pids_seen` says which pids
    /// answered so far, `wait_for_new_pid` waits for one not in the set.
    pub fn upgrade_seen(
        &mut self,
        pids_seen: impl Fn() -> BTreeSet<u32>,
        wait_for_new_pid: impl Fn(&BTreeSet<u32>, Duration) -> Option<u32>,
    ) -> u32 {
        let old = self.current().unwrap();
        let mut seen: BTreeSet<u32> = pids_seen();
        seen.insert(old);
        self.hup();
        let new = wait_for_new_pid(&seen, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no new pid answered; stderr:\n{}", self.log()));
        assert_ne!(new, old);
        self.remember(new);
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

    /// Whether `pid` holds the socket this harness bound and passed.
    pub fn serves_same_socket(&self, pid: u32) -> bool {
        let want = format!("socket:[{}]", self.inode);
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
    }
}
