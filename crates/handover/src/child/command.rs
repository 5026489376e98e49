//! Looking at a `Command` before it is spawned: its label for logs, and the
//! checks that turn "No such file or directory" into an error that names the
//! program, the PATH searched, or the working directory.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::Access;
use rustix::io::Errno;

use super::ChildError;

/// The PATH `execvp` uses when the variable is unset (glibc's `_CS_PATH`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// `(dir) program args`, with arguments quoted when they would be ambiguous.
pub(super) fn label(cmd: &Command) -> String {
    let dir = match cmd.get_current_dir() {
        Some(d) => d.display().to_string(),
        None => std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| ".".to_string()),
    };
    let mut s = format!("({dir}) {}", quote(cmd.get_program()));
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(arg: &OsStr) -> Cow<'_, str> {
    let text = arg.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"'\"\\".contains(c));
    if plain {
        text
    } else {
        Cow::Owned(format!("{text:?}"))
    }
}

/// The PATH the child will search, as `execvp` in the child would see it.
fn child_path(cmd: &Command) -> OsString {
    if let Some((_, value)) = cmd.get_envs().find(|(k, _)| *k == OsStr::new("PATH")) {
        return value.map_or_else(|| DEFAULT_PATH.into(), ToOwned::to_owned);
    }
    if crate::activation::env_cleared(cmd) {
        return DEFAULT_PATH.into();
    }
    std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into())
}

enum Candidate {
    Runnable,
    NotRunnable(String),
    Missing,
}

fn check_candidate(path: &Path) -> Candidate {
    match std::fs::metadata(path) {
        Err(_) => Candidate::Missing,
        Ok(m) if m.is_dir() => Candidate::NotRunnable("it is a directory".to_string()),
        Ok(_) => match rustix::fs::access(path, Access::EXEC_OK) {
            Ok(()) => Candidate::Runnable,
            Err(e) => Candidate::NotRunnable(io::Error::from(e).to_string()),
        },
    }
}

/// Checks the working directory and finds the program as the child will,
/// so that the common mistakes get errors that name what is wrong. Returns
/// the program's path when found.
pub(super) fn precheck(cmd: &Command, label: &str) -> Result<PathBuf, ChildError> {
    let dir = cmd.get_current_dir();
    if let Some(dir) = dir {
        let problem = match std::fs::metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some("does not exist".to_string()),
            Err(e) => Some(format!("cannot be inspected ({e})")),
            Ok(m) if !m.is_dir() => Some("is not a directory".to_string()),
            Ok(_) => rustix::fs::access(dir, Access::EXEC_OK)
                .err()
                .map(|e| format!("cannot be entered ({})", io::Error::from(e))),
        };
        if let Some(problem) = problem {
            return Err(ChildError::BadDirectory {
                label: label.to_string(),
                dir: dir.to_path_buf(),
                problem,
            });
        }
    }
    // Relative paths are resolved by the child after it changed directory.
    let base = dir.unwrap_or(Path::new(""));
    let program = cmd.get_program();
    let not_found = |searched: String| ChildError::ProgramNotFound {
        label: label.to_string(),
        program: program.to_string_lossy().into_owned(),
        searched,
    };
    if program.is_empty() {
        return Err(not_found("nothing: the program name is empty".to_string()));
    }
    if program.as_bytes().contains(&b'/') {
        let path = base.join(program);
        return match check_candidate(&path) {
            Candidate::Runnable => Ok(path),
            Candidate::NotRunnable(reason) => Err(ChildError::NotExecutable {
                label: label.to_string(),
                path,
                reason,
            }),
            Candidate::Missing => Err(not_found(format!("{}", path.display()))),
        };
    }
    let path_var = child_path(cmd);
    let mut not_runnable = None;
    for entry in path_var.as_bytes().split(|&b| b == b':') {
        let entry = if entry.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(entry))
        };
        let candidate = base.join(entry).join(program);
        match check_candidate(&candidate) {
            Candidate::Runnable => return Ok(candidate),
            Candidate::NotRunnable(reason) => {
                not_runnable.get_or_insert((candidate, reason));
            }
            Candidate::Missing => {}
        }
    }
    match not_runnable {
        Some((path, reason)) => Err(ChildError::NotExecutable {
            label: label.to_string(),
            path,
            reason,
        }),
        None => Err(not_found(format!(
            "each directory of PATH={}",
            path_var.to_string_lossy()
        ))),
    }
}

/// Turns a spawn failure (after [`precheck`] passed) into an error that says
/// what the errno most likely means here.
pub(super) fn spawn_error(label: &str, program: &Path, source: io::Error) -> ChildError {
    let hint = match Errno::from_io_error(&source) {
        Some(Errno::NOENT) => format!(
            "; {} exists, so its interpreter (the #! line) or its dynamic loader is missing, or \
             the working directory was removed: check `head -1 {0}` and `ldd {0}`",
            program.display()
        ),
        Some(Errno::ACCESS) => format!(
            "; expected {} to be executable and every directory above it searchable: check \
             permissions and noexec mounts",
            program.display()
        ),
        Some(Errno::NOEXEC) => format!(
            "; {} is not in a format the kernel can run: a script needs a #! line",
            program.display()
        ),
        Some(Errno::MFILE) => format!(
            "; expected a free file descriptor in this process, but it has reached its limit of \
             open files (RLIMIT_NOFILE{}): raise it (`ulimit -n` in the shell that starts it, \
             LimitNOFILE= in a systemd unit) or find what holds so many descriptors \
             (ls /proc/{}/fd)",
            nofile_limit(),
            std::process::id()
        ),
        Some(Errno::NFILE) => "; the whole system is out of file descriptors: raise \
             fs.file-max (sysctl) or stop what holds them"
            .to_string(),
        Some(Errno::AGAIN) => "; expected to be allowed one more process, but a process limit \
             was reached: raise `ulimit -u` (LimitNPROC= or TasksMax= under systemd)"
            .to_string(),
        _ => String::new(),
    };
    ChildError::Spawn {
        label: label.to_string(),
        source,
        hint,
    }
}

/// `" = N"`: this process's soft limit of open files, when known.
fn nofile_limit() -> String {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map(|n| format!(" = {n}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let mut c = Command::new("srv");
        c.arg("-p")
            .arg("8080")
            .arg("two words")
            .arg("")
            .current_dir("/tmp");
        assert_eq!(label(&c), r#"(/tmp) srv -p 8080 "two words" """#);
    }

    #[test]
    fn path_search() {
        let mut c = Command::new("sh");
        c.env("PATH", "/nonexistent-dir:/bin:/usr/bin");
        assert!(precheck(&c, "x").is_ok());
        let mut c = Command::new("handover-no-such-program");
        c.env("PATH", "/nonexistent-dir:/usr/bin");
        let e = precheck(&c, "x").unwrap_err().to_string();
        assert!(
            e.contains("handover-no-such-program") && e.contains("PATH=/nonexistent-dir:/usr/bin"),
            "{e}"
        );
        let mut c = Command::new("sh");
        c.env_clear();
        assert!(precheck(&c, "x").is_ok(), "default PATH has /bin");
    }

    #[test]
    fn relative_program_follows_current_dir() {
        let mut c = Command::new("./sh");
        c.current_dir("/bin");
        assert!(precheck(&c, "x").is_ok());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data"), "not a program").unwrap();
        let mut c = Command::new("./data");
        c.current_dir(dir.path());
        let e = precheck(&c, "x").unwrap_err();
        assert!(matches!(e, ChildError::NotExecutable { .. }), "{e}");
        let mut c = Command::new("data");
        c.env("PATH", dir.path());
        let e = precheck(&c, "x").unwrap_err();
        assert!(matches!(e, ChildError::NotExecutable { .. }), "{e}");
    }
}
