//! `handover verify`: load a server while reloading it; count every failure.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use handover_verify::{ClientTls, LoadConfig, Mode, Protocol, Reloaded, Trigger, VerifyConfig};

use crate::{control, duration};

/// Options of `handover verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The server to load, as HOST:PORT, http://HOST:PORT/PATH or
    /// https://HOST:PORT/PATH (the path, if any, is the request path;
    /// https:// means --tls). 127.0.0.1 or ::1 are the intended targets.
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

    /// Speak HTTP/2: with prior knowledge (h2c) on plain TCP, ALPN h2 with
    /// --tls. A GOAWAY is not a failure (the client reconnects); a stream
    /// refused, reset or cut is. With --keep-alive each connection carries
    /// --streams concurrent streams for the whole run; without, a new
    /// connection for every round of --streams requests.
    #[arg(long, conflicts_with = "grpc")]
    http2: bool,

    /// Speak gRPC over HTTP/2: unary grpc.health.v1.Health/Check calls that
    /// must end with grpc-status 0 (the pid comes from a `pid` header).
    #[arg(long)]
    grpc: bool,

    /// Concurrent streams per connection (--http2, --grpc).
    #[arg(long, value_name = "N", default_value_t = 1)]
    streams: usize,

    /// Connect with TLS (ALPN h2 with --http2/--grpc, http/1.1 otherwise);
    /// needs --insecure or --ca-file.
    #[arg(long)]
    tls: bool,

    /// With --tls: accept any certificate (a self-signed one).
    #[arg(long, requires = "tls")]
    insecure: bool,

    /// With --tls: trust the certificates in this PEM file.
    #[arg(
        long,
        value_name = "PATH",
        requires = "tls",
        conflicts_with = "insecure"
    )]
    ca_file: Option<PathBuf>,

    /// With --tls: the server name sent (SNI) and checked in the certificate
    /// (default: the address's IP).
    #[arg(long, value_name = "NAME", requires = "tls")]
    server_name: Option<String>,
}

/// Where `--addr` points: the address, the request path of a URL, and
/// whether it was an `https://` URL.
struct Target {
    addr: SocketAddr,
    path: Option<String>,
    https: bool,
}

/// The target of `--addr`: `HOST:PORT`, or `http://HOST:PORT[/PATH]` and
/// `https://...` as people copy them from a browser or curl.
fn target(addr: &str) -> Result<Target, String> {
    let expected = "expected HOST:PORT like 127.0.0.1:8080, or http://HOST:PORT/PATH";
    let (hostport, path, https) = match addr.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_string()), scheme == "https"),
            None => (rest, None, scheme == "https"),
        },
        Some((scheme, _)) => {
            return Err(format!(
                "--addr {addr:?}: unknown scheme {scheme}://; {expected}"
            ));
        }
        None => (addr, None, false),
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
    Ok(Target {
        addr: resolved,
        path,
        https,
    })
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
        let sig = s
            .parse::<handover::child::Signal>()
            .map_err(|e| e.to_string())?;
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
    let Target {
        addr,
        path: url_path,
        https,
    } = target(&args.addr)?;
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
    load.protocol = if args.grpc {
        Protocol::Grpc
    } else if args.http2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    if args.streams != 1 && load.protocol == Protocol::Http1 {
        return Err(format!(
            "--streams {} needs --http2 or --grpc (HTTP/1.1 carries one request at a time per \
             connection; use --connections for more)",
            args.streams
        ));
    }
    load.streams = args.streams;
    if args.tls || https {
        let mut tls = match &args.ca_file {
            Some(ca) => ClientTls::with_ca_file(ca),
            None if args.insecure => ClientTls::insecure(),
            None => {
                return Err(
                    "--tls (or an https:// --addr) needs a way to trust the server: \
                            --ca-file PATH, or --insecure for a self-signed certificate"
                        .into(),
                );
            }
        };
        tls.server_name = args.server_name.clone();
        load.tls = Some(tls);
    }
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
        let t = target("127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.addr.to_string(), t.path, t.https),
            ("127.0.0.1:8080".into(), None, false)
        );
        let t = target("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (t.addr.to_string(), t.path.as_deref(), t.https),
            ("127.0.0.1:8080".into(), Some("/"), false)
        );
        let t = target("http://[::1]:9000/health?x=1").unwrap();
        assert_eq!(
            (t.addr.to_string(), t.path.as_deref()),
            ("[::1]:9000".into(), Some("/health?x=1"))
        );
        assert_eq!(target("http://127.0.0.1:81").unwrap().path, None);
        let t = target("https://127.0.0.1:8443/x").unwrap();
        assert_eq!((t.path.as_deref(), t.https), (Some("/x"), true));
        for (bad, says) in [
            ("127.0.0.1", "has no port"),
            ("http://127.0.0.1/", "has no port"),
            ("ftp://127.0.0.1:21", "unknown scheme"),
            ("http:///x", "has no host"),
            ("127.0.0.1:http", "expected HOST:PORT"),
        ] {
            let e = target(bad).err().unwrap();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
