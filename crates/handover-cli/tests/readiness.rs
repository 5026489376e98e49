//! Readiness a broken deploy cannot fool (issue 13), with real processes
//! under load, every failed request counted:
//!
//! - a generation that sends `READY=1` and dies 300 ms later (gunicorn's
//!   master, reduced), and a real gunicorn with an application that does not
//!   import, fail the reload within the settle window: `handover reload`
//!   exits non-zero with the line that says why, the old generation serves
//!   on, and no crash restart starts the broken version;
//! - a probe that the old generation could answer (it shares the socket) is
//!   not fooled: an `exec:` probe that checks `HANDOVER_PID`, and `http:`,
//!   which asks the kernel which process accepted its connection.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use handover_verify::{Load, LoadConfig, Mode, Report};
use support::{Handover, Setup, free_port, runtime, wait_until};

const READY_THEN_DIES: &str = include_str!("servers/ready_then_dies.py");

/// A program whose every start is chosen by the file `mode` in its own
/// directory: `ok` runs server.py, `ready-dies` runs ready_then_dies.py,
/// `slow` runs server.py that serves (and says ready) only after 3 s.
struct Program {
    dir: tempfile::TempDir,
}

impl Program {
    fn new() -> Program {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("server.py"), support::SERVER_PY).unwrap();
        std::fs::write(d.join("ready_then_dies.py"), READY_THEN_DIES).unwrap();
        std::fs::write(d.join("mode"), "ok").unwrap();
        write_script(
            &d.join("run.sh"),
            &format!(
                "#!/bin/sh\nd='{d}'\ncase \"$(cat \"$d/mode\")\" in\n  ready-dies) exec python3 \"$d/ready_then_dies.py\";;\n  slow) export SERVER_START_DELAY_MS=3000;;\nesac\nexec python3 \"$d/server.py\"\n",
                d = d.display()
            ),
        );
        Program { dir }
    }

    fn argv(&self) -> Vec<String> {
        vec![self.dir.path().join("run.sh").display().to_string()]
    }

    fn set(&self, mode: &str) {
        std::fs::write(self.dir.path().join("mode"), mode).unwrap();
    }
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn load(h: &Handover, mode: Mode) -> Load {
    let mut cfg = LoadConfig::new(h.addr, mode);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(20, Duration::from_secs(30)),
        "no load got through:\n{}",
        h.log()
    );
    load
}

/// Stops the loads; every request must have succeeded.
fn no_failures(loads: Vec<Load>, h: &Handover) -> Vec<Report> {
    let reports: Vec<Report> = loads.into_iter().map(Load::stop).collect();
    for r in &reports {
        assert_eq!(
            r.failures_total(),
            0,
            "failed requests:\n{}\nhandover log:\n{}",
            r.render_table(),
            h.log()
        );
    }
    reports
}

fn ms(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("not a number of ms: {v}"))
}

#[test]
fn a_generation_that_says_ready_and_dies_fails_the_reload_and_the_old_one_serves_on() {
    let program = Program::new();
    let mut h = Handover::start(Setup {
        program: Some(program.argv()),
        ..Setup::default()
    });
    let loads = vec![load(&h, Mode::NewConnection), load(&h, Mode::KeepAlive)];
    let first = h.current_pid();

    program.set("ready-dies");
    let started = Instant::now();
    let (ok, out, err) = h.reload();
    eprintln!("reload answered after {:?}: {err}", started.elapsed());
    assert!(
        !ok,
        "a generation that died 300 ms after READY=1 was reported as a success: {out}\n{}",
        h.log()
    );
    assert!(
        err.contains("exited while it settled, after it was ready: it exited with code 3"),
        "{err}"
    );
    // The line that says why, although 30 others came after it.
    assert!(
        err.contains("its stderr lines that look like the cause:")
            && err.contains("ImportError: cannot import name 'hndler' from 'handlers'")
            && err.contains("  File \"/srv/app/current/app.py\", line 3, in <module>"),
        "{err}"
    );

    // The old generation serves on, alone; nothing restarts the broken one.
    assert_eq!(h.current_pid(), first);
    assert_eq!(h.generation_pids(), vec![first]);
    std::thread::sleep(Duration::from_secs(1));
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["failed_reloads"], 1, "{status}");
    assert_eq!(status["restarts"], 0, "{status}");
    assert_eq!(status["starts"], 2, "{status}");
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    assert!(status["crash_loop"].is_null(), "{status}");
    let text = String::from_utf8_lossy(&h.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("last reload: FAILED: the new generation 2"),
        "{text}"
    );
    for l in &loads {
        assert!(l.wait_for_ok(l.snapshot().ok + 20, Duration::from_secs(30)));
    }

    // Fixed: the next reload goes through.
    program.set("ok");
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}");
    assert!(out.contains(", then settled "), "{out}");
    assert_ne!(h.current_pid(), first);
    no_failures(loads, &h);
}

/// A WSGI application that answers `pid=<its process group>` (the
/// generation's pid: gunicorn's master leads the group its workers are in),
/// after an import that takes APP_IMPORT_SECONDS.
const APP_PY: &str = r#"import os, time
time.sleep(float(os.environ.get('APP_IMPORT_SECONDS', '0')))
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imported-%d' % os.getpid()), 'w').close()
def app(environ, start_response):
    body = ('pid=%d\n' % os.getpgrp()).encode()
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]
"#;

fn gunicorn(dir: &Path) -> Vec<String> {
    [
        "python3",
        "-m",
        "gunicorn",
        "--workers",
        "2",
        "--no-control-socket",
        "--graceful-timeout",
        "10",
        "--chdir",
        &dir.display().to_string(),
        "app:app",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn have_gunicorn(test: &str) -> bool {
    runtime::require_command(
        test,
        "gunicorn",
        &["python3", "-c", "import gunicorn"],
        "pip install gunicorn (.ci/run installs it)",
    )
}

#[test]
fn a_broken_gunicorn_app_fails_the_reload_and_the_old_generation_serves_on() {
    if !have_gunicorn("a_broken_gunicorn_app_fails_the_reload_and_the_old_generation_serves_on") {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("app.py"), APP_PY).unwrap();
    // The default readiness: gunicorn's master sends READY=1 before its
    // workers import the application.
    let mut h = Handover::start(Setup {
        program: Some(gunicorn(app.path())),
        ..Setup::default()
    });
    let loads = vec![load(&h, Mode::NewConnection)];
    let first = h.current_pid();
    assert!(loads[0].pids_seen().contains(&first));
    // Both workers of the first generation have imported the application
    // (each leaves a mark): breaking it now cannot break them.
    support::wait_until(
        "both workers of the first generation imported the app",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(app.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("imported-")
                })
                .count()
                >= 2
        },
    );

    std::fs::write(
        app.path().join("app.py"),
        format!("{APP_PY}\ndef broken(\n"),
    )
    .unwrap();
    let (ok, out, err) = h.reload();
    assert!(
        !ok,
        "gunicorn with an application that cannot be imported was reported ready: {out}\n{}",
        h.log()
    );
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(
        err.contains("SyntaxError: '(' was never closed"),
        "the error does not say why: {err}"
    );
    assert_eq!(h.current_pid(), first);
    wait_until(
        "only the old generation is left",
        Duration::from_secs(30),
        || h.generation_pids() == vec![first],
    );
    let status = h.wait_status(Duration::from_secs(10));
    assert_eq!(status["restarts"], 0, "{status}");
    assert!(loads[0].wait_for_ok(loads[0].snapshot().ok + 20, Duration::from_secs(30)));

    std::fs::write(app.path().join("app.py"), APP_PY).unwrap();
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}\n{}", h.log());
    let second = h.current_pid();
    assert_ne!(second, first);
    let reports = no_failures(loads, &h);
    assert!(
        reports[0].pids.contains_key(&second),
        "{}",
        reports[0].render_table()
    );
}

#[test]
fn with_an_http_probe_a_slow_gunicorn_app_is_ready_only_once_a_worker_answers() {
    if !have_gunicorn("with_an_http_probe_a_slow_gunicorn_app_is_ready_only_once_a_worker_answers")
    {
        return;
    }
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("app.py"), APP_PY).unwrap();
    let mut h = Handover::start(Setup {
        program: Some(gunicorn(app.path())),
        options: ["--ready", "notify", "--ready", "http:/"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        env: vec![("APP_IMPORT_SECONDS".into(), "2".into())],
        ..Setup::default()
    });
    let loads = vec![load(&h, Mode::NewConnection)];
    let first = h.current_pid();
    let (ok, out, err) = h.reload();
    assert!(ok, "{out}{err}\n{}", h.log());
    let status = h.wait_status(Duration::from_secs(10));
    let ready_after = ms(&status["last_reload"]["took_ms"]);
    let current = &status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["current"] == true)
        .unwrap()["ready_after_ms"];
    eprintln!(
        "ready after {} ms (reload took {ready_after} ms)",
        ms(current)
    );
    // READY=1 comes before the import; an answer from a worker only after.
    assert!(
        ms(current) >= 2000.0,
        "ready before a worker could answer: {status}"
    );
    assert_ne!(h.current_pid(), first);
    no_failures(loads, &h);
}

/// A probe script: GET / on 127.0.0.1:PORT; exits 0 when the answer came
/// from HANDOVER_PID (or, with `--any`, from anyone).
const PROBE_PY: &str = r#"import os, sys, urllib.request
port, anyone = sys.argv[1], '--any' in sys.argv
try:
    body = urllib.request.urlopen('http://127.0.0.1:%s/' % port, timeout=5).read().decode()
except Exception as e:
    sys.exit('probe: %s' % e)
if not anyone and 'pid=%s\n' % os.environ['HANDOVER_PID'] not in body:
    sys.exit('probe: answered by another generation: ' + body.strip())
"#;

/// How long the reload that started the current generation waited for it.
fn ready_after(h: &mut Handover) -> f64 {
    let status = h.wait_status(Duration::from_secs(10));
    let g = status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["current"] == true)
        .unwrap()
        .clone();
    ms(&g["ready_after_ms"])
}

/// Starts handover on `program` with `options`, reloads into a generation
/// that serves only after 3 s, under load; returns how long it took to be
/// ready.
fn reload_into_a_slow_generation(program: &Program, options: Vec<String>) -> f64 {
    let mut h = Handover::start(Setup {
        program: Some(program.argv()),
        options,
        ..Setup::default()
    });
    let loads = vec![load(&h, Mode::NewConnection), load(&h, Mode::KeepAlive)];
    let first = h.current_pid();
    program.set("slow");
    let (ok, out, err) = h.reload();
    program.set("ok");
    assert!(ok, "{out}{err}\n{}", h.log());
    assert_ne!(h.current_pid(), first);
    let after = ready_after(&mut h);
    no_failures(loads, &h);
    after
}

#[test]
fn an_exec_probe_that_checks_handover_pid_is_not_fooled_by_the_old_generation() {
    let program = Program::new();
    std::fs::write(program.dir.path().join("probe.py"), PROBE_PY).unwrap();
    let port = free_port();
    let probe = |extra: &str| {
        vec![
            "--bind".to_string(),
            format!("probe=tcp://127.0.0.1:{port}"),
            "--ready".into(),
            format!(
                "exec:python3 {} {port}{extra}",
                program.dir.path().join("probe.py").display()
            ),
        ]
    };
    // Every generation serves every socket, so the old one answers the
    // probe's request while the new one still loads: a probe that only
    // checks for an answer is fooled.
    // (The new generation cannot answer before 3 s: an earlier "ready" was
    // the old one's answer.)
    let fooled = reload_into_a_slow_generation(&program, probe(" --any"));
    eprintln!("a probe that takes any answer: ready after {fooled} ms");
    assert!(
        fooled < 3000.0,
        "the old generation did not answer the naive probe ({fooled} ms): the test proves nothing"
    );
    // One that checks the answer came from HANDOVER_PID is not.
    let checked = reload_into_a_slow_generation(&program, probe(""));
    eprintln!("a probe that checks HANDOVER_PID: ready after {checked} ms");
    assert!(checked >= 3000.0, "ready after {checked} ms");
}

#[test]
fn an_http_probe_accepts_only_an_answer_from_the_new_generation() {
    let program = Program::new();
    let after = reload_into_a_slow_generation(&program, vec!["--ready".into(), "http:/".into()]);
    eprintln!("http:/ on TCP: ready after {after} ms");
    assert!(after >= 3000.0, "ready after {after} ms");
    // The same on a Unix socket (named, so not the first one).
    let sock_dir = tempfile::tempdir().unwrap();
    let path = sock_dir.path().join("web.sock");
    let after = reload_into_a_slow_generation(
        &program,
        vec![
            "--bind".into(),
            format!("web=unix:{}", path.display()),
            "--ready".into(),
            "http:web/".into(),
        ],
    );
    eprintln!("http:web/ on a Unix socket: ready after {after} ms");
    assert!(after >= 3000.0, "ready after {after} ms");
}

/// `handover run ARGS -- PROGRAM` that is expected to exit (its first
/// generation never becomes ready): its exit status and stderr.
fn run_until_exit(program: &Program, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = support::KillOnDrop(
        std::process::Command::new(support::handover_bin())
            .arg("run")
            .args(args)
            .arg("--control")
            .arg(program.dir.path().join("ctl.sock"))
            .arg("--")
            .args(program.argv())
            .env("XDG_RUNTIME_DIR", program.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    (child.0.wait().unwrap(), err)
}

#[test]
fn an_http_probe_answered_with_an_error_status_says_which() {
    let program = Program::new();
    let (status, err) = run_until_exit(
        &program,
        &[
            "--bind",
            "web=tcp://127.0.0.1:0",
            "--ready",
            "http:/status/503",
            "--ready-timeout",
            "3s",
        ],
    );
    assert!(!status.success());
    assert!(
        err.contains("was not ready within 3s: the probe http:/status/503 never passed (last run: the probe http:/status/503 answered 503 Service Unavailable)"),
        "{err}"
    );
}

#[test]
fn an_http_probe_names_a_socket_that_does_not_exist_at_start() {
    let program = Program::new();
    let (status, err) = run_until_exit(
        &program,
        &[
            "--bind",
            "web=tcp://127.0.0.1:0",
            "--ready",
            "http:admin/health",
        ],
    );
    assert!(!status.success());
    assert!(
        err.contains("--ready http:admin/...: no stream socket (tcp:// or unix:) is named \"admin\"; expected one of: web"),
        "{err}"
    );
}
