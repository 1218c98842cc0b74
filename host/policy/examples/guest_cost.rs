//! What a plugin costs by the language it is written in: the reference priority policy in
//! Rust, JavaScript (QuickJS) and Python (CPython), side by side. For `docs/benchmarks.md`.
//!
//! `cargo run -p switchboard-policy --example guest_cost [--release]` prints, per plugin: its
//! size, compile time (`PolicyEngine::load`), instantiation time (a fresh instance, as a
//! tenant's first call or the call after a failure pays), the `on-message` call's p50 and p99
//! on a warm instance, the fuel one call uses, and the linear memory an instance has.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use switchboard_policy::{
    MessageInfo, Plugin, PolicyEngine, PolicyLimits, Shape, ShapeLimits, Source, TenantPolicy,
    Trial,
};

const PLUGINS: &[(&str, &str)] = &[
    ("rust", plugins_artifacts::PRIORITY),
    ("js", plugins_artifacts::PRIORITY_JS),
    ("python", plugins_artifacts::PRIORITY_PY),
];

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

fn config() -> BTreeMap<String, String> {
    BTreeMap::from([("vip_users".to_string(), "ceo, cto".to_string())])
}

fn percentile(times: &mut [Duration], q: f64) -> Duration {
    times.sort_unstable();
    let i = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
    times[i]
}

fn main() {
    // Open shape limits, to measure; the node's budgets otherwise.
    let open = ShapeLimits {
        max_functions: u64::MAX,
        max_exports: u64::MAX,
        max_imports: u64::MAX,
        max_globals: u64::MAX,
        max_types: u64::MAX,
        max_nesting: u64::MAX,
        max_function_bytes: u64::MAX,
        max_locals: u64::MAX,
        max_segments: u64::MAX,
    };
    for (lang, path) in PLUGINS {
        let wasm = std::fs::read(path).expect("plugin file");
        let shape: Shape = Shape::measure(&wasm, &open).expect("shape");
        println!("{lang}: {shape:?}");
    }
    // The node's budgets, but a deadline of a second: on a loaded machine a Python
    // instance's start can pass 10 ms (see docs/benchmarks.md), and this measures, it does
    // not judge.
    let engine = PolicyEngine::new(PolicyLimits {
        max_plugin_bytes: 32 << 20,
        shape: open,
        deadline: Duration::from_secs(1),
        ..PolicyLimits::default()
    })
    .expect("engine");
    println!("language  size_bytes  compile_ms  instantiate_us(p50)  call_us(p50/p99)  fuel/call  memory_bytes");
    for (lang, path) in PLUGINS {
        let wasm = std::fs::read(path).expect("plugin file");
        let started = Instant::now();
        let plugin: Plugin = match engine.load(&wasm) {
            Ok(p) => p,
            Err(e) => {
                println!("{lang:<8}  {:>10}  refused: {e}", wasm.len());
                continue;
            }
        };
        let compile = started.elapsed();

        // Instantiation: a fresh policy's prewarm is exactly one instance made.
        let mut inst = Vec::new();
        for _ in 0..30 {
            let policy = TenantPolicy::new(&plugin, "bench", config());
            let started = Instant::now();
            policy.prewarm().expect("prewarm");
            inst.push(started.elapsed());
        }

        // Calls on a warm instance.
        let policy = TenantPolicy::new(&plugin, "bench", config());
        let m = message();
        let calls = if *lang == "rust" { 20_000 } else { 2_000 };
        for _ in 0..calls / 10 {
            let d = policy.on_message(&m);
            assert_eq!(d.source, Source::Plugin, "{lang}");
        }
        let mut times = Vec::with_capacity(calls);
        for _ in 0..calls {
            let started = Instant::now();
            let d = policy.on_message(&m);
            times.push(started.elapsed());
            assert_eq!(d.source, Source::Plugin, "{lang}");
        }
        let p50 = percentile(&mut times, 0.5);
        let p99 = percentile(&mut times, 0.99);
        let memory = policy.stats().memory_peak_bytes;

        let trial = Trial::new(&plugin, "bench", config());
        trial.on_message(&m, 0);
        let fuel = trial.on_message(&m, 0).fuel_used.unwrap_or(0);

        println!(
            "{lang:<8}  {:>10}  {:>10}  {:>19.1}  {:>7.2}/{:<8.2}  {:>9}  {:>12}",
            wasm.len(),
            compile.as_millis(),
            percentile(&mut inst, 0.5).as_secs_f64() * 1e6,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            fuel,
            memory
        );
    }
}
