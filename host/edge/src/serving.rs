//! Which policy version serves which event: a tenant's active version, an optional canary
//! (a stable share of users, or named groups), each with its own circuit breaker and
//! handled/failed counters for the automatic-rollback monitor.
//!
//! A tenant's [`Serving`] is an immutable value swapped whole ([`Policies::bind`]).
//! An event picks its version once, holding an `Arc`, so it is handled entirely by one version
//! even if a swap lands mid-call (the swap invariant in ARCHITECTURE.md).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use switchboard_core::{rollout, ErrorCode, GroupId, Lane, ReceiptKind, TenantId, UserId};
use switchboard_policy::{self as policy, PolicyStatsSnapshot, TenantPolicy};
use switchboard_store::FlagRule;

use crate::breaker::Breaker;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::RequestError;

/// Every tenant's bound policy versions and feature-flag rules: the policy gate the hub and
/// the receipt worker ask. A tenant without a bound version gets [`policy::Builtin`].
pub(crate) struct Policies {
    /// Swapping a value here is a hot swap: an event holds the `Arc` of the version it
    /// picked until it is handled.
    serving: DashMap<TenantId, Arc<Serving>>,
    /// Bounds the heavy plugin calls running at once (see [`ServingVersion::call`]).
    heavy_calls: HeavyCalls,
    /// Tenants' feature-flag rules from the config store, applied over the plugin's flags.
    flag_rules: DashMap<TenantId, Arc<BTreeMap<String, FlagRule>>>,
    metrics: Arc<Metrics>,
}

/// What a message needs from its tenant's policy, besides its body.
pub(crate) struct MessageFacts<'a> {
    pub(crate) tenant: &'a TenantId,
    pub(crate) sender: &'a UserId,
    pub(crate) group: &'a GroupId,
    pub(crate) group_size: u32,
    pub(crate) connected_members: u32,
}

impl Policies {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            serving: DashMap::new(),
            heavy_calls: HeavyCalls::for_this_machine(),
            flag_rules: DashMap::new(),
            metrics,
        }
    }

    /// The tenant's active policy plugin, if one is bound.
    pub(crate) fn active(&self, tenant: &TenantId) -> Option<Arc<TenantPolicy>> {
        self.serving
            .get(tenant)
            .and_then(|s| s.active.as_ref().map(|v| v.policy.clone()))
    }

    /// Binds a tenant's versions (both `None`: the built-in policy). Takes effect for the
    /// next event; events in flight finish on the version they picked.
    pub(crate) fn bind(&self, tenant: &TenantId, set: PolicySet) {
        if set.active.is_none() && set.canary.is_none() {
            self.serving.remove(tenant);
        } else {
            let current = self.serving.get(tenant).map(|s| s.clone());
            let next = Serving::next(tenant, current.as_deref(), set);
            self.serving.insert(tenant.clone(), Arc::new(next));
        }
    }

    /// What the tenant serves now, with live figures per version.
    pub(crate) fn state(&self, tenant: &TenantId) -> ServingState {
        match self.serving.get(tenant) {
            Some(s) => ServingState {
                active: s.active.as_ref().map(|v| v.snapshot()),
                canary: s.canary.as_ref().map(|c| c.version.snapshot()),
            },
            None => ServingState::default(),
        }
    }

    /// Tenants with a bound version.
    pub(crate) fn tenants(&self) -> Vec<TenantId> {
        self.serving.iter().map(|e| e.key().clone()).collect()
    }

    /// Replaces the tenant's feature-flag rules.
    pub(crate) fn set_flag_rules(&self, tenant: &TenantId, rules: BTreeMap<String, FlagRule>) {
        if rules.is_empty() {
            self.flag_rules.remove(tenant);
        } else {
            self.flag_rules.insert(tenant.clone(), Arc::new(rules));
        }
    }

    /// What the tenant's active version sheds at `level` (`None` without a bound version).
    pub(crate) fn on_load(&self, tenant: &TenantId, level: u8) -> Option<policy::Shedding> {
        let v = self.serving.get(tenant)?.active.clone()?;
        let load = policy::LoadInfo {
            level,
            tenant_message_rate: 0,
            tenant_connections: 0,
        };
        Some(self.count_fallback(tenant, &v, v.policy.on_load(&load)))
    }

    /// The version that handles a per-message or per-receipt event of `user`, unless none is
    /// bound or that version's circuit breaker is open (then the caller uses the built-in
    /// default; the skip counts as a failure of the version).
    fn hot_policy(
        &self,
        tenant: &TenantId,
        user: &UserId,
        group: &GroupId,
    ) -> Option<Arc<ServingVersion>> {
        let serving = self.serving.get(tenant)?.clone();
        let v = serving.pick(user, Some(group))?.clone();
        v.handled.fetch_add(1, Ordering::Relaxed);
        if v.breaker.is_open(now_ms()) {
            v.failed.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .policy_breaker_skips
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(v)
    }

    /// Like [`Policies::count_fallback`], also feeding the version's circuit breaker and
    /// counters.
    fn guarded<T>(&self, tenant: &TenantId, v: &ServingVersion, d: policy::Decision<T>) -> T {
        let failed = matches!(d.source, policy::Source::Fallback(_));
        if failed {
            v.failed.fetch_add(1, Ordering::Relaxed);
        }
        if v.breaker.record(failed, now_ms()) {
            tracing::warn!(
                %tenant,
                version = %v.version,
                "policy plugin keeps failing: built-in defaults for {} ms",
                Breaker::OPEN_MS
            );
        }
        self.count_fallback(tenant, v, d)
    }

    /// Counts a fallback and logs it with the tenant, the version and the reason (a trap's
    /// includes the plugin's panic message): at most one line per version every
    /// [`FAILURE_LOG_INTERVAL_MS`], the next one saying how many were not logged.
    fn count_fallback<T>(
        &self,
        tenant: &TenantId,
        v: &ServingVersion,
        d: policy::Decision<T>,
    ) -> T {
        if let policy::Source::Fallback(reason) = &d.source {
            self.metrics
                .policy_fallbacks
                .fetch_add(1, Ordering::Relaxed);
            if let Some(unlogged) = v.failure_log.admit(now_ms()) {
                tracing::warn!(
                    %tenant,
                    version = %v.version,
                    %reason,
                    unlogged,
                    "policy plugin call fell back to the built-in default"
                );
            }
        }
        d.value
    }

    /// The tenant's verdict on a message: its lane and whether to notify offline members,
    /// or a refusal with the policy's reason. One call per message, whatever the group's
    /// size.
    pub(crate) fn message_verdict(
        &self,
        m: MessageFacts<'_>,
        body: &[u8],
    ) -> Result<(Lane, bool), RequestError> {
        let Some(v) = self.hot_policy(m.tenant, m.sender, m.group) else {
            // The built-in default, without building its input.
            return Ok((Lane::Normal, false));
        };
        let info = policy::MessageInfo {
            group: m.group.to_string(),
            sender: m.sender.to_string(),
            body_size: body.len() as u32,
            body_prefix: body[..body.len().min(policy::BODY_PREFIX_BYTES)].to_vec(),
            group_size: m.group_size,
            connected_members: m.connected_members,
        };
        match self.guarded(
            m.tenant,
            &v,
            v.call(&self.heavy_calls, |p| p.on_message(&info)),
        ) {
            policy::Verdict::Accept(d) => {
                if d.notify_offline {
                    self.metrics
                        .notify_offline_requests
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok((d.lane, d.notify_offline))
            }
            policy::Verdict::Reject(reason) => {
                self.metrics
                    .policy_rejections
                    .fetch_add(1, Ordering::Relaxed);
                Err(RequestError::new(ErrorCode::PolicyRejected, reason))
            }
        }
    }

    /// What the tenant's policy does with one receipt (the receipt worker asks).
    pub(crate) fn receipt_action(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        group_size: u32,
        seq: u64,
        reader: &UserId,
        kind: ReceiptKind,
    ) -> policy::ReceiptAction {
        match self.hot_policy(tenant, reader, group) {
            Some(v) => {
                let info = policy::ReceiptInfo {
                    group: group.to_string(),
                    seq,
                    reader: reader.to_string(),
                    kind,
                    group_size,
                };
                self.guarded(tenant, &v, v.policy.on_receipt(&info))
            }
            None => policy::ReceiptAction::Forward,
        }
    }

    /// The user's feature flags: the plugin's, with the tenant's flag rules applied over them.
    pub(crate) fn flags(&self, tenant: &TenantId, user: &UserId) -> Vec<policy::Flag> {
        let serving = self.serving.get(tenant).map(|s| s.clone());
        let flags = match serving.as_deref().and_then(|s| s.pick(user, None)) {
            Some(v) => self.count_fallback(
                tenant,
                v,
                v.call(&self.heavy_calls, |p| {
                    p.evaluate_flags(&policy::FlagContext {
                        user: user.to_string(),
                        group: None,
                    })
                }),
            ),
            None => Vec::new(),
        };
        match self.flag_rules.get(tenant).map(|r| r.clone()) {
            Some(rules) => apply_flag_rules(user, flags, &rules),
            None => flags,
        }
    }
}

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
    /// Paces the log lines of this version's failed calls.
    failure_log: LogPacer,
}

/// At most one log line per version of a failing plugin in this many milliseconds: a
/// plugin failing on every message must not flood the node's log (the statistics and
/// `last_failure` in the policy status still see every failure).
pub const FAILURE_LOG_INTERVAL_MS: u64 = 10_000;

/// Lets one event through per interval and counts the others, lock-free.
#[derive(Debug)]
pub(crate) struct LogPacer {
    interval_ms: u64,
    /// When the last line was let through (0: never).
    last_ms: AtomicU64,
    /// Events held back since.
    held: AtomicU64,
}

impl LogPacer {
    pub(crate) fn new(interval_ms: u64) -> Self {
        LogPacer {
            interval_ms,
            last_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last line)` if an event at `now_ms` may be logged.
    pub(crate) fn admit(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
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
            failure_log: LogPacer::new(FAILURE_LOG_INTERVAL_MS),
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
            policy: self.policy.clone(),
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
    /// The version's policy, for what is not worth copying on every snapshot (the
    /// automatic-rollback monitor takes one per version every `check_every`): its counters
    /// (`TenantPolicy::counters`) and latest failure (`TenantPolicy::last_failure`).
    pub policy: Arc<TenantPolicy>,
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
    fn the_failure_log_lets_one_line_through_per_interval_and_counts_the_rest() {
        let pacer = LogPacer::new(10_000);
        assert_eq!(pacer.admit(1_000), Some(0), "the first line is logged");
        for t in [1_001, 5_000, 10_999] {
            assert_eq!(pacer.admit(t), None, "held back at {t}");
        }
        assert_eq!(
            pacer.admit(11_000),
            Some(3),
            "the next says how many were not"
        );
        assert_eq!(pacer.admit(11_001), None);
        assert_eq!(pacer.admit(30_000), Some(1));
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
