//! The SDK's typed error, and how node refusals and QUIC close reasons map onto it.

use std::time::Duration;

use switchboard_core::ErrorCode;
use switchboard_wire::ErrorFrame;

/// Why a client call or connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node refused, with a protocol error code (`Error` frame or QUIC close code).
    #[error("node refused: {}: {message}", display_code(*.code, *.known))]
    Server {
        /// The code as sent; see [`ClientError::code`] for the typed one.
        code: u16,
        /// The code if this SDK knows it.
        known: Option<ErrorCode>,
        message: String,
        /// For retryable codes, how long the node asks to wait.
        retry_after: Option<Duration>,
    },
    /// The body is larger than the node's `max_payload_bytes` (checked before sending).
    #[error("message body is {len} bytes; the node accepts at most {max}")]
    PayloadTooLarge { len: usize, max: u32 },
    /// The node could not be reached or the connection failed below the protocol.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// TLS failed: the node's certificate is not the pinned one, or ALPN did not match.
    #[error("TLS: {0}")]
    Tls(String),
    /// The request did not complete within `request_timeout` (or the connection attempt
    /// within `connect_timeout`). A timed-out send may still have been accepted: resend it
    /// with [`Client::send_with_id`](crate::Client::send_with_id) and the same id to find out.
    #[error("timed out")]
    Timeout,
    /// The client is closed: [`Client::close`](crate::Client::close) was called, reconnecting
    /// gave up, or the node refused the session for good (see [`Event::Closed`](crate::Event::Closed)).
    #[error("client is closed")]
    Closed,
    /// The node said something this SDK does not understand.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The offline outbox holds as much as its bounds allow
    /// ([`OutboxLimits`](crate::OutboxLimits)); nothing was stored or sent.
    #[error("the outbox is full ({entries} sends, {bytes} bytes pending)")]
    OutboxFull { entries: usize, bytes: u64 },
    /// A local IO failure (socket, certificate file, outbox directory).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn display_code(code: u16, known: Option<ErrorCode>) -> String {
    match known {
        Some(c) => c.to_string(),
        None => format!("unknown code {code}"),
    }
}

impl ClientError {
    /// The protocol error code, when the failure has one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { known, .. } => *known,
            Self::PayloadTooLarge { .. } => Some(ErrorCode::PayloadTooLarge),
            _ => None,
        }
    }

    /// Whether the same call may succeed later (rate limits, overload, timeouts, network).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Server { known, .. } => known.is_some_and(ErrorCode::is_retryable),
            Self::Timeout | Self::Connect(_) | Self::Io(_) | Self::OutboxFull { .. } => true,
            _ => false,
        }
    }

    /// The node's suggested wait before retrying, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether this ends the client instead of triggering a reconnect: the node refused the
    /// session itself (bad or expired token, unknown tenant, an invalid `Hello`) or our
    /// frames. Those would fail identically on every reconnect.
    ///
    /// `HelloRequired` is not among them: this client always sends `Hello` first, so the node
    /// says it only when the `Hello` did not reach it within `hello_timeout_ms` — on a lossy
    /// path, a reconnect's `Hello` can be stuck that long (`lossy.rs` in the node's tests
    /// found it) and the next attempt usually gets through.
    pub(crate) fn is_terminal(&self) -> bool {
        match self {
            Self::Server { known: Some(c), .. } => {
                (c.is_fatal() && !c.is_retryable() && *c != ErrorCode::HelloRequired)
                    || *c == ErrorCode::InvalidArgument
            }
            _ => false,
        }
    }

    pub(crate) fn from_frame(e: &ErrorFrame) -> Self {
        Self::Server {
            code: e.code,
            known: e.error_code(),
            message: e.message.clone(),
            retry_after: (e.retry_after_ms > 0)
                .then(|| Duration::from_millis(u64::from(e.retry_after_ms))),
        }
    }

    /// Why a QUIC connection ended, typed: application close codes are protocol error codes.
    pub(crate) fn from_connection(e: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as C;
        match e {
            C::ApplicationClosed(close) => {
                let raw = close.error_code.into_inner();
                let code = u16::try_from(raw).unwrap_or(u16::MAX);
                Self::Server {
                    code,
                    known: ErrorCode::from_u16(code),
                    message: String::from_utf8_lossy(&close.reason).into_owned(),
                    retry_after: None,
                }
            }
            C::TransportError(t) if is_crypto(u64::from(t.code)) => Self::Tls(t.to_string()),
            C::ConnectionClosed(c) if is_crypto(u64::from(c.error_code)) => {
                Self::Tls(c.to_string())
            }
            C::LocallyClosed => Self::Closed,
            other => Self::Connect(other.to_string()),
        }
    }

    /// A copy for fanning one failure out to several waiters (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Server {
                code,
                known,
                message,
                retry_after,
            } => Self::Server {
                code: *code,
                known: *known,
                message: message.clone(),
                retry_after: *retry_after,
            },
            Self::PayloadTooLarge { len, max } => Self::PayloadTooLarge {
                len: *len,
                max: *max,
            },
            Self::Connect(s) => Self::Connect(s.clone()),
            Self::Tls(s) => Self::Tls(s.clone()),
            Self::Timeout => Self::Timeout,
            Self::Closed => Self::Closed,
            Self::Protocol(s) => Self::Protocol(s.clone()),
            Self::OutboxFull { entries, bytes } => Self::OutboxFull {
                entries: *entries,
                bytes: *bytes,
            },
            Self::Io(e) => Self::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
fn is_crypto(code: u64) -> bool {
    (0x100..=0x1ff).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> ClientError {
        ClientError::from_frame(&ErrorFrame::new(0, code, "x"))
    }

    #[test]
    fn terminal_means_fatal_and_not_retryable() {
        let terminal: Vec<ErrorCode> = ErrorCode::ALL
            .into_iter()
            .filter(|c| server(*c).is_terminal())
            .collect();
        assert!(terminal.contains(&ErrorCode::InvalidToken));
        assert!(terminal.contains(&ErrorCode::TokenExpired));
        assert!(terminal.contains(&ErrorCode::UnknownTenant));
        // A node shutting down is fatal for the connection but a reason to reconnect.
        assert!(!terminal.contains(&ErrorCode::ShuttingDown));
        // So is a `Hello` that a lossy path delayed past the node's deadline.
        assert!(!terminal.contains(&ErrorCode::HelloRequired));
        assert!(!terminal.contains(&ErrorCode::NotMember));
        // Codes from newer nodes are never terminal.
        let unknown = ClientError::Server {
            code: 999,
            known: None,
            message: String::new(),
            retry_after: None,
        };
        assert!(!unknown.is_terminal());
        assert!(!ClientError::Connect("x".into()).is_terminal());
    }

    #[test]
    fn frame_mapping_keeps_code_and_retry_after() {
        let mut f = ErrorFrame::new(7, ErrorCode::RateLimited, "slow down");
        f.retry_after_ms = 1500;
        let e = ClientError::from_frame(&f);
        assert_eq!(e.code(), Some(ErrorCode::RateLimited));
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        assert!(e.is_retryable());
        assert!(e.to_string().contains("RateLimited(30)"), "{e}");
        let f = ErrorFrame {
            request_id: 1,
            code: 4242,
            message: "new".into(),
            retry_after_ms: 0,
        };
        let e = ClientError::from_frame(&f);
        assert_eq!(e.code(), None);
        assert_eq!(e.retry_after(), None);
        assert!(e.to_string().contains("unknown code 4242"), "{e}");
    }

    #[test]
    fn close_codes_are_protocol_codes() {
        let close = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(u32::from(ErrorCode::InvalidToken.as_u16())),
            reason: bytes::Bytes::from_static(b"bad signature"),
        });
        let e = ClientError::from_connection(&close);
        assert_eq!(e.code(), Some(ErrorCode::InvalidToken));
        assert!(e.is_terminal());
        assert!(e.to_string().contains("bad signature"));
        let e = ClientError::from_connection(&quinn::ConnectionError::TimedOut);
        assert!(matches!(e, ClientError::Connect(_)));
        assert!(!e.is_terminal());
    }

    #[test]
    fn duplicate_preserves_meaning() {
        let e = ClientError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        let d = e.duplicate();
        assert!(matches!(&d, ClientError::Io(io) if io.kind() == std::io::ErrorKind::NotFound));
        assert_eq!(d.to_string(), e.to_string());
        assert_eq!(
            server(ErrorCode::TokenExpired).duplicate().code(),
            Some(ErrorCode::TokenExpired)
        );
    }
}
