//! What `handover run` is told: its options, readiness modes and sockets.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use handover::address::Address;
use handover::child::Signal;

use crate::duration;

/// When a new generation counts as ready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReadyMode {
    /// It sent `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// It stayed alive this long.
    Delay(Duration),
    /// This shell command, with `HANDOVER_PID` set, exited 0.
    Exec(String),
}

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
        } else {
            Err(format!(
                "{s:?} is not a readiness mode: expected notify, delay:DURATION (like delay:2s) or \
                 exec:COMMAND"
            ))
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
    /// Readiness.
    pub ready: ReadyMode,
    /// How long a generation has to be ready.
    pub ready_timeout: Duration,
    /// Stop signal.
    pub stop_signal: Signal,
    /// Then SIGKILL.
    pub stop_timeout: Duration,
    /// Random delay before signals.
    pub splay: Duration,
    /// Reload by signalling instead of a new generation.
    pub reload_signal: Option<Signal>,
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
