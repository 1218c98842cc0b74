//! The node's load level as values: the pressure of one sample, the measured level with
//! hysteresis, the level in force (an admin's forced level wins), and whether a tenant sheds
//! at it. No clock and no atomics: the driver (edge's load monitor and `Load`) samples on its
//! timer and keeps the level where its tasks can read it; the simulation drives the same
//! types with simulated samples.
//!
//! Every sample maps three signals to a level (0 normal, 1 elevated, 2 high, 3 critical) by
//! the thresholds in [`THRESHOLDS`]; the pressure is the highest of them:
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

/// The highest level: critical.
pub const MAX_LEVEL: u8 = 3;

/// Samples below the current level before it steps down (2 s at edge's default
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

/// The measured level with hysteresis: up at once, down one step after [`CALM_SAMPLES`]
/// calm samples.
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
        let pressure = pressure.min(MAX_LEVEL);
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

/// The measured level and an admin's forced one; the level in force is the forced one if
/// any. Both are clamped to [`MAX_LEVEL`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    measured: u8,
    forced: Option<u8>,
}

impl Levels {
    /// The level in force: the forced one if any, else the measured one.
    pub fn level(&self) -> u8 {
        self.forced.unwrap_or(self.measured)
    }

    pub fn measured(&self) -> u8 {
        self.measured
    }

    pub fn forced(&self) -> Option<u8> {
        self.forced
    }

    /// Records a measured level; returns the level in force before, if it changed.
    pub fn set_measured(&mut self, level: u8) -> Option<u8> {
        let before = self.level();
        self.measured = level.min(MAX_LEVEL);
        (self.level() != before).then_some(before)
    }

    /// Forces a level (or with `None` goes back to the measured one); returns the level in
    /// force before, if it changed.
    pub fn set_forced(&mut self, level: Option<u8>) -> Option<u8> {
        let before = self.level();
        self.forced = level.map(|l| l.min(MAX_LEVEL));
        (self.level() != before).then_some(before)
    }

    /// The two levels in one `u16` (the driver keeps them in one atomic, so a reader never
    /// sees a measured level from one change and a forced one from another).
    pub fn to_bits(self) -> u16 {
        let forced = self.forced.map_or(0xff, u16::from);
        (forced << 8) | u16::from(self.measured)
    }

    /// The inverse of [`Levels::to_bits`].
    pub fn from_bits(bits: u16) -> Self {
        let forced = (bits >> 8) as u8;
        Self {
            measured: (bits as u8).min(MAX_LEVEL),
            forced: (forced != 0xff).then_some(forced.min(MAX_LEVEL)),
        }
    }
}

/// Whether something a tenant sheds from level `from` (its policy's answer; 4 or more:
/// never) is shed at the level in force `level`.
pub fn sheds(level: u8, from: u8) -> bool {
    level >= from
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

    #[test]
    fn a_pressure_over_critical_is_critical() {
        let mut l = LevelTracker::default();
        assert_eq!(l.observe(200), Some(MAX_LEVEL));
    }

    #[test]
    fn the_forced_level_wins_and_only_changes_of_the_level_in_force_are_told() {
        let mut l = Levels::default();
        assert_eq!(l.level(), 0);
        assert_eq!(l.set_measured(2), Some(0));
        assert_eq!(l.set_measured(2), None);
        // Forced to the measured level: nothing in force changes.
        assert_eq!(l.set_forced(Some(2)), None);
        assert_eq!(l.set_forced(Some(0)), Some(2));
        assert_eq!(l.level(), 0);
        // The measured level moves under the override without changing the level in force.
        assert_eq!(l.set_measured(3), None);
        assert_eq!(l.measured(), 3);
        // Lifting the override goes back to the measured level.
        assert_eq!(l.set_forced(None), Some(0));
        assert_eq!(l.level(), 3);
        // Out-of-range levels are clamped.
        assert_eq!(l.set_forced(Some(9)), None);
        assert_eq!(l.forced(), Some(MAX_LEVEL));
        assert_eq!(l.set_measured(200), None);
        assert_eq!(l.measured(), MAX_LEVEL);
    }

    #[test]
    fn levels_round_trip_through_their_bits() {
        for measured in 0..=MAX_LEVEL {
            for forced in [None, Some(0), Some(1), Some(2), Some(3)] {
                let mut l = Levels::default();
                l.set_measured(measured);
                l.set_forced(forced);
                assert_eq!(Levels::from_bits(l.to_bits()), l);
            }
        }
        assert_eq!(
            Levels::from_bits(Levels::default().to_bits()),
            Levels::default()
        );
    }

    #[test]
    fn shedding_applies_from_its_level_up() {
        assert!(!sheds(2, 3));
        assert!(sheds(3, 3));
        assert!(sheds(1, 0));
        assert!(!sheds(MAX_LEVEL, 4), "from 4: never");
    }
}
