//! The answer to `handover status`.

use std::collections::HashMap;

use serde_json::json;

use super::config::Config;
use super::machine::{GenState, Machine, Mono};
use super::sockets::Socket;

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The status answer: handover, its sockets, its generations (with their
/// open connections, from `connections`, where known) and counters.
pub(super) fn answer(
    m: &Machine,
    now: Mono,
    config: &Config,
    sockets: &[Socket],
    started_unix_ms: u128,
    connections: &HashMap<u64, usize>,
) -> serde_json::Value {
    let in_place = m.in_place.as_ref().map(|ip| ip.id);
    let gens: Vec<_> = m
        .gens
        .iter()
        .filter(|g| g.pid.is_some())
        .map(|g| {
            let (reason, draining_for, kill_in) = match &g.state {
                GenState::Draining(e) => (
                    Some(e.reason.name()),
                    e.since.map(|s| ms(now.since(s))),
                    e.kill_at.map(|k| ms(k.since(now))),
                ),
                _ => (None, None, None),
            };
            let state = if in_place == Some(g.id) {
                "reloading"
            } else {
                g.state.name()
            };
            json!({
                "generation": g.id, "pid": g.pid,
                "state": state,
                "current": matches!(g.state, GenState::Current { .. }),
                "reason": reason,
                "started_unix_ms": g.started_unix_ms,
                "uptime_ms": ms(now.since(g.started)),
                "ready_after_ms": g.ready_after.map(ms),
                "draining_for_ms": draining_for,
                "kill_in_ms": kill_in,
                "connections": connections.get(&g.id),
                "status": g.status,
            })
        })
        .collect();
    let sockets: Vec<_> = sockets
        .iter()
        .map(|s| json!({"name": s.name, "address": s.address, "inherited": s.inherited}))
        .collect();
    let st = &m.stats;
    // Restarts in a row that have not yet led to a generation that stayed
    // up: the program is crash-looping.
    let crash_loop = (m.restarts.attempt > 0).then(|| {
        json!({
            "restarts_in_a_row": m.restarts.attempt,
            "next_restart_in_ms": m.restarts.due.map(|d| ms(d.since(now))),
            "last_crash": st.last_crash,
        })
    });
    json!({
        "ok": true,
        "pid": std::process::id(),
        "program": config.program.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
        "started_unix_ms": started_unix_ms,
        "sockets": sockets,
        "generations": gens,
        "starts": st.starts,
        "reloads": st.reloads,
        "failed_reloads": st.failed_reloads,
        "restarts": st.restarts,
        "last_reload": st.last_reload,
        "last_crash": st.last_crash,
        "crash_loop": crash_loop,
        "queued_reloads": m.queued.as_ref().map_or(0, |q| q.len().max(1)),
        "draining": m.draining_replaced(),
        "max_draining": m.settings.max_draining,
        "settle_ms": ms(m.settings.settle),
    })
}
