//! `handover demo`: the quick start's main job. Runs the built-in server
//! under `handover run`, reloads it under load, and prints what happened.

use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use handover::activation::ListenFds;
use handover::drain::http::{HttpOptions, serve_connection};
use handover::drain::{Drain, Listener, is_closed_error};
use handover::notify::{Notifier, State};
use handover_verify::{LoadConfig, Mode, VerifyConfig};

use crate::{control, duration, verify};

/// Options of `handover demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// How long to load each connection mode (new connection per request,
    /// then keep-alive).
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = duration::parse)]
    duration: Duration,

    /// Reload this often during the load.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration::parse)]
    reload_every: Duration,

    /// Concurrent clients.
    #[arg(long, value_name = "N", default_value_t = 16)]
    connections: usize,
}

/// Options of the built-in server.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// How long to let connections finish after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    drain_timeout: Duration,
}

/// Kills the supervisor by pid when the demo ends, however it ends.
struct Supervisor(Child);

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Runs the demo.
pub fn main(args: DemoArgs) -> ExitCode {
    match demo(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("handover demo: {e}");
            ExitCode::from(2)
        }
    }
}

fn demo(args: &DemoArgs) -> Result<bool, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let dir = std::env::temp_dir().join(format!("handover-demo-{}", std::process::id()));
    control::ensure_private_dir(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let ctl = dir.join("control.sock");
    println!(
        "handover demo: starting `handover run` with the built-in server on 127.0.0.1 (a free port)"
    );
    let mut cmd = Command::new(&exe);
    cmd.args([
        "--log-level",
        "warn",
        "run",
        "--bind",
        "http=tcp://127.0.0.1:0",
        "--control",
    ])
    .arg(&ctl)
    .args(["--stop-timeout", "15s", "--"])
    .arg(&exe)
    .arg("demo-server")
    .env("XDG_RUNTIME_DIR", &dir)
    .stdin(Stdio::null());
    let mut supervisor = Supervisor(
        cmd.spawn()
            .map_err(|e| format!("starting handover run: {e}"))?,
    );
    let status = wait_status(&ctl, &mut supervisor.0, Duration::from_secs(20))?;
    let address = status["sockets"][0]["address"]
        .as_str()
        .and_then(|a| a.strip_prefix("tcp://"))
        .ok_or("handover run did not report its address")?
        .parse()
        .map_err(|e| format!("handover run reported a bad address: {e}"))?;
    println!(
        "handover demo: supervisor pid {}, serving http://{address}/ (every answer says which pid served it)\n",
        supervisor.0.id()
    );
    let mut all_passed = true;
    for (mode, name) in [
        (Mode::NewConnection, "a new connection per request"),
        (Mode::KeepAlive, "keep-alive connections"),
    ] {
        println!(
            "== {} clients, {name}, for {}, reloading every {}",
            args.connections,
            duration::format(args.duration),
            duration::format(args.reload_every)
        );
        let mut load = LoadConfig::new(address, mode);
        load.connections = args.connections;
        let cfg = VerifyConfig::new(load, args.duration).with_reloads(
            args.reload_every,
            verify::control_trigger(ctl.clone(), Duration::from_secs(60)),
        );
        let report = handover_verify::verify(cfg).map_err(|e| e.to_string())?;
        print!("{}", report.render_table());
        let took: Vec<String> = report
            .reloads
            .iter()
            .map(|r| {
                r.ready_after
                    .map(|d| format!("{}ms", d.as_millis()))
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        println!(
            "served {} requests, {} failed; {} reload(s){}\n",
            report.ok,
            report.failures_total(),
            report.reloads.len(),
            if took.is_empty() {
                String::new()
            } else {
                format!("; trigger to new pid answering: {}", took.join(", "))
            }
        );
        all_passed &= report.passed();
    }
    match control::request(&ctl, control::Request::Stop, Duration::from_secs(30)) {
        Ok(_) => {}
        Err(e) => eprintln!("handover demo: stopping the supervisor: {e}"),
    }
    drop(supervisor);
    println!(
        "{}",
        if all_passed {
            "handover demo: PASS: not one request failed across the reloads."
        } else {
            "handover demo: FAIL: some requests failed (see above)."
        }
    );
    Ok(all_passed)
}

fn wait_status(
    ctl: &Path,
    supervisor: &mut Child,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = supervisor.try_wait() {
            return Err(format!(
                "handover run exited before it was serving ({status}); see its errors above"
            ));
        }
        match control::request(ctl, control::Request::Status, Duration::from_secs(5)) {
            Ok(a) if a["ok"] == true => return Ok(a),
            Ok(a) => return Err(format!("handover run: {}", a["error"])),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "handover run did not come up within {timeout:?}: {e}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from(format!(
        "pid={}\n",
        std::process::id()
    )))))
}

/// The built-in server: takes its socket from LISTEN_FDS, says READY=1 on
/// NOTIFY_SOCKET, serves `pid=<pid>`, and drains on SIGTERM.
pub fn server(args: ServerArgs) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut fds = ListenFds::from_env()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let std_listener: tokio::net::TcpListener = match fds.take("http") {
            Ok(l) => l,
            Err(e) if e.is_not_found() => fds.take_index(0)?,
            Err(e) => return Err(e.into()),
        };
        let drain = Drain::new();
        let listener = Listener::new(std_listener, &drain);
        let http = HttpOptions::default();
        let accept = {
            let drain = drain.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((io, _)) => {
                            let (drain, http) = (drain.clone(), http.clone());
                            tokio::spawn(async move {
                                let _ = serve_connection(
                                    io,
                                    hyper::service::service_fn(hello),
                                    &drain,
                                    &http,
                                )
                                .await;
                            });
                        }
                        Err(e) if is_closed_error(&e) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        };
        // The handler first: handover may send the stop signal as soon as a
        // later generation is ready, and a SIGTERM that came between READY=1
        // and the handler would kill this process (the default action) and
        // reset its keep-alive connections instead of draining them.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        Notifier::from_env()?.notify(&[State::Ready, State::Status("serving")])?;
        term.recv().await;
        drain.close();
        let _ = drain.wait_async(args.drain_timeout).await;
        let _ = accept.await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
