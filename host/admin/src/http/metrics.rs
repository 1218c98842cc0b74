//! `GET /metrics`: the hub's counters, the load level and per-tenant policy health in the
//! Prometheus text format (0.0.4).

use std::fmt::Write as _;

use switchboard_edge::MetricsSnapshot;

use crate::control::types::VersionHealth;
use crate::{Control, ControlError};

pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
}

/// A label value, escaped as the text format wants (`\`, `"` and newlines).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) fn render(control: &Control) -> Result<String, ControlError> {
    let mut out = String::new();
    hub_series(&mut out, control.hub().metrics().snapshot());
    family(
        &mut out,
        "switchboard_load_level",
        Kind::Gauge,
        "The node's load level: 0 normal, 1 elevated, 2 high, 3 critical (forced or measured).",
    );
    let _ = writeln!(out, "switchboard_load_level {}", control.hub().load_level());
    family(
        &mut out,
        "switchboard_push_queue_depth",
        Kind::Gauge,
        "Pushes queued for sessions now, by push stream (high, normal, low, notices).",
    );
    family(
        &mut out,
        "switchboard_push_queue_bytes",
        Kind::Gauge,
        "Bytes of pushes queued for sessions now (each bounded by outbox_bytes).",
    );
    let _ = writeln!(
        out,
        "switchboard_push_queue_bytes {}",
        control.hub().queued_bytes()
    );
    latency_series(&mut out, control.hub().metrics());
    for (stream, depth) in control.hub().queue_depths() {
        let _ = writeln!(
            out,
            "switchboard_push_queue_depth{{stream=\"{}\"}} {depth}",
            stream.name()
        );
    }
    family(
        &mut out,
        "switchboard_policy_auto_rollbacks_total",
        Kind::Counter,
        "Policy versions this node took out of service by itself (failure rate over threshold).",
    );
    let _ = writeln!(
        out,
        "switchboard_policy_auto_rollbacks_total {}",
        control.auto_rollbacks()
    );
    policy_series(&mut out, control)?;
    Ok(out)
}

/// Delivery latency (publish → handed to QUIC) by the receiving session's presence.
fn latency_series(out: &mut String, m: &switchboard_edge::Metrics) {
    let name = "switchboard_delivery_latency_seconds";
    family(
        out,
        name,
        Kind::Histogram,
        "Live delivery latency from publish (durable) to the push stream, by presence class.",
    );
    for (class, h) in [
        ("active", &m.latency_active),
        ("background", &m.latency_background),
    ] {
        let s = h.snapshot();
        for (le_us, count) in &s.cumulative {
            let _ = writeln!(
                out,
                "{name}_bucket{{class=\"{class}\",le=\"{}\"}} {count}",
                *le_us as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{class=\"{class}\",le=\"+Inf\"}} {}",
            s.count
        );
        let _ = writeln!(
            out,
            "{name}_sum{{class=\"{class}\"}} {}",
            s.sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{class=\"{class}\"}} {}", s.count);
    }
}

fn hub_series(out: &mut String, m: MetricsSnapshot) {
    use Kind::{Counter, Gauge};
    // Destructured without `..`: a field added to the snapshot does not compile until it is
    // exported here.
    let MetricsSnapshot {
        sessions,
        connections,
        connections_refused,
        messages_accepted,
        duplicates,
        deliveries_live,
        deliveries_catch_up,
        outbox_overflows,
        deliveries_deferred,
        nudges,
        notices_dropped,
        load_level_changes,
        disk_full_refusals,
        flushes,
        flush_failures,
        auth_failures,
        protocol_errors,
        policy_rejections,
        policy_fallbacks,
        policy_breaker_skips,
        notify_offline_requests,
        notifications,
        notifications_dropped,
        notifications_failed,
        receipts_forwarded,
        receipts_aggregated,
        receipts_dropped,
        receipts_shed,
        presence_shed,
        receipt_summaries,
        receipts_failed,
        rate_limited_messages,
        rate_limited_receipts,
        rate_limited_joins,
        rate_limited_connections,
        rate_limited_presence,
        handshakes,
        handshake_retries,
        handshakes_refused,
        handshake_timeouts,
        slow_consumers_disconnected,
        foreground_gate_timeouts,
        webtransport_connections,
    } = m;
    let series: &[(&str, Kind, u64, &str)] = &[
        ("sessions", Gauge, sessions as u64, "Open sessions."),
        (
            "connections",
            Gauge,
            connections as u64,
            "QUIC connections, including ones still saying hello (WebTransport ones too).",
        ),
        (
            "webtransport_connections",
            Gauge,
            webtransport_connections as u64,
            "WebTransport connections (browsers), including ones still in HTTP/3 setup or hello.",
        ),
        (
            "connections_refused",
            Counter,
            connections_refused,
            "Connections refused (limits, shutdown).",
        ),
        (
            "messages_accepted",
            Counter,
            messages_accepted,
            "Messages made durable and acknowledged.",
        ),
        (
            "duplicates",
            Counter,
            duplicates,
            "Resends recognised by their client message id.",
        ),
        (
            "deliveries_live",
            Counter,
            deliveries_live,
            "Deliver frames queued live to sessions.",
        ),
        (
            "deliveries_catch_up",
            Counter,
            deliveries_catch_up,
            "Deliver frames sent from the log (catch-up, gap fill).",
        ),
        (
            "outbox_overflows",
            Counter,
            outbox_overflows,
            "Times a session's outbox was full and it switched to catching up from the log.",
        ),
        (
            "deliveries_deferred",
            Counter,
            deliveries_deferred,
            "Deliveries not sent live to a background session (large group or shed under load).",
        ),
        (
            "nudges",
            Counter,
            nudges,
            "Nudge frames sent for deferred groups (at most one per group and connection a second).",
        ),
        (
            "notices_dropped",
            Counter,
            notices_dropped,
            "Receipt and presence notices dropped because a session's queue was full.",
        ),
        (
            "load_level_changes",
            Counter,
            load_level_changes,
            "Times the measured load level changed (up at once, down after 2 s calm).",
        ),
        (
            "disk_full_refusals",
            Counter,
            disk_full_refusals,
            "Sends refused because the data disk was under min_free_disk_bytes free.",
        ),
        (
            "flushes",
            Counter,
            flushes,
            "Store flushes by the committer.",
        ),
        (
            "flush_failures",
            Counter,
            flush_failures,
            "Store flushes that failed.",
        ),
        (
            "auth_failures",
            Counter,
            auth_failures,
            "Hellos refused for their token.",
        ),
        (
            "protocol_errors",
            Counter,
            protocol_errors,
            "Connections closed for a protocol violation.",
        ),
        (
            "policy_rejections",
            Counter,
            policy_rejections,
            "Messages a tenant policy refused.",
        ),
        (
            "policy_fallbacks",
            Counter,
            policy_fallbacks,
            "Policy calls answered by the built-in default because the plugin failed.",
        ),
        (
            "policy_breaker_skips",
            Counter,
            policy_breaker_skips,
            "Policy calls skipped because the tenant's circuit breaker was open.",
        ),
        (
            "notify_offline_requests",
            Counter,
            notify_offline_requests,
            "Messages whose policy asked for offline members to be notified.",
        ),
        (
            "notifications",
            Counter,
            notifications,
            "Push-notification events for offline members handed to the notification sink.",
        ),
        (
            "notifications_dropped",
            Counter,
            notifications_dropped,
            "Messages whose offline notifications were dropped (notification queue full).",
        ),
        (
            "receipts_forwarded",
            Counter,
            receipts_forwarded,
            "Receipts forwarded to senders.",
        ),
        (
            "receipts_aggregated",
            Counter,
            receipts_aggregated,
            "Receipts folded into aggregates.",
        ),
        (
            "receipts_dropped",
            Counter,
            receipts_dropped,
            "Receipts a policy dropped.",
        ),
        (
            "receipts_shed",
            Counter,
            receipts_shed,
            "Receipts shed under load (degradation level or a full receipt queue).",
        ),
        (
            "receipt_summaries",
            Counter,
            receipt_summaries,
            "ReceiptSummary frames sent for aggregated receipts.",
        ),
        (
            "receipts_failed",
            Counter,
            receipts_failed,
            "Receipts the receipt worker could not store.",
        ),
        (
            "presence_shed",
            Counter,
            presence_shed,
            "Presence changes shed under load.",
        ),
        (
            "rate_limited_messages",
            Counter,
            rate_limited_messages,
            "Sends refused with RateLimited (user or tenant message limit); not stored.",
        ),
        (
            "rate_limited_receipts",
            Counter,
            rate_limited_receipts,
            "Receipts refused with RateLimited (user receipt limit).",
        ),
        (
            "rate_limited_joins",
            Counter,
            rate_limited_joins,
            "Joins and leaves refused with RateLimited (user join limit).",
        ),
        (
            "rate_limited_connections",
            Counter,
            rate_limited_connections,
            "Hellos refused with RateLimited (tenant connection cap or rate).",
        ),
        (
            "notifications_failed",
            Counter,
            notifications_failed,
            "Push notifications the sink could not deliver (webhook errors); not retried.",
        ),
        (
            "rate_limited_presence",
            Counter,
            rate_limited_presence,
            "Presence changes over the user's limit (kept, but co-members not told).",
        ),
        (
            "handshakes",
            Gauge,
            handshakes as u64,
            "Connection attempts in their QUIC/TLS handshake.",
        ),
        (
            "handshake_retries",
            Counter,
            handshake_retries,
            "Connection attempts asked to prove their address with a QUIC Retry.",
        ),
        (
            "handshakes_refused",
            Counter,
            handshakes_refused,
            "Connection attempts refused because max_handshakes were in flight.",
        ),
        (
            "handshake_timeouts",
            Counter,
            handshake_timeouts,
            "Handshakes abandoned after hello_timeout_ms.",
        ),
        (
            "slow_consumers_disconnected",
            Counter,
            slow_consumers_disconnected,
            "Connections closed with SlowConsumer (disconnect_slow_consumers).",
        ),
        (
            "foreground_gate_timeouts",
            Counter,
            foreground_gate_timeouts,
            "Batches whose background phase started at its deadline, before every foreground copy was written.",
        ),
    ];
    for &(name, kind, value, help) in series {
        let name = format!("switchboard_{name}");
        family(out, &name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// Per tenant and serving version (role `active` or `canary`), since it was bound on this
/// node: what the automatic rollback watches.
fn policy_series(out: &mut String, control: &Control) -> Result<(), ControlError> {
    type Field = fn(&VersionHealth) -> u64;
    let families: &[(&str, &str, Field)] = &[
        (
            "switchboard_policy_handled_total",
            "Events (messages, receipts) routed to a tenant's plugin version.",
            |h| h.handled,
        ),
        (
            "switchboard_policy_failed_total",
            "Of those, answered by the built-in default (plugin failed or breaker open).",
            |h| h.failed,
        ),
        (
            "switchboard_policy_calls_total",
            "Plugin hook calls.",
            |h| h.calls,
        ),
        (
            "switchboard_policy_traps_total",
            "Plugin calls that trapped.",
            |h| h.traps,
        ),
        (
            "switchboard_policy_out_of_fuel_total",
            "Plugin calls that ran out of fuel.",
            |h| h.out_of_fuel,
        ),
        (
            "switchboard_policy_deadline_total",
            "Plugin calls interrupted at their deadline.",
            |h| h.deadline,
        ),
        (
            "switchboard_policy_invalid_output_total",
            "Plugin calls whose result was refused as invalid.",
            |h| h.invalid_output,
        ),
    ];
    let mut serving = Vec::new();
    for tenant in control.tenants()? {
        let status = control.policy_status(&tenant.id)?;
        if let Some(a) = status.active {
            serving.push((tenant.id.clone(), "active", a));
        }
        if let Some(c) = status.canary {
            serving.push((tenant.id.clone(), "canary", c.health));
        }
    }
    for &(name, help, field) in families {
        family(out, name, Kind::Counter, help);
        for (tenant, role, health) in &serving {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",version=\"{}\",role=\"{role}\"}} {}",
                label(tenant),
                label(&health.version),
                field(health)
            );
        }
    }
    Ok(())
}
