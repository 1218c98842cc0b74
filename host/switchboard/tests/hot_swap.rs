//! Swapping a tenant's policy under traffic: every message is handled by exactly one policy
//! value and delivered exactly once, in order (ARCHITECTURE.md, "Policy" invariants). This
//! exercises the swap itself (`Hub::set_policy`); `control_plane.rs` drives swaps through the
//! config store and the control plane.

mod common;

use std::sync::Arc;

use common::*;
use switchboard_core::Lane;
use switchboard_policy::TenantPolicy;
use switchboard_wire::{ClientFrame, ServerFrame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_across_ten_thousand_messages_lose_and_duplicate_nothing() {
    a_hundred_swaps(plugins_artifacts::PRIORITY).await;
}

/// The same with the reference priority plugin in JavaScript: every swap instantiates QuickJS
/// afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_of_a_javascript_plugin_lose_and_duplicate_nothing() {
    a_hundred_swaps(plugins_artifacts::PRIORITY_JS).await;
}

/// The same in Python (CPython, about 1 ms per instantiation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_swaps_of_a_python_plugin_lose_and_duplicate_nothing() {
    a_hundred_swaps(plugins_artifacts::PRIORITY_PY).await;
}

async fn a_hundred_swaps(wasm: &str) {
    const MESSAGES: u64 = 10_000;
    const SWAP_EVERY: u64 = 100;
    let n = TestNode::start().await;
    // A 2 s deadline: this checks the swap, not the budget (see `swap_test_engine`).
    let engine = swap_test_engine();
    let plugin = engine
        .load(&std::fs::read(wasm).unwrap())
        .unwrap_or_else(|e| panic!("{wasm}: {e}"));
    // Two "versions": alice is a VIP (High lane) in odd versions and not (Normal) in even ones.
    let version = |i: usize| {
        let vip = if i % 2 == 1 { "alice" } else { "nobody" };
        Arc::new(TenantPolicy::new(
            &plugin,
            "acme",
            [("vip_users".to_string(), vip.to_string())].into(),
        ))
    };
    let acme = "acme".parse().unwrap();
    let mut versions = vec![version(0)];
    n.hub().set_policy(&acme, Some(versions[0].clone()));

    let mut alice = n.raw().await;
    assert!(matches!(
        alice.hello(&n.token("acme", "alice")).await,
        ServerFrame::Welcome { .. }
    ));
    let mut bob = n.raw().await;
    assert!(matches!(
        bob.hello(&n.token("acme", "bob")).await,
        ServerFrame::Welcome { .. }
    ));

    let receiver = tokio::spawn(async move {
        let mut lanes = Vec::with_capacity(MESSAGES as usize);
        while lanes.len() < MESSAGES as usize {
            match bob.read_push().await {
                Some(ServerFrame::Deliver(m)) => {
                    assert_eq!(
                        m.seq,
                        lanes.len() as u64 + 1,
                        "in order, no gaps, no repeats"
                    );
                    lanes.push(m.lane);
                }
                Some(_) => {}
                None => panic!("bob's push stream ended"),
            }
        }
        lanes
    });

    // Keep up to 64 sends in flight; swap after every SWAP_EVERY acks.
    let mut sent = 0u64;
    let mut acked = 0u64;
    while acked < MESSAGES {
        while sent < MESSAGES && sent - acked < 64 {
            sent += 1;
            alice
                .send(&ClientFrame::Send {
                    request_id: sent,
                    group: "team".into(),
                    client_msg_id: format!("m{sent}"),
                    body: body("x"),
                })
                .await;
        }
        match alice.read().await {
            Some(ServerFrame::Ack {
                duplicate: false, ..
            }) => acked += 1,
            other => panic!("expected a fresh Ack, got {other:?}"),
        }
        if acked.is_multiple_of(SWAP_EVERY) && acked < MESSAGES {
            let v = version(versions.len());
            versions.push(v.clone());
            n.hub().set_policy(&acme, Some(v));
        }
    }
    let lanes = receiver.await.unwrap();
    assert_eq!(
        versions.len() as u64,
        MESSAGES / SWAP_EVERY,
        "100 versions, 99 swaps"
    );

    // Exactly one verdict per message, across all versions, and none fell back.
    let calls: u64 = versions.iter().map(|v| v.stats().on_message.calls).sum();
    assert_eq!(
        calls, MESSAGES,
        "each message was judged by exactly one version"
    );
    let m = n.hub().metrics().snapshot();
    assert_eq!(
        (m.messages_accepted, m.duplicates, m.policy_fallbacks),
        (MESSAGES, 0, 0)
    );
    // Both versions really ran: their verdicts show in the lanes.
    let high = lanes.iter().filter(|l| **l == Lane::High).count();
    assert!(high > 0 && high < MESSAGES as usize, "high = {high}");
}
