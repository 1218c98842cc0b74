//! Switchboard's pure domain: identifiers, protocol error codes, limits and client tokens.
//!
//! This crate knows nothing about QUIC, sled, flatbuffers or tokio, and never reads the clock:
//! every function that needs the time is handed `now`. That keeps it testable exhaustively and
//! lets every other crate share one vocabulary.

pub mod error;
pub mod id;
pub mod limits;
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

/// A receipt a member sends about a message of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// The message reached the member's device.
    Delivered,
    /// The member saw the message.
    Read,
}
