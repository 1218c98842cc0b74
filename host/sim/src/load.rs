//! The node's load level, through the router's own types (`switchboard_router::load`, as
//! edge's monitor and `Load` use them): a [`LevelTracker`] turns each sample's pressure into
//! the measured level, and [`Levels`] holds it with an admin's forced level, the one in force
//! winning. What the tenant sheds at the level in force is its policy's answer; the
//! simulation models the degradation ladder's one routing decision, background delivery,
//! shed from a level the policy version names.

use switchboard_router::load::{self, LevelTracker, Levels};

#[derive(Debug, Clone)]
pub(crate) struct Load {
    tracker: LevelTracker,
    levels: Levels,
    /// The level from which the bound policy version sheds background delivery (4: never).
    pub(crate) defer_at: u8,
}

impl Load {
    pub(crate) fn new(defer_at: u8) -> Self {
        Self {
            tracker: LevelTracker::default(),
            levels: Levels::default(),
            defer_at,
        }
    }

    /// The level in force.
    pub(crate) fn level(&self) -> u8 {
        self.levels.level()
    }

    /// The measured level (the oracle checks how it moves).
    pub(crate) fn measured(&self) -> u8 {
        self.levels.measured()
    }

    /// Whether the tenant sheds background delivery now.
    pub(crate) fn shedding(&self) -> bool {
        load::sheds(self.level(), self.defer_at)
    }

    /// One sample's pressure, as edge's monitor takes it; returns whether the level in force
    /// changed.
    pub(crate) fn observe(&mut self, pressure: u8) -> bool {
        self.tracker
            .observe(pressure)
            .and_then(|measured| self.levels.set_measured(measured))
            .is_some()
    }

    /// An admin forces a level, or with `None` goes back to the measured one.
    pub(crate) fn force(&mut self, level: Option<u8>) -> bool {
        self.levels.set_forced(level).is_some()
    }

    /// Back to normal (the run settles).
    pub(crate) fn calm_down(&mut self) {
        self.tracker = LevelTracker::default();
        self.levels = Levels::default();
    }
}
