//! Every plugin of `plugins/` (and `examples/minimal-plugin`), built for real by
//! `plugins-artifacts`, at the host's boundary: the reference plugins' decisions, hostile
//! plugins contained, refusals at load, and the upload self-test (`Plugin::self_test`) passing
//! or failing at the right hook. `every_plugin_has_a_test` keeps the table of which test
//! covers which plugin complete.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use switchboard_policy::{
    Builtin, Decision, Delivery, FallbackReason, Flag, FlagContext, Hook, Lane, LoadError,
    LoadInfo, MessageInfo, Plugin, PolicyEngine, PolicyLimits, ReceiptAction, ReceiptInfo,
    ReceiptKind, SelfTestError, Shedding, Source, TenantPolicy, Verdict,
};

/// Which test exercises each plugin. A plugin may only be loaded through [`wasm`], which
/// insists on an entry here; [`every_plugin_has_a_test`] insists every plugin has one.
const COVERAGE: &[(&str, &str)] = &[
    ("priority", "priority_lanes_and_spam"),
    ("priority-js", "priority_in_javascript_answers_like_rust"),
    ("priority-py", "priority_in_python_answers_like_rust"),
    ("receipts", "receipts_aggregate_over_the_threshold"),
    ("flags", "flags_rollout_is_stable_and_roughly_right"),
    ("degradation", "degradation_ladder"),
    (
        "probe-memory",
        "pooled_instances_never_show_one_tenants_memory_to_another",
    ),
    ("heavy", "a_heavy_plugin_spends_its_budget_and_never_fails"),
    ("minimal-plugin", "minimal_plugin_rejects_the_banned_word"),
    (
        "hostile-loop",
        "a_loop_runs_out_of_budget_and_the_next_call_works",
    ),
    ("hostile-memory", "a_memory_bomb_traps_at_the_cap"),
    ("hostile-recursion", "unbounded_recursion_traps"),
    ("hostile-trap", "a_trap_falls_back_and_is_counted"),
    (
        "hostile-latent-trap",
        "a_latent_trap_passes_the_self_test_and_falls_back_on_traffic",
    ),
    (
        "hostile-latent-trap-js",
        "a_latent_trap_in_javascript_falls_back_like_rust",
    ),
    (
        "hostile-latent-trap-py",
        "a_latent_trap_in_python_falls_back_like_rust",
    ),
    ("hostile-huge-output", "huge_output_is_not_taken"),
    ("hostile-wasi-fs", "file_system_access_is_refused_at_load"),
    ("hostile-wasi-sockets", "socket_access_is_refused_at_load"),
    ("hostile-wrong-world", "the_wrong_world_is_refused_at_load"),
    ("hostile-core-module", "a_core_module_is_refused_at_load"),
];

fn wasm(name: &str) -> Vec<u8> {
    assert!(
        COVERAGE.iter().any(|(n, _)| *n == name),
        "{name} is not in COVERAGE"
    );
    let (_, path) = plugins_artifacts::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no plugin {name} in plugins_artifacts::ALL"));
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One engine with the default budgets for the whole test binary (tests run in parallel),
/// except the deadline: it is wall-clock time, and on a 2-core machine running every test
/// at once a thread can wait longer than 10 ms for a core. The deadline has its own test.
fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        PolicyEngine::new(PolicyLimits {
            max_instances: 64,
            deadline: Duration::from_secs(2),
            ..PolicyLimits::default()
        })
        .unwrap()
    })
}

/// An engine whose fuel and deadline are far beyond what any hostile plugin needs to reach
/// the memory cap, the stack limit or the transfer limit, so those are what stop it.
fn generous_engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        PolicyEngine::new(PolicyLimits {
            fuel_per_call: 2_000_000_000,
            deadline: Duration::from_secs(10),
            max_instances: 16,
            ..PolicyLimits::default()
        })
        .unwrap()
    })
}

fn generous(name: &str) -> TenantPolicy {
    let plugin = generous_engine().load(&wasm(name)).unwrap();
    TenantPolicy::new(&plugin, "mallory", BTreeMap::new())
}

/// `name` loaded into [`engine`], once per test binary: a Python plugin takes seconds to
/// compile (docs/plugins.md §15), and a `Plugin` is immutable, so tests can share it.
fn plugin(name: &str) -> Plugin {
    static LOADED: OnceLock<parking_lot::Mutex<BTreeMap<String, Plugin>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(Default::default);
    if let Some(plugin) = loaded.lock().get(name) {
        return plugin.clone();
    }
    let plugin = engine()
        .load(&wasm(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    loaded.lock().insert(name.to_owned(), plugin.clone());
    plugin
}

fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tenant(name: &str, tenant: &str, pairs: &[(&str, &str)]) -> TenantPolicy {
    TenantPolicy::new(&plugin(name), tenant, config(pairs))
}

fn message(sender: &str, body: &[u8], body_size: u32) -> MessageInfo {
    MessageInfo {
        group: "general".into(),
        sender: sender.into(),
        body_size,
        body_prefix: body.to_vec(),
        group_size: 12,
        connected_members: 5,
    }
}

fn receipt(kind: ReceiptKind, group_size: u32) -> ReceiptInfo {
    ReceiptInfo {
        group: "general".into(),
        seq: 7,
        reader: "bob".into(),
        kind,
        group_size,
    }
}

fn load(level: u8) -> LoadInfo {
    LoadInfo {
        level,
        tenant_message_rate: 100,
        tenant_connections: 10,
    }
}

fn from_plugin<T: std::fmt::Debug>(decision: Decision<T>) -> T {
    assert_eq!(decision.source, Source::Plugin, "{decision:?}");
    decision.value
}

fn accept(lane: Lane, notify_offline: bool) -> Verdict {
    Verdict::Accept(Delivery {
        lane,
        notify_offline,
    })
}

#[test]
fn every_plugin_has_a_test() {
    let built: BTreeSet<&str> = plugins_artifacts::ALL.iter().map(|(n, _)| *n).collect();
    let covered: BTreeSet<&str> = COVERAGE.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        built, covered,
        "every plugin in plugins_artifacts::ALL needs a test here, and COVERAGE names only real plugins"
    );
}

// ---- reference plugins -------------------------------------------------------------------

#[test]
fn priority_lanes_and_spam() {
    let fuel = check_priority("priority");
    // The budget is sized so the reference plugin uses a small fraction of it.
    assert!(
        fuel > 0 && fuel * 20 < PolicyLimits::default().fuel_per_call,
        "{fuel}"
    );
}

/// The reference priority policy in JavaScript (`plugins/priority-js`, QuickJS) answers every
/// hook as the Rust one does, imports nothing but `switchboard:policy`, passes the self-test,
/// and stays well inside the default budgets.
#[test]
fn priority_in_javascript_answers_like_rust() {
    check_interpreted("priority-js");
}

/// The same for Python (`plugins/priority-py`, CPython).
#[test]
fn priority_in_python_answers_like_rust() {
    check_interpreted("priority-py");
}

fn check_interpreted(name: &str) {
    let fuel = check_priority(name);
    assert!(
        fuel > 0 && fuel * 10 < PolicyLimits::default().fuel_per_call,
        "{name}: {fuel}"
    );
    let plugin = plugin(name);
    for import in plugin.imports() {
        assert!(
            import.starts_with("switchboard:policy/"),
            "{name} imports {import}: built without --stub-wasi?"
        );
    }
    for config in [BTreeMap::new(), config(&[("vip_users", "ceo")])] {
        let report = plugin
            .self_test(&config)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for hook in &report.hooks {
            println!(
                "{name}: {} x{} at most {} fuel, {:?}",
                hook.hook, hook.calls, hook.fuel_used, hook.elapsed
            );
        }
    }
    // An invalid setting is logged once, and the default used, as in Rust.
    let bad = tenant(name, "acme", &[("large_bytes", "lots")]);
    assert_eq!(
        from_plugin(bad.on_message(&message("bob", b"x", 16_385))),
        accept(Lane::Low, false)
    );
    assert_eq!(bad.stats().fallbacks.total(), 0);
}

/// The priority rules, checked on the plugin `name`; returns the most fuel a call used.
fn check_priority(name: &str) -> u64 {
    let policy = tenant(name, "acme", &[("vip_users", "ceo, cto")]);
    let on = |sender: &str, body: &[u8], size: u32| {
        from_plugin(policy.on_message(&message(sender, body, size)))
    };
    assert_eq!(on("cto", b"hello", 5), accept(Lane::High, true), "VIP");
    assert_eq!(
        on("bob", b"!urgent build is red", 20),
        accept(Lane::High, false)
    );
    assert_eq!(
        on("bob", b"a photo", 16_385),
        accept(Lane::Low, false),
        "large"
    );
    assert_eq!(on("bob", b"a photo", 16_384), accept(Lane::Normal, false));
    assert_eq!(on("bob", b"hello", 5), accept(Lane::Normal, false));
    assert_eq!(
        on("ceo", b"!spam buy now", 13),
        Verdict::Reject("spam is not allowed here".into()),
        "spam is rejected even from a VIP"
    );
    assert_eq!(policy.counters().get("priority_spam_rejected"), Some(&1));

    // The hooks it does not implement are the SDK's defaults, which are the node's.
    let r = receipt(ReceiptKind::Read, 500);
    assert_eq!(from_plugin(policy.on_receipt(&r)), Builtin::on_receipt(&r));
    let ctx = FlagContext {
        user: "bob".into(),
        group: None,
    };
    assert_eq!(from_plugin(policy.evaluate_flags(&ctx)), Vec::<Flag>::new());
    for level in 0..=3 {
        assert_eq!(
            from_plugin(policy.on_load(&load(level))),
            Builtin::on_load(&load(level))
        );
    }

    // The tenant's configuration is what the plugin sees.
    let small = tenant(name, "acme", &[("large_bytes", "100")]);
    assert_eq!(
        from_plugin(small.on_message(&message("bob", b"x", 101))),
        accept(Lane::Low, false)
    );
    assert_eq!(
        from_plugin(small.on_message(&message("bob", b"x", 100))),
        accept(Lane::Normal, false)
    );

    let stats = policy.stats();
    assert_eq!(stats.fallbacks.total(), 0, "{name}");
    assert_eq!(stats.on_message.calls, 6);
    assert_eq!(
        stats.instantiations, 1,
        "{name}: one instance, reused for every call"
    );
    let fuel = stats.fuel_used_max;
    println!(
        "{name}: at most {fuel} fuel per call, {} bytes of memory",
        stats.memory_peak_bytes
    );
    fuel
}

#[test]
fn receipts_aggregate_over_the_threshold() {
    let policy = tenant("receipts", "acme", &[]);
    let on = |kind, size| from_plugin(policy.on_receipt(&receipt(kind, size)));
    assert_eq!(on(ReceiptKind::Read, 2), ReceiptAction::Forward);
    assert_eq!(on(ReceiptKind::Read, 20), ReceiptAction::Forward);
    assert_eq!(on(ReceiptKind::Read, 21), ReceiptAction::Aggregate);
    assert_eq!(on(ReceiptKind::Delivered, 100), ReceiptAction::Aggregate);
    assert_eq!(on(ReceiptKind::Delivered, 101), ReceiptAction::Drop);
    assert_eq!(on(ReceiptKind::Read, 5_000), ReceiptAction::Aggregate);

    let configured = tenant("receipts", "acme", &[("aggregate_over", "5")]);
    let on = |kind, size| from_plugin(configured.on_receipt(&receipt(kind, size)));
    assert_eq!(on(ReceiptKind::Read, 5), ReceiptAction::Forward);
    assert_eq!(on(ReceiptKind::Read, 6), ReceiptAction::Aggregate);
}

#[test]
fn flags_rollout_is_stable_and_roughly_right() {
    let rules = "half:percent:50; tenth:percent:10; beta:users:alice,bob; \
                 staff-room:groups:staff";
    let policy = tenant("flags", "acme", &[("flags", rules)]);
    // Another tenant with the same rules, on fresh instances: the same answers.
    let other = tenant("flags", "globex", &[("flags", rules)]);
    let evaluate = |p: &TenantPolicy, user: &str, group: Option<&str>| -> BTreeMap<String, bool> {
        let flags = from_plugin(p.evaluate_flags(&FlagContext {
            user: user.into(),
            group: group.map(Into::into),
        }));
        flags.into_iter().map(|f| (f.name, f.enabled)).collect()
    };

    // Raising a flag's percentage only adds users.
    let wider = tenant("flags", "acme", &[("flags", "tenth:percent:20")]);
    let (mut half, mut tenth, mut fifth) = (0, 0, 0);
    for i in 0..1000 {
        let user = format!("user-{i}");
        let flags = evaluate(&policy, &user, None);
        assert_eq!(
            flags,
            evaluate(&policy, &user, None),
            "stable on one instance"
        );
        assert_eq!(
            flags,
            evaluate(&other, &user, None),
            "stable across instances"
        );
        let in_fifth = evaluate(&wider, &user, None)["tenth"];
        half += usize::from(flags["half"]);
        tenth += usize::from(flags["tenth"]);
        fifth += usize::from(in_fifth);
        assert!(
            !flags["tenth"] || in_fifth,
            "{user} left the rollout when it grew"
        );
    }
    assert!((400..=600).contains(&half), "half: {half} of 1000");
    assert!((50..=150).contains(&tenth), "tenth: {tenth} of 1000");
    assert!((130..=270).contains(&fifth), "fifth: {fifth} of 1000");

    assert!(evaluate(&policy, "alice", None)["beta"]);
    assert!(!evaluate(&policy, "carol", None)["beta"]);
    assert!(evaluate(&policy, "carol", Some("staff"))["staff-room"]);
    assert!(!evaluate(&policy, "carol", Some("lobby"))["staff-room"]);
    assert!(!evaluate(&policy, "carol", None)["staff-room"]);

    let unconfigured = tenant("flags", "initech", &[]);
    assert!(evaluate(&unconfigured, "alice", None).is_empty());
}

#[test]
fn degradation_ladder() {
    let default = tenant("degradation", "acme", &[]);
    for level in 0..=4 {
        assert_eq!(
            from_plugin(default.on_load(&load(level))),
            Builtin::on_load(&load(level)),
            "level {level}"
        );
    }
    let configured = tenant(
        "degradation",
        "acme",
        &[
            ("shed_receipts_at", "1"),
            ("shed_presence_at", "never"),
            ("defer_background_at", "2"),
        ],
    );
    assert_eq!(
        from_plugin(configured.on_load(&load(0))),
        Shedding::default()
    );
    assert_eq!(
        from_plugin(configured.on_load(&load(1))),
        Shedding {
            receipts: true,
            presence: false,
            background_delivery: false
        }
    );
    assert_eq!(
        from_plugin(configured.on_load(&load(3))),
        Shedding {
            receipts: true,
            presence: false,
            background_delivery: true
        }
    );
    // It logs one line per call, within the per-call budget.
    assert_eq!(configured.stats().log_lines_dropped, 0);
}

#[test]
fn minimal_plugin_rejects_the_banned_word() {
    let policy = tenant("minimal-plugin", "acme", &[("banned_word", "Spoiler")]);
    assert_eq!(
        from_plugin(policy.on_message(&message("alice", b"big SPOILER ahead", 17))),
        Verdict::Reject("messages containing \"spoiler\" are not allowed".into())
    );
    assert_eq!(
        from_plugin(policy.on_message(&message("alice", b"hello", 5))),
        Builtin::on_message(&message("alice", b"hello", 5))
    );
    assert_eq!(policy.counters().get("banned_word_rejected"), Some(&1));
}

// ---- hostile plugins ---------------------------------------------------------------------

/// Asserts the decision is the built-in default, and returns why.
fn fell_back(decision: Decision<Verdict>, m: &MessageInfo) -> FallbackReason {
    assert_eq!(decision.value, Builtin::on_message(m));
    match decision.source {
        Source::Fallback(reason) => reason,
        Source::Plugin => panic!("expected a fallback, got {decision:?}"),
    }
}

/// After a failed call the same policy still answers: the hooks the hostile plugin leaves
/// to the SDK come from a fresh instance.
fn still_answers(policy: &TenantPolicy) {
    assert_eq!(
        from_plugin(policy.on_load(&load(2))),
        Builtin::on_load(&load(2))
    );
    let r = receipt(ReceiptKind::Read, 3);
    assert_eq!(from_plugin(policy.on_receipt(&r)), ReceiptAction::Forward);
}

#[test]
fn a_loop_runs_out_of_budget_and_the_next_call_works() {
    let policy = tenant("hostile-loop", "mallory", &[]);
    let m = message("mallory", b"hi", 2);
    for _ in 0..3 {
        let started = Instant::now();
        let reason = fell_back(policy.on_message(&m), &m);
        let took = started.elapsed();
        assert!(
            matches!(reason, FallbackReason::OutOfFuel | FallbackReason::Deadline),
            "{reason:?}"
        );
        // Default budget: fuel runs out in about a millisecond, well before the deadline.
        assert!(took < Duration::from_millis(200), "took {took:?}");
        still_answers(&policy);
    }
    let stats = policy.stats();
    assert_eq!(stats.on_message.fallbacks, 3);
    assert_eq!(stats.fallbacks.out_of_fuel + stats.fallbacks.deadline, 3);
    assert_eq!(stats.discarded_instances, 3);
    assert!(
        stats.instantiations >= 4,
        "a fresh instance after each discard"
    );
}

#[test]
fn a_loop_with_unlimited_fuel_hits_the_deadline() {
    let limits = PolicyLimits {
        fuel_per_call: u64::MAX / 2,
        deadline: Duration::from_millis(20),
        max_instances: 4,
        ..PolicyLimits::default()
    };
    let engine = PolicyEngine::new(limits.clone()).unwrap();
    let plugin = engine.load(&wasm("hostile-loop")).unwrap();
    let policy = TenantPolicy::new(&plugin, "mallory", BTreeMap::new());
    let m = message("mallory", b"hi", 2);
    let started = Instant::now();
    let reason = fell_back(policy.on_message(&m), &m);
    let took = started.elapsed();
    assert_eq!(reason, FallbackReason::Deadline);
    assert!(took >= limits.deadline, "interrupted early: {took:?}");
    // One tick of granularity, plus slack for a loaded machine.
    assert!(
        took < limits.deadline + limits.epoch_tick + Duration::from_millis(500),
        "{took:?}"
    );
    assert_eq!(policy.stats().fallbacks.deadline, 1);
    still_answers(&policy);
}

#[test]
fn a_memory_bomb_traps_at_the_cap() {
    let cap = PolicyLimits::default().max_memory_bytes as u64;
    let m = message("mallory", b"hi", 2);
    // With the default budget, zeroing 16 MiB costs more fuel than a call gets: stopped
    // on fuel, below the cap.
    let policy = tenant("hostile-memory", "mallory", &[]);
    let reason = fell_back(policy.on_message(&m), &m);
    assert!(
        matches!(
            reason,
            FallbackReason::OutOfFuel | FallbackReason::Deadline | FallbackReason::Trap(_)
        ),
        "{reason:?}"
    );
    assert!(policy.stats().memory_peak_bytes <= cap);
    still_answers(&policy);

    // With fuel and time to spare, the cap is what stops it.
    let policy = generous("hostile-memory");
    let reason = fell_back(policy.on_message(&m), &m);
    assert!(
        matches!(&reason, FallbackReason::Trap(why) if why.contains("memory limit exceeded")),
        "{reason:?}"
    );
    let peak = policy.stats().memory_peak_bytes;
    assert!(peak <= cap, "memory reached {peak} bytes; the cap is {cap}");
    assert!(peak > cap / 2, "the bomb did allocate ({peak} bytes)");
    assert_eq!(policy.stats().fallbacks.traps, 1);
    still_answers(&policy);
}

#[test]
fn unbounded_recursion_traps() {
    let m = message("mallory", b"hi", 2);
    for policy in [
        tenant("hostile-recursion", "mallory", &[]),
        generous("hostile-recursion"),
    ] {
        let reason = fell_back(policy.on_message(&m), &m);
        // The wasm stack (max_wasm_stack) runs out first; were the shadow stack in linear
        // memory to run out first it would be an out-of-bounds trap.
        assert!(
            matches!(&reason, FallbackReason::Trap(why) if why.contains("stack")),
            "{reason:?}"
        );
        assert_eq!(policy.stats().fallbacks.traps, 1);
        still_answers(&policy);
    }
}

#[test]
fn a_trap_falls_back_and_is_counted() {
    let policy = tenant("hostile-trap", "mallory", &[]);
    let m = message("mallory", b"hi", 2);
    for round in 1..=3 {
        let reason = fell_back(policy.on_message(&m), &m);
        assert!(
            matches!(&reason, FallbackReason::Trap(why) if why.contains("unreachable")),
            "{reason:?}"
        );
        assert_eq!(policy.stats().fallbacks.traps, round);
        still_answers(&policy);
    }
    let stats = policy.stats();
    assert_eq!(stats.on_message.calls, 3);
    assert_eq!(stats.on_message.fallbacks, 3);
    assert_eq!(stats.on_load.fallbacks, 0);
    assert_eq!(stats.discarded_instances, 3);
}

#[test]
fn huge_output_is_not_taken() {
    let policy = tenant("hostile-huge-output", "mallory", &[]);
    let m = message("mallory", b"hi", 2);
    let started = Instant::now();
    // With the default budget, building the output runs out of fuel.
    let reason = fell_back(policy.on_message(&m), &m);
    assert!(
        matches!(
            reason,
            FallbackReason::OutOfFuel | FallbackReason::InvalidOutput(_) | FallbackReason::Trap(_)
        ),
        "{reason:?}"
    );
    let ctx = FlagContext {
        user: "mallory".into(),
        group: None,
    };
    let flags = policy.evaluate_flags(&ctx);
    assert!(flags.is_fallback(), "{:?}", flags.source);
    assert!(flags.value.is_empty());
    assert!(started.elapsed() < Duration::from_millis(500));
    still_answers(&policy);

    // With fuel to spare the outputs get built, and are refused when they are handed over:
    // 10 MiB, or 100 000 flags, is far more than one transfer may carry.
    let policy = generous("hostile-huge-output");
    let reason = fell_back(policy.on_message(&m), &m);
    assert!(
        matches!(&reason, FallbackReason::InvalidOutput(why) if why.contains("too much data")),
        "{reason:?}"
    );
    let flags = policy.evaluate_flags(&ctx);
    assert!(
        matches!(
            flags.fallback_reason(),
            Some(FallbackReason::InvalidOutput(_))
        ),
        "{:?}",
        flags.source
    );
    assert_eq!(policy.stats().fallbacks.invalid_output, 2);
    still_answers(&policy);
}

#[test]
fn other_tenants_are_unaffected_by_a_hostile_neighbour() {
    let good = Arc::new(tenant("priority", "acme", &[("vip_users", "ceo")]));
    let hostile: Vec<Arc<TenantPolicy>> = ["hostile-loop", "hostile-trap", "hostile-memory"]
        .iter()
        .map(|name| Arc::new(tenant(name, "mallory", &[])))
        .collect();
    let attackers: Vec<_> = hostile
        .iter()
        .cloned()
        .map(|policy| {
            std::thread::spawn(move || {
                let m = message("mallory", b"hi", 2);
                for _ in 0..5 {
                    assert!(policy.on_message(&m).is_fallback());
                }
            })
        })
        .collect();
    for _ in 0..200 {
        assert_eq!(
            from_plugin(good.on_message(&message("ceo", b"hi", 2))),
            accept(Lane::High, true)
        );
        assert_eq!(
            from_plugin(good.on_message(&message("bob", b"!spam", 5))),
            Verdict::Reject("spam is not allowed here".into())
        );
    }
    for attacker in attackers {
        attacker.join().unwrap();
    }
    let stats = good.stats();
    assert_eq!(stats.fallbacks.total(), 0);
    assert_eq!(stats.discarded_instances, 0);
    assert_eq!(good.counters().get("priority_spam_rejected"), Some(&200));
    for policy in &hostile {
        assert!(policy.counters().is_empty(), "counters are per tenant");
    }
}

#[test]
fn concurrent_calls_on_one_policy() {
    let policy = Arc::new(tenant("priority", "acme", &[]));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let policy = policy.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    assert_eq!(
                        from_plugin(policy.on_message(&message("bob", b"hi", 2))),
                        accept(Lane::Normal, false)
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = policy.stats();
    assert_eq!(stats.on_message.calls, 2000);
    // Instances are reused: more than `idle_instances_per_tenant` callers at once may
    // create a few extra, never one per call.
    assert!(stats.instantiations < 100, "{}", stats.instantiations);
    assert!(policy.idle_instances() <= PolicyLimits::default().idle_instances_per_tenant);
}

#[test]
fn an_exhausted_instance_pool_falls_back_as_unavailable() {
    let engine = PolicyEngine::new(PolicyLimits {
        max_instances: 2,
        idle_instances_per_tenant: 1,
        deadline: Duration::from_secs(2),
        ..PolicyLimits::default()
    })
    .unwrap();
    // Loading takes an instance only while it checks the plugin.
    let plugin = engine.load(&wasm("priority")).unwrap();
    let a = TenantPolicy::new(&plugin, "a", BTreeMap::new());
    let b = TenantPolicy::new(&plugin, "b", BTreeMap::new());
    let c = TenantPolicy::new(&plugin, "c", BTreeMap::new());
    a.prewarm().unwrap();
    b.prewarm().unwrap();
    let m = message("bob", b"hi", 2);
    let decision = c.on_message(&m);
    assert!(
        matches!(
            decision.fallback_reason(),
            Some(FallbackReason::Unavailable(_))
        ),
        "{decision:?}"
    );
    assert_eq!(decision.value, Builtin::on_message(&m));
    assert_eq!(c.stats().fallbacks.unavailable, 1);
    // Idle instances are returned to the pool when their policy goes (e.g. a swap).
    drop(a);
    assert_eq!(from_plugin(c.on_message(&m)), accept(Lane::Normal, false));
}

// ---- isolation between tenants' instances: `plugins/isolation.rs` ------------------------

#[path = "plugins/isolation.rs"]
mod isolation;

// ---- the upload self-test -----------------------------------------------------------------

#[test]
fn first_party_plugins_pass_the_self_test() {
    let configs = [
        ("priority", config(&[("vip_users", "ceo")])),
        ("receipts", config(&[("aggregate_over", "5")])),
        (
            "flags",
            config(&[("flags", "half:percent:50; staff:groups:staff")]),
        ),
        ("degradation", config(&[("shed_presence_at", "never")])),
        ("minimal-plugin", config(&[("banned_word", "spoiler")])),
    ];
    for (name, tenant_config) in configs {
        let plugin = plugin(name);
        for config in [BTreeMap::new(), tenant_config] {
            let report = plugin
                .self_test(&config)
                .unwrap_or_else(|e| panic!("{name} {config:?}: {e}"));
            let hooks: Vec<Hook> = report.hooks.iter().map(|h| h.hook).collect();
            assert_eq!(hooks, Hook::ALL, "{name}");
            for hook in &report.hooks {
                // Reference plugins use a small fraction of the budget.
                assert!(
                    hook.fuel_used > 0 && hook.fuel_used * 20 < report.fuel_per_call,
                    "{name}: {hook:?}"
                );
                println!(
                    "{name}: {} x{} at most {} fuel, {:?}",
                    hook.hook, hook.calls, hook.fuel_used, hook.elapsed
                );
            }
        }
    }
}

#[test]
fn the_self_test_leaves_tenants_alone() {
    let plugin = plugin("priority");
    let policy = TenantPolicy::new(&plugin, "acme", BTreeMap::new());
    let spam = message("bob", b"!spam", 5);
    assert!(matches!(
        from_plugin(policy.on_message(&spam)),
        Verdict::Reject(_)
    ));
    let (stats, counters, idle) = (policy.stats(), policy.counters(), policy.idle_instances());
    // Its sample message is not spam, but a config making its sender a VIP is read.
    plugin
        .self_test(&config(&[("vip_users", "self-test-user")]))
        .unwrap();
    assert_eq!(policy.stats(), stats);
    assert_eq!(policy.counters(), counters);
    assert_eq!(policy.idle_instances(), idle);
}

fn self_test_fails(plugin: &Plugin) -> SelfTestError {
    let err = plugin
        .self_test(&BTreeMap::new())
        .expect_err("a hostile plugin passed the self-test");
    println!("{err}");
    // The message names the hook, for the uploader.
    assert!(err.to_string().contains("`on-message`"), "{err}");
    err
}

/// Every hostile plugin that loads is hostile in `on-message`, the first hook tried.
#[test]
fn hostile_plugins_fail_the_self_test_at_their_hook() {
    let generous_plugin = |name| generous_engine().load(&wasm(name)).unwrap();

    let err = self_test_fails(&plugin("hostile-loop"));
    assert_eq!(err.hook, Hook::OnMessage);
    assert!(
        matches!(
            err.reason,
            FallbackReason::OutOfFuel | FallbackReason::Deadline
        ),
        "{err:?}"
    );

    let err = self_test_fails(&plugin("hostile-trap"));
    assert_eq!(err.hook, Hook::OnMessage);
    assert!(
        matches!(&err.reason, FallbackReason::Trap(why) if why.contains("unreachable")),
        "{err:?}"
    );

    for plugin in [
        plugin("hostile-recursion"),
        generous_plugin("hostile-recursion"),
    ] {
        let err = self_test_fails(&plugin);
        assert!(
            matches!(&err.reason, FallbackReason::Trap(why) if why.contains("stack")),
            "{err:?}"
        );
    }

    // As in `a_memory_bomb_traps_at_the_cap`: fuel runs out first under the default
    // budget; with fuel to spare, the memory cap stops it.
    let err = self_test_fails(&plugin("hostile-memory"));
    assert!(
        matches!(
            err.reason,
            FallbackReason::OutOfFuel | FallbackReason::Deadline | FallbackReason::Trap(_)
        ),
        "{err:?}"
    );
    let err = self_test_fails(&generous_plugin("hostile-memory"));
    assert!(
        matches!(&err.reason, FallbackReason::Trap(why) if why.contains("memory limit exceeded")),
        "{err:?}"
    );

    let err = self_test_fails(&plugin("hostile-huge-output"));
    assert!(
        matches!(
            err.reason,
            FallbackReason::OutOfFuel | FallbackReason::InvalidOutput(_) | FallbackReason::Trap(_)
        ),
        "{err:?}"
    );
    let err = self_test_fails(&generous_plugin("hostile-huge-output"));
    assert!(
        matches!(&err.reason, FallbackReason::InvalidOutput(why) if why.contains("too much data")),
        "{err:?}"
    );
}

/// What the self-test cannot catch: a bug only some real input reaches. The self-test passes;
/// the call that hits the bug falls back like any trap, and the calls after it work.
#[test]
fn a_latent_trap_passes_the_self_test_and_falls_back_on_traffic() {
    let reason = latent_trap("hostile-latent-trap");
    // The panic's message (written to stderr before the `unreachable`) is in the reason,
    // after wasmtime's words.
    assert!(
        matches!(&reason, FallbackReason::Trap(why) if why.contains("unreachable")
            && why.contains("the plugin wrote:")
            && why.contains("hostile-latent-trap: the bug real traffic finds")),
        "{reason:?}"
    );
}

/// An uncaught JavaScript exception is a trap like a Rust panic: the call falls back, the
/// instance is replaced, the next call works.
#[test]
fn a_latent_trap_in_javascript_falls_back_like_rust() {
    let reason = latent_trap("hostile-latent-trap-js");
    assert!(matches!(reason, FallbackReason::Trap(_)), "{reason:?}");
    // componentize-qjs writes nothing to stderr before trapping: no message to pass on.
}

/// The same for an uncaught Python exception.
#[test]
fn a_latent_trap_in_python_falls_back_like_rust() {
    let reason = latent_trap("hostile-latent-trap-py");
    assert!(matches!(reason, FallbackReason::Trap(_)), "{reason:?}");
    // componentize-py writes nothing to stderr before trapping: no message to pass on.
}

/// The latent-trap plugin `name` passes the self-test, answers ordinary messages (low lane),
/// falls back on `!boom` and answers again after; returns why the `!boom` call fell back.
fn latent_trap(name: &str) -> FallbackReason {
    let plugin = plugin(name);
    plugin.self_test(&BTreeMap::new()).unwrap();
    let policy = TenantPolicy::new(&plugin, "mallory", BTreeMap::new());
    let hello = message("mallory", b"hello", 5);
    assert_eq!(
        from_plugin(policy.on_message(&hello)),
        accept(Lane::Low, false)
    );
    let boom = message("mallory", b"!boom", 5);
    let reason = fell_back(policy.on_message(&boom), &boom);
    assert_eq!(
        from_plugin(policy.on_message(&hello)),
        accept(Lane::Low, false)
    );
    still_answers(&policy);
    assert_eq!(policy.stats().fallbacks.traps, 1, "{name}");
    // The latest failure is kept for the tenant's policy status, the successes after it
    // notwithstanding.
    let last = policy.last_failure().expect("a failure is remembered");
    assert_eq!(last.hook, Hook::OnMessage);
    assert_eq!(last.reason, reason.to_string());
    assert!(last.at_ms > 0);
    reason
}

// ---- refused at load ---------------------------------------------------------------------

fn refused(name: &str) -> LoadError {
    match engine().load(&wasm(name)) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e,
    }
}

#[test]
fn file_system_access_is_refused_at_load() {
    let err = refused("hostile-wasi-fs");
    assert!(
        matches!(&err, LoadError::ForbiddenImport { name, why }
            if name.starts_with("wasi:filesystem/") && why.contains("file system access is not available")),
        "{err}"
    );
}

#[test]
fn socket_access_is_refused_at_load() {
    let err = refused("hostile-wasi-sockets");
    assert!(
        matches!(&err, LoadError::ForbiddenImport { name, why }
            if name.starts_with("wasi:sockets/") && why.contains("network access is not available")),
        "{err}"
    );
}

#[test]
fn the_wrong_world_is_refused_at_load() {
    let err = refused("hostile-wrong-world");
    assert!(
        matches!(&err, LoadError::WrongWorld(m)
            if m.contains("switchboard:policy/policy@0.1.0") && m.contains("hostile:wrong-world/policy")),
        "{err}"
    );
}

#[test]
fn a_core_module_is_refused_at_load() {
    let err = refused("hostile-core-module");
    assert!(
        matches!(&err, LoadError::NotAComponent(m) if m.contains("core WebAssembly module")),
        "{err}"
    );
}
