//! `SledStore` against real sled databases in temporary directories.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use tempfile::TempDir;

use super::*;
use switchboard_core::{Lane, ReceiptKind};

pub(super) use crate::test_ids::{g, t, u};

/// Opens the store in `dir`. A store dropped just before may still hold sled's file lock for
/// a moment (its IO threads let go of the database asynchronously, and there is nothing to
/// wait on), so a lock error is retried for up to 10 s.
pub(super) fn open_in(dir: &TempDir) -> SledStore {
    let config = SledStoreConfig::new(dir.path().join("store"))
        .cache_capacity_bytes(8 << 20)
        .flush_every_ms(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open_with(config.clone()) {
            Ok(store) => return store,
            Err(StoreError::Io(e))
                if e.contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("open {}: {e}", dir.path().display()),
        }
    }
}

pub(super) fn open() -> (TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(&dir);
    (dir, store)
}

const OPEN: GroupMeta = GroupMeta {
    open: true,
    max_members: 100,
};

fn msg<'a>(sender: &'a UserId, id: &'a str, body: &'a [u8]) -> NewMessage<'a> {
    NewMessage {
        sender,
        lane: Lane::Normal,
        client_msg_id: id,
        sent_at_ms: 1_000,
        body,
    }
}

/// Appends `n` messages from `sender` with client ids `{prefix}{i}`; returns their seqs.
fn append_n(
    store: &SledStore,
    tenant: &TenantId,
    group: &GroupId,
    sender: &UserId,
    prefix: &str,
    n: u64,
) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}{i}");
            let body = format!("body {prefix}{i}");
            match store
                .append(tenant, group, msg(sender, &id, body.as_bytes()))
                .unwrap()
            {
                Appended::New { seq } => seq,
                dup => panic!("unexpected {dup:?}"),
            }
        })
        .collect()
}

fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn names<T: ToString>(ids: &[T]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

// --- directory ---

#[test]
fn tenants_put_get_replace_list() {
    let (_dir, store) = open();
    assert_eq!(store.tenant(&t("acme")).unwrap(), None);
    assert_eq!(store.tenants().unwrap(), vec![]);
    for (id, secret) in [
        ("zeta", b"z".to_vec()),
        ("acme", b"first".to_vec()),
        ("a", vec![]),
    ] {
        store
            .put_tenant(&TenantRecord { id: t(id), secret })
            .unwrap();
    }
    store
        .put_tenant(&TenantRecord {
            id: t("acme"),
            secret: b"second".to_vec(),
        })
        .unwrap();
    assert_eq!(store.tenant(&t("acme")).unwrap().unwrap().secret, b"second");
    assert_eq!(store.tenant(&t("a")).unwrap().unwrap().secret, b"");
    let all = store.tenants().unwrap();
    assert_eq!(
        names(&all.iter().map(|r| r.id.clone()).collect::<Vec<_>>()),
        ["a", "acme", "zeta"]
    );
}

#[test]
fn create_group_once() {
    let (_dir, store) = open();
    let (ten, grp) = (t("acme"), g("general"));
    assert_eq!(store.group(&ten, &grp).unwrap(), None);
    let meta = GroupMeta {
        open: false,
        max_members: 7,
    };
    store.create_group(&ten, &grp, meta).unwrap();
    assert_eq!(store.group(&ten, &grp).unwrap(), Some(meta));
    assert_eq!(store.member_count(&ten, &grp).unwrap(), Some(0));
    assert!(
        matches!(store.create_group(&ten, &grp, OPEN), Err(StoreError::GroupExists(x)) if x == grp)
    );
    assert_eq!(
        store.group(&ten, &grp).unwrap(),
        Some(meta),
        "second create changed nothing"
    );
}

#[test]
fn members_add_remove() {
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    store.create_group(&ten, &grp, OPEN).unwrap();
    assert!(!store.is_member(&ten, &grp, &ann).unwrap());
    assert!(store.add_member(&ten, &grp, &ann).unwrap());
    assert!(
        !store.add_member(&ten, &grp, &ann).unwrap(),
        "already a member"
    );
    assert!(store.is_member(&ten, &grp, &ann).unwrap());
    assert_eq!(store.member_count(&ten, &grp).unwrap(), Some(1));
    assert_eq!(store.groups_of(&ten, &ann).unwrap(), vec![grp.clone()]);
    assert!(store.remove_member(&ten, &grp, &ann).unwrap());
    assert!(
        !store.remove_member(&ten, &grp, &ann).unwrap(),
        "no longer a member"
    );
    assert!(!store.is_member(&ten, &grp, &ann).unwrap());
    assert_eq!(store.member_count(&ten, &grp).unwrap(), Some(0));
    assert_eq!(store.members(&ten, &grp).unwrap(), vec![]);
    assert_eq!(store.groups_of(&ten, &ann).unwrap(), vec![]);
}

#[test]
fn unknown_group() {
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("nope"), u("ann"));
    assert!(
        matches!(store.add_member(&ten, &grp, &ann), Err(StoreError::GroupNotFound(x)) if x == grp)
    );
    assert!(!store.remove_member(&ten, &grp, &ann).unwrap());
    assert!(!store.is_member(&ten, &grp, &ann).unwrap());
    assert_eq!(store.members(&ten, &grp).unwrap(), vec![]);
    assert_eq!(store.member_count(&ten, &grp).unwrap(), None);
    assert_eq!(store.groups_of(&ten, &ann).unwrap(), vec![]);
}

#[test]
fn member_limit() {
    let (_dir, store) = open();
    let (ten, grp) = (t("acme"), g("small"));
    store
        .create_group(
            &ten,
            &grp,
            GroupMeta {
                open: true,
                max_members: 2,
            },
        )
        .unwrap();
    assert!(store.add_member(&ten, &grp, &u("a")).unwrap());
    assert!(store.add_member(&ten, &grp, &u("b")).unwrap());
    assert!(
        !store.add_member(&ten, &grp, &u("a")).unwrap(),
        "re-adding a member is not an overflow"
    );
    match store.add_member(&ten, &grp, &u("c")) {
        Err(StoreError::GroupFull { group, max: 2 }) if group == grp => {}
        other => panic!("expected GroupFull, got {other:?}"),
    }
    assert!(
        !store.is_member(&ten, &grp, &u("c")).unwrap(),
        "nothing written"
    );
    assert_eq!(store.groups_of(&ten, &u("c")).unwrap(), vec![]);
    assert_eq!(store.member_count(&ten, &grp).unwrap(), Some(2));
    assert!(store.remove_member(&ten, &grp, &u("a")).unwrap());
    assert!(
        store.add_member(&ten, &grp, &u("c")).unwrap(),
        "room again after a removal"
    );
    assert_eq!(names(&store.members(&ten, &grp).unwrap()), ["b", "c"]);

    let empty = g("empty");
    store
        .create_group(
            &ten,
            &empty,
            GroupMeta {
                open: true,
                max_members: 0,
            },
        )
        .unwrap();
    assert!(matches!(
        store.add_member(&ten, &empty, &u("a")),
        Err(StoreError::GroupFull { max: 0, .. })
    ));
}

#[test]
fn concurrent_joins_respect_the_limit() {
    let (_dir, store) = open();
    let (ten, grp) = (t("acme"), g("race"));
    store
        .create_group(
            &ten,
            &grp,
            GroupMeta {
                open: true,
                max_members: 10,
            },
        )
        .unwrap();
    let joined: usize = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|th| {
                let (store, ten, grp) = (&store, &ten, &grp);
                s.spawn(move || {
                    (0..10)
                        .filter(
                            |i| match store.add_member(ten, grp, &u(&format!("u{th}-{i}"))) {
                                Ok(added) => added,
                                Err(StoreError::GroupFull { .. }) => false,
                                Err(e) => panic!("{e}"),
                            },
                        )
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(joined, 10);
    assert_eq!(store.members(&ten, &grp).unwrap().len(), 10);
    assert_eq!(store.member_count(&ten, &grp).unwrap(), Some(10));
}

#[test]
fn members_and_groups_of_are_sorted() {
    let (_dir, store) = open();
    let ten = t("acme");
    // Lengths differ so a length-prefixed last component would sort "b" before "aa".
    let groups = ["zz", "b", "aa", "a", "a.b"];
    let users = ["b", "aa", "a", "Z", "a-1"];
    for grp in groups {
        store.create_group(&ten, &g(grp), OPEN).unwrap();
        for user in users {
            store.add_member(&ten, &g(grp), &u(user)).unwrap();
        }
    }
    let mut sorted_users = users.map(String::from).to_vec();
    sorted_users.sort();
    let mut sorted_groups = groups.map(String::from).to_vec();
    sorted_groups.sort();
    assert_eq!(names(&store.members(&ten, &g("b")).unwrap()), sorted_users);
    assert_eq!(
        names(&store.groups_of(&ten, &u("aa")).unwrap()),
        sorted_groups
    );
}

// --- group logs ---

#[test]
fn append_numbers_from_one_without_gaps() {
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    assert_eq!(store.head(&ten, &grp).unwrap(), 0);
    assert_eq!(
        append_n(&store, &ten, &grp, &ann, "m", 50),
        (1..=50).collect::<Vec<_>>()
    );
    assert_eq!(store.head(&ten, &grp).unwrap(), 50);
    let m = store.message(&ten, &grp, 7).unwrap().unwrap();
    assert_eq!(
        m,
        StoredMessage {
            seq: 7,
            lane: Lane::Normal,
            sender: ann.clone(),
            client_msg_id: "m6".into(),
            sent_at_ms: 1_000,
            body: Bytes::from_static(b"body m6"),
        }
    );
    assert_eq!(store.message(&ten, &grp, 0).unwrap(), None);
    assert_eq!(store.message(&ten, &grp, 51).unwrap(), None);
}

#[test]
fn append_does_not_require_the_group_record() {
    // The node checks membership before appending; the log does not re-check the directory.
    let (_dir, store) = open();
    assert_eq!(
        store
            .append(&t("acme"), &g("ghost"), msg(&u("ann"), "1", b"x"))
            .unwrap(),
        Appended::New { seq: 1 }
    );
}

#[test]
fn duplicate_returns_the_earlier_seq_and_writes_nothing() {
    let (_dir, store) = open();
    let (ten, grp, ann, bob) = (t("acme"), g("general"), u("ann"), u("bob"));
    assert_eq!(
        store.append(&ten, &grp, msg(&ann, "x", b"first")).unwrap(),
        Appended::New { seq: 1 }
    );
    assert_eq!(
        store.append(&ten, &grp, msg(&bob, "y", b"other")).unwrap(),
        Appended::New { seq: 2 }
    );
    let log_len = store.h().unwrap().log.len();
    let dedupe_len = store.h().unwrap().dedupe.len();
    let again = NewMessage {
        sender: &ann,
        lane: Lane::High,
        client_msg_id: "x",
        sent_at_ms: 2_000,
        body: b"changed",
    };
    assert_eq!(
        store.append(&ten, &grp, again).unwrap(),
        Appended::Duplicate { seq: 1 }
    );
    assert_eq!(store.h().unwrap().log.len(), log_len);
    assert_eq!(store.h().unwrap().dedupe.len(), dedupe_len);
    assert_eq!(store.head(&ten, &grp).unwrap(), 2);
    let first = store.message(&ten, &grp, 1).unwrap().unwrap();
    assert_eq!(
        (first.body.as_ref(), first.sent_at_ms),
        (&b"first"[..], 1_000)
    );
    // The next new message continues the sequence.
    assert_eq!(
        store.append(&ten, &grp, msg(&ann, "z", b"")).unwrap(),
        Appended::New { seq: 3 }
    );
}

#[test]
fn dedupe_is_per_sender_and_per_group() {
    let (_dir, store) = open();
    let ten = t("acme");
    let check = |grp: &str, sender: &str, id: &str, expect: Appended| {
        assert_eq!(
            store
                .append(&ten, &g(grp), msg(&u(sender), id, b""))
                .unwrap(),
            expect,
            "{grp} {sender} {id}"
        );
    };
    check("g1", "ann", "1", Appended::New { seq: 1 });
    check("g1", "bob", "1", Appended::New { seq: 2 });
    check("g2", "ann", "1", Appended::New { seq: 1 });
    check("g1", "ann", "1", Appended::Duplicate { seq: 1 });
    check("g1", "bob", "1", Appended::Duplicate { seq: 2 });
    check("g2", "ann", "1", Appended::Duplicate { seq: 1 });
    // Sender and client id are separate components: ("an", "n1") is not ("ann", "1").
    check("g1", "an", "n1", Appended::New { seq: 3 });
    check("g1", "ann", "", Appended::New { seq: 4 });
    check("g1", "ann", "", Appended::Duplicate { seq: 4 });
}

#[test]
fn client_msg_id_is_any_utf8_of_any_length() {
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    let long = "ü/\0 ".repeat(100);
    assert_eq!(
        store.append(&ten, &grp, msg(&ann, &long, b"")).unwrap(),
        Appended::New { seq: 1 }
    );
    assert_eq!(
        store.append(&ten, &grp, msg(&ann, &long, b"")).unwrap(),
        Appended::Duplicate { seq: 1 }
    );
    assert_eq!(
        store.message(&ten, &grp, 1).unwrap().unwrap().client_msg_id,
        long
    );
}

#[test]
fn sequence_and_dedupe_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    {
        let store = open_in(&dir);
        append_n(&store, &ten, &grp, &ann, "m", 5);
        store.flush().unwrap();
    }
    let store = open_in(&dir);
    assert!(store.inner.heads.is_empty(), "the head cache starts empty");
    assert_eq!(store.head(&ten, &grp).unwrap(), 5);
    assert_eq!(
        store.append(&ten, &grp, msg(&ann, "m2", b"")).unwrap(),
        Appended::Duplicate { seq: 3 }
    );
    assert_eq!(append_n(&store, &ten, &grp, &ann, "n", 3), [6, 7, 8]);

    // An append whose head is not cached yet (no `head` call first) loads it from the log.
    drop(store);
    let store = open_in(&dir);
    assert_eq!(append_n(&store, &ten, &grp, &ann, "o", 1), [9]);
    assert_eq!(
        seqs(&store.read_after(&ten, &grp, 0, usize::MAX).unwrap()),
        (1..=9).collect::<Vec<_>>()
    );
}

#[test]
fn read_after_bounds_and_order() {
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    append_n(&store, &ten, &grp, &ann, "m", 10);
    // Neighbouring groups must not leak into the range.
    append_n(&store, &ten, &g("general2"), &ann, "m", 3);
    append_n(&store, &ten, &g("g"), &ann, "m", 3);
    let check = |after: u64, limit: usize, expect: &[u64]| {
        let got = store.read_after(&ten, &grp, after, limit).unwrap();
        assert_eq!(seqs(&got), expect, "after {after} limit {limit}");
        for m in &got {
            assert_eq!(
                m.body,
                format!("body m{}", m.seq - 1).as_bytes(),
                "seq {}",
                m.seq
            );
        }
    };
    check(0, 100, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    check(0, usize::MAX, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    check(0, 3, &[1, 2, 3]);
    check(3, 2, &[4, 5]);
    check(8, 5, &[9, 10]);
    check(9, 1, &[10]);
    check(10, 5, &[]);
    check(1_000, 5, &[]);
    check(u64::MAX - 1, 5, &[]);
    check(u64::MAX, 5, &[]);
    check(0, 0, &[]);
    assert_eq!(store.read_after(&ten, &g("none"), 0, 10).unwrap(), vec![]);
}

#[test]
fn head_cache_only_rises_and_skips_empty_groups() {
    let (_dir, store) = open();
    let (ten, grp) = (t("acme"), g("general"));
    assert_eq!(store.head(&ten, &g("never-written")).unwrap(), 0);
    assert!(store.inner.heads.is_empty());
    let prefix = keys::group_prefix(&ten, &grp);
    store.raise_head(&prefix, 5);
    store.raise_head(&prefix, 3);
    assert_eq!(store.head(&ten, &grp).unwrap(), 5);
}

#[test]
fn concurrent_appends_to_different_groups_are_gapless() {
    let (_dir, store) = open();
    let ten = t("acme");
    const GROUPS: usize = 4;
    const PER_GROUP: u64 = 200;
    thread::scope(|s| {
        for i in 0..GROUPS {
            let (store, ten) = (store.clone(), &ten);
            s.spawn(move || {
                let seqs = append_n(&store, ten, &g(&format!("g{i}")), &u("ann"), "m", PER_GROUP);
                assert_eq!(seqs, (1..=PER_GROUP).collect::<Vec<_>>());
            });
        }
    });
    for i in 0..GROUPS {
        let grp = g(&format!("g{i}"));
        assert_eq!(store.head(&ten, &grp).unwrap(), PER_GROUP);
        let all = store.read_after(&ten, &grp, 0, usize::MAX).unwrap();
        assert_eq!(seqs(&all), (1..=PER_GROUP).collect::<Vec<_>>());
    }
}

#[test]
fn concurrent_appends_to_one_group_never_overwrite() {
    // Breaks the contract (callers serialise appends per group) on purpose: the store must
    // still hand out each sequence number once and lose nothing.
    let (_dir, store) = open();
    let (ten, grp) = (t("acme"), g("general"));
    const THREADS: usize = 4;
    const EACH: u64 = 50;
    let seqs: Vec<u64> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|th| {
                let (store, ten, grp) = (&store, &ten, &grp);
                s.spawn(move || append_n(store, ten, grp, &u(&format!("u{th}")), "m", EACH))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    let total = THREADS as u64 * EACH;
    assert_eq!(unique, (1..=total).collect::<BTreeSet<_>>());
    assert_eq!(
        store.read_after(&ten, &grp, 0, usize::MAX).unwrap().len(),
        total as usize
    );
}

// --- isolation and key encoding ---

#[test]
fn tenants_are_isolated() {
    let (_dir, store) = open();
    let (t1, t2, grp, ann) = (t("one"), t("two"), g("general"), u("ann"));
    store
        .create_group(
            &t1,
            &grp,
            GroupMeta {
                open: true,
                max_members: 1,
            },
        )
        .unwrap();
    assert_eq!(store.group(&t2, &grp).unwrap(), None);
    store
        .create_group(
            &t2,
            &grp,
            GroupMeta {
                open: false,
                max_members: 5,
            },
        )
        .unwrap();
    store.add_member(&t1, &grp, &ann).unwrap();
    assert!(!store.is_member(&t2, &grp, &ann).unwrap());
    assert_eq!(store.groups_of(&t2, &ann).unwrap(), vec![]);
    assert!(
        store.add_member(&t2, &grp, &ann).unwrap(),
        "t1's limit of 1 does not apply to t2"
    );
    assert!(store.remove_member(&t1, &grp, &ann).unwrap());
    assert!(store.is_member(&t2, &grp, &ann).unwrap());

    append_n(&store, &t1, &grp, &ann, "m", 3);
    assert_eq!(
        store.append(&t2, &grp, msg(&ann, "m0", b"t2")).unwrap(),
        Appended::New { seq: 1 }
    );
    assert_eq!(store.head(&t1, &grp).unwrap(), 3);
    assert_eq!(store.head(&t2, &grp).unwrap(), 1);
    store.advance_cursor(&t1, &grp, &ann, 3).unwrap();
    assert_eq!(store.cursor(&t2, &grp, &ann).unwrap(), 0);
    let receipt = StoredReceipt {
        user: ann.clone(),
        kind: ReceiptKind::Read,
        at_ms: 1,
    };
    store.put_receipt(&t1, &grp, 1, &receipt).unwrap();
    assert_eq!(store.receipts(&t2, &grp, 1).unwrap(), vec![]);
}

/// Pairs whose concatenated components are equal must still be different records.
#[test]
fn keys_are_unambiguous() {
    let (_dir, store) = open();
    let ann = u("ann");
    let pairs = [(t("a"), g("bc")), (t("ab"), g("c")), (t("abc"), g("d"))];
    for (i, (ten, grp)) in pairs.iter().enumerate() {
        let max = i as u32 + 1;
        store
            .create_group(
                ten,
                grp,
                GroupMeta {
                    open: true,
                    max_members: max,
                },
            )
            .unwrap();
        store.add_member(ten, grp, &ann).unwrap();
        append_n(&store, ten, grp, &ann, &format!("p{i}-"), max as u64);
        store.advance_cursor(ten, grp, &ann, max as u64).unwrap();
        let receipt = StoredReceipt {
            user: ann.clone(),
            kind: ReceiptKind::Delivered,
            at_ms: max as u64,
        };
        store.put_receipt(ten, grp, 1, &receipt).unwrap();
    }
    for (i, (ten, grp)) in pairs.iter().enumerate() {
        let max = i as u32 + 1;
        assert_eq!(store.group(ten, grp).unwrap().unwrap().max_members, max);
        assert_eq!(store.members(ten, grp).unwrap(), vec![ann.clone()]);
        assert_eq!(store.groups_of(ten, &ann).unwrap(), vec![grp.clone()]);
        assert_eq!(store.head(ten, grp).unwrap(), max as u64);
        assert_eq!(
            store.read_after(ten, grp, 0, 10).unwrap().len(),
            max as usize
        );
        assert_eq!(store.cursor(ten, grp, &ann).unwrap(), max as u64);
        assert_eq!(store.receipts(ten, grp, 1).unwrap()[0].at_ms, max as u64);
    }
    // A group that is a prefix of another within one tenant, and users that share a prefix.
    let ten = t("x");
    for grp in ["g", "gg"] {
        store.create_group(&ten, &g(grp), OPEN).unwrap();
    }
    store.add_member(&ten, &g("gg"), &u("bob")).unwrap();
    store.add_member(&ten, &g("g"), &u("bo")).unwrap();
    assert_eq!(names(&store.members(&ten, &g("g")).unwrap()), ["bo"]);
    assert_eq!(names(&store.groups_of(&ten, &u("bo")).unwrap()), ["g"]);
    assert_eq!(names(&store.groups_of(&ten, &u("bob")).unwrap()), ["gg"]);

    // The raw keys, too.
    let mut raw = BTreeSet::new();
    for (ten, grp) in &pairs {
        assert!(raw.insert(keys::group(ten, grp).as_slice().to_vec()));
        assert!(raw.insert(keys::member(ten, grp, &ann).as_slice().to_vec()));
        assert!(raw.insert(keys::group_prefix(ten, grp).as_slice().to_vec()));
    }
}

#[test]
fn longest_ids_fit_in_keys() {
    let (_dir, store) = open();
    let long = "x".repeat(switchboard_core::id::MAX_ID_LEN);
    let (ten, grp, user) = (t(&long), g(&long), u(&long));
    store.create_group(&ten, &grp, OPEN).unwrap();
    store.add_member(&ten, &grp, &user).unwrap();
    assert_eq!(store.groups_of(&ten, &user).unwrap(), vec![grp.clone()]);
    store.append(&ten, &grp, msg(&user, &long, b"")).unwrap();
    store.advance_cursor(&ten, &grp, &user, u64::MAX).unwrap();
    let receipt = StoredReceipt {
        user: user.clone(),
        kind: ReceiptKind::Read,
        at_ms: 0,
    };
    store.put_receipt(&ten, &grp, u64::MAX, &receipt).unwrap();
    assert_eq!(store.receipts(&ten, &grp, u64::MAX).unwrap(), vec![receipt]);
}

// --- cursors and receipts ---

#[test]
fn cursor_only_rises() {
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    assert_eq!(store.cursor(&ten, &grp, &ann).unwrap(), 0);
    // (advance to, expected result)
    for (to, expect) in [
        (0, 0),
        (3, 3),
        (2, 3),
        (3, 3),
        (10, 10),
        (0, 10),
        (u64::MAX, u64::MAX),
        (5, u64::MAX),
    ] {
        assert_eq!(
            store.advance_cursor(&ten, &grp, &ann, to).unwrap(),
            expect,
            "advance to {to}"
        );
        assert_eq!(store.cursor(&ten, &grp, &ann).unwrap(), expect);
    }
    assert_eq!(
        store.cursor(&ten, &grp, &u("bob")).unwrap(),
        0,
        "cursors are per member"
    );
}

#[test]
fn concurrent_cursor_advances_keep_the_maximum() {
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    thread::scope(|s| {
        for th in 0..4u64 {
            let (store, ten, grp, ann) = (&store, &ten, &grp, &ann);
            s.spawn(move || {
                for i in 0..200 {
                    store.advance_cursor(ten, grp, ann, i * 4 + th).unwrap();
                }
            });
        }
    });
    assert_eq!(store.cursor(&ten, &grp, &ann).unwrap(), 199 * 4 + 3);
}

#[test]
fn receipts_never_downgrade() {
    use ReceiptKind::{Delivered, Read};
    // A sequence of receipts from one user for one message, and what must be stored after.
    fn check(puts: &[(ReceiptKind, u64)], expect: (ReceiptKind, u64)) {
        let (_dir, store) = open();
        let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
        for &(kind, at_ms) in puts {
            store
                .put_receipt(
                    &ten,
                    &grp,
                    1,
                    &StoredReceipt {
                        user: ann.clone(),
                        kind,
                        at_ms,
                    },
                )
                .unwrap();
        }
        let got = store.receipts(&ten, &grp, 1).unwrap();
        assert_eq!(
            got,
            vec![StoredReceipt {
                user: ann,
                kind: expect.0,
                at_ms: expect.1
            }],
            "puts {puts:?}"
        );
    }
    check(&[(Delivered, 1)], (Delivered, 1));
    check(&[(Read, 1)], (Read, 1));
    check(&[(Delivered, 1), (Read, 2)], (Read, 2));
    check(&[(Read, 2), (Delivered, 3)], (Read, 2));
    check(&[(Delivered, 1), (Delivered, 5)], (Delivered, 1));
    check(&[(Read, 2), (Read, 7)], (Read, 2));
    check(
        &[(Delivered, 1), (Read, 2), (Delivered, 3), (Read, 4)],
        (Read, 2),
    );
}

#[test]
fn receipts_are_per_message_and_sorted_by_user() {
    let (_dir, store) = open();
    let (ten, grp) = (t("acme"), g("general"));
    for (seq, user) in [(1, "zed"), (1, "ann"), (1, "an"), (2, "bob"), (256, "cy")] {
        let receipt = StoredReceipt {
            user: u(user),
            kind: ReceiptKind::Delivered,
            at_ms: seq,
        };
        store.put_receipt(&ten, &grp, seq, &receipt).unwrap();
    }
    let users = |seq| {
        store
            .receipts(&ten, &grp, seq)
            .unwrap()
            .into_iter()
            .map(|r| r.user.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(users(1), ["an", "ann", "zed"]);
    assert_eq!(users(2), ["bob"]);
    assert_eq!(users(256), ["cy"]);
    assert!(users(3).is_empty());
    assert_eq!(
        store.h().unwrap().log.len(),
        0,
        "receipts live in their own tree"
    );
}

// --- durability and housekeeping ---

#[test]
fn everything_survives_reopen_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    let receipt = StoredReceipt {
        user: ann.clone(),
        kind: ReceiptKind::Read,
        at_ms: 9,
    };
    let meta = GroupMeta {
        open: false,
        max_members: 3,
    };
    {
        let store = open_in(&dir);
        store
            .put_tenant(&TenantRecord {
                id: ten.clone(),
                secret: b"key".to_vec(),
            })
            .unwrap();
        store.create_group(&ten, &grp, meta).unwrap();
        store.add_member(&ten, &grp, &ann).unwrap();
        append_n(&store, &ten, &grp, &ann, "m", 4);
        store.advance_cursor(&ten, &grp, &ann, 4).unwrap();
        store.put_receipt(&ten, &grp, 2, &receipt).unwrap();
        store.flush().unwrap();
    }
    let store = open_in(&dir);
    assert_eq!(store.tenant(&ten).unwrap().unwrap().secret, b"key");
    assert_eq!(store.group(&ten, &grp).unwrap(), Some(meta));
    assert_eq!(store.member_count(&ten, &grp).unwrap(), Some(1));
    assert!(store.is_member(&ten, &grp, &ann).unwrap());
    assert_eq!(store.groups_of(&ten, &ann).unwrap(), vec![grp.clone()]);
    assert_eq!(
        seqs(&store.read_after(&ten, &grp, 0, 10).unwrap()),
        [1, 2, 3, 4]
    );
    assert_eq!(store.cursor(&ten, &grp, &ann).unwrap(), 4);
    assert_eq!(store.receipts(&ten, &grp, 2).unwrap(), vec![receipt]);
    assert!(store.size_on_disk().unwrap() > 0);
}

#[test]
fn clones_share_one_database() {
    let (_dir, store) = open();
    let other = store.clone();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    append_n(&store, &ten, &grp, &ann, "m", 2);
    assert_eq!(other.head(&ten, &grp).unwrap(), 2);
    assert_eq!(
        other.append(&ten, &grp, msg(&ann, "m1", b"")).unwrap(),
        Appended::Duplicate { seq: 2 }
    );
    assert!(format!("{other:?}").starts_with("SledStore"));
}

#[test]
fn corrupt_records_are_reported() {
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    let prefix = keys::group_prefix(&ten, &grp);
    let inner = store.h().unwrap();
    inner.log.insert(keys::log(&prefix, 1), &[9u8][..]).unwrap();
    inner
        .cursors
        .insert(keys::cursor(&ten, &grp, &ann), &[1u8, 2][..])
        .unwrap();
    inner
        .directory
        .insert(keys::group(&ten, &grp), &[1u8][..])
        .unwrap();
    inner
        .dedupe
        .insert(keys::dedupe(&prefix, &ann, "x"), &[][..])
        .unwrap();
    let is_corrupt = |r: Result<(), StoreError>, what: &str| {
        assert!(
            matches!(r, Err(StoreError::Corrupt { .. })),
            "{what}: {r:?}"
        );
    };
    is_corrupt(store.read_after(&ten, &grp, 0, 10).map(drop), "read_after");
    is_corrupt(store.message(&ten, &grp, 1).map(drop), "message");
    is_corrupt(store.cursor(&ten, &grp, &ann).map(drop), "cursor");
    is_corrupt(
        store.advance_cursor(&ten, &grp, &ann, 5).map(drop),
        "advance_cursor",
    );
    is_corrupt(store.group(&ten, &grp).map(drop), "group");
    is_corrupt(store.add_member(&ten, &grp, &ann).map(drop), "add_member");
    is_corrupt(
        store.append(&ten, &grp, msg(&ann, "x", b"")).map(drop),
        "append duplicate lookup",
    );
}

#[test]
fn unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("store")).unwrap();
        db.insert(FORMAT_KEY, &[2u8][..]).unwrap();
        db.flush().unwrap();
    }
    let config = SledStoreConfig::new(dir.path().join("store")).flush_every_ms(None);
    assert!(matches!(
        SledStore::open_with(config),
        Err(StoreError::Corrupt { tree: "meta", .. })
    ));
}

#[test]
fn store_is_object_safe_and_shareable() {
    let (_dir, store) = open();
    let shared: Arc<dyn Store> = Arc::new(store);
    assert_eq!(shared.head(&t("acme"), &g("general")).unwrap(), 0);
}

#[test]
fn a_tenants_groups_are_listed_sorted_and_only_its_own() {
    let (_dir, store) = open();
    for (ten, grp) in [("acme", "b"), ("acme", "a"), ("acmex", "c"), ("acm", "d")] {
        store.create_group(&t(ten), &g(grp), OPEN).unwrap();
    }
    assert_eq!(store.groups(&t("acme")).unwrap(), vec![g("a"), g("b")]);
    assert_eq!(store.groups(&t("acm")).unwrap(), vec![g("d")]);
    assert_eq!(store.groups(&t("nobody")).unwrap(), vec![]);
}

#[test]
fn a_crash_between_the_log_and_the_dedupe_write_is_mended_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (ten, grp, other, ann) = (t("acme"), g("general"), g("other"), u("ann"));
    {
        let store = open_in(&dir);
        store.create_group(&ten, &grp, OPEN).unwrap();
        store.create_group(&ten, &other, OPEN).unwrap();
        append_n(&store, &ten, &grp, &ann, "m", 2);
        append_n(&store, &ten, &other, &ann, "o", 3);
        // What an append leaves when the process dies after its first write: the log
        // entries of seqs 3 and 4, without their dedupe entries.
        let prefix = keys::group_prefix(&ten, &grp);
        for (seq, id) in [(3, "late3"), (4, "late4")] {
            let value = codec::encode_message(&msg(&ann, id, b"x"));
            store
                .h()
                .unwrap()
                .log
                .insert(keys::log(&prefix, seq).as_slice(), value)
                .unwrap();
        }
        store.flush().unwrap();
        assert_eq!(
            store.repair_dedupe().unwrap(),
            2,
            "the missing entries are found"
        );
        // Put the damage back to see the reopen mend it.
        for id in ["late3", "late4"] {
            store
                .h()
                .unwrap()
                .dedupe
                .remove(keys::dedupe(&prefix, &ann, id))
                .unwrap();
        }
        store.flush().unwrap();
    }
    let store = open_in(&dir);
    // A resend of either is recognised, not stored again.
    for (seq, id) in [(3, "late3"), (4, "late4"), (1, "m0")] {
        assert_eq!(
            store.append(&ten, &grp, msg(&ann, id, b"x")).unwrap(),
            Appended::Duplicate { seq }
        );
    }
    assert_eq!(
        store.append(&ten, &grp, msg(&ann, "new", b"x")).unwrap(),
        Appended::New { seq: 5 }
    );
    assert_eq!(store.repair_dedupe().unwrap(), 0, "nothing left to mend");
    assert_eq!(store.head(&ten, &other).unwrap(), 3);
}

// --- recovery after a storage failure ---

#[test]
fn a_failed_store_is_reopened_with_everything_durable_and_watches_continue() {
    use crate::{ConfigChange, ConfigStore};
    let (_dir, store) = open();
    let (ten, grp, ann) = (t("acme"), g("general"), u("ann"));
    store.create_group(&ten, &grp, OPEN).unwrap();
    append_n(&store, &ten, &grp, &ann, "m", 3);
    store.flush().unwrap();
    let mut watch = store.watch().unwrap();
    assert_eq!(store.health(), StoreHealth::Ok);
    assert!(!store.recover().unwrap(), "nothing to recover");

    // What any storage call does when sled reports an I/O error.
    let _ = store.note(StoreError::Io("injected: No space left on device".into()));
    assert!(
        matches!(store.health(), StoreHealth::Failed { reason } if reason.contains("No space"))
    );
    let other = store.clone();
    assert!(store.recover().unwrap(), "reopened");
    assert_eq!(store.health(), StoreHealth::Ok);
    assert_eq!(store.reopens(), 1);
    // The clones share the new database; what was durable is there, and appends continue.
    assert_eq!(other.head(&ten, &grp).unwrap(), 3);
    assert_eq!(
        other.append(&ten, &grp, msg(&ann, "m2", b"again")).unwrap(),
        Appended::Duplicate { seq: 3 }
    );
    assert_eq!(
        other.append(&ten, &grp, msg(&ann, "new", b"x")).unwrap(),
        Appended::New { seq: 4 }
    );
    // A config watch made before the reopen reports changes made after it.
    other.set_degradation_override(Some(2)).unwrap();
    assert_eq!(watch.next_change(), Some(ConfigChange::Degradation));
}
