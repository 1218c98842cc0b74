//! The client SDK against a real node: send/receive, typed errors, reconnect across a node
//! restart with sends in flight, and per-device resume.

mod common;
#[path = "common/sdk.rs"]
mod sdk;

use std::time::Duration;

use common::*;
use sdk::*;
use switchboard_client::{Client, ClientError, Event, ReconnectPolicy};
use switchboard_core::ErrorCode;

#[tokio::test]
async fn send_and_receive_through_the_sdk() {
    let n = TestNode::start().await;
    let (alice, mut alice_ev) = n.client("acme", "alice").await;
    let (bob, mut bob_ev) = n.client("acme", "bob").await;
    let ack = alice.send("closed", body("hello bob")).await.unwrap();
    assert_eq!((ack.seq, ack.duplicate), (1, false));
    let m = next_message(&mut bob_ev).await;
    assert_eq!(
        (m.seq, m.sender.as_str(), m.body.clone()),
        (1, "alice", body("hello bob"))
    );
    assert_eq!(
        next_message(&mut alice_ev).await.seq,
        1,
        "the sender sees its own message"
    );
    // Resend with the same id: same seq, marked duplicate, not delivered again.
    let id = ack.client_msg_id.clone();
    let again = alice
        .send_with_id("closed", &id, body("hello bob"))
        .await
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    bob.send("closed", body("hi alice")).await.unwrap();
    assert_eq!(
        next_message(&mut bob_ev).await.seq,
        2,
        "no duplicate of seq 1 in between"
    );
    let page = bob.fetch("closed", 0, 10).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert!(bob.ping().await.is_ok());
}

#[tokio::test]
async fn the_sdk_reports_typed_errors() {
    let n = TestNode::start().await;
    let (carol, _ev) = n.client("acme", "carol").await;
    let e = carol.send("closed", body("let me in")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotMember), "{e}");
    let e = carol.join("closed").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::JoinRefused), "{e}");

    let mut cfg = n.client_config("acme", "alice");
    cfg.token = mint("acme", "alice", GLOBEX_SECRET, now_secs() + 60, 0);
    let e = Client::connect(cfg).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidToken), "{e}");
    let mut cfg = n.client_config("acme", "alice");
    cfg.token = mint("acme", "alice", ACME_SECRET, now_secs() - 10, 0);
    let e = Client::connect(cfg).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::TokenExpired), "{e}");
    assert!(matches!(e, ClientError::Server { .. }));
}

#[tokio::test]
async fn sends_survive_a_node_restart_and_are_delivered_once() {
    let n = TestNode::start().await;
    let fast = ReconnectPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_attempts: None,
    };
    let mut cfg = n.client_config("acme", "alice");
    cfg.reconnect = fast.clone();
    let (alice, mut alice_ev) = Client::connect(cfg).await.unwrap();
    let mut cfg = n.client_config("acme", "bob");
    cfg.reconnect = fast;
    let (bob, mut bob_ev) = Client::connect(cfg).await.unwrap();
    for ev in [&mut alice_ev, &mut bob_ev] {
        assert!(matches!(next_event(ev).await, Event::Connected { .. }));
    }
    for i in 0..5 {
        alice
            .send("team", body(&format!("before {i}")))
            .await
            .unwrap();
    }
    // Sends issued while the node goes down complete once it is back.
    let sender = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..20 {
                acks.push(
                    alice
                        .send("team", body(&format!("across {i}")))
                        .await
                        .unwrap()
                        .seq,
                );
            }
            acks
        })
    };
    let n = n.restart().await;
    let acks = sender.await.unwrap();
    let mut sorted = acks.clone();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        20,
        "every send acked with its own seq: {acks:?}"
    );
    assert!(
        acks.windows(2).all(|w| w[0] < w[1]),
        "sequential sends keep their order"
    );
    // Bob sees 1..=25 exactly once, in order, across the restart.
    let mut seqs = Vec::new();
    while seqs.len() < 25 {
        match next_event(&mut bob_ev).await {
            Event::Message(m) => seqs.push(m.seq),
            Event::Closed { error } => panic!("bob closed: {error:?}"),
            _ => {}
        }
    }
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    let page = bob.fetch("team", 0, 100).await.unwrap();
    assert_eq!(page.head_seq, 25);
    drop(n);
}

#[tokio::test]
async fn a_second_device_resumes_from_its_own_position() {
    let n = TestNode::start().await;
    let (phone, mut phone_ev) = n.client("acme", "carol").await;
    let (tablet, _tablet_ev) = n.client("acme", "carol").await;
    // The tablet has received nothing yet, but knows where it stands in every group.
    assert!(
        tablet.cursors().contains(&("team".to_string(), 0)),
        "{:?}",
        tablet.cursors()
    );
    tablet.close().await;
    let (alice, _alice_ev) = n.client("acme", "alice").await;
    for i in 0..3 {
        alice.send("team", body(&format!("m{i}"))).await.unwrap();
    }
    // The phone reads and acknowledges all three, moving carol's stored cursor to 3.
    for want in 1..=3 {
        assert_eq!(next_message(&mut phone_ev).await.seq, want);
    }
    phone.ack_delivery("team", 3).await.unwrap();
    phone.ping().await.unwrap();
    // The tablet comes back with its own cursors and still gets all three.
    let cfg = n
        .client_config("acme", "carol")
        .with_cursors(tablet.cursors());
    let (_tablet, mut tablet_ev) = Client::connect(cfg).await.unwrap();
    for want in 1..=3 {
        assert_eq!(next_message(&mut tablet_ev).await.seq, want);
    }
}
