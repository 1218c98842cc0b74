//! One tenant's heavy plugin must not raise another tenant's latency by more than a
//! documented margin (issue 7; `docs/reliability.md`, "Plugin isolation").
//!
//! Eight tenants bind `heavy`, which spends about 80% of its fuel on every message and never
//! fails, so the node neither falls back nor opens their circuit breakers: the worst a
//! well-behaved plugin can do. One tenant (acme) binds `priority`. Over real QUIC, acme's
//! send → delivery latency is measured with the heavy tenants connected but idle, then
//! with each of them keeping 16 messages in flight.
//!
//! The node runs in a runtime of its own with two workers — what `switchboard serve` builds
//! on this 2-vCPU machine — and the clients in another, so a plugin holding one of the
//! node's workers delays the node, not the test's measuring.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use switchboard_core::{GroupId, TenantId, UserId};
use switchboard_policy::{MessageInfo, PolicyLimits, TenantPolicy};
use switchboard_store::{GroupMeta, Store, TenantRecord};
use switchboard_wire::ServerFrame;

const HEAVY_TENANTS: usize = 8;
/// Sends each heavy tenant keeps in flight.
const HEAVY_IN_FLIGHT: u64 = 16;
/// Light messages measured per phase.
const SAMPLES: usize = 300;
/// The bounds on the light tenant's latency under load: the larger of a floor and a factor
/// times the same percentile with the heavy tenants idle. See `docs/reliability.md`.
const LOADED_P50_FLOOR: Duration = Duration::from_millis(30);
const LOADED_P99_FLOOR: Duration = Duration::from_millis(100);
const LOADED_FACTOR: u32 = 20;

/// Tenant `tenant` (tokens signed like acme's), with closed group `general` of `members`.
fn add_tenant(n: &TestNode, tenant: &str, members: &[&str]) {
    let t = TenantId::new(tenant).unwrap();
    n.store
        .put_tenant(&TenantRecord {
            id: t.clone(),
            secret: ACME_SECRET.to_vec(),
        })
        .unwrap();
    let g = GroupId::new("general").unwrap();
    let meta = GroupMeta {
        open: false,
        max_members: 100,
    };
    n.store.create_group(&t, &g, meta).unwrap();
    for m in members {
        n.store
            .add_member(&t, &g, &UserId::new(m).unwrap())
            .unwrap();
    }
    n.store.flush().unwrap();
}

/// `spins` for the heavy plugin so one call uses about `share` of the default fuel budget,
/// measured on this build of the plugin.
fn heavy_spins(share: f64) -> u64 {
    let plugin = policy_engine()
        .load(&std::fs::read(plugins_artifacts::HEAVY).unwrap())
        .unwrap();
    let probe = TenantPolicy::new(
        &plugin,
        "calibration",
        [("spins".into(), "10000".into())].into(),
    );
    let m = MessageInfo {
        group: "g".into(),
        sender: "u".into(),
        body_size: 1,
        body_prefix: b"x".to_vec(),
        group_size: 1,
        connected_members: 1,
    };
    assert!(probe.on_message(&m).fallback_reason().is_none());
    let per_spin = probe.stats().fuel_used_max as f64 / 10_000.0;
    (PolicyLimits::default().fuel_per_call as f64 * share / per_spin) as u64
}

async fn connect(n: &TestNode, tenant: &str, user: &str) -> RawClient {
    let mut c = n.raw().await;
    let w = c.hello(&n.token(tenant, user)).await;
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    c
}

/// Sends as fast as acks come back, `HEAVY_IN_FLIGHT` at a time, until `stop`; counts acks.
async fn load(mut c: RawClient, acked: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    // Its own deliveries are read (and dropped) so the node does not fall back to catch-up.
    c.listen();
    let mut sent = 0u64;
    let mut done = 0u64;
    loop {
        while sent - done < HEAVY_IN_FLIGHT && !stop.load(Ordering::Relaxed) {
            sent += 1;
            c.send(&send(sent, "general", b"heavy")).await;
        }
        if sent == done {
            return;
        }
        match c.read().await {
            Some(ServerFrame::Ack { .. }) => {
                done += 1;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("heavy sender: expected an Ack, got {other:?}"),
        }
    }
}

/// `SAMPLES` messages from alice to bob, one at a time: each one's send → delivery time.
async fn measure(alice: &mut RawClient, bob: &mut RawClient, first_id: u64) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for id in first_id..first_id + SAMPLES as u64 {
        let started = Instant::now();
        alice.send(&send(id, "closed", b"light")).await;
        let m = next_deliver(bob).await;
        samples.push(started.elapsed());
        assert_eq!(&m.body[..], b"light");
        match alice.read().await {
            Some(ServerFrame::Ack { .. }) => {}
            other => panic!("light sender: expected an Ack, got {other:?}"),
        }
    }
    samples.sort();
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        percentile(sorted, 0.50),
        percentile(sorted, 0.99),
        sorted[sorted.len() - 1]
    )
}

#[test]
fn heavy_plugins_of_eight_tenants_do_not_hold_up_a_light_tenant() {
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("node")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("clients")
        .enable_all()
        .build()
        .unwrap();
    let mut n = node_rt.block_on(TestNode::start());

    let spins = heavy_spins(0.8);
    let heavy_plugin = policy_engine()
        .load(&std::fs::read(plugins_artifacts::HEAVY).unwrap())
        .unwrap();
    let mut heavy_policies = Vec::new();
    for i in 0..HEAVY_TENANTS {
        let tenant = format!("heavy{i}");
        add_tenant(&n, &tenant, &["h"]);
        let policy = Arc::new(TenantPolicy::new(
            &heavy_plugin,
            tenant.as_str(),
            [("spins".into(), spins.to_string())].into(),
        ));
        n.hub()
            .set_policy(&TenantId::new(&tenant).unwrap(), Some(policy.clone()));
        heavy_policies.push(policy);
    }
    let light_policy = Arc::new(TenantPolicy::new(
        &policy_engine()
            .load(&std::fs::read(plugins_artifacts::PRIORITY).unwrap())
            .unwrap(),
        "acme",
        Default::default(),
    ));
    n.hub()
        .set_policy(&TenantId::new("acme").unwrap(), Some(light_policy.clone()));

    client_rt.block_on(async {
        let mut alice = connect(&n, "acme", "alice").await;
        let mut bob = connect(&n, "acme", "bob").await;
        let mut heavy = Vec::new();
        for i in 0..HEAVY_TENANTS {
            heavy.push(connect(&n, &format!("heavy{i}"), "h").await);
        }

        // Warm-up (instances, the groups' state), then the light tenant alone.
        measure(&mut alice, &mut bob, 1_000_000).await;
        let idle = measure(&mut alice, &mut bob, 1).await;

        let stop = Arc::new(AtomicBool::new(false));
        let acked: Vec<Arc<AtomicU64>> = (0..HEAVY_TENANTS).map(|_| Arc::default()).collect();
        let loaders: Vec<_> = heavy
            .into_iter()
            .zip(&acked)
            .map(|(c, acked)| tokio::spawn(load(c, acked.clone(), stop.clone())))
            .collect();
        // Every heavy tenant is being served before measuring.
        while acked
            .iter()
            .any(|a| a.load(Ordering::Relaxed) < HEAVY_IN_FLIGHT)
        {
            tokio::task::yield_now().await;
        }
        let calls_before: u64 = heavy_policies
            .iter()
            .map(|p| p.stats().on_message.calls)
            .sum();
        let busy_before: Duration = heavy_policies
            .iter()
            .map(|p| p.stats().on_message.latency_sum)
            .sum();
        let started = Instant::now();
        let loaded = measure(&mut alice, &mut bob, 10_000).await;
        let wall = started.elapsed();
        let calls: u64 = heavy_policies
            .iter()
            .map(|p| p.stats().on_message.calls)
            .sum::<u64>()
            - calls_before;
        let busy: Duration = heavy_policies
            .iter()
            .map(|p| p.stats().on_message.latency_sum)
            .sum::<Duration>()
            - busy_before;
        stop.store(true, Ordering::Relaxed);
        for l in loaders {
            l.await.unwrap();
        }

        let fallbacks: u64 = heavy_policies
            .iter()
            .map(|p| p.stats().fallbacks.total())
            .sum();
        let fuel = heavy_policies
            .iter()
            .map(|p| p.stats().fuel_used_max)
            .max()
            .unwrap();
        let light_stats = light_policy.stats();
        eprintln!(
            "light tenant (priority), send → delivery over {SAMPLES} messages:\n  \
             heavy tenants idle:    {}\n  \
             {HEAVY_TENANTS} heavy tenants busy: {}\n  \
             light plugin: {:.2?} per call on average, {:.2?} at most\n  \
             heavy plugins meanwhile: {calls} calls ({:.0}/s), {fuel} fuel per call at most, \
             {:.2?} in plugin calls per second of wall time, {fallbacks} fallbacks",
            summary(&idle),
            summary(&loaded),
            light_stats.on_message.latency_mean().unwrap(),
            light_stats.on_message.latency_max,
            calls as f64 / wall.as_secs_f64(),
            busy.div_f64(wall.as_secs_f64()),
        );

        // The heavy plugins really loaded the node: they ran for at least half a core's
        // worth of the measuring time (the node gives them one core of two at most), and
        // (but for the odd call whose thread, waiting for a core, ran into the 10 ms
        // deadline) within their budget.
        assert!(
            fallbacks * 100 <= calls,
            "{fallbacks} of {calls} heavy calls fell back"
        );
        assert!(
            busy >= wall / 2,
            "the heavy plugins ran {busy:?} in {wall:?}: not a load"
        );
        for (p, floor) in [(0.50, LOADED_P50_FLOOR), (0.99, LOADED_P99_FLOOR)] {
            let bound = floor.max(percentile(&idle, p) * LOADED_FACTOR);
            let loaded = percentile(&loaded, p);
            assert!(
                loaded <= bound,
                "the light tenant's p{} went from {:?} to {loaded:?} under its neighbours' \
                 plugins (bound {bound:?})",
                p * 100.0,
                percentile(&idle, p)
            );
        }
    });
    node_rt.block_on(n.node.take().unwrap().shutdown());
}
