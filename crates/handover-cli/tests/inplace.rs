//! In-place reloads (issue 13): `--reload-signal` for servers that reload
//! themselves keeping their pid (Puma's USR2 hot restart). With
//! `--reload-ready notify` handover waits for `RELOADING=1`, then `READY=1`
//! (systemd's Type=notify-reload contract) and the settle window, and
//! `handover reload` reports the outcome: success, or failure when the
//! program dies or never says it is done. `verify` counts a reload that
//! keeps the pid when handover reports it done. `--signal-scope` decides
//! who gets reload and forwarded signals. Real processes under load.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use handover_verify::{Load, LoadConfig, Mode};
use support::{Handover, Setup, http_get, wait_until};

const INPLACE_PY: &str = include_str!("servers/inplace.py");

/// `handover run --reload-signal USR2 --reload-ready notify OPTIONS --
/// python3 inplace.py`.
fn start(options: &[&str]) -> (Handover, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("inplace.py");
    std::fs::write(&script, INPLACE_PY).unwrap();
    let mut all = vec!["--reload-signal", "USR2", "--reload-ready", "notify"];
    all.extend_from_slice(options);
    let h = Handover::start(Setup {
        program: Some(vec!["python3".into(), script.display().to_string()]),
        options: all.iter().map(|s| s.to_string()).collect(),
        ..Setup::default()
    });
    (h, dir)
}

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

fn no_failures(load: Load, h: &Handover) {
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        h.log()
    );
}

/// The `boot=N` of an answer.
fn boot(h: &Handover) -> u32 {
    let answer = http_get(h.addr, "/", Duration::from_secs(10));
    answer
        .lines()
        .find_map(|l| l.strip_prefix("boot="))
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("no boot= in {answer:?}"))
}

fn set_mode(h: &Handover, mode: &str) {
    std::fs::write(h.dir.path().join("inplace-mode"), mode).unwrap();
}

#[test]
fn an_in_place_reload_reports_success_once_the_program_says_it_reloaded() {
    let (mut h, _dir) = start(&[]);
    let load = load(&h);
    let pid = h.current_pid();
    assert_eq!(boot(&h), 1);
    for n in 2..=3 {
        let (ok, out, err) = h.reload();
        assert!(ok, "{out}{err}\n{}", h.log());
        assert!(
            out.starts_with(&format!(
                "reloaded in place: generation 1 (pid {pid}) after SIGUSR2, ready after "
            )),
            "{out}"
        );
        // The same process, a new image: it said so (READY=1 with its
        // STATUS=) before the answer.
        let status = h.wait_status(Duration::from_secs(10));
        assert_eq!(
            status["generations"][0]["status"],
            format!("serving boot {n}"),
            "{status}"
        );
        assert_eq!(h.current_pid(), pid);
        assert_eq!(boot(&h), n);
    }
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["reloads"], 2, "{status}");
    assert_eq!(status["starts"], 1, "{status}");
    assert_eq!(status["last_reload"]["in_place"], true, "{status}");
    no_failures(load, &h);
}

#[test]
fn an_in_place_reload_that_fails_is_reported_as_a_failure() {
    let (mut h, _dir) = start(&["--ready-timeout", "3s"]);
    let load = load(&h);
    let pid = h.current_pid();

    // The new image never says READY=1 (it serves on): the reload fails at
    // the ready timeout, and the process serves on.
    set_mode(&h, "hang");
    let (ok, out, err) = h.reload();
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!(
            "the in-place reload (SIGUSR2 to pid {pid}) was not done within 3s: it sent RELOADING=1 but not READY=1"
        )),
        "{err}"
    );
    assert_eq!(h.current_pid(), pid);
    assert_eq!(boot(&h), 2);

    // The new image cannot start (a broken release): the reload fails with
    // the program's own words, and handover starts the program again.
    set_mode(&h, "fail");
    let (ok, out, err) = h.reload();
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!(
            "generation 1 (pid {pid}) exited with code 1 during its in-place reload (SIGUSR2)"
        )),
        "{err}"
    );
    assert!(
        err.contains("config error: unknown setting 'wrokers'"),
        "{err}"
    );
    wait_until("a generation serves again", Duration::from_secs(30), || {
        let s = h.wait_status(Duration::from_secs(10));
        s["generations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["current"] == true && g["pid"] != pid)
    });
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["failed_reloads"], 2, "{status}");
    assert_eq!(status["restarts"], 1, "{status}");
    assert_eq!(boot(&h), 1);
    assert!(load.wait_for_ok(load.snapshot().ok + 20, Duration::from_secs(30)));
    no_failures(load, &h);
}

#[test]
fn verify_counts_an_in_place_reload_that_handover_reports_done() {
    let (h, _dir) = start(&["--settle", "500ms"]);
    let out = std::process::Command::new(support::handover_bin())
        .args(["verify", "--addr"])
        .arg(h.addr.to_string())
        .args([
            "--duration",
            "7s",
            "--reload-every",
            "2s",
            "--connections",
            "4",
            "--json",
            "--control",
        ])
        .arg(&h.control)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{report:#}\n{}", h.log());
    let reloads = report["reloads"].as_array().unwrap();
    assert!(reloads.len() >= 2, "{report:#}");
    for r in reloads {
        assert_eq!(r["in_place"], true, "{r}");
        assert_eq!(r["pid_changed"], false, "{r}");
        assert_eq!(r["trigger_ok"], true, "{r}");
    }
}

/// A program whose main process and worker (same process group) each
/// write a file when they get SIGUSR1.
fn master_and_worker(dir: &std::path::Path) -> Vec<String> {
    let script = dir.join("master.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd='{d}'\n(trap 'touch \"$d/usr1-worker\"' USR1; while :; do sleep 0.05; done) &\ntrap 'touch \"$d/usr1-main\"' USR1\nwhile :; do sleep 0.05; done\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    vec![script.display().to_string()]
}

#[test]
fn signal_scope_main_reaches_the_main_process_and_group_reaches_the_workers() {
    for (scope, worker_gets_it) in [("main", false), ("group", true)] {
        let dir = tempfile::tempdir().unwrap();
        let h = Handover::start(Setup {
            program: Some(master_and_worker(dir.path())),
            options: ["--ready", "delay:300ms", "--signal-scope", scope]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Setup::default()
        });
        h.signal(rustix::process::Signal::USR1);
        let main = dir.path().join("usr1-main");
        wait_until(
            "the main process got SIGUSR1",
            Duration::from_secs(10),
            || main.exists(),
        );
        // The worker's trap would have run by now.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            dir.path().join("usr1-worker").exists(),
            worker_gets_it,
            "--signal-scope {scope}"
        );
    }
}

#[test]
fn the_new_options_refuse_bad_values_with_what_to_do() {
    for (args, says) in [
        (
            vec!["--max-draining", "0"],
            "\"0\" is not a number of generations: expected 1 or more",
        ),
        (
            vec!["--signal-scope", "workers"],
            "\"workers\" is not a signal scope: expected main",
        ),
        (vec!["--reload-ready", "notify"], "--reload-signal <SIGNAL>"),
        (vec!["--settle", "soon"], "\"soon\" is not a duration"),
        (vec!["--ready", "http:health"], "has no path"),
    ] {
        let out = std::process::Command::new(support::handover_bin())
            .arg("run")
            .args(["--bind", "tcp://127.0.0.1:0"])
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
