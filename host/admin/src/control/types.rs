//! What the control plane takes and returns. Serializable: the HTTP API sends these as JSON
//! as they are, and `switchboard ctl --json` prints them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who is calling, once their bearer token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator (admin token).
    Admin,
    /// A tenant API key: reaches only its own tenant.
    Tenant { tenant: String, key_id: String },
}

impl Caller {
    /// The name recorded as a plugin's uploader.
    pub fn name(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::Tenant { key_id, .. } => key_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    pub max_groups: u32,
    pub max_plugin_versions: u32,
    pub max_plugin_bytes: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub id: String,
    /// The token-signing secret (≥ 16 bytes); generated if absent.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub quotas: Option<Quotas>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantInfo {
    pub id: String,
    pub quotas: Quotas,
    /// The active plugin version, `null` for the built-in policy.
    pub active_version: Option<String>,
    pub canary_version: Option<String>,
    pub groups: u64,
}

/// Returned once, when a tenant is created or its secret rotated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantSecret {
    pub tenant: String,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[serde(default)]
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub tenant: String,
    pub label: String,
    pub created_at_ms: u64,
}

/// A new API key: `key` is shown only here, never stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewApiKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    pub user: String,
    /// Lifetime; default one day, at most 30 days.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MintedToken {
    pub token: String,
    pub tenant: String,
    pub user: String,
    pub expires_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub id: String,
    #[serde(default)]
    pub open: bool,
    /// Defaults to (and is capped at) the node's `max_group_members`.
    #[serde(default)]
    pub max_members: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupInfo {
    pub id: String,
    pub open: bool,
    pub max_members: u32,
    pub members: u32,
    /// Newest sequence number.
    pub head: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginInfo {
    pub version: String,
    pub tenant: String,
    pub size: u64,
    pub uploader: String,
    pub uploaded_at_ms: u64,
    pub imports: Vec<String>,
}

/// The answer to an upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uploaded {
    #[serde(flatten)]
    pub plugin: PluginInfo,
    /// False when the same bytes were uploaded before (nothing changed).
    pub created: bool,
    /// Per-hook self-test results (hook name → microseconds).
    pub self_test_us: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginDetail {
    #[serde(flatten)]
    pub plugin: PluginInfo,
    /// Where it serves now: "active", "canary", "previous" or "stored".
    pub role: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Activate {
    pub version: String,
    /// What the plugin reads with `config-get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartCanary {
    pub version: String,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Share of users, 0–100, by a stable hash of the user id.
    #[serde(default)]
    pub percent: u8,
    /// Groups whose messages always go to the canary.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Live figures of one serving version (since it was bound on this node).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionHealth {
    pub version: String,
    pub config: BTreeMap<String, String>,
    /// Events (messages, receipts) routed to it.
    pub handled: u64,
    /// Of those, answered by the built-in default (plugin failed or its breaker was open).
    pub failed: u64,
    pub calls: u64,
    pub traps: u64,
    pub out_of_fuel: u64,
    pub deadline: u64,
    pub invalid_output: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryStatus {
    #[serde(flatten)]
    pub health: VersionHealth,
    pub percent: u8,
    pub groups: Vec<String>,
    pub started_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackInfo {
    pub from: String,
    pub to: Option<String>,
    pub automatic: bool,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub tenant: String,
    /// `null`: the built-in policy.
    pub active: Option<VersionHealth>,
    pub canary: Option<CanaryStatus>,
    /// Earlier versions, most recent last (what `rollback` goes back to).
    pub previous: Vec<String>,
    pub last_rollback: Option<RollbackInfo>,
    /// The binding's revision in the config store.
    pub revision: u64,
    /// The revision this node is serving (equal to `revision` once applied).
    pub applied_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagRuleBody {
    pub enabled: bool,
    /// Share of users, 0–100 (default 100).
    #[serde(default = "hundred")]
    pub percent: u8,
    #[serde(default)]
    pub users: Vec<String>,
}

fn hundred() -> u8 {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetDegradation {
    /// 0 normal … 3 critical; `null` clears the override.
    pub level: Option<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DegradationStatus {
    /// The level the node is at.
    pub level: u8,
    /// The level an admin forced, if any.
    pub forced: Option<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, or `degraded` while the store refuses writes (see `store`).
    pub status: String,
    pub sessions: usize,
    pub connections: usize,
    pub load_level: u8,
    /// The store: `ok`; `disk_low` (free space under `min_free_disk_bytes`: sends are
    /// refused until there is room); `failed` (a storage error, e.g. a full disk: writes
    /// are refused, and the node reopens the store by itself once the disk has room).
    pub store: String,
    /// Why the store is not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_reason: Option<String>,
}
