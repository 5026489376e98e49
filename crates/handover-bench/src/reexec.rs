//! Figure 8: `handover reexec`, the supervisor upgrading itself in place,
//! from the control request to the answer of the re-executed image, next to
//! a `status` request and a reload of demo-server in the same run (rounds
//! alternate), while a load runs against the generation.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use handover_verify::{FailureKind, Load, LoadConfig, Mode};

use crate::common::*;

#[derive(Args, Debug)]
pub struct ReexecArgs {
    /// Rounds of (status, reload, reexec).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Print JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
struct Samples {
    status_ms: Vec<f64>,
    reload_ms: Vec<f64>,
    reexec_ms: Vec<f64>,
    /// The re-executed image's own figure: request received to answered.
    reexec_inside_ms: Vec<f64>,
    /// Of which the check run of the new binary.
    check_ms: Vec<f64>,
    /// After the reexec answer: the next `status` round trip.
    status_after_ms: Vec<f64>,
}

fn timed(
    f: impl FnOnce() -> Result<serde_json::Value, String>,
) -> Result<(f64, serde_json::Value), String> {
    let t = Instant::now();
    let v = f()?;
    Ok((ms(t.elapsed()), v))
}

pub fn run(bins: &Bins, args: &ReexecArgs) -> Result<serde_json::Value, String> {
    bins.check(&[ServerKind::Demo])?;
    let sup = Supervisor::start(
        bins,
        &["tcp://127.0.0.1:0".to_string()],
        &["--stop-timeout", "30s"],
        ServerKind::Demo.activated_command(bins, Duration::from_secs(2)),
        "reexec",
    )?;
    let pid = sup.proc.pid;
    let mut cfg = LoadConfig::new(sup.addr, Mode::NewConnection);
    cfg.connections = 8;
    let load = Load::start(cfg).map_err(|e| e.to_string())?;
    let mut s = Samples::default();
    let wait_one_generation = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if sup
                .status()
                .is_ok_and(|s| s["generations"].as_array().map_or(0, Vec::len) <= 1)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut reexec_failures = 0u64;
    for round in 1..=args.samples.max(1) {
        eprintln!("reexec: round {round}");
        s.status_ms.push(timed(|| sup.status())?.0);
        s.reload_ms.push(timed(|| sup.reload())?.0);
        wait_one_generation();
        let before = load.snapshot().failures_total();
        let (t, answer) =
            timed(|| control_request(&sup.control, "reexec", Duration::from_secs(60)))?;
        reexec_failures += load.snapshot().failures_total() - before;
        if answer["pid"] != pid {
            return Err(format!("the pid changed across the reexec: {answer}"));
        }
        s.reexec_ms.push(t);
        s.reexec_inside_ms
            .push(answer["took_ms"].as_f64().unwrap_or(f64::NAN));
        s.check_ms
            .push(answer["check_ms"].as_f64().unwrap_or(f64::NAN));
        s.status_after_ms.push(timed(|| sup.status())?.0);
    }
    let report = load.stop();
    if args.json {
        return Ok(serde_json::json!({
            "figure": "reexec",
            "samples": s,
            "requests_ok": report.ok,
            "requests_failed": report.failures_total(),
            "failed_during_reexecs": reexec_failures,
        }));
    }
    let med = |v: &[f64]| median(v);
    let mut t = Table::new(&[
        "control request",
        "samples",
        "round trip, median [min–max]",
        "÷ status",
    ]);
    let rows: [(&str, &Vec<f64>); 4] = [
        ("`status`", &s.status_ms),
        (
            "`reload` (demo-server: a new generation, ready, old one told to stop)",
            &s.reload_ms,
        ),
        (
            "`reexec` (check, exec, answered by the new image)",
            &s.reexec_ms,
        ),
        ("`status` right after a `reexec`", &s.status_after_ms),
    ];
    for (name, v) in rows {
        t.row(vec![
            name.to_string(),
            v.len().to_string(),
            fmt_spread(v),
            fmt_ratio(med(v), med(&s.status_ms)),
        ]);
    }
    Ok(serde_json::Value::String(format!(
        "`handover run` supervising demo-server under load (8 clients, a new connection per \
         request), {n} rounds alternating `status`, `reload`, `reexec` (the same binary \
         re-executed). Inside handover, a reexec took {inside} from the request to the new \
         image's answer, of which {check} ran the new binary in check mode (medians). \
         Requests under load: {ok} ok, {failed} failed ({refused} refused), {during} of them \
         during a reexec.\n\n{table}",
        n = s.reexec_ms.len(),
        inside = fmt_ms(med(&s.reexec_inside_ms)),
        check = fmt_ms(med(&s.check_ms)),
        ok = report.ok,
        failed = report.failures_total(),
        refused = report.failures_of(FailureKind::Refused),
        during = reexec_failures,
        table = t.render()
    )))
}
