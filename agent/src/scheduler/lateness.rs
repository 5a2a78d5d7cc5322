//! A lock-free lateness histogram: every run records how late it started, from
//! many tasks at once, and `stats()` reads percentiles without stopping them.
//!
//! Log-linear buckets over microseconds (exact below 64 µs, then 32 buckets per
//! power of two), so any percentile is reported within 1/32 (~3%) of the true
//! value whatever the range, in a fixed 15 KB of counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two, as a bit count: 2^5 = 32, i.e. <= 3.2% error.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this get one bucket each.
const LINEAR: u64 = 2 * SUB;
/// 64 exact buckets, then 32 for each msb position from 6 to 63.
const BUCKETS: usize = LINEAR as usize + (64 - (SUB_BITS + 1) as usize) * SUB as usize;

/// Percentiles of how late runs started (actual start minus due time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatenessSummary {
    /// Runs measured.
    pub count: u64,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Exact, not bucketed.
    pub max: Duration,
}

pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[index(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn summary(&self) -> LatenessSummary {
        // Snapshot the buckets first and count from the snapshot, so the
        // percentiles are consistent with each other even while runs record.
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LatenessSummary::default();
        }
        let max_us = self.max_us.load(Ordering::Relaxed);
        let sum_us = self.sum_us.load(Ordering::Relaxed);
        let pct = |q: f64| -> Duration {
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // The bucket's upper edge: never reports less than the truth.
                    return Duration::from_micros(upper(i).min(max_us));
                }
            }
            Duration::from_micros(max_us)
        };
        LatenessSummary {
            count,
            mean: Duration::from_micros(sum_us / count),
            p50: pct(0.50),
            p99: pct(0.99),
            max: Duration::from_micros(max_us),
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let sub = (v >> (msb - SUB_BITS)) & (SUB - 1);
    LINEAR as usize + ((msb - SUB_BITS - 1) as usize) * SUB as usize + sub as usize
}

/// The largest value that lands in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let group = (i - LINEAR) / SUB;
    let sub = (i - LINEAR) % SUB;
    let msb = group + u64::from(SUB_BITS) + 1;
    let width = 1u64 << (msb - u64::from(SUB_BITS));
    let low = (1u64 << msb) | (sub << (msb - u64::from(SUB_BITS)));
    low.saturating_add(width - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..200_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            assert!(i >= last, "buckets must be monotonic in the value");
            assert!(
                v <= upper(i),
                "{v} above its bucket's upper edge {}",
                upper(i)
            );
            if i > 0 {
                assert!(v > upper(i - 1), "{v} also fits the previous bucket");
            }
            last = i;
        }
    }

    #[test]
    fn percentiles_are_within_the_bucket_error() {
        let h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max, Duration::from_micros(10_000));
        let near = |got: Duration, want: u64| {
            let got = got.as_micros() as f64;
            assert!(
                (got - want as f64).abs() <= want as f64 / 32.0 + 1.0,
                "got {got} µs, want ~{want}"
            );
        };
        near(s.p50, 5_000);
        near(s.p99, 9_900);
        near(s.mean, 5_000);
    }
}
