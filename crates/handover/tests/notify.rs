//! sd_notify between real processes: a supervisor binds a NotifySocket, a
//! child sends to it through NOTIFY_SOCKET, and the message carries the
//! child's pid.

mod common;

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use common::{Guard, ROLE};
use handover::__private::render_notify as render;
use handover::notify::{Message, Notifier, NotifySocket, State};
use proptest::prelude::*;

#[test]
fn child_role() {
    if std::env::var(ROLE).as_deref() == Ok("recv_in_pidns") {
        return recv_in_pidns();
    }
    if std::env::var(ROLE).as_deref() != Ok("notify") {
        return;
    }
    let n = Notifier::from_env().unwrap();
    assert!(n.is_enabled());
    n.notify(&[State::Status("starting")]).unwrap();
    n.notify(&[State::Ready, State::MainPid(std::process::id())])
        .unwrap();
    n.notify(&[State::Reloading]).unwrap();
    n.notify(&[State::Stopping]).unwrap();
}

fn run_child(sock_env: &OsStr) -> Guard {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_role", "--test-threads=1", "-q"])
        .env(ROLE, "notify")
        .env("NOTIFY_SOCKET", sock_env)
        .stdout(std::process::Stdio::null());
    Guard(cmd.spawn().unwrap())
}

fn check(sock: NotifySocket) {
    let mut child = run_child(sock.env_value());
    let pid = child.0.id();
    let mut msgs = Vec::new();
    while msgs.len() < 4 {
        let m = sock
            .recv_timeout(Some(Duration::from_secs(30)))
            .unwrap()
            .expect("child did not notify in time");
        msgs.push(m);
    }
    assert!(child.0.wait().unwrap().success());
    assert!(msgs.iter().all(|m| m.pid == Some(pid)), "{msgs:?}");
    assert_eq!(msgs[0].status(), Some("starting"));
    assert!(msgs[1].is_ready());
    assert_eq!(msgs[1].main_pid(), Some(pid));
    assert!(msgs[2].is_reloading());
    assert!(
        msgs[2]
            .get("MONOTONIC_USEC")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(msgs[3].is_stopping());
}

#[test]
fn child_reports_to_a_path_socket() {
    let dir = tempfile::tempdir().unwrap();
    check(NotifySocket::bind(&dir.path().join("notify")).unwrap());
}

#[test]
fn child_reports_to_an_abstract_socket() {
    let name = format!(
        "handover-notify-test/{}/{}",
        std::process::id(),
        fastrand::u64(..)
    );
    check(NotifySocket::bind_abstract(name.as_bytes()).unwrap());
}

#[test]
fn async_receive() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = NotifySocket::bind(&dir.path().join("n"))
            .unwrap()
            .into_async()
            .unwrap();
        let n = Notifier::to(sock.env_value()).unwrap();
        n.notify(&[State::Ready]).unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), sock.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(m.is_ready());
        assert_eq!(m.pid, Some(std::process::id()));
    });
}

#[test]
fn missing_supervisor_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone");
    let err = Notifier::to(path.as_os_str())
        .unwrap()
        .notify(&[State::Ready])
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("could not send \"READY=1\\n\""), "{msg}");
    assert!(msg.contains("Is the supervisor still running"), "{msg}");
}

/// A supervisor in a pid namespace of its own (as in a container): binds
/// a notify socket and reports what it hears.
fn recv_in_pidns() {
    let path = std::env::var("HANDOVER_TEST_SOCK").unwrap();
    let sock = NotifySocket::bind(std::path::Path::new(&path)).unwrap();
    println!("report:bound");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    let m = sock
        .recv_timeout(Some(Duration::from_secs(20)))
        .unwrap()
        .expect("a message in time");
    println!(
        "report:pid={:?} uid={:?} ready={}",
        m.pid,
        m.uid,
        m.is_ready()
    );
}

#[test]
fn a_sender_in_a_pid_namespace_we_cannot_see_has_no_pid() {
    // The kernel gives a receiver pid 0 for a sender outside its pid
    // namespace. rustix's typed credentials cannot hold a 0 pid (it is a
    // non-zero type: reading one was undefined behaviour, and came out as
    // Some(0)); the message must say "unknown".
    let unshare = ["unshare", "--pid", "--fork", "--kill-child"];
    let mut probe = unshare.to_vec();
    probe.push("true");
    if !common::runtime::require_command(
        "a_sender_in_a_pid_namespace_we_cannot_see_has_no_pid",
        "unshare --pid (util-linux, run as root or with user namespaces)",
        &probe,
        "apt-get install util-linux; .ci/run runs as root",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.sock");
    let mut cmd = Command::new(unshare[0]);
    cmd.args(&unshare[1..])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_role",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE, "recv_in_pidns")
        .env("HANDOVER_TEST_SOCK", &path)
        .stdout(std::process::Stdio::piped());
    let mut child = Guard(cmd.spawn().unwrap());
    let lines = common::report_stream(&mut child);
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(30)).unwrap(),
        "bound"
    );
    Notifier::to(path.as_os_str())
        .unwrap()
        .notify(&[State::Ready])
        .unwrap();
    let got = lines.recv_timeout(Duration::from_secs(30)).unwrap();
    let uid = rustix::process::getuid().as_raw();
    assert_eq!(got, format!("pid=None uid=Some({uid}) ready=true"));
}

proptest! {
    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let fields = Message::parse(&data);
        for (k, v) in fields {
            prop_assert!(!k.is_empty() && !k.contains('\n') && !v.contains('\n'));
        }
    }

    #[test]
    fn status_round_trips(text in "[^\n\0]{0,200}") {
        let msg = render(&[State::Status(&text)]).unwrap();
        let m = Message { pid: None, uid: None, fields: Message::parse(msg.as_bytes()) };
        prop_assert_eq!(m.status(), Some(text.as_str()));
    }
}
