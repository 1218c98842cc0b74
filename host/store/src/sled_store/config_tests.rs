//! `ConfigStore` on `SledStore`, against real sled databases in temporary directories.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::tests::{g, open, open_in, t, u};
use super::*;
use crate::config::MAX_PREVIOUS_VERSIONS;
use crate::{
    ApiKeyRecord, BindingRefused, Canary, ConfigChange, ConfigStore, FlagRule, PluginVersion,
    PolicyBinding, RollbackRecord, TenantQuotas, VersionConfig,
};

/// How long a test waits for a watch event before failing. Generous for slow CI machines:
/// a passing test never waits for it.
const WAIT: Duration = Duration::from_secs(10);

fn vc(version: &str, config: &[(&str, &str)]) -> VersionConfig {
    VersionConfig {
        version: version.into(),
        config: config.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
    }
}

fn plugin(tenant: &str, version: &str, uploaded_at_ms: u64) -> PluginVersion {
    PluginVersion {
        tenant: t(tenant),
        version: version.into(),
        size: 3,
        uploader: "admin".into(),
        uploaded_at_ms,
        imports: vec!["switchboard:policy/host@0.1.0".into(), "wasi:io".into()],
        label: None,
    }
}

fn api_key(tenant: &str, id: &str, hash: u8) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        tenant: t(tenant),
        hash: [hash; 32],
        label: format!("key {id}"),
        created_at_ms: 77,
    }
}

/// A binding with every field set.
fn full_binding() -> PolicyBinding {
    PolicyBinding {
        active: Some(vc("v2", &[("greeting", "hé"), ("limit", "5")])),
        previous: vec![vc("v0", &[]), vc("v1", &[("", "")])],
        canary: Some(Canary {
            version: vc("v3", &[("x", "y")]),
            percent: 25,
            groups: vec![g("beta"), g("staff")],
            started_at_ms: 11,
        }),
        last_rollback: Some(RollbackRecord {
            from: "v9".into(),
            to: Some("v2".into()),
            automatic: true,
            reason: "failure rate 40%".into(),
            at_ms: 12,
        }),
        revision: 0,
        updated_at_ms: 0,
    }
}

fn flag(enabled: bool, percent: u8, users: &[&str]) -> FlagRule {
    FlagRule {
        enabled,
        percent,
        users: users.iter().map(|s| u(s)).collect(),
    }
}

/// Writes `binding` (but its revision and time) through `update_binding`.
fn set_binding(store: &SledStore, tenant: &TenantId, binding: &PolicyBinding) -> PolicyBinding {
    store
        .update_binding(tenant, 1_000, &mut |b| {
            *b = binding.clone();
            Ok(())
        })
        .unwrap()
        .unwrap()
}

/// Reads a watch on a thread of its own, forwarding every change and the final `None`.
fn watch_on_thread(store: &SledStore) -> mpsc::Receiver<Option<ConfigChange>> {
    // Subscribed before any write below, so none is missed.
    let mut watch = store.watch().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || loop {
        let change = watch.next_change();
        let end = change.is_none();
        if tx.send(change).is_err() || end {
            return;
        }
    });
    rx
}

// --- plugin versions ---

#[test]
fn plugins_round_trip_in_upload_order() {
    let (_dir, store) = open();
    let acme = t("acme");
    assert_eq!(store.plugins(&acme).unwrap(), vec![]);
    assert_eq!(store.plugin(&acme, "aa").unwrap(), None);
    assert_eq!(store.plugin_bytes(&acme, "aa").unwrap(), None);
    // Key order is bb, cc, dd; upload order (then version) is cc, dd, bb.
    // A label, or none (a record as written before labels existed).
    let labelled = PluginVersion {
        label: Some("v2 – ünïcode, spaces".into()),
        ..plugin("acme", "dd", 10)
    };
    let uploads = [
        (plugin("acme", "bb", 30), &b"bbb"[..]),
        (labelled, b""),
        (plugin("acme", "cc", 10), b"\0asm"),
    ];
    for (meta, wasm) in &uploads {
        assert!(store.put_plugin(meta, wasm).unwrap());
    }
    for (meta, wasm) in &uploads {
        assert_eq!(
            store.plugin(&acme, &meta.version).unwrap().as_ref(),
            Some(meta)
        );
        assert_eq!(
            store.plugin_bytes(&acme, &meta.version).unwrap().as_deref(),
            Some(*wasm)
        );
    }
    let listed: Vec<_> = store
        .plugins(&acme)
        .unwrap()
        .into_iter()
        .map(|p| p.version)
        .collect();
    assert_eq!(listed, ["cc", "dd", "bb"]);
    assert_eq!(store.plugins(&t("other")).unwrap(), vec![]);
}

#[test]
fn put_plugin_twice_changes_nothing() {
    let (_dir, store) = open();
    let first = plugin("acme", "v1", 5);
    assert!(store.put_plugin(&first, b"first").unwrap());
    let (config_len, plugins_len) = (
        store.h().unwrap().config.len(),
        store.h().unwrap().plugins.len(),
    );
    let mut second = plugin("acme", "v1", 6);
    second.uploader = "key-1".into();
    assert!(!store.put_plugin(&second, b"second").unwrap());
    assert_eq!(store.plugin(&t("acme"), "v1").unwrap(), Some(first));
    assert_eq!(
        store.plugin_bytes(&t("acme"), "v1").unwrap().as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(store.h().unwrap().config.len(), config_len);
    assert_eq!(store.h().unwrap().plugins.len(), plugins_len);
    // Metadata in `config`, bytes in `plugins`, nothing else.
    assert_eq!((config_len, plugins_len), (1, 1));
}

// --- bindings ---

#[test]
fn binding_defaults_then_round_trips() {
    let (_dir, store) = open();
    let acme = t("acme");
    assert_eq!(store.binding(&acme).unwrap(), PolicyBinding::default());
    let written = set_binding(&store, &acme, &full_binding());
    let expect = PolicyBinding {
        revision: 1,
        updated_at_ms: 1_000,
        ..full_binding()
    };
    assert_eq!(written, expect);
    assert_eq!(store.binding(&acme).unwrap(), expect);
    assert_eq!(
        store.binding(&t("other")).unwrap(),
        PolicyBinding::default()
    );
}

#[test]
fn update_binding_bumps_revision_and_owns_it() {
    let (_dir, store) = open();
    let acme = t("acme");
    for (i, now) in [(1, 50), (2, 40), (3, 60)] {
        let written = store
            .update_binding(&acme, now, &mut |b| {
                // The closure sees the stored binding and cannot choose the revision.
                assert_eq!(b.revision, i - 1);
                b.active = Some(vc(&format!("v{i}"), &[]));
                b.revision = 999;
                b.updated_at_ms = 999;
                Ok(())
            })
            .unwrap()
            .unwrap();
        assert_eq!((written.revision, written.updated_at_ms), (i, now));
        assert_eq!(store.binding(&acme).unwrap(), written);
    }
}

#[test]
fn refused_change_writes_nothing() {
    let (_dir, store) = open();
    let (acme, fresh) = (t("acme"), t("fresh"));
    let before = set_binding(&store, &acme, &full_binding());
    let refuse = |b: &mut PolicyBinding| -> Result<(), BindingRefused> {
        // Edits made before refusing must not leak into the store.
        b.active = None;
        Err(BindingRefused("version not found".into()))
    };
    for tenant in [&acme, &fresh] {
        assert_eq!(
            store
                .update_binding(tenant, 2_000, &mut refuse.clone())
                .unwrap(),
            Err(BindingRefused("version not found".into()))
        );
    }
    assert_eq!(store.binding(&acme).unwrap(), before);
    assert_eq!(store.binding(&fresh).unwrap(), PolicyBinding::default());
    assert_eq!(store.bound_tenants().unwrap(), vec![acme]);
}

#[test]
fn previous_keeps_the_most_recent_versions() {
    let (_dir, store) = open();
    let acme = t("acme");
    const UPDATES: usize = MAX_PREVIOUS_VERSIONS + 4;
    for i in 0..UPDATES {
        store
            .update_binding(&acme, i as u64, &mut |b| {
                b.previous.extend(b.active.take());
                b.active = Some(vc(&format!("v{i}"), &[]));
                Ok(())
            })
            .unwrap()
            .unwrap();
    }
    let binding = store.binding(&acme).unwrap();
    let previous: Vec<_> = binding.previous.iter().map(|v| v.version.clone()).collect();
    // v0..v{UPDATES-2} were pushed; the oldest go first.
    let expect: Vec<_> = (UPDATES - 1 - MAX_PREVIOUS_VERSIONS..UPDATES - 1)
        .map(|i| format!("v{i}"))
        .collect();
    assert_eq!(previous, expect);
    assert_eq!(binding.active.unwrap().version, format!("v{}", UPDATES - 1));
    assert_eq!(binding.revision, UPDATES as u64);
}

#[test]
fn concurrent_updates_lose_nothing() {
    let (_dir, store) = open();
    let acme = t("acme");
    const EACH: u64 = 100;
    let count = |b: &mut PolicyBinding, key: &str| {
        let config = &mut b.active.get_or_insert_with(Default::default).config;
        let n: u64 = config.get(key).map_or(0, |n| n.parse().unwrap());
        config.insert(key.into(), (n + 1).to_string());
    };
    thread::scope(|s| {
        for th in 0..2 {
            let (store, acme) = (&store, &acme);
            s.spawn(move || {
                for i in 0..EACH {
                    store
                        .update_binding(acme, i, &mut |b| {
                            count(b, "total");
                            count(b, &format!("thread{th}"));
                            Ok(())
                        })
                        .unwrap()
                        .unwrap();
                }
            });
        }
    });
    let binding = store.binding(&acme).unwrap();
    assert_eq!(binding.revision, 2 * EACH);
    let config = binding.active.unwrap().config;
    let get = |key: &str| config[key].parse::<u64>().unwrap();
    assert_eq!(
        (get("total"), get("thread0"), get("thread1")),
        (2 * EACH, EACH, EACH)
    );
}

#[test]
fn bound_tenants_are_sorted() {
    let (_dir, store) = open();
    assert_eq!(store.bound_tenants().unwrap(), vec![]);
    for tenant in ["zeta", "a", "ab", "Z"] {
        set_binding(&store, &t(tenant), &PolicyBinding::default());
    }
    // Other records of a tenant do not make it bound.
    store.put_flags(&t("flags-only"), &BTreeMap::new()).unwrap();
    store
        .put_quotas(&t("quotas-only"), &TenantQuotas::default())
        .unwrap();
    let bound: Vec<_> = store
        .bound_tenants()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(bound, ["Z", "a", "ab", "zeta"]);
}

// --- flags, quotas ---

#[test]
fn flags_round_trip_and_replace() {
    let (_dir, store) = open();
    let acme = t("acme");
    assert_eq!(store.flags(&acme).unwrap(), BTreeMap::new());
    let first = BTreeMap::from([
        ("dark-mode".to_string(), flag(true, 30, &["ann", "bob"])),
        ("kill".to_string(), flag(false, 0, &[])),
        ("".to_string(), flag(true, 100, &[])),
    ]);
    store.put_flags(&acme, &first).unwrap();
    assert_eq!(store.flags(&acme).unwrap(), first);
    let second = BTreeMap::from([("new".to_string(), flag(true, 1, &["cy"]))]);
    store.put_flags(&acme, &second).unwrap();
    assert_eq!(store.flags(&acme).unwrap(), second, "replaced, not merged");
    store.put_flags(&acme, &BTreeMap::new()).unwrap();
    assert_eq!(store.flags(&acme).unwrap(), BTreeMap::new());
}

#[test]
fn quotas_default_then_round_trip() {
    let (_dir, store) = open();
    let acme = t("acme");
    assert_eq!(store.quotas(&acme).unwrap(), TenantQuotas::default());
    let quotas = TenantQuotas {
        max_groups: 1,
        max_plugin_versions: u32::MAX,
        max_plugin_bytes: 0,
    };
    store.put_quotas(&acme, &quotas).unwrap();
    assert_eq!(store.quotas(&acme).unwrap(), quotas);
    assert_eq!(store.quotas(&t("other")).unwrap(), TenantQuotas::default());
}

// --- API keys ---

#[test]
fn api_keys_by_hash_list_and_delete() {
    let (_dir, store) = open();
    let acme = t("acme");
    let (k1, k2, other) = (
        api_key("acme", "k1", 1),
        api_key("acme", "k2", 2),
        api_key("other", "k1", 3),
    );
    for key in [&k2, &k1, &other] {
        store.put_api_key(key).unwrap();
    }
    assert_eq!(store.api_key_by_hash(&[1; 32]).unwrap().as_ref(), Some(&k1));
    assert_eq!(
        store.api_key_by_hash(&[3; 32]).unwrap().as_ref(),
        Some(&other)
    );
    assert_eq!(store.api_key_by_hash(&[9; 32]).unwrap(), None);
    assert_eq!(store.api_keys(&acme).unwrap(), vec![k1.clone(), k2.clone()]);

    assert!(store.delete_api_key(&acme, "k1").unwrap());
    assert!(!store.delete_api_key(&acme, "k1").unwrap(), "already gone");
    assert!(!store.delete_api_key(&acme, "never").unwrap());
    assert_eq!(store.api_key_by_hash(&[1; 32]).unwrap(), None);
    assert!(
        !store
            .h()
            .unwrap()
            .config
            .contains_key(keys::api_key_hash(&[1; 32]))
            .unwrap(),
        "the index entry is removed with the record"
    );
    assert_eq!(store.api_keys(&acme).unwrap(), vec![k2]);
    assert_eq!(
        store.api_key_by_hash(&[3; 32]).unwrap(),
        Some(other),
        "same id, other tenant"
    );
}

#[test]
fn api_key_hash_changes_move_the_index() {
    let (_dir, store) = open();
    let acme = t("acme");
    // Re-putting a key with a new hash: the old hash stops authenticating.
    store.put_api_key(&api_key("acme", "k1", 1)).unwrap();
    let rotated = api_key("acme", "k1", 2);
    store.put_api_key(&rotated).unwrap();
    assert_eq!(store.api_key_by_hash(&[1; 32]).unwrap(), None);
    assert_eq!(
        store.api_key_by_hash(&[2; 32]).unwrap().as_ref(),
        Some(&rotated)
    );
    assert_eq!(store.api_keys(&acme).unwrap(), vec![rotated]);

    // A second record with the same hash takes the index over; deleting the first then
    // leaves the index with the second.
    let taker = api_key("acme", "k2", 2);
    store.put_api_key(&taker).unwrap();
    assert_eq!(
        store.api_key_by_hash(&[2; 32]).unwrap().as_ref(),
        Some(&taker)
    );
    assert!(store.delete_api_key(&acme, "k1").unwrap());
    assert_eq!(
        store.api_key_by_hash(&[2; 32]).unwrap().as_ref(),
        Some(&taker)
    );
}

// --- degradation override ---

#[test]
fn degradation_set_and_clear() {
    let (_dir, store) = open();
    assert_eq!(store.degradation_override().unwrap(), None);
    for level in [2, 0, 3] {
        store.set_degradation_override(Some(level)).unwrap();
        assert_eq!(store.degradation_override().unwrap(), Some(level));
    }
    store.set_degradation_override(None).unwrap();
    assert_eq!(store.degradation_override().unwrap(), None);
    store.set_degradation_override(None).unwrap();
    assert_eq!(
        store.h().unwrap().config.len(),
        0,
        "clearing removes the record"
    );
}

// --- isolation, durability, corruption ---

/// Tenant `a` + id `bc` is not tenant `ab` + id `c`.
#[test]
fn config_keys_are_unambiguous() {
    let (_dir, store) = open();
    let pairs = [("a", "bc"), ("ab", "c")];
    for (i, (tenant, id)) in pairs.into_iter().enumerate() {
        let i = i as u8 + 1;
        assert!(store.put_plugin(&plugin(tenant, id, 0), &[i]).unwrap());
        store.put_api_key(&api_key(tenant, id, i)).unwrap();
    }
    for (i, (tenant, id)) in pairs.into_iter().enumerate() {
        let i = i as u8 + 1;
        assert_eq!(
            store.plugins(&t(tenant)).unwrap(),
            vec![plugin(tenant, id, 0)]
        );
        assert_eq!(store.plugin_bytes(&t(tenant), id).unwrap(), Some(vec![i]));
        assert_eq!(
            store.api_keys(&t(tenant)).unwrap(),
            vec![api_key(tenant, id, i)]
        );
    }
}

#[test]
fn config_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let acme = t("acme");
    let flags = BTreeMap::from([("f".to_string(), flag(true, 50, &["ann"]))]);
    let quotas = TenantQuotas {
        max_groups: 3,
        ..TenantQuotas::default()
    };
    let binding = {
        let store = open_in(&dir);
        assert!(store.put_plugin(&plugin("acme", "v1", 1), b"wasm").unwrap());
        store.put_flags(&acme, &flags).unwrap();
        store.put_quotas(&acme, &quotas).unwrap();
        store.put_api_key(&api_key("acme", "k1", 1)).unwrap();
        store.set_degradation_override(Some(1)).unwrap();
        // No `Store::flush`: config writes are durable on their own.
        set_binding(&store, &acme, &full_binding())
    };
    let store = open_in(&dir);
    assert_eq!(store.plugins(&acme).unwrap(), vec![plugin("acme", "v1", 1)]);
    assert_eq!(
        store.plugin_bytes(&acme, "v1").unwrap().as_deref(),
        Some(&b"wasm"[..])
    );
    assert_eq!(store.binding(&acme).unwrap(), binding);
    assert_eq!(store.bound_tenants().unwrap(), vec![acme.clone()]);
    assert_eq!(store.flags(&acme).unwrap(), flags);
    assert_eq!(store.quotas(&acme).unwrap(), quotas);
    assert_eq!(
        store.api_key_by_hash(&[1; 32]).unwrap(),
        Some(api_key("acme", "k1", 1))
    );
    assert_eq!(store.degradation_override().unwrap(), Some(1));
}

#[test]
fn corrupt_config_records_are_reported() {
    let (_dir, store) = open();
    let acme = t("acme");
    let (config, plugins) = (&store.h().unwrap().config, &store.h().unwrap().plugins);
    let put = |tree: &Tree, key: &[u8], value: &[u8]| {
        tree.insert(key, value).unwrap();
    };
    put(config, &keys::binding(&acme), &[1]);
    put(config, &keys::flags(&acme), &[2]);
    put(config, &keys::quotas(&acme), &[1, 0, 0]);
    put(config, &keys::plugin(&acme, "v"), &[]);
    put(plugins, &keys::plugin_bytes(&acme, "v"), &[]);
    put(config, &keys::api_key(&acme, "k"), &[1, 5]);
    put(config, &keys::api_key_hash(&[7; 32]), &[1]);
    put(config, keys::DEGRADATION, &[1, 2, 3]);
    let is_corrupt = |r: Result<(), StoreError>, what: &str| {
        assert!(
            matches!(r, Err(StoreError::Corrupt { tree, .. }) if tree == "config" || tree == "plugins"),
            "{what}: {r:?}"
        );
    };
    is_corrupt(store.binding(&acme).map(drop), "binding");
    is_corrupt(
        store.update_binding(&acme, 1, &mut |_| Ok(())).map(drop),
        "update_binding",
    );
    is_corrupt(store.flags(&acme).map(drop), "flags");
    is_corrupt(store.quotas(&acme).map(drop), "quotas");
    is_corrupt(store.plugin(&acme, "v").map(drop), "plugin");
    is_corrupt(store.plugins(&acme).map(drop), "plugins");
    is_corrupt(store.plugin_bytes(&acme, "v").map(drop), "plugin_bytes");
    is_corrupt(store.api_keys(&acme).map(drop), "api_keys");
    is_corrupt(store.api_key_by_hash(&[7; 32]).map(drop), "api_key_by_hash");
    is_corrupt(store.delete_api_key(&acme, "k").map(drop), "delete_api_key");
    is_corrupt(
        store.put_api_key(&api_key("acme", "k", 1)),
        "put_api_key over a corrupt record",
    );
    is_corrupt(
        store.degradation_override().map(drop),
        "degradation_override",
    );
    // Failed writes wrote nothing.
    assert_eq!(
        store
            .h()
            .unwrap()
            .config
            .get(keys::binding(&acme))
            .unwrap()
            .unwrap(),
        [1]
    );
    assert!(store
        .h()
        .unwrap()
        .config
        .contains_key(keys::api_key(&acme, "k"))
        .unwrap());
    assert_eq!(store.api_key_by_hash(&[1; 32]).unwrap(), None);
}

// --- watch ---

#[test]
fn watch_reports_each_change_once() {
    let (_dir, store) = open();
    let acme = t("acme");
    store.put_flags(&acme, &BTreeMap::new()).unwrap(); // before the watch: not reported
    let changes = watch_on_thread(&store);

    set_binding(&store, &acme, &full_binding());
    // Refused, already stored, unchanged: nothing to report.
    store
        .update_binding(&acme, 1, &mut |_| Err(BindingRefused("no".into())))
        .unwrap()
        .unwrap_err();
    store
        .put_flags(
            &acme,
            &BTreeMap::from([("f".to_string(), flag(true, 5, &[]))]),
        )
        .unwrap();
    store.set_degradation_override(Some(2)).unwrap();
    store.put_quotas(&acme, &TenantQuotas::default()).unwrap();
    // Record and hash index change together; reported once.
    store.put_api_key(&api_key("acme", "k1", 1)).unwrap();
    assert!(store.put_plugin(&plugin("acme", "v1", 1), b"wasm").unwrap());
    assert!(!store.put_plugin(&plugin("acme", "v1", 1), b"wasm").unwrap());
    store.set_degradation_override(Some(2)).unwrap();
    assert!(store.delete_api_key(&acme, "k1").unwrap());
    store.set_degradation_override(None).unwrap();

    let expect = [
        ConfigChange::Binding(acme.clone()),
        ConfigChange::Flags(acme.clone()),
        ConfigChange::Degradation,
        ConfigChange::Quotas(acme.clone()),
        ConfigChange::ApiKeys(acme.clone()),
        ConfigChange::PluginVersions(acme.clone()),
        ConfigChange::ApiKeys(acme.clone()),
        ConfigChange::Degradation,
    ];
    for want in expect {
        let got = changes.recv_timeout(WAIT).expect("a change within WAIT");
        assert_eq!(got, Some(want));
    }
}

#[test]
fn watch_ends_when_the_store_is_closed() {
    let (_dir, store) = open();
    let changes = watch_on_thread(&store);
    store.set_degradation_override(Some(1)).unwrap();
    assert_eq!(
        changes.recv_timeout(WAIT).unwrap(),
        Some(ConfigChange::Degradation)
    );
    drop(store);
    assert_eq!(changes.recv_timeout(WAIT).unwrap(), None);
}

#[test]
fn watch_skips_keys_that_do_not_decode() {
    let (_dir, store) = open();
    let changes = watch_on_thread(&store);
    store
        .h()
        .unwrap()
        .config
        .insert(b"?junk", &[1u8][..])
        .unwrap();
    store
        .h()
        .unwrap()
        .config
        .insert([keys::TAG_BINDING, 0xff], &[1u8][..])
        .unwrap();
    store.set_degradation_override(Some(1)).unwrap();
    assert_eq!(
        changes.recv_timeout(WAIT).unwrap(),
        Some(ConfigChange::Degradation)
    );
}

#[test]
fn config_store_is_object_safe_and_shareable() {
    let (_dir, store) = open();
    let shared: Arc<dyn ConfigStore> = Arc::new(store);
    assert_eq!(shared.quotas(&t("acme")).unwrap(), TenantQuotas::default());
}
