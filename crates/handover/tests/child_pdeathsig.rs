//! The death signal: a child started with one dies when its supervisor
//! process dies, and not merely because the thread that started it ended.
//!
//! The supervisor is this test binary run again as a helper process (see
//! `helper_supervisor`), which starts `sleep 60`, prints its pid and kills
//! itself with SIGKILL, as an out-of-memory killer would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handover::child::{ChildConfig, Signal};

const HELPER: &str = "HANDOVER_CHILD_PDEATHSIG_HELPER";

fn sleep60() -> handover::process::Command {
    let mut c = handover::process::Command::new("sleep");
    c.arg("60");
    c
}

/// The process state letter, or `None` when the pid is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 1..].trim_start().chars().next()
}

fn is_dead(pid: u32) -> bool {
    matches!(state(pid), None | Some('Z') | Some('X'))
}

/// Not a test of its own: the supervisor process of the tests below.
#[test]
fn helper_supervisor() {
    let Some(mode) = std::env::var_os(HELPER) else {
        return;
    };
    let death = (mode == "on").then_some(Signal::KILL);
    let child = ChildConfig::new()
        .death_signal(death)
        .spawn(sleep60())
        .expect("spawn");
    println!("child-pid={}", child.pid());
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
        .unwrap();
}

/// Runs the helper; returns the pid of the child it started.
fn run_supervisor(mode: &str) -> u32 {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_supervisor",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER, mode)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test helper_supervisor ... " before it.
            if let Some((_, pid)) = line.split_once("child-pid=") {
                let _ = tx.send(pid.trim().parse::<u32>().unwrap());
            }
        }
    });
    let pid = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the helper reports its child's pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = helper.try_wait().unwrap() {
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9),
                "the helper died of SIGKILL"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the helper did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    pid
}

#[test]
fn child_dies_with_its_supervisor_process() {
    let pid = run_supervisor("on");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_dead(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} outlived its supervisor: state {:?}",
            state(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn without_a_death_signal_the_child_outlives_its_supervisor() {
    let pid = run_supervisor("off");
    std::thread::sleep(Duration::from_millis(300));
    let alive = !is_dead(pid);
    // Clean up the orphan: it is alive, so the pid is still the `sleep`.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if alive && cmdline.starts_with(b"sleep\0") {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    assert!(alive, "pid {pid} died without a death signal");
}

#[test]
fn a_short_lived_spawning_thread_does_not_trigger_the_death_signal() {
    let config = ChildConfig::new()
        .death_signal(Some(Signal::KILL))
        .kill_timeout(Duration::from_secs(5))
        .kill_on_drop(true);
    let child = std::thread::spawn(move || config.spawn(sleep60()).unwrap())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.exited().is_none(), "{:?}", child.exited());
    assert_eq!(state(child.pid()).map(|s| s != 'Z'), Some(true));
    let exit = child.kill();
    assert_eq!(exit.status.signal(), Some(Signal::TERM));
}
