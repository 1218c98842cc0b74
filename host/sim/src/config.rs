//! The shape of one run, and the node's constants the simulation models.

/// The shape of one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub groups: usize,
    pub users: usize,
    /// Percent of users with more than one device (two or three connections of the same
    /// user, whose sessions all follow the user's membership).
    pub multi_device_pct: u64,
    /// Client operations before the run settles and is checked.
    pub steps: usize,
    /// Pushes a session's queue holds per stream (a full queue switches it to catch-up).
    pub queue_frames: usize,
    /// Most messages one log read returns (the driver's bounded catch-up batch).
    pub read_batch: usize,
    /// Groups with at least this many members defer their background members (0 = never).
    pub nudge_from_members: u32,
    /// Percent of flushes that fail.
    pub flush_failure_pct: u64,
    /// Fan out in subscription order (the benchmark's naive mode): no active-first phases.
    pub naive: bool,
    /// Per mille of operations that are membership changes on top of the usual mix (joins,
    /// leaves, admin adds and removes; 0 keeps the mix's own 6%).
    pub extra_membership_per_mille: u64,
    /// The load level from which the first policy version sheds background delivery (the
    /// built-in ladder's 3; 4 = never). Later versions (policy swaps) pick their own.
    pub defer_background_at: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            groups: 4,
            users: 12,
            multi_device_pct: 35,
            steps: 3_000,
            queue_frames: 4,
            read_batch: 5,
            nudge_from_members: 7,
            flush_failure_pct: 5,
            naive: false,
            extra_membership_per_mille: 0,
            defer_background_at: 3,
        }
    }
}

/// Longest a batch's background phase waits while none of its foreground copies is released
/// (ms; the node's default).
pub(crate) const FOREGROUND_GATE_MS: u64 = 50;
/// Longest it waits for them in all (ms; lower than the node's 2 s default, so that runs
/// reach the cap as well as the stall).
pub(crate) const FOREGROUND_GATE_MAX_MS: u64 = 400;

/// The gate's bounds as `switchboard_router::gate` takes them.
pub(crate) fn gate_bounds() -> switchboard_router::gate::GateBounds {
    switchboard_router::gate::GateBounds::from_millis(FOREGROUND_GATE_MS, FOREGROUND_GATE_MAX_MS)
}
/// Most operations one fuzz input runs (the rest of a longer input is ignored).
pub(crate) const MAX_FUZZ_STEPS: usize = 4_096;
/// Frames a push stream may have in flight to a client that is not reading (flow control).
pub(crate) const WINDOW_FRAMES: usize = 16;
