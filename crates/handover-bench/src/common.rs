//! What every benchmark needs: finding the binaries, spawning and stopping
//! servers, probing them, reading /proc, statistics, markdown tables.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use handover::activation::Activation;
use handover::process::{Command, Process as Child, Stdio};
use rustix::process::{Pid, Signal, kill_process};

/// Where the programs under test are.
#[derive(Args, Debug, Clone)]
pub struct BinArgs {
    /// Directory with the release binaries `handover` and `ecdysis_server`
    /// (default: the directory of this program, e.g. target/release).
    #[arg(long, value_name = "DIR", global = true)]
    pub bin_dir: Option<PathBuf>,
    /// Directory with the `upgrade_http` example (default: BIN_DIR/examples).
    #[arg(long, value_name = "DIR", global = true)]
    pub examples_dir: Option<PathBuf>,
    /// Python 3 interpreter for the Python server.
    #[arg(long, value_name = "PATH", default_value = "python3", global = true)]
    pub python: String,
    /// The Python server script (default: bench/py_server.py of this checkout).
    #[arg(long, value_name = "PATH", global = true)]
    pub py_server: Option<PathBuf>,
    /// Keep the servers' stderr in this directory (default: discarded).
    #[arg(long, value_name = "DIR", global = true)]
    pub log_dir: Option<PathBuf>,
}

/// The programs under test, found.
#[derive(Debug, Clone)]
pub struct Bins {
    pub handover: PathBuf,
    pub upgrade_http: PathBuf,
    pub ecdysis_server: PathBuf,
    pub python: String,
    pub py_server: PathBuf,
    pub log_dir: Option<PathBuf>,
}

impl Bins {
    pub fn find(args: &BinArgs) -> Result<Bins, String> {
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .ok_or("cannot find the directory of this program; give --bin-dir")?,
        };
        let examples = args
            .examples_dir
            .clone()
            .unwrap_or_else(|| bin_dir.join("examples"));
        let py_server = args.py_server.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/py_server.py")
        });
        if let Some(d) = &args.log_dir {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create the log directory {}: {e}", d.display()))?;
        }
        Ok(Bins {
            handover: bin_dir.join("handover"),
            upgrade_http: examples.join("upgrade_http"),
            ecdysis_server: bin_dir.join("ecdysis_server"),
            python: args.python.clone(),
            py_server,
            log_dir: args.log_dir.clone(),
        })
    }

    /// Checks that the programs `kinds` need exist.
    pub fn check(&self, kinds: &[ServerKind]) -> Result<(), String> {
        let mut need: Vec<(&Path, &str)> = Vec::new();
        for kind in kinds {
            match kind {
                ServerKind::UpgradeHttp => need.push((
                    &self.upgrade_http,
                    "cargo build --release -p handover --example upgrade_http",
                )),
                ServerKind::Demo => {}
                ServerKind::Python => need.push((&self.py_server, "it is bench/py_server.py")),
                ServerKind::Ecdysis => need.push((
                    &self.ecdysis_server,
                    "cargo build --release -p handover-bench",
                )),
            }
        }
        // Every benchmark runs `handover` (the supervisor or demo-server).
        need.push((&self.handover, "cargo build --release -p handover-cli"));
        for (path, how) in need {
            if !path.exists() {
                return Err(format!(
                    "{} is missing ({how}); or point --bin-dir/--examples-dir at the build",
                    path.display()
                ));
            }
        }
        if kinds.contains(&ServerKind::Python) {
            let ok = std::process::Command::new(&self.python)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "{} does not run; give --python PATH to a Python 3",
                    self.python
                ));
            }
        }
        Ok(())
    }

    /// Where a server's stderr goes.
    pub fn stderr(&self, name: &str) -> Stdio {
        match &self.log_dir {
            Some(dir) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("{name}.log")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
            None => Stdio::null(),
        }
    }
}

/// Which server program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// handover's `upgrade_http` example (restarts itself on SIGHUP).
    UpgradeHttp,
    /// `handover demo-server` (hyper; LISTEN_FDS, READY=1, drains on SIGTERM).
    Demo,
    /// bench/py_server.py (Python 3 asyncio; LISTEN_FDS, READY=1, drains on SIGTERM).
    Python,
    /// `ecdysis_server` (the same hyper server, restarted by the ecdysis crate).
    Ecdysis,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::UpgradeHttp => "upgrade_http",
            ServerKind::Demo => "demo-server",
            ServerKind::Python => "py_server.py",
            ServerKind::Ecdysis => "ecdysis_server",
        }
    }

    /// The command that serves on an inherited socket (LISTEN_FDS), as
    /// `handover run` starts it.
    pub fn activated_command(self, bins: &Bins, idle_grace: Duration) -> Command {
        match self {
            ServerKind::UpgradeHttp => {
                let mut c = Command::new(&bins.upgrade_http);
                c.args(["--listen", "tcp://127.0.0.1:0", "--idle-grace-ms"])
                    .arg(idle_grace.as_millis().to_string());
                c
            }
            ServerKind::Demo => {
                let mut c = Command::new(&bins.handover);
                c.args(["--log-level", "warn", "demo-server"]);
                c
            }
            ServerKind::Python => {
                let mut c = Command::new(&bins.python);
                c.arg(&bins.py_server)
                    .arg("--idle-grace")
                    .arg(format!("{}", idle_grace.as_secs_f64()));
                c
            }
            ServerKind::Ecdysis => unreachable!("ecdysis_server binds its own port"),
        }
    }
}

// ---------------------------------------------------------------------------
// Processes

/// Pids of the processes this program spawned and waits for itself; the
/// orphan reaper leaves them alone.
fn managed() -> MutexGuard<'static, BTreeSet<u32>> {
    static MANAGED: OnceLock<Mutex<BTreeSet<u32>>> = OnceLock::new();
    MANAGED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Makes this process the reaper of its orphans (the old generations of the
/// self-upgrading servers are re-parented to it when their parent exits), and
/// reaps them in the background, so a long run leaves no zombies behind.
/// Also raises the soft limit of open files to the hard limit.
pub fn init_process() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut nofile = getrlimit(Resource::Nofile);
    if nofile.current != nofile.maximum {
        nofile.current = nofile.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, nofile) {
            eprintln!("handover-bench: cannot raise the open-file limit: {e}");
        }
    }
    if rustix::process::set_child_subreaper(Some(rustix::process::getpid())).is_err() {
        return;
    }
    let _ = thread::Builder::new().name("reaper".into()).spawn(|| {
        loop {
            thread::sleep(Duration::from_millis(200));
            reap_orphans();
        }
    });
}

fn reap_orphans() {
    let managed = managed();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            if managed.contains(&pid) || proc_state(pid) != Some('Z') {
                continue;
            }
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL after 15 s) and
/// waited for when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    pub pid: u32,
}

impl Proc {
    /// Spawns `cmd`, passing `fds` by socket activation when there are any.
    pub fn spawn(mut cmd: Command, fds: &Activation<'_>) -> io::Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let mut managed = managed();
        let child = fds.spawn(cmd).map_err(io::Error::other)?;
        managed.insert(child.id());
        Ok(Proc {
            pid: child.id(),
            child: Some(child),
        })
    }

    /// Whether it has exited (and was reaped).
    pub fn try_wait(&mut self) -> bool {
        matches!(
            self.child.as_mut().map(|c| c.try_wait()),
            Some(Ok(Some(_))) | None
        )
    }

    /// SIGTERM, wait up to `timeout`, then SIGKILL; returns whether it exited
    /// within the timeout.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = self.signal_if_running(&mut child, Signal::TERM);
        let deadline = Instant::now() + timeout;
        let in_time = loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break true,
                Ok(None) if Instant::now() >= deadline => break false,
                Ok(None) => thread::sleep(Duration::from_micros(500)),
            }
        };
        if !in_time {
            let _ = child.kill();
            let _ = child.wait();
        }
        managed().remove(&self.pid);
        in_time
    }

    fn signal_if_running(&self, child: &mut Child, sig: Signal) -> bool {
        if matches!(child.try_wait(), Ok(None)) {
            signal_pid(self.pid, sig);
            true
        } else {
            false
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(15));
    }
}

pub fn signal_pid(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = kill_process(p, sig);
    }
}

/// The state letter of /proc/PID/stat (R, S, Z, ...), None when gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.chars().next()
}

/// Whether a process has exited (gone, or a zombie).
pub fn is_gone(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

/// Polls until `pid` has exited; the time it was seen gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if is_gone(pid) {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_micros(500));
    }
}

/// CPU times of a process, in clock ticks: (utime + stime, cutime + cstime).
pub fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // After the comm: state is field 3; utime 14, stime 15, cutime 16, cstime 17.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some((n(14)? + n(15)?, n(16)? + n(17)?))
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

// ---------------------------------------------------------------------------
// Sockets and HTTP

/// A port free right now on 127.0.0.1 (for servers that must bind a fixed
/// port themselves).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One `GET /` on a new connection; the pid in the answer.
pub fn probe_once(addr: SocketAddr, timeout: Duration) -> io::Result<u32> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::with_capacity(256);
    s.read_to_end(&mut buf)?;
    parse_pid_response(&buf).ok_or_else(|| {
        io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&buf)
        ))
    })
}

/// The pid of a complete `200` answer whose body is `pid=N`.
pub fn parse_pid_response(buf: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(buf).ok()?;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return None;
    }
    let (_, body) = text.split_once("\r\n\r\n")?;
    body.lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.trim().parse().ok())
}

/// Waits until the server at `addr` answers.
pub fn wait_answering(addr: SocketAddr, timeout: Duration) -> Result<u32, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe_once(addr, Duration::from_secs(2)) {
            Ok(pid) => return Ok(pid),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("nothing answers at {addr} after {timeout:?}: {e}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Probes `addr` continuously on a thread of its own (a new connection per
/// request, 200 µs apart) and notes the first answer from a pid not in
/// `exclude`.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Option<(u32, Instant)>>>,
}

impl Prober {
    pub fn start(addr: SocketAddr, exclude: BTreeSet<u32>, timeout: Duration) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let deadline = Instant::now() + timeout;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok(pid) = probe_once(addr, Duration::from_secs(2)) {
                        if !exclude.contains(&pid) {
                            return Some((pid, Instant::now()));
                        }
                    }
                    thread::sleep(Duration::from_micros(200));
                }
                None
            })
        };
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    /// The first new pid and when it answered; None on timeout.
    pub fn wait(mut self) -> Option<(u32, Instant)> {
        self.thread.take().and_then(|t| t.join().ok().flatten())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// handover run

/// A `handover run` supervisor with its own runtime directory and control
/// socket; stopped when dropped.
pub struct Supervisor {
    pub proc: Proc,
    pub control: PathBuf,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Supervisor {
    /// Starts `handover run` with `binds` (addresses like
    /// `tcp://127.0.0.1:0`, the first named "http") and `program`.
    pub fn start(
        bins: &Bins,
        binds: &[String],
        extra: &[&str],
        program: Command,
        log_name: &str,
    ) -> Result<Supervisor, String> {
        let dir = tempfile::Builder::new()
            .prefix("handover-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let control = dir.path().join("control.sock");
        let mut cmd = Command::new(&bins.handover);
        cmd.args(["--log-level", "warn", "run"]);
        for (i, b) in binds.iter().enumerate() {
            if i == 0 {
                cmd.arg("--bind").arg(format!("http={b}"));
            } else {
                cmd.arg("--bind").arg(b);
            }
        }
        cmd.arg("--control")
            .arg(&control)
            .args(extra)
            .arg("--")
            .arg(program.get_program())
            .args(program.get_args())
            .env("XDG_RUNTIME_DIR", dir.path())
            .stderr(bins.stderr(log_name));
        let mut proc = Proc::spawn(cmd, &Activation::new())
            .map_err(|e| format!("starting handover run: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if proc.try_wait() {
                return Err("handover run exited at start (see --log-dir)".into());
            }
            match control_request(&control, "status", Duration::from_secs(10)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("handover run did not come up: {e}"));
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        };
        let addr = status["sockets"][0]["address"]
            .as_str()
            .and_then(|a| a.strip_prefix("tcp://"))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("handover run reported no tcp address: {status}"))?;
        let sup = Supervisor {
            proc,
            control,
            addr,
            _dir: dir,
        };
        wait_answering(addr, Duration::from_secs(30))?;
        Ok(sup)
    }

    /// Asks for a reload; returns the answer once the new generation is ready.
    pub fn reload(&self) -> Result<serde_json::Value, String> {
        control_request(&self.control, "reload", Duration::from_secs(120))
    }

    pub fn status(&self) -> Result<serde_json::Value, String> {
        control_request(&self.control, "status", Duration::from_secs(10))
    }

    /// The pid of the current generation.
    pub fn current_pid(&self) -> Result<u32, String> {
        let s = self.status()?;
        s["generations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["current"] == true)
            .and_then(|g| g["pid"].as_u64())
            .map(|p| p as u32)
            .ok_or_else(|| format!("no current generation in {s}"))
    }
}

/// One request on the control socket of `handover run`.
pub fn control_request(
    path: &Path,
    cmd: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{{\"cmd\":\"{cmd}\"}}\n").as_bytes())
        .map_err(|e| format!("control socket: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("control socket: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("control answer {line:?}: {e}"))?;
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(format!("{cmd}: {}", v["error"]))
    }
}

// ---------------------------------------------------------------------------
// Self-upgrading servers and naively restarted ones

/// A server that restarts itself on SIGHUP and keeps its pid in a pid file
/// (upgrade_http, ecdysis_server).
pub struct SelfUpgrading {
    pub kind: ServerKind,
    pub addr: SocketAddr,
    pub pid_file: PathBuf,
    first: Proc,
    _dir: tempfile::TempDir,
}

impl SelfUpgrading {
    pub fn start(
        bins: &Bins,
        kind: ServerKind,
        idle_grace: Duration,
    ) -> Result<SelfUpgrading, String> {
        SelfUpgrading::start_with(bins, kind, idle_grace, &[])
    }

    /// [`start`](Self::start) with more arguments for `upgrade_http`.
    pub fn start_with(
        bins: &Bins,
        kind: ServerKind,
        idle_grace: Duration,
        extra: &[&str],
    ) -> Result<SelfUpgrading, String> {
        let dir = tempfile::Builder::new()
            .prefix("handover-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let pid_file = dir.path().join("server.pid");
        let grace = idle_grace.as_millis().to_string();
        let (proc, addr) = match kind {
            ServerKind::UpgradeHttp => {
                // Bound here and passed by socket activation: no port race.
                let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                let mut cmd = ServerKind::UpgradeHttp.activated_command(bins, idle_grace);
                cmd.arg("--pid-file")
                    .arg(&pid_file)
                    .args(extra)
                    .env("RUST_LOG", "warn")
                    .stderr(bins.stderr("upgrade_http"));
                let mut fds = Activation::new();
                fds.fd("http", listener.as_fd())
                    .map_err(|e| e.to_string())?;
                let proc = Proc::spawn(cmd, &fds).map_err(|e| format!("upgrade_http: {e}"))?;
                (proc, addr)
            }
            ServerKind::Ecdysis => {
                let addr = localhost(free_port().map_err(|e| e.to_string())?);
                let mut cmd = Command::new(&bins.ecdysis_server);
                cmd.arg("--listen")
                    .arg(addr.to_string())
                    .arg("--pid-file")
                    .arg(&pid_file)
                    .args(["--idle-grace-ms", &grace])
                    .env("RUST_LOG", "warn")
                    .stderr(bins.stderr("ecdysis_server"));
                let proc = Proc::spawn(cmd, &Activation::new())
                    .map_err(|e| format!("ecdysis_server: {e}"))?;
                (proc, addr)
            }
            other => return Err(format!("{} does not restart itself", other.name())),
        };
        let server = SelfUpgrading {
            kind,
            addr,
            pid_file,
            first: proc,
            _dir: dir,
        };
        wait_answering(addr, Duration::from_secs(30))?;
        server.wait_pid_file(|_| true, Duration::from_secs(30))?;
        Ok(server)
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn wait_pid_file(&self, ok: impl Fn(u32) -> bool, timeout: Duration) -> Result<u32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = self.pid().filter(|&p| ok(p)) {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: the pid file {} did not change within {timeout:?}",
                    self.kind.name(),
                    self.pid_file.display()
                ));
            }
            thread::sleep(Duration::from_micros(250));
        }
    }

    /// SIGHUP to the current pid, then waits until the pid file names
    /// another process (which is then ready). Returns (old pid, new pid).
    pub fn upgrade(&self, timeout: Duration) -> Result<(u32, u32), String> {
        let old = self.pid().ok_or("no pid file")?;
        signal_pid(old, Signal::HUP);
        let new = self.wait_pid_file(|p| p != old, timeout)?;
        Ok((old, new))
    }
}

impl Drop for SelfUpgrading {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            signal_pid(pid, Signal::TERM);
            if wait_gone(pid, Duration::from_secs(15)).is_none() {
                signal_pid(pid, Signal::KILL);
            }
        }
        self.first.stop(Duration::from_secs(15));
    }
}

/// A server restarted the naive way: SIGTERM, wait until it has exited,
/// start it again; it binds its fixed port itself (`demo-server` cannot, so
/// the bench binds a fresh socket for it each time and passes it by socket
/// activation, which is the same thing for the clients: the old socket is
/// closed with the old process, a new one is made).
pub struct Naive {
    kind: ServerKind,
    bins: Bins,
    pub addr: SocketAddr,
    idle_grace: Duration,
    proc: Option<Proc>,
}

impl Naive {
    pub fn start(bins: &Bins, kind: ServerKind, idle_grace: Duration) -> Result<Naive, String> {
        let addr = localhost(free_port().map_err(|e| e.to_string())?);
        let mut naive = Naive {
            kind,
            bins: bins.clone(),
            addr,
            idle_grace,
            proc: None,
        };
        naive.spawn()?;
        wait_answering(addr, Duration::from_secs(30))?;
        Ok(naive)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let grace_ms = self.idle_grace.as_millis().to_string();
        let bins = &self.bins;
        let proc = match self.kind {
            ServerKind::UpgradeHttp => {
                let mut cmd = Command::new(&bins.upgrade_http);
                cmd.arg("--listen")
                    .arg(self.addr.to_string())
                    .args(["--idle-grace-ms", &grace_ms])
                    .env("RUST_LOG", "warn")
                    .stderr(bins.stderr("naive-upgrade_http"));
                Proc::spawn(cmd, &Activation::new())
            }
            ServerKind::Python => {
                let mut cmd = Command::new(&bins.python);
                cmd.arg(&bins.py_server)
                    .arg("--bind")
                    .arg(self.addr.to_string())
                    .arg("--idle-grace")
                    .arg(format!("{}", self.idle_grace.as_secs_f64()))
                    .stderr(bins.stderr("naive-py_server"));
                Proc::spawn(cmd, &Activation::new())
            }
            ServerKind::Ecdysis => {
                let mut cmd = Command::new(&bins.ecdysis_server);
                cmd.arg("--listen")
                    .arg(self.addr.to_string())
                    .arg("--pid-file")
                    .arg(
                        std::env::temp_dir()
                            .join(format!("handover-bench-naive-{}.pid", self.addr.port())),
                    )
                    .args(["--idle-grace-ms", &grace_ms])
                    .stderr(bins.stderr("naive-ecdysis_server"));
                Proc::spawn(cmd, &Activation::new())
            }
            ServerKind::Demo => {
                let listener =
                    bind_reuse(self.addr).map_err(|e| format!("binding {}: {e}", self.addr))?;
                let mut cmd = ServerKind::Demo.activated_command(bins, self.idle_grace);
                cmd.stderr(bins.stderr("naive-demo-server"));
                let mut fds = Activation::new();
                fds.fd("http", listener.as_fd())
                    .map_err(|e| e.to_string())?;
                Proc::spawn(cmd, &fds)
            }
        };
        self.proc = Some(proc.map_err(|e| format!("starting {}: {e}", self.kind.name()))?);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid)
    }

    /// SIGTERM, wait for the exit, start again. Returns (old pid, new pid).
    pub fn restart(&mut self) -> Result<(u32, u32), String> {
        let mut old = self.proc.take().ok_or("not running")?;
        let old_pid = old.pid;
        old.stop(Duration::from_secs(60));
        // Binding may briefly fail while the old socket is released.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
        Ok((old_pid, self.pid().unwrap_or(0)))
    }
}

/// A listening TCP socket with SO_REUSEADDR (as servers bind theirs).
pub fn bind_reuse(addr: SocketAddr) -> io::Result<TcpListener> {
    // std sets SO_REUSEADDR on Unix.
    TcpListener::bind(addr)
}

// ---------------------------------------------------------------------------
// Statistics and output

pub fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 50.0)
}

/// Nearest-rank percentile (0 to 100) of `v`.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `12.3` ms with a sensible number of digits, or `-`.
pub fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) if v >= 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.2} ms"),
    }
}

/// `median [min–max]` of milliseconds.
pub fn fmt_spread(v: &[f64]) -> String {
    match (median(v), percentile(v, 0.0), percentile(v, 100.0)) {
        (Some(m), Some(lo), Some(hi)) => {
            format!("{} [{}–{}]", fmt_ms(Some(m)), trim_ms(lo), trim_ms(hi))
        }
        _ => "-".into(),
    }
}

fn trim_ms(v: f64) -> String {
    fmt_ms(Some(v)).trim_end_matches(" ms").to_string()
}

pub fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "-".into(),
    }
}

/// A markdown table.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - c.chars().count();
                s.push_str(&format!(" {c}{} |", " ".repeat(pad)));
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.headers);
        out.push('|');
        for w in &widths {
            out.push_str(&format!("{}|", "-".repeat(w + 2)));
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// Parses `250ms`, `2s`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let v: f64 = num.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: expected a unit of ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&v), Some(3.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(5.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, 2.0]), Some(1.0));
    }

    #[test]
    fn pid_responses() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\npid=1234\n";
        assert_eq!(parse_pid_response(r), Some(1234));
        assert_eq!(parse_pid_response(b"HTTP/1.1 503 x\r\n\r\npid=1\n"), None);
        assert_eq!(parse_pid_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn tables() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["xyz".into(), "1".into()]);
        assert_eq!(t.render(), "| a   | bb |\n|-----|----|\n| xyz | 1  |\n");
    }

    #[test]
    fn proc_reading() {
        let me = std::process::id();
        assert!(!is_gone(me));
        assert!(cpu_ticks(me).is_some());
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
    }
}
