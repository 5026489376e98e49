//! The only module with `unsafe` code (the crate denies it everywhere
//! else). Everything above it speaks [`OwnedFd`]/[`BorrowedFd`].
//!
//! What needs `unsafe` here:
//! - adopting the descriptors a parent left at fds 3.. (socket activation),
//!   once per process ([`adopt_inherited_fds`]);
//! - starting a process ([`spawn`]): a vfork-style `clone` whose child runs
//!   in this process's memory until `execve`, calling the kernel directly
//!   ([`raw`]);
//! - reading a peer's credentials where the pid may be 0 ([`peer_cred`],
//!   [`recv_with_creds`]), which rustix's typed calls reject;
//! - removing variables from the process environment (sound only while the
//!   process has a single thread);
//! - re-executing this process in place with chosen descriptors kept and
//!   signals held ([`inplace`]).

/// In-place `execve`, descriptor flags by number and signal masks, for
/// [`crate::reexec`].
pub(crate) mod inplace;
mod raw;
pub(crate) mod spawn;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

static ADOPTED: AtomicBool = AtomicBool::new(false);

/// Why [`adopt_inherited_fds`] took nothing.
#[derive(Debug)]
pub(crate) enum AdoptError {
    /// A previous call adopted the inherited descriptors.
    AlreadyAdopted,
    /// This descriptor is not open (nothing was adopted).
    NotOpen(RawFd),
    /// This descriptor is listed twice (nothing was adopted).
    Duplicate(RawFd),
    /// Checking a descriptor failed (nothing was adopted).
    Io(io::Error),
}

/// Takes ownership of the descriptors `first..first + count` that the
/// parent left to this process (socket activation), once per process.
///
/// Every descriptor is checked to be open before any is adopted, so on an
/// error nothing is taken (in particular not a descriptor this process
/// opened itself at a number the parent's count claims). Only the first call
/// that gets this far adopts anything; later ones get
/// [`AdoptError::AlreadyAdopted`], so no descriptor ever has two owners.
pub(crate) fn adopt_inherited_fds(first: RawFd, count: usize) -> Result<Vec<OwnedFd>, AdoptError> {
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(AdoptError::AlreadyAdopted);
    }
    let fds = (0..count).map(|i| first + i as RawFd);
    for fd in fds.clone() {
        if !fd_is_open(fd).map_err(AdoptError::Io)? {
            return Err(AdoptError::NotOpen(fd));
        }
    }
    Ok(fds
        // SAFETY: `fd` is open, and the protocol hands it to this process;
        // ADOPTED makes this the only place that ever takes it.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect())
}

static KEPT_ADOPTED: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the descriptors `fds` that the image of this process
/// before an in-place `execve` kept open for it ([`crate::reexec`]), once per
/// process.
///
/// Every descriptor is checked to be open, and the list to have no number
/// twice, before any is adopted, so on an error nothing is taken. Only the
/// first call that gets this far adopts anything. The caller makes sure the
/// numbers lie outside the `LISTEN_FDS` range, which
/// [`adopt_inherited_fds`] takes.
pub(crate) fn adopt_kept_fds(fds: &[RawFd]) -> Result<Vec<OwnedFd>, AdoptError> {
    let mut sorted = fds.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(AdoptError::Duplicate(w[0]));
    }
    for &fd in fds {
        if !fd_is_open(fd).map_err(AdoptError::Io)? {
            return Err(AdoptError::NotOpen(fd));
        }
    }
    if KEPT_ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(AdoptError::AlreadyAdopted);
    }
    Ok(fds
        .iter()
        // SAFETY: `fd` is open and listed once; the previous image kept it
        // for this process, outside the range `adopt_inherited_fds` takes;
        // KEPT_ADOPTED makes this the only place that ever takes it.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect())
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

/// The variables of socket activation (sd_listen_fds(3)). Named here, in
/// the lowest layer, because the layers that keep them from leaking sit
/// below `activation`: [`crate::process`] never passes them on, and
/// [`unset_listen_env`] removes them.
pub(crate) const LISTEN_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

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
    for key in LISTEN_VARS {
        // SAFETY: the caller guarantees the process is single-threaded.
        unsafe { std::env::remove_var(key) };
    }
}

/// One datagram received by [`recv_with_creds`].
#[derive(Debug)]
pub(crate) struct Datagram {
    /// Its full length (larger than the buffer when it was truncated).
    pub(crate) len: usize,
    /// `(pid, uid, gid)` from `SCM_CREDENTIALS`, when attached. The pid is 0
    /// when the sender is in a pid namespace this process cannot see.
    pub(crate) creds: Option<(i32, u32, u32)>,
    /// Descriptors that came with it (close-on-exec; any beyond 16 were
    /// closed by the kernel).
    pub(crate) fds: Vec<OwnedFd>,
}

/// Receives one datagram with its credentials and any descriptors, with
/// `MSG_CMSG_CLOEXEC | MSG_TRUNC` (and `MSG_DONTWAIT` when `nonblocking`).
///
/// rustix's `RecvAncillaryMessage::ScmCredentials` holds the pid as a
/// non-zero type, which a sender in another pid namespace (pid 0) violates;
/// this reads the raw `ucred` instead.
pub(crate) fn recv_with_creds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    nonblocking: bool,
) -> io::Result<Datagram> {
    const MAX_FDS: usize = 16;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe {
        libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
            + libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32)
    } as usize;
    // u64 words: aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    let mut flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    let n = loop {
        // SAFETY: `msg` points to `iov` (which points into `buf`) and to
        // `control`, all alive and writable for the lengths given.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut out = Datagram {
        len: n,
        creds: None,
        fds: Vec::new(),
    };
    // SAFETY: walking the control messages the kernel wrote into `control`
    // with the libc macros, which stay within `msg_controllen`.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside `control` (from the macros).
        let (level, ty, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        // SAFETY: the data of that header, and CMSG_LEN is arithmetic.
        let (data, header) = unsafe { (libc::CMSG_DATA(cmsg), libc::CMSG_LEN(0) as usize) };
        let payload = len.saturating_sub(header);
        if level == libc::SOL_SOCKET && ty == libc::SCM_CREDENTIALS {
            if payload >= std::mem::size_of::<libc::ucred>() {
                // SAFETY: the payload holds a ucred (checked length);
                // unaligned read of plain data.
                let c = unsafe { std::ptr::read_unaligned(data.cast::<libc::ucred>()) };
                out.creds = Some((c.pid, c.uid, c.gid));
            }
        } else if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            for i in 0..payload / std::mem::size_of::<RawFd>() {
                // SAFETY: within the payload; unaligned read of an int.
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: the kernel just installed this descriptor in this
                // process for us; nothing else knows its number.
                out.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(out)
}
