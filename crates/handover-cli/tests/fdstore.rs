//! Sockets survive a crash of handover itself when a service manager keeps
//! them: handover stores each socket it binds in the fd store (`FDSTORE=1`,
//! `FDNAME=handover.NAME`) and takes it back from `LISTEN_FDS` when it is
//! started again. The service manager is a stand-in for systemd
//! (`crates/handover/tests/common/standin.rs`) that keeps what it is sent
//! and passes it to the next process it starts, as systemd does with
//! `FileDescriptorStoreMax=` and `Restart=on-failure`. The same scenario
//! without the fd store runs next to it, for comparison.

#[path = "../../handover/tests/common/standin.rs"]
mod standin;
mod support;

use handover::process::{Command, Process, Stdio};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use handover_verify::{FailureKind, Load, LoadConfig, Mode, Report};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use standin::StandIn;
use support::{control_json, free_port, gone, handover_bin, http_get, pid_in, wait_until};

/// A `handover run` started by the stand-in; kills it and its generations
/// when dropped.
struct Run {
    child: Process,
    log: Arc<Mutex<Vec<String>>>,
    gens: Vec<u32>,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &g in &self.gens {
            if let Some(p) = Pid::from_raw(g as i32) {
                let _ = kill_process_group(p, Signal::KILL);
            }
        }
    }
}

impl Run {
    fn start(standin: &StandIn, dir: &Path, port: u16, extra: &[&str]) -> Run {
        let mut cmd = Command::new(handover_bin());
        cmd.arg("run")
            .arg("--bind")
            .arg(format!("http=tcp://127.0.0.1:{port}"))
            .arg("--control")
            .arg(dir.join("ctl.sock"))
            .args(["--orphan-signal", "SIGKILL"])
            .args(extra)
            .args(["--", handover_bin(), "demo-server"])
            .env("XDG_RUNTIME_DIR", dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = standin.spawn(cmd).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut run = Run {
            child,
            log,
            gens: Vec::new(),
        };
        let pid = run.child.id();
        // Ready as systemd sees it: READY=1 from handover itself.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !standin
            .messages()
            .iter()
            .any(|m| m.pid == Some(pid) && m.text.contains("READY=1"))
        {
            if let Ok(Some(s)) = run.child.try_wait() {
                panic!("handover exited ({s}):\n{}", run.log());
            }
            assert!(
                Instant::now() < deadline,
                "handover never said READY=1:\n{}",
                run.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let g = run.generation(dir);
        run.gens.push(g);
        run
    }

    fn generation(&self, dir: &Path) -> u32 {
        let status = control_json(&dir.join("ctl.sock"), "status", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no status:\n{}", self.log()));
        status["generations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["current"] == true)
            .and_then(|g| g["pid"].as_u64())
            .unwrap_or_else(|| panic!("no current generation: {status}")) as u32
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Inodes of the sockets `pid` holds.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let t = std::fs::read_link(e.path()).ok()?;
                    let t = t.to_str()?;
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Outcome {
    report: Report,
    /// Answers to the requests sent while nothing accepted (empty: failed).
    gap: Vec<String>,
    /// The socket's inode before the crash, and whether handover holds it
    /// after the restart.
    same_socket: bool,
}

/// handover under load, SIGKILLed; requests sent while nothing runs; then
/// started again by the stand-in.
fn crash_and_restart(keep: bool) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let standin = StandIn::start(&dir.path().join("notify.sock"), keep);
    let port = free_port();
    let mut first = Run::start(&standin, dir.path(), port, &[]);
    let handover = first.child.id();
    let app = first.gens[0];
    // The listening socket: the one in the store (handover.http), if kept.
    let inode = if keep {
        let ino = standin.wait_stored("handover.http", Duration::from_secs(10));
        assert!(socket_inodes(handover).contains(&ino));
        Some(ino)
    } else {
        None
    };
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = LoadConfig::new(addr, Mode::NewConnection);
    cfg.connections = 8;
    let load = Load::start(cfg).unwrap();
    assert!(
        load.wait_for_ok(100, Duration::from_secs(30)),
        "{}",
        first.log()
    );

    // The crash: handover and (through its orphan signal) its generation.
    kill_process(Pid::from_raw(handover as i32).unwrap(), Signal::KILL).unwrap();
    first.child.wait().unwrap();
    wait_until("the generation is gone", Duration::from_secs(10), || {
        gone(app)
    });
    // Nothing accepts now. Requests made meanwhile:
    let gap: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || http_get(addr, "/", Duration::from_secs(30))))
        .collect();
    // The service manager's restart delay.
    std::thread::sleep(Duration::from_millis(500));
    let second = Run::start(&standin, dir.path(), port, &[]);
    let restarted = second.gens[0];
    let gap: Vec<String> = gap.into_iter().map(|t| t.join().unwrap()).collect();
    let same_socket = match inode {
        Some(ino) => socket_inodes(second.child.id()).contains(&ino),
        None => false,
    };
    if keep {
        // Still one socket in the store, not one per start.
        assert_eq!(
            standin.stored().len(),
            1,
            "{:?}\n{}",
            standin.stored(),
            second.log()
        );
        // A re-exec under the service manager: same main pid, READY=1 again.
        let before = standin.messages().len();
        let out = std::process::Command::new(handover_bin())
            .args(["reexec", "--control"])
            .arg(dir.path().join("ctl.sock"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}\n{}", second.log());
        let after = standin.wait_message(Duration::from_secs(10), |m| {
            m.text.contains("READY=1") && m.pid == Some(second.child.id())
        });
        assert!(standin.messages().len() > before, "{after:?}");
        assert!(
            standin.messages()[before..]
                .iter()
                .all(|m| m.pid == Some(second.child.id())),
            "{:?}",
            standin.messages()
        );
        assert_eq!(standin.stored().len(), 1);
    }
    let ok = load.snapshot().ok;
    assert!(
        load.wait_for_ok(ok + 100, Duration::from_secs(30)),
        "the load got no answers after the restart:\n{}",
        second.log()
    );
    assert!(load.pids_seen().contains(&restarted));
    Outcome {
        report: load.stop(),
        gap,
        same_socket,
    }
}

#[test]
fn a_killed_handover_restarted_with_its_stored_socket_refuses_nothing_and_without_the_store_it_does()
 {
    let with = crash_and_restart(true);
    let without = crash_and_restart(false);
    let table = format!(
        "with the fd store:\n{}\nwithout:\n{}",
        with.report.render_table(),
        without.report.render_table()
    );
    eprintln!("{table}");

    // With the store: the same socket, no connection refused, the requests
    // made while nothing ran were answered by the restarted generation,
    // and the only failures are requests the killed generation was
    // serving (at most one per client).
    assert!(with.same_socket, "not the same socket");
    assert_eq!(with.report.failures_of(FailureKind::Refused), 0, "{table}");
    assert_eq!(with.report.failures_of(FailureKind::Timeout), 0, "{table}");
    assert!(
        with.report.failures_total() <= 8,
        "more failures than requests in flight:\n{table}"
    );
    for answer in &with.gap {
        assert!(
            answer.starts_with("HTTP/1.1 200") && pid_in(answer).is_some(),
            "a request made while nothing accepted was not answered: {answer:?}"
        );
    }

    // Without: the same crash refuses connections until handover binds
    // the port again.
    assert!(
        without.report.failures_of(FailureKind::Refused) > 0,
        "without the fd store nothing was refused?\n{table}"
    );
    assert!(
        without.gap.iter().all(|a| a.is_empty()),
        "a request made while nothing accepted was answered without the fd store: {:?}",
        without.gap
    );
}

#[test]
fn no_fd_store_sends_nothing_and_a_moved_bind_replaces_the_stored_socket() {
    let dir = tempfile::tempdir().unwrap();
    let standin = StandIn::start(&dir.path().join("notify.sock"), true);
    let run = Run::start(&standin, dir.path(), free_port(), &["--no-fd-store"]);
    assert!(standin.stored().is_empty());
    assert!(
        !standin.messages().iter().any(|m| m.fds > 0),
        "{:?}",
        standin.messages()
    );
    drop(run);
    // Stored for one port, started again for another: the stored socket is
    // dropped from the store and a new one bound and stored.
    let port = free_port();
    let run = Run::start(&standin, dir.path(), port, &[]);
    let old = standin.wait_stored("handover.http", Duration::from_secs(10));
    drop(run);
    let other = free_port();
    let run = Run::start(&standin, dir.path(), other, &[]);
    wait_until(
        "the stored socket was replaced",
        Duration::from_secs(10),
        || {
            let s = standin.stored();
            s.len() == 1 && s[0].1 != old
        },
    );
    assert!(
        run.log().contains("not the one --bind asks for"),
        "{}",
        run.log()
    );
    let answer = http_get(
        format!("127.0.0.1:{other}").parse().unwrap(),
        "/",
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}
