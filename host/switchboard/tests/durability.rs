//! Acks and deliveries wait for durability: a store whose flush the test holds open (or
//! fails) proves nothing is acknowledged or delivered before its flush returned.

mod common;

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use switchboard_core::{ErrorCode, GroupId, Limits, ReceiptKind, TenantId, UserId};
use switchboard_edge::{EdgeConfig, Node, TlsIdentity};
use switchboard_store::{
    Appended, GroupMeta, NewMessage, SledStore, Store, StoreError, StoredMessage, StoredReceipt,
    TenantRecord,
};
use switchboard_wire::{ClientFrame, Hello, ServerFrame};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// Each flush reports on `entered` and waits for one `release` message.
    Held,
    Fail,
}

struct GateStore {
    inner: SledStore,
    gate: Mutex<Gate>,
    /// While true, `put_receipt` waits (the receipt worker is stuck on a slow disk).
    receipts_held: (Mutex<bool>, std::sync::Condvar),
    entered: Mutex<std_mpsc::Sender<()>>,
    release: Mutex<std_mpsc::Receiver<()>>,
}

macro_rules! delegate {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&self, $($arg: $ty),*) -> $ret { self.inner.$name($($arg),*) })*
    };
}

impl Store for GateStore {
    delegate! {
        put_tenant(t: &TenantRecord) -> Result<(), StoreError>;
        tenant(id: &TenantId) -> Result<Option<TenantRecord>, StoreError>;
        tenants() -> Result<Vec<TenantRecord>, StoreError>;
        create_group(t: &TenantId, g: &GroupId, m: GroupMeta) -> Result<(), StoreError>;
        group(t: &TenantId, g: &GroupId) -> Result<Option<GroupMeta>, StoreError>;
        add_member(t: &TenantId, g: &GroupId, u: &UserId) -> Result<bool, StoreError>;
        remove_member(t: &TenantId, g: &GroupId, u: &UserId) -> Result<bool, StoreError>;
        is_member(t: &TenantId, g: &GroupId, u: &UserId) -> Result<bool, StoreError>;
        members(t: &TenantId, g: &GroupId) -> Result<Vec<UserId>, StoreError>;
        member_count(t: &TenantId, g: &GroupId) -> Result<Option<u32>, StoreError>;
        groups(t: &TenantId) -> Result<Vec<GroupId>, StoreError>;
        groups_of(t: &TenantId, u: &UserId) -> Result<Vec<GroupId>, StoreError>;
        append(t: &TenantId, g: &GroupId, m: NewMessage<'_>) -> Result<Appended, StoreError>;
        head(t: &TenantId, g: &GroupId) -> Result<u64, StoreError>;
        find_sent(t: &TenantId, g: &GroupId, u: &UserId, c: &str) -> Result<Option<u64>, StoreError>;
        read_after(t: &TenantId, g: &GroupId, a: u64, l: usize) -> Result<Vec<StoredMessage>, StoreError>;
        message(t: &TenantId, g: &GroupId, s: u64) -> Result<Option<StoredMessage>, StoreError>;
        advance_cursor(t: &TenantId, g: &GroupId, u: &UserId, s: u64) -> Result<u64, StoreError>;
        cursor(t: &TenantId, g: &GroupId, u: &UserId) -> Result<u64, StoreError>;
        receipts(t: &TenantId, g: &GroupId, s: u64) -> Result<Vec<StoredReceipt>, StoreError>;
    }

    fn put_receipt(
        &self,
        t: &TenantId,
        g: &GroupId,
        s: u64,
        r: &StoredReceipt,
    ) -> Result<(), StoreError> {
        let (held, cv) = &self.receipts_held;
        let _held = cv.wait_while(held.lock().unwrap(), |held| *held).unwrap();
        self.inner.put_receipt(t, g, s, r)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let gate = *self.gate.lock().unwrap();
        match gate {
            Gate::Open => self.inner.flush(),
            Gate::Fail => Err(StoreError::Io("injected: disk full".into())),
            Gate::Held => {
                let _ = self.entered.lock().unwrap().send(());
                let _ = self.release.lock().unwrap().recv();
                self.inner.flush()
            }
        }
    }
}

struct Harness {
    node: Node,
    store: Arc<GateStore>,
    entered: std_mpsc::Receiver<()>,
    release: std_mpsc::Sender<()>,
    cert: Vec<u8>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(Limits {
        load_sample_ms: 0,
        ..Limits::default()
    })
    .await
}

async fn harness_with(limits: Limits) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let inner = SledStore::open(&dir.path().join("store")).unwrap();
    seed(&inner);
    let (entered_tx, entered) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    let store = Arc::new(GateStore {
        inner,
        gate: Mutex::new(Gate::Open),
        receipts_held: (Mutex::new(false), std::sync::Condvar::new()),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    });
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
    Harness {
        node,
        store,
        entered,
        release,
        cert,
        _dir: dir,
    }
}

impl Harness {
    async fn member(&self, user: &str) -> RawClient {
        let mut c = RawClient::connect(self.node.local_addr(), &self.cert, switchboard_wire::ALPN)
            .await
            .unwrap();
        c.send(&ClientFrame::Hello(Hello {
            token: mint("acme", user, ACME_SECRET, now_secs() + 600, 0),
            presence: Default::default(),
            cursors: vec![],
            client: "test".into(),
        }))
        .await;
        assert!(matches!(c.read().await, Some(ServerFrame::Welcome { .. })));
        c
    }

    fn hold_receipts(&self, held: bool) {
        let (h, cv) = &self.store.receipts_held;
        *h.lock().unwrap() = held;
        cv.notify_all();
    }

    fn set(&self, g: Gate) {
        *self.store.gate.lock().unwrap() = g;
    }

    async fn wait_flush_entered(&self) {
        // The flush runs on a blocking thread; wait for it without blocking the runtime.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match self.entered.try_recv() {
                Ok(()) => return,
                Err(_) if std::time::Instant::now() < deadline => tokio::task::yield_now().await,
                Err(e) => panic!("flush never started: {e}"),
            }
        }
    }
}

fn send(request_id: u64, id: &str) -> ClientFrame {
    ClientFrame::Send {
        request_id,
        group: "team".into(),
        client_msg_id: id.into(),
        body: body(id),
    }
}

#[tokio::test]
async fn nothing_is_acked_or_delivered_before_its_flush_returns() {
    let h = harness().await;
    let mut alice = h.member("alice").await;
    let mut bob = h.member("bob").await;
    h.set(Gate::Held);
    alice.send(&send(1, "m1")).await;
    h.wait_flush_entered().await;
    // The message is appended and its flush is in progress. Responses on a stream are FIFO:
    // had the ack been queued before the flush, it would come before this Pong.
    alice.send(&ClientFrame::Ping { request_id: 2 }).await;
    assert_eq!(
        alice.read().await,
        Some(ServerFrame::Pong { request_id: 2 })
    );
    assert_eq!(
        h.node.hub().metrics().snapshot().deliveries_live,
        0,
        "not delivered yet"
    );
    // Fetch does not show it either: only durable messages are visible.
    bob.send(&ClientFrame::Fetch {
        request_id: 1,
        group: "team".into(),
        after_seq: 0,
        limit: 10,
    })
    .await;
    assert!(matches!(
        bob.read().await,
        Some(ServerFrame::FetchResult { head_seq: 0, ref messages, .. }) if messages.is_empty()
    ));
    h.set(Gate::Open);
    h.release.send(()).unwrap();
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack {
            request_id: 1,
            seq: 1,
            duplicate: false,
            ..
        })
    ));
    // Alice's presence (bob's snapshot) may come first.
    assert_eq!(next_deliver(&mut bob).await.seq, 1);
}

#[tokio::test]
async fn a_failed_flush_is_answered_outcome_unknown_and_a_resend_is_acked_once() {
    let h = harness().await;
    let mut alice = h.member("alice").await;
    let mut bob = h.member("bob").await;
    h.set(Gate::Fail);
    alice.send(&send(1, "m1")).await;
    let reply = alice.read().await.unwrap();
    // The append was made before the flush failed: the message may be stored, so the node
    // must not say "not stored" (StoreUnavailable).
    assert_eq!(error_code(&reply), ErrorCode::OutcomeUnknown);
    let ServerFrame::Error(e) = &reply else {
        unreachable!()
    };
    assert!(e.retry_after_ms > 0, "{e:?}");
    assert!(ErrorCode::OutcomeUnknown.is_retryable());
    assert_eq!(h.node.hub().metrics().snapshot().flush_failures, 1);
    // Storage is back; the client resends with the same id — and it had in fact been
    // written: the answer is a duplicate ack at its original number.
    h.set(Gate::Open);
    alice.send(&send(2, "m1")).await;
    let Some(ServerFrame::Ack {
        request_id: 2,
        seq: 1,
        duplicate: true,
        ..
    }) = alice.read().await
    else {
        panic!()
    };
    alice.send(&send(3, "m2")).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack {
            request_id: 3,
            seq: 2,
            duplicate: false,
            ..
        })
    ));
    // Bob sees each message exactly once, in order.
    for want in [1, 2] {
        assert_eq!(next_deliver(&mut bob).await.seq, want);
    }
    // And the receipt path reads the same log.
    bob.send(&ClientFrame::Receipt {
        group: "team".into(),
        seq: 2,
        kind: ReceiptKind::Delivered,
    })
    .await;
    bob.send(&ClientFrame::Ping { request_id: 9 }).await;
    assert_eq!(bob.read().await, Some(ServerFrame::Pong { request_id: 9 }));
}

/// The SDK resends a send answered `OutcomeUnknown` by itself, with the same client message
/// id, so the app sees one ack for one stored message (not an error it might "fix" by
/// sending the content again under a new id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_resends_a_send_whose_outcome_is_unknown_with_the_same_id() {
    let h = harness().await;
    let mut bob = h.member("bob").await;
    let mut cfg = switchboard_client::ClientConfig::new(
        h.node.local_addr(),
        h.cert.clone(),
        mint("acme", "alice", ACME_SECRET, now_secs() + 600, 0),
    );
    cfg.request_timeout = WAIT;
    let (alice, _events) = switchboard_client::Client::connect(cfg).await.unwrap();
    h.set(Gate::Fail);
    let sending = tokio::spawn(async move {
        let ack = alice.send_with_id("team", "only-once", &b"hello"[..]).await;
        (alice, ack)
    });
    // The first attempt's flush fails; then storage is back before the SDK's resend (the
    // node asks for 1 s; should the resend meet the failure too, it is resent again).
    let deadline = std::time::Instant::now() + WAIT;
    while h.node.hub().metrics().snapshot().flush_failures == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no flush was attempted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    h.set(Gate::Open);
    let (alice, ack) = sending.await.unwrap();
    let ack = ack.expect("the SDK resolved the unknown outcome itself");
    assert_eq!((ack.seq, ack.duplicate), (1, true), "{ack:?}");
    assert_eq!(ack.client_msg_id, "only-once");
    // One message in the log, delivered once.
    let (acme, team) = (
        TenantId::new("acme").unwrap(),
        GroupId::new("team").unwrap(),
    );
    assert_eq!(h.store.head(&acme, &team).unwrap(), 1);
    let m = next_deliver(&mut bob).await;
    assert_eq!((m.seq, m.client_msg_id.as_str()), (1, "only-once"));
    assert_eq!(alice.send("team", &b"next"[..]).await.unwrap().seq, 2);
    assert_eq!(next_deliver(&mut bob).await.seq, 2);
}

/// Receipts have their own bounded queue and worker: with the worker stuck on the store, a
/// flood of receipts fills only that queue (the excess is shed and counted) while messages
/// sent at the same time are acked and delivered as usual; once the store moves again the
/// queued receipts are stored and forwarded.
#[tokio::test]
async fn a_flood_of_receipts_does_not_delay_messages() {
    use switchboard_edge::receipts::RECEIPT_QUEUE;
    let h = harness_with(Limits {
        user_receipts_per_sec: 0,
        load_sample_ms: 0,
        ..Limits::default()
    })
    .await;
    let mut alice = h.member("alice").await;
    let mut bob = h.member("bob").await;
    alice.send(&send(1, "m1")).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack { seq: 1, .. })
    ));
    assert_eq!(next_deliver(&mut bob).await.seq, 1);

    h.hold_receipts(true);
    let flood = RECEIPT_QUEUE as u64 + 2_000;
    for _ in 0..flood {
        bob.send(&ClientFrame::Receipt {
            group: "team".into(),
            seq: 1,
            kind: ReceiptKind::Read,
        })
        .await;
    }
    bob.sync().await; // every receipt was taken: queued, or shed
    let shed = h.node.hub().metrics().snapshot().receipts_shed;
    // The worker took up to one batch (512) before it got stuck; the queue holds the rest.
    assert!(
        (flood - RECEIPT_QUEUE as u64 - 512..=flood - RECEIPT_QUEUE as u64).contains(&shed),
        "shed {shed}"
    );

    // Messages go through while receipts cannot be stored.
    alice.send(&send(2, "m2")).await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Ack { seq: 2, .. })
    ));
    assert_eq!(next_deliver(&mut bob).await.seq, 2);
    assert_eq!(h.node.hub().metrics().snapshot().receipts_forwarded, 0);

    h.hold_receipts(false);
    let deadline = std::time::Instant::now() + WAIT;
    while h.node.hub().metrics().snapshot().receipts_forwarded < flood - shed {
        assert!(
            std::time::Instant::now() < deadline,
            "receipts not processed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        h.store
            .receipts(
                &TenantId::new("acme").unwrap(),
                &GroupId::new("team").unwrap(),
                1
            )
            .unwrap()
            .len(),
        1,
        "one receipt per reader and message"
    );
}

/// The node measures its own load: sends piling up behind a slow disk (the flush is held)
/// fill the commit queue past a quarter of its bound and raise the level; once the disk
/// moves again the level comes back down, after the calm period.
#[tokio::test]
async fn the_load_level_follows_the_commit_queue_with_hysteresis() {
    let h = harness_with(Limits {
        load_sample_ms: 20,
        ..Limits::default()
    })
    .await;
    let hub = h.node.hub().clone();
    let mut clients = Vec::new();
    for user in ["alice", "bob", "carol", "alice", "bob"] {
        clients.push(h.member(user).await);
    }
    h.set(Gate::Held);
    let per_client = Limits::default().max_inflight_sends as u64;
    for (i, c) in clients.iter_mut().enumerate() {
        for j in 0..per_client {
            c.send(&send(j + 1, &format!("c{i}-{j}"))).await;
        }
    }
    h.wait_flush_entered().await;
    let deadline = std::time::Instant::now() + WAIT;
    // First the queue fills (the sends reach the hub at the machine's pace), then the level
    // must rise while it stays full. On a busy machine the event loop's lag can raise the
    // level before the queue is full; asserting the queue at the first rise failed then.
    while hub.commit_queue_percent() < 25 {
        assert!(
            std::time::Instant::now() < deadline,
            "the commit queue never filled: {}%",
            hub.commit_queue_percent()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    while hub.load_level() == 0 {
        assert!(std::time::Instant::now() < deadline, "the level never rose");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        hub.commit_queue_percent() >= 25,
        "the flush is held: the queue cannot drain"
    );
    h.set(Gate::Open);
    h.release.send(()).unwrap();
    for c in &mut clients {
        for _ in 0..per_client {
            assert!(matches!(c.read().await, Some(ServerFrame::Ack { .. })));
        }
    }
    while hub.load_level() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the level never came down"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // (How long it waits before stepping down is `load.rs`'s unit tests: the queue drained
    // while the acks were being read, so the calm period started before this point.)
    assert!(hub.metrics().snapshot().load_level_changes >= 2);
}
