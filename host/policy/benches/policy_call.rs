//! The per-message cost of policy: one `on_message` call of the reference priority plugin,
//! against the built-in default.
//!
//! `cargo bench -p switchboard-policy --bench policy_call` runs criterion (means), then a
//! plain loop that records every call and prints p50/p99/p99.9/max. The call includes taking
//! an idle instance, refilling fuel and the deadline, lowering the message (two strings and
//! the body prefix, copied into the guest through its allocator), the guest's work (config
//! is parsed once per instance, so no host call per message), lifting the verdict and the
//! statistics.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard_policy::{
    Builtin, LoadInfo, MessageInfo, PolicyEngine, PolicyLimits, TenantPolicy,
};

fn priority_policy() -> TenantPolicy {
    let engine = PolicyEngine::new(PolicyLimits::default()).expect("engine");
    let bytes = std::fs::read(plugins_artifacts::PRIORITY).expect("priority plugin");
    let plugin = engine.load(&bytes).expect("load");
    let config = BTreeMap::from([("vip_users".to_string(), "ceo, cto".to_string())]);
    TenantPolicy::new(&plugin, "bench", config)
}

fn message() -> MessageInfo {
    MessageInfo {
        group: "general".into(),
        sender: "bob".into(),
        body_size: 120,
        body_prefix: b"the build is green again, thanks everyone".to_vec(),
        group_size: 50,
        connected_members: 12,
    }
}

fn percentiles(name: &str, mut call: impl FnMut()) {
    const WARMUP: usize = 20_000;
    const CALLS: usize = 200_000;
    for _ in 0..WARMUP {
        call();
    }
    let mut times: Vec<Duration> = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        call();
        times.push(started.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{name}: {CALLS} calls  p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        at(0.50),
        at(0.99),
        at(0.999),
        times[times.len() - 1]
    );
}

fn on_message(c: &mut Criterion) {
    let policy = priority_policy();
    let m = message();
    let mut group = c.benchmark_group("on_message");
    group.bench_function("priority_plugin", |b| {
        b.iter(|| black_box(policy.on_message(black_box(&m))))
    });
    group.bench_function("builtin", |b| {
        b.iter(|| black_box(Builtin::on_message(black_box(&m))))
    });
    group.finish();
    // The floor of a plugin call: `on-load` of the same plugin (the SDK's default ladder) has
    // no strings to copy and no host calls, so it is wasmtime's call overhead plus budgets.
    let load = LoadInfo {
        level: 1,
        tenant_message_rate: 10,
        tenant_connections: 3,
    };
    c.bench_function("on_load/priority_plugin (call floor)", |b| {
        b.iter(|| black_box(policy.on_load(black_box(&load))))
    });

    percentiles("on_message/priority_plugin", || {
        black_box(policy.on_message(black_box(&m)));
    });
    percentiles("on_load/priority_plugin (call floor)", || {
        black_box(policy.on_load(black_box(&load)));
    });
    percentiles("on_message/builtin", || {
        black_box(Builtin::on_message(black_box(&m)));
    });
    let stats = policy.stats();
    println!(
        "priority plugin: {} calls, fallbacks {:?}, {} instantiations, at most {} fuel per call",
        stats.on_message.calls, stats.fallbacks, stats.instantiations, stats.fuel_used_max
    );
}

criterion_group!(benches, on_message);
criterion_main!(benches);
