//! A tenant's policy binding (activate, canary, promote, abort, roll back, status), written
//! to the config store and waited for until this node serves it; and the tenant's flag rules.

use std::collections::BTreeMap;

use switchboard_core::TenantId;
use switchboard_store::{BindingRefused, Canary, FlagRule, PolicyBinding, VersionConfig};

use super::shared::{group_id, now_ms, off_the_runtime, user_id};
use super::types::*;
use super::{Control, ControlError};

/// Most entries in a plugin's config map, and longest key/value.
pub const MAX_PLUGIN_CONFIG_ENTRIES: usize = 64;
pub const MAX_PLUGIN_CONFIG_BYTES: usize = 1024;

fn check_config(config: &BTreeMap<String, String>) -> Result<(), ControlError> {
    if config.len() > MAX_PLUGIN_CONFIG_ENTRIES {
        return Err(ControlError::Invalid(format!(
            "plugin config has {} entries; at most {MAX_PLUGIN_CONFIG_ENTRIES}",
            config.len()
        )));
    }
    for (k, v) in config {
        if k.len() > MAX_PLUGIN_CONFIG_BYTES || v.len() > MAX_PLUGIN_CONFIG_BYTES {
            return Err(ControlError::Invalid(format!(
                "plugin config entry {k:?}: keys and values are at most {MAX_PLUGIN_CONFIG_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

impl Control {
    /// Checks that `version` is stored for the tenant and loads it (so a bad artifact shows
    /// here, not in the reconcile task).
    async fn ready(&self, tenant: &TenantId, version: &str) -> Result<(), ControlError> {
        if self.config.plugin(tenant, version)?.is_none() {
            return Err(ControlError::NotFound(format!(
                "plugin version {version} not found"
            )));
        }
        self.stored_plugin(tenant, version).await.map(drop)
    }

    /// Writes a binding change and waits until this node serves it.
    async fn change_binding(
        &self,
        tenant: &TenantId,
        mut change: impl FnMut(&mut PolicyBinding) -> Result<(), BindingRefused>,
    ) -> Result<PolicyStatus, ControlError> {
        let written =
            off_the_runtime(|| self.config.update_binding(tenant, now_ms(), &mut change))?
                .map_err(|e| ControlError::Conflict(e.0))?;
        self.wait_applied(tenant, written.revision).await?;
        self.policy_status(tenant.as_str())
    }

    /// Activates a version for all of the tenant's users. The version serving before goes to
    /// the front of `previous`; a running canary is ended.
    pub async fn activate(
        &self,
        tenant: &str,
        req: &Activate,
    ) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        check_config(&req.config)?;
        self.ready(&rec.id, &req.version).await?;
        let next = VersionConfig {
            version: req.version.clone(),
            config: req.config.clone(),
        };
        tracing::info!(tenant, version = %req.version, "activate");
        self.change_binding(&rec.id, |b| {
            if b.active.as_ref() == Some(&next) && b.canary.is_none() {
                return Ok(()); // already serving exactly this: a no-op that still bumps
            }
            if let Some(old) = b.active.take() {
                b.previous.push(old);
            }
            b.active = Some(next.clone());
            b.canary = None;
            Ok(())
        })
        .await
    }

    /// Starts (or replaces) a canary: `percent` of users by stable hash, plus `groups`.
    pub async fn start_canary(
        &self,
        tenant: &str,
        req: &StartCanary,
    ) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        check_config(&req.config)?;
        if req.percent > 100 {
            return Err(ControlError::Invalid("percent must be 0..=100".into()));
        }
        if req.percent == 0 && req.groups.is_empty() {
            return Err(ControlError::Invalid(
                "a canary needs a percent above 0 or at least one group".into(),
            ));
        }
        if req.groups.len() > 256 {
            return Err(ControlError::Invalid("at most 256 canary groups".into()));
        }
        let groups = req
            .groups
            .iter()
            .map(|g| group_id(g))
            .collect::<Result<Vec<_>, _>>()?;
        self.ready(&rec.id, &req.version).await?;
        let canary = Canary {
            version: VersionConfig {
                version: req.version.clone(),
                config: req.config.clone(),
            },
            percent: req.percent,
            groups,
            started_at_ms: now_ms(),
        };
        tracing::info!(tenant, version = %req.version, percent = req.percent, "canary");
        self.change_binding(&rec.id, |b| {
            b.canary = Some(canary.clone());
            Ok(())
        })
        .await
    }

    /// Makes the canary the active version for everyone.
    pub async fn promote(&self, tenant: &str) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        tracing::info!(tenant, "promote canary");
        self.change_binding(&rec.id, |b| {
            let Some(c) = b.canary.take() else {
                return Err(BindingRefused("no canary to promote".into()));
            };
            if let Some(old) = b.active.take() {
                b.previous.push(old);
            }
            b.active = Some(c.version);
            Ok(())
        })
        .await
    }

    /// Ends the canary; everyone goes back to the active version.
    pub async fn abort_canary(&self, tenant: &str) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        tracing::info!(tenant, "abort canary");
        self.change_binding(&rec.id, |b| {
            if b.canary.take().is_none() {
                return Err(BindingRefused("no canary running".into()));
            }
            Ok(())
        })
        .await
    }

    /// One-call rollback: ends a canary if one runs; otherwise the active version is replaced
    /// by the previous one (or the built-in policy if there is none).
    pub async fn rollback(&self, tenant: &str) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        tracing::info!(tenant, "manual rollback");
        self.change_binding(&rec.id, |b| {
            rollback_binding(b, false, "rolled back by an operator".into(), now_ms())
        })
        .await
    }

    pub fn policy_status(&self, tenant: &str) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let b = self.config.binding(&rec.id)?;
        let serving = self.hub.serving(&rec.id);
        let health = |vc: &VersionConfig, live: Option<&switchboard_edge::ServingSnapshot>| {
            let mut h = VersionHealth {
                version: vc.version.clone(),
                config: vc.config.clone(),
                ..Default::default()
            };
            if let Some(s) = live.filter(|s| s.version == vc.version) {
                h.handled = s.handled;
                h.failed = s.failed;
                h.calls = s.stats.calls();
                let f = &s.stats.fallbacks;
                h.traps = f.traps;
                h.out_of_fuel = f.out_of_fuel;
                h.deadline = f.deadline;
                h.invalid_output = f.invalid_output;
                h.counters = s.policy.counters();
                h.counter_updates_dropped = s.stats.counter_updates_dropped;
                h.last_failure = s.policy.last_failure().map(|l| FailureInfo {
                    hook: l.hook.wit_name().to_owned(),
                    reason: l.reason.clone(),
                    at_ms: l.at_ms,
                });
            }
            h
        };
        Ok(PolicyStatus {
            tenant: tenant.to_owned(),
            active: b
                .active
                .as_ref()
                .map(|a| health(a, serving.active.as_ref())),
            canary: b.canary.as_ref().map(|c| CanaryStatus {
                health: health(&c.version, serving.canary.as_ref()),
                percent: c.percent,
                groups: c.groups.iter().map(|g| g.to_string()).collect(),
                started_at_ms: c.started_at_ms,
            }),
            previous: b.previous.iter().map(|v| v.version.clone()).collect(),
            last_rollback: b.last_rollback.as_ref().map(|r| RollbackInfo {
                from: r.from.clone(),
                to: r.to.clone(),
                automatic: r.automatic,
                reason: r.reason.clone(),
                at_ms: r.at_ms,
            }),
            revision: b.revision,
            applied_revision: self.applied_revision(&rec.id),
        })
    }

    // --- flags ---

    pub fn flags(&self, tenant: &str) -> Result<BTreeMap<String, FlagRuleBody>, ControlError> {
        let rec = self.require_tenant(tenant)?;
        Ok(self
            .config
            .flags(&rec.id)?
            .into_iter()
            .map(|(k, r)| {
                (
                    k,
                    FlagRuleBody {
                        enabled: r.enabled,
                        percent: r.percent,
                        users: r.users.iter().map(|u| u.to_string()).collect(),
                    },
                )
            })
            .collect())
    }

    /// Replaces the tenant's flag rules; connected users get their new flags at once.
    pub fn put_flags(
        &self,
        tenant: &str,
        flags: &BTreeMap<String, FlagRuleBody>,
    ) -> Result<BTreeMap<String, FlagRuleBody>, ControlError> {
        let rec = self.require_tenant(tenant)?;
        if flags.len() > switchboard_store::config::MAX_FLAG_RULES {
            return Err(ControlError::Invalid(format!(
                "at most {} flags",
                switchboard_store::config::MAX_FLAG_RULES
            )));
        }
        let mut rules = BTreeMap::new();
        for (name, body) in flags {
            if name.is_empty() || name.len() > 64 {
                return Err(ControlError::Invalid(format!(
                    "flag name {name:?} must be 1..=64 bytes"
                )));
            }
            if body.percent > 100 {
                return Err(ControlError::Invalid(format!(
                    "flag {name}: percent must be 0..=100"
                )));
            }
            if body.users.len() > 1000 {
                return Err(ControlError::Invalid(format!(
                    "flag {name}: at most 1000 users"
                )));
            }
            let users = body
                .users
                .iter()
                .map(|u| user_id(u))
                .collect::<Result<Vec<_>, _>>()?;
            rules.insert(
                name.clone(),
                FlagRule {
                    enabled: body.enabled,
                    percent: body.percent,
                    users,
                },
            );
        }
        self.config.put_flags(&rec.id, &rules)?;
        self.flags(tenant)
    }
}

/// The rollback step on a binding: end the canary if there is one, else go back one
/// version. Shared by the manual rollback and the automatic one.
pub(crate) fn rollback_binding(
    b: &mut PolicyBinding,
    automatic: bool,
    reason: String,
    now_ms: u64,
) -> Result<(), BindingRefused> {
    if let Some(c) = b.canary.take() {
        b.last_rollback = Some(switchboard_store::RollbackRecord {
            from: c.version.version,
            to: b.active.as_ref().map(|a| a.version.clone()),
            automatic,
            reason,
            at_ms: now_ms,
        });
        return Ok(());
    }
    let Some(from) = b.active.take() else {
        return Err(BindingRefused(
            "nothing to roll back: the built-in policy is serving".into(),
        ));
    };
    b.active = b.previous.pop();
    b.last_rollback = Some(switchboard_store::RollbackRecord {
        from: from.version,
        to: b.active.as_ref().map(|a| a.version.clone()),
        automatic,
        reason,
        at_ms: now_ms,
    });
    Ok(())
}
