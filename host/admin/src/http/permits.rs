//! Fair permits: a node-wide bound on some kind of work, and a smaller bound per tenant, so
//! no one tenant can hold every permit and stop the others. Refused, never queued: the
//! caller answers 429 `busy` and the client retries.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// A node-wide count of permits with a per-tenant share.
#[derive(Debug)]
pub(crate) struct FairPermits {
    /// What the permits are for, in refusals ("plugin uploads being received").
    what: &'static str,
    total: usize,
    per_tenant: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    in_use: usize,
    /// Tenants holding at least one permit (entries at zero are removed, so the map is
    /// bounded by `total`).
    by_tenant: HashMap<String, usize>,
}

/// Why a permit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("this tenant already has {held} {what}; at most {per_tenant} per tenant")]
    Tenant {
        what: &'static str,
        held: usize,
        per_tenant: usize,
    },
    #[error("{total} {what} on this node (all in use)")]
    Node { what: &'static str, total: usize },
}

/// One permit, given back when dropped.
#[derive(Debug)]
pub(crate) struct FairPermit {
    owner: Arc<FairPermits>,
    tenant: String,
}

impl FairPermits {
    pub(crate) fn new(what: &'static str, total: usize, per_tenant: usize) -> Arc<FairPermits> {
        Arc::new(FairPermits {
            what,
            total,
            per_tenant: per_tenant.min(total),
            state: Mutex::new(State::default()),
        })
    }

    /// A permit for `tenant`, if both the tenant's share and the node's total allow one.
    pub(crate) fn try_acquire(self: &Arc<Self>, tenant: &str) -> Result<FairPermit, Refused> {
        let mut state = self.state.lock();
        let held = state.by_tenant.get(tenant).copied().unwrap_or(0);
        if held >= self.per_tenant {
            return Err(Refused::Tenant {
                what: self.what,
                held,
                per_tenant: self.per_tenant,
            });
        }
        if state.in_use >= self.total {
            return Err(Refused::Node {
                what: self.what,
                total: self.total,
            });
        }
        state.in_use += 1;
        *state.by_tenant.entry(tenant.to_owned()).or_insert(0) += 1;
        Ok(FairPermit {
            owner: self.clone(),
            tenant: tenant.to_owned(),
        })
    }

    /// Permits held now (for tests and metrics).
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.state.lock().in_use
    }
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        let mut state = self.owner.state.lock();
        state.in_use = state.in_use.saturating_sub(1);
        if let Some(held) = state.by_tenant.get_mut(&self.tenant) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                state.by_tenant.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_its_share_and_never_the_whole_node() {
        let permits = FairPermits::new("uploads", 2, 1);
        let a = permits.try_acquire("a").unwrap();
        assert!(matches!(
            permits.try_acquire("a"),
            Err(Refused::Tenant { held: 1, .. })
        ));
        // Another tenant still gets in while `a` holds its share.
        let b = permits.try_acquire("b").unwrap();
        assert!(matches!(
            permits.try_acquire("c"),
            Err(Refused::Node { total: 2, .. })
        ));
        drop(a);
        let c = permits.try_acquire("c").unwrap();
        assert_eq!(permits.in_use(), 2);
        drop((b, c));
        assert_eq!(permits.in_use(), 0);
        assert!(permits.state.lock().by_tenant.is_empty());
        permits.try_acquire("a").unwrap();
    }

    #[test]
    fn the_share_is_never_above_the_total() {
        let permits = FairPermits::new("uploads", 2, 5);
        let held: Vec<_> = (0..2).map(|_| permits.try_acquire("a").unwrap()).collect();
        let refused = permits.try_acquire("a").unwrap_err();
        assert!(matches!(refused, Refused::Tenant { per_tenant: 2, .. }));
        assert!(
            refused.to_string().contains("at most 2 per tenant"),
            "{refused}"
        );
        drop(held);
    }
}
