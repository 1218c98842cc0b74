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
//! - [`Plugin`]: a compiled, checked component. [`Plugin::self_test`] is the last upload
//!   check: it calls every hook with sample inputs on a throwaway instance and tenant,
//!   under the normal budgets, and names the hook that would fall back ([`SelfTestError`])
//!   or reports each hook's time and fuel ([`SelfTestReport`]).
//! - [`ArtifactCache`] and [`PolicyEngine::load_cached`]: compiled plugins kept on disk, so
//!   re-activating a version takes about a millisecond instead of a compile. An artifact is
//!   deserialized only after its HMAC-SHA256 (under a key only this node holds, bound to
//!   the plugin's version and the engine's configuration) checks out; anything else is
//!   deleted and recompiled ([`CacheOutcome::Rejected`]), never an error. The crate's only
//!   `unsafe` is that deserialization (`cache.rs`), and the same for the artifact of a compile
//!   in a child process (`compile.rs`).
//! - [`check_upload_size`] and [`PolicyEngine::check_upload_and_self_test`]: every check an upload goes
//!   through, shared by the node's upload and the workbench ([`UploadRefusal`]).
//! - [`Trial`]: a plugin run by hand (the workbench's `plugin run`): each call's answer,
//!   fuel, time and log lines.
//! - [`TenantPolicy`]: a plugin plus one tenant's id and configuration, with one method per
//!   hook. Every call returns a [`Decision`]: the plugin's answer, or [`Builtin`]'s when the
//!   call trapped, ran out of fuel or time, or returned something invalid (the instance is
//!   then discarded and counted in [`PolicyStats`]).
//!
//! Invariants (each has a test in `tests/`): a plugin cannot reach files, sockets, clocks,
//! randomness, the environment or another tenant; every call is bounded in instructions,
//! time, memory, stack and output; a failed call never fails the caller; no byte from the
//! artifact cache reaches wasmtime before its HMAC is verified, and a bad cache entry never
//! fails a load. The public API has no wasmtime types. See `docs/plugins.md` for the contract as tenants see it.

mod bindings;
mod cache;
pub mod compile;
mod convert;
mod engine;
mod host;
mod inert;
mod limits;
mod load;
mod runtime;
mod self_test;
mod shape;
mod stats;
mod tenant;
mod trial;
mod types;
mod upload;
mod version;
mod wasi;

pub use cache::{ArtifactCache, CacheError, CacheOutcome, CacheRejection};

pub use engine::{EngineError, PolicyEngine};
pub use host::{LogLevel, LogLine, TenantCounters};
pub use limits::{ChildCompile, PolicyLimits};
pub use load::LoadError;
pub use self_test::{HookReport, SelfTestError, SelfTestReport};
pub use shape::{Shape, ShapeLimits};
pub use stats::{
    FallbackCounts, HookStats, LastFailure, PolicyStatsSnapshot, MAX_FAILURE_REASON_BYTES,
};
pub use tenant::{Plugin, TenantPolicy};
pub use trial::{Trial, TrialCall};
pub use types::{
    Builtin, Decision, Delivery, FallbackReason, Flag, FlagContext, Hook, Lane, LoadInfo,
    MessageInfo, ReceiptAction, ReceiptInfo, ReceiptKind, Shedding, Source, Verdict,
    BODY_PREFIX_BYTES,
};
pub use upload::{check_upload_size, UploadRefusal};
