//! The only module with `unsafe` code. Everything above it speaks
//! [`OwnedFd`]/[`BorrowedFd`].
//!
//! Three things need `unsafe` here:
//! - adopting the descriptors a parent left at fds 3.. (socket activation),
//! - code that runs in a child between `fork` and `exec` (it may not allocate
//!   or take a lock: every byte it touches is prepared before the fork),
//! - removing variables from the process environment (sound only while the
//!   process has a single thread).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// In-place `execve`, descriptor flags by number and signal masks, for
/// [`crate::reexec`].
pub(crate) mod inplace;

/// Takes ownership of the inherited descriptor `fd` if it is open.
///
/// Returns `Ok(None)` when `fd` is not open (`EBADF`).
///
/// # Safety
///
/// The caller guarantees that nothing else in the process owns `fd` and that
/// nothing else will ever adopt it: `activation::ListenFds::from_env` calls
/// this once per process, behind a global guard.
pub(crate) unsafe fn adopt_inherited_fd(fd: RawFd) -> io::Result<Option<OwnedFd>> {
    if !fd_is_open(fd)? {
        return Ok(None);
    }
    // SAFETY: `fd` is open and, by this function's contract, owned by
    // nobody else in this process.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `SO_PEERCRED` of a connected Unix socket: (pid, uid, gid). The pid is 0
/// when the peer is in a pid namespace this process cannot see (a client
/// on the host talking to a server in a container), which rustix's typed
/// call rejects; the uid and gid are still the peer's.
pub(crate) fn peer_cred(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<(i32, u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid
    // `ucred`, and the updated length into `len`; `fd` is borrowed, open.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::other("SO_PEERCRED returned a short answer"));
    }
    Ok((cred.pid, cred.uid, cred.gid))
}

/// Whether `fd` is an open descriptor of this process. Takes no ownership.
pub(crate) fn fd_is_open(fd: RawFd) -> io::Result<bool> {
    // SAFETY: F_GETFD only reads the descriptor flags of `fd`; an fd that is
    // not open gives EBADF and nothing else happens. No ownership is taken.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if r == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBADF) {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(true)
}

/// Removes `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` from this
/// process's environment, so that programs it starts later do not see them.
///
/// Prefer [`crate::activation::strip_env`] on each `Command` you spawn: it
/// needs no `unsafe`.
///
/// # Safety
///
/// Changing the environment is unsound while another thread may read or
/// write it (including through `getenv` in C code such as DNS resolution).
/// Call this early in `main`, before any thread is started (in particular
/// before a tokio runtime is built).
pub unsafe fn unset_listen_env() {
    for key in crate::activation::LISTEN_VARS {
        // SAFETY: the caller guarantees the process is single-threaded.
        unsafe { std::env::remove_var(key) };
    }
}

/// A NULL-terminated pointer array for `execve` whose pointers point into a
/// byte arena owned by the same value.
struct CArray {
    /// The strings, each NUL-terminated, back to back. Never resized after
    /// the pointers are taken, so they stay valid while `self` lives.
    arena: Vec<u8>,
    /// Offsets of each string in `arena`.
    offsets: Vec<usize>,
    /// Pointers into `arena` (derived from one `as_mut_ptr`), then a NULL.
    ptrs: Vec<*const libc::c_char>,
}

impl CArray {
    fn new(items: impl IntoIterator<Item = Vec<u8>>) -> io::Result<Self> {
        let mut arena = Vec::new();
        let mut offsets = Vec::new();
        for item in items {
            if item.contains(&0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "argument or environment entry {:?} contains a NUL byte",
                        String::from_utf8_lossy(&item)
                    ),
                ));
            }
            offsets.push(arena.len());
            arena.extend_from_slice(&item);
            arena.push(0);
        }
        let base = arena.as_mut_ptr();
        let mut ptrs: Vec<*const libc::c_char> = offsets
            .iter()
            .map(|&o| base.wrapping_add(o) as *const libc::c_char)
            .collect();
        ptrs.push(std::ptr::null());
        Ok(CArray {
            arena,
            offsets,
            ptrs,
        })
    }

    /// Overwrites bytes of string `index` at `at` through the raw pointers
    /// (not through a new reference to the arena, which would invalidate them).
    fn overwrite(&mut self, index: usize, at: usize, bytes: &[u8]) {
        let len = self
            .offsets
            .get(index + 1)
            .copied()
            .unwrap_or(self.arena.len())
            - self.offsets[index];
        assert!(at + bytes.len() <= len, "overwrite out of bounds");
        let dst = self.ptrs[index] as *mut u8;
        // SAFETY: `dst + at .. + bytes.len()` lies inside string `index` of the
        // arena (checked above); the pointer was derived from `as_mut_ptr`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.add(at), bytes.len()) };
    }
}

/// Everything the child needs to `execve` the program itself, so that it can
/// put its own pid into `LISTEN_PID` without allocating after `fork`.
pub(crate) struct ExecImage {
    /// Paths to try, in order (several when the program is looked up in PATH).
    candidates: Vec<CString>,
    argv: CArray,
    envp: CArray,
    /// Index in `envp` of the `LISTEN_PID=` entry, whose digits are
    /// written after fork.
    pid_entry: usize,
    /// For a file without `#!` (`ENOEXEC`), run it with `/bin/sh` as
    /// `execvp` does: `["/bin/sh", <path>, args..., NULL]`, where slot 1 is
    /// filled in the child with the path that failed.
    sh_argv: Vec<*const libc::c_char>,
}

const SH: &std::ffi::CStr = c"/bin/sh";

/// The `LISTEN_PID=` entry is this prefix, then room for 20 digits.
const PID_PREFIX: &[u8] = b"LISTEN_PID=";

impl ExecImage {
    /// Prepares an image: `program` looked up like `execvp` does, in the PATH
    /// of `env`; `env` is the child's complete environment (without
    /// `LISTEN_PID`, which is added here).
    pub(crate) fn new(
        program: &OsStr,
        args: &[&OsStr],
        env: &[(OsString, OsString)],
    ) -> io::Result<Self> {
        let candidates = program_candidates(program, env)?;
        let argv = CArray::new(
            std::iter::once(program)
                .chain(args.iter().copied())
                .map(|a| a.as_bytes().to_vec()),
        )?;
        let mut entries: Vec<Vec<u8>> = env
            .iter()
            .map(|(k, v)| {
                let mut e = k.as_bytes().to_vec();
                e.push(b'=');
                e.extend_from_slice(v.as_bytes());
                e
            })
            .collect();
        let pid_entry = entries.len();
        let mut pid = PID_PREFIX.to_vec();
        // Placeholder digits; rewritten in the child.
        pid.extend_from_slice(&[b'0'; 20]);
        entries.push(pid);
        let envp = CArray::new(entries)?;
        let mut sh_argv = Vec::with_capacity(argv.ptrs.len() + 1);
        sh_argv.push(SH.as_ptr());
        sh_argv.push(std::ptr::null());
        sh_argv.extend_from_slice(&argv.ptrs[1..]);
        Ok(ExecImage {
            candidates,
            argv,
            envp,
            pid_entry,
            sh_argv,
        })
    }

    /// Runs in the child after fork: writes the pid and execs. Returns only on
    /// failure. Async-signal-safe: no allocation, no locks.
    fn exec(&mut self) -> io::Error {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u32;
        let mut digits = [0u8; 11];
        let n = write_decimal(pid, &mut digits);
        // Digits and their NUL; the rest of the placeholder is never read.
        self.envp
            .overwrite(self.pid_entry, PID_PREFIX.len(), &digits[..=n]);
        let mut err = libc::ENOENT;
        let mut saw_eacces = false;
        for path in &self.candidates {
            // SAFETY: `path`, `argv` and `envp` are NUL-terminated strings and
            // NULL-terminated arrays owned by `self`, alive during the call.
            unsafe {
                libc::execve(
                    path.as_ptr(),
                    self.argv.ptrs.as_ptr(),
                    self.envp.ptrs.as_ptr(),
                )
            };
            let mut e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ENOENT);
            if e == libc::ENOEXEC {
                // A script without `#!`: the shell runs it, as execvp does.
                self.sh_argv[1] = path.as_ptr();
                // SAFETY: as above; `sh_argv` is NULL-terminated and points
                // into `SH`, `path` and the argv arena, all alive.
                unsafe {
                    libc::execve(SH.as_ptr(), self.sh_argv.as_ptr(), self.envp.ptrs.as_ptr())
                };
                e = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::ENOEXEC);
            }
            match e {
                // Keep looking, as execvp does.
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                libc::EACCES => saw_eacces = true,
                other => return io::Error::from_raw_os_error(other),
            }
            err = e;
        }
        if saw_eacces {
            err = libc::EACCES;
        }
        io::Error::from_raw_os_error(err)
    }
}

/// Writes `n` in decimal at the start of `out`; returns the digit count.
fn write_decimal(mut n: u32, out: &mut [u8]) -> usize {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    len
}

/// The paths `execvp` would try for `program`, using the `PATH` of `env`.
fn program_candidates(program: &OsStr, env: &[(OsString, OsString)]) -> io::Result<Vec<CString>> {
    let bytes = program.as_bytes();
    let to_c = |b: Vec<u8>| {
        CString::new(b).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("program name {program:?} contains a NUL byte"),
            )
        })
    };
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the program name is empty",
        ));
    }
    if bytes.contains(&b'/') {
        return Ok(vec![to_c(bytes.to_vec())?]);
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_bytes().to_vec())
        .unwrap_or_else(|| b"/bin:/usr/bin".to_vec());
    let mut out = Vec::new();
    for dir in path.split(|&b| b == b':') {
        let mut p = if dir.is_empty() {
            b".".to_vec()
        } else {
            dir.to_vec()
        };
        p.push(b'/');
        p.extend_from_slice(bytes);
        out.push(to_c(p)?);
    }
    Ok(out)
}

/// What a child does between `fork` and `exec`, all prepared before the fork.
pub(crate) struct ChildSetup {
    /// Signal the kernel sends the child when the thread that spawned it exits.
    pub(crate) death_signal: Option<i32>,
    /// Descriptors to place at 3, 4, ...; each already numbered at least
    /// `3 + fds.len()`, so moving one never overwrites another.
    pub(crate) fds: Vec<OwnedFd>,
    /// When set, the child execs this image itself (to set `LISTEN_PID`).
    pub(crate) image: Option<ExecImage>,
}

// SAFETY: the raw pointers in `ExecImage` point into buffers owned by the same
// `ExecImage`; they are only dereferenced by `execve` in the child process.
// Moving the value between threads moves the owning boxes with it (the heap
// buffers themselves do not move).
unsafe impl Send for ExecImage {}
// SAFETY: `ExecImage` has no interior mutability; `&ExecImage` gives no way to
// reach the pointers.
unsafe impl Sync for ExecImage {}

impl ChildSetup {
    /// Registers this setup to run in the child after fork, as the last
    /// `pre_exec` hook. When it carries an image, the child execs from here
    /// and hooks registered after this one never run.
    pub(crate) fn register(self, cmd: &mut Command) {
        let parent = std::process::id() as libc::pid_t;
        let mut setup = self;
        let hook = move || -> io::Result<()> { setup.run_in_child(parent) };
        // SAFETY: `run_in_child` only makes async-signal-safe system calls
        // (prctl, getppid, dup2, syscall(close_range), fcntl, getpid,
        // execve) and touches memory prepared before fork; it allocates
        // nothing and takes no lock.
        unsafe { cmd.pre_exec(hook) };
    }

    fn run_in_child(&mut self, parent: libc::pid_t) -> io::Result<()> {
        if let Some(sig) = self.death_signal {
            // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on this process.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) } == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            // SAFETY: getppid has no preconditions.
            if unsafe { libc::getppid() } != parent {
                return Err(io::Error::other(
                    "the parent exited while the child was starting",
                ));
            }
        }
        for (i, fd) in self.fds.iter().enumerate() {
            let target = 3 + i as RawFd;
            // SAFETY: dup2 onto a number in 3..3+n; the sources are all above
            // that range, so no source is closed by it. The new descriptor has
            // FD_CLOEXEC cleared, so it survives exec.
            if unsafe { libc::dup2(fd.as_raw_fd(), target) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        mark_cloexec_from(3 + self.fds.len() as RawFd);
        match &mut self.image {
            Some(image) => Err(image.exec()),
            None => Ok(()),
        }
    }
}

/// Marks every descriptor from `first` up as close-on-exec, so the child
/// inherits nothing it was not given. (Closing them would also close the pipe
/// std uses to report exec errors.)
fn mark_cloexec_from(first: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Kernels before 5.11: walk the table up to the soft limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`, a valid rlimit.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as RawFd
    } else {
        4096
    };
    for fd in first..max {
        // SAFETY: setting FD_CLOEXEC on a descriptor number; EBADF when it is
        // not open, which is ignored.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        let mut b = [0u8; 20];
        for n in [0u32, 7, 10, 4_194_304, u32::MAX] {
            let len = write_decimal(n, &mut b);
            assert_eq!(std::str::from_utf8(&b[..len]).unwrap(), n.to_string());
        }
    }

    #[test]
    fn candidates_follow_path() {
        let env = vec![(OsString::from("PATH"), OsString::from("/a::/b"))];
        let c = program_candidates(OsStr::new("srv"), &env).unwrap();
        let c: Vec<_> = c.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(c, ["/a/srv", "./srv", "/b/srv"]);
        let c = program_candidates(OsStr::new("./x/srv"), &env).unwrap();
        assert_eq!(c[0].to_str().unwrap(), "./x/srv");
        assert!(program_candidates(OsStr::new(""), &env).is_err());
    }
}
