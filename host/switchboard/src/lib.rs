//! The Switchboard node as a library: the config file, seeding the store from it, and
//! starting a node. `main.rs` is only the command line over this.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use switchboard_admin::control::types::{Activate, Caller};
use switchboard_admin::http::{ServeOptions, ServerLimits};
use switchboard_admin::{AutoRollback, Control, ControlConfig};
use switchboard_cluster::{ClusterNode, News};

mod budgets;
mod cluster;
pub use budgets::{BudgetError, PluginSettings};
pub use cluster::{open_for, ClusterSettings, Opened, MIN_LEASE_TTL_MS};
use switchboard_core::{GroupId, Limits, TenantId, UserId};
use switchboard_edge::{EdgeConfig, Node, TlsIdentity, WebTransportConfig};
use switchboard_policy::{PolicyEngine, PolicyLimits};
use switchboard_store::{
    GroupMeta, MessageLog, NodeStore, Retention, RetentionLimits, SegmentLogConfig, SledStore,
    SledStoreConfig, Store, StoreError, TenantRecord,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Why a node could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("config file {path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("config file {path}: {error}")]
    Budget { path: PathBuf, error: BudgetError },
    #[error("config: {0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Edge(#[from] switchboard_edge::EdgeError),
    #[error("policy engine: {0}")]
    PolicyEngine(#[from] switchboard_policy::EngineError),
    #[error("control plane: {0}")]
    Control(#[from] switchboard_admin::ControlError),
    #[error("admin API on {addr}: {detail}")]
    Admin { addr: SocketAddr, detail: String },
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("tenant {tenant}: plugin {path}: {detail}")]
    Plugin {
        tenant: String,
        path: PathBuf,
        detail: String,
    },
}

/// The node's config file (TOML). See `examples/switchboard.toml` for an annotated copy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// UDP address the QUIC endpoint binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where sled keeps its files (and the dev certificate, if no `[tls]` is given). Created
    /// 0700; everything in it is the node's own.
    pub data_dir: PathBuf,
    /// The store key file, which seals the tenants' secrets in the store (see
    /// `docs/reliability.md`, "Secrets at rest"). Default: `<data_dir>/store.key`, created
    /// with a new store. Put it elsewhere (a secrets mount) to keep it out of copies of the
    /// data directory.
    #[serde(default)]
    pub store_key_file: Option<PathBuf>,
    /// Certificate and key (PEM or DER). Without it a self-signed certificate is created in
    /// `data_dir` — fine for development, not for phones in the wild.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub limits: Limits,
    /// Tenants to create or update at start-up.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// The admin and tenant HTTP API.
    #[serde(default)]
    pub admin: AdminSettings,
    /// Where push-notification events go (members offline when a flagged message arrives).
    #[serde(default)]
    pub notify: NotifySettings,
    /// Where group messages are kept, the segment log's bounds, and retention.
    #[serde(default)]
    pub store: StoreSettings,
    /// The bounds on compiling one plugin upload, in a child process.
    #[serde(default)]
    pub plugin_compile: PluginCompileSettings,
    /// The budgets every plugin call runs under (fuel, deadline, memory, size, counters).
    #[serde(default)]
    pub plugins: PluginSettings,
    /// Browsers over WebTransport, on a UDP port of their own.
    #[serde(default)]
    pub webtransport: WebTransportSettings,
    /// Cluster mode: group messages in NATS JetStream, shards owned by lease. Absent: one
    /// node, messages in the local store (`[store]`).
    #[serde(default)]
    pub cluster: Option<ClusterSettings>,
}

/// The argument that makes the `switchboard` binary a plugin compiler for its node
/// (`switchboard_policy::compile::serve_child`), not a command for people.
pub const COMPILE_CHILD_ARG: &str = "__compile-plugin";

/// The `[plugin_compile]` section: uploads are compiled in a child process (the node's own
/// binary) under these bounds; past one the upload is refused, naming it. See
/// `switchboard_policy::compile` and docs/plugins.md §6.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginCompileSettings {
    /// CPU seconds one compile may use. Default 120.
    pub cpu_secs: u64,
    /// Bytes of memory one compile may use (heap and other private memory). Default 2 GiB.
    pub memory_bytes: u64,
    /// Wall-clock seconds one compile may take, waiting for a CPU included. Default 300.
    pub wall_secs: u64,
    /// The program to run as the compiler: the node's own binary, which `serve` and `dev`
    /// set. `None` (a node started from the library, as tests do) compiles in-process.
    #[serde(skip)]
    pub program: Option<PathBuf>,
}

impl Default for PluginCompileSettings {
    fn default() -> Self {
        let d = switchboard_policy::ChildCompile::new("", Vec::new());
        PluginCompileSettings {
            cpu_secs: d.cpu_secs,
            memory_bytes: d.memory_bytes,
            wall_secs: d.wall.as_secs(),
            program: None,
        }
    }
}

impl PluginCompileSettings {
    /// The policy engine's limits: the defaults, compiling in a child when a program is set.
    pub fn policy_limits(&self) -> PolicyLimits {
        let compile = self.program.as_ref().map(|program| {
            let mut child =
                switchboard_policy::ChildCompile::new(program, vec![COMPILE_CHILD_ARG.into()]);
            child.cpu_secs = self.cpu_secs.max(1);
            child.memory_bytes = self.memory_bytes;
            child.wall = std::time::Duration::from_secs(self.wall_secs.max(1));
            child
        });
        PolicyLimits {
            compile,
            ..PolicyLimits::default()
        }
    }
}

/// The `[webtransport]` section: the endpoint browsers connect to (HTTP/3, path
/// `/switchboard/1`). Off unless enabled. Its certificate is `[tls]`'s if given; else a fresh
/// 13-day self-signed ECDSA P-256 certificate made at each start, which pages pin by its
/// SHA-256 (`serverCertificateHashes`; the node logs it and `switchboard dev` prints it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebTransportSettings {
    pub enabled: bool,
    /// UDP address of the WebTransport endpoint (not the QUIC one's).
    pub listen: SocketAddr,
    /// Origins allowed to open sessions (`https://chat.example`); empty allows any page.
    pub allowed_origins: Vec<String>,
}

impl Default for WebTransportSettings {
    fn default() -> Self {
        WebTransportSettings {
            enabled: false,
            listen: "0.0.0.0:7701".parse().expect("valid address"),
            allowed_origins: Vec::new(),
        }
    }
}

/// Where group messages are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessagesIn {
    /// Append-only segment files in `<data_dir>/messages` (`switchboard_store::segment`).
    #[default]
    Segment,
    /// sled's `log` and `dedupe` trees, as before the segment log.
    Sled,
}

/// The `[store]` section. See `examples/switchboard.toml` for the defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `"segment"` (default) or `"sled"`. A data directory whose messages are in sled is
    /// migrated to the segment log when the node starts with `"segment"`; going back is
    /// refused.
    pub messages: MessagesIn,
    /// Shards of the segment log (directories of segments; groups spread over them by
    /// hash; each one written costs its own fdatasync per commit). Fixed when created.
    pub shards: u16,
    /// Size a segment is sealed at.
    pub segment_bytes: u64,
    /// A group's sparse index gets an entry every this many of its messages.
    pub index_interval: u32,
    /// Newest messages per group whose client message ids dedupe resends.
    pub dedupe_window: u32,
    /// How often retention looks for segments to delete, in seconds (0 = never).
    pub retention_check_s: u64,
    pub retention: RetentionSettings,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let log = SegmentLogConfig::new("");
        StoreSettings {
            messages: MessagesIn::Segment,
            shards: log.shards,
            segment_bytes: log.segment_bytes,
            index_interval: log.index_interval,
            dedupe_window: log.dedupe_window,
            retention_check_s: 60,
            retention: RetentionSettings::default(),
        }
    }
}

/// The `[store.retention]` section: limits for every group (unset: none), then per tenant
/// and per group; unset limits fall through (group → tenant → these).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Messages older than this many seconds (by the time they were sent) may go.
    pub max_age_s: Option<u64>,
    /// Messages older than the group's newest this many may go.
    pub max_messages: Option<u64>,
    /// Messages older than the group's newest this many bytes may go.
    pub max_bytes: Option<u64>,
    pub tenants: Vec<TenantRetention>,
    pub groups: Vec<GroupRetention>,
}

/// A tenant's retention limits (`[[store.retention.tenants]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRetention {
    pub tenant: String,
    #[serde(default)]
    pub max_age_s: Option<u64>,
    #[serde(default)]
    pub max_messages: Option<u64>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// A group's retention limits (`[[store.retention.groups]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRetention {
    pub tenant: String,
    pub group: String,
    #[serde(default)]
    pub max_age_s: Option<u64>,
    #[serde(default)]
    pub max_messages: Option<u64>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

fn limits(
    max_age_s: Option<u64>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
) -> RetentionLimits {
    RetentionLimits {
        max_age_ms: max_age_s.map(|s| s.saturating_mul(1000)),
        max_messages,
        max_bytes,
    }
}

impl RetentionSettings {
    /// The store's retention, ids checked.
    pub fn retention(&self) -> Result<Retention, NodeError> {
        let mut r = Retention {
            default: limits(self.max_age_s, self.max_messages, self.max_bytes),
            ..Retention::default()
        };
        for t in &self.tenants {
            let id = TenantId::new(&t.tenant).map_err(|e| invalid("retention tenant", e))?;
            r.tenants
                .insert(id, limits(t.max_age_s, t.max_messages, t.max_bytes));
        }
        for g in &self.groups {
            let tenant = TenantId::new(&g.tenant).map_err(|e| invalid("retention tenant", e))?;
            let group = GroupId::new(&g.group).map_err(|e| invalid("retention group", e))?;
            r.groups.insert(
                (tenant, group),
                limits(g.max_age_s, g.max_messages, g.max_bytes),
            );
        }
        Ok(r)
    }
}

impl StoreSettings {
    /// How messages are kept in `data_dir`, with records up to what `limits` allow.
    pub fn message_log(&self, data_dir: &Path, limits: &Limits) -> Result<MessageLog, NodeError> {
        Ok(match self.messages {
            MessagesIn::Sled => MessageLog::Sled,
            MessagesIn::Segment => MessageLog::Segment(
                SegmentLogConfig::new(data_dir.join(MESSAGES_DIR))
                    .shards(self.shards)
                    .segment_bytes(self.segment_bytes)
                    .index_interval(self.index_interval)
                    .dedupe_window(self.dedupe_window)
                    // A message is a frame at most, plus the record's header.
                    .max_record_bytes(limits.max_frame_bytes.saturating_add(1024))
                    .retention(self.retention.retention()?),
            ),
        })
    }
}

/// The segment log's directory in the data directory.
pub const MESSAGES_DIR: &str = "messages";

/// The `[notify]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// `http[s]://host[:port]/path` to POST events to (JSON, one request per message; see
    /// `switchboard_edge::webhook`). Unset: events are log lines (target
    /// `switchboard::notify`).
    pub webhook: Option<String>,
    /// PEM file of the CAs an `https` webhook must be issued by (instead of the webpki roots),
    /// relative to the config file.
    pub webhook_ca: Option<PathBuf>,
}

/// The `[admin]` section: where the HTTP API listens, the operator's token, the server's
/// bounds, TLS, automatic rollback.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// TCP address of the HTTP API. Plain HTTP unless `[admin.tls]` is given: keep it on a
    /// private interface then.
    pub listen: SocketAddr,
    /// `false` turns the HTTP API off.
    pub enabled: bool,
    /// Name of the environment variable holding the admin token. Unset: no operator access
    /// over HTTP (tenant API keys still work).
    pub token_env: String,
    /// The admin token itself, for embedding (`switchboard dev`); never read from the file.
    #[serde(skip)]
    pub token: Option<String>,
    /// From accept (or the end of the previous response) to the end of the next request's
    /// head; also the TLS handshake's deadline and the keep-alive idle timeout.
    pub header_timeout_ms: u64,
    /// Reading one request's whole body; past it, 408 and the connection is closed.
    pub body_timeout_ms: u64,
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Certificate chain and key (PEM or DER) to serve the API over HTTPS.
    pub tls: Option<TlsFiles>,
    pub auto_rollback: AutoRollback,
    /// Lets a tenant's API key activate, canary, promote, roll back and abort the canary of
    /// its own tenant's plugins. Default `false`: only the admin token changes what serves
    /// (tenant keys upload, list and read status either way).
    pub tenant_rollout: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        let limits = ServerLimits::default();
        AdminSettings {
            listen: "127.0.0.1:7780".parse().expect("valid address"),
            enabled: true,
            token_env: "SWITCHBOARD_ADMIN_TOKEN".to_owned(),
            token: None,
            header_timeout_ms: limits.header_timeout.as_millis() as u64,
            body_timeout_ms: limits.body_timeout.as_millis() as u64,
            max_connections: limits.max_connections,
            tls: None,
            auto_rollback: AutoRollback::default(),
            tenant_rollout: false,
        }
    }
}

impl AdminSettings {
    /// The HTTP server's bounds.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:7700".parse().expect("valid address")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Name of the environment variable holding the tenant's token secret (≥ 16 bytes).
    /// Secrets are never written in the config file itself.
    pub secret_env: String,
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// The tenant's policy plugin (a `tenant-policy` component), if any. At start-up it is
    /// uploaded to the config store and activated unless that exact version and config is
    /// active already — so the file wins at each start. Tenants whose policies are managed
    /// over the API should leave this out.
    #[serde(default)]
    pub plugin: Option<PathBuf>,
    /// Values the plugin reads with `config-get`.
    #[serde(default)]
    pub plugin_config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub id: String,
    /// Open groups can be joined by any user of the tenant.
    #[serde(default)]
    pub open: bool,
    /// Defaults to `limits.max_group_members`.
    #[serde(default)]
    pub max_members: Option<u32>,
    /// Members added at start-up.
    #[serde(default)]
    pub members: Vec<String>,
}

/// The prefix of the environment variables that override config values ([`env_overrides`]).
pub const CONFIG_ENV_PREFIX: &str = "SWITCHBOARD_";

/// The config's keys that environment variables may set (with what is below them).
/// `tenants`, a list, is not among them; neither are other `SWITCHBOARD_*` variables
/// (`SWITCHBOARD_ADMIN_TOKEN`, `SWITCHBOARD_STORE_KEY`, …), whose names are no config key.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "store_key_file",
    "tls",
    "limits",
    "admin",
    "notify",
    "store",
    "plugin_compile",
    "plugins",
    "webtransport",
];

/// Sets the values that environment variables name into a parsed config file, as if they
/// were written in it: `SWITCHBOARD_LISTEN` sets `listen`, `SWITCHBOARD_ADMIN__LISTEN` sets
/// `listen` of `[admin]` (`__` between levels, names case-insensitive). A value is read as
/// TOML (`1000`, `true`, `["a", "b"]`) unless the file has a string there or it is not
/// TOML, then as a string (`127.0.0.1:7700`). Variables whose first part is no config key
/// are left alone. Returns the names of the variables used, sorted.
pub fn env_overrides(
    doc: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, String> {
    let mut used = Vec::new();
    let mut vars: Vec<(String, String)> = vars.into_iter().collect();
    vars.sort();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(CONFIG_ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if !ENV_KEYS.contains(&path[0].as_str()) {
            continue;
        }
        if path.iter().any(String::is_empty) {
            return Err(format!("{name}: an empty key between `__`"));
        }
        let (last, parents) = path.split_last().expect("split gives one part at least");
        let mut table = &mut *doc;
        for key in parents {
            let entry = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| format!("{name}: `{key}` is a value, not a section"))?;
        }
        let is_string = matches!(table.get(last), Some(toml::Value::String(_)));
        let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
            Ok(mut t) if !is_string => t.remove("v").unwrap_or(toml::Value::String(raw)),
            _ => toml::Value::String(raw),
        };
        table.insert(last.clone(), value);
        used.push(name);
    }
    Ok(used)
}

impl Config {
    /// Reads and validates a config file, with the values `SWITCHBOARD_*` environment
    /// variables override ([`env_overrides`]). Relative paths are taken from the file's
    /// folder (those from the environment too).
    pub fn load(path: &Path) -> Result<Config, NodeError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, NodeError> {
        let err = |detail: String| NodeError::Config {
            path: path.to_owned(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let used = env_overrides(&mut doc, env).map_err(err)?;
        // Without overrides, from the text: its errors name the line.
        let mut cfg: Config = if used.is_empty() {
            toml::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            toml::Value::Table(doc).try_into().map_err(|e| {
                err(format!(
                    "{e} (with {} from the environment)",
                    used.join(", ")
                ))
            })?
        };
        for name in &used {
            tracing::info!(variable = %name, "config value from the environment");
        }
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.data_dir = base.join(&cfg.data_dir);
        if let Some(key) = &mut cfg.store_key_file {
            *key = base.join(&*key);
        }
        for tls in [&mut cfg.tls, &mut cfg.admin.tls].into_iter().flatten() {
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
        }
        for t in &mut cfg.tenants {
            if let Some(p) = &mut t.plugin {
                *p = base.join(&*p);
            }
        }
        cfg.limits.validate().map_err(|e| err(e.to_string()))?;
        cfg.plugins.validate().map_err(|error| NodeError::Budget {
            path: path.to_owned(),
            error,
        })?;
        cfg.admin.server_limits().validate().map_err(err)?;
        if let Some(ca) = &mut cfg.notify.webhook_ca {
            *ca = base.join(&*ca);
        }
        webhook_sink(&cfg.notify).map_err(|e| err(e.to_string()))?;
        cfg.store
            .message_log(&cfg.data_dir, &cfg.limits)
            .map_err(|e| err(e.to_string()))?;
        if let Some(cluster) = &cfg.cluster {
            cluster
                .cluster_config(&cfg.limits)
                .map_err(|e| err(e.to_string()))?;
        }
        if cfg.store.segment_bytes < u64::from(cfg.limits.max_frame_bytes) + 1024 {
            return Err(err(
                "store.segment_bytes must hold the largest message (limits.max_frame_bytes + 1024)"
                    .into(),
            ));
        }
        Ok(cfg)
    }
}

/// The `[notify]` section's webhook sink, if one is configured.
fn webhook_sink(
    notify: &NotifySettings,
) -> Result<Option<switchboard_edge::webhook::WebhookSink>, NodeError> {
    use switchboard_edge::webhook::WebhookSink;
    let Some(url) = &notify.webhook else {
        if notify.webhook_ca.is_some() {
            return Err(NodeError::Invalid(
                "webhook_ca is set without a webhook".into(),
            ));
        }
        return Ok(None);
    };
    let sink = match &notify.webhook_ca {
        None => WebhookSink::new(url),
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| invalid(&path.display().to_string(), e))?;
            WebhookSink::with_ca_pem(url, &pem)
        }
    };
    sink.map(Some)
        .map_err(|e| NodeError::Invalid(e.to_string()))
}

fn invalid(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Invalid(format!("{what}: {e}"))
}

/// Creates or updates the config file's tenants, groups and members in the store.
pub fn seed(store: &dyn Store, cfg: &Config) -> Result<(), NodeError> {
    for t in &cfg.tenants {
        let id = TenantId::new(&t.id).map_err(|e| invalid("tenant id", e))?;
        let secret = std::env::var(&t.secret_env).map_err(|_| {
            NodeError::Invalid(format!(
                "tenant {id}: environment variable {} is not set",
                t.secret_env
            ))
        })?;
        if secret.len() < switchboard_core::token::MIN_SECRET_LEN {
            return Err(NodeError::Invalid(format!(
                "tenant {id}: secret must be at least {} bytes",
                switchboard_core::token::MIN_SECRET_LEN
            )));
        }
        store.put_tenant(&TenantRecord {
            id: id.clone(),
            secret: secret.into_bytes(),
        })?;
        for g in &t.groups {
            let gid = GroupId::new(&g.id).map_err(|e| invalid("group id", e))?;
            let max = g
                .max_members
                .unwrap_or(cfg.limits.max_group_members)
                .min(cfg.limits.max_group_members);
            ensure_group(
                store,
                &id,
                &gid,
                GroupMeta {
                    open: g.open,
                    max_members: max,
                },
            )?;
            for m in &g.members {
                let uid = UserId::new(m).map_err(|e| invalid("member id", e))?;
                store.add_member(&id, &gid, &uid)?;
            }
        }
    }
    store.flush()?;
    Ok(())
}

/// Creates the group unless it exists.
pub fn ensure_group(
    store: &dyn Store,
    tenant: &TenantId,
    group: &GroupId,
    meta: GroupMeta,
) -> Result<(), NodeError> {
    match store.create_group(tenant, group, meta) {
        Ok(()) | Err(StoreError::GroupExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Opens the store in `data_dir` (created 0700) with the default key file,
/// `<data_dir>/store.key`, and the default `[store]` settings.
pub fn open_store(data_dir: &Path) -> Result<Arc<NodeStore>, NodeError> {
    open_node_store(
        data_dir,
        None,
        &StoreSettings::default(),
        &Limits::default(),
    )
}

/// Opens the node's store in `data_dir` (created 0700): sled (its secrets sealed with
/// `key_file`, default `<data_dir>/store.key`) and the messages as `settings` say,
/// migrating a sled message log to the segment log if needed.
pub fn open_node_store(
    data_dir: &Path,
    key_file: Option<&Path>,
    settings: &StoreSettings,
    limits: &Limits,
) -> Result<Arc<NodeStore>, NodeError> {
    let sled = open_sled_store(data_dir, key_file)?;
    let messages = settings.message_log(data_dir, limits)?;
    let store = NodeStore::open(sled, messages, Some(data_dir.join(MESSAGES_DIR)))?;
    Ok(Arc::new(store))
}

/// The environment variable that may hold the store key (the key file's text), for
/// deployments that keep secrets in the environment rather than in a file. When set, it is
/// used instead of any key file.
pub const STORE_KEY_ENV: &str = "SWITCHBOARD_STORE_KEY";

/// Opens only the sled part of the store in `data_dir` (created 0700), its secrets sealed
/// with the key in `$SWITCHBOARD_STORE_KEY` if set, else with `key_file` (default
/// `<data_dir>/store.key`): tenants, groups, config; for commands that need no messages
/// (`token`, `keys rotate`).
pub fn open_sled_store(data_dir: &Path, key_file: Option<&Path>) -> Result<SledStore, NodeError> {
    private_dir(data_dir)
        .map_err(|e| NodeError::Invalid(format!("data directory {}: {e}", data_dir.display())))?;
    let mut config = SledStoreConfig::new(data_dir.join("store"));
    if let Some(key) = key_file {
        config = config.key_file(key);
    }
    if let Some(text) = std::env::var(STORE_KEY_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        config = config.key_text(text);
    }
    Ok(SledStore::open_with(config)?)
}

/// Opens the store of the node `cfg` describes (see [`open_node_store`]). A `[cluster]`
/// node needs [`open_for`] instead, which also starts its cluster part.
pub fn open_store_for(cfg: &Config) -> Result<Arc<NodeStore>, NodeError> {
    if cfg.cluster.is_some() {
        return Err(NodeError::Invalid(
            "this node is configured with [cluster]: open it with open_for".into(),
        ));
    }
    open_node_store(
        &cfg.data_dir,
        cfg.store_key_file.as_deref(),
        &cfg.store,
        &cfg.limits,
    )
}

/// Creates `dir` 0700 (with any missing parents), or makes an existing one 0700: the data
/// directory holds the store, its key and the TLS key.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
        if mode != 0o700 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "data directory was accessible to other users; made it 0700"
            );
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Rotates the store key of the store in `data_dir` (the node must be stopped: the store is
/// opened here; a running node rotates through its admin API, `POST
/// /v1/node/store-key/rotation`). Returns the new key's id and how many tenant secrets were
/// sealed again.
pub fn rotate_store_key(
    data_dir: &Path,
    key_file: Option<&Path>,
) -> Result<(u32, usize), NodeError> {
    let store = open_sled_store(data_dir, key_file).map_err(|e| match e {
        NodeError::Store(StoreError::Io(detail)) if detail.contains("could not acquire lock") => {
            NodeError::Invalid(format!(
                "the store in {} is in use (is the node running?); stop the node to rotate \
                 its key here, or rotate it on the running node: `switchboard ctl node \
                 rotate-store-key`",
                data_dir.display()
            ))
        }
        e => e,
    })?;
    Ok(store.rotate_secrets_key()?)
}

/// The TLS identity for `cfg`: its files, or the dev certificate in the data dir.
/// Returns the identity and, for the dev certificate, the path clients should pin.
pub fn identity(cfg: &Config) -> Result<(TlsIdentity, Option<PathBuf>), NodeError> {
    match &cfg.tls {
        Some(f) => Ok((TlsIdentity::load(&f.cert, &f.key)?, None)),
        None => {
            let (id, path) = TlsIdentity::dev_in(&cfg.data_dir)?;
            Ok((id, Some(path)))
        }
    }
}

/// Reads and checks every tenant plugin the config file binds (size, component, world,
/// imports), refusing on any bad one: a node that silently ran a tenant without its policy
/// would be worse than one that does not start. Returns each tenant's bytes and config.
#[allow(clippy::type_complexity)]
pub fn load_policies(
    cfg: &Config,
    engine: &PolicyEngine,
) -> Result<Vec<(TenantId, Vec<u8>, BTreeMap<String, String>)>, NodeError> {
    let mut out = Vec::new();
    for t in &cfg.tenants {
        let Some(path) = &t.plugin else { continue };
        let err = |detail: String| NodeError::Plugin {
            tenant: t.id.clone(),
            path: path.clone(),
            detail,
        };
        let tenant = TenantId::new(&t.id).map_err(|e| invalid("tenant id", e))?;
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        engine.load(&bytes).map_err(|e| err(e.to_string()))?;
        out.push((tenant, bytes, t.plugin_config.clone()));
    }
    Ok(out)
}

/// A started node: the QUIC edge, its control plane and (if enabled) the HTTP API.
pub struct RunningNode {
    pub node: Node,
    pub control: Arc<Control>,
    /// Where the HTTP API listens, if it is enabled.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
    /// The retention pass, if retention is configured.
    retention: Option<JoinHandle<()>>,
    /// The node's cluster part, in cluster mode.
    pub cluster: Option<Arc<ClusterNode>>,
    /// Cluster mode: delivers other nodes' commits to this node's sessions.
    remote: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("quic", &self.node.local_addr())
            .field("admin", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl RunningNode {
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// Stops the HTTP API, then drains the edge (see [`Node::shutdown`]); in cluster mode
    /// then hands the node's shards over (every in-flight append was acknowledged by then).
    pub async fn shutdown(self) {
        if let Some(task) = self.retention {
            task.abort();
        }
        if let Some((stop, task)) = self.admin {
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some(task) = self.remote {
            task.abort();
        }
        self.node.shutdown().await;
        if let Some(cluster) = self.cluster {
            let drained = tokio::task::spawn_blocking(move || cluster.drain()).await;
            match drained {
                Ok(Ok(())) => tracing::info!("cluster node drained: shards handed over"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cluster drain incomplete; leases expire by their TTL")
                }
                Err(e) => tracing::warn!(error = %e, "cluster drain task failed"),
            }
        }
    }
}

/// Starts a node for `cfg` over `store`: the edge, the control plane (which applies every
/// binding, flag and override in the config store), the config file's plugins, and the HTTP
/// API.
pub async fn start(cfg: &Config, store: Arc<NodeStore>) -> Result<RunningNode, NodeError> {
    start_opened(
        cfg,
        Opened {
            store,
            cluster: None,
            shared: None,
        },
    )
    .await
}

/// [`start`] for what [`open_for`] opened (a cluster node included).
pub async fn start_opened(cfg: &Config, opened: Opened) -> Result<RunningNode, NodeError> {
    let Opened {
        store,
        cluster,
        shared,
    } = opened;
    let engine = PolicyEngine::new(cfg.plugins.apply(cfg.plugin_compile.policy_limits()))?;
    // Check the file's plugins before anything starts or is stored.
    let file_plugins = load_policies(cfg, &engine)?;
    let webhook = webhook_sink(&cfg.notify)?;
    let (identity, _) = identity(cfg)?;
    let webtransport = if cfg.webtransport.enabled {
        let identity = match &cfg.tls {
            Some(_) => identity.clone(),
            None => TlsIdentity::webtransport_dev()?,
        };
        Some(WebTransportConfig {
            listen: cfg.webtransport.listen,
            identity,
            allowed_origins: cfg.webtransport.allowed_origins.clone(),
        })
    } else {
        None
    };
    let node = Node::start(
        EdgeConfig {
            listen: cfg.listen,
            limits: cfg.limits.clone(),
            identity,
            webtransport,
        },
        store.clone(),
    )
    .await?;
    if let (Some(addr), Some(hash)) = (node.webtransport_addr(), node.webtransport_cert_sha256()) {
        tracing::info!(%addr, certificate_sha256 = hash, "browsers connect over WebTransport");
    }
    if let Some(sink) = webhook {
        tracing::info!(
            url = cfg.notify.webhook.as_deref().unwrap_or(""),
            "push notifications go to a webhook"
        );
        node.hub().set_notify_sink(Arc::new(sink));
    }
    let token = cfg
        .admin
        .token
        .clone()
        .or_else(|| std::env::var(&cfg.admin.token_env).ok())
        .filter(|t| !t.is_empty());
    if token.is_none() && cfg.admin.enabled {
        tracing::warn!(
            env = %cfg.admin.token_env,
            "no admin token: operator endpoints of the HTTP API refuse every call"
        );
    }
    let control = Control::start(
        ControlConfig {
            admin_token_sha256: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            artifact_dir: cfg.data_dir.join("artifacts"),
            auto_rollback: cfg.admin.auto_rollback,
            apply_timeout: Duration::from_secs(5),
            max_group_members: cfg.limits.max_group_members,
            tenant_rollout: cfg.admin.tenant_rollout,
        },
        store.clone(),
        match shared {
            Some(shared) => Arc::new(shared) as Arc<dyn switchboard_store::ConfigStore>,
            None => Arc::new(store.sled().clone()),
        },
        node.hub().clone(),
        engine,
    )
    .await?;
    if let Some(c) = &cluster {
        control.set_node_id(c.node());
    }
    let retention = retention_task(&cfg.store, store);
    // Cluster mode: other nodes' commits go to this node's sessions, in notice order, and
    // presence is shared with the other nodes.
    let remote = cluster.as_ref().map(|c| {
        let hub = node.hub().clone();
        hub.set_elsewhere(Arc::new(cluster::Elsewhere(c.presence())));
        let (commits, presence) = (c.take_committed(), c.take_presence_changes());
        tokio::spawn(async move {
            let commits = async {
                let Some(mut rx) = commits else { return };
                while let Some(c) = rx.recv().await {
                    match c.news {
                        News::Message(m) => hub.deliver_remote(&c.tenant, &c.group, m).await,
                        News::Head(seq) => hub.reveal_remote(&c.tenant, &c.group, seq).await,
                    }
                }
            };
            let presence = async {
                let Some(mut rx) = presence else { return };
                while let Some(p) = rx.recv().await {
                    hub.remote_presence(&p.tenant, &p.user, p.state);
                }
            };
            tokio::join!(commits, presence);
        })
    });
    for (tenant, bytes, config) in file_plugins {
        bind_file_plugin(&control, &tenant, bytes, config).await?;
    }
    let (admin_addr, admin) = if cfg.admin.enabled {
        let admin_err = |detail: String| NodeError::Admin {
            addr: cfg.admin.listen,
            detail,
        };
        let tls = cfg
            .admin
            .tls
            .as_ref()
            .map(|files| {
                let id = TlsIdentity::load(&files.cert, &files.key)
                    .map_err(|e| admin_err(format!("TLS: {e}")))?;
                switchboard_admin::http::tls_config(id.cert_chain, id.key)
                    .map_err(|e| admin_err(e.to_string()))
            })
            .transpose()?;
        let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
        let options = ServeOptions {
            limits: cfg.admin.server_limits(),
            tls,
        };
        let listener = tokio::net::TcpListener::bind(cfg.admin.listen)
            .await
            .map_err(|e| NodeError::Admin {
                addr: cfg.admin.listen,
                detail: e.to_string(),
            })?;
        let addr = listener.local_addr().map_err(|e| NodeError::Admin {
            addr: cfg.admin.listen,
            detail: e.to_string(),
        })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(switchboard_admin::http::serve_with(
            listener,
            control.clone(),
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        tracing::info!(%addr, "admin API listening ({scheme})");
        (Some(addr), Some((stop, task)))
    } else {
        (None, None)
    };
    Ok(RunningNode {
        node,
        control,
        admin_addr,
        admin,
        retention,
        cluster,
        remote,
    })
}

/// Runs retention every `retention_check_s` (off the async workers: it syncs and deletes
/// files), if any limit is configured.
fn retention_task(settings: &StoreSettings, store: Arc<NodeStore>) -> Option<JoinHandle<()>> {
    let limited = store
        .segment_log()
        .is_some_and(|log| log.config().retention.is_limited());
    if !limited || settings.retention_check_s == 0 {
        return None;
    }
    let every = Duration::from_secs(settings.retention_check_s);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let store = store.clone();
            let pass = tokio::task::spawn_blocking(move || {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                store.enforce_retention(now_ms)
            })
            .await;
            match pass {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "retention pass failed"),
                Err(e) => tracing::warn!(error = %e, "retention pass panicked"),
            }
        }
    }))
}

/// Uploads a config-file plugin (a no-op if stored) and activates it with the file's
/// config unless exactly that is active.
async fn bind_file_plugin(
    control: &Control,
    tenant: &TenantId,
    bytes: Vec<u8>,
    config: BTreeMap<String, String>,
) -> Result<(), NodeError> {
    let uploaded = control
        .upload_plugin(&Caller::Admin, tenant.as_str(), bytes.into())
        .await?;
    let status = control.policy_status(tenant.as_str())?;
    let version = uploaded.plugin.version;
    let active = status
        .active
        .as_ref()
        .is_some_and(|a| a.version == version && a.config == config);
    if !active {
        control
            .activate(tenant.as_str(), &Activate { version, config })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn overridden(file: &str, env: &[(&str, &str)]) -> Result<(toml::Table, Vec<String>), String> {
        let mut doc: toml::Table = toml::from_str(file).unwrap();
        let used = env_overrides(&mut doc, vars(env))?;
        Ok((doc, used))
    }

    #[test]
    fn env_values_land_where_their_names_point_typed_as_toml() {
        let (doc, used) = overridden(
            "data_dir = \"d\"\n[limits]\nmax_payload_bytes = 10\n",
            &[
                ("SWITCHBOARD_LISTEN", "127.0.0.1:9000"),
                ("SWITCHBOARD_LIMITS__MAX_PAYLOAD_BYTES", "2048"),
                ("SWITCHBOARD_ADMIN__LISTEN", "127.0.0.1:9001"),
                ("SWITCHBOARD_WEBTRANSPORT__ENABLED", "true"),
                (
                    "SWITCHBOARD_WEBTRANSPORT__ALLOWED_ORIGINS",
                    "[\"https://a\"]",
                ),
                // A string in the file stays a string, even when it reads as a number.
                ("SWITCHBOARD_DATA_DIR", "2026"),
            ],
        )
        .unwrap();
        assert_eq!(doc["listen"].as_str(), Some("127.0.0.1:9000"));
        assert_eq!(doc["limits"]["max_payload_bytes"].as_integer(), Some(2048));
        assert_eq!(doc["admin"]["listen"].as_str(), Some("127.0.0.1:9001"));
        assert_eq!(doc["webtransport"]["enabled"].as_bool(), Some(true));
        assert_eq!(
            doc["webtransport"]["allowed_origins"][0].as_str(),
            Some("https://a")
        );
        assert_eq!(doc["data_dir"].as_str(), Some("2026"));
        assert_eq!(used.len(), 6);
    }

    #[test]
    fn other_switchboard_variables_are_no_config_values() {
        let (doc, used) = overridden(
            "data_dir = \"d\"\n",
            &[
                ("SWITCHBOARD_ADMIN_TOKEN", "secret"),
                ("SWITCHBOARD_STORE_KEY", "k"),
                ("SWITCHBOARD_TOKEN", "sb1.x"),
                ("SWITCHBOARD_TENANTS", "[]"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert!(used.is_empty());
        assert_eq!(doc.len(), 1);
    }

    #[test]
    fn a_value_where_a_section_is_refused_with_its_name() {
        let e = overridden("data_dir = \"d\"\n", &[("SWITCHBOARD_DATA_DIR__X", "1")]).unwrap_err();
        assert!(
            e.contains("SWITCHBOARD_DATA_DIR__X") && e.contains("data_dir"),
            "{e}"
        );
        let e = overridden("", &[("SWITCHBOARD_LIMITS____X", "1")]).unwrap_err();
        assert!(e.contains("empty key"), "{e}");
    }
}
