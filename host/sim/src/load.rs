//! The node's load level as the hub keeps it (`host/edge/src/load.rs`): 0 normal .. 3
//! critical, up at once on one high sample, down one step after [`CALM_SAMPLES`] calm ones,
//! an admin's forced level winning over the measured one. What the tenant sheds at the level
//! in force is its policy's answer; the simulation models the degradation ladder's one
//! routing decision, background delivery, shed from a level the policy version names.

use crate::config::CALM_SAMPLES;

#[derive(Debug, Clone)]
pub(crate) struct Load {
    measured: u8,
    calm: u32,
    forced: Option<u8>,
    /// The level from which the bound policy version sheds background delivery (4: never).
    pub(crate) defer_at: u8,
}

impl Load {
    pub(crate) fn new(defer_at: u8) -> Self {
        Self {
            measured: 0,
            calm: 0,
            forced: None,
            defer_at,
        }
    }

    /// The level in force.
    pub(crate) fn level(&self) -> u8 {
        self.forced.unwrap_or(self.measured)
    }

    /// Whether the tenant sheds background delivery now.
    pub(crate) fn shedding(&self) -> bool {
        self.level() >= self.defer_at
    }

    /// One sample's pressure; returns whether the level in force changed.
    pub(crate) fn observe(&mut self, pressure: u8) -> bool {
        let before = self.level();
        let pressure = pressure.min(3);
        if pressure > self.measured {
            self.measured = pressure;
            self.calm = 0;
        } else if pressure == self.measured {
            self.calm = 0;
        } else {
            self.calm += 1;
            if self.calm >= CALM_SAMPLES {
                self.calm = 0;
                self.measured -= 1;
            }
        }
        self.level() != before
    }

    /// An admin forces a level, or with `None` goes back to the measured one.
    pub(crate) fn force(&mut self, level: Option<u8>) -> bool {
        let before = self.level();
        self.forced = level.map(|l| l.min(3));
        self.level() != before
    }

    /// Back to normal (the run settles).
    pub(crate) fn calm_down(&mut self) {
        self.measured = 0;
        self.calm = 0;
        self.forced = None;
    }
}
