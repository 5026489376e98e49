//! Looking at a `Command` before it is spawned (its label for logs), and
//! turning a [`SpawnError`] into a [`ChildError`].

use std::borrow::Cow;
use std::ffi::OsStr;

use super::ChildError;
use crate::process::{Command, SpawnError};

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

/// The [`ChildError`] for a failed spawn: the common mistakes keep variants
/// of their own.
pub(super) fn spawn_error(label: &str, e: SpawnError) -> ChildError {
    let label = label.to_string();
    match e {
        SpawnError::NotFound { program, searched } => ChildError::ProgramNotFound {
            label,
            program: program.to_string_lossy().into_owned(),
            searched,
        },
        SpawnError::NotExecutable { path, reason, .. } => ChildError::NotExecutable {
            label,
            path,
            reason,
        },
        SpawnError::WorkingDirectory { dir, problem, .. } => ChildError::BadDirectory {
            label,
            dir,
            problem,
        },
        source => ChildError::Spawn { label, source },
    }
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
}
