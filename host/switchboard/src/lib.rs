//! The Switchboard node as a library: the config file, seeding the store from it, and
//! starting a node. `main.rs` is only the command line over this.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use switchboard_core::{GroupId, Limits, TenantId, UserId};
use switchboard_edge::{EdgeConfig, Node, TlsIdentity};
use switchboard_policy::{PolicyEngine, PolicyLimits, TenantPolicy};
use switchboard_store::{GroupMeta, SledStore, Store, StoreError, TenantRecord};

/// Why a node could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("config file {path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Edge(#[from] switchboard_edge::EdgeError),
    #[error("policy engine: {0}")]
    PolicyEngine(#[from] switchboard_policy::EngineError),
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
    /// Where sled keeps its files (and the dev certificate, if no `[tls]` is given).
    pub data_dir: PathBuf,
    /// Certificate and key (PEM or DER). Without it a self-signed certificate is created in
    /// `data_dir` — fine for development, not for phones in the wild.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub limits: Limits,
    /// Tenants to create or update at start-up.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
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
    /// The tenant's policy plugin (a `tenant-policy` component), if any. Until the config
    /// store lands, plugins are bound here and loaded at start-up.
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

impl Config {
    /// Reads and validates a config file. Relative paths are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Config, NodeError> {
        let err = |detail: String| NodeError::Config {
            path: path.to_owned(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.data_dir = base.join(&cfg.data_dir);
        if let Some(tls) = &mut cfg.tls {
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
        }
        for t in &mut cfg.tenants {
            if let Some(p) = &mut t.plugin {
                *p = base.join(&*p);
            }
        }
        cfg.limits.validate().map_err(|e| err(e.to_string()))?;
        Ok(cfg)
    }
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

/// Opens the store in `data_dir`.
pub fn open_store(data_dir: &Path) -> Result<Arc<SledStore>, NodeError> {
    Ok(Arc::new(SledStore::open(&data_dir.join("store"))?))
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

/// Loads every tenant plugin the config binds, refusing to start on any bad one (a node that
/// silently ran a tenant without its policy would be worse than one that does not start).
pub fn load_policies(
    cfg: &Config,
    engine: &PolicyEngine,
) -> Result<Vec<(TenantId, Arc<TenantPolicy>)>, NodeError> {
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
        let plugin = engine.load(&bytes).map_err(|e| err(e.to_string()))?;
        let policy = TenantPolicy::new(&plugin, t.id.clone(), t.plugin_config.clone());
        out.push((tenant, Arc::new(policy)));
    }
    Ok(out)
}

/// Starts a node for `cfg` over `store`, with the tenants' policy plugins bound.
pub async fn start(cfg: &Config, store: Arc<dyn Store>) -> Result<Node, NodeError> {
    let engine = PolicyEngine::new(PolicyLimits::default())?;
    let policies = load_policies(cfg, &engine)?;
    let (identity, _) = identity(cfg)?;
    let node = Node::start(
        EdgeConfig {
            listen: cfg.listen,
            limits: cfg.limits.clone(),
            identity,
        },
        store,
    )
    .await?;
    for (tenant, policy) in policies {
        tracing::info!(%tenant, plugin_bytes = policy.plugin().size(), "policy bound");
        node.hub().set_policy(&tenant, Some(policy));
    }
    Ok(node)
}
