//! When a commit batch's background phase may start without waiting any longer for its
//! foreground copies: the active-first gate's deadline.
//!
//! Phase 2 (the background copies) normally starts when the last foreground copy of the
//! batch has been written. The deadline exists for a foreground member that stopped
//! reading: its copy is never written, and the background must not wait for it forever.
//! A fixed deadline from publish cannot tell that member from a busy machine on which
//! writing a thousand foreground copies takes longer than the deadline (the large-group
//! benchmark measured foreground phases of 52–1,481 ms with other processes on the CPUs;
//! with a fixed 50 ms, 92–167 background copies went before the last foreground one).
//!
//! So the deadline follows progress: the gate expires `stall` after the latest of the
//! batch's publish and the most recent release of one of its foreground copies (written, or
//! dropped with a full queue), and never later than `max` after publish. A foreground phase
//! that keeps writing holds the background back (up to `max`); a member that stopped
//! reading delays the background by `stall` after everyone else's copy is written. The
//! driver (edge's phase-2 task, the simulation's) measures the times; this module decides.

use std::time::Duration;

/// The gate's two bounds (`Limits::foreground_gate_ms` and `Limits::foreground_gate_max_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateBounds {
    /// How long the gate waits without any foreground copy of the batch being released.
    pub stall: Duration,
    /// How long after publish the gate waits at most, progress or not.
    pub max: Duration,
}

impl GateBounds {
    /// Bounds in milliseconds; `max` is raised to `stall` if lower.
    pub fn from_millis(stall_ms: u64, max_ms: u64) -> Self {
        let stall = Duration::from_millis(stall_ms);
        Self {
            stall,
            max: Duration::from_millis(max_ms).max(stall),
        }
    }

    /// When the gate expires, as time since publish, given when (since publish) one of the
    /// batch's foreground copies was last released, if one was.
    pub fn expires_after(&self, last_release: Option<Duration>) -> Duration {
        (last_release.unwrap_or_default() + self.stall).min(self.max)
    }

    /// Whether the gate has expired at `elapsed` since publish.
    pub fn expired(&self, elapsed: Duration, last_release: Option<Duration>) -> bool {
        elapsed >= self.expires_after(last_release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn without_progress_the_gate_expires_one_stall_after_publish() {
        let b = GateBounds::from_millis(50, 2_000);
        assert_eq!(b.expires_after(None), ms(50));
        assert!(!b.expired(ms(49), None));
        assert!(b.expired(ms(50), None));
    }

    #[test]
    fn a_slow_foreground_phase_keeps_the_gate_shut_until_it_stalls() {
        let b = GateBounds::from_millis(50, 2_000);
        // 1,000 copies, one released every 1.2 ms (a foreground phase of 1.2 s).
        let mut last = None;
        for k in 0..1_000u64 {
            let t = Duration::from_micros(1_200 * k);
            assert!(!b.expired(t, last), "expired at {t:?} while writing");
            last = Some(t);
        }
        // One more copy is never written: a stall after the last release.
        let end = last.unwrap();
        assert!(!b.expired(end + ms(49), last));
        assert!(b.expired(end + ms(50), last));
    }

    #[test]
    fn progress_never_holds_the_background_past_the_cap() {
        let b = GateBounds::from_millis(50, 300);
        assert_eq!(b.expires_after(Some(ms(290))), ms(300));
        assert!(b.expired(ms(300), Some(ms(299))));
    }

    #[test]
    fn a_cap_below_the_stall_is_raised_to_it() {
        let b = GateBounds::from_millis(50, 10);
        assert_eq!(b.max, ms(50));
        assert_eq!(b.expires_after(None), ms(50));
    }
}
