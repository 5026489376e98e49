//! The `unsafe` parts of [`crate::reexec`]: replacing this process's image
//! in place (`execve`, same pid), descriptor flags by number, and the
//! signal mask of the calling thread. A submodule of `sys`, so `unsafe`
//! still lives in one module.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::RawFd;

/// The signal mask of a thread, as saved by [`block_signals`].
#[derive(Clone, Copy)]
pub(crate) struct SigMask(libc::sigset_t);

impl std::fmt::Debug for SigMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigMask(..)")
    }
}

fn sigset(signals: &[i32]) -> io::Result<libc::sigset_t> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised just above.
    let mut set = unsafe { set.assume_init() };
    for &s in signals {
        // SAFETY: `set` is a valid, initialised sigset_t; an invalid signal
        // number gives EINVAL and changes nothing.
        if unsafe { libc::sigaddset(&mut set, s) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

fn sigmask(how: libc::c_int, set: &libc::sigset_t) -> io::Result<SigMask> {
    let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` is initialised; `old` receives the previous mask. Only
    // the calling thread's mask changes: blocking a signal loses nothing (it
    // stays pending), and every caller restores or releases it.
    let r = unsafe { libc::pthread_sigmask(how, set, old.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    // SAFETY: pthread_sigmask succeeded, so it wrote the old mask.
    Ok(SigMask(unsafe { old.assume_init() }))
}

/// Blocks `signals` in the calling thread; returns the mask before.
pub(crate) fn block_signals(signals: &[i32]) -> io::Result<SigMask> {
    sigmask(libc::SIG_BLOCK, &sigset(signals)?)
}

/// Unblocks `signals` in the calling thread.
pub(crate) fn unblock_signals(signals: &[i32]) -> io::Result<()> {
    sigmask(libc::SIG_UNBLOCK, &sigset(signals)?).map(|_| ())
}

/// Sets the calling thread's mask back to `mask`.
pub(crate) fn restore_mask(mask: &SigMask) -> io::Result<()> {
    sigmask(libc::SIG_SETMASK, &mask.0).map(|_| ())
}

/// Whether descriptor number `fd` is close-on-exec; `None` when it is not
/// open. Takes no ownership.
pub(crate) fn cloexec(fd: RawFd) -> io::Result<Option<bool>> {
    // SAFETY: F_GETFD only reads the flags of descriptor `fd`; a number that
    // is not open gives EBADF.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBADF) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r & libc::FD_CLOEXEC != 0))
}

/// Sets or clears `FD_CLOEXEC` on descriptor number `fd` (a number that is
/// not open is skipped). Takes no ownership; other descriptor flags are
/// kept.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let Some(_) = cloexec(fd)? else {
        return Ok(());
    };
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the close-on-exec flag of `fd` (the only
    // descriptor flag Linux has); EBADF if it was closed meanwhile.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, flags) };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBADF) {
            return Err(e);
        }
    }
    Ok(())
}

/// `execve(path, argv, envp)` in this process. Returns only when it failed,
/// with the error; the process is then unchanged.
pub(crate) fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let argv: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: `path` and every string are NUL-terminated and outlive the
    // call; both arrays are NULL-terminated. On success the call does not
    // return (the image is replaced); on failure nothing changed.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}
