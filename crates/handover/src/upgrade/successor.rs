//! Starting the successor: which program to execute, and waiting on the
//! readiness pipe.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

/// How this program was started, to start it again the same way: `argv[0]`
/// made absolute against `cwd`, or found in `PATH` (with the crate's one
/// `PATH` search, [`crate::process::find_executable`]); the running binary
/// when neither finds it.
pub(super) fn resolve_executable(argv0: &OsString, cwd: &Path) -> PathBuf {
    let p = Path::new(argv0);
    if argv0.as_encoded_bytes().contains(&b'/') {
        return cwd.join(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = crate::process::find_executable(argv0, &path, cwd) {
        return found;
    }
    // Not found by name: the running binary (does not follow a swapped file).
    std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| p.to_owned())
}

pub(super) enum WaitError {
    Timeout,
    Io(io::Error),
}

/// Waits for one byte on the readiness pipe: `Ok(true)` ready, `Ok(false)`
/// end of file.
pub(super) fn wait_ready(pipe: &OwnedFd, timeout: Duration) -> Result<bool, WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError::Timeout);
        }
        if !poll_in(pipe.as_fd(), left).map_err(WaitError::Io)? {
            continue;
        }
        let mut f = std::fs::File::from(pipe.try_clone().map_err(WaitError::Io)?);
        let mut b = [0u8; 1];
        return match f.read(&mut b) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(WaitError::Io(e)),
        };
    }
}

/// Polls `fd` for input for up to `timeout`; `true` when readable (or hung
/// up).
pub(super) fn poll_in(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos() as i64,
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => {
                if Instant::now() >= deadline {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_resolution() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            resolve_executable(&"/usr/bin/x".into(), cwd),
            Path::new("/usr/bin/x")
        );
        assert_eq!(
            resolve_executable(&"./bin/x".into(), cwd),
            Path::new("/srv/app/./bin/x")
        );
        // Found in PATH.
        assert_eq!(
            resolve_executable(&"sh".into(), cwd).file_name().unwrap(),
            "sh"
        );
    }
}
