//! Every `cargo run ... --example` and `cargo build ... --example` line in
//! README.md and in the examples' own headers works as written from the
//! repository root: each is built (a `run` line becomes the same `build`
//! line, without the program's arguments after `--`).
//!
//! The builds use a target directory of their own (`target/doc-commands`),
//! because the `cargo test` that runs this test holds the lock of the
//! normal one.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The documented `cargo` commands that name an example, from `text`:
/// continuation lines (`\` at the end) are joined, doc-comment markers,
/// inline-code backticks and trailing `# comments` are removed.
fn example_commands(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        let line = line
            .strip_prefix("//!")
            .or_else(|| line.strip_prefix("///"))
            .unwrap_or(line)
            .trim();
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        lines.push(std::mem::take(&mut pending));
    }
    let mut out = Vec::new();
    for line in lines {
        for start in ["cargo run ", "cargo build "] {
            let Some(at) = line.find(start) else { continue };
            let mut cmd = &line[at..];
            if let Some(end) = cmd.find('`') {
                cmd = &cmd[..end];
            }
            if let Some(end) = cmd.find(" #") {
                cmd = &cmd[..end];
            }
            let cmd = cmd.split_whitespace().collect::<Vec<_>>().join(" ");
            if cmd.contains("--example") {
                out.push(cmd);
            }
        }
    }
    out
}

/// `cargo run A --example X -- args` becomes `["build", A.., "--example", X]`.
fn as_build(cmd: &str) -> Vec<String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    assert_eq!(words[0], "cargo");
    let mut args: Vec<String> = Vec::new();
    for w in &words[1..] {
        if *w == "--" {
            break;
        }
        args.push(if *w == "run" {
            "build".into()
        } else {
            w.to_string()
        });
    }
    args
}

#[test]
fn extraction() {
    let text = "```sh\ncargo run -p handover --example a -- --x 1   # note\n```\n\
                //! cargo run -p handover --example b -- \\\n//!     --y\n\
                Run `cargo build -p handover --example c` then\n\
                cargo run --release -- demo\n";
    assert_eq!(
        example_commands(text),
        [
            "cargo run -p handover --example a -- --x 1",
            "cargo run -p handover --example b -- --y",
            "cargo build -p handover --example c",
        ]
    );
    assert_eq!(
        as_build("cargo run -p handover --example a -- --x 1"),
        ["build", "-p", "handover", "--example", "a"]
    );
}

#[test]
fn documented_example_commands_build_as_written() {
    let root = root();
    let mut sources = vec![root.join("README.md")];
    let examples = root.join("crates/handover/examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
            sources.push(path);
        }
    }
    let mut commands: Vec<(PathBuf, String)> = Vec::new();
    for src in &sources {
        let text = std::fs::read_to_string(src).unwrap();
        let found = example_commands(&text);
        // Every example says in its header how to run it.
        if let Some(name) = names.iter().find(|n| src.ends_with(format!("{n}.rs"))) {
            assert!(
                found
                    .iter()
                    .any(|c| c.contains(&format!("--example {name}"))),
                "{} has no `cargo run ... --example {name}` line in its header",
                src.display()
            );
        }
        for c in found {
            if !commands.iter().any(|(_, seen)| *seen == c) {
                commands.push((src.clone(), c));
            }
        }
    }
    let target = root.join("target/doc-commands");
    let mut failures = Vec::new();
    for (src, cmd) in &commands {
        let args = as_build(cmd);
        eprintln!("building, from {}: {cmd}", src.display());
        let out = Command::new(env!("CARGO"))
            .args(&args)
            .arg("--quiet")
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{cmd}\n  (from {}) failed:\n{}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
