//! 1,000 reloads in a row (issue 8; see RELIABILITY.md). Ignored by default
//! (about a minute); `.ci/run` runs it:
//!
//! ```sh
//! cargo test -p handover-cli --test reliability_long -- --ignored
//! ```
//!
//! The program is the built-in Rust server (`handover demo-server`), which
//! starts in milliseconds. handover's open descriptors, child processes and
//! memory must be the same after the last reload as after the first.

mod support;

use std::time::{Duration, Instant};

use handover_verify::{Load, LoadConfig, Mode};
use support::{
    Handover, Setup, children, control_json, fd_count, vm_rss_kib, wait_until, zombie_children,
};

const RELOADS: usize = 1000;

/// Memory handover may gain over 1,000 reloads, in KiB. Not a leak: after
/// the first reload, malloc's arenas and tokio's and tracing's buffers still
/// grow to their working size (a busier moment, a longer log line), and
/// freed memory is not always returned to the kernel. A leak of even 1 KiB
/// per reload would exceed it (1,000 reloads).
const RSS_SLACK_KIB: u64 = 1024;

#[derive(Debug, PartialEq, Eq)]
struct Usage {
    fds: usize,
    children: usize,
    rss_kib: u64,
}

/// Waits until only the current generation is left, then measures.
fn settle(h: &mut Handover) -> Usage {
    let pid = h.pid();
    wait_until("one generation is left", Duration::from_secs(60), || {
        children(pid).len() == 1 && h.generation_pids().len() == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    Usage {
        fds: fd_count(pid),
        children: children(pid).len(),
        rss_kib: vm_rss_kib(pid),
    }
}

#[test]
#[ignore = "1,000 reloads take about a minute; .ci/run runs it"]
fn a_thousand_reloads_in_a_row_leak_nothing() {
    let mut h = Handover::start(Setup {
        program: Some(vec![support::handover_bin().into(), "demo-server".into()]),
        // Each reload goes through the settle window, kept short so that
        // 1,000 of them take about a minute (the default 2s would make it
        // half an hour).
        options: vec!["--settle".into(), "20ms".into()],
        ..Setup::default()
    });
    let mut cfg = LoadConfig::new(h.addr, Mode::KeepAlive);
    cfg.connections = 2;
    let load = Load::start(cfg).unwrap();
    assert!(load.wait_for_ok(20, Duration::from_secs(30)));

    let reload = |h: &Handover, i: usize| {
        let a = control_json(&h.control, "reload", Duration::from_secs(60))
            .unwrap_or_else(|| panic!("reload {i}: no answer\n{}", h.log()));
        assert_eq!(a["ok"], true, "reload {i}: {a}");
    };
    reload(&h, 1);
    let first = settle(&mut h);
    eprintln!("after the first reload: {first:?}");

    let started = Instant::now();
    for i in 2..=RELOADS {
        reload(&h, i);
        if i % 100 == 0 {
            eprintln!(
                "{i} reloads, {:?}; fds {}, rss {} KiB",
                started.elapsed(),
                fd_count(h.pid()),
                vm_rss_kib(h.pid())
            );
        }
    }
    let last = settle(&mut h);
    eprintln!(
        "after {RELOADS} reloads ({:?}): {last:?}",
        started.elapsed()
    );

    let status = h.wait_status(Duration::from_secs(10));
    // The first start is not a reload (it is counted in `starts`).
    assert_eq!(status["reloads"], RELOADS as u64, "{status}");
    assert_eq!(status["starts"], RELOADS as u64 + 1, "{status}");
    assert_eq!(status["failed_reloads"], 0, "{status}");
    assert!(zombie_children(h.pid()).is_empty());
    assert_eq!(last.fds, first.fds, "descriptors leaked");
    assert_eq!(last.children, first.children, "child processes left over");
    assert!(
        last.rss_kib <= first.rss_kib + RSS_SLACK_KIB,
        "memory grew from {} KiB to {} KiB over {RELOADS} reloads",
        first.rss_kib,
        last.rss_kib
    );
    // Every old generation drained and exited 0 on SIGTERM. "was killed by
    // SIGTERM" would mean it got the stop signal before installing its
    // handler (it did, under load, before the demo server installed the
    // handler ahead of READY=1), losing its keep-alive connections.
    let log = h.log();
    let killed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("old generation is gone") && !l.contains("exited with code 0"))
        .collect();
    assert!(
        killed.is_empty(),
        "generations that did not drain: {killed:#?}"
    );
    let report = load.stop();
    assert_eq!(
        report.failures_total(),
        0,
        "{}\n{}",
        report.render_table(),
        h.log()
    );
    assert!(
        report.distinct_pids() > RELOADS / 2,
        "{}",
        report.render_table()
    );
}
