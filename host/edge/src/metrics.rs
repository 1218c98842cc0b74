//! The node's counters and gauges, shared by the hub and its workers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use switchboard_core::TenantId;

/// Counters the node exposes. Monotonic unless named as a gauge.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Gauge: open sessions.
    pub sessions: AtomicUsize,
    /// Gauge: QUIC connections (including ones still saying hello), WebTransport ones too.
    pub connections: AtomicUsize,
    /// Gauge: the WebTransport connections among `connections` (browsers; including ones
    /// still in their HTTP/3 setup or hello).
    pub webtransport_connections: AtomicUsize,
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
    /// Per tenant: its share of the message and delivery counters above (see
    /// [`TenantTraffic`]). One entry per tenant that loaded a group on this node since it
    /// started, so bounded by the tenants in the store.
    tenants: DashMap<TenantId, Arc<TenantTraffic>>,
}

/// One tenant's traffic on this node since it started: the tenant's part of the node-wide
/// counters of the same names. Held by each of the tenant's loaded groups, so counting is one
/// relaxed add per message (never per recipient) with no lookup.
#[derive(Debug, Default)]
pub struct TenantTraffic {
    pub messages_accepted: AtomicU64,
    pub deliveries_live: AtomicU64,
    pub deliveries_catch_up: AtomicU64,
    pub deliveries_deferred: AtomicU64,
}

/// A snapshot of one tenant's [`TenantTraffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantTrafficSnapshot {
    pub messages_accepted: u64,
    pub deliveries_live: u64,
    pub deliveries_catch_up: u64,
    pub deliveries_deferred: u64,
}

impl TenantTraffic {
    pub fn snapshot(&self) -> TenantTrafficSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TenantTrafficSnapshot {
            messages_accepted: l(&self.messages_accepted),
            deliveries_live: l(&self.deliveries_live),
            deliveries_catch_up: l(&self.deliveries_catch_up),
            deliveries_deferred: l(&self.deliveries_deferred),
        }
    }
}

/// A snapshot of [`Metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub sessions: usize,
    pub connections: usize,
    pub webtransport_connections: usize,
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
    /// `tenant`'s traffic counters, created on first use.
    pub(crate) fn tenant(&self, tenant: &TenantId) -> Arc<TenantTraffic> {
        if let Some(t) = self.tenants.get(tenant) {
            return t.clone();
        }
        self.tenants.entry(tenant.clone()).or_default().clone()
    }

    /// `tenant`'s traffic so far (zeros if it had none on this node).
    pub fn tenant_traffic(&self, tenant: &TenantId) -> TenantTrafficSnapshot {
        self.tenants
            .get(tenant)
            .map(|t| t.snapshot())
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            sessions: self.sessions.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            webtransport_connections: self.webtransport_connections.load(Ordering::Relaxed),
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
