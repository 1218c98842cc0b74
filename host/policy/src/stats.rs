//! Per-tenant counters of what the plugin did: lock-free on the call path, read as a
//! snapshot for metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::types::{FallbackReason, Hook};

#[derive(Debug, Default)]
struct HookCells {
    calls: AtomicU64,
    fallbacks: AtomicU64,
    latency_sum_ns: AtomicU64,
    latency_max_ns: AtomicU64,
}

/// Live statistics of one [`TenantPolicy`](crate::TenantPolicy). Updated with relaxed
/// atomics; [`PolicyStats::snapshot`] reads them.
#[derive(Debug, Default)]
pub(crate) struct PolicyStats {
    hooks: [HookCells; 4],
    traps: AtomicU64,
    out_of_fuel: AtomicU64,
    deadline: AtomicU64,
    invalid_output: AtomicU64,
    unavailable: AtomicU64,
    instantiations: AtomicU64,
    discarded_instances: AtomicU64,
    fuel_used_max: AtomicU64,
    memory_peak_bytes: AtomicU64,
    log_lines_dropped: AtomicU64,
    counter_updates_dropped: AtomicU64,
    /// The latest failed call: one value, its reason bounded ([`MAX_FAILURE_REASON_BYTES`]).
    last_failure: Mutex<Option<LastFailure>>,
}

/// Bytes kept of a failure's reason in [`LastFailure`]: a trap's reason carries the guest's
/// stderr (at most `max_log_line_bytes`) after wasmtime's own words.
pub const MAX_FAILURE_REASON_BYTES: usize = 2048;

/// The latest call of a policy that fell back: which hook, why (a trap's reason includes
/// the panic message the plugin wrote), and when (ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFailure {
    pub hook: Hook,
    pub reason: String,
    pub at_ms: u64,
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl PolicyStats {
    pub(crate) fn record_call(
        &self,
        hook: Hook,
        latency: Duration,
        fallback: Option<&FallbackReason>,
    ) {
        let cells = &self.hooks[hook.index()];
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        cells.calls.fetch_add(1, Relaxed);
        cells.latency_sum_ns.fetch_add(ns, Relaxed);
        cells.latency_max_ns.fetch_max(ns, Relaxed);
        if let Some(reason) = fallback {
            cells.fallbacks.fetch_add(1, Relaxed);
            let why = reason.to_string();
            let at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            *self.last_failure.lock() = Some(LastFailure {
                hook,
                reason: cut(&why, MAX_FAILURE_REASON_BYTES).to_owned(),
                at_ms,
            });
            let counter = match reason {
                FallbackReason::Trap(_) => &self.traps,
                FallbackReason::OutOfFuel => &self.out_of_fuel,
                FallbackReason::Deadline => &self.deadline,
                FallbackReason::InvalidOutput(_) => &self.invalid_output,
                FallbackReason::Unavailable(_) => &self.unavailable,
            };
            counter.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn last_failure(&self) -> Option<LastFailure> {
        self.last_failure.lock().clone()
    }

    pub(crate) fn record_instantiation(&self) {
        self.instantiations.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_discard(&self) {
        self.discarded_instances.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_fuel_used(&self, fuel: u64) {
        self.fuel_used_max.fetch_max(fuel, Relaxed);
    }

    pub(crate) fn fuel_used_max(&self) -> u64 {
        self.fuel_used_max.load(Relaxed)
    }

    pub(crate) fn record_memory(&self, bytes: usize) {
        self.memory_peak_bytes
            .fetch_max(u64::try_from(bytes).unwrap_or(u64::MAX), Relaxed);
    }

    pub(crate) fn record_log_line_dropped(&self) {
        self.log_lines_dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn record_counter_update_dropped(&self) {
        self.counter_updates_dropped.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> PolicyStatsSnapshot {
        let hook = |h: Hook| {
            let c = &self.hooks[h.index()];
            HookStats {
                calls: c.calls.load(Relaxed),
                fallbacks: c.fallbacks.load(Relaxed),
                latency_sum: Duration::from_nanos(c.latency_sum_ns.load(Relaxed)),
                latency_max: Duration::from_nanos(c.latency_max_ns.load(Relaxed)),
            }
        };
        PolicyStatsSnapshot {
            on_message: hook(Hook::OnMessage),
            on_receipt: hook(Hook::OnReceipt),
            evaluate_flags: hook(Hook::EvaluateFlags),
            on_load: hook(Hook::OnLoad),
            fallbacks: FallbackCounts {
                traps: self.traps.load(Relaxed),
                out_of_fuel: self.out_of_fuel.load(Relaxed),
                deadline: self.deadline.load(Relaxed),
                invalid_output: self.invalid_output.load(Relaxed),
                unavailable: self.unavailable.load(Relaxed),
            },
            instantiations: self.instantiations.load(Relaxed),
            discarded_instances: self.discarded_instances.load(Relaxed),
            fuel_used_max: self.fuel_used_max.load(Relaxed),
            memory_peak_bytes: self.memory_peak_bytes.load(Relaxed),
            log_lines_dropped: self.log_lines_dropped.load(Relaxed),
            counter_updates_dropped: self.counter_updates_dropped.load(Relaxed),
        }
    }
}

/// Calls of one hook. Latency is measured around the whole call, including taking an
/// instance (or instantiating one) and converting the result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookStats {
    pub calls: u64,
    /// Calls answered by the built-in default instead of the plugin.
    pub fallbacks: u64,
    pub latency_sum: Duration,
    pub latency_max: Duration,
}

impl HookStats {
    pub fn latency_mean(&self) -> Option<Duration> {
        (self.calls > 0).then(|| self.latency_sum / u32::try_from(self.calls).unwrap_or(u32::MAX))
    }
}

/// Fallbacks by reason, over all hooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FallbackCounts {
    pub traps: u64,
    pub out_of_fuel: u64,
    pub deadline: u64,
    pub invalid_output: u64,
    pub unavailable: u64,
}

impl FallbackCounts {
    pub fn total(&self) -> u64 {
        self.traps + self.out_of_fuel + self.deadline + self.invalid_output + self.unavailable
    }
}

/// A point-in-time copy of [`PolicyStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyStatsSnapshot {
    pub on_message: HookStats,
    pub on_receipt: HookStats,
    pub evaluate_flags: HookStats,
    pub on_load: HookStats,
    pub fallbacks: FallbackCounts,
    /// Fresh instances made (the first call, and the call after every discard).
    pub instantiations: u64,
    /// Instances thrown away after a failed call.
    pub discarded_instances: u64,
    /// Most fuel one successful call used.
    pub fuel_used_max: u64,
    /// Largest linear memory any instance reached, in bytes.
    pub memory_peak_bytes: u64,
    pub log_lines_dropped: u64,
    pub counter_updates_dropped: u64,
}

impl PolicyStatsSnapshot {
    pub fn hook(&self, hook: Hook) -> &HookStats {
        match hook {
            Hook::OnMessage => &self.on_message,
            Hook::OnReceipt => &self.on_receipt,
            Hook::EvaluateFlags => &self.evaluate_flags,
            Hook::OnLoad => &self.on_load,
        }
    }

    pub fn calls(&self) -> u64 {
        Hook::ALL.iter().map(|&h| self.hook(h).calls).sum()
    }
}
