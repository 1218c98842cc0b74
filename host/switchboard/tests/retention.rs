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

/// alice, connected, after each of her `MESSAGES` sends to `team` was acked in order.
async fn alice_sent_all(addr: std::net::SocketAddr, cert: &[u8]) -> RawClient {
    let mut alice = RawClient::connect(addr, cert, switchboard_wire::ALPN)
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
    alice
}

/// `team`'s first kept seq, checked: retention deleted the oldest segments and kept at
/// least the newest `KEEP` messages.
fn first_kept(store: &dyn Store, report: &str) -> u64 {
    let (acme, team) = (
        TenantId::new("acme").unwrap(),
        GroupId::new("team").unwrap(),
    );
    let first = store.first_seq(&acme, &team).unwrap();
    assert!(
        first > 1 && first <= MESSAGES - KEEP + 1,
        "retention deleted the oldest segments: first retained {first}, {report}"
    );
    first
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

    let mut alice = alice_sent_all(node.local_addr(), &cert).await;

    // bob (a member since before the first message, never connected) is now 60 behind;
    // retention keeps the newest 10 and whatever shares their segments.
    let report = store.enforce_retention(now_secs() * 1000).unwrap();
    let first = first_kept(&*store, &format!("{report:?}"));

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

const ADMIN_TOKEN: &str = "retention-test-admin-token-0123456789";

/// `switchboard ctl --json ARGS…` against `url`; its exit code and parsed output.
fn ctl(url: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.arg("ctl")
        .args(args)
        .env("SWITCHBOARD_ADMIN_URL", url)
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN);
    let out = tokio::task::block_in_place(|| cmd.output()).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json, stdout)
}

/// The limits from the node's config and the log's size through the admin API; a pass run
/// on demand deletes the segments every group is done with; a group's `first_seq` says
/// where its kept messages start. The real node, started from a config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_shown_and_run_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
         [limits]\nmax_frame_bytes = 4096\nmax_payload_bytes = 2048\nload_sample_ms = 0\n\
         [store]\nsegment_bytes = 8192\nretention_check_s = 0\n\
         [store.retention]\nmax_messages = {KEEP}\n\
         [[store.retention.tenants]]\ntenant = \"globex\"\nmax_age_s = 86400\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n"
    );
    std::fs::write(dir.path().join("node.toml"), text).unwrap();
    let mut cfg = switchboard::Config::load(&dir.path().join("node.toml")).unwrap();
    // As `token_env` would give it, without touching this process's environment.
    cfg.admin.token = Some(ADMIN_TOKEN.into());
    let store = switchboard::open_store_for(&cfg).unwrap();
    seed(&*store);
    let (identity, _) = switchboard::identity(&cfg).unwrap();
    let cert = identity.cert_chain[0].to_vec();
    let node = switchboard::start(&cfg, store.clone()).await.unwrap();
    let url = format!("http://{}", node.admin_addr.unwrap());

    let (code, info, out) = ctl(&url, &["--json", "node", "retention"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(info["supported"], true);
    assert_eq!(info["limited"], true);
    assert_eq!(info["default"]["max_messages"], KEEP);
    assert_eq!(info["default"]["max_age_s"], serde_json::Value::Null);
    assert_eq!(info["tenants"][0]["tenant"], "globex");
    assert_eq!(info["tenants"][0]["limits"]["max_age_s"], 86_400);

    let _alice = alice_sent_all(node.node.local_addr(), &cert).await;
    let (_, before, _) = ctl(&url, &["--json", "node", "retention"]);
    let segments_before = before["segments"].as_u64().unwrap();
    assert!(
        segments_before >= 4,
        "60 messages of ~0.5 KiB fill several 8 KiB segments"
    );

    let (code, pass, out) = ctl(&url, &["--json", "node", "retention", "--run"]);
    assert_eq!(code, 0, "{out}");
    let deleted = pass["segments_deleted"].as_u64().unwrap();
    assert!(deleted > 0, "{pass}");
    assert!(pass["bytes_deleted"].as_u64().unwrap() > 0, "{pass}");
    assert_eq!(
        pass["segments"].as_u64().unwrap(),
        segments_before - deleted
    );

    let first = first_kept(&*store, &format!("{pass}"));
    let (_, group, _) = ctl(&url, &["--json", "group", "show", "acme", "team"]);
    assert_eq!(group["first_seq"], first);
    assert_eq!(group["head"], MESSAGES);

    // A second pass finds nothing more to delete; the human summary names every limit.
    let (_, again, _) = ctl(&url, &["--json", "node", "retention", "--run"]);
    assert_eq!(again["segments_deleted"], 0);
    let (code, _, human) = ctl(&url, &["node", "retention"]);
    assert_eq!(code, 0);
    assert!(human.contains("retention on"), "{human}");
    assert!(
        human.contains(&format!("every group: max {KEEP} messages")),
        "{human}"
    );
    assert!(human.contains("tenant globex: max age 86400 s"), "{human}");
    node.shutdown().await;
}
