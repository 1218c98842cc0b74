//! `GET /metrics`: the hub's counters, the load level and per-tenant policy health in the
//! Prometheus text format (0.0.4).

use std::fmt::Write as _;

use switchboard_edge::MetricsSnapshot;

use crate::control::observe::{node_series, SeriesKind};

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
    let build = crate::control::observe::build_info();
    family(
        &mut out,
        "switchboard_build_info",
        Kind::Gauge,
        "Always 1; the labels say what the node runs.",
    );
    let _ = writeln!(
        out,
        "switchboard_build_info{{version=\"{}\",commit=\"{}\",profile=\"{}\"}} 1",
        label(&build.version),
        label(&build.commit),
        label(&build.profile)
    );
    family(
        &mut out,
        "switchboard_uptime_seconds",
        Kind::Gauge,
        "Seconds since the node started.",
    );
    let _ = writeln!(out, "switchboard_uptime_seconds {}", control.uptime_s());
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
    tenant_series(&mut out, control)?;
    Ok(out)
}

/// Per tenant with traffic on this node (bounded by the tenants in the store): its share of
/// the message and delivery counters.
fn tenant_series(out: &mut String, control: &Control) -> Result<(), ControlError> {
    let mut rows = Vec::new();
    for t in control.store.tenants()? {
        let traffic = control.hub().tenant_traffic(&t.id);
        if traffic != Default::default() {
            rows.push((t.id, traffic));
        }
    }
    let name = "switchboard_tenant_messages_accepted_total";
    family(
        out,
        name,
        Kind::Counter,
        "Messages made durable and acknowledged, per tenant.",
    );
    for (tenant, t) in &rows {
        let _ = writeln!(
            out,
            "{name}{{tenant=\"{}\"}} {}",
            label(tenant.as_str()),
            t.messages_accepted
        );
    }
    let name = "switchboard_tenant_deliveries_total";
    family(
        out,
        name,
        Kind::Counter,
        "Deliveries per tenant, by kind: live (queued to a session), catch_up (from the log), \
         deferred (a nudge instead, to a background session).",
    );
    for (tenant, t) in &rows {
        for (kind, n) in [
            ("live", t.deliveries_live),
            ("catch_up", t.deliveries_catch_up),
            ("deferred", t.deliveries_deferred),
        ] {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",kind=\"{kind}\"}} {n}",
                label(tenant.as_str())
            );
        }
    }
    Ok(())
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
    for (name, kind, value, help) in node_series(m) {
        let kind = match kind {
            SeriesKind::Gauge => Kind::Gauge,
            SeriesKind::Counter => Kind::Counter,
        };
        // OpenMetrics names a counter `<name>_total`; `/v1/node` keeps the bare names.
        let name = match kind {
            Kind::Counter => format!("switchboard_{name}_total"),
            _ => format!("switchboard_{name}"),
        };
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
    // The plugins' own counters: at most `max_counters_per_tenant` names per serving
    // version, two versions per tenant.
    let name = "switchboard_plugin_counter_total";
    family(
        out,
        name,
        Kind::Counter,
        "A tenant's plugin counters (host.counter-add), per serving version, by counter name.",
    );
    for (tenant, role, health) in &serving {
        for (counter, value) in &health.counters {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",version=\"{}\",role=\"{role}\",counter=\"{}\"}} {value}",
                label(tenant),
                label(&health.version),
                label(counter)
            );
        }
    }
    Ok(())
}
