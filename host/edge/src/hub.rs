//! The routing hub: everything between a decoded client frame and the store. It owns no
//! state of its own beyond the commit queue's sender and the disk flag: it wires the node's
//! components (each in its own module) and runs the requests that touch several of them.
//!
//! - `sessions.rs`: users, their sessions and membership locks; `groups.rs`: loaded groups
//!   and the fan-out; `serving.rs` ([`Policies`]): the tenants' policy gate; `load.rs`: the
//!   load level and shedding; `rates.rs`: rate limits; `commit.rs`: the committer. The
//!   decisions of membership, load, rates and commit outcomes are `switchboard_router`'s;
//!   these modules hold the locks, clocks and store calls around them.
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

mod observe;
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

/// Upper bound of a message's encoded size besides its body (three ids of at most 64 bytes,
/// seq, timestamp, flatbuffer tables and offsets).
const MESSAGE_ENVELOPE_BYTES: usize = 512;

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
            std::time::Duration::from_millis(limits.foreground_gate_ms.max(1)),
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

    /// Subscribes `session` to `g`, delivering everything after `after` (clamped to the
    /// durable head). Returns the head. Idempotent for an already-subscribed group.
    /// Applies a membership change (`router::membership`) to every connected session of the
    /// user at once. The caller holds the user's membership lock.
    fn move_sessions(&self, g: &Arc<GroupState>, user: &UserId, change: Change) {
        for (s, change) in change.for_sessions(self.sessions_of(&g.tenant, user)) {
            match change {
                Change::Drop => self.unsubscribe(&s, g),
                _ => {
                    self.subscribe(&s, g, change);
                }
            }
        }
    }

    /// Subscribes a session as `change` says (idempotent); returns the group's head.
    fn subscribe(&self, session: &Arc<Session>, g: &Arc<GroupState>, change: Change) -> u64 {
        if !session.groups.lock().insert(g.id.clone()) {
            return g.head();
        }
        let mut f = g.fanout.lock();
        if session.closed.load(Ordering::Acquire) {
            // close_session ran (or is running) for this session: never re-add it. It drains
            // `groups` after setting `closed`, so it removes what we inserted above.
            return f.head();
        }
        // Queue the change before becoming visible to the committer, so any push for this
        // group the writer sees finds the subscription already applied.
        let membership::SubChange::Subscribe { after } = change.sub_change(f.head()) else {
            return f.head();
        };
        session.sub_changes.lock().insert(
            g.id.clone(),
            SubChange::Subscribe {
                group: g.clone(),
                after,
            },
        );
        f.subscribe(session.clone());
        let head = f.head();
        drop(f);
        session.request_catch_up();
        head
    }

    fn unsubscribe(&self, session: &Arc<Session>, g: &GroupState) {
        if !session.groups.lock().remove(&g.id) {
            return;
        }
        g.fanout.lock().unsubscribe(session.id);
        session
            .sub_changes
            .lock()
            .insert(g.id.clone(), SubChange::Unsubscribe(g.id.clone()));
        session.wake.notify_one();
    }

    /// `Join`: adds the user to an open group (or confirms membership of a closed one) and
    /// subscribes the session. A new member starts at the current head; a member's sessions
    /// resume from its stored cursor.
    pub fn join(&self, session: &Arc<Session>, group: &str) -> Result<u64, RequestError> {
        let gid = group_id(group)?;
        self.admit_join(session)?;
        let (tenant, user) = (&session.tenant, &session.user);
        let _membership = self.membership_lock(tenant, user);
        let meta = self.store.group(tenant, &gid)?.ok_or_else(|| {
            RequestError::new(ErrorCode::GroupNotFound, format!("group {gid} not found"))
        })?;
        let g = self.group(tenant, &gid)?;
        match membership::join(self.store.is_member(tenant, &gid, user)?, meta.open) {
            Ok(Join::Follow) => {
                // Other sessions of the same user follow the membership too.
                let after = self.store.cursor(tenant, &gid, user)?;
                self.move_sessions(&g, user, Change::Follow { after });
            }
            Ok(Join::Admit) => {
                self.admit_member(&g, user)?;
            }
            Err(refused) => {
                return Err(RequestError::new(
                    ErrorCode::JoinRefused,
                    format!("group {gid} {refused}"),
                ))
            }
        }
        Ok(g.head())
    }

    /// `Leave`: removes the user from the group and stops deliveries to all its sessions.
    pub fn leave(&self, session: &Arc<Session>, group: &str) -> Result<(), RequestError> {
        let gid = group_id(group)?;
        self.admit_join(session)?;
        let _membership = self.membership_lock(&session.tenant, &session.user);
        let g = self.group(&session.tenant, &gid)?;
        self.require_member(session, &gid)?;
        self.drop_member(&g, &session.user)?;
        Ok(())
    }

    /// Adds `user` to a group on the tenant's behalf (admin API), like a `Join` of an open
    /// group. Ok(false) if the user was a member already.
    pub fn add_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, RequestError> {
        let _membership = self.membership_lock(tenant, user);
        let g = self.group(tenant, group)?;
        if self.store.is_member(tenant, group, user)? {
            return Ok(false);
        }
        self.admit_member(&g, user)
    }

    /// Removes `user` from a group on the tenant's behalf; its sessions stop receiving the
    /// group at once. Ok(false) if it was not a member.
    pub fn remove_member(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        user: &UserId,
    ) -> Result<bool, RequestError> {
        let _membership = self.membership_lock(tenant, user);
        let g = self.group(tenant, group)?;
        self.drop_member(&g, user)
    }

    /// The one way a user becomes a member (`Join` and the admin API): within
    /// `max_groups_per_user` and the group's member limit (enforced by the store
    /// atomically: `GroupFull`), starting at the group's head, with every connected session
    /// of the user subscribed at once. Ok(false) if the store found it a member already.
    /// The caller holds the user's membership lock.
    fn admit_member(&self, g: &Arc<GroupState>, user: &UserId) -> Result<bool, RequestError> {
        let tenant = &g.tenant;
        let groups = self.store.groups_of(tenant, user)?.len();
        if !membership::within_group_limit(groups, self.limits.max_groups_per_user) {
            return Err(RequestError::new(
                ErrorCode::InvalidArgument,
                format!("{user} is in max_groups_per_user groups already"),
            ));
        }
        if !self.store.add_member(tenant, &g.id, user)? {
            return Ok(false);
        }
        g.members.fetch_add(1, Ordering::Relaxed);
        let change = Change::Admit { head: g.head() };
        if let Some(cursor) = change.cursor() {
            self.store.advance_cursor(tenant, &g.id, user, cursor)?;
        }
        self.move_sessions(g, user, change);
        Ok(true)
    }

    /// The one way a user stops being a member (`Leave` and the admin API): removed from
    /// the store, uncounted, every session of the user unsubscribed at once. Ok(false) if it
    /// was not a member. The caller holds the user's membership lock.
    fn drop_member(&self, g: &Arc<GroupState>, user: &UserId) -> Result<bool, RequestError> {
        if !self.store.remove_member(&g.tenant, &g.id, user)? {
            return Ok(false);
        }
        g.members.fetch_sub(1, Ordering::Relaxed);
        self.move_sessions(g, user, Change::Drop);
        Ok(true)
    }

    /// Takes a token of the user's `user_joins` limit (shared by `Join` and `Leave`).
    fn admit_join(&self, session: &Session) -> Result<(), RequestError> {
        self.admit_user(session, Limited::Joins)
    }

    /// Takes a token of one of the session's user's buckets, or the typed refusal.
    fn admit_user(&self, session: &Session, kind: Limited) -> Result<(), RequestError> {
        self.rates
            .admit_user(&self.metrics, &session.rates.user, kind, &session.user)
    }

    /// Creates a group (admin API). `GroupExists` comes back as a store error.
    pub fn create_group(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        meta: GroupMeta,
    ) -> Result<(), StoreError> {
        self.store.create_group(tenant, group, meta)
    }

    /// The tenant's active policy plugin, if one is bound.
    pub fn policy(&self, tenant: &TenantId) -> Option<Arc<TenantPolicy>> {
        self.policies.active(tenant)
    }

    /// Binds (or, with `None`, unbinds) a tenant's policy plugin for all its users, with no
    /// version label. See [`Hub::set_policies`].
    pub fn set_policy(&self, tenant: &TenantId, policy: Option<Arc<TenantPolicy>>) {
        self.set_policies(
            tenant,
            PolicySet {
                active: policy.map(|policy| VersionedPolicy {
                    version: String::new(),
                    policy,
                }),
                canary: None,
            },
        );
    }

    /// Binds a tenant's policy versions (active and canary; both `None` for the built-in
    /// policy). Takes effect for the next event; events in flight finish on the version they
    /// picked. Connected users of the tenant get their re-evaluated feature flags, and the
    /// tenant's shedding is recomputed.
    pub fn set_policies(&self, tenant: &TenantId, set: PolicySet) {
        self.policies.bind(tenant, set);
        self.apply_load(tenant);
        self.repush_flags(tenant);
    }

    /// What the tenant serves now, with live figures per version.
    pub fn serving(&self, tenant: &TenantId) -> ServingState {
        self.policies.state(tenant)
    }

    /// Replaces the tenant's feature-flag rules; connected users get their new flags.
    pub fn set_flag_rules(&self, tenant: &TenantId, rules: BTreeMap<String, FlagRule>) {
        self.policies.set_flag_rules(tenant, rules);
        self.repush_flags(tenant);
    }

    fn repush_flags(&self, tenant: &TenantId) {
        for s in self.sessions.of_tenant(tenant) {
            self.push_flags(&s);
        }
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

    /// Bytes of frames queued for all sessions now (gauge; walks the sessions).
    pub fn queued_bytes(&self) -> usize {
        self.sessions.queued_bytes()
    }

    /// Sends waiting for the committer, as a percentage of the commit queue's bound.
    pub fn commit_queue_percent(&self) -> u64 {
        let max = self.commit_tx.max_capacity();
        ((max - self.commit_tx.capacity()) * 100 / max.max(1)) as u64
    }

    /// Pushes queued for all sessions, as a percentage of their total bound.
    pub fn push_queue_percent(&self) -> u64 {
        let queued: usize = self.queue_depths().iter().map(|(_, n)| n).sum();
        let sessions = self.metrics.sessions.load(Ordering::Relaxed).max(1);
        let bound = sessions * self.limits.outbox_frames as usize * PushStream::ALL.len();
        (queued * 100 / bound.max(1)) as u64
    }

    /// Pushes queued right now over every session, per push stream (gauge for metrics;
    /// walks the sessions, so call it per scrape, not per message).
    pub fn queue_depths(&self) -> [(PushStream, usize); 4] {
        self.sessions.queue_depths()
    }

    /// The node's load level: 0 normal, 1 elevated, 2 high, 3 critical. An admin's forced
    /// level wins over the measured one.
    pub fn load_level(&self) -> u8 {
        self.load.level()
    }

    /// Moves the node's measured load level and asks every tenant's policy what to shed.
    pub fn set_load_level(&self, level: u8) {
        if let Some(before) = self.load.set_measured(level) {
            self.load_level_changed(before);
        }
    }

    /// Forces a load level (an admin's degradation override), or with `None` goes back to
    /// the measured level.
    pub fn set_load_override(&self, level: Option<u8>) {
        if let Some(before) = self.load.set_forced(level) {
            self.load_level_changed(before);
        }
    }

    fn load_level_changed(&self, before: u8) {
        tracing::info!(level = self.load_level(), before, "load level changed");
        for t in self.policies.tenants() {
            self.apply_load(&t);
        }
    }

    /// Asks the tenant's policy what it sheds at the level in force.
    fn apply_load(&self, tenant: &TenantId) {
        let shed = self.policies.on_load(tenant, self.load.level());
        self.load.set_shedding(tenant, shed);
    }

    /// What `tenant` sheds at the current load level.
    pub fn shedding(&self, tenant: &TenantId) -> policy::Shedding {
        self.load.shedding(tenant)
    }

    /// Evaluates the user's feature flags and queues them as a `Flags` push.
    fn push_flags(&self, session: &Session) {
        let flags = self.policies.flags(&session.tenant, &session.user);
        let frame = wire::encode_server(&ServerFrame::Flags {
            flags: flags
                .into_iter()
                .map(|f| wire::Flag {
                    name: f.name,
                    enabled: f.enabled,
                })
                .collect(),
        });
        // Flags change what the app shows: ahead of messages.
        session.push(
            Push::Notice {
                stream: PushStream::High,
                frame,
            },
            &self.metrics,
        );
    }

    /// The push planner of one of this hub's sessions (its writers share it).
    pub(crate) fn push_planner(&self, session: Arc<Session>) -> crate::push::PushPlanner {
        crate::push::PushPlanner::new(self.groups.clone(), session)
    }

    /// See [`Sessions::membership_lock`].
    fn membership_lock(&self, tenant: &TenantId, user: &UserId) -> MutexGuard<'_, ()> {
        self.sessions.membership_lock(tenant, user)
    }

    pub(crate) fn sessions_of(&self, tenant: &TenantId, user: &UserId) -> Vec<Arc<Session>> {
        self.sessions.sessions_of(tenant, user)
    }

    /// `Send`: validates, appends and queues the commit. The ack is sent by the committer
    /// once the append is durable; `reply` is a reserved slot in the connection's response
    /// queue and `permit` one of its in-flight slots, released with the ack.
    pub async fn send(
        &self,
        session: &Session,
        req: SendRequest,
        reply: mpsc::OwnedPermit<Bytes>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), RequestError> {
        let SendRequest {
            request_id,
            group,
            client_msg_id,
            body,
        } = req;
        let client_msg_id = client_msg_id.as_str();
        if body.len() > self.limits.max_payload_bytes as usize {
            return Err(RequestError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "body is {} bytes; max_payload_bytes is {}",
                    body.len(),
                    self.limits.max_payload_bytes
                ),
            ));
        }
        if client_msg_id.is_empty() || client_msg_id.len() > switchboard_core::id::MAX_ID_LEN {
            return Err(RequestError::new(
                ErrorCode::InvalidArgument,
                "client_msg_id must be 1..=64 bytes",
            ));
        }
        let gid = group_id(&group)?;
        // Before anything that costs (store, policy): a refused send is not stored, not
        // acked, not judged and not counted anywhere else; a resend later is a new request.
        self.rates.admit_message(
            &self.metrics,
            &session.rates,
            &session.user,
            &session.tenant,
        )?;
        let g = self.group(&session.tenant, &gid)?;
        // A resend of a message the group stored while the sender was a member is acked again
        // (as a duplicate) after the sender left or was removed: its outbox must learn that
        // the message is stored, or it would hold it forever. Nothing new is stored or judged.
        let resend_of_stored = match self.require_member(session, &gid) {
            Ok(()) => false,
            Err(refused) => {
                let stored =
                    self.store
                        .find_sent(&session.tenant, &gid, &session.user, client_msg_id)?;
                if stored.is_none() {
                    return Err(refused);
                }
                true
            }
        };
        if !resend_of_stored && self.disk_low.load(Ordering::Relaxed) {
            self.metrics
                .disk_full_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err(RequestError {
                code: ErrorCode::StoreUnavailable,
                message: "the node's disk is nearly full; not stored, retry later".into(),
                retry_after_ms: 1_000,
            });
        }

        let facts = MessageFacts {
            tenant: &session.tenant,
            sender: &session.user,
            group: &g.id,
            group_size: g.members.load(Ordering::Relaxed),
            connected_members: g.subscriber_count() as u32,
        };
        let verdict = if resend_of_stored {
            // Unused: the append below finds the duplicate.
            Ok((Lane::Normal, false))
        } else {
            self.policies.message_verdict(facts, &body)
        };
        let (lane, notify) = match verdict {
            Ok(verdict) => verdict,
            // A resend of a message the group already has is acked again whatever the policy
            // says now (it may have been swapped, or the first verdict was a fallback).
            // Rejections are rare, so this lookup costs nothing on the hot path.
            Err(e)
                if e.code == ErrorCode::PolicyRejected
                    && self
                        .store
                        .find_sent(&session.tenant, &gid, &session.user, client_msg_id)?
                        .is_some() =>
            {
                (Lane::Normal, false) // unused: the append below finds the duplicate
            }
            Err(e) => return Err(e),
        };
        let _order = g.append.lock().await;
        let sent_at_ms = now_ms();
        let appended = self.store.append(
            &session.tenant,
            &gid,
            NewMessage {
                sender: &session.user,
                lane,
                client_msg_id,
                sent_at_ms,
                body: &body,
            },
        )?;
        let (seq, deliver, duplicate) = match appended {
            // Past the next seq (cluster mode: another node appended in between and its
            // notice has not come): revealed, so sessions read the gap from the log first.
            Appended::New { seq } if seq > g.queued.load(Ordering::Relaxed) + 1 => {
                g.queued.fetch_max(seq, Ordering::Relaxed);
                (seq, None, false)
            }
            Appended::New { seq } => {
                g.queued.fetch_max(seq, Ordering::Relaxed);
                let frame = wire::encode_server(&ServerFrame::Deliver(Message {
                    group: gid.to_string(),
                    seq,
                    sender: session.user.to_string(),
                    client_msg_id: client_msg_id.to_owned(),
                    sent_at_ms,
                    body,
                    lane,
                }));
                (seq, Some(frame), false)
            }
            Appended::Duplicate { seq } => (seq, None, true),
        };
        let ack = wire::encode_server(&ServerFrame::Ack {
            request_id,
            group: gid.to_string(),
            client_msg_id: client_msg_id.to_owned(),
            seq,
            duplicate,
        });
        let commit = Commit {
            group: g.clone(),
            seq,
            lane,
            notify: (notify && !duplicate).then(|| session.user.clone()),
            request_id,
            deliver,
            ack,
            reply: Some(reply),
            _permit: Some(permit),
        };
        // Still under the append lock: commits of one group enter the queue in seq order.
        self.commit_tx
            .send(commit)
            .await
            .map_err(|_| RequestError::new(ErrorCode::ShuttingDown, "node is shutting down"))?;
        if duplicate {
            self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics
                .messages_accepted
                .fetch_add(1, Ordering::Relaxed);
            g.traffic.messages_accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A message another node committed to a group (cluster mode: its commit notice).
    /// Delivered to this node's sessions of the group as a local commit is — through the
    /// commit queue, so in seq order with this node's own commits — unless this node has
    /// queued it already. A message past the next seq is revealed instead (sessions read it
    /// and the gap before it from the log). A group not loaded here has no session here:
    /// nothing to do (it loads its head from the store when first used). Waits while the
    /// commit queue is full.
    pub async fn deliver_remote(&self, tenant: &TenantId, group: &GroupId, m: StoredMessage) {
        let (seq, lane) = (m.seq, m.lane);
        self.commit_remote(tenant, group, seq, lane, |queued| {
            (seq == queued + 1)
                .then(|| wire::encode_server(&ServerFrame::Deliver(to_message(group, m))))
        })
        .await
    }

    /// A group's head another node announced (cluster mode: the owner of a quiet group
    /// repeats its head, so a missed notice of its last message is noticed). If this node
    /// has not queued up to `seq`, the gap is revealed: sessions read it from the log.
    pub async fn reveal_remote(&self, tenant: &TenantId, group: &GroupId, seq: u64) {
        self.commit_remote(tenant, group, seq, Lane::Normal, |_| None)
            .await
    }

    /// Queues another node's commit of `seq` unless this node queued it already; `deliver`
    /// makes the live frame from the seq queued before (`None`: reveal).
    async fn commit_remote(
        &self,
        tenant: &TenantId,
        group: &GroupId,
        seq: u64,
        lane: Lane,
        deliver: impl FnOnce(u64) -> Option<Bytes>,
    ) {
        let Some(g) = self.groups.loaded(tenant, group) else {
            return;
        };
        let _order = g.append.lock().await;
        let queued = g.queued.load(Ordering::Relaxed);
        if seq <= queued {
            return;
        }
        g.queued.store(seq, Ordering::Relaxed);
        let deliver = deliver(queued);
        let commit = Commit {
            group: g.clone(),
            seq,
            lane,
            notify: None,
            request_id: 0,
            deliver,
            ack: Bytes::new(),
            reply: None,
            _permit: None,
        };
        // Closed only when the node shuts down.
        let _ = self.commit_tx.send(commit).await;
    }

    /// `Fetch`: durable messages after `after`, at most `limit` (capped by the node).
    pub fn fetch(
        &self,
        session: &Session,
        group: &str,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<Message>, u64), RequestError> {
        let gid = group_id(group)?;
        let g = self.group(&session.tenant, &gid)?;
        self.require_member(session, &gid)?;
        let head = g.head();
        let limit = limit.min(self.limits.max_fetch_messages) as usize;
        let msgs = if after >= head || limit == 0 {
            Vec::new()
        } else {
            let n = limit.min((head - after) as usize);
            self.store
                .read_after(&session.tenant, &gid, after, n)?
                .into_iter()
                .filter(|m| m.seq <= head)
                .enumerate()
                .scan(0usize, |bytes, (i, m)| {
                    // Keep the FetchResult frame under max_frame_bytes: a short page only
                    // means "fetch again", never a frame the client must refuse. The first
                    // message always goes (any one fits a frame), so paging always advances.
                    *bytes += m.body.len() + MESSAGE_ENVELOPE_BYTES;
                    (i == 0 || *bytes <= self.fetch_budget()).then(|| to_message(&gid, m))
                })
                .collect()
        };
        Ok((msgs, head))
    }

    /// Bytes a FetchResult's messages may take.
    fn fetch_budget(&self) -> usize {
        (self.limits.max_frame_bytes - switchboard_core::limits::ENVELOPE_OVERHEAD) as usize
    }

    /// `AckDelivery`: persists the member's cursor (never past the durable head).
    pub fn ack_delivery(
        &self,
        session: &Session,
        group: &str,
        seq: u64,
    ) -> Result<(), RequestError> {
        let gid = group_id(group)?;
        let g = self.group(&session.tenant, &gid)?;
        self.require_member(session, &gid)?;
        let seq = seq.min(g.head());
        self.store
            .advance_cursor(&session.tenant, &gid, &session.user, seq)?;
        Ok(())
    }

    /// `Receipt`: checked here (rate limit, membership, the message exists, load shedding),
    /// then queued for the receipt worker (`receipts.rs`), which stores it and tells the
    /// message's sender. A full queue sheds it (counted), never the message path.
    pub fn receipt(
        &self,
        session: &Session,
        group: &str,
        seq: u64,
        kind: ReceiptKind,
    ) -> Result<(), RequestError> {
        let gid = group_id(group)?;
        self.admit_user(session, Limited::Receipts)?;
        let g = self.group(&session.tenant, &gid)?;
        self.require_member(session, &gid)?;
        if seq == 0 || seq > g.head() {
            return Err(RequestError::new(
                ErrorCode::InvalidArgument,
                format!("no message {seq} in group {gid}"),
            ));
        }
        if self.shedding(&session.tenant).receipts {
            self.metrics.receipts_shed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let job = crate::receipts::ReceiptJob {
            group: g,
            seq,
            reader: session.user.clone(),
            kind,
        };
        if self.receipts_tx.try_send(job).is_err() {
            self.metrics.receipts_shed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl LoadSignals for Hub {
    fn commit_queue_percent(&self) -> u64 {
        Hub::commit_queue_percent(self)
    }
    fn push_queue_percent(&self) -> u64 {
        Hub::push_queue_percent(self)
    }
    fn set_load_level(&self, level: u8) {
        Hub::set_load_level(self, level)
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
