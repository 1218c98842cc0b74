//! Bad input over real QUIC: each gets a typed error (or a refused connection), and the node
//! keeps serving every other client.

mod common;

use common::*;
use switchboard_core::ErrorCode;
use switchboard_wire::{self as wire, ClientFrame, ServerFrame};

/// A well-formed flatbuffer `Frame` whose union type this server does not know.
fn unknown_type_frame() -> Vec<u8> {
    let mut b = flatbuffers::FlatBufferBuilder::new();
    let t = b.start_table();
    let empty = b.end_table(t);
    let t = b.start_table();
    b.push_slot_always::<flatbuffers::WIPOffset<_>>(6, empty);
    b.push_slot::<u8>(4, 200, 0);
    let root = b.end_table(t);
    b.finish(root, Some("SB01"));
    let data = b.finished_data();
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// A second, well-behaved client proves the node still serves.
async fn assert_node_serves(n: &TestNode) {
    let mut ok = n.raw().await;
    assert!(matches!(
        ok.hello(&n.token("acme", "bob")).await,
        ServerFrame::Welcome { .. }
    ));
    ok.send(&ClientFrame::Ping { request_id: 7 }).await;
    assert_eq!(ok.read().await, Some(ServerFrame::Pong { request_id: 7 }));
}

async fn welcomed(n: &TestNode, user: &str) -> RawClient {
    let mut c = n.raw().await;
    let w = c.hello(&n.token("acme", user)).await;
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    c
}

#[tokio::test]
async fn malformed_frame_is_fatal_for_that_connection_only() {
    let n = TestNode::start().await;
    let mut bad = welcomed(&n, "alice").await;
    bad.write_raw(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await;
    assert_eq!(
        error_code(&bad.read().await.unwrap()),
        ErrorCode::MalformedFrame
    );
    assert_eq!(
        bad.closed_code().await,
        Some(ErrorCode::MalformedFrame.as_u16().into())
    );
    assert_node_serves(&n).await;
}

#[tokio::test]
async fn oversize_frame_is_refused_before_it_is_read() {
    let n = TestNode::start().await;
    let mut bad = welcomed(&n, "alice").await;
    // Claims 1 GiB; the node must not wait for (or allocate) it.
    bad.write_raw(&(1u32 << 30).to_be_bytes()).await;
    assert_eq!(
        error_code(&bad.read().await.unwrap()),
        ErrorCode::FrameTooLarge
    );
    assert_eq!(
        bad.closed_code().await,
        Some(ErrorCode::FrameTooLarge.as_u16().into())
    );
    assert_node_serves(&n).await;
}

#[tokio::test]
async fn unknown_frame_type_is_answered_and_the_connection_goes_on() {
    let n = TestNode::start().await;
    let mut c = welcomed(&n, "alice").await;
    c.write_raw(&unknown_type_frame()).await;
    assert_eq!(
        error_code(&c.read().await.unwrap()),
        ErrorCode::UnknownFrameType
    );
    c.send(&ClientFrame::Ping { request_id: 9 }).await;
    assert_eq!(c.read().await, Some(ServerFrame::Pong { request_id: 9 }));
}

#[tokio::test]
async fn a_server_frame_from_a_client_is_unexpected_but_not_fatal() {
    let n = TestNode::start().await;
    let mut c = welcomed(&n, "alice").await;
    c.write_raw(&wire::encode_server(&ServerFrame::Pong { request_id: 1 }))
        .await;
    assert_eq!(
        error_code(&c.read().await.unwrap()),
        ErrorCode::UnexpectedFrame
    );
    c.send(&ClientFrame::Ping { request_id: 2 }).await;
    assert_eq!(c.read().await, Some(ServerFrame::Pong { request_id: 2 }));
}

#[tokio::test]
async fn frames_before_hello_are_refused() {
    let n = TestNode::start().await;
    let mut c = n.raw().await;
    c.send(&ClientFrame::Join {
        request_id: 1,
        group: "general".into(),
    })
    .await;
    assert_eq!(
        error_code(&c.read().await.unwrap()),
        ErrorCode::HelloRequired
    );
    assert_eq!(
        c.closed_code().await,
        Some(ErrorCode::HelloRequired.as_u16().into())
    );
    // An unknown frame type first is refused the same way.
    let mut c = n.raw().await;
    c.write_raw(&unknown_type_frame()).await;
    assert_eq!(
        error_code(&c.read().await.unwrap()),
        ErrorCode::HelloRequired
    );
    assert_eq!(
        c.closed_code().await,
        Some(ErrorCode::HelloRequired.as_u16().into())
    );
    // So is a server frame first (after Hello it would be a non-fatal `UnexpectedFrame`).
    let mut c = n.raw().await;
    c.write_raw(&wire::encode_server(&ServerFrame::Pong { request_id: 1 }))
        .await;
    assert_eq!(
        error_code(&c.read().await.unwrap()),
        ErrorCode::HelloRequired
    );
    assert_eq!(
        c.closed_code().await,
        Some(ErrorCode::HelloRequired.as_u16().into())
    );
    // So is garbage.
    let mut c = n.raw().await;
    c.write_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    let f = c.read().await.unwrap();
    assert!(matches!(
        error_code(&f),
        ErrorCode::FrameTooLarge | ErrorCode::MalformedFrame
    ));
    assert_node_serves(&n).await;
}

#[tokio::test]
async fn a_second_hello_is_unexpected() {
    let n = TestNode::start().await;
    let mut c = welcomed(&n, "alice").await;
    let again = c.hello(&n.token("acme", "alice")).await;
    assert_eq!(error_code(&again), ErrorCode::UnexpectedFrame);
}

#[tokio::test]
async fn wrong_alpn_is_refused_at_the_handshake() {
    let n = TestNode::start().await;
    let r = RawClient::connect(n.addr, &n.cert_der(), b"h3").await;
    // The close docs/protocol.md §1 names: TLS alert no_application_protocol (120), carried
    // by QUIC as CRYPTO_ERROR 0x178.
    match r {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(close.error_code, quinn::TransportErrorCode::crypto(120));
            assert_eq!(u64::from(close.error_code), 0x178);
        }
        Err(other) => panic!("expected CRYPTO_ERROR 0x178, got {other}"),
        Ok(_) => panic!("a connection without switchboard/1 must not be accepted"),
    }
    assert_node_serves(&n).await;
}

#[tokio::test]
async fn stream_flood_is_bounded_and_neighbours_are_unaffected() {
    let n = TestNode::start().await;
    let c = welcomed(&n, "alice").await;
    // Every extra bidirectional stream is answered with UnexpectedStream; the transport caps
    // how many are open at once, and the node closes the connection after 64.
    let mut refused = 0;
    for _ in 0..200 {
        let Ok(Ok((mut s, mut r))) = tokio::time::timeout(WAIT, c.conn.open_bi()).await else {
            break;
        };
        if s.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = bytes::BytesMut::new();
        match tokio::time::timeout(WAIT, wire::read_frame(&mut r, &mut buf, 1 << 16)).await {
            Ok(Ok(Some(f))) => {
                let f = wire::decode_server(&f, &wire::DecodeLimits::default()).unwrap();
                assert_eq!(error_code(&f), ErrorCode::UnexpectedStream);
                refused += 1;
            }
            _ => break,
        }
    }
    assert!(refused >= 1, "extra streams must be answered");
    assert!(refused <= 64, "the flood must be cut off, got {refused}");
    assert_eq!(
        c.closed_code().await,
        Some(ErrorCode::UnexpectedStream.as_u16().into())
    );
    assert_node_serves(&n).await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_typed_errors() {
    let n = TestNode::start().await;
    let now = now_secs();
    let cases = [
        (
            "garbage",
            "not-a-token".to_string(),
            ErrorCode::InvalidToken,
        ),
        (
            "signed with another tenant's secret",
            mint("acme", "alice", GLOBEX_SECRET, now + 60, 0),
            ErrorCode::InvalidToken,
        ),
        (
            "expired",
            mint("acme", "alice", ACME_SECRET, now - 1, 0),
            ErrorCode::TokenExpired,
        ),
        (
            "not yet valid",
            mint("acme", "alice", ACME_SECRET, now + 600, now + 300),
            ErrorCode::TokenNotYetValid,
        ),
        (
            "unknown tenant",
            mint("initech", "alice", ACME_SECRET, now + 60, 0),
            ErrorCode::UnknownTenant,
        ),
    ];
    for (what, token, code) in cases {
        let mut c = n.raw().await;
        let f = c.hello(&token).await;
        assert_eq!(error_code(&f), code, "{what}");
        assert_eq!(c.closed_code().await, Some(code.as_u16().into()), "{what}");
    }
    assert!(n.hub().metrics().snapshot().auth_failures >= 5);
    assert_node_serves(&n).await;
}

#[tokio::test]
async fn no_hello_in_time_closes_the_connection() {
    let limits = switchboard_core::Limits {
        hello_timeout_ms: 200,
        ..Default::default()
    };
    let n = TestNode::start_with(limits).await;
    let c = n.raw().await;
    // The client never opens a stream.
    assert_eq!(
        c.closed_code().await,
        Some(ErrorCode::HelloRequired.as_u16().into())
    );
}

#[tokio::test]
async fn request_errors_are_typed_and_not_fatal() {
    let n = TestNode::start().await;
    let mut carol = welcomed(&n, "carol").await;
    let send = |request_id, group: &str, id: &str, len: usize| ClientFrame::Send {
        request_id,
        group: group.into(),
        client_msg_id: id.into(),
        body: bytes::Bytes::from(vec![b'x'; len]),
    };
    let cases = [
        (send(1, "closed", "m1", 3), ErrorCode::NotMember),
        (send(2, "nope", "m1", 3), ErrorCode::GroupNotFound),
        (send(3, "bad group!", "m1", 3), ErrorCode::InvalidArgument),
        (send(4, "team", "", 3), ErrorCode::InvalidArgument),
        (
            send(5, "team", "m1", 64 * 1024 + 1),
            ErrorCode::PayloadTooLarge,
        ),
        (
            ClientFrame::Join {
                request_id: 6,
                group: "closed".into(),
            },
            ErrorCode::JoinRefused,
        ),
        (
            ClientFrame::Join {
                request_id: 7,
                group: "nope".into(),
            },
            ErrorCode::GroupNotFound,
        ),
        (
            ClientFrame::Fetch {
                request_id: 8,
                group: "closed".into(),
                after_seq: 0,
                limit: 10,
            },
            ErrorCode::NotMember,
        ),
        (
            ClientFrame::Leave {
                request_id: 9,
                group: "closed".into(),
            },
            ErrorCode::NotMember,
        ),
    ];
    for (frame, code) in cases {
        carol.send(&frame).await;
        let reply = carol.read().await.unwrap();
        let ServerFrame::Error(e) = &reply else {
            panic!("{frame:?} -> {reply:?}")
        };
        assert_eq!(e.error_code(), Some(code), "{frame:?}");
        let expected_id = match &frame {
            ClientFrame::Send { request_id, .. }
            | ClientFrame::Join { request_id, .. }
            | ClientFrame::Fetch { request_id, .. }
            | ClientFrame::Leave { request_id, .. } => *request_id,
            _ => 0,
        };
        assert_eq!(e.request_id, expected_id);
    }
    // Still connected and useful.
    carol.send(&send(10, "team", "ok-1", 3)).await;
    assert!(matches!(
        carol.read().await,
        Some(ServerFrame::Ack {
            request_id: 10,
            seq: 1,
            ..
        })
    ));
}

#[tokio::test]
async fn no_client_reaches_another_tenants_groups() {
    let n = TestNode::start().await;
    // globex's "general" and acme's "general" are different groups.
    let mut acme = welcomed(&n, "alice").await;
    acme.send(&ClientFrame::Join {
        request_id: 1,
        group: "general".into(),
    })
    .await;
    assert!(matches!(
        acme.read().await,
        Some(ServerFrame::Joined { .. })
    ));
    let mut globex = n.raw().await;
    assert!(matches!(
        globex.hello(&n.token("globex", "alice")).await,
        ServerFrame::Welcome { .. }
    ));
    globex
        .send(&ClientFrame::Join {
            request_id: 1,
            group: "general".into(),
        })
        .await;
    assert!(matches!(
        globex.read().await,
        Some(ServerFrame::Joined { .. })
    ));
    // acme's closed groups do not exist for globex.
    globex
        .send(&ClientFrame::Fetch {
            request_id: 2,
            group: "team".into(),
            after_seq: 0,
            limit: 5,
        })
        .await;
    assert_eq!(
        error_code(&globex.read().await.unwrap()),
        ErrorCode::GroupNotFound
    );

    acme.send(&ClientFrame::Send {
        request_id: 2,
        group: "general".into(),
        client_msg_id: "a1".into(),
        body: body("acme only"),
    })
    .await;
    assert!(matches!(
        acme.read().await,
        Some(ServerFrame::Ack { seq: 1, .. })
    ));
    globex
        .send(&ClientFrame::Send {
            request_id: 3,
            group: "general".into(),
            client_msg_id: "g1".into(),
            body: body("globex only"),
        })
        .await;
    assert!(matches!(
        globex.read().await,
        Some(ServerFrame::Ack { seq: 1, .. })
    ));
    // Each sees exactly its own tenant's message as seq 1.
    let ServerFrame::Deliver(m) = acme.read_push().await.unwrap() else {
        panic!()
    };
    assert_eq!(m.body, body("acme only"));
    let ServerFrame::Deliver(m) = globex.read_push().await.unwrap() else {
        panic!()
    };
    assert_eq!(m.body, body("globex only"));
    globex
        .send(&ClientFrame::Fetch {
            request_id: 4,
            group: "general".into(),
            after_seq: 0,
            limit: 5,
        })
        .await;
    let Some(ServerFrame::FetchResult { messages, .. }) = globex.read().await else {
        panic!()
    };
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].sender, "alice");
    assert_eq!(messages[0].body, body("globex only"));
}

/// Every client frame that names a group, sent by another tenant's user for a group that
/// exists only in `acme` (and under a resume cursor in `Hello`): refused as if the group did
/// not exist, and nothing of `acme`'s changes. Presence reaches only the sender's tenant.
#[tokio::test]
async fn every_group_frame_is_confined_to_the_senders_tenant() {
    use switchboard_core::{GroupId, PresenceState, ReceiptKind, TenantId, UserId};
    use switchboard_store::Store;
    let n = TestNode::start().await;
    let mut alice = welcomed(&n, "alice").await;
    let mut bob = welcomed(&n, "bob").await;
    alice.send(&send(1, "team", b"acme team only")).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack { seq: 1, .. })
    ));

    // globex's `mallory`, resuming "team" as if it were hers.
    let mut mallory = n.raw().await;
    mallory
        .send(&ClientFrame::Hello(wire::Hello {
            token: n.token("globex", "mallory"),
            presence: PresenceState::Foreground,
            cursors: vec![wire::GroupCursor {
                group: "team".into(),
                seq: 0,
            }],
            client: "cross-tenant".into(),
        }))
        .await;
    let ServerFrame::Welcome { groups, .. } = mallory.read().await.unwrap() else {
        panic!("mallory is a valid globex user")
    };
    assert!(groups.iter().all(|g| g.group != "team"), "{groups:?}");

    let team = || "team".to_string();
    let frames = [
        ClientFrame::Join {
            request_id: 11,
            group: team(),
        },
        ClientFrame::Leave {
            request_id: 12,
            group: team(),
        },
        ClientFrame::Send {
            request_id: 13,
            group: team(),
            client_msg_id: "x1".into(),
            body: body("intruder"),
        },
        ClientFrame::Fetch {
            request_id: 14,
            group: team(),
            after_seq: 0,
            limit: 10,
        },
        // No answer on success: a refusal has request id 0.
        ClientFrame::AckDelivery {
            group: team(),
            seq: 1,
        },
        ClientFrame::Receipt {
            group: team(),
            seq: 1,
            kind: ReceiptKind::Read,
        },
    ];
    for f in &frames {
        mallory.send(f).await;
        let answer = mallory.read().await.expect("an answer");
        let ServerFrame::Error(e) = &answer else {
            panic!("{f:?} was answered {answer:?}");
        };
        let expected_id = match f {
            ClientFrame::Join { request_id, .. }
            | ClientFrame::Leave { request_id, .. }
            | ClientFrame::Send { request_id, .. }
            | ClientFrame::Fetch { request_id, .. } => *request_id,
            _ => 0,
        };
        assert_eq!(e.request_id, expected_id, "{f:?}");
        assert_eq!(
            error_code(&answer),
            ErrorCode::GroupNotFound,
            "{f:?}: {e:?}"
        );
    }

    // acme's group is as it was: members, log, receipts, no cursor for a globex user.
    let acme = TenantId::new("acme").unwrap();
    let gid = GroupId::new("team").unwrap();
    let mut members: Vec<String> = n
        .store
        .members(&acme, &gid)
        .unwrap()
        .iter()
        .map(|u| u.to_string())
        .collect();
    members.sort();
    assert_eq!(members, ["alice", "bob", "carol"]);
    let log = n.store.read_after(&acme, &gid, 0, 10).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].client_msg_id, "m1");
    assert!(n.store.receipts(&acme, &gid, 1).unwrap().is_empty());
    let mallory_id = UserId::new("mallory").unwrap();
    assert_eq!(n.store.cursor(&acme, &gid, &mallory_id).unwrap(), 0);
    assert!(!n.store.is_member(&acme, &gid, &mallory_id).unwrap());
    // globex has no such group either (nothing was created by the attempts).
    let globex_team = n
        .store
        .read_after(&TenantId::new("globex").unwrap(), &gid, 0, 10);
    assert!(globex_team.map_or(true, |v| v.is_empty()));

    // Presence: mallory's change reaches no acme member. Bob's notices arrive in order on
    // one stream, so the next one he reads being carol's means mallory's was never sent.
    mallory
        .send(&ClientFrame::Presence {
            state: PresenceState::Background,
        })
        .await;
    mallory.sync().await;
    let mut carol = welcomed(&n, "carol").await;
    carol
        .send(&ClientFrame::Presence {
            state: PresenceState::Background,
        })
        .await;
    carol.sync().await;
    // Before carol's arrival bob was told only of alice (his snapshot when he connected).
    let mut told = Vec::new();
    loop {
        match bob.read_push().await.unwrap() {
            ServerFrame::PresenceNotice { user, .. } if user == "carol" => break,
            ServerFrame::PresenceNotice { user, .. } => told.push(user),
            ServerFrame::Deliver(m) => assert_eq!(m.body, body("acme team only")),
            _ => {}
        }
    }
    assert_eq!(told, ["alice"]);
    // And alice got no receipt from mallory: her only notices are bob's and carol's
    // presence.
    let mut told = Vec::new();
    loop {
        match alice.read_push().await.unwrap() {
            ServerFrame::PresenceNotice { user, .. } if user == "carol" => break,
            ServerFrame::PresenceNotice { user, .. } => told.push(user),
            ServerFrame::ReceiptNotice { user, .. } => panic!("receipt from {user}"),
            _ => {}
        }
    }
    assert_eq!(told, ["bob"]);
}
