//! Child supervision with real processes.
//!
//! Tests run in parallel on small machines: every wait has a deadline, and
//! every child is killed by a guard even when an assertion fails.

mod common;

use handover::process::{Command, Stdio};
use std::io::{BufRead, BufReader, Read};
use std::ops::Deref;
use std::os::fd::AsFd;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use handover::activation::Activation;
use handover::child::{
    Child, ChildConfig, ChildError, Exit, ExitStatus, ParseSignalError, Report, Signal,
};

/// Grandchildren orphaned by a killed child are reparented to init, or to
/// us when we are a subreaper. The init of some sandboxes never reaps, so a
/// supervisor should be a subreaper; the library then reaps the members of
/// a group it killed.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        common::become_subreaper();
    });
}

/// Kills the child's whole group and reaps it when dropped, whatever
/// happened in the test.
struct Guard(Arc<Child>);

impl Guard {
    fn new(child: Child) -> Guard {
        Guard(Arc::new(child))
    }
}

impl Deref for Guard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.signal(Signal::KILL);
        if self.0.wait_timeout(Duration::from_secs(10)).is_none() {
            eprintln!("guard: {} did not end after SIGKILL", self.0.label());
        }
    }
}

fn config() -> ChildConfig {
    setup();
    ChildConfig::new()
        .kill_timeout(Duration::from_secs(5))
        .kill_on_drop(true)
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

/// Lines of a child's stdout, read on a thread of their own.
fn lines(child: &mut Child) -> Receiver<String> {
    let out = child.take_stdout().expect("stdout was piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn expect_line(rx: &Receiver<String>, want: &str) {
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => assert_eq!(line, want),
        Err(RecvTimeoutError::Timeout) => panic!("no {want:?} from the child within 10 s"),
        Err(RecvTimeoutError::Disconnected) => panic!("the child closed stdout before {want:?}"),
    }
}

/// Spawns a shell script that prints `ready` once its traps are set.
fn spawn_ready(config: &ChildConfig, script: &str) -> (Guard, Receiver<String>) {
    let mut cmd = sh(script);
    cmd.stdout(Stdio::piped());
    let mut child = config.spawn(cmd).expect("spawn");
    let rx = lines(&mut child);
    expect_line(&rx, "ready");
    (Guard::new(child), rx)
}

/// `(pid, state)` of every process whose process group is `pgid`.
fn group_processes(pgid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for (pid, stat) in common::proc_stats() {
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) {
            out.push((pid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

#[test]
fn child_that_traps_term_exits_cleanly() {
    let config = config();
    let (child, _rx) = spawn_ready(
        &config,
        "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let started = Instant::now();
    let exit = child.kill();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_eq!(exit.status, ExitStatus::Code(0));
    assert!(exit.requested && !exit.timed_out);
    assert_eq!(child.wait(), Report::Exited(exit));
    assert_eq!(child.exited(), Some(exit));
}

#[test]
fn child_that_ignores_term_is_killed_after_the_timeout() {
    let timeout = Duration::from_millis(500);
    let config = config().kill_timeout(timeout);
    let (child, _rx) = spawn_ready(
        &config,
        "trap '' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let started = Instant::now();
    let exit = child.kill();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_millis(1500),
        "took {elapsed:?}, expected the kill timeout {timeout:?} plus a little"
    );
    assert_eq!(
        exit.status,
        ExitStatus::Signaled {
            signal: Signal::KILL,
            core_dumped: false
        }
    );
    assert!(exit.requested);
}

#[test]
fn kill_leaves_no_process_of_the_group() {
    let config = config().kill_timeout(Duration::from_millis(300));
    // Two grandchildren, one of which ignores SIGTERM; a great-grandchild.
    let (child, _rx) = spawn_ready(
        &config,
        "sleep 60 & (trap '' TERM; sleep 60) & sh -c 'sleep 60 & wait' & \
         sleep 0.2; echo ready; wait",
    );
    let pgid = child.pgid().expect("own group by default");
    assert_eq!(pgid, child.pid());
    let before = group_processes(pgid);
    assert!(
        before.len() >= 5,
        "expected the shell, its grandchildren and a great-grandchild: {before:?}"
    );
    let exit = child.kill();
    assert!(exit.requested);
    let after = group_processes(pgid);
    assert!(after.is_empty(), "left in group {pgid}: {after:?}");
}

#[test]
fn leader_that_exits_gracefully_gives_the_group_its_time() {
    // The leader exits at once on SIGTERM; its grandchild takes 300 ms to
    // finish on SIGTERM. The grandchild must not be SIGKILLed early.
    let config = config().kill_timeout(Duration::from_secs(5));
    let (child, rx) = spawn_ready(
        &config,
        "(trap 'sleep 0.3; echo grandchild-done; exit 0' TERM; while :; do sleep 0.05; done) & \
         trap 'exit 0' TERM; sleep 0.2; echo ready; while :; do sleep 0.05; done",
    );
    let pgid = child.pgid().unwrap();
    let started = Instant::now();
    let exit = child.kill();
    let elapsed = started.elapsed();
    assert_eq!(exit.status, ExitStatus::Code(0));
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
        "took {elapsed:?}"
    );
    expect_line(&rx, "grandchild-done");
    assert!(group_processes(pgid).is_empty());
}

#[test]
fn splay_delays_kill_by_a_varying_amount_below_the_splay() {
    let splay = Duration::from_millis(50);
    let config = config().splay(splay);
    let mut delays = Vec::new();
    for _ in 0..20 {
        let child = Guard::new(config.spawn(sleep60()).unwrap());
        let started = Instant::now();
        let exit = child.kill();
        delays.push(started.elapsed());
        assert_eq!(exit.status.signal(), Some(Signal::TERM));
    }
    let min = *delays.iter().min().unwrap();
    let max = *delays.iter().max().unwrap();
    // Splay plus the time to signal and reap `sleep` (a few ms; more when
    // the machine is busy).
    assert!(
        max < splay + Duration::from_millis(150),
        "a delay exceeded the splay: {delays:?}"
    );
    assert!(
        max - min > Duration::from_millis(5),
        "the delay looks constant: {delays:?}"
    );
}

fn sleep60() -> Command {
    let mut c = Command::new("sleep");
    c.arg("60");
    c
}

#[test]
fn a_stopped_child_is_continued_so_it_can_act_on_the_kill_signal() {
    let config = config().kill_timeout(Duration::from_secs(20));
    let (child, _rx) = spawn_ready(
        &config,
        "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    );
    child.signal(Signal::STOP).unwrap();
    // Wait until the group is stopped. (The shell itself may show `D`: a
    // vfork parent waits for its stopped child to exec.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while !group_processes(child.pid()).iter().any(|(_, s)| *s == 'T') {
        assert!(
            Instant::now() < deadline,
            "not stopped: {:?}",
            group_processes(child.pid())
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let exit = child.kill();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(exit.status, ExitStatus::Code(0));
}

#[test]
fn processes_left_behind_by_a_natural_exit_are_killed_by_stop() {
    let config = config();
    let mut cmd = sh("sleep 60 & echo ready");
    cmd.stdout(Stdio::piped());
    let mut child = config.spawn(cmd).unwrap();
    let rx = lines(&mut child);
    let child = Guard::new(child);
    expect_line(&rx, "ready");
    let pgid = child.pgid().unwrap();
    let report = child.wait_timeout(Duration::from_secs(10)).expect("ended");
    assert!(
        matches!(report, Report::Exited(e) if e.status.success()),
        "{report:?}"
    );
    assert!(
        group_processes(pgid).iter().any(|(_, s)| *s != 'Z'),
        "the background sleep is left running"
    );
    let exit = child.stop();
    assert!(!exit.requested, "it had ended on its own");
    assert_eq!(child.report(), Some(report), "the report stands");
    assert_eq!(
        group_processes(pgid),
        [],
        "the leftover was killed and reaped"
    );
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Child>();
    check::<handover::child::ExitFuture>();
    check::<ChildConfig>();
    check::<ChildError>();
}

#[test]
fn no_splay_when_dead_or_immediate() {
    let config = config().splay(Duration::from_secs(5));
    // Already dead: no splay.
    let child = Guard::new(config.spawn(Command::new("true")).unwrap());
    assert!(child.wait_timeout(Duration::from_secs(10)).is_some());
    let started = Instant::now();
    let exit = child.kill();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(exit.status, ExitStatus::Code(0));
    assert!(!exit.requested, "it ended on its own");
    // stop_immediately: no splay.
    let child = Guard::new(config.spawn(sleep60()).unwrap());
    let started = Instant::now();
    child.stop_immediately();
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn stop_immediately_cuts_a_splay_in_progress() {
    let config = config().splay(Duration::from_secs(20));
    let child = Guard::new(config.spawn(sleep60()).unwrap());
    let started = Instant::now();
    let slow = {
        let child = Arc::clone(&child.0);
        std::thread::spawn(move || child.stop())
    };
    std::thread::sleep(Duration::from_millis(50));
    let fast = child.stop_immediately();
    let slow = slow.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fast, slow);
    assert_eq!(child.wait(), Report::Stopped);
}

#[test]
fn stop_is_idempotent_and_concurrent() {
    let config = config().splay(Duration::from_millis(30));
    let child = Guard::new(config.spawn(sleep60()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let child = Arc::clone(&child.0);
            std::thread::spawn(move || child.stop())
        })
        .collect();
    let exits: Vec<Exit> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(exits.iter().all(|e| *e == exits[0]), "{exits:?}");
    assert_eq!(exits[0].status.signal(), Some(Signal::TERM));
    assert!(exits[0].requested);
    assert_eq!(child.stop(), exits[0]);
    assert_eq!(child.report(), Some(Report::Stopped));
}

#[test]
fn a_child_that_exits_on_its_own_is_reported_once() {
    let config = config();
    let child = Guard::new(config.spawn(sh("exit 7")).unwrap());
    let report = child.wait_timeout(Duration::from_secs(10)).expect("ended");
    let Report::Exited(exit) = report else {
        panic!("{report:?}")
    };
    assert_eq!(exit.status, ExitStatus::Code(7));
    assert!(!exit.requested);
    // Stopping afterwards changes nothing and signals nobody.
    assert_eq!(child.stop(), exit);
    assert_eq!(child.report(), Some(report));
    child
        .signal(Signal::TERM)
        .expect("an ended child is not an error");
}

#[test]
fn signals_reach_the_whole_group_and_reload_sends_the_reload_signal() {
    let config = config()
        .reload_signal(Signal::USR1)
        .splay(Duration::from_millis(20));
    let (child, rx) = spawn_ready(
        &config,
        "(trap '' USR1; trap 'echo grandchild-usr2' USR2; while :; do sleep 0.05; done) & \
         trap 'echo reloaded' USR1; trap 'echo usr2' USR2; sleep 0.2; echo ready; \
         while :; do sleep 0.05; done",
    );
    child.reload().unwrap();
    expect_line(&rx, "reloaded");
    child.signal(Signal::USR2).unwrap();
    let mut got = vec![
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
    ];
    got.sort();
    assert_eq!(got, ["grandchild-usr2", "usr2"]);
    child.stop_immediately();
}

#[test]
fn without_a_group_only_the_child_is_signalled() {
    let config = config().process_group(false);
    let child = Guard::new(config.spawn(sleep60()).unwrap());
    assert_eq!(child.pgid(), None);
    let pgrp =
        rustix::process::getpgid(rustix::process::Pid::from_raw(child.pid() as i32)).unwrap();
    assert_eq!(pgrp, rustix::process::getpgrp(), "stays in our group");
    let exit = child.kill();
    assert_eq!(exit.status.signal(), Some(Signal::TERM));
}

#[test]
fn execution_timeout_kills_a_long_command() {
    let timeout = Duration::from_millis(300);
    let config = config().execution_timeout(Some(timeout));
    let started = Instant::now();
    let err = config.run(sleep60()).unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert!(matches!(err, ChildError::TimedOut { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("sleep 60") && msg.contains("300ms") && msg.contains("raise the timeout"),
        "{msg}"
    );
    // And for a supervised child, the report says so.
    let child = Guard::new(config.spawn(sleep60()).unwrap());
    let Some(Report::Exited(exit)) = child.wait_timeout(Duration::from_secs(10)) else {
        panic!("not ended by its execution timeout");
    };
    assert!(exit.timed_out && exit.requested);
}

#[test]
fn one_shot_results() {
    let config = config().execution_timeout(Some(Duration::from_secs(20)));
    assert!(config.run(Command::new("true")).unwrap().status.success());
    let err = config.run(sh("exit 3")).unwrap_err();
    assert!(
        matches!(
            err,
            ChildError::Failed {
                status: ExitStatus::Code(3),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("exited with code 3"), "{err}");
}

#[test]
fn unknown_program_names_it_and_the_path() {
    let mut cmd = Command::new("handover-no-such-program");
    cmd.env("PATH", "/nonexistent:/usr/bin");
    let err = config().spawn(cmd).unwrap_err();
    assert!(matches!(err, ChildError::ProgramNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"handover-no-such-program\"")
            && msg.contains("PATH=/nonexistent:/usr/bin")
            && msg.contains("full path"),
        "{msg}"
    );
    let err = config()
        .spawn(Command::new("/nonexistent/dir/prog"))
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir/prog"), "{err}");
}

#[test]
fn program_that_is_not_executable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script");
    std::fs::write(&path, "#!/bin/sh\necho hi\n").unwrap();
    let err = config().spawn(Command::new(&path)).unwrap_err();
    assert!(matches!(err, ChildError::NotExecutable { .. }), "{err:?}");
    assert!(err.to_string().contains("chmod +x"), "{err}");
}

#[test]
fn script_with_missing_interpreter() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script");
    std::fs::write(&path, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = config().spawn(Command::new(&path)).unwrap_err();
    assert!(err.to_string().contains("interpreter"), "{err}");
}

#[test]
fn bad_working_directory_is_named() {
    let mut cmd = Command::new("true");
    cmd.current_dir("/nonexistent/handover-dir");
    let err = config().spawn(cmd).unwrap_err();
    assert!(matches!(err, ChildError::BadDirectory { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"/nonexistent/handover-dir\"") && msg.contains("does not exist"),
        "{msg}"
    );
    let mut cmd = Command::new("true");
    cmd.current_dir("/etc/passwd");
    let msg = config().spawn(cmd).unwrap_err().to_string();
    assert!(msg.contains("is not a directory"), "{msg}");
}

#[test]
fn named_fds_arrive_at_3_with_the_childs_own_pid() {
    use std::os::unix::fs::MetadataExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inode = std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&listener)
    ))
    .map(|m| m.ino())
    .unwrap_or(0);
    let mut fds = Activation::new();
    fds.fd("http", listener.as_fd()).unwrap();
    let mut cmd = sh("echo $LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES; ls -l /proc/$$/fd");
    cmd.stdout(Stdio::piped());
    let mut child = config().spawn_with_fds(cmd, &fds).unwrap();
    let mut out = String::new();
    let mut stdout = child.take_stdout().unwrap();
    let child = Guard::new(child);
    let reader = std::thread::spawn(move || stdout.read_to_string(&mut out).map(|_| out));
    assert!(child.wait_timeout(Duration::from_secs(10)).is_some());
    let out = reader.join().unwrap().unwrap();
    let first: Vec<&str> = out.lines().next().unwrap().split(' ').collect();
    assert_eq!(
        first[0], first[1],
        "LISTEN_PID is the child's own pid: {out}"
    );
    assert_eq!(first[0], child.pid().to_string());
    assert_eq!(&first[2..], ["1", "http"]);
    let fd_lines: Vec<&str> = out.lines().filter(|l| l.contains(" -> ")).collect();
    let numbers: Vec<&str> = fd_lines
        .iter()
        .map(|l| l.split(" -> ").next().unwrap().rsplit(' ').next().unwrap())
        .collect();
    let mut sorted = numbers.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["0", "1", "2", "3"],
        "nothing else inherited: {out}"
    );
    let fd3 = fd_lines.iter().find(|l| l.contains(" 3 -> ")).unwrap();
    assert!(fd3.contains(&format!("socket:[{inode}]")), "{fd3}");
}

#[test]
fn stdio_is_the_callers_choice() {
    let mut cmd = Command::new("cat");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = config().spawn(cmd).unwrap();
    let mut stdin = child.take_stdin().unwrap();
    let mut stdout = child.take_stdout().unwrap();
    let child = Guard::new(child);
    std::io::Write::write_all(&mut stdin, b"hello\n").unwrap();
    drop(stdin);
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    assert!(child.wait_timeout(Duration::from_secs(10)).is_some());
    assert_eq!(reader.join().unwrap().unwrap(), "hello\n");
}

#[test]
fn kill_on_drop_ends_the_group() {
    // No guard here: dropping the child is what is tested (and what cleans up).
    let mut cmd = sh("sleep 60 & echo ready; wait");
    cmd.stdout(Stdio::piped());
    let mut child = config().spawn(cmd).unwrap();
    let rx = lines(&mut child);
    let pgid = child.pgid().unwrap();
    expect_line(&rx, "ready");
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_processes(pgid).iter().any(|(_, s)| *s != 'Z') {
        assert!(Instant::now() < deadline, "{:?}", group_processes(pgid));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn async_exit_and_stop() {
    let config = config();
    let child = Guard::new(config.spawn(sleep60()).unwrap());
    let exit = child.exit();
    let watcher = tokio::spawn(exit);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!watcher.is_finished());
    let stopped = tokio::time::timeout(Duration::from_secs(10), child.stop_async())
        .await
        .expect("stopped in time");
    assert_eq!(stopped.status.signal(), Some(Signal::TERM));
    let report = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("watcher woken")
        .unwrap();
    assert_eq!(report, Report::Stopped);

    let child = Guard::new(config.spawn(sh("exit 5")).unwrap());
    let report = tokio::time::timeout(Duration::from_secs(10), child.exit())
        .await
        .unwrap();
    assert_eq!(report.clone(), child.exit().await);
    let Report::Exited(exit) = report else {
        panic!("{report:?}")
    };
    assert_eq!(exit.status.code(), Some(5));
}

#[tokio::test]
async fn async_one_shot_with_timeout() {
    let config = config().execution_timeout(Some(Duration::from_millis(200)));
    let err = tokio::time::timeout(Duration::from_secs(10), config.run_async(sleep60()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ChildError::TimedOut { .. }));
}

#[test]
fn signal_parsing_for_the_cli() {
    assert_eq!("TERM".parse::<Signal>().unwrap(), Signal::TERM);
    assert_eq!("SIGTERM".parse::<Signal>().unwrap(), Signal::TERM);
    assert_eq!("15".parse::<Signal>().unwrap(), Signal::TERM);
    assert_eq!("sigquit".parse::<Signal>().unwrap(), Signal::QUIT);
    assert_eq!("hup".parse::<Signal>().unwrap(), Signal::HUP);
    let err = "SIGFOO".parse::<Signal>().unwrap_err();
    assert_eq!(err.input(), "SIGFOO");
    let _: &ParseSignalError = &err;
    let msg = err.to_string();
    assert!(
        msg.contains("\"SIGFOO\"") && msg.contains("HUP, INT, QUIT") && msg.contains("TERM"),
        "{msg}"
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_string_parses_or_errs_without_panicking(s in any::<String>()) {
            match s.parse::<Signal>() {
                Ok(sig) => prop_assert!(sig.name().is_some()),
                Err(e) => prop_assert!(e.to_string().contains("valid names")),
            }
        }

        #[test]
        fn names_parse_in_any_case_with_or_without_sig(
            sig in proptest::sample::select(Signal::all().collect::<Vec<_>>()),
            prefix in proptest::sample::select(vec!["", "SIG", "sig", "Sig"]),
            lower in any::<bool>(),
        ) {
            let bare = &sig.name().unwrap()[3..];
            let bare = if lower { bare.to_ascii_lowercase() } else { bare.to_string() };
            prop_assert_eq!(format!("{prefix}{bare}").parse::<Signal>().unwrap(), sig);
            prop_assert_eq!(sig.as_raw().to_string().parse::<Signal>().unwrap(), sig);
        }

        #[test]
        fn numbers_outside_the_table_are_rejected(n in any::<i64>()) {
            let r = n.to_string().parse::<Signal>();
            prop_assert_eq!(r.is_ok(), (1..=31).contains(&n));
        }
    }
}
