//! Protocol error codes: the stable, typed reasons a client is told why something failed.
//!
//! The numeric values are part of the wire protocol (`docs/protocol.md`); never renumber.

/// Why a request or a connection was refused. Stable numeric values on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// A frame failed verification (bad flatbuffer, bad length prefix, invalid field).
    MalformedFrame = 1,
    /// A frame's length prefix exceeds the connection's frame limit.
    FrameTooLarge = 2,
    /// The frame's body type is not one this server knows.
    UnknownFrameType = 3,
    /// A frame that is valid but not allowed here (e.g. a server frame sent by a client).
    UnexpectedFrame = 4,
    /// The first frame on a connection must be `Hello`.
    HelloRequired = 5,
    /// A stream the protocol does not use was opened.
    UnexpectedStream = 6,
    /// The token is malformed or its signature does not verify.
    InvalidToken = 10,
    /// The token's expiry has passed.
    TokenExpired = 11,
    /// The token names a tenant this node does not know.
    UnknownTenant = 12,
    /// The token's not-before time is still in the future.
    TokenNotYetValid = 13,
    /// The user is not a member of the group.
    NotMember = 20,
    /// The group does not exist in this tenant.
    GroupNotFound = 21,
    /// The group has reached its member limit.
    GroupFull = 22,
    /// The group is closed: membership is managed by the tenant.
    JoinRefused = 23,
    /// The message body exceeds the payload limit.
    PayloadTooLarge = 24,
    /// The tenant's policy refused the message; the message says why. Not stored.
    PolicyRejected = 26,
    /// A field has an invalid value (an id with characters outside the allowed set, an
    /// empty client message id, a receipt for a message that does not exist, ...).
    InvalidArgument = 25,
    /// Too many requests for a user's or tenant's rate limit; nothing was done. Retry after
    /// the given delay.
    RateLimited = 30,
    /// The node is overloaded; retry after the given delay.
    Overloaded = 31,
    /// The message could not be made durable; it was NOT stored. Safe to retry.
    StoreUnavailable = 32,
    /// A bug or unexpected failure on the node.
    Internal = 33,
    /// The node is shutting down; reconnect (to another node) and resume.
    ShuttingDown = 34,
    /// The connection did not read its deliveries fast enough and the node is configured to
    /// disconnect slow consumers (`disconnect_slow_consumers`); reconnect and resume.
    SlowConsumer = 35,
    /// The node wrote the message but could not make it durable (its flush failed): it may
    /// or may not be stored. Resend it with the same client message id; the answer is then
    /// an `Ack` at its original sequence number (`duplicate`) if it was, or a new one.
    OutcomeUnknown = 36,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and docs.
    pub const ALL: [ErrorCode; 24] = [
        Self::MalformedFrame,
        Self::FrameTooLarge,
        Self::UnknownFrameType,
        Self::UnexpectedFrame,
        Self::HelloRequired,
        Self::UnexpectedStream,
        Self::InvalidToken,
        Self::TokenExpired,
        Self::UnknownTenant,
        Self::TokenNotYetValid,
        Self::NotMember,
        Self::GroupNotFound,
        Self::GroupFull,
        Self::JoinRefused,
        Self::PayloadTooLarge,
        Self::InvalidArgument,
        Self::PolicyRejected,
        Self::RateLimited,
        Self::Overloaded,
        Self::StoreUnavailable,
        Self::Internal,
        Self::ShuttingDown,
        Self::SlowConsumer,
        Self::OutcomeUnknown,
    ];

    /// The wire value.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Parses a wire value; `None` for codes this build does not know.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u16() == v)
    }

    /// Whether the same request may succeed if retried later (possibly elsewhere).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::Overloaded
                | Self::StoreUnavailable
                | Self::ShuttingDown
                | Self::SlowConsumer
                | Self::OutcomeUnknown
        )
    }

    /// Whether the request may have taken effect although it failed: the client must resend
    /// it unchanged (same client message id) rather than treat it as refused.
    pub fn outcome_unknown(self) -> bool {
        self == Self::OutcomeUnknown
    }

    /// Whether the server closes the connection after sending this error, wherever it is
    /// sent. Besides these, every error answering `Hello` ends the connection (protocol §4),
    /// e.g. `RateLimited` for a tenant over its connection limits; on a request it does not.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            Self::HelloRequired
                | Self::InvalidToken
                | Self::TokenExpired
                | Self::UnknownTenant
                | Self::TokenNotYetValid
                | Self::FrameTooLarge
                | Self::MalformedFrame
                | Self::ShuttingDown
                | Self::SlowConsumer
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}({})", self.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_u16()), "duplicate code {c}");
            assert_eq!(ErrorCode::from_u16(c.as_u16()), Some(c));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(999), None);
    }
}
