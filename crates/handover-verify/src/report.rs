//! What a load run found: counts, failures, latency, pids and reloads.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::Latency;
use crate::load::{Mode, Protocol};

/// Why one request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The connection was refused (`ECONNREFUSED`): nothing was listening.
    Refused,
    /// The connection was reset or aborted (`ECONNRESET`, `EPIPE`, `ECONNABORTED`).
    Reset,
    /// No complete response within the request timeout.
    Timeout,
    /// A complete response whose status was not 2xx.
    BadStatus,
    /// The connection ended after the request was written, before the
    /// response was complete (possibly before its first byte).
    ShortResponse,
    /// Anything else: a malformed response, an unexpected I/O error.
    Other,
}

impl FailureKind {
    /// Every kind, in report order.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Refused,
        FailureKind::Reset,
        FailureKind::Timeout,
        FailureKind::BadStatus,
        FailureKind::ShortResponse,
        FailureKind::Other,
    ];

    /// Short lowercase name, as in JSON: `refused`, `reset`, `timeout`,
    /// `bad_status`, `short_response`, `other`.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Refused => "refused",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::BadStatus => "bad_status",
            FailureKind::ShortResponse => "short_response",
            FailureKind::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            FailureKind::Refused => 0,
            FailureKind::Reset => 1,
            FailureKind::Timeout => 2,
            FailureKind::BadStatus => 3,
            FailureKind::ShortResponse => 4,
            FailureKind::Other => 5,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One failed request, described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FailureSample {
    /// Which kind of failure.
    pub kind: FailureKind,
    /// When it happened, since the load started (`at_ms` in JSON).
    #[serde(rename = "at_ms", serialize_with = "ms")]
    pub at: Duration,
    /// What happened, with the request's stage and connection.
    pub error: String,
}

impl fmt::Display for FailureSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>8.3}s {}: {}",
            self.at.as_secs_f64(),
            self.kind,
            self.error
        )
    }
}

/// One reload triggered by [`verify`](crate::verify()).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReloadRecord {
    /// 1 for the first reload.
    pub index: usize,
    /// When the trigger started, since the load started (`at_ms` in JSON).
    #[serde(rename = "at_ms", serialize_with = "ms")]
    pub at: Duration,
    /// Whether the trigger itself succeeded (command exited 0, signal sent,
    /// custom closure returned `Ok`).
    pub trigger_ok: bool,
    /// Why the trigger failed, when it did.
    pub trigger_error: Option<String>,
    /// How long the trigger took to return (`trigger_took_ms` in JSON).
    #[serde(rename = "trigger_took_ms", serialize_with = "ms")]
    pub trigger_took: Duration,
    /// Time from the trigger to the first successful response from a pid that
    /// had not answered before the trigger (`ready_after_ms` in JSON).
    #[serde(rename = "ready_after_ms", serialize_with = "opt_ms")]
    pub ready_after: Option<Duration>,
    /// That pid.
    pub new_pid: Option<u32>,
    /// True when a new pid answered within the ready timeout and before the
    /// run ended.
    pub pid_changed: bool,
    /// The trigger reported that the server reloaded in place, keeping its
    /// pid ([`Reloaded::InPlace`](crate::Reloaded::InPlace)): the reload
    /// counts without a new pid.
    pub in_place: bool,
    /// Failed requests between this trigger and the next one (or the end).
    pub failures_during: u64,
}

/// Counts of a load run: the result of [`Load::snapshot`](crate::Load::snapshot),
/// [`Load::stop`](crate::Load::stop) and [`verify`](crate::verify()).
///
/// Serializes (serde) with every duration as a float number of milliseconds,
/// in fields named `..._ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// How the load connected.
    pub mode: Mode,
    /// The protocol the clients spoke.
    pub protocol: Protocol,
    /// Concurrent streams per connection (HTTP/2 and gRPC; 1 for HTTP/1.1).
    pub streams: usize,
    /// Concurrent clients.
    pub connections: usize,
    /// Requests that finished, successfully or not: `ok + failures_total()`.
    pub requests: u64,
    /// Requests answered with a complete 2xx response.
    pub ok: u64,
    /// Failed requests by kind; kinds that did not occur are absent.
    pub failures: BTreeMap<FailureKind, u64>,
    /// The first failures, described (at most
    /// [`LoadConfig::failure_samples`](crate::LoadConfig::failure_samples)).
    pub failure_samples: Vec<FailureSample>,
    /// Latency of the successful requests.
    pub latency: Latency,
    /// Successful responses per pid, from bodies holding a `pid=<N>` line.
    pub pids: BTreeMap<u32, u64>,
    /// TCP connections established.
    pub connects: u64,
    /// Keep-alive connections the server ended cleanly, by `Connection: close`
    /// or by closing an idle connection; each was followed by a reconnect and
    /// is not a failure.
    pub server_closes: u64,
    /// Requests the server never read: written onto a kept-alive connection
    /// it had already closed (the write failed with a reset, or the server's
    /// FIN came back followed by a reset, before any response byte). A reset
    /// without a FIN before it stays a failure: a server that read the
    /// request and then aborted the connection looks the same. Clients may retry exactly these (RFC 9112, section 9.3.1), so
    /// they are not failures, and not in `requests`; the client reconnected.
    pub retryable: u64,
    /// Reloads triggered by [`verify`](crate::verify()); empty for a bare [`Load`](crate::Load).
    pub reloads: Vec<ReloadRecord>,
    /// The reload interval the run asked for (`reload_every_ms` in JSON);
    /// `None` for a run without reloads.
    #[serde(rename = "reload_every_ms", serialize_with = "opt_ms")]
    pub reload_every: Option<Duration>,
    /// How long the load ran (`duration_ms` in JSON).
    #[serde(rename = "duration_ms", serialize_with = "ms")]
    pub duration: Duration,
}

impl Report {
    /// Total failed requests, all kinds.
    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Failed requests of one kind.
    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        self.failures.get(&kind).copied().unwrap_or(0)
    }

    /// Distinct pids that answered successfully.
    pub fn distinct_pids(&self) -> usize {
        self.pids.len()
    }

    /// Finished requests per second over the run.
    pub fn requests_per_second(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// Zero downtime proven: at least one request succeeded, none failed,
    /// every reload was triggered successfully and answered by a new pid (or
    /// reported done in place by the trigger), and
    /// a run that asked for reloads had at least one.
    pub fn passed(&self) -> bool {
        self.ok > 0
            && self.failures_total() == 0
            && self
                .reloads
                .iter()
                .all(|r| r.trigger_ok && (r.pid_changed || r.in_place))
            && !self.missing_reloads()
    }

    /// The run asked for reloads and had none: it proves nothing about them.
    fn missing_reloads(&self) -> bool {
        self.reload_every.is_some() && self.reloads.is_empty()
    }

    /// A human-readable multi-line summary: totals, failures by kind, latency,
    /// pids, one row per reload and the failure samples.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; results are ignored below.
        let _ = writeln!(
            out,
            "{} requests in {:.2}s ({:.0}/s), {} connections, {}",
            self.requests,
            self.duration.as_secs_f64(),
            self.requests_per_second(),
            self.connections,
            match self.mode {
                Mode::NewConnection => "new connection per request",
                Mode::KeepAlive => "keep-alive",
            }
        );
        if self.protocol != Protocol::Http1 {
            let _ = writeln!(
                out,
                "  protocol {}, {} concurrent stream(s) per connection; a GOAWAY is not a failure",
                self.protocol.name(),
                self.streams
            );
        }
        let _ = writeln!(out, "  {:<16}{:>10}", "ok", self.ok);
        let _ = writeln!(out, "  {:<16}{:>10}", "failures", self.failures_total());
        for kind in FailureKind::ALL {
            let _ = writeln!(out, "    {:<14}{:>10}", kind.name(), self.failures_of(kind));
        }
        let _ = writeln!(
            out,
            "  {:<16}{:>10}   (never read by the server: written onto a kept-alive \
             connection it had closed; not failures)",
            "retryable", self.retryable
        );
        let _ = writeln!(
            out,
            "  {:<16}{:>10}   ({} server-side closes)",
            "connects", self.connects, self.server_closes
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "latency (ok requests): p50 {}  p90 {}  p99 {}  max {}  mean {}",
            fmt_ms(l.p50),
            fmt_ms(l.p90),
            fmt_ms(l.p99),
            fmt_ms(l.max),
            fmt_ms(l.mean)
        );
        if !self.pids.is_empty() {
            let pids: Vec<String> = self
                .pids
                .iter()
                .map(|(pid, n)| format!("{pid} ({n})"))
                .collect();
            let _ = writeln!(out, "pids answering: {}", pids.join(", "));
        }
        if !self.reloads.is_empty() {
            let _ = writeln!(
                out,
                "reloads:\n  {:>3} {:>9} {:>10} {:>12} {:>9} {:>9}  trigger",
                "#", "at", "took", "ready after", "new pid", "failures"
            );
            for r in &self.reloads {
                let ready = r.ready_after.map_or_else(|| "-".to_owned(), fmt_ms);
                let pid = match (r.pid_changed, r.new_pid) {
                    (true, Some(pid)) => pid.to_string(),
                    _ if r.in_place => "in place".to_owned(),
                    _ => "none".to_owned(),
                };
                let trigger = match &r.trigger_error {
                    None => "ok".to_owned(),
                    Some(e) => format!("FAILED: {e}"),
                };
                let _ = writeln!(
                    out,
                    "  {:>3} {:>8.2}s {:>10} {:>12} {:>9} {:>9}  {}",
                    r.index,
                    r.at.as_secs_f64(),
                    fmt_ms(r.trigger_took),
                    ready,
                    pid,
                    r.failures_during,
                    trigger
                );
            }
        }
        if !self.failure_samples.is_empty() {
            let _ = writeln!(out, "first failures:");
            for sample in &self.failure_samples {
                let _ = writeln!(out, "  {sample}");
            }
        }
        let verdict = if self.passed() {
            "PASS: zero failed requests"
        } else if self.ok == 0 {
            "FAIL: no request succeeded"
        } else if self.failures_total() > 0 {
            "FAIL: some requests failed"
        } else if self.missing_reloads() {
            "FAIL: the run asked for reloads and had none (it ended before the first)"
        } else {
            "FAIL: a reload did not bring up a new pid"
        };
        let _ = writeln!(out, "{verdict}");
        out
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

/// Serializes a duration as float milliseconds.
pub(crate) fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ms(d, s),
        None => s.serialize_none(),
    }
}
