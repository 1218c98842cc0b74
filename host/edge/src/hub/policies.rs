//! The tenants' policies as the hub applies them: the version serving, canaries, feature
//! flags (pushed to every session of the tenant when they change).

use super::*;

impl Hub {
    /// The tenant's active policy plugin, if one is bound.
    pub fn policy(&self, tenant: &TenantId) -> Option<Arc<TenantPolicy>> {
        self.policies.active(tenant)
    }

    /// Binds (or, with `None`, unbinds) a tenant's policy plugin for all its users, with no
    /// version label. See [`Hub::set_policies`].
    pub fn set_policy(&self, tenant: &TenantId, policy: Option<Arc<TenantPolicy>>) {
        self.set_policies(
            tenant,
            PolicySet {
                active: policy.map(|policy| VersionedPolicy {
                    version: String::new(),
                    policy,
                }),
                canary: None,
            },
        );
    }

    /// Binds a tenant's policy versions (active and canary; both `None` for the built-in
    /// policy). Takes effect for the next event; events in flight finish on the version they
    /// picked. Connected users of the tenant get their re-evaluated feature flags, and the
    /// tenant's shedding is recomputed.
    pub fn set_policies(&self, tenant: &TenantId, set: PolicySet) {
        self.policies.bind(tenant, set);
        self.apply_load(tenant);
        self.repush_flags(tenant);
    }

    /// What the tenant serves now, with live figures per version.
    pub fn serving(&self, tenant: &TenantId) -> ServingState {
        self.policies.state(tenant)
    }

    /// Replaces the tenant's feature-flag rules; connected users get their new flags.
    pub fn set_flag_rules(&self, tenant: &TenantId, rules: BTreeMap<String, FlagRule>) {
        self.policies.set_flag_rules(tenant, rules);
        self.repush_flags(tenant);
    }

    pub(super) fn repush_flags(&self, tenant: &TenantId) {
        for s in self.sessions.of_tenant(tenant) {
            self.push_flags(&s);
        }
    }

    /// Evaluates the user's feature flags and queues them as a `Flags` push.
    pub(super) fn push_flags(&self, session: &Session) {
        let flags = self.policies.flags(&session.tenant, &session.user);
        let frame = wire::encode_server(&ServerFrame::Flags {
            flags: flags
                .into_iter()
                .map(|f| wire::Flag {
                    name: f.name,
                    enabled: f.enabled,
                })
                .collect(),
        });
        // Flags change what the app shows: ahead of messages.
        session.push(
            Push::Notice {
                stream: PushStream::High,
                frame,
            },
            &self.metrics,
        );
    }
}
