//! The node's counters and gauges, shared by the hub and its workers.
//!
//! Each series is one line of `node_series!` below: its kind, field name and help. That line
//! makes the atomic in [`Metrics`] (what the hub and its workers add to), the field of
//! [`MetricsSnapshot`] (what tests and the bench read) and the entry of
//! [`MetricsSnapshot::series`] (what `/metrics` and `GET /v1/node` export), so a new counter
//! cannot be counted and left unexported.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use switchboard_core::TenantId;

/// Whether a series is a gauge (goes up and down) or a counter (only goes up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    Gauge,
    Counter,
}

/// One of the node's series as exported: the name without the `switchboard_` prefix (and,
/// for a counter, without `_total`: the exporter adds it), its kind, value and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub name: &'static str,
    pub kind: SeriesKind,
    pub value: u64,
    pub help: &'static str,
}

/// The atomic a series of this kind counts in, its snapshot's type, that as a `u64`, and
/// its [`SeriesKind`].
macro_rules! atomic_of {
    (gauge) => {
        AtomicUsize
    };
    (counter) => {
        AtomicU64
    };
}
macro_rules! value_of {
    (gauge) => {
        usize
    };
    (counter) => {
        u64
    };
}
macro_rules! as_u64 {
    (gauge, $value:expr) => {
        $value as u64
    };
    (counter, $value:expr) => {
        $value
    };
}
macro_rules! kind_of {
    (gauge) => {
        SeriesKind::Gauge
    };
    (counter) => {
        SeriesKind::Counter
    };
}

/// Declares [`Metrics`] (the series' atomics, then `extra` fields as written),
/// [`MetricsSnapshot`] and [`MetricsSnapshot::series`] from one list of series:
/// `kind name => "help";`, with the field's doc comments before it.
macro_rules! node_series {
    (
        series { $( $(#[$doc:meta])* $kind:ident $name:ident => $help:literal; )* }
        extra { $( $(#[$xdoc:meta])* $xvis:vis $xname:ident: $xty:ty, )* }
    ) => {
        /// Counters the node exposes. Monotonic unless named as a gauge.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[$doc])* pub $name: atomic_of!($kind), )*
            $( $(#[$xdoc])* $xvis $xname: $xty, )*
        }

        /// A snapshot of [`Metrics`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $( pub $name: value_of!($kind), )*
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                }
            }
        }

        impl MetricsSnapshot {
            /// Every series, in the order `/metrics` lists them.
            pub fn series(&self) -> Vec<Series> {
                vec![$(
                    Series {
                        name: stringify!($name),
                        kind: kind_of!($kind),
                        value: as_u64!($kind, self.$name),
                        help: $help,
                    },
                )*]
            }
        }
    };
}

node_series! {
series {
    /// Gauge: open sessions.
    gauge sessions => "Open sessions.";
    /// Gauge: QUIC connections (including ones still saying hello), WebTransport ones too.
    gauge connections =>
        "QUIC connections, including ones still saying hello (WebTransport ones too).";
    /// Gauge: the WebTransport connections among `connections` (browsers; including ones
    /// still in their HTTP/3 setup or hello).
    gauge webtransport_connections =>
        "WebTransport connections (browsers), including ones still in HTTP/3 setup or hello.";
    counter connections_refused => "Connections refused (limits, shutdown).";
    counter messages_accepted => "Messages made durable and acknowledged.";
    counter duplicates => "Resends recognised by their client message id.";
    /// Deliver frames queued live to sessions.
    counter deliveries_live => "Deliver frames queued live to sessions.";
    /// Deliver frames sent from the log (catch-up, gap fill).
    counter deliveries_catch_up => "Deliver frames sent from the log (catch-up, gap fill).";
    /// Times a session's outbox was full and it switched to catching up from the log.
    counter outbox_overflows =>
        "Times a session's outbox was full and it switched to catching up from the log.";
    /// Deliveries not sent live to a background session (large group or shed under load):
    /// it gets them on returning to the foreground, or fetches them.
    counter deliveries_deferred =>
        "Deliveries not sent live to a background session (large group or shed under load).";
    /// `Nudge` frames written (at most one per deferred group and connection a second).
    counter nudges =>
        "Nudge frames sent for deferred groups (at most one per group and connection a second).";
    /// Best-effort notices (receipts, presence) dropped because a session's queue was full.
    counter notices_dropped =>
        "Receipt and presence notices dropped because a session's queue was full.";
    /// Times the measured load level changed (`load.rs`).
    counter load_level_changes =>
        "Times the measured load level changed (up at once, down after 2 s calm).";
    /// Sends refused because the data disk was under `min_free_disk_bytes`.
    counter disk_full_refusals =>
        "Sends refused because the data disk was under min_free_disk_bytes free.";
    counter flushes => "Store flushes by the committer.";
    counter flush_failures => "Store flushes that failed.";
    counter auth_failures => "Hellos refused for their token.";
    counter protocol_errors => "Connections closed for a protocol violation.";
    /// Messages a tenant policy refused.
    counter policy_rejections => "Messages a tenant policy refused.";
    /// Policy calls answered by the built-in default because the plugin failed.
    counter policy_fallbacks =>
        "Policy calls answered by the built-in default because the plugin failed.";
    /// Policy calls skipped (built-in default used) because the tenant's breaker was open.
    counter policy_breaker_skips =>
        "Policy calls skipped because the tenant's circuit breaker was open.";
    /// Messages whose policy asked for offline members to be notified.
    counter notify_offline_requests =>
        "Messages whose policy asked for offline members to be notified.";
    /// Push-notification events handed to the sink (one per offline member and message).
    counter notifications =>
        "Push-notification events for offline members handed to the notification sink.";
    /// Messages whose notifications were dropped because the notification queue was full.
    counter notifications_dropped =>
        "Messages whose offline notifications were dropped (notification queue full).";
    counter receipts_forwarded => "Receipts forwarded to senders.";
    counter receipts_aggregated => "Receipts folded into aggregates.";
    counter receipts_dropped => "Receipts a policy dropped.";
    /// Receipts and presence changes shed under load.
    counter receipts_shed =>
        "Receipts shed under load (degradation level or a full receipt queue).";
    /// `ReceiptSummary` frames sent (aggregated receipts, one per message per worker batch).
    counter receipt_summaries => "ReceiptSummary frames sent for aggregated receipts.";
    /// Receipts the worker could not store (store error); the batch is lost, not retried.
    counter receipts_failed => "Receipts the receipt worker could not store.";
    counter presence_shed => "Presence changes shed under load.";
    /// Requests refused with `RateLimited`, by what was limited (nothing of them was done).
    counter rate_limited_messages =>
        "Sends refused with RateLimited (user or tenant message limit); not stored.";
    counter rate_limited_receipts => "Receipts refused with RateLimited (user receipt limit).";
    /// `Join`s and `Leave`s.
    counter rate_limited_joins => "Joins and leaves refused with RateLimited (user join limit).";
    /// `Hello`s refused for the tenant's connection limits.
    counter rate_limited_connections =>
        "Hellos refused with RateLimited (tenant connection cap or rate).";
    /// Notifications the sink could not deliver (e.g. the webhook failed); not retried.
    counter notifications_failed =>
        "Push notifications the sink could not deliver (webhook errors); not retried.";
    /// `Presence` changes not told to co-members (recorded for delivery planning).
    counter rate_limited_presence =>
        "Presence changes over the user's limit (kept, but co-members not told).";
    /// Gauge: connection attempts in their QUIC/TLS handshake.
    gauge handshakes => "Connection attempts in their QUIC/TLS handshake.";
    /// Connection attempts sent a QUIC `Retry` to prove their address (many handshakes
    /// were in flight).
    counter handshake_retries =>
        "Connection attempts asked to prove their address with a QUIC Retry.";
    /// Connection attempts refused because `max_handshakes` were in flight.
    counter handshakes_refused =>
        "Connection attempts refused because max_handshakes were in flight.";
    /// Handshakes abandoned because they did not complete within `hello_timeout_ms`.
    counter handshake_timeouts => "Handshakes abandoned after hello_timeout_ms.";
    /// Connections closed with `SlowConsumer` (`disconnect_slow_consumers`).
    counter slow_consumers_disconnected =>
        "Connections closed with SlowConsumer (disconnect_slow_consumers).";
    /// Batches whose background phase started at its deadline, before every foreground copy
    /// was handed to QUIC (a foreground session not reading; `active_first.rs`).
    counter foreground_gate_timeouts =>
        "Batches whose background phase started at its deadline, before every foreground copy was \
         written.";
}
extra {
    /// Publish (durable) → handed to QUIC, per live delivery, by the session's presence.
    pub latency_active: crate::histogram::Histogram,
    pub latency_background: crate::histogram::Histogram,
    /// Per tenant: its share of the message and delivery counters above (see
    /// [`TenantTraffic`]). One entry per tenant that loaded a group on this node since it
    /// started, so bounded by the tenants in the store.
    tenants: DashMap<TenantId, Arc<TenantTraffic>>,
}
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
}
