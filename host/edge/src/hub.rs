//! The routing hub: everything between a decoded client frame and the store. It owns no
//! state of its own beyond the commit queue's sender and the disk flag: it wires the node's
//! components (each in its own module) and runs the requests that touch several of them.
//!
//! - `sessions.rs`: users, their sessions and membership locks; `groups.rs`: loaded groups
//!   and the fan-out; `serving.rs` ([`Policies`]): the tenants' policy gate; `load.rs`: the
//!   load level and shedding; `rates.rs`: rate limits; `commit.rs`: the committer. The
//!   decisions of membership, load, rates and commit outcomes are `switchboard_router`'s;
//!   these modules hold the locks, clocks and store calls around them.
//! - The requests live in this module's files, one kind each: `members.rs` (join, leave, the
//!   admin member changes), `messages.rs` (send, fetch, acks, receipts, messages from other
//!   nodes), `presence.rs`, `policies.rs` (policy and flag swaps), `levels.rs` (load levels
//!   and queue fill), `observe.rs` (what the dashboard shows). This file wires the hub and
//!   opens and closes sessions.
//! - Workers get narrow handles (the pieces they use), never the hub: the receipt and notify
//!   workers, the committer and its phase-2 task, and the load monitor (through
//!   [`LoadSignals`]). Nothing below the hub imports it.
//!
//! The message path (see ARCHITECTURE.md, "Delivery invariants"):
//! 1. `send` takes the group's append lock, appends to the store (which assigns the next
//!    sequence number or finds the earlier append of the same client message id), and queues a
//!    [`Commit`] while still holding the lock, so commits of one group queue in `seq` order.
//! 2. The committer flushes the store once for everything queued (group commit), then, in
//!    queue order, publishes each new message to the group's subscribers and acks its sender.
//!    Nothing is acked or delivered before the flush that made it durable.
//! 3. Each session's push writer keeps, per group, the highest `seq` it has written. It skips
//!    what it already sent and fills any gap from the log, so a session sees every message of
//!    its groups once, in order, whether it came live, from catch-up, or after its outbox
//!    overflowed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::MutexGuard;
use switchboard_core::token::{self, Claims};
use switchboard_core::{
    ErrorCode, GroupId, Lane, Limits, PresenceState, ReceiptKind, TenantId, UserId,
};
use switchboard_policy::{self as policy, TenantPolicy};
use switchboard_router::membership::{self, Change, Join};
use switchboard_store::{
    Appended, FlagRule, GroupMeta, NewMessage, Store, StoreError, StoredMessage,
};
use switchboard_wire::{self as wire, GroupCursor, Message, ServerFrame};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::clock::now_ms;
use crate::commit::{Commit, Committer};
pub use crate::error::{group_id, RequestError};
use crate::groups::{to_message, Groups};
use crate::load::{Load, LoadSignals};
use crate::metrics::Metrics;
use crate::notify::{NotifySink, SharedSink};
use crate::outbox::{Outbox, Push, PushStream};
use crate::rates::{Limited, RateLimiter, TenantRates};
use crate::receipts::{ReceiptDeps, ReceiptJob};
use crate::serving::{MessageFacts, Policies, PolicySet, ServingState, VersionedPolicy};
use crate::sessions::{NewSession, Sessions};
use crate::state::SubChange;
pub use crate::state::{GroupState, Session};
pub use observe::{PresenceCounts, SessionInfo};

mod levels;
mod members;
mod messages;
mod observe;
mod policies;
mod presence;

/// A `Send` request's fields.
#[derive(Debug)]
pub struct SendRequest {
    pub request_id: u64,
    pub group: String,
    pub client_msg_id: String,
    pub body: Bytes,
}

/// The routing hub. One per node.
pub struct Hub {
    store: Arc<dyn Store>,
    limits: Limits,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    groups: Arc<Groups>,
    policies: Arc<Policies>,
    load: Arc<Load>,
    /// Per-user and per-tenant rate limits.
    rates: RateLimiter,
    tenant_rates: DashMap<TenantId, Arc<TenantRates>>,
    commit_tx: mpsc::Sender<Commit>,
    /// Set while the data disk has less than `min_free_disk_bytes` free (`store_watch` in `lib.rs`).
    disk_low: AtomicBool,
    notify_sink: SharedSink,
    /// Presence on other nodes, in cluster mode (`elsewhere.rs`).
    elsewhere: crate::elsewhere::SharedElsewhere,
    /// The receipt worker's queue (`receipts.rs`).
    receipts_tx: mpsc::Sender<ReceiptJob>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub over `store`, and the committer task that must run beside it.
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> (Arc<Hub>, Committer) {
        let metrics = Arc::new(Metrics::default());
        let sessions = Arc::new(Sessions::new());
        let load = Arc::new(Load::new());
        let policies = Arc::new(Policies::new(metrics.clone()));
        let groups = Arc::new(Groups::new(
            store.clone(),
            limits.clone(),
            metrics.clone(),
            load.clone(),
        ));
        let notify_sink: SharedSink =
            Arc::new(parking_lot::RwLock::new(Arc::new(crate::notify::LogSink)));
        let elsewhere = crate::elsewhere::SharedElsewhere::default();
        let notifier = crate::notify::start(
            store.clone(),
            sessions.clone(),
            elsewhere.clone(),
            notify_sink.clone(),
            metrics.clone(),
        );
        let receipts_tx = crate::receipts::start(ReceiptDeps {
            store: store.clone(),
            policies: policies.clone(),
            groups: groups.clone(),
            sessions: sessions.clone(),
            metrics: metrics.clone(),
        });
        let (commit_tx, commit_rx) = crate::commit::channel();
        let committer = Committer::new(
            store.clone(),
            commit_rx,
            groups.clone(),
            notifier,
            switchboard_router::gate::GateBounds::from_millis(
                limits.foreground_gate_ms.max(1),
                limits.foreground_gate_max_ms,
            ),
        );
        let hub = Arc::new(Hub {
            store,
            rates: RateLimiter::new(&limits),
            limits,
            metrics,
            sessions,
            groups,
            policies,
            load,
            tenant_rates: DashMap::new(),
            commit_tx,
            disk_low: AtomicBool::new(false),
            notify_sink,
            elsewhere,
            receipts_tx,
        });
        (hub, committer)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Checks a client token: signature with the tenant's secret, validity window.
    pub fn authenticate(&self, token_str: &str) -> Result<Claims, RequestError> {
        let result = (|| {
            let unverified =
                token::parse(token_str).map_err(|e| RequestError::new(e.code(), e.to_string()))?;
            let tenant = self.store.tenant(unverified.tenant())?.ok_or_else(|| {
                RequestError::new(
                    ErrorCode::UnknownTenant,
                    format!("unknown tenant {}", unverified.tenant()),
                )
            })?;
            let now = now_ms() / 1000;
            unverified
                .verify(&tenant.secret, now)
                .map_err(|e| RequestError::new(e.code(), e.to_string()))
        })();
        if result.is_err() {
            self.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// The hub state of a group, if the group exists.
    pub fn group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
    ) -> Result<Arc<GroupState>, RequestError> {
        self.groups.get(tenant, group)
    }
    fn require_member(&self, s: &Session, group: &GroupId) -> Result<(), RequestError> {
        if self.store.is_member(&s.tenant, group, &s.user)? {
            Ok(())
        } else {
            Err(RequestError::new(
                ErrorCode::NotMember,
                format!("not a member of group {group}"),
            ))
        }
    }

    /// Registers a session after a valid `Hello`, subscribes it to all its groups from their
    /// resume cursors, and returns it with the `Welcome` frame.
    pub(crate) fn open_session(
        &self,
        claims: Claims,
        hello: &wire::Hello,
        outbox: Outbox,
        remote: Option<std::net::SocketAddr>,
    ) -> Result<(Arc<Session>, ServerFrame), RequestError> {
        if hello.cursors.len() > self.limits.max_groups_per_user as usize {
            return Err(RequestError::new(
                ErrorCode::InvalidArgument,
                "more resume cursors than max_groups_per_user",
            ));
        }
        let tenant_rates = self
            .tenant_rates
            .entry(claims.tenant.clone())
            .or_insert_with(|| Arc::new(TenantRates::new(&self.limits)))
            .clone();
        // From here on the session counts against the tenant until close_session.
        self.rates
            .admit_session(&self.metrics, &tenant_rates, &claims.tenant)?;
        self.sessions.prune(&self.rates, self.rates.now_ms());
        let resume: HashMap<&str, u64> = hello
            .cursors
            .iter()
            .map(|c| (c.group.as_str(), c.seq))
            .collect();
        // Under the user's membership lock: a Join or Leave on another of this user's
        // sessions either completes before we read the user's groups, or runs after we are
        // registered and so updates this session too.
        let membership = self.membership_lock(&claims.tenant, &claims.user);
        let new = NewSession {
            tenant: claims.tenant,
            user: claims.user,
            presence: hello.presence,
            connected_at_ms: now_ms(),
            remote,
        };
        let session = self
            .sessions
            .register(new, outbox, &self.limits, tenant_rates);
        self.metrics.sessions.fetch_add(1, Ordering::Relaxed);
        let (groups, resumed) = match self.subscribe_all(&session, &resume) {
            Ok(v) => v,
            Err(e) => {
                // Undo: the session never becomes usable (close_session also unregisters it
                // and lowers the sessions gauge). It takes the membership lock itself; a Join
                // in between is undone with the rest.
                drop(membership);
                self.close_session(&session);
                return Err(e);
            }
        };
        drop(membership); // not held across the plugin call below
        self.push_flags(&session);
        let welcome = ServerFrame::Welcome {
            session_id: session.id,
            tenant: session.tenant.to_string(),
            user: session.user.to_string(),
            server_time_ms: now_ms(),
            max_payload_bytes: self.limits.max_payload_bytes,
            groups,
            resume: resumed,
        };
        Ok((session, welcome))
    }

    /// Subscribes a new session to each of its user's groups from its resume cursor.
    /// Returns the `Welcome` lists: heads and resume points.
    #[allow(clippy::type_complexity)]
    fn subscribe_all(
        &self,
        session: &Arc<Session>,
        resume: &HashMap<&str, u64>,
    ) -> Result<(Vec<GroupCursor>, Vec<GroupCursor>), RequestError> {
        let mut groups = Vec::new();
        let mut resumed = Vec::new();
        for gid in self.store.groups_of(&session.tenant, &session.user)? {
            let g = self.group(&session.tenant, &gid)?;
            let after = match resume.get(gid.as_str()) {
                Some(&seq) => seq,
                None => self.store.cursor(&session.tenant, &gid, &session.user)?,
            };
            let head = self.subscribe(session, &g, Change::Follow { after });
            groups.push(GroupCursor {
                group: gid.to_string(),
                seq: head,
            });
            resumed.push(GroupCursor {
                group: gid.to_string(),
                seq: after.min(head),
            });
        }
        Ok((groups, resumed))
    }

    /// Removes a session from every group and index, and tells co-members when that changes
    /// its user's presence (its last session: it left). Idempotent.
    pub(crate) fn close_session(&self, session: &Arc<Session>) {
        if session.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Serialised with the user's other sessions opening, closing and telling presence.
        let membership = self.membership_lock(&session.tenant, &session.user);
        let groups: Vec<GroupId> = session.groups.lock().drain().collect();
        for gid in &groups {
            if let Some(g) = self.groups.loaded(&session.tenant, gid) {
                g.fanout.lock().unsubscribe(session.id);
            }
        }
        let now = self.rates.now_ms();
        self.sessions.unregister(session, &self.rates, now);
        self.tell_departure(session, &groups);
        drop(membership);
        session.rates.tenant.session_closed();
        self.sessions.prune(&self.rates, now);
        self.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Users the hub keeps state for: those with a session, and those whose rate limits are
    /// still refilling after their last session closed (bounded: see `rates.rs`).
    pub fn tracked_users(&self) -> usize {
        self.sessions.tracked_users()
    }

    /// Sessions of `tenant` open on this node (what `tenant_max_connections` bounds).
    pub fn tenant_sessions(&self, tenant: &TenantId) -> u32 {
        self.tenant_rates
            .get(tenant)
            .map_or(0, |t| t.open_sessions())
    }

    /// Re-reads the store's free disk space against `min_free_disk_bytes`; returns whether
    /// writes are refused now. Called every 250 ms by the node (`lib.rs`).
    pub fn check_disk(&self) -> bool {
        let reserve = self.limits.min_free_disk_bytes;
        let low = reserve > 0 && self.store.free_bytes().is_some_and(|free| free < reserve);
        if self.disk_low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(reserve, "data disk nearly full: refusing sends");
            } else {
                tracing::info!("data disk has room again: accepting sends");
            }
        }
        low
    }

    /// Whether the data disk was under `min_free_disk_bytes` at the last [`Hub::check_disk`].
    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Relaxed)
    }

    /// Where push-notification events for offline members go (default: the log).
    pub fn set_notify_sink(&self, sink: Arc<dyn NotifySink>) {
        *self.notify_sink.write() = sink;
    }

    /// Installs the node's view of presence on other nodes (cluster mode): push
    /// notifications skip users connected elsewhere, and this node's presence changes are
    /// told to it.
    pub fn set_elsewhere(&self, elsewhere: Arc<dyn crate::elsewhere::Elsewhere>) {
        *self.elsewhere.write() = Some(elsewhere);
    }

    /// Tells the node's cluster part what this node's sessions of `user` add up to now
    /// (`here`).
    /// The caller holds the user's membership lock, so changes are told in order.
    pub(crate) fn tell_elsewhere(
        &self,
        tenant: &TenantId,
        user: &UserId,
        here: Option<PresenceState>,
    ) {
        if let Some(e) = self.elsewhere.read().as_ref() {
            e.local_presence(tenant, user, here);
        }
    }

    /// A user's presence on the other nodes changed (cluster mode): `state` is what its
    /// sessions there add up to (`None`: it has none left there). Co-members connected here
    /// are told, as a local change would tell them, unless the user also has a session here
    /// (then this node's own notices speak for it). Told as offline when it left.
    /// Large groups (`nudge_background_from_members`) are skipped, as for arrivals.
    pub fn remote_presence(&self, tenant: &TenantId, user: &UserId, state: Option<PresenceState>) {
        if self.sessions.is_connected(tenant, user) {
            return;
        }
        if self.shedding(tenant).presence {
            self.metrics.presence_shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let groups = match self.store.groups_of(tenant, user) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(%tenant, %user, error = %e, "presence from another node not told");
                return;
            }
        };
        let frame = wire::encode_server(&ServerFrame::PresenceNotice {
            user: user.to_string(),
            state: state.unwrap_or(PresenceState::Background),
            online: state.is_some(),
        });
        let from = self.limits.nudge_background_from_members;
        let mut reached = std::collections::HashSet::new();
        for gid in groups {
            let Some(g) = self.groups.loaded(tenant, &gid) else {
                continue;
            };
            if from > 0 && g.members.load(Ordering::Relaxed) >= from {
                continue;
            }
            let subs = g.fanout.lock().subscribers().to_vec();
            for s in subs {
                if &s.user != user && reached.insert(s.id) {
                    s.push(
                        Push::Notice {
                            stream: PushStream::Notices,
                            frame: frame.clone(),
                        },
                        &self.metrics,
                    );
                }
            }
        }
    }

    /// Whether `user` has a session on this node now.
    pub fn is_connected(&self, tenant: &TenantId, user: &UserId) -> bool {
        self.sessions.is_connected(tenant, user)
    }

    /// For tests only (feature `test-hooks`): the rate limits' clock stands still from now
    /// on, so no bucket refills; tests count refusals exactly on a machine of any speed.
    #[cfg(feature = "test-hooks")]
    pub fn freeze_rate_clock(&self) {
        self.rates.freeze();
    }

    /// For benchmarks only (feature `bench`): fan out in subscription order (the naive way)
    /// instead of foreground sessions first. Deferral to background sessions is unaffected.
    #[cfg(feature = "bench")]
    pub fn set_naive_fanout(&self, naive: bool) {
        self.groups.set_naive_fanout(naive);
    }

    /// The push planner of one of this hub's sessions (its writers share it).
    pub(crate) fn push_planner(&self, session: Arc<Session>) -> crate::push::PushPlanner {
        crate::push::PushPlanner::new(self.groups.clone(), session)
    }
}
