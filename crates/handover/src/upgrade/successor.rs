//! Starting the successor: which program to execute, and waiting on the
//! readiness pipe.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

/// How this program was started, to start it again the same way.
pub(super) fn resolve_executable(argv0: &OsString, cwd: &Path) -> PathBuf {
    let p = Path::new(argv0);
    if argv0.as_encoded_bytes().contains(&b'/') {
        return if p.is_absolute() {
            p.to_owned()
        } else {
            cwd.join(p)
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = if dir.as_os_str().is_empty() {
                cwd.join(p)
            } else {
                dir.join(p)
            };
            if is_executable(&candidate) {
                return if candidate.is_absolute() {
                    candidate
                } else {
                    cwd.join(candidate)
                };
            }
        }
    }
    // Not found by name: the running binary (does not follow a swapped file).
    std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| p.to_owned())
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
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

/// "exited with code 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with code {code}")
    } else if let Some(sig) = status.signal() {
        let name = rustix::process::Signal::from_named_raw(sig)
            .map(|s| format!(" ({s:?})"))
            .unwrap_or_default();
        format!("was killed by signal {sig}{name}")
    } else {
        format!("ended ({status})")
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

    #[test]
    fn exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(std::process::ExitStatus::from_raw(3 << 8)),
            "exited with code 3"
        );
        let d = describe_exit(std::process::ExitStatus::from_raw(9));
        assert!(d.starts_with("was killed by signal 9"), "{d}");
    }
}
