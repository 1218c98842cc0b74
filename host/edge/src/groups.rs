//! The node's loaded groups and the fan-out of a durable message to their subscribers, in
//! the two active-first phases that `switchboard_router::GroupFanout` decides. Shared by the
//! hub (requests), the committer (publishing) and the sessions' writers (catch-up reads).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use switchboard_core::{ErrorCode, GroupId, Lane, Limits, PresenceState, TenantId};
use switchboard_router::{self as router, GroupFanout};
use switchboard_store::{Store, StoreError, StoredMessage};
use switchboard_wire::Message;

use crate::active_first::ForegroundGate;
use crate::load::Load;
use crate::metrics::Metrics;
use crate::outbox::Push;
use crate::state::{GroupState, Session};
use crate::{Key, RequestError};

/// The groups this node has loaded (a group is loaded on first use and kept).
pub(crate) struct Groups {
    store: Arc<dyn Store>,
    limits: Limits,
    map: DashMap<Key<GroupId>, Arc<GroupState>>,
    metrics: Arc<Metrics>,
    load: Arc<Load>,
    /// Fan out in subscription order instead of foreground first (benchmarks compare the
    /// two; feature `bench`).
    naive_fanout: AtomicBool,
}

impl Groups {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        limits: Limits,
        metrics: Arc<Metrics>,
        load: Arc<Load>,
    ) -> Self {
        Self {
            store,
            limits,
            map: DashMap::new(),
            metrics,
            load,
            naive_fanout: AtomicBool::new(false),
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The state of a group, loaded from the store on first use; `GroupNotFound` if the
    /// group does not exist.
    pub(crate) fn get(
        &self,
        tenant: &TenantId,
        group: &GroupId,
    ) -> Result<Arc<GroupState>, RequestError> {
        let key = (tenant.clone(), group.clone());
        if let Some(g) = self.map.get(&key) {
            return Ok(g.clone());
        }
        if self.store.group(tenant, group)?.is_none() {
            return Err(RequestError::new(
                ErrorCode::GroupNotFound,
                format!("group {group} not found"),
            ));
        }
        // Read the head before taking the map's shard lock; appends only happen through the
        // state we are about to publish, so no append can land in between.
        let head = self.store.head(tenant, group)?;
        let members = self.store.member_count(tenant, group)?.unwrap_or(0);
        let state = self
            .map
            .entry(key)
            .or_insert_with(|| {
                Arc::new(GroupState {
                    tenant: tenant.clone(),
                    id: group.clone(),
                    append: tokio::sync::Mutex::new(()),
                    fanout: Mutex::new(GroupFanout::new(head)),
                    queued: AtomicU64::new(head),
                    members: AtomicU32::new(members),
                    traffic: self.metrics.tenant(tenant),
                })
            })
            .clone();
        Ok(state)
    }

    /// The group's state if it is loaded (never reads the store).
    pub(crate) fn loaded(&self, tenant: &TenantId, group: &GroupId) -> Option<Arc<GroupState>> {
        self.map
            .get(&(tenant.clone(), group.clone()))
            .map(|g| g.clone())
    }

    /// A loaded group's member count, if it is loaded.
    pub(crate) fn loaded_members(&self, tenant: &TenantId, group: &GroupId) -> Option<u32> {
        self.map
            .get(&(tenant.clone(), group.clone()))
            .map(|g| g.members.load(Ordering::Relaxed))
    }

    /// Messages of `g` after `after`, up to `upto`, for a push writer's catch-up.
    pub(crate) fn read_for_catch_up(
        &self,
        g: &GroupState,
        after: u64,
        upto: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let n = ((upto - after) as usize).min(self.limits.max_fetch_messages as usize);
        let mut msgs = self.store.read_after(&g.tenant, &g.id, after, n)?;
        msgs.retain(|m| m.seq <= upto);
        Ok(msgs)
    }

    /// The group's first retained seq (retention may have deleted older ones).
    pub(crate) fn first_seq(&self, g: &GroupState) -> Result<u64, StoreError> {
        self.store.first_seq(&g.tenant, &g.id)
    }

    /// For benchmarks only (feature `bench`): fan out in subscription order (the naive way)
    /// instead of foreground sessions first. Deferral to background sessions is unaffected.
    #[cfg(feature = "bench")]
    pub(crate) fn set_naive_fanout(&self, naive: bool) {
        self.naive_fanout.store(naive, Ordering::Relaxed);
    }

    /// Advances the durable head to `seq` without a live frame; subscribers catch up.
    pub(crate) fn reveal(&self, g: &GroupState, seq: u64) {
        for s in g.fanout.lock().reveal(seq) {
            s.request_catch_up();
        }
    }

    /// Phase 1 of publishing (see `commit.rs`): makes `seq` visible (advances the durable
    /// head) and queues the frame to the foreground subscribers (all of them in naive mode),
    /// each with a ticket of the batch's `gate`. Returns whether background subscribers are
    /// left for phase 2.
    pub(crate) fn publish_active(
        &self,
        g: &GroupState,
        seq: u64,
        lane: Lane,
        frame: &Bytes,
        published_at: Instant,
        gate: &Arc<ForegroundGate>,
    ) -> bool {
        let naive = self.naive_fanout.load(Ordering::Relaxed);
        let (n, later) = g.fanout.lock().publish_active(seq, naive, |s, copy| {
            let gated = matches!(copy, router::Copy::Deliver { gated: true });
            let push = Push::Deliver {
                group: g.id.clone(),
                seq,
                lane,
                frame: frame.clone(),
                published_at,
                gate: gated.then(|| gate.ticket()),
            };
            s.push(push, &self.metrics);
        });
        self.metrics
            .deliveries_live
            .fetch_add(n.live, Ordering::Relaxed);
        g.traffic
            .deliveries_live
            .fetch_add(n.live, Ordering::Relaxed);
        later
    }

    /// Phase 2 of publishing: the background subscribers get the frame, or a nudge when the
    /// group defers them. Presence is read again: a session that came to the foreground
    /// since phase 1 is skipped here, and its catch-up (which every return to the
    /// foreground starts, up to the head phase 1 advanced) brings the message; one that went
    /// to the background gets it again, and its writer skips what it already sent.
    pub(crate) fn publish_background(
        &self,
        g: &GroupState,
        seq: u64,
        lane: Lane,
        frame: &Bytes,
        published_at: Instant,
    ) {
        // Decided once per message, not per recipient.
        let defer = self.defers_background(g);
        let n = g.fanout.lock().publish_background(defer, |s, copy| {
            let push = match copy {
                router::Copy::Nudge => Push::Nudge {
                    group: g.id.clone(),
                    seq,
                },
                router::Copy::Deliver { .. } => Push::Deliver {
                    group: g.id.clone(),
                    seq,
                    lane,
                    frame: frame.clone(),
                    published_at,
                    gate: None,
                },
            };
            s.push(push, &self.metrics);
        });
        self.metrics
            .deliveries_live
            .fetch_add(n.live, Ordering::Relaxed);
        g.traffic
            .deliveries_live
            .fetch_add(n.live, Ordering::Relaxed);
        if n.deferred > 0 {
            self.metrics
                .deliveries_deferred
                .fetch_add(n.deferred, Ordering::Relaxed);
            g.traffic
                .deliveries_deferred
                .fetch_add(n.deferred, Ordering::Relaxed);
        }
    }

    /// Whether background sessions of `g` get nudges instead of its messages now: the group
    /// is large (`nudge_background_from_members`) or the tenant sheds background delivery
    /// at the current load level.
    pub(crate) fn defers_background(&self, g: &GroupState) -> bool {
        router::defers_background(
            g.members.load(Ordering::Relaxed),
            self.limits.nudge_background_from_members,
            self.load.shedding(&g.tenant).background_delivery,
        )
    }

    /// Whether `session`'s deliveries of `g` are deferred right now (see
    /// [`Groups::defers_background`]); catch-up skips such groups until it is foreground.
    pub(crate) fn defers(&self, session: &Session, g: &GroupState) -> bool {
        session.presence() == PresenceState::Background && self.defers_background(g)
    }
}

/// A stored message as the wire carries it.
pub(crate) fn to_message(gid: &GroupId, m: StoredMessage) -> Message {
    Message {
        group: gid.to_string(),
        seq: m.seq,
        sender: m.sender.to_string(),
        client_msg_id: m.client_msg_id,
        sent_at_ms: m.sent_at_ms,
        body: m.body,
        lane: m.lane,
    }
}
