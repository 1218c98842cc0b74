//! Running a plugin by hand, outside a node (`switchboard plugin run`): the same calls a
//! tenant's policy makes, under the same budgets and with the same fallback, but the
//! plugin's log lines are handed back with each call instead of going to the node's log,
//! `now-ms` answers what the caller says, and each call reports the fuel it used.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::host::LogLine;
use crate::stats::PolicyStatsSnapshot;
use crate::tenant::{Called, Plugin, Slot, TenantPolicy};
use crate::types::{
    Builtin, Decision, Flag, FlagContext, LoadInfo, MessageInfo, ReceiptAction, ReceiptInfo,
    Shedding, Source, Verdict,
};

/// One tenant's policy for trial calls. Its instances are pooled and discarded exactly as a
/// node's [`TenantPolicy`] does, so a run of several events shows what state a plugin keeps
/// between calls (and what a failure throws away).
pub struct Trial {
    policy: TenantPolicy,
}

/// What one trial call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialCall<R> {
    /// The answer and whether the plugin gave it or the built-in default replaced it.
    pub decision: Decision<R>,
    /// Fuel the call used; `None` when it failed (then it used what it had, or never ran).
    pub fuel_used: Option<u64>,
    /// Wall time of the call, including making an instance when `fresh_instance`.
    pub elapsed: Duration,
    /// Whether the call had to make a new instance (the first call, and the one after a
    /// failure).
    pub fresh_instance: bool,
    /// What the plugin logged during the call (at most
    /// [`PolicyLimits::max_log_lines_per_call`](crate::PolicyLimits)).
    pub logs: Vec<LogLine>,
}

impl Trial {
    /// `config` is what `host.config-get` answers; `tenant` names the tenant (only used as
    /// the plugin's identity: nothing is shared with any node).
    pub fn new(plugin: &Plugin, tenant: &str, config: BTreeMap<String, String>) -> Self {
        Trial {
            policy: TenantPolicy::for_trial(plugin, tenant.to_string(), config),
        }
    }

    pub fn on_message(&self, message: &MessageInfo, now_ms: u64) -> TrialCall<Verdict> {
        self.call(
            now_ms,
            |slot| slot.on_message(message),
            || Builtin::on_message(message),
        )
    }

    pub fn on_receipt(&self, receipt: &ReceiptInfo, now_ms: u64) -> TrialCall<ReceiptAction> {
        self.call(
            now_ms,
            |slot| slot.on_receipt(receipt),
            || Builtin::on_receipt(receipt),
        )
    }

    pub fn evaluate_flags(&self, context: &FlagContext, now_ms: u64) -> TrialCall<Vec<Flag>> {
        self.call(
            now_ms,
            |slot| slot.evaluate_flags(context),
            || Builtin::evaluate_flags(context),
        )
    }

    pub fn on_load(&self, load: &LoadInfo, now_ms: u64) -> TrialCall<Shedding> {
        self.call(now_ms, |slot| slot.on_load(load), || Builtin::on_load(load))
    }

    /// The tenant's counters (`host.counter-add`) so far.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.policy.counters()
    }

    /// Statistics of the calls so far (instances made, peak memory, dropped log lines…).
    pub fn stats(&self) -> PolicyStatsSnapshot {
        self.policy.stats()
    }

    fn call<R>(
        &self,
        now_ms: u64,
        invoke: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, String>>,
        builtin: impl FnOnce() -> R,
    ) -> TrialCall<R> {
        let host = self.policy.trial_host();
        if let Some(host) = host {
            host.clock_ms.store(now_ms, Ordering::Relaxed);
        }
        let made_before = self.policy.stats().instantiations;
        let started = Instant::now();
        let result = self.policy.try_call(invoke);
        let elapsed = started.elapsed();
        let fresh_instance = self.policy.stats().instantiations > made_before;
        let logs = host
            .map(|h| std::mem::take(&mut *h.logs.lock()))
            .unwrap_or_default();
        let (decision, fuel_used) = match result {
            Ok(Called { value, fuel_used }) => (
                Decision {
                    value,
                    source: Source::Plugin,
                },
                Some(fuel_used),
            ),
            Err(reason) => (
                Decision {
                    value: builtin(),
                    source: Source::Fallback(reason),
                },
                None,
            ),
        };
        TrialCall {
            decision,
            fuel_used,
            elapsed,
            fresh_instance,
            logs,
        }
    }
}
