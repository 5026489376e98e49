//! The systemd socket-activation protocol (sd_listen_fds(3)), both ways.
//!
//! **Receiving** ([`ListenFds`]): a server started by systemd, by
//! `handover run`, or by its own predecessor finds its sockets at fds 3, 4,
//! ... described by three variables:
//!
//! | variable | meaning |
//! |---|---|
//! | `LISTEN_PID` | the pid the fds are meant for; any other pid has no fds |
//! | `LISTEN_FDS` | how many fds, starting at 3 |
//! | `LISTEN_FDNAMES` | optional: exactly that many colon-separated names |
//!
//! ```no_run
//! use handover::activation::ListenFds;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut fds = ListenFds::from_env()?;
//! let listener: std::net::TcpListener = match fds.take("http") {
//!     Ok(l) => l,
//!     Err(e) if e.is_not_found() => std::net::TcpListener::bind("127.0.0.1:8080")?,
//!     Err(e) => return Err(e.into()),
//! };
//! # Ok(()) }
//! ```
//!
//! **Sending** ([`Activation`]): a supervisor (or a process upgrading itself)
//! hands named descriptors to a child, which gets them at 3.. with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` set to the child's own pid.
//!
//! ```no_run
//! use std::os::fd::AsFd;
//! use handover::activation::Activation;
//! use handover::process::Command;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let mut activation = Activation::new();
//! activation.fd("http", listener.as_fd())?;
//! let child = activation.spawn(Command::new("my-server"))?;
//! # Ok(()) }
//! ```
//!
//! The child's pid is only known once it exists, so the environment is
//! prepared with a `LISTEN_PID` placeholder that the new process fills in
//! with its own pid just before `execve` (see [`crate::process`], which
//! does the starting: the descriptors land at 3.. even when their sources
//! sit there, and nothing else is inherited).
//!
//! **Environment hygiene.** The `LISTEN_*` variables describe fds meant for
//! this process only. Received fds are marked `FD_CLOEXEC`, and this module
//! never changes the process environment. Programs started with
//! [`crate::process::Command`] never inherit the variables; for a
//! `std::process::Command`, call [`strip_env`] on it (or the `unsafe`
//! [`unset_listen_env`] early in `main`, before threads exist).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Command as StdCommand;

use crate::process::{self, Command, Process, SpawnError};
use crate::socket::{ConvertError, FromFd};
use crate::sys;

pub use crate::sys::unset_listen_env;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The three variables of the protocol.
pub(crate) use crate::sys::LISTEN_VARS;

/// The name of an fd that was passed without one.
pub const UNKNOWN_NAME: &str = "unknown";

/// The longest name the protocol allows.
pub const MAX_NAME_LEN: usize = 255;

/// The most descriptors `LISTEN_FDS` may announce, whatever `fs.nr_open`
/// says: Linux's default limit on open files per process. A larger count
/// cannot be real here, and [`parse_env`], which lists a name per fd, must
/// not allocate without bound.
pub(crate) const MAX_LISTEN_FDS: usize = 1 << 20;

/// Errors of socket activation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// A variable has a value the protocol does not allow.
    #[error("{var}={value:?} is not valid: expected {expected}. {hint}")]
    BadVariable {
        /// The variable.
        var: &'static str,
        /// Its value (lossily decoded).
        value: String,
        /// What was expected.
        expected: &'static str,
        /// What to do.
        hint: &'static str,
    },
    /// `LISTEN_FDNAMES` does not have exactly `LISTEN_FDS` fields.
    #[error(
        "LISTEN_FDNAMES={value:?} has {found} name(s) but LISTEN_FDS={count}: expected exactly \
         {count} colon-separated name(s). Fix the program that started this one (names must not \
         contain ':')"
    )]
    NameCount {
        /// The value of `LISTEN_FDNAMES`.
        value: String,
        /// How many fields it has.
        found: usize,
        /// The value of `LISTEN_FDS`.
        count: usize,
    },
    /// `LISTEN_FDS` lists a descriptor that is not open.
    #[error(
        "LISTEN_FDS={count} says fds {first}..={last} were passed, but fd {fd} is not open: the \
         program that started this one must keep them open across exec (without FD_CLOEXEC)",
        first = LISTEN_FDS_START,
        last = LISTEN_FDS_START as usize + count - 1
    )]
    FdNotOpen {
        /// The missing fd.
        fd: RawFd,
        /// The value of `LISTEN_FDS`.
        count: usize,
    },
    /// `LISTEN_FDS` names more descriptors than can exist here.
    #[error(
        "LISTEN_FDS={value:?} is not valid: expected a count of descriptors this system can have \
         open, at most {max} (descriptor numbers stay below fs.nr_open). Fix the program that \
         started this one, or unset LISTEN_FDS."
    )]
    TooManyFds {
        /// The value of `LISTEN_FDS`.
        value: String,
        /// The largest count possible here.
        max: u64,
    },
    /// [`ListenFds::from_env`] was called a second time.
    #[error(
        "the inherited fds were already received by this process: call ListenFds::from_env once \
         and keep the result (taking fds twice would give them two owners)"
    )]
    AlreadyReceived,
    /// No descriptor has that name (or index).
    #[error("no inherited fd named {name:?}; the fds received are: {available}")]
    NotFound {
        /// The name (or `#index`) asked for.
        name: String,
        /// What was received, for the message.
        available: String,
    },
    /// The descriptor was taken before.
    #[error("inherited fd {fd} (named {name:?}) was already taken; each fd can be taken once")]
    AlreadyTaken {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
    },
    /// The descriptor is not of the requested kind.
    #[error(
        "inherited fd {fd} (named {name:?}): {source}. The program that started this one passed \
         another kind of descriptor under this name: fix it (under systemd, the socket unit's \
         Listen*= line for FileDescriptorName={name}), or ask for the kind it is"
    )]
    Convert {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What was wrong.
        #[source]
        source: ConvertError,
    },
    /// A tokio type was asked for outside a tokio runtime. The descriptor
    /// was left in place.
    #[error(
        "inherited fd {fd} (named {name:?}) was not taken: {source}. It is still there: take it \
         again from inside the runtime"
    )]
    NoRuntime {
        /// The fd number.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What was wrong.
        #[source]
        source: ConvertError,
    },
    /// A name given to [`Activation::fd`] is not allowed by the protocol.
    #[error(
        "fd name {name:?} is not valid: expected 1 to 255 printable ASCII characters without ':'"
    )]
    BadName {
        /// The rejected name.
        name: String,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ActivationError {
    /// Whether this says that the name or index asked for was not received:
    /// the usual cue to bind a fresh socket instead.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ActivationError::NotFound { .. })
    }
}

pub(crate) use env::{EnvVars, parse_env};

/// The parser of the variables, for `ListenFds`, `reexec`, and (through
/// `handover::__private`) the fuzz targets and property tests; not part of
/// the API.
pub(crate) mod env {
    use super::*;

    /// The three variables as read from an environment; input of [`parse_env`].
    #[derive(Debug, Clone, Copy, Default)]
    pub struct EnvVars<'a> {
        /// `LISTEN_PID`.
        pub pid: Option<&'a OsStr>,
        /// `LISTEN_FDS`.
        pub fds: Option<&'a OsStr>,
        /// `LISTEN_FDNAMES`.
        pub names: Option<&'a OsStr>,
    }

    /// Parses the protocol's variables for a process whose pid is `my_pid`, as
    /// sd_listen_fds(3) does, and returns one name per descriptor (empty: no
    /// descriptors for this process).
    ///
    /// No `LISTEN_PID`, a `LISTEN_PID` of another process, no `LISTEN_FDS` or
    /// `LISTEN_FDS=0` all mean "no descriptors", not an error. A value that is not
    /// a number, a count whose fds would not fit the fd range, a `LISTEN_FDNAMES`
    /// with another number of fields, or a name that is too long or has control
    /// characters are errors naming the variable.
    pub fn parse_env(vars: EnvVars<'_>, my_pid: u32) -> Result<Vec<String>, ActivationError> {
        Ok(match parse_vars(vars, my_pid)? {
            None => Vec::new(),
            Some((count, names)) => names.unwrap_or_else(|| vec![UNKNOWN_NAME.to_string(); count]),
        })
    }
}

fn lossy(v: &OsStr) -> String {
    v.to_string_lossy().into_owned()
}

fn parse_decimal(v: &OsStr) -> Option<u64> {
    let s = v.to_str()?;
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Counts at most this large are taken as they are; larger ones are checked
/// against the system's ceiling on descriptor numbers.
const PLAUSIBLE_FDS: u64 = 1024;

/// The largest `LISTEN_FDS` that can name open descriptors here: fds
/// 3..3+n are all below `fs.nr_open` (1048576 unless raised).
fn max_listen_fds() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    nr_open
        .saturating_sub(LISTEN_FDS_START as u64)
        .min((i32::MAX - LISTEN_FDS_START) as u64)
        .min(MAX_LISTEN_FDS as u64)
}

/// How many fds were passed, and their names when `LISTEN_FDNAMES` gives
/// them.
type Parsed = (usize, Option<Vec<String>>);

/// [`parse_env`] without building the list of names when there is no
/// `LISTEN_FDNAMES`: `None` (no fds for this process) or the count and the
/// names given.
///
/// Nothing here allocates in proportion to the count: a count of two
/// billion must be an error, not an attempt to allocate 48 GB.
fn parse_vars(vars: EnvVars<'_>, my_pid: u32) -> Result<Option<Parsed>, ActivationError> {
    let Some(pid) = vars.pid else {
        return Ok(None);
    };
    let pid = parse_decimal(pid)
        .filter(|&p| p > 0 && p <= i32::MAX as u64)
        .ok_or_else(|| ActivationError::BadVariable {
            var: "LISTEN_PID",
            value: lossy(pid),
            expected: "a process id (a positive decimal integer)",
            hint: "Fix the program that started this one, or unset LISTEN_PID.",
        })?;
    if pid != u64::from(my_pid) {
        return Ok(None);
    }
    let Some(fds) = vars.fds else {
        return Ok(None);
    };
    let count = parse_decimal(fds)
        .filter(|&n| n <= (i32::MAX - LISTEN_FDS_START) as u64)
        .ok_or_else(|| ActivationError::BadVariable {
            var: "LISTEN_FDS",
            value: lossy(fds),
            expected: "a count of descriptors (a decimal integer from 0 to 2147483644)",
            hint: "Fix the program that started this one, or unset LISTEN_FDS.",
        })?;
    if count > PLAUSIBLE_FDS {
        let max = max_listen_fds();
        if count > max {
            return Err(ActivationError::TooManyFds {
                value: lossy(fds),
                max,
            });
        }
    }
    let count = count as usize;
    if count == 0 {
        return Ok(None);
    }
    let Some(names) = vars.names else {
        return Ok(Some((count, None)));
    };
    let text = names.to_str().ok_or_else(|| ActivationError::BadVariable {
        var: "LISTEN_FDNAMES",
        value: lossy(names),
        expected: "colon-separated names of printable ASCII characters",
        hint: "Fix the program that started this one.",
    })?;
    let fields: Vec<&str> = text.split(':').collect();
    if fields.len() != count {
        return Err(ActivationError::NameCount {
            value: text.to_string(),
            found: fields.len(),
            count,
        });
    }
    let names = fields
        .into_iter()
        .map(|f| {
            if f.is_empty() {
                Ok(UNKNOWN_NAME.to_string())
            } else if f.len() > MAX_NAME_LEN || !f.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                Err(ActivationError::BadVariable {
                    var: "LISTEN_FDNAMES",
                    value: text.to_string(),
                    expected: "names of at most 255 printable ASCII characters (no control characters)",
                    hint: "Fix the program that started this one.",
                })
            } else {
                Ok(f.to_string())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((count, Some(names))))
}

/// Whether `name` may be passed in `LISTEN_FDNAMES`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b':')
}

struct Slot {
    fd: RawFd,
    name: String,
    owned: Option<OwnedFd>,
}

/// The descriptors this process inherited, each taken at most once.
///
/// Dropping it closes the descriptors that were not taken.
#[derive(Default)]
pub struct ListenFds {
    slots: Vec<Slot>,
}

impl std::fmt::Debug for ListenFds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.slots
                    .iter()
                    .map(|s| (s.fd, &s.name, s.owned.is_some())),
            )
            .finish()
    }
}

/// One received descriptor, as [`ListenFds::iter`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenFd<'a> {
    index: usize,
    fd: RawFd,
    name: &'a str,
    available: bool,
}

impl<'a> ListenFd<'a> {
    /// Its position among the received descriptors (0 for fd 3).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its descriptor number, for logs (take it to own it).
    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// Its name (`LISTEN_FDNAMES`), or `"unknown"` when none was given.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Whether it is still there to take (not taken yet).
    pub fn is_available(&self) -> bool {
        self.available
    }
}

impl ListenFds {
    /// Receives the descriptors described by this process's `LISTEN_*`
    /// variables, marks each close-on-exec, and owns them.
    ///
    /// Only the first call in a process can receive descriptors; later calls
    /// return [`ActivationError::AlreadyReceived`] (when there are any). The
    /// environment is read, never changed.
    ///
    /// Call it first thing in `main`, before anything opens a descriptor (a
    /// tokio runtime, a log file): the protocol says fds 3.. are inherited,
    /// and there is no way to tell an inherited fd from one this process
    /// opened itself at the same number. Every announced fd is checked to be
    /// open before any is taken.
    pub fn from_env() -> Result<ListenFds, ActivationError> {
        let (pid, fds, names) = (
            std::env::var_os("LISTEN_PID"),
            std::env::var_os("LISTEN_FDS"),
            std::env::var_os("LISTEN_FDNAMES"),
        );
        let vars = EnvVars {
            pid: pid.as_deref(),
            fds: fds.as_deref(),
            names: names.as_deref(),
        };
        let Some((count, names)) = parse_vars(vars, std::process::id())? else {
            return Ok(ListenFds::default());
        };
        // Every fd is checked before any is adopted. When LISTEN_FDS claims
        // more fds than were passed, the numbers above the real ones may be
        // descriptors this process opened itself (a runtime's epoll fd, a
        // log file): adopting them and closing them on the error path would
        // pull them from under their owners.
        let adopted = sys::adopt_inherited_fds(LISTEN_FDS_START, count).map_err(|e| match e {
            sys::AdoptError::AlreadyAdopted => ActivationError::AlreadyReceived,
            sys::AdoptError::NotOpen(fd) | sys::AdoptError::Duplicate(fd) => {
                ActivationError::FdNotOpen { fd, count }
            }
            sys::AdoptError::Io(source) => ActivationError::Io {
                context: "checking an inherited fd",
                source,
            },
        })?;
        let names = names.unwrap_or_else(|| vec![UNKNOWN_NAME.to_string(); count]);
        let mut slots = Vec::with_capacity(count);
        for (i, (name, owned)) in names.into_iter().zip(adopted).enumerate() {
            let fd = LISTEN_FDS_START + i as RawFd;
            // The fds not kept yet are closed as the iterator drops.
            rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).map_err(|e| {
                ActivationError::Io {
                    context: "setting FD_CLOEXEC on an inherited fd",
                    source: e.into(),
                }
            })?;
            slots.push(Slot {
                fd,
                name,
                owned: Some(owned),
            });
        }
        Ok(ListenFds { slots })
    }

    /// How many descriptors were received (taken or not).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none were received.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Each received descriptor, in order: its index, fd number, name, and
    /// whether it is still there to take.
    pub fn iter(&self) -> impl Iterator<Item = ListenFd<'_>> {
        self.slots.iter().enumerate().map(|(index, s)| ListenFd {
            index,
            fd: s.fd,
            name: s.name.as_str(),
            available: s.owned.is_some(),
        })
    }

    /// Borrows the first untaken descriptor named `name`.
    pub fn get(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.slots
            .iter()
            .find(|s| s.name == name && s.owned.is_some())
            .and_then(|s| s.owned.as_ref().map(|o| o.as_fd()))
    }

    fn available(&self) -> String {
        if self.slots.is_empty() {
            return "none (LISTEN_FDS is unset or not meant for this process)".to_string();
        }
        self.slots
            .iter()
            .map(|s| {
                format!(
                    "fd {} {:?}{}",
                    s.fd,
                    s.name,
                    if s.owned.is_some() { "" } else { " (taken)" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn take_slot<T: FromFd>(&mut self, index: usize) -> Result<T, ActivationError> {
        let slot = &mut self.slots[index];
        let Some(owned) = slot.owned.as_ref() else {
            return Err(ActivationError::AlreadyTaken {
                fd: slot.fd,
                name: slot.name.clone(),
            });
        };
        // Check before taking, so a wrong guess (or a tokio type outside a
        // runtime) leaves the fd in place.
        T::check(owned.as_fd()).map_err(|source| convert_error(slot, source))?;
        let owned = slot.owned.take().expect("checked above");
        T::from_checked_fd(owned).map_err(|source| convert_error(slot, source))
    }

    /// Takes the first untaken descriptor named `name`, checked to be a `T`
    /// (for example `std::net::TcpListener`, `tokio::net::UdpSocket`, or
    /// `OwnedFd` for any).
    ///
    /// When every descriptor of that name was taken already, the error is
    /// [`ActivationError::AlreadyTaken`]; when none has it,
    /// [`ActivationError::NotFound`]. A descriptor of the wrong kind stays
    /// untaken.
    pub fn take<T: FromFd>(&mut self, name: &str) -> Result<T, ActivationError> {
        let index = self
            .slots
            .iter()
            .position(|s| s.name == name && s.owned.is_some())
            .or_else(|| self.slots.iter().position(|s| s.name == name));
        match index {
            Some(i) => self.take_slot(i),
            None => Err(ActivationError::NotFound {
                name: name.to_string(),
                available: self.available(),
            }),
        }
    }

    /// Takes the descriptor at `index` (fd `3 + index`), checked to be a `T`.
    pub fn take_index<T: FromFd>(&mut self, index: usize) -> Result<T, ActivationError> {
        if index >= self.slots.len() {
            return Err(ActivationError::NotFound {
                name: format!("#{index}"),
                available: self.available(),
            });
        }
        self.take_slot(index)
    }

    /// Takes every untaken descriptor named `name` (systemd gives all the
    /// sockets of one unit the same name), each checked to be a `T`.
    pub fn take_all<T: FromFd>(&mut self, name: &str) -> Result<Vec<T>, ActivationError> {
        let indices: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].name == name && self.slots[i].owned.is_some())
            .collect();
        for &i in &indices {
            let s = &self.slots[i];
            T::check(s.owned.as_ref().expect("filtered").as_fd())
                .map_err(|source| convert_error(s, source))?;
        }
        indices.into_iter().map(|i| self.take_slot(i)).collect()
    }

    /// The descriptors not taken yet, with their names, in order.
    pub fn into_remaining(self) -> Vec<(String, OwnedFd)> {
        self.slots
            .into_iter()
            .filter_map(|s| s.owned.map(|o| (s.name, o)))
            .collect()
    }
}

/// The error for a descriptor that cannot become the type asked for.
fn convert_error(slot: &Slot, source: ConvertError) -> ActivationError {
    match source {
        ConvertError::NoRuntime => ActivationError::NoRuntime {
            fd: slot.fd,
            name: slot.name.clone(),
            source,
        },
        source => ActivationError::Convert {
            fd: slot.fd,
            name: slot.name.clone(),
            source,
        },
    }
}

/// Removes the `LISTEN_*` variables from what a `std::process::Command`
/// passes to its program, so the fds meant for this process are not claimed
/// by a grandchild. ([`crate::process::Command`] never passes them on.)
pub fn strip_env(cmd: &mut StdCommand) -> &mut StdCommand {
    for key in LISTEN_VARS {
        cmd.env_remove(key);
    }
    cmd
}

/// Named descriptors to hand to a child process (the sending side).
#[derive(Debug, Default, Clone)]
pub struct Activation<'a> {
    fds: Vec<(String, BorrowedFd<'a>)>,
    /// The descriptors of `fds`, in order.
    borrowed: Vec<BorrowedFd<'a>>,
}

impl<'a> Activation<'a> {
    /// An empty list.
    pub fn new() -> Self {
        Activation {
            fds: Vec::new(),
            borrowed: Vec::new(),
        }
    }

    /// Appends `fd` under `name`; the child gets it at `3 + position`.
    /// Names may repeat.
    pub fn fd(&mut self, name: &str, fd: BorrowedFd<'a>) -> Result<&mut Self, ActivationError> {
        if !is_valid_name(name) {
            return Err(ActivationError::BadName {
                name: name.to_string(),
            });
        }
        self.fds.push((name.to_string(), fd));
        self.borrowed.push(fd);
        Ok(self)
    }

    /// How many descriptors are on the list.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The names and descriptors, in order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, BorrowedFd<'a>)> {
        self.fds.iter().map(|(n, fd)| (n.as_str(), *fd))
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fds.iter().map(|(n, _)| n.as_str())
    }

    /// The `LISTEN_FDS` and `LISTEN_FDNAMES` values for this list (the child
    /// also gets `LISTEN_PID`, its own pid).
    pub fn env_values(&self) -> (String, String) {
        (
            self.fds.len().to_string(),
            self.names().collect::<Vec<_>>().join(":"),
        )
    }

    /// Spawns `cmd` with the descriptors at fds 3.., `LISTEN_FDS`,
    /// `LISTEN_FDNAMES`, and `LISTEN_PID` set to the child's pid. The child
    /// inherits no other descriptor above 2. With an empty list, the child
    /// gets no `LISTEN_*` variables at all.
    pub fn spawn(&self, mut cmd: Command) -> Result<Process, SpawnError> {
        self.spawn_with(&mut cmd)
    }

    /// [`Activation::spawn`] without consuming the command.
    pub(crate) fn spawn_with(&self, cmd: &mut Command) -> Result<Process, SpawnError> {
        process::spawn(cmd, &self.extra())
    }

    /// What [`process::spawn`] adds for this list.
    fn extra(&self) -> process::Extra<'_> {
        let mut extra = process::Extra::default();
        if !self.fds.is_empty() {
            let (count, names) = self.env_values();
            extra.fds = &self.borrowed;
            extra.env = vec![
                ("LISTEN_FDS".into(), count.into()),
                ("LISTEN_FDNAMES".into(), names.into()),
            ];
            extra.pid_var = Some("LISTEN_PID");
        }
        extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pid: Option<&'a str>, fds: Option<&'a str>, names: Option<&'a str>) -> EnvVars<'a> {
        EnvVars {
            pid: pid.map(OsStr::new),
            fds: fds.map(OsStr::new),
            names: names.map(OsStr::new),
        }
    }

    #[test]
    fn pid_rules() {
        assert!(
            parse_env(vars(None, Some("2"), None), 7)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_env(vars(Some("8"), Some("2"), None), 7)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            parse_env(vars(Some("7"), Some("2"), None), 7).unwrap(),
            ["unknown", "unknown"]
        );
        let e = parse_env(vars(Some("x7"), Some("2"), None), 7)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LISTEN_PID=\"x7\"") && e.contains("expected a process id"),
            "{e}"
        );
        assert!(parse_env(vars(Some("0"), Some("1"), None), 0).is_err());
        assert!(parse_env(vars(Some(" 7"), Some("1"), None), 7).is_err());
    }

    #[test]
    fn count_rules() {
        assert!(
            parse_env(vars(Some("7"), None, None), 7)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_env(vars(Some("7"), Some("0"), Some("")), 7)
                .unwrap()
                .is_empty()
        );
        for bad in [
            "-1",
            "",
            "1x",
            "99999999999999999999",
            "2147483645",
            "1048577",
        ] {
            let e = parse_env(vars(Some("7"), Some(bad), None), 7)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("LISTEN_FDS="), "{bad}: {e}");
        }
    }

    #[test]
    fn name_rules() {
        assert_eq!(
            parse_env(vars(Some("7"), Some("3"), Some("a::c")), 7).unwrap(),
            ["a", "unknown", "c"]
        );
        let e = parse_env(vars(Some("7"), Some("2"), Some("a")), 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 1 name(s) but LISTEN_FDS=2"), "{e}");
        let e = parse_env(vars(Some("7"), Some("1"), Some("a\tb")), 7).unwrap_err();
        assert!(matches!(
            e,
            ActivationError::BadVariable {
                var: "LISTEN_FDNAMES",
                ..
            }
        ));
        let long = "x".repeat(256);
        assert!(parse_env(vars(Some("7"), Some("1"), Some(&long)), 7).is_err());
        assert!(parse_env(vars(Some("7"), Some("1"), Some(&long[..255])), 7).is_ok());
    }

    #[test]
    fn names_are_validated_when_sending() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut a = Activation::new();
        assert!(a.fd("ok-name.1", f.as_fd()).is_ok());
        for bad in ["", "a:b", "tab\t", &"y".repeat(256)] {
            assert!(a.fd(bad, f.as_fd()).is_err(), "{bad:?}");
        }
        assert_eq!(a.env_values(), ("1".to_string(), "ok-name.1".to_string()));
    }
}
