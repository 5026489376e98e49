//! In-place re-execution (`handover::reexec`) with real processes: the
//! `reexec_inplace` example under load, and a probe process that execs
//! itself on command.
//!
//! `harness = false`: an in-place exec must run on the main thread, and
//! libtest runs tests on threads of its own. So `main` plays a role when
//! `HANDOVER_TEST_ROLE` says so, and otherwise runs the tests below one
//! after the other, each in a child process of its own.

#[path = "../examples/reexec_inplace.rs"]
#[allow(dead_code)]
mod example;

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{Guard, ROLE};
use handover::child::Signal;
use handover::reexec::{Kept, Reexec, ReexecError, SignalHold, release_signals};
use handover_verify::{Load, LoadConfig, Mode};
use rustix::process::{Pid, kill_process};

const IMAGE: &str = "HANDOVER_TEST_IMAGE";
const EXPECT_USR1: &str = "HANDOVER_TEST_EXPECT_USR1";

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("example") => {
            let args = std::env::var("HANDOVER_TEST_ARGS").unwrap_or_default();
            if let Err(e) = example::run(args.split_whitespace().map(String::from).collect()) {
                eprintln!("reexec_inplace: {e}");
                std::process::exit(1);
            }
            return;
        }
        Ok("probe") => return probe(),
        _ => {}
    }
    let tests: [(&str, fn()); 5] = [
        (
            "the_example_upgrades_in_place_under_load_without_a_failed_request",
            the_example_upgrades_in_place_under_load_without_a_failed_request,
        ),
        (
            "an_exec_keeps_the_pid_and_the_named_fds_and_closes_the_rest",
            an_exec_keeps_the_pid_and_the_named_fds_and_closes_the_rest,
        ),
        (
            "a_failed_exec_changes_nothing",
            a_failed_exec_changes_nothing,
        ),
        (
            "an_exec_off_the_main_thread_is_refused",
            an_exec_off_the_main_thread_is_refused,
        ),
        (
            "a_signal_held_across_the_exec_reaches_the_new_image",
            a_signal_held_across_the_exec_reaches_the_new_image,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut failed, mut passed) = (0, 0);
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("ok");
                passed += 1;
            }
            Err(_) => {
                println!("FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

// ------------------------------------------------------------- the probe

/// Prints `report: KEY=VALUE ...` about this image, then obeys commands on
/// stdin: `exec`, `exec-missing`, `exec-thread`, `exec-usr1`, `accept`.
fn probe() {
    let mut kept = Kept::from_env().expect("Kept::from_env");
    let image: u32 = std::env::var(IMAGE)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let listener = match kept.take("listener") {
        Ok(fd) => std::net::TcpListener::from(fd),
        Err(e) if e.is_not_found() => std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Err(e) => panic!("{e}"),
    };
    let usr1 = if std::env::var_os(EXPECT_USR1).is_some() {
        // The handler first, then the signal held across the exec arrives.
        let got = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = got.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let seen = rt.block_on(async move {
            let mut s =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                    .unwrap();
            release_signals(&[Signal::USR1]).unwrap();
            let seen = tokio::time::timeout(Duration::from_secs(5), s.recv())
                .await
                .is_ok();
            flag.store(seen, std::sync::atomic::Ordering::SeqCst);
            seen
        });
        Some(seen && got.load(std::sync::atomic::Ordering::SeqCst))
    } else {
        None
    };
    let inode = rustix::fs::fstat(&listener).unwrap().st_ino;
    let high_fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            // Not the listing's own descriptor.
            (fd > 2 && !target.starts_with("/proc")).then(|| target.display().to_string())
        })
        .collect();
    println!(
        "report: image={image} pid={} port={} inode={inode} usr1={} fds={}",
        std::process::id(),
        listener.local_addr().unwrap().port(),
        match usr1 {
            Some(true) => "seen",
            Some(false) => "missing",
            None => "-",
        },
        high_fds.join(",")
    );
    // An inheritable descriptor that is not kept: the exec must close it.
    let leak = std::fs::File::open("/dev/zero").unwrap();
    rustix::io::fcntl_setfd(&leak, rustix::io::FdFlags::empty()).unwrap();
    let program = std::env::current_exe().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let next = |image: u32| {
            let mut r = Reexec::new(&program);
            r.env(ROLE, "probe").env(IMAGE, image.to_string());
            r
        };
        match line.trim() {
            "exec" => {
                let mut r = next(image + 1);
                r.fd("listener", listener.as_fd()).unwrap();
                println!("report: error={}", r.exec());
            }
            "exec-missing" => {
                let mut r = Reexec::new("/nonexistent/handover-test");
                r.fd("listener", listener.as_fd()).unwrap();
                let e = r.exec();
                let cloexec = |fd: std::os::fd::BorrowedFd<'_>| {
                    rustix::io::fcntl_getfd(fd)
                        .unwrap()
                        .contains(rustix::io::FdFlags::CLOEXEC)
                };
                println!(
                    "report: missing={} kept_cloexec={} leak_cloexec={} same_pid={}",
                    matches!(e, ReexecError::Exec { .. }) && e.to_string().contains("No such file"),
                    cloexec(listener.as_fd()),
                    cloexec(leak.as_fd()),
                    rustix::process::getpid().as_raw_nonzero().get() as u32 == std::process::id(),
                );
            }
            "exec-thread" => {
                let mut r = next(image + 1);
                r.fd("listener", listener.as_fd()).unwrap();
                let e = std::thread::scope(|s| s.spawn(|| r.exec()).join().unwrap());
                println!(
                    "report: thread_refused={}",
                    matches!(e, ReexecError::NotMainThread { .. })
                );
            }
            "exec-usr1" => {
                let _held = SignalHold::block(&[Signal::USR1]).unwrap();
                kill_process(rustix::process::getpid(), rustix::process::Signal::USR1).unwrap();
                let mut r = next(image + 1);
                r.env(EXPECT_USR1, "1");
                r.fd("listener", listener.as_fd()).unwrap();
                println!("report: error={}", r.exec());
            }
            "accept" => {
                let (mut s, _) = listener.accept().unwrap();
                let _ = s.write_all(format!("image={image}\n").as_bytes());
            }
            other => panic!("unknown command {other:?}"),
        }
        let _ = std::io::stdout().flush();
    }
}

struct Probe {
    guard: Guard,
    stdin: ChildStdin,
    reports: Receiver<String>,
}

impl Probe {
    fn start() -> Probe {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, "probe")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = Guard(cmd.spawn().unwrap());
        let stdin = guard.0.stdin.take().unwrap();
        let reports = common::report_stream(&mut guard);
        Probe {
            guard,
            stdin,
            reports,
        }
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
    }

    fn report(&self) -> String {
        self.reports
            .recv_timeout(Duration::from_secs(20))
            .expect("no report from the probe")
    }
}

fn field<'a>(report: &'a str, key: &str) -> &'a str {
    report
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
}

// ----------------------------------------------------------------- tests

fn an_exec_keeps_the_pid_and_the_named_fds_and_closes_the_rest() {
    let mut p = Probe::start();
    let first = p.report();
    let pid = p.guard.0.id().to_string();
    assert_eq!(field(&first, "pid"), pid);
    let port: u16 = field(&first, "port").parse().unwrap();
    // A connection waits in the queue while the image is replaced.
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut second: Option<String> = None;
    for image in 2..=4 {
        p.send("exec");
        let r = p.report();
        assert_eq!(field(&r, "image"), image.to_string(), "{r}");
        assert_eq!(field(&r, "pid"), pid, "{r}");
        assert_eq!(field(&r, "inode"), field(&first, "inode"), "{r}");
        // The one kept socket, and nothing else of the old image (not its
        // inheritable /dev/zero). The first image may have inherited
        // descriptors from the test runner; the exec closed those too.
        assert_eq!(
            field(&r, "fds"),
            format!("socket:[{}]", field(&first, "inode")),
            "{r}"
        );
        assert!(!r.contains("/dev/zero"), "{r}");
        second.get_or_insert(r);
    }
    p.send("accept");
    let mut got = String::new();
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    waiting.read_to_string(&mut got).unwrap();
    assert_eq!(got, "image=4\n");
}

fn a_failed_exec_changes_nothing() {
    let mut p = Probe::start();
    let first = p.report();
    p.send("exec-missing");
    let r = p.report();
    assert_eq!(
        r.trim(),
        "missing=true kept_cloexec=true leak_cloexec=false same_pid=true"
    );
    // And it can still exec for real afterwards.
    p.send("exec");
    let r = p.report();
    assert_eq!(field(&r, "image"), "2");
    assert_eq!(field(&r, "inode"), field(&first, "inode"));
}

fn an_exec_off_the_main_thread_is_refused() {
    let mut p = Probe::start();
    p.report();
    p.send("exec-thread");
    assert_eq!(p.report().trim(), "thread_refused=true");
    // Still alive and well: the main thread can.
    p.send("exec");
    assert_eq!(field(&p.report(), "image"), "2");
}

fn a_signal_held_across_the_exec_reaches_the_new_image() {
    // SIGUSR1's default action ends the process: the new image survives it
    // only because it stayed blocked until its handler was installed.
    let mut p = Probe::start();
    p.report();
    p.send("exec-usr1");
    let r = p.report();
    assert_eq!(field(&r, "image"), "2", "{r}");
    assert_eq!(field(&r, "usr1"), "seen", "{r}");
    assert!(p.guard.0.try_wait().unwrap().is_none());
}

fn the_example_upgrades_in_place_under_load_without_a_failed_request() {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, "example")
        .env("HANDOVER_TEST_ARGS", "--listen 127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = Guard(cmd.spawn().unwrap());
    let mut line = String::new();
    let mut out = BufReader::new(guard.0.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Each image says where it listens; keep reading.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr: SocketAddr = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    let pid = guard.0.id();
    let mut cfg = LoadConfig::new(addr, Mode::NewConnection);
    cfg.connections = 4;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(50, Duration::from_secs(20)));
    let image = |want: u32| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let body = get(addr);
            if body == format!("pid={pid} image={want}\n") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "image {want} never answered: {body:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for n in 2..=6 {
        kill_process(
            Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::HUP,
        )
        .unwrap();
        image(n);
    }
    let ok = load.snapshot().ok;
    assert!(load.wait_for_ok(ok + 50, Duration::from_secs(20)));
    let report = load.stop();
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
    assert_eq!(report.distinct_pids(), 1, "{}", report.render_table());
}

fn get(addr: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}
