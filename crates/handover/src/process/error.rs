//! [`SpawnError`], and turning a failure of the spawn primitive into one
//! that names the program, the step, and what most likely went wrong.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use rustix::io::Errno;

use super::Command;
use crate::sys::spawn::{Failure, Step};

/// Why a program could not be started. The new process, if one was made,
/// is gone (reaped) when this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// No candidate path exists.
    #[error(
        "cannot start {program:?}: it was not found (searched {searched}); expected an executable \
         file: install it, fix PATH, or give the program's full path"
    )]
    NotFound {
        /// The program, as given.
        program: OsString,
        /// Where it was looked for: a path, or `each directory of PATH=...`.
        searched: String,
    },
    /// The file exists but cannot be executed.
    #[error(
        "cannot start {program:?}: {path:?} is not executable ({reason}); expected a file with \
         execute permission on a filesystem not mounted noexec: `chmod +x` it, or run it through \
         its interpreter"
    )]
    NotExecutable {
        /// The program, as given.
        program: OsString,
        /// The file found.
        path: PathBuf,
        /// Why it cannot run.
        reason: String,
        /// The error from `execve`.
        #[source]
        source: io::Error,
    },
    /// A script whose `#!` interpreter does not exist.
    #[error(
        "cannot start {program:?}: {path:?} is a script whose interpreter {interpreter:?} (its #! \
         line) is missing; expected that interpreter to be installed: install it, or fix the #! \
         line"
    )]
    InterpreterMissing {
        /// The program, as given.
        program: OsString,
        /// The script.
        path: PathBuf,
        /// The interpreter its first line names.
        interpreter: PathBuf,
    },
    /// A binary whose dynamic loader (ELF interpreter) does not exist.
    #[error(
        "cannot start {program:?}: {path:?} needs the dynamic loader {loader:?}, which is \
         missing; expected a binary built for this system: rebuild it for this system (or \
         statically), or install the loader (check with `file` and `ldd`)"
    )]
    LoaderMissing {
        /// The program, as given.
        program: OsString,
        /// The binary.
        path: PathBuf,
        /// The loader it names (`PT_INTERP`).
        loader: PathBuf,
    },
    /// The working directory could not be entered.
    #[error(
        "cannot start {program:?}: its working directory {dir:?} {problem}; expected an existing \
         directory the new process may enter: create it, or fix the path given to current_dir"
    )]
    WorkingDirectory {
        /// The program, as given.
        program: OsString,
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The error from `chdir`.
        #[source]
        source: io::Error,
    },
    /// `execve` failed for another reason.
    #[error(
        "cannot start {program:?}: executing {path:?} failed: {source}{}",
        hint(source)
    )]
    Exec {
        /// The program, as given.
        program: OsString,
        /// The path tried last.
        path: PathBuf,
        /// The error from `execve`.
        #[source]
        source: io::Error,
    },
    /// A step in the new process before `execve` failed.
    #[error(
        "cannot start {program:?}: {step} failed in the new process, before it could execute \
         the program: {source}{}",
        hint(source)
    )]
    Setup {
        /// The program, as given.
        program: OsString,
        /// The step (`dup2 onto fd 3`, `setpgid`, ...).
        step: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Preparing the start in this process failed (no process was made).
    #[error("cannot start {program:?}: {what}: {source}{}", hint(source))]
    Prepare {
        /// The program, as given.
        program: OsString,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The new process was killed by a signal before it executed the program.
    #[error(
        "cannot start {program:?}: the new process was killed by signal {signal} before it could \
         execute the program; expected nothing to signal it while it starts: look for what sent it"
    )]
    Killed {
        /// The program, as given.
        program: OsString,
        /// The signal.
        signal: i32,
    },
}

impl SpawnError {
    /// Whether the program (or a file it needs: a script's interpreter, a
    /// binary's loader) was not found.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            SpawnError::NotFound { .. }
                | SpawnError::InterpreterMissing { .. }
                | SpawnError::LoaderMissing { .. }
        )
    }
}

/// What an errno most likely means when starting a process, as advice.
fn hint(source: &io::Error) -> String {
    match Errno::from_io_error(source) {
        Some(Errno::MFILE) => format!(
            "; this process has reached its limit of open files (RLIMIT_NOFILE{}): raise it \
             (`ulimit -n` in the shell that starts it, LimitNOFILE= in a systemd unit) or find \
             what holds so many descriptors (ls /proc/{}/fd)",
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .map(|n| format!(" = {n}"))
                .unwrap_or_default(),
            std::process::id()
        ),
        Some(Errno::NFILE) => "; the whole system is out of file descriptors: raise fs.file-max \
             (sysctl) or stop what holds them"
            .to_string(),
        Some(Errno::AGAIN) => "; a limit on processes was reached: raise `ulimit -u` \
             (LimitNPROC= or TasksMax= under systemd)"
            .to_string(),
        Some(Errno::NOMEM) => "; the system is out of memory".to_string(),
        Some(Errno::TOOBIG) => "; the arguments and environment are too large".to_string(),
        Some(Errno::TXTBSY) => "; the file is open for writing (still being copied?): deploy by \
             writing a new file and renaming it over the old one"
            .to_string(),
        Some(Errno::LOOP) => "; too many symbolic links on the way".to_string(),
        _ => String::new(),
    }
}

/// Turns a failure of the primitive into an error that names the program,
/// the step, and what most likely went wrong.
pub(super) fn explain(
    cmd: &Command,
    candidates: &[PathBuf],
    path_var: &OsStr,
    f: Failure,
) -> SpawnError {
    let program = cmd.program.clone();
    let (step, errno) = match f {
        Failure::Prepare { what, source } => {
            return SpawnError::Prepare {
                program,
                what,
                source,
            };
        }
        Failure::Vanished { wait_status } => {
            return SpawnError::Killed {
                program,
                signal: ExitStatus::from_raw(wait_status).signal().unwrap_or(0),
            };
        }
        Failure::Child { step, errno } => (step, errno),
    };
    let source = io::Error::from_raw_os_error(errno);
    let setup = |step: String, source| SpawnError::Setup {
        program: program.clone(),
        step,
        source,
    };
    match step {
        Step::Signals => setup("resetting signal handlers".into(), source),
        Step::DeathSignal => setup("prctl(PR_SET_PDEATHSIG)".into(), source),
        Step::ParentGone => setup(
            "arming the death signal".into(),
            io::Error::other("this process was exiting while the new one started"),
        ),
        Step::ProcessGroup => setup(
            format!("setpgid(0, {})", cmd.process_group.unwrap_or(0)),
            source,
        ),
        Step::Fd(target) => setup(
            format!("placing a descriptor at fd {target} (dup2)"),
            source,
        ),
        Step::CloseOnExec => setup("marking descriptors close-on-exec".into(), source),
        Step::Chdir => {
            let dir = cmd.cwd.clone().unwrap_or_default();
            let problem = match Errno::from_raw_os_error(errno) {
                Errno::NOENT => "does not exist".to_string(),
                Errno::NOTDIR => "is not a directory".to_string(),
                Errno::ACCESS => "cannot be entered (permission denied)".to_string(),
                _ => format!("cannot be entered ({source})"),
            };
            SpawnError::WorkingDirectory {
                program,
                dir,
                problem,
                source,
            }
        }
        Step::Exec(index) => {
            // Relative paths were resolved by the new process in its
            // working directory.
            let base = cmd.cwd.clone().unwrap_or_default();
            let resolve = |p: &Path| base.join(p);
            let tried = candidates.get(index).cloned().unwrap_or_default();
            match Errno::from_raw_os_error(errno) {
                Errno::NOENT | Errno::NOTDIR | Errno::STALE | Errno::NODEV | Errno::TIMEDOUT => {
                    match candidates
                        .iter()
                        .map(|c| resolve(c))
                        .find(|c| c.symlink_metadata().is_ok())
                    {
                        None => SpawnError::NotFound {
                            program,
                            searched: if cmd.program.as_bytes().contains(&b'/') {
                                resolve(&tried).display().to_string()
                            } else {
                                format!("each directory of PATH={}", path_var.to_string_lossy())
                            },
                        },
                        Some(path) => missing_interpreter(program, path, source),
                    }
                }
                Errno::ACCESS => {
                    let path = resolve(&tried);
                    let reason = match std::fs::metadata(&path) {
                        Ok(m) if m.is_dir() => "it is a directory".to_string(),
                        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                            "it has no execute permission".to_string()
                        }
                        Ok(_) => "permission denied: a directory on the way is not searchable, \
                                  or the filesystem is mounted noexec"
                            .to_string(),
                        Err(_) => "permission denied on a directory on the way".to_string(),
                    };
                    SpawnError::NotExecutable {
                        program,
                        path,
                        reason,
                        source,
                    }
                }
                _ => SpawnError::Exec {
                    program,
                    path: resolve(&tried),
                    source,
                },
            }
        }
    }
}

/// `execve` said "no such file" for a file that exists: its `#!`
/// interpreter or its ELF loader is missing (or a race removed it).
fn missing_interpreter(program: OsString, path: PathBuf, source: io::Error) -> SpawnError {
    let head = std::fs::File::open(&path)
        .and_then(|f| {
            let mut buf = Vec::with_capacity(4096);
            io::Read::read_to_end(&mut io::Read::take(f, 4096), &mut buf)?;
            Ok(buf)
        })
        .unwrap_or_default();
    if let Some(interpreter) = shebang_interpreter(&head) {
        return SpawnError::InterpreterMissing {
            program,
            path,
            interpreter,
        };
    }
    if let Some(loader) = elf_interpreter(&path) {
        return SpawnError::LoaderMissing {
            program,
            path,
            loader,
        };
    }
    SpawnError::Exec {
        program,
        path,
        source,
    }
}

/// The interpreter a `#!` line names, from the first bytes of a file.
fn shebang_interpreter(head: &[u8]) -> Option<PathBuf> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let interp = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or(&[]);
    Some(PathBuf::from(OsStr::from_bytes(interp)))
}

/// The `PT_INTERP` of a 64- or 32-bit little-endian ELF file.
fn elf_interpreter(path: &Path) -> Option<PathBuf> {
    elf_interpreter_of(&mut std::fs::File::open(path).ok()?)
}

/// [`elf_interpreter`] of any seekable bytes (the file is outside input:
/// every offset is checked).
fn elf_interpreter_of(f: &mut (impl io::Read + io::Seek)) -> Option<PathBuf> {
    use std::io::SeekFrom;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"\x7fELF" || h[5] != 1 {
        return None;
    }
    let is64 = h[4] == 2;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at =
        |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64;
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let (phoff, phentsize, phnum) = if is64 {
        (u64_at(&h, 32), u16_at(&h, 54), u16_at(&h, 56))
    } else {
        (u32_at(&h, 28), u16_at(&h, 42), u16_at(&h, 44))
    };
    for i in 0..phnum.min(64) {
        let mut ph = [0u8; 56];
        let len = if is64 { 56 } else { 32 };
        f.seek(SeekFrom::Start(phoff.checked_add(i * phentsize)?))
            .ok()?;
        f.read_exact(&mut ph[..len]).ok()?;
        if u32_at(&ph, 0) != 3 {
            continue; // not PT_INTERP
        }
        let (off, size) = if is64 {
            (u64_at(&ph, 8), u64_at(&ph, 32))
        } else {
            (u32_at(&ph, 4), u32_at(&ph, 16))
        };
        let mut name = vec![0u8; size.min(4096) as usize];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut name).ok()?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        return Some(PathBuf::from(OsStr::from_bytes(&name[..end])));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines() {
        assert_eq!(
            shebang_interpreter(b"#!/usr/bin/env python3\nprint()"),
            Some(PathBuf::from("/usr/bin/env"))
        );
        assert_eq!(
            shebang_interpreter(b"#! \t/bin/sh -e\n"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(shebang_interpreter(b"\x7fELF"), None);
    }

    /// An ELF header (64-bit when `is64`) with the given program header
    /// table, then `rest`.
    fn elf(is64: bool, phoff: u64, phentsize: u16, phnum: u16, rest: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', if is64 { 2 } else { 1 }, 1]);
        if is64 {
            h[32..40].copy_from_slice(&phoff.to_le_bytes());
            h[54..56].copy_from_slice(&phentsize.to_le_bytes());
            h[56..58].copy_from_slice(&phnum.to_le_bytes());
        } else {
            h[28..32].copy_from_slice(&(phoff as u32).to_le_bytes());
            h[42..44].copy_from_slice(&phentsize.to_le_bytes());
            h[44..46].copy_from_slice(&phnum.to_le_bytes());
        }
        h.extend_from_slice(rest);
        h
    }

    proptest::proptest! {
        #[test]
        fn file_heads_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            is64 in proptest::prelude::any::<bool>(),
            phoff in proptest::prelude::any::<u64>(),
            phentsize in proptest::prelude::any::<u16>(),
            phnum in proptest::prelude::any::<u16>(),
        ) {
            let _ = shebang_interpreter(&data);
            let _ = elf_interpreter_of(&mut io::Cursor::new(&data));
            for off in [phoff, phoff % 2048, u64::MAX - phoff % 4096] {
                let bytes = elf(is64, off, phentsize, phnum, &data);
                let _ = elf_interpreter_of(&mut io::Cursor::new(&bytes));
            }
        }
    }

    #[test]
    fn reads_elf_interpreter_of_self() {
        let me = std::env::current_exe().unwrap();
        // Test binaries are dynamically linked on glibc targets.
        if let Some(l) = elf_interpreter(&me) {
            assert!(l.to_string_lossy().contains("ld"), "{l:?}");
        }
    }
}
