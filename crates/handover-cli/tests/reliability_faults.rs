//! Faults around `handover run` (issue 8; see RELIABILITY.md): a generation
//! that crashes right after it became ready, an old generation SIGKILLed
//! while it drains, handover itself SIGKILLed, a reload without file
//! descriptors, a pid file that cannot be written. Real processes (the
//! Python server), under load where it matters; every failed request is
//! accounted for.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handover_verify::{Load, LoadConfig, Mode, Report};
use rustix::process::{Pid, Resource, Rlimit, Signal};
use support::{
    Handover, KillOnDrop, Setup, fd_count, gone, http_get, pid_in, wait_until, zombie_children,
};

fn load(h: &Handover, mode: Mode, connections: usize) -> Load {
    let mut cfg = LoadConfig::new(h.addr, mode);
    cfg.connections = connections;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(30, Duration::from_secs(30)),
        "no load got through:\n{}",
        h.log()
    );
    load
}

fn more_ok(load: &Load, h: &Handover) {
    let before = load.snapshot().ok;
    assert!(
        load.wait_for_ok(before + 30, Duration::from_secs(30)),
        "the load stopped getting answers:\n{}",
        h.log()
    );
}

fn table(reports: &[Report]) -> String {
    reports
        .iter()
        .map(|r| r.render_table())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pid in `reloaded: generation N (pid P) ready after ...`.
fn reloaded_pid(out: &str) -> u32 {
    out.split("(pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a reload answer: {out:?}"))
}

#[test]
fn a_generation_that_crashes_right_after_ready_loses_only_what_it_held() {
    // With a settle window (the default 2s) this generation would fail its
    // reload while the old one serves on (tests/readiness.rs shows that);
    // here it must become current first and then crash, so no window.
    let mut h = Handover::start(Setup {
        options: vec!["--settle".into(), "0".into()],
        ..Setup::default()
    });
    let loads = [
        load(&h, Mode::NewConnection, 4),
        load(&h, Mode::KeepAlive, 4),
    ];
    let first = h.current_pid();
    // A slow request keeps the first generation draining for a while after
    // the reload: the restart after the crash must not wait for it.
    let addr = h.addr;
    let slow = std::thread::spawn(move || http_get(addr, "/slow?ms=6000", Duration::from_secs(60)));
    let marks = h.dir.path().join(format!("slow-{first}"));
    wait_until(
        "the slow request reached the first generation",
        Duration::from_secs(30),
        || marks.exists(),
    );

    // The next generation becomes ready, takes connections for 300 ms
    // without answering, then exits with code 4. Its reload succeeds: it was
    // ready, so the first generation was told to stop (and drains).
    h.set_mode("ready-crash");
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}\n{}", h.log());
    let crashed = reloaded_pid(&out);
    assert_ne!(crashed, first);

    h.wait_log(
        "the current generation died on its own",
        Duration::from_secs(30),
    );
    let held_file = h.dir.path().join(format!("held-{crashed}"));
    wait_until(
        "the crashed generation recorded what it held",
        Duration::from_secs(30),
        || std::fs::read_to_string(&held_file).is_ok_and(|s| s.ends_with('\n')),
    );
    let held: u64 = std::fs::read_to_string(&held_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(held > 0, "the crashed generation accepted nothing");

    // handover starts a generation again (with backoff); connections that
    // arrived meanwhile waited in the accept queue.
    let seen: BTreeSet<u32> = BTreeSet::from([first, crashed]);
    let restarted = loads[0]
        .wait_for_new_pid(&seen, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no generation serves after the crash:\n{}", h.log()));
    // ... while the first one still drains its slow request: no generation
    // accepted from the crash until the restart, so the restart must not
    // wait for old generations to finish.
    assert!(
        !gone(first),
        "the restart waited for the draining generation to exit:\n{}",
        h.log()
    );
    let answer = slow.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && pid_in(&answer) == Some(first),
        "the draining generation's slow request failed: {answer:?}"
    );
    for l in &loads {
        more_ok(l, &h);
    }
    let reports: Vec<Report> = loads.into_iter().map(|l| l.stop()).collect();
    let failed: u64 = reports.iter().map(|r| r.failures_total()).sum();
    assert_eq!(
        failed,
        held,
        "expected exactly the {held} connection(s) the crashed generation held to fail:\n{}\n{}",
        table(&reports),
        h.log()
    );
    assert!(
        !reports.iter().any(|r| r.pids.contains_key(&crashed)),
        "the crashed generation answered"
    );

    // The log says what happened at once, and why once the generation is
    // gone (its last stderr lines may come after its exit).
    let line = h
        .log()
        .lines()
        .find(|l| l.contains("the current generation died on its own"))
        .unwrap()
        .to_string();
    assert!(line.contains(&format!("pid={crashed}")), "{line}");
    assert!(line.contains("code 4"), "{line}");
    let gone_line = h.wait_log("the crashed generation is gone", Duration::from_secs(30));
    assert!(gone_line.contains(&format!("pid={crashed}")), "{gone_line}");
    assert!(
        gone_line.contains("crashing on purpose right after READY=1"),
        "the stderr tail is missing: {gone_line}"
    );
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["restarts"], 1, "{status}");
    assert_eq!(h.current_pid(), restarted);
    wait_until(
        "the first generation is gone",
        Duration::from_secs(30),
        || gone(first) && h.generation_pids() == vec![restarted],
    );
}

#[test]
fn an_old_generation_killed_while_draining_loses_only_its_own_requests() {
    let mut h = Handover::start(Setup::default());
    let old = h.current_pid();
    let addr = h.addr;

    // K slow requests in flight on the old generation.
    const K: usize = 3;
    let slow: Vec<_> = (0..K)
        .map(|_| {
            std::thread::spawn(move || http_get(addr, "/slow?ms=60000", Duration::from_secs(90)))
        })
        .collect();
    let marks = h.dir.path().join(format!("slow-{old}"));
    wait_until(
        "the slow requests reached the old generation",
        Duration::from_secs(30),
        || std::fs::read_to_string(&marks).is_ok_and(|s| s.lines().count() == K),
    );

    let load = load(&h, Mode::NewConnection, 4);
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}");
    let new = reloaded_pid(&out);
    let status = h.wait_status(Duration::from_secs(10));
    let draining = status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["pid"] == old)
        .unwrap_or_else(|| panic!("the old generation is not listed: {status}"));
    assert_eq!(draining["state"], "draining", "{status}");
    assert!(load.wait_for_new_pid(&BTreeSet::from([old]), Duration::from_secs(30)) == Some(new));
    // Let the old generation finish the load's requests it had taken; only
    // the slow ones are left in it.
    std::thread::sleep(Duration::from_millis(500));

    rustix::process::kill_process(Pid::from_raw(old as i32).unwrap(), Signal::KILL).unwrap();
    let answers: Vec<String> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    let failed = answers
        .iter()
        .filter(|a| !a.starts_with("HTTP/1.1 200"))
        .count();
    assert_eq!(failed, K, "{answers:?}");

    // handover reaps it and goes on with the new generation alone.
    wait_until(
        "the killed generation is reaped and forgotten",
        Duration::from_secs(30),
        || {
            !std::path::Path::new(&format!("/proc/{old}")).exists()
                && h.generation_pids() == vec![new]
        },
    );
    assert!(zombie_children(h.pid()).is_empty());
    h.wait_log("old generation is gone", Duration::from_secs(10));
    more_ok(&load, &h);
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "the load on the new generation lost requests:\n{}\n{}",
        report.render_table(),
        h.log()
    );
    // And reloads still work.
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}");
}

#[test]
fn when_handover_is_killed_its_generation_does_not_outlive_it() {
    let mut h = Handover::start(Setup::default());
    let generation = h.current_pid();
    h.signal(Signal::KILL);
    h.wait_exit(Duration::from_secs(10));
    // --orphan-signal defaults to SIGTERM (PR_SET_PDEATHSIG): the
    // generation drains and exits.
    wait_until(
        "the generation exits after handover was killed",
        Duration::from_secs(15),
        || gone(generation),
    );
    // A new handover starts on the same control path: the stale socket file
    // is replaced, not an error.
    assert!(h.control.exists());
    let mut again = KillOnDrop(
        Command::new(support::handover_bin())
            .args(["run", "--bind", "http=tcp://127.0.0.1:0", "--control"])
            .arg(&h.control)
            .arg("--")
            .arg(h.dir.path().join("serve.sh"))
            .env("XDG_RUNTIME_DIR", h.dir.path())
            .env("SERVER_MARK_DIR", h.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(
        "a new handover serves on the same control path",
        Duration::from_secs(30),
        || {
            assert!(again.0.try_wait().unwrap().is_none(), "it exited");
            support::control_json(&h.control, "status", Duration::from_secs(5))
                .is_some_and(|s| s["pid"] == again.0.id())
        },
    );
}

#[test]
fn with_orphan_signal_none_the_generation_serves_on_after_handover_is_killed() {
    let mut h = Handover::start(Setup {
        options: vec!["--orphan-signal".into(), "none".into()],
        ..Setup::default()
    });
    let generation = h.current_pid();
    h.signal(Signal::KILL);
    h.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!gone(generation), "the generation exited");
    let answer = http_get(h.addr, "/", Duration::from_secs(10));
    assert_eq!(pid_in(&answer), Some(generation), "{answer}");
    // (The Handover guard kills it: it is in the pids status reported.)
}

/// `pid`'s RLIMIT_NOFILE (soft, hard), from /proc/PID/limits.
fn nofile(pid: u32) -> Rlimit {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<Option<u64>> = line["Max open files".len()..]
        .split_whitespace()
        .take(2)
        .map(|v| v.parse().ok()) // "unlimited" is None
        .collect();
    Rlimit {
        current: v[0],
        maximum: v[1],
    }
}

/// Sets `pid`'s RLIMIT_NOFILE; `prlimit` on another process is safe (no
/// memory of ours is involved).
fn set_nofile(pid: u32, limit: Rlimit) {
    rustix::process::prlimit(
        Some(Pid::from_raw(pid as i32).unwrap()),
        Resource::Nofile,
        limit,
    )
    .unwrap();
}

#[test]
fn a_reload_without_file_descriptors_fails_clearly_and_the_old_generation_serves_on() {
    let mut h = Handover::start(Setup::default());
    let first = h.current_pid();
    let load = load(&h, Mode::NewConnection, 4);
    let pid = h.pid();

    // Room for exactly one more descriptor: the control connection that
    // asks for the reload. Starting a generation needs more.
    let original = nofile(pid);
    let open = fd_count(pid) as u64;
    set_nofile(
        pid,
        Rlimit {
            current: Some(open + 1),
            maximum: original.maximum,
        },
    );
    let (ok, out, err) = h.reload();
    set_nofile(pid, original);
    assert!(!ok, "a reload without descriptors succeeded: {out}");
    assert!(err.contains("Too many open files"), "{err}");
    assert!(
        err.contains("RLIMIT_NOFILE") && err.contains("ulimit -n") && err.contains("LimitNOFILE="),
        "the error does not say what to do: {err}"
    );
    h.wait_log(
        "reload failed; the current generation serves on",
        Duration::from_secs(10),
    );
    assert_eq!(h.current_pid(), first);
    assert_eq!(h.generation_pids(), vec![first]);
    more_ok(&load, &h);

    // With the limit restored, a reload succeeds.
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}\n{}", h.log());
    let new = reloaded_pid(&out);
    assert!(load.wait_for_new_pid(&BTreeSet::from([first]), Duration::from_secs(30)) == Some(new));
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        h.log()
    );
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["failed_reloads"], 1, "{status}");
}

#[test]
fn a_pid_file_that_cannot_be_written_stops_handover_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "a regular file").unwrap();
    let cases = [
        (
            std::path::PathBuf::from("/proc/handover-no-such-dir/handover.pid"),
            "No such file or directory",
        ),
        (file.join("handover.pid"), "Not a directory"),
    ];
    for (i, (pid_file, why)) in cases.iter().enumerate() {
        let control = dir.path().join(format!("c{i}.sock"));
        let mut child = KillOnDrop(
            Command::new(support::handover_bin())
                .args(["run", "--bind", "tcp://127.0.0.1:0", "--pid-file"])
                .arg(pid_file)
                .arg("--control")
                .arg(&control)
                .args(["--", "sleep", "60"])
                .env("XDG_RUNTIME_DIR", dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "handover did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "handover: cannot write the pid file {}",
                pid_file.display()
            )),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
        assert!(
            err.contains("choose another --pid-file"),
            "no advice: {err}"
        );
        assert!(!control.exists(), "the control socket file is left behind");
    }
}
