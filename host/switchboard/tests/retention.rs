//! Retention and delivery: a member whose unread messages retention deleted resumes at the
//! group's first retained message, over real QUIC, on the segment log (issue 16).

mod common;

use common::*;
use switchboard_core::{GroupId, Limits, TenantId};
use switchboard_edge::{EdgeConfig, Node, TlsIdentity};
use switchboard_store::Store;
use switchboard_wire::{ClientFrame, ServerFrame};

const MESSAGES: u64 = 60;
const KEEP: u64 = 10;

fn send(i: u64) -> ClientFrame {
    ClientFrame::Send {
        request_id: i,
        group: "team".into(),
        client_msg_id: format!("m{i}"),
        body: format!("m{i}:{}", "x".repeat(400)).into(),
    }
}

/// The next push that is not a presence notice (co-members' presence comes on connect).
async fn next_delivery(c: &mut RawClient) -> Option<ServerFrame> {
    loop {
        match c.read_push().await? {
            ServerFrame::PresenceNotice { .. } => {}
            other => return Some(other),
        }
    }
}

/// Before the router knew about retention, a member whose cursor pointed into the deleted
/// range had its session closed with `StoreUnavailable` on every reconnect (the planner saw
/// a hole in the log). Now its `Resume` names the seq before the first retained message, and
/// every retained message follows in order on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_deleted_messages_resumes_at_the_first_retained_one() {
    let tmp = tempfile::tempdir().unwrap();
    // Small frames so that small segments (a few messages each) are valid: retention deletes
    // whole sealed segments.
    let limits = Limits {
        load_sample_ms: 0,
        max_frame_bytes: 4096,
        max_payload_bytes: 2048,
        ..Limits::default()
    };
    let settings = switchboard::StoreSettings {
        segment_bytes: 8192,
        retention: switchboard::RetentionSettings {
            max_messages: Some(KEEP),
            ..Default::default()
        },
        ..Default::default()
    };
    let store = switchboard::open_node_store(tmp.path(), None, &settings, &limits).unwrap();
    seed(&*store);
    let identity = TlsIdentity::self_signed().unwrap();
    let cert = identity.cert_chain[0].to_vec();
    let node = Node::start(
        EdgeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            limits,
            identity,
            webtransport: None,
        },
        store.clone(),
    )
    .await
    .unwrap();

    let mut alice = RawClient::connect(node.local_addr(), &cert, switchboard_wire::ALPN)
        .await
        .unwrap();
    let token = mint("acme", "alice", ACME_SECRET, now_secs() + 600, 0);
    assert!(matches!(
        alice.hello(&token).await,
        ServerFrame::Welcome { .. }
    ));
    for i in 1..=MESSAGES {
        alice.send(&send(i)).await;
        assert!(matches!(alice.read().await, Some(ServerFrame::Ack { seq, .. }) if seq == i));
    }

    // bob (a member since before the first message, never connected) is now 60 behind;
    // retention keeps the newest 10 and whatever shares their segments.
    let report = store.enforce_retention(now_secs() * 1000).unwrap();
    let (acme, team) = (
        TenantId::new("acme").unwrap(),
        GroupId::new("team").unwrap(),
    );
    let first = store.first_seq(&acme, &team).unwrap();
    assert!(
        first > 1 && first <= MESSAGES - KEEP + 1,
        "retention deleted the oldest segments: first retained {first}, {report:?}"
    );

    let mut bob = RawClient::connect(node.local_addr(), &cert, switchboard_wire::ALPN)
        .await
        .unwrap();
    let token = mint("acme", "bob", ACME_SECRET, now_secs() + 600, 0);
    assert!(matches!(
        bob.hello(&token).await,
        ServerFrame::Welcome { .. }
    ));
    for seq in first..=MESSAGES {
        match next_delivery(&mut bob).await {
            Some(ServerFrame::Deliver(m)) => {
                assert_eq!((m.group.as_str(), m.seq), ("team", seq));
                assert!(m.body.starts_with(format!("m{seq}:").as_bytes()));
            }
            other => panic!("expected team/{seq}, got {other:?}"),
        }
    }
    assert_eq!(
        bob.push_order().resumes,
        vec![("team".to_string(), first - 1)],
        "one Resume, naming the seq before the first retained message"
    );

    // The session is still up, and live messages follow the retained ones.
    alice.send(&send(MESSAGES + 1)).await;
    assert!(
        matches!(alice.read().await, Some(ServerFrame::Ack { seq, .. }) if seq == MESSAGES + 1)
    );
    match next_delivery(&mut bob).await {
        Some(ServerFrame::Deliver(m)) => assert_eq!(m.seq, MESSAGES + 1),
        other => panic!("expected the live message, got {other:?}"),
    }
    node.shutdown().await;
}
