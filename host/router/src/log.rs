//! How the router reads a group's durable log: [`GroupLog`], implemented by the driver over
//! its store (and by the simulation over memory).

use switchboard_core::GroupId;
use switchboard_wire::Message;

/// A group's durable state as the planner needs it. `G` is the driver's handle of a group.
pub trait GroupLog<G> {
    /// The group's durable head: the newest sequence number clients may see.
    fn head(&self, group: &G) -> u64;
    /// Whether this session's deliveries of the group are deferred now (nudges instead of
    /// messages; catch-up skips the group until that changes).
    fn defers(&self, group: &G) -> bool;
    /// Messages with `after < seq <= upto`, in order, at most a bounded batch of them (the
    /// driver's bound: a short read only means "call again").
    fn read(&self, group: &G, after: u64, upto: u64) -> Result<Vec<Message>, LogError>;
}

/// Why planning could not read the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The store failed to read.
    #[error("log read failed: {0}")]
    Read(String),
    /// The log skipped a sequence number: writing past it would break the order promise.
    #[error("group {group}: log has seq {found} where {expected} was expected")]
    Hole {
        group: GroupId,
        expected: u64,
        found: u64,
    },
}
