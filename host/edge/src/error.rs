//! A refused request as the client sees it: an error code, a message and retry advice.

use switchboard_core::{ErrorCode, GroupId, IdError};
use switchboard_store::StoreError;
use switchboard_wire::ErrorFrame;

/// A refusal of one request, sent to the client as an `Error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
    /// For retryable codes, how long the client should wait before retrying; 0 = no advice.
    pub retry_after_ms: u32,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }

    /// With the wait the client is told to observe before retrying (e.g. `RateLimited`).
    pub fn with_retry_after(mut self, retry_after_ms: u32) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }

    /// The `Error` frame answering `request_id`.
    pub fn frame(&self, request_id: u64) -> ErrorFrame {
        ErrorFrame {
            request_id,
            code: self.code.as_u16(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::GroupNotFound(g) => {
                Self::new(ErrorCode::GroupNotFound, format!("group {g} not found"))
            }
            StoreError::GroupFull { group, max } => Self::new(
                ErrorCode::GroupFull,
                format!("group {group} is full ({max} members)"),
            ),
            StoreError::GroupExists(g) => {
                Self::new(ErrorCode::InvalidArgument, format!("group {g} exists"))
            }
            StoreError::OutcomeUnknown(e) => {
                tracing::error!(error = %e, "store failure after a write");
                Self::new(
                    ErrorCode::OutcomeUnknown,
                    "storage failed after the write; it may be stored: resend with the same \
                     client_msg_id",
                )
                .with_retry_after(1_000)
            }
            e @ (StoreError::Io(_)
            | StoreError::Corrupt { .. }
            | StoreError::Secrets(_)
            | StoreError::Fenced(_)) => {
                tracing::error!(error = %e, "store failure");
                // The node reopens a failed store once its disk has room (`store_watch`).
                Self::new(
                    ErrorCode::StoreUnavailable,
                    "storage unavailable; not stored, retry",
                )
                .with_retry_after(1_000)
            }
        }
    }
}

fn bad_id(what: &str, e: IdError) -> RequestError {
    RequestError::new(ErrorCode::InvalidArgument, format!("{what}: {e}"))
}

/// Parses a group id from a frame field.
pub fn group_id(s: &str) -> Result<GroupId, RequestError> {
    GroupId::new(s).map_err(|e| bad_id("group", e))
}
