//! Which policy version serves which event: a tenant's active version, an optional canary
//! (a stable share of users, or named groups), each with its own circuit breaker and
//! handled/failed counters for the automatic-rollback monitor.
//!
//! A tenant's [`Serving`] is an immutable value swapped whole ([`crate::Hub::set_policies`]).
//! An event picks its version once, holding an `Arc`, so it is handled entirely by one version
//! even if a swap lands mid-call (the swap invariant in ARCHITECTURE.md).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use switchboard_core::{rollout, GroupId, TenantId, UserId};
use switchboard_policy::{self as policy, PolicyStatsSnapshot, TenantPolicy};
use switchboard_store::FlagRule;

use crate::breaker::Breaker;

/// A policy with the version label it was bound under (for status and metrics).
#[derive(Debug, Clone)]
pub struct VersionedPolicy {
    pub version: String,
    pub policy: Arc<TenantPolicy>,
}

/// A canary to bind: `percent` of users by stable hash, plus every message to `groups`.
#[derive(Debug, Clone)]
pub struct CanarySet {
    pub policy: VersionedPolicy,
    pub percent: u8,
    pub groups: Vec<GroupId>,
}

/// What to bind for a tenant. Both `None`: the built-in policy.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub active: Option<VersionedPolicy>,
    pub canary: Option<CanarySet>,
}

/// A counting semaphore for heavy plugin calls, which run on threads of their own (see
/// [`ServingVersion::call`]): at most `max` at once, the others wait (blocking their own
/// thread, never a worker). Waiting does not count against a call's deadline, which starts
/// when the call does.
#[derive(Debug)]
pub(crate) struct HeavyCalls {
    running: parking_lot::Mutex<usize>,
    freed: parking_lot::Condvar,
    max: usize,
}

impl HeavyCalls {
    pub fn new(max: usize) -> Self {
        HeavyCalls {
            running: parking_lot::Mutex::new(0),
            freed: parking_lot::Condvar::new(),
            max: max.max(1),
        }
    }

    /// All cores but one (at least one).
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.saturating_sub(1))
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Permit<'a>(&'a HeavyCalls);
        impl Drop for Permit<'_> {
            fn drop(&mut self) {
                *self.0.running.lock() -= 1;
                self.0.freed.notify_one();
            }
        }
        let mut running = self.running.lock();
        while *running >= self.max {
            self.freed.wait(&mut running);
        }
        *running += 1;
        drop(running);
        let _permit = Permit(self);
        f()
    }
}

/// One bound version with its breaker and counters.
#[derive(Debug)]
pub(crate) struct ServingVersion {
    pub version: String,
    pub policy: Arc<TenantPolicy>,
    pub breaker: Breaker,
    /// Events routed to this version.
    pub handled: AtomicU64,
    /// Of those, answered by the built-in default (plugin failed, or its breaker was open).
    pub failed: AtomicU64,
    /// A call of this version once used more than [`HEAVY_CALL_FUEL`] or ran out of fuel or
    /// time: its calls from the event loop run in `block_in_place` from then on (see
    /// [`ServingVersion::call`]).
    heavy: AtomicBool,
}

/// A call using more fuel than this marks its version heavy: a tenth of the default budget,
/// about 100 µs of wasm. The reference plugins use under 5,000 per call. Fuel, not time:
/// it does not depend on how busy the machine is, so a light plugin preempted mid-call is
/// not mistaken for a heavy one.
pub(crate) const HEAVY_CALL_FUEL: u64 = 1_000_000;

impl ServingVersion {
    fn new(v: VersionedPolicy) -> Arc<Self> {
        Arc::new(ServingVersion {
            version: v.version,
            policy: v.policy,
            breaker: Breaker::default(),
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            heavy: AtomicBool::new(false),
        })
    }

    /// Runs a plugin call of this version from the node's event loop.
    ///
    /// A call is synchronous and may hold its thread for its whole budget (fuel, up to the
    /// deadline). Run inline on a tokio worker, a tenant whose plugin spends its budget on
    /// every message holds that worker — and every connection, commit and push task queued
    /// on it — for as long, once per message, and a connection with many sends buffered
    /// does so many times in one poll: with two workers, eight such tenants raised another
    /// tenant's send → delivery p50 from 0.6 ms to 65 ms and its p99 from 1 ms to 150 ms
    /// (`tests/plugin_isolation.rs`). So once a version
    /// has been seen to be heavy, its calls leave the worker (`block_in_place`: the worker
    /// hands its other tasks to a fresh thread first) and wait for one of `heavy`'s
    /// permits, so heavy plugins of all tenants together run on at most `cores - 1` threads
    /// and the event loop keeps a core. Light versions stay inline, where a call costs
    /// microseconds and a thread hand-off would cost more than the call.
    ///
    /// Only on a multi-threaded runtime (`block_in_place` is not allowed on a
    /// current-thread one, as in many tests); elsewhere every call is inline.
    pub fn call<T>(
        &self,
        heavy: &HeavyCalls,
        f: impl FnOnce(&TenantPolicy) -> policy::Decision<T>,
    ) -> policy::Decision<T> {
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_worker && self.heavy.load(Ordering::Relaxed) {
            return tokio::task::block_in_place(|| heavy.run(|| f(&self.policy)));
        }
        let decision = f(&self.policy);
        let is_heavy = self.policy.fuel_used_max() > HEAVY_CALL_FUEL
            || matches!(
                decision.source,
                policy::Source::Fallback(
                    policy::FallbackReason::OutOfFuel | policy::FallbackReason::Deadline
                )
            );
        if is_heavy && !self.heavy.swap(true, Ordering::Relaxed) {
            tracing::info!(
                version = %self.version,
                "heavy policy plugin: its calls now run off the event loop's workers"
            );
        }
        decision
    }

    pub fn snapshot(&self) -> ServingSnapshot {
        ServingSnapshot {
            version: self.version.clone(),
            handled: self.handled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            stats: self.policy.stats(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct CanaryServing {
    pub version: Arc<ServingVersion>,
    pub percent: u8,
    pub groups: HashSet<GroupId>,
    /// Salt of the cohort hash: per tenant, so each tenant's canary users are their own.
    pub salt: String,
}

/// A tenant's bound versions.
#[derive(Debug, Default)]
pub(crate) struct Serving {
    pub active: Option<Arc<ServingVersion>>,
    pub canary: Option<CanaryServing>,
}

impl Serving {
    /// The new serving state for `set`. A version whose policy is the very same `Arc` as one
    /// serving now keeps its breaker and counters (re-applying a binding is not a reset).
    pub fn next(tenant: &TenantId, current: Option<&Serving>, set: PolicySet) -> Serving {
        let reuse = |v: VersionedPolicy| -> Arc<ServingVersion> {
            let existing = current
                .into_iter()
                .flat_map(|c| c.active.iter().chain(c.canary.as_ref().map(|c| &c.version)));
            for e in existing {
                if Arc::ptr_eq(&e.policy, &v.policy) && e.version == v.version {
                    return e.clone();
                }
            }
            ServingVersion::new(v)
        };
        Serving {
            active: set.active.map(reuse),
            canary: set.canary.map(|c| CanaryServing {
                version: reuse(c.policy),
                percent: c.percent.min(100),
                groups: c.groups.into_iter().collect(),
                salt: format!("{tenant}:canary"),
            }),
        }
    }

    /// The version that handles an event of `user` (in `group`, if it concerns one).
    pub fn pick(&self, user: &UserId, group: Option<&GroupId>) -> Option<&Arc<ServingVersion>> {
        if let Some(c) = &self.canary {
            let by_group = group.is_some_and(|g| c.groups.contains(g));
            if by_group || rollout::in_rollout(c.percent, &c.salt, user.as_str()) {
                return Some(&c.version);
            }
        }
        self.active.as_ref()
    }
}

/// Live figures of one bound version.
#[derive(Debug, Clone)]
pub struct ServingSnapshot {
    pub version: String,
    pub handled: u64,
    pub failed: u64,
    pub stats: PolicyStatsSnapshot,
}

/// What a tenant is serving now, with live figures.
#[derive(Debug, Clone, Default)]
pub struct ServingState {
    pub active: Option<ServingSnapshot>,
    pub canary: Option<ServingSnapshot>,
}

/// Applies the tenant's flag rules over the flags its plugin evaluated: a rule replaces the
/// plugin's flag of the same name (or adds it).
pub(crate) fn apply_flag_rules(
    user: &UserId,
    mut flags: Vec<switchboard_policy::Flag>,
    rules: &BTreeMap<String, FlagRule>,
) -> Vec<switchboard_policy::Flag> {
    if rules.is_empty() {
        return flags;
    }
    flags.retain(|f| !rules.contains_key(&f.name));
    for (name, rule) in rules {
        let enabled = rule.enabled
            && (rule.users.iter().any(|u| u == user)
                || rollout::in_rollout(rule.percent, name, user.as_str()));
        flags.push(switchboard_policy::Flag {
            name: name.clone(),
            enabled,
        });
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn rule(enabled: bool, percent: u8, users: &[&str]) -> FlagRule {
        FlagRule {
            enabled,
            percent,
            users: users.iter().map(|u| user(u)).collect(),
        }
    }

    #[test]
    fn flag_rules_override_the_plugin_and_honour_users_and_percent() {
        let plugin = vec![
            switchboard_policy::Flag {
                name: "a".into(),
                enabled: true,
            },
            switchboard_policy::Flag {
                name: "b".into(),
                enabled: true,
            },
        ];
        let mut rules = BTreeMap::new();
        rules.insert("a".to_owned(), rule(false, 100, &["alice"])); // kill switch
        rules.insert("c".to_owned(), rule(true, 0, &["alice"])); // named users only
        let out = apply_flag_rules(&user("alice"), plugin.clone(), &rules);
        let get = |n: &str| out.iter().find(|f| f.name == n).map(|f| f.enabled);
        assert_eq!(get("a"), Some(false), "off is off for everyone");
        assert_eq!(get("b"), Some(true), "untouched plugin flag");
        assert_eq!(get("c"), Some(true), "listed user");
        let out = apply_flag_rules(&user("bob"), plugin, &rules);
        assert_eq!(
            out.iter().find(|f| f.name == "c").map(|f| f.enabled),
            Some(false)
        );
    }

    #[test]
    fn flag_percent_follows_the_stable_bucket() {
        let mut rules = BTreeMap::new();
        rules.insert("beta".to_owned(), rule(true, 10, &[]));
        // bucket("beta", "alice") = 7, bucket("beta", "bob") = 52 (frozen vectors).
        let on = |u: &str| apply_flag_rules(&user(u), Vec::new(), &rules)[0].enabled;
        assert!(on("alice"));
        assert!(!on("bob"));
    }
}
