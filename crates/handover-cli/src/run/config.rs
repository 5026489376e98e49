//! What `handover run` is told: its options, readiness modes and sockets.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use handover::address::Address;
use handover::child::Signal;

use crate::duration;

/// One condition for "ready" (`--ready`, `--reload-ready`; several given:
/// all must hold).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadyMode {
    /// It sent `READY=1` to `NOTIFY_SOCKET` (for an in-place reload:
    /// `RELOADING=1`, then `READY=1`).
    Notify,
    /// It stayed alive this long.
    Delay(Duration),
    /// This shell command, with `HANDOVER_PID` and `HANDOVER_GENERATION` set,
    /// exited 0.
    Exec(String),
    /// `GET path` on a listening socket, accepted by a process of the new
    /// generation (the kernel says which process holds the accepted
    /// connection) and answered with a 2xx status.
    Http {
        /// The `--bind` name of the socket to probe; `None`: the first
        /// stream socket.
        socket: Option<String>,
        /// The request path (starts with `/`).
        path: String,
    },
}

impl ReadyMode {
    /// Whether this is a probe the driver runs (exec: or http:).
    pub fn is_probe(&self) -> bool {
        matches!(self, ReadyMode::Exec(_) | ReadyMode::Http { .. })
    }
}

impl std::fmt::Display for ReadyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyMode::Notify => f.write_str("notify"),
            ReadyMode::Delay(d) => write!(f, "delay:{}", duration::format(*d)),
            ReadyMode::Exec(c) => write!(f, "exec:{c}"),
            ReadyMode::Http { socket, path } => {
                write!(f, "http:{}{path}", socket.as_deref().unwrap_or(""))
            }
        }
    }
}

const READY_MODES: &str = "expected notify, delay:DURATION (like delay:2s), exec:COMMAND or \
                           http:PATH (like http:/health; http:NAME/PATH probes the socket named NAME)";

impl std::str::FromStr for ReadyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<ReadyMode, String> {
        if s == "notify" {
            Ok(ReadyMode::Notify)
        } else if let Some(d) = s.strip_prefix("delay:") {
            duration::parse(d).map(ReadyMode::Delay)
        } else if let Some(c) = s.strip_prefix("exec:") {
            if c.trim().is_empty() {
                Err(
                    "exec: needs a command, like exec:'curl -fs http://127.0.0.1:8080/health'"
                        .into(),
                )
            } else {
                Ok(ReadyMode::Exec(c.to_string()))
            }
        } else if let Some(rest) = s.strip_prefix("http:") {
            parse_http(rest)
        } else {
            Err(format!("{s:?} is not a readiness mode: {READY_MODES}"))
        }
    }
}

/// `http:[NAME]/PATH`.
fn parse_http(rest: &str) -> Result<ReadyMode, String> {
    let example = "like http:/health, or http:NAME/health for the socket named NAME";
    if rest.starts_with("//") {
        return Err(format!(
            "http:{rest} looks like a URL: the probe always connects to handover's own socket, \
             so give only the path, {example}"
        ));
    }
    let Some(slash) = rest.find('/') else {
        return Err(format!(
            "http:{rest} has no path: expected a path that starts with /, {example}"
        ));
    };
    let (name, path) = rest.split_at(slash);
    if let Some(bad) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "http:{rest}: the path holds {bad:?}; expected printable ASCII without spaces \
             (percent-encode the rest), {example}"
        ));
    }
    let socket = if name.is_empty() {
        None
    } else if handover::activation::is_valid_name(name) {
        Some(name.to_string())
    } else {
        return Err(format!(
            "http:{rest}: {name:?} is not a socket name (the --bind NAME); {example}"
        ));
    };
    Ok(ReadyMode::Http {
        socket,
        path: path.to_string(),
    })
}

/// Which processes of a generation get reload and forwarded signals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SignalScope {
    /// Its main process only (the one handover started).
    #[default]
    Main,
    /// Its whole process group (the main process and the workers it forked).
    Group,
}

impl std::str::FromStr for SignalScope {
    type Err = String;

    fn from_str(s: &str) -> Result<SignalScope, String> {
        match s {
            "main" => Ok(SignalScope::Main),
            "group" => Ok(SignalScope::Group),
            _ => Err(format!(
                "{s:?} is not a signal scope: expected main (the generation's main process) or \
                 group (its whole process group)"
            )),
        }
    }
}

/// A `--bind [NAME=]ADDRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The name passed in `LISTEN_FDNAMES`.
    pub name: String,
    /// Where.
    pub address: Address,
}

impl std::str::FromStr for Bind {
    type Err = String;

    fn from_str(s: &str) -> Result<Bind, String> {
        let bad_name = |name: &str| {
            format!(
                "{name:?} is not a socket name: expected 1 to 255 printable ASCII characters \
                 without ':' (it separates the names in LISTEN_FDNAMES); rename it"
            )
        };
        let (name, addr) = match s.split_once('=') {
            Some((n, a)) if !n.contains("://") && !n.contains(':') && !n.contains('/') => (n, a),
            // "we:b=tcp://..." is a name with a ':', not an address with a
            // scheme "we:b=tcp".
            Some((n, a)) if !n.contains('/') && a.parse::<Address>().is_ok() => {
                return Err(bad_name(n));
            }
            _ => ("unknown", s),
        };
        if !handover::activation::is_valid_name(name) {
            return Err(bad_name(name));
        }
        let address = addr.parse::<Address>().map_err(|e| e.to_string())?;
        Ok(Bind {
            name: name.to_string(),
            address,
        })
    }
}

/// Everything `handover run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sockets to bind (or take from systemd by name).
    pub binds: Vec<Bind>,
    /// Mode of Unix socket files.
    pub unix_mode: u32,
    /// The program and its arguments.
    pub program: Vec<OsString>,
    /// Readiness: every condition must hold.
    pub ready: Vec<ReadyMode>,
    /// How long a generation has to be ready.
    pub ready_timeout: Duration,
    /// How long a ready generation must stay up (and pass its probes)
    /// before the old one is stopped.
    pub settle: Duration,
    /// How many replaced generations may drain at once; a reload beyond
    /// that waits until one is gone.
    pub max_draining: usize,
    /// Stop signal.
    pub stop_signal: Signal,
    /// Then SIGKILL.
    pub stop_timeout: Duration,
    /// Random delay before signals.
    pub splay: Duration,
    /// Reload by signalling instead of a new generation.
    pub reload_signal: Option<Signal>,
    /// When an in-place reload (by `reload_signal`) is done: every condition
    /// must hold; empty: the main process stays up for `settle`.
    pub reload_ready: Vec<ReadyMode>,
    /// Who gets reload and forwarded signals.
    pub signal_scope: SignalScope,
    /// handover's pid file.
    pub pid_file: Option<PathBuf>,
    /// Control socket.
    pub control: PathBuf,
    /// Signal the program gets if handover dies.
    pub orphan_signal: Option<Signal>,
    /// Longest crash-restart delay.
    pub max_backoff: Duration,
    /// Crash restarts allowed within `start_limit_interval` before handover
    /// gives up (0: no limit).
    pub start_limit_burst: u32,
    /// See `start_limit_burst`.
    pub start_limit_interval: Duration,
    /// Reload when these change (see `watch.rs`).
    pub watch: Vec<PathBuf>,
    /// Quiet time that ends a burst of changes.
    pub watch_debounce: Duration,
    /// Keep serving this long after a stop request.
    pub stop_delay: Duration,
    /// Under systemd, keep the sockets in the service's fd store.
    pub fd_store: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_modes() {
        assert_eq!("notify".parse::<ReadyMode>().unwrap(), ReadyMode::Notify);
        assert_eq!(
            "delay:2s".parse::<ReadyMode>().unwrap(),
            ReadyMode::Delay(Duration::from_secs(2))
        );
        assert_eq!(
            "exec:true".parse::<ReadyMode>().unwrap(),
            ReadyMode::Exec("true".into())
        );
        assert!("exec:".parse::<ReadyMode>().is_err());
        assert!(
            "soon"
                .parse::<ReadyMode>()
                .unwrap_err()
                .contains("expected notify")
        );
    }

    #[test]
    fn http_ready_modes() {
        assert_eq!(
            "http:/health".parse::<ReadyMode>().unwrap(),
            ReadyMode::Http {
                socket: None,
                path: "/health".into()
            }
        );
        assert_eq!(
            "http:admin/health?full=1".parse::<ReadyMode>().unwrap(),
            ReadyMode::Http {
                socket: Some("admin".into()),
                path: "/health?full=1".into()
            }
        );
        for (bad, says) in [
            ("http:", "has no path"),
            ("http:health", "has no path"),
            ("http://127.0.0.1:8080/health", "looks like a URL"),
            ("http:/he alth", "without spaces"),
            ("http:/x\r\nHost: y", "without spaces"),
            ("http:a:b/x", "not a socket name"),
        ] {
            let e = bad.parse::<ReadyMode>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        for text in ["notify", "delay:2s", "exec:true", "http:/h", "http:web/h"] {
            assert_eq!(text.parse::<ReadyMode>().unwrap().to_string(), text);
        }
    }

    proptest::proptest! {
        #[test]
        fn ready_modes_parse_or_explain_and_print_back(text in "\\PC{0,40}") {
            match text.parse::<ReadyMode>() {
                Ok(mode) => proptest::prop_assert_eq!(mode.to_string().parse::<ReadyMode>().unwrap(), mode),
                Err(e) => proptest::prop_assert!(!e.is_empty()),
            }
        }
    }

    #[test]
    fn signal_scopes() {
        assert_eq!("main".parse::<SignalScope>().unwrap(), SignalScope::Main);
        assert_eq!("group".parse::<SignalScope>().unwrap(), SignalScope::Group);
        assert!(
            "all"
                .parse::<SignalScope>()
                .unwrap_err()
                .contains("expected main")
        );
    }

    #[test]
    fn binds() {
        let b: Bind = "http=tcp://127.0.0.1:80".parse().unwrap();
        assert_eq!(b.name, "http");
        let b: Bind = "tcp://127.0.0.1:80".parse().unwrap();
        assert_eq!(b.name, "unknown");
        let b: Bind = "unix:/tmp/a=b".parse().unwrap();
        assert_eq!(b.address, Address::Unix("/tmp/a=b".into()));
        assert!(
            "web=tcp://x"
                .parse::<Bind>()
                .unwrap_err()
                .contains("port is missing")
        );
        assert!(
            "a\tb=tcp://127.0.0.1:1"
                .parse::<Bind>()
                .unwrap_err()
                .contains("not a socket name")
        );
        let e = "we:b=tcp://127.0.0.1:1".parse::<Bind>().unwrap_err();
        assert!(
            e.contains("\"we:b\" is not a socket name") && e.contains("without ':'"),
            "{e}"
        );
        assert!("tcp://127.0.0.1".parse::<Bind>().is_err());
    }
}
