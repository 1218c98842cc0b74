//! `switchboard ctl` end to end: the built binary against a node's admin API, every command,
//! its output (human and `--json`) and its exit codes.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_admin::{AutoRollback, Control, ControlConfig};
use switchboard_core::Limits;
use switchboard_edge::{EdgeConfig, Node, TlsIdentity};
use switchboard_policy::{PolicyEngine, PolicyLimits};
use switchboard_store::SledStore;

const ADMIN_TOKEN: &str = "ctl-test-admin-token-0123456789";

/// A node with its control plane and HTTP API on loopback.
struct Api {
    url: String,
    _node: Node,
    _tmp: tempfile::TempDir,
}

async fn start_api() -> Api {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&tmp.path().join("store")).unwrap());
    let limits = Limits::default();
    let node = Node::start(
        EdgeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            limits: limits.clone(),
            identity: TlsIdentity::self_signed().unwrap(),
            webtransport: None,
        },
        store.clone(),
    )
    .await
    .unwrap();
    let control = Control::start(
        ControlConfig {
            admin_token_sha256: Some(Sha256::digest(ADMIN_TOKEN.as_bytes()).into()),
            artifact_dir: tmp.path().join("artifacts"),
            auto_rollback: AutoRollback {
                enabled: false,
                ..AutoRollback::default()
            },
            apply_timeout: Duration::from_secs(30),
            max_group_members: limits.max_group_members,
            tenant_rollout: false,
        },
        store.clone(),
        store,
        node.hub().clone(),
        PolicyEngine::new(PolicyLimits::default()).unwrap(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(switchboard_admin::http::serve(
        listener,
        control,
        std::future::pending(),
    ));
    Api {
        url,
        _node: node,
        _tmp: tmp,
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "stderr: {}\nstdout: {}",
            self.stderr, self.stdout
        );
        self.stdout
    }

    #[track_caller]
    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

/// Runs the binary with `token` in the environment (as an operator would export it).
fn ctl(url: &str, token: Option<&str>, args: &[&str]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.arg("ctl")
        .args(args)
        .env("SWITCHBOARD_ADMIN_URL", url)
        .env_remove("SWITCHBOARD_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("SWITCHBOARD_ADMIN_TOKEN", t);
    }
    // The binary blocks on HTTP; keep the API's tasks running meanwhile.
    let out = tokio::task::block_in_place(|| cmd.output()).unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_ctl_command_end_to_end() {
    let api = start_api().await;
    let url = api.url.as_str();
    let admin = |args: &[&str]| ctl(url, Some(ADMIN_TOKEN), args);

    assert!(ctl(url, None, &["health"])
        .ok()
        .starts_with("ok: 0 sessions"));

    // Tenants.
    let out = admin(&["tenant", "create", "acme"]).ok();
    assert!(
        out.contains("created tenant acme") && out.contains("secret: "),
        "{out}"
    );
    // A secret of one's own comes from a file, never the command line (`ps` shows that).
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "a-secret-of-our-own-0123456789\n").unwrap();
    let secret_path = secret.path().to_str().unwrap();
    let out = admin(&["tenant", "create", "initech", "--secret-file", secret_path]).ok();
    assert!(
        out.contains("secret: a-secret-of-our-own-0123456789"),
        "{out}"
    );
    let refused = admin(&[
        "tenant",
        "create",
        "umbrella",
        "--secret",
        "on-the-command-line",
    ]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--secret-file"),
        "{}",
        refused.stderr
    );
    let again = admin(&["tenant", "create", "acme"]);
    assert_eq!(again.code, 3);
    assert!(again.stderr.contains("conflict"), "{}", again.stderr);
    let list = admin(&["tenant", "list", "--json"]).json();
    assert_eq!(list[0]["id"], "acme");
    assert_eq!(list[1]["id"], "initech");
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "umbrella was not created: {list}"
    );
    assert!(admin(&["tenant", "list"]).ok().starts_with("TENANT"));

    // The node's store key, rotated while it runs: both tenants' secrets sealed again.
    let out = admin(&["node", "rotate-store-key"]).ok();
    assert_eq!(
        out.trim(),
        "store key rotated: key 2 now seals 2 tenant secrets"
    );
    let out = admin(&["tenant", "quotas", "acme", "--max-groups", "50"]).ok();
    assert!(out.contains("50 groups, 64 plugin versions"), "{out}");

    // A tenant key, then the tenant's own work with it (from --token-file this time).
    let key = admin(&["key", "create", "acme", "--label", "ci", "--json"]).json();
    let key_id = key["id"].as_str().unwrap().to_owned();
    let key = key["key"].as_str().unwrap().to_owned();
    let keys = admin(&["key", "list", "acme"]).ok();
    assert!(
        keys.contains(&key_id) && keys.contains("ci") && !keys.contains(&key),
        "{keys}"
    );
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let key_file = key_file.to_str().unwrap().to_owned();
    let tenant = |args: &[&str]| {
        let mut all = vec!["--token-file", key_file.as_str()];
        all.extend_from_slice(args);
        // The file wins over the environment's (admin) token.
        ctl(url, Some(ADMIN_TOKEN), &all)
    };
    // A tenant key reaches only its tenant: proof the file's key was used, not the admin's.
    let out = tenant(&["tenant", "list"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    assert!(tenant(&["tenant", "show", "acme"])
        .ok()
        .contains("built-in policy"));

    let group = tenant(&[
        "group",
        "create",
        "acme",
        "team",
        "--max-members",
        "10",
        "--json",
    ])
    .json();
    assert_eq!(
        (group["id"].as_str(), group["max_members"].as_u64()),
        (Some("team"), Some(10))
    );
    assert!(tenant(&["group", "create", "acme", "lobby", "--open"])
        .ok()
        .contains("(open)"));
    assert_eq!(
        tenant(&["group", "add-member", "acme", "team", "alice"])
            .ok()
            .trim(),
        "added alice to team"
    );
    assert!(tenant(&["group", "add-member", "acme", "team", "alice"])
        .ok()
        .contains("already a member"));
    tenant(&["group", "add-member", "acme", "team", "bob"]).ok();
    assert_eq!(
        tenant(&["group", "members", "acme", "team"]).ok(),
        "alice\nbob\n"
    );
    assert!(tenant(&["group", "list", "acme"]).ok().contains("team"));
    assert!(tenant(&["group", "show", "acme", "team"])
        .ok()
        .contains("2/10 members"));
    tenant(&["group", "remove-member", "acme", "team", "bob"]).ok();
    assert_eq!(
        tenant(&["group", "members", "acme", "team", "--json"]).json(),
        serde_json::json!(["alice"])
    );

    let token = tenant(&["token", "mint", "acme", "alice", "--ttl", "600"]).ok();
    assert_eq!(
        token.lines().count(),
        1,
        "just the token, for scripts: {token}"
    );
    assert!(!token.trim().is_empty());

    // Plugins and their rollout.
    let up = tenant(&[
        "plugin",
        "upload",
        "acme",
        plugins_artifacts::PRIORITY,
        "--json",
    ])
    .json();
    assert_eq!(up["created"], true);
    let v1 = up["version"].as_str().unwrap().to_owned();
    let out = tenant(&["plugin", "upload", "acme", plugins_artifacts::PRIORITY]).ok();
    assert!(out.contains("stored already"), "{out}");
    let out = admin(&["plugin", "upload", "acme", plugins_artifacts::FLAGS]).ok();
    assert!(
        out.starts_with("stored version ") && out.contains("self-test: "),
        "{out}"
    );
    let v2 = out.split_whitespace().nth(2).unwrap().to_owned();
    // --quiet: the version alone, for scripts (stored already or not).
    let quiet = tenant(&[
        "plugin",
        "upload",
        "acme",
        plugins_artifacts::FLAGS,
        "--quiet",
    ])
    .ok();
    assert_eq!(quiet, format!("{v2}\n"));
    let list = tenant(&["plugin", "list", "acme"]).ok();
    assert!(list.contains(&v1) && list.contains(&v2), "{list}");
    assert!(tenant(&["plugin", "show", "acme", &v1])
        .ok()
        .contains("role:     stored"));
    // An unambiguous prefix names a version; a wrong or ambiguous one is refused locally.
    let out = tenant(&["plugin", "show", "acme", &v1[..8]]).ok();
    assert!(out.starts_with(&format!("version {v1}")), "{out}");
    let common = v1
        .chars()
        .zip(v2.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let ambiguous = tenant(&["plugin", "show", "acme", &v1[..common]]);
    if common > 0 {
        assert_eq!(ambiguous.code, 1, "{}", ambiguous.stderr);
        assert!(
            ambiguous.stderr.contains("ambiguous"),
            "{}",
            ambiguous.stderr
        );
    }
    let unknown = tenant(&["plugin", "show", "acme", "zz"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no stored version"),
        "{}",
        unknown.stderr
    );

    // Labels: given at upload, listed, accepted where a version goes; one two versions share
    // is refused locally, naming both; a bad one is the node's typed refusal.
    let up = tenant(&[
        "plugin",
        "upload",
        "acme",
        plugins_artifacts::RECEIPTS,
        "--label",
        "receipts v1",
        "--json",
    ])
    .json();
    assert_eq!(up["label"], "receipts v1");
    let v3 = up["version"].as_str().unwrap().to_owned();
    let v4 = tenant(&[
        "plugin",
        "upload",
        "acme",
        plugins_artifacts::DEGRADATION,
        "--label",
        "beta",
        "--quiet",
    ])
    .ok();
    let v4 = v4.trim();
    tenant(&[
        "plugin",
        "upload",
        "acme",
        plugins_artifacts::MINIMAL_PLUGIN,
        "--label",
        "beta",
    ])
    .ok();
    let list = tenant(&["plugin", "list", "acme"]).ok();
    assert!(
        list.contains("LABEL") && list.contains("receipts v1"),
        "{list}"
    );
    let out = tenant(&["plugin", "show", "acme", "receipts v1"]).ok();
    assert!(
        out.starts_with(&format!("version {v3}\n  label:    receipts v1")),
        "{out}"
    );
    let ambiguous = tenant(&["plugin", "show", "acme", "beta"]);
    assert_eq!(ambiguous.code, 1, "{}", ambiguous.stderr);
    assert!(
        ambiguous.stderr.contains("ambiguous") && ambiguous.stderr.contains(&v4[..12]),
        "{}",
        ambiguous.stderr
    );
    let refused = tenant(&[
        "plugin",
        "upload",
        "acme",
        plugins_artifacts::HEAVY,
        "--label",
        &"x".repeat(65),
    ]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("invalid-argument"),
        "{}",
        refused.stderr
    );

    let out = admin(&[
        "policy",
        "activate",
        "acme",
        &v1[..10],
        "--config",
        "vip_users=alice",
    ])
    .ok();
    assert!(
        out.contains(&format!("active: {v1}")) && out.contains("vip_users=alice"),
        "{out}"
    );
    let status = tenant(&["policy", "status", "acme", "--json"]).json();
    assert_eq!(status["active"]["version"], v1.as_str());
    let out = admin(&[
        "policy",
        "canary",
        "acme",
        &v2,
        "--percent",
        "20",
        "--group",
        "team",
    ])
    .ok();
    assert!(out.contains("for 20% of users and groups team"), "{out}");
    let out = admin(&["policy", "promote", "acme"]).ok();
    assert!(
        out.contains(&format!("active: {v2}")) && out.contains(&format!("previous: {v1}")),
        "{out}"
    );
    let out = admin(&["policy", "rollback", "acme"]).ok();
    assert!(
        out.contains(&format!("active: {v1}")) && out.contains("(manual"),
        "{out}"
    );
    admin(&["policy", "canary", "acme", &v2, "--percent", "5"]).ok();
    let status = admin(&["policy", "abort-canary", "acme", "--json"]).json();
    assert_eq!(status["canary"], Value::Null);
    // Policy changes are the operator's.
    let refused = tenant(&["policy", "rollback", "acme"]);
    assert_eq!(refused.code, 3);
    assert!(refused.stderr.contains("forbidden"), "{}", refused.stderr);

    // Flags: switches keep the other rules; a file replaces them all.
    tenant(&["flags", "set", "acme", "dark=on", "beta=off"]).ok();
    let flags = tenant(&["flags", "set", "acme", "beta=on", "--json"]).json();
    assert_eq!(flags["dark"]["enabled"], true);
    assert_eq!(flags["beta"]["enabled"], true);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r#"{"only": {"enabled": true, "percent": 30}}"#).unwrap();
    tenant(&[
        "flags",
        "set",
        "acme",
        "--file",
        file.path().to_str().unwrap(),
    ])
    .ok();
    let out = tenant(&["flags", "get", "acme"]).ok();
    assert!(
        out.contains("only") && out.contains("30%") && !out.contains("dark"),
        "{out}"
    );

    // Degradation and metrics.
    assert!(admin(&["degradation", "set", "2"])
        .ok()
        .contains("forced to 2"));
    let d = admin(&["degradation", "get", "--json"]).json();
    assert_eq!(
        (d["level"].as_u64(), d["forced"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(admin(&["degradation", "set", "none"])
        .ok()
        .contains("not forced"));
    let metrics = admin(&["metrics"]).ok();
    assert!(
        metrics.contains("# TYPE switchboard_sessions gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("version=\"{v1}\",role=\"active\"")),
        "{metrics}"
    );

    // Credentials: rotate the secret, delete the key.
    assert!(admin(&["tenant", "rotate-secret", "acme"])
        .ok()
        .contains("new secret for acme"));
    assert!(admin(&["key", "delete", "acme", &key_id])
        .ok()
        .contains("deleted key"));
    let gone = tenant(&["tenant", "show", "acme"]);
    assert_eq!(gone.code, 3);
    assert!(gone.stderr.contains("unauthenticated"), "{}", gone.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_exit_codes() {
    let api = start_api().await;
    let url = api.url.as_str();

    // 2: usage, from clap.
    assert_eq!(ctl(url, None, &["tenant", "frobnicate"]).code, 2);
    assert_eq!(ctl(url, None, &["degradation", "set", "7"]).code, 2);
    assert_eq!(ctl(url, None, &["flags", "set", "acme"]).code, 2);

    // 3: refused, with the problem's code and detail on stderr.
    let out = ctl(url, None, &["tenant", "list"]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("unauthenticated (HTTP 401)"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    let out = ctl(url, Some(ADMIN_TOKEN), &["tenant", "show", "nosuch"]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr
            .contains("not-found (HTTP 404): tenant nosuch not found"),
        "{}",
        out.stderr
    );

    // 2: the removed --token (a token on the command line shows in `ps`), with the way out.
    let out = ctl(url, None, &["--token", ADMIN_TOKEN, "tenant", "list"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("SWITCHBOARD_ADMIN_TOKEN") && out.stderr.contains("--token-file"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());

    // 1: a local problem: a token file that is missing or empty.
    let out = ctl(url, None, &["--token-file", "/no/such/token", "health"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("/no/such/token"), "{}", out.stderr);
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = ctl(
        url,
        None,
        &["--token-file", empty.path().to_str().unwrap(), "health"],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("empty"), "{}", out.stderr);

    // 1: a local problem.
    let out = ctl(
        url,
        Some(ADMIN_TOKEN),
        &["plugin", "upload", "acme", "/no/such/file.wasm"],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("/no/such/file.wasm"), "{}", out.stderr);

    // 1: a --ca file that holds no certificate, refused before any request; a missing one.
    let not_a_cert = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_cert.path(), "just some text, no certificate\n").unwrap();
    let path = not_a_cert.path().to_str().unwrap();
    let out = ctl(url, None, &["--ca", path, "health"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "error: --ca {path}: neither PEM nor a DER X.509 certificate"
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    let out = ctl(url, None, &["--ca", "/no/such/ca.pem", "health"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("--ca /no/such/ca.pem"),
        "{}",
        out.stderr
    );

    // 4: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = ctl(&dead, None, &["health"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
}
