//! Time to pass 10,000 descriptors between two processes: with handover's
//! `pass` module (one record of 10,000 descriptors, and 10,000 records of
//! one), against a minimal loop of raw `sendmsg`/`recvmsg` calls (one byte
//! and 253 descriptors per message, or one) in the same run.
//!
//! ```text
//! cargo bench -p handover --bench pass_fds [-- ROUNDS]
//! ```
//!
//! This process owns the descriptors and serves them both ways; it re-runs
//! itself as the receiving process, which times each exchange from connect
//! to the last descriptor received (and closed), and reports the times.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover::pass::{self, Meta, Metadata, ReceiveOptions, Server, Session};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const N: usize = 10_000;
const BATCH: usize = 253;
const ROLE: &str = "HANDOVER_BENCH_ROLE";

fn raise_nofile() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    setrlimit(Resource::Nofile, lim).unwrap();
}

/// Raw sender: for each connection, N descriptors in messages of `batch`
/// with one byte each.
fn raw_serve(listener: UnixListener, fds: Arc<Vec<OwnedFd>>, batch: usize) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        for chunk in fds.chunks(batch) {
            let borrowed: Vec<BorrowedFd<'_>> = chunk.iter().map(AsFd::as_fd).collect();
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
            let n = rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(&[1])],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .unwrap();
            assert_eq!(n, 1);
        }
    }
}

/// Raw receiver: reads until N descriptors arrived, closing each.
fn raw_receive(path: &Path) -> Duration {
    let start = Instant::now();
    let stream = UnixStream::connect(path).unwrap();
    let mut got = 0;
    let mut byte = [0u8; 1];
    while got < N {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(BATCH))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        assert_eq!(r.bytes, 1);
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                for fd in fds {
                    drop::<OwnedFd>(fd);
                    got += 1;
                }
            }
        }
    }
    start.elapsed()
}

fn handover_receive(path: &Path, expect_records: usize) -> Duration {
    let start = Instant::now();
    let opts = ReceiveOptions::new().timeout(Duration::from_secs(60));
    let mut records = 0;
    let n = pass::receive_with(path, &opts, |fd, _| {
        records = fd.record() + 1;
        drop(fd);
        Ok(())
    })
    .unwrap();
    let took = start.elapsed();
    assert_eq!((n, records), (N, expect_records));
    took
}

fn child() {
    raise_nofile();
    let dir = PathBuf::from(std::env::var("HANDOVER_BENCH_DIR").unwrap());
    let rounds: usize = std::env::var("HANDOVER_BENCH_ROUNDS")
        .unwrap()
        .parse()
        .unwrap();
    // One warm-up round, not reported.
    for round in 0..=rounds {
        let raw = raw_receive(&dir.join("raw"));
        let raw1 = raw_receive(&dir.join("raw1"));
        let one = handover_receive(&dir.join("one"), 1);
        let many = handover_receive(&dir.join("many"), N);
        if round > 0 {
            println!(
                "times {} {} {} {}",
                raw.as_nanos(),
                raw1.as_nanos(),
                one.as_nanos(),
                many.as_nanos()
            );
        }
    }
}

fn median(v: &mut [u128]) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64 / 1e6
}

fn main() {
    if std::env::var(ROLE).is_ok() {
        child();
        return;
    }
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    raise_nofile();
    let dir = tempfile::Builder::new()
        .prefix("hb")
        .tempdir_in("/tmp")
        .unwrap();

    let mut fds = Vec::with_capacity(N);
    while fds.len() < N {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        fds.push(r);
        fds.push(w);
    }
    let fds = Arc::new(fds);

    for (name, batch) in [("raw", BATCH), ("raw1", 1)] {
        let raw = UnixListener::bind(dir.path().join(name)).unwrap();
        let raw_fds = fds.clone();
        std::thread::spawn(move || raw_serve(raw, raw_fds, batch));
    }

    let one_fds = fds.clone();
    let one = Server::bind(dir.path().join("one"))
        .unwrap()
        .timeout(Duration::from_secs(60))
        .spawn(move |s: &mut Session<'_>| {
            let b: Vec<BorrowedFd<'_>> = one_fds.iter().map(AsFd::as_fd).collect();
            s.send(&b, &Meta::new().with("name", "all").into())
        })
        .unwrap();
    let many_fds = fds.clone();
    let many = Server::bind(dir.path().join("many"))
        .unwrap()
        .timeout(Duration::from_secs(60))
        .spawn(move |s: &mut Session<'_>| {
            for (i, fd) in many_fds.iter().enumerate() {
                s.send(
                    &[fd.as_fd()],
                    &Metadata::Bytes((i as u32).to_be_bytes().to_vec()),
                )?;
            }
            Ok(())
        })
        .unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, "receive")
        .env("HANDOVER_BENCH_DIR", dir.path())
        .env("HANDOVER_BENCH_ROUNDS", rounds.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut raw_t, mut raw1_t, mut one_t, mut many_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let v: Vec<u128> = line
            .strip_prefix("times ")
            .unwrap()
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        raw_t.push(v[0]);
        raw1_t.push(v[1]);
        one_t.push(v[2]);
        many_t.push(v[3]);
    }
    assert!(
        child.wait().unwrap().success(),
        "the receiving process failed"
    );
    drop(one);
    drop(many);

    let raw = median(&mut raw_t);
    let raw1 = median(&mut raw1_t);
    let one = median(&mut one_t);
    let many = median(&mut many_t);
    println!("passing {N} descriptors between two processes, median of {rounds} rounds:");
    println!("  raw sendmsg/recvmsg loop, 253 per message     {raw:8.2} ms");
    println!("  raw sendmsg/recvmsg loop, 1 per message       {raw1:8.2} ms");
    println!(
        "  handover pass, 1 record of {N}               {one:8.2} ms   ratio {:.2} (vs 253 per message)",
        one / raw
    );
    println!(
        "  handover pass, {N} records of 1 with meta    {many:8.2} ms   ratio {:.2} (vs 1 per message)",
        many / raw1
    );
}
