//! Runs one subcommand with tiny counts against the built binaries, or
//! skips (with a message) when `handover` has not been built.

use std::path::PathBuf;
use std::process::Command;

/// The directory holding a built `handover` binary, release first.
fn bin_dir() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    ["release", "debug"]
        .into_iter()
        .map(|profile| target.join(profile))
        .find(|dir| dir.join("handover").is_file())
}

#[test]
fn failures_with_tiny_counts() {
    let Some(dir) = bin_dir() else {
        eprintln!(
            "skipped: no built `handover` binary under target/release or target/debug \
             (cargo build --release -p handover-cli)"
        );
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_handover-bench"))
        .arg("--bin-dir")
        .arg(&dir)
        .args([
            "failures",
            "--variants",
            "run-demo,demo-naive",
            "--modes",
            "keep-alive",
            "--reloads",
            "1",
            "--rounds",
            "1",
            "--interval",
            "10ms",
            "--connections",
            "2",
        ])
        .output()
        .expect("running handover-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("| demo-server"), "{stdout}");
    assert!(
        stdout.contains("`handover run`, control socket"),
        "{stdout}"
    );
    assert!(stdout.contains("naive: SIGTERM, wait, start"), "{stdout}");
}

#[test]
fn spawn_cost_with_tiny_counts() {
    let Some(dir) = bin_dir() else {
        eprintln!(
            "skipped: no built `handover` binary under target/release or target/debug \
             (cargo build --release -p handover-cli)"
        );
        return;
    };
    let examples = dir.join("examples");
    if !examples.join("upgrade_http").is_file() {
        eprintln!(
            "skipped: no built upgrade_http example (cargo build --release -p handover --example \
             upgrade_http)"
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_handover-bench"))
        .arg("--bin-dir")
        .arg(&dir)
        .args([
            "spawn",
            "--samples",
            "1",
            "--ballast-mb",
            "0,16",
            "--settle",
            "10ms",
        ])
        .output()
        .expect("running handover-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("vfork-style clone (this build)") && l.contains("| 16 MB")),
        "{stdout}"
    );
    assert!(!stdout.contains("Errors:"), "{stdout}");
}

#[test]
fn keepalive_with_tiny_counts() {
    let Some(dir) = bin_dir() else {
        eprintln!(
            "skipped: no built `handover` binary under target/release or target/debug \
             (cargo build --release -p handover-cli)"
        );
        return;
    };
    if !dir.join("examples").join("upgrade_http").is_file() {
        eprintln!(
            "skipped: no built upgrade_http example (cargo build --release -p handover --example \
             upgrade_http)"
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_handover-bench"))
        .arg("--bin-dir")
        .arg(&dir)
        .args([
            "keepalive",
            "--upgrades",
            "1",
            "--rounds",
            "1",
            "--clients",
            "4",
            "--interval",
            "50ms",
        ])
        .output()
        .expect("running handover-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout.contains("| drain with `Connection: close`"),
        "{stdout}"
    );
    assert!(stdout.contains("| `--handoff`"), "{stdout}");
}
