//! Starting a [`Command`](super::Command): the environment, `PATH` search,
//! stdio ends and descriptors, handed to the primitive in `sys::spawn`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout};

use super::error::explain;
use super::{Command, DEFAULT_PATH, Extra, Process, SpawnError, StdioKind};
use crate::sys::spawn::{self as raw_spawn, Request};

/// The paths `execvp` would try for `program`, in order, with the `PATH`
/// given: `program` itself when it contains a `/`, else `program` in each
/// directory of `PATH` (an empty entry is the working directory, `.`).
///
/// The crate's one `PATH` search: [`spawn`] tries these in the new process,
/// and [`find_executable`] picks the first that is an executable file.
pub(crate) fn candidates(program: &OsStr, path_var: &OsStr) -> Vec<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return vec![PathBuf::from(program)];
    }
    path_var
        .as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let dir = if dir.is_empty() { b"." } else { dir };
            Path::new(OsStr::from_bytes(dir)).join(program)
        })
        .collect()
}

/// The file `execvp` would most likely run for `program`: the first of
/// [`candidates`] that is an executable regular file, made absolute against
/// `cwd`. `None` when there is none.
pub(crate) fn find_executable(program: &OsStr, path_var: &OsStr, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    candidates(program, path_var)
        .into_iter()
        .map(|c| cwd.join(c))
        .find(|c| {
            std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Starts `cmd` with what `extra` adds; see [`Command::spawn`].
pub(crate) fn spawn(cmd: &Command, extra: &Extra<'_>) -> Result<Process, SpawnError> {
    let program = &cmd.program;
    let prepare = |what: &'static str| {
        move |source: io::Error| SpawnError::Prepare {
            program: program.clone(),
            what,
            source,
        }
    };
    let invalid = |what: &'static str, msg: String| SpawnError::Prepare {
        program: program.clone(),
        what,
        source: io::Error::new(io::ErrorKind::InvalidInput, msg),
    };
    if program.is_empty() {
        return Err(invalid(
            "checking the program name",
            "the program name is empty; expected a program name or path".into(),
        ));
    }
    let nul = |s: &OsStr| s.as_bytes().contains(&0);
    if nul(program) || cmd.args.iter().any(|a| nul(a)) {
        return Err(invalid(
            "checking the arguments",
            "an argument contains a NUL byte, which no program can receive".into(),
        ));
    }
    let mut env = cmd.child_env();
    for (k, v) in &extra.env {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    if let Some(var) = extra.pid_var {
        env.retain(|(key, _)| key != var);
    }
    if env
        .iter()
        .any(|(k, v)| nul(k) || nul(v) || k.as_bytes().contains(&b'='))
    {
        return Err(invalid(
            "checking the environment",
            "a variable name contains '=' or NUL, or a value contains NUL".into(),
        ));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let candidates = candidates(program, &path_var);

    // Stdio: the ends for the new process, and ours.
    let mut child_ends: Vec<(OwnedFd, RawFd)> = Vec::new();
    let mut borrowed: Vec<(BorrowedFd<'_>, RawFd)> = Vec::new();
    let mut ours: [Option<OwnedFd>; 3] = [None, None, None];
    for (target, stdio) in [(0, &cmd.stdin), (1, &cmd.stdout), (2, &cmd.stderr)] {
        match &stdio.0 {
            StdioKind::Inherit => {}
            StdioKind::Null => {
                let null = rustix::fs::open(
                    "/dev/null",
                    rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| prepare("opening /dev/null")(e.into()))?;
                child_ends.push((null, target));
            }
            StdioKind::Piped => {
                let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                    .map_err(|e| prepare("creating a pipe for stdio")(e.into()))?;
                let (theirs, mine) = if target == 0 { (r, w) } else { (w, r) };
                child_ends.push((theirs, target));
                ours[target as usize] = Some(mine);
            }
            StdioKind::Fd(fd) => borrowed.push((fd.as_fd(), target)),
        }
    }
    let mut fds: Vec<(BorrowedFd<'_>, RawFd)> = child_ends
        .iter()
        .map(|(fd, t)| (fd.as_fd(), *t))
        .chain(borrowed)
        .collect();
    let first_cloexec = 3 + extra.fds.len() as RawFd;
    for (i, fd) in extra.fds.iter().enumerate() {
        fds.push((*fd, 3 + i as RawFd));
    }

    let argv: Vec<&OsStr> = std::iter::once(program.as_os_str())
        .chain(cmd.args.iter().map(OsString::as_os_str))
        .collect();
    let req = Request {
        candidates: &candidates,
        argv: &argv,
        env: &env,
        pid_var: extra.pid_var,
        cwd: cmd.cwd.as_deref().map(Path::as_os_str),
        fds: &fds,
        first_cloexec,
        process_group: cmd.process_group,
        death_signal: cmd.death_signal,
    };
    let spawned = match raw_spawn::spawn(&req) {
        Ok(s) => s,
        Err(failure) => return Err(explain(cmd, &candidates, &path_var, failure)),
    };
    drop(fds);
    drop(child_ends);
    let [stdin, stdout, stderr] = ours;
    Ok(Process {
        pid: spawned.pid as u32,
        pidfd: spawned.pidfd,
        status: None,
        stdin: stdin.map(ChildStdin::from),
        stdout: stdout.map(ChildStdout::from),
        stderr: stderr.map(ChildStderr::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        let c = candidates(OsStr::new("srv"), OsStr::new("/a::/b"));
        assert_eq!(
            c,
            [
                PathBuf::from("/a/srv"),
                PathBuf::from("./srv"),
                PathBuf::from("/b/srv")
            ]
        );
        let c = candidates(OsStr::new("./x/srv"), OsStr::new("/a"));
        assert_eq!(c, [PathBuf::from("./x/srv")]);
        let sh = find_executable(
            OsStr::new("sh"),
            OsStr::new("/nonexistent:/bin:/usr/bin"),
            Path::new("/"),
        );
        assert!(sh.is_some_and(|p| p.is_absolute() && p.ends_with("sh")));
        let cwd = find_executable(OsStr::new("sh"), OsStr::new(":"), Path::new("/bin"));
        assert_eq!(cwd.as_deref(), Some(Path::new("/bin/./sh")));
        assert_eq!(
            find_executable(OsStr::new("sh"), OsStr::new("/nonexistent"), Path::new("/")),
            None
        );
    }
}
