//! The group-log contract of [`Store`], run against every implementation: `MemStore`,
//! `SledStore`, and `NodeStore` with messages in sled, in the segment log (default settings,
//! and tiny segments with a dense index and four shards, so reads cross segment and shard
//! boundaries), or in the segment log through the `LogBackend` seam.
//!
//! Other crates run it against their own implementations with the feature `contract`: a
//! [`Harness`] that opens their store, and [`store_contract!`](crate::store_contract) to make
//! the tests (one module per harness).

use std::path::Path;
use std::sync::Arc;

use switchboard_core::{Lane, UserId};

use crate::segment::SegmentLogConfig;
use crate::{
    Appended, MemStore, MessageLog, NewMessage, NodeStore, SledStore, SledStoreConfig, Store,
    StoreError,
};

pub use crate::test_ids::{g, t, u};

pub fn msg<'a>(sender: &'a UserId, id: &'a str, body: &'a [u8]) -> NewMessage<'a> {
    NewMessage {
        sender,
        lane: Lane::Normal,
        client_msg_id: id,
        sent_at_ms: 1_000,
        body,
    }
}

/// Opens a sled store in `dir`, retrying while a store dropped just before still holds
/// sled's file lock (its threads let go asynchronously).
pub fn open_sled(dir: &Path) -> SledStore {
    let config = SledStoreConfig::new(dir.join("store"))
        .cache_capacity_bytes(8 << 20)
        .flush_every_ms(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open_with(config.clone()) {
            Ok(store) => return store,
            Err(StoreError::Io(e))
                if e.contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
}

/// How to open one implementation; `None` from `open` for a store that cannot be reopened.
pub trait Harness {
    fn open(dir: &Path) -> Option<Arc<dyn Store>>;
}

pub struct Mem;
impl Harness for Mem {
    fn open(_: &Path) -> Option<Arc<dyn Store>> {
        thread_local!(static ONCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        // Opened once per test thread: a second open would be a new, empty store.
        let first = ONCE.with(|o| !o.replace(true));
        first.then(|| Arc::new(MemStore::new()) as Arc<dyn Store>)
    }
}

pub struct Sled;
impl Harness for Sled {
    fn open(dir: &Path) -> Option<Arc<dyn Store>> {
        Some(Arc::new(open_sled(dir)))
    }
}

pub struct NodeOnSled;
impl Harness for NodeOnSled {
    fn open(dir: &Path) -> Option<Arc<dyn Store>> {
        let store =
            NodeStore::open(open_sled(dir), MessageLog::Sled, Some(dir.join("messages"))).unwrap();
        Some(Arc::new(store))
    }
}

pub struct Segment;
impl Harness for Segment {
    fn open(dir: &Path) -> Option<Arc<dyn Store>> {
        let config = SegmentLogConfig::new(dir.join("messages"));
        let store = NodeStore::open(open_sled(dir), MessageLog::Segment(config), None).unwrap();
        Some(Arc::new(store))
    }
}

pub struct TinySegments;
impl Harness for TinySegments {
    fn open(dir: &Path) -> Option<Arc<dyn Store>> {
        let config = SegmentLogConfig::new(dir.join("messages"))
            .shards(4)
            .segment_bytes(8 << 10)
            .max_record_bytes(8 << 10)
            .index_interval(3)
            .write_buffer_bytes(1 << 10);
        let store = NodeStore::open(open_sled(dir), MessageLog::Segment(config), None).unwrap();
        Some(Arc::new(store))
    }
}

/// The segment log through the `LogBackend` seam (as the cluster's log plugs in).
pub struct SegmentBackend;
impl Harness for SegmentBackend {
    fn open(dir: &Path) -> Option<Arc<dyn Store>> {
        let log = crate::SegmentLog::open(SegmentLogConfig::new(dir.join("messages"))).unwrap();
        let backend = MessageLog::Backend(Arc::new(log));
        let store = NodeStore::open(open_sled(dir), backend, None).unwrap();
        Some(Arc::new(store))
    }
}

/// Creates the group unless it exists (`MemStore` appends only to existing groups).
fn ensure(store: &dyn Store, tenant: &str, group: &str) {
    let meta = crate::GroupMeta {
        open: true,
        max_members: 10,
    };
    match store.create_group(&t(tenant), &g(group), meta) {
        Ok(()) | Err(StoreError::GroupExists(_)) => {}
        Err(e) => panic!("create {group}: {e}"),
    }
}

/// Appends `n` messages from `sender` with client ids `{prefix}{i}`; returns their seqs.
fn append_n(store: &dyn Store, group: &str, sender: &str, prefix: &str, n: u64) -> Vec<u64> {
    ensure(store, "acme", group);
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i}");
            let body = body(prefix, i);
            match store
                .append(&t("acme"), &g(group), msg(&u(sender), &id, &body))
                .unwrap()
            {
                Appended::New { seq } => seq,
                dup => panic!("unexpected {dup:?}"),
            }
        })
        .collect()
}

/// A body whose size varies from empty to a few KiB.
fn body(prefix: &str, i: u64) -> Vec<u8> {
    let len = (i * 37 % 3000) as usize;
    format!("{prefix}{i}:")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

fn seqs(store: &dyn Store, group: &str, after: u64, limit: usize) -> Vec<u64> {
    store
        .read_after(&t("acme"), &g(group), after, limit)
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect()
}

pub fn appends_number_from_one_without_gaps<H: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let store = H::open(dir.path()).unwrap();
    assert_eq!(store.head(&t("acme"), &g("a")).unwrap(), 0);
    assert_eq!(append_n(&*store, "a", "ann", "m", 5), vec![1, 2, 3, 4, 5]);
    assert_eq!(store.head(&t("acme"), &g("a")).unwrap(), 5);
    assert_eq!(store.first_seq(&t("acme"), &g("a")).unwrap(), 1);
}

pub fn duplicates_return_the_earlier_seq_per_sender_and_group<H: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let store = H::open(dir.path()).unwrap();
    let (acme, ann, bob) = (t("acme"), u("ann"), u("bob"));
    for (tenant, group) in [("acme", "a"), ("acme", "b"), ("globex", "a")] {
        ensure(&*store, tenant, group);
    }
    let append = |group: &str, sender: &UserId, id: &str| {
        store
            .append(&acme, &g(group), msg(sender, id, b"x"))
            .unwrap()
    };
    assert_eq!(append("a", &ann, "1"), Appended::New { seq: 1 });
    assert_eq!(append("a", &bob, "1"), Appended::New { seq: 2 });
    assert_eq!(append("b", &ann, "1"), Appended::New { seq: 1 });
    assert_eq!(append("a", &ann, "1"), Appended::Duplicate { seq: 1 });
    assert_eq!(append("a", &bob, "1"), Appended::Duplicate { seq: 2 });
    assert_eq!(store.head(&acme, &g("a")).unwrap(), 2);
    let find = |group: &str, sender: &UserId, id: &str| {
        store.find_sent(&acme, &g(group), sender, id).unwrap()
    };
    assert_eq!(find("a", &ann, "1"), Some(1));
    assert_eq!(find("a", &bob, "1"), Some(2));
    assert_eq!(find("a", &ann, "2"), None);
    assert_eq!(find("c", &ann, "1"), None);
    // Another tenant's group of the same name is another log.
    assert_eq!(
        store
            .append(&t("globex"), &g("a"), msg(&ann, "1", b"x"))
            .unwrap(),
        Appended::New { seq: 1 }
    );
}

pub fn messages_read_back_as_written<H: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let store = H::open(dir.path()).unwrap();
    ensure(&*store, "acme", "a");
    let long_id = "ü/\0 ".repeat(100);
    let sender = u("ann");
    let m = NewMessage {
        sender: &sender,
        lane: Lane::High,
        client_msg_id: &long_id,
        sent_at_ms: 1234,
        body: &[7; 4000],
    };
    let seq = store.append(&t("acme"), &g("a"), m).unwrap().seq();
    let empty = store
        .append(&t("acme"), &g("a"), msg(&sender, "e", b""))
        .unwrap()
        .seq();
    let got = store.message(&t("acme"), &g("a"), seq).unwrap().unwrap();
    assert_eq!(
        (got.seq, got.lane, got.sender.as_str(), got.sent_at_ms),
        (1, Lane::High, "ann", 1234)
    );
    assert_eq!(got.client_msg_id, long_id);
    assert_eq!(&got.body[..], &[7; 4000][..]);
    let got = store.message(&t("acme"), &g("a"), empty).unwrap().unwrap();
    assert!(got.body.is_empty());
    assert_eq!(store.message(&t("acme"), &g("a"), 3).unwrap(), None);
    assert_eq!(store.message(&t("acme"), &g("a"), 0).unwrap(), None);
    assert_eq!(store.message(&t("acme"), &g("zz"), 1).unwrap(), None);
}

pub fn read_after_is_bounded_and_ordered<H: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let store = H::open(dir.path()).unwrap();
    append_n(&*store, "a", "ann", "m", 30);
    assert_eq!(seqs(&*store, "a", 0, 100), (1..=30).collect::<Vec<_>>());
    assert_eq!(seqs(&*store, "a", 10, 5), vec![11, 12, 13, 14, 15]);
    assert_eq!(seqs(&*store, "a", 29, 5), vec![30]);
    assert!(seqs(&*store, "a", 30, 5).is_empty());
    assert!(seqs(&*store, "a", 0, 0).is_empty());
    assert!(seqs(&*store, "a", u64::MAX, 5).is_empty());
    assert!(seqs(&*store, "nope", 0, 5).is_empty());
    for m in store.read_after(&t("acme"), &g("a"), 0, 100).unwrap() {
        let i = m.seq - 1;
        assert_eq!(m.client_msg_id, format!("m{i}"));
        assert_eq!(m.body, body("m", i));
    }
}

pub fn interleaved_groups_stay_apart_and_gapless<H: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let store = H::open(dir.path()).unwrap();
    let groups = ["g0", "g1", "g2", "g3", "g4"];
    for round in 0..40u64 {
        for (i, group) in groups.iter().enumerate() {
            if (round + i as u64).is_multiple_of(i as u64 + 1) {
                append_n(&*store, group, "ann", &format!("r{round}-"), 1);
            }
        }
    }
    for group in groups {
        let head = store.head(&t("acme"), &g(group)).unwrap();
        assert!(head > 0);
        assert_eq!(
            seqs(&*store, group, 0, 1000),
            (1..=head).collect::<Vec<_>>()
        );
        // Every start point reads the same tail.
        for after in 0..head {
            assert_eq!(seqs(&*store, group, after, 2), {
                (after + 1..=head).take(2).collect::<Vec<_>>()
            });
        }
    }
}

pub fn concurrent_appends_to_different_groups_are_gapless<H: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let store = H::open(dir.path()).unwrap();
    std::thread::scope(|s| {
        for n in 0..4 {
            let store = store.clone();
            s.spawn(move || append_n(&*store, &format!("c{n}"), "ann", "m", 200));
        }
    });
    for n in 0..4 {
        let group = format!("c{n}");
        assert_eq!(
            seqs(&*store, &group, 0, 1000),
            (1..=200).collect::<Vec<_>>()
        );
    }
}

pub fn flushed_messages_and_dedupe_survive_reopen<H: Harness>() {
    let dir = tempfile::tempdir().unwrap();
    let store = H::open(dir.path()).unwrap();
    append_n(&*store, "a", "ann", "m", 50);
    append_n(&*store, "b", "bob", "m", 7);
    store.flush().unwrap();
    drop(store);
    let Some(store) = H::open(dir.path()) else {
        return; // in memory only
    };
    assert_eq!(store.head(&t("acme"), &g("a")).unwrap(), 50);
    assert_eq!(seqs(&*store, "a", 0, 100), (1..=50).collect::<Vec<_>>());
    assert_eq!(seqs(&*store, "b", 0, 100), (1..=7).collect::<Vec<_>>());
    assert_eq!(
        store
            .append(&t("acme"), &g("a"), msg(&u("ann"), "m49", b""))
            .unwrap(),
        Appended::Duplicate { seq: 50 }
    );
    assert_eq!(append_n(&*store, "a", "ann", "n", 1), vec![51]);
    assert_eq!(
        store
            .find_sent(&t("acme"), &g("b"), &u("bob"), "m3")
            .unwrap(),
        Some(4)
    );
}

/// One `#[test]` per contract function, in a module per `name: Harness` pair.
#[macro_export]
macro_rules! store_contract {
    ($($name:ident: $harness:ty),* $(,)?) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn appends_number_from_one_without_gaps() {
                $crate::contract::appends_number_from_one_without_gaps::<$harness>();
            }
            #[test]
            fn duplicates_return_the_earlier_seq_per_sender_and_group() {
                $crate::contract::duplicates_return_the_earlier_seq_per_sender_and_group::<$harness>();
            }
            #[test]
            fn messages_read_back_as_written() {
                $crate::contract::messages_read_back_as_written::<$harness>();
            }
            #[test]
            fn read_after_is_bounded_and_ordered() {
                $crate::contract::read_after_is_bounded_and_ordered::<$harness>();
            }
            #[test]
            fn interleaved_groups_stay_apart_and_gapless() {
                $crate::contract::interleaved_groups_stay_apart_and_gapless::<$harness>();
            }
            #[test]
            fn concurrent_appends_to_different_groups_are_gapless() {
                $crate::contract::concurrent_appends_to_different_groups_are_gapless::<$harness>();
            }
            #[test]
            fn flushed_messages_and_dedupe_survive_reopen() {
                $crate::contract::flushed_messages_and_dedupe_survive_reopen::<$harness>();
            }
        }
    )*};
}

store_contract! {
    mem: Mem,
    sled: Sled,
    node_on_sled: NodeOnSled,
    segment: Segment,
    tiny_segments: TinySegments,
    segment_backend: SegmentBackend,
}
