//! Presence over real QUIC (protocol §11): a new session is told its co-members' current
//! state, one notice per user, capped; co-members are told when a user's state changes
//! because a session of it arrived or left, and that it is offline when its last session
//! closes; in large
//! groups only explicit changes are told.
//!
//! A user's notices are queued in order on a session's notices stream, so each test ends
//! what it reads with a marker: a later notice of another user.

mod common;

use common::*;
use switchboard_core::{GroupId, Limits, PresenceState, TenantId, UserId};
use switchboard_store::{GroupMeta, Store};
use switchboard_wire::{self as wire, ClientFrame, ServerFrame};

use PresenceState::{Background, Foreground};

/// A session of `user` (tenant `tenant`) that said `Hello` in `presence`.
async fn session(n: &TestNode, tenant: &str, user: &str, presence: PresenceState) -> RawClient {
    let mut c = n.raw().await;
    c.send(&ClientFrame::Hello(wire::Hello {
        token: n.token(tenant, user),
        presence,
        cursors: vec![],
        client: "presence-test".into(),
    }))
    .await;
    let w = c.read().await.expect("an answer to hello");
    assert!(matches!(w, ServerFrame::Welcome { .. }), "{w:?}");
    c
}

/// A presence notice: the user, its state, and whether it is online.
type Told = (String, PresenceState, bool);

/// The presence notices `c` reads up to and including `marker`; other pushes are skipped.
async fn told_until(c: &mut RawClient, marker: Told) -> Vec<Told> {
    let mut told = Vec::new();
    loop {
        if let ServerFrame::PresenceNotice {
            user,
            state,
            online,
        } = c.read_push().await.expect("push streams ended")
        {
            let notice = (user, state, online);
            let end = notice == marker;
            told.push(notice);
            if end {
                return told;
            }
        }
    }
}

fn is(user: &str, state: PresenceState) -> Told {
    (user.to_string(), state, true)
}

/// The notice of a user whose last session closed.
fn offline(user: &str) -> Told {
    (user.to_string(), Background, false)
}

#[tokio::test]
async fn a_new_session_is_told_each_connected_co_members_state_once() {
    let n = TestNode::start().await;
    // Bob has two devices, one in the foreground: he is in the foreground. Carol is in the
    // background. Dave shares no group with alice, mallory is another tenant's.
    let _bob_phone = session(&n, "acme", "bob", Foreground).await;
    let _bob_tablet = session(&n, "acme", "bob", Background).await;
    let mut carol = session(&n, "acme", "carol", Background).await;
    let _dave = session(&n, "acme", "dave", Foreground).await;
    let _mallory = session(&n, "globex", "mallory", Foreground).await;
    // Alice's other device: her own presence is never told to her.
    let _alice_phone = session(&n, "acme", "alice", Foreground).await;

    let mut alice = session(&n, "acme", "alice", Foreground).await;
    // Carol's change is queued after the snapshot: the marker.
    carol
        .send(&ClientFrame::Presence { state: Foreground })
        .await;
    carol.sync().await;
    let mut snapshot = told_until(&mut alice, is("carol", Foreground)).await;
    assert_eq!(snapshot.pop(), Some(is("carol", Foreground)), "the marker");
    snapshot.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(snapshot, [is("bob", Foreground), is("carol", Background)]);
}

#[tokio::test]
async fn a_co_members_disconnect_is_told_and_so_is_the_return() {
    let n = TestNode::start().await;
    let mut alice = session(&n, "acme", "alice", Foreground).await;

    // Bob arrives, then his only session closes: he is told as offline.
    let bob = session(&n, "acme", "bob", Foreground).await;
    assert_eq!(
        told_until(&mut alice, is("bob", Foreground)).await,
        [is("bob", Foreground)]
    );
    bob.conn.close(0u32.into(), b"bye");
    assert_eq!(
        told_until(&mut alice, offline("bob")).await,
        [offline("bob")]
    );

    // He comes back (told again), opens a second session in the background, and closes the
    // foreground one: on his remaining device he is in the background.
    let bob_phone = session(&n, "acme", "bob", Foreground).await;
    let mut bob_tablet = session(&n, "acme", "bob", Background).await;
    bob_tablet.sync().await; // registered before the phone goes
    bob_phone.conn.close(0u32.into(), b"bye");
    assert_eq!(
        told_until(&mut alice, is("bob", Background)).await,
        [is("bob", Foreground), is("bob", Background)]
    );

    // His last session, in the background, closes: alice knew him in the background, and
    // is told he is offline now. His return is told, and carol's arrival marks the end.
    bob_tablet.conn.close(0u32.into(), b"bye");
    assert_eq!(
        told_until(&mut alice, offline("bob")).await,
        [offline("bob")]
    );
    let _bob = session(&n, "acme", "bob", Foreground).await;
    let _carol = session(&n, "acme", "carol", Foreground).await;
    assert_eq!(
        told_until(&mut alice, is("carol", Foreground)).await,
        [is("bob", Foreground), is("carol", Foreground)]
    );
}

#[tokio::test]
async fn the_presence_snapshot_is_capped_at_half_the_notice_queue() {
    let n = TestNode::start_with(Limits {
        // The snapshot takes at most 4 of the 8 places of the notices queue.
        outbox_frames: 8,
        ..Limits::default()
    })
    .await;
    let acme = TenantId::new("acme").unwrap();
    let crowd = GroupId::new("crowd").unwrap();
    let others = ["u1", "u2", "u3", "u4", "u5", "u6"];
    n.store
        .create_group(
            &acme,
            &crowd,
            GroupMeta {
                open: true,
                max_members: 100,
            },
        )
        .unwrap();
    for m in others.iter().chain(&["alice"]) {
        n.store
            .add_member(&acme, &crowd, &UserId::new(m).unwrap())
            .unwrap();
    }
    n.store.flush().unwrap();
    let mut sessions = Vec::new();
    for u in others {
        sessions.push(session(&n, "acme", u, Foreground).await);
    }

    let mut alice = session(&n, "acme", "alice", Foreground).await;
    let marker = &mut sessions[0];
    marker
        .send(&ClientFrame::Presence { state: Background })
        .await;
    marker.sync().await;
    let mut snapshot = told_until(&mut alice, is("u1", Background)).await;
    snapshot.pop();
    assert_eq!(snapshot.len(), 4, "{snapshot:?}");
    let mut users: Vec<&str> = snapshot.iter().map(|(u, _, _)| u.as_str()).collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 4, "one notice per user: {snapshot:?}");
    assert!(snapshot
        .iter()
        .all(|(_, s, online)| *s == Foreground && *online));
    assert_eq!(n.hub().metrics().snapshot().notices_dropped, 0);
}

/// In a large group (`nudge_background_from_members`) a connect would tell every member and
/// every member connecting would make that the square of the group: arrivals, departures and
/// snapshots skip it, explicit changes are still told.
#[tokio::test]
async fn arrivals_and_snapshots_skip_large_groups_and_changes_do_not() {
    let n = TestNode::start_with(Limits {
        // "team" (alice, bob, carol) is large, "closed" (alice, bob) is not.
        nudge_background_from_members: 3,
        ..Limits::default()
    })
    .await;
    let mut carol = session(&n, "acme", "carol", Foreground).await;
    let mut bob = session(&n, "acme", "bob", Foreground).await;
    let mut alice = session(&n, "acme", "alice", Foreground).await;
    // Alice's snapshot holds bob ("closed"), not carol (only "team"); carol's change is
    // told to her all the same, and marks the end.
    carol
        .send(&ClientFrame::Presence { state: Background })
        .await;
    carol.sync().await;
    assert_eq!(
        told_until(&mut alice, is("carol", Background)).await,
        [is("bob", Foreground), is("carol", Background)]
    );
    // Carol shares only "team" with bob and alice: she was told of neither arrival, and
    // bob's change is the first notice she gets.
    bob.send(&ClientFrame::Presence { state: Background }).await;
    bob.sync().await;
    assert_eq!(
        told_until(&mut carol, is("bob", Background)).await,
        [is("bob", Background)]
    );
}

/// An arrival over the user's presence limit opens the session all the same, is not told,
/// and is answered right after `Welcome` with `RateLimited`; stating the presence after the
/// retry-after tells co-members.
#[tokio::test]
async fn an_arrival_over_the_presence_limit_is_refused_after_welcome_and_told_when_stated() {
    let n = TestNode::start_with(Limits {
        user_presence_per_sec: 1,
        user_presence_burst: 1,
        ..Limits::default()
    })
    .await;
    let mut bob = session(&n, "acme", "bob", Foreground).await;
    // Alice's first arrival takes her only token; her leaving is free.
    let alice = session(&n, "acme", "alice", Foreground).await;
    assert_eq!(
        told_until(&mut bob, is("alice", Foreground)).await,
        [is("alice", Foreground)]
    );
    alice.conn.close(0u32.into(), b"bye");
    assert_eq!(
        told_until(&mut bob, offline("alice")).await,
        [offline("alice")]
    );

    let mut alice = session(&n, "acme", "alice", Foreground).await;
    let refusal = alice.read().await.expect("an answer after Welcome");
    let ServerFrame::Error(e) = &refusal else {
        panic!("expected RateLimited, got {refusal:?}")
    };
    assert_eq!(
        (e.request_id, e.error_code()),
        (0, Some(switchboard_core::ErrorCode::RateLimited))
    );
    assert!(e.retry_after_ms > 0, "{e:?}");
    assert_eq!(n.hub().metrics().snapshot().rate_limited_presence, 1);
    // The session works, and after the retry-after its state is told.
    tokio::time::sleep(std::time::Duration::from_millis(e.retry_after_ms.into())).await;
    alice
        .send(&ClientFrame::Presence { state: Foreground })
        .await;
    assert!(
        alice.sync().await.is_empty(),
        "allowed after the retry-after"
    );
    assert_eq!(
        told_until(&mut bob, is("alice", Foreground)).await,
        [is("alice", Foreground)]
    );
}
