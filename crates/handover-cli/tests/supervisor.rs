//! `handover run` on its less travelled paths (issue 19; see RELIABILITY.md,
//! "The supervisor's own paths"): a crashed generation's other processes,
//! backoff and the start limit, a crash during a reload, readiness probes as
//! pid 1, the runtime directory and the control client's trust, bursts of
//! signals, the control socket during the first start, and junk on the notify
//! socket. Each test failed on the supervisor before the state machine
//! rewrite.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use support::{Handover, KillOnDrop, Setup, gone, http_get, pid_in, wait_until};

/// Writes an executable shell script `name` with `body` into `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A temporary directory with the Python test server in it.
fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.py"), support::SERVER_PY).unwrap();
    dir
}

fn kill(pid: u32, sig: Signal) {
    let _ = rustix::process::kill_process(Pid::from_raw(pid as i32).unwrap(), sig);
}

/// The stderr lines of a process, collected on a thread.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

fn joined(lines: &Mutex<Vec<String>>) -> String {
    lines.lock().unwrap().join("\n")
}

/// Waits up to `timeout` for `child` to exit.
fn exit_within(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `(generation, pid, state)` rows of a status answer.
fn generations(status: &serde_json::Value) -> Vec<(u64, u32, String)> {
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().unwrap(),
                g["pid"].as_u64().unwrap() as u32,
                g["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn a_crashed_generations_other_processes_are_stopped_and_nothing_outlives_stop() {
    // A master that forks a worker (in its process group) and then crashes:
    // the worker runs the old code and would keep accepting on the shared
    // socket next to the restarted generation.
    let f = files();
    let d = f.path().display();
    let master = script(
        f.path(),
        "master.sh",
        &format!(
            "D='{d}'\nif [ ! -e \"$D/started-once\" ]; then\n  touch \"$D/started-once\"\n  \
             sh -c 'export LISTEN_PID=$$; exec python3 \"$0\"' \"$D/server.py\" &\n  \
             echo $! > \"$D/worker.pid\"\n  sleep 1\n  echo 'master: crashing, leaving my worker' >&2\n  \
             exit 1\nfi\nexec python3 \"$D/server.py\"\n"
        ),
    );
    let mut h = Handover::start(Setup {
        program: Some(vec![master.display().to_string()]),
        options: vec!["--stop-timeout".into(), "5s".into()],
        ..Setup::default()
    });
    h.wait_log(
        "the current generation died on its own",
        Duration::from_secs(20),
    );
    let worker: u32 = std::fs::read_to_string(f.path().join("worker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The crashed generation ends as a whole: its worker gets the stop
    // signal (and would get SIGKILL after --stop-timeout).
    wait_until(
        "the crashed generation's worker is stopped",
        Duration::from_secs(15),
        || gone(worker),
    );
    wait_until("a new generation serves", Duration::from_secs(20), || {
        let s = h.wait_status(Duration::from_secs(5));
        generations(&s).len() == 1 && s["generations"][0]["current"] == true
    });
    let current = h.current_pid();
    for _ in 0..20 {
        let answer = http_get(h.addr, "/", Duration::from_secs(10));
        assert_eq!(pid_in(&answer), Some(current), "{answer}\n{}", h.log());
    }
    let out = h.cli(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.wait_exit(Duration::from_secs(30)).success());
    assert!(gone(current) && gone(worker));
}

#[test]
fn the_crash_backoff_resets_once_a_generation_stayed_up_and_status_tells_the_truth() {
    // Start 1 crashes 0.5 s after READY=1, start 2 stays up 11 s then
    // crashes, start 3 serves. The restart after start 2 must be a first
    // attempt again (100 ms), not the next step of a crash loop.
    let f = files();
    let d = f.path().display();
    let program = script(
        f.path(),
        "serve.sh",
        &format!(
            "D='{d}'\nn=$(cat \"$D/starts\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$D/starts\"\n\
             case $n in\n  1) export SERVER_CRASH_AFTER_READY_MS=500;;\n  \
             2) export SERVER_CRASH_AFTER_READY_MS=11000;;\nesac\nexec python3 \"$D/server.py\"\n"
        ),
    );
    let sd = handover::notify::NotifySocket::bind(&f.path().join("sd.sock")).unwrap();
    let messages = Arc::new(Mutex::new(Vec::new()));
    {
        let messages = messages.clone();
        std::thread::spawn(move || {
            while let Ok(Some(m)) = sd.recv_timeout(Some(Duration::from_secs(60))) {
                messages.lock().unwrap().push(m);
            }
        });
    }
    let notify = f.path().join("sd.sock").display().to_string();
    let h = Handover::start(Setup {
        program: Some(vec![program.display().to_string()]),
        env: vec![("NOTIFY_SOCKET".into(), notify)],
        ..Setup::default()
    });
    let restarts = || {
        h.log()
            .lines()
            .filter(|l| l.contains("restarting") && l.contains("delay="))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_until("two crash restarts", Duration::from_secs(40), || {
        restarts().len() >= 2
    });
    let lines = restarts();
    assert!(lines[0].contains("delay=100ms"), "{lines:?}");
    assert!(
        lines[1].contains("delay=100ms"),
        "the backoff was not reset after the generation stayed up 11 s: {lines:?}\n{}",
        h.log()
    );
    // systemd heard the truth during the crash loop, not "serving".
    let statuses: Vec<String> = messages
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| m.status().map(str::to_string))
        .collect();
    assert!(
        statuses.iter().any(|s| s.contains("restarting")),
        "no STATUS= said that the program is restarting: {statuses:?}"
    );
}

#[test]
fn a_crash_loop_hits_the_start_limit_and_handover_gives_up_with_a_clear_error() {
    let f = files();
    let d = f.path().display();
    let program = script(
        f.path(),
        "serve.sh",
        &format!(
            "D='{d}'\nif [ ! -e \"$D/started-once\" ]; then\n  touch \"$D/started-once\"\n  \
             export SERVER_CRASH_AFTER_READY_MS=300\n  exec python3 \"$D/server.py\"\nfi\n\
             echo 'boom: bad config on line 7' >&2\nexit 3\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let sd = handover::notify::NotifySocket::bind(&dir.path().join("sd.sock")).unwrap();
    let mut child = KillOnDrop(
        Command::new(support::handover_bin())
            .args([
                "run",
                "--bind",
                "tcp://127.0.0.1:0",
                "--start-limit-burst",
                "3",
                "--start-limit-interval",
                "60s",
                "--control",
            ])
            .arg(dir.path().join("c.sock"))
            .arg("--")
            .arg(&program)
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("NOTIFY_SOCKET", dir.path().join("sd.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = collect(child.0.stderr.take().unwrap());
    let status = exit_within(&mut child.0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("handover kept restarting a crash loop:\n{}", joined(&log)));
    assert!(!status.success(), "{status}");
    std::thread::sleep(Duration::from_millis(200));
    let text = joined(&log);
    let last = text
        .lines()
        .find(|l| l.starts_with("handover: "))
        .unwrap_or_else(|| panic!("no final error:\n{text}"));
    assert!(
        last.contains("giving up") && last.contains("--start-limit-burst 3"),
        "{last}"
    );
    assert!(text.contains("boom: bad config on line 7"), "{text}");
    let mut messages = Vec::new();
    while let Ok(Some(m)) = sd.recv_timeout(Some(Duration::from_millis(200))) {
        messages.push(m);
    }
    let last = messages.last().expect("nothing sent to NOTIFY_SOCKET");
    assert!(last.is_stopping(), "{messages:?}");
    assert!(
        last.status().is_some_and(|s| s.contains("gave up")),
        "{messages:?}"
    );
}

#[test]
fn a_crash_of_the_old_generation_during_a_reload_causes_no_second_reload() {
    let mut h = Handover::start(Setup {
        options: vec!["--ready".into(), "delay:1500ms".into()],
        ..Setup::default()
    });
    let first = h.current_pid();
    let control = h.control.clone();
    let reload = std::thread::spawn(move || {
        Command::new(support::handover_bin())
            .args(["reload", "--control"])
            .arg(&control)
            .output()
            .unwrap()
    });
    wait_until(
        "the new generation is starting",
        Duration::from_secs(10),
        || {
            let s = h.wait_status(Duration::from_secs(5));
            generations(&s).iter().any(|g| g.2 == "starting")
        },
    );
    kill(first, Signal::KILL);
    let out = reload.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(answer.starts_with("reloaded: generation 2 "), "{answer}");
    // Longer than a start takes: a spurious reload would have replaced it.
    std::thread::sleep(Duration::from_secs(3));
    let s = h.wait_status(Duration::from_secs(5));
    let gens = generations(&s);
    assert_eq!(gens.len(), 1, "{s}\n{}", h.log());
    assert_eq!(
        gens[0].0,
        2,
        "a second generation was started: {s}\n{}",
        h.log()
    );
    assert_eq!(s["generations"][0]["current"], true, "{s}");
}

#[test]
fn as_pid_1_readiness_probes_keep_their_exit_status() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        panic!(
            "unshare --pid --fork --mount-proc failed: this test needs root (or user namespaces); .ci/run runs as root"
        );
    }
    let f = files();
    let control = f.path().join("c.sock");
    let mut unshare = KillOnDrop(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(support::handover_bin())
            .args([
                "run",
                "--bind",
                "tcp://127.0.0.1:0",
                "--ready",
                "exec:sleep 0.05",
                "--control",
            ])
            .arg(&control)
            .arg("--")
            .arg("python3")
            .arg(f.path().join("server.py"))
            .env("XDG_RUNTIME_DIR", f.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = collect(unshare.0.stderr.take().unwrap());
    let cli = |cmd: &str| {
        Command::new(support::handover_bin())
            .args([cmd, "--timeout", "60s", "--control"])
            .arg(&control)
            .output()
            .unwrap()
    };
    wait_until("handover serves", Duration::from_secs(30), || {
        control.exists() && cli("status").status.success()
    });
    for i in 0..8 {
        let out = cli("reload");
        assert!(
            out.status.success(),
            "reload {i}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            joined(&log)
        );
    }
    let out = cli("stop");
    assert!(out.status.success());
    let _ = exit_within(&mut unshare.0, Duration::from_secs(20));
    let text = joined(&log);
    assert!(
        !text.contains("status is lost") && !text.contains("cannot reap"),
        "the orphan reaper took a probe's exit status:\n{text}"
    );
}

/// Starts `handover run` with `args` (before `--`) and the test server; its
/// stderr is collected.
fn run_handover(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &Path)],
) -> (KillOnDrop, Arc<Mutex<Vec<String>>>) {
    std::fs::write(dir.join("server.py"), support::SERVER_PY).unwrap();
    let mut cmd = Command::new(support::handover_bin());
    cmd.arg("run")
        .args(["--bind", "tcp://127.0.0.1:0"])
        .args(args)
        .arg("--")
        .arg("python3")
        .arg(dir.join("server.py"))
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let log = collect(child.0.stderr.take().unwrap());
    (child, log)
}

fn status_of(control: &Path) -> Option<serde_json::Value> {
    support::control_json(control, "status", Duration::from_secs(5))
}

#[test]
fn another_users_runtime_directory_does_not_stop_handover_with_its_own_control_path() {
    assert!(
        rustix::process::getuid().is_root(),
        "this test gives a directory to uid 65534, which needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    let squatted = dir.path().join("handover");
    std::fs::create_dir(&squatted).unwrap();
    std::os::unix::fs::chown(&squatted, Some(65534), Some(65534)).unwrap();
    // With --control in a directory of its own, the squatted default
    // directory is not used at all (the notify socket follows --control).
    let mine = dir.path().join("mine");
    let control = mine.join("ctl.sock");
    let (mut child, log) = run_handover(
        dir.path(),
        &["--control", control.to_str().unwrap()],
        &[("XDG_RUNTIME_DIR", dir.path())],
    );
    wait_until("handover serves", Duration::from_secs(30), || {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "handover exited:\n{}",
            joined(&log)
        );
        status_of(&control).is_some_and(|s| s["generations"][0]["current"] == true)
    });
    assert!(
        std::fs::read_dir(&squatted).unwrap().next().is_none(),
        "handover put something into the other user's directory"
    );
    drop(child);
    // Without --control the squatted directory is refused, with advice that
    // works.
    let (mut child, log) = run_handover(dir.path(), &[], &[("XDG_RUNTIME_DIR", dir.path())]);
    let status = exit_within(&mut child.0, Duration::from_secs(20)).expect("handover started");
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(100));
    let text = joined(&log);
    assert!(
        text.contains("belongs to uid 65534") && text.contains("--control"),
        "{text}"
    );
}

#[test]
fn a_runtime_directory_that_is_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("handover")).unwrap();
    let (mut child, log) = run_handover(dir.path(), &[], &[("XDG_RUNTIME_DIR", dir.path())]);
    let status = exit_within(&mut child.0, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("handover followed the symlink:\n{}", joined(&log)));
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(100));
    let text = joined(&log);
    assert!(text.contains("symbolic link"), "{text}");
    assert!(
        std::fs::read_dir(&real).unwrap().next().is_none(),
        "handover put something where the symlink points"
    );
}

#[test]
fn control_clients_refuse_a_server_of_another_user() {
    assert!(
        rustix::process::getuid().is_root(),
        "this test runs a fake server as uid 65534, which needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("ctl.sock");
    // A fake "handover" of another user that says yes to everything.
    let fake = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind({path:?})\ns.listen(8)\n\
         while True:\n    c, _ = s.accept()\n    try:\n        c.recv(4096)\n        \
         c.sendall(b'{{\"ok\":true,\"stopped\":true}}\\n')\n    except OSError:\n        pass\n    \
         c.close()\n",
        path = path.display().to_string()
    );
    let _server = KillOnDrop(
        Command::new("python3")
            .args(["-c", &fake])
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the fake server listens", Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&path).is_ok()
    });
    let out = Command::new(support::handover_bin())
        .args(["stop", "--timeout", "10s", "--control"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "handover stop trusted a server of another user: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("uid 65534"), "{err}");
}

#[test]
fn two_sigterms_in_a_burst_stop_at_once() {
    // The program ignores SIGTERM: one SIGTERM waits --stop-timeout (30 s);
    // a second one must kill it at once, even when both arrive before
    // handover could act on the first. To make that certain, both arrive
    // while handover's main thread is blocked writing a log line to a full
    // stderr pipe.
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("c.sock");
    let (read_end, write_end) = rustix::pipe::pipe().unwrap();
    let mut child = KillOnDrop(
        Command::new(support::handover_bin())
            .args([
                "run",
                "--bind",
                "tcp://127.0.0.1:0",
                "--ready",
                "delay:200ms",
                "--stop-timeout",
                "30s",
                "--control",
            ])
            .arg(&control)
            .args(["--", "sh", "-c"])
            .arg("trap '' TERM USR1; while :; do sleep 0.2; done")
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(rustix::io::dup(&write_end).unwrap()))
            .spawn()
            .unwrap(),
    );
    // A reader that can be paused, and a writer that fills the pipe while it is.
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<u8>::new()));
    {
        let (paused, log) = (paused.clone(), log.clone());
        let mut pipe = std::fs::File::from(read_end);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                while paused.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                match std::io::Read::read(&mut pipe, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => log.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
    }
    let text = || String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    wait_until("handover serves", Duration::from_secs(20), || {
        status_of(&control).is_some_and(|s| s["generations"][0]["current"] == true)
    });
    let generation = status_of(&control).unwrap()["generations"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    paused.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    let mut filler = std::fs::File::from(write_end);
    std::thread::spawn(move || {
        // Blocks once the pipe is full; ends when the pipe closes.
        let _ = std::io::Write::write_all(&mut filler, &vec![b'.'; 1 << 20]);
    });
    std::thread::sleep(Duration::from_millis(300));
    // handover logs that it forwards SIGUSR1, and blocks on the full pipe.
    kill(child.0.id(), Signal::USR1);
    std::thread::sleep(Duration::from_millis(300));
    // Two deliveries (200 ms apart, so the kernel does not merge them as one
    // pending signal), both before handover can act on the first.
    kill(child.0.id(), Signal::TERM);
    std::thread::sleep(Duration::from_millis(200));
    kill(child.0.id(), Signal::TERM);
    std::thread::sleep(Duration::from_millis(200));
    paused.store(false, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let status = exit_within(&mut child.0, Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "two SIGTERMs did not stop handover at once:\n{}",
            text().replace('.', "")
        )
    });
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(gone(generation));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        text().contains("second stop signal"),
        "{}",
        text().replace('.', "")
    );
}

#[test]
fn the_control_socket_answers_while_the_first_generation_starts() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("c.sock");
    let (mut child, log) = run_handover(
        dir.path(),
        &[
            "--ready",
            "delay:30s",
            "--control",
            control.to_str().unwrap(),
        ],
        &[("XDG_RUNTIME_DIR", dir.path())],
    );
    wait_until("the control socket exists", Duration::from_secs(20), || {
        control.exists()
    });
    let out = Command::new(support::handover_bin())
        .args(["status", "--json", "--timeout", "3s", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status was not answered during the first start: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        joined(&log)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gens = generations(&s);
    assert_eq!(gens.len(), 1, "{s}");
    assert_eq!(gens[0].2, "starting", "{s}");
    let generation = gens[0].1;
    let started = Instant::now();
    let out = Command::new(support::handover_bin())
        .args(["stop", "--timeout", "20s", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = exit_within(&mut child.0, Duration::from_secs(20)).expect("handover did not stop");
    assert!(status.success(), "{status}\n{}", joined(&log));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(gone(generation));
}

#[test]
fn junk_on_the_notify_socket_does_not_delay_ready() {
    // 200 oversized datagrams (each an error for the receiver) before
    // READY=1; with --ready-timeout 5s.
    let f = files();
    let wrapper = f.path().join("junk.py");
    std::fs::write(
        &wrapper,
        format!(
            "import os, socket\npath = os.environ['NOTIFY_SOCKET']\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             for _ in range(200):\n    s.sendto(b'X' * 5000, path)\n\
             os.execvp('python3', ['python3', {:?}])\n",
            f.path().join("server.py").display().to_string()
        ),
    )
    .unwrap();
    let h = Handover::start(Setup {
        program: Some(vec!["python3".into(), wrapper.display().to_string()]),
        options: vec!["--ready-timeout".into(), "5s".into()],
        ..Setup::default()
    });
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}\n{}", h.log());
}
