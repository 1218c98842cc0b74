//! Switchboard's pure domain: identifiers, protocol error codes, limits, rate-limit buckets
//! and client tokens.
//!
//! This crate knows nothing about QUIC, sled, flatbuffers or tokio, and never reads the clock:
//! every function that needs the time is handed `now`. That keeps it testable exhaustively and
//! lets every other crate share one vocabulary.

pub mod error;
pub mod id;
pub mod limits;
pub mod rate;
pub mod rollout;
pub mod token;

pub use error::ErrorCode;
pub use id::{GroupId, IdError, TenantId, UserId};
pub use limits::Limits;

/// Whether a client's app is in the foreground (the user is looking at it) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PresenceState {
    /// The app is on screen: deliver first.
    #[default]
    Foreground,
    /// The app is running but not on screen.
    Background,
}

/// A delivery lane, chosen per message by the tenant's policy. Higher lanes are sent first;
/// order within a group is never changed by lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Lane {
    /// Urgent: sent before everything else queued for a connection.
    High,
    /// The default.
    #[default]
    Normal,
    /// Bulk (e.g. large media): sent after everything else.
    Low,
}

impl Lane {
    /// Every lane, most urgent first.
    pub const ALL: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Low];

    /// 0 for the most urgent lane; sorting by rank sends urgent first.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The lane of a rank, `None` if out of range.
    pub fn from_rank(rank: u8) -> Option<Lane> {
        Self::ALL.get(usize::from(rank)).copied()
    }
}

/// A receipt a member sends about a message of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// The message reached the member's device.
    Delivered,
    /// The member saw the message.
    Read,
}
