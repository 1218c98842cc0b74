//! The state the hub, the committer and a session's writers share: one connection's
//! [`Session`] and one group's [`GroupState`]. Data and its invariants only; what changes it
//! lives in `sessions.rs`, `groups.rs` and `hub.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_core::{GroupId, PresenceState, TenantId, UserId};
use switchboard_router::{self as router, GroupFanout};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::outbox::{Full, Outbox, Push};
use crate::rates::SessionRates;

/// What a user's co-members were last told of its presence: `None` when nothing (its arrival
/// was shed or refused) or that it left. Shared by the user's sessions; written only under
/// its membership lock. Lock order: a group's fanout lock, then this.
#[derive(Debug, Default)]
pub(crate) struct Told(pub(crate) Mutex<Option<PresenceState>>);

/// A change to a session's subscriptions, applied by its push writer in order.
#[derive(Debug)]
pub(crate) enum SubChange {
    Subscribe { group: Arc<GroupState>, after: u64 },
    Unsubscribe(GroupId),
}

/// One authenticated connection's state shared between its tasks and the hub.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub tenant: TenantId,
    pub user: UserId,
    /// When the session opened (ms since the Unix epoch).
    pub connected_at_ms: u64,
    /// The client's address, when the session has a socket.
    pub remote: Option<std::net::SocketAddr>,
    pub(crate) outbox: Outbox,
    /// Set when the writer must bring every group up to its durable head from the log.
    pub(crate) catch_up: AtomicBool,
    /// Pending subscription changes, the latest per group (so a client looping Join/Leave
    /// while its writer is blocked cannot grow this beyond its groups).
    pub(crate) sub_changes: Mutex<HashMap<GroupId, SubChange>>,
    /// Groups this session is subscribed to (for presence fan-out and cleanup).
    pub(crate) groups: Mutex<HashSet<GroupId>>,
    pub(crate) presence: AtomicU8,
    /// What co-members were last told of this session's user (shared by its sessions).
    pub(crate) told: Arc<Told>,
    pub(crate) closed: AtomicBool,
    /// `disconnect_slow_consumers`: a full outbox ends the connection instead of switching
    /// it to catch-up. `slow` is set once, and `evict` wakes the connection to close.
    pub(crate) disconnect_when_slow: bool,
    pub(crate) slow: AtomicBool,
    pub(crate) evict: Notify,
    /// The user's and the tenant's rate limits.
    pub(crate) rates: SessionRates,
}

impl Session {
    /// Queues a push without waiting. A full outbox never blocks the fan-out: a delivery that
    /// does not fit is recovered from the log by the writer; a notice is dropped.
    pub(crate) fn push(&self, p: Push, metrics: &Metrics) {
        match self.outbox.try_push(p) {
            Ok(()) => {}
            Err(Full(Push::Deliver { .. })) => {
                metrics.outbox_overflows.fetch_add(1, Ordering::Relaxed);
                if !self.disconnect_when_slow {
                    self.request_catch_up();
                } else if !self.slow.swap(true, Ordering::AcqRel) {
                    metrics
                        .slow_consumers_disconnected
                        .fetch_add(1, Ordering::Relaxed);
                    self.evict.notify_one();
                }
            }
            Err(Full(Push::Notice { .. })) => {
                metrics.notices_dropped.fetch_add(1, Ordering::Relaxed);
            }
            // A lost nudge is a lost hint: the next one, or the return to the foreground, tells.
            Err(Full(Push::Nudge { .. })) => {}
        }
    }

    /// Resolves once the session must end as a slow consumer (`disconnect_slow_consumers`).
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await
    }

    pub(crate) fn request_catch_up(&self) {
        self.catch_up.store(true, Ordering::Release);
        self.outbox.wake();
    }

    pub fn presence(&self) -> PresenceState {
        match self.presence.load(Ordering::Relaxed) {
            0 => PresenceState::Foreground,
            _ => PresenceState::Background,
        }
    }
}

impl router::Subscriber for Session {
    fn session_id(&self) -> u64 {
        self.id
    }
    fn presence(&self) -> PresenceState {
        Session::presence(self)
    }
}

/// The hub's view of one group: its append lock and its subscribers.
#[derive(Debug)]
pub struct GroupState {
    pub tenant: TenantId,
    pub id: GroupId,
    /// Serialises appends so sequence numbers and commit order agree.
    pub(crate) append: tokio::sync::Mutex<()>,
    pub(crate) fanout: Mutex<GroupFanout<Arc<Session>>>,
    /// The newest seq this node queued for publishing — its own appends and, in cluster
    /// mode, other nodes' commits ([`crate::Hub::deliver_remote`]) — written under `append`;
    /// never below the head. A message whose seq is past `queued + 1` comes after messages
    /// this node has not seen: it is revealed (sessions read the gap and it from the log,
    /// in order) instead of published live.
    pub(crate) queued: AtomicU64,
    /// Member count, kept here so the per-message policy call reads no store.
    pub(crate) members: AtomicU32,
    /// The tenant's traffic counters (messages and deliveries are counted per group).
    pub(crate) traffic: Arc<crate::metrics::TenantTraffic>,
}

impl GroupState {
    /// The newest durable sequence number: what clients may see.
    pub fn head(&self) -> u64 {
        self.fanout.lock().head()
    }

    pub fn subscriber_count(&self) -> usize {
        self.fanout.lock().subscribers().len()
    }
}
