//! Isolation between tenants' instances: what one instance left in memory is never visible to
//! the next instance of the same pool slot (part of the `plugins` test binary).

use super::*;

/// A per-run random 64-bit word (the probe's markers must not be guessable by a stale build).
fn random_word() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() | 1
}

/// What `probe-memory` puts in memory: 2 MiB of markers, so the instance's memory grows
/// well past its initial size (stack and data).
const PROBE_SPREAD_BYTES: usize = 2 << 20;
/// How far a probe grows its memory before scanning: past everything a previous instance of
/// the same slot touched (checked against that instance's peak).
const PROBE_GROW_TO_BYTES: usize = 4 << 20;

/// The node's engine (pooling allocator and all), with room for `slots` instances and fuel
/// enough to read 4 MiB of memory word by word (about 10× a normal call's budget): fuel is
/// not what these tests are about.
fn probe_engine(slots: u32) -> PolicyEngine {
    PolicyEngine::new(PolicyLimits {
        max_instances: slots,
        idle_instances_per_tenant: 1,
        fuel_per_call: 200_000_000,
        deadline: Duration::from_secs(2),
        ..PolicyLimits::default()
    })
    .unwrap()
}

fn probe(plugin: &Plugin, tag: u64, me: u64) -> TenantPolicy {
    TenantPolicy::new(
        plugin,
        format!("tenant-{me:016x}"),
        config(&[
            ("tag", &format!("{tag:016x}")),
            ("me", &format!("{me:016x}")),
            ("spread_bytes", &PROBE_SPREAD_BYTES.to_string()),
            ("grow_to_bytes", &PROBE_GROW_TO_BYTES.to_string()),
        ]),
    )
}

/// What a probe's scan found: `Ok(true)` its own marker, `Ok(false)` none, `Err` another
/// tenant's (the plugin's reason). A fallback fails the test: the scan must really run.
fn scan(policy: &TenantPolicy) -> Result<bool, String> {
    match from_plugin(policy.on_message(&message("probe", b"scan", 4))) {
        Verdict::Accept(Delivery {
            lane: Lane::High, ..
        }) => Ok(true),
        Verdict::Accept(Delivery {
            lane: Lane::Low, ..
        }) => Ok(false),
        Verdict::Reject(foreign) => Err(foreign),
        other => panic!("unexpected scan verdict {other:?}"),
    }
}

fn write(policy: &TenantPolicy) {
    assert_eq!(
        from_plugin(policy.on_message(&message("probe", b"write", 5))),
        accept(Lane::Normal, false)
    );
}

/// A tenant's instance writes a marker, is returned to the pool, and the next tenant's
/// instance — in the same pool slot, because the pool has room for `slots` instances and
/// the others are busy — scans all of its linear memory (grown past the previous peak) for
/// it. Churns through `tenants` tenants; `slots - 1` other tenants keep their instances
/// alive throughout, so reuse happens under a full pool. The positive control: every tenant
/// finds its own marker with the same scan, on its reused instance.
fn churn_through_the_pool(slots: u32, tenants: u64) {
    let engine = probe_engine(slots);
    let plugin = engine.load(&wasm("probe-memory")).unwrap();
    let tag = random_word();
    // Tenants that hold the other slots the whole time, each with its marker written.
    let residents: Vec<TenantPolicy> = (0..u64::from(slots) - 1)
        .map(|i| {
            let p = probe(&plugin, tag, random_word() ^ i);
            write(&p);
            p
        })
        .collect();
    let mut previous_peak = 0;
    for i in 0..tenants {
        let me = random_word() ^ (i << 32);
        let policy = probe(&plugin, tag, me);
        // The pool is full but for the slot the previous tenant gave back.
        let clean = scan(&policy);
        assert_eq!(
            clean,
            Ok(false),
            "tenant {i} (pool of {slots}) saw another tenant's memory"
        );
        let stats = policy.stats();
        assert!(
            stats.memory_peak_bytes >= previous_peak,
            "tenant {i}'s scan covered {} bytes; the previous instance used {previous_peak}",
            stats.memory_peak_bytes
        );
        write(&policy);
        assert_eq!(
            scan(&policy),
            Ok(true),
            "tenant {i} did not find its own marker"
        );
        let stats = policy.stats();
        assert_eq!(stats.instantiations, 1, "the three calls used one instance");
        assert_eq!(stats.fallbacks.total(), 0);
        previous_peak = stats.memory_peak_bytes;
        if i == 0 {
            eprintln!(
                "probe-memory: peak {} KiB, scan fuel {} (budget {})",
                previous_peak >> 10,
                stats.fuel_used_max,
                engine.limits().fuel_per_call
            );
            // The pool really is full: another tenant gets no instance while this one holds
            // the last slot, so the next tenant's instance takes this one's place.
            let outsider = probe(&plugin, tag, 0);
            assert!(matches!(
                outsider.on_message(&message("probe", b"scan", 4)).source,
                Source::Fallback(FallbackReason::Unavailable(_))
            ));
        }
        drop(policy);
    }
    // The residents still see only their own markers.
    for resident in &residents {
        assert_eq!(scan(resident), Ok(true));
    }
}

#[test]
fn pooled_instances_never_show_one_tenants_memory_to_another() {
    // One slot: every instance is made in the memory the previous tenant's just left.
    churn_through_the_pool(1, 24);
    // Four slots, three held by other tenants: reuse under a full pool.
    churn_through_the_pool(4, 24);
}

/// The scan can fail: a marker with another tenant's id, planted in the probe's own memory
/// (`write <id>`), is found and named; so is the tenant's own, on its next call (the same
/// instance, reused from the tenant's idle pool).
#[test]
fn the_probe_finds_a_foreign_marker_when_one_is_there() {
    let engine = probe_engine(2);
    let plugin = engine.load(&wasm("probe-memory")).unwrap();
    let tag = random_word();
    let policy = probe(&plugin, tag, 0xaaaa);
    assert_eq!(
        scan(&policy),
        Ok(false),
        "nothing before anything is written"
    );
    write(&policy);
    assert_eq!(scan(&policy), Ok(true));
    assert_eq!(
        from_plugin(policy.on_message(&message("probe", b"write 00000000000000bb", 22))),
        accept(Lane::Normal, false)
    );
    let found = scan(&policy).unwrap_err();
    assert!(found.starts_with("foreign 00000000000000bb at "), "{found}");
    assert_eq!(policy.stats().instantiations, 1);
}

#[test]
fn a_heavy_plugin_spends_its_budget_and_never_fails() {
    let fuel = PolicyLimits::default().fuel_per_call;
    let m = message("bob", b"hi", 2);
    let spins = |n: u64| tenant("heavy", "acme", &[("spins", &n.to_string())]);
    let light = spins(1_000);
    assert_eq!(
        from_plugin(light.on_message(&m)),
        accept(Lane::Normal, false)
    );
    let per_spin = light.stats().fuel_used_max / 1_000;
    assert!(per_spin > 0);
    // Spins for about 80% of the fuel: every call succeeds, near the budget.
    let heavy = spins(fuel * 8 / 10 / per_spin);
    for _ in 0..5 {
        assert_eq!(
            from_plugin(heavy.on_message(&m)),
            accept(Lane::Normal, false)
        );
    }
    let stats = heavy.stats();
    eprintln!(
        "heavy: {per_spin} fuel per spin, {} of {fuel} fuel per call, {:?} per call on average",
        stats.fuel_used_max,
        stats.on_message.latency_mean().unwrap()
    );
    assert!(stats.fuel_used_max > fuel / 2 && stats.fuel_used_max < fuel);
    // Twice as much is over budget: stopped, and the default answers.
    let over = spins(fuel * 2 / per_spin);
    assert!(matches!(
        over.on_message(&m).source,
        Source::Fallback(FallbackReason::OutOfFuel | FallbackReason::Deadline)
    ));
}

#[test]
fn a_swap_keeps_counters_and_in_flight_policies_finish() {
    let old = Arc::new(tenant("priority", "acme", &[]));
    let spam = message("bob", b"!spam", 5);
    assert!(matches!(
        from_plugin(old.on_message(&spam)),
        Verdict::Reject(_)
    ));
    // Swapping is replacing the Arc; whoever still holds the old one keeps using it.
    let held = old.clone();
    let new = Arc::new(TenantPolicy::with_counters(
        &plugin("priority"),
        "acme",
        config(&[("vip_users", "bob")]),
        old.counters_handle(),
    ));
    new.prewarm().unwrap();
    drop(old);
    assert!(matches!(
        from_plugin(held.on_message(&spam)),
        Verdict::Reject(_)
    ));
    assert_eq!(
        from_plugin(new.on_message(&message("bob", b"hi", 2))),
        accept(Lane::High, true)
    );
    assert!(matches!(
        from_plugin(new.on_message(&spam)),
        Verdict::Reject(_)
    ));
    assert_eq!(new.counters().get("priority_spam_rejected"), Some(&3));
}

#[test]
fn tenant_policy_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TenantPolicy>();
    check::<Plugin>();
    check::<PolicyEngine>();
}
