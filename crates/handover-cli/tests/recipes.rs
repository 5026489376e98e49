//! The recipes in `recipes/`, run as their READMEs say (`start.sh` with
//! HANDOVER, PORT and CONTROL): each is reloaded 10 times under load, with a
//! new connection per request and with keep-alive connections, and not one
//! request may fail. Each test skips (printing why) when its runtime is not
//! installed; with HANDOVER_REQUIRE_RUNTIMES=1 (CI) it fails instead.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use handover_verify::{Load, LoadConfig, Mode};
use support::{Handover, runtime};

/// The repository's `recipes/` directory.
fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes")
}

/// Copies `from` into `to`, leaving out what a build or install leaves
/// behind (so tests running in parallel never share one).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if ["node_modules", "target", "server"]
            .iter()
            .any(|n| name == *n)
        {
            continue;
        }
        let dest = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// What a recipe needs: runtimes to check for, and extra environment.
struct Recipe {
    name: &'static str,
    /// (what, command that must exit 0, hint)
    needs: Vec<(&'static str, Vec<&'static str>, &'static str)>,
    env: Vec<(String, String)>,
    /// Run in place instead of in a copy (a workspace member).
    in_place: bool,
    /// How long the first start may take (it may build the server).
    start_timeout: Duration,
}

fn recipe(name: &str) -> Recipe {
    let python = |module: &'static str| {
        (
            module,
            vec![
                "python3",
                "-c",
                if module == "gunicorn" {
                    "import gunicorn"
                } else {
                    "import uvicorn"
                },
            ],
            "pip install -r requirements.txt (.ci/run does)",
        )
    };
    match name {
        "python-gunicorn" => Recipe {
            name: "python-gunicorn",
            needs: vec![python("gunicorn")],
            env: vec![],
            in_place: false,
            start_timeout: Duration::from_secs(60),
        },
        "python-uvicorn" => Recipe {
            name: "python-uvicorn",
            needs: vec![python("uvicorn")],
            env: vec![],
            in_place: false,
            start_timeout: Duration::from_secs(60),
        },
        "go" => Recipe {
            name: "go",
            needs: vec![
                (
                    "go",
                    vec!["go", "version"],
                    "apt-get install golang-go (.ci/run does)",
                ),
                (
                    "go-systemd (Debian's golang-github-coreos-go-systemd-dev)",
                    vec![
                        "test",
                        "-d",
                        "/usr/share/gocode/src/github.com/coreos/go-systemd/activation",
                    ],
                    "apt-get install golang-github-coreos-go-systemd-dev (.ci/run does)",
                ),
            ],
            // Offline, from Debian's packaged go-systemd (see the README).
            env: vec![
                ("GOFLAGS".into(), "-modfile=go.debian.mod".into()),
                ("GOPROXY".into(), "off".into()),
            ],
            in_place: false,
            start_timeout: Duration::from_secs(180),
        },
        "node" => Recipe {
            name: "node",
            needs: vec![
                ("node", vec!["node", "--version"], "Node 18.2 or later"),
                ("npm", vec!["npm", "--version"], "npm, to install sd-notify"),
                (
                    "libsystemd-dev and a C++ compiler (to build sd-notify)",
                    vec![
                        "sh",
                        "-c",
                        "test -f /usr/include/systemd/sd-daemon.h && command -v g++ && command -v make",
                    ],
                    "apt-get install libsystemd-dev g++ make (.ci/run does)",
                ),
            ],
            env: vec![],
            in_place: false,
            start_timeout: Duration::from_secs(180),
        },
        "ruby-puma" => Recipe {
            name: "ruby-puma",
            needs: vec![
                (
                    "puma",
                    vec!["puma", "--version"],
                    "apt-get install puma (.ci/run does)",
                ),
                (
                    "the sd_notify gem (Debian's ruby-sd-notify)",
                    vec!["ruby", "-e", "require 'sd_notify'"],
                    "apt-get install ruby-sd-notify (.ci/run does)",
                ),
            ],
            env: vec![],
            in_place: false,
            start_timeout: Duration::from_secs(60),
        },
        "rust-axum" => Recipe {
            name: "rust-axum",
            needs: vec![("cargo", vec!["cargo", "--version"], "cargo in PATH")],
            // A debug build: the workspace's test build has compiled its
            // dependencies already.
            env: vec![("PROFILE".into(), "dev".into())],
            in_place: true,
            start_timeout: Duration::from_secs(900),
        },
        other => panic!("no recipe {other}"),
    }
}

/// Starts a recipe with its `start.sh`, as its README says. `None` (after
/// printing why) when a runtime it needs is missing.
fn start(test: &str, r: &Recipe) -> Option<Handover> {
    for (what, argv, hint) in &r.needs {
        if !runtime::require_command(test, what, argv, hint) {
            return None;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let work = if r.in_place {
        recipes_dir().join(r.name)
    } else {
        let work = dir.path().join(r.name);
        copy_tree(&recipes_dir().join(r.name), &work);
        work
    };
    if r.name == "node" {
        // As the README says; start.sh would do it too, without the output.
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm ci failed (the npm registry must be reachable):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let control = dir.path().join("ctl.sock");
    // start.sh with its stdout on stderr, so the log has both (Puma, for
    // one, reports on stdout).
    let child = Command::new("sh")
        .args(["-c", "exec \"$0\" >&2"])
        .arg(work.join("start.sh"))
        .env("HANDOVER", support::handover_bin())
        .env("PORT", support::free_port().to_string())
        .env("CONTROL", &control)
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("RUST_LOG", "info")
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Some(Handover::adopt(dir, child, control, r.start_timeout))
}

/// 10 reloads under load; not one request may fail; then a clean stop.
fn ten_reloads(test: &str, name: &str, mode: Mode) {
    let r = recipe(name);
    let Some(mut h) = start(test, &r) else {
        return;
    };
    let mut cfg = LoadConfig::new(h.addr, mode);
    cfg.connections = 8;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(50, Duration::from_secs(30)),
        "no load got through:\n{}",
        h.log()
    );
    for i in 1..=10 {
        let before: BTreeSet<u32> = load.pids_seen();
        let (ok, out, err) = h.reload();
        assert!(ok, "reload {i} failed: {out}{err}\n{}", h.log());
        assert!(
            load.wait_for_new_pid(&before, Duration::from_secs(30))
                .is_some(),
            "no new process answered after reload {i}:\n{}",
            h.log()
        );
    }
    assert!(load.wait_for_ok(load.snapshot().ok + 50, Duration::from_secs(30)));
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{name}: failed requests during 10 reloads ({mode:?}):\n{}\nhandover log:\n{}",
        report.render_table(),
        h.log()
    );
    let s = h.wait_status(Duration::from_secs(10));
    assert_eq!(s["reloads"], 10, "{s}");
    assert_eq!(s["starts"], 11, "{s}");
    assert_eq!(s["failed_reloads"], 0, "{s}");
    // A clean stop: every generation exits 0 on the stop signal.
    let out = h.cli(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        h.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        h.log()
    );
    assert!(
        !h.log().contains("SIGKILL"),
        "a generation had to be killed:\n{}",
        h.log()
    );
}

macro_rules! recipe_tests {
    ($($name:literal => $new_conn:ident, $keep_alive:ident;)*) => {$(
        #[test]
        fn $new_conn() {
            ten_reloads(stringify!($new_conn), $name, Mode::NewConnection);
        }
        #[test]
        fn $keep_alive() {
            ten_reloads(stringify!($keep_alive), $name, Mode::KeepAlive);
        }
    )*};
}

recipe_tests! {
    "python-gunicorn" => gunicorn_ten_reloads_new_connection_per_request, gunicorn_ten_reloads_keep_alive;
    "python-uvicorn" => uvicorn_ten_reloads_new_connection_per_request, uvicorn_ten_reloads_keep_alive;
    "go" => go_ten_reloads_new_connection_per_request, go_ten_reloads_keep_alive;
    "node" => node_ten_reloads_new_connection_per_request, node_ten_reloads_keep_alive;
    "ruby-puma" => puma_ten_reloads_new_connection_per_request, puma_ten_reloads_keep_alive;
    "rust-axum" => axum_ten_reloads_new_connection_per_request, axum_ten_reloads_keep_alive;
}

/// The Puma pitfall the README documents: Puma's own restart (SIGUSR2,
/// which handover forwards) drops LISTEN_FDS; with the recipe's `bind` line
/// it takes the socket it inherited, instead of binding 0.0.0.0:9292.
#[test]
fn puma_restarting_itself_keeps_the_socket() {
    let test = "puma_restarting_itself_keeps_the_socket";
    let Some(mut h) = start(test, &recipe("ruby-puma")) else {
        return;
    };
    let pid = h.current_pid();
    h.signal(rustix::process::Signal::USR2);
    h.wait_log("Inherited tcp://127.0.0.1:", Duration::from_secs(30));
    let answer = support::http_get(h.addr, "/", Duration::from_secs(10));
    assert_eq!(support::pid_in(&answer), Some(pid), "{answer}\n{}", h.log());
    assert!(!h.log().contains("9292"), "{}", h.log());
}

// --- contrib/systemd -------------------------------------------------------

fn contrib(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The value of `key=` in a unit file, continuation lines joined.
fn unit_value(unit: &str, key: &str) -> String {
    let joined = unit.replace("\\\n", " ");
    joined
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_string()
}

/// A unit's command line as systemd would run it here: the binary under
/// test for /usr/local/bin/handover, `%t` resolved to `runtime`, the port
/// moved to `port` on 127.0.0.1, the program replaced by `program`.
fn command_line(unit: &str, key: &str, runtime: &Path, port: u16, program: &Path) -> Vec<String> {
    unit_value(unit, key)
        .split_whitespace()
        .map(|w| {
            w.replace("/usr/local/bin/handover", support::handover_bin())
                .replace("%t", &runtime.display().to_string())
                .replace("0.0.0.0:8080", &format!("127.0.0.1:{port}"))
                .replace("/srv/myapp/server", &program.display().to_string())
        })
        .collect()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let test = "systemd_units_pass_systemd_analyze_verify";
    if !runtime::require_program(test, "systemd-analyze", "apt-get install systemd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("server");
    std::fs::write(&program, "#!/bin/sh\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&program).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // The units as shipped, with paths that exist here (verify checks that
    // the commands are executable) and without User= (no such user here).
    for name in ["myapp.service", "myapp.socket"] {
        let unit = contrib(&format!("systemd/{name}"))
            .replace("/usr/local/bin/handover", support::handover_bin())
            .replace("/srv/myapp/server", &program.display().to_string())
            .replace("User=myapp\n", "")
            .replace("Group=myapp\n", "");
        std::fs::write(dir.path().join(name), unit).unwrap();
    }
    let version = Command::new("systemctl")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u32>().ok())
        })
        .unwrap_or(0);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("myapp.service"))
        .arg(dir.path().join("myapp.socket"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // systemd < 253 does not know Type=notify-reload and ReloadSignal= (the
    // unit says what to use there); anything else is a defect.
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !(version < 253 && (l.contains("notify-reload") || l.contains("ReloadSignal"))))
        .collect();
    assert!(
        out.status.success() && unexpected.is_empty(),
        "systemd-analyze verify (systemd {version}):\n{text}"
    );
    if version < 253 {
        println!(
            "systemd {version} < 253: Type=notify-reload and ReloadSignal= are not checked here"
        );
    }
}

/// The unit's ExecStart= under a real socket-activating parent
/// (systemd-socket-activate, with the socket unit's FileDescriptorName=),
/// its ExecReload=, the reload signal it sets (a no-op), and systemd's stop
/// (SIGTERM to the main process): the notify messages systemd would get.
#[test]
fn systemd_unit_commands_under_socket_activation() {
    let test = "systemd_unit_commands_under_socket_activation";
    if !runtime::require_program(test, "systemd-socket-activate", "apt-get install systemd")
        || !runtime::require_program(test, "python3", "the test server is Python")
    {
        return;
    }
    let service = contrib("systemd/myapp.service");
    let socket = contrib("systemd/myapp.socket");
    let fdname = unit_value(&socket, "FileDescriptorName");
    assert_eq!(unit_value(&service, "ReloadSignal"), "SIGCONT");
    assert_eq!(unit_value(&service, "KillMode"), "mixed");

    let dir = tempfile::tempdir().unwrap();
    let runtime_dir = dir.path().join("run");
    std::fs::create_dir(&runtime_dir).unwrap();
    // RuntimeDirectory=myapp
    std::fs::create_dir(runtime_dir.join(unit_value(&service, "RuntimeDirectory"))).unwrap();
    let program = support::write_server(dir.path());
    let port = support::free_port();
    let start = command_line(&service, "ExecStart", &runtime_dir, port, &program);
    let reload = command_line(&service, "ExecReload", &runtime_dir, port, &program);
    let env = unit_value(&service, "Environment").replace("%t", &runtime_dir.display().to_string());
    let notify = handover::notify::NotifySocket::bind(&dir.path().join("sd.sock")).unwrap();

    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args([
        "-l",
        &format!("127.0.0.1:{port}"),
        &format!("--fdname={fdname}"),
    ])
    .arg(format!(
        "--setenv=NOTIFY_SOCKET={}",
        notify.env_value().to_string_lossy()
    ))
    .arg(format!("--setenv={env}"))
    .args(&start)
    .env("SERVER_MARK_DIR", dir.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = support::KillOnDrop(cmd.spawn().unwrap());
    let main_pid = child.0.id();
    // systemd-socket-activate starts handover on the first connection.
    let first = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = support::http_get(
                format!("127.0.0.1:{port}").parse().unwrap(),
                "/",
                Duration::from_secs(30),
            );
            if !r.is_empty() || std::time::Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let next = |what: &str| {
        notify
            .recv_timeout(Some(Duration::from_secs(30)))
            .unwrap()
            .unwrap_or_else(|| panic!("no notify message: expected {what}"))
    };
    let ready = next("READY=1");
    assert!(ready.is_ready(), "{ready:?}");
    assert_eq!(
        ready.pid,
        Some(main_pid),
        "NotifyAccess=main: from the main pid"
    );
    let answer = first.join().unwrap();
    assert!(answer.contains("X-Fd-Names: http"), "{answer}");
    let first_pid = support::pid_in(&answer).unwrap();

    // ReloadSignal=SIGCONT: no reload.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(main_pid as i32).unwrap(),
        rustix::process::Signal::CONT,
    )
    .unwrap();
    // (handover may repeat READY=1 after its first start: not a reload.)
    while let Some(m) = notify
        .recv_timeout(Some(Duration::from_millis(500)))
        .unwrap()
    {
        assert!(!m.is_reloading(), "SIGCONT must not start a reload: {m:?}");
    }

    // ExecReload=: waits for the outcome; systemd hears RELOADING=1 with a
    // MONOTONIC_USEC= after the reload began, then READY=1.
    let began = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let began_usec = began.tv_sec as u64 * 1_000_000 + began.tv_nsec as u64 / 1000;
    let out = Command::new(&reload[0])
        .args(&reload[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ExecReload= failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloading = next("RELOADING=1");
    assert!(reloading.is_reloading(), "{reloading:?}");
    let usec: u64 = reloading.get("MONOTONIC_USEC").unwrap().parse().unwrap();
    assert!(
        usec >= began_usec,
        "MONOTONIC_USEC={usec} is before the reload ({began_usec})"
    );
    // STATUS= lines may come first (the settle window); then READY=1.
    loop {
        let m = next("READY=1");
        if m.is_ready() {
            break;
        }
        assert!(
            !m.is_reloading() && m.fields.iter().all(|(k, _)| k == "STATUS"),
            "expected READY=1 (or STATUS= first): {m:?}"
        );
    }
    // The new generation answers (the old one may finish a last request).
    let mut new_pid = first_pid;
    support::wait_until(
        "the new generation answers",
        Duration::from_secs(10),
        || {
            let answer = support::http_get(
                format!("127.0.0.1:{port}").parse().unwrap(),
                "/",
                Duration::from_secs(10),
            );
            new_pid = support::pid_in(&answer).unwrap_or(first_pid);
            new_pid != first_pid
        },
    );

    // Stop (KillMode=mixed: SIGTERM to the main process only).
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(main_pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(next("STOPPING=1").is_stopping());
    let mut child = child;
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "handover did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(support::gone(new_pid));
}

// --- contrib/container: --stop-delay for Kubernetes' endpoint removal -------

#[test]
fn stop_delay_serves_new_connections_after_sigterm() {
    let test = "stop_delay_serves_new_connections_after_sigterm";
    if !runtime::require_program(test, "python3", "the test server is Python") {
        return;
    }
    let mut h = Handover::start(support::Setup {
        options: vec!["--stop-delay".into(), "2s".into()],
        ..support::Setup::default()
    });
    let pid = h.current_pid();
    let asked = std::time::Instant::now();
    h.signal(rustix::process::Signal::TERM);
    // A load balancer that has not yet heard of the stop still sends new
    // connections: they are served, by the same generation.
    std::thread::sleep(Duration::from_millis(1000));
    let answer = support::http_get(h.addr, "/", Duration::from_secs(5));
    assert_eq!(support::pid_in(&answer), Some(pid), "{answer}\n{}", h.log());
    let status = h.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", h.log());
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "stopped before --stop-delay was over"
    );
    h.wait_log("serving on for --stop-delay", Duration::from_secs(1));
    assert!(support::gone(pid));
}

#[test]
fn a_second_sigterm_ends_the_stop_delay() {
    let test = "a_second_sigterm_ends_the_stop_delay";
    if !runtime::require_program(test, "python3", "the test server is Python") {
        return;
    }
    let mut h = Handover::start(support::Setup {
        options: vec!["--stop-delay".into(), "10m".into()],
        ..support::Setup::default()
    });
    h.signal(rustix::process::Signal::TERM);
    h.wait_log("serving on for --stop-delay", Duration::from_secs(10));
    // Status still answers during the delay.
    let s = h.wait_status(Duration::from_secs(10));
    assert_eq!(s["generations"].as_array().unwrap().len(), 1, "{s}");
    h.signal(rustix::process::Signal::TERM);
    let status = h.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", h.log());
}
