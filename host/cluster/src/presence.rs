//! Presence across nodes: which users have sessions on which node, in the KV bucket
//! `<prefix>-presence`, so a node does not send a push notification to a user connected to
//! another node, and co-members on every node hear of a user's presence.
//!
//! A key per (node, tenant, user) with a session on that node: `<node>.<tenant>.<user>`,
//! ids encoded as in subjects with `=` for `~`; the value is `fg` or `bg`, what the node's
//! sessions of the user add up to. A node writes only its own keys: a put when the state
//! changes, a delete when the user's last session there closes. Writes go through a
//! coalescing map (the latest state per user waits for the writer task, so a user who
//! flaps costs one write per round, and the hub never waits on NATS). Every node watches
//! the bucket and keeps, per user, the states other nodes reported.
//!
//! Instead of a TTL per key, a node's keys count only while the node is live (its
//! heartbeats, `members.rs`): a killed node's users drop out of every view one heartbeat
//! TTL after its death, without a write. A node starting deletes the keys a previous run
//! of itself left behind.
//!
//! Bounds: per user, one key per node; the view holds one entry per (user, node) with a
//! session, so at most the cluster's connections; the pending map at most one entry per
//! user this node has seen change since the last round (at most its connections plus the
//! users who just left).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use switchboard_core::{PresenceState, TenantId, UserId};
use tokio::sync::{mpsc, watch, Notify};

use crate::members::open_bucket;
use crate::names::{decode_kv_token, encode_kv_token};
use crate::ClusterError;

/// Most presence changes of other nodes waiting for this node's hub; past it a change is
/// dropped (co-members are not told of it; push decisions read the view, not the queue).
pub const PRESENCE_QUEUE: usize = 4096;

/// A user's presence on the other nodes changed: what its sessions there add up to
/// (`None`: it has none left on any other live node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    pub tenant: TenantId,
    pub user: UserId,
    pub state: Option<PresenceState>,
}

type UserKey = (TenantId, UserId);

/// One node's presence: what it reports of its own users and what it knows of the others.
#[derive(Debug, Clone)]
pub struct ClusterPresence {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: String,
    /// This node's users whose state changed and is not written yet (`None`: delete).
    pending: Mutex<HashMap<UserKey, Option<PresenceState>>>,
    wake: Notify,
    /// Other nodes' reports: per user, per node, the state.
    view: Mutex<HashMap<UserKey, BTreeMap<String, PresenceState>>>,
    live: watch::Receiver<Vec<String>>,
}

fn key(node: &str, tenant: &TenantId, user: &UserId) -> String {
    format!(
        "{node}.{}.{}",
        encode_kv_token(tenant.as_str()),
        encode_kv_token(user.as_str())
    )
}

fn parse_key(k: &str) -> Option<(String, TenantId, UserId)> {
    let mut parts = k.split('.');
    let node = parts.next()?.to_owned();
    let tenant = TenantId::new(&decode_kv_token(parts.next()?)?).ok()?;
    let user = UserId::new(&decode_kv_token(parts.next()?)?).ok()?;
    parts.next().is_none().then_some((node, tenant, user))
}

fn state_value(state: PresenceState) -> Bytes {
    Bytes::from_static(match state {
        PresenceState::Foreground => b"fg",
        PresenceState::Background => b"bg",
    })
}

fn parse_state(v: &[u8]) -> Option<PresenceState> {
    match v {
        b"fg" => Some(PresenceState::Foreground),
        b"bg" => Some(PresenceState::Background),
        _ => None,
    }
}

/// What a user's sessions on the live nodes other than this one add up to.
fn elsewhere(
    nodes: Option<&BTreeMap<String, PresenceState>>,
    live: &[String],
) -> Option<PresenceState> {
    let mut out = None;
    for (node, state) in nodes.into_iter().flatten() {
        if live.binary_search(node).is_ok() {
            if *state == PresenceState::Foreground {
                return Some(PresenceState::Foreground);
            }
            out = Some(PresenceState::Background);
        }
    }
    out
}

impl ClusterPresence {
    /// Opens (or creates) the bucket, deletes what an earlier run of `node` left, and starts
    /// the writer and the watcher on the current runtime. Other nodes' changes go to
    /// `changes`.
    pub(crate) async fn start(
        js: &jetstream::Context,
        prefix: &str,
        node: &str,
        replicas: usize,
        live: watch::Receiver<Vec<String>>,
        changes: mpsc::Sender<PresenceChange>,
    ) -> Result<(Self, [tokio::task::JoinHandle<()>; 2]), ClusterError> {
        let bucket = format!("{prefix}-presence");
        let err = |e: &dyn std::fmt::Display| ClusterError::Stream {
            stream: bucket.clone(),
            detail: e.to_string(),
        };
        let kv = open_bucket(
            js,
            kv::Config {
                bucket: bucket.clone(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        // A previous run's users are gone: their sessions died with it.
        let mut stale = Vec::new();
        let mut keys = kv.keys().await.map_err(|e| err(&e))?;
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| err(&e))?;
            if parse_key(&k).is_some_and(|(n, _, _)| n == node) {
                stale.push(k);
            }
        }
        for k in stale {
            kv.delete(&k).await.map_err(|e| err(&e))?;
        }
        let presence = Self {
            inner: Arc::new(Inner {
                node: node.to_owned(),
                pending: Mutex::default(),
                wake: Notify::new(),
                view: Mutex::default(),
                live,
            }),
        };
        let tasks = [
            tokio::spawn(presence.clone().write(kv.clone())),
            tokio::spawn(presence.clone().watch(kv, changes)),
        ];
        Ok((presence, tasks))
    }

    /// This node's sessions of `user` now add up to `state`: written to the bucket soon,
    /// without waiting.
    pub fn local_presence(&self, tenant: &TenantId, user: &UserId, state: Option<PresenceState>) {
        self.inner
            .pending
            .lock()
            .insert((tenant.clone(), user.clone()), state);
        self.inner.wake.notify_one();
    }

    /// What `user`'s sessions on the other live nodes add up to (as far as this node has
    /// heard); `None`: it has none there.
    pub fn presence_elsewhere(&self, tenant: &TenantId, user: &UserId) -> Option<PresenceState> {
        let live = self.inner.live.borrow();
        let view = self.inner.view.lock();
        elsewhere(view.get(&(tenant.clone(), user.clone())), &live)
    }

    /// Whether `user` has a session on another live node (as far as this node has heard).
    pub fn connected_elsewhere(&self, tenant: &TenantId, user: &UserId) -> bool {
        self.presence_elsewhere(tenant, user).is_some()
    }

    /// Writes pending changes until aborted. A failed write is retried with the next round
    /// (a newer state for the same user replaces it).
    async fn write(self, kv: kv::Store) {
        let mut last: HashMap<UserKey, PresenceState> = HashMap::new();
        loop {
            self.inner.wake.notified().await;
            let batch: Vec<(UserKey, Option<PresenceState>)> =
                self.inner.pending.lock().drain().collect();
            for ((tenant, user), state) in batch {
                let k = key(&self.inner.node, &tenant, &user);
                let written = match state {
                    Some(s) if last.get(&(tenant.clone(), user.clone())) == Some(&s) => Ok(()),
                    Some(s) => kv
                        .put(&k, state_value(s))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => kv.delete(&k).await.map_err(|e| e.to_string()),
                };
                match written {
                    Ok(()) => match state {
                        Some(s) => {
                            last.insert((tenant, user), s);
                        }
                        None => {
                            last.remove(&(tenant, user));
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "presence not written; retrying");
                        self.inner
                            .pending
                            .lock()
                            .entry((tenant, user))
                            .or_insert(state);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        self.inner.wake.notify_one();
                    }
                }
            }
        }
    }

    /// Follows the bucket and the live nodes until aborted, keeping the view and reporting
    /// each user whose presence elsewhere changed.
    async fn watch(self, kv: kv::Store, changes: mpsc::Sender<PresenceChange>) {
        let mut live = self.inner.live.clone();
        let mut watch = None;
        loop {
            if watch.is_none() {
                match kv.watch_with_history(">").await {
                    Ok(w) => watch = Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "presence watch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            // Marked seen: `changed` below fires only for a change after `before`.
            let before = live.borrow_and_update().clone();
            tokio::select! {
                changed = live.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A node left or came back: its users' states count or stop counting.
                    let now = live.borrow().clone();
                    let affected: Vec<(UserKey, Option<PresenceState>, Option<PresenceState>)> = {
                        let view = self.inner.view.lock();
                        view.iter()
                            .map(|(u, nodes)| (u.clone(), elsewhere(Some(nodes), &before), elsewhere(Some(nodes), &now)))
                            .filter(|(_, a, b)| a != b)
                            .collect()
                    };
                    for ((tenant, user), _, state) in affected {
                        report(&changes, PresenceChange { tenant, user, state });
                    }
                }
                entry = next(&mut watch) => match entry {
                    Some(Ok(e)) => self.apply(e, &changes),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "presence watch broke; reopening");
                        watch = None;
                    }
                    None => watch = None,
                },
            }
        }
    }

    fn apply(&self, e: kv::Entry, changes: &mpsc::Sender<PresenceChange>) {
        let Some((node, tenant, user)) = parse_key(&e.key) else {
            return;
        };
        if node == self.inner.node {
            return;
        }
        let state = match e.operation {
            kv::Operation::Put => parse_state(&e.value),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let live = self.inner.live.borrow().clone();
        let u = (tenant, user);
        let (before, after) = {
            let mut view = self.inner.view.lock();
            let before = elsewhere(view.get(&u), &live);
            let nodes = view.entry(u.clone()).or_default();
            match state {
                Some(s) => {
                    nodes.insert(node, s);
                }
                None => {
                    nodes.remove(&node);
                }
            }
            let after = elsewhere(Some(nodes), &live);
            if nodes.is_empty() {
                view.remove(&u);
            }
            (before, after)
        };
        if before != after {
            let (tenant, user) = u;
            report(
                changes,
                PresenceChange {
                    tenant,
                    user,
                    state: after,
                },
            );
        }
    }
}

fn report(changes: &mpsc::Sender<PresenceChange>, change: PresenceChange) {
    if changes.try_send(change).is_err() {
        tracing::debug!("presence queue full or closed; a change was not told");
    }
}

async fn next(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_and_only_live_nodes_count() {
        let (t, u) = (
            TenantId::new("a.b").unwrap(),
            UserId::new("ann:x@y").unwrap(),
        );
        let k = key("node-1", &t, &u);
        assert!(k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)));
        assert_eq!(parse_key(&k), Some(("node-1".into(), t, u)));
        assert_eq!(parse_key("node-1.a"), None);

        let nodes = BTreeMap::from([
            ("n1".to_string(), PresenceState::Background),
            ("n2".to_string(), PresenceState::Foreground),
        ]);
        let live = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            elsewhere(Some(&nodes), &live(&["n1", "n2"])),
            Some(PresenceState::Foreground)
        );
        assert_eq!(
            elsewhere(Some(&nodes), &live(&["n1", "n3"])),
            Some(PresenceState::Background)
        );
        assert_eq!(elsewhere(Some(&nodes), &live(&["n3"])), None);
        assert_eq!(elsewhere(None, &live(&["n1"])), None);
    }
}
