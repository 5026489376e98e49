//! Tests that need another runtime or third-party program (python3, node,
//! go, ruby, gunicorn, h2load, ...) skip with a printed reason when it is
//! missing, so `cargo test --workspace` passes with only Rust installed.
//! CI installs every runtime and sets `HANDOVER_REQUIRE_RUNTIMES=1`, which
//! turns such a skip into a failure.
//!
//! Shared by both test trees: `crates/handover/tests/common/mod.rs` and
//! `crates/handover-cli/tests/support/mod.rs` include this file with
//! `#[path]`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The variable that turns a skip for a missing runtime into a failure.
pub const REQUIRE_RUNTIMES: &str = "HANDOVER_REQUIRE_RUNTIMES";

/// Whether missing runtimes are failures (CI) rather than skips.
pub fn runtimes_required() -> bool {
    std::env::var_os(REQUIRE_RUNTIMES).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The path of `program` found in `PATH`, if it is an executable file.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Decides whether a test that needs `what` runs. `available` says whether
/// it was found. Returns `true` to run; when it is missing, prints
/// `SKIP <test>: <what> is not installed (<hint>)` and returns `false`, or
/// panics with the same words when [`REQUIRE_RUNTIMES`] is set.
pub fn require(test: &str, what: &str, available: bool, hint: &str) -> bool {
    if available {
        return true;
    }
    let msg = format!("{test}: {what} is not installed ({hint})");
    if runtimes_required() {
        panic!("{msg}; {REQUIRE_RUNTIMES} is set, so a missing runtime is a failure");
    }
    eprintln!("SKIP {msg}");
    println!("SKIP {msg}");
    false
}

/// [`require`] for a program in `PATH`.
pub fn require_program(test: &str, program: &str, hint: &str) -> bool {
    require(test, program, find_program(program).is_some(), hint)
}

/// [`require`] for a command that must run and exit 0 (a Python module
/// import, a Ruby gem, ...): `argv[0]` is looked up in `PATH`.
pub fn require_command(test: &str, what: &str, argv: &[&str], hint: &str) -> bool {
    let ok = find_program(argv[0]).is_some()
        && Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    require(test, what, ok, hint)
}
