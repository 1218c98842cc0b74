//! The upload self-test (`Plugin::self_test`) on components written in the text format, so
//! each one fails in exactly one hook for exactly one sample input. The real plugins of
//! `plugins/` (first-party and hostile) are self-tested in `plugins.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use switchboard_policy::{
    FallbackReason, Hook, Plugin, PolicyEngine, PolicyLimits, SelfTestError, TenantPolicy,
};

fn engine() -> PolicyEngine {
    PolicyEngine::new(PolicyLimits {
        max_instances: 8,
        // Wall-clock time on a busy test machine; the fuel budget is the default.
        deadline: Duration::from_secs(2),
        ..PolicyLimits::default()
    })
    .unwrap()
}

/// The core functions' bodies of a policy component. Each gets the hook's flattened
/// parameters; those returning a pointer (`on-message`, `evaluate-flags`, `on-load`) find
/// zeroed memory at 16, which reads as `accept` on the high lane, an empty list, and no
/// shedding.
struct Hooks {
    on_message: &'static str,
    on_receipt: &'static str,
    /// Parameter 2 is the `group` option's discriminant (1 = some).
    evaluate_flags: &'static str,
    /// Parameter 0 is the load level.
    on_load: &'static str,
}

const WELL_BEHAVED: Hooks = Hooks {
    on_message: "i32.const 16",
    on_receipt: "i32.const 0",
    evaluate_flags: "i32.const 16",
    on_load: "i32.const 16",
};

/// A component of the `tenant-policy` world (no imports) with the given hook bodies.
fn policy(hooks: &Hooks) -> Vec<u8> {
    let Hooks {
        on_message,
        on_receipt,
        evaluate_flags,
        on_load,
    } = hooks;
    let opts = r#"(memory (core memory $i "memory")) (realloc (core func $i "realloc"))"#;
    wat::parse_str(format!(
        r#"(component
  (type $lane' (enum "high" "normal" "low"))
  (export $lane "lane" (type $lane'))
  (type $message-info' (record (field "group" string) (field "sender" string)
    (field "body-size" u32) (field "body-prefix" (list u8)) (field "group-size" u32)
    (field "connected-members" u32)))
  (export $message-info "message-info" (type $message-info'))
  (type $delivery' (record (field "lane" $lane) (field "notify-offline" bool)))
  (export $delivery "delivery" (type $delivery'))
  (type $verdict' (variant (case "accept" $delivery) (case "reject" string)))
  (export $verdict "verdict" (type $verdict'))
  (type $receipt-kind' (enum "delivered" "read"))
  (export $receipt-kind "receipt-kind" (type $receipt-kind'))
  (type $receipt-info' (record (field "group" string) (field "seq" u64) (field "reader" string)
    (field "kind" $receipt-kind) (field "group-size" u32)))
  (export $receipt-info "receipt-info" (type $receipt-info'))
  (type $receipt-action' (enum "forward" "aggregate" "drop"))
  (export $receipt-action "receipt-action" (type $receipt-action'))
  (type $flag-context' (record (field "user" string) (field "group" (option string))))
  (export $flag-context "flag-context" (type $flag-context'))
  (type $flag' (record (field "name" string) (field "enabled" bool)))
  (export $flag "flag" (type $flag'))
  (type $load-info' (record (field "level" u8) (field "tenant-message-rate" u32)
    (field "tenant-connections" u32)))
  (export $load-info "load-info" (type $load-info'))
  (type $shedding' (record (field "receipts" bool) (field "presence" bool)
    (field "background-delivery" bool)))
  (export $shedding "shedding" (type $shedding'))
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "on-message") (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      {on_message})
    (func (export "on-receipt") (param i32 i32 i64 i32 i32 i32 i32) (result i32)
      {on_receipt})
    (func (export "evaluate-flags") (param i32 i32 i32 i32 i32) (result i32)
      {evaluate_flags})
    (func (export "on-load") (param i32 i32 i32) (result i32)
      {on_load}))
  (core instance $i (instantiate $m))
  (func $on-message (param "message" $message-info) (result $verdict)
    (canon lift (core func $i "on-message") {opts}))
  (func $on-receipt (param "receipt" $receipt-info) (result $receipt-action)
    (canon lift (core func $i "on-receipt") {opts}))
  (func $evaluate-flags (param "context" $flag-context) (result (list $flag))
    (canon lift (core func $i "evaluate-flags") {opts}))
  (func $on-load (param "load" $load-info) (result $shedding)
    (canon lift (core func $i "on-load") {opts}))
  (instance $policy
    (export "lane" (type $lane))
    (export "message-info" (type $message-info))
    (export "delivery" (type $delivery))
    (export "verdict" (type $verdict))
    (export "receipt-kind" (type $receipt-kind))
    (export "receipt-info" (type $receipt-info))
    (export "receipt-action" (type $receipt-action))
    (export "flag-context" (type $flag-context))
    (export "flag" (type $flag))
    (export "load-info" (type $load-info))
    (export "shedding" (type $shedding))
    (export "on-message" (func $on-message))
    (export "on-receipt" (func $on-receipt))
    (export "evaluate-flags" (func $evaluate-flags))
    (export "on-load" (func $on-load)))
  (export "switchboard:policy/policy@0.1.0" (instance $policy)))"#
    ))
    .unwrap()
}

fn load(engine: &PolicyEngine, hooks: &Hooks) -> Plugin {
    engine
        .load(&policy(hooks))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn fails(hooks: &Hooks) -> SelfTestError {
    let err = load(&engine(), hooks)
        .self_test(&BTreeMap::new())
        .expect_err("the self-test passed");
    // Every failure renders as a sentence naming the hook.
    let text = err.to_string();
    assert!(text.contains(&format!("`{}`", err.hook)), "{text}");
    err
}

#[test]
fn a_well_behaved_plugin_passes_with_a_report_per_hook() {
    let engine = engine();
    let report = load(&engine, &WELL_BEHAVED)
        .self_test(&BTreeMap::new())
        .unwrap();
    let hooks: Vec<Hook> = report.hooks.iter().map(|h| h.hook).collect();
    assert_eq!(hooks, Hook::ALL);
    let calls: Vec<u32> = report.hooks.iter().map(|h| h.calls).collect();
    assert_eq!(
        calls,
        [1, 1, 2, 2],
        "flags with and without a group, load 0 and 3"
    );
    for hook in &report.hooks {
        assert!(hook.fuel_used > 0, "{hook:?}");
        assert!(
            hook.fuel_used < 1_000,
            "a constant costs next to nothing: {hook:?}"
        );
        assert!(hook.elapsed < report.deadline, "{hook:?}");
    }
    assert_eq!(report.fuel_per_call, PolicyLimits::default().fuel_per_call);
    assert_eq!(
        report.hook(Hook::OnLoad).map(|h| h.calls),
        Some(2),
        "{report:?}"
    );
}

#[test]
fn a_trap_in_a_later_hook_is_named_with_its_input() {
    let err = fails(&Hooks {
        evaluate_flags: "local.get 2 (if (then unreachable)) i32.const 16",
        ..WELL_BEHAVED
    });
    assert_eq!(err.hook, Hook::EvaluateFlags);
    assert_eq!(err.case, "with a group");
    assert!(
        matches!(&err.reason, FallbackReason::Trap(why) if why.contains("unreachable")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("self-test failed: `evaluate-flags` (with a group) trapped"),
        "{err}"
    );
}

#[test]
fn a_loop_at_critical_load_runs_out_of_fuel() {
    let err = fails(&Hooks {
        on_load: "(if (i32.eq (local.get 0) (i32.const 3)) (then (loop br 0))) i32.const 16",
        ..WELL_BEHAVED
    });
    assert_eq!((err.hook, err.case), (Hook::OnLoad, "load level 3"));
    assert_eq!(err.reason, FallbackReason::OutOfFuel, "{err:?}");
    assert!(err.to_string().contains("ran out of fuel"), "{err}");
}

#[test]
fn invalid_output_is_named() {
    // `receipt-action` has three cases; 7 is not one of them.
    let err = fails(&Hooks {
        on_receipt: "i32.const 7",
        ..WELL_BEHAVED
    });
    assert_eq!(err.hook, Hook::OnReceipt);
    assert!(
        matches!(err.reason, FallbackReason::InvalidOutput(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not accept"), "{err}");
}

#[test]
fn no_instance_to_run_on_is_unavailable() {
    let engine = PolicyEngine::new(PolicyLimits {
        max_instances: 1,
        deadline: Duration::from_secs(2),
        ..PolicyLimits::default()
    })
    .unwrap();
    let plugin = load(&engine, &WELL_BEHAVED);
    let tenant = TenantPolicy::new(&plugin, "acme", BTreeMap::new());
    tenant.prewarm().unwrap();
    let err = plugin.self_test(&BTreeMap::new()).unwrap_err();
    assert_eq!(err.hook, Hook::OnMessage);
    assert!(
        matches!(err.reason, FallbackReason::Unavailable(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("try again later"), "{err}");
    drop(tenant);
    plugin.self_test(&BTreeMap::new()).unwrap();
}
