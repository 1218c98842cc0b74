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
    /// Oldest sequence number still kept: 1 unless retention deleted older messages
    /// (`head + 1` when it deleted all of them).
    pub first_seq: u64,
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
    /// The name given at upload (`?label=`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// `POST /v1/tenants/{tenant}/plugins?label=…`: an optional name for the version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    #[serde(default)]
    pub label: Option<String>,
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
    /// The plugin's own counters (`host.counter-add`) for this version, by name: at most
    /// `max_counters_per_tenant` names (64 unless the operator set `[plugins]`).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Adds to counter names beyond that bound (or invalid names), ignored.
    #[serde(default)]
    pub counter_updates_dropped: u64,
    /// Its latest failed call (a trap's reason includes the plugin's panic message).
    #[serde(default)]
    pub last_failure: Option<FailureInfo>,
}

/// A plugin call that fell back to the built-in default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureInfo {
    /// `on-message`, `on-receipt`, `evaluate-flags` or `on-load`.
    pub hook: String,
    /// Why, at most 2 KiB: e.g. `plugin trapped: … the plugin wrote: panicked at …`.
    pub reason: String,
    pub at_ms: u64,
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

/// A rotated store key (`POST /v1/node/store-key/rotation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreKeyRotation {
    /// The id of the new key, which now seals every tenant secret; the key file holds only it.
    pub key_id: u32,
    /// How many tenant secrets were sealed again under it.
    pub resealed: u64,
}

/// Retention limits of messages (`[store.retention]`); `null`: no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionLimitsInfo {
    /// Messages sent longer ago than this many seconds may go.
    pub max_age_s: Option<u64>,
    /// Messages older than the group's newest this many may go.
    pub max_messages: Option<u64>,
    /// Messages older than the group's newest this many bytes may go.
    pub max_bytes: Option<u64>,
}

/// A tenant's retention limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRetentionInfo {
    pub tenant: String,
    pub limits: RetentionLimitsInfo,
}

/// A group's retention limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRetentionInfo {
    pub tenant: String,
    pub group: String,
    pub limits: RetentionLimitsInfo,
}

/// Retention of group messages on this node (`GET /v1/node/retention`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionInfo {
    /// Whether this node's message store deletes old messages itself (the segment log).
    /// Messages kept in sled are kept forever; a cluster's JetStream streams keep their own
    /// limits.
    pub supported: bool,
    /// Whether any limit is set; without one every message is kept.
    pub limited: bool,
    /// The limits of every group, unless its tenant's or its own say otherwise (field by
    /// field: group, then tenant, then these).
    pub default: RetentionLimitsInfo,
    pub tenants: Vec<TenantRetentionInfo>,
    pub groups: Vec<GroupRetentionInfo>,
    /// Bytes of the message log's segment files now.
    pub bytes: u64,
    /// Segment files now.
    pub segments: u64,
}

/// A retention pass run on demand (`POST /v1/node/retention/pass`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPass {
    /// As in [`RetentionInfo`]: `false` when the store keeps messages itself (nothing done).
    pub supported: bool,
    pub segments_deleted: u64,
    pub bytes_deleted: u64,
    /// The log's size after the pass.
    pub bytes: u64,
    pub segments: u64,
}

/// A drain request (`POST /v1/node/drain`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The cluster node meant (`[cluster] node`); refused when it names another node, so a
    /// drain sent through a load balancer never stops the wrong one. Optional.
    #[serde(default)]
    pub node: Option<String>,
}

/// A drain that was started: the node stops taking sessions, acks what it accepted, hands
/// its shards over (cluster mode) and exits, as on SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draining {
    /// The cluster node draining; `null` for a node not in a cluster.
    pub node: Option<String>,
    pub draining: bool,
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
    /// What this node runs (version, commit, profile): a probe or a rollout script sees
    /// which build answered.
    pub build: BuildInfo,
    /// Seconds since the node's control plane started.
    pub uptime_s: u64,
}

// --- what operators read: the node, its connections, its tenants' traffic ---

/// Who the credential is (`GET /v1/whoami`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    /// `admin` or `tenant`.
    pub role: String,
    /// The tenant a tenant key reaches; `null` for the admin.
    pub tenant: Option<String>,
}

/// What was built and how (`NodeInfo::build`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildInfo {
    /// The crate version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The git commit it was built from, `unknown` outside a checkout.
    pub commit: String,
    /// `debug` or `release`.
    pub profile: String,
}

/// Delivery latency of one presence class, from the node's histogram (publish → QUIC).
/// Percentiles are the upper bound of the bucket they fall in (the histogram's resolution;
/// `null` above its last bound or without samples).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyClass {
    /// `active` (foreground sessions) or `background`.
    pub class: String,
    pub count: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// What tenants shed at the load level in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SheddingInfo {
    pub receipts: bool,
    pub presence: bool,
    /// Background members get nudges instead of messages.
    pub background_delivery: bool,
}

/// The load level and what it costs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadInfo {
    /// 0 normal … 3 critical: the level in force.
    pub level: u8,
    /// The level an admin forced (the degradation override), if any.
    pub forced: Option<u8>,
    /// Tenants with a policy shedding receipts, presence, background delivery.
    pub tenants_shedding_receipts: u32,
    pub tenants_shedding_presence: u32,
    pub tenants_shedding_background: u32,
    /// Commit queue and push queues fill, 0–100 (what the load monitor samples).
    pub commit_queue_percent: u64,
    pub push_queue_percent: u64,
}

/// Pushes queued for sessions now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueInfo {
    /// By push stream: `high`, `normal`, `low`, `notices`.
    pub depth: BTreeMap<String, u64>,
    pub bytes: u64,
}

/// Open sessions by presence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounts {
    pub foreground: u32,
    pub background: u32,
}

/// The node's settings that shape what an operator sees (the full list is the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub max_connections: u64,
    pub max_payload_bytes: u64,
    pub max_group_members: u64,
    pub max_groups_per_user: u64,
    pub outbox_frames: u64,
    pub outbox_bytes: u64,
    pub disconnect_slow_consumers: bool,
    pub apply_timeout_ms: u64,
    pub auto_rollback: AutoRollbackSummary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoRollbackSummary {
    pub enabled: bool,
    pub window_ms: u64,
    pub min_events: u64,
    pub max_failure_ratio: f64,
}

/// `GET /v1/node`: one poll's worth of everything node-wide.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub build: BuildInfo,
    /// When the control plane started (ms since the Unix epoch), and seconds since.
    pub started_at_ms: u64,
    pub uptime_s: u64,
    /// The node's clock when this was read: rates are counter deltas over it.
    pub now_ms: u64,
    pub health: Health,
    pub sessions: SessionCounts,
    pub load: LoadInfo,
    pub queues: QueueInfo,
    pub latency: Vec<LatencyClass>,
    /// Every node counter of `/metrics` (without its `switchboard_` prefix and `_total`
    /// suffix), since start.
    pub counters: BTreeMap<String, u64>,
    /// Versions the node rolled back by itself since start.
    pub auto_rollbacks: u64,
    /// The sessions furthest behind (at most
    /// [`SLOW_CONSUMERS_SHOWN`](crate::control::SLOW_CONSUMERS_SHOWN)): marked slow, catching
    /// up from the log, or with at least half of `outbox_frames` queued; slow first, then
    /// catching up, then by bytes queued.
    pub slow_consumers: Vec<ConnectionInfo>,
    pub config: ConfigSummary,
}

/// One session (`GET /v1/connections`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub session: u64,
    pub tenant: String,
    pub user: String,
    /// `foreground` or `background`.
    pub presence: String,
    pub connected_at_ms: u64,
    /// `ip:port` of the client, when known.
    pub remote: Option<String>,
    pub groups: u64,
    /// Pushes queued for it, and their bytes.
    pub queued: u64,
    pub queued_bytes: u64,
    pub catching_up: bool,
    pub slow: bool,
}

/// A page of sessions, like NATS's `/connz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionPage {
    /// Sessions matching the filters, before paging.
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub connections: Vec<ConnectionInfo>,
}

/// One tenant with its traffic and its policy's health (`GET /v1/traffic`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantTraffic {
    pub tenant: String,
    pub sessions: SessionCounts,
    /// Counters since the node started; rates are deltas between two reads.
    pub messages_accepted: u64,
    pub deliveries_live: u64,
    pub deliveries_catch_up: u64,
    pub deliveries_deferred: u64,
    /// What the tenant's policy sheds at the load level in force.
    pub shedding: SheddingInfo,
    /// The serving versions with their counts, the canary, the last rollback.
    pub policy: PolicyStatus,
}

/// A page of tenants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficPage {
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
    pub tenants: Vec<TenantTraffic>,
}

/// Paging and filters of `GET /v1/connections` and `/v1/tenants/{tenant}/connections`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionQuery {
    #[serde(default)]
    pub offset: u64,
    /// Default 100, at most [`MAX_CONNECTIONS_PAGE`](crate::control::MAX_CONNECTIONS_PAGE).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Only this tenant's sessions (the admin's list; a tenant's list is its own).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Only sessions whose user id contains this (case-insensitive).
    #[serde(default)]
    pub user: Option<String>,
    /// `foreground` or `background`.
    #[serde(default)]
    pub presence: Option<String>,
    /// `session` (oldest first, the default), `queued` (most first), `user`.
    #[serde(default)]
    pub sort: Option<String>,
}

/// Paging and filters of `GET /v1/traffic`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficQuery {
    #[serde(default)]
    pub offset: u64,
    /// Default 50, at most [`MAX_TRAFFIC_PAGE`](crate::control::MAX_TRAFFIC_PAGE).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Only tenants whose id contains this (case-insensitive).
    #[serde(default)]
    pub q: Option<String>,
    /// `tenant` (by id, the default), `messages` or `sessions` (most first).
    #[serde(default)]
    pub sort: Option<String>,
}
