//! Why bytes from the wire could not be turned into a frame.

use switchboard_core::ErrorCode;

/// A framing or decoding failure. Every variant maps to a protocol [`ErrorCode`] the peer is
/// told before the connection is closed (see [`WireError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The length prefix announces more than the frame limit; nothing of the body was read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    /// The bytes are not a valid `switchboard/1` frame (verifier failure, wrong file identifier,
    /// missing required field, over-long list or string, unknown enum value, ...).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame's body type is not one this build knows (a newer peer?).
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A valid frame for the other direction, e.g. a server frame sent by a client.
    #[error("unexpected {0} frame in this direction")]
    UnexpectedFrame(&'static str),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Reading the stream failed.
    #[error("i/o error while reading a frame: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The protocol error code the peer is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) | Self::Truncated | Self::Io(_) => ErrorCode::MalformedFrame,
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
            Self::UnexpectedFrame(_) => ErrorCode::UnexpectedFrame,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let check = |e: WireError, code: ErrorCode| assert_eq!(e.code(), code, "{e}");
        check(
            WireError::FrameTooLarge { len: 9, max: 8 },
            ErrorCode::FrameTooLarge,
        );
        check(WireError::Malformed("x".into()), ErrorCode::MalformedFrame);
        check(
            WireError::UnknownFrameType(200),
            ErrorCode::UnknownFrameType,
        );
        check(
            WireError::UnexpectedFrame("Welcome"),
            ErrorCode::UnexpectedFrame,
        );
        check(WireError::Truncated, ErrorCode::MalformedFrame);
        check(
            std::io::Error::other("reset").into(),
            ErrorCode::MalformedFrame,
        );
    }
}
