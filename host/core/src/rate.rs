//! Rate limits as token buckets, without IO: the caller passes the time in, so tests drive a
//! fake clock and the edge uses a monotonic one.
//!
//! A [`TokenBucket`] holds up to `burst` tokens and gains `per_sec` of them per second; each
//! request takes one, and a request that finds none is refused with how long until one is
//! there. It is implemented as GCRA (the "virtual scheduling" form of a token bucket): the
//! whole state is one timestamp, the theoretical arrival time of the next request, in
//! nanoseconds, updated with a compare-and-swap. No lock, no allocation, safe to share.

use std::sync::atomic::{AtomicU64, Ordering};

const NANOS_PER_MS: u64 = 1_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A rate limit: `per_sec` requests per second sustained, up to `burst` at once.
/// `per_sec == 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0,
        burst: 0,
    };

    pub fn new(per_sec: u32, burst: u32) -> Rate {
        Rate { per_sec, burst }
    }

    pub fn is_unlimited(self) -> bool {
        self.per_sec == 0
    }

    /// Time between two tokens, in nanoseconds (0 when unlimited). Rates above 10⁹/s are
    /// treated as 10⁹/s.
    fn interval_ns(self) -> u64 {
        match self.per_sec {
            0 => 0,
            r => (NANOS_PER_SEC / u64::from(r)).max(1),
        }
    }

    /// How long an empty bucket takes to become full again, in milliseconds (rounded up;
    /// 0 when unlimited). After that long without requests, the bucket's state is the same
    /// as a new bucket's.
    pub fn refill_ms(self) -> u64 {
        ns_to_ms_ceil(self.interval_ns() * u64::from(self.burst))
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_unlimited() {
            f.write_str("unlimited")
        } else {
            write!(f, "{}/s, burst {}", self.per_sec, self.burst)
        }
    }
}

/// A refusal: the request would be allowed after this many milliseconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RetryAfterMs(pub u32);

fn ns_to_ms_ceil(ns: u64) -> u64 {
    ns.div_ceil(NANOS_PER_MS)
}

/// A token bucket for one [`Rate`]. See the module docs.
#[derive(Debug)]
pub struct TokenBucket {
    /// Nanoseconds per token; 0 = unlimited.
    interval_ns: u64,
    /// `burst` tokens' worth of time: how far ahead of `now` the schedule may run.
    capacity_ns: u64,
    /// Theoretical arrival time of the next request (ns on the caller's clock). The bucket
    /// holds `(now - (tat - capacity)) / interval` tokens, capped at `burst`.
    tat: AtomicU64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> TokenBucket {
        let interval_ns = rate.interval_ns();
        TokenBucket {
            interval_ns,
            capacity_ns: interval_ns * u64::from(rate.burst),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes one token at `now_ms` (milliseconds on a monotonic clock with any origin), or
    /// says how long until one is available. A refused call takes nothing.
    ///
    /// Never panics or overflows: times saturate, and a clock that steps backwards cannot
    /// block the bucket for longer than one full refill.
    pub fn try_take(&self, now_ms: u64) -> Result<(), RetryAfterMs> {
        if self.interval_ns == 0 {
            return Ok(());
        }
        let now = now_ms.saturating_mul(NANOS_PER_MS);
        let empty_at = now.saturating_add(self.capacity_ns);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            if tat > empty_at {
                // Only a clock that stepped backwards puts the schedule more than a burst
                // ahead: call the bucket empty from now on, rather than owing the jump.
                match self.tat.compare_exchange_weak(
                    tat,
                    empty_at,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => tat = empty_at,
                    Err(seen) => {
                        tat = seen;
                        continue;
                    }
                }
            }
            let next = tat.max(now).saturating_add(self.interval_ns);
            let allowed_at = next.saturating_sub(self.capacity_ns);
            if allowed_at > now {
                // At most one interval (≤ 1 s), so it always fits.
                let ms = ns_to_ms_ceil(allowed_at - now).max(1);
                return Err(RetryAfterMs(u32::try_from(ms).unwrap_or(u32::MAX)));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Returns one token taken by [`TokenBucket::try_take`], e.g. when a second limit
    /// refused the same request, so that a refused request costs nothing. Never more than
    /// `burst` tokens.
    pub fn give_back(&self) {
        if self.interval_ns == 0 {
            return;
        }
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(self.interval_ns))
            });
    }

    /// Whether the bucket holds `burst` tokens at `now_ms`, i.e. behaves like a new one.
    pub fn is_full(&self, now_ms: u64) -> bool {
        self.interval_ns == 0
            || self.tat.load(Ordering::Acquire) <= now_ms.saturating_mul(NANOS_PER_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes until refused; returns how many were taken and the refusal.
    fn drain(b: &TokenBucket, now: u64) -> (u32, RetryAfterMs) {
        let mut n = 0;
        loop {
            match b.try_take(now) {
                Ok(()) => n += 1,
                Err(r) => return (n, r),
            }
            assert!(n < 1_000_000, "bucket never refused");
        }
    }

    #[test]
    fn a_new_bucket_allows_its_burst_then_refuses() {
        let b = TokenBucket::new(Rate::new(10, 5));
        let (taken, retry) = drain(&b, 1_000);
        assert_eq!(taken, 5);
        assert_eq!(retry, RetryAfterMs(100), "one token every 100 ms");
    }

    #[test]
    fn refill_is_exactly_the_rate() {
        let b = TokenBucket::new(Rate::new(10, 5));
        drain(&b, 0);
        assert_eq!(b.try_take(99), Err(RetryAfterMs(1)));
        assert_eq!(b.try_take(100), Ok(()));
        assert!(b.try_take(100).is_err());
        // 350 ms later: 3 tokens (not 3.5, not 5).
        assert_eq!(drain(&b, 450).0, 3);
        // Idle far longer than a refill: back to the burst, no more.
        assert_eq!(drain(&b, 10_000).0, 5);
    }

    #[test]
    fn the_retry_after_is_the_exact_wait() {
        for (rate, burst) in [(1, 1), (3, 2), (7, 7), (1_000, 10), (20_000, 40_000)] {
            let b = TokenBucket::new(Rate::new(rate, burst));
            let t0 = 5_000;
            let (taken, RetryAfterMs(wait)) = drain(&b, t0);
            assert_eq!(taken, burst);
            let wait = u64::from(wait);
            assert!(wait >= 1);
            if wait > 1 {
                assert!(
                    b.try_take(t0 + wait - 1).is_err(),
                    "{rate}/s: allowed before the retry-after"
                );
            }
            assert_eq!(
                b.try_take(t0 + wait),
                Ok(()),
                "{rate}/s: refused at the retry-after"
            );
        }
    }

    #[test]
    fn sub_millisecond_intervals_keep_their_rate() {
        // 20,000/s is 50 µs per token: over one second the bucket gives rate + burst.
        let b = TokenBucket::new(Rate::new(20_000, 100));
        let mut taken = 0u32;
        for ms in 0..=1_000 {
            while b.try_take(ms).is_ok() {
                taken += 1;
            }
        }
        assert_eq!(taken, 20_000 + 100);
    }

    #[test]
    fn give_back_returns_a_token_but_never_beyond_the_burst() {
        let b = TokenBucket::new(Rate::new(1, 2));
        drain(&b, 0);
        b.give_back();
        assert_eq!(b.try_take(0), Ok(()));
        assert!(b.try_take(0).is_err());
        // A full bucket stays at its burst.
        let b = TokenBucket::new(Rate::new(1, 2));
        b.give_back();
        b.give_back();
        assert_eq!(drain(&b, 0).0, 2);
    }

    #[test]
    fn unlimited_never_refuses() {
        let b = TokenBucket::new(Rate::UNLIMITED);
        for _ in 0..10_000 {
            assert_eq!(b.try_take(0), Ok(()));
        }
        assert!(b.is_full(0));
        assert_eq!(Rate::UNLIMITED.refill_ms(), 0);
    }

    #[test]
    fn huge_times_and_gaps_do_not_overflow() {
        // The largest times that are still exact in nanoseconds (about 584 years).
        let far = u64::MAX / NANOS_PER_MS - 10_000;
        let b = TokenBucket::new(Rate::new(1, 2));
        assert_eq!(drain(&b, 0).0, 2);
        assert_eq!(
            drain(&b, far).0,
            2,
            "a huge gap refills to the burst, no more"
        );
        assert_eq!(b.try_take(far + 999), Err(RetryAfterMs(1)));
        assert_eq!(b.try_take(far + 1_000), Ok(()));
        // Beyond that, times saturate: no panic, no wrap-around into a refusal.
        assert_eq!(b.try_take(u64::MAX), Ok(()));
        // Extreme parameters.
        let b = TokenBucket::new(Rate::new(u32::MAX, u32::MAX));
        assert_eq!(b.try_take(0), Ok(()));
        assert_eq!(b.try_take(u64::MAX), Ok(()));
        let b = TokenBucket::new(Rate::new(1, u32::MAX));
        assert_eq!(b.try_take(7), Ok(()));
        assert!(Rate::new(1, u32::MAX).refill_ms() > 0);
        let b = TokenBucket::new(Rate::new(1, 1));
        assert_eq!(b.try_take(7), Ok(()));
        assert_eq!(b.try_take(7), Err(RetryAfterMs(1_000)));
    }

    #[test]
    fn a_clock_stepping_back_blocks_for_at_most_one_refill() {
        let b = TokenBucket::new(Rate::new(10, 5)); // refills in 500 ms
        drain(&b, 1_000_000);
        // The clock jumps back by an hour: the wait is at most a full refill from the new
        // now, not an hour.
        let Err(RetryAfterMs(wait)) = b.try_take(1_000_000 - 3_600_000 / 1_000) else {
            panic!("an empty bucket allowed a request");
        };
        assert!(wait <= 500, "waited {wait} ms");
        // ... and refills from there at its rate.
        let b = TokenBucket::new(Rate::new(10, 5));
        drain(&b, 10_000_000);
        assert_eq!(drain(&b, 10_000).0, 0);
        assert_eq!(drain(&b, 10_000 + 100).0, 1);
        assert_eq!(drain(&b, 10_000 + 1_000).0, 5);
    }

    #[test]
    fn is_full_tells_when_the_state_can_be_forgotten() {
        let r = Rate::new(10, 5);
        assert_eq!(r.refill_ms(), 500);
        let b = TokenBucket::new(r);
        assert!(b.is_full(0));
        b.try_take(1_000).unwrap();
        assert!(!b.is_full(1_000));
        assert!(!b.is_full(1_099));
        assert!(b.is_full(1_100));
        drain(&b, 2_000);
        assert!(!b.is_full(2_000 + r.refill_ms() - 1));
        assert!(b.is_full(2_000 + r.refill_ms()));
    }

    #[test]
    fn concurrent_takers_never_exceed_the_burst() {
        let b = std::sync::Arc::new(TokenBucket::new(Rate::new(1, 1_000)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1_000).filter(|_| b.try_take(42).is_ok()).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1_000);
    }

    #[test]
    fn rates_display_for_error_messages() {
        assert_eq!(Rate::new(20, 100).to_string(), "20/s, burst 100");
        assert_eq!(Rate::UNLIMITED.to_string(), "unlimited");
    }
}
