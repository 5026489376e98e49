//! A lock-free, log-bucketed latency histogram (microseconds, ~3% precision).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above `LINEAR` (2^SUB_BITS).
const SUB_BITS: u32 = 5;
const SUBS: usize = 1 << SUB_BITS;
/// log2(LINEAR).
const FIRST_EXP: u32 = 6;
/// Largest power of two tracked separately (2^41 µs is about 25 days).
const LAST_EXP: u32 = 40;
const BUCKETS: usize = LINEAR as usize + (LAST_EXP - FIRST_EXP + 1) as usize * SUBS;

fn bucket_of(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let exp = 63 - micros.leading_zeros();
    if exp > LAST_EXP {
        return BUCKETS - 1;
    }
    let sub = ((micros >> (exp - SUB_BITS)) as usize) & (SUBS - 1);
    LINEAR as usize + (exp - FIRST_EXP) as usize * SUBS + sub
}

/// The largest value that lands in `bucket`.
fn bucket_high(bucket: usize) -> u64 {
    if bucket < LINEAR as usize {
        return bucket as u64;
    }
    let exp = ((bucket - LINEAR as usize) / SUBS) as u32 + FIRST_EXP;
    let sub = ((bucket - LINEAR as usize) % SUBS) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    (1u64 << exp) + sub * width + width - 1
}

/// Concurrent histogram of durations; recording is a few relaxed atomic adds.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        if let Some(bucket) = self.buckets.get(bucket_of(micros)) {
            bucket.fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
        self.max_micros.fetch_max(micros, Relaxed);
    }

    /// Percentiles of everything recorded so far.
    pub(crate) fn summary(&self) -> Latency {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let max = self.max_micros.load(Relaxed);
        let percentile = |q: f64| -> Duration {
            if count == 0 {
                return Duration::ZERO;
            }
            // Rank of the q-th value, 1-based; the float is in 1..=count.
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0u64;
            for (bucket, &n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Duration::from_micros(bucket_high(bucket).min(max));
                }
            }
            Duration::from_micros(max)
        };
        let mean = match self.count.load(Relaxed) {
            0 => Duration::ZERO,
            n => Duration::from_micros(self.sum_micros.load(Relaxed) / n),
        };
        Latency {
            count,
            mean,
            p50: percentile(0.50),
            p90: percentile(0.90),
            p99: percentile(0.99),
            max: Duration::from_micros(max),
        }
    }
}

/// Latency of successful requests, from just before connecting (or writing,
/// on a reused connection) to the last byte of the response.
///
/// Percentiles are accurate to about 3% (log-bucketed histogram); `max` is exact.
/// In JSON every duration is a float number of milliseconds (`p50_ms`, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Latency {
    /// How many requests were measured.
    pub count: u64,
    /// Arithmetic mean.
    #[serde(rename = "mean_ms", serialize_with = "crate::report::ms")]
    pub mean: Duration,
    /// Median.
    #[serde(rename = "p50_ms", serialize_with = "crate::report::ms")]
    pub p50: Duration,
    /// 90th percentile.
    #[serde(rename = "p90_ms", serialize_with = "crate::report::ms")]
    pub p90: Duration,
    /// 99th percentile.
    #[serde(rename = "p99_ms", serialize_with = "crate::report::ms")]
    pub p99: Duration,
    /// Slowest.
    #[serde(rename = "max_ms", serialize_with = "crate::report::ms")]
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contain_their_values() {
        let mut previous_high = None;
        for bucket in 0..BUCKETS {
            let high = bucket_high(bucket);
            if let Some(p) = previous_high {
                assert!(high > p, "bucket {bucket}");
                assert_eq!(bucket_of(p + 1), bucket, "low end of bucket {bucket}");
            }
            assert_eq!(bucket_of(high), bucket.min(BUCKETS - 1));
            previous_high = Some(high);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_close() {
        let h = Histogram::new();
        for micros in 1..=10_000u64 {
            h.record(Duration::from_micros(micros));
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max, Duration::from_micros(10_000));
        let close = |got: Duration, want: u64| {
            let got = got.as_micros() as f64;
            (got - want as f64).abs() / (want as f64) < 0.04
        };
        assert!(close(s.p50, 5_000), "{s:?}");
        assert!(close(s.p99, 9_900), "{s:?}");
        assert!(close(s.mean, 5_000), "{s:?}");
        assert_eq!(Histogram::new().summary(), Latency::default());
    }
}
