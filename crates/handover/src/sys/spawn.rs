//! Starting a process with `clone(CLONE_VM | CLONE_VFORK)`, the way musl's
//! and glibc's `posix_spawn` and Go's `forkExec` do.
//!
//! `fork` copies the parent's page tables, so its cost grows with the
//! parent's memory (tens of milliseconds at a few GB), and afterwards every
//! page the parent writes takes a copy-on-write fault. A vfork-style clone
//! shares the parent's memory instead: the spawning thread is suspended until
//! the child has called `execve` (or exited), and the cost does not depend on
//! the parent's size.
//!
//! The price is that the code in the child runs in the parent's memory, so:
//! - everything it touches is prepared before the clone, in memory the
//!   parent owns and does not use until the child is gone: the argument and
//!   environment arrays (with the slot for the child's own pid), the
//!   candidate paths, the working directory, the descriptor moves;
//! - it runs on a stack of its own (mmap'd, with a guard page), never
//!   returns into the parent's frames, and ends with `exit_group`;
//! - it calls the kernel directly ([`super::raw`]): no allocation, no lock,
//!   no `errno`, no panic;
//! - every signal is blocked in the spawning thread around the clone, and
//!   the child resets every handled signal to `SIG_DFL` before it unblocks
//!   them, so no handler of the parent ever runs in the child;
//! - it reports a failure as (step, errno, detail) into a [`Report`] the
//!   parent reads once the clone returns. No pipe: nothing the child does to
//!   its descriptors can swallow or misdirect the report.
//!
//! Descriptor placement: every source (the passed fds and the stdio ends) is
//! first duplicated, close-on-exec, to a number at or above the first
//! descriptor the child must not inherit (`3 + n`). Each target is below
//! that, so moving one source never overwrites another, whatever holes
//! `3..3+n` had. Then everything from `3 + n` up is marked close-on-exec.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::raw;

/// What to start; built by `crate::process`.
pub(crate) struct Request<'a> {
    /// Paths to try, in order, as `execvp` would (several when the program
    /// is looked up in `PATH`).
    pub(crate) candidates: &'a [PathBuf],
    /// `argv`, including `argv[0]`.
    pub(crate) argv: &'a [&'a OsStr],
    /// The child's complete environment.
    pub(crate) env: &'a [(OsString, OsString)],
    /// A variable the child gets set to its own pid (`LISTEN_PID`).
    pub(crate) pid_var: Option<&'a str>,
    /// The directory to change to before `exec`.
    pub(crate) cwd: Option<&'a OsStr>,
    /// Descriptors to place: (source, target). Targets are 0, 1, 2 and
    /// `3..first_cloexec`, each at most once.
    pub(crate) fds: &'a [(BorrowedFd<'a>, RawFd)],
    /// From this descriptor up, nothing is inherited.
    pub(crate) first_cloexec: RawFd,
    /// `setpgid(0, pgid)` in the child.
    pub(crate) process_group: Option<i32>,
    /// `PR_SET_PDEATHSIG`.
    pub(crate) death_signal: Option<i32>,
}

/// A started process.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    /// A pidfd (from `CLONE_PIDFD`, or `pidfd_open` on kernels that ignore
    /// the flag); `None` before Linux 5.3.
    pub(crate) pidfd: Option<OwnedFd>,
}

/// Where in the child a step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Resetting signal dispositions.
    Signals,
    /// `prctl(PR_SET_PDEATHSIG)`.
    DeathSignal,
    /// The parent exited before the death signal was armed.
    ParentGone,
    /// `setpgid`.
    ProcessGroup,
    /// `dup2` onto this descriptor.
    Fd(RawFd),
    /// Marking the other descriptors close-on-exec.
    CloseOnExec,
    /// `chdir`.
    Chdir,
    /// `execve` of the candidate with this index.
    Exec(usize),
}

/// Why a spawn failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// In this process, before the child existed (the child is not started).
    Prepare {
        what: &'static str,
        source: io::Error,
    },
    /// In the child, which has been reaped.
    Child { step: Step, errno: i32 },
    /// The child was killed before it reached `exec` (it has been reaped):
    /// its raw wait status.
    Vanished { wait_status: i32 },
}

/// What the child writes for the parent. All fields start at zero.
#[repr(C)]
#[derive(Default)]
struct Report {
    /// Set to 1 just before the first `execve`.
    reached_exec: u32,
    /// 0, or the failed step (see [`step_code`]).
    step: u32,
    errno: i32,
    /// The target fd or the candidate index, for the steps that have one.
    detail: i32,
}

const STEP_SIGNALS: u32 = 1;
const STEP_DEATH_SIGNAL: u32 = 2;
const STEP_PARENT_GONE: u32 = 3;
const STEP_PROCESS_GROUP: u32 = 4;
const STEP_FD: u32 = 5;
const STEP_CLOEXEC: u32 = 6;
const STEP_CHDIR: u32 = 7;
const STEP_EXEC: u32 = 8;

fn step_of(code: u32, detail: i32) -> Step {
    match code {
        STEP_SIGNALS => Step::Signals,
        STEP_DEATH_SIGNAL => Step::DeathSignal,
        STEP_PARENT_GONE => Step::ParentGone,
        STEP_PROCESS_GROUP => Step::ProcessGroup,
        STEP_FD => Step::Fd(detail),
        STEP_CLOEXEC => Step::CloseOnExec,
        STEP_CHDIR => Step::Chdir,
        _ => Step::Exec(detail.max(0) as usize),
    }
}

/// A NULL-terminated pointer array for `execve` whose pointers point into a
/// byte arena owned by the same value.
struct CArray {
    /// The strings, each NUL-terminated, back to back. Never resized after
    /// the pointers are taken, so they stay valid while `self` lives.
    arena: Vec<u8>,
    /// Pointers into `arena` (derived from one `as_mut_ptr`), then a NULL.
    ptrs: Vec<*const libc::c_char>,
    /// Offsets of each string in `arena`.
    offsets: Vec<usize>,
}

impl CArray {
    fn new<'b>(items: impl IntoIterator<Item = &'b [u8]>) -> io::Result<Self> {
        let mut arena = Vec::new();
        let mut offsets = Vec::new();
        for item in items {
            if item.contains(&0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "argument or environment entry {:?} contains a NUL byte",
                        String::from_utf8_lossy(item)
                    ),
                ));
            }
            offsets.push(arena.len());
            arena.extend_from_slice(item);
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
            ptrs,
            offsets,
        })
    }

    /// A writable pointer to byte `at` of string `index` (which must have
    /// room from there on).
    fn slot(&mut self, index: usize, at: usize) -> *mut u8 {
        let start = self.offsets[index];
        assert!(start + at < self.arena.len(), "slot out of bounds");
        // Derived from the same base pointer as `ptrs`, so writing through it
        // does not invalidate them.
        (self.ptrs[index] as *mut u8).wrapping_add(at)
    }
}

const SH: &std::ffi::CStr = c"/bin/sh";

/// Room for the digits of a pid (at most 10) and their NUL.
const PID_ROOM: usize = 20;

/// Everything the child reads, as raw pointers into buffers owned by the
/// spawning call's frame.
struct ChildArgs {
    candidates: *const *const libc::c_char,
    n_candidates: usize,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// `["/bin/sh", <slot>, argv[1..], NULL]` for a file without `#!`.
    sh_argv: *mut *const libc::c_char,
    /// Where the pid digits go (then a NUL), or null.
    pid_digits: *mut u8,
    cwd: *const libc::c_char,
    /// (source, target) pairs.
    moves: *const [RawFd; 2],
    n_moves: usize,
    first_cloexec: RawFd,
    /// Where the close-on-exec fallback loop stops (kernels before 5.11).
    fd_limit: RawFd,
    process_group: i32,
    has_process_group: bool,
    death_signal: i32,
    parent: i32,
    report: *mut Report,
}

/// Stack size of the child: plenty for the few frames it has, even
/// unoptimised (pages are only committed when touched).
const STACK_SIZE: usize = 256 * 1024;

/// An mmap'd stack whose lowest page is a guard.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: sysconf only reads a system parameter.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            n if n > 0 => n as usize,
            _ => 4096,
        };
        let len = STACK_SIZE + page;
        // SAFETY: an anonymous private mapping at an address the kernel
        // chooses; nothing else is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of the mapping made above.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer (stacks grow down on every Linux target
    /// this crate builds for); page-aligned, so 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the child that used it has
        // exec'd or exited (the clone returned), so nothing uses it.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

fn cstring(bytes: &[u8], what: &'static str) -> Result<CString, Failure> {
    CString::new(bytes).map_err(|_| Failure::Prepare {
        what,
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} contains a NUL byte", String::from_utf8_lossy(bytes)),
        ),
    })
}

/// The highest descriptor number the fallback close-on-exec loop visits.
fn fd_limit() -> RawFd {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current
        .map(|c| c.min(1 << 20) as RawFd)
        .unwrap_or(1 << 20)
}

/// Blocks every signal in the calling thread; restores the old mask on drop.
struct SignalsBlocked(u64);

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: rt_sigprocmask reads 8 bytes at `all` and writes 8 at
        // `old`, both valid; blocking signals has no other effect. Raw, so
        // that libc's internal signals (thread cancellation, setxid) are
        // blocked too, as glibc's posix_spawn does.
        let r = unsafe {
            raw::syscall(
                libc::SYS_rt_sigprocmask,
                &[
                    libc::SIG_SETMASK as usize,
                    &all as *const u64 as usize,
                    &mut old as *mut u64 as usize,
                    8,
                ],
            )
        };
        debug_assert!(r.is_ok());
        SignalsBlocked(old)
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        let _ = unsafe {
            raw::syscall(
                libc::SYS_rt_sigprocmask,
                &[
                    libc::SIG_SETMASK as usize,
                    &self.0 as *const u64 as usize,
                    0,
                    8,
                ],
            )
        };
    }
}

/// Starts a process as described by `req`; see the module docs.
///
/// Returns once the child has called `execve` successfully (or failed
/// before it, in which case it has been reaped).
pub(crate) fn spawn(req: &Request<'_>) -> Result<Spawned, Failure> {
    let prepare = |what: &'static str| move |source: io::Error| Failure::Prepare { what, source };

    // Descriptors: park every source at or above `first_cloexec`.
    let mut parked: Vec<OwnedFd> = Vec::with_capacity(req.fds.len());
    let mut moves: Vec<[RawFd; 2]> = Vec::with_capacity(req.fds.len());
    for (source, target) in req.fds {
        let fd = rustix::io::fcntl_dupfd_cloexec(source, req.first_cloexec)
            .map_err(|e| prepare("duplicating a descriptor to pass")(e.into()))?;
        moves.push([fd.as_raw_fd(), *target]);
        parked.push(fd);
    }

    // The exec image.
    let candidates: Vec<CString> = req
        .candidates
        .iter()
        .map(|p| cstring(p.as_os_str().as_bytes(), "the program path"))
        .collect::<Result<_, _>>()?;
    let mut candidate_ptrs: Vec<*const libc::c_char> =
        candidates.iter().map(|c| c.as_ptr()).collect();
    candidate_ptrs.push(std::ptr::null());
    let argv = CArray::new(req.argv.iter().map(|a| a.as_bytes()))
        .map_err(prepare("preparing the arguments"))?;
    let mut entries: Vec<Vec<u8>> = req
        .env
        .iter()
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(v.as_bytes());
            e
        })
        .collect();
    let pid_entry = req.pid_var.map(|var| {
        let mut e = var.as_bytes().to_vec();
        e.push(b'=');
        let at = e.len();
        // Placeholder digits, rewritten in the child.
        e.extend_from_slice(&[b'0'; PID_ROOM]);
        entries.push(e);
        (entries.len() - 1, at)
    });
    let mut envp = CArray::new(entries.iter().map(|e| e.as_slice()))
        .map_err(prepare("preparing the environment"))?;
    let pid_digits = match pid_entry {
        Some((index, at)) => envp.slot(index, at),
        None => std::ptr::null_mut(),
    };
    let mut sh_argv: Vec<*const libc::c_char> = Vec::with_capacity(argv.ptrs.len() + 1);
    sh_argv.push(SH.as_ptr());
    sh_argv.push(std::ptr::null());
    sh_argv.extend_from_slice(argv.ptrs.get(1..).unwrap_or(&[std::ptr::null()]));
    let cwd = req
        .cwd
        .map(|d| cstring(d.as_bytes(), "the working directory"))
        .transpose()?;

    let stack = Stack::new().map_err(prepare("allocating the new process's stack"))?;
    let mut report = Report::default();
    let report_ptr: *mut Report = &mut report;
    let args = ChildArgs {
        candidates: candidate_ptrs.as_ptr(),
        n_candidates: candidates.len(),
        argv: argv.ptrs.as_ptr(),
        envp: envp.ptrs.as_ptr(),
        sh_argv: sh_argv.as_mut_ptr(),
        pid_digits,
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        moves: moves.as_ptr(),
        n_moves: moves.len(),
        first_cloexec: req.first_cloexec,
        fd_limit: fd_limit(),
        process_group: req.process_group.unwrap_or(0),
        has_process_group: req.process_group.is_some(),
        death_signal: req.death_signal.unwrap_or(0),
        parent: std::process::id() as i32,
        report: report_ptr,
    };
    let mut pidfd: libc::c_int = -1;
    let pid = {
        let _blocked = SignalsBlocked::new();
        // SAFETY: `child_main` runs on `stack` (its own, with a guard page)
        // and only reads `args` and the buffers it points to, all owned by
        // this frame and alive until the clone returns, which with
        // CLONE_VFORK is after the child has exec'd or exited. It writes only
        // the report, the pid digits and the `sh_argv` slot, which this
        // thread does not touch meanwhile. It never returns (it ends with
        // exit_group), uses no libc state, and no handler of this process
        // can run in it (all signals are blocked here, and it resets the
        // handled ones before unblocking). The kernel writes the pidfd into
        // `pidfd` (CLONE_PIDFD takes the parent_tid argument).
        unsafe {
            libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                &args as *const ChildArgs as *mut libc::c_void,
                &mut pidfd as *mut libc::c_int,
            )
        }
    };
    if pid == -1 {
        return Err(Failure::Prepare {
            what: "creating the process (clone)",
            source: io::Error::last_os_error(),
        });
    }
    drop(stack);
    drop(parked);
    let pidfd = if pidfd >= 0 {
        // SAFETY: the kernel just created this descriptor for us (with
        // close-on-exec), and nothing else knows its number.
        Some(unsafe { OwnedFd::from_raw_fd(pidfd) })
    } else {
        rustix::process::Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
    };
    // SAFETY: the child is done with `report` (it exec'd or exited); read
    // it fresh, not from a value the compiler assumed unchanged.
    let report = unsafe { std::ptr::read_volatile(report_ptr) };
    if report.step != 0 || report.reached_exec == 0 {
        // It exited before or instead of exec: reap it now, so that no
        // zombie is left and its pid is not reused under a caller.
        let status = reap(pid);
        drop(pidfd);
        return Err(if report.step != 0 {
            Failure::Child {
                step: step_of(report.step, report.detail),
                errno: report.errno,
            }
        } else {
            Failure::Vanished {
                wait_status: status,
            }
        });
    }
    Ok(Spawned { pid, pidfd })
}

/// Waits for `pid` (our child, which has exited or is exiting); its raw
/// wait status.
fn reap(pid: i32) -> i32 {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return 0;
    };
    loop {
        match rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, status))) => return status.as_raw(),
            Err(rustix::io::Errno::INTR) => continue,
            _ => return 0,
        }
    }
}

/// The child: runs on its own stack in the parent's memory, until `execve`
/// or `exit_group`. See the module docs for what it may do.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` of the suspended spawning frame.
    let a = unsafe { &*(arg as *const ChildArgs) };
    let fail = |step: u32, errno: i32, detail: i32| -> ! {
        // SAFETY: the report belongs to the suspended spawning frame, which
        // reads it only after this process has exited.
        unsafe {
            std::ptr::write_volatile(
                a.report,
                Report {
                    reached_exec: 0,
                    step,
                    errno,
                    detail,
                },
            )
        };
        raw::exit_group(127)
    };

    // No handler of the parent may run here: every handled signal goes back
    // to SIG_DFL before the mask is lifted. SIGPIPE, which Rust programs
    // ignore, goes back to SIG_DFL too, as std's Command does.
    for sig in 1..=64usize {
        if sig == libc::SIGKILL as usize || sig == libc::SIGSTOP as usize {
            continue;
        }
        // A kernel `struct sigaction` is at most 4 words; all zeros is
        // SIG_DFL with no flags and an empty mask, whatever the layout.
        let mut old = [0usize; 4];
        let dfl = [0usize; 4];
        // SAFETY: reads the disposition of `sig` into `old` (32 bytes).
        let got = unsafe {
            raw::syscall(
                libc::SYS_rt_sigaction,
                &[sig, 0, old.as_mut_ptr() as usize, 8],
            )
        };
        if got.is_err() {
            continue;
        }
        let handler = old[0];
        let reset = if handler == libc::SIG_IGN {
            sig == libc::SIGPIPE as usize
        } else {
            handler != libc::SIG_DFL
        };
        if reset {
            // SAFETY: sets SIG_DFL from the zeroed `dfl`.
            if let Err(e) =
                unsafe { raw::syscall(libc::SYS_rt_sigaction, &[sig, dfl.as_ptr() as usize, 0, 8]) }
            {
                fail(STEP_SIGNALS, e, sig as i32);
            }
        }
    }

    if a.death_signal != 0 {
        // SAFETY: prctl(PR_SET_PDEATHSIG) sets a flag of this process.
        if let Err(e) = unsafe {
            raw::syscall(
                libc::SYS_prctl,
                &[libc::PR_SET_PDEATHSIG as usize, a.death_signal as usize],
            )
        } {
            fail(STEP_DEATH_SIGNAL, e, 0);
        }
        // The parent may have died before the flag took effect.
        // SAFETY: getppid has no arguments.
        let ppid = unsafe { raw::syscall(libc::SYS_getppid, &[]) };
        if ppid != Ok(a.parent as usize) {
            fail(STEP_PARENT_GONE, libc::ESRCH, 0);
        }
    }

    if a.has_process_group {
        // SAFETY: setpgid(0, pgid) changes this process's group.
        if let Err(e) = unsafe { raw::syscall(libc::SYS_setpgid, &[0, a.process_group as usize]) } {
            fail(STEP_PROCESS_GROUP, e, 0);
        }
    }

    for i in 0..a.n_moves {
        // SAFETY: `i < n_moves`, the length of the moves array.
        let [source, target] = unsafe { *a.moves.add(i) };
        // dup3 (dup2 is missing on AArch64) clears FD_CLOEXEC on the target,
        // so it survives exec. Every source is at or above `first_cloexec`
        // and every target below it: no move overwrites a source.
        // SAFETY: dup3 on two descriptor numbers.
        if let Err(e) =
            unsafe { raw::syscall(libc::SYS_dup3, &[source as usize, target as usize, 0]) }
        {
            fail(STEP_FD, e, target);
        }
    }

    // Nothing else is inherited.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let marked = unsafe {
        raw::syscall(
            libc::SYS_close_range,
            &[
                a.first_cloexec as usize,
                u32::MAX as usize,
                libc::CLOSE_RANGE_CLOEXEC as usize,
            ],
        )
    };
    if marked.is_err() {
        // Kernels before 5.11: walk the table.
        let mut fd = a.first_cloexec;
        while fd < a.fd_limit {
            // SAFETY: F_SETFD on a descriptor number; EBADF (not open) is
            // ignored.
            let _ = unsafe {
                raw::syscall(
                    libc::SYS_fcntl,
                    &[
                        fd as usize,
                        libc::F_SETFD as usize,
                        libc::FD_CLOEXEC as usize,
                    ],
                )
            };
            fd = fd.wrapping_add(1);
        }
    }

    if !a.cwd.is_null() {
        // SAFETY: `cwd` is a NUL-terminated string of the spawning frame.
        if let Err(e) = unsafe { raw::syscall(libc::SYS_chdir, &[a.cwd as usize]) } {
            fail(STEP_CHDIR, e, 0);
        }
    }

    if !a.pid_digits.is_null() {
        // SAFETY: getpid has no arguments.
        let pid = unsafe { raw::syscall(libc::SYS_getpid, &[]) }.unwrap_or(0) as u32;
        // SAFETY: `pid_digits` has PID_ROOM writable bytes, more than the
        // 10 digits and NUL a u32 needs.
        unsafe { write_decimal(pid, a.pid_digits) };
    }

    // The program starts with an empty signal mask, as with std's Command.
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask reads 8 bytes at `empty`.
    let _ = unsafe {
        raw::syscall(
            libc::SYS_rt_sigprocmask,
            &[
                libc::SIG_SETMASK as usize,
                &empty as *const u64 as usize,
                0,
                8,
            ],
        )
    };

    // SAFETY: the report belongs to the suspended spawning frame.
    unsafe { (*a.report).reached_exec = 1 };
    // Try each candidate as execvp does: go on after "not there", remember
    // a "permission denied", stop at anything else.
    let mut err = libc::ENOENT;
    let mut err_at = 0usize;
    let mut eacces_at = None;
    for i in 0..a.n_candidates {
        // SAFETY: `i < n_candidates`.
        let path = unsafe { *a.candidates.add(i) };
        // SAFETY: path, argv and envp are NUL-terminated strings and
        // NULL-terminated arrays of the spawning frame. On success this
        // does not return.
        let mut e = unsafe {
            raw::syscall(
                libc::SYS_execve,
                &[path as usize, a.argv as usize, a.envp as usize],
            )
        }
        .err()
        .unwrap_or(libc::ENOEXEC);
        if e == libc::ENOEXEC {
            // A file without `#!`: the shell runs it, as execvp does.
            // SAFETY: slot 1 of `sh_argv` (which has at least 3 entries) is
            // ours to write; then the same as above.
            unsafe {
                *a.sh_argv.add(1) = path;
                e = raw::syscall(
                    libc::SYS_execve,
                    &[SH.as_ptr() as usize, a.sh_argv as usize, a.envp as usize],
                )
                .err()
                .unwrap_or(libc::ENOEXEC);
            }
        }
        err = e;
        err_at = i;
        match e {
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            libc::EACCES => {
                if eacces_at.is_none() {
                    eacces_at = Some(i);
                }
            }
            _ => break,
        }
    }
    if let (Some(i), libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT) =
        (eacces_at, err)
    {
        err = libc::EACCES;
        err_at = i;
    }
    fail(STEP_EXEC, err, err_at as i32)
}

/// Writes `n` in decimal and a NUL at `out`.
///
/// # Safety
///
/// `out` has room for 11 bytes.
unsafe fn write_decimal(mut n: u32, out: *mut u8) {
    let mut tmp = [0u8; 10];
    let mut len = 0usize;
    for slot in tmp.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = tmp.iter().skip(tmp.len().wrapping_sub(len));
    let mut at = out;
    for &d in digits {
        // SAFETY: at most 10 digits, within the 11 bytes of `out`.
        unsafe {
            *at = d;
            at = at.add(1);
        }
    }
    // SAFETY: the 11th byte at most.
    unsafe { *at = 0 };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        for n in [0u32, 7, 10, 4_194_304, u32::MAX] {
            let mut b = [b'x'; 12];
            // SAFETY: 12 bytes.
            unsafe { write_decimal(n, b.as_mut_ptr()) };
            let end = b.iter().position(|&c| c == 0).unwrap();
            assert_eq!(std::str::from_utf8(&b[..end]).unwrap(), n.to_string());
        }
    }
}
