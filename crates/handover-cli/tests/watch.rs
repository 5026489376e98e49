//! End-to-end tests of `handover run --watch`: each way a file really
//! changes causes one reload of a real server, a burst causes one, and
//! reading the file causes none.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{Handover, Setup};

/// How many reloads handover has done (the first start is not one).
fn reloads(h: &mut Handover) -> u64 {
    h.wait_status(Duration::from_secs(10))["reloads"]
        .as_u64()
        .unwrap()
}

/// Waits until handover has done `n` reloads, then a while longer to check
/// that no more come (the debounce is 300 ms).
fn expect_reloads(h: &mut Handover, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reloads(h) < n {
        assert!(
            Instant::now() < deadline,
            "expected {n} reloads:\n{}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reloads(h), n, "more reloads than expected:\n{}", h.log());
    let s = h.wait_status(Duration::from_secs(10));
    assert_eq!(s["failed_reloads"], 0, "{s}");
}

/// Starts handover on the Python test server, watching `watch`; `None`
/// (after printing why) when python3 is missing.
fn start(test: &str, watch: &[&Path]) -> Option<Handover> {
    if !support::runtime::require_program(test, "python3", "the test server is Python") {
        return None;
    }
    let mut options = vec!["--watch-debounce".to_string(), "300ms".to_string()];
    for w in watch {
        options.push("--watch".into());
        options.push(w.display().to_string());
    }
    let mut h = Handover::start(Setup {
        options,
        ..Setup::default()
    });
    assert_eq!(reloads(&mut h), 0);
    Some(h)
}

fn config_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.conf");
    std::fs::write(&file, "greeting=hello\n").unwrap();
    (dir, file)
}

#[test]
fn an_in_place_write_reloads_once() {
    let (_dir, file) = config_dir();
    let Some(mut h) = start("an_in_place_write_reloads_once", &[&file]) else {
        return;
    };
    let before = h.current_pid();
    // The watcher's descriptors stay in handover.
    let has_inotify = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .any(|t| t.to_string_lossy().contains("inotify"))
    };
    assert!(has_inotify(h.pid()), "handover watches with inotify");
    for fd in std::fs::read_dir(format!("/proc/{before}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert!(
            !target.to_string_lossy().contains("inotify"),
            "a generation inherited the watcher's {}",
            target.display()
        );
    }
    std::fs::write(&file, "greeting=bonjour\n").unwrap();
    expect_reloads(&mut h, 1);
    assert_ne!(h.current_pid(), before);
    h.wait_log("watched path changed: reloading", Duration::from_secs(5));
}

#[test]
fn a_rename_over_reloads_once_and_the_next_one_too() {
    let (dir, file) = config_dir();
    let Some(mut h) = start("a_rename_over_reloads_once_and_the_next_one_too", &[&file]) else {
        return;
    };
    let tmp = dir.path().join(".app.conf.swp");
    for (i, n) in [(1, 1), (2, 2)] {
        std::fs::write(&tmp, format!("greeting={i}\n")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        expect_reloads(&mut h, n);
    }
}

/// A ConfigMap volume as the kubelet writes it, and its atomic update.
fn configmap(dir: &Path, version: u32) {
    let ts = dir.join(format!("..2024_06_0{version}_12_00_00.{version}"));
    std::fs::create_dir(&ts).unwrap();
    std::fs::write(ts.join("app.conf"), format!("version={version}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if version == 1 {
        symlink("..data/app.conf", dir.join("app.conf")).unwrap();
    } else {
        std::fs::remove_dir_all(dir.join(format!(
            "..2024_06_0{}_12_00_00.{}",
            version - 1,
            version - 1
        )))
        .unwrap();
    }
}

#[test]
fn a_configmap_update_reloads_once_watching_the_file_or_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("config");
    std::fs::create_dir(&volume).unwrap();
    configmap(&volume, 1);
    // Both at once: one update is still one reload.
    let Some(mut h) = start(
        "a_configmap_update_reloads_once_watching_the_file_or_the_directory",
        &[&volume.join("app.conf"), &volume],
    ) else {
        return;
    };
    configmap(&volume, 2);
    expect_reloads(&mut h, 1);
    configmap(&volume, 3);
    expect_reloads(&mut h, 2);
}

#[test]
fn a_burst_of_changes_is_one_reload_and_reading_is_none() {
    let (dir, file) = config_dir();
    let Some(mut h) = start(
        "a_burst_of_changes_is_one_reload_and_reading_is_none",
        &[&file, dir.path()],
    ) else {
        return;
    };
    for i in 0..30 {
        std::fs::write(&file, format!("greeting={i}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    expect_reloads(&mut h, 1);
    // The server (or anyone) reading the file is not a change.
    for _ in 0..10 {
        let _ = std::fs::read_to_string(&file).unwrap();
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(reloads(&mut h), 1, "{}", h.log());
}

#[test]
fn watching_a_missing_path_fails_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(support::handover_bin())
        .args(["run", "--bind", "tcp://127.0.0.1:0", "--control"])
        .arg(dir.path().join("ctl.sock"))
        .arg("--watch")
        .arg(dir.path().join("missing.conf"))
        .args(["--", "true"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing.conf") && err.contains("expected an existing file or directory"),
        "{err}"
    );
    let out = std::process::Command::new(support::handover_bin())
        .args([
            "run",
            "--bind",
            "tcp://127.0.0.1:0",
            "--watch-debounce",
            "1s",
        ])
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--watch"),
        "--watch-debounce without --watch must be refused"
    );
}
