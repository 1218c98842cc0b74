//! The control plane: every operation the HTTP API offers, without HTTP. It writes the config
//! store; the [`reconcile`] task applies what the store says to the hub (so a change takes
//! effect the same way whoever made it), and the [`rollback`] monitor takes failing versions
//! out of service.
//!
//! Authorization lives here too ([`Control::authenticate`], [`Control::authorize_tenant`]):
//! the HTTP layer only maps a request to a call.

mod compiled;
mod error;
mod groups;
mod node;
pub(crate) mod observe;
mod plugins;
mod policy;
mod reconcile;
mod rollback;
mod shared;
mod tenants;
pub mod types;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use switchboard_core::TenantId;
use switchboard_edge::Hub;
use switchboard_policy::{ArtifactCache, PolicyEngine};
use switchboard_store::{ConfigStore, Store};
use tokio::sync::watch;

pub use compiled::COMPILED_PLUGINS;
pub use error::ControlError;
pub use observe::{
    DEFAULT_CONNECTIONS_PAGE, DEFAULT_TRAFFIC_PAGE, MAX_CONNECTIONS_PAGE, MAX_FILTER_BYTES,
    MAX_TRAFFIC_PAGE, SLOW_CONSUMERS_SHOWN,
};
pub use rollback::AutoRollback;
use types::Caller;

/// How the control plane is set up.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// SHA-256 of the operator's admin token; `None` disables admin access (tenant keys
    /// still work).
    pub admin_token_sha256: Option<[u8; 32]>,
    /// Where compiled plugin artifacts are cached.
    pub artifact_dir: PathBuf,
    /// When a serving version is taken out of service by itself.
    pub auto_rollback: AutoRollback,
    /// Most time an activation waits for this node to apply it before answering
    /// `not-applied` (the change is stored and still applies when it can).
    pub apply_timeout: Duration,
    /// Largest group a tenant may create (the node's `max_group_members`).
    pub max_group_members: u32,
    /// Whether a tenant's API key may also change which of its own plugin versions serve
    /// (activate, canary, abort, promote, roll back). Off by default: then only the admin
    /// token may (`[admin] tenant_rollout` in the node's config).
    pub tenant_rollout: bool,
}

/// The control plane of one node. Cheap to share (`Arc`).
pub struct Control {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Arc<dyn ConfigStore>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) engine: PolicyEngine,
    pub(crate) cache: ArtifactCache,
    pub(crate) settings: ControlConfig,
    /// Stored versions compiled on this node, by (tenant, version), at most
    /// [`COMPILED_PLUGINS`]: activation after the first is a lookup.
    pub(crate) plugins: compiled::CompiledPlugins,
    /// Per tenant, the binding revision this node is serving.
    pub(crate) applied: DashMap<TenantId, watch::Sender<u64>>,
    /// Serialises applying bindings (the reconcile task and start-up).
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
    /// Per tenant, the policies serving now with what they were made for.
    pub(crate) bound: DashMap<TenantId, reconcile::Bound>,
    /// Versions the node rolled back by itself since start.
    pub(crate) auto_rollbacks: AtomicU64,
    /// Bounds compiles and self-tests at once ([`plugins::COMPILE_SLOTS`]).
    pub(crate) compile_slots: Arc<tokio::sync::Semaphore>,
    /// When the control plane started (uptime in `GET /v1/node`).
    pub(crate) started: std::time::Instant,
    pub(crate) started_at_ms: u64,
    /// Turns true when an operator asked the node to drain (`POST /v1/node/drain`).
    pub(crate) drain: watch::Sender<bool>,
    /// The node's cluster id, in cluster mode ([`Control::set_node_id`]).
    pub(crate) node_id: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Builds the control plane, applies everything the config store holds (bindings, flags,
    /// degradation override) to the hub, and starts the watch and rollback tasks. They stop
    /// when the returned `Arc` is dropped.
    pub async fn start(
        settings: ControlConfig,
        store: Arc<dyn Store>,
        config: Arc<dyn ConfigStore>,
        hub: Arc<Hub>,
        engine: PolicyEngine,
    ) -> Result<Arc<Control>, ControlError> {
        let cache = ArtifactCache::open(&settings.artifact_dir)
            .map_err(|e| ControlError::Internal(format!("artifact cache: {e}")))?;
        let control = Arc::new(Control {
            store,
            config,
            hub,
            engine,
            cache,
            settings,
            plugins: compiled::CompiledPlugins::new(COMPILED_PLUGINS),
            applied: DashMap::new(),
            apply_lock: tokio::sync::Mutex::new(()),
            bound: DashMap::new(),
            auto_rollbacks: AtomicU64::new(0),
            compile_slots: Arc::new(tokio::sync::Semaphore::new(plugins::COMPILE_SLOTS)),
            started: std::time::Instant::now(),
            started_at_ms: shared::now_ms(),
            drain: watch::channel(false).0,
            node_id: std::sync::OnceLock::new(),
        });
        reconcile::start(&control).await?;
        rollback::start(&control);
        Ok(control)
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Names this node's cluster id, which a drain request may name (set once, in cluster
    /// mode).
    pub fn set_node_id(&self, id: &str) {
        let _ = self.node_id.set(id.to_owned());
    }

    /// Asks the node to drain, as SIGTERM does (the process's main loop acts on
    /// [`Control::drain_requested`]). Refused with `Conflict` when `req` names another node
    /// than this one (or a node at all, when this one is not in a cluster).
    pub fn request_drain(
        &self,
        req: &types::DrainRequest,
    ) -> Result<types::Draining, ControlError> {
        let this = self.node_id.get();
        if let Some(named) = &req.node {
            match this {
                Some(id) if id == named => {}
                Some(id) => {
                    return Err(ControlError::Conflict(format!(
                        "this is node {id}, not {named}: nothing was drained"
                    )))
                }
                None => {
                    return Err(ControlError::Conflict(format!(
                        "this node is not in a cluster, so it is not {named}: nothing was drained"
                    )))
                }
            }
        }
        tracing::warn!(
            node = this.map(String::as_str),
            "drain requested through the admin API"
        );
        self.drain.send_replace(true);
        Ok(types::Draining {
            node: this.cloned(),
            draining: true,
        })
    }

    /// Turns true once a drain was requested ([`Control::request_drain`]).
    pub fn drain_requested(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Compiled plugins held in memory for activation (at most [`COMPILED_PLUGINS`]; the
    /// versions serving are held by the hub besides). A refused upload never adds one.
    pub fn compiled_plugins(&self) -> usize {
        self.plugins.len()
    }

    /// Artifacts in the compiled-plugin cache on disk. Only stored versions have one.
    pub fn artifact_count(&self) -> Result<usize, ControlError> {
        self.cache
            .artifact_count()
            .map_err(|e| ControlError::Internal(e.to_string()))
    }

    /// Seconds since the control plane started (the node's uptime).
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Versions this node rolled back by itself since it started.
    pub fn auto_rollbacks(&self) -> u64 {
        self.auto_rollbacks.load(Ordering::Relaxed)
    }

    /// Checks a bearer token: the admin token, or a tenant API key.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Caller, ControlError> {
        tenants::authenticate(self, bearer)
    }

    /// Whether `caller` may act on `tenant`'s resources (admins may act on every tenant).
    pub fn authorize_tenant(&self, caller: &Caller, tenant: &str) -> Result<(), ControlError> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::Tenant { tenant: own, .. } if own == tenant => Ok(()),
            Caller::Tenant { .. } => Err(ControlError::Forbidden(format!(
                "this key does not reach tenant {tenant}"
            ))),
        }
    }

    /// Whether `caller` may change which versions serve `tenant`: the operator always; the
    /// tenant's own key only when the operator allowed it ([`ControlConfig::tenant_rollout`]).
    pub fn authorize_rollout(&self, caller: &Caller, tenant: &str) -> Result<(), ControlError> {
        self.authorize_tenant(caller, tenant)?;
        match caller {
            Caller::Admin => Ok(()),
            Caller::Tenant { .. } if self.settings.tenant_rollout => Ok(()),
            Caller::Tenant { .. } => Err(ControlError::Forbidden(
                "changing which plugin version serves needs the admin token on this node \
                 (the operator can let tenant keys do it: `tenant_rollout = true` in [admin])"
                    .to_owned(),
            )),
        }
    }

    /// Refuses anyone but the operator.
    pub fn require_admin(&self, caller: &Caller) -> Result<(), ControlError> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::Tenant { .. } => Err(ControlError::Forbidden(
                "this endpoint needs the admin token".to_owned(),
            )),
        }
    }
}
