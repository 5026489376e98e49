//! The pid file, written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::UpgradeError;

/// Writes `pid` to `path` atomically (a temporary file, then rename).
pub(crate) fn write_pid_file(path: &Path, pid: u32) -> Result<(), UpgradeError> {
    let err = |source| UpgradeError::PidFile {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{pid}"));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    let written = f
        .write_all(format!("{pid}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_atomic_and_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.pid");
        write_pid_file(&p, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1234\n");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);
        let e = write_pid_file(&dir.path().join("no/dir/app.pid"), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("could not write the pid file") && e.contains("writable"),
            "{e}"
        );
    }
}
