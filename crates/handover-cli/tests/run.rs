//! End-to-end tests of `handover run` with a server written in another
//! language (Python 3, speaking only LISTEN_FDS and NOTIFY_SOCKET), under
//! load from a client on 127.0.0.1.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use handover_verify::{Load, LoadConfig, Mode};
use support::{Handover, Setup, gone, wait_until, zombie_children};

fn twenty_reloads(mode: Mode) {
    let mut h = Handover::start(Setup::default());
    let mut cfg = LoadConfig::new(h.addr, mode);
    cfg.connections = 8;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(50, Duration::from_secs(30)),
        "no load got through:\n{}",
        h.log()
    );
    let mut pids = vec![h.current_pid()];
    let fds_after_first = {
        let (ok, out, err) = h.reload();
        assert!(ok, "reload 1 failed: {out}{err}\n{}", h.log());
        pids.push(h.current_pid());
        // Measured once the old generation (and its stderr pipe) is gone.
        wait_until(
            "the first generation is gone",
            Duration::from_secs(30),
            || gone(pids[0]),
        );
        std::thread::sleep(Duration::from_millis(200));
        support::fd_count(h.pid())
    };
    for i in 2..=20 {
        let (ok, out, err) = h.reload();
        assert!(ok, "reload {i} failed: {out}{err}\n{}", h.log());
        assert!(out.starts_with("reloaded: generation"), "{out}");
        let pid = h.current_pid();
        assert!(!pids.contains(&pid), "reload {i} did not change the pid");
        pids.push(pid);
        // At most two generations exist at any moment.
        assert!(h.generation_pids().len() <= 2);
    }
    let seen = load.pids_seen();
    let new = load.wait_for_new_pid(
        &(seen
            .difference(&BTreeSet::from([pids[20]]))
            .copied()
            .collect()),
        Duration::from_secs(10),
    );
    assert!(new.is_some() || load.pids_seen().contains(&pids[20]));
    assert!(load.wait_for_ok(load.snapshot().ok + 50, Duration::from_secs(30)));
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "failed requests during 20 reloads:\n{}\nhandover log:\n{}",
        report.render_table(),
        h.log()
    );
    assert!(report.distinct_pids() >= 15, "{}", report.render_table());
    // Old generations are gone and reaped; only the current one is listed.
    wait_until("old generations are gone", Duration::from_secs(30), || {
        pids[..20].iter().all(|&p| gone(p)) && h.generation_pids().len() == 1
    });
    for &p in &pids[..20] {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "{p} was not reaped"
        );
    }
    assert!(zombie_children(h.pid()).is_empty());
    // handover leaks no descriptors across reloads.
    wait_until(
        "handover's fd count is back to where it was after the first reload",
        Duration::from_secs(10),
        || support::fd_count(h.pid()) == fds_after_first,
    );
}

#[test]
fn python_server_twenty_reloads_new_connection_per_request() {
    twenty_reloads(Mode::NewConnection);
}

#[test]
fn python_server_twenty_reloads_keep_alive() {
    twenty_reloads(Mode::KeepAlive);
}

#[test]
fn a_crashing_or_hanging_new_generation_is_rolled_back() {
    let mut h = Handover::start(Setup {
        options: vec!["--ready-timeout".into(), "2s".into()],
        ..Setup::default()
    });
    let mut cfg = LoadConfig::new(h.addr, Mode::NewConnection);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(20, Duration::from_secs(30)));
    let first = h.current_pid();

    h.set_mode("crash");
    let (ok, _, err) = h.reload();
    assert!(!ok, "a crashing generation must fail the reload");
    assert!(
        err.contains("exited before it was ready: it exited with code 3"),
        "{err}"
    );
    assert!(
        err.contains("boom: bad config on line 7"),
        "the stderr tail is missing: {err}"
    );

    h.set_mode("hang");
    let (ok, _, err) = h.reload();
    assert!(!ok);
    assert!(err.contains("was not ready within 2s"), "{err}");
    assert!(err.contains("never wrote to NOTIFY_SOCKET"), "{err}");
    assert!(
        err.contains("delay:DURATION") && err.contains("exec:COMMAND"),
        "{err}"
    );

    // The old generation served throughout, alone.
    assert_eq!(h.current_pid(), first);
    assert_eq!(h.generation_pids(), vec![first]);
    let ok_before = load.snapshot().ok;
    assert!(load.wait_for_ok(ok_before + 20, Duration::from_secs(30)));

    h.set_mode("ok");
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}");
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        h.log()
    );
    let status = h.wait_status(Duration::from_secs(5));
    assert_eq!(status["failed_reloads"], 2);
    assert_eq!(status["last_reload"]["ok"], true);
}

#[test]
fn a_crashed_generation_is_restarted() {
    let mut h = Handover::start(Setup::default());
    let first = h.current_pid();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    h.wait_log(
        "the current generation died on its own",
        Duration::from_secs(10),
    );
    wait_until("a new generation serves", Duration::from_secs(30), || {
        let s = h.wait_status(Duration::from_secs(5));
        s["generations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["current"] == true && g["pid"] != first)
    });
    let status = h.wait_status(Duration::from_secs(5));
    assert_eq!(status["restarts"], 1);
    // And it answers.
    let mut s = TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("pid="), "{out}");
}

#[test]
fn signals_are_forwarded_and_sigterm_stops_gracefully() {
    let mut h = Handover::start(Setup::default());
    let pid = h.current_pid();
    h.signal(rustix::process::Signal::USR1);
    let mark = h.dir.path().join(format!("usr1-{pid}"));
    wait_until(
        "the generation got SIGUSR1",
        Duration::from_secs(10),
        || mark.exists(),
    );
    h.signal(rustix::process::Signal::TERM);
    let status = h.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", h.log());
    assert!(gone(pid));
    assert!(
        !h.control.exists(),
        "the control socket file is left behind"
    );
}

#[test]
fn handover_stop_drains_and_exits() {
    let mut h = Handover::start(Setup::default());
    let pid = h.current_pid();
    let out = h.cli(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "stopped");
    assert!(h.wait_exit(Duration::from_secs(30)).success());
    assert!(gone(pid));
}

#[test]
fn status_json_is_valid_and_complete() {
    let mut h = Handover::start(Setup::default());
    let s = h.wait_status(Duration::from_secs(10));
    assert_eq!(s["ok"], true);
    assert_eq!(s["pid"], h.pid());
    assert_eq!(s["sockets"][0]["name"], "http");
    assert_eq!(s["generations"][0]["state"], "ready");
    assert_eq!(s["generations"][0]["status"], "serving");
    assert!(s["generations"][0]["ready_after_ms"].as_f64().unwrap() > 0.0);
    let table = h.cli(&["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("(current)") && text.contains("http"),
        "{text}"
    );
}

#[test]
fn reload_requests_during_a_reload_are_coalesced() {
    let mut h = Handover::start(Setup {
        // Slow readiness makes the overlap certain.
        options: vec!["--ready".into(), "delay:700ms".into()],
        ..Setup::default()
    });
    let first = h.current_pid();
    let control = h.control.clone();
    let reload = move || {
        Command::new(support::handover_bin())
            .args(["reload", "--control"])
            .arg(&control)
            .output()
            .unwrap()
    };
    let a = std::thread::spawn(reload.clone());
    std::thread::sleep(Duration::from_millis(200));
    // B and C arrive during A: both are answered by the one reload after A.
    let b = std::thread::spawn(reload.clone());
    let c = std::thread::spawn(reload);
    let (a, b, c) = (a.join().unwrap(), b.join().unwrap(), c.join().unwrap());
    for o in [&a, &b, &c] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let gen_of = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    };
    assert_ne!(gen_of(&a), gen_of(&b));
    assert_eq!(gen_of(&b), gen_of(&c), "B and C were not coalesced");
    let s = h.wait_status(Duration::from_secs(5));
    // (The first start is a start, not a reload: counted in `starts`.)
    assert_eq!(s["reloads"], 2, "A + one for B and C");
    assert_eq!(s["starts"], 3, "first start + A + one for B and C");
    assert_ne!(h.current_pid(), first);
}

#[test]
fn under_systemd_socket_activation_the_socket_is_passed_on_by_name() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "systemd-socket-activate is missing: install Debian's systemd package (.ci/run does)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let server = support::write_server(dir.path());
    let notify = handover::notify::NotifySocket::bind(&dir.path().join("sd.sock")).unwrap();
    let port = support::free_port();
    let control = dir.path().join("ctl.sock");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=web"])
        .arg(format!(
            "--setenv=NOTIFY_SOCKET={}",
            notify.env_value().to_string_lossy()
        ))
        .arg(format!("--setenv=XDG_RUNTIME_DIR={}", dir.path().display()))
        .arg(support::handover_bin())
        .args([
            "run",
            "--bind",
            &format!("web=tcp://127.0.0.1:{port}"),
            "--control",
        ])
        .arg(&control)
        .arg("--")
        .arg(&server)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = support::KillOnDrop(cmd.spawn().unwrap());
    // systemd-socket-activate starts handover on the first connection.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = (|| {
            // systemd-socket-activate may not be listening yet.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut s = loop {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => break s,
                    Err(e) if std::time::Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })();
        let _ = tx.send(r);
    });
    let guard_pid = child.0.id();
    let ready = notify
        .recv_timeout(Some(Duration::from_secs(30)))
        .unwrap()
        .expect("handover sent nothing to NOTIFY_SOCKET");
    assert!(ready.is_ready(), "{ready:?}");
    // systemd-socket-activate execs handover, so the pid is the same.
    assert_eq!(ready.pid, Some(guard_pid));
    let answer = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    assert!(answer.contains("X-Fd-Names: web"), "{answer}");
    assert!(answer.contains("pid="), "{answer}");
    let out = Command::new(support::handover_bin())
        .args(["status", "--json", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["sockets"][0]["inherited"], true, "{status}");
    // Stop handover (and its generation) through its control socket.
    let out = Command::new(support::handover_bin())
        .args(["stop", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(child);
}

#[test]
fn every_subcommand_explains_its_options_and_defaults() {
    for sub in ["run", "reload", "status", "stop", "verify", "demo"] {
        let out = Command::new(support::handover_bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: handover"), "{sub}: {text}");
    }
    let run = Command::new(support::handover_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    for needle in [
        "[default: notify]",
        "[default: 60s]",
        "[default: SIGTERM]",
        "[default: 30s]",
        "--reload-signal",
        "--pid-file",
        "XDG_RUNTIME_DIR",
        "delay:DURATION",
        "exec:COMMAND",
    ] {
        assert!(
            text.contains(needle),
            "run --help lacks {needle:?}:\n{text}"
        );
    }
    let v = Command::new(support::handover_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("handover "));
}

#[test]
fn bad_input_gets_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--bind", "tcp://127.0.0.1", "--", "true"],
            "a port is missing",
        ),
        (
            &["run", "--bind", "http://x:1", "--", "true"],
            "is not one of tcp, udp, unix",
        ),
        (
            &[
                "run",
                "--ready",
                "soon",
                "--bind",
                "tcp://127.0.0.1:0",
                "--",
                "true",
            ],
            "expected notify",
        ),
        (
            &[
                "run",
                "--stop-signal",
                "SIGNOPE",
                "--bind",
                "tcp://127.0.0.1:0",
                "--",
                "true",
            ],
            "SIGNOPE",
        ),
        (
            &[
                "run",
                "--ready-timeout",
                "5",
                "--bind",
                "tcp://127.0.0.1:0",
                "--",
                "true",
            ],
            "Write it like 500ms",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(support::handover_bin())
            .args(*args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A port in use names its holder.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(support::handover_bin())
        .args([
            "run",
            "--bind",
            &format!("tcp://127.0.0.1:{port}"),
            "--control",
        ])
        .arg(dir.path().join("c.sock"))
        .args(["--", "true"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use by pid"), "{err}");
    // A missing program is named.
    let out = Command::new(support::handover_bin())
        .args(["run", "--bind", "tcp://127.0.0.1:0", "--control"])
        .arg(dir.path().join("c2.sock"))
        .args(["--", "handover-no-such-program"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("handover-no-such-program"), "{err}");
    // No handover at the control path.
    let out = Command::new(support::handover_bin())
        .args(["reload", "--control"])
        .arg(dir.path().join("nobody.sock"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("Is `handover run` running"));
}

#[test]
fn signals_during_start_up_leave_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = support::write_server(dir.path());
    std::fs::write(dir.path().join("mode"), "hang").unwrap();
    let mut child = Command::new(support::handover_bin())
        .args([
            "run",
            "--bind",
            "tcp://127.0.0.1:0",
            "--ready-timeout",
            "60s",
            "--control",
        ])
        .arg(dir.path().join("c.sock"))
        .arg("--")
        .arg(&wrapper)
        .env("XDG_RUNTIME_DIR", dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let children = || support::children_of(pid);
    wait_until(
        "the first generation is started",
        Duration::from_secs(20),
        || !children().is_empty(),
    );
    let generation = children()[0];
    let sig = |s| {
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), s)
            .unwrap()
    };
    // SIGHUP while starting: not fatal.
    sig(rustix::process::Signal::HUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP during start-up killed handover"
    );
    // SIGTERM while starting: the starting generation is stopped with it.
    sig(rustix::process::Signal::TERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "handover did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _guard = support::KillOnDrop(child);
    assert!(status.success(), "{status}");
    wait_until(
        "the starting generation is gone",
        Duration::from_secs(5),
        || gone(generation),
    );
}

#[test]
fn as_pid_1_handover_reaps_orphans() {
    // A new pid namespace makes handover pid 1, as in a container. The
    // generation leaves an orphan behind (a subshell that backgrounds a
    // short sleep and exits): it is re-parented to handover, which must reap
    // it when it ends.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        panic!(
            "unshare --pid --fork --mount-proc failed: this test needs root (or user namespaces); .ci/run runs as root"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.py"), support::SERVER_PY).unwrap();
    let wrapper = dir.path().join("orphans.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nfor i in 1 2 3; do (sleep 0.3 &) ; done\nexec python3 '{}/server.py'\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let control = dir.path().join("c.sock");
    let unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(support::handover_bin())
        .args(["run", "--bind", "tcp://127.0.0.1:0", "--control"])
        .arg(&control)
        .arg("--")
        .arg(&wrapper)
        .env("XDG_RUNTIME_DIR", dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let unshare = support::KillOnDrop(unshare);
    // handover (pid 1 inside) is unshare's child outside.
    let mut handover = 0;
    wait_until(
        "handover runs as pid 1 of its namespace",
        Duration::from_secs(20),
        || {
            handover = support::children_of(unshare.0.id())
                .first()
                .copied()
                .unwrap_or(0);
            handover != 0
                && std::fs::read_to_string(format!("/proc/{handover}/status")).is_ok_and(|s| {
                    s.lines()
                        .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1"))
                })
        },
    );
    wait_until("handover serves", Duration::from_secs(20), || {
        Command::new(support::handover_bin())
            .args(["status", "--timeout", "5s", "--control"])
            .arg(&control)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    // The orphans were re-parented to handover and have ended by now.
    std::thread::sleep(Duration::from_millis(1500));
    let zombies = zombie_children(handover);
    assert!(
        zombies.is_empty(),
        "orphans left as zombies of handover: {zombies:?}"
    );
    // Only the generation is left as handover's child.
    assert_eq!(
        support::children_of(handover).len(),
        1,
        "{:?}",
        support::children_of(handover)
    );
    let out = Command::new(support::handover_bin())
        .args(["stop", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
