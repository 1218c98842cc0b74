//! Membership: which nodes are live, from heartbeats in a JetStream KV bucket.
//!
//! Each node puts its id as a key of `<prefix>-nodes` every third of the TTL (the bucket's
//! `max_age` is the TTL, so a dead node's key also leaves the bucket by itself), and
//! watches the bucket. A node counts as live while its last heartbeat was *seen* (by this
//! node's monotonic clock) within the TTL: a node stopped by SIGSTOP or cut off drops out
//! one TTL after its last heartbeat arrived here, whatever the server's clock says, and a
//! drained node deletes its key and drops out at once. The live set (sorted, this node
//! among them while its own heartbeats get through) feeds the keeper's node channel; the
//! keeper turns it into shard ownership by rendezvous.
//!
//! Bounds: the watch holds one entry per live node; a key that is not a valid node id is
//! ignored. A broken watch is opened again every third of the TTL until it works, and so is
//! a watch that stays silent for a TTL after one of this node's heartbeats was accepted (it
//! should have shown it); while it is broken the nodes seen age out, which only makes
//! this node take fewer shards. A reopened watch replays each key's newest entry as seen
//! now, so a node dead for less than a TTL counts as live for at most one TTL more.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::names::LogNames;
use crate::ClusterError;

/// How long a starting node keeps retrying the first listing of the live nodes (each try
/// bounded by the NATS client's request time-out).
pub const LIST_WITHIN: Duration = Duration::from_secs(30);

/// The heartbeat bucket of one node.
#[derive(Debug, Clone)]
pub struct Members {
    kv: kv::Store,
    node: String,
    ttl: Duration,
}

impl Members {
    /// Opens (or creates) the heartbeat bucket of `prefix` on `js`.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        node: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, ClusterError> {
        let names = LogNames::new(prefix).map_err(|e| ClusterError::Config(e.to_string()))?;
        if !valid_node_id(node) {
            return Err(ClusterError::Config(format!(
                "node id {node:?}: use 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        if ttl.is_zero() {
            return Err(ClusterError::Config("the node TTL must be above 0".into()));
        }
        let bucket = format!("{}-nodes", names.prefix());
        let kv = open_ttl_bucket(js, bucket, ttl, replicas).await?;
        Ok(Self {
            kv,
            node: node.to_owned(),
            ttl,
        })
    }

    /// One heartbeat.
    pub async fn beat(&self) -> Result<(), ClusterError> {
        self.kv
            .put(&self.node, Bytes::new())
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Config(format!("heartbeat of {}: {e}", self.node)))
    }

    /// The first heartbeat of a node that starts, retried every 100 ms for at most
    /// `within`: in a NATS cluster, a server can answer a put to a bucket created a moment
    /// ago with "no stream found" until the bucket's stream assignment reached it (found by
    /// the cluster failure suite: a node starting against a fresh 3-server cluster exited).
    pub async fn first_beat(&self, within: Duration) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.beat().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "first heartbeat refused; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The nodes whose keys are in the bucket now (a node dead for less than the TTL
    /// included), sorted: the first view, before the watch runs. Retried every 100 ms for
    /// at most [`LIST_WITHIN`], as the first heartbeat is: right after a JetStream server is
    /// killed, the bucket's stream may have no leader until an election ends, and the
    /// listing times out meanwhile (found by the cluster failure suite: a node restarted
    /// then exited).
    pub async fn live_now(&self) -> Result<Vec<String>, ClusterError> {
        let deadline = tokio::time::Instant::now() + LIST_WITHIN;
        loop {
            match self.list_once().await {
                Ok(nodes) => return Ok(nodes),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "listing the live nodes failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn list_once(&self) -> Result<Vec<String>, ClusterError> {
        let err = |e: &dyn std::fmt::Display| ClusterError::Config(format!("list nodes: {e}"));
        let mut keys = self.kv.keys().await.map_err(|e| err(&e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| err(&e))?;
            if valid_node_id(&key) {
                out.push(key);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Leaves at once (a drain): the key is deleted, so other nodes drop this one without
    /// waiting for the TTL.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.kv
            .delete(&self.node)
            .await
            .map_err(|e| ClusterError::Config(format!("leave of {}: {e}", self.node)))
    }

    /// Beats and watches until `stop` turns true, publishing the live nodes on `live`
    /// whenever they change. After `stop`, no more heartbeats are sent.
    pub async fn run(self, live: watch::Sender<Vec<String>>, mut stop: watch::Receiver<bool>) {
        let every = self.ttl / 3;
        let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = Seen::new(self.ttl);
        let mut watch = None;
        let mut silence = Silence::default();
        loop {
            if *stop.borrow() {
                return;
            }
            if watch.is_none() {
                match self.kv.watch_with_history(">").await {
                    Ok(w) => {
                        watch = Some(w);
                        silence.heard();
                    }
                    Err(e) => tracing::warn!(error = %e, "membership watch failed; retrying"),
                }
            }
            tokio::select! {
                _ = ticks.tick() => {
                    // A working watch shows this node its own heartbeat moments after the
                    // server accepted it. One that stays silent for a TTL after an accepted
                    // heartbeat (measured from the acceptance, so a slow heartbeat call that
                    // kept this loop from reading does not count) is stuck without saying
                    // so: async-nats' ordered consumer can keep re-creating itself after the
                    // bucket's stream leader died (found by the failure suite, where such a
                    // node saw nobody live, itself included, and refused its shards for good
                    // while the others forwarded them to it). Reopen it.
                    if watch.is_some() && silence.stuck(Instant::now(), self.ttl) {
                        tracing::warn!(node = %self.node, "membership watch silent for a TTL; reopening");
                        watch = None;
                        silence.heard();
                    }
                    match self.beat().await {
                        Ok(()) => silence.beat_accepted(Instant::now()),
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed; retrying"),
                    }
                }
                entry = next(&mut watch) => match entry {
                    Some(Ok(entry)) => {
                        silence.heard();
                        seen.apply(&entry.key, entry.operation, Instant::now());
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "membership watch broke; reopening");
                        watch = None;
                    }
                    None => watch = None,
                },
                _ = stop.changed() => {}
            }
            let now_live = seen.live(Instant::now());
            live.send_if_modified(|l| {
                let changed = *l != now_live;
                if changed {
                    tracing::info!(node = %self.node, live = ?now_live, "live nodes changed");
                }
                *l = now_live;
                changed
            });
        }
    }
}

/// Opens the TTL bucket `bucket` (history 1, file storage, `replicas` copies, entries living
/// `ttl`): the lease and heartbeat buckets. Binds to it when it exists with this TTL (every
/// node but the first: a config update per node start would be one more JetStream metadata
/// operation at the busiest moment); otherwise creates it, or updates it to this node's TTL
/// (the TTL is the leases' and heartbeats' lifetime, so every node must agree on it).
pub(crate) async fn open_ttl_bucket(
    js: &jetstream::Context,
    bucket: String,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(kv) = js.get_key_value(bucket.as_str()).await {
        if kv.status().await.is_ok_and(|s| s.max_age() == ttl) {
            return Ok(kv);
        }
    }
    // A NATS cluster that is still forming refuses an R3 bucket for a moment ("no suitable
    // peers for placement, peer offline") even after its meta leader reports every server
    // current (found by the failure suite: a node starting then exited), so a refusal is
    // retried, every 250 ms for at most BUCKET_RETRY_FOR.
    let deadline = tokio::time::Instant::now() + BUCKET_RETRY_FOR;
    loop {
        let made = js
            .create_or_update_key_value(kv::Config {
                bucket: bucket.clone(),
                history: 1,
                max_age: ttl,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await;
        match made {
            Ok(kv) => return Ok(kv),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%bucket, error = %e, "bucket refused; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(ClusterError::Stream {
                    stream: bucket,
                    detail: e.to_string(),
                })
            }
        }
    }
}

/// Opens the bucket `config` names, or creates it as `config` says (history, replicas and
/// file storage as given) when it does not exist yet.
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    if let Ok(kv) = js.get_key_value(config.bucket.as_str()).await {
        return Ok(kv);
    }
    let bucket = config.bucket.clone();
    js.create_key_value(config)
        .await
        .map_err(|e| ClusterError::Stream {
            stream: bucket,
            detail: e.to_string(),
        })
}

/// How long opening a lease or heartbeat bucket retries a refusal (see `open_ttl_bucket`).
const BUCKET_RETRY_FOR: Duration = Duration::from_secs(10);

/// The next entry of the watch, or never when there is none (so `select!` waits on the
/// other branches).
async fn next(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Node ids: what may be a KV key and a lease's value, and reads well in logs.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// When each node's last heartbeat was seen here (no IO: the membership's rule).
#[derive(Debug)]
pub(crate) struct Seen {
    ttl: Duration,
    at: BTreeMap<String, Instant>,
}

impl Seen {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            at: BTreeMap::new(),
        }
    }

    pub(crate) fn apply(&mut self, key: &str, op: kv::Operation, now: Instant) {
        if !valid_node_id(key) {
            return;
        }
        match op {
            kv::Operation::Put => {
                self.at.insert(key.to_owned(), now);
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                self.at.remove(key);
            }
        }
    }

    /// The nodes seen within the TTL, sorted; older ones are forgotten.
    pub(crate) fn live(&mut self, now: Instant) -> Vec<String> {
        let ttl = self.ttl;
        self.at
            .retain(|_, seen| now.saturating_duration_since(*seen) < ttl);
        self.at.keys().cloned().collect()
    }
}

/// Whether the membership watch fell silent (no IO, like [`Seen`]): it has shown nothing
/// for longer than the TTL since the oldest heartbeat of this node that the server accepted
/// after the watch's last entry. Measured from the acceptance, not from the last entry, so
/// time the loop spent in a slow heartbeat call (not reading the watch) does not count.
#[derive(Debug, Default)]
pub(crate) struct Silence {
    unseen_beat: Option<Instant>,
}

impl Silence {
    pub(crate) fn beat_accepted(&mut self, now: Instant) {
        self.unseen_beat.get_or_insert(now);
    }

    /// The watch delivered an entry (any node's), or was opened.
    pub(crate) fn heard(&mut self) {
        self.unseen_beat = None;
    }

    pub(crate) fn stuck(&self, now: Instant, ttl: Duration) -> bool {
        self.unseen_beat
            .is_some_and(|b| now.saturating_duration_since(b) > ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_live_for_one_ttl_after_its_last_heartbeat_seen_and_leaves_on_delete() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut seen = Seen::new(ttl);
        seen.apply("node-a", kv::Operation::Put, t0);
        seen.apply("node-b", kv::Operation::Put, t0);
        seen.apply("bad.key", kv::Operation::Put, t0);
        assert_eq!(seen.live(t0), ["node-a", "node-b"]);
        seen.apply("node-a", kv::Operation::Put, t0 + Duration::from_secs(2));
        let later = t0 + Duration::from_secs(3);
        assert_eq!(seen.live(later), ["node-a"], "node-b's beat is a TTL old");
        seen.apply("node-a", kv::Operation::Delete, later);
        assert!(seen.live(later).is_empty());
    }

    #[test]
    fn a_watch_is_stuck_a_ttl_after_an_accepted_heartbeat_it_did_not_show() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let ms = Duration::from_millis;
        let mut silence = Silence::default();
        assert!(
            !silence.stuck(t0 + ttl * 10, ttl),
            "no heartbeat accepted yet"
        );
        silence.beat_accepted(t0);
        // Later heartbeats do not move the start: the first unseen one counts.
        silence.beat_accepted(t0 + ms(1000));
        silence.beat_accepted(t0 + ms(2000));
        assert!(!silence.stuck(t0 + ttl, ttl));
        assert!(silence.stuck(t0 + ttl + ms(1), ttl));
        // Any entry resets it; the next accepted heartbeat starts the clock again.
        silence.heard();
        assert!(!silence.stuck(t0 + ttl * 10, ttl));
        silence.beat_accepted(t0 + ms(5000));
        assert!(!silence.stuck(t0 + ms(8000), ttl));
        assert!(silence.stuck(t0 + ms(8001), ttl));
    }

    #[test]
    fn node_ids_are_short_plain_tokens() {
        assert!(valid_node_id("node-1_a"));
        for bad in ["", "a.b", "a b", "a*", ">", &"x".repeat(65)] {
            assert!(!valid_node_id(bad), "{bad:?}");
        }
    }
}
