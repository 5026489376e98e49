//! The answer to `handover status`.

use serde_json::json;

use super::config::Config;
use super::machine::{GenState, Machine, Mono};
use super::sockets::Socket;

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The status answer: handover, its sockets, its generations and counters.
pub(super) fn answer(
    m: &Machine,
    now: Mono,
    config: &Config,
    sockets: &[Socket],
    started_unix_ms: u128,
) -> serde_json::Value {
    let gens: Vec<_> = m
        .gens
        .iter()
        .filter(|g| g.pid.is_some())
        .map(|g| {
            let reason = match &g.state {
                GenState::Draining(e) => Some(e.reason.name()),
                _ => None,
            };
            json!({
                "generation": g.id, "pid": g.pid,
                "state": g.state.name(),
                "current": matches!(g.state, GenState::Current { .. }),
                "reason": reason,
                "started_unix_ms": g.started_unix_ms,
                "uptime_ms": ms(now.since(g.started)),
                "ready_after_ms": g.ready_after.map(ms),
                "status": g.status,
            })
        })
        .collect();
    let sockets: Vec<_> = sockets
        .iter()
        .map(|s| json!({"name": s.name, "address": s.address, "inherited": s.inherited}))
        .collect();
    let st = &m.stats;
    json!({
        "ok": true,
        "pid": std::process::id(),
        "program": config.program.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>(),
        "started_unix_ms": started_unix_ms,
        "sockets": sockets,
        "generations": gens,
        "reloads": st.reloads,
        "failed_reloads": st.failed_reloads,
        "restarts": st.restarts,
        "last_reload": st.last_reload,
    })
}
