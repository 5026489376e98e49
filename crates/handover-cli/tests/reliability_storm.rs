//! Reload storms (issue 8; see RELIABILITY.md): 100 SIGHUPs, and 100
//! concurrent `handover reload`s, within about a second, under load. Reloads
//! are coalesced, at most two generations exist at any moment, the last one
//! serves, and handover's descriptors and children are back to where they
//! were.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use handover_verify::{Load, LoadConfig, Mode};
use rustix::process::{Pid, Signal};
use support::{
    Handover, KillOnDrop, Setup, children, control_json, fd_count, http_get, pid_in, wait_until,
    zombie_children,
};

/// Watches handover during a storm: the most child processes and the most
/// generations in `status` seen at any one time.
struct Monitor {
    stop: Arc<AtomicBool>,
    max_children: Arc<AtomicUsize>,
    max_generations: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(h: &Handover) -> Monitor {
        let (pid, control) = (h.pid(), h.control.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let max_children = Arc::new(AtomicUsize::new(0));
        let max_generations = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, max_children, max_generations, samples) = (
                stop.clone(),
                max_children.clone(),
                max_generations.clone(),
                samples.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    max_children.fetch_max(children(pid).len(), Ordering::SeqCst);
                    if let Some(s) = control_json(&control, "status", Duration::from_secs(10)) {
                        let n = s["generations"].as_array().map_or(0, |g| g.len());
                        max_generations.fetch_max(n, Ordering::SeqCst);
                    }
                    samples.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Monitor {
            stop,
            max_children,
            max_generations,
            samples,
            thread: Some(thread),
        }
    }

    /// (most children, most generations, samples taken)
    fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.max_children.load(Ordering::SeqCst),
            self.max_generations.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What handover holds once it is idle after a reload.
#[derive(Debug, PartialEq, Eq)]
struct Baseline {
    fds: usize,
    children: usize,
}

/// Waits until only the current generation is left, then measures.
fn settle(h: &mut Handover) -> Baseline {
    wait_until("one generation is left", Duration::from_secs(60), || {
        h.generation_pids().len() == 1 && children(h.pid()).len() == 1
    });
    // The old generation's stderr pipe closes as it exits.
    std::thread::sleep(Duration::from_millis(200));
    Baseline {
        fds: fd_count(h.pid()),
        children: children(h.pid()).len(),
    }
}

/// A storm test: start under load, reload once for the baseline, run
/// `storm`, then check coalescing, the generation bound, and leaks.
fn storm(storm: impl FnOnce(&Handover)) {
    // At most one old generation drains while the next starts: so at most
    // two exist at any moment (with --max-draining N: N + 1, plus one
    // starting).
    let mut h = Handover::start(Setup {
        options: vec!["--max-draining".into(), "1".into()],
        ..Setup::default()
    });
    let mut cfg = LoadConfig::new(h.addr, Mode::NewConnection);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(30, Duration::from_secs(30)));
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}");
    let baseline = settle(&mut h);
    assert_eq!(baseline.children, 1);
    let reloads_before = h.wait_status(Duration::from_secs(10))["reloads"]
        .as_u64()
        .unwrap();

    let monitor = Monitor::start(&h);
    let started = Instant::now();
    storm(&h);
    let storm_took = started.elapsed();
    // A last reload is answered only after every request before it was
    // handled (one queue, in order).
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}\n{}", h.log());
    let (max_children, max_generations, samples) = monitor.finish();
    let after = settle(&mut h);

    let status = h.wait_status(Duration::from_secs(10));
    let reloads = status["reloads"].as_u64().unwrap() - reloads_before - 1;
    eprintln!(
        "storm took {storm_took:?}: {reloads} reload(s) for 100 requests; at most \
         {max_children} children and {max_generations} generations in {samples} samples"
    );
    assert!(
        (1..=30).contains(&reloads),
        "{reloads} reloads for 100 requests: not coalesced\n{}",
        h.log()
    );
    assert_eq!(status["failed_reloads"], 0, "{status}");
    assert!(samples >= 10, "the monitor hardly ran ({samples} samples)");
    assert!(max_children <= 2, "{max_children} children at once");
    assert!(
        max_generations <= 2,
        "{max_generations} generations at once"
    );

    // The last generation serves.
    let current = h.current_pid();
    let answer = http_get(h.addr, "/", Duration::from_secs(10));
    assert_eq!(pid_in(&answer), Some(current), "{answer}");
    assert!(
        load.wait_for_new_pid(&BTreeSet::new(), Duration::ZERO)
            .is_some()
    );
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        h.log()
    );

    // Nothing leaked.
    assert!(zombie_children(h.pid()).is_empty());
    assert_eq!(after.children, baseline.children);
    wait_until(
        "handover's fd count is back to the baseline",
        Duration::from_secs(10),
        || fd_count(h.pid()) == baseline.fds,
    );
}

#[test]
fn a_storm_of_100_sighups_is_coalesced() {
    storm(|h| {
        let pid = Pid::from_raw(h.pid() as i32).unwrap();
        for _ in 0..100 {
            rustix::process::kill_process(pid, Signal::HUP).unwrap();
            std::thread::sleep(Duration::from_millis(8));
        }
    });
}

#[test]
fn a_storm_of_100_concurrent_reload_commands_is_coalesced_and_each_succeeds() {
    storm(|h| {
        let procs: Vec<KillOnDrop> = (0..100)
            .map(|_| {
                KillOnDrop(
                    Command::new(support::handover_bin())
                        .args(["reload", "--timeout", "120s", "--control"])
                        .arg(&h.control)
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(150);
        let mut generations = BTreeSet::new();
        for mut p in procs {
            let status = loop {
                if let Some(s) = p.0.try_wait().unwrap() {
                    break s;
                }
                assert!(
                    Instant::now() < deadline,
                    "a `handover reload` hangs:\n{}",
                    h.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            let mut out = String::new();
            let mut err = String::new();
            std::io::Read::read_to_string(&mut p.0.stdout.take().unwrap(), &mut out).unwrap();
            std::io::Read::read_to_string(&mut p.0.stderr.take().unwrap(), &mut err).unwrap();
            assert!(status.success(), "a `handover reload` failed: {out}{err}");
            assert!(out.starts_with("reloaded: generation"), "{out}");
            generations.insert(out.split_whitespace().nth(2).unwrap().to_string());
        }
        eprintln!(
            "100 concurrent reload commands were answered by {} generation(s)",
            generations.len()
        );
        assert!(generations.len() < 30, "{generations:?}");
    });
}
