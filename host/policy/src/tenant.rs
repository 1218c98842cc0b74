//! A loaded plugin, and one tenant's policy: the plugin plus the tenant's configuration,
//! with a small pool of instances, budgets per call and the fallback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use wasmtime::Store;

use crate::bindings::policy::{TenantPolicy as PolicyBindings, TenantPolicyPre};
use crate::convert;
use crate::host::{InstanceState, MemoryCapExceeded, TenantCounters, TenantShared};
use crate::runtime::EngineInner;
use crate::stats::{PolicyStats, PolicyStatsSnapshot};
use crate::types::{
    Builtin, Decision, FallbackReason, Flag, FlagContext, Hook, LoadInfo, MessageInfo,
    ReceiptAction, ReceiptInfo, Shedding, Source, Verdict,
};
use crate::version::Version;
use crate::wasi::PluginExited;

/// A compiled plugin that passed every load check. Immutable and cheap to clone; any number
/// of [`TenantPolicy`] values can share it.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    engine: Arc<EngineInner>,
    pre: TenantPolicyPre<InstanceState>,
    /// The plugin's version: the hex SHA-256 of the component it was loaded from.
    version: Version,
    size: usize,
    imports: Vec<String>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("size", &self.inner.size)
            .field("imports", &self.inner.imports)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn new(
        engine: Arc<EngineInner>,
        pre: TenantPolicyPre<InstanceState>,
        version: Version,
        size: usize,
        imports: Vec<String>,
    ) -> Self {
        Plugin {
            inner: Arc::new(PluginInner {
                engine,
                pre,
                version,
                size,
                imports,
            }),
        }
    }

    /// The plugin's version: the lowercase hex SHA-256 of the component it was loaded from.
    pub fn version(&self) -> &str {
        self.inner.version.as_str()
    }

    pub(crate) fn version_id(&self) -> &Version {
        &self.inner.version
    }

    /// The compiled component (for the artifact cache).
    pub(crate) fn component(&self) -> &wasmtime::component::Component {
        self.inner.pre.instance_pre().component()
    }

    /// Size of the uploaded component, in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// The interfaces the plugin imports (all of them allowed, or it would not have loaded).
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }

    pub(crate) fn engine(&self) -> &EngineInner {
        &self.inner.engine
    }

    pub(crate) fn check_instantiate(&self) -> Result<(), InstantiateError> {
        let shared = Arc::new(TenantShared {
            tenant: Arc::from("(load check)"),
            config: BTreeMap::new(),
            counters: TenantCounters::new(),
            stats: PolicyStats::default(),
            limits: self.inner.engine.limits.clone(),
            trial: None,
        });
        instantiate(self, &shared).map(drop)
    }
}

/// One instance and its store. Lives in a tenant's idle pool between calls.
pub(crate) struct Slot {
    store: Store<InstanceState>,
    bindings: PolicyBindings,
}

/// The hook calls themselves: lower the input, call, lift and check the output. `Err` is a
/// failed call (trap, budget), `Ok(Err(why))` output outside the contract.
impl Slot {
    pub(crate) fn on_message(
        &mut self,
        message: &MessageInfo,
    ) -> wasmtime::Result<Result<Verdict, String>> {
        let verdict = self
            .bindings
            .switchboard_policy_policy()
            .call_on_message(&mut self.store, convert::message_info(message))?;
        Ok(convert::verdict(verdict, &self.store.data().shared.limits))
    }

    pub(crate) fn on_receipt(
        &mut self,
        receipt: &ReceiptInfo,
    ) -> wasmtime::Result<Result<ReceiptAction, String>> {
        let action = self
            .bindings
            .switchboard_policy_policy()
            .call_on_receipt(&mut self.store, convert::receipt_info(receipt))?;
        Ok(Ok(convert::receipt_action(action)))
    }

    pub(crate) fn evaluate_flags(
        &mut self,
        context: &FlagContext,
    ) -> wasmtime::Result<Result<Vec<Flag>, String>> {
        let flags = self
            .bindings
            .switchboard_policy_policy()
            .call_evaluate_flags(&mut self.store, convert::flag_context(context))?;
        Ok(convert::flags(flags, &self.store.data().shared.limits))
    }

    pub(crate) fn on_load(
        &mut self,
        load: &LoadInfo,
    ) -> wasmtime::Result<Result<Shedding, String>> {
        let shedding = self
            .bindings
            .switchboard_policy_policy()
            .call_on_load(&mut self.store, convert::load_info(load))?;
        Ok(Ok(convert::shedding(shedding)))
    }
}

/// A successful hook call: its answer and the fuel it used.
pub(crate) struct Called<R> {
    pub value: R,
    pub fuel_used: u64,
}

/// Why an instance could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstantiateError {
    /// Instantiation itself failed: the pool is exhausted, the initial memory or tables are
    /// over their caps, or start code trapped.
    #[error("{0}")]
    Start(String),
    /// The instance's exports do not have the policy world's types.
    #[error("{0}")]
    Types(String),
}

fn instantiate(plugin: &Plugin, shared: &Arc<TenantShared>) -> Result<Slot, InstantiateError> {
    let engine = &plugin.inner.engine;
    // Start functions are guest code: the deadline must run.
    let _running = engine.ticker.running();
    let limits = &engine.limits;
    let mut store = Store::new(&engine.engine, InstanceState::new(shared.clone()));
    store.limiter(|state| &mut state.limiter);
    store.set_hostcall_fuel(limits.max_transfer_bytes);
    store.set_max_component_handles(limits.max_handles);
    // Instantiation runs guest code (start functions): same budget as a call.
    prime(&mut store);
    let instance = plugin
        .inner
        .pre
        .instance_pre()
        .instantiate(&mut store)
        .map_err(|e| InstantiateError::Start(format!("{e:#}")))?;
    let bindings = PolicyBindings::new(&mut store, &instance)
        .map_err(|e| InstantiateError::Types(format!("{e:#}")))?;
    shared.stats.record_instantiation();
    Ok(Slot { store, bindings })
}

/// Refills the budgets for one call.
fn prime(store: &mut Store<InstanceState>) {
    let limits = store.data().shared.limits.clone();
    // Fuel is enabled on every engine this crate builds, so this cannot fail.
    let _ = store.set_fuel(limits.fuel_per_call);
    store.set_epoch_deadline(limits.deadline_ticks());
    store.data_mut().log_budget = limits.max_log_lines_per_call;
    store.data_mut().stderr.clear();
}

/// A trap's reason with what the guest wrote to stderr during the call (a panic's message),
/// one line, cut to `max` bytes.
fn with_guest_output(reason: FallbackReason, stderr: &[u8], max: usize) -> FallbackReason {
    let FallbackReason::Trap(why) = reason else {
        return reason;
    };
    let text = String::from_utf8_lossy(stderr);
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if said.is_empty() {
        return FallbackReason::Trap(why);
    }
    let joined = said.join(" / ");
    let said = crate::host::truncate_to_boundary(&joined, max);
    FallbackReason::Trap(format!("{why}; the plugin wrote: {said}"))
}

/// Maps a failed call to why it failed.
fn classify(error: wasmtime::Error) -> FallbackReason {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::OutOfFuel => FallbackReason::OutOfFuel,
            wasmtime::Trap::Interrupt => FallbackReason::Deadline,
            other => FallbackReason::Trap(other.to_string()),
        };
    }
    if let Some(e) = error.downcast_ref::<MemoryCapExceeded>() {
        return FallbackReason::Trap(e.to_string());
    }
    if let Some(e) = error.downcast_ref::<PluginExited>() {
        return FallbackReason::Trap(e.to_string());
    }
    // Everything else comes from lifting what the guest handed over: more data than one
    // transfer may carry, out-of-bounds pointers, invalid UTF-8 or discriminants.
    FallbackReason::InvalidOutput(format!("{error:#}"))
}

/// One tenant's policy: an immutable pairing of a [`Plugin`] with the tenant's id and
/// configuration, ready to call. `Send + Sync`; share it as `Arc<TenantPolicy>`.
///
/// Hot swap replaces the `Arc<TenantPolicy>` the node holds for the tenant; a call in
/// flight finishes on the value it started with, and the old instances go away with it.
///
/// Calls are synchronous and bounded by [`PolicyLimits::deadline`](crate::PolicyLimits)
/// (plus one epoch tick). Nothing in a call touches an async runtime, so calling from a
/// tokio task is safe; since a hostile plugin can hold the thread for the whole deadline,
/// latency-sensitive callers wrap calls in `tokio::task::block_in_place` (multi-threaded
/// runtime) or run them on a dedicated thread. The calling thread needs about 1 MiB of
/// stack beyond `max_wasm_stack`.
pub struct TenantPolicy {
    plugin: Plugin,
    shared: Arc<TenantShared>,
    idle: Mutex<Vec<Slot>>,
}

impl std::fmt::Debug for TenantPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPolicy")
            .field("tenant", &self.shared.tenant)
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl TenantPolicy {
    /// `config` is what the plugin reads with `host.config-get`. No instance is made until
    /// the first call (or [`TenantPolicy::prewarm`]).
    pub fn new(
        plugin: &Plugin,
        tenant: impl Into<String>,
        config: BTreeMap<String, String>,
    ) -> Self {
        Self::with_counters(plugin, tenant, config, TenantCounters::new())
    }

    /// Like [`TenantPolicy::new`], continuing the tenant's existing counters (for a swap).
    pub fn with_counters(
        plugin: &Plugin,
        tenant: impl Into<String>,
        config: BTreeMap<String, String>,
        counters: TenantCounters,
    ) -> Self {
        Self::build(plugin, tenant.into(), config, counters, None)
    }

    /// A policy whose host is a trial's (`trial.rs`): logs kept, clock set by the caller.
    pub(crate) fn for_trial(
        plugin: &Plugin,
        tenant: String,
        config: BTreeMap<String, String>,
    ) -> Self {
        let trial = crate::host::TrialHost::default();
        Self::build(plugin, tenant, config, TenantCounters::new(), Some(trial))
    }

    fn build(
        plugin: &Plugin,
        tenant: String,
        config: BTreeMap<String, String>,
        counters: TenantCounters,
        trial: Option<crate::host::TrialHost>,
    ) -> Self {
        TenantPolicy {
            shared: Arc::new(TenantShared {
                tenant: Arc::from(tenant),
                config,
                counters,
                stats: PolicyStats::default(),
                limits: plugin.inner.engine.limits.clone(),
                trial,
            }),
            plugin: plugin.clone(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn tenant(&self) -> &str {
        &self.shared.tenant
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    pub fn config(&self) -> &BTreeMap<String, String> {
        &self.shared.config
    }

    /// Statistics of this policy's calls.
    pub fn stats(&self) -> PolicyStatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// The tenant's counters (`host.counter-add`), by name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.shared.counters.snapshot()
    }

    /// The latest call that fell back, with its reason (for a trap, with the panic message
    /// the plugin wrote), if any.
    pub fn last_failure(&self) -> Option<crate::LastFailure> {
        self.shared.stats.last_failure()
    }

    /// The counters themselves, to carry over to the tenant's next policy.
    pub fn counters_handle(&self) -> TenantCounters {
        self.shared.counters.clone()
    }

    /// The most fuel one successful call has used so far (one atomic load: cheap enough to
    /// read after every call, unlike [`TenantPolicy::stats`]).
    pub fn fuel_used_max(&self) -> u64 {
        self.shared.stats.fuel_used_max()
    }

    /// Instances kept for reuse right now.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().len()
    }

    /// Makes an idle instance ahead of the first call (e.g. before swapping this policy in),
    /// so that call does not pay for instantiation.
    pub fn prewarm(&self) -> Result<(), FallbackReason> {
        let slot = instantiate(&self.plugin, &self.shared)
            .map_err(|e| FallbackReason::Unavailable(e.to_string()))?;
        self.release(slot);
        Ok(())
    }

    /// Once per message, before it is stored.
    pub fn on_message(&self, message: &MessageInfo) -> Decision<Verdict> {
        self.call(
            Hook::OnMessage,
            |slot| slot.on_message(message),
            || Builtin::on_message(message),
        )
    }

    /// Once per delivered/read receipt.
    pub fn on_receipt(&self, receipt: &ReceiptInfo) -> Decision<ReceiptAction> {
        self.call(
            Hook::OnReceipt,
            |slot| slot.on_receipt(receipt),
            || Builtin::on_receipt(receipt),
        )
    }

    /// When a client connects and when the tenant's flags change.
    pub fn evaluate_flags(&self, context: &FlagContext) -> Decision<Vec<Flag>> {
        self.call(
            Hook::EvaluateFlags,
            |slot| slot.evaluate_flags(context),
            || Builtin::evaluate_flags(context),
        )
    }

    /// When the node's load level changes.
    pub fn on_load(&self, load: &LoadInfo) -> Decision<Shedding> {
        self.call(
            Hook::OnLoad,
            |slot| slot.on_load(load),
            || Builtin::on_load(load),
        )
    }

    /// Runs one hook call and answers with the built-in default when it fails; records the
    /// call in the statistics.
    fn call<R>(
        &self,
        hook: Hook,
        invoke: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, String>>,
        builtin: impl FnOnce() -> R,
    ) -> Decision<R> {
        let started = Instant::now();
        let decision = match self.try_call(invoke) {
            Ok(done) => Decision {
                value: done.value,
                source: Source::Plugin,
            },
            Err(reason) => {
                // Debug, not warn: a plugin failing on every message must not flood the
                // node's log. The statistics count every fallback.
                tracing::debug!(
                    tenant = &*self.shared.tenant,
                    hook = hook.wit_name(),
                    %reason,
                    "policy plugin call fell back to the built-in default"
                );
                Decision {
                    value: builtin(),
                    source: Source::Fallback(reason),
                }
            }
        };
        self.shared
            .stats
            .record_call(hook, started.elapsed(), decision.fallback_reason());
        decision
    }

    /// Runs one hook call on an instance (reused or fresh) under a refilled budget; on any
    /// failure discards the instance and says why. The self-test calls this directly, so it
    /// exercises exactly what a tenant's calls do.
    pub(crate) fn try_call<R>(
        &self,
        invoke: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<Called<R>, FallbackReason> {
        let stats = &self.shared.stats;
        // From here guest code may run (start functions, then the hook): keep the epoch,
        // and so the deadline, moving.
        let _running = self.plugin.inner.engine.ticker.running();
        let reused = self.idle.lock().pop();
        let mut slot = match reused {
            Some(slot) => slot,
            None => instantiate(&self.plugin, &self.shared)
                .map_err(|e| FallbackReason::Unavailable(e.to_string()))?,
        };
        prime(&mut slot.store);
        let result = invoke(&mut slot);
        stats.record_memory(slot.store.data().limiter.memory_peak);
        match result {
            Ok(Ok(value)) => {
                let left = slot.store.get_fuel().unwrap_or(0);
                let fuel_used = self.shared.limits.fuel_per_call.saturating_sub(left);
                stats.record_fuel_used(fuel_used);
                self.release(slot);
                Ok(Called { value, fuel_used })
            }
            Ok(Err(invalid)) => {
                stats.record_discard();
                Err(FallbackReason::InvalidOutput(invalid))
            }
            Err(error) => {
                stats.record_discard();
                let limit = self.shared.limits.max_log_line_bytes;
                Err(with_guest_output(
                    classify(error),
                    &slot.store.data().stderr,
                    limit,
                ))
            }
        }
    }

    /// The trial host of a policy made by [`TenantPolicy::for_trial`].
    pub(crate) fn trial_host(&self) -> Option<&crate::host::TrialHost> {
        self.shared.trial.as_ref()
    }

    fn release(&self, slot: Slot) {
        let mut idle = self.idle.lock();
        if idle.len() < self.shared.limits.idle_instances_per_tenant {
            idle.push(slot);
        } else {
            drop(idle);
            drop(slot);
        }
    }
}
