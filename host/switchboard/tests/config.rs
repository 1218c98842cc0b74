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
    assert_eq!(
        cfg.admin.server_limits(),
        switchboard_admin::http::ServerLimits::default(),
        "the example documents the admin server's defaults"
    );
    assert!(cfg.admin.tls.is_none());
    assert!(!cfg.admin.tenant_rollout, "off unless the operator says so");
    assert_eq!(
        cfg.plugins,
        switchboard::PluginSettings::default(),
        "the example documents the plugin budgets' defaults"
    );
    let store = switchboard::StoreSettings::default();
    assert_eq!(
        (
            cfg.store.messages,
            cfg.store.shards,
            cfg.store.segment_bytes,
            cfg.store.index_interval,
            cfg.store.dedupe_window,
            cfg.store.retention_check_s,
        ),
        (
            store.messages,
            store.shards,
            store.segment_bytes,
            store.index_interval,
            store.dedupe_window,
            store.retention_check_s,
        ),
        "the example documents the store's defaults"
    );
    assert_eq!(store.messages, switchboard::MessagesIn::Segment);
    let retention = cfg.store.retention.retention().unwrap();
    assert!(!retention.is_limited(), "the default keeps every message");
}

#[test]
fn retention_limits_fall_back_from_group_to_tenant_to_default() {
    let cfg = load_str(
        "data_dir = \"d\"\n[store.retention]\nmax_age_s = 100\n\
         [[store.retention.tenants]]\ntenant = \"acme\"\nmax_messages = 5\n\
         [[store.retention.groups]]\ntenant = \"acme\"\ngroup = \"g\"\nmax_age_s = 7\n",
    )
    .unwrap();
    let r = cfg.store.retention.retention().unwrap();
    let limits = r.limits(&TenantId::new("acme").unwrap(), &GroupId::new("g").unwrap());
    assert_eq!(
        (limits.max_age_ms, limits.max_messages, limits.max_bytes),
        (Some(7_000), Some(5), None)
    );
    let other = r.limits(
        &TenantId::new("globex").unwrap(),
        &GroupId::new("g").unwrap(),
    );
    assert_eq!(
        (other.max_age_ms, other.max_messages),
        (Some(100_000), None)
    );
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
            "data_dir = \"d\"\n[store]\nmessages = \"rocks\"",
            "unknown variant `rocks`",
        ),
        (
            "data_dir = \"d\"\n[store]\nsegment_bytes = 1000",
            "segment_bytes must hold the largest message",
        ),
        (
            "data_dir = \"d\"\n[[store.retention.groups]]\ntenant = \"a b\"\ngroup = \"g\"",
            "retention tenant",
        ),
        (
            "data_dir = \"d\"\n[notify]\nwebhook = \"ftp://push.example/x\"",
            "must start with http:// or https://",
        ),
        (
            "data_dir = \"d\"\n[notify]\nwebhook_ca = \"ca.pem\"",
            "webhook_ca is set without a webhook",
        ),
        (
            "data_dir = \"d\"\n[notify]\nwebhook = \"https://push.example/x\"\nwebhook_ca = \"no-such-ca.pem\"",
            "no-such-ca.pem",
        ),
        (
            "data_dir = \"d\"\n[admin]\nheader_timeout_ms = 0",
            "header_timeout_ms must be greater than zero",
        ),
        (
            "data_dir = \"d\"\n[admin]\nmax_connections = 0",
            "max_connections must be at least 1",
        ),
        (
            "data_dir = \"d\"\n[cluster]\nnats = \"nats://127.0.0.1:4222\"\nnode = \"a.b\"",
            "cluster.node \"a.b\"",
        ),
        (
            "data_dir = \"d\"\n[cluster]\nnats = \"nats://127.0.0.1:4222\"\nnode = \"a\"\nlease_ttl_ms = 10",
            "lease_ttl_ms must be at least 1000",
        ),
        (
            "data_dir = \"d\"\n[cluster]\nnats = \"nats://127.0.0.1:4222\"\nnode = \"a\"\nreplicas = 0",
            "cluster.replicas and cluster.request_timeout_ms must be above 0",
        ),
        (
            "data_dir = \"d\"\n[cluster]\nnats = \"nats://127.0.0.1:4222\"\nnode = \"a\"\nprefix = \"a.b\"",
            "cluster.prefix",
        ),
        ("data_dir = \"d\"\n[cluster]\nnode = \"a\"", "missing field `nats`"),
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

/// `[admin.tls]`: the node serves its admin API over HTTPS with the configured certificate
/// (a PEM chain here), and a rustls client that trusts it gets `/healthz`.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_serves_https_with_the_configured_certificate() {
    use std::io::{Read, Write};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    // The dev certificate: cert.pem (PEM) and key.der.
    let (identity, _) = switchboard_edge::TlsIdentity::dev_in(dir.path()).unwrap();
    let text = "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
                [admin]\nlisten = \"127.0.0.1:0\"\n\
                [admin.tls]\ncert = \"cert.pem\"\nkey = \"key.der\"\n";
    std::fs::write(dir.path().join("node.toml"), text).unwrap();
    let cfg = Config::load(&dir.path().join("node.toml")).unwrap();
    let store = switchboard::open_store(&cfg.data_dir).unwrap();
    let node = switchboard::start(&cfg, store).await.unwrap();
    let addr = node.admin_addr.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity.cert_chain[0].clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let got = tokio::task::spawn_blocking(move || {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = tls.read_to_end(&mut got);
        got
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"status\":\"ok\""), "{text}");

    // `switchboard ctl` over HTTPS: with the node's certificate as its CA it gets through;
    // without it (web PKI roots) the self-signed certificate is refused (transport, exit 4).
    let url = format!("https://localhost:{}", addr.port());
    let cert = dir.path().join("cert.pem");
    let ctl = move |extra: &[&std::ffi::OsStr]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(["ctl", "--url", url.as_str()])
            .args(extra)
            .arg("health");
        cmd.env_remove("SWITCHBOARD_ADMIN_CA");
        cmd.env_remove("SWITCHBOARD_ADMIN_TOKEN");
        cmd.output().unwrap()
    };
    let trusted = tokio::task::spawn_blocking({
        let ctl = ctl.clone();
        let cert = cert.clone();
        move || ctl(&["--ca".as_ref(), cert.as_os_str()])
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&trusted.stdout);
    assert_eq!(
        trusted.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert!(out.starts_with("ok"), "{out}");
    // The same certificate as DER (the node's cert.der) is taken as well.
    let der = tokio::task::spawn_blocking({
        let ctl = ctl.clone();
        let cert = dir.path().join("cert.der");
        move || ctl(&["--ca".as_ref(), cert.as_os_str()])
    })
    .await
    .unwrap();
    assert_eq!(
        der.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&der.stderr)
    );
    let untrusted = tokio::task::spawn_blocking(move || ctl(&[])).await.unwrap();
    assert_eq!(untrusted.status.code(), Some(4));
    node.shutdown().await;
}

/// The binary with `args`, its environment cleared of `SWITCHBOARD_*` but `env`.
fn switchboard(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with(switchboard::CONFIG_ENV_PREFIX) {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

/// `switchboard check-config FILE` says what `serve` would make of a file, environment
/// overrides included, and refuses what `serve` refuses with the same reason (exit 1).
#[test]
fn check_config_reads_a_file_as_serve_does() {
    let example = example();
    let example = example.to_str().unwrap();
    let out = switchboard(&["check-config", example], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{:?}", out.stderr);
    assert!(
        stdout.starts_with("ok: ") && stdout.contains("QUIC on 127.0.0.1:7700"),
        "{stdout}"
    );

    // SWITCHBOARD_<KEY> and SWITCHBOARD_<SECTION>__<KEY> override the file.
    let out = switchboard(
        &["check-config", example],
        &[
            ("SWITCHBOARD_LISTEN", "127.0.0.1:9999"),
            ("SWITCHBOARD_ADMIN__LISTEN", "127.0.0.1:9998"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("QUIC on 127.0.0.1:9999") && stdout.contains("admin API on 127.0.0.1:9998"),
        "{stdout}"
    );
    // A bad value from the environment is refused, naming the variable.
    let out = switchboard(
        &["check-config", example],
        &[("SWITCHBOARD_LIMITS__MAX_PAYLOAD_BYTES", "lots")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("SWITCHBOARD_LIMITS__MAX_PAYLOAD_BYTES"),
        "{stderr}"
    );

    // A bad file: the reason `serve` gives, with the file's name and line.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "data_dir = \"d\"\nlisten = 7\n").unwrap();
    let out = switchboard(&["check-config", bad.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let reason = match Config::load_with_env(&bad, Vec::<(String, String)>::new()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded"),
    };
    assert_eq!(stderr.trim(), reason.trim());
    assert!(
        stderr.contains("bad.toml") && stderr.contains("line 2"),
        "{stderr}"
    );
}

/// How long the node may take to start (a debug build on a loaded machine).
const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `serve --listen --data-dir` win over the file, and `--log-format json` writes one JSON
/// object per line, durations as integers.
#[tokio::test(flavor = "multi_thread")]
async fn serve_flags_override_the_file_and_json_logs_parse() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "data_dir = \"from-file\"\nlisten = \"127.0.0.1:1\"\n[admin]\nenabled = false\n",
    )
    .unwrap();
    let data = dir.path().join("from-flag");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "info")
        // The log goes to stdout.
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(log).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    // Up to the edge's "listening" event: the node runs. Then SIGTERM, which ends it
    // gracefully, and the rest of its log.
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("\"listening\"")) {
        let line = tokio::task::block_in_place(|| rx.recv_timeout(WAIT))
            .unwrap_or_else(|e| panic!("{e}: no listening event in {lines:?}"));
        lines.push(line);
    }
    assert!(data.join("store").exists(), "the store is in --data-dir");
    assert!(std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(status.success(), "{status}: {lines:?}");
    assert!(!dir.path().join("from-file").exists());
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let listening = events
        .iter()
        .find(|e| e["fields"]["message"] == "listening")
        .unwrap_or_else(|| panic!("no listening event in {lines:?}"));
    let addr: std::net::SocketAddr = listening["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        addr.ip().is_loopback() && addr.port() != 0 && addr.port() != 1,
        "{addr}"
    );
    let shutting_down = events
        .iter()
        .find(|e| e["fields"]["message"] == "shutting down")
        .unwrap_or_else(|| panic!("no shutdown event in {lines:?}"));
    assert!(
        shutting_down["fields"]["drain_s"].is_u64(),
        "{shutting_down}"
    );
}

/// `[plugins]`: a value out of bounds is refused naming its field, and configured budgets
/// are the ones uploads are held to: under 200,000 units of fuel a plugin that spins
/// through its default budget fails its self-test, and above 1 MiB the JavaScript plugin is
/// too large, while the Rust priority plugin fits both.
#[tokio::test(flavor = "multi_thread")]
async fn configured_plugin_budgets_are_validated_and_take_effect() {
    match load_str("data_dir = \"d\"\n[plugins]\ndeadline_ms = 0") {
        Err(NodeError::Budget { error, .. }) => {
            assert_eq!((error.field, error.value, error.min), ("deadline_ms", 0, 1));
            assert!(
                error.to_string().contains("plugins.deadline_ms = 0"),
                "{error}"
            );
        }
        other => panic!("expected a budget error, got {other:?}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let text = "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\n\
                [admin]\nlisten = \"127.0.0.1:0\"\n\
                [plugins]\nfuel_per_call = 200000\nmax_plugin_bytes = 1048576\ndeadline_ms = 500\n";
    std::fs::write(dir.path().join("node.toml"), text).unwrap();
    let mut cfg = Config::load(&dir.path().join("node.toml")).unwrap();
    assert_eq!(cfg.plugins.fuel_per_call, 200_000);
    const TOKEN: &str = "admin-token-for-the-budget-test-0123";
    cfg.admin.token = Some(TOKEN.to_owned());
    let store = switchboard::open_store(&cfg.data_dir).unwrap();
    let node = switchboard::start(&cfg, store).await.unwrap();
    let url = format!("http://{}", node.admin_addr.unwrap());
    let read = |p: &str| std::fs::read(p).unwrap();
    let (heavy, js, priority) = tokio::task::spawn_blocking(move || {
        use switchboard_admin::client::AdminClient;
        use switchboard_admin::control::types::{CreateTenant, Quotas};
        let admin = AdminClient::new(&url, Some(TOKEN.to_owned()));
        admin
            .create_tenant(&CreateTenant {
                id: "acme".into(),
                quotas: Some(Quotas {
                    max_groups: 10,
                    max_plugin_versions: 10,
                    max_plugin_bytes: 8 << 20,
                }),
                ..CreateTenant::default()
            })
            .unwrap();
        (
            admin.upload_plugin("acme", &read(plugins_artifacts::HEAVY)),
            admin.upload_plugin("acme", &read(plugins_artifacts::PRIORITY_JS)),
            admin.upload_plugin("acme", &read(plugins_artifacts::PRIORITY)),
        )
    })
    .await
    .unwrap();
    let problem = |r: Result<_, switchboard_admin::client::ClientError>| match r {
        Err(switchboard_admin::client::ClientError::Problem { status, problem }) => {
            (status, problem.detail)
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    let (status, detail) = problem(heavy);
    assert_eq!(status, 422, "{detail}");
    assert!(detail.contains("ran out of fuel"), "{detail}");
    let (status, detail) = problem(js);
    assert_eq!(status, 413, "{detail}");
    assert!(detail.contains("1048576"), "{detail}");
    priority.expect("the priority plugin fits the configured budgets");
    node.shutdown().await;
}
