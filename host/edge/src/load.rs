//! The node measures its own load and moves between levels with hysteresis.
//!
//! Every `load_sample_ms` (a node limit, default 250 ms) the monitor reads three signals and maps each to a level (0 normal,
//! 1 elevated, 2 high, 3 critical) by the thresholds in [`THRESHOLDS`]; the pressure is the
//! highest of them:
//!
//! | signal | what | 1 | 2 | 3 |
//! |---|---|---|---|---|
//! | event-loop lag | how late the monitor's own timer fires | 50 ms | 200 ms | 1000 ms |
//! | commit queue | sends waiting for the committer, % of its bound | 25 % | 50 % | 90 % |
//! | push queues | pushes queued for sessions, % of their total bound | 10 % | 25 % | 50 % |
//!
//! Going up is immediate (one sample at a higher pressure); going down waits until the
//! pressure stayed below the current level for [`CALM_SAMPLES`] samples in a row, and then
//! steps down one level at a time — so a node at the edge of a threshold does not flap.
//! Every change is logged by the hub and visible as `switchboard_load_level`; an admin's
//! forced level (`Hub::set_load_override`) wins over the measured one.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use switchboard_core::TenantId;
use switchboard_policy as policy;

use crate::metrics::Metrics;

/// The node's load level (0 normal .. 3 critical), an admin's forced level, and what each
/// tenant sheds at the level in force. The tenant's policy decides the shedding; the hub
/// asks it on every change (`Hub::set_load_level`) and stores the answer here.
#[derive(Debug)]
pub(crate) struct Load {
    measured: AtomicU8,
    /// [`NO_OVERRIDE`] when no level is forced.
    forced: AtomicU8,
    shedding: DashMap<TenantId, policy::Shedding>,
}

/// `Load::forced` when no level is forced.
const NO_OVERRIDE: u8 = u8::MAX;

impl Load {
    pub(crate) fn new() -> Self {
        Self {
            measured: AtomicU8::new(0),
            forced: AtomicU8::new(NO_OVERRIDE),
            shedding: DashMap::new(),
        }
    }

    /// The level in force: the forced one if any, else the measured one.
    pub(crate) fn level(&self) -> u8 {
        match self.forced.load(Ordering::Relaxed) {
            NO_OVERRIDE => self.measured.load(Ordering::Relaxed),
            forced => forced,
        }
    }

    /// Records a measured level; returns the level in force before, if it changed.
    pub(crate) fn set_measured(&self, level: u8) -> Option<u8> {
        let before = self.level();
        self.measured.store(level.min(3), Ordering::Relaxed);
        (self.level() != before).then_some(before)
    }

    /// Forces a level (or with `None` goes back to the measured one); returns the level in
    /// force before, if it changed.
    pub(crate) fn set_forced(&self, level: Option<u8>) -> Option<u8> {
        let before = self.level();
        self.forced
            .store(level.map_or(NO_OVERRIDE, |l| l.min(3)), Ordering::Relaxed);
        (self.level() != before).then_some(before)
    }

    /// What `tenant` sheds now: its policy's answer, or the built-in one for the level.
    pub(crate) fn shedding(&self, tenant: &TenantId) -> policy::Shedding {
        match self.shedding.get(tenant) {
            Some(s) => *s,
            None => policy::Builtin::on_load(&policy::LoadInfo {
                level: self.level(),
                ..Default::default()
            }),
        }
    }

    /// Stores the tenant policy's answer for the level in force (`None`: the built-in one).
    pub(crate) fn set_shedding(&self, tenant: &TenantId, shed: Option<policy::Shedding>) {
        match shed {
            Some(s) => {
                self.shedding.insert(tenant.clone(), s);
            }
            None => {
                self.shedding.remove(tenant);
            }
        }
    }
}

/// What the monitor reads and moves (the hub; a trait so this module does not know it).
pub(crate) trait LoadSignals: Send + Sync + 'static {
    /// Sends waiting for the committer, % of the commit queue's bound.
    fn commit_queue_percent(&self) -> u64;
    /// Pushes queued for all sessions, % of their total bound (walks the sessions).
    fn push_queue_percent(&self) -> u64;
    /// A new measured level.
    fn set_load_level(&self, level: u8);
    fn metrics(&self) -> &Metrics;
}

/// Samples below the current level before it steps down (2 s at the default
/// `load_sample_ms` of 250).
pub const CALM_SAMPLES: u32 = 8;

/// Per signal, the value from which each level (1, 2, 3) applies.
pub const THRESHOLDS: Thresholds = Thresholds {
    lag_ms: [50, 200, 1000],
    commit_percent: [25, 50, 90],
    push_percent: [10, 25, 50],
};

/// See [`THRESHOLDS`].
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub lag_ms: [u64; 3],
    pub commit_percent: [u64; 3],
    pub push_percent: [u64; 3],
}

/// One sample of the signals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub lag_ms: u64,
    pub commit_percent: u64,
    pub push_percent: u64,
}

impl Sample {
    /// The level this sample alone calls for.
    pub fn pressure(&self, t: &Thresholds) -> u8 {
        let level = |value: u64, at: &[u64; 3]| at.iter().filter(|&&a| value >= a).count() as u8;
        level(self.lag_ms, &t.lag_ms)
            .max(level(self.commit_percent, &t.commit_percent))
            .max(level(self.push_percent, &t.push_percent))
    }
}

/// The level with hysteresis: up at once, down one step after [`CALM_SAMPLES`] calm samples.
#[derive(Debug, Default, Clone)]
pub struct LevelTracker {
    level: u8,
    calm: u32,
}

impl LevelTracker {
    pub fn level(&self) -> u8 {
        self.level
    }

    /// Takes one sample's pressure; returns the new level if it changed.
    pub fn observe(&mut self, pressure: u8) -> Option<u8> {
        let pressure = pressure.min(3);
        if pressure > self.level {
            self.level = pressure;
            self.calm = 0;
            return Some(self.level);
        }
        if pressure == self.level {
            self.calm = 0;
            return None;
        }
        self.calm += 1;
        if self.calm >= CALM_SAMPLES {
            self.calm = 0;
            self.level -= 1;
            return Some(self.level);
        }
        None
    }
}

/// Samples the hub's load until the hub is dropped, moving its measured level.
pub(crate) async fn monitor(hub: Weak<dyn LoadSignals>, sample_ms: u64) {
    let period = Duration::from_millis(sample_ms);
    let mut tracker = LevelTracker::default();
    loop {
        let before = Instant::now();
        tokio::time::sleep(period).await;
        let lag_ms = before.elapsed().saturating_sub(period).as_millis() as u64;
        let Some(hub) = hub.upgrade() else { return };
        // The push-queue fill walks every session (~4 ms at 10,000 sessions): off the event
        // loop, where it held up whatever fan-out was running every sample.
        let push_percent = {
            let hub = hub.clone();
            tokio::task::spawn_blocking(move || hub.push_queue_percent())
                .await
                .unwrap_or(0)
        };
        let sample = Sample {
            lag_ms,
            commit_percent: hub.commit_queue_percent(),
            push_percent,
        };
        if let Some(level) = tracker.observe(sample.pressure(&THRESHOLDS)) {
            tracing::info!(?sample, level, "measured load level");
            hub.metrics()
                .load_level_changes
                .fetch_add(1, Ordering::Relaxed);
            hub.set_load_level(level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_is_the_highest_signal() {
        let t = THRESHOLDS;
        assert_eq!(Sample::default().pressure(&t), 0);
        let s = |lag_ms, commit_percent, push_percent| Sample {
            lag_ms,
            commit_percent,
            push_percent,
        };
        assert_eq!(s(49, 24, 9).pressure(&t), 0);
        assert_eq!(s(50, 0, 0).pressure(&t), 1);
        assert_eq!(s(0, 50, 0).pressure(&t), 2);
        assert_eq!(s(0, 0, 50).pressure(&t), 3);
        assert_eq!(s(200, 90, 10).pressure(&t), 3);
        assert_eq!(s(10_000, 100, 100).pressure(&t), 3);
    }

    #[test]
    fn up_at_once_down_slowly_one_step_at_a_time() {
        let mut l = LevelTracker::default();
        assert_eq!(l.observe(0), None);
        assert_eq!(l.observe(3), Some(3));
        // A brief dip does not lower the level; a return to 3 resets the count.
        for _ in 0..CALM_SAMPLES - 1 {
            assert_eq!(l.observe(0), None);
        }
        assert_eq!(l.observe(3), None);
        for _ in 0..CALM_SAMPLES - 1 {
            assert_eq!(l.observe(1), None);
        }
        assert_eq!(l.observe(1), Some(2));
        for _ in 0..CALM_SAMPLES - 1 {
            assert_eq!(l.observe(1), None);
        }
        assert_eq!(l.observe(1), Some(1));
        // At the pressure's level it stays.
        for _ in 0..3 * CALM_SAMPLES {
            assert_eq!(l.observe(1), None);
        }
        assert_eq!(l.level(), 1);
        assert_eq!(l.observe(2), Some(2));
    }

    #[test]
    fn flapping_around_a_threshold_does_not_flap_the_level() {
        let mut l = LevelTracker::default();
        let mut changes = 0;
        for i in 0..1000 {
            if l.observe(if i % 2 == 0 { 1 } else { 0 }).is_some() {
                changes += 1;
            }
        }
        assert_eq!(changes, 1, "up once, never down while it keeps coming back");
    }
}
