//! Cluster mode (`[cluster]`, docs/cluster.md): its settings, and opening a node's store
//! with its cluster part.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use switchboard_cluster::{ClusterNode, SharedStore};
use switchboard_core::Limits;
use switchboard_store::{MessageLog, NodeStore};

use crate::{invalid, open_sled_store, open_store_for, Config, NodeError};

/// The `[cluster]` section (see docs/cluster.md). With it, group messages live in NATS
/// JetStream (`[store] messages` is then unused) and this node appends only to the groups
/// of the shards it holds the lease of; tenants, groups, members and the config store are
/// shared by every node through NATS (mirrored in each node's data directory); cursors and
/// receipts stay in this node's own data directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS server URL(s), comma-separated: `nats://10.0.0.1:4222,nats://10.0.0.2:4222`.
    pub nats: String,
    /// This node's id: unique in the cluster and the same across restarts. 1 to 64
    /// letters, digits, `-`, `_`.
    pub node: String,
    /// Prefix of every stream, subject and bucket, so clusters can share a NATS. Default
    /// `sb`.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// Copies of each stream and bucket: 3 in production (a NATS cluster of 3 or more),
    /// 1 for a single nats-server. Default 3.
    #[serde(default = "default_cluster_replicas")]
    pub replicas: usize,
    /// Shard lease and heartbeat lifetime. A dead node's shards move about this long after
    /// it died. Default 10 000; at least 1 000.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// One NATS request waits at most this long. Default 5 000.
    #[serde(default = "default_nats_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_cluster_prefix() -> String {
    "sb".to_owned()
}
fn default_cluster_replicas() -> usize {
    3
}
fn default_lease_ttl_ms() -> u64 {
    10_000
}
fn default_nats_request_timeout_ms() -> u64 {
    5_000
}

/// The shortest lease TTL `[cluster]` accepts: renewals every third of it must fit a NATS
/// round trip with room to spare on a loaded machine.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;

impl ClusterSettings {
    /// The cluster crate's settings, checked.
    pub fn cluster_config(
        &self,
        limits: &Limits,
    ) -> Result<switchboard_cluster::ClusterConfig, NodeError> {
        if !switchboard_cluster::members::valid_node_id(&self.node) {
            return Err(NodeError::Invalid(format!(
                "cluster.node {:?}: use 1 to 64 letters, digits, '-' or '_'",
                self.node
            )));
        }
        if self.lease_ttl_ms < MIN_LEASE_TTL_MS {
            return Err(NodeError::Invalid(format!(
                "cluster.lease_ttl_ms must be at least {MIN_LEASE_TTL_MS}"
            )));
        }
        if self.replicas == 0 || self.request_timeout_ms == 0 {
            return Err(NodeError::Invalid(
                "cluster.replicas and cluster.request_timeout_ms must be above 0".into(),
            ));
        }
        switchboard_cluster::names::LogNames::new(&self.prefix)
            .map_err(|e| invalid("cluster.prefix", e))?;
        let mut log = switchboard_cluster::JetStreamLogConfig::new(&self.nats, &self.prefix)
            .replicas(self.replicas)
            // A message is a frame at most, plus the headers.
            .max_message_bytes(limits.max_frame_bytes.saturating_add(4096));
        log.request_timeout = Duration::from_millis(self.request_timeout_ms);
        Ok(switchboard_cluster::ClusterConfig {
            node: self.node.clone(),
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
            log,
        })
    }
}

/// A node's store and, in cluster mode, its cluster part (which the store's group log
/// appends through).
#[derive(Debug)]
pub struct Opened {
    pub store: Arc<NodeStore>,
    pub cluster: Option<Arc<ClusterNode>>,
    /// Cluster mode: the directory and config store every node shares, which the control
    /// plane runs on (else it runs on the store's own sled).
    pub shared: Option<SharedStore>,
}

/// Opens the store of the node `cfg` describes; with `[cluster]`, connects to NATS and
/// starts the node's cluster part first (heartbeats and shard keeper: see
/// `switchboard_cluster::ClusterNode`), and keeps group messages in JetStream.
pub fn open_for(cfg: &Config) -> Result<Opened, NodeError> {
    let Some(settings) = &cfg.cluster else {
        return Ok(Opened {
            store: open_store_for(cfg)?,
            cluster: None,
            shared: None,
        });
    };
    let sled = open_sled_store(&cfg.data_dir, cfg.store_key_file.as_deref())?;
    let cluster = ClusterNode::start(settings.cluster_config(&cfg.limits)?)
        .map_err(|e| NodeError::Cluster(e.to_string()))?;
    let shared = cluster
        .share(sled.clone())
        .map_err(|e| NodeError::Cluster(e.to_string()))?;
    let store = NodeStore::open(sled, MessageLog::Backend(cluster.backend()), None)?
        .with_directory(Arc::new(shared.clone()));
    Ok(Opened {
        store: Arc::new(store),
        cluster: Some(Arc::new(cluster)),
        shared: Some(shared),
    })
}

/// The cluster's presence as the hub asks for it (`switchboard_edge::elsewhere`).
pub(crate) struct Elsewhere(pub switchboard_cluster::presence::ClusterPresence);

impl switchboard_edge::elsewhere::Elsewhere for Elsewhere {
    fn local_presence(
        &self,
        tenant: &switchboard_core::TenantId,
        user: &switchboard_core::UserId,
        state: Option<switchboard_core::PresenceState>,
    ) {
        self.0.local_presence(tenant, user, state)
    }

    fn presence_elsewhere(
        &self,
        tenant: &switchboard_core::TenantId,
        user: &switchboard_core::UserId,
    ) -> Option<switchboard_core::PresenceState> {
        self.0.presence_elsewhere(tenant, user)
    }
}
