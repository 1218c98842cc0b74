//! Secrets at rest, against the real binary (`switchboard serve` as a child process): what
//! the node creates is its own (directories 0700, files 0600), no file of the store holds a
//! tenant's secret in the clear, the store key is kept outside the store and its loss or a
//! wrong one stops the node with a clear error, and rotating it — offline, or on the running
//! node over the admin API (`POST /v1/node/store-key/rotation`, `ctl node rotate-store-key`)
//! — reseals every secret and keeps every token and session valid. See
//! `docs/reliability.md`, "Secrets at rest".

mod common;
#[path = "common/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use process::{free_udp_port, NodeProcess};
use switchboard_admin::client::AdminClient;
use switchboard_admin::control::types::{CreateTenant, MintToken};
use switchboard_core::TenantId;
use switchboard_store::{KeyRing, SecretsError, SledStore, SledStoreConfig, Store, StoreError};
use switchboard_wire::{ClientFrame, ServerFrame};

const TENANT: &str = "acme";
const SECRET_ENV: &str = "SWITCHBOARD_SECRETS_TEST_SECRET";
/// Distinctive bytes to look for in the store's files.
const SECRET: &str = "secret-at-rest-5b1e0c9d7a3f4e2b";

fn config() -> String {
    // The admin API on a free port, so the node also makes its artifacts directory.
    config_with_admin("127.0.0.1:0")
}

fn config_with_admin(listen: &str) -> String {
    format!(
        "[admin]\nlisten = \"{listen}\"\n\n\
         [[tenants]]\nid = \"{TENANT}\"\nsecret_env = \"{SECRET_ENV}\"\n\n  \
         [[tenants.groups]]\n  id = \"room\"\n  open = true\n"
    )
}

fn token(user: &str) -> String {
    mint(TENANT, user, SECRET.as_bytes(), now_secs() + 3600, 0)
}

async fn start(dir: &Path, name: &str) -> (NodeProcess, RawClient) {
    let (node, client, _) = NodeProcess::start(
        dir,
        name,
        &config(),
        &[(SECRET_ENV, SECRET)],
        &token("alice"),
        Vec::new(),
    )
    .await;
    (node, client)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
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

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs the binary with `args`, returns (success, stdout + stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run the switchboard binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_the_node_creates_is_private_and_no_secret_is_stored_in_the_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut node, mut alice) = start(tmp.path(), "node").await;
    // Some traffic, so the log has pages too.
    alice.send(&send(1, "room", b"hello")).await;
    // alice is not a member of the open group yet: any answer will do, it is written.
    let _ = alice.read().await;
    alice.conn.close(0u32.into(), b"done");
    // A graceful stop: sled writes its snapshot on the way out.
    assert!(node.terminate().success(), "{}", node.log_text());

    let data = tmp.path().join("data");
    assert_eq!(mode(&data), 0o700, "the data directory");
    let everything = walk(&data);
    for must in [
        "store",
        "store/db",
        "store/conf",
        "store.key",
        "cert.der",
        "key.der",
        "artifacts",
    ] {
        assert!(
            everything.contains(&data.join(must)),
            "{must} in {everything:?}"
        );
    }
    for p in &everything {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(p), want, "{} is {:o}", p.display(), mode(p));
    }
    let mut store_files = 0;
    for p in walk(&data.join("store"))
        .into_iter()
        .filter(|p| p.is_file())
    {
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !contains(&bytes, SECRET.as_bytes()),
            "{} holds the secret",
            p.display()
        );
        store_files += 1;
    }
    assert!(store_files >= 2, "read the store's files");
    eprintln!(
        "checked {} paths; {store_files} store files hold no secret",
        everything.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_store_key_keeps_every_token_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key_file = data.join("store.key");
    let (mut node, alice) = start(tmp.path(), "before").await;
    drop(alice);
    // Tokens minted before the rotation, by the tenant's backend.
    let (bob_token, carol_token) = (token("bob"), token("carol"));

    // While the node runs the store is in use: the rotation says so and changes nothing.
    let key_before = std::fs::read_to_string(&key_file).unwrap();
    let (ok, out) = run(&["keys", "rotate", "--data-dir", data.to_str().unwrap()]);
    assert!(!ok, "rotation with the node running: {out}");
    assert!(out.contains("is the node running"), "{out}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key_before);

    assert!(node.terminate().success(), "{}", node.log_text());
    let (ok, out) = run(&["keys", "rotate", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("key 2 now seals 1 tenant secrets"), "{out}");
    let key_after = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(key_after, key_before);
    assert!(
        !key_after.lines().any(|l| l.starts_with("1 ")),
        "the old key is retired"
    );
    assert_eq!(mode(&key_file), 0o600);

    // The node starts on the rotated key, and the tokens minted before are welcomed.
    let (_node, _alice) = start(tmp.path(), "after").await;
    let cert = std::fs::read(data.join("cert.der")).unwrap();
    for t in [bob_token, carol_token] {
        let mut c = RawClient::connect(_node.addr, &cert, switchboard_wire::ALPN)
            .await
            .unwrap();
        assert!(matches!(c.hello(&t).await, ServerFrame::Welcome { .. }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_wrong_store_key_stops_the_node_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key_file = data.join("store.key");
    let (mut node, alice) = start(tmp.path(), "first").await;
    drop(alice);
    assert!(node.terminate().success(), "{}", node.log_text());
    let key = std::fs::read_to_string(&key_file).unwrap();

    let serve = |name: &str| -> String {
        let config_file = tmp.path().join("node.toml");
        std::fs::write(
            &config_file,
            format!(
                "listen = \"127.0.0.1:{}\"\ndata_dir = \"data\"\n\n{}",
                free_udp_port(),
                config()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .arg("--config")
            .arg(&config_file)
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name}: the node started without its store key");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{name}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    std::fs::remove_file(&key_file).unwrap();
    let out = serve("missing");
    assert!(
        out.contains("store key file") && out.contains("is missing"),
        "{out}"
    );
    assert!(!key_file.exists(), "no new key replaces the lost one");

    // Another key under the same id.
    let other = format!("1 {}\n", "ab".repeat(32));
    std::fs::write(&key_file, other).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = serve("wrong");
    assert!(out.contains("does not open with key 1"), "{out}");

    // The right key, but readable by others: refused until it is 600 again.
    std::fs::write(&key_file, &key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve("loose");
    assert!(out.contains("must be 600"), "{out}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_node, _alice) = start(tmp.path(), "restored").await;
}

// --- rotation on a running node, over the admin API ---

const ADMIN_TOKEN: &str = "secrets-test-admin-token-0123456789";

/// A free TCP port on loopback for the admin API (bind port 0, read it, release it).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

/// A node whose admin API listens on a port of its own, with `ADMIN_TOKEN`, plus `envs`.
/// Returns it, alice's session (welcomed) and the admin API's URL once it answers.
async fn start_with_admin(
    dir: &Path,
    name: &str,
    envs: &[(&str, &str)],
) -> (NodeProcess, RawClient, String) {
    let port = free_tcp_port();
    let mut all = vec![
        (SECRET_ENV, SECRET),
        ("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    all.extend_from_slice(envs);
    let (node, client, _) = NodeProcess::start(
        dir,
        name,
        &config_with_admin(&format!("127.0.0.1:{port}")),
        &all,
        &token("alice"),
        Vec::new(),
    )
    .await;
    let url = format!("http://127.0.0.1:{port}");
    // The API binds after the QUIC endpoint; a connection refused until then is the only
    // sign, so ask /healthz until it answers (bounded).
    let anonymous = AdminClient::with_timeout(&url, None, Duration::from_secs(5));
    let deadline = Instant::now() + process::READY_TIMEOUT;
    while tokio::task::block_in_place(|| anonymous.health()).is_err() {
        assert!(
            Instant::now() < deadline,
            "admin API of {name} not up:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (node, client, url)
}

fn admin(url: &str) -> AdminClient {
    AdminClient::new(url, Some(ADMIN_TOKEN.to_owned()))
}

/// `switchboard ctl` against `url` with the admin token in the environment; returns (exit
/// code, stdout, stderr).
fn ctl(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("ctl")
            .args(args)
            .env("SWITCHBOARD_ADMIN_URL", url)
            .env("SWITCHBOARD_ADMIN_TOKEN", token)
            .env_remove("SWITCHBOARD_ADMIN_CA")
            .stdin(Stdio::null())
            .output()
            .expect("run switchboard ctl")
    });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn key_ids(key_file: &Path) -> Vec<u32> {
    KeyRing::parse(&std::fs::read_to_string(key_file).unwrap())
        .unwrap()
        .ids()
}

/// Opens the (stopped) node's sled store with `key_file`.
fn open_store(data: &Path, key_file: &Path) -> Result<SledStore, StoreError> {
    SledStore::open_with(SledStoreConfig::new(data.join("store")).key_file(key_file))
}

async fn welcomed(node: &NodeProcess, token: &str) -> bool {
    let cert = std::fs::read(node.data_dir.join("cert.der")).unwrap();
    let mut c = RawClient::connect(node.addr, &cert, switchboard_wire::ALPN)
        .await
        .unwrap();
    matches!(c.hello(token).await, ServerFrame::Welcome { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_store_key_on_a_running_node_reseals_every_secret_and_keeps_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key_file = data.join("store.key");
    let (mut node, mut alice, url) = start_with_admin(tmp.path(), "before", &[]).await;
    let admin = admin(&url);

    // A session that stays open across the rotations.
    alice
        .send(&ClientFrame::Join {
            request_id: 1,
            group: "room".into(),
        })
        .await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Joined { .. })
    ));

    // Two more tenants made through the API, and tokens minted before the rotation.
    let mut secrets = vec![(TENANT.to_owned(), SECRET.to_owned())];
    for id in ["initech", "umbrella"] {
        let req = CreateTenant {
            id: id.into(),
            secret: None,
            quotas: None,
        };
        let made = tokio::task::block_in_place(|| admin.create_tenant(&req)).unwrap();
        secrets.push((made.tenant, made.secret));
    }
    let initech_token = tokio::task::block_in_place(|| {
        admin.mint_token(
            "initech",
            &MintToken {
                user: "dana".into(),
                ttl_secs: None,
            },
        )
    })
    .unwrap()
    .token;
    let bob_token = token("bob");
    assert_eq!(key_ids(&key_file), vec![1]);
    let old_key_file = tmp.path().join("old.key");
    std::fs::copy(&key_file, &old_key_file).unwrap();

    // Only the operator may rotate: a tenant key is refused, and nothing changes.
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    let tenant_key = tokio::task::block_in_place(|| admin.create_api_key(TENANT, "ops"))
        .unwrap()
        .key;
    let as_tenant = AdminClient::new(&url, Some(tenant_key.clone()));
    let refused = tokio::task::block_in_place(|| as_tenant.rotate_store_key()).unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(403), Some("forbidden"))
    );
    let (code, _, stderr) = ctl(&url, &tenant_key, &["node", "rotate-store-key"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("forbidden"), "{stderr}");
    let anonymous = AdminClient::new(&url, None);
    let refused = tokio::task::block_in_place(|| anonymous.rotate_store_key()).unwrap_err();
    assert_eq!(refused.status(), Some(401));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key_text);

    // The rotation: a new key seals the three secrets, the old one leaves the file.
    let rotated = tokio::task::block_in_place(|| admin.rotate_store_key()).unwrap();
    assert_eq!((rotated.key_id, rotated.resealed), (2, 3));
    assert_eq!(key_ids(&key_file), vec![2]);
    assert_eq!(mode(&key_file), 0o600);

    // The session opened before carries on; tokens minted before are welcomed.
    alice.send(&send(2, "room", b"after the rotation")).await;
    match alice.read().await {
        Some(ServerFrame::Ack { request_id: 2, .. }) => {}
        other => panic!("send after the rotation: {other:?}"),
    }
    assert!(
        welcomed(&node, &bob_token).await,
        "acme token minted before"
    );
    assert!(
        welcomed(&node, &initech_token).await,
        "initech token minted before"
    );

    // The same through ctl, with the answer as JSON.
    let (code, stdout, stderr) = ctl(&url, ADMIN_TOKEN, &["--json", "node", "rotate-store-key"]);
    assert_eq!(code, 0, "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer, serde_json::json!({"key_id": 3, "resealed": 3}));
    assert_eq!(key_ids(&key_file), vec![3]);

    assert!(node.terminate().success(), "{}", node.log_text());
    // At rest: no file of the store holds a secret in the clear, and the records are sealed
    // under the new key only — the old key file no longer opens the store.
    for p in walk(&data.join("store"))
        .into_iter()
        .filter(|p| p.is_file())
    {
        let bytes = std::fs::read(&p).unwrap();
        for (tenant, secret) in &secrets {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{} holds {tenant}'s secret",
                p.display()
            );
        }
    }
    match open_store(&data, &old_key_file) {
        Err(StoreError::Secrets(SecretsError::UnknownKey { key_id: 3, .. })) => {}
        other => panic!("the retired key opened the store: {:?}", other.map(|_| ())),
    }
    {
        let store = open_store(&data, &key_file).unwrap();
        assert_eq!(store.key_ids(), vec![3]);
        for (tenant, secret) in &secrets {
            let rec = store.tenant(&TenantId::new(tenant).unwrap()).unwrap();
            assert_eq!(rec.unwrap().secret, secret.as_bytes(), "{tenant}");
        }
    }

    // A restart opens the store with the rotated key file; old tokens still work.
    let (node, _alice, _) = start_with_admin(tmp.path(), "after", &[]).await;
    assert!(welcomed(&node, &initech_token).await);
    assert!(welcomed(&node, &bob_token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_while_tenants_are_created_lose_no_secret() {
    const CREATORS: usize = 3;
    const EACH: usize = 15;
    const MIN_ROTATIONS: u32 = 3;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (mut node, _alice, url) = start_with_admin(tmp.path(), "node", &[]).await;

    // Creators and the rotator start together; the rotator keeps rotating until every
    // creator is done, so tenants are created before, during and between rotations.
    let start = Arc::new(Barrier::new(CREATORS + 1));
    let creators: Vec<_> = (0..CREATORS)
        .map(|c| {
            let (start, url) = (start.clone(), url.clone());
            std::thread::spawn(move || {
                let admin = admin(&url);
                start.wait();
                (0..EACH)
                    .map(|i| {
                        let req = CreateTenant {
                            id: format!("t{c}-{i}"),
                            secret: None,
                            quotas: None,
                        };
                        let made = admin.create_tenant(&req).expect("create a tenant");
                        (made.tenant, made.secret)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let rotations = tokio::task::block_in_place(|| {
        let admin = admin(&url);
        start.wait();
        let mut last = 1;
        let mut n = 0;
        while n < MIN_ROTATIONS || creators.iter().any(|c| !c.is_finished()) {
            let r = admin.rotate_store_key().expect("rotate");
            assert_eq!(r.key_id, last + 1, "each rotation adds the next key");
            last = r.key_id;
            n += 1;
        }
        n
    });
    let mut secrets = vec![(TENANT.to_owned(), SECRET.to_owned())];
    for c in creators {
        secrets.extend(c.join().unwrap());
    }
    assert_eq!(secrets.len(), 1 + CREATORS * EACH);
    eprintln!(
        "{rotations} rotations while {} tenants were created",
        CREATORS * EACH
    );

    assert!(node.terminate().success(), "{}", node.log_text());
    let key_file = data.join("store.key");
    assert_eq!(key_ids(&key_file), vec![1 + rotations]);
    // Opening checks every record against the key file (a secret sealed under a retired key
    // would fail here), and every secret is the one the API handed out.
    let store = open_store(&data, &key_file).unwrap();
    assert_eq!(store.tenants().unwrap().len(), secrets.len());
    for (tenant, secret) in &secrets {
        let rec = store.tenant(&TenantId::new(tenant).unwrap()).unwrap();
        assert_eq!(rec.unwrap().secret, secret.as_bytes(), "{tenant}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_key_from_the_environment_is_not_rotated_online() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key_text = format!("1 {}\n", "5a".repeat(32));
    let (node, mut alice, url) =
        start_with_admin(tmp.path(), "node", &[("SWITCHBOARD_STORE_KEY", &key_text)]).await;
    assert!(
        !data.join("store.key").exists(),
        "no key file with an env key"
    );

    let refused = tokio::task::block_in_place(|| admin(&url).rotate_store_key()).unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(409), Some("store-key-not-in-file"))
    );
    let detail = &refused.problem().unwrap().detail;
    assert!(detail.contains("keys rotate --key-file"), "{detail}");
    let (code, _, stderr) = ctl(&url, ADMIN_TOKEN, &["node", "rotate-store-key"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("store-key-not-in-file (HTTP 409)"),
        "{stderr}"
    );

    // Nothing was written, and the node carries on.
    assert!(!data.join("store.key").exists());
    alice
        .send(&ClientFrame::Join {
            request_id: 1,
            group: "room".into(),
        })
        .await;
    assert!(matches!(
        alice.read().await,
        Some(ServerFrame::Joined { .. })
    ));
    assert!(welcomed(&node, &token("bob")).await);
}
