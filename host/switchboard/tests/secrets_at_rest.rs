//! Secrets at rest, against the real binary (`switchboard serve` as a child process): what
//! the node creates is its own (directories 0700, files 0600), no file of the store holds a
//! tenant's secret in the clear, the store key is kept outside the store and its loss or a
//! wrong one stops the node with a clear error, and rotating it keeps every token valid.
//! See `docs/reliability.md`, "Secrets at rest".

mod common;
#[path = "common/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use process::{free_udp_port, NodeProcess};
use switchboard_wire::ServerFrame;

const TENANT: &str = "acme";
const SECRET_ENV: &str = "SWITCHBOARD_SECRETS_TEST_SECRET";
/// Distinctive bytes to look for in the store's files.
const SECRET: &str = "secret-at-rest-5b1e0c9d7a3f4e2b";

fn config() -> String {
    // The admin API on a free port, so the node also makes its artifacts directory.
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
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
