//! The routing hub: everything between a decoded client frame and the store, and the fan-out
//! from a durable message to the sessions that must see it. No QUIC here: sessions are
//! reached through their bounded outboxes, so this module is tested without sockets.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard};
use switchboard_core::token::{self, Claims};
use switchboard_core::{
    ErrorCode, GroupId, IdError, Lane, Limits, PresenceState, ReceiptKind, TenantId, UserId,
};
use switchboard_policy::{self as policy, TenantPolicy};
use switchboard_store::{
    Appended, FlagRule, GroupMeta, NewMessage, Store, StoreError, StoredMessage,
};
use switchboard_wire::{self as wire, ErrorFrame, GroupCursor, Message, ServerFrame};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};

use switchboard_router::{self as router, GroupFanout};

use crate::active_first::{ForegroundGate, Later, Phase2};
use crate::push::{Outbox, Push, PushStream};
use crate::rates::{Limited, RateLimiter, SessionRates, TenantRates, UserRates, Whose};
use crate::serving::{PolicySet, Serving, ServingState, ServingVersion, VersionedPolicy};

mod presence;
pub(crate) use presence::Told;

/// A refusal of one request, sent to the client as an `Error` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
    /// For retryable codes, how long the client should wait before retrying; 0 = no advice.
    pub retry_after_ms: u32,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }

    /// With the wait the client is told to observe before retrying (e.g. `RateLimited`).
    pub fn with_retry_after(mut self, retry_after_ms: u32) -> Self {
        self.retry_after_ms = retry_after_ms;
        self
    }

    /// The `Error` frame answering `request_id`.
    pub fn frame(&self, request_id: u64) -> ErrorFrame {
        ErrorFrame {
            request_id,
            code: self.code.as_u16(),
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::GroupNotFound(g) => {
                Self::new(ErrorCode::GroupNotFound, format!("group {g} not found"))
            }
            StoreError::GroupFull { group, max } => Self::new(
                ErrorCode::GroupFull,
                format!("group {group} is full ({max} members)"),
            ),
            StoreError::GroupExists(g) => {
                Self::new(ErrorCode::InvalidArgument, format!("group {g} exists"))
            }
            StoreError::OutcomeUnknown(e) => {
                tracing::error!(error = %e, "store failure after a write");
                Self::new(
                    ErrorCode::OutcomeUnknown,
                    "storage failed after the write; it may be stored: resend with the same \
                     client_msg_id",
                )
                .with_retry_after(1_000)
            }
            e @ (StoreError::Io(_) | StoreError::Corrupt { .. } | StoreError::Secrets(_)) => {
                tracing::error!(error = %e, "store failure");
                // The node reopens a failed store once its disk has room (`store_watch`).
                Self::new(
                    ErrorCode::StoreUnavailable,
                    "storage unavailable; not stored, retry",
                )
                .with_retry_after(1_000)
            }
        }
    }
}

fn bad_id(what: &str, e: IdError) -> RequestError {
    RequestError::new(ErrorCode::InvalidArgument, format!("{what}: {e}"))
}

/// Parses a group id from a frame field.
pub fn group_id(s: &str) -> Result<GroupId, RequestError> {
    GroupId::new(s).map_err(|e| bad_id("group", e))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters the node exposes. Monotonic unless named as a gauge.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Gauge: open sessions.
    pub sessions: AtomicUsize,
    /// Gauge: QUIC connections (including ones still saying hello).
    pub connections: AtomicUsize,
    pub connections_refused: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub duplicates: AtomicU64,
    /// Deliver frames queued live to sessions.
    pub deliveries_live: AtomicU64,
    /// Deliver frames sent from the log (catch-up, gap fill).
    pub deliveries_catch_up: AtomicU64,
    /// Times a session's outbox was full and it switched to catching up from the log.
    pub outbox_overflows: AtomicU64,
    /// Deliveries not sent live to a background session (large group or shed under load):
    /// it gets them on returning to the foreground, or fetches them.
    pub deliveries_deferred: AtomicU64,
    /// `Nudge` frames written (at most one per deferred group and connection a second).
    pub nudges: AtomicU64,
    /// Times the measured load level changed (`load.rs`).
    pub load_level_changes: AtomicU64,
    /// Sends refused because the data disk was under `min_free_disk_bytes`.
    pub disk_full_refusals: AtomicU64,
    /// Publish (durable) → handed to QUIC, per live delivery, by the session's presence.
    pub latency_active: crate::histogram::Histogram,
    pub latency_background: crate::histogram::Histogram,
    /// Best-effort notices (receipts, presence) dropped because a session's queue was full.
    pub notices_dropped: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Messages a tenant policy refused.
    pub policy_rejections: AtomicU64,
    /// Policy calls answered by the built-in default because the plugin failed.
    pub policy_fallbacks: AtomicU64,
    /// Policy calls skipped (built-in default used) because the tenant's breaker was open.
    pub policy_breaker_skips: AtomicU64,
    /// Messages whose policy asked for offline members to be notified.
    pub notify_offline_requests: AtomicU64,
    /// Push-notification events handed to the sink (one per offline member and message).
    pub notifications: AtomicU64,
    /// Messages whose notifications were dropped because the notification queue was full.
    pub notifications_dropped: AtomicU64,
    /// Notifications the sink could not deliver (e.g. the webhook failed); not retried.
    pub notifications_failed: AtomicU64,
    pub receipts_forwarded: AtomicU64,
    pub receipts_aggregated: AtomicU64,
    pub receipts_dropped: AtomicU64,
    /// Receipts and presence changes shed under load.
    pub receipts_shed: AtomicU64,
    pub presence_shed: AtomicU64,
    /// `ReceiptSummary` frames sent (aggregated receipts, one per message per worker batch).
    pub receipt_summaries: AtomicU64,
    /// Receipts the worker could not store (store error); the batch is lost, not retried.
    pub receipts_failed: AtomicU64,
    /// Requests refused with `RateLimited`, by what was limited (nothing of them was done).
    pub rate_limited_messages: AtomicU64,
    pub rate_limited_receipts: AtomicU64,
    /// `Join`s and `Leave`s.
    pub rate_limited_joins: AtomicU64,
    /// `Hello`s refused for the tenant's connection limits.
    pub rate_limited_connections: AtomicU64,
    /// `Presence` changes not told to co-members (recorded for delivery planning).
    pub rate_limited_presence: AtomicU64,
    /// Gauge: connection attempts in their QUIC/TLS handshake.
    pub handshakes: AtomicUsize,
    /// Connection attempts sent a QUIC `Retry` to prove their address (many handshakes
    /// were in flight).
    pub handshake_retries: AtomicU64,
    /// Connection attempts refused because `max_handshakes` were in flight.
    pub handshakes_refused: AtomicU64,
    /// Handshakes abandoned because they did not complete within `hello_timeout_ms`.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed with `SlowConsumer` (`disconnect_slow_consumers`).
    pub slow_consumers_disconnected: AtomicU64,
    /// Batches whose background phase started at its deadline, before every foreground copy
    /// was handed to QUIC (a foreground session not reading; `active_first.rs`).
    pub foreground_gate_timeouts: AtomicU64,
}

/// A snapshot of [`Metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub sessions: usize,
    pub connections: usize,
    pub connections_refused: u64,
    pub messages_accepted: u64,
    pub duplicates: u64,
    pub deliveries_live: u64,
    pub deliveries_catch_up: u64,
    pub outbox_overflows: u64,
    pub deliveries_deferred: u64,
    pub nudges: u64,
    pub notices_dropped: u64,
    pub load_level_changes: u64,
    pub disk_full_refusals: u64,
    pub flushes: u64,
    pub flush_failures: u64,
    pub auth_failures: u64,
    pub protocol_errors: u64,
    pub policy_rejections: u64,
    pub policy_fallbacks: u64,
    pub policy_breaker_skips: u64,
    pub notify_offline_requests: u64,
    pub notifications: u64,
    pub notifications_dropped: u64,
    pub notifications_failed: u64,
    pub receipts_forwarded: u64,
    pub receipts_aggregated: u64,
    pub receipts_dropped: u64,
    pub receipts_shed: u64,
    pub presence_shed: u64,
    pub receipt_summaries: u64,
    pub receipts_failed: u64,
    pub rate_limited_messages: u64,
    pub rate_limited_receipts: u64,
    pub rate_limited_joins: u64,
    pub rate_limited_connections: u64,
    pub rate_limited_presence: u64,
    pub handshakes: usize,
    pub handshake_retries: u64,
    pub handshakes_refused: u64,
    pub handshake_timeouts: u64,
    pub slow_consumers_disconnected: u64,
    pub foreground_gate_timeouts: u64,
}

impl Metrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            sessions: self.sessions.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            connections_refused: l(&self.connections_refused),
            messages_accepted: l(&self.messages_accepted),
            duplicates: l(&self.duplicates),
            deliveries_live: l(&self.deliveries_live),
            deliveries_catch_up: l(&self.deliveries_catch_up),
            outbox_overflows: l(&self.outbox_overflows),
            deliveries_deferred: l(&self.deliveries_deferred),
            nudges: l(&self.nudges),
            notices_dropped: l(&self.notices_dropped),
            load_level_changes: l(&self.load_level_changes),
            disk_full_refusals: l(&self.disk_full_refusals),
            flushes: l(&self.flushes),
            flush_failures: l(&self.flush_failures),
            auth_failures: l(&self.auth_failures),
            protocol_errors: l(&self.protocol_errors),
            policy_rejections: l(&self.policy_rejections),
            policy_fallbacks: l(&self.policy_fallbacks),
            policy_breaker_skips: l(&self.policy_breaker_skips),
            notify_offline_requests: l(&self.notify_offline_requests),
            notifications: l(&self.notifications),
            notifications_dropped: l(&self.notifications_dropped),
            notifications_failed: l(&self.notifications_failed),
            receipts_forwarded: l(&self.receipts_forwarded),
            receipts_aggregated: l(&self.receipts_aggregated),
            receipts_dropped: l(&self.receipts_dropped),
            receipts_shed: l(&self.receipts_shed),
            presence_shed: l(&self.presence_shed),
            receipt_summaries: l(&self.receipt_summaries),
            receipts_failed: l(&self.receipts_failed),
            rate_limited_messages: l(&self.rate_limited_messages),
            rate_limited_receipts: l(&self.rate_limited_receipts),
            rate_limited_joins: l(&self.rate_limited_joins),
            rate_limited_connections: l(&self.rate_limited_connections),
            rate_limited_presence: l(&self.rate_limited_presence),
            handshakes: self.handshakes.load(Ordering::Relaxed),
            handshake_retries: l(&self.handshake_retries),
            handshakes_refused: l(&self.handshakes_refused),
            handshake_timeouts: l(&self.handshake_timeouts),
            slow_consumers_disconnected: l(&self.slow_consumers_disconnected),
            foreground_gate_timeouts: l(&self.foreground_gate_timeouts),
        }
    }
}

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
    outbox: Outbox,
    /// Set when the writer must bring every group up to its durable head from the log.
    pub(crate) catch_up: AtomicBool,
    pub(crate) wake: Notify,
    /// Pending subscription changes, the latest per group (so a client looping Join/Leave
    /// while its writer is blocked cannot grow this beyond its groups).
    pub(crate) sub_changes: Mutex<HashMap<GroupId, SubChange>>,
    /// Groups this session is subscribed to (for presence fan-out and cleanup).
    groups: Mutex<HashSet<GroupId>>,
    presence: AtomicU8,
    /// What co-members were last told of this session's user (shared by its sessions).
    told: Arc<Told>,
    closed: AtomicBool,
    /// `disconnect_slow_consumers`: a full outbox ends the connection instead of switching
    /// it to catch-up. `slow` is set once, and `evict` wakes the connection to close.
    disconnect_when_slow: bool,
    slow: AtomicBool,
    evict: Notify,
    /// The user's and the tenant's rate limits.
    rates: SessionRates,
}

impl Session {
    /// Queues a push without waiting. A full outbox never blocks the fan-out: a delivery that
    /// does not fit is recovered from the log by the writer; a notice is dropped.
    pub(crate) fn push(&self, p: Push, metrics: &Metrics) {
        match self.outbox.try_push(p) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Push::Deliver { .. })) => {
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
            Err(mpsc::error::TrySendError::Full(Push::Notice { .. })) => {
                metrics.notices_dropped.fetch_add(1, Ordering::Relaxed);
            }
            // A lost nudge is a lost hint: the next one, or the return to the foreground, tells.
            Err(_) => {}
        }
    }

    /// Resolves once the session must end as a slow consumer (`disconnect_slow_consumers`).
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await
    }

    pub(crate) fn request_catch_up(&self) {
        self.catch_up.store(true, Ordering::Release);
        self.wake.notify_one();
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
    append: tokio::sync::Mutex<()>,
    fanout: Mutex<GroupFanout<Arc<Session>>>,
    /// Member count, kept here so the per-message policy call reads no store.
    pub(crate) members: AtomicU32,
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

/// A `Send` request's fields.
#[derive(Debug)]
pub struct SendRequest {
    pub request_id: u64,
    pub group: String,
    pub client_msg_id: String,
    pub body: Bytes,
}

/// A durable-pending append waiting for the committer.
struct Commit {
    group: Arc<GroupState>,
    seq: u64,
    request_id: u64,
    /// The encoded Deliver frame, for new messages.
    deliver: Option<Bytes>,
    lane: Lane,
    /// The sender, when the policy asked to notify offline members (new messages only).
    notify: Option<UserId>,
    /// The encoded Ack frame.
    ack: Bytes,
    /// A slot in the connection's response queue, reserved when the send was accepted, so
    /// the ack (or the flush error) can always be queued without waiting.
    reply: mpsc::OwnedPermit<Bytes>,
    _permit: OwnedSemaphorePermit,
}

pub(crate) type Key<T> = (TenantId, T);

/// A user's entry in the hub's user index: its sessions, and the rate limits they share.
/// Without sessions it is only kept while its buckets refill (see `rates.rs`).
#[derive(Debug)]
struct UserEntry {
    sessions: Vec<Arc<Session>>,
    rates: Arc<UserRates>,
    told: Arc<Told>,
}

/// The routing hub. One per node.
pub struct Hub {
    store: Arc<dyn Store>,
    limits: Limits,
    groups: DashMap<Key<GroupId>, Arc<GroupState>>,
    users: DashMap<Key<UserId>, UserEntry>,
    /// Per-user and per-tenant rate limits.
    rates: RateLimiter,
    tenant_rates: DashMap<TenantId, Arc<TenantRates>>,
    commit_tx: mpsc::Sender<Commit>,
    next_session: AtomicU64,
    metrics: Metrics,
    /// Tenants' bound policy versions (active, canary); a tenant without one gets
    /// [`policy::Builtin`]. Swapping a value here is a hot swap: an event holds the `Arc` of
    /// the version it picked until it is handled.
    serving: DashMap<TenantId, Arc<Serving>>,
    /// Bounds the heavy plugin calls running at once (see [`ServingVersion::call`]).
    heavy_calls: crate::serving::HeavyCalls,
    /// Tenants' feature-flag rules from the config store, applied over the plugin's flags.
    flag_rules: DashMap<TenantId, Arc<BTreeMap<String, FlagRule>>>,
    /// The node's load level (0 normal .. 3 critical) and what each tenant sheds at it.
    load_level: AtomicU8,
    /// A level an admin forced ([`NO_OVERRIDE`] when none); wins over `load_level`.
    load_override: AtomicU8,
    shedding: DashMap<TenantId, policy::Shedding>,
    /// See [`Hub::membership_lock`].
    membership: Box<[Mutex<()>]>,
    /// Set while the data disk has less than `min_free_disk_bytes` free (`store_watch` in `lib.rs`).
    disk_low: AtomicBool,
    /// Fan out in subscription order instead of foreground first (benchmarks compare the
    /// two; see [`Hub::set_naive_fanout`]).
    naive_fanout: AtomicBool,
    /// The notification worker's queue (`notify.rs`), set once the hub exists.
    notify_tx: OnceLock<mpsc::Sender<crate::notify::NotifyJob>>,
    notify_sink: parking_lot::RwLock<Arc<dyn crate::notify::NotifySink>>,
    /// The receipt worker's queue (`receipts.rs`), set once the hub exists.
    receipts_tx: OnceLock<mpsc::Sender<crate::receipts::ReceiptJob>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The committer's end of the commit queue; run it with [`Committer::run`].
pub struct Committer {
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Commit>,
    hub: std::sync::Weak<Hub>,
    /// Batches whose background subscribers wait for phase 2 (`active_first`).
    phase2: mpsc::Sender<crate::active_first::Phase2>,
    phase2_rx: Option<mpsc::Receiver<crate::active_first::Phase2>>,
}

/// Upper bound of a message's encoded size besides its body (three ids of at most 64 bytes,
/// seq, timestamp, flatbuffer tables and offsets).
const MESSAGE_ENVELOPE_BYTES: usize = 512;

/// Locks striping users' membership changes (see [`Hub::membership_lock`]).
const MEMBERSHIP_STRIPES: usize = 64;

/// `load_override` when no level is forced.
const NO_OVERRIDE: u8 = u8::MAX;

/// Most commits one flush covers; more wait for the next flush.
const MAX_COMMIT_BATCH: usize = 4096;

impl Hub {
    /// A hub over `store`, and the committer task that must run beside it.
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> (Arc<Hub>, Committer) {
        // Bounded by design: each commit holds one of its connection's in-flight permits.
        let (commit_tx, rx) = mpsc::channel(MAX_COMMIT_BATCH);
        let rates = RateLimiter::new(&limits);
        let hub = Arc::new(Hub {
            store: store.clone(),
            limits,
            groups: DashMap::new(),
            users: DashMap::new(),
            rates,
            tenant_rates: DashMap::new(),
            commit_tx,
            next_session: AtomicU64::new(1),
            metrics: Metrics::default(),
            serving: DashMap::new(),
            heavy_calls: crate::serving::HeavyCalls::for_this_machine(),
            flag_rules: DashMap::new(),
            load_level: AtomicU8::new(0),
            load_override: AtomicU8::new(NO_OVERRIDE),
            shedding: DashMap::new(),
            membership: (0..MEMBERSHIP_STRIPES).map(|_| Mutex::new(())).collect(),
            receipts_tx: OnceLock::new(),
            naive_fanout: AtomicBool::new(false),
            disk_low: AtomicBool::new(false),
            notify_tx: OnceLock::new(),
            notify_sink: parking_lot::RwLock::new(Arc::new(crate::notify::LogSink)),
        });
        let _ = hub
            .notify_tx
            .set(crate::notify::start(Arc::downgrade(&hub)));
        let _ = hub
            .receipts_tx
            .set(crate::receipts::start(Arc::downgrade(&hub)));
        let (phase2, phase2_rx) = crate::active_first::channel();
        let committer = Committer {
            store,
            rx,
            hub: Arc::downgrade(&hub),
            phase2,
            phase2_rx: Some(phase2_rx),
        };
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
        let key = (tenant.clone(), group.clone());
        if let Some(g) = self.groups.get(&key) {
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
            .groups
            .entry(key)
            .or_insert_with(|| {
                Arc::new(GroupState {
                    tenant: tenant.clone(),
                    id: group.clone(),
                    append: tokio::sync::Mutex::new(()),
                    fanout: Mutex::new(GroupFanout::new(head)),
                    members: AtomicU32::new(members),
                })
            })
            .clone();
        Ok(state)
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
        self.prune_user_rates(self.rates.now_ms());
        let resume: HashMap<&str, u64> = hello
            .cursors
            .iter()
            .map(|c| (c.group.as_str(), c.seq))
            .collect();
        // Under the user's membership lock: a Join or Leave on another of this user's
        // sessions either completes before we read the user's groups, or runs after we are
        // registered and so updates this session too.
        let membership = self.membership_lock(&claims.tenant, &claims.user);
        let initial_presence = match hello.presence {
            PresenceState::Foreground => 0,
            PresenceState::Background => 1,
        };
        let session = {
            // Created inside the user's entry, so all its sessions share one set of buckets.
            let mut entry = self
                .users
                .entry((claims.tenant.clone(), claims.user.clone()))
                .or_insert_with(|| UserEntry {
                    sessions: Vec::new(),
                    rates: Arc::new(UserRates::new(&self.limits)),
                    told: Arc::default(),
                });
            let session = Arc::new(Session {
                id: self.next_session.fetch_add(1, Ordering::Relaxed),
                tenant: claims.tenant,
                user: claims.user,
                outbox,
                catch_up: AtomicBool::new(false),
                wake: Notify::new(),
                sub_changes: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashSet::new()),
                presence: AtomicU8::new(initial_presence),
                told: entry.told.clone(),
                closed: AtomicBool::new(false),
                disconnect_when_slow: self.limits.disconnect_slow_consumers,
                slow: AtomicBool::new(false),
                evict: Notify::new(),
                rates: SessionRates {
                    user: entry.rates.clone(),
                    tenant: tenant_rates,
                },
            });
            entry.sessions.push(session.clone());
            session
        };
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
            let head = self.subscribe(session, &g, after);
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
            if let Some(g) = self.groups.get(&(session.tenant.clone(), gid.clone())) {
                g.fanout.lock().unsubscribe(session.id);
            }
        }
        let key = (session.tenant.clone(), session.user.clone());
        let now = self.rates.now_ms();
        let mut park = false;
        if let dashmap::Entry::Occupied(mut e) = self.users.entry(key.clone()) {
            e.get_mut().sessions.retain(|s| s.id != session.id);
            if e.get().sessions.is_empty() {
                // Full buckets are the same as new ones; others wait until they are.
                if e.get().rates.is_full(now) {
                    e.remove();
                } else {
                    park = true;
                }
            }
        }
        if park {
            self.rates.park(key, now); // after the entry's shard lock is released
        }
        self.tell_departure(session, &groups);
        drop(membership);
        session.rates.tenant.session_closed();
        self.prune_user_rates(now);
        self.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Drops the entries of users without sessions whose buckets have refilled.
    fn prune_user_rates(&self, now: u64) {
        for key in self.rates.expired(now) {
            self.users
                .remove_if(&key, |_, e| e.sessions.is_empty() && e.rates.is_full(now));
        }
    }

    /// Users the hub keeps state for: those with a session, and those whose rate limits are
    /// still refilling after their last session closed (bounded: see `rates.rs`).
    pub fn tracked_users(&self) -> usize {
        self.users.len()
    }

    /// Sessions of `tenant` open on this node (what `tenant_max_connections` bounds).
    pub fn tenant_sessions(&self, tenant: &TenantId) -> u32 {
        self.tenant_rates
            .get(tenant)
            .map_or(0, |t| t.open_sessions())
    }

    /// Subscribes `session` to `g`, delivering everything after `after` (clamped to the
    /// durable head). Returns the head. Idempotent for an already-subscribed group.
    fn subscribe(&self, session: &Arc<Session>, g: &Arc<GroupState>, after: u64) -> u64 {
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
        session.sub_changes.lock().insert(
            g.id.clone(),
            SubChange::Subscribe {
                group: g.clone(),
                after: after.min(f.head()),
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
    /// subscribes the session. A new member starts at the current head.
    pub fn join(&self, session: &Arc<Session>, group: &str) -> Result<u64, RequestError> {
        let gid = group_id(group)?;
        self.admit_join(session)?;
        let _membership = self.membership_lock(&session.tenant, &session.user);
        let meta = self.store.group(&session.tenant, &gid)?.ok_or_else(|| {
            RequestError::new(ErrorCode::GroupNotFound, format!("group {gid} not found"))
        })?;
        let g = self.group(&session.tenant, &gid)?;
        let after = if self.store.is_member(&session.tenant, &gid, &session.user)? {
            self.store.cursor(&session.tenant, &gid, &session.user)?
        } else {
            if !meta.open {
                return Err(RequestError::new(
                    ErrorCode::JoinRefused,
                    format!("group {gid} is closed; membership is managed by the tenant"),
                ));
            }
            let mine = self.store.groups_of(&session.tenant, &session.user)?.len();
            if mine >= self.limits.max_groups_per_user as usize {
                return Err(RequestError::new(
                    ErrorCode::InvalidArgument,
                    "user is in max_groups_per_user groups already",
                ));
            }
            // The store enforces the group's member limit atomically (GroupFull).
            if self
                .store
                .add_member(&session.tenant, &gid, &session.user)?
            {
                g.members.fetch_add(1, Ordering::Relaxed);
            }
            let head = g.head();
            self.store
                .advance_cursor(&session.tenant, &gid, &session.user, head)?;
            head
        };
        // Other sessions of the same user follow the membership too.
        for s in self.sessions_of(&session.tenant, &session.user) {
            self.subscribe(&s, &g, after);
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
        if self
            .store
            .remove_member(&session.tenant, &gid, &session.user)?
        {
            g.members.fetch_sub(1, Ordering::Relaxed);
        }
        for s in self.sessions_of(&session.tenant, &session.user) {
            self.unsubscribe(&s, &g);
        }
        Ok(())
    }

    /// Takes a token of the user's `user_joins` limit (shared by `Join` and `Leave`).
    fn admit_join(&self, session: &Session) -> Result<(), RequestError> {
        let user = &session.rates.user;
        self.admit_user(
            session,
            &user.joins,
            Limited::Joins,
            self.limits.user_joins(),
        )
    }

    /// Takes a token of one of the session's user's buckets, or the typed refusal.
    fn admit_user(
        &self,
        session: &Session,
        bucket: &switchboard_core::rate::TokenBucket,
        kind: Limited,
        rate: switchboard_core::rate::Rate,
    ) -> Result<(), RequestError> {
        self.rates.take(
            &self.metrics,
            bucket,
            kind,
            Whose("user", &session.user),
            rate,
            self.rates.now_ms(),
        )
    }

    /// Adds `user` to a group on the tenant's behalf (admin API). Like a `Join`, a new
    /// member starts at the group's head, and the user's connected sessions are subscribed at
    /// once. Ok(false) if the user was a member already.
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
        if self.store.groups_of(tenant, user)?.len() >= self.limits.max_groups_per_user as usize {
            return Err(RequestError::new(
                ErrorCode::InvalidArgument,
                format!("{user} is in max_groups_per_user groups already"),
            ));
        }
        if !self.store.add_member(tenant, group, user)? {
            return Ok(false);
        }
        g.members.fetch_add(1, Ordering::Relaxed);
        let head = g.head();
        self.store.advance_cursor(tenant, group, user, head)?;
        for s in self.sessions_of(tenant, user) {
            self.subscribe(&s, &g, head);
        }
        Ok(true)
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
        if !self.store.remove_member(tenant, group, user)? {
            return Ok(false);
        }
        g.members.fetch_sub(1, Ordering::Relaxed);
        for s in self.sessions_of(tenant, user) {
            self.unsubscribe(&s, &g);
        }
        Ok(true)
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
        self.serving
            .get(tenant)
            .and_then(|s| s.active.as_ref().map(|v| v.policy.clone()))
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
        if set.active.is_none() && set.canary.is_none() {
            self.serving.remove(tenant);
        } else {
            let current = self.serving.get(tenant).map(|s| s.clone());
            let next = Serving::next(tenant, current.as_deref(), set);
            self.serving.insert(tenant.clone(), Arc::new(next));
        }
        self.apply_load(tenant);
        self.repush_flags(tenant);
    }

    /// What the tenant serves now, with live figures per version.
    pub fn serving(&self, tenant: &TenantId) -> ServingState {
        match self.serving.get(tenant) {
            Some(s) => ServingState {
                active: s.active.as_ref().map(|v| v.snapshot()),
                canary: s.canary.as_ref().map(|c| c.version.snapshot()),
            },
            None => ServingState::default(),
        }
    }

    /// Replaces the tenant's feature-flag rules; connected users get their new flags.
    pub fn set_flag_rules(&self, tenant: &TenantId, rules: BTreeMap<String, FlagRule>) {
        if rules.is_empty() {
            self.flag_rules.remove(tenant);
        } else {
            self.flag_rules.insert(tenant.clone(), Arc::new(rules));
        }
        self.repush_flags(tenant);
    }

    fn repush_flags(&self, tenant: &TenantId) {
        let sessions: Vec<Arc<Session>> = self
            .users
            .iter()
            .filter(|e| &e.key().0 == tenant)
            .flat_map(|e| e.value().sessions.clone())
            .collect();
        for s in sessions {
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
    pub fn set_notify_sink(&self, sink: Arc<dyn crate::notify::NotifySink>) {
        *self.notify_sink.write() = sink;
    }

    pub(crate) fn notify_sink(&self) -> Arc<dyn crate::notify::NotifySink> {
        self.notify_sink.read().clone()
    }

    /// Whether `user` has a session on this node now.
    pub(crate) fn is_connected(&self, tenant: &TenantId, user: &UserId) -> bool {
        !self.sessions_of(tenant, user).is_empty()
    }

    fn queue_notification(&self, g: &GroupState, seq: u64, sender: UserId) {
        let job = crate::notify::NotifyJob {
            tenant: g.tenant.clone(),
            group: g.id.clone(),
            seq,
            sender,
        };
        let queue = self.notify_tx.get().expect("set in Hub::new");
        if queue.try_send(job).is_err() {
            self.metrics
                .notifications_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// For benchmarks only (feature `bench`): fan out in subscription order (the naive way)
    /// instead of foreground sessions first. Deferral to background sessions is unaffected.
    #[cfg(feature = "bench")]
    pub fn set_naive_fanout(&self, naive: bool) {
        self.naive_fanout.store(naive, Ordering::Relaxed);
    }

    /// Bytes of frames queued for all sessions now (gauge; walks the sessions).
    pub fn queued_bytes(&self) -> usize {
        let mut total = 0;
        for e in self.users.iter() {
            for s in &e.value().sessions {
                total += s.outbox.bytes();
            }
        }
        total
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
        let mut depths = PushStream::ALL.map(|s| (s, 0));
        for e in self.users.iter() {
            for s in &e.value().sessions {
                for (stream, n) in &mut depths {
                    *n += s.outbox.depth(*stream);
                }
            }
        }
        depths
    }

    /// The node's load level: 0 normal, 1 elevated, 2 high, 3 critical. An admin's forced
    /// level wins over the measured one.
    pub fn load_level(&self) -> u8 {
        match self.load_override.load(Ordering::Relaxed) {
            NO_OVERRIDE => self.load_level.load(Ordering::Relaxed),
            forced => forced,
        }
    }

    /// Moves the node's measured load level and asks every tenant's policy what to shed.
    pub fn set_load_level(&self, level: u8) {
        let before = self.load_level();
        self.load_level.store(level.min(3), Ordering::Relaxed);
        self.load_level_changed(before);
    }

    /// Forces a load level (an admin's degradation override), or with `None` goes back to
    /// the measured level.
    pub fn set_load_override(&self, level: Option<u8>) {
        let before = self.load_level();
        self.load_override
            .store(level.map_or(NO_OVERRIDE, |l| l.min(3)), Ordering::Relaxed);
        self.load_level_changed(before);
    }

    fn load_level_changed(&self, before: u8) {
        let level = self.load_level();
        if level == before {
            return;
        }
        tracing::info!(level, before, "load level changed");
        let tenants: Vec<TenantId> = self.serving.iter().map(|e| e.key().clone()).collect();
        for t in tenants {
            self.apply_load(&t);
        }
    }

    fn apply_load(&self, tenant: &TenantId) {
        let load = policy::LoadInfo {
            level: self.load_level(),
            tenant_message_rate: 0,
            tenant_connections: 0,
        };
        match self.policy(tenant) {
            Some(p) => {
                let shed = self.count_fallback(p.on_load(&load));
                self.shedding.insert(tenant.clone(), shed);
            }
            None => {
                self.shedding.remove(tenant);
            }
        }
    }

    /// What `tenant` sheds at the current load level.
    pub fn shedding(&self, tenant: &TenantId) -> policy::Shedding {
        match self.shedding.get(tenant) {
            Some(s) => *s,
            None => policy::Builtin::on_load(&policy::LoadInfo {
                level: self.load_level(),
                ..Default::default()
            }),
        }
    }

    /// The version that handles a per-message or per-receipt event of `user`, unless none is
    /// bound or that version's circuit breaker is open (then the caller uses the built-in
    /// default; the skip counts as a failure of the version).
    fn hot_policy(
        &self,
        tenant: &TenantId,
        user: &UserId,
        group: &GroupId,
    ) -> Option<Arc<ServingVersion>> {
        let serving = self.serving.get(tenant)?.clone();
        let v = serving.pick(user, Some(group))?.clone();
        v.handled.fetch_add(1, Ordering::Relaxed);
        if v.breaker.is_open(now_ms()) {
            v.failed.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .policy_breaker_skips
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(v)
    }

    /// Like [`Hub::count_fallback`], also feeding the version's circuit breaker and counters.
    fn guarded<T>(&self, tenant: &TenantId, v: &ServingVersion, d: policy::Decision<T>) -> T {
        let failed = matches!(d.source, policy::Source::Fallback(_));
        if failed {
            v.failed.fetch_add(1, Ordering::Relaxed);
        }
        if v.breaker.record(failed, now_ms()) {
            tracing::warn!(
                %tenant,
                version = %v.version,
                "policy plugin keeps failing: built-in defaults for {} ms",
                crate::breaker::Breaker::OPEN_MS
            );
        }
        self.count_fallback(d)
    }

    fn count_fallback<T>(&self, d: policy::Decision<T>) -> T {
        if let policy::Source::Fallback(reason) = &d.source {
            self.metrics
                .policy_fallbacks
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?reason, "policy call fell back to the built-in default");
        }
        d.value
    }

    /// The tenant's verdict on a message: its lane, or a refusal with the policy's reason.
    /// One call per message, whatever the group's size.
    fn message_verdict(
        &self,
        session: &Session,
        g: &GroupState,
        body: &[u8],
    ) -> Result<(Lane, bool), RequestError> {
        let Some(v) = self.hot_policy(&session.tenant, &session.user, &g.id) else {
            // The built-in default, without building its input.
            return Ok((Lane::Normal, false));
        };
        let info = policy::MessageInfo {
            group: g.id.to_string(),
            sender: session.user.to_string(),
            body_size: body.len() as u32,
            body_prefix: body[..body.len().min(policy::BODY_PREFIX_BYTES)].to_vec(),
            group_size: g.members.load(Ordering::Relaxed),
            connected_members: g.subscriber_count() as u32,
        };
        match self.guarded(
            &session.tenant,
            &v,
            v.call(&self.heavy_calls, |p| p.on_message(&info)),
        ) {
            policy::Verdict::Accept(d) => {
                if d.notify_offline {
                    self.metrics
                        .notify_offline_requests
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok((d.lane, d.notify_offline))
            }
            policy::Verdict::Reject(reason) => {
                self.metrics
                    .policy_rejections
                    .fetch_add(1, Ordering::Relaxed);
                Err(RequestError::new(ErrorCode::PolicyRejected, reason))
            }
        }
    }

    /// Evaluates the user's feature flags and queues them as a `Flags` push.
    fn push_flags(&self, session: &Session) {
        let serving = self.serving.get(&session.tenant).map(|s| s.clone());
        let flags = match serving.as_deref().and_then(|s| s.pick(&session.user, None)) {
            Some(v) => self.count_fallback(v.call(&self.heavy_calls, |p| {
                p.evaluate_flags(&policy::FlagContext {
                    user: session.user.to_string(),
                    group: None,
                })
            })),
            None => Vec::new(),
        };
        let flags = match self.flag_rules.get(&session.tenant).map(|r| r.clone()) {
            Some(rules) => crate::serving::apply_flag_rules(&session.user, flags, &rules),
            None => flags,
        };
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

    /// Serialises one user's membership changes with the registration of its sessions
    /// (striped: a fixed set of locks, so nothing grows with the number of users). Taken
    /// before any fanout or session lock, never while holding one.
    fn membership_lock(&self, tenant: &TenantId, user: &UserId) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (tenant, user).hash(&mut h);
        self.membership[(h.finish() as usize) % self.membership.len()].lock()
    }

    pub(crate) fn sessions_of(&self, tenant: &TenantId, user: &UserId) -> Vec<Arc<Session>> {
        self.users
            .get(&(tenant.clone(), user.clone()))
            .map(|e| e.sessions.clone())
            .unwrap_or_default()
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
        self.require_member(session, &gid)?;
        if self.disk_low.load(Ordering::Relaxed) {
            self.metrics
                .disk_full_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err(RequestError {
                code: ErrorCode::StoreUnavailable,
                message: "the node's disk is nearly full; not stored, retry later".into(),
                retry_after_ms: 1_000,
            });
        }

        let (lane, notify) = match self.message_verdict(session, &g, &body) {
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
            Appended::New { seq } => {
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
            reply,
            _permit: permit,
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
        }
        Ok(())
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
        let user = &session.rates.user;
        self.admit_user(
            session,
            &user.receipts,
            Limited::Receipts,
            self.limits.user_receipts(),
        )?;
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
        let queue = self.receipts_tx.get().expect("set in Hub::new");
        if queue.try_send(job).is_err() {
            self.metrics.receipts_shed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// What the tenant's policy does with one receipt (the receipt worker asks).
    pub(crate) fn receipt_policy(
        &self,
        g: &GroupState,
        seq: u64,
        reader: &UserId,
        kind: ReceiptKind,
    ) -> policy::ReceiptAction {
        match self.hot_policy(&g.tenant, reader, &g.id) {
            Some(v) => {
                let info = policy::ReceiptInfo {
                    group: g.id.to_string(),
                    seq,
                    reader: reader.to_string(),
                    kind,
                    group_size: g.members.load(Ordering::Relaxed),
                };
                self.guarded(&g.tenant, &v, v.policy.on_receipt(&info))
            }
            None => policy::ReceiptAction::Forward,
        }
    }

    /// A loaded group's member count, if it is loaded.
    pub(crate) fn group_members(&self, tenant: &TenantId, group: &GroupId) -> Option<u32> {
        self.groups
            .get(&(tenant.clone(), group.clone()))
            .map(|g| g.members.load(Ordering::Relaxed))
    }

    /// Messages of `group` after `after`, up to `upto`, for a push writer's catch-up.
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
}

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

impl Committer {
    /// Runs until the hub is dropped or [`Committer::close`] is signalled through `stop`,
    /// then commits what is queued and returns.
    pub async fn run(mut self, stop: Arc<Notify>) {
        let phase2 = self
            .phase2_rx
            .take()
            .map(|rx| tokio::spawn(crate::active_first::run(rx, self.hub.clone())));
        let mut batch = Vec::with_capacity(256);
        loop {
            let n = tokio::select! {
                n = self.rx.recv_many(&mut batch, MAX_COMMIT_BATCH) => n,
                _ = stop.notified() => {
                    self.rx.close();
                    self.rx.recv_many(&mut batch, MAX_COMMIT_BATCH).await
                }
            };
            if n == 0 {
                break;
            }
            self.commit(&mut batch).await;
        }
        // Background phases still queued are published (each waits at most its gate).
        drop(self.phase2);
        if let Some(task) = phase2 {
            let _ = task.await;
        }
    }

    async fn commit(&mut self, batch: &mut Vec<Commit>) {
        let store = self.store.clone();
        let flushed = tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("flush task failed: {e}"))));
        let Some(hub) = self.hub.upgrade() else {
            batch.clear();
            return;
        };
        match flushed {
            Ok(()) => {
                hub.metrics.flushes.fetch_add(1, Ordering::Relaxed);
                let (gate, publishing) = ForegroundGate::new();
                let mut later = Vec::new();
                for c in batch.drain(..) {
                    if let Some(sender) = c.notify {
                        hub.queue_notification(&c.group, c.seq, sender);
                    }
                    match c.deliver {
                        Some(frame) => {
                            let at = std::time::Instant::now();
                            if hub.publish_active(&c.group, c.seq, c.lane, &frame, at, &gate) {
                                later.push(Later {
                                    group: c.group,
                                    seq: c.seq,
                                    lane: c.lane,
                                    frame,
                                    published_at: at,
                                });
                            }
                        }
                        // A resend of a message whose first flush failed: it is durable now,
                        // so make it visible (subscribers fetch it from the log).
                        None => hub.reveal(&c.group, c.seq),
                    }
                    c.reply.send(c.ack);
                }
                if !later.is_empty() {
                    gate.await_later();
                }
                drop(publishing);
                if !later.is_empty() {
                    // Active first on the wire, not only in the queues: the background
                    // sessions get the batch once its foreground copies are written (or the
                    // gate's deadline passed), on their own task, so the next batch's
                    // phase 1 does not wait for it.
                    let deadline =
                        tokio::time::Instant::now() + crate::active_first::FOREGROUND_GATE;
                    let _ = self
                        .phase2
                        .send(Phase2 {
                            gate,
                            deadline,
                            items: later,
                        })
                        .await;
                }
            }
            Err(e) => {
                hub.metrics.flush_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, n = batch.len(), "flush failed; refusing the batch");
                // Every message of the batch was appended before the flush failed: some or
                // all of it may be on disk (and be found by a resend's dedupe), so "not
                // stored" would be a lie the client could act on.
                let err = RequestError::new(
                    ErrorCode::OutcomeUnknown,
                    "storage failed before the message was durable; it may be stored: resend \
                     with the same client_msg_id",
                )
                .with_retry_after(1_000);
                for c in batch.drain(..) {
                    let frame = wire::encode_server(&ServerFrame::Error(err.frame(c.request_id)));
                    c.reply.send(frame);
                }
            }
        }
    }
}

impl Hub {
    /// Advances the durable head to `seq` without a live frame; subscribers catch up.
    fn reveal(&self, g: &GroupState, seq: u64) {
        for s in g.fanout.lock().reveal(seq) {
            s.request_catch_up();
        }
    }

    /// Phase 1 of publishing (see [`Committer::commit`]): makes `seq` visible (advances the
    /// durable head) and queues the frame to the foreground subscribers (all of them in
    /// naive mode), each with a ticket of the batch's `gate`. Returns whether background
    /// subscribers are left for phase 2.
    fn publish_active(
        &self,
        g: &GroupState,
        seq: u64,
        lane: Lane,
        frame: &Bytes,
        published_at: std::time::Instant,
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
        published_at: std::time::Instant,
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
        if n.deferred > 0 {
            self.metrics
                .deliveries_deferred
                .fetch_add(n.deferred, Ordering::Relaxed);
        }
    }

    /// Whether background sessions of `g` get nudges instead of its messages now: the group
    /// is large (`nudge_background_from_members`) or the tenant sheds background delivery
    /// at the current load level.
    fn defers_background(&self, g: &GroupState) -> bool {
        router::defers_background(
            g.members.load(Ordering::Relaxed),
            self.limits.nudge_background_from_members,
            self.shedding(&g.tenant).background_delivery,
        )
    }

    /// Whether `session`'s deliveries of `g` are deferred right now (see
    /// [`Hub::defers_background`]); catch-up skips such groups until it is foreground.
    pub(crate) fn defers(&self, session: &Session, g: &GroupState) -> bool {
        session.presence() == PresenceState::Background && self.defers_background(g)
    }
}
