//! Starting programs with `handover::process`: typed errors for every way a
//! start fails, descriptors at 3.. whatever holes or collisions the parent
//! has, and not one byte on a passed descriptor when the start fails.
//!
//! The cases that depend on which descriptor numbers are free run in a
//! fresh process (this test binary re-executed as a role), where fds 3.. are
//! known to be free: in the test harness other tests open and close
//! descriptors all the time.

mod common;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Guard, ROLE, handover_role, reports};
use handover::activation::Activation;
use handover::process::{Command, SpawnError, Stdio};

#[test]
fn child_role() {
    match std::env::var(ROLE).as_deref() {
        Ok("holes") => holes_role(false),
        Ok("unreadable_cwd") => holes_role(true),
        Ok("crossed") => crossed_role(),
        _ => {}
    }
}

fn report(line: impl AsRef<str>) {
    println!("report:{}", line.as_ref());
}

fn is_open(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok()
}

/// `fd` moved to the lowest free number at or above `min`.
fn park(fd: OwnedFd, min: RawFd) -> OwnedFd {
    rustix::io::fcntl_dupfd_cloexec(&fd, min).unwrap()
}

/// The short name of a spawn result, for the report.
fn kind(r: &Result<handover::process::Process, SpawnError>) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(SpawnError::NotFound { searched, .. }) => format!("NotFound searched={searched}"),
        Err(SpawnError::InterpreterMissing { interpreter, .. }) => {
            format!("InterpreterMissing {}", interpreter.display())
        }
        Err(SpawnError::LoaderMissing { loader, .. }) => {
            format!("LoaderMissing {}", loader.display())
        }
        Err(SpawnError::WorkingDirectory { problem, .. }) => {
            format!("WorkingDirectory {problem}")
        }
        Err(SpawnError::NotExecutable { reason, .. }) => format!("NotExecutable {reason}"),
        Err(e) => format!("Other {e}"),
    }
}

/// A copy of `/bin/true` whose ELF interpreter points nowhere, when this
/// system's loader path can be found in it.
fn binary_with_missing_loader(dir: &Path) -> Option<PathBuf> {
    let mut bytes = std::fs::read("/bin/true").ok()?;
    let at = bytes
        .windows(7)
        .position(|w| w == b"/lib64/" || w == b"/lib/ld")?;
    let end = at + bytes[at..].iter().position(|&b| b == 0)?;
    // Same length, another (missing) file.
    bytes[end - 1] = b'X';
    let p = dir.join("no-loader");
    std::fs::write(&p, bytes).ok()?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).ok()?;
    Some(p)
}

/// Passes two pipes' write ends from high descriptors, with fds 3..=6
/// free (holes where the passed ones go), to programs that cannot start;
/// reports each error and how many bytes reached the pipes.
fn holes_role(unreadable_cwd: bool) {
    let dir = PathBuf::from(std::env::var("HANDOVER_TEST_DIR").unwrap());
    let busy: Vec<RawFd> = (3..=6).filter(|&fd| is_open(fd)).collect();
    report(format!("busy-before={busy:?}"));
    let (r1, w1) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let (r2, w2) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let (r1, w1, r2, w2) = (park(r1, 100), park(w1, 100), park(r2, 100), park(w2, 100));
    let holes: Vec<RawFd> = (3..=6).filter(|&fd| !is_open(fd)).collect();
    report(format!("holes={holes:?}"));
    let mut cases: Vec<(&str, Command)> = Vec::new();
    if unreadable_cwd {
        let locked = dir.join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root enters any directory: become nobody (this thread only, which
        // is the one that spawns).
        if rustix::process::getuid().is_root() {
            let nobody = rustix::process::Uid::from_raw(65534);
            rustix::thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
        }
        let mut c = Command::new("/bin/true");
        c.current_dir(&locked);
        cases.push(("unreadable_cwd", c));
    } else {
        cases.push((
            "missing_program",
            Command::new("/nonexistent/handover-no-such-program"),
        ));
        let mut c = Command::new("handover-no-such-program");
        c.env("PATH", "/nonexistent:/usr/bin");
        cases.push(("missing_in_path", c));
        let script = dir.join("script");
        std::fs::write(&script, "#!/nonexistent/interpreter -x\necho hi\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        cases.push(("missing_interpreter", Command::new(&script)));
        let mut c = Command::new("/bin/true");
        c.current_dir("/nonexistent/handover-dir");
        cases.push(("missing_cwd", c));
        let mut c = Command::new("/bin/true");
        c.current_dir("/etc/passwd");
        cases.push(("cwd_is_a_file", c));
        let data = dir.join("data");
        std::fs::write(&data, "not a program").unwrap();
        cases.push(("not_executable", Command::new(&data)));
        if let Some(p) = binary_with_missing_loader(&dir) {
            cases.push(("missing_loader", Command::new(p)));
        }
    }
    // Default stdio: nothing opened by the spawn itself fills the holes
    // (with std's Command, the exec-error pipe landed at 3 and 4, and the
    // passed fds replaced it).
    for (name, cmd) in cases {
        let mut a = Activation::new();
        a.fd("a", w1.as_fd()).unwrap();
        a.fd("b", w2.as_fd()).unwrap();
        let r = a.spawn(cmd);
        report(format!("{name}={}", kind(&r)));
        if let Err(e) = &r {
            report(format!("{name}-message={e}"));
        }
        if let Ok(mut p) = r {
            let _ = p.wait();
        }
    }
    drop((w1, w2));
    let mut bytes = Vec::new();
    std::fs::File::from(r1).read_to_end(&mut bytes).unwrap();
    std::fs::File::from(r2).read_to_end(&mut bytes).unwrap();
    report(format!("bytes={bytes:?}"));
    let leaked: Vec<RawFd> = (3..=6).filter(|&fd| is_open(fd)).collect();
    report(format!("open-after={leaked:?}"));
}

fn run_role(role: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = handover_role(role);
    cmd.env("HANDOVER_TEST_DIR", dir.path());
    let mut child = Guard(cmd.spawn().unwrap());
    reports(&mut child, Duration::from_secs(60))
}

fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    let prefix = format!("{key}=");
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {lines:#?}"))
}

#[test]
fn failed_starts_are_typed_errors_and_pass_no_byte_through_holes() {
    let lines = run_role("holes");
    assert_eq!(value(&lines, "busy-before"), "[]", "{lines:#?}");
    assert_eq!(value(&lines, "holes"), "[3, 4, 5, 6]", "{lines:#?}");
    assert_eq!(
        value(&lines, "missing_program"),
        "NotFound searched=/nonexistent/handover-no-such-program"
    );
    assert_eq!(
        value(&lines, "missing_in_path"),
        "NotFound searched=each directory of PATH=/nonexistent:/usr/bin"
    );
    assert!(
        value(&lines, "missing_in_path-message").contains("install it, fix PATH"),
        "{lines:#?}"
    );
    assert_eq!(
        value(&lines, "missing_interpreter"),
        "InterpreterMissing /nonexistent/interpreter"
    );
    assert!(
        value(&lines, "missing_interpreter-message")
            .contains("whose interpreter \"/nonexistent/interpreter\" (its #! line) is missing"),
        "{lines:#?}"
    );
    assert_eq!(
        value(&lines, "missing_cwd"),
        "WorkingDirectory does not exist"
    );
    assert_eq!(
        value(&lines, "cwd_is_a_file"),
        "WorkingDirectory is not a directory"
    );
    assert_eq!(
        value(&lines, "not_executable"),
        "NotExecutable it has no execute permission"
    );
    if lines.iter().any(|l| l.starts_with("missing_loader=")) {
        assert!(
            value(&lines, "missing_loader").starts_with("LoaderMissing /"),
            "{lines:#?}"
        );
    }
    // Nothing reached the passed pipes, and nothing is left open in the
    // holes.
    assert_eq!(value(&lines, "bytes"), "[]", "{lines:#?}");
    assert_eq!(value(&lines, "open-after"), "[]", "{lines:#?}");
}

#[test]
fn an_unenterable_working_directory_is_a_typed_error_and_passes_no_byte() {
    let lines = run_role("unreadable_cwd");
    assert_eq!(value(&lines, "holes"), "[3, 4, 5, 6]", "{lines:#?}");
    assert_eq!(
        value(&lines, "unreadable_cwd"),
        "WorkingDirectory cannot be entered (permission denied)",
        "{lines:#?}"
    );
    assert!(
        value(&lines, "unreadable_cwd-message").contains("create it, or fix the path"),
        "{lines:#?}"
    );
    assert_eq!(value(&lines, "bytes"), "[]", "{lines:#?}");
}

/// Write ends of two pipes placed at fds 4 and 3, passed in the order that
/// sends each to the other's number.
fn crossed_role() {
    assert!(!is_open(3) && !is_open(4), "fds 3 and 4 must be free");
    let (ra, wa) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let (rb, wb) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    // ra=3 wa=4 rb=5 wb=6: move ra away and wb to 3.
    let ra = park(ra, 100);
    let wb = park(wb, 3);
    report(format!("a_at={} b_at={}", wa.as_raw_fd(), wb.as_raw_fd()));
    let mut a = Activation::new();
    a.fd("a", wa.as_fd()).unwrap();
    a.fd("b", wb.as_fd()).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "printf a >&3; printf b >&4; [ ! -e /proc/self/fd/5 ]"]);
    let status = a.spawn(cmd).unwrap().wait().unwrap();
    drop((wa, wb));
    let (mut got_a, mut got_b) = (String::new(), String::new());
    std::fs::File::from(ra).read_to_string(&mut got_a).unwrap();
    std::fs::File::from(rb).read_to_string(&mut got_b).unwrap();
    report(format!("status={}", status.success()));
    report(format!("a={got_a}"));
    report(format!("b={got_b}"));
}

#[test]
fn passed_fds_that_sit_at_each_others_targets_arrive_where_asked() {
    let lines = run_role("crossed");
    assert_eq!(value(&lines, "a_at"), "4 b_at=3", "{lines:#?}");
    assert_eq!(value(&lines, "a"), "a", "{lines:#?}");
    assert_eq!(value(&lines, "b"), "b", "{lines:#?}");
    assert_eq!(value(&lines, "status"), "true", "{lines:#?}");
}

#[test]
fn stdio_pipes_null_and_fds() {
    let mut child = Command::new("sh")
        .args([
            "-c",
            "read line; echo \"out:$line\"; echo err >&2; cat /dev/stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"hello\nrest").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out:hello\nrest");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("out")).unwrap();
    let status = Command::new("sh")
        .args(["-c", "cat; echo to-file"])
        .stdin(Stdio::null())
        .stdout(file)
        .spawn()
        .unwrap()
        .wait()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "to-file\n"
    );
}

#[test]
fn path_lookup_uses_the_new_environment_and_relative_programs_the_new_directory() {
    // PATH from the command's environment; without one, /bin:/usr/bin.
    let mut c = Command::new("sh");
    c.env("PATH", "/nonexistent-dir:/bin:/usr/bin")
        .args(["-c", "exit 0"]);
    assert!(c.spawn().unwrap().wait().unwrap().success());
    let mut c = Command::new("sh");
    c.env_clear().args(["-c", "exit 0"]);
    assert!(c.spawn().unwrap().wait().unwrap().success());
    // `./sh` in /bin.
    let mut c = Command::new("./sh");
    c.current_dir("/bin").args(["-c", "exit 0"]);
    assert!(c.spawn().unwrap().wait().unwrap().success());
    // A directory in PATH with a non-executable file of that name is
    // skipped for a later one, and reported when nothing else is found.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), "not a program").unwrap();
    let mut c = Command::new("data");
    c.env("PATH", dir.path());
    let e = c.spawn().unwrap_err();
    assert!(matches!(e, SpawnError::NotExecutable { .. }), "{e}");
}

#[test]
fn the_listen_variables_are_never_inherited_and_pid_is_the_childs() {
    // This process has no LISTEN_* of its own in tests, but a command that
    // sets them explicitly passes them as given; Activation replaces them.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = Activation::new();
    a.fd("web", l.as_fd()).unwrap();
    let mut c = Command::new("sh");
    c.args(["-c", "echo $LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES"])
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "7")
        .stdout(Stdio::piped());
    let out = a.spawn(c).unwrap().wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f[0], f[1], "LISTEN_PID is the child's pid: {text}");
    assert_eq!(&f[2..], ["1", "web"], "{text}");
}

#[test]
fn wait_timeout_kill_and_try_wait() {
    let mut p = Command::new("sleep").arg("30").spawn().unwrap();
    assert!(p.pidfd().is_some(), "Linux 5.3+ gives a pidfd");
    assert!(p.try_wait().unwrap().is_none());
    assert!(p.wait_timeout(Duration::from_millis(50)).unwrap().is_none());
    p.kill().unwrap();
    let s = p
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("killed");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(s.signal(), Some(9));
    // Idempotent after the end.
    p.kill().unwrap();
    assert_eq!(p.wait().unwrap(), s);
}

#[test]
fn async_wait_on_the_pidfd() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut p = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let s = tokio::time::timeout(Duration::from_secs(10), p.wait_async())
            .await
            .expect("in time")
            .unwrap();
        assert_eq!(s.code(), Some(7));
    });
}

#[test]
fn a_handled_signal_in_the_parent_is_default_in_the_child() {
    // tokio installs a SIGUSR1 handler in this process; the child must
    // start with SIGUSR1 at its default action (terminate), not ignored and
    // not running our handler.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _sig = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).unwrap()
    });
    let out = Command::new("sh")
        .args(["-c", "grep -E '^Sig(Cgt|Ign|Blk):' /proc/self/status"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mask = |key: &str| {
        let line = text.lines().find(|l| l.starts_with(key)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let usr1 = 1u64 << (libc::SIGUSR1 - 1);
    let pipe = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(
        mask("SigBlk:"),
        0,
        "the child starts with no signal blocked: {text}"
    );
    assert_eq!(mask("SigIgn:") & (usr1 | pipe), 0, "{text}");
}
