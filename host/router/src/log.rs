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
    /// The group's first retained seq: 1 until retention deleted some, `head + 1` when it
    /// deleted all. Asked only when a read starts above where the session is.
    fn first_seq(&self, group: &G) -> Result<u64, LogError>;
}

/// Why planning could not read the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The store failed to read.
    #[error("log read failed: {0}")]
    Read(String),
    /// The log skipped a sequence number that retention did not delete, or retention
    /// deleted messages after the session's `Resume` was written: writing past it would
    /// break the order promise. The driver ends the session; a reconnect resumes at the
    /// first retained message.
    #[error("group {group}: log has seq {found} where {expected} was expected")]
    Hole {
        group: GroupId,
        expected: u64,
        found: u64,
    },
}
