//! The control plane's typed errors. Each has a stable `code` (the problem type the HTTP API
//! returns) and an HTTP status.

use switchboard_edge::RequestError;
use switchboard_store::{SecretsError, StoreError};

/// Why a control-plane operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No or malformed credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that do not reach this resource.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The resource exists already, or the change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A field is malformed or out of range.
    #[error("{0}")]
    Invalid(String),
    /// The upload is larger than the tenant's or the node's plugin limit.
    #[error("{0}")]
    PluginTooLarge(String),
    /// The upload is not a valid `tenant-policy` component (not a component, wrong world,
    /// forbidden import, does not compile).
    #[error("{0}")]
    PluginRejected(String),
    /// The component loads but a hook failed its self-test call.
    #[error("{0}")]
    SelfTestFailed(String),
    /// A tenant quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The change was stored but this node did not apply it in time.
    #[error("{0}")]
    NotApplied(String),
    /// The store key came from the environment (`SWITCHBOARD_STORE_KEY`), so the node has
    /// no key file to keep a new key in: rotate it offline instead.
    #[error("{0}")]
    StoreKeyNotInFile(String),
    #[error("store: {0}")]
    Store(StoreError),
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// Stable machine-readable code (`type` of the problem details is built from it).
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Unauthenticated(_) => "unauthenticated",
            ControlError::Forbidden(_) => "forbidden",
            ControlError::NotFound(_) => "not-found",
            ControlError::Conflict(_) => "conflict",
            ControlError::Invalid(_) => "invalid-argument",
            ControlError::PluginTooLarge(_) => "plugin-too-large",
            ControlError::PluginRejected(_) => "plugin-rejected",
            ControlError::SelfTestFailed(_) => "plugin-self-test-failed",
            ControlError::QuotaExceeded(_) => "quota-exceeded",
            ControlError::NotApplied(_) => "not-applied",
            ControlError::StoreKeyNotInFile(_) => "store-key-not-in-file",
            ControlError::Store(_) => "store-unavailable",
            ControlError::Internal(_) => "internal",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::Unauthenticated(_) => 401,
            ControlError::Forbidden(_) => 403,
            ControlError::NotFound(_) => 404,
            ControlError::Conflict(_) | ControlError::StoreKeyNotInFile(_) => 409,
            ControlError::Invalid(_) => 400,
            ControlError::PluginTooLarge(_) => 413,
            ControlError::PluginRejected(_) | ControlError::SelfTestFailed(_) => 422,
            ControlError::QuotaExceeded(_) => 429,
            ControlError::NotApplied(_) | ControlError::Store(_) => 503,
            ControlError::Internal(_) => 500,
        }
    }

    /// A short human title for the code.
    pub fn title(&self) -> &'static str {
        match self {
            ControlError::Unauthenticated(_) => "Missing or invalid credentials",
            ControlError::Forbidden(_) => "Not allowed for these credentials",
            ControlError::NotFound(_) => "Not found",
            ControlError::Conflict(_) => "Conflicts with the current state",
            ControlError::Invalid(_) => "Invalid argument",
            ControlError::PluginTooLarge(_) => "Plugin too large",
            ControlError::PluginRejected(_) => "Plugin rejected",
            ControlError::SelfTestFailed(_) => "Plugin failed its self-test",
            ControlError::QuotaExceeded(_) => "Quota exceeded",
            ControlError::NotApplied(_) => "Change stored but not yet applied",
            ControlError::StoreKeyNotInFile(_) => "Store key not in a file",
            ControlError::Store(_) => "Store unavailable",
            ControlError::Internal(_) => "Internal error",
        }
    }
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> ControlError {
        match e {
            StoreError::Secrets(SecretsError::KeyNotInFile) => {
                ControlError::StoreKeyNotInFile(SecretsError::KeyNotInFile.to_string())
            }
            StoreError::Secrets(e @ SecretsError::NotSealed) => {
                ControlError::Conflict(e.to_string())
            }
            e => ControlError::Store(e),
        }
    }
}

impl From<RequestError> for ControlError {
    fn from(e: RequestError) -> Self {
        use switchboard_core::ErrorCode as C;
        match e.code {
            C::GroupNotFound => ControlError::NotFound(e.message),
            C::GroupFull => ControlError::Conflict(e.message),
            C::InvalidArgument => ControlError::Invalid(e.message),
            C::StoreUnavailable => ControlError::Store(StoreError::Io(e.message)),
            _ => ControlError::Internal(format!("{:?}: {}", e.code, e.message)),
        }
    }
}
