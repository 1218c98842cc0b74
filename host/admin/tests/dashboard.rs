//! The dashboard in a real browser: headless Chromium, driven by `tests/dashboard/dashboard.mjs`
//! over playwright-core, loads the page from a running node with two tenants, plugins with a
//! canary, a version the node rolled back by itself and connected clients; checks what the
//! page shows against the JSON API; clicks abort canary, roll back, promote and the
//! degradation override and sees the node change through the API; signs in with a tenant key and sees only
//! that tenant; and writes screenshots under `ci-artifacts/dashboard/` (their paths are printed).
//!
//! Needs `SWITCHBOARD_CHROMIUM` and `SWITCHBOARD_BROWSER_NODE_PATH`, which `cargo xtask test`
//! sets after installing them (`xtask/src/browser.rs`). Without them the test fails and says so.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::sessions::{connect, group, messages};
use common::*;
use switchboard_admin::control::types::*;
use switchboard_admin::AutoRollback;
use switchboard_core::token::Claims;
use switchboard_core::PresenceState::{Background, Foreground};
use switchboard_core::{TenantId, UserId};
use switchboard_edge::local::LocalSession;
use switchboard_store::{Store, TenantRecord};
use switchboard_wire::Hello;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard/dashboard.mjs");

/// The browser and the node_modules holding playwright-core, or a failure saying how to get
/// them: a browser test that is skipped silently is a test nobody runs.
fn browser_tools() -> (String, String) {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "{name} is not set: the dashboard's browser test needs headless Chromium and \
                 playwright-core. Run it with `cargo xtask test` (which installs both and sets \
                 SWITCHBOARD_CHROMIUM and SWITCHBOARD_BROWSER_NODE_PATH), or install them as \
                 xtask/src/browser.rs does and export the two variables yourself."
                )
            })
    };
    (
        var("SWITCHBOARD_CHROMIUM"),
        var("SWITCHBOARD_BROWSER_NODE_PATH"),
    )
}

/// Runs `dashboard.mjs` with these variables (besides the browser's and the node's) off the
/// runtime the node serves from; returns its stdout (one JSON line of measurements).
async fn run_script(api: &TestApi, vars: Vec<(&'static str, String)>) -> String {
    let (chromium, node_path) = browser_tools();
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(SCRIPT)
        .env("NODE_PATH", &node_path)
        .env("SWITCHBOARD_CHROMIUM", &chromium)
        .env("DASHBOARD_URL", &api.url)
        .env("DASHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("DASHBOARD_PROFILE", profile.path());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "dashboard.mjs failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// Where screenshots go: `$SWITCHBOARD_ARTIFACTS_DIR/dashboard/`, by default
/// `<repository>/ci-artifacts/dashboard/`: under the clone, where CI keeps its artifacts
/// (`.ci/run`), not in the target directory, which CI shares between clones outside them.
fn screenshot(name: &str) -> PathBuf {
    let dir = std::env::var_os("SWITCHBOARD_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // Read at run time: a test binary reused from a checkout at another path (a
            // shared target dir) would otherwise write there.
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
                .join("../../ci-artifacts")
        })
        .join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn upload(api: &TestApi, tenant: &str, wasm_path: &str) -> String {
    let admin = api.admin();
    sync(|| admin.upload_plugin(tenant, &wasm(wasm_path)))
        .unwrap()
        .plugin
        .version
}

fn activate(api: &TestApi, tenant: &str, version: &str) {
    let admin = api.admin();
    let req = Activate {
        version: version.to_owned(),
        config: BTreeMap::new(),
    };
    sync(|| admin.activate(tenant, &req)).unwrap();
}

fn canary(api: &TestApi, tenant: &str, version: &str, percent: u8) {
    let admin = api.admin();
    let req = StartCanary {
        version: version.to_owned(),
        percent,
        ..Default::default()
    };
    sync(|| admin.start_canary(tenant, &req)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_a_real_browser_matches_the_api_and_its_buttons_change_the_node() {
    browser_tools();
    let api = TestApi::start_configured(
        Default::default(),
        AutoRollback {
            enabled: true,
            min_events: 5,
            ..AutoRollback::default()
        },
    )
    .await;
    let acme = api.tenant_with_key("acme");
    let globex = api.tenant_with_key("globex");
    group(&api, &acme, "acme", "team", &["alice", "bob"]);
    group(&api, &globex, "globex", "room", &["carol"]);

    // acme: priority, then flags active (priority is the previous), receipts as a canary.
    let priority = upload(&api, "acme", plugins_artifacts::PRIORITY);
    activate(&api, "acme", &priority);
    let flags = upload(&api, "acme", plugins_artifacts::FLAGS);
    activate(&api, "acme", &flags);
    let receipts = upload(&api, "acme", plugins_artifacts::RECEIPTS);
    canary(&api, "acme", &receipts, 25);

    // globex: a canary whose latent bug real traffic finds; the node rolls it back itself.
    let g_priority = upload(&api, "globex", plugins_artifacts::PRIORITY);
    activate(&api, "globex", &g_priority);
    let latent = upload(&api, "globex", plugins_artifacts::HOSTILE_LATENT_TRAP);
    canary(&api, "globex", &latent, 100);

    let (alice, _alice_events) = connect(&api, &acme, "acme", "alice", Foreground).await;
    let (_bob, mut bob_events) = connect(&api, &acme, "acme", "bob", Background).await;
    let (carol, _carol_events) = connect(&api, &globex, "globex", "carol", Foreground).await;
    for i in 0..4 {
        alice.send("team", format!("hello {i}")).await.unwrap();
    }
    messages(&mut bob_events, 4).await;
    // Every `!boom` traps the canary (the message still gets the default verdict); past
    // `min_events` failures in its window the monitor (every 200 ms) rolls it back.
    for _ in 0..10 {
        carol.send("room", "!boom").await.unwrap();
    }
    let admin = api.admin();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = sync(|| admin.policy("globex")).unwrap();
        // Rolled back in the store, and served by the node: applying rebinds the versions and
        // restarts their counters, which must not happen while the page is compared.
        if status.last_rollback.as_ref().is_some_and(|r| r.automatic)
            && status.applied_revision == status.revision
        {
            assert!(status.canary.is_none(), "{status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no automatic rollback: {status:?}"
        );
        // Polling the condition the monitor brings about (it runs on its own timer).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The active version (priority) counts the spam it rejects: the page shows its counter.
    let e = carol.send("room", "!spam").await.unwrap_err();
    assert!(e.to_string().contains("spam"), "{e}");

    let shot = screenshot("dashboard.png");
    let tenant_shot = screenshot("dashboard-tenant.png");
    let measured = run_script(
        &api,
        vec![
            ("DASHBOARD_TENANT", "acme".into()),
            ("DASHBOARD_TENANT_KEY", acme.clone()),
            ("DASHBOARD_PREVIOUS_VERSION", priority.clone()),
            ("DASHBOARD_SCREENSHOT", shot.display().to_string()),
            (
                "DASHBOARD_TENANT_SCREENSHOT",
                tenant_shot.display().to_string(),
            ),
        ],
    )
    .await;
    println!("dashboard measurements: {measured}");
    println!(
        "dashboard screenshots: {} (after the clicks), {} (before)",
        shot.display(),
        shot.with_file_name("dashboard-canary.png").display()
    );
    println!("tenant's view screenshot: {}", tenant_shot.display());
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // What the clicks did, as the API sees it: the canary aborted, then acme rolled back
    // from flags to priority by hand, then the canary (started again) promoted; the override
    // set and cleared.
    let status = sync(|| admin.policy("acme")).unwrap();
    assert!(status.canary.is_none(), "{status:?}");
    assert_eq!(
        status.active.as_ref().map(|a| a.version.as_str()),
        Some(receipts.as_str())
    );
    assert_eq!(status.previous.last(), Some(&priority));
    let rollback = status.last_rollback.expect("a rollback");
    assert!(!rollback.automatic);
    assert_eq!(
        (rollback.from.as_str(), rollback.to.as_deref()),
        (flags.as_str(), Some(priority.as_str()))
    );
    assert_eq!(sync(|| admin.degradation()).unwrap().forced, None);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_with_a_thousand_tenants_and_ten_thousand_sessions() {
    browser_tools();
    let api = TestApi::start().await;
    // Straight into the store: through the API each tenant would be a flushed write.
    const TENANTS: usize = 1_000;
    const SESSIONS: usize = 10_000;
    let tenant = |i: usize| TenantId::new(&format!("tenant-{i:04}")).unwrap();
    for i in 0..TENANTS {
        api.store
            .put_tenant(&TenantRecord {
                id: tenant(i),
                secret: vec![7; 32],
            })
            .unwrap();
    }
    // Sessions without sockets (edge's `local`), ten per tenant, a third in the background.
    let hub = api.node.hub().clone();
    let sessions: Vec<LocalSession> = (0..SESSIONS)
        .map(|i| {
            let claims = Claims {
                tenant: tenant(i % TENANTS),
                user: UserId::new(&format!("user-{i}")).unwrap(),
                exp: u64::MAX,
                nbf: 0,
            };
            let hello = Hello {
                token: String::new(),
                presence: if i % 3 == 0 { Background } else { Foreground },
                cursors: Vec::new(),
                client: "scale".into(),
            };
            LocalSession::open(&hub, claims, &hello).unwrap().0
        })
        .collect();
    let admin = api.admin();
    let node = sync(|| admin.node_info()).unwrap();
    assert_eq!(
        (node.sessions.foreground + node.sessions.background) as usize,
        SESSIONS
    );
    let shot = screenshot("dashboard-scale.png");
    let measured = run_script(
        &api,
        vec![
            ("DASHBOARD_MODE", "scale".into()),
            ("DASHBOARD_SCREENSHOT", shot.display().to_string()),
        ],
    )
    .await;
    println!("dashboard at scale ({TENANTS} tenants, {SESSIONS} sessions): {measured}");
    println!("screenshot: {}", shot.display());
    for s in sessions {
        s.close(&hub);
    }
    api.stop().await;
}
