//! The wire protocol `switchboard/1`. See `docs/protocol.md`.
//!
//! Frames are flatbuffers (`schema/switchboard.fbs`) behind a 4-byte big-endian length prefix.
//! Decoding always runs the flatbuffers verifier with limits before touching a field.

pub mod frame;

pub use frame::*;

/// The QUIC ALPN of this protocol version.
pub const ALPN: &[u8] = b"switchboard/1";
