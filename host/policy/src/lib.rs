//! Tenant policy plugins: the only crate in Switchboard that knows wasmtime.
//!
//! A tenant customises message priority, receipt handling, feature flags and load shedding
//! with a WebAssembly component implementing the world `switchboard:policy/tenant-policy`
//! (`wit/policy.wit`). This crate runs those components as untrusted code:
//!
//! - [`PolicyEngine`]: one wasmtime engine for all tenants, configured for untrusted guests
//!   (fuel, epoch-interruption deadlines, a pooling allocator with capped memory, tables
//!   and stack, unneeded proposals off, no WASI capabilities) and [`PolicyEngine::load`],
//!   which refuses bad uploads with a typed [`LoadError`].
//! - [`Plugin`]: a compiled, checked component.
//! - [`TenantPolicy`]: a plugin plus one tenant's id and configuration, with one method per
//!   hook. Every call returns a [`Decision`]: the plugin's answer, or [`Builtin`]'s when the
//!   call trapped, ran out of fuel or time, or returned something invalid (the instance is
//!   then discarded and counted in [`PolicyStats`]).
//!
//! Invariants (each has a test in `tests/`): a plugin cannot reach files, sockets, clocks,
//! randomness, the environment or another tenant; every call is bounded in instructions,
//! time, memory, stack and output; a failed call never fails the caller. The public API has
//! no wasmtime types. See `docs/plugins.md` for the contract as tenants see it.

mod bindings;
mod convert;
mod engine;
mod host;
mod limits;
mod load;
mod stats;
mod tenant;
mod types;
mod wasi;

pub use engine::{EngineError, PolicyEngine};
pub use host::TenantCounters;
pub use limits::PolicyLimits;
pub use load::LoadError;
pub use stats::{FallbackCounts, HookStats, PolicyStatsSnapshot};
pub use tenant::{Plugin, TenantPolicy};
pub use types::{
    Builtin, Decision, Delivery, FallbackReason, Flag, FlagContext, Hook, Lane, LoadInfo,
    MessageInfo, ReceiptAction, ReceiptInfo, ReceiptKind, Shedding, Source, Verdict,
    BODY_PREFIX_BYTES,
};
