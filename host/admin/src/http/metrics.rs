//! `GET /metrics`: the hub's counters, the load level and per-tenant policy health in the
//! Prometheus text format (0.0.4), written by `prometheus-client`.
//!
//! A scrape first reads everything it shows into a [`Scrape`] (reading can fail: the store),
//! then hands that to a `prometheus_client` [`Registry`] as its one [`Collector`], whose
//! encoder writes the text: the `switchboard_` prefix, every counter's `_total`, `# HELP` and
//! `# TYPE`, label escaping and the histogram's buckets are the library's, not ours. A new
//! node counter is one line of `node_series!` (`switchboard_edge::metrics`); a new family
//! here is one more [`Family`] in [`Scrape::read`].

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use switchboard_edge::histogram::HistogramSnapshot;
use switchboard_edge::metrics::SeriesKind;

use crate::control::types::VersionHealth;
use crate::{Control, ControlError};

pub(super) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every series' name starts with it.
const PREFIX: &str = "switchboard";

/// A series' labels, in the order they are written.
type Labels = Vec<(&'static str, String)>;

/// One metric family as the scrape found it. `name` is without the prefix and, for a
/// counter, without `_total` (the encoder adds both).
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: SeriesKind,
    samples: Vec<(Labels, u64)>,
}

impl Family {
    fn new(name: &'static str, kind: SeriesKind, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// A family of one series without labels.
    fn one(name: &'static str, kind: SeriesKind, help: &'static str, value: u64) -> Self {
        Family::new(name, kind, help).with(Vec::new(), value)
    }

    fn with(mut self, labels: Labels, value: u64) -> Self {
        self.samples.push((labels, value));
        self
    }
}

/// Everything one scrape shows, in the order it is written.
#[derive(Debug)]
struct Scrape {
    build: Labels,
    /// Families before the latency histogram, and after it.
    before: Vec<Family>,
    /// Live delivery latency by the receiving session's presence class.
    latency: Vec<(&'static str, HistogramSnapshot)>,
    after: Vec<Family>,
}

pub(super) fn render(control: &Control) -> Result<String, ControlError> {
    encode(Scrape::read(control)?)
        .map_err(|_| ControlError::Internal("could not encode the metrics".into()))
}

fn encode(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

impl Scrape {
    fn read(control: &Control) -> Result<Scrape, ControlError> {
        use SeriesKind::{Counter, Gauge};
        let build = crate::control::observe::build_info();
        let hub = control.hub();
        let mut before = vec![Family::one(
            "uptime_seconds",
            Gauge,
            "Seconds since the node started.",
            control.uptime_s(),
        )];
        before.extend(
            hub.metrics()
                .snapshot()
                .series()
                .into_iter()
                .map(|s| Family::one(s.name, s.kind, s.help, s.value)),
        );
        before.push(Family::one(
            "load_level",
            Gauge,
            "The node's load level: 0 normal, 1 elevated, 2 high, 3 critical (forced or measured).",
            u64::from(hub.load_level()),
        ));
        let mut depth = Family::new(
            "push_queue_depth",
            Gauge,
            "Pushes queued for sessions now, by push stream (high, normal, low, notices).",
        );
        for (stream, n) in hub.queue_depths() {
            depth = depth.with(vec![("stream", stream.name().to_owned())], n as u64);
        }
        before.push(depth);
        before.push(Family::one(
            "push_queue_bytes",
            Gauge,
            "Bytes of pushes queued for sessions now (each bounded by outbox_bytes).",
            hub.queued_bytes() as u64,
        ));
        let m = hub.metrics();
        let latency = vec![
            ("active", m.latency_active.snapshot()),
            ("background", m.latency_background.snapshot()),
        ];
        let mut after = vec![Family::one(
            "policy_auto_rollbacks",
            Counter,
            "Policy versions this node took out of service by itself (failure rate over threshold).",
            control.auto_rollbacks(),
        )];
        after.extend(policy_families(control)?);
        after.extend(tenant_families(control)?);
        Ok(Scrape {
            build: vec![
                ("version", build.version),
                ("commit", build.commit),
                ("profile", build.profile),
            ],
            before,
            latency,
            after,
        })
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let build = Info::new(self.build.clone());
        build.encode(encoder.encode_descriptor(
            "build",
            "Always 1; the labels say what the node runs.",
            None,
            build.metric_type(),
        )?)?;
        for family in &self.before {
            encode_family(&mut encoder, family)?;
        }
        let mut latency = encoder.encode_descriptor(
            "delivery_latency_seconds",
            "Live delivery latency from publish (durable) to the push stream, by presence class.",
            None,
            MetricType::Histogram,
        )?;
        for (class, h) in &self.latency {
            // The snapshot's counts are cumulative; the encoder wants each bucket's own.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = h
                .cumulative
                .iter()
                .map(|&(le_us, cumulative)| {
                    let own = cumulative - below;
                    below = cumulative;
                    (le_us as f64 / 1e6, own)
                })
                .collect();
            let labels = [("class", *class)];
            latency
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count, &buckets, None)?;
        }
        for family in &self.after {
            encode_family(&mut encoder, family)?;
        }
        Ok(())
    }
}

fn encode_family(encoder: &mut DescriptorEncoder, family: &Family) -> Result<(), std::fmt::Error> {
    let kind = match family.kind {
        SeriesKind::Gauge => MetricType::Gauge,
        SeriesKind::Counter => MetricType::Counter,
    };
    let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
    for (labels, value) in &family.samples {
        let series = metric.encode_family(labels)?;
        match family.kind {
            SeriesKind::Gauge => ConstGauge::new(*value).encode(series)?,
            SeriesKind::Counter => ConstCounter::new(*value).encode(series)?,
        }
    }
    Ok(())
}

/// Per tenant with traffic on this node (bounded by the tenants in the store): its share of
/// the message and delivery counters.
fn tenant_families(control: &Control) -> Result<[Family; 2], ControlError> {
    let mut accepted = Family::new(
        "tenant_messages_accepted",
        SeriesKind::Counter,
        "Messages made durable and acknowledged, per tenant.",
    );
    let mut deliveries = Family::new(
        "tenant_deliveries",
        SeriesKind::Counter,
        "Deliveries per tenant, by kind: live (queued to a session), catch_up (from the log), \
         deferred (a nudge instead, to a background session).",
    );
    for t in control.store.tenants()? {
        let traffic = control.hub().tenant_traffic(&t.id);
        if traffic == Default::default() {
            continue;
        }
        let tenant = t.id.as_str();
        accepted = accepted.with(
            vec![("tenant", tenant.to_owned())],
            traffic.messages_accepted,
        );
        for (kind, n) in [
            ("live", traffic.deliveries_live),
            ("catch_up", traffic.deliveries_catch_up),
            ("deferred", traffic.deliveries_deferred),
        ] {
            deliveries = deliveries.with(
                vec![("tenant", tenant.to_owned()), ("kind", kind.to_owned())],
                n,
            );
        }
    }
    Ok([accepted, deliveries])
}

/// Per tenant and serving version (role `active` or `canary`), since it was bound on this
/// node: what the automatic rollback watches; then the plugins' own counters.
fn policy_families(control: &Control) -> Result<Vec<Family>, ControlError> {
    type Field = fn(&VersionHealth) -> u64;
    let fields: [(&'static str, &'static str, Field); 7] = [
        (
            "policy_handled",
            "Events (messages, receipts) routed to a tenant's plugin version.",
            |h| h.handled,
        ),
        (
            "policy_failed",
            "Of those, answered by the built-in default (plugin failed or breaker open).",
            |h| h.failed,
        ),
        ("policy_calls", "Plugin hook calls.", |h| h.calls),
        ("policy_traps", "Plugin calls that trapped.", |h| h.traps),
        (
            "policy_out_of_fuel",
            "Plugin calls that ran out of fuel.",
            |h| h.out_of_fuel,
        ),
        (
            "policy_deadline",
            "Plugin calls interrupted at their deadline.",
            |h| h.deadline,
        ),
        (
            "policy_invalid_output",
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
    let labels = |tenant: &str, role: &str, health: &VersionHealth| -> Labels {
        vec![
            ("tenant", tenant.to_owned()),
            ("version", health.version.clone()),
            ("role", role.to_owned()),
        ]
    };
    let mut families: Vec<Family> = fields
        .iter()
        .map(|&(name, help, field)| {
            serving.iter().fold(
                Family::new(name, SeriesKind::Counter, help),
                |family, (tenant, role, health)| {
                    family.with(labels(tenant, role, health), field(health))
                },
            )
        })
        .collect();
    // The plugins' own counters: at most `max_counters_per_tenant` names per serving
    // version, two versions per tenant.
    let mut plugin = Family::new(
        "plugin_counter",
        SeriesKind::Counter,
        "A tenant's plugin counters (host.counter-add), per serving version, by counter name.",
    );
    for (tenant, role, health) in &serving {
        for (counter, value) in &health.counters {
            let mut l = labels(tenant, role, health);
            l.push(("counter", counter.clone()));
            plugin = plugin.with(l, *value);
        }
    }
    families.push(plugin);
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoder_writes_names_types_labels_and_buckets_as_the_text_format_wants() {
        use SeriesKind::{Counter, Gauge};
        let scrape = Scrape {
            build: vec![("version", "1.2.3".into()), ("commit", "c\"1".into())],
            before: vec![
                Family::one("sessions", Gauge, "Open sessions.", 2),
                Family::new("push_queue_depth", Gauge, "Pushes queued.")
                    .with(vec![("stream", "high".into())], 1)
                    .with(vec![("stream", "low".into())], 0),
            ],
            latency: vec![(
                "active",
                HistogramSnapshot {
                    cumulative: vec![(100, 1), (250, 3)],
                    count: 4,
                    sum_us: 1_500,
                },
            )],
            after: vec![
                Family::new("policy_handled", Counter, "Events."),
                Family::one("flushes", Counter, "Store flushes.", 7),
            ],
        };
        let text = encode(scrape).unwrap();
        assert_eq!(
            text,
            "# HELP switchboard_build_info Always 1; the labels say what the node runs.\n\
             # TYPE switchboard_build_info gauge\n\
             switchboard_build_info{version=\"1.2.3\",commit=\"c\\\"1\"} 1\n\
             # HELP switchboard_sessions Open sessions.\n\
             # TYPE switchboard_sessions gauge\n\
             switchboard_sessions 2\n\
             # HELP switchboard_push_queue_depth Pushes queued.\n\
             # TYPE switchboard_push_queue_depth gauge\n\
             switchboard_push_queue_depth{stream=\"high\"} 1\n\
             switchboard_push_queue_depth{stream=\"low\"} 0\n\
             # HELP switchboard_delivery_latency_seconds Live delivery latency from publish \
             (durable) to the push stream, by presence class.\n\
             # TYPE switchboard_delivery_latency_seconds histogram\n\
             switchboard_delivery_latency_seconds_bucket{class=\"active\",le=\"0.0001\"} 1\n\
             switchboard_delivery_latency_seconds_bucket{class=\"active\",le=\"0.00025\"} 3\n\
             switchboard_delivery_latency_seconds_bucket{class=\"active\",le=\"+Inf\"} 4\n\
             switchboard_delivery_latency_seconds_sum{class=\"active\"} 0.0015\n\
             switchboard_delivery_latency_seconds_count{class=\"active\"} 4\n\
             # HELP switchboard_policy_handled_total Events.\n\
             # TYPE switchboard_policy_handled_total counter\n\
             # HELP switchboard_flushes_total Store flushes.\n\
             # TYPE switchboard_flushes_total counter\n\
             switchboard_flushes_total 7\n"
        );
    }
}
