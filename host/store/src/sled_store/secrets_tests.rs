//! Tenant secrets at rest (`crate::secrets`) and the permissions of what the store creates.

use std::path::Path;

use tempfile::TempDir;

use super::tests::{open_in, t};
use super::*;

/// A secret whose bytes the tests look for on disk.
const SECRET: &[u8] = b"known-secret-7f3a9c2e-do-not-leak";

fn key_file(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("store.key")
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn put(store: &SledStore, tenant: &str, secret: &[u8]) {
    store
        .put_tenant(&TenantRecord {
            id: t(tenant),
            secret: secret.to_vec(),
        })
        .unwrap();
    store.flush().unwrap();
}

/// Opens without the lock-retry of `open_in`, for the refusals (the store before was dropped
/// long enough ago, or never opened).
fn try_open(dir: &TempDir) -> Result<SledStore, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open_with(
            SledStoreConfig::new(dir.path().join("store")).flush_every_ms(None),
        ) {
            Err(StoreError::Io(e))
                if e.contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[test]
fn no_file_of_the_store_holds_a_tenant_secret_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_in(&dir);
        put(&store, "acme", SECRET);
        assert_eq!(store.tenant(&t("acme")).unwrap().unwrap().secret, SECRET);
    }
    let files = files_under(&dir.path().join("store"));
    assert!(files.iter().any(|f| f.ends_with("db")), "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !contains(&bytes, SECRET),
            "{} holds the secret",
            f.display()
        );
    }
    // The key is not in the store's directory, and the store reopens with it.
    assert!(key_file(&dir).is_file());
    let store = open_in(&dir);
    assert_eq!(store.tenant(&t("acme")).unwrap().unwrap().secret, SECRET);
    assert_eq!(store.tenants().unwrap().len(), 1);
}

#[test]
fn secrets_written_in_the_clear_are_sealed_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_in(&dir);
        // What a store written before sealing holds: version 1, the secret in the clear.
        store
            .h()
            .unwrap()
            .directory
            .insert(keys::tenant(&t("old")), codec::encode_tenant_plain(SECRET))
            .unwrap();
        store.flush().unwrap();
    }
    let store = open_in(&dir);
    let raw = store
        .h()
        .unwrap()
        .directory
        .get(keys::tenant(&t("old")))
        .unwrap()
        .unwrap();
    assert_eq!(KeyRing::sealed_key_id(&raw), Some(1), "sealed at open");
    assert!(!contains(&raw, SECRET));
    assert_eq!(store.tenant(&t("old")).unwrap().unwrap().secret, SECRET);
}

#[test]
fn a_missing_key_file_is_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_in(&dir);
        put(&store, "acme", SECRET);
    }
    std::fs::remove_file(key_file(&dir)).unwrap();
    match try_open(&dir) {
        Err(StoreError::Secrets(SecretsError::MissingKey { path, key_id: 1 })) => {
            assert_eq!(path, key_file(&dir));
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
    assert!(!key_file(&dir).exists(), "no new key replaces a lost one");
}

#[test]
fn a_wrong_key_file_is_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_in(&dir);
        put(&store, "acme", SECRET);
    }
    // Another key under the same id.
    KeyRing::generate(1)
        .unwrap()
        .store(&key_file(&dir))
        .unwrap();
    assert!(matches!(
        try_open(&dir),
        Err(StoreError::Secrets(SecretsError::WrongKey { key_id: 1, ref tenant })) if tenant == "acme"
    ));
    // A key file without the record's key id.
    KeyRing::generate(5)
        .unwrap()
        .store(&key_file(&dir))
        .unwrap();
    assert!(matches!(
        try_open(&dir),
        Err(StoreError::Secrets(SecretsError::UnknownKey {
            key_id: 1,
            ..
        }))
    ));
}

#[test]
fn rotation_reseals_every_secret_under_a_new_key_and_keeps_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(&dir);
    put(&store, "acme", SECRET);
    put(&store, "globex", b"another-secret-of-globex");
    let before = std::fs::read_to_string(key_file(&dir)).unwrap();
    assert_eq!(store.key_ids(), vec![1]);
    assert_eq!(store.rotate_secrets_key().unwrap(), (2, 2));
    assert_eq!(store.key_ids(), vec![2]);
    for (tenant, secret) in [
        ("acme", SECRET),
        ("globex", &b"another-secret-of-globex"[..]),
    ] {
        assert_eq!(store.tenant(&t(tenant)).unwrap().unwrap().secret, secret);
        let raw = store
            .h()
            .unwrap()
            .directory
            .get(keys::tenant(&t(tenant)))
            .unwrap()
            .unwrap();
        assert_eq!(KeyRing::sealed_key_id(&raw), Some(2));
    }
    let after = std::fs::read_to_string(key_file(&dir)).unwrap();
    assert_ne!(before, after);
    assert_eq!(
        KeyRing::parse(&after).unwrap().ids(),
        vec![2],
        "the old key is gone"
    );
    drop(store);
    let store = open_in(&dir);
    assert_eq!(store.tenant(&t("acme")).unwrap().unwrap().secret, SECRET);
}

#[test]
fn an_interrupted_rotation_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_in(&dir);
        put(&store, "acme", SECRET);
        // The first step of a rotation only: the key file holds the old and a new key.
        let both = store.keys().with_new_key().unwrap();
        both.store(&key_file(&dir)).unwrap();
    }
    let store = open_in(&dir);
    let raw = store
        .h()
        .unwrap()
        .directory
        .get(keys::tenant(&t("acme")))
        .unwrap()
        .unwrap();
    assert_eq!(
        KeyRing::sealed_key_id(&raw),
        Some(2),
        "resealed under the newest key"
    );
    assert_eq!(store.tenant(&t("acme")).unwrap().unwrap().secret, SECRET);
}

#[cfg(unix)]
#[test]
fn the_store_directory_and_every_file_in_it_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    {
        let store = open_in(&dir);
        put(&store, "acme", SECRET);
    }
    let check = |store_dir: &Path| {
        assert_eq!(mode(store_dir), 0o700, "{}", store_dir.display());
        for e in walk(store_dir) {
            let want = if e.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode(&e), want, "{}", e.display());
        }
        assert_eq!(mode(&key_file(&dir)), 0o600);
    };
    check(&store_dir);
    // An existing store made by an older version (0755 / 0644) is tightened at open.
    std::fs::set_permissions(&store_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in files_under(&store_dir) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    drop(open_in(&dir));
    check(&store_dir);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// The store key given as text (the node's `SWITCHBOARD_STORE_KEY`): it seals and opens the
/// secrets, no key file is read or written, the store refuses to open without it or with
/// another key, and a rotation is refused (it could not keep the new key).
#[test]
fn a_key_given_as_text_seals_without_a_key_file_and_refuses_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let text = KeyRing::generate(7).unwrap().to_file_text();
    let config = || {
        SledStoreConfig::new(dir.path().join("store"))
            .flush_every_ms(None)
            .key_text(text.clone())
    };
    {
        let store = SledStore::open_with(config()).unwrap();
        put(&store, "acme", SECRET);
        assert_eq!(store.key_ids(), vec![7]);
        assert!(matches!(
            store.rotate_secrets_key(),
            Err(StoreError::Secrets(SecretsError::KeyNotInFile))
        ));
        assert_eq!(store.key_ids(), vec![7], "nothing rotated");
    }
    assert!(!key_file(&dir).exists(), "no key file was written");
    let store = open_retrying(config);
    assert_eq!(store.tenant(&t("acme")).unwrap().unwrap().secret, SECRET);
    drop(store);
    // Without the key (no text, no file): refused, and no new key file is made.
    assert!(matches!(
        try_open(&dir),
        Err(StoreError::Secrets(SecretsError::MissingKey {
            key_id: 7,
            ..
        }))
    ));
    assert!(!key_file(&dir).exists());
    // Another key under the same id does not open the secret.
    let other = KeyRing::generate(7).unwrap().to_file_text();
    let wrong = SledStore::open_with(
        SledStoreConfig::new(dir.path().join("store"))
            .flush_every_ms(None)
            .key_text(other),
    );
    assert!(
        matches!(
            wrong,
            Err(StoreError::Secrets(SecretsError::WrongKey { .. }))
        ),
        "{:?}",
        wrong.err()
    );
    let garbage = SledStore::open_with(
        SledStoreConfig::new(dir.path().join("store"))
            .flush_every_ms(None)
            .key_text("not a key"),
    );
    assert!(matches!(
        garbage,
        Err(StoreError::Secrets(SecretsError::KeyText(_)))
    ));
}

/// Secrets written while a rotation runs are sealed under a key the file keeps: after many
/// concurrent writes and a rotation, the store reopens with the new key alone and every
/// secret opens.
#[test]
fn secrets_written_during_a_rotation_open_with_the_key_file_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(open_in(&dir));
    for i in 0..50 {
        put(&store, &format!("t{i}"), SECRET);
    }
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for round in 0..20 {
                for i in 0..50 {
                    let secret = format!("secret-{round}-{i}-0123456789");
                    store
                        .put_tenant(&TenantRecord {
                            id: t(&format!("t{i}")),
                            secret: secret.into_bytes(),
                        })
                        .unwrap();
                }
            }
        })
    };
    for _ in 0..3 {
        store.rotate_secrets_key().unwrap();
    }
    writer.join().unwrap();
    store.flush().unwrap();
    drop(store);
    let store = open_in(&dir);
    assert_eq!(store.key_ids().len(), 1);
    for i in 0..50 {
        let secret = store.tenant(&t(&format!("t{i}"))).unwrap().unwrap().secret;
        assert_eq!(secret, format!("secret-19-{i}-0123456789").into_bytes());
    }
}

fn open_retrying(config: impl Fn() -> SledStoreConfig) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open_with(config()) {
            Err(StoreError::Io(e))
                if e.contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}
