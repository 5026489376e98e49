//! `handover verify`: load a server while reloading it; count every failure.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use handover_verify::{LoadConfig, Mode, Reloaded, Trigger, VerifyConfig};

use crate::{control, duration};

/// Options of `handover verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The server to load, as HOST:PORT or http://HOST:PORT/PATH (the
    /// path, if any, is the request path). 127.0.0.1 or ::1 are the intended
    /// targets.
    #[arg(long, value_name = "HOST:PORT")]
    addr: String,

    /// How long to run.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    duration: Duration,

    /// Trigger a reload this often: through handover's control socket
    /// (--control, or its default path, as `handover reload` does), or with
    /// --signal or --command.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    reload_every: Option<Duration>,

    /// Reload through this handover control socket. Default:
    /// $XDG_RUNTIME_DIR/handover/control.sock, else
    /// /tmp/handover-UID/control.sock (the default of `handover run`).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["signal", "command"])]
    control: Option<PathBuf>,

    /// Reload by sending this signal to the pid in --pid-file (read anew
    /// each time).
    #[arg(
        long,
        value_name = "SIGNAL",
        requires = "pid_file",
        conflicts_with = "command"
    )]
    signal: Option<String>,

    /// The pid file for --signal.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,

    /// Reload by running this shell command (it must exit 0).
    #[arg(long, value_name = "CMD")]
    command: Option<String>,

    /// Concurrent clients.
    #[arg(long, value_name = "N", default_value_t = 16)]
    connections: usize,

    /// Keep connections alive across requests (default: a new connection
    /// per request).
    #[arg(long)]
    keep_alive: bool,

    /// The request path (default: the path of an http:// --addr, else /).
    #[arg(long)]
    path: Option<String>,

    /// A request that takes longer than this is a failure (timeout).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    request_timeout: Duration,

    /// How long after a reload a new pid must answer (responses with a
    /// `pid=N` body tell which process answered).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration::parse)]
    ready_timeout: Duration,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The address and request path of `--addr`: `HOST:PORT`, or
/// `http://HOST:PORT[/PATH]` as people copy it from a browser or curl.
fn target(addr: &str) -> Result<(SocketAddr, Option<String>), String> {
    let expected = "expected HOST:PORT like 127.0.0.1:8080, or http://HOST:PORT/PATH";
    let (hostport, path) = match addr.split_once("://") {
        Some(("http", rest)) => match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_string())),
            None => (rest, None),
        },
        Some(("https", _)) => {
            return Err(format!(
                "--addr {addr:?}: verify speaks plain HTTP (http://), not https://; {expected}"
            ));
        }
        Some((scheme, _)) => {
            return Err(format!(
                "--addr {addr:?}: unknown scheme {scheme}://; {expected}"
            ));
        }
        None => (addr, None),
    };
    if hostport.is_empty() {
        return Err(format!("--addr {addr:?} has no host; {expected}"));
    }
    if !hostport.ends_with(']') && !hostport.contains(':') {
        return Err(format!("--addr {addr:?} has no port; {expected}"));
    }
    let resolved = hostport
        .to_socket_addrs()
        .map_err(|e| format!("--addr {addr:?}: {e}; {expected}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr:?} has no address; {expected}"))?;
    Ok((resolved, path))
}

/// A trigger that reloads through a control socket. handover answers once
/// the reload is done; an in-place reload (`--reload-signal`) keeps the pid,
/// and its answer says so.
pub fn control_trigger(path: PathBuf, timeout: Duration) -> Trigger {
    Trigger::reporting(move || {
        let a = control::request(&path, control::Request::Reload, timeout)?;
        if a["ok"] != true {
            Err(a["error"].as_str().unwrap_or("reload failed").to_string())
        } else if a["in_place"] == true {
            Ok(Reloaded::InPlace)
        } else {
            Ok(Reloaded::Requested)
        }
    })
}

/// Builds the trigger from the options: `--signal`, `--command`, or else
/// (when reloads are asked for) the control socket, checked now so that a
/// wrong path fails at once rather than after the whole run.
fn trigger(args: &VerifyArgs) -> Result<Option<Trigger>, String> {
    if let Some(s) = &args.signal {
        let sig = handover::child::parse_signal(s).map_err(|e| e.to_string())?;
        return Ok(Some(Trigger::Signal {
            signal: sig.as_raw(),
            pid_file: args.pid_file.clone().ok_or("--signal needs --pid-file")?,
        }));
    }
    if let Some(c) = &args.command {
        return Ok(Some(Trigger::Command(c.clone())));
    }
    if args.reload_every.is_none() {
        return match &args.control {
            Some(_) => Err("--control was given without --reload-every DURATION".into()),
            None => Ok(None),
        };
    }
    let path = args.control.clone().unwrap_or_else(control::default_path);
    control::request(&path, control::Request::Status, Duration::from_secs(5)).map_err(|e| {
        format!(
            "{e}\n(verify reloads through this control socket; give the path `handover run` \
             uses with --control PATH, or reload with --signal SIG --pid-file PATH or --command CMD)"
        )
    })?;
    Ok(Some(control_trigger(path, args.ready_timeout)))
}

/// Runs `handover verify`.
pub fn main(args: VerifyArgs) -> ExitCode {
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("handover verify: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &VerifyArgs) -> Result<bool, String> {
    let (addr, url_path) = target(&args.addr)?;
    let mode = if args.keep_alive {
        Mode::KeepAlive
    } else {
        Mode::NewConnection
    };
    let mut load = LoadConfig::new(addr, mode);
    load.connections = args.connections;
    load.path = args
        .path
        .clone()
        .or(url_path)
        .unwrap_or_else(|| "/".to_string());
    load.request_timeout = args.request_timeout;
    let mut cfg = VerifyConfig::new(load, args.duration);
    let trigger = trigger(args)?;
    match (args.reload_every, trigger) {
        (Some(every), Some(_)) if args.duration <= every => {
            return Err(format!(
                "--duration {} ends before the first reload (--reload-every {}), so the run \
                 would prove nothing about reloads: make --duration longer than --reload-every",
                duration::format(args.duration),
                duration::format(every)
            ));
        }
        (Some(every), Some(t)) => cfg = cfg.with_reloads(every, t),
        (None, None) => {}
        (Some(_), None) => return Err("--reload-every needs a way to reload".into()),
        (None, Some(_)) => {
            return Err("a reload trigger was given without --reload-every DURATION".into());
        }
    }
    cfg.ready_timeout = args.ready_timeout;
    cfg.progress = !args.json && handover_verify::stderr_is_terminal();
    let report = handover_verify::verify(cfg).map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        // The table ends with the verdict line (PASS or FAIL and why).
        print!("{}", report.render_table());
    }
    Ok(report.passed())
}

#[cfg(test)]
mod tests {
    use super::target;

    #[test]
    fn addresses() {
        let (a, p) = target("127.0.0.1:8080").unwrap();
        assert_eq!((a.to_string(), p), ("127.0.0.1:8080".into(), None));
        let (a, p) = target("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (a.to_string(), p.as_deref()),
            ("127.0.0.1:8080".into(), Some("/"))
        );
        let (a, p) = target("http://[::1]:9000/health?x=1").unwrap();
        assert_eq!(
            (a.to_string(), p.as_deref()),
            ("[::1]:9000".into(), Some("/health?x=1"))
        );
        assert_eq!(target("http://127.0.0.1:81").unwrap().1, None);
        for (bad, says) in [
            ("127.0.0.1", "has no port"),
            ("http://127.0.0.1/", "has no port"),
            ("https://127.0.0.1:443/", "not https://"),
            ("ftp://127.0.0.1:21", "unknown scheme"),
            ("http:///x", "has no host"),
            ("127.0.0.1:http", "expected HOST:PORT"),
        ] {
            let e = target(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
