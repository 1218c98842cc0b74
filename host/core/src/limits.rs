//! Every bound the node enforces, with its default. The node's config file overrides these
//! (`[limits]` section); `docs/protocol.md` and `examples/switchboard.toml` document them.

use serde::{Deserialize, Serialize};

use crate::rate::Rate;

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
    /// Pushes queued for one connection, per push stream (high, normal, low, notices),
    /// before it counts as a slow consumer and switches to catching up from the log.
    pub outbox_frames: u32,
    /// Bytes of frames queued for one connection over all its push streams, with the same
    /// effect when reached (frames are shared between recipients; this bounds what one slow
    /// connection can keep alive). At least `max_frame_bytes`.
    pub outbox_bytes: u32,
    /// Groups with at least this many members send their background (not foreground)
    /// members a `Nudge` (group and newest seq, at most one a second) instead of each
    /// message; they get the messages when they come to the foreground or fetch. 0 = never
    /// (background members of any group get every message, unless load sheds them).
    pub nudge_background_from_members: u32,
    /// What happens to a connection whose outbox fills (`outbox_frames`/`outbox_bytes`):
    /// `false` (default) switches it to catching up from the log, so it gets everything
    /// once it reads again; `true` closes it with `SlowConsumer` (it reconnects and resumes
    /// from its cursors), for deployments that would rather free the connection.
    pub disconnect_slow_consumers: bool,
    /// Longest a commit batch's background copies wait, in milliseconds, while none of its
    /// foreground copies is written (active first on the wire). The wait restarts with every
    /// foreground copy written, so a busy machine's slow foreground phase still goes first;
    /// a foreground member that stops reading delays background delivery by this much after
    /// the other foreground copies are written (counted as `foreground_gate_timeouts`). At
    /// least 1.
    pub foreground_gate_ms: u64,
    /// Longest a commit batch's background copies wait for its foreground copies in all,
    /// progress or not, in milliseconds from publish. At least `foreground_gate_ms`.
    pub foreground_gate_max_ms: u64,
    /// Most connections the node accepts at once.
    pub max_connections: u32,
    /// Most connection attempts in their QUIC/TLS handshake at once; further attempts are
    /// refused statelessly (`CONNECTION_REFUSED`) until some finish. A handshake that has
    /// not completed within `hello_timeout_ms` is abandoned.
    pub max_handshakes: u32,
    /// From this many handshakes in flight on, a new attempt must first prove it can
    /// receive at its address (a QUIC `Retry` round trip, which costs the node no state):
    /// a flood from spoofed addresses then holds at most this many handshakes. 0 = always.
    pub validate_address_from_handshakes: u32,
    /// Free bytes the node keeps on its data disk: below this, sends (and other store
    /// writes clients cause) are refused with `StoreUnavailable` until space is freed, so
    /// the store stays clear of a full disk (where its writes fail and it must be reopened).
    /// Checked every 250 ms. At least [`MIN_FREE_DISK_FLOOR`]: a config file with less is
    /// refused ([`Limits::validate`]), and the node raises a smaller value it is given in
    /// code to the floor, with a warning.
    pub min_free_disk_bytes: u64,
    /// How often the node samples its own load (event-loop lag, commit and push queues) to
    /// set its degradation level, in milliseconds; 0 = never (the level stays 0 unless an
    /// admin forces one).
    pub load_sample_ms: u64,

    // Rate limits (token buckets: `*_per_sec` sustained, `*_burst` at once; a per-second
    // value of 0 turns that limit off). A request over a limit is refused with `RateLimited`
    // and the time until it would be allowed; it is not carried out and costs nothing else.
    //
    // The message defaults are ceilings against runaway clients, not product quotas: one
    // connection pushes about 10,000 durable messages/s on loopback, so a user can use a
    // whole connection but not much more, and a tenant a few users' worth. Nodes that serve
    // only people (no bots or bridges) can set far lower per-user values.
    /// `Send`s per second one user may make, over all its connections.
    pub user_messages_per_sec: u32,
    /// `Send`s one user may make at once.
    pub user_messages_burst: u32,
    /// `Receipt`s per second one user may send.
    pub user_receipts_per_sec: u32,
    /// `Receipt`s one user may send at once (e.g. after catching up).
    pub user_receipts_burst: u32,
    /// Membership changes (`Join` and `Leave`) per second one user may make.
    pub user_joins_per_sec: u32,
    /// Membership changes one user may make at once.
    pub user_joins_burst: u32,
    /// `Presence` changes per second one user may make. Each one is a notice to every
    /// co-member, so this bounds what one client can make the node send; a change over the
    /// limit still counts for delivery planning, but co-members are not told of it and the
    /// client gets `RateLimited` with the time after which to state its presence again.
    pub user_presence_per_sec: u32,
    /// `Presence` changes one user may make at once.
    pub user_presence_burst: u32,
    /// `Send`s per second all of one tenant's users may make together.
    pub tenant_messages_per_sec: u32,
    /// `Send`s one tenant's users may make at once.
    pub tenant_messages_burst: u32,
    /// New sessions (accepted `Hello`s) per second for one tenant: spreads a tenant's
    /// reconnect storm over time instead of letting it take the node's hello capacity.
    pub tenant_connections_per_sec: u32,
    /// New sessions one tenant may open at once.
    pub tenant_connections_burst: u32,
    /// Most sessions (connections past `Hello`) one tenant may have open at once on this
    /// node; 0 = no limit besides `max_connections`.
    pub tenant_max_connections: u32,
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
            outbox_bytes: 4 * 1024 * 1024,
            nudge_background_from_members: 1_000,
            disconnect_slow_consumers: false,
            foreground_gate_ms: 50,
            foreground_gate_max_ms: 2_000,
            max_connections: 100_000,
            max_handshakes: 1_024,
            validate_address_from_handshakes: 64,
            load_sample_ms: 250,
            min_free_disk_bytes: 256 * 1024 * 1024,
            user_messages_per_sec: 20_000,
            user_messages_burst: 40_000,
            user_receipts_per_sec: 1_000,
            user_receipts_burst: 5_000,
            user_joins_per_sec: 10,
            user_joins_burst: 100,
            user_presence_per_sec: 2,
            user_presence_burst: 20,
            tenant_messages_per_sec: 50_000,
            tenant_messages_burst: 100_000,
            tenant_connections_per_sec: 2_000,
            tenant_connections_burst: 20_000,
            tenant_max_connections: 50_000,
        }
    }
}

/// Why a set of limits cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid limits: {0}")]
pub struct LimitsError(pub &'static str);

/// Bytes the frame envelope of a message may take besides its body (ids, seq, timestamps).
pub const ENVELOPE_OVERHEAD: u32 = 1024;

/// The least `min_free_disk_bytes` may be: one of sled's I/O buffers (8 MiB), the most a
/// single flush writes at once, so a flush that starts above the reserve fits on the disk.
pub const MIN_FREE_DISK_FLOOR: u64 = 8 * 1024 * 1024;

impl Limits {
    /// Checks the limits are consistent with each other.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.min_free_disk_bytes < MIN_FREE_DISK_FLOOR {
            return Err(LimitsError(
                "min_free_disk_bytes must be at least 8388608 (8 MiB, MIN_FREE_DISK_FLOOR): \
                 without a reserve the store's writes run into a full disk",
            ));
        }
        if self.foreground_gate_ms == 0 {
            return Err(LimitsError(
                "foreground_gate_ms must be > 0: background copies would never wait for the \
                 foreground ones",
            ));
        }
        if self.foreground_gate_max_ms < self.foreground_gate_ms {
            return Err(LimitsError(
                "foreground_gate_max_ms must be at least foreground_gate_ms",
            ));
        }
        if self.max_payload_bytes == 0 {
            return Err(LimitsError("max_payload_bytes must be > 0"));
        }
        if self.max_payload_bytes.saturating_add(ENVELOPE_OVERHEAD) > self.max_frame_bytes {
            return Err(LimitsError(
                "max_frame_bytes must exceed max_payload_bytes by at least 1024",
            ));
        }
        if self.outbox_bytes < self.max_frame_bytes {
            return Err(LimitsError("outbox_bytes must be at least max_frame_bytes"));
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
            self.max_handshakes,
        ];
        if nonzero.contains(&0) || self.idle_timeout_ms == 0 || self.hello_timeout_ms == 0 {
            return Err(LimitsError("every count and timeout must be > 0"));
        }
        let rates = [
            self.user_messages(),
            self.user_receipts(),
            self.user_joins(),
            self.user_presence(),
            self.tenant_messages(),
            self.tenant_connections(),
        ];
        if rates.iter().any(|r| !r.is_unlimited() && r.burst == 0) {
            return Err(LimitsError(
                "every rate limit that is on (*_per_sec > 0) needs a *_burst of at least 1",
            ));
        }
        Ok(())
    }

    pub fn user_messages(&self) -> Rate {
        Rate::new(self.user_messages_per_sec, self.user_messages_burst)
    }

    pub fn user_receipts(&self) -> Rate {
        Rate::new(self.user_receipts_per_sec, self.user_receipts_burst)
    }

    pub fn user_joins(&self) -> Rate {
        Rate::new(self.user_joins_per_sec, self.user_joins_burst)
    }

    pub fn user_presence(&self) -> Rate {
        Rate::new(self.user_presence_per_sec, self.user_presence_burst)
    }

    pub fn tenant_messages(&self) -> Rate {
        Rate::new(self.tenant_messages_per_sec, self.tenant_messages_burst)
    }

    pub fn tenant_connections(&self) -> Rate {
        Rate::new(
            self.tenant_connections_per_sec,
            self.tenant_connections_burst,
        )
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
    fn the_disk_reserve_cannot_be_turned_off() {
        for bytes in [0, 1, MIN_FREE_DISK_FLOOR - 1] {
            let l = Limits {
                min_free_disk_bytes: bytes,
                ..Limits::default()
            };
            let e = l.validate().unwrap_err();
            assert!(e.0.contains("min_free_disk_bytes"), "{e:?}");
        }
        Limits {
            min_free_disk_bytes: MIN_FREE_DISK_FLOOR,
            ..Limits::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn the_gate_cap_is_at_least_its_stall() {
        let l = Limits {
            foreground_gate_ms: 100,
            foreground_gate_max_ms: 99,
            ..Limits::default()
        };
        let e = l.validate().unwrap_err();
        assert!(e.0.contains("foreground_gate_max_ms"), "{e:?}");
        Limits {
            foreground_gate_max_ms: 100,
            ..l
        }
        .validate()
        .unwrap();
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

    #[test]
    fn a_rate_limit_is_off_at_zero_and_needs_a_burst_when_on() {
        let off = Limits {
            user_messages_per_sec: 0,
            user_messages_burst: 0,
            tenant_max_connections: 0,
            ..Limits::default()
        };
        off.validate().unwrap();
        assert!(off.user_messages().is_unlimited());
        let no_burst = Limits {
            user_joins_burst: 0,
            ..Limits::default()
        };
        assert!(no_burst.validate().is_err());
    }

    #[test]
    fn the_message_defaults_let_one_user_fill_a_connection() {
        // The loopback benchmark pushes ~10,000 msgs/s from one user through one connection;
        // the defaults must not throttle that (see the comment on the rate fields).
        let l = Limits::default();
        assert!(l.user_messages_per_sec >= 20_000);
        assert!(l.tenant_messages_per_sec > l.user_messages_per_sec);
        assert!(l.tenant_max_connections <= l.max_connections);
    }
}
