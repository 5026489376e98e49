//! The load and `verify()` against small threaded HTTP servers on 127.0.0.1.
//!
//! Every wait has a deadline; every server stops when its handle drops.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use handover_verify::{
    FailureKind, Load, LoadConfig, Mode, Report, Trigger, VerifyConfig, VerifyError, verify,
};

const WAIT: Duration = Duration::from_secs(10);

/// What the test server does with each request.
#[derive(Clone, Copy, Debug)]
enum Behavior {
    /// `200` with body `pid=<id>\n`.
    Ok,
    /// Like `Ok`, but the body is chunked.
    Chunked,
    /// Answers with this status.
    Status(u16),
    /// Every n-th request (server-wide) is answered by a TCP reset.
    ResetEvery(u64),
    /// Reads requests, never answers.
    Silent,
    /// Answers something that is not HTTP.
    Garbage,
    /// `200` without Content-Length: the body ends when the connection does.
    UntilClose,
    /// Closes a connection after n responses on it; `announce` adds
    /// `Connection: close` to the last one, otherwise it just closes.
    CloseAfter { n: u64, announce: bool },
}

struct TestServer {
    addr: SocketAddr,
    pid: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let pid = Arc::new(AtomicU32::new(1000));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let acceptor = {
            let (pid, stop) = (Arc::clone(&pid), Arc::clone(&stop));
            thread::spawn(move || {
                let mut workers = Vec::new();
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (pid, stop, requests) =
                        (Arc::clone(&pid), Arc::clone(&stop), Arc::clone(&requests));
                    workers.push(thread::spawn(move || {
                        serve(stream, behavior, &pid, &stop, &requests);
                    }));
                    workers.retain(|w| !w.is_finished());
                }
                for worker in workers {
                    let _ = worker.join();
                }
            })
        };
        TestServer {
            addr,
            pid,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::SeqCst);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Reads one request head; false on EOF, error or stop.
fn read_request(reader: &mut BufReader<TcpStream>, stop: &AtomicBool) -> Option<bool> {
    let mut close = false;
    let mut line = String::new();
    let mut lines = 0;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::SeqCst) {
                    return None;
                }
                continue;
            }
            Err(_) => return None,
        }
        lines += 1;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            return (lines > 1).then_some(close);
        }
        if trimmed.eq_ignore_ascii_case("connection: close") {
            close = true;
        }
    }
}

fn serve(
    stream: TcpStream,
    behavior: Behavior,
    pid: &AtomicU32,
    stop: &AtomicBool,
    requests: &AtomicU64,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.set_nodelay(true);
    let Ok(reader_stream) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader_stream);
    let mut writer = stream;
    let mut on_conn = 0u64;
    while let Some(client_close) = read_request(&mut reader, stop) {
        on_conn += 1;
        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
        let body = format!("pid={}\n", pid.load(Ordering::SeqCst));
        let mut close = client_close;
        let response = match behavior {
            Behavior::Ok => ok_response(&body, close),
            Behavior::Chunked => {
                let (a, b) = body.split_at(3);
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n{}\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
                    if close { "Connection: close\r\n" } else { "" },
                    a.len(),
                    b.len()
                )
            }
            Behavior::Status(code) => format!(
                "HTTP/1.1 {code} Oops\r\nContent-Length: 5\r\n{}\r\noops\n",
                if close { "Connection: close\r\n" } else { "" }
            ),
            Behavior::ResetEvery(every) => {
                if n % every == 0 {
                    // SO_LINGER 0 then close: the kernel sends RST.
                    let _ = socket2::SockRef::from(&writer).set_linger(Some(Duration::ZERO));
                    return;
                }
                ok_response(&body, close)
            }
            Behavior::Silent => {
                while !stop.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Behavior::Garbage => {
                close = true;
                "SSH-2.0-OpenSSH_9.6\r\n".to_owned()
            }
            Behavior::UntilClose => {
                close = true;
                format!("HTTP/1.1 200 OK\r\n\r\n{body}")
            }
            Behavior::CloseAfter { n, announce } => {
                let last = on_conn >= n;
                close |= last;
                ok_response(&body, close && (announce || client_close))
            }
        };
        if writer.write_all(response.as_bytes()).is_err() || close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Write);
}

fn ok_response(body: &str, close: bool) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
}

fn config(addr: SocketAddr, mode: Mode, connections: usize) -> LoadConfig {
    let mut cfg = LoadConfig::new(addr, mode);
    cfg.connections = connections;
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

/// Runs a load until `ok` successes (or the deadline), then stops it.
fn run_until_ok(cfg: LoadConfig, ok: u64) -> Report {
    let load = Load::start(cfg).expect("start load");
    load.wait_for_ok(ok, WAIT);
    load.stop()
}

fn assert_clean(report: &Report, min_ok: u64) {
    assert_eq!(report.failures_total(), 0, "{}", report.render_table());
    assert!(report.ok >= min_ok, "{}", report.render_table());
    assert_eq!(report.requests, report.ok);
    assert_eq!(report.pids.get(&1000).copied(), Some(report.ok));
    assert!(report.latency.count == report.ok && report.latency.max > Duration::ZERO);
}

#[test]
fn healthy_server_new_connection_mode() {
    let server = TestServer::start(Behavior::Ok);
    let report = run_until_ok(config(server.addr, Mode::NewConnection, 8), 500);
    assert_clean(&report, 500);
    assert_eq!(report.connects, report.requests);
    assert!(report.passed());
}

#[test]
fn healthy_server_keep_alive_mode() {
    let server = TestServer::start(Behavior::Ok);
    let report = run_until_ok(config(server.addr, Mode::KeepAlive, 8), 1000);
    assert_clean(&report, 1000);
    // Keep-alive: one connection per client.
    assert_eq!(report.connects, 8, "{}", report.render_table());
    assert_eq!(report.server_closes, 0);
}

#[test]
fn chunked_responses() {
    let server = TestServer::start(Behavior::Chunked);
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let report = run_until_ok(config(server.addr, mode, 4), 200);
        assert_clean(&report, 200);
    }
}

#[test]
fn body_until_close_is_read_to_the_end() {
    let server = TestServer::start(Behavior::UntilClose);
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let report = run_until_ok(config(server.addr, mode, 4), 200);
        assert_clean(&report, 200);
        assert_eq!(
            report.connects,
            report.requests,
            "{}",
            report.render_table()
        );
    }
}

#[test]
fn malformed_response_is_other() {
    let server = TestServer::start(Behavior::Garbage);
    let load = Load::start(config(server.addr, Mode::KeepAlive, 2)).expect("start");
    assert!(load.wait_for_failures(5, WAIT));
    let report = load.stop();
    assert_eq!(report.failures_of(FailureKind::Other), report.requests);
    let error = &report.failure_samples[0].error;
    assert!(
        error.contains("malformed response") && error.contains("SSH-2.0"),
        "{error}"
    );
}

#[test]
fn server_closing_keep_alive_connections_is_not_a_failure() {
    // Announced with `Connection: close`: no race at all.
    let server = TestServer::start(Behavior::CloseAfter {
        n: 3,
        announce: true,
    });
    let report = run_until_ok(config(server.addr, Mode::KeepAlive, 4), 300);
    assert_clean(&report, 300);
    assert!(report.server_closes >= 50, "{}", report.render_table());

    // Unannounced close of an idle connection: the think time lets the FIN
    // arrive before the next request, so the client must notice and reconnect.
    let server = TestServer::start(Behavior::CloseAfter {
        n: 3,
        announce: false,
    });
    let mut cfg = config(server.addr, Mode::KeepAlive, 4);
    cfg.think_time = Duration::from_millis(15);
    let report = run_until_ok(cfg, 90);
    assert_clean(&report, 90);
    assert!(report.server_closes >= 20, "{}", report.render_table());
    assert!(report.connects >= 30, "{}", report.render_table());
}

#[test]
fn resets_are_counted() {
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let server = TestServer::start(Behavior::ResetEvery(100));
        let load = Load::start(config(server.addr, mode, 8)).expect("start");
        assert!(
            load.wait_for_ok(500, WAIT),
            "{}",
            load.snapshot().render_table()
        );
        assert!(
            load.wait_for_failures(3, WAIT),
            "{}",
            load.snapshot().render_table()
        );
        let report = load.stop();
        let resets =
            report.failures_of(FailureKind::Reset) + report.failures_of(FailureKind::ShortResponse);
        assert!(resets >= 3, "{mode:?}: {}", report.render_table());
        assert_eq!(resets, report.failures_total(), "{}", report.render_table());
        assert!(!report.passed());
        // Roughly one in a hundred.
        assert!(
            report.failures_total() * 50 < report.requests,
            "{}",
            report.render_table()
        );
        let sample = &report.failure_samples[0];
        assert!(
            sample.error.contains("after writing the request"),
            "{sample}"
        );
    }
}

#[test]
fn bad_status_is_counted() {
    let server = TestServer::start(Behavior::Status(500));
    for mode in [Mode::NewConnection, Mode::KeepAlive] {
        let load = Load::start(config(server.addr, mode, 2)).expect("start");
        assert!(load.wait_for_failures(20, WAIT));
        let report = load.stop();
        assert_eq!(report.ok, 0);
        assert_eq!(report.failures_of(FailureKind::BadStatus), report.requests);
        assert!(report.failure_samples[0].error.contains("status 500"));
        assert!(
            report.pids.is_empty(),
            "only successful responses count per pid"
        );
        let table = report.render_table();
        assert!(
            table.contains("bad_status") && table.contains("FAIL"),
            "{table}"
        );
    }
}

#[test]
fn refused_is_counted() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    }; // Dropped: nothing listens there now.
    let load = Load::start(config(addr, Mode::KeepAlive, 2)).expect("start");
    assert!(load.wait_for_failures(10, WAIT));
    let report = load.stop();
    assert_eq!(report.failures_of(FailureKind::Refused), report.requests);
    assert_eq!(report.ok, 0);
    assert!(report.failure_samples[0].error.contains("connecting"));
}

#[test]
fn timeout_is_counted_and_stop_is_bounded() {
    let server = TestServer::start(Behavior::Silent);
    let mut cfg = config(server.addr, Mode::KeepAlive, 2);
    cfg.request_timeout = Duration::from_millis(200);
    let load = Load::start(cfg).expect("start");
    assert!(load.wait_for_failures(2, WAIT));
    let stopping = Instant::now();
    let report = load.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert!(
        report.failures_of(FailureKind::Timeout) >= 2,
        "{}",
        report.render_table()
    );
    assert_eq!(
        report.failures_of(FailureKind::Timeout),
        report.failures_total()
    );
    let error = &report.failure_samples[0].error;
    assert!(
        error.contains("200ms") && error.contains("before any response byte"),
        "{error}"
    );
}

#[test]
fn wait_for_new_pid_sees_the_switch() {
    let server = TestServer::start(Behavior::Ok);
    let load = Load::start(config(server.addr, Mode::KeepAlive, 4)).expect("start");
    assert!(load.wait_for_ok(10, WAIT));
    let before = load.pids_seen();
    assert_eq!(before, BTreeSet::from([1000]));
    assert_eq!(
        load.wait_for_new_pid(&before, Duration::from_millis(50)),
        None
    );
    server.set_pid(1001);
    assert_eq!(load.wait_for_new_pid(&before, WAIT), Some(1001));
    // Already seen: returns at once.
    assert_eq!(load.wait_for_new_pid(&before, Duration::ZERO), Some(1001));
    let report = load.stop();
    assert_eq!(report.distinct_pids(), 2);
    assert_eq!(report.failures_total(), 0);
}

#[test]
fn dropping_a_load_stops_it() {
    let server = TestServer::start(Behavior::Ok);
    let load = Load::start(config(server.addr, Mode::KeepAlive, 2)).expect("start");
    assert!(load.wait_for_ok(10, WAIT));
    drop(load);
    drop(server); // Joins its threads: would hang if the clients kept going.
}

#[test]
fn verify_records_each_reload() {
    let server = TestServer::start(Behavior::Ok);
    let pid = Arc::clone(&server.pid);
    let trigger = Trigger::custom(move || {
        pid.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let cfg = VerifyConfig::new(
        config(server.addr, Mode::KeepAlive, 4),
        Duration::from_millis(1300),
    )
    .with_reloads(Duration::from_millis(300), trigger);
    let report = verify(cfg).expect("verify");
    let table = report.render_table();
    assert_eq!(report.reloads.len(), 4, "{table}");
    for (i, reload) in report.reloads.iter().enumerate() {
        assert_eq!(reload.index, i + 1);
        assert!(
            reload.trigger_ok && reload.trigger_error.is_none(),
            "{table}"
        );
        assert!(reload.pid_changed, "{table}");
        assert_eq!(reload.new_pid, Some(1001 + i as u32), "{table}");
        let ready = reload.ready_after.expect("ready_after");
        assert!(ready < Duration::from_millis(300), "{table}");
        assert!(
            reload.at >= Duration::from_millis(300 * (i as u64 + 1)),
            "{table}"
        );
    }
    assert_eq!(report.distinct_pids(), 5, "{table}");
    assert_eq!(report.failures_total(), 0, "{table}");
    assert!(report.passed(), "{table}");
    assert!(report.duration >= Duration::from_millis(1300));
    assert!(
        table.contains("PASS") && table.contains("ready after"),
        "{table}"
    );

    let json = serde_json::to_value(&report).expect("json");
    assert!(
        json["duration_ms"].as_f64().expect("duration_ms") >= 1300.0,
        "{json}"
    );
    assert!(json["reloads"][0]["ready_after_ms"].is_f64(), "{json}");
    assert_eq!(json["reloads"][0]["pid_changed"], true);
    assert!(json["pids"]["1001"].is_u64(), "{json}");
    assert_eq!(json["mode"], "keep-alive");
    assert!(json["latency"]["p99_ms"].is_f64(), "{json}");
}

#[test]
fn verify_without_pid_change_and_failing_triggers() {
    let server = TestServer::start(Behavior::Ok);
    let mut cfg = VerifyConfig::new(
        config(server.addr, Mode::NewConnection, 2),
        Duration::from_millis(700),
    )
    .with_reloads(
        Duration::from_millis(200),
        Trigger::Command("echo 'reload refused' >&2; exit 3".to_owned()),
    );
    cfg.ready_timeout = Duration::from_millis(100);
    let report = verify(cfg).expect("verify");
    let table = report.render_table();
    assert_eq!(report.reloads.len(), 3, "{table}");
    for reload in &report.reloads {
        assert!(!reload.trigger_ok && !reload.pid_changed, "{table}");
        assert_eq!(reload.ready_after, None);
        let error = reload.trigger_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("reload refused") && error.contains('3'),
            "{error}"
        );
    }
    assert!(!report.passed());
    assert!(table.contains("FAILED: `echo"), "{table}");
}

#[test]
fn verify_kills_a_hung_command_and_gives_up_on_a_hung_closure() {
    let server = TestServer::start(Behavior::Ok);
    let started = Instant::now();
    let mut cfg = VerifyConfig::new(
        config(server.addr, Mode::KeepAlive, 2),
        Duration::from_millis(500),
    )
    .with_reloads(
        Duration::from_millis(100),
        Trigger::Command("sleep 30".to_owned()),
    );
    cfg.trigger_timeout = Duration::from_millis(150);
    let report = verify(cfg).expect("verify");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!report.reloads.is_empty());
    let error = report.reloads[0]
        .trigger_error
        .as_deref()
        .unwrap_or_default();
    assert!(error.contains("was killed"), "{error}");

    let started = Instant::now();
    let mut cfg = VerifyConfig::new(
        config(server.addr, Mode::KeepAlive, 2),
        Duration::from_millis(500),
    )
    .with_reloads(
        Duration::from_millis(100),
        Trigger::custom(|| {
            thread::sleep(Duration::from_secs(2));
            Ok(())
        }),
    );
    cfg.trigger_timeout = Duration::from_millis(100);
    let report = verify(cfg).expect("verify");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The hung trigger blocks further reloads.
    assert_eq!(report.reloads.len(), 1, "{}", report.render_table());
    let error = report.reloads[0]
        .trigger_error
        .as_deref()
        .unwrap_or_default();
    assert!(error.contains("did not return within"), "{error}");
    assert_eq!(report.failures_total(), 0);
}

#[test]
fn signal_trigger_and_panicking_trigger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("server.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).expect("write pid file");
    let mut trigger = Trigger::Signal {
        signal: 0,
        pid_file: pid_file.clone(),
    };
    assert_eq!(trigger.fire(WAIT), Ok(()));

    std::fs::write(&pid_file, "garbage").expect("write pid file");
    let error = trigger.fire(WAIT).expect_err("garbage pid");
    assert!(error.contains("expected a positive decimal pid"), "{error}");

    let mut missing = Trigger::Signal {
        signal: 1,
        pid_file: dir.path().join("missing.pid"),
    };
    let error = missing.fire(WAIT).expect_err("missing pid file");
    assert!(error.contains("cannot read pid file"), "{error}");

    let mut panics = Trigger::custom(|| panic!("boom"));
    let error = panics.fire(WAIT).expect_err("panic");
    assert!(error.contains("panicked: boom"), "{error}");

    assert_eq!(Trigger::Command("true".to_owned()).fire(WAIT), Ok(()));
}

#[test]
fn invalid_configs_are_rejected() {
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut cfg = LoadConfig::new(addr, Mode::KeepAlive);
    cfg.connections = 0;
    let err = Load::start(cfg).expect_err("zero connections");
    assert!(matches!(
        err,
        VerifyError::InvalidConfig {
            field: "connections",
            ..
        }
    ));
    assert!(err.to_string().contains("got 0"), "{err}");

    let mut cfg = LoadConfig::new(addr, Mode::KeepAlive);
    cfg.path = "no slash".to_owned();
    assert!(matches!(
        Load::start(cfg),
        Err(VerifyError::InvalidConfig { field: "path", .. })
    ));

    let mut cfg = VerifyConfig::new(
        LoadConfig::new(addr, Mode::KeepAlive),
        Duration::from_secs(1),
    );
    cfg.reload_every = Some(Duration::from_secs(1));
    assert!(matches!(
        verify(cfg),
        Err(VerifyError::InvalidConfig {
            field: "trigger",
            ..
        })
    ));
}
