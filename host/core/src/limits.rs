//! Every bound the node enforces, with its default. The node's config file overrides these
//! (`[limits]` section); `docs/protocol.md` and `examples/switchboard.toml` document them.

use serde::{Deserialize, Serialize};

/// Bounds enforced per node and per connection. Defaults are sized for a phone-facing edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame (after the 4-byte length prefix) accepted or sent, in bytes.
    pub max_frame_bytes: u32,
    /// Largest message body, in bytes. Must leave room for the frame envelope.
    pub max_payload_bytes: u32,
    /// Most members a group may have.
    pub max_group_members: u32,
    /// Most groups one user may belong to (bounds the resume cursor list in `Hello`).
    pub max_groups_per_user: u32,
    /// Most client-opened bidirectional streams open at once (only the first is used).
    pub max_streams_per_connection: u32,
    /// A connection with no traffic for this long is closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Time a client has to send `Hello` after the connection opens, in milliseconds.
    pub hello_timeout_ms: u64,
    /// Most messages returned by one `Fetch` (and sent per catch-up batch).
    pub max_fetch_messages: u32,
    /// Most sends a connection may have waiting for durability at once (pipelining depth).
    pub max_inflight_sends: u32,
    /// Pushes queued for one connection, per lane (high, normal, low), before it counts as a
    /// slow consumer and switches to catching up from the log.
    pub outbox_frames: u32,
    /// Most connections the node accepts at once.
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 128 * 1024,
            max_payload_bytes: 64 * 1024,
            max_group_members: 10_000,
            max_groups_per_user: 1_000,
            max_streams_per_connection: 4,
            idle_timeout_ms: 30_000,
            hello_timeout_ms: 5_000,
            max_fetch_messages: 256,
            max_inflight_sends: 256,
            outbox_frames: 1_024,
            max_connections: 100_000,
        }
    }
}

/// Why a set of limits cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid limits: {0}")]
pub struct LimitsError(pub &'static str);

/// Bytes the frame envelope of a message may take besides its body (ids, seq, timestamps).
pub const ENVELOPE_OVERHEAD: u32 = 1024;

impl Limits {
    /// Checks the limits are consistent with each other.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_payload_bytes == 0 {
            return Err(LimitsError("max_payload_bytes must be > 0"));
        }
        if self.max_payload_bytes.saturating_add(ENVELOPE_OVERHEAD) > self.max_frame_bytes {
            return Err(LimitsError(
                "max_frame_bytes must exceed max_payload_bytes by at least 1024",
            ));
        }
        if self.max_frame_bytes > 16 * 1024 * 1024 {
            return Err(LimitsError("max_frame_bytes must be at most 16 MiB"));
        }
        let nonzero = [
            self.max_group_members,
            self.max_groups_per_user,
            self.max_streams_per_connection,
            self.max_fetch_messages,
            self.max_inflight_sends,
            self.outbox_frames,
            self.max_connections,
        ];
        if nonzero.contains(&0) || self.idle_timeout_ms == 0 || self.hello_timeout_ms == 0 {
            return Err(LimitsError("every count and timeout must be > 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn payload_must_fit_frame() {
        let l = Limits {
            max_payload_bytes: 128 * 1024,
            ..Limits::default()
        };
        assert!(l.validate().is_err());
        let l = Limits {
            outbox_frames: 0,
            ..Limits::default()
        };
        assert!(l.validate().is_err());
    }
}
