//! The crate's layers hold: each module of `src/` uses only the modules
//! below it in [`ORDER`] (the order of the table in `lib.rs`), and `unsafe`
//! appears only in `sys`.
//!
//! Reads the sources, so it needs no build of anything else: a new
//! `use crate::upgrade` in `socket.rs` fails here with the file and line.

use std::path::{Path, PathBuf};

/// The modules, lowest first. A module may use the ones before it.
const ORDER: &[&str] = &[
    "sys",
    "sync",
    "pidfile",
    "socket",
    "address",
    "process",
    "activation",
    "notify",
    "pass",
    "drain",
    "child",
    "reexec",
    "upgrade",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line: without a `//` comment (doc comments and links
/// name other modules freely). Good enough for this crate's sources, which
/// have no `//` inside string literals on lines that use `crate::`.
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The top-level modules a line of code names with `crate::` (including
/// `use crate::{a, b::c}`).
fn crate_refs(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code(line);
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

/// The violations in the file of module `module` with these `lines`:
/// `(line number, what is wrong)`.
fn check(module: &str, text: &str) -> Vec<(usize, String)> {
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mine = rank(module).unwrap_or_else(|| {
        panic!("module `{module}` of src/ is not in tests/layers.rs's ORDER: add it")
    });
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for target in crate_refs(line) {
            match rank(&target) {
                Some(r) if r <= mine => {}
                Some(_) => bad.push((
                    n + 1,
                    format!(
                        "`{module}` uses `crate::{target}`, a layer above it; move what it \
                         needs down (or the code up)"
                    ),
                )),
                // Items of lib.rs itself, e.g. a crate-level macro.
                None => {}
            }
        }
        let c = code(line);
        let is_unsafe = ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
            .iter()
            .any(|k| c.contains(k));
        if is_unsafe && module != "sys" {
            bad.push((
                n + 1,
                format!("`unsafe` in `{module}`: all unsafe code lives in `sys`"),
            ));
        }
    }
    bad
}

#[test]
fn each_module_uses_only_the_layers_below_it() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut failures = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (line, why) in check(&module, &text) {
            failures.push(format!("src/{}:{line}: {why}", rel.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "the layers do not hold:\n{}",
        failures.join("\n")
    );
    // Every module of lib.rs is placed, and checked.
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("pub ");
            l.strip_prefix("mod ")?.strip_suffix(';')
        })
        .collect();
    let mut sorted_order: Vec<&str> = ORDER.to_vec();
    sorted_order.sort();
    let mut sorted_declared = declared.clone();
    sorted_declared.sort();
    assert_eq!(
        sorted_declared, sorted_order,
        "lib.rs declares other modules than tests/layers.rs orders"
    );
}

#[test]
fn the_lib_rs_table_lists_the_layers_in_order() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let table: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! | "))
        .flat_map(|cell| {
            let first = cell.split(" | ").next().unwrap_or("");
            ORDER
                .iter()
                .filter(|m| {
                    first.contains(&format!("[`{m}`]")) || first.contains(&format!("`{m}`"))
                })
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let expected: Vec<String> = ORDER.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        table, expected,
        "the module table in lib.rs must list the layers lowest first, as tests/layers.rs's ORDER"
    );
}

#[test]
fn only_sys_may_allow_unsafe_code() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unsafe_code)]"));
    let lines: Vec<&str> = lib.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("allow(unsafe_code)") {
            assert_eq!(
                lines.get(i + 1).map(|n| n.trim()),
                Some("mod sys;"),
                "only `mod sys` may allow unsafe code (lib.rs line {})",
                i + 1
            );
        }
    }
}

#[test]
fn the_checker_catches_an_upward_use_and_unsafe() {
    let bad = check(
        "socket",
        "use crate::sys::x;\nuse crate::{address, upgrade::Upgrader};\n// crate::child in a comment\nlet x = unsafe { f() };\n",
    );
    let lines: Vec<usize> = bad.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [2, 2, 4], "{bad:?}");
    assert!(check("sys", "unsafe { f() }").is_empty());
}
