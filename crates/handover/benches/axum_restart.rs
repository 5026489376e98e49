//! Failed requests while an axum app is restarted: the way axum users do it
//! today (`axum::serve(...).with_graceful_shutdown(...)`, the process
//! stopped and started again, or a new one started first on the port with
//! `SO_REUSEPORT`), against handover (`drain::http::serve` with
//! `drain::http::tower(router)`, upgraded in place with `Upgrader`), side by
//! side in one run.
//!
//! ```text
//! cargo bench -p handover --bench axum_restart            # 20 restarts per row
//! ```
//!
//! The same `axum::Router` in every row (`GET /` answers `pid=<pid>`). The
//! load is handover-verify's: HTTP/1.1 keep-alive, HTTP/1.1 with a new
//! connection per request, and HTTP/2 (h2c, 2 connections x 8 streams), 8
//! clients, every request that did not get a complete 2xx answer counted,
//! by kind. Without `--bench`, 2 restarts per row as a smoke test.
//!
//! The bench re-executes itself as the server (`AXUM_RESTART_ROLE`), as
//! handover's upgrade re-executes the server binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handover::drain::http::{self, HttpOptions};
use handover::drain::{Drain, Listener};
use handover::upgrade::{Options, RunOptions, Upgrader};
use handover_verify::{FailureKind, Load, LoadConfig, Mode, Protocol, Report};
use rustix::process::{Pid, Signal};

const ROLE: &str = "AXUM_RESTART_ROLE";

/// A load's configuration for a server address.
type MakeLoad = fn(SocketAddr) -> LoadConfig;

fn app() -> axum::Router {
    axum::Router::new().route(
        "/",
        axum::routing::get(|| async { format!("pid={}\n", std::process::id()) }),
    )
}

/// The server roles: `plain` (axum::serve, binds the port),
/// `plain-reuseport` (the same, with SO_REUSEPORT), `handover`.
fn server(role: &str) {
    if std::env::var_os("AXUM_RESTART_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let addr: SocketAddr = std::env::var("AXUM_RESTART_ADDR").unwrap().parse().unwrap();
    if role == "handover" {
        let pid_file = std::env::var("AXUM_RESTART_PID_FILE").unwrap();
        let upgrader = Upgrader::new(Options::default().pid_file(pid_file)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let drain = Drain::new();
            let address = format!("tcp://{addr}").parse().unwrap();
            let listener: tokio::net::TcpListener = upgrader.listen("http", &address).unwrap();
            let listener = Listener::new(listener, &drain);
            let signals = upgrader.signals().unwrap();
            upgrader.ready().unwrap();
            let serving = tokio::spawn(async move {
                http::serve(&listener, http::tower(app()), &HttpOptions::default())
                    .await
                    .unwrap();
            });
            signals
                .run(
                    &drain,
                    RunOptions::default().drain_timeout(Duration::from_secs(30)),
                )
                .await
                .unwrap();
            let _ = serving.await;
        });
        rt.shutdown_timeout(Duration::from_millis(100));
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.set_reuse_address(true).unwrap();
        if role == "plain-reuseport" {
            socket.set_reuse_port(true).unwrap();
        }
        socket.bind(&addr.into()).unwrap();
        socket.listen(1024).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        println!("ready");
        axum::serve(listener, app())
            .with_graceful_shutdown(async move {
                term.recv().await;
            })
            .await
            .unwrap();
    });
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum How {
    /// axum::serve with graceful shutdown: SIGTERM, wait for the exit,
    /// start again.
    StopStart,
    /// axum::serve with graceful shutdown, SO_REUSEPORT: start the new
    /// process, then SIGTERM the old one.
    ReusePort,
    /// handover: SIGHUP, the process upgrades itself.
    Handover,
}

impl How {
    fn name(self) -> &'static str {
        match self {
            How::StopStart => "axum::serve + graceful shutdown: stop, then start",
            How::ReusePort => "axum::serve + graceful shutdown: start (SO_REUSEPORT), then stop",
            How::Handover => "handover: drain::http::serve(tower(router)), Upgrader",
        }
    }
}

/// The servers of one row; every process is killed on drop.
struct Servers {
    how: How,
    addr: SocketAddr,
    dir: PathBuf,
    current: Option<Child>,
    /// Every pid seen (handover's generations are not our children).
    pids: Vec<u32>,
}

impl Servers {
    fn start(how: How, addr: SocketAddr, dir: &Path) -> Servers {
        let mut s = Servers {
            how,
            addr,
            dir: dir.to_owned(),
            current: None,
            pids: Vec::new(),
        };
        let child = s.spawn();
        s.current = Some(child);
        s
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn spawn(&mut self) -> Child {
        let role = match self.how {
            How::StopStart => "plain",
            How::ReusePort => "plain-reuseport",
            How::Handover => "handover",
        };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, role)
            .env("AXUM_RESTART_ADDR", self.addr.to_string())
            .env("AXUM_RESTART_PID_FILE", self.pid_file())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.pids.push(child.id());
        if self.how == How::Handover {
            self.wait_pid_file(child.id());
        } else {
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready", "the server did not start");
        }
        child
    }

    fn wait_pid_file(&self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.current_pid() != Some(pid) {
            assert!(Instant::now() < deadline, "pid file never named {pid}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn current_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// One restart; returns once the new process serves.
    fn restart(&mut self, load: &Load) {
        match self.how {
            How::StopStart => {
                let mut old = self.current.take().unwrap();
                signal(old.id(), Signal::TERM);
                old.wait().unwrap();
                let new = self.spawn();
                self.current = Some(new);
            }
            How::ReusePort => {
                let mut old = self.current.take().unwrap();
                let new = self.spawn();
                self.current = Some(new);
                signal(old.id(), Signal::TERM);
                old.wait().unwrap();
            }
            How::Handover => {
                let old = self.current_pid().unwrap();
                let seen = load.pids_seen();
                signal(old, Signal::HUP);
                let new = load
                    .wait_for_new_pid(&seen, Duration::from_secs(30))
                    .expect("a new generation answers");
                self.pids.push(new);
                self.wait_pid_file(new);
                // The old generation exits once drained (and is reaped here:
                // this process is a subreaper).
                let deadline = Instant::now() + Duration::from_secs(30);
                while !exited(old) {
                    assert!(Instant::now() < deadline, "generation {old} did not exit");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for &pid in &self.pids {
            signal(pid, Signal::KILL);
        }
        if let Some(c) = &mut self.current {
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for &pid in &self.pids {
            while !exited(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Whether `pid` has exited: reaped now (a child, or an orphan this
/// subreaper adopted), or gone, or a zombie of someone else.
fn exited(pid: u32) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return true;
    };
    if let Ok(Some(_)) = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG) {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn row(
    how: How,
    load_name: &str,
    cfg: impl Fn(SocketAddr) -> LoadConfig,
    restarts: usize,
) -> (String, Report) {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut servers = Servers::start(how, addr, dir.path());
    let load = Load::start(cfg(addr)).unwrap();
    assert!(
        load.wait_for_ok(50, Duration::from_secs(30)),
        "no load got through"
    );
    let mut with_failures = 0;
    for _ in 0..restarts {
        let before = load.snapshot().failures_total();
        servers.restart(&load);
        std::thread::sleep(Duration::from_millis(200));
        if load.snapshot().failures_total() > before {
            with_failures += 1;
        }
    }
    let report = load.stop();
    let kinds: Vec<String> = [
        FailureKind::Refused,
        FailureKind::Reset,
        FailureKind::ShortResponse,
        FailureKind::Timeout,
        FailureKind::Other,
    ]
    .iter()
    .map(|k| report.failures_of(*k).to_string())
    .collect();
    let failed = report.failures_total();
    let failed = if failed > 0 {
        format!("**{failed}**")
    } else {
        "0".to_owned()
    };
    (
        format!(
            "| {} | {load_name} | {restarts} | {:.1}s | {} | {failed} | {} | {with_failures} |",
            how.name(),
            report.duration.as_secs_f64(),
            report.ok,
            kinds.join(" / "),
        ),
        report,
    )
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        return server(&role);
    }
    let full = std::env::args().any(|a| a == "--bench");
    let restarts = if full { 20 } else { 2 };
    // Old generations are re-parented here, and reaped at once.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    let started = Instant::now();
    let loads: [(&str, MakeLoad); 3] = [
        ("HTTP/1.1 keep-alive, 8 clients", |addr| {
            LoadConfig::new(addr, Mode::KeepAlive)
        }),
        ("HTTP/1.1, a connection per request, 8 clients", |addr| {
            LoadConfig::new(addr, Mode::NewConnection)
        }),
        ("HTTP/2 (h2c), 2 connections x 8 streams", |addr| {
            let mut cfg = LoadConfig::new(addr, Mode::KeepAlive);
            cfg.protocol = Protocol::Http2;
            cfg.connections = 2;
            cfg.streams = 8;
            cfg
        }),
    ];
    println!(
        "| restarted by | load | restarts | run time | requests ok | failed | refused / reset / short / timeout / other | restarts with failures |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut samples = Vec::new();
    for (load_name, cfg) in loads {
        for how in [How::StopStart, How::ReusePort, How::Handover] {
            let (line, report) = row(how, load_name, cfg, restarts);
            println!("{line}");
            if let Some(first) = report.failure_samples.first() {
                samples.push(format!("- {}, {load_name}: {}", how.name(), first.error));
            }
        }
    }
    println!(
        "\n{restarts} restarts per row, 200 ms apart; total time {:.0}s",
        started.elapsed().as_secs_f64()
    );
    if !samples.is_empty() {
        println!(
            "\nThe first failure of each row that had some:\n{}",
            samples.join("\n")
        );
    }
}
