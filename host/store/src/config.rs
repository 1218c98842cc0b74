//! The config store: the source of truth for everything an operator or tenant changes live —
//! plugin versions, policy bindings (active, previous, canary), feature flags, tenant quotas,
//! tenant API keys and the node's degradation override.
//!
//! Every record here is small except plugin bytes. Plugin versions are content-addressed
//! (the version id is the SHA-256 of the component, lowercase hex) and immutable: uploading the
//! same bytes twice stores them once. A binding is changed only through
//! [`ConfigStore::update_binding`], a compare-and-swap that bumps its revision, so two admins
//! racing cannot lose each other's change.
//!
//! Writes here are made durable before the call returns (config changes are rare and an
//! operator who was told "activated" must find it activated after a crash).
//!
//! [`ConfigStore::watch`] reports every change; the node applies changes from the watch, not
//! from the API call that made them, so a change made any way (API, another process of a
//! future cluster backend, a restore) takes effect the same way.

use std::collections::BTreeMap;

use switchboard_core::{GroupId, TenantId, UserId};

use crate::StoreError;

/// Most previous versions a binding remembers for rollback (oldest dropped first).
pub const MAX_PREVIOUS_VERSIONS: usize = 16;

/// Most feature-flag rules per tenant.
pub const MAX_FLAG_RULES: usize = 256;

/// A stored plugin version's metadata. The bytes are stored beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginVersion {
    pub tenant: TenantId,
    /// SHA-256 of the component bytes, 64 lowercase hex digits.
    pub version: String,
    pub size: u64,
    /// Who uploaded it: `admin` or the tenant API key's id.
    pub uploader: String,
    pub uploaded_at_ms: u64,
    /// Interfaces the component imports (as reported by the policy engine at upload).
    pub imports: Vec<String>,
    /// A name the uploader gave the version (`ctl plugin upload --label`), at most
    /// [`MAX_PLUGIN_LABEL_CHARS`] printable characters; not unique, not the version.
    pub label: Option<String>,
}

/// Most characters of a plugin version's label.
pub const MAX_PLUGIN_LABEL_CHARS: usize = 64;

/// A version with the configuration it runs with (what `host.config-get` returns).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionConfig {
    pub version: String,
    pub config: BTreeMap<String, String>,
}

/// A canary: a second version serving a stable share of the tenant's users, or named groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub version: VersionConfig,
    /// Share of users, 0–100, chosen by a stable hash of the user id
    /// (`switchboard_core::rollout`).
    pub percent: u8,
    /// Messages to these groups always go to the canary, whoever sends them.
    pub groups: Vec<GroupId>,
    pub started_at_ms: u64,
}

/// Why and when a binding last went back to an earlier version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackRecord {
    /// The version that was taken out of service.
    pub from: String,
    /// What replaced it; `None` for the built-in default.
    pub to: Option<String>,
    /// True when the node did it by itself (failure rate over threshold).
    pub automatic: bool,
    pub reason: String,
    pub at_ms: u64,
}

/// A tenant's policy binding. The default (revision 0) is "built-in policy, no history".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyBinding {
    /// The version serving the tenant; `None` for the built-in default.
    pub active: Option<VersionConfig>,
    /// Versions that were active before, most recent last; at most
    /// [`MAX_PREVIOUS_VERSIONS`].
    pub previous: Vec<VersionConfig>,
    pub canary: Option<Canary>,
    pub last_rollback: Option<RollbackRecord>,
    /// Bumped by every [`ConfigStore::update_binding`]; 0 means never written.
    pub revision: u64,
    pub updated_at_ms: u64,
}

impl PolicyBinding {
    /// What every store does to a changed binding before writing it: the store owns the
    /// revision and the time, whatever the change did to them, and `previous` keeps only
    /// the newest [`MAX_PREVIOUS_VERSIONS`].
    pub fn stamp(&mut self, revision: u64, now_ms: u64) {
        self.revision = revision;
        self.updated_at_ms = now_ms;
        let excess = self.previous.len().saturating_sub(MAX_PREVIOUS_VERSIONS);
        self.previous.drain(..excess);
    }
}

/// A feature flag rule set by the tenant or an admin. It overrides a flag of the same name
/// the tenant's plugin evaluates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagRule {
    /// Off means off for everyone (a kill switch).
    pub enabled: bool,
    /// When enabled: share of users who get it, 0–100, by a stable hash of (flag, user).
    pub percent: u8,
    /// When enabled: users who get it whatever their bucket.
    pub users: Vec<UserId>,
}

/// Per-tenant bounds an admin sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantQuotas {
    pub max_groups: u32,
    pub max_plugin_versions: u32,
    /// Largest plugin upload, bytes (the node's own plugin limit still applies).
    pub max_plugin_bytes: u32,
}

impl Default for TenantQuotas {
    fn default() -> Self {
        TenantQuotas {
            max_groups: 10_000,
            max_plugin_versions: 64,
            max_plugin_bytes: 4 << 20,
        }
    }
}

/// A tenant API key as stored: only its SHA-256, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Public id (shown in lists, used as `uploader`), unique per tenant.
    pub id: String,
    pub tenant: TenantId,
    /// SHA-256 of the full key.
    pub hash: [u8; 32],
    pub label: String,
    pub created_at_ms: u64,
}

/// What changed, as reported by [`ConfigStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConfigChange {
    Binding(TenantId),
    Flags(TenantId),
    Quotas(TenantId),
    ApiKeys(TenantId),
    PluginVersions(TenantId),
    Degradation,
}

/// A blocking stream of changes; `None` when the store is closed.
pub trait ConfigWatch: Send {
    fn next_change(&mut self) -> Option<ConfigChange>;
}

/// The config store. Implementations are cheap to share and safe to call from many threads.
pub trait ConfigStore: Send + Sync + 'static {
    // --- plugin versions (immutable, content-addressed) ---
    /// Stores a version and its bytes. Ok(false) if the same version was already stored
    /// (nothing is changed then). The caller has computed `meta.version` from `wasm`.
    fn put_plugin(&self, meta: &PluginVersion, wasm: &[u8]) -> Result<bool, StoreError>;
    fn plugin(&self, tenant: &TenantId, version: &str)
        -> Result<Option<PluginVersion>, StoreError>;
    fn plugin_bytes(&self, tenant: &TenantId, version: &str)
        -> Result<Option<Vec<u8>>, StoreError>;
    /// The tenant's versions, oldest upload first.
    fn plugins(&self, tenant: &TenantId) -> Result<Vec<PluginVersion>, StoreError>;

    // --- bindings ---
    /// The tenant's binding; the default binding if none was ever written.
    fn binding(&self, tenant: &TenantId) -> Result<PolicyBinding, StoreError>;
    /// Atomically reads the binding, lets `change` edit it, and writes it back with the
    /// revision bumped and `updated_at_ms` set — retrying if another writer got in between.
    /// If `change` returns an error nothing is written and the error is returned. Returns the
    /// binding as written.
    fn update_binding(
        &self,
        tenant: &TenantId,
        now_ms: u64,
        change: &mut dyn FnMut(&mut PolicyBinding) -> Result<(), BindingRefused>,
    ) -> Result<Result<PolicyBinding, BindingRefused>, StoreError>;
    /// Tenants with a binding ever written.
    fn bound_tenants(&self) -> Result<Vec<TenantId>, StoreError>;

    // --- flags ---
    fn flags(&self, tenant: &TenantId) -> Result<BTreeMap<String, FlagRule>, StoreError>;
    /// Replaces the tenant's flag rules.
    fn put_flags(
        &self,
        tenant: &TenantId,
        flags: &BTreeMap<String, FlagRule>,
    ) -> Result<(), StoreError>;

    // --- quotas ---
    /// The tenant's quotas (the defaults if none were set).
    fn quotas(&self, tenant: &TenantId) -> Result<TenantQuotas, StoreError>;
    fn put_quotas(&self, tenant: &TenantId, quotas: &TenantQuotas) -> Result<(), StoreError>;

    // --- tenant API keys ---
    fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    fn api_key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError>;
    fn api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Ok(false) if there was no such key.
    fn delete_api_key(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError>;

    // --- node-wide ---
    /// The load level an admin forced (0–3), if any.
    fn degradation_override(&self) -> Result<Option<u8>, StoreError>;
    fn set_degradation_override(&self, level: Option<u8>) -> Result<(), StoreError>;

    // --- watch ---
    /// A stream of every change made after this call returns.
    fn watch(&self) -> Result<Box<dyn ConfigWatch>, StoreError>;
}

/// Why a binding change was refused by its `change` closure (the store passes it through).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BindingRefused(pub String);
