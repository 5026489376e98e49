//! Descriptor passing between real processes, and a server that stays up
//! under clients that misbehave.
//!
//! Cross-process tests re-execute this test binary as the other process
//! (role chosen by `HANDOVER_PASS_ROLE`, see `child_role`), so both sides
//! count their own descriptors in `/proc/self/fd` without interference
//! from tests running in parallel in this process.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::{Guard, report_stream, self_command, wait_exit};
use handover::__private::wire::{self, Header};
use handover::pass::{
    self, Meta, Metadata, PassError, Peers, ReceiveOptions, Receiver, Sender, Server, Session,
};

const ROLE: &str = "HANDOVER_PASS_ROLE";
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

/// This test binary, re-executed to run `child_role` as `role`.
fn child_command(role: &str) -> Command {
    let mut cmd = self_command();
    cmd.env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Collects report lines into a map until `last` arrives.
fn collect(rx: &mpsc::Receiver<String>, last: &str) -> BTreeMap<String, String> {
    let start = Instant::now();
    let mut map = BTreeMap::new();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {last:?} report within {DEADLINE:?}; got {map:?}"));
        let (k, v) = line.split_once('=').unwrap_or((&line, ""));
        let done = k == last;
        map.insert(k.to_string(), v.to_string());
        if done {
            return map;
        }
    }
}

/// A temp dir with a short path (socket paths are limited to 107 bytes).
fn short_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hp")
        .tempdir_in("/tmp")
        .unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    setrlimit(Resource::Nofile, lim).unwrap();
}

fn id_of(fd: BorrowedFd<'_>) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).unwrap();
    (st.st_dev, st.st_ino)
}

/// FNV-1a over a sequence of (dev, ino).
fn digest(ids: &[(u64, u64)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (d, i) in ids {
        for b in d.to_le_bytes().into_iter().chain(i.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{}:{h:016x}", ids.len())
}

/// Whether the only other end of `read_end` was closed (EOF within 5 s).
fn sees_eof(read_end: &mut File) -> bool {
    let mut pfd = [rustix::event::PollFd::new(
        &*read_end,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut pfd, Some(&ts)).unwrap() == 0 {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(read_end.read(&mut b), Ok(0))
}

// ------------------------------------------------------------ child roles

/// The other process of the cross-process tests. A no-op in a normal run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "send" => send_role(),
        "recv" => recv_role(),
        "recv-lowlimit" => recv_lowlimit_role(),
        "recv-as-nobody" => {
            let path = std::env::var("HANDOVER_PASS_PATH").unwrap();
            let opts = ReceiveOptions::new()
                .allow(Peers::Any)
                .timeout(Duration::from_secs(10));
            println!("report:uid={}", rustix::process::geteuid().as_raw());
            println!("report:pid={}", std::process::id());
            match pass::receive_with(&path, &opts, |_, _| Ok(())) {
                Ok(n) => println!("report:result=received {n}"),
                Err(e) => println!("report:result=error: {e}"),
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// Serves N descriptors (pipe ends) twice: once as one record, then each
/// as a record of its own; reports their ids and its descriptor counts.
fn send_role() {
    raise_nofile();
    let n: usize = std::env::var("HANDOVER_PASS_N").unwrap().parse().unwrap();
    let path = std::env::var("HANDOVER_PASS_PATH").unwrap();
    let before = open_fds();
    {
        let mut fds: Vec<OwnedFd> = Vec::with_capacity(n + 1);
        while fds.len() < n {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
            fds.push(r);
            fds.push(w);
        }
        fds.truncate(n);
        let ids: Vec<_> = fds.iter().map(|f| id_of(f.as_fd())).collect();
        println!("report:ids={}", digest(&ids));
        let fds = Arc::new(fds);
        let server = Server::bind(&path)
            .unwrap()
            .timeout(Duration::from_secs(50));
        let send_all = move |s: &mut Session<'_>| {
            let all: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            let meta = Meta::new().with("kind", "batch").with("n", n.to_string());
            s.send(&all, &meta.into())?;
            for (i, fd) in fds.iter().enumerate() {
                s.send(
                    &[fd.as_fd()],
                    &Metadata::Bytes((i as u32).to_be_bytes().to_vec()),
                )?;
            }
            Ok(())
        };
        println!("report:ready");
        server
            .serve(pass::sequence((
                send_all,
                pass::confirm(),
                pass::stop_serving(),
            )))
            .unwrap();
        println!("report:socket_removed={}", !Path::new(&path).exists());
    }
    println!("report:fds_before={before}");
    println!("report:fds_after={}", open_fds());
    println!("report:done");
}

fn recv_role() {
    raise_nofile();
    let path = std::env::var("HANDOVER_PASS_PATH").unwrap();
    let n: usize = std::env::var("HANDOVER_PASS_N").unwrap().parse().unwrap();
    let before = open_fds();
    let mut batch = Vec::new();
    let mut singles = Vec::new();
    let mut all_cloexec = true;
    let mut meta_ok = true;
    let opts = ReceiveOptions::new().timeout(Duration::from_secs(50));
    let got = pass::receive_with(&path, &opts, |fd, meta| {
        let flags = rustix::io::fcntl_getfd(&fd).unwrap();
        all_cloexec &= flags.contains(rustix::io::FdFlags::CLOEXEC);
        let id = id_of(fd.as_fd());
        if fd.record() == 0 {
            meta_ok &= meta.get("kind") == Some("batch")
                && meta.get("n") == Some(n.to_string().as_str())
                && fd.index() == batch.len();
            batch.push(id);
        } else {
            let i = singles.len();
            meta_ok &= meta.bytes() == Some(&(i as u32).to_be_bytes()[..])
                && fd.record() == i + 1
                && fd.index() == 0;
            singles.push(id);
        }
        // `fd` is dropped (closed) here.
        Ok(())
    });
    match got {
        Ok(count) => println!("report:count={count}"),
        Err(e) => println!("report:error={e}"),
    }
    println!("report:batch={}", digest(&batch));
    println!("report:singles={}", digest(&singles));
    println!("report:cloexec={all_cloexec}");
    println!("report:meta_ok={meta_ok}");
    println!("report:fds_before={before}");
    println!("report:fds_after={}", open_fds());
    println!("report:done");
}

/// Receives with a descriptor limit too low for what arrives: the kernel
/// truncates the ancillary data, which must be an error that leaks nothing.
fn recv_lowlimit_role() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let path = std::env::var("HANDOVER_PASS_PATH").unwrap();
    let before = open_fds();
    let mut lim = getrlimit(Resource::Nofile);
    // Room for the connection and a few more, not for 100 descriptors.
    lim.current = Some((before + 8) as u64);
    setrlimit(Resource::Nofile, lim).unwrap();
    let opts = ReceiveOptions::new().timeout(Duration::from_secs(20));
    match pass::receive_with(&path, &opts, |_, _| Ok(())) {
        Ok(n) => println!("report:result=received {n}"),
        Err(e @ PassError::ControlTruncated) => println!("report:result=ctrunc: {e}"),
        Err(e) => println!("report:result=other error: {e}"),
    }
    println!("report:fds_before={before}");
    println!("report:fds_after={}", open_fds());
    println!("report:done");
}

// ------------------------------------------------- between two processes

fn pass_between_processes(n: usize) {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let mut sender = Guard(
        child_command("send")
            .env("HANDOVER_PASS_N", n.to_string())
            .env("HANDOVER_PASS_PATH", &path)
            .spawn()
            .unwrap(),
    );
    let srx = report_stream(&mut sender);
    let sent = collect(&srx, "ready");
    let mut receiver = Guard(
        child_command("recv")
            .env("HANDOVER_PASS_N", n.to_string())
            .env("HANDOVER_PASS_PATH", &path)
            .spawn()
            .unwrap(),
    );
    let rrx = report_stream(&mut receiver);
    let got = collect(&rrx, "done");
    let sent_end = collect(&srx, "done");
    assert!(wait_exit(&mut receiver, DEADLINE).success());
    assert!(wait_exit(&mut sender, DEADLINE).success());

    assert_eq!(got.get("error"), None, "receiver failed: {got:?}");
    assert_eq!(got["count"], (2 * n).to_string());
    // Every descriptor is the same open pipe end, in order, both ways.
    assert_eq!(got["batch"], sent["ids"], "n={n}");
    assert_eq!(got["singles"], sent["ids"], "n={n}");
    assert_eq!(got["cloexec"], "true");
    assert_eq!(got["meta_ok"], "true");
    // Nothing leaked on either side.
    assert_eq!(got["fds_before"], got["fds_after"], "receiver: {got:?}");
    assert_eq!(
        sent_end["fds_before"], sent_end["fds_after"],
        "sender: {sent_end:?}"
    );
    assert_eq!(sent_end["socket_removed"], "true");
}

#[test]
fn one_fd_between_processes() {
    pass_between_processes(1);
}

#[test]
fn ten_fds_between_processes() {
    pass_between_processes(10);
}

#[test]
fn one_full_batch_between_processes() {
    pass_between_processes(253);
}

#[test]
fn batch_plus_one_between_processes() {
    pass_between_processes(254);
}

#[test]
fn ten_thousand_fds_between_processes() {
    pass_between_processes(10_000);
}

#[test]
fn truncated_ancillary_data_is_an_error_and_leaks_nothing() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..50)
        .map(|_| rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap())
        .collect();
    let fds: Vec<OwnedFd> = pipes
        .iter()
        .flat_map(|(r, w)| [r.try_clone().unwrap(), w.try_clone().unwrap()])
        .collect();
    let handle = Server::bind(&path)
        .unwrap()
        .spawn(pass::fds(fds, Meta::new().with("n", "100")))
        .unwrap();
    let mut child = Guard(
        child_command("recv-lowlimit")
            .env("HANDOVER_PASS_PATH", &path)
            .spawn()
            .unwrap(),
    );
    let rx = report_stream(&mut child);
    let got = collect(&rx, "done");
    assert!(wait_exit(&mut child, DEADLINE).success());
    assert!(got["result"].starts_with("ctrunc: "), "{got:?}");
    assert!(got["result"].contains("RLIMIT_NOFILE"), "{got:?}");
    assert_eq!(got["fds_before"], got["fds_after"], "{got:?}");
    handle.stop().unwrap();
}

/// A global tracing subscriber writing into a buffer, for the refusal log.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let make = move || LogWriter(w.clone());
        let _ = tracing_subscriber::fmt()
            .with_writer(make)
            .with_ansi(false)
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn peer_with_another_uid_is_refused() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: starting a client as `nobody` needs root");
        return;
    }
    let logs = captured_logs();
    let dir = short_tempdir();
    // `nobody` must reach the socket to be refused by SO_PEERCRED (rather
    // than by file permissions).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let path = dir.path().join("s");
    let server = Server::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket file is private");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let served = Arc::new(AtomicBool::new(false));
    let s2 = served.clone();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = server
        .spawn(pass::sequence((
            move |_: &mut Session<'_>| {
                s2.store(true, Ordering::SeqCst);
                Ok(())
            },
            pass::listener(tcp, Meta::new()),
        )))
        .unwrap();
    let mut child = Guard(
        child_command("recv-as-nobody")
            .env("HANDOVER_PASS_PATH", &path)
            .uid(65534)
            .gid(65534)
            .spawn()
            .unwrap(),
    );
    let rx = report_stream(&mut child);
    let got = collect(&rx, "result");
    assert!(wait_exit(&mut child, DEADLINE).success());
    assert_eq!(got["uid"], "65534");
    assert!(got["result"].starts_with("error: "), "{got:?}");
    assert!(got["result"].contains("refused"), "{got:?}");
    assert!(
        !served.load(Ordering::SeqCst),
        "a refused peer gets nothing"
    );
    handle.stop().unwrap();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let pid = &got["pid"];
    assert!(
        text.lines().any(|l| l.contains("refused")
            && l.contains("uid=65534")
            && l.contains(&format!("pid={pid}"))),
        "the refusal is logged with pid and uid: {text}"
    );
}

// ------------------------------------------------------ in one process

#[test]
fn std_sessions_on_a_socket_pair() {
    let (a, b) = UnixStream::pair().unwrap();
    let f1 = tempfile::tempfile().unwrap();
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let expect: Vec<_> = [f1.as_fd(), r.as_fd(), w.as_fd()]
        .iter()
        .map(|f| id_of(*f))
        .collect();
    let server = std::thread::spawn(move || {
        let mut s = Sender::handshake(&a, Duration::from_secs(10)).unwrap();
        s.send(&[f1.as_fd()], &Meta::new().with("name", "log").into())
            .unwrap();
        s.send(&[r.as_fd(), w.as_fd()], &Metadata::Bytes(b"pipe".to_vec()))
            .unwrap();
        s.finish().unwrap();
        s.records()
    });
    let mut rcv = Receiver::handshake(&b, Duration::from_secs(10)).unwrap();
    let one = rcv.next_record().unwrap().unwrap();
    let two = rcv.next_record().unwrap().unwrap();
    assert!(rcv.next_record().unwrap().is_none());
    rcv.ack().unwrap();
    assert_eq!(server.join().unwrap(), 2);
    rcv.wait_closed().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one.meta.get("name"), Some("log"));
    assert_eq!(two.meta.bytes(), Some(&b"pipe"[..]));
    let got: Vec<_> = one
        .fds
        .iter()
        .chain(&two.fds)
        .map(|f| id_of(f.as_fd()))
        .collect();
    assert_eq!(got, expect);
}

#[tokio::test]
async fn tokio_sessions_on_a_socket_pair() {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut s = pass::AsyncSender::handshake(&a, Duration::from_secs(10))
            .await
            .unwrap();
        s.send(&[udp.as_fd()], &Meta::new().with("name", "dns").into())
            .await
            .unwrap();
        s.finish().await.unwrap();
    });
    let mut r = pass::AsyncReceiver::handshake(&b, Duration::from_secs(10))
        .await
        .unwrap();
    let rec = r.next_record().await.unwrap().unwrap();
    assert!(r.next_record().await.unwrap().is_none());
    r.ack().await.unwrap();
    server.await.unwrap();
    r.wait_closed().await.unwrap();
    assert_eq!(rec.meta.get("name"), Some("dns"));
    let fd = rec.fds.into_iter().next().unwrap();
    let sock = <tokio::net::UdpSocket as handover::socket::FromFd>::from_fd(fd).unwrap();
    assert_eq!(sock.local_addr().unwrap(), addr);
}

#[test]
fn server_and_client_with_typed_helpers() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut log = tempfile::NamedTempFile::new().unwrap();
    log.write_all(b"hello").unwrap();
    let logf = log.reopen().unwrap();
    let after = Arc::new(AtomicUsize::new(0));
    let a2 = after.clone();
    let server = Server::bind(&path).unwrap();
    assert_eq!(server.path(), Some(path.as_path()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let handle = server
        .spawn(pass::sequence((
            pass::listener(tcp.try_clone().unwrap(), Meta::new().with("name", "http")),
            pass::file(logf, Meta::new().with("name", "log")),
            pass::confirm(),
            pass::callback(move || {
                a2.fetch_add(1, Ordering::SeqCst);
            }),
        )))
        .unwrap();

    let mut listener = None;
    let mut file = None;
    let n = pass::receive(&path, |fd, meta| {
        match meta.get("name") {
            Some("http") => {
                // Asking for the wrong kind names both kinds.
                let kind = fd.kind()?;
                assert!(kind.is_socket());
                listener = Some(fd.convert::<TcpListener>()?);
            }
            Some("log") => file = Some(fd.convert::<File>()?),
            other => panic!("unexpected {other:?}"),
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(after.load(Ordering::SeqCst), 1, "steps after confirm ran");
    assert_eq!(listener.unwrap().local_addr().unwrap(), addr);
    let mut text = String::new();
    let mut file = file.unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "hello");

    // A wrong kind: the error names what was expected and what was found.
    let err = pass::receive(&path, |fd, meta| {
        if meta.get("name") == Some("http") {
            fd.convert::<std::net::UdpSocket>()?;
        }
        Ok(())
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("expected a UDP socket"), "{msg}");
    assert!(msg.contains("found a TCP listener"), "{msg}");

    handle.stop().unwrap();
    assert!(!path.exists(), "the socket file is removed on stop");
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_is_an_error() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    // A socket file left by a process that is gone.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Server::bind(&path).unwrap();
    // Now it is live.
    let err = Server::bind(&path).unwrap_err();
    assert!(matches!(err, PassError::AlreadyServing { .. }), "{err}");
    assert!(
        err.to_string().contains("another instance is serving at"),
        "{err}"
    );
    drop(server);
    assert!(!path.exists(), "dropping an unused server removes its file");
    // A regular file is not touched.
    std::fs::write(&path, "data").unwrap();
    let err = Server::bind(&path).unwrap_err();
    assert!(matches!(err, PassError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
}

#[test]
fn no_server_and_long_paths() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let err = pass::receive(&path, |_, _| Ok(())).unwrap_err();
    assert!(err.is_no_server(), "{err}");
    drop(UnixListener::bind(&path).unwrap());
    let err = pass::receive(&path, |_, _| Ok(())).unwrap_err();
    assert!(err.is_no_server(), "stale: {err}");

    let long = PathBuf::from(format!("/tmp/{}/s", "d".repeat(110)));
    for err in [
        Server::bind(&long).unwrap_err(),
        pass::receive(&long, |_, _| Ok(())).unwrap_err(),
    ] {
        assert!(matches!(err, PassError::PathTooLong { .. }), "{err}");
        assert!(err.to_string().contains("at most 107 bytes"), "{err}");
    }
}

#[test]
fn successor_can_bind_as_soon_as_receive_returns() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let old = Server::bind(&path)
        .unwrap()
        .spawn(pass::sequence((
            pass::listener(tcp, Meta::new().with("name", "http")),
            pass::confirm(),
            pass::stop_serving(),
        )))
        .unwrap();
    let mut got = None;
    pass::receive(&path, |fd, _| {
        got = Some(fd.convert::<TcpListener>()?);
        Ok(())
    })
    .unwrap();
    // No race: the old server closed its socket before the session ended.
    let new = Server::bind(&path).unwrap();
    old.join().unwrap();
    assert!(path.exists(), "the old server did not remove the new file");
    drop(new);
    assert!(got.is_some());
}

#[test]
fn failing_callback_is_not_confirmed() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut read_end = File::from(r);
    let after = Arc::new(AtomicBool::new(false));
    let a2 = after.clone();
    let handle = Server::bind(&path)
        .unwrap()
        .spawn(pass::sequence((
            pass::fds([w], ()),
            pass::confirm(),
            pass::callback(move || a2.store(true, Ordering::SeqCst)),
        )))
        .unwrap();
    let err = pass::receive(&path, |_fd, _| Err(PassError::handler("not today"))).unwrap_err();
    assert_eq!(err.to_string(), "not today");
    handle.stop().unwrap();
    assert!(
        !after.load(Ordering::SeqCst),
        "no ACK, so no steps after confirm"
    );
    assert!(
        sees_eof(&mut read_end),
        "every copy of the write end was closed"
    );
}

/// A fake server that sends `frames` (bytes, descriptors) after the hello.
fn fake_server(frames: Vec<(Vec<u8>, Vec<OwnedFd>)>) -> (UnixStream, std::thread::JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut hello = [0u8; 8];
        (&a).read_exact(&mut hello).unwrap();
        (&a).write_all(&wire::hello(1)).unwrap();
        for (bytes, fds) in frames {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            let mut space = vec![std::mem::MaybeUninit::uninit(); 4096];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            if !borrowed.is_empty() {
                assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&borrowed)));
            }
            let _ = rustix::net::sendmsg(
                &a,
                &[std::io::IoSlice::new(&bytes)],
                &mut control,
                rustix::net::SendFlags::NOSIGNAL,
            );
        }
        // Keep the connection open a little, so errors come from the data.
        std::thread::sleep(Duration::from_millis(300));
    });
    (b, t)
}

fn header(frame: u8, kind: u8, fds: u16, count: u32, len: u32) -> Vec<u8> {
    Header {
        frame,
        meta_kind: kind,
        fds,
        count,
        len,
    }
    .to_bytes()
    .to_vec()
}

fn client_error(frames: Vec<(Vec<u8>, Vec<OwnedFd>)>) -> PassError {
    let (stream, t) = fake_server(frames);
    let err = (|| {
        let mut r = Receiver::handshake(&stream, Duration::from_secs(5))?;
        while r.next_record()?.is_some() {}
        Ok::<_, PassError>(())
    })()
    .unwrap_err();
    t.join().unwrap();
    err
}

#[test]
fn malformed_servers_fail_the_client_and_every_fd_is_closed() {
    // Declares two descriptors, sends one.
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut read_end = File::from(r);
    let err = client_error(vec![(header(1, 0, 2, 2, 0), vec![w])]);
    assert!(
        matches!(
            err,
            PassError::FdCountMismatch {
                declared: 2,
                arrived: 1
            }
        ),
        "{err}"
    );
    assert!(sees_eof(&mut read_end));

    // Descriptors in the middle of a frame (after a short first write).
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut read_end = File::from(r);
    let h = header(1, 2, 1, 1, 4);
    let (r2, w2) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut read_end2 = File::from(r2);
    let err = client_error(vec![(h, vec![w]), (b"ab".to_vec(), vec![w2])]);
    assert!(matches!(err, PassError::FdsOutOfPlace { .. }), "{err}");
    assert!(sees_eof(&mut read_end));
    assert!(sees_eof(&mut read_end2));

    // An oversized metadata length is refused before anything is read.
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut read_end = File::from(r);
    let err = client_error(vec![(header(1, 2, 1, 1, u32::MAX), vec![w])]);
    assert!(matches!(err, PassError::TooLarge { .. }), "{err}");
    assert!(sees_eof(&mut read_end));

    // A record cut short: EOF in the middle of its MORE_FDS frames.
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut read_end = File::from(r);
    let err = client_error(vec![(header(1, 0, 1, 300, 0), vec![w])]);
    assert!(matches!(err, PassError::Closed { .. }), "{err}");
    assert!(err.to_string().contains("1 of 300 descriptors"), "{err}");
    assert!(sees_eof(&mut read_end));

    // Not this protocol at all.
    let (a, b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut hello = [0u8; 8];
        (&a).read_exact(&mut hello).unwrap();
        (&a).write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
    });
    let err = Receiver::handshake(&b, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, PassError::NotHandover { .. }), "{err}");
    t.join().unwrap();
}

#[test]
fn misbehaving_clients_do_not_block_others() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = Server::bind(&path)
        .unwrap()
        .timeout(Duration::from_secs(2))
        .spawn(pass::listener(tcp, Meta::new().with("name", "http")))
        .unwrap();

    // Stalls: connects and sends nothing (slow-loris), or half a hello.
    let silent = UnixStream::connect(&path).unwrap();
    let half = UnixStream::connect(&path).unwrap();
    (&half).write_all(b"HOV").unwrap();
    // Descriptors with the hello: closed by the server.
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut read_end = File::from(r);
    let with_fds = UnixStream::connect(&path).unwrap();
    {
        let mut space = vec![std::mem::MaybeUninit::uninit(); 64];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        let fds = [w.as_fd()];
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        let hello = wire::hello(1);
        rustix::net::sendmsg(
            &with_fds,
            &[std::io::IoSlice::new(&hello)],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
    }
    drop(w);
    // Garbage, an oversized "frame".
    let garbage = UnixStream::connect(&path).unwrap();
    (&garbage)
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let big = UnixStream::connect(&path).unwrap();
    (&big).write_all(&wire::hello(1)).unwrap();
    (&big).write_all(&[0xff; 64]).unwrap();

    // A good client is served at once, while the stallers still wait.
    let start = Instant::now();
    for _ in 0..3 {
        let n = pass::receive(&path, |fd, _| fd.convert::<TcpListener>().map(drop)).unwrap();
        assert_eq!(n, 1);
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // Each misbehaving client gets an error or a timeout: the server closes
    // its connection, within the session deadline.
    for (name, s) in [
        ("silent", &silent),
        ("half", &half),
        ("garbage", &garbage),
        ("big", &big),
    ] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let r = (&*s).read_to_end(&mut buf);
        // EOF, or a reset when the server closed with our bytes unread.
        let closed = match &r {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "{name}: {r:?}");
        if name == "big" {
            // A valid hello: it was served (the server reads nothing more
            // before END), then its garbage "ACK" failed the session.
            assert!(buf.starts_with(&wire::hello(1)), "{name}: {buf:?}");
        } else {
            assert!(buf.is_empty(), "{name} got nothing: {buf:?}");
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        sees_eof(&mut read_end),
        "the descriptor sent with a hello was closed"
    );
    drop(with_fds);
    handle.stop().unwrap();
}

#[test]
fn client_gives_up_on_a_stalled_server() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    // Listens, never accepts or answers.
    let _l = UnixListener::bind(&path).unwrap();
    let start = Instant::now();
    let opts = ReceiveOptions::new().timeout(Duration::from_millis(500));
    let err = pass::receive_with(&path, &opts, |_, _| Ok(())).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("the server's hello"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn receive_async_works() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let handle = Server::bind(&path)
        .unwrap()
        .spawn(pass::listener(tcp, Meta::new().with("name", "http")))
        .unwrap();
    let mut got = None;
    let n = pass::receive_async(&path, &ReceiveOptions::new(), |fd, meta| {
        assert_eq!(meta.get("name"), Some("http"));
        got = Some(fd.convert::<tokio::net::TcpListener>()?);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(got.unwrap().local_addr().unwrap(), addr);
    tokio::task::spawn_blocking(move || handle.stop().unwrap())
        .await
        .unwrap();
}

#[test]
fn untrusted_server_is_refused_by_the_client() {
    let dir = short_tempdir();
    let path = dir.path().join("s");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = Server::bind(&path)
        .unwrap()
        .spawn(pass::listener(tcp, ()))
        .unwrap();
    let me = rustix::process::geteuid().as_raw();
    let opts = ReceiveOptions::new().allow(Peers::uids([me + 1]));
    let err = pass::receive_with(&path, &opts, |_, _| Ok(())).unwrap_err();
    assert!(
        matches!(err, PassError::PeerNotAllowed { role: "server", .. }),
        "{err}"
    );
    handle.stop().unwrap();
}
