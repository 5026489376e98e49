//! Many start/kill cycles leave no zombie and no descriptor behind.
//!
//! Alone in its test binary: it counts this process's descriptors and
//! children, which other tests running in parallel would change.

mod common;

use handover::process::Command;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use handover::activation::Activation;
use handover::child::{ChildConfig, Report};

fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    // The directory handle used for the listing itself.
    fds.retain(|f| !f.contains("/proc/") || !f.ends_with("/fd"));
    fds.sort();
    fds
}

/// Children of this process that are zombies: `(pid, comm)`.
fn zombie_children() -> Vec<(u32, String)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for (pid, stat) in common::proc_stats() {
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str()) {
            out.push((pid, stat[open + 1..close].to_string()));
        }
    }
    out
}

fn sleep60() -> Command {
    let mut c = Command::new("sleep");
    c.arg("60");
    c
}

#[test]
fn two_hundred_cycles_leave_no_zombie_and_no_fd() {
    let config = ChildConfig::new()
        .kill_timeout(Duration::from_secs(5))
        .kill_on_drop(true);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut fds = Activation::new();
    fds.fd("http", listener.as_fd()).unwrap();

    // Warm up (lazily initialised state in std or the allocator).
    config.spawn(sleep60()).unwrap().kill();
    let fds_before = open_fds();
    let started = Instant::now();
    for i in 0..200 {
        let child = match i % 4 {
            // Passing a descriptor: its duplicates must all be closed.
            0 => config.spawn_with_fds(sleep60(), &fds).unwrap(),
            // Ending on its own, reaped by the waiting thread.
            1 => {
                let child = config.spawn(Command::new("true")).unwrap();
                let report = child.wait_timeout(Duration::from_secs(10));
                assert!(matches!(report, Some(Report::Exited(_))), "{report:?}");
                child
            }
            // Stopped rather than killed.
            2 => {
                let child = config.spawn(sleep60()).unwrap();
                child.stop_immediately();
                child
            }
            _ => config.spawn(sleep60()).unwrap(),
        };
        let exit = child.kill();
        assert!(child.exited() == Some(exit));
        drop(child);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "200 cycles should take seconds, at cycle {i}"
        );
    }
    assert_eq!(zombie_children(), [], "zombies left");
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
}
