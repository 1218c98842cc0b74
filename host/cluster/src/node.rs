//! [`ClusterNode`]: one Switchboard node's part of the cluster — the JetStream group log,
//! its heartbeats ([`Members`]), its shard keeper ([`KeeperTask`]) — and the log the node's
//! store appends through ([`ClusterNode::backend`]), which appends only to shards this node
//! serves.
//!
//! Everything runs on the log's own runtime (see `bridge.rs`), so a node starts its cluster
//! part from any thread, synchronously, before or after its own runtime exists.
//!
//! The append guard, twice over: [`ServedLog::append`] appends itself only to a shard the
//! keeper serves now (no IO: a `watch` read), and the log refuses a shard it has not taken
//! or was fenced from (the server's expected-sequence checks). A fence seen on an append is
//! reported to the keeper, which steps down from the shard at once and asks for it again
//! later. An append for a shard served elsewhere is forwarded to its rendezvous owner
//! ([`crate::forward`]), which applies the same guard. A refusal is [`StoreError::Fenced`]:
//! nothing was stored, the client may resend.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_core::{GroupId, TenantId, UserId};
use switchboard_store::{
    Appended, LogBackend, NewMessage, SledStore, StoreError, StoreHealth, StoredMessage,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::fanout::{self, Notice};
use crate::forward::{self, Forwarded};
use crate::heads::Heads;
use crate::keeper_task::KeeperHandle;
use crate::members::Members;
use crate::names::shard_of;
use crate::news::{Committed, COMMITTED_QUEUE};
use crate::ownership::preferred_owner;
use crate::presence::{ClusterPresence, PresenceChange, PRESENCE_QUEUE};
use crate::{ClusterError, JetStreamLog, JetStreamLogConfig, KeeperTask, ShardLeases, SharedStore};

/// One node's cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id: unique in the cluster, stable across restarts (a restarted node
    /// takes its own leases back without waiting for them to expire). 1 to 64 letters,
    /// digits, `-`, `_`.
    pub node: String,
    /// How long a shard lease and a heartbeat last unless renewed. A dead node's shards
    /// are served again about one TTL after it died; a shorter TTL means more KV writes
    /// (each node renews every lease it holds every third of it).
    pub lease_ttl: Duration,
    /// The NATS connection and the log's layout (its `replicas` also apply to the lease
    /// and heartbeat buckets).
    pub log: JetStreamLogConfig,
}

/// A running cluster node (see the module docs). Dropping it stops it as a crash would;
/// [`ClusterNode::drain`] hands its shards over first.
#[derive(Debug)]
pub struct ClusterNode {
    node: String,
    log: Arc<JetStreamLog>,
    members: Members,
    keeper: KeeperTask,
    live: watch::Receiver<Vec<String>>,
    stop_members: watch::Sender<bool>,
    members_task: JoinHandle<()>,
    forward_task: JoinHandle<()>,
    fanout_task: JoinHandle<()>,
    /// Announcing this node's quiet groups' heads, and listening to the others'.
    heads_tasks: [JoinHandle<()>; 2],
    heads: Arc<Heads>,
    presence: ClusterPresence,
    /// Writing this node's presence, and following the others'.
    presence_tasks: [JoinHandle<()>; 2],
    /// Other nodes' presence changes, until the node takes the receiver.
    presence_changes: Mutex<Option<mpsc::Receiver<PresenceChange>>>,
    /// Other nodes' committed messages, until the node takes the receiver.
    committed: Mutex<Option<mpsc::Receiver<Committed>>>,
    prefix: String,
    replicas: usize,
}

impl ClusterNode {
    /// Connects to NATS, opens the lease and heartbeat buckets, sends a first heartbeat,
    /// reads who else is live, and starts the keeper, which then goes after this node's
    /// rendezvous share of the shards. Returns before any shard is served: appends are
    /// refused until the keeper took their shard ([`ClusterNode::served`]).
    pub fn start(config: ClusterConfig) -> Result<Self, ClusterError> {
        let log = Arc::new(JetStreamLog::connect(config.log.clone())?);
        let js = log.jetstream();
        let (node, ttl) = (config.node.clone(), config.lease_ttl);
        let (url, prefix) = (config.log.url.clone(), config.log.prefix.clone());
        let (replicas, request_timeout) = (config.log.replicas, config.log.request_timeout);
        let (leases, members, now_live) = log.run("start the cluster node", async move {
            let members = Members::open(&js, &prefix, &node, ttl, replicas).await?;
            members.first_beat(request_timeout.max(ttl)).await?;
            let now_live = members.live_now().await?;
            let leases =
                ShardLeases::connect(&url, &prefix, &node, ttl, replicas, request_timeout).await?;
            Ok((leases, members, now_live))
        })?;
        let _on_the_log_runtime = log.runtime().enter();
        let (live_tx, live) = watch::channel(now_live);
        let (presence_tx, presence_changes) = mpsc::channel(PRESENCE_QUEUE);
        let (presence, presence_tasks) = {
            let (js, prefix, node) = (
                log.jetstream(),
                config.log.prefix.clone(),
                config.node.clone(),
            );
            let (live, replicas) = (live.clone(), config.log.replicas);
            log.run("start presence", async move {
                ClusterPresence::start(&js, &prefix, &node, replicas, live, presence_tx).await
            })?
        };
        let (stop_members, stop_rx) = watch::channel(false);
        let members_task = tokio::spawn(members.clone().run(live_tx, stop_rx));
        let keeper = KeeperTask::spawn(Arc::new(leases), live.clone(), Some(log.clone()));
        let client = log.jetstream().client();
        let heads = Arc::new(Heads::default());
        let forward_task = tokio::spawn(forward::serve(
            forward::Owner {
                client: client.clone(),
                prefix: config.log.prefix.clone(),
                log: log.clone(),
                served: keeper.served(),
                keeper: keeper.handle(),
                heads: heads.clone(),
            },
            config.node.clone(),
        ));
        let (committed_tx, committed) = mpsc::channel(COMMITTED_QUEUE);
        let fanout_task = tokio::spawn(fanout::listen(
            client.clone(),
            config.log.prefix.clone(),
            config.node.clone(),
            log.clone(),
            committed_tx.clone(),
        ));
        let heads_tasks = [
            tokio::spawn(crate::heads::announce(
                heads.clone(),
                client.clone(),
                config.log.prefix.clone(),
                config.node.clone(),
            )),
            tokio::spawn(crate::heads::listen(
                client,
                config.log.prefix.clone(),
                config.node.clone(),
                log.clone(),
                committed_tx,
            )),
        ];
        tracing::info!(node = %config.node, "cluster node started");
        Ok(Self {
            node: config.node,
            log,
            members,
            keeper,
            live,
            stop_members,
            members_task,
            forward_task,
            fanout_task,
            heads_tasks,
            heads,
            presence,
            presence_tasks,
            presence_changes: Mutex::new(Some(presence_changes)),
            committed: Mutex::new(Some(committed)),
            prefix: config.log.prefix,
            replicas: config.log.replicas,
        })
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The group log the node's store appends through: appends go only to shards this
    /// node serves now; reads go to any shard.
    pub fn backend(&self) -> Arc<dyn LogBackend> {
        Arc::new(ServedLog {
            node: self.node.clone(),
            prefix: self.prefix.clone(),
            log: self.log.clone(),
            client: self.log.jetstream().client(),
            served: self.keeper.served(),
            live: self.live.clone(),
            keeper: self.keeper.handle(),
            heads: self.heads.clone(),
        })
    }

    /// The directory and config store shared by every node ([`SharedStore`]), mirrored
    /// into `local` (this node's sled). Blocks until the mirror caught up.
    pub fn share(&self, local: SledStore) -> Result<SharedStore, ClusterError> {
        SharedStore::open(self.log.clone(), local, self.replicas)
    }

    /// The messages other nodes commit, for this node to deliver to its own sessions
    /// ([`crate::fanout`]); `None` after the first call.
    pub fn take_committed(&self) -> Option<mpsc::Receiver<Committed>> {
        self.committed.lock().take()
    }

    /// Presence across nodes: report this node's users to it, ask it about the others'.
    pub fn presence(&self) -> ClusterPresence {
        self.presence.clone()
    }

    /// Other nodes' presence changes, for this node to tell its sessions; `None` after the
    /// first call.
    pub fn take_presence_changes(&self) -> Option<mpsc::Receiver<PresenceChange>> {
        self.presence_changes.lock().take()
    }

    /// The shards this node serves, as they change.
    pub fn served(&self) -> watch::Receiver<BTreeSet<u16>> {
        self.keeper.served()
    }

    /// The live nodes as this node sees them (sorted), as they change.
    pub fn live(&self) -> watch::Receiver<Vec<String>> {
        self.live.clone()
    }

    /// Hands everything over, for a graceful stop (call it after the node's in-flight
    /// appends were acknowledged): heartbeats stop and the node leaves the live set at
    /// once, and the keeper steps down from every shard and releases every lease, so the
    /// other nodes take them without waiting for a TTL. Blocks at most the log's
    /// `call_timeout`; whatever is not released then expires by its TTL.
    pub fn drain(&self) -> Result<(), ClusterError> {
        let _ = self.stop_members.send(true);
        let members = self.members.clone();
        let mut served = self.keeper.served();
        let mut releasing = self.keeper.releasing();
        let keeper = self.keeper.handle();
        self.log.run("drain the cluster node", async move {
            keeper.drain().await;
            // The keeper steps down from every shard at the drain event; its releases
            // must be answered before the process exits (else the others wait a TTL).
            let _ = served.wait_for(|s| s.is_empty()).await;
            let _ = releasing.wait_for(|n| *n == 0).await;
            members.leave().await
        })
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        // As a crash: nothing released (the keeper task aborts itself on drop).
        self.members_task.abort();
        self.forward_task.abort();
        self.fanout_task.abort();
        for t in self.heads_tasks.iter().chain(&self.presence_tasks) {
            t.abort();
        }
    }
}

/// The log behind the node's store: [`JetStreamLog`] with the served-shard check in front
/// of every append (see the module docs).
#[derive(Debug)]
struct ServedLog {
    node: String,
    prefix: String,
    log: Arc<JetStreamLog>,
    client: async_nats::Client,
    served: watch::Receiver<BTreeSet<u16>>,
    live: watch::Receiver<Vec<String>>,
    keeper: KeeperHandle,
    heads: Arc<Heads>,
}

impl ServedLog {
    /// Appends at the shard's rendezvous owner among the live nodes (see
    /// [`crate::forward`]).
    fn forward(
        &self,
        shard: u16,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError> {
        let owner = {
            let live = self.live.borrow();
            preferred_owner(shard, live.as_slice()).map(str::to_owned)
        };
        let owner = match owner {
            Some(owner) if owner != self.node => owner,
            // This node is the owner to be (a handover in progress) or sees no node live.
            _ => {
                return Err(StoreError::Fenced(format!(
                    "shard {shard} (group {group}) is being handed over to node {}; nothing \
                     was stored",
                    self.node
                )))
            }
        };
        let request = Forwarded::new(tenant, group, &msg, &self.node);
        let (client, prefix) = (self.client.clone(), self.prefix.clone());
        self.log.run("forward an append", async move {
            Ok(request.request(&client, &prefix, &owner).await)
        })?
    }
}

impl LogBackend for ServedLog {
    fn append(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        msg: NewMessage<'_>,
    ) -> Result<Appended, StoreError> {
        let shard = shard_of(tenant, group);
        if !self.served.borrow().contains(&shard) {
            return self.forward(shard, tenant, group, msg);
        }
        let body = Bytes::copy_from_slice(msg.body);
        let append = self.log.append_owned(
            tenant.clone(),
            group.clone(),
            msg.sender.clone(),
            msg.client_msg_id.to_owned(),
            msg.lane,
            msg.sent_at_ms,
            body.clone(),
        );
        let (client, prefix, node) = (self.client.clone(), self.prefix.clone(), self.node.clone());
        let heads = self.heads.clone();
        let (t, g, sender, id) = (
            tenant.clone(),
            group.clone(),
            msg.sender.clone(),
            msg.client_msg_id.to_owned(),
        );
        let (lane, sent_at_ms) = (msg.lane, msg.sent_at_ms);
        let appended = self.log.run("append", async move {
            let (appended, stream_seq) = append.await?;
            if let Appended::New { seq } = appended {
                Notice {
                    tenant: &t,
                    group: &g,
                    seq,
                    stream_seq,
                    sender: &sender,
                    client_msg_id: &id,
                    lane,
                    sent_at_ms,
                    accepted_by: &node,
                }
                .announce(&client, &prefix, body, &heads)
                .await;
            }
            Ok(appended)
        });
        match appended {
            Err(e @ ClusterError::Fenced { .. }) => {
                self.keeper.report_fenced(shard);
                Err(e.into())
            }
            other => Ok(other?),
        }
    }

    fn find_sent(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        self.log.find_sent(tenant, group, sender, client_msg_id)
    }

    fn head(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        self.log.head(tenant, group)
    }

    fn first_seq(&self, tenant: &TenantId, group: &GroupId) -> Result<u64, StoreError> {
        self.log.first_seq(tenant, group)
    }

    fn read_after(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.log.read_after(tenant, group, after, limit)
    }

    fn message(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        self.log.message(tenant, group, seq)
    }

    fn flush(&self) -> Result<(), StoreError> {
        LogBackend::flush(&*self.log)
    }

    fn health(&self) -> StoreHealth {
        LogBackend::health(&*self.log)
    }
}
