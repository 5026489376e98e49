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
    assert_eq!(s["reloads"], 11, "{s}");
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
