//! The compiled-artifact cache (`PolicyEngine::load_cached`, `ArtifactCache`): hits skip
//! compilation and give a working plugin; anything that fails verification (a flipped byte,
//! another key, another plugin's artifact, another engine configuration, an oversized or
//! odd file) is rejected, deleted and recompiled, and never deserialized.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use switchboard_policy::{
    ArtifactCache, CacheError, CacheOutcome, CacheRejection, Delivery, Lane, LoadError,
    MessageInfo, Plugin, PolicyEngine, PolicyLimits, Source, TenantPolicy, Verdict,
};

fn engine() -> PolicyEngine {
    PolicyEngine::new(PolicyLimits {
        max_instances: 16,
        deadline: Duration::from_secs(2),
        ..PolicyLimits::default()
    })
    .unwrap()
}

fn read(path: &str) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn version_of(wasm: &[u8]) -> String {
    Sha256::digest(wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The reference priority plugin and its version.
fn priority() -> (Vec<u8>, String) {
    let wasm = read(plugins_artifacts::PRIORITY);
    let version = version_of(&wasm);
    (wasm, version)
}

fn open(dir: &Path) -> ArtifactCache {
    ArtifactCache::open(dir).unwrap_or_else(|e| panic!("{e}"))
}

fn artifact(cache: &ArtifactCache, version: &str) -> PathBuf {
    cache.dir().join(format!("{version}.cwasm"))
}

fn load(
    engine: &PolicyEngine,
    wasm: &[u8],
    version: &str,
    cache: &ArtifactCache,
) -> (Plugin, CacheOutcome) {
    engine
        .load_cached(wasm, version, cache)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The priority plugin's behaviour, through a tenant's policy.
fn works(plugin: &Plugin) {
    let policy = TenantPolicy::new(plugin, "acme", BTreeMap::new());
    let message = |body: &[u8]| MessageInfo {
        group: "general".into(),
        sender: "bob".into(),
        body_size: body.len() as u32,
        body_prefix: body.to_vec(),
        group_size: 3,
        connected_members: 2,
    };
    let spam = policy.on_message(&message(b"!spam now"));
    assert_eq!(spam.source, Source::Plugin);
    assert_eq!(
        spam.value,
        Verdict::Reject("spam is not allowed here".into())
    );
    let hello = policy.on_message(&message(b"hello"));
    assert_eq!(
        hello.value,
        Verdict::Accept(Delivery {
            lane: Lane::Normal,
            notify_offline: false
        })
    );
}

fn rejected(outcome: CacheOutcome) -> CacheRejection {
    match outcome {
        CacheOutcome::Rejected(reason) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_second_load_is_a_hit_and_faster() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir.path().join("artifacts"));
    let engine = engine();
    let (wasm, version) = priority();

    let started = Instant::now();
    let (plugin, outcome) = load(&engine, &wasm, &version, &cache);
    let compiled = started.elapsed();
    assert_eq!(outcome, CacheOutcome::Miss);
    works(&plugin);
    assert!(artifact(&cache, &version).is_file());

    let started = Instant::now();
    let (plugin, outcome) = load(&engine, &wasm, &version, &cache);
    let cached = started.elapsed();
    assert_eq!(outcome, CacheOutcome::Hit);
    works(&plugin);
    plugin.self_test(&BTreeMap::new()).unwrap();
    println!("priority: compile and check {compiled:?}, cache hit {cached:?}");
    assert!(cached < compiled, "hit {cached:?}, compile {compiled:?}");

    // A restart: a new engine configured the same, the cache reopened with its key.
    let (plugin, outcome) = load(
        &PolicyEngine::new(engine.limits().clone()).unwrap(),
        &wasm,
        &version,
        &open(cache.dir()),
    );
    assert_eq!(outcome, CacheOutcome::Hit);
    works(&plugin);
}

#[test]
fn a_flipped_byte_is_rejected_recompiled_and_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    let engine = engine();
    let (wasm, version) = priority();
    assert_eq!(load(&engine, &wasm, &version, &cache).1, CacheOutcome::Miss);
    let path = artifact(&cache, &version);
    let original = fs::read(&path).unwrap();

    // In the compiled code, in the tag, in the header.
    for (at, expected) in [
        (original.len() / 2, CacheRejection::Forged),
        (original.len() - 1, CacheRejection::Forged),
        (50, CacheRejection::Forged),
        (20, CacheRejection::OtherEngine),
        (0, CacheRejection::Malformed("wrong magic bytes")),
    ] {
        let mut tampered = original.clone();
        tampered[at] ^= 0x40;
        fs::write(&path, &tampered).unwrap();
        let (plugin, outcome) = load(&engine, &wasm, &version, &cache);
        assert_eq!(rejected(outcome), expected, "byte {at}");
        works(&plugin);
        // Recompiled and rewritten: the same bytes as before (same key, same compiler).
        assert_eq!(fs::read(&path).unwrap(), original, "byte {at}");
        assert_eq!(load(&engine, &wasm, &version, &cache).1, CacheOutcome::Hit);
    }

    // Cut short.
    fs::write(&path, &original[..original.len() / 3]).unwrap();
    assert_eq!(
        rejected(load(&engine, &wasm, &version, &cache).1),
        CacheRejection::Forged
    );
    fs::write(&path, b"not an artifact").unwrap();
    assert!(matches!(
        rejected(load(&engine, &wasm, &version, &cache).1),
        CacheRejection::Malformed(_)
    ));
    assert_eq!(load(&engine, &wasm, &version, &cache).1, CacheOutcome::Hit);
}

#[test]
fn an_artifact_made_under_another_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ours = open(&dir.path().join("ours"));
    let theirs = open(&dir.path().join("theirs"));
    let engine = engine();
    let (wasm, version) = priority();
    assert_eq!(
        load(&engine, &wasm, &version, &theirs).1,
        CacheOutcome::Miss
    );
    assert_ne!(
        fs::read(ours.dir().join("artifact.key")).unwrap(),
        fs::read(theirs.dir().join("artifact.key")).unwrap()
    );
    // A well-formed artifact, of this very plugin, by this very engine: only the key differs.
    fs::copy(artifact(&theirs, &version), artifact(&ours, &version)).unwrap();
    let (plugin, outcome) = load(&engine, &wasm, &version, &ours);
    assert_eq!(rejected(outcome), CacheRejection::Forged);
    works(&plugin);
    assert_eq!(load(&engine, &wasm, &version, &ours).1, CacheOutcome::Hit);
}

#[test]
fn another_plugins_artifact_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    let engine = engine();
    let (wasm, version) = priority();
    let receipts = read(plugins_artifacts::RECEIPTS);
    let receipts_version = version_of(&receipts);
    assert_eq!(
        load(&engine, &receipts, &receipts_version, &cache).1,
        CacheOutcome::Miss
    );
    // Authentic, same key, same engine, but for another version: the tag binds the version.
    fs::rename(
        artifact(&cache, &receipts_version),
        artifact(&cache, &version),
    )
    .unwrap();
    let (plugin, outcome) = load(&engine, &wasm, &version, &cache);
    assert_eq!(rejected(outcome), CacheRejection::Forged);
    works(&plugin);
}

#[test]
fn another_engine_configuration_does_not_accept_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    let (wasm, version) = priority();
    let default = engine();
    // The memory cap sets the memory reservation, which compiled bounds checks depend on.
    let bigger_memory = PolicyEngine::new(PolicyLimits {
        max_memory_bytes: 32 << 20,
        ..default.limits().clone()
    })
    .unwrap();
    assert_eq!(
        load(&default, &wasm, &version, &cache).1,
        CacheOutcome::Miss
    );
    let (plugin, outcome) = load(&bigger_memory, &wasm, &version, &cache);
    assert_eq!(rejected(outcome), CacheRejection::OtherEngine);
    works(&plugin);
    assert_eq!(
        load(&bigger_memory, &wasm, &version, &cache).1,
        CacheOutcome::Hit
    );
    // One directory serves one configuration: the other engine's artifact is replaced.
    assert_eq!(
        rejected(load(&default, &wasm, &version, &cache).1),
        CacheRejection::OtherEngine
    );

    // Budgets that do not change compiled code (fuel, deadline) share artifacts.
    let more_fuel = PolicyEngine::new(PolicyLimits {
        fuel_per_call: 1_000_000,
        deadline: Duration::from_secs(1),
        ..default.limits().clone()
    })
    .unwrap();
    assert_eq!(
        load(&more_fuel, &wasm, &version, &cache).1,
        CacheOutcome::Hit
    );
}

#[test]
fn a_wrong_version_is_refused_and_nothing_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    let engine = engine();
    let (wasm, version) = priority();
    let receipts_version = version_of(&read(plugins_artifacts::RECEIPTS));
    for wrong in [
        "",
        "abc",
        "../../../etc/passwd",
        receipts_version.as_str(),
        &version[..63],
        &format!("{version}0"),
    ] {
        match engine.load_cached(&wasm, wrong, &cache) {
            Err(LoadError::WrongVersion { given, computed }) => {
                assert_eq!(computed, version);
                assert_eq!(given, wrong);
            }
            other => panic!("{wrong:?}: {other:?}"),
        }
    }
    let long = "f".repeat(10_000);
    let err = engine.load_cached(&wasm, &long, &cache).unwrap_err();
    assert!(err.to_string().len() < 400, "{err}");
    let files: Vec<_> = fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["artifact.key"]);

    // Either case of hex is the same version.
    let (_, outcome) = load(&engine, &wasm, &version.to_uppercase(), &cache);
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(load(&engine, &wasm, &version, &cache).1, CacheOutcome::Hit);
}

#[test]
fn refused_plugins_are_refused_as_by_load_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    let engine = engine();
    for wasm in [
        read(plugins_artifacts::HOSTILE_WASI_FS),
        read(plugins_artifacts::HOSTILE_CORE_MODULE),
        wat::parse_str("(component)").unwrap(),
    ] {
        let version = version_of(&wasm);
        let via_cache = engine.load_cached(&wasm, &version, &cache).unwrap_err();
        assert_eq!(via_cache, engine.load(&wasm).unwrap_err());
        assert!(!artifact(&cache, &version).exists());
    }
    let small = PolicyEngine::new(PolicyLimits {
        max_plugin_bytes: 1024,
        ..engine.limits().clone()
    })
    .unwrap();
    let (wasm, version) = priority();
    assert!(matches!(
        small.load_cached(&wasm, &version, &cache),
        Err(LoadError::TooLarge { .. })
    ));
}

#[test]
fn oversized_and_odd_files_are_rejected_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    let engine = engine();
    let (wasm, version) = priority();
    let path = artifact(&cache, &version);

    // Sparse: larger than the bound, without using the disk space.
    let file = fs::File::create(&path).unwrap();
    file.set_len(ArtifactCache::MAX_ARTIFACT_BYTES + 1).unwrap();
    drop(file);
    let (plugin, outcome) = load(&engine, &wasm, &version, &cache);
    assert_eq!(
        rejected(outcome),
        CacheRejection::TooLarge {
            size: ArtifactCache::MAX_ARTIFACT_BYTES + 1,
            max: ArtifactCache::MAX_ARTIFACT_BYTES
        }
    );
    works(&plugin);
    assert_eq!(load(&engine, &wasm, &version, &cache).1, CacheOutcome::Hit);

    // A directory where the artifact should be: rejected every time (it cannot be
    // replaced), and the plugin still loads.
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    for _ in 0..2 {
        let (plugin, outcome) = load(&engine, &wasm, &version, &cache);
        assert_eq!(rejected(outcome), CacheRejection::NotAFile);
        works(&plugin);
    }
}

#[test]
fn remove_deletes_an_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    let engine = engine();
    let (wasm, version) = priority();
    assert!(!cache.remove(&version).unwrap(), "nothing to remove yet");
    load(&engine, &wasm, &version, &cache);
    assert!(cache.remove(&version).unwrap());
    assert!(!artifact(&cache, &version).exists());
    assert_eq!(load(&engine, &wasm, &version, &cache).1, CacheOutcome::Miss);
    for bad in ["../artifact", "artifact.key", ""] {
        assert!(
            matches!(cache.remove(bad), Err(CacheError::InvalidVersion(_))),
            "{bad}"
        );
    }
    assert!(cache.dir().join("artifact.key").exists());
}

#[test]
fn the_key_is_created_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("a/b");
    let cache = open(&cache_dir);
    let key_path = cache_dir.join("artifact.key");
    let key = fs::read(&key_path).unwrap();
    assert_eq!(key.len(), 32);
    assert!(key.iter().any(|&b| b != 0));
    let again = open(&cache_dir);
    assert_eq!(fs::read(&key_path).unwrap(), key);
    // Debug shows where, never the key.
    assert_eq!(
        format!("{again:?}"),
        format!("ArtifactCache {{ dir: {cache_dir:?}, .. }}")
    );
    drop(cache);

    // A truncated key is an error for the operator, not silently replaced.
    fs::write(&key_path, &key[..16]).unwrap();
    let err = ArtifactCache::open(&cache_dir).unwrap_err();
    assert!(err.to_string().contains("16 bytes"), "{err}");
    fs::remove_file(&key_path).unwrap();
    open(&cache_dir);
    assert_ne!(fs::read(&key_path).unwrap(), key, "a new random key");
}

#[cfg(unix)]
#[test]
fn the_key_and_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let set = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("artifacts");
    let cache = open(&cache_dir);
    let key_path = cache_dir.join("artifact.key");
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&cache_dir), 0o700);
    let engine = engine();
    let (wasm, version) = priority();
    load(&engine, &wasm, &version, &cache);
    assert_eq!(mode(&artifact(&cache, &version)), 0o600);

    set(&key_path, 0o644);
    let err = ArtifactCache::open(&cache_dir).unwrap_err();
    assert!(
        matches!(&err, CacheError::Insecure { reason, .. } if reason.contains("644")),
        "{err}"
    );
    set(&key_path, 0o600);

    set(&cache_dir, 0o777);
    let err = ArtifactCache::open(&cache_dir).unwrap_err();
    assert!(
        matches!(&err, CacheError::Insecure { reason, .. } if reason.contains("writable by other users")),
        "{err}"
    );
    set(&cache_dir, 0o700);
    open(&cache_dir);

    // An existing directory keeps its mode if it is safe (0755: others may list it, but
    // the key is theirs to read only if its own mode says so, and it does not).
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    set(&shared, 0o755);
    open(&shared);
    assert_eq!(mode(&shared.join("artifact.key")), 0o600);
}

/// `load_from_cache`, what an upload's check uses: a plugin stored before is taken from the
/// cache (no compile), one never stored or a tampered artifact gives `None`, and it never
/// stores anything.
#[test]
fn an_upload_check_takes_a_stored_plugin_from_the_cache_and_writes_nothing() {
    let engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path());
    let (wasm, version) = priority();
    assert!(
        engine.load_from_cache(&wasm, &cache).is_none(),
        "not stored yet"
    );
    assert_eq!(cache.artifact_count().unwrap(), 0, "a miss writes nothing");

    let plugin = engine.load(&wasm).unwrap();
    cache.store_plugin(&plugin).unwrap();
    let (checked, report) = engine
        .check_upload_and_self_test_cached(&wasm, &cache)
        .unwrap();
    assert_eq!(checked.version(), version);
    assert_eq!(report.hooks.len(), 4, "still self-tested: {report:?}");
    works(&engine.load_from_cache(&wasm, &cache).expect("a hit"));

    // Other bytes are not this artifact.
    let flags = read(plugins_artifacts::FLAGS);
    assert!(engine.load_from_cache(&flags, &cache).is_none());

    // A tampered artifact is not used (and is deleted, as `load_cached` does); nothing is
    // compiled into its place.
    let path = artifact(&cache, &version);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(engine.load_from_cache(&wasm, &cache).is_none());
    assert!(!path.exists());
    assert_eq!(cache.artifact_count().unwrap(), 0);
}
