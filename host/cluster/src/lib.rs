//! Switchboard's cluster on NATS JetStream: the only crate that knows NATS.
//!
//! Built so far: [`JetStreamLog`], group messages in JetStream behind the store's
//! [`LogBackend`](switchboard_store::LogBackend) seam (one stream per virtual shard, a
//! subject per group, every append naming its group's predecessor and the writer's previous write to
//! the shard, so a writer that lost its shard is fenced from all of it; a run of appends to a
//! shard goes as atomic batches, one acknowledgement each: [`JetStreamLog::append_batch`]), [`names`] (shards, streams, subjects, the id encoding), [`ownership`] (the
//! preferred owner of a shard by rendezvous hashing), [`lease`] (shard leases in a KV
//! bucket), [`keeper`] (which leases a node holds, renews and gives up, without IO) and
//! [`KeeperTask`] (its tokio driver), [`ClusterNode`] (a node's cluster part: heartbeats,
//! the keeper, forwarding, commit notices) and [`SharedStore`] (the directory and config
//! store every node shares, mirrored into each node's sled). Wired into the node by its
//! `[cluster]` settings; see ARCHITECTURE.md, "Cluster".
//!
//! # What "durable" means here
//!
//! An append returns only after JetStream acknowledged it, and JetStream acknowledges once
//! the stream's leader stored the message and (with `replicas` > 1) a quorum of replicas did.
//! The server writes to its files at once but fsyncs them every `sync_interval` (2 minutes
//! by default, `always` to fsync each write): so with R3 an acknowledged message survives the
//! loss of any one server, and survives losing all of them at once only with
//! `sync_interval: always`. On one node (the segment log) it means fsynced to local disk.

mod bridge;
mod error;
mod fanout;
mod fence;
mod forward;
pub mod heads;
pub mod keeper;
mod keeper_task;
pub mod lease;
mod log;
pub mod members;
pub mod names;
mod news;
mod node;
pub mod ownership;
pub mod presence;
mod shared;

pub use error::ClusterError;
pub use forward::MAX_FORWARDED_IN_FLIGHT;
pub use keeper::{Action, Event, Keeper, KeeperConfig};
pub use keeper_task::{KeeperHandle, KeeperTask};
pub use lease::{Lease, ShardLeases};
pub use log::{all_shards, BatchItem, JetStreamLog, JetStreamLogConfig, MAX_BATCH_MESSAGES};
pub use members::Members;
pub use news::{Committed, News, COMMITTED_QUEUE};
pub use node::{ClusterConfig, ClusterNode};
pub use shared::{
    Key as SharedKey, SharedStore, DEFAULT_APPLY_WAIT, MAX_CAS_ATTEMPTS, MAX_PLUGIN_BYTES,
    MAX_RECORD_BYTES,
};
