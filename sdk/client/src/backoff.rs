//! The reconnect schedule, without clocks or sleeping: it only computes delays.

use std::time::Duration;

use crate::ReconnectPolicy;

/// Delays between reconnect attempts for one [`ReconnectPolicy`]; see its docs for the formula.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    /// Failed attempts since the last stable connection.
    attempt: u32,
    rng: Rng,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy, rng: Rng) -> Self {
        Self {
            policy,
            attempt: 0,
            rng,
        }
    }

    /// The next attempt's number (1-based) and how long to wait before it, or `None` when the
    /// policy's attempts are used up.
    pub(crate) fn next_delay(&mut self) -> Option<(u32, Duration)> {
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempt >= max)
        {
            return None;
        }
        self.attempt += 1;
        let ceiling = self.ceiling(self.attempt);
        // Equal jitter: half fixed (so the schedule still grows), half random (so a node
        // restart does not see every client come back in the same instant).
        let half = ceiling / 2;
        let jitter_nanos = self
            .rng
            .below(u64::try_from(half.as_nanos()).unwrap_or(u64::MAX));
        Some((self.attempt, half + Duration::from_nanos(jitter_nanos)))
    }

    /// A connection stayed up: the next loss starts the schedule over.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Upper bound of the delay before attempt `n` (1-based).
    fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.policy
            .initial_backoff
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.policy.max_backoff)
    }
}

/// A small non-cryptographic generator (SplitMix64) for jitter and message ids. Seeded from
/// the OS-randomised [`std::collections::hash_map::RandomState`] in production and from a
/// constant in tests, so schedules are reproducible there.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    #[cfg(test)]
    pub(crate) fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator whose seed differs per process and per call.
    pub(crate) fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        h.write_u32(std::process::id());
        Self(h.finish())
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `[0, bound]` (inclusive); modulo bias is irrelevant for jitter.
    fn below(&mut self, bound: u64) -> u64 {
        match bound.checked_add(1) {
            Some(m) => self.next_u64() % m,
            None => self.next_u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial_ms: u64, max_ms: u64, max_attempts: Option<u32>) -> ReconnectPolicy {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
            max_attempts,
        }
    }

    /// Runs `n` attempts and returns each delay's `(attempt, ceiling_ms)` after checking the
    /// delay lies in `[ceiling/2, ceiling]`.
    fn check(p: ReconnectPolicy, n: usize, expect: &[(u32, u64)]) {
        let mut b = Backoff::new(p, Rng::seeded(7));
        let mut got = Vec::new();
        for _ in 0..n {
            let Some((attempt, delay)) = b.next_delay() else {
                break;
            };
            let ceiling = b.ceiling(attempt);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{delay:?} vs {ceiling:?}"
            );
            got.push((attempt, ceiling.as_millis() as u64));
        }
        assert_eq!(got, expect);
    }

    #[test]
    fn doubles_up_to_the_cap() {
        check(
            policy(250, 3_000, None),
            7,
            &[
                (1, 250),
                (2, 500),
                (3, 1_000),
                (4, 2_000),
                (5, 3_000),
                (6, 3_000),
                (7, 3_000),
            ],
        );
    }

    #[test]
    fn stops_after_max_attempts() {
        check(
            policy(100, 1_000, Some(3)),
            10,
            &[(1, 100), (2, 200), (3, 400)],
        );
        check(policy(100, 1_000, Some(0)), 10, &[]);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(policy(100, 1_000, Some(2)), Rng::seeded(1));
        assert_eq!(b.next_delay().map(|d| d.0), Some(1));
        assert_eq!(b.next_delay().map(|d| d.0), Some(2));
        assert_eq!(b.next_delay(), None);
        b.reset();
        assert_eq!(b.next_delay().map(|d| d.0), Some(1));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(policy(1_000, 60_000, None), Rng::seeded(3));
        for _ in 0..200 {
            let (_, d) = b.next_delay().unwrap();
            assert!(d <= Duration::from_secs(60));
        }
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_clients() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|seed| {
                let mut b = Backoff::new(policy(1_000, 1_000, None), Rng::seeded(seed));
                b.next_delay().unwrap().1
            })
            .collect();
        assert!(delays.len() > 15, "jitter barely varies: {delays:?}");
    }
}
