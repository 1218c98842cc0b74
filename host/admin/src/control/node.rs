//! The node itself: the degradation override, rotating the store key, retention, health.

use super::shared::{now_ms, off_the_runtime};
use super::types::*;
use super::{Control, ControlError};

impl Control {
    // --- degradation ---

    pub fn degradation(&self) -> Result<DegradationStatus, ControlError> {
        Ok(DegradationStatus {
            level: self.hub.load_level(),
            forced: self.config.degradation_override()?,
        })
    }

    /// Forces the node's load level (or clears the override). Applied through the watch.
    pub async fn set_degradation(
        &self,
        req: &SetDegradation,
    ) -> Result<DegradationStatus, ControlError> {
        if req.level.is_some_and(|l| l > 3) {
            return Err(ControlError::Invalid("level must be 0..=3".into()));
        }
        off_the_runtime(|| self.config.set_degradation_override(req.level))?;
        // Apply here too, so the answer already shows it; the watch applies it again (no-op).
        self.hub.set_load_override(req.level);
        tracing::info!(level = ?req.level, "degradation override");
        self.degradation()
    }

    // --- node ---

    /// Rotates the store key on the running node (admin; see
    /// [`switchboard_store::SledStore::rotate_secrets_key`]): a new key seals every tenant
    /// secret, the old one leaves the key file. Tokens, sessions and concurrent writes carry
    /// on (writers of secrets wait for the re-sealing).
    /// Refused with [`ControlError::StoreKeyNotInFile`] when the key came from the
    /// environment.
    pub fn rotate_store_key(&self) -> Result<StoreKeyRotation, ControlError> {
        let (key_id, resealed) = self.store.rotate_secrets_key()?;
        tracing::info!(key_id, resealed, "store key rotated on the running node");
        Ok(StoreKeyRotation {
            key_id,
            resealed: resealed as u64,
        })
    }

    /// The retention limits in force and the message log's size.
    pub fn retention(&self) -> RetentionInfo {
        let Some(status) = self.store.retention() else {
            return RetentionInfo {
                supported: false,
                limited: false,
                default: RetentionLimitsInfo::default(),
                tenants: Vec::new(),
                groups: Vec::new(),
                bytes: 0,
                segments: 0,
            };
        };
        let limits = &status.limits;
        let mut tenants: Vec<TenantRetentionInfo> = limits
            .tenants
            .iter()
            .map(|(t, l)| TenantRetentionInfo {
                tenant: t.to_string(),
                limits: limits_info(l),
            })
            .collect();
        tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        let mut groups: Vec<GroupRetentionInfo> = limits
            .groups
            .iter()
            .map(|((t, g), l)| GroupRetentionInfo {
                tenant: t.to_string(),
                group: g.to_string(),
                limits: limits_info(l),
            })
            .collect();
        groups.sort_by(|a, b| (&a.tenant, &a.group).cmp(&(&b.tenant, &b.group)));
        RetentionInfo {
            supported: true,
            limited: limits.is_limited(),
            default: limits_info(&limits.default),
            tenants,
            groups,
            bytes: status.bytes,
            segments: status.segments as u64,
        }
    }

    /// Runs a retention pass now, as the node's timer does every `retention_check_s`.
    /// Blocking (it deletes files and syncs the trimmed heads).
    pub fn run_retention(&self) -> Result<RetentionPass, ControlError> {
        let report = self.store.enforce_retention(now_ms())?;
        let info = self.retention();
        if report.segments_deleted > 0 {
            tracing::info!(
                segments = report.segments_deleted,
                bytes = report.bytes_deleted,
                "retention pass on demand"
            );
        }
        Ok(RetentionPass {
            supported: info.supported,
            segments_deleted: report.segments_deleted as u64,
            bytes_deleted: report.bytes_deleted,
            bytes: info.bytes,
            segments: info.segments,
        })
    }

    pub fn health(&self) -> Health {
        let m = self.hub.metrics().snapshot();
        let (store, store_reason) = match self.hub.store().health() {
            switchboard_store::StoreHealth::Failed { reason } => ("failed", Some(reason)),
            switchboard_store::StoreHealth::Ok if self.hub.disk_low() => (
                "disk_low",
                Some("free disk space is under min_free_disk_bytes; sends are refused".into()),
            ),
            switchboard_store::StoreHealth::Ok => ("ok", None),
        };
        Health {
            status: if store == "ok" { "ok" } else { "degraded" }.to_owned(),
            sessions: m.sessions,
            connections: m.connections,
            load_level: self.hub.load_level(),
            store: store.to_owned(),
            store_reason,
            build: super::observe::build_info(),
            uptime_s: self.uptime_s(),
        }
    }
}

fn limits_info(l: &switchboard_store::RetentionLimits) -> RetentionLimitsInfo {
    RetentionLimitsInfo {
        max_age_s: l.max_age_ms.map(|ms| ms / 1000),
        max_messages: l.max_messages,
        max_bytes: l.max_bytes,
    }
}
