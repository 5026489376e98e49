//! Pid files: written atomically, removed only while they name this
//! process. Shared by [`crate::upgrade`] and `handover run`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `pid` and a newline to `path` atomically: a temporary file next to
/// it (`PATH.tmp.PID`), flushed to disk, then renamed over it, so a reader
/// sees the old pid or the new one, never a partial file. The temporary
/// file is removed on error.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{pid}"));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(format!("{pid}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether the pid file at `path` names `pid`.
pub(crate) fn names(path: &Path, pid: u32) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.trim() == pid.to_string())
}

/// Removes the pid file at `path` if it names `pid` (a successor may have
/// written its own meanwhile). Returns whether it was removed.
pub(crate) fn remove_if_names(path: &Path, pid: u32) -> bool {
    names(path, pid) && std::fs::remove_file(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_and_removed_only_when_ours() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.pid");
        write(&p, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1234\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(names(&p, 1234) && !names(&p, 1));
        assert!(!remove_if_names(&p, 1));
        assert!(p.exists());
        assert!(remove_if_names(&p, 1234));
        assert!(!p.exists());
        let e = write(&dir.path().join("no/dir/app.pid"), 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
