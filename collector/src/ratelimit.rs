//! A fixed-window attempt counter per key: enrollment attempts per source
//! address, new agent streams per agent identity. Memory is bounded: past
//! `MAX_TRACKED` keys, the keys whose window ended are forgotten first.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Keys remembered before stale ones are dropped.
const MAX_TRACKED: usize = 10_000;

/// At most `limit` attempts per key per `window`.
pub(crate) struct RateLimiter<K> {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt for `key`; false once it is over the limit.
    pub(crate) fn allow(&self, key: &K, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_TRACKED && !seen.contains_key(key) {
            seen.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = seen.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn the_limit_is_per_key_and_resets_after_the_window() {
        let l = RateLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow(&a, t0)));
        assert!(!l.allow(&a, t0 + Duration::from_secs(59)));
        assert!(l.allow(&b, t0), "another key has its own budget");
        assert!(l.allow(&a, t0 + Duration::from_secs(60)), "a new window");
    }

    #[test]
    fn memory_stays_bounded_and_live_windows_are_kept() {
        let l = RateLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(l.allow(&u32::MAX, t0 + Duration::from_secs(30)));
        for k in 0..MAX_TRACKED as u32 {
            l.allow(&k, t0);
        }
        // Past the bound, the keys whose window ended go; the one still in
        // its window keeps its count.
        l.allow(&(MAX_TRACKED as u32), t0 + Duration::from_secs(61));
        assert!(l.seen.lock().unwrap().len() <= 2);
        assert!(!l.allow(&u32::MAX, t0 + Duration::from_secs(61)));
    }
}
