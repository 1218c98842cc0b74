//! Rate limits over real QUIC: every limit refuses with `RateLimited` and a retry-after, a
//! refused request leaves no trace, neighbours (other users, other tenants) are not affected,
//! and the same request succeeds once the client has waited the server's retry-after.

mod common;
#[path = "common/sdk.rs"]
mod sdk;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use switchboard_client::{Client, Event, ReconnectPolicy};
use switchboard_core::{ErrorCode, GroupId, Limits, PresenceState, ReceiptKind, TenantId};
use switchboard_store::Store;
use switchboard_wire::{ClientFrame, ErrorFrame, ServerFrame};

fn send(request_id: u64, group: &str, id: &str) -> ClientFrame {
    ClientFrame::Send {
        request_id,
        group: group.into(),
        client_msg_id: id.into(),
        body: body(id),
    }
}

fn join(request_id: u64, group: &str) -> ClientFrame {
    ClientFrame::Join {
        request_id,
        group: group.into(),
    }
}

async fn welcomed(n: &TestNode, tenant: &str, user: &str) -> RawClient {
    let mut c = n.raw().await;
    let w = c.hello(&n.token(tenant, user)).await;
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    c
}

fn request_id(f: &ServerFrame) -> u64 {
    match f {
        ServerFrame::Ack { request_id, .. }
        | ServerFrame::Joined { request_id, .. }
        | ServerFrame::Left { request_id, .. }
        | ServerFrame::FetchResult { request_id, .. }
        | ServerFrame::Pong { request_id } => *request_id,
        ServerFrame::Error(e) => e.request_id,
        other => panic!("not an answer: {other:?}"),
    }
}

/// Reads `count` answers from the control stream, by request id (acks come from the
/// committer, refusals at once, so their order is not fixed).
async fn answers(c: &mut RawClient, count: usize) -> HashMap<u64, ServerFrame> {
    let mut out = HashMap::new();
    while out.len() < count {
        let f = c.read().await.expect("control stream ended");
        out.insert(request_id(&f), f);
    }
    out
}

/// Sends one request and reads its answer.
async fn ask(c: &mut RawClient, f: &ClientFrame) -> ServerFrame {
    c.send(f).await;
    c.read().await.expect("an answer")
}

/// The retry-after of a `RateLimited` refusal, checked to be plausible: the limits here
/// refill at least one token per second.
fn rate_limited(f: &ServerFrame) -> Duration {
    let ServerFrame::Error(ErrorFrame {
        code,
        message,
        retry_after_ms,
        ..
    }) = f
    else {
        panic!("expected RateLimited, got {f:?}");
    };
    assert_eq!(
        ErrorCode::from_u16(*code),
        Some(ErrorCode::RateLimited),
        "{message}"
    );
    assert!(
        (1..=1_000).contains(retry_after_ms),
        "retry_after_ms {retry_after_ms}: {message}"
    );
    Duration::from_millis(u64::from(*retry_after_ms))
}

fn acked(f: &ServerFrame) -> (u64, bool) {
    match f {
        ServerFrame::Ack { seq, duplicate, .. } => (*seq, *duplicate),
        other => panic!("expected Ack, got {other:?}"),
    }
}

/// The client_msg_ids stored in `acme/team`, in order.
fn stored_ids(n: &TestNode, tenant: &str, group: &str) -> Vec<String> {
    n.store
        .read_after(
            &TenantId::new(tenant).unwrap(),
            &GroupId::new(group).unwrap(),
            0,
            1_000,
        )
        .unwrap()
        .into_iter()
        .map(|m| m.client_msg_id)
        .collect()
}

#[tokio::test]
async fn a_user_over_its_message_limit_is_refused_and_nothing_is_stored() {
    let limits = Limits {
        user_messages_per_sec: 1,
        user_messages_burst: 3,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut alice = welcomed(&n, "acme", "alice").await;
    let mut alice_phone = welcomed(&n, "acme", "alice").await;
    let mut bob = welcomed(&n, "acme", "bob").await;

    // Pipelined, so all four are judged within the same second: the fourth is over.
    for (i, id) in ["m1", "m2", "m3", "m4"].into_iter().enumerate() {
        alice.send(&send(i as u64 + 1, "team", id)).await;
    }
    let a = answers(&mut alice, 4).await;
    for r in 1..=3 {
        assert_eq!(acked(&a[&r]), (r, false));
    }
    let retry = rate_limited(&a[&4]);
    let ServerFrame::Error(e) = &a[&4] else {
        unreachable!()
    };
    assert!(e.message.contains("user alice"), "{}", e.message);
    // The limit is the user's, over all its connections ...
    rate_limited(&ask(&mut alice_phone, &send(1, "team", "p1")).await);
    // ... and only the user's: a neighbour in the same tenant sends at once.
    assert_eq!(
        acked(&ask(&mut bob, &send(1, "team", "b1")).await),
        (4, false)
    );

    // Nothing of the refused sends exists: not stored, not delivered, not counted.
    assert_eq!(stored_ids(&n, "acme", "team"), ["m1", "m2", "m3", "b1"]);
    let m = n.hub().metrics().snapshot();
    assert_eq!((m.messages_accepted, m.rate_limited_messages), (4, 2));
    assert_eq!(m.duplicates, 0);

    // After the server's retry-after, the same message is accepted, once.
    tokio::time::sleep(retry).await;
    assert_eq!(
        acked(&ask(&mut alice, &send(5, "team", "m4")).await),
        (5, false)
    );
    // A resend is a request like any other: it may be limited too, and is then a duplicate.
    let mut again = ask(&mut alice, &send(6, "team", "m4")).await;
    if let ServerFrame::Error(_) = again {
        tokio::time::sleep(rate_limited(&again)).await;
        again = ask(&mut alice, &send(7, "team", "m4")).await;
    }
    assert_eq!(acked(&again), (5, true), "accepted once");
    assert_eq!(
        stored_ids(&n, "acme", "team"),
        ["m1", "m2", "m3", "b1", "m4"]
    );
    // Bob saw every stored message once, in order, and never the refused ones.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        if let Some(ServerFrame::Deliver(m)) = bob.read_push().await {
            seen.push((m.seq, m.client_msg_id));
        }
    }
    let want: Vec<(u64, String)> = ["m1", "m2", "m3", "b1", "m4"]
        .iter()
        .enumerate()
        .map(|(i, id)| (i as u64 + 1, id.to_string()))
        .collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn a_tenant_over_its_message_limit_refuses_all_its_users_but_no_other_tenant() {
    let limits = Limits {
        tenant_messages_per_sec: 1,
        tenant_messages_burst: 2,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut alice = welcomed(&n, "acme", "alice").await;
    let mut bob = welcomed(&n, "acme", "bob").await;
    let mut initech = welcomed(&n, "globex", "alice").await;
    assert!(matches!(
        ask(&mut initech, &join(1, "general")).await,
        ServerFrame::Joined { .. }
    ));
    alice.send(&send(3, "team", "a1")).await;
    alice.send(&send(4, "team", "a2")).await;
    let a = answers(&mut alice, 2).await;
    assert_eq!((acked(&a[&3]).0, acked(&a[&4]).0), (1, 2));
    // Bob has sent nothing, but his tenant has used its burst.
    let refused = ask(&mut bob, &send(1, "team", "b1")).await;
    let retry = rate_limited(&refused);
    let ServerFrame::Error(e) = &refused else {
        unreachable!()
    };
    assert!(e.message.contains("tenant acme"), "{}", e.message);
    // Another tenant's users are not affected: globex has its own burst of 2.
    for (r, id) in [(2, "g1"), (3, "g2")] {
        assert!(matches!(
            ask(&mut initech, &send(r, "general", id)).await,
            ServerFrame::Ack { .. }
        ));
    }
    assert_eq!(stored_ids(&n, "acme", "team"), ["a1", "a2"]);

    tokio::time::sleep(retry).await;
    assert_eq!(
        acked(&ask(&mut bob, &send(2, "team", "b1")).await),
        (3, false)
    );
    // A refusal by the tenant's limit did not use Bob's own.
    assert_eq!(n.hub().metrics().snapshot().rate_limited_messages, 1);
}

#[tokio::test]
async fn receipts_over_the_user_limit_are_refused_and_not_stored() {
    let limits = Limits {
        user_receipts_per_sec: 1,
        user_receipts_burst: 2,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut alice = welcomed(&n, "acme", "alice").await;
    let mut bob = welcomed(&n, "acme", "bob").await;
    let mut carol = welcomed(&n, "acme", "carol").await;
    for (r, id) in [(1, "m1"), (2, "m2"), (3, "m3")] {
        alice.send(&send(r, "team", id)).await;
    }
    answers(&mut alice, 3).await;
    let receipt = |seq| ClientFrame::Receipt {
        group: "team".into(),
        seq,
        kind: ReceiptKind::Read,
    };
    for seq in 1..=3 {
        bob.send(&receipt(seq)).await;
    }
    // Receipts have no answer on success; the refusal has request id 0.
    let refused = bob.read().await.unwrap();
    assert_eq!(request_id(&refused), 0);
    let retry = rate_limited(&refused);
    // Carol's receipts are hers to spend.
    carol.send(&receipt(3)).await;

    let tenant = TenantId::new("acme").unwrap();
    let team = GroupId::new("team").unwrap();
    let readers = |seq| -> Vec<String> {
        let mut r: Vec<String> = n
            .store
            .receipts(&tenant, &team, seq)
            .unwrap()
            .into_iter()
            .map(|r| r.user.to_string())
            .collect();
        r.sort();
        r
    };
    // The sender is told of exactly the accepted receipts, in order.
    let mut notices = Vec::new();
    while notices.len() < 3 {
        if let Some(ServerFrame::ReceiptNotice { seq, user, .. }) = alice.read_push().await {
            notices.push((seq, user));
        }
    }
    assert_eq!(
        notices,
        [(1, "bob".into()), (2, "bob".into()), (3, "carol".into())]
    );
    assert_eq!(
        readers(3),
        ["carol"],
        "bob's refused receipt was not stored"
    );
    assert_eq!(n.hub().metrics().snapshot().rate_limited_receipts, 1);

    tokio::time::sleep(retry).await;
    bob.send(&receipt(3)).await;
    let Some(ServerFrame::ReceiptNotice { seq, user, .. }) = alice.read_push().await else {
        panic!("expected bob's receipt");
    };
    assert_eq!((seq, user.as_str()), (3, "bob"));
    assert_eq!(readers(3), ["bob", "carol"]);
}

#[tokio::test]
async fn joins_over_the_user_limit_are_refused_and_a_reconnect_does_not_reset_them() {
    let limits = Limits {
        user_joins_per_sec: 1,
        user_joins_burst: 2,
        // Small buckets all round, so the parked state's lifetime is short.
        user_messages_burst: 20_000,
        user_receipts_burst: 1_000,
        user_presence_burst: 2,
        ..Limits::default()
    };
    let refill = Duration::from_millis(
        [
            limits.user_joins(),
            limits.user_messages(),
            limits.user_receipts(),
            limits.user_presence(),
        ]
        .iter()
        .map(|r| r.refill_ms())
        .max()
        .unwrap(),
    );
    let n = TestNode::start_with(limits).await;
    let mut alice = welcomed(&n, "acme", "alice").await;
    let sent_at = Instant::now();
    alice.send(&join(1, "general")).await;
    alice
        .send(&ClientFrame::Leave {
            request_id: 2,
            group: "general".into(),
        })
        .await;
    alice.send(&join(3, "general")).await;
    let a = answers(&mut alice, 3).await;
    assert!(matches!(a[&1], ServerFrame::Joined { .. }));
    assert!(matches!(a[&2], ServerFrame::Left { .. }));
    let first_retry = rate_limited(&a[&3]);
    // The refused join changed nothing: Alice is not a member.
    let f = ask(
        &mut alice,
        &ClientFrame::Fetch {
            request_id: 4,
            group: "general".into(),
            after_seq: 0,
            limit: 1,
        },
    )
    .await;
    assert_eq!(error_code(&f), ErrorCode::NotMember);
    // A neighbour joins at once.
    let mut bob = welcomed(&n, "acme", "bob").await;
    assert!(matches!(
        ask(&mut bob, &join(1, "general")).await,
        ServerFrame::Joined { .. }
    ));

    // Alice's last session goes; her half-used buckets stay (parked) ...
    alice.conn.close(0u32.into(), b"bye");
    wait_until(|| n.hub().tenant_sessions(&TenantId::new("acme").unwrap()) == 1).await;
    assert_eq!(n.hub().tracked_users(), 2, "bob, and alice's parked limits");
    // ... so reconnecting does not buy a fresh burst.
    let mut alice = welcomed(&n, "acme", "alice").await;
    let f = ask(&mut alice, &join(1, "general")).await;
    match &f {
        ServerFrame::Error(_) => {
            let retry = rate_limited(&f);
            tokio::time::sleep(retry).await;
            assert!(matches!(
                ask(&mut alice, &join(2, "general")).await,
                ServerFrame::Joined { .. }
            ));
        }
        // Only legitimate if a token refilled meanwhile (a very slow machine).
        ServerFrame::Joined { .. } => {
            assert!(sent_at.elapsed() + Duration::from_millis(1) >= first_retry)
        }
        other => panic!("{other:?}"),
    }

    // Memory: once the buckets have refilled, a user without sessions is forgotten.
    alice.conn.close(0u32.into(), b"bye");
    wait_until(|| n.hub().tenant_sessions(&TenantId::new("acme").unwrap()) == 1).await;
    tokio::time::sleep(refill).await;
    let carol = welcomed(&n, "acme", "carol").await; // a session opening prunes
    assert_eq!(n.hub().tracked_users(), 2, "bob and carol only");
    drop(carol);
}

#[tokio::test]
async fn a_tenant_at_its_connection_cap_is_refused_at_hello_and_no_other_tenant_is() {
    let limits = Limits {
        tenant_max_connections: 2,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let alice = welcomed(&n, "acme", "alice").await;
    let _bob = welcomed(&n, "acme", "bob").await;
    let mut carol = n.raw().await;
    let refused = carol.hello(&n.token("acme", "carol")).await;
    let retry = rate_limited(&refused);
    assert_eq!(
        carol.closed_code().await,
        Some(ErrorCode::RateLimited.as_u16().into()),
        "a refused hello ends the connection"
    );
    let _globex = welcomed(&n, "globex", "carol").await;
    let m = n.hub().metrics().snapshot();
    assert_eq!(m.rate_limited_connections, 1);
    assert_eq!(m.protocol_errors, 0, "a rate limit is not a protocol error");

    // A slot frees up; after the retry-after Carol gets in.
    alice.conn.close(0u32.into(), b"bye");
    tokio::time::sleep(retry).await;
    wait_until(|| n.hub().tenant_sessions(&TenantId::new("acme").unwrap()) == 1).await;
    let _carol = welcomed(&n, "acme", "carol").await;
    assert_eq!(n.hub().tenant_sessions(&TenantId::new("acme").unwrap()), 2);
}

#[tokio::test]
async fn new_connections_over_the_tenant_rate_are_refused_until_the_retry_after() {
    let limits = Limits {
        tenant_connections_per_sec: 1,
        tenant_connections_burst: 2,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let _alice = welcomed(&n, "acme", "alice").await;
    let _bob = welcomed(&n, "acme", "bob").await;
    // Through the SDK: a typed, retryable error carrying the node's retry-after.
    let e = Client::connect(n.client_config("acme", "carol"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
    assert!(e.is_retryable());
    let retry = e.retry_after().expect("a retry-after");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    // Another tenant connects meanwhile.
    let _globex = welcomed(&n, "globex", "carol").await;

    tokio::time::sleep(retry).await;
    let (carol, _events) = n.client("acme", "carol").await;
    assert!(carol.ping().await.is_ok());
    assert_eq!(n.hub().metrics().snapshot().rate_limited_connections, 1);
}

#[tokio::test]
async fn the_sdk_waits_the_retry_after_before_reconnecting() {
    let limits = Limits {
        tenant_connections_per_sec: 1,
        tenant_connections_burst: 2,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut cfg = n.client_config("acme", "alice");
    // A backoff so short that only the node's retry-after can explain a longer wait.
    cfg.reconnect = ReconnectPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        max_attempts: None,
    };
    let (alice, mut events) = Client::connect(cfg).await.unwrap();
    assert!(matches!(
        sdk::next_event(&mut events).await,
        Event::Connected { .. }
    ));
    let _bob = welcomed(&n, "acme", "bob").await; // the tenant's burst is used up
    alice.reconnect();
    let mut delays = Vec::new();
    loop {
        match sdk::next_event(&mut events).await {
            Event::Reconnecting { delay, .. } => delays.push(delay),
            Event::Connected { .. } => break,
            _ => {}
        }
    }
    assert_eq!(delays.len(), 2, "refused once, then waited: {delays:?}");
    assert!(delays[1] > Duration::from_millis(2), "{delays:?}");
    assert_eq!(
        n.hub().metrics().snapshot().rate_limited_connections,
        1,
        "the client did not hammer the node while limited"
    );
    assert!(alice.ping().await.is_ok());
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next `PresenceNotice` bob reads (other pushes skipped).
async fn next_presence(c: &mut RawClient) -> (String, PresenceState) {
    loop {
        if let Some(ServerFrame::PresenceNotice { user, state, .. }) = c.read_push().await {
            return (user, state);
        }
    }
}

#[tokio::test]
async fn presence_over_the_user_limit_is_kept_but_not_told_until_stated_again() {
    let limits = Limits {
        user_presence_per_sec: 1,
        // One for alice's arrival, two for changes.
        user_presence_burst: 3,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut alice = welcomed(&n, "acme", "alice").await;
    let mut bob = welcomed(&n, "acme", "bob").await;
    let presence = |state| ClientFrame::Presence { state };
    use PresenceState::{Background, Foreground};
    let alice_is = |state| ("alice".to_string(), state);
    // Bob's snapshot when he connected: alice had arrived in the foreground.
    assert_eq!(next_presence(&mut bob).await, alice_is(Foreground));
    for state in [Background, Foreground, Background] {
        alice.send(&presence(state)).await;
    }
    // Presence has no answer on success; the refusal of the third change has request id 0.
    let refused = alice.read().await.unwrap();
    assert_eq!(request_id(&refused), 0);
    let retry = rate_limited(&refused);
    assert!(alice.sync().await.is_empty(), "one refusal only");
    assert_eq!(n.hub().metrics().snapshot().rate_limited_presence, 1);

    assert_eq!(next_presence(&mut bob).await, alice_is(Background));
    assert_eq!(next_presence(&mut bob).await, alice_is(Foreground));
    // Bob's view now lags: alice is in the background. Stating it again after the
    // retry-after tells him.
    tokio::time::sleep(retry).await;
    alice.send(&presence(Background)).await;
    assert!(
        alice.sync().await.is_empty(),
        "allowed after the retry-after"
    );
    assert_eq!(next_presence(&mut bob).await, alice_is(Background));
    // Repeating the state co-members were told of is free: no token, no refusal, no notice,
    // however often.
    for _ in 0..5 {
        alice.send(&presence(Background)).await;
    }
    assert!(alice.sync().await.is_empty());
    assert_eq!(n.hub().metrics().snapshot().rate_limited_presence, 1);
}

#[tokio::test]
async fn the_sdk_states_its_presence_again_after_a_refusal() {
    let limits = Limits {
        user_presence_per_sec: 1,
        user_presence_burst: 1,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut bob = welcomed(&n, "acme", "bob").await;
    let (alice, _events) = n.client("acme", "alice").await;
    let alice_is = |state| ("alice".to_string(), state);
    // Alice's arrival took the only token.
    assert_eq!(
        next_presence(&mut bob).await,
        alice_is(PresenceState::Foreground)
    );
    alice.set_presence(PresenceState::Background).await.unwrap();
    // The change was refused; the SDK waits the retry-after and states it again, without
    // the app doing anything.
    assert_eq!(
        next_presence(&mut bob).await,
        alice_is(PresenceState::Background)
    );
    assert!(n.hub().metrics().snapshot().rate_limited_presence >= 1);
}

/// The presence limit counts notices told to co-members, not `Presence` frames: a change
/// back to the state co-members were last told of is free and tells nobody, so what they
/// know is never more than one refused change behind. 30 alternating changes against a
/// burst of 20 (issue 15): 20 notices; of the last 10 changes, the 5 to the background are
/// refused and the 5 back to the foreground (what bob was last told) are free. (Alice's
/// arrival, told to bob, takes a 21st token.)
#[tokio::test]
async fn the_presence_limit_counts_notices_and_a_change_back_to_the_told_state_is_free() {
    use PresenceState::{Background, Foreground};
    let limits = Limits {
        // The buckets' clock is frozen below, so no token refills however long this takes.
        user_presence_per_sec: 1,
        user_presence_burst: 21,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    n.hub().freeze_rate_clock();
    let mut bob = welcomed(&n, "acme", "bob").await;
    let mut alice = welcomed(&n, "acme", "alice").await;
    let mut carol = welcomed(&n, "acme", "carol").await;
    bob.sync().await;
    let before = n.hub().metrics().snapshot().rate_limited_presence;

    let states: Vec<PresenceState> = (0..30)
        .map(|i| if i % 2 == 0 { Background } else { Foreground })
        .collect();
    for &state in &states {
        alice.send(&ClientFrame::Presence { state }).await;
    }
    let refusals = alice.sync().await;
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    for f in &refusals {
        assert_eq!(request_id(f), 0);
        rate_limited(f);
    }
    assert_eq!(
        n.hub().metrics().snapshot().rate_limited_presence - before,
        5
    );

    // Carol's change is queued on bob's notices stream after every notice of alice's: it
    // marks the end of what alice's 30 changes told him.
    carol
        .send(&ClientFrame::Presence { state: Background })
        .await;
    carol.sync().await;
    let mut told = Vec::new();
    loop {
        match bob.read_push().await.expect("push streams ended") {
            ServerFrame::PresenceNotice { user, state, .. } if user == "alice" => told.push(state),
            // Her arrival, then the end marker.
            ServerFrame::PresenceNotice { user, state, .. } if user == "carol" => {
                if state == Background {
                    break;
                }
            }
            other => panic!("expected presence notices, got {other:?}"),
        }
    }
    assert_eq!(told[0], Foreground, "alice's arrival");
    assert_eq!(told[1..], states[..20], "the first 20 changes, in order");
    // Bob's view is alice's true state: the last change was back to the foreground.
    assert_eq!(told.last(), Some(&Foreground));
}
