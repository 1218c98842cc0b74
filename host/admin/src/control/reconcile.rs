//! Applying the config store to the hub. The store is the source of truth; this task makes
//! the node serve what it says: at start-up for everything, then for each change the store's
//! watch reports. Applying is idempotent (a binding is applied once per revision), so the API
//! may also apply its own change directly to answer without waiting for the watch.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use switchboard_core::TenantId;
use switchboard_edge::{CanarySet, PolicySet, VersionedPolicy};
use switchboard_policy::TenantPolicy;
use switchboard_store::{ConfigChange, VersionConfig};
use tokio::sync::{watch, Notify};

use super::{Control, ControlError};

pub(crate) async fn start(c: &Arc<Control>) -> Result<(), ControlError> {
    // Subscribe before the initial pass, so a change made in between is seen (twice at
    // worst, which applying tolerates).
    let mut changes = c.config.watch()?;
    for t in c.config.bound_tenants()? {
        if let Err(e) = apply_binding(c, &t).await {
            // The node still starts: the tenant gets the built-in policy and status shows the
            // binding unapplied. Refusing to start would take every tenant down for one.
            tracing::error!(tenant = %t, error = %e, "policy binding not applied at start-up");
        }
    }
    for t in c.store.tenants()? {
        apply_flags(c, &t.id)?;
    }
    c.hub.set_load_override(c.config.degradation_override()?);

    // The store's watch is a blocking iterator: a thread of its own, which must keep reading
    // (sled blocks writers once a subscriber lags 1024 events behind). So it never waits on
    // the apply task: it only marks what changed in a set (bounded by tenants × kinds, since
    // repeated changes coalesce) and wakes the task, which re-reads the store.
    let pending: Arc<Mutex<HashSet<ConfigChange>>> = Arc::default();
    let wake = Arc::new(Notify::new());
    let (thread_pending, thread_wake) = (pending.clone(), wake.clone());
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            while let Some(change) = changes.next_change() {
                thread_pending.lock().insert(change);
                thread_wake.notify_one();
            }
        })
        .map_err(|e| ControlError::Internal(format!("config watch thread: {e}")))?;
    let weak: Weak<Control> = Arc::downgrade(c);
    tokio::spawn(async move {
        loop {
            wake.notified().await;
            let batch: Vec<ConfigChange> = pending.lock().drain().collect();
            let Some(c) = weak.upgrade() else { break };
            for change in batch {
                if let Err(e) = apply_change(&c, &change).await {
                    tracing::error!(?change, error = %e, "config change not applied");
                }
            }
        }
    });
    Ok(())
}

async fn apply_change(c: &Arc<Control>, change: &ConfigChange) -> Result<(), ControlError> {
    match change {
        ConfigChange::Binding(t) => apply_binding(c, t).await,
        ConfigChange::Flags(t) => apply_flags(c, t),
        ConfigChange::Degradation => {
            c.hub.set_load_override(c.config.degradation_override()?);
            Ok(())
        }
        // Read on use; nothing held in memory to refresh.
        ConfigChange::Quotas(_) | ConfigChange::ApiKeys(_) | ConfigChange::PluginVersions(_) => {
            Ok(())
        }
    }
}

fn apply_flags(c: &Control, tenant: &TenantId) -> Result<(), ControlError> {
    let rules = c.config.flags(tenant)?;
    c.hub.set_flag_rules(tenant, rules);
    Ok(())
}

/// Makes the hub serve the tenant's stored binding, unless this node already serves that
/// revision. A version whose bytes cannot be loaded leaves the tenant on what it served.
pub(crate) async fn apply_binding(c: &Control, tenant: &TenantId) -> Result<(), ControlError> {
    let _one_at_a_time = c.apply_lock.lock().await;
    let b = c.config.binding(tenant)?;
    if c.applied_revision(tenant) >= b.revision && b.revision > 0 {
        return Ok(());
    }
    let current = c.bound.get(tenant).map(|e| e.clone()).unwrap_or_default();
    let active = match &b.active {
        Some(vc) => Some(policy_for(c, tenant, vc, &current).await?),
        None => None,
    };
    let canary = match &b.canary {
        Some(canary) => Some((
            canary,
            policy_for(c, tenant, &canary.version, &current).await?,
        )),
        None => None,
    };
    let set = PolicySet {
        active: active.as_ref().map(|(vc, p)| VersionedPolicy {
            version: vc.version.clone(),
            policy: p.clone(),
        }),
        canary: canary.as_ref().map(|(canary, (vc, p))| CanarySet {
            policy: VersionedPolicy {
                version: vc.version.clone(),
                policy: p.clone(),
            },
            percent: canary.percent,
            groups: canary.groups.clone(),
        }),
    };
    c.hub.set_policies(tenant, set);
    let mut bound = Bound::default();
    bound.versions.extend(active);
    bound.versions.extend(canary.map(|(_, v)| v));
    c.bound.insert(tenant.clone(), bound);
    tracing::info!(
        %tenant,
        revision = b.revision,
        active = b.active.as_ref().map(|v| v.version.as_str()).unwrap_or("built-in"),
        canary = b.canary.as_ref().map(|v| v.version.version.as_str()).unwrap_or("none"),
        "policy binding applied"
    );
    set_applied(c, tenant, b.revision);
    Ok(())
}

/// The policies a tenant is serving, with the version and config each was made for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bound {
    pub versions: Vec<(VersionConfig, Arc<TenantPolicy>)>,
}

/// A ready policy for `vc`: the one already serving it (so its counters, stats and warm
/// instances carry on), or a new one, prewarmed off the runtime so the first message it
/// handles does not pay for instantiation.
async fn policy_for(
    c: &Control,
    tenant: &TenantId,
    vc: &VersionConfig,
    current: &Bound,
) -> Result<(VersionConfig, Arc<TenantPolicy>), ControlError> {
    if let Some((_, p)) = current.versions.iter().find(|(v, _)| v == vc) {
        return Ok((vc.clone(), p.clone()));
    }
    let plugin = c.stored_plugin(tenant, &vc.version).await?;
    // A version's counters (`host.counter-add`) are its own, so a canary's can be told from
    // the active version's; they survive a rebinding of the same version (a new config, a
    // canary promoted), not a swap to another version.
    let counters = current
        .versions
        .iter()
        .find(|(v, _)| v.version == vc.version)
        .map(|(_, p)| p.counters_handle())
        .unwrap_or_default();
    let config: BTreeMap<String, String> = vc.config.clone();
    let name = tenant.to_string();
    let policy = tokio::task::spawn_blocking(move || {
        let p = TenantPolicy::with_counters(&plugin, name, config, counters);
        let warmed = p.prewarm();
        (p, warmed)
    })
    .await
    .map_err(|e| ControlError::Internal(format!("prewarm task: {e}")))?;
    if let Err(reason) = policy.1 {
        // Not fatal: calls fall back (and count) until instances can be made.
        tracing::warn!(%tenant, version = %vc.version, ?reason, "prewarm failed");
    }
    Ok((vc.clone(), Arc::new(policy.0)))
}

fn revision_cell(c: &Control, tenant: &TenantId) -> watch::Sender<u64> {
    c.applied
        .entry(tenant.clone())
        .or_insert_with(|| watch::channel(0).0)
        .clone()
}

fn set_applied(c: &Control, tenant: &TenantId, revision: u64) {
    revision_cell(c, tenant).send_if_modified(|v| {
        let raise = revision > *v;
        if raise {
            *v = revision;
        }
        raise
    });
}

impl Control {
    /// The binding revision this node serves for `tenant` (0: none applied).
    pub fn applied_revision(&self, tenant: &TenantId) -> u64 {
        self.applied.get(tenant).map(|s| *s.borrow()).unwrap_or(0)
    }

    /// A watch of the binding revision this node serves for `tenant`: it changes every time
    /// a binding is applied, whoever changed it (an operator, or the automatic rollback).
    pub fn applied_revisions(&self, tenant: &TenantId) -> watch::Receiver<u64> {
        revision_cell(self, tenant).subscribe()
    }

    /// Applies the tenant's binding and waits until this node serves `revision` (or later).
    pub(crate) async fn wait_applied(
        &self,
        tenant: &TenantId,
        revision: u64,
    ) -> Result<(), ControlError> {
        apply_binding(self, tenant).await?;
        let mut rx = revision_cell(self, tenant).subscribe();
        let applied = tokio::time::timeout(self.settings.apply_timeout, async {
            rx.wait_for(|v| *v >= revision).await.is_ok()
        })
        .await;
        match applied {
            Ok(true) => Ok(()),
            _ => Err(ControlError::NotApplied(format!(
                "binding revision {revision} is stored but this node has not applied it yet"
            ))),
        }
    }
}
