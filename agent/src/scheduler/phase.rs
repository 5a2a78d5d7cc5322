//! Where each monitor's runs fall: its phase (offset within its interval) by
//! rank in its interval group, and the due-time grid `origin + offset +
//! k * interval` the timer loop walks. Pure functions of the monitor set and
//! the clock, so they are tested without running anything.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Monitor;

/// A stable 64-bit hash of a monitor id: FNV-1a with a murmur3 finalizer.
/// Fixed constants, so it is the same in every process and every release
/// (std's `DefaultHasher` is randomly keyed and may change between releases).
/// The finalizer scatters ids that differ only in their last byte (`db-1`, `db-2`).
pub fn stable_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Each monitor's offset within its interval.
///
/// Monitors are grouped by interval; within a group of `n`, they are ordered by
/// [`stable_hash`] of the id (ties by id) and the one of rank `r` gets
/// `r * interval / n`, rounded down to a whole millisecond.
///
/// Why rank and not `hash % interval`: hashing alone is only even on average.
/// With 1,000 monitors in ten 1 s buckets, each bucket holds 100 ± 9.5
/// (binomial), so some bucket is 15% over the mean about two times in three:
/// a herd by bad luck. Ranks are exactly even for any set of ids. The hash
/// still decides the order, so monitors of one host (`db-1`, `db-2`, ...) are
/// not run back to back, and the result depends only on the set (not on the
/// order it arrives in), so a restart with the same set gives the same phases.
///
/// The price: when a group gains or loses a member, the others' offsets move,
/// each by at most `interval / n` (adding one to a group of n-1: rank r of n-1
/// becomes r or r+1 of n, and `|r'/n - r/(n-1)| <= 1/n`). Monitors in other
/// interval groups never move. A moved monitor is rescheduled no sooner than
/// half an interval after its last run, so it is never run twice in a row.
pub fn assign_offsets(monitors: &[Monitor]) -> HashMap<&str, Duration> {
    let mut groups: HashMap<Duration, Vec<(u64, &str)>> = HashMap::new();
    for m in monitors {
        groups
            .entry(m.interval)
            .or_default()
            .push((stable_hash(&m.id), m.id.as_str()));
    }
    let mut out = HashMap::with_capacity(monitors.len());
    for (interval, mut members) in groups {
        members.sort_unstable();
        let n = members.len() as u128;
        let interval_ms = interval.as_nanos() / 1_000_000;
        for (rank, (_, id)) in members.into_iter().enumerate() {
            let ms = rank as u128 * interval_ms / n;
            out.insert(
                id,
                Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)),
            );
        }
    }
    out
}

/// The first due time `origin + offset + k * interval` (k >= 0) at or after `t`.
pub(super) fn first_due_at_or_after(
    origin: Instant,
    offset: Duration,
    interval: Duration,
    t: Instant,
) -> Instant {
    let base = origin + offset;
    if t <= base {
        return base;
    }
    let since = (t - base).as_nanos();
    let step = interval.as_nanos();
    let k = since.div_ceil(step);
    base + Duration::from_nanos(u64::try_from(k * step).unwrap_or(u64::MAX))
}
