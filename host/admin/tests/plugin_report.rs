//! What a tenant's plugin tells the operator and the tenant, over a real node (QUIC
//! sessions, the HTTP API): its counters (`host.counter-add`) in the policy status and in
//! `/metrics`, per version; a trapping plugin's panic message and tenant/version in the
//! status and the log (one line per version per interval); and who may change which
//! version serves (`tenant_rollout`).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::openapi::Doc;
use common::sessions::{connect, group};
use common::*;
use switchboard_admin::control::types::{Activate, StartCanary};
use switchboard_core::PresenceState;

/// Everything the node logs in this test binary, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install() -> Captured {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
        captured
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

fn upload(api: &TestApi, key: &str, path: &str) -> String {
    sync(|| api.client(key).upload_plugin("acme", &wasm(path)))
        .unwrap()
        .plugin
        .version
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_counters_and_panics_reach_the_status_the_metrics_and_the_log() {
    let log = Captured::install();
    let api = TestApi::start().await;
    let doc = Doc::load();
    let key = api.tenant_with_key("acme");
    let admin = api.admin();
    group(&api, &key, "acme", "team", &["alice"]);
    group(&api, &key, "acme", "lab", &["alice"]);
    let priority = upload(&api, &key, plugins_artifacts::PRIORITY);
    let latent = upload(&api, &key, plugins_artifacts::HOSTILE_LATENT_TRAP);
    sync(|| {
        admin.activate(
            "acme",
            &Activate {
                version: priority.clone(),
                config: Default::default(),
            },
        )
    })
    .unwrap();
    let (alice, _events) = connect(&api, &key, "acme", "alice", PresenceState::Foreground).await;

    // The priority plugin counts what it rejects as spam.
    for _ in 0..2 {
        let e = alice.send("team", "!spam buy now").await.unwrap_err();
        assert!(e.to_string().contains("spam"), "{e}");
    }
    let status = sync(|| api.client(&key).policy("acme")).unwrap();
    doc.check(
        "GET",
        "/v1/tenants/{tenant}/policy",
        200,
        &serde_json::to_value(&status).unwrap(),
    );
    let active = status.active.as_ref().unwrap();
    assert_eq!(active.counters.get("priority_spam_rejected"), Some(&2));
    assert_eq!(active.counter_updates_dropped, 0);
    assert!(active.last_failure.is_none(), "{active:?}");
    let metrics = sync(|| admin.metrics()).unwrap();
    let line = format!(
        "switchboard_plugin_counter_total{{tenant=\"acme\",version=\"{priority}\",role=\"active\",counter=\"priority_spam_rejected\"}} 2\n"
    );
    assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    assert!(metrics.contains("# TYPE switchboard_plugin_counter_total counter"));

    // A canary for the group `lab` that panics on `!boom`: each such message falls back to
    // the built-in verdict (accepted), and the panic's message reaches the status and the
    // log, with the tenant and the version.
    sync(|| {
        admin.start_canary(
            "acme",
            &StartCanary {
                version: latent.clone(),
                groups: vec!["lab".into()],
                ..Default::default()
            },
        )
    })
    .unwrap();
    let started = Instant::now();
    for i in 0..3 {
        alice.send("lab", format!("!boom {i}")).await.unwrap();
    }
    let within_interval =
        started.elapsed().as_millis() < u128::from(switchboard_edge::FAILURE_LOG_INTERVAL_MS);
    let status = sync(|| api.client(&key).policy("acme")).unwrap();
    doc.check(
        "GET",
        "/v1/tenants/{tenant}/policy",
        200,
        &serde_json::to_value(&status).unwrap(),
    );
    let canary = &status.canary.as_ref().unwrap().health;
    assert_eq!(canary.traps, 3, "{canary:?}");
    let failure = canary.last_failure.as_ref().expect("the canary's failure");
    assert_eq!(failure.hook, "on-message");
    assert!(
        failure
            .reason
            .contains("hostile-latent-trap: the bug real traffic finds"),
        "{failure:?}"
    );
    assert!(canary.counters.is_empty(), "each version counts its own");
    let active = status.active.as_ref().unwrap();
    assert_eq!(active.counters.get("priority_spam_rejected"), Some(&2));
    assert!(active.last_failure.is_none());

    let lines = log.lines_with("the bug real traffic finds");
    assert!(!lines.is_empty(), "no log line of the panic");
    for l in &lines {
        assert!(l.contains("tenant=acme"), "{l}");
        assert!(l.contains(&format!("version={latent}")), "{l}");
    }
    if within_interval {
        // Three failures within one interval: one line.
        assert_eq!(lines.len(), 1, "{lines:#?}");
    }
    assert!(lines.len() <= 3, "{lines:#?}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_keys_change_what_serves_only_where_the_operator_allows_it() {
    for allowed in [false, true] {
        let api = if allowed {
            TestApi::start_with_tenant_rollout().await
        } else {
            TestApi::start().await
        };
        let key = api.tenant_with_key("acme");
        let other = api.tenant_with_key("globex");
        let tenant = api.client(&key);
        let priority = upload(&api, &key, plugins_artifacts::PRIORITY);
        let flags = upload(&api, &key, plugins_artifacts::FLAGS);
        let activate = |version: &str| Activate {
            version: version.to_owned(),
            config: Default::default(),
        };
        let canary = StartCanary {
            version: flags.clone(),
            percent: 10,
            ..Default::default()
        };

        // Another tenant's key never reaches acme's rollout.
        let globex = api.client(&other);
        assert_refused(
            sync(|| globex.activate("acme", &activate(&priority))),
            403,
            "forbidden",
        );

        if !allowed {
            for refused in [
                sync(|| tenant.activate("acme", &activate(&priority))),
                sync(|| tenant.start_canary("acme", &canary)),
                sync(|| tenant.abort_canary("acme")),
                sync(|| tenant.promote("acme")),
                sync(|| tenant.rollback("acme")),
            ] {
                let why = assert_refused(refused, 403, "forbidden");
                assert!(why.contains("tenant_rollout"), "{why}");
            }
            // Nothing changed; the operator still can.
            assert!(sync(|| tenant.policy("acme")).unwrap().active.is_none());
            let s = sync(|| api.admin().activate("acme", &activate(&priority))).unwrap();
            assert_eq!(s.active.unwrap().version, priority);
        } else {
            let s = sync(|| tenant.activate("acme", &activate(&priority))).unwrap();
            assert_eq!(s.active.unwrap().version, priority);
            let s = sync(|| tenant.start_canary("acme", &canary)).unwrap();
            assert_eq!(s.canary.unwrap().health.version, flags);
            let s = sync(|| tenant.abort_canary("acme")).unwrap();
            assert!(s.canary.is_none());
            sync(|| tenant.start_canary("acme", &canary)).unwrap();
            let s = sync(|| tenant.promote("acme")).unwrap();
            assert_eq!(s.active.unwrap().version, flags);
            let s = sync(|| tenant.rollback("acme")).unwrap();
            assert_eq!(s.active.unwrap().version, priority);
            // Operator-only routes stay the operator's.
            assert_refused(sync(|| tenant.metrics()), 403, "forbidden");
        }
        api.stop().await;
    }
}
