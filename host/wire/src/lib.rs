//! The wire protocol `switchboard/1`. See `docs/protocol.md` for the spec.
//!
//! Frames are flatbuffers (`schema/switchboard.fbs`, root `Frame`, file identifier `SB01`)
//! behind a 4-byte big-endian length prefix. This crate owns that encoding and nothing else:
//! it knows no QUIC, no sessions and no storage.
//!
//! - [`frame`]: the frames as plain Rust values ([`ClientFrame`], [`ServerFrame`]).
//! - [`encode_client`] / [`encode_server`]: a frame to one `Bytes`, prefix included.
//! - [`decode_client`] / [`decode_server`]: bytes to a frame. The flatbuffers verifier always
//!   runs first, bounded by [`DecodeLimits`]; no input can make decoding panic.
//! - [`FrameReader`] (sans-IO) and [`read_frame`] (async): split a stream into frames, refusing
//!   an over-long frame from its prefix alone.
//!
//! The flatbuffers code in `src/generated/` is produced by `cargo xtask gen-wire` and checked
//! in; `tests/generated_is_fresh.rs` fails when it no longer matches the schema.

mod codec;
mod error;
pub mod frame;
mod framing;
pub mod order;

// flatc's output: it uses `unsafe` behind the verifier and does not follow our lints.
#[allow(
    unsafe_code,
    clippy::all,
    unused,
    deprecated,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    missing_debug_implementations
)]
#[rustfmt::skip]
#[path = "generated/switchboard_generated.rs"]
mod generated;

pub use codec::{
    decode_client, decode_server, encode_client, encode_server, DecodeLimits,
    DEFAULT_MAX_STRING_BYTES,
};
pub use error::WireError;
pub use frame::*;
pub use framing::{read_frame, FrameReader, LEN_PREFIX};

/// The QUIC ALPN of this protocol version.
pub const ALPN: &[u8] = b"switchboard/1";

/// The flatbuffers file identifier every frame carries (bytes 4..8 of the flatbuffer).
pub const FILE_IDENTIFIER: &[u8; 4] = b"SB01";
