//! `handover reexec`: the supervisor upgrades itself in place, under load,
//! with the binary replaced between runs (two copies of it in a temporary
//! directory, reached through a symlink the test swaps, as a deploy would).
//! The program is the built-in demo server, so nothing needs installing.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use handover_verify::{Load, LoadConfig, Mode};
use support::{
    Handover, Setup, control_json, fd_count, handover_bin, settled_fd_count, wait_until,
    zombie_children,
};

/// Two copies of the handover binary (`a/handover`, `b/handover`), and
/// `current`, a symlink to one of them.
struct Bins {
    dir: tempfile::TempDir,
}

impl Bins {
    fn new() -> Bins {
        let dir = tempfile::tempdir().unwrap();
        for v in ["a", "b"] {
            std::fs::create_dir(dir.path().join(v)).unwrap();
            std::fs::copy(handover_bin(), dir.path().join(v).join("handover")).unwrap();
        }
        let bins = Bins { dir };
        bins.deploy(&bins.version("a"));
        bins
    }

    fn version(&self, v: &str) -> PathBuf {
        self.dir.path().join(v).join("handover")
    }

    fn current(&self) -> PathBuf {
        self.dir.path().join("current")
    }

    /// Points `current` at `target`, atomically (a new link renamed over
    /// the old one).
    fn deploy(&self, target: &Path) {
        let tmp = self.dir.path().join("current.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, self.current()).unwrap();
    }

    /// A script that exits at once with code 3, deployed as `current`.
    fn deploy_broken(&self) -> PathBuf {
        let p = self.dir.path().join("broken");
        std::fs::write(
            &p,
            "#!/bin/sh\necho 'broken build: cannot start' >&2\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.deploy(&p);
        p
    }
}

fn start(bins: &Bins) -> Handover {
    Handover::start(Setup {
        binary: Some(bins.current()),
        program: Some(vec![handover_bin().to_string(), "demo-server".to_string()]),
        options: vec!["--stop-timeout".into(), "10s".into()],
        ..Setup::default()
    })
}

/// The generations as `status` lists them: (generation, pid, state).
fn generations(h: &mut Handover) -> Vec<(u64, u64, String)> {
    h.wait_status(Duration::from_secs(10))["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().unwrap(),
                g["pid"].as_u64().unwrap(),
                g["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

fn reexec(h: &Handover) -> (bool, String, String) {
    let out = h.cli(&["reexec", "--timeout", "60s"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn twenty_reexecs(mode: Mode) {
    let bins = Bins::new();
    let mut h = start(&bins);
    let pid = h.pid();
    let app = h.current_pid();
    let mut cfg = LoadConfig::new(h.addr, mode);
    cfg.connections = 8;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(50, Duration::from_secs(30)),
        "no load got through:\n{}",
        h.log()
    );
    let gens = generations(&mut h);
    assert_eq!(gens.len(), 1);
    assert_eq!(exe(pid), bins.version("a"));
    // Descriptors the first image inherited from this test process (from
    // whatever ran the tests) are not handover's: the exec closes them.
    let fds = settled_fd_count(pid) - inherited_from_us(pid);
    for i in 1..=20 {
        let target = bins.version(if i % 2 == 1 { "b" } else { "a" });
        bins.deploy(&target);
        let (ok, out, err) = reexec(&h);
        assert!(ok, "reexec {i} failed: {out}{err}\n{}", h.log());
        assert!(out.starts_with("re-executed: handover (pid "), "{out}");
        // The same process, now running the new file.
        assert_eq!(exe(pid), target, "reexec {i}");
        assert!(h.child.try_wait().unwrap().is_none());
        let status = h.wait_status(Duration::from_secs(10));
        assert_eq!(status["pid"], pid, "reexec {i}");
        assert_eq!(status["reexecs"], i, "reexec {i}");
        assert_eq!(
            generations(&mut h),
            gens,
            "reexec {i}: the generations changed"
        );
        wait_until(
            &format!("handover's fd count is back to {fds} after reexec {i}"),
            Duration::from_secs(10),
            || fd_count(pid) == fds,
        );
    }
    // The application never noticed: only its pid answered.
    let ok = load.snapshot().ok;
    assert!(load.wait_for_ok(ok + 50, Duration::from_secs(30)));
    assert_eq!(load.pids_seen(), BTreeSet::from([app]));
    // A reload afterwards works: a new generation takes over.
    let (ok, out, err) = h.reload();
    assert!(
        ok,
        "the reload after the reexecs failed: {out}{err}\n{}",
        h.log()
    );
    let new = h.current_pid();
    assert_ne!(new, app);
    assert!(
        load.wait_for_new_pid(&BTreeSet::from([app]), Duration::from_secs(30))
            .is_some()
    );
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "failed requests during 20 reexecs:\n{}\nhandover log:\n{}",
        report.render_table(),
        h.log()
    );
    wait_until(
        "the old generation is gone",
        Duration::from_secs(30),
        || support::gone(app) && generations(&mut h).len() == 1,
    );
    assert!(zombie_children(pid).is_empty());
}

#[test]
fn twenty_reexecs_under_load_new_connection_per_request() {
    twenty_reexecs(Mode::NewConnection);
}

#[test]
fn twenty_reexecs_under_load_keep_alive() {
    twenty_reexecs(Mode::KeepAlive);
}

#[test]
fn a_reexec_to_a_binary_that_exits_at_once_fails_and_the_old_supervisor_serves_on() {
    let bins = Bins::new();
    let mut h = start(&bins);
    let pid = h.pid();
    let app = h.current_pid();
    let mut cfg = LoadConfig::new(h.addr, Mode::NewConnection);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(30, Duration::from_secs(30)));
    let fds = settled_fd_count(pid);
    bins.deploy_broken();
    let (ok, out, err) = reexec(&h);
    assert!(!ok, "a reexec to a broken binary succeeded: {out}");
    assert!(
        err.contains("cannot take over")
            && err.contains("exited with code 3")
            && err.contains("broken build: cannot start")
            && err.contains("serves on"),
        "{err}"
    );
    // Nothing changed: same process, same file, same generation, and it
    // serves and answers.
    assert_eq!(exe(pid), bins.version("a"));
    assert_eq!(h.current_pid(), app);
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["reexecs"], 0);
    let ok_before = load.snapshot().ok;
    assert!(load.wait_for_ok(ok_before + 30, Duration::from_secs(30)));
    wait_until("no descriptor leaked", Duration::from_secs(10), || {
        fd_count(pid) == fds
    });
    // A binary that is not a handover at all (exits 0, says nothing).
    let t = bins.dir.path().join("true");
    std::fs::write(&t, "#!/bin/sh\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    bins.deploy(&t);
    let (ok, _, err) = reexec(&h);
    assert!(!ok);
    assert!(err.contains("without saying it can"), "{err}");
    // Fixed: the next reexec works.
    bins.deploy(&bins.version("b"));
    let (ok, out, err) = reexec(&h);
    assert!(ok, "{out}{err}\n{}", h.log());
    assert_eq!(exe(pid), bins.version("b"));
    let report = load.stop();
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
    assert_eq!(h.current_pid(), app);
}

#[test]
fn requests_signals_and_reloads_during_reexecs_wait_and_are_answered() {
    let bins = Bins::new();
    // A reload takes a while (ready after 300 ms), so reexecs happen while
    // one is in flight and its client waits.
    let mut h = Handover::start(Setup {
        binary: Some(bins.current()),
        program: Some(vec![handover_bin().to_string(), "demo-server".to_string()]),
        options: vec!["--ready".into(), "delay:300ms".into()],
        ..Setup::default()
    });
    let pid = h.pid();
    let mut cfg = LoadConfig::new(h.addr, Mode::KeepAlive);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(30, Duration::from_secs(30)));
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Status requests, back to back.
    let status_thread = {
        let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
        let control = h.control.clone();
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match control_json(&control, "status", Duration::from_secs(30)) {
                    Some(a) if a["ok"] == true && a["pid"] == pid => {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{other:?}"));
                    }
                }
            }
            errors
        })
    };
    // Reloads, by the control socket and by SIGHUP.
    let reload_thread = {
        let stop = stop.clone();
        let control = h.control.clone();
        std::thread::spawn(move || {
            let mut results = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                results.push(control_json(&control, "reload", Duration::from_secs(60)));
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).unwrap(),
                    rustix::process::Signal::HUP,
                );
                std::thread::sleep(Duration::from_millis(150));
            }
            results
        })
    };
    for i in 1..=8 {
        bins.deploy(&bins.version(if i % 2 == 1 { "b" } else { "a" }));
        let (ok, out, err) = reexec(&h);
        assert!(ok, "reexec {i} failed: {out}{err}\n{}", h.log());
    }
    stop.store(true, Ordering::SeqCst);
    let status_errors = status_thread.join().unwrap();
    let reloads = reload_thread.join().unwrap();
    assert!(
        status_errors.is_empty(),
        "{} of {} status requests failed: {:?}\n{}",
        failed.load(Ordering::SeqCst),
        answered.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst),
        status_errors,
        h.log()
    );
    assert!(answered.load(Ordering::SeqCst) > 20);
    assert!(!reloads.is_empty());
    for r in &reloads {
        let r = r
            .as_ref()
            .unwrap_or_else(|| panic!("a reload got no answer:\n{}", h.log()));
        assert_eq!(r["ok"], true, "{r}");
    }
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["pid"], pid);
    assert_eq!(status["reexecs"], 8);
    // Each control reload waited for its own start; SIGHUPs may add more.
    assert!(status["reloads"].as_u64().unwrap() >= reloads.len() as u64);
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        h.log()
    );
}

/// How many descriptors of `pid` above 2 are the same open files as this
/// process's descriptors of the same numbers (inherited from it: a
/// harness's pipe, say).
fn inherited_from_us(pid: u32) -> usize {
    let targets = |pid: u32| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.to_string();
                let fd: u32 = n.parse().ok()?;
                (fd > 2).then_some(())?;
                let target = std::fs::read_link(e.path()).ok()?;
                // Every epoll or eventfd has the same name: not evidence.
                (!target.to_string_lossy().starts_with("anon_inode:")).then_some(())?;
                Some((n, target))
            })
            .collect()
    };
    let ours = targets(std::process::id());
    targets(pid).iter().filter(|t| ours.contains(t)).count()
}

#[test]
fn an_exec_that_fails_after_the_check_leaves_everything_as_it_was() {
    let bins = Bins::new();
    let mut h = start(&bins);
    let pid = h.pid();
    let app = h.current_pid();
    let mut cfg = LoadConfig::new(h.addr, Mode::KeepAlive);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(30, Duration::from_secs(30)));
    // (No exec happens: descriptors inherited from this process stay.)
    let fds = settled_fd_count(pid);
    // Passes the check, but takes the file away before the exec: execve
    // fails (ENOENT) in the running handover, which must undo everything.
    let script = bins.dir.path().join("vanishing");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --reexec-check ]; then ln -sfn /nonexistent/handover '{}'; fi\nexec '{}' \"$@\"\n",
            bins.current().display(),
            bins.version("b").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bins.deploy(&script);
    let (ok, out, err) = reexec(&h);
    assert!(!ok, "{out}");
    assert!(
        err.contains("could not execute") && err.contains("No such file"),
        "{err}\n{}",
        h.log()
    );
    // The same image goes on: it answers, keeps its generation, its
    // descriptors, its stderr readers, and its signal handlers (a SIGHUP
    // reloads).
    assert_eq!(exe(pid), bins.version("a"));
    assert_eq!(h.current_pid(), app);
    wait_until(
        "the descriptors are as before",
        Duration::from_secs(10),
        || fd_count(pid) == fds,
    );
    h.signal(rustix::process::Signal::HUP);
    wait_until("SIGHUP reloaded", Duration::from_secs(30), || {
        h.wait_status(Duration::from_secs(10))["reloads"] == 1
    });
    let new = h.current_pid();
    assert_ne!(new, app);
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["reexecs"], 0);
    bins.deploy(&bins.version("b"));
    let (ok, out, err) = reexec(&h);
    assert!(ok, "{out}{err}\n{}", h.log());
    assert_eq!(exe(pid), bins.version("b"));
    let report = load.stop();
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
}

#[test]
fn a_generations_stderr_is_still_read_after_a_reexec() {
    let bins = Bins::new();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("serve.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n(sleep 1.5; echo late-line-from-the-generation >&2) &\nexec '{}' demo-server\n",
            handover_bin()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = Handover::start(Setup {
        binary: Some(bins.current()),
        program: Some(vec![wrapper.display().to_string()]),
        ..Setup::default()
    });
    bins.deploy(&bins.version("b"));
    let (ok, out, err) = reexec(&h);
    assert!(ok, "{out}{err}");
    assert!(!h.log().contains("late-line-from-the-generation"));
    // Written after the exec, into the pipe the old image read: the new
    // image reads it.
    h.wait_log("late-line-from-the-generation", Duration::from_secs(20));
    assert_eq!(exe(h.pid()), bins.version("b"));
}

#[test]
fn a_reload_whose_readiness_probe_runs_during_a_reexec_completes() {
    let bins = Bins::new();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("probe-runs");
    // Each probe run takes 400 ms and is logged; ready on its second run.
    let probe = format!(
        "exec:echo run >> '{r}'; sleep 0.4; [ $(wc -l < '{r}') -ge 2 ]",
        r = runs.display()
    );
    let mut h = Handover::start(Setup {
        binary: Some(bins.current()),
        program: Some(vec![handover_bin().to_string(), "demo-server".to_string()]),
        options: vec!["--ready".into(), probe],
        ..Setup::default()
    });
    let pid = h.pid();
    let first = h.current_pid();
    std::fs::remove_file(&runs).unwrap();
    let control = h.control.clone();
    let reload =
        std::thread::spawn(move || control_json(&control, "reload", Duration::from_secs(60)));
    wait_until("the probe runs", Duration::from_secs(10), || runs.exists());
    bins.deploy(&bins.version("b"));
    let (ok, out, err) = reexec(&h);
    assert!(ok, "{out}{err}\n{}", h.log());
    // The probe run the exec interrupted is not left behind, and the new
    // image probes again: the reload completes.
    let answer = reload.join().unwrap().expect("the reload was not answered");
    assert_eq!(answer["ok"], true, "{answer}\n{}", h.log());
    assert_ne!(h.current_pid(), first);
    assert_eq!(h.wait_status(Duration::from_secs(10))["pid"], pid);
    wait_until("no probe is left", Duration::from_secs(10), || {
        support::children(pid).iter().all(|c| {
            !std::fs::read_to_string(format!("/proc/{c}/cmdline"))
                .unwrap_or_default()
                .contains("sleep")
        })
    });
}
