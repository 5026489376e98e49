//! Signal names and numbers, and their parser (`FromStr`).

use std::fmt;
use std::str::FromStr;

use rustix::process::Signal as Raw;

/// A signal: one of the standard (named) signals of this platform.
///
/// Signals can be named with or without the `SIG` prefix, in any case, or by
/// number: see [its `FromStr`](#impl-FromStr-for-Signal). A child killed by a real-time signal is
/// reported with a `Signal` that has a number but no name; such a signal
/// cannot be sent with [`Child::signal`](super::Child::signal) (libc reserves
/// part of that range).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signal(i32);

/// Canonical names (without `SIG`), in the order `kill -l` prints them.
const NAMES: &[(&str, Raw)] = &[
    ("HUP", Raw::HUP),
    ("INT", Raw::INT),
    ("QUIT", Raw::QUIT),
    ("ILL", Raw::ILL),
    ("TRAP", Raw::TRAP),
    ("ABRT", Raw::ABORT),
    ("BUS", Raw::BUS),
    ("FPE", Raw::FPE),
    ("KILL", Raw::KILL),
    ("USR1", Raw::USR1),
    ("SEGV", Raw::SEGV),
    ("USR2", Raw::USR2),
    ("PIPE", Raw::PIPE),
    ("ALRM", Raw::ALARM),
    ("TERM", Raw::TERM),
    ("STKFLT", Raw::STKFLT),
    ("CHLD", Raw::CHILD),
    ("CONT", Raw::CONT),
    ("STOP", Raw::STOP),
    ("TSTP", Raw::TSTP),
    ("TTIN", Raw::TTIN),
    ("TTOU", Raw::TTOU),
    ("URG", Raw::URG),
    ("XCPU", Raw::XCPU),
    ("XFSZ", Raw::XFSZ),
    ("VTALRM", Raw::VTALARM),
    ("PROF", Raw::PROF),
    ("WINCH", Raw::WINCH),
    ("IO", Raw::IO),
    ("PWR", Raw::POWER),
    ("SYS", Raw::SYS),
];

/// Other accepted spellings.
const ALIASES: &[(&str, Raw)] = &[("IOT", Raw::ABORT), ("POLL", Raw::IO), ("CLD", Raw::CHILD)];

/// `SIG`-prefixed canonical names, for [`Signal::name`].
const FULL_NAMES: &[&str] = &[
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

impl Signal {
    /// `SIGHUP`: the usual "reload your configuration" signal.
    pub const HUP: Signal = Signal(Raw::HUP.as_raw());
    /// `SIGINT`: what Ctrl-C sends.
    pub const INT: Signal = Signal(Raw::INT.as_raw());
    /// `SIGQUIT`.
    pub const QUIT: Signal = Signal(Raw::QUIT.as_raw());
    /// `SIGABRT`.
    pub const ABRT: Signal = Signal(Raw::ABORT.as_raw());
    /// `SIGKILL`: cannot be caught or ignored.
    pub const KILL: Signal = Signal(Raw::KILL.as_raw());
    /// `SIGUSR1`.
    pub const USR1: Signal = Signal(Raw::USR1.as_raw());
    /// `SIGUSR2`.
    pub const USR2: Signal = Signal(Raw::USR2.as_raw());
    /// `SIGPIPE`.
    pub const PIPE: Signal = Signal(Raw::PIPE.as_raw());
    /// `SIGALRM`.
    pub const ALRM: Signal = Signal(Raw::ALARM.as_raw());
    /// `SIGTERM`: the default request to terminate.
    pub const TERM: Signal = Signal(Raw::TERM.as_raw());
    /// `SIGCHLD`.
    pub const CHLD: Signal = Signal(Raw::CHILD.as_raw());
    /// `SIGCONT`: resume a stopped process.
    pub const CONT: Signal = Signal(Raw::CONT.as_raw());
    /// `SIGSTOP`: stop (pause) a process; cannot be caught.
    pub const STOP: Signal = Signal(Raw::STOP.as_raw());
    /// `SIGTSTP`: what Ctrl-Z sends.
    pub const TSTP: Signal = Signal(Raw::TSTP.as_raw());
    /// `SIGWINCH`: terminal size changed (some servers use it to stop workers).
    pub const WINCH: Signal = Signal(Raw::WINCH.as_raw());

    /// The named signal with number `number`, if there is one on this
    /// platform.
    pub fn from_raw(number: i32) -> Option<Signal> {
        NAMES
            .iter()
            .any(|(_, s)| s.as_raw() == number)
            .then_some(Signal(number))
    }

    /// A signal number as reported by the kernel (it may have no name).
    pub(crate) fn from_reported(number: i32) -> Signal {
        Signal(number)
    }

    /// Its number.
    pub fn as_raw(self) -> i32 {
        self.0
    }

    /// Its name with the `SIG` prefix (`"SIGTERM"`), or `None` for a
    /// real-time signal.
    pub fn name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .position(|(_, s)| s.as_raw() == self.0)
            .map(|i| FULL_NAMES[i])
    }

    /// Every named signal of this platform, in numeric order.
    pub fn all() -> impl Iterator<Item = Signal> {
        NAMES.iter().map(|(_, s)| Signal(s.as_raw()))
    }

    /// The rustix value to send, when this is a named signal.
    pub(crate) fn to_rustix(self) -> Option<Raw> {
        Raw::from_named_raw(self.0)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signal({self})")
    }
}

/// Parses a signal given by name (`"TERM"`, `"SIGTERM"`, `"sigterm"`) or by
/// number (`"15"`).
///
/// Real-time signals (`SIGRTMIN+n`) are not accepted. Never panics; any
/// other input gives a [`ParseSignalError`], whose message lists the valid
/// names.
///
/// ```
/// use handover::child::Signal;
/// assert_eq!("SIGTERM".parse::<Signal>().unwrap(), Signal::TERM);
/// assert_eq!("hup".parse::<Signal>().unwrap(), Signal::HUP);
/// assert_eq!("9".parse::<Signal>().unwrap(), Signal::KILL);
/// assert!("SIGNOPE".parse::<Signal>().unwrap_err().to_string().contains("TERM"));
/// ```
impl FromStr for Signal {
    type Err = ParseSignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_signal(s)
    }
}

/// A signal name or number that does not exist; from
/// [`Signal`]'s `FromStr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSignalError {
    input: String,
}

impl ParseSignalError {
    /// What was given.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParseSignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown signal {:?}: expected a signal name or number; valid names are {}",
            self.input,
            valid_names()
        )
    }
}

impl std::error::Error for ParseSignalError {}

/// The list of valid spellings, for error messages.
fn valid_names() -> String {
    let names: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
    let numbers = NAMES.iter().map(|(_, s)| s.as_raw());
    let (min, max) = (
        numbers.clone().min().unwrap_or(1),
        numbers.max().unwrap_or(31),
    );
    format!(
        "{} (also IOT, POLL, CLD), each with or without the SIG prefix and in any case, or a \
         number from {min} to {max}",
        names.join(", ")
    )
}

/// See [`Signal`]'s `FromStr`.
fn parse_signal(input: &str) -> Result<Signal, ParseSignalError> {
    let unknown = || ParseSignalError {
        input: input.to_string(),
    };
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        // At most a few digits are meaningful; longer strings overflow i32,
        // which `parse` reports as an error rather than panicking.
        return s
            .parse::<i32>()
            .ok()
            .and_then(Signal::from_raw)
            .ok_or_else(unknown);
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .chain(ALIASES)
        .find(|(n, _)| *n == bare)
        .map(|(_, s)| Signal(s.as_raw()))
        .ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_agree() {
        assert_eq!(NAMES.len(), FULL_NAMES.len());
        for ((n, _), full) in NAMES.iter().zip(FULL_NAMES) {
            assert_eq!(&full[3..], *n);
        }
        for s in Signal::all() {
            assert_eq!(parse_signal(s.name().unwrap()).unwrap(), s);
            assert_eq!(parse_signal(&s.as_raw().to_string()).unwrap(), s);
            assert!(s.to_rustix().is_some(), "{s}");
        }
    }

    #[test]
    fn spellings() {
        for ok in ["TERM", "SIGTERM", "term", "sigTerm", " TERM ", "15"] {
            assert_eq!(parse_signal(ok).unwrap(), Signal::TERM, "{ok:?}");
        }
        assert_eq!(parse_signal("iot").unwrap(), Signal::ABRT);
        for bad in [
            "",
            "SIG",
            "0",
            "99",
            "-15",
            "SIGSIGTERM",
            "TERM1",
            "RTMIN",
            "١٥",
        ] {
            let e = parse_signal(bad).unwrap_err().to_string();
            assert!(e.contains("HUP, INT"), "{bad:?}: {e}");
        }
        assert_eq!(Signal::from_reported(40).to_string(), "signal 40");
        assert_eq!(Signal::KILL.to_string(), "SIGKILL");
    }
}
