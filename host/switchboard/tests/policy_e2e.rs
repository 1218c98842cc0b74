//! Tenant policy plugins change what clients receive, end to end over QUIC, and hostile
//! plugins are contained: the same tenant keeps being served with fallback verdicts and other
//! tenants never notice.

mod common;

use common::*;
use switchboard_core::{ErrorCode, Lane, PresenceState, ReceiptKind};
use switchboard_wire::{ClientFrame, Flag, ServerFrame};

async fn member(n: &TestNode, tenant: &str, user: &str) -> RawClient {
    let mut c = n.raw().await;
    let w = c.hello(&n.token(tenant, user)).await;
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    // Every session gets its flag set first.
    let first = c.read_push_raw().await;
    assert!(
        matches!(first, Some(ServerFrame::Flags { .. })),
        "{user}: {first:?}"
    );
    c
}

/// A member whose flag set may come after presence notices of the members before it: the
/// node evaluates flags on connect while presence is told at once, and an interpreted plugin
/// (a fresh JavaScript or Python instance: 0.1 to 1 ms) loses that race.
async fn member_flags_in_any_order(n: &TestNode, tenant: &str, user: &str) -> RawClient {
    let mut c = n.raw().await;
    let w = c.hello(&n.token(tenant, user)).await;
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    loop {
        match c.read_push_raw().await {
            Some(ServerFrame::Flags { .. }) => return c,
            Some(ServerFrame::PresenceNotice { .. }) => {}
            other => panic!("{user}: {other:?} before its flags"),
        }
    }
}

#[tokio::test]
async fn the_priority_plugin_picks_lanes_and_rejects() {
    priority_over_quic(plugins_artifacts::PRIORITY).await;
}

/// The reference priority policy written in JavaScript does over QUIC what the Rust one does.
#[tokio::test(flavor = "multi_thread")]
async fn the_priority_plugin_in_javascript_picks_lanes_and_rejects() {
    priority_over_quic(plugins_artifacts::PRIORITY_JS).await;
}

/// The same in Python.
#[tokio::test(flavor = "multi_thread")]
async fn the_priority_plugin_in_python_picks_lanes_and_rejects() {
    priority_over_quic(plugins_artifacts::PRIORITY_PY).await;
}

async fn priority_over_quic(wasm: &str) {
    let n = TestNode::start().await;
    n.bind(
        "acme",
        wasm,
        &[("vip_users", "alice"), ("large_bytes", "100")],
    );
    let mut alice = member_flags_in_any_order(&n, "acme", "alice").await;
    let mut bob = member_flags_in_any_order(&n, "acme", "bob").await;
    let mut carol = member_flags_in_any_order(&n, "acme", "carol").await;
    let big = [b'x'; 500];
    let cases: [(&str, &[u8], Option<Lane>); 5] = [
        ("alice", b"from the boss", Some(Lane::High)),
        ("bob", b"!urgent the build is red", Some(Lane::High)),
        ("bob", &big, Some(Lane::Low)),
        ("bob", b"!spam buy now", None),
        ("bob", b"lunch?", Some(Lane::Normal)),
    ];
    let mut expected = Vec::new();
    for (i, (who, body, lane)) in cases.into_iter().enumerate() {
        let client = if who == "alice" { &mut alice } else { &mut bob };
        client.send(&send(i as u64 + 1, "team", body)).await;
        match (client.read().await.unwrap(), lane) {
            (ServerFrame::Ack { seq, .. }, Some(lane)) => expected.push((seq, lane)),
            (ServerFrame::Error(e), None) => {
                assert_eq!(e.error_code(), Some(ErrorCode::PolicyRejected));
                assert_eq!(e.message, "spam is not allowed here");
            }
            (other, lane) => panic!("case {i}: {other:?} for {lane:?}"),
        }
    }
    // Carol receives the four accepted messages, each with its lane, and never the spam.
    for (seq, lane) in &expected {
        let m = next_deliver(&mut carol).await;
        assert_eq!((m.seq, m.lane), (*seq, *lane));
        assert!(!m.body.starts_with(b"!spam"));
    }
    let m = n.hub().metrics().snapshot();
    assert_eq!(m.policy_rejections, 1);
    assert_eq!(m.policy_fallbacks, 0);
    assert!(
        m.notify_offline_requests >= 1,
        "VIP messages ask for offline notification"
    );
    // Lanes survive the log: a fetch shows the same lanes.
    carol
        .send(&ClientFrame::Fetch {
            request_id: 9,
            group: "team".into(),
            after_seq: 0,
            limit: 10,
        })
        .await;
    let Some(ServerFrame::FetchResult { messages, .. }) = carol.read().await else {
        panic!()
    };
    let lanes: Vec<(u64, Lane)> = messages.iter().map(|m| (m.seq, m.lane)).collect();
    assert_eq!(lanes, expected);
}

#[tokio::test]
async fn the_flags_plugin_sends_each_user_its_flags_on_connect_and_on_change() {
    let n = TestNode::start().await;
    n.bind(
        "acme",
        plugins_artifacts::FLAGS,
        &[("flags", "beta:users:alice;everyone:all")],
    );
    let flags_of = |f: Option<ServerFrame>| match f {
        Some(ServerFrame::Flags { flags }) => flags,
        other => panic!("expected Flags, got {other:?}"),
    };
    // The next push but presence notices (co-members' arrivals, the snapshot).
    async fn next_but_presence(c: &mut RawClient) -> Option<ServerFrame> {
        loop {
            match c.read_push_raw().await {
                Some(ServerFrame::PresenceNotice { .. }) => {}
                other => return other,
            }
        }
    }
    let flag = |name: &str, enabled| Flag {
        name: name.into(),
        enabled,
    };
    let mut alice = n.raw().await;
    alice.hello(&n.token("acme", "alice")).await;
    assert_eq!(
        flags_of(next_but_presence(&mut alice).await),
        vec![flag("beta", true), flag("everyone", true)]
    );
    let mut bob = n.raw().await;
    bob.hello(&n.token("acme", "bob")).await;
    assert_eq!(
        flags_of(next_but_presence(&mut bob).await),
        vec![flag("beta", false), flag("everyone", true)]
    );
    // Rebinding with new rules re-evaluates for connected users.
    n.bind(
        "acme",
        plugins_artifacts::FLAGS,
        &[("flags", "beta:users:alice,bob")],
    );
    assert_eq!(
        flags_of(next_but_presence(&mut bob).await),
        vec![flag("beta", true)]
    );
    // Another tenant has no plugin: an empty set.
    let mut g = n.raw().await;
    g.hello(&n.token("globex", "alice")).await;
    assert_eq!(flags_of(next_but_presence(&mut g).await), vec![]);
}

#[tokio::test]
async fn the_receipts_plugin_aggregates_instead_of_forwarding() {
    let n = TestNode::start().await;
    // team has 3 members: over 2 means aggregate.
    n.bind(
        "acme",
        plugins_artifacts::RECEIPTS,
        &[("aggregate_over", "2")],
    );
    let mut alice = member(&n, "acme", "alice").await;
    let mut bob = member(&n, "acme", "bob").await;
    alice.send(&send(1, "team", b"hi team")).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack { seq: 1, .. })
    ));
    assert_eq!(next_deliver(&mut bob).await.seq, 1);
    bob.send(&ClientFrame::Receipt {
        group: "team".into(),
        seq: 1,
        kind: ReceiptKind::Read,
    })
    .await;
    bob.send(&ClientFrame::Ping { request_id: 5 }).await;
    assert_eq!(bob.read().await, Some(ServerFrame::Pong { request_id: 5 }));
    // Stored for the aggregate, not forwarded one by one. In "closed" (2 members) receipts
    // are forwarded: that notice is the next thing alice's push stream carries.
    alice.send(&send(2, "closed", b"hi bob")).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack { seq: 1, .. })
    ));
    assert_eq!(next_deliver(&mut bob).await.group, "closed");
    bob.send(&ClientFrame::Receipt {
        group: "closed".into(),
        seq: 1,
        kind: ReceiptKind::Read,
    })
    .await;
    // Alice gets the team message's summary ("read by 1 of 3"), then the closed receipt.
    let mut summary = None;
    loop {
        match alice.read_push().await.unwrap() {
            ServerFrame::Deliver(_) => {}
            ServerFrame::ReceiptSummary {
                group,
                seq,
                delivered,
                read,
                members,
            } => summary = Some((group, seq, delivered, read, members)),
            // Bob's and carol's arrivals.
            ServerFrame::PresenceNotice { .. } => {}
            ServerFrame::ReceiptNotice { group, .. } => {
                assert_eq!(
                    group, "closed",
                    "the team receipt was aggregated, not forwarded"
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(summary, Some(("team".to_string(), 1, 1, 1, 3)));
    let m = n.hub().metrics().snapshot();
    assert_eq!((m.receipts_aggregated, m.receipts_forwarded), (1, 1));
    assert_eq!(m.receipt_summaries, 1);
    let stored = switchboard_store::Store::receipts(
        &*n.store,
        &"acme".parse().unwrap(),
        &"team".parse().unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(stored.len(), 1, "aggregated receipts are still stored");
}

#[tokio::test]
async fn the_degradation_plugin_decides_what_is_shed_at_each_level() {
    let n = TestNode::start().await;
    n.bind(
        "acme",
        plugins_artifacts::DEGRADATION,
        &[
            ("shed_presence_at", "1"),
            ("shed_receipts_at", "2"),
            ("defer_background_at", "3"),
        ],
    );
    let mut alice = member(&n, "acme", "alice").await;
    let mut bob = member(&n, "acme", "bob").await;
    // Bob's arrival, told before anything is shed.
    assert_eq!(
        alice.read_push().await,
        Some(ServerFrame::PresenceNotice {
            user: "bob".into(),
            state: PresenceState::Foreground,
            online: true,
        })
    );
    let acme = "acme".parse().unwrap();
    assert_eq!(n.hub().shedding(&acme), Default::default());
    n.hub().set_load_level(1);
    let s = n.hub().shedding(&acme);
    assert!(s.presence && !s.receipts && !s.background_delivery);
    bob.send(&ClientFrame::Presence {
        state: PresenceState::Background,
    })
    .await;
    n.hub().set_load_level(2);
    assert!(n.hub().shedding(&acme).receipts);
    alice.send(&send(1, "closed", b"x")).await;
    assert!(matches!(alice.read().await, Some(ServerFrame::Ack { .. })));
    assert_eq!(next_deliver(&mut bob).await.seq, 1);
    bob.send(&ClientFrame::Receipt {
        group: "closed".into(),
        seq: 1,
        kind: ReceiptKind::Read,
    })
    .await;
    bob.send(&ClientFrame::Ping { request_id: 1 }).await;
    assert_eq!(bob.read().await, Some(ServerFrame::Pong { request_id: 1 }));
    let m = n.hub().metrics().snapshot();
    assert_eq!((m.presence_shed, m.receipts_shed), (1, 1));
    // Back to normal: receipts flow again and reach alice.
    n.hub().set_load_level(0);
    bob.send(&ClientFrame::Receipt {
        group: "closed".into(),
        seq: 1,
        kind: ReceiptKind::Read,
    })
    .await;
    loop {
        match alice.read_push().await.unwrap() {
            ServerFrame::ReceiptNotice { user, .. } => {
                assert_eq!(user, "bob");
                break;
            }
            ServerFrame::Deliver(_) => {}
            other => panic!("presence was shed, so nothing else is expected: {other:?}"),
        }
    }
}

/// A hostile plugin on one tenant: its messages still flow (built-in verdicts), the failures
/// are counted, and a neighbour tenant is served normally throughout.
async fn contained(wasm: &str) {
    let n = TestNode::start().await;
    n.bind("globex", wasm, &[]);
    n.bind(
        "acme",
        plugins_artifacts::PRIORITY,
        &[("vip_users", "alice")],
    );
    let mut g1 = member(&n, "globex", "mallory").await;
    g1.send(&ClientFrame::Join {
        request_id: 100,
        group: "general".into(),
    })
    .await;
    assert!(matches!(g1.read().await, Some(ServerFrame::Joined { .. })));
    let mut acme = member(&n, "acme", "alice").await;
    for i in 1..=3 {
        g1.send(&send(i, "general", b"hello")).await;
        let reply = g1.read().await.unwrap();
        assert!(
            matches!(reply, ServerFrame::Ack { seq, .. } if seq == i),
            "{wasm}: message {i} must be accepted with the fallback verdict, got {reply:?}"
        );
        let m = next_deliver(&mut g1).await;
        assert_eq!((m.seq, m.lane), (i, Lane::Normal));
        acme.send(&send(i, "team", b"neighbour")).await;
        assert!(matches!(acme.read().await, Some(ServerFrame::Ack { .. })));
        assert_eq!(
            next_deliver(&mut acme).await.lane,
            Lane::High,
            "acme's plugin still runs"
        );
    }
    // The tenant's breaker is open now: further messages get the built-in verdict without
    // the plugin being called (a failing plugin stops costing the node its budget).
    let calls_before = n
        .hub()
        .policy(&"globex".parse().unwrap())
        .unwrap()
        .stats()
        .on_message
        .calls;
    for i in 4..=8 {
        g1.send(&send(i, "general", b"hello")).await;
        assert!(
            matches!(g1.read().await, Some(ServerFrame::Ack { .. })),
            "{wasm}"
        );
    }
    let globex = n.hub().policy(&"globex".parse().unwrap()).unwrap();
    // (One trial call per elapsed second is allowed; these five take far less.)
    let calls = globex.stats().on_message.calls;
    assert!(
        calls <= calls_before + 1,
        "{wasm}: the breaker skips the plugin ({calls_before} -> {calls})"
    );
    assert!(n.hub().metrics().snapshot().policy_breaker_skips >= 4);
    let stats = n.hub().policy(&"globex".parse().unwrap()).unwrap().stats();
    let fallbacks = n.hub().metrics().snapshot().policy_fallbacks;
    assert!(
        fallbacks >= 3,
        "{wasm}: every failed call is counted ({fallbacks}); {stats:?}"
    );
    let acme_stats = n.hub().policy(&"acme".parse().unwrap()).unwrap().stats();
    assert_eq!(
        format!("{:?}", acme_stats.fallbacks),
        format!("{:?}", switchboard_policy::FallbackCounts::default()),
        "the neighbour's plugin never failed"
    );
}

#[tokio::test]
async fn an_infinite_loop_is_contained() {
    contained(plugins_artifacts::HOSTILE_LOOP).await;
}

#[tokio::test]
async fn a_memory_bomb_is_contained() {
    contained(plugins_artifacts::HOSTILE_MEMORY).await;
}

#[tokio::test]
async fn deep_recursion_is_contained() {
    contained(plugins_artifacts::HOSTILE_RECURSION).await;
}

#[tokio::test]
async fn a_trapping_plugin_is_contained() {
    contained(plugins_artifacts::HOSTILE_TRAP).await;
}

#[tokio::test]
async fn huge_output_is_contained() {
    contained(plugins_artifacts::HOSTILE_HUGE_OUTPUT).await;
}

/// A node config binding `wasm` to tenant acme (plus `extra` lines for that tenant), parsed
/// the way `switchboard serve` parses its file.
fn config_binding(wasm: &str, extra: &str) -> switchboard::Config {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[[tenants]]\nid = \"acme\"\nsecret_env = \"X\"\nplugin = \"{wasm}\"\n{extra}"
    );
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    switchboard::Config::load(&p).unwrap()
}

#[tokio::test]
async fn a_node_refuses_to_start_with_a_bad_plugin() {
    for (wasm, want) in [
        (plugins_artifacts::HOSTILE_WRONG_WORLD, "world"),
        (plugins_artifacts::HOSTILE_CORE_MODULE, "component"),
        (plugins_artifacts::HOSTILE_WASI_FS, "file system"),
        (plugins_artifacts::HOSTILE_WASI_SOCKETS, "network"),
    ] {
        let cfg = config_binding(wasm, "");
        let e = switchboard::load_policies(&cfg, policy_engine())
            .unwrap_err()
            .to_string();
        assert!(e.to_lowercase().contains(want), "{wasm}: {e}");
        assert!(e.contains("tenant acme"), "{e}");
    }
}

#[tokio::test]
async fn the_minimal_example_plugin_works_from_a_config_file() {
    let cfg = config_binding(
        plugins_artifacts::MINIMAL_PLUGIN,
        "plugin_config = { banned_word = \"durian\" }\n",
    );
    let policies = switchboard::load_policies(&cfg, policy_engine()).unwrap();
    let n = TestNode::start().await;
    for (tenant, bytes, config) in policies {
        let plugin = policy_engine().load(&bytes).unwrap();
        let policy = switchboard_policy::TenantPolicy::new(&plugin, tenant.to_string(), config);
        n.hub()
            .set_policy(&tenant, Some(std::sync::Arc::new(policy)));
    }
    let mut alice = member(&n, "acme", "alice").await;
    alice.send(&send(1, "team", b"who wants durian?")).await;
    assert_eq!(
        error_code(&alice.read().await.unwrap()),
        ErrorCode::PolicyRejected
    );
    alice.send(&send(2, "team", b"who wants mango?")).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack { seq: 1, .. })
    ));
}

#[tokio::test]
async fn urgent_messages_never_break_group_order() {
    let n = TestNode::start().await;
    n.bind(
        "acme",
        plugins_artifacts::PRIORITY,
        &[("large_bytes", "1000")],
    );
    let mut alice = member(&n, "acme", "alice").await;
    // Bob does not read his push stream yet: his connection's flow-control window fills and
    // the rest of the bulk backlog waits in his outbox.
    let mut bob = member(&n, "acme", "bob").await;
    const BULK: u64 = 120;
    let big = vec![b'b'; 30_000]; // > large_bytes: the Low lane
    for i in 1..=BULK {
        alice.send(&send(i, "closed", &big)).await;
    }
    for _ in 0..BULK {
        assert!(matches!(alice.read().await, Some(ServerFrame::Ack { .. })));
    }
    alice
        .send(&send(BULK + 1, "team", b"!urgent the site is down"))
        .await;
    assert!(matches!(alice.read().await, Some(ServerFrame::Ack { .. })));
    // An urgent message in the same group as the backlog cannot overtake it.
    alice
        .send(&send(BULK + 2, "closed", b"!urgent same group"))
        .await;
    assert!(matches!(alice.read().await, Some(ServerFrame::Ack { .. })));

    let mut order = Vec::new();
    while order.len() < BULK as usize + 2 {
        let m = next_deliver(&mut bob).await;
        order.push((m.group.clone(), m.seq, m.lane));
    }
    // That the urgent one overtakes the backlog is delivery_planning.rs's test; here: lanes
    // are as the policy said, and each group's order holds.
    let urgent = order.iter().position(|(g, _, _)| g == "team").unwrap();
    assert_eq!(order[urgent].2, Lane::High);
    let closed: Vec<u64> = order
        .iter()
        .filter(|(g, _, _)| g == "closed")
        .map(|o| o.1)
        .collect();
    assert_eq!(
        closed,
        (1..=BULK + 1).collect::<Vec<_>>(),
        "group order holds, no gaps"
    );
    assert_eq!(
        order.last().unwrap().2,
        Lane::High,
        "same-group urgent waited its turn"
    );
}

#[tokio::test]
async fn a_resend_is_acked_even_if_the_policy_now_rejects_it() {
    let n = TestNode::start().await;
    n.bind(
        "acme",
        plugins_artifacts::MINIMAL_PLUGIN,
        &[("banned_word", "durian")],
    );
    let mut alice = member(&n, "acme", "alice").await;
    let resend = |request_id| ClientFrame::Send {
        request_id,
        group: "team".into(),
        client_msg_id: "same".into(),
        body: bytes::Bytes::from_static(b"mango for lunch"),
    };
    alice.send(&resend(1)).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack {
            seq: 1,
            duplicate: false,
            ..
        })
    ));
    // The policy changes under the client's feet; its resend (lost ack) must still be acked.
    n.bind(
        "acme",
        plugins_artifacts::MINIMAL_PLUGIN,
        &[("banned_word", "mango")],
    );
    alice.send(&resend(2)).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack {
            seq: 1,
            duplicate: true,
            ..
        })
    ));
    // A new message with the same content is judged by the new policy.
    alice.send(&send(3, "team", b"mango again")).await;
    assert_eq!(
        error_code(&alice.read().await.unwrap()),
        ErrorCode::PolicyRejected
    );
}
