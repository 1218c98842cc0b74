//! The shared directory and config store (`SharedStore`) over a real nats-server: what one
//! node writes every node reads; races between nodes (a group's member limit, binding
//! updates) resolve the same way on every mirror; a node with another store key refuses to
//! start; plugin bytes that do not match their version are never stored.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::{g, t, u, NatsServer};
use switchboard_cluster::SharedStore;
use switchboard_core::TenantId;
use switchboard_store::{
    ApiKeyRecord, ConfigStore, DirectoryBackend, FlagRule, GroupMeta, PluginVersion, SledStore,
    SledStoreConfig, Store, StoreError, TenantQuotas, TenantRecord, VersionConfig,
};

const PATIENCE: Duration = Duration::from_secs(60);

struct Node {
    shared: SharedStore,
    _dir: tempfile::TempDir,
}

/// A node's mirror: its own sled in a fresh directory, sealed with `key`.
fn node(nats: &NatsServer, prefix: &str, key: &Path) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let sled =
        SledStore::open_with(SledStoreConfig::new(dir.path().join("store")).key_file(key)).unwrap();
    let shared = SharedStore::open(Arc::new(nats.log(prefix)), sled, 1).unwrap();
    Node { shared, _dir: dir }
}

/// Waits until `b` applied everything `a` did (the bucket is one ordered stream).
fn caught_up(a: &Node, b: &Node) {
    let want = a.shared.applied_revision();
    let start = Instant::now();
    while b.shared.applied_revision() < want {
        assert!(start.elapsed() < PATIENCE, "mirror did not catch up");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn plugin(tenant: &TenantId, wasm: &[u8]) -> PluginVersion {
    PluginVersion {
        tenant: tenant.clone(),
        version: hex(&Sha256::digest(wasm)),
        size: wasm.len() as u64,
        uploader: "admin".into(),
        uploaded_at_ms: 1,
        imports: vec!["switchboard:policy/host".into()],
        label: Some("v1".into()),
    }
}

/// Everything a node reads of tenant `acme`, for comparing mirrors.
fn view(n: &Node) -> String {
    let s = n.shared.local();
    let acme = t("acme");
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        s.tenant(&acme).unwrap(),
        s.groups(&acme).unwrap(),
        s.members(&acme, &g("room")).unwrap(),
        s.member_count(&acme, &g("room")).unwrap(),
        s.binding(&acme).unwrap(),
        s.flags(&acme).unwrap(),
        s.quotas(&acme).unwrap(),
        s.api_keys(&acme).unwrap(),
        s.plugins(&acme).unwrap(),
        s.plugin_bytes(&acme, &plugin(&acme, b"wasm bytes").version)
            .unwrap(),
        s.degradation_override().unwrap(),
    )
}

#[test]
fn what_one_node_writes_every_node_reads_and_a_late_node_starts_with_it() {
    let nats = NatsServer::start();
    let key = nats.store_dir().join("store.key");
    let (a, b) = (node(&nats, "sh1", &key), node(&nats, "sh1", &key));
    let acme = t("acme");
    a.shared
        .put_tenant(&TenantRecord {
            id: acme.clone(),
            secret: b"a secret of sixteen bytes or more".to_vec(),
        })
        .unwrap();
    b.shared
        .create_group(
            &acme,
            &g("room"),
            GroupMeta {
                open: true,
                max_members: 10,
            },
        )
        .unwrap();
    assert!(a.shared.add_member(&acme, &g("room"), &u("ann")).unwrap());
    assert!(b.shared.add_member(&acme, &g("room"), &u("bob")).unwrap());
    // Already a member, whichever node asks.
    assert!(!b.shared.add_member(&acme, &g("room"), &u("ann")).unwrap());
    assert!(a
        .shared
        .remove_member(&acme, &g("room"), &u("bob"))
        .unwrap());
    assert!(!b
        .shared
        .remove_member(&acme, &g("room"), &u("bob"))
        .unwrap());
    let wasm = b"wasm bytes";
    assert!(a.shared.put_plugin(&plugin(&acme, wasm), wasm).unwrap());
    assert!(!b.shared.put_plugin(&plugin(&acme, wasm), wasm).unwrap());
    let bound = b
        .shared
        .update_binding(&acme, 7, &mut |binding| {
            binding.active = Some(VersionConfig {
                version: plugin(&acme, wasm).version,
                config: BTreeMap::new(),
            });
            Ok(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(bound.revision, 1);
    // The writer reads its own write at once.
    assert_eq!(b.shared.binding(&acme).unwrap(), bound);
    a.shared
        .put_flags(
            &acme,
            &[(
                "beta".to_string(),
                FlagRule {
                    enabled: true,
                    percent: 50,
                    users: vec![u("ann")],
                },
            )]
            .into(),
        )
        .unwrap();
    b.shared
        .put_quotas(
            &acme,
            &TenantQuotas {
                max_groups: 3,
                ..TenantQuotas::default()
            },
        )
        .unwrap();
    let api_key = ApiKeyRecord {
        id: "k1".into(),
        tenant: acme.clone(),
        hash: [7; 32],
        label: "ci".into(),
        created_at_ms: 3,
    };
    a.shared.put_api_key(&api_key).unwrap();
    a.shared.set_degradation_override(Some(2)).unwrap();

    caught_up(&a, &b);
    caught_up(&b, &a);
    assert_eq!(view(&a), view(&b));
    assert_eq!(
        b.shared.api_key_by_hash(&[7; 32]).unwrap(),
        Some(api_key.clone())
    );
    assert_eq!(b.shared.degradation_override().unwrap(), Some(2));
    assert_eq!(
        b.shared
            .plugin_bytes(&acme, &plugin(&acme, wasm).version)
            .unwrap(),
        Some(wasm.to_vec())
    );
    assert_eq!(
        b.shared.local().members(&acme, &g("room")).unwrap(),
        [u("ann")]
    );

    // Deletes travel too.
    assert!(b.shared.delete_api_key(&acme, "k1").unwrap());
    assert!(!a.shared.delete_api_key(&acme, "k1").unwrap());
    b.shared.set_degradation_override(None).unwrap();
    caught_up(&b, &a);
    assert_eq!(a.shared.api_key_by_hash(&[7; 32]).unwrap(), None);
    assert_eq!(a.shared.degradation_override().unwrap(), None);

    // A node that starts later has it all before `open` returns.
    let c = node(&nats, "sh1", &key);
    assert_eq!(view(&c), view(&a));
}

#[test]
fn members_past_a_groups_limit_are_refused_alike_on_every_node() {
    let nats = NatsServer::start();
    let key = nats.store_dir().join("store.key");
    let nodes: Vec<Node> = (0..2).map(|_| node(&nats, "sh2", &key)).collect();
    let acme = t("acme");
    nodes[0]
        .shared
        .create_group(
            &acme,
            &g("room"),
            GroupMeta {
                open: true,
                max_members: 5,
            },
        )
        .unwrap();
    // 16 users added at once, 8 threads on each node.
    let outcomes: Vec<Result<bool, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let n = &nodes[i % 2];
                let acme = acme.clone();
                s.spawn(move || {
                    n.shared
                        .add_member(&acme, &g("room"), &u(&format!("user{i}")))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let added = outcomes.iter().filter(|o| matches!(o, Ok(true))).count();
    let full = outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::GroupFull { max: 5, .. })))
        .count();
    assert_eq!((added, full), (5, 11), "{outcomes:?}");
    caught_up(&nodes[0], &nodes[1]);
    caught_up(&nodes[1], &nodes[0]);
    let members: Vec<_> = nodes
        .iter()
        .map(|n| n.shared.local().members(&acme, &g("room")).unwrap())
        .collect();
    assert_eq!(members[0].len(), 5);
    assert_eq!(members[0], members[1]);
    for n in &nodes {
        assert_eq!(
            n.shared.local().member_count(&acme, &g("room")).unwrap(),
            Some(5)
        );
    }
    // A node that starts now agrees (the refused keys were deleted again).
    let late = node(&nats, "sh2", &key);
    assert_eq!(
        late.shared.local().members(&acme, &g("room")).unwrap(),
        members[0]
    );
}

#[test]
fn binding_updates_racing_on_two_nodes_lose_none() {
    let nats = NatsServer::start();
    let key = nats.store_dir().join("store.key");
    let nodes: Vec<Node> = (0..2).map(|_| node(&nats, "sh3", &key)).collect();
    let acme = t("acme");
    std::thread::scope(|s| {
        for i in 0..12 {
            let n = &nodes[i % 2];
            let acme = acme.clone();
            s.spawn(move || {
                n.shared
                    .update_binding(&acme, i as u64, &mut |b| {
                        let active = b.active.get_or_insert_with(VersionConfig::default);
                        active.config.insert(format!("k{i}"), i.to_string());
                        Ok(())
                    })
                    .unwrap()
                    .unwrap()
            });
        }
    });
    caught_up(&nodes[0], &nodes[1]);
    caught_up(&nodes[1], &nodes[0]);
    let b = nodes[0].shared.binding(&acme).unwrap();
    assert_eq!(b.revision, 12);
    assert_eq!(b.active.as_ref().unwrap().config.len(), 12, "{b:?}");
    assert_eq!(nodes[1].shared.binding(&acme).unwrap(), b);
}

#[test]
fn a_node_with_another_store_key_refuses_to_start() {
    let nats = NatsServer::start();
    let _first = node(&nats, "sh4", &nats.store_dir().join("one.key"));
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open_with(
        SledStoreConfig::new(dir.path().join("store")).key_file(dir.path().join("other.key")),
    )
    .unwrap();
    let refused = SharedStore::open(Arc::new(nats.log("sh4")), sled, 1).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("store key is not the cluster's"),
        "{refused}"
    );
}

#[test]
fn plugin_bytes_that_do_not_match_their_version_are_never_stored() {
    let nats = NatsServer::start();
    let key = nats.store_dir().join("store.key");
    let (a, b) = (node(&nats, "sh5", &key), node(&nats, "sh5", &key));
    let acme = t("acme");
    // Metadata naming the SHA-256 of other bytes than those uploaded.
    let meta = plugin(&acme, b"the real plugin");
    let refused = a.shared.put_plugin(&meta, b"something else").unwrap_err();
    assert!(refused.to_string().contains("does not match"), "{refused}");
    caught_up(&a, &b);
    for n in [&a, &b] {
        assert_eq!(n.shared.plugin(&acme, &meta.version).unwrap(), None);
        assert_eq!(n.shared.plugin_bytes(&acme, &meta.version).unwrap(), None);
    }
    // Nothing of the refusal stays: the right bytes are stored under that version after.
    assert!(b.shared.put_plugin(&meta, b"the real plugin").unwrap());
    caught_up(&b, &a);
    assert_eq!(
        a.shared.plugin_bytes(&acme, &meta.version).unwrap(),
        Some(b"the real plugin".to_vec())
    );
}

#[test]
fn a_new_members_stored_cursor_is_the_head_at_join_on_every_node() {
    let nats = NatsServer::start();
    let key = nats.store_dir().join("store.key");
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open_with(SledStoreConfig::new(dir.path().join("store")).key_file(&key))
        .unwrap();
    let owner = Arc::new(nats.owner("sh6", "node-a"));
    let a = Node {
        shared: SharedStore::open(owner.clone(), sled, 1).unwrap(),
        _dir: dir,
    };
    let b = node(&nats, "sh6", &key);
    let (acme, room) = (t("acme"), g("room"));
    a.shared
        .create_group(
            &acme,
            &room,
            GroupMeta {
                open: true,
                max_members: 10,
            },
        )
        .unwrap();
    for i in 0..3 {
        owner
            .append_message(
                &acme,
                &room,
                switchboard_store::NewMessage {
                    sender: &u("ann"),
                    lane: switchboard_core::Lane::Normal,
                    client_msg_id: &format!("m{i}"),
                    sent_at_ms: 1,
                    body: b"hi",
                },
            )
            .unwrap();
    }
    assert!(a.shared.add_member(&acme, &room, &u("cy")).unwrap());
    caught_up(&a, &b);
    for n in [&a, &b] {
        assert_eq!(n.shared.local().cursor(&acme, &room, &u("cy")).unwrap(), 3);
    }
}
