//! The config file: the annotated example parses, its values are the defaults it claims, bad
//! files are refused with a reason, and seeding creates what it lists.

use std::path::Path;

use switchboard::{Config, NodeError};
use switchboard_core::{GroupId, Limits, TenantId, UserId};
use switchboard_store::{SledStore, Store};

fn example() -> std::path::PathBuf {
    // Read at run time: a test binary reused from a checkout at another path (a shared
    // target dir) would otherwise look there.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(),
            Into::into,
        )
        .join("../../examples/switchboard.toml")
}

#[test]
fn the_annotated_example_parses_and_states_the_defaults() {
    let cfg = Config::load(&example()).unwrap();
    assert_eq!(
        cfg.limits,
        Limits::default(),
        "the example documents the defaults"
    );
    assert_eq!(cfg.tenants.len(), 1);
    assert!(cfg.tls.is_none());
    assert!(cfg.data_dir.ends_with("dev-data/example"));
}

fn load_str(text: &str) -> Result<Config, NodeError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    Config::load(&p)
}

#[test]
fn bad_files_are_refused_with_a_reason() {
    let cases = [
        (
            "listen = \"nope\"\ndata_dir = \"d\"",
            "invalid socket address",
        ),
        ("data_dir = \"d\"\ntypo = 1", "unknown field `typo`"),
        ("listen = \"127.0.0.1:1\"", "missing field `data_dir`"),
        (
            "data_dir = \"d\"\n[limits]\nmax_payload_bytes = 200000",
            "max_frame_bytes must exceed max_payload_bytes",
        ),
        (
            "data_dir = \"d\"\n[notify]\nwebhook = \"ftp://push.example/x\"",
            "must start with http:// or https://",
        ),
    ];
    for (text, want) in cases {
        let e = load_str(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn seeding_creates_tenants_groups_and_members_and_needs_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("s")).unwrap();
    let mut cfg = Config::load(&example()).unwrap();
    cfg.tenants[0].secret_env = "SWITCHBOARD_TEST_UNSET_SECRET".into();
    let e = switchboard::seed(&store, &cfg).unwrap_err().to_string();
    assert!(
        e.contains("SWITCHBOARD_TEST_UNSET_SECRET is not set"),
        "{e}"
    );

    // Each test binary is its own process; this variable is only read by this test.
    std::env::set_var("SWITCHBOARD_TEST_SEED_SECRET", "0123456789abcdef-seed");
    cfg.tenants[0].secret_env = "SWITCHBOARD_TEST_SEED_SECRET".into();
    switchboard::seed(&store, &cfg).unwrap();
    switchboard::seed(&store, &cfg).unwrap(); // idempotent
    let acme = TenantId::new("acme").unwrap();
    assert_eq!(
        store.tenant(&acme).unwrap().unwrap().secret,
        b"0123456789abcdef-seed".to_vec()
    );
    let staff = GroupId::new("staff").unwrap();
    let meta = store.group(&acme, &staff).unwrap().unwrap();
    assert!(!meta.open);
    assert_eq!(meta.max_members, 50);
    assert_eq!(
        store.members(&acme, &staff).unwrap(),
        vec![UserId::new("alice").unwrap(), UserId::new("bob").unwrap()]
    );
    assert!(
        store
            .group(&acme, &GroupId::new("general").unwrap())
            .unwrap()
            .unwrap()
            .open
    );
}
