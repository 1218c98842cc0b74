//! A circuit breaker for a bound policy version (one per version in `serving.rs`: a tenant's
//! active version and its canary each have their own). A plugin that keeps failing (trap,
//! fuel, deadline, invalid output) costs the node up to its deadline per call on a runtime
//! thread. After [`Breaker::MAX_FAILURES`] consecutive failures the breaker opens for
//! [`Breaker::OPEN_MS`]: the version's events get the built-in defaults without calling it.
//! Then one call tries the plugin again; a failure reopens at once, a success closes it.
//! Pure: the caller passes `now_ms`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    consecutive_failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    /// Consecutive failures before the breaker opens.
    pub(crate) const MAX_FAILURES: u32 = 3;
    /// How long the breaker stays open, in milliseconds.
    pub(crate) const OPEN_MS: u64 = 1_000;

    /// Whether calls should skip the plugin now.
    pub(crate) fn is_open(&self, now_ms: u64) -> bool {
        now_ms < self.open_until_ms.load(Ordering::Relaxed)
    }

    /// Records a call's outcome; returns true if this failure opened the breaker.
    pub(crate) fn record(&self, failed: bool, now_ms: u64) -> bool {
        if !failed {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= Self::MAX_FAILURES {
            self.open_until_ms
                .store(now_ms + Self::OPEN_MS, Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_retries_after_the_open_period() {
        let b = Breaker::default();
        let t = 10_000;
        assert!(!b.is_open(t));
        assert!(!b.record(true, t));
        assert!(!b.record(true, t + 10));
        assert!(b.record(true, t + 20), "third consecutive failure opens");
        assert!(b.is_open(t + 21));
        assert!(
            !b.is_open(t + 20 + Breaker::OPEN_MS),
            "half-open after the period"
        );
        // The trial call fails: open again at once.
        assert!(b.record(true, t + 20 + Breaker::OPEN_MS));
        assert!(b.is_open(t + 21 + Breaker::OPEN_MS));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::default();
        for i in 0..10 {
            assert!(!b.record(true, i));
            assert!(!b.record(true, i));
            assert!(!b.record(false, i));
        }
        assert!(!b.is_open(10));
    }
}
