//! Core messaging over real QUIC against a node with sled on disk: ordering, catch-up,
//! durability before ack, dedupe, restart, receipts, presence, slow consumers.

mod common;

use std::collections::HashMap;

use common::*;
use switchboard_core::{ErrorCode, Limits, PresenceState, ReceiptKind};
use switchboard_store::Store;
use switchboard_wire::{ClientFrame, GroupCursor, Hello, Message, ServerFrame};

fn send(request_id: u64, group: &str, id: &str, text: &str) -> ClientFrame {
    ClientFrame::Send {
        request_id,
        group: group.into(),
        client_msg_id: id.into(),
        body: body(text),
    }
}

async fn hello_with(
    n: &TestNode,
    user: &str,
    cursors: Vec<GroupCursor>,
) -> (RawClient, ServerFrame) {
    let mut c = n.raw().await;
    c.send(&ClientFrame::Hello(Hello {
        token: n.token("acme", user),
        presence: PresenceState::Foreground,
        cursors,
        client: "test".into(),
    }))
    .await;
    let w = c.read().await.unwrap();
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    (c, w)
}

async fn member(n: &TestNode, user: &str) -> RawClient {
    hello_with(n, user, vec![]).await.0
}

/// Reads `count` deliveries from the push stream.
async fn deliveries(c: &mut RawClient, count: usize) -> Vec<Message> {
    let mut out = Vec::new();
    while out.len() < count {
        match c.read_push().await {
            Some(ServerFrame::Deliver(m)) => out.push(m),
            Some(_) => {}
            None => panic!("push stream ended after {} of {count}", out.len()),
        }
    }
    out
}

/// Reads control frames until `count` acks arrived; returns them by request id.
async fn acks(c: &mut RawClient, count: usize) -> HashMap<u64, (u64, bool)> {
    let mut out = HashMap::new();
    while out.len() < count {
        match c.read().await {
            Some(ServerFrame::Ack {
                request_id,
                seq,
                duplicate,
                ..
            }) => {
                out.insert(request_id, (seq, duplicate));
            }
            other => panic!("expected Ack, got {other:?}"),
        }
    }
    out
}

fn assert_in_order(msgs: &[Message], first: u64) {
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.seq, first + i as u64, "gap or reorder at {i}: {msgs:?}");
    }
}

#[tokio::test]
async fn three_members_send_and_receive_in_order() {
    let n = TestNode::start().await;
    let users = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    for u in users {
        clients.push(member(&n, u).await);
    }
    // Interleave sends from all three.
    const PER_USER: u64 = 20;
    for i in 0..PER_USER {
        for (c, u) in clients.iter_mut().zip(users) {
            c.send(&send(
                i + 1,
                "team",
                &format!("{u}-{i}"),
                &format!("{u} says {i}"),
            ))
            .await;
        }
    }
    let mut seqs_by_user = HashMap::new();
    for (c, u) in clients.iter_mut().zip(users) {
        let a = acks(c, PER_USER as usize).await;
        seqs_by_user.insert(u, a);
    }
    let total = PER_USER as usize * users.len();
    let mut all_seqs: Vec<u64> = seqs_by_user
        .values()
        .flat_map(|a| a.values().map(|(s, _)| *s))
        .collect();
    all_seqs.sort();
    assert_eq!(
        all_seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "acks carry unique seqs"
    );

    let mut views = Vec::new();
    for c in clients.iter_mut() {
        let got = deliveries(c, total).await;
        assert_in_order(&got, 1);
        views.push(got);
    }
    // Everyone sees the same log, and each message is where its ack said.
    assert_eq!(views[0], views[1]);
    assert_eq!(views[1], views[2]);
    for m in &views[0] {
        let i: u64 = m.client_msg_id.rsplit('-').next().unwrap().parse().unwrap();
        let (seq, dup) = seqs_by_user[m.sender.as_str()][&(i + 1)];
        assert_eq!((seq, dup), (m.seq, false));
        assert_eq!(m.body, body(&format!("{} says {i}", m.sender)));
    }
    // Per sender, its own messages keep their send order.
    for u in users {
        let mine: Vec<u64> = views[0]
            .iter()
            .filter(|m| m.sender == u)
            .map(|m| m.client_msg_id.rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(mine, (0..PER_USER).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn an_offline_member_gets_exactly_what_it_missed() {
    let n = TestNode::start().await;
    let mut alice = member(&n, "alice").await;
    let mut carol = member(&n, "carol").await;
    for i in 1..=5 {
        alice
            .send(&send(i, "team", &format!("m{i}"), "before"))
            .await;
    }
    acks(&mut alice, 5).await;
    let seen = deliveries(&mut carol, 5).await;
    assert_in_order(&seen, 1);
    // Carol has processed 1..=3 and goes offline.
    carol
        .send(&ClientFrame::AckDelivery {
            group: "team".into(),
            seq: 3,
        })
        .await;
    carol.send(&ClientFrame::Ping { request_id: 99 }).await;
    assert_eq!(
        carol.read().await,
        Some(ServerFrame::Pong { request_id: 99 })
    );
    carol.conn.close(0u32.into(), b"bye");
    for i in 6..=9 {
        alice
            .send(&send(i, "team", &format!("m{i}"), "while away"))
            .await;
    }
    acks(&mut alice, 4).await;

    // Reconnect without cursors: resumes from the stored cursor (3).
    let (mut carol, welcome) = hello_with(&n, "carol", vec![]).await;
    let ServerFrame::Welcome { groups, .. } = welcome else {
        unreachable!()
    };
    assert!(
        groups.contains(&GroupCursor {
            group: "team".into(),
            seq: 9
        }),
        "{groups:?}"
    );
    let got = deliveries(&mut carol, 6).await;
    assert_in_order(&got, 4);
    assert_eq!(got.last().unwrap().seq, 9);
    // And then live messages continue without a gap.
    alice.send(&send(10, "team", "m10", "live")).await;
    acks(&mut alice, 1).await;
    assert_eq!(deliveries(&mut carol, 1).await[0].seq, 10);

    // Reconnect with its own cursor (7): resumes from there instead.
    carol.conn.close(0u32.into(), b"bye");
    let (mut carol, _) = hello_with(
        &n,
        "carol",
        vec![GroupCursor {
            group: "team".into(),
            seq: 7,
        }],
    )
    .await;
    let got = deliveries(&mut carol, 3).await;
    assert_in_order(&got, 8);
    // Nothing more than what it missed.
    carol.send(&ClientFrame::Ping { request_id: 1 }).await;
    assert_eq!(
        carol.read().await,
        Some(ServerFrame::Pong { request_id: 1 })
    );
    alice.send(&send(11, "team", "m11", "next")).await;
    acks(&mut alice, 1).await;
    assert_eq!(deliveries(&mut carol, 1).await[0].seq, 11);
}

#[tokio::test]
async fn a_resend_is_acked_again_and_delivered_once() {
    let n = TestNode::start().await;
    let mut alice = member(&n, "alice").await;
    let mut bob = member(&n, "bob").await;
    alice.send(&send(1, "team", "same-id", "hello")).await;
    assert_eq!(acks(&mut alice, 1).await[&1], (1, false));
    alice
        .send(&send(2, "team", "same-id", "hello again?"))
        .await;
    assert_eq!(acks(&mut alice, 1).await[&2], (1, true));
    // From another connection of the same user, after a reconnect: still a duplicate.
    alice.conn.close(0u32.into(), b"bye");
    let mut alice = member(&n, "alice").await;
    alice.send(&send(3, "team", "same-id", "third time")).await;
    assert_eq!(acks(&mut alice, 1).await[&3], (1, true));
    // The same id from another sender is a different message.
    bob.send(&send(1, "team", "same-id", "bob's")).await;
    assert_eq!(acks(&mut bob, 1).await[&1], (2, false));
    let got = deliveries(&mut bob, 2).await;
    assert_eq!(got[0].body, body("hello"));
    assert_eq!(got[1].body, body("bob's"));
    let m = n.hub().metrics().snapshot();
    assert_eq!((m.messages_accepted, m.duplicates), (2, 2));
}

#[tokio::test]
async fn history_and_cursors_survive_a_restart() {
    let n = TestNode::start().await;
    let mut alice = member(&n, "alice").await;
    let mut bob = member(&n, "bob").await;
    for i in 1..=6 {
        alice
            .send(&send(i, "closed", &format!("c{i}"), &format!("text {i}")))
            .await;
    }
    acks(&mut alice, 6).await;
    let got = deliveries(&mut bob, 6).await;
    assert_in_order(&got, 1);
    bob.send(&ClientFrame::AckDelivery {
        group: "closed".into(),
        seq: 4,
    })
    .await;
    bob.send(&ClientFrame::Ping { request_id: 1 }).await;
    assert_eq!(bob.read().await, Some(ServerFrame::Pong { request_id: 1 }));
    drop((alice, bob));

    let n = n.restart().await;
    let (mut bob, welcome) = hello_with(&n, "bob", vec![]).await;
    let ServerFrame::Welcome { groups, .. } = welcome else {
        unreachable!()
    };
    assert!(groups.contains(&GroupCursor {
        group: "closed".into(),
        seq: 6
    }));
    // The cursor survived: only 5 and 6 are redelivered.
    let got = deliveries(&mut bob, 2).await;
    assert_in_order(&got, 5);
    assert_eq!(got[1].body, body("text 6"));
    // The whole history is there.
    bob.send(&ClientFrame::Fetch {
        request_id: 2,
        group: "closed".into(),
        after_seq: 0,
        limit: 100,
    })
    .await;
    let Some(ServerFrame::FetchResult {
        messages, head_seq, ..
    }) = bob.read().await
    else {
        panic!()
    };
    assert_eq!(head_seq, 6);
    assert_in_order(&messages, 1);
    assert_eq!(messages.len(), 6);
    assert_eq!(messages[0].body, body("text 1"));
    // Dedupe state survived too, and numbering continues.
    let mut alice = member(&n, "alice").await;
    alice.send(&send(1, "closed", "c6", "resend")).await;
    assert_eq!(acks(&mut alice, 1).await[&1], (6, true));
    alice.send(&send(2, "closed", "c7", "new")).await;
    assert_eq!(acks(&mut alice, 1).await[&2], (7, false));
    assert_eq!(deliveries(&mut bob, 1).await[0].seq, 7);
}

#[tokio::test]
async fn joining_an_open_group_delivers_what_comes_after_and_fetch_gives_history() {
    let n = TestNode::start().await;
    let mut alice = member(&n, "alice").await;
    alice
        .send(&ClientFrame::Join {
            request_id: 1,
            group: "general".into(),
        })
        .await;
    assert_eq!(
        alice.read().await,
        Some(ServerFrame::Joined {
            request_id: 1,
            group: "general".into(),
            head_seq: 0
        })
    );
    alice.send(&send(2, "general", "g1", "early")).await;
    acks(&mut alice, 1).await;
    let mut dave = member(&n, "dave").await;
    dave.send(&ClientFrame::Join {
        request_id: 1,
        group: "general".into(),
    })
    .await;
    assert_eq!(
        dave.read().await,
        Some(ServerFrame::Joined {
            request_id: 1,
            group: "general".into(),
            head_seq: 1
        })
    );
    alice
        .send(&send(3, "general", "g2", "after dave joined"))
        .await;
    acks(&mut alice, 1).await;
    let got = deliveries(&mut dave, 1).await;
    assert_eq!(
        (got[0].seq, got[0].body.clone()),
        (2, body("after dave joined"))
    );
    dave.send(&ClientFrame::Fetch {
        request_id: 2,
        group: "general".into(),
        after_seq: 0,
        limit: 1,
    })
    .await;
    let Some(ServerFrame::FetchResult {
        messages,
        head_seq: 2,
        ..
    }) = dave.read().await
    else {
        panic!()
    };
    assert_eq!(messages.len(), 1, "limit is honoured");
    assert_eq!(messages[0].body, body("early"));

    // Leave stops deliveries and sending.
    dave.send(&ClientFrame::Leave {
        request_id: 3,
        group: "general".into(),
    })
    .await;
    assert_eq!(
        dave.read().await,
        Some(ServerFrame::Left {
            request_id: 3,
            group: "general".into()
        })
    );
    dave.send(&send(4, "general", "d1", "still here?")).await;
    assert_eq!(
        error_code(&dave.read().await.unwrap()),
        ErrorCode::NotMember
    );
    alice.send(&send(4, "general", "g3", "dave is gone")).await;
    acks(&mut alice, 1).await;
    // Dave's push stream stays quiet: prove it with a later message in a group he is in.
    alice.send(&send(5, "team", "t1", "team msg")).await;
    acks(&mut alice, 1).await;
    // dave is not in team either: use a fresh join to observe the next push is not g3.
    dave.send(&ClientFrame::Join {
        request_id: 5,
        group: "general".into(),
    })
    .await;
    assert!(matches!(
        dave.read().await,
        Some(ServerFrame::Joined { head_seq: 3, .. })
    ));
    alice.send(&send(6, "general", "g4", "welcome back")).await;
    acks(&mut alice, 1).await;
    let got = deliveries(&mut dave, 1).await;
    assert_eq!(got[0].seq, 4, "seq 3 was sent while dave was not a member");
}

/// A resend of a message the group stored while the sender was a member is acked again, as
/// the duplicate it is and with its seq, after the sender left: its outbox learns the message
/// is stored instead of holding it forever. A new message is still refused with `NotMember`.
#[tokio::test]
async fn a_resend_after_leaving_is_acked_as_a_duplicate_and_a_new_send_is_refused() {
    let n = TestNode::start().await;
    let mut dave = member(&n, "dave").await;
    dave.send(&ClientFrame::Join {
        request_id: 1,
        group: "general".into(),
    })
    .await;
    assert!(matches!(
        dave.read().await,
        Some(ServerFrame::Joined { .. })
    ));
    dave.send(&send(2, "general", "d1", "stored")).await;
    assert_eq!(acks(&mut dave, 1).await[&2], (1, false));
    dave.send(&ClientFrame::Leave {
        request_id: 3,
        group: "general".into(),
    })
    .await;
    assert!(matches!(dave.read().await, Some(ServerFrame::Left { .. })));

    dave.send(&send(4, "general", "d1", "stored")).await;
    assert_eq!(acks(&mut dave, 1).await[&4], (1, true));
    dave.send(&send(5, "general", "d2", "new")).await;
    assert_eq!(
        error_code(&dave.read().await.unwrap()),
        ErrorCode::NotMember
    );
    let head = n
        .store
        .head(&"acme".parse().unwrap(), &"general".parse().unwrap())
        .unwrap();
    assert_eq!(
        head, 1,
        "neither the resend nor the refused send was stored"
    );
}

#[tokio::test]
async fn receipts_reach_the_sender_and_presence_reaches_co_members() {
    let n = TestNode::start().await;
    let mut alice = member(&n, "alice").await;
    let mut bob = member(&n, "bob").await;
    alice.send(&send(1, "closed", "r1", "read me")).await;
    acks(&mut alice, 1).await;
    assert_eq!(deliveries(&mut bob, 1).await[0].seq, 1);
    let _ = deliveries(&mut alice, 1).await;
    bob.send(&ClientFrame::Receipt {
        group: "closed".into(),
        seq: 1,
        kind: ReceiptKind::Read,
    })
    .await;
    assert_eq!(
        alice.read_push().await,
        Some(ServerFrame::ReceiptNotice {
            group: "closed".into(),
            seq: 1,
            user: "bob".into(),
            kind: ReceiptKind::Read
        })
    );
    bob.send(&ClientFrame::Presence {
        state: PresenceState::Background,
    })
    .await;
    assert_eq!(
        alice.read_push().await,
        Some(ServerFrame::PresenceNotice {
            user: "bob".into(),
            state: PresenceState::Background,
            online: true,
        })
    );
    // A receipt for a message that does not exist is refused.
    bob.send(&ClientFrame::Receipt {
        group: "closed".into(),
        seq: 42,
        kind: ReceiptKind::Read,
    })
    .await;
    assert_eq!(
        error_code(&bob.read().await.unwrap()),
        ErrorCode::InvalidArgument
    );
    let stored = n
        .store
        .receipts(&"acme".parse().unwrap(), &"closed".parse().unwrap(), 1)
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].kind, ReceiptKind::Read);
}

#[tokio::test]
async fn a_member_that_never_reads_does_not_stall_others_and_still_gets_everything() {
    let limits = Limits {
        outbox_frames: 4,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut alice = member(&n, "alice").await;
    let mut bob = member(&n, "bob").await; // does not read its push stream for now
    let mut carol = member(&n, "carol").await;
    const N: u64 = 300;
    let big = "x".repeat(4000); // enough to fill bob's QUIC stream window
    for i in 1..=N {
        alice.send(&send(i, "team", &format!("s{i}"), &big)).await;
    }
    // Every ack and every delivery to carol arrives while bob is stuck.
    assert_eq!(acks(&mut alice, N as usize).await.len(), N as usize);
    assert_in_order(&deliveries(&mut carol, N as usize).await, 1);
    assert!(
        n.hub().metrics().snapshot().outbox_overflows > 0,
        "bob's outbox overflowed"
    );
    // What bob holds on the node stays within his queues' bounds (4 streams × 4 frames),
    // however much more was sent: the rest waits in the log, not in memory.
    let queued: usize = n.hub().queue_depths().iter().map(|(_, d)| d).sum();
    assert!(queued <= 3 * 4 * 4, "{queued} pushes queued");
    assert!(n.hub().queued_bytes() <= 3 * 4 * 4 * 4100);
    // Bob catches up from the log, in order, exactly once.
    let got = deliveries(&mut bob, N as usize).await;
    assert_in_order(&got, 1);
    bob.send(&ClientFrame::Ping { request_id: 1 }).await;
    assert_eq!(bob.read().await, Some(ServerFrame::Pong { request_id: 1 }));
    alice.send(&send(N + 1, "team", "last", "last")).await;
    acks(&mut alice, 1).await;
    assert_eq!(deliveries(&mut bob, 1).await[0].seq, N + 1);
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_when_configured_and_resumes_without_loss() {
    // Default queue bounds: bob's fill after his QUIC send window (2 MiB) and his outbox
    // (4 MiB) are full; alice and carol read all the time, and alice sends in rounds of 200
    // that carol has read before the next, so theirs never hold more than ~0.8 MiB even on a
    // busy machine (sending all 2,000 at once let carol fall 6 MiB behind now and then).
    let limits = Limits {
        disconnect_slow_consumers: true,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut alice = member(&n, "alice").await;
    let bob = member(&n, "bob").await; // never reads its push streams
    let mut carol = member(&n, "carol").await;
    alice.listen();
    carol.listen();
    const N: u64 = 2_000;
    let big = "x".repeat(4000);
    const ROUND: u64 = 200;
    let mut got = Vec::new();
    for round in 0..N / ROUND {
        for i in round * ROUND + 1..=(round + 1) * ROUND {
            alice.send(&send(i, "team", &format!("s{i}"), &big)).await;
        }
        assert_eq!(acks(&mut alice, ROUND as usize).await.len(), ROUND as usize);
        got.extend(deliveries(&mut carol, ROUND as usize).await);
    }
    assert_in_order(&got, 1);
    // Bob's queues filled: the node closed his connection with SlowConsumer instead of
    // holding or catching him up.
    assert_eq!(
        bob.closed_code().await,
        Some(ErrorCode::SlowConsumer.as_u16().into())
    );
    let m = n.hub().metrics().snapshot();
    assert_eq!(m.slow_consumers_disconnected, 1);
    assert!(m.outbox_overflows >= 1);
    // Reconnecting (no cursors: from the start) gets him everything, in order, once.
    let mut bob = member(&n, "bob").await;
    assert_in_order(&deliveries(&mut bob, N as usize).await, 1);
    // Alice and carol read theirs: never disconnected.
    assert_eq!(n.hub().metrics().snapshot().slow_consumers_disconnected, 1);
}

#[tokio::test]
async fn fetch_pages_always_advance_even_with_the_tightest_frame_limit() {
    // The smallest frame limit the node accepts for this payload limit.
    let limits = Limits {
        max_payload_bytes: 8 * 1024,
        max_frame_bytes: 8 * 1024 + 1024,
        ..Limits::default()
    };
    let n = TestNode::start_with(limits).await;
    let mut alice = member(&n, "alice").await;
    let full = "f".repeat(8 * 1024);
    for i in 1..=3 {
        alice
            .send(&send(i, "team", &format!("full{i}"), &full))
            .await;
    }
    acks(&mut alice, 3).await;
    let mut after = 0;
    while after < 3 {
        alice
            .send(&ClientFrame::Fetch {
                request_id: 50,
                group: "team".into(),
                after_seq: after,
                limit: 10,
            })
            .await;
        let Some(ServerFrame::FetchResult { messages, .. }) = alice.read().await else {
            panic!()
        };
        assert!(
            !messages.is_empty(),
            "a page must never be empty while messages remain"
        );
        assert_in_order(&messages, after + 1);
        after = messages.last().unwrap().seq;
    }
}

/// docs/protocol.md §8 and §9, exactly: pipelined sends of one connection are acked in the
/// order they were sent (across groups too); a fetch page is cut by its byte budget (body
/// + 512 per message within `max_frame_bytes` − 1024: 254 messages at the default limits,
/// never `max_fetch_messages` = 256); `limit` 0 returns no messages, only the head.
#[tokio::test]
async fn pipelined_acks_keep_send_order_and_fetch_pages_follow_the_documented_budget() {
    let n = TestNode::start().await;
    let mut alice = member(&n, "alice").await;
    const N: u64 = 300;
    for i in 1..=N {
        let group = if i % 10 == 0 { "closed" } else { "team" };
        alice.send(&send(i, group, &format!("p{i}"), "")).await;
    }
    let mut order = Vec::new();
    while order.len() < N as usize {
        match alice.read().await {
            Some(ServerFrame::Ack { request_id, .. }) => order.push(request_id),
            other => panic!("expected Ack, got {other:?}"),
        }
    }
    assert_eq!(order, (1..=N).collect::<Vec<_>>(), "acks in send order");
    let team_head = N - N / 10;
    let fetch = |limit| ClientFrame::Fetch {
        request_id: 1_000,
        group: "team".into(),
        after_seq: 0,
        limit,
    };
    alice.send(&fetch(1_000)).await;
    let Some(ServerFrame::FetchResult {
        messages, head_seq, ..
    }) = alice.read().await
    else {
        panic!()
    };
    let budget = (Limits::default().max_frame_bytes - 1024) as usize;
    assert_eq!(
        messages.len(),
        budget / 512,
        "the byte budget cuts the page"
    );
    assert_eq!(messages.len(), 254);
    assert_in_order(&messages, 1);
    assert_eq!(head_seq, team_head);
    alice.send(&fetch(0)).await;
    let Some(ServerFrame::FetchResult {
        messages, head_seq, ..
    }) = alice.read().await
    else {
        panic!()
    };
    assert!(messages.is_empty());
    assert_eq!(head_seq, team_head);
}
