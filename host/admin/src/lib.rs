//! Switchboard's control plane and its HTTP API.
//!
//! - [`control`]: the operations (tenants, credentials, tokens, groups, plugin upload,
//!   activate / canary / promote / rollback, flags, degradation), authorization, the task that
//!   applies config-store changes to the hub, and the automatic-rollback monitor.
//! - [`http`]: the admin and tenant HTTP API over [`control::Control`], with its OpenAPI
//!   document and errors as RFC 9457 problem details.
//! - [`client`]: a blocking client for that API (what `switchboard ctl` and the tests use).
//!
//! Invariant: the HTTP layer decides nothing. Every check (who may do what, what is valid)
//! is in `control`, so the CLI, the API and the tests see the same rules.

pub mod client;
pub mod control;
pub mod http;

pub use control::{AutoRollback, Control, ControlConfig, ControlError};
