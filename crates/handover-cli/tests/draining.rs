//! Reloads never wait on a long drain (issue 13): several old generations
//! drain at once, each with its own stop deadline, up to `--max-draining`;
//! `status` lists them with their ages and open connections. Real Python
//! servers under load, every failed request counted.

mod support;

use std::time::{Duration, Instant};

use handover_verify::{Load, LoadConfig, Mode};
use support::{Handover, Setup, gone, http_get, pid_in, wait_until};

fn load(h: &Handover) -> Load {
    let mut cfg = LoadConfig::new(h.addr, Mode::NewConnection);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(20, Duration::from_secs(30)),
        "no load got through:\n{}",
        h.log()
    );
    load
}

/// Sends `GET /slow?ms=N` to the current generation `pid` from a thread and
/// waits until the request is in flight there.
fn slow_request(h: &Handover, pid: u32, ms: u64) -> std::thread::JoinHandle<String> {
    let addr = h.addr;
    let request = std::thread::spawn(move || {
        http_get(addr, &format!("/slow?ms={ms}"), Duration::from_secs(120))
    });
    let mark = h.dir.path().join(format!("slow-{pid}"));
    wait_until(
        "the slow request reached the generation",
        Duration::from_secs(30),
        || mark.exists(),
    );
    request
}

fn reload(h: &Handover) {
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}\n{}", h.log());
}

/// A generation in `status`.
fn generation(status: &serde_json::Value, pid: u32) -> serde_json::Value {
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["pid"] == pid)
        .cloned()
        .unwrap_or_else(|| panic!("generation with pid {pid} not listed: {status}"))
}

#[test]
fn two_reloads_while_an_8s_request_drains_take_two_starts_and_the_request_completes() {
    let mut h = Handover::start(Setup::default());
    let load = load(&h);
    // One reload with nothing to drain, for comparison.
    let started = Instant::now();
    reload(&h);
    let one = started.elapsed();
    let first = h.current_pid();
    wait_until("one generation is left", Duration::from_secs(30), || {
        h.generation_pids() == vec![first]
    });

    let request = slow_request(&h, first, 8000);
    let started = Instant::now();
    reload(&h);
    let second = h.current_pid();
    reload(&h);
    let two = started.elapsed();
    let third = h.current_pid();
    // Both reloads were done while the first generation still drained its
    // request: neither waited for it.
    let first_alive = !gone(first);
    eprintln!(
        "one reload: {one:?}; two reloads while an 8 s request drains: {two:?}; the draining \
         generation was {} when the second was done",
        if first_alive { "still alive" } else { "gone" }
    );
    assert!(
        first_alive,
        "the second reload waited for the draining generation ({two:?}):\n{}",
        h.log()
    );
    assert!(two < Duration::from_secs(8), "{two:?}");

    // status lists both old generations as draining, with how long they have
    // been and until SIGKILL, and the first one's open connection (the slow
    // request; counted from /proc, so it may take a moment to show).
    let mut status = serde_json::Value::Null;
    wait_until(
        "status counts the draining generation's connection",
        Duration::from_secs(10),
        || {
            status = h.wait_status(Duration::from_secs(10));
            generation(&status, first)["connections"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        },
    );
    let old = generation(&status, first);
    assert_eq!(old["state"], "draining", "{status}");
    assert_eq!(old["reason"], "replaced", "{status}");
    assert!(old["draining_for_ms"].as_f64().unwrap() > 0.0, "{status}");
    assert!(old["kill_in_ms"].as_f64().unwrap() > 20_000.0, "{status}");
    assert_eq!(generation(&status, third)["current"], true, "{status}");
    if !gone(second) {
        assert_eq!(generation(&status, second)["state"], "draining", "{status}");
    }
    let text = String::from_utf8_lossy(&h.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("CONNS") && text.contains("(replaced ") && text.contains("SIGKILL in"),
        "{text}"
    );
    assert!(text.contains("reloads: 3 (0 failed)"), "{text}");

    let answer = request.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && pid_in(&answer) == Some(first),
        "the draining generation's request failed: {answer:?}"
    );
    wait_until(
        "the old generations are gone",
        Duration::from_secs(30),
        || h.generation_pids() == vec![third],
    );
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        h.log()
    );
}

#[test]
fn beyond_max_draining_a_reload_waits_until_an_old_generation_is_gone() {
    let mut h = Handover::start(Setup {
        options: vec!["--max-draining".into(), "1".into()],
        ..Setup::default()
    });
    let load = load(&h);
    let first = h.current_pid();
    let request = slow_request(&h, first, 5000);
    reload(&h);
    // The first generation drains its request; a second reload must wait.
    let control = h.control.clone();
    let second_reload = std::thread::spawn(move || {
        let out = std::process::Command::new(support::handover_bin())
            .args(["reload", "--control"])
            .arg(&control)
            .output()
            .unwrap();
        (out.status.success(), gone(first))
    });
    wait_until(
        "status says a reload waits",
        Duration::from_secs(10),
        || {
            let s = h.wait_status(Duration::from_secs(10));
            s["queued_reloads"].as_u64().is_some_and(|n| n >= 1) && s["draining"] == 1
        },
    );
    let text = String::from_utf8_lossy(&h.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("a reload waits (1 generation(s) drain, --max-draining 1)"),
        "{text}"
    );
    let (ok, first_gone) = second_reload.join().unwrap();
    assert!(ok, "{}", h.log());
    assert!(
        first_gone,
        "the reload did not wait for the draining generation"
    );
    let answer = request.join().unwrap();
    assert_eq!(pid_in(&answer), Some(first), "{answer:?}");
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        h.log()
    );
}
