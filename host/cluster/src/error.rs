//! [`ClusterError`]: what went wrong in the cluster crate, and where.

use std::time::Duration;

use switchboard_store::StoreError;

/// Why a cluster operation failed. Each variant names where it came from (NATS connection,
/// stream set-up, the expected-sequence check, a publish, a read, the bridge's wait) and
/// [`ClusterError::outcome_unknown`] says whether an append may have been applied.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration is unusable (a bad prefix, zero replicas).
    #[error("cluster configuration: {0}")]
    Config(String),
    /// Connecting to NATS failed.
    #[error("connect to NATS at {url}: {detail}")]
    Connect { url: String, detail: String },
    /// Creating or looking up a shard's stream failed.
    #[error("stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    /// The append was refused and nothing was written: the shard is not this writer's. The
    /// server's expected-sequence checks refused it (another writer took the shard or
    /// wrote to it since this writer's last write, or this writer's view of the group was
    /// stale), or this writer had never taken the shard or was fenced from it before. Every
    /// later append to the shard is refused the same way until the shard is taken again
    /// ([`crate::JetStreamLog::take_shard`]).
    #[error("fenced: {subject} in shard {shard} moved past stream seq {expected} (another writer owns the shard)")]
    Fenced {
        shard: u16,
        subject: String,
        /// The stream sequence this writer named as the group's predecessor (or, for a
        /// retake, as its own last marker); 0 when the append was refused here, without
        /// asking the server, because the shard was not held.
        expected: u64,
    },
    /// An append was refused before or by the server, and was not written (stream missing,
    /// message over the size limit, a server error).
    #[error("append to {subject} refused: {detail}")]
    Refused { subject: String, detail: String },
    /// An append was sent but its acknowledgement did not come (time-out, connection lost):
    /// it may or may not be stored. A resend with the same client message id is deduplicated.
    #[error("append to {subject}: outcome unknown: {detail}")]
    Unacknowledged { subject: String, detail: String },
    /// Reading a subject failed.
    #[error("read {subject}: {detail}")]
    Read { subject: String, detail: String },
    /// A stored message lacks a header this crate writes, or it does not parse.
    #[error("corrupt message {stream_seq} on {subject}: {detail}")]
    Corrupt {
        subject: String,
        stream_seq: u64,
        detail: String,
    },
    /// Another node holds the shard's lease (`by` is empty when it expired in between).
    #[error("shard {shard}'s lease is held by {by:?}")]
    LeaseHeld { shard: u16, by: String },
    /// The lease expired or another node took it: stop appending to the shard.
    #[error("shard {shard}'s lease was lost (expired or taken)")]
    LeaseLost { shard: u16 },
    /// The lease bucket could not be read or written.
    #[error("shard {shard}'s lease: {detail}")]
    Lease { shard: u16, detail: String },
    /// The bridge's bounded wait ran out before the operation finished (the operation's own
    /// time-outs are shorter, so this means the runtime is stuck or overloaded).
    #[error("{op} did not finish within {after:?}")]
    TimedOut { op: &'static str, after: Duration },
}

impl ClusterError {
    /// Whether an append that failed this way may have been stored anyway.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Unacknowledged { .. } | Self::TimedOut { .. })
    }
}

impl From<ClusterError> for StoreError {
    fn from(e: ClusterError) -> Self {
        match e {
            e @ ClusterError::Fenced { .. } => StoreError::Fenced(e.to_string()),
            e @ ClusterError::Corrupt { .. } => StoreError::Corrupt {
                tree: "jetstream",
                detail: e.to_string(),
            },
            e if e.outcome_unknown() => StoreError::OutcomeUnknown(e.to_string()),
            e => StoreError::Io(e.to_string()),
        }
    }
}
