//! Every endpoint does its job for the callers allowed to call it, over real HTTP, and its
//! answers are what `openapi.json` documents.

mod common;

use std::collections::BTreeMap;

use common::openapi::Doc;
use common::*;
use serde::Serialize;
use serde_json::{json, Value};
use switchboard_admin::control::types::*;

fn v(x: &impl Serialize) -> Value {
    serde_json::to_value(x).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn node_endpoints() {
    let api = TestApi::start().await;
    let doc = Doc::load();
    let anon = api.anonymous();
    let admin = api.admin();

    let health = sync(|| anon.health()).unwrap();
    assert_eq!((health.status.as_str(), health.load_level), ("ok", 0));
    // Which build answered, and for how long it has run: the same as `GET /v1/node`.
    assert_eq!(health.build.version, env!("CARGO_PKG_VERSION"));
    assert!(!health.build.commit.is_empty());
    assert!(health.uptime_s < 3600, "{}", health.uptime_s);
    doc.check("GET", "/healthz", 200, &v(&health));

    let served = sync(|| anon.openapi()).unwrap();
    assert_eq!(
        served, doc.0,
        "/openapi.json serves the checked-in document"
    );

    let d = sync(|| admin.degradation()).unwrap();
    assert_eq!((d.level, d.forced), (0, None));
    doc.check("GET", "/v1/degradation", 200, &v(&d));
    let d = sync(|| admin.set_degradation(Some(2))).unwrap();
    assert_eq!((d.level, d.forced), (2, Some(2)));
    doc.check("PUT", "/v1/degradation", 200, &v(&d));
    assert_eq!(sync(|| anon.health()).unwrap().load_level, 2);
    let d = sync(|| admin.set_degradation(None)).unwrap();
    assert_eq!(d.forced, None);
    assert_refused(
        sync(|| admin.set_degradation(Some(4))),
        400,
        "invalid-argument",
    );

    // The store key rotates on the running node; the store (a SledStore with its key
    // file) then holds the new key only.
    assert_eq!(api.store.key_ids(), vec![1]);
    let rotated = sync(|| admin.rotate_store_key()).unwrap();
    assert_eq!(rotated.key_id, 2);
    doc.check("POST", "/v1/node/store-key/rotation", 200, &v(&rotated));
    assert_eq!(api.store.key_ids(), vec![2]);

    let r = api.raw("GET", "/metrics", Some(ADMIN_TOKEN), None);
    assert_eq!(r.status, 200);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    let text = sync(|| admin.metrics()).unwrap();
    for line in [
        "# TYPE switchboard_sessions gauge",
        "# TYPE switchboard_connections gauge",
        "# TYPE switchboard_messages_accepted_total counter",
        "# HELP switchboard_messages_accepted_total ",
        "switchboard_sessions 0",
        "# TYPE switchboard_load_level gauge",
        "switchboard_load_level 0",
        "# TYPE switchboard_policy_auto_rollbacks_total counter",
        "switchboard_policy_auto_rollbacks_total 0",
        "# TYPE switchboard_policy_handled_total counter",
        "# TYPE switchboard_policy_failed_total counter",
        "# TYPE switchboard_build_info gauge",
        format!(
            "switchboard_build_info{{version=\"{}\",commit=\"{}\",profile=\"{}\"}} 1",
            health.build.version, health.build.commit, health.build.profile
        )
        .as_str(),
        "# TYPE switchboard_uptime_seconds gauge",
        "switchboard_uptime_seconds ",
    ] {
        assert!(text.contains(line), "metrics lack {line:?}:\n{text}");
    }
    // OpenMetrics: every counter's name ends in `_total`.
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    assert!(counters.len() > 30, "{counters:?}");
    let bare: Vec<&&str> = counters.iter().filter(|n| !n.ends_with("_total")).collect();
    assert!(bare.is_empty(), "counters without `_total`: {bare:?}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_keys_and_tokens() {
    let api = TestApi::start().await;
    let doc = Doc::load();
    let admin = api.admin();

    let body = json!({"id": "acme", "quotas": {"max_groups": 5, "max_plugin_versions": 3, "max_plugin_bytes": 1000000}});
    let r = api.raw(
        "POST",
        "/v1/tenants",
        Some(ADMIN_TOKEN),
        Some(("application/json", body.to_string().as_bytes())),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    doc.check("POST", "/v1/tenants", 201, &r.json());
    assert_eq!(r.json()["tenant"], "acme");
    assert!(r.json()["secret"].as_str().unwrap().len() >= 16);
    let chosen = sync(|| {
        admin.create_tenant(&CreateTenant {
            id: "globex".into(),
            secret: Some("globex-secret-0123456789".into()),
            quotas: None,
        })
    })
    .unwrap();
    assert_eq!(chosen.secret, "globex-secret-0123456789");
    let exists = sync(|| {
        admin.create_tenant(&CreateTenant {
            id: "acme".into(),
            ..Default::default()
        })
    });
    assert_refused(exists, 409, "conflict");
    let short = sync(|| {
        admin.create_tenant(&CreateTenant {
            id: "initech".into(),
            secret: Some("short".into()),
            quotas: None,
        })
    });
    assert_refused(short, 400, "invalid-argument");

    let list = sync(|| admin.tenants()).unwrap();
    assert_eq!(
        list.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["acme", "globex"]
    );
    doc.check("GET", "/v1/tenants", 200, &v(&list));
    assert_eq!(list[0].quotas.max_groups, 5);

    // Keys: created by the admin, listed without the secret part, deleted.
    let r = api.raw(
        "POST",
        "/v1/tenants/acme/keys",
        Some(ADMIN_TOKEN),
        Some(("application/json", br#"{"label":"backend"}"#)),
    );
    assert_eq!(r.status, 201);
    doc.check("POST", "/v1/tenants/{tenant}/keys", 201, &r.json());
    let key: NewApiKey = serde_json::from_slice(&r.body).unwrap();
    assert!(key.key.starts_with("sbk_"), "{}", key.key);
    assert_eq!(
        (key.info.tenant.as_str(), key.info.label.as_str()),
        ("acme", "backend")
    );
    let other = sync(|| admin.create_api_key("acme", "")).unwrap();
    let keys = sync(|| admin.api_keys("acme")).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}/keys", 200, &v(&keys));
    assert_eq!(keys.len(), 2);
    assert!(!serde_json::to_string(&keys).unwrap().contains(&key.key));
    sync(|| admin.delete_api_key("acme", &other.info.id)).unwrap();
    assert_refused(
        sync(|| admin.delete_api_key("acme", &other.info.id)),
        404,
        "not-found",
    );
    assert_eq!(sync(|| admin.api_keys("acme")).unwrap().len(), 1);

    // The key reaches its own tenant.
    let tenant = api.client(&key.key);
    let info = sync(|| tenant.tenant("acme")).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}", 200, &v(&info));
    assert_eq!(
        (info.id.as_str(), info.active_version.clone()),
        ("acme", None)
    );

    let q = Quotas {
        max_groups: 7,
        max_plugin_versions: 4,
        max_plugin_bytes: 2_000_000,
    };
    let info = sync(|| admin.set_quotas("acme", &q)).unwrap();
    doc.check("PUT", "/v1/tenants/{tenant}/quotas", 200, &v(&info));
    assert_eq!(info.quotas, q);

    let rotated = sync(|| admin.rotate_secret("acme")).unwrap();
    doc.check("POST", "/v1/tenants/{tenant}/secret", 200, &v(&rotated));
    assert_ne!(rotated.secret, r.json()["secret"]);

    let minted = sync(|| {
        tenant.mint_token(
            "acme",
            &MintToken {
                user: "alice".into(),
                ttl_secs: Some(600),
            },
        )
    })
    .unwrap();
    doc.check("POST", "/v1/tenants/{tenant}/tokens", 200, &v(&minted));
    assert_eq!(
        (minted.tenant.as_str(), minted.user.as_str()),
        ("acme", "alice")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 590..=now + 610).contains(&minted.expires_at));
    let too_long = sync(|| {
        tenant.mint_token(
            "acme",
            &MintToken {
                user: "alice".into(),
                ttl_secs: Some(365 * 86_400),
            },
        )
    });
    assert_refused(too_long, 400, "invalid-argument");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_and_members() {
    let api = TestApi::start().await;
    let doc = Doc::load();
    let key = api.tenant_with_key("acme");
    let tenant = api.client(&key);

    let r = api.raw(
        "POST",
        "/v1/tenants/acme/groups",
        Some(&key),
        Some(("application/json", br#"{"id":"team","max_members":10}"#)),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    doc.check("POST", "/v1/tenants/{tenant}/groups", 201, &r.json());
    let open = sync(|| {
        tenant.create_group(
            "acme",
            &CreateGroup {
                id: "general".into(),
                open: true,
                max_members: None,
            },
        )
    })
    .unwrap();
    assert!(open.open);
    let again = sync(|| {
        tenant.create_group(
            "acme",
            &CreateGroup {
                id: "team".into(),
                open: false,
                max_members: None,
            },
        )
    });
    assert_refused(again, 409, "conflict");

    let groups = sync(|| tenant.groups("acme")).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}/groups", 200, &v(&groups));
    assert_eq!(groups.len(), 2);

    let members_path = "/v1/tenants/acme/groups/team/members";
    let body: &[u8] = br#"{"user":"alice"}"#;
    let r = api.raw(
        "POST",
        members_path,
        Some(&key),
        Some(("application/json", body)),
    );
    assert_eq!(r.status, 201);
    doc.check(
        "POST",
        "/v1/tenants/{tenant}/groups/{group}/members",
        201,
        &r.json(),
    );
    assert_eq!(
        r.json(),
        json!({"group": "team", "user": "alice", "added": true})
    );
    let r = api.raw(
        "POST",
        members_path,
        Some(&key),
        Some(("application/json", body)),
    );
    assert_eq!(r.status, 200, "already a member");
    doc.check(
        "POST",
        "/v1/tenants/{tenant}/groups/{group}/members",
        200,
        &r.json(),
    );
    assert_eq!(r.json()["added"], false);
    let added = sync(|| tenant.add_member("acme", "team", "bob")).unwrap();
    assert!(added.added);
    assert_refused(
        sync(|| tenant.add_member("acme", "nosuch", "bob")),
        404,
        "not-found",
    );

    let members = sync(|| tenant.members("acme", "team")).unwrap();
    doc.check(
        "GET",
        "/v1/tenants/{tenant}/groups/{group}/members",
        200,
        &v(&members),
    );
    assert_eq!(members, ["alice", "bob"]);
    let team = sync(|| tenant.group("acme", "team")).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}/groups/{group}", 200, &v(&team));
    assert_eq!((team.members, team.max_members, team.head), (2, 10, 0));

    sync(|| tenant.remove_member("acme", "team", "alice")).unwrap();
    assert_refused(
        sync(|| tenant.remove_member("acme", "team", "alice")),
        404,
        "not-found",
    );
    assert_eq!(sync(|| tenant.members("acme", "team")).unwrap(), ["bob"]);
    assert_refused(sync(|| tenant.group("acme", "nosuch")), 404, "not-found");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_and_their_rollout() {
    let api = TestApi::start().await;
    let doc = Doc::load();
    let key = api.tenant_with_key("acme");
    let tenant = api.client(&key);
    let admin = api.admin();
    let key_id = sync(|| admin.api_keys("acme")).unwrap()[0].id.clone();

    // Upload: 201 with self-test timings, then 200 for the same bytes.
    let priority = wasm(plugins_artifacts::PRIORITY);
    let r = api.raw(
        "POST",
        "/v1/tenants/acme/plugins",
        Some(&key),
        Some(("application/wasm", &priority)),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    doc.check("POST", "/v1/tenants/{tenant}/plugins", 201, &r.json());
    let first: Uploaded = serde_json::from_slice(&r.body).unwrap();
    assert!(first.created);
    assert!(!first.self_test_us.is_empty());
    assert_eq!(first.plugin.uploader, key_id);
    assert_eq!(first.plugin.size, priority.len() as u64);
    let again = sync(|| tenant.upload_plugin("acme", &priority)).unwrap();
    assert!(!again.created);
    assert_eq!(again.plugin.version, first.plugin.version);
    let r = api.raw(
        "POST",
        "/v1/tenants/acme/plugins",
        Some(&key),
        Some(("application/wasm", &priority)),
    );
    assert_eq!(r.status, 200);
    doc.check("POST", "/v1/tenants/{tenant}/plugins", 200, &r.json());
    let p1 = first.plugin.version.clone();
    let p2 = sync(|| admin.upload_plugin("acme", &wasm(plugins_artifacts::FLAGS)))
        .unwrap()
        .plugin
        .version;

    let list = sync(|| tenant.plugins("acme")).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}/plugins", 200, &v(&list));
    let mut versions: Vec<_> = list.iter().map(|p| p.version.clone()).collect();
    versions.sort();
    let mut expected = vec![p1.clone(), p2.clone()];
    expected.sort();
    assert_eq!(versions, expected);
    let detail = sync(|| tenant.plugin("acme", &p1)).unwrap();
    doc.check(
        "GET",
        "/v1/tenants/{tenant}/plugins/{version}",
        200,
        &v(&detail),
    );
    assert_eq!(detail.role, "stored");
    assert_refused(sync(|| tenant.plugin("acme", "ff")), 404, "not-found");

    let status = sync(|| tenant.policy("acme")).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}/policy", 200, &v(&status));
    assert!(status.active.is_none() && status.canary.is_none());

    // Activate, canary, promote, rollback, abort: each answers once the node serves it.
    let config = BTreeMap::from([("vip_users".to_owned(), "alice".to_owned())]);
    let s = sync(|| {
        admin.activate(
            "acme",
            &Activate {
                version: p1.clone(),
                config: config.clone(),
            },
        )
    })
    .unwrap();
    doc.check("POST", "/v1/tenants/{tenant}/policy/activate", 200, &v(&s));
    let active = s.active.as_ref().unwrap();
    assert_eq!((&active.version, &active.config), (&p1, &config));
    assert_eq!(s.applied_revision, s.revision);
    assert_eq!(sync(|| tenant.plugin("acme", &p1)).unwrap().role, "active");
    assert_eq!(
        sync(|| tenant.tenant("acme")).unwrap().active_version,
        Some(p1.clone())
    );

    let s = sync(|| {
        admin.start_canary(
            "acme",
            &StartCanary {
                version: p2.clone(),
                percent: 25,
                groups: vec!["general".into()],
                ..Default::default()
            },
        )
    })
    .unwrap();
    doc.check("POST", "/v1/tenants/{tenant}/policy/canary", 200, &v(&s));
    let canary = s.canary.as_ref().unwrap();
    assert_eq!((&canary.health.version, canary.percent), (&p2, 25));
    assert_eq!(canary.groups, ["general"]);
    assert_eq!(sync(|| tenant.plugin("acme", &p2)).unwrap().role, "canary");

    let s = sync(|| admin.promote("acme")).unwrap();
    doc.check("POST", "/v1/tenants/{tenant}/policy/promote", 200, &v(&s));
    assert_eq!(s.active.as_ref().unwrap().version, p2);
    assert!(s.canary.is_none());
    assert_eq!(s.previous, std::slice::from_ref(&p1));
    assert_refused(sync(|| admin.promote("acme")), 409, "conflict");

    let s = sync(|| admin.rollback("acme")).unwrap();
    doc.check("POST", "/v1/tenants/{tenant}/policy/rollback", 200, &v(&s));
    assert_eq!(s.active.as_ref().unwrap().version, p1);
    let rb = s.last_rollback.as_ref().unwrap();
    assert_eq!(
        (&rb.from, rb.to.as_ref(), rb.automatic),
        (&p2, Some(&p1), false)
    );

    sync(|| {
        admin.start_canary(
            "acme",
            &StartCanary {
                version: p2.clone(),
                percent: 10,
                ..Default::default()
            },
        )
    })
    .unwrap();
    let s = sync(|| admin.abort_canary("acme")).unwrap();
    doc.check("DELETE", "/v1/tenants/{tenant}/policy/canary", 200, &v(&s));
    assert!(s.canary.is_none());
    assert_eq!(s.active.as_ref().unwrap().version, p1);
    assert_refused(sync(|| admin.abort_canary("acme")), 409, "conflict");
    let no_target = sync(|| {
        admin.start_canary(
            "acme",
            &StartCanary {
                version: p2.clone(),
                ..Default::default()
            },
        )
    });
    assert_refused(no_target, 400, "invalid-argument");
    let missing = sync(|| {
        admin.activate(
            "acme",
            &Activate {
                version: "ab".repeat(32),
                ..Default::default()
            },
        )
    });
    assert_refused(missing, 404, "not-found");

    // The serving version shows in the metrics.
    let text = sync(|| admin.metrics()).unwrap();
    let series = format!(
        "switchboard_policy_handled_total{{tenant=\"acme\",version=\"{p1}\",role=\"active\"}} "
    );
    assert!(text.contains(&series), "no {series:?} in:\n{text}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flags() {
    let api = TestApi::start().await;
    let doc = Doc::load();
    let key = api.tenant_with_key("acme");
    let tenant = api.client(&key);

    let none = sync(|| tenant.flags("acme")).unwrap();
    assert!(none.is_empty());
    let rules = BTreeMap::from([
        (
            "dark_mode".to_owned(),
            FlagRuleBody {
                enabled: true,
                percent: 50,
                users: vec!["alice".into()],
            },
        ),
        (
            "beta".to_owned(),
            FlagRuleBody {
                enabled: false,
                percent: 100,
                users: vec![],
            },
        ),
    ]);
    let put = sync(|| tenant.put_flags("acme", &rules)).unwrap();
    doc.check("PUT", "/v1/tenants/{tenant}/flags", 200, &v(&put));
    assert_eq!(put, rules);
    let got = sync(|| tenant.flags("acme")).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}/flags", 200, &v(&got));
    assert_eq!(got, rules);

    // `percent` defaults to 100.
    let r = api.raw(
        "PUT",
        "/v1/tenants/acme/flags",
        Some(&key),
        Some(("application/json", br#"{"x":{"enabled":true}}"#)),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"x": {"enabled": true, "percent": 100, "users": []}})
    );
    let bad = BTreeMap::from([(
        "x".to_owned(),
        FlagRuleBody {
            enabled: true,
            percent: 101,
            users: vec![],
        },
    )]);
    assert_refused(
        sync(|| tenant.put_flags("acme", &bad)),
        400,
        "invalid-argument",
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_invalid_argument_problems() {
    let api = TestApi::start().await;
    let admin = Some(ADMIN_TOKEN);
    /// (method, path, content type, body, what is wrong)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [u8], &'a str);
    let cases: &[Case] = &[
        (
            "POST",
            "/v1/tenants",
            Some("application/json"),
            b"{\"id\":",
            "syntax",
        ),
        (
            "POST",
            "/v1/tenants",
            Some("application/json"),
            b"[1,2]",
            "not an object",
        ),
        (
            "POST",
            "/v1/tenants",
            Some("application/json"),
            br#"{"id":"acme","colour":"red"}"#,
            "unknown field",
        ),
        (
            "POST",
            "/v1/tenants",
            Some("application/json"),
            br#"{"secret":"0123456789abcdef0"}"#,
            "missing id",
        ),
        (
            "POST",
            "/v1/tenants",
            Some("application/json"),
            br#"{"id":7}"#,
            "wrong type",
        ),
        (
            "POST",
            "/v1/tenants",
            Some("text/plain"),
            br#"{"id":"acme"}"#,
            "content type",
        ),
        (
            "POST",
            "/v1/tenants",
            None,
            br#"{"id":"acme"}"#,
            "no content type",
        ),
        (
            "PUT",
            "/v1/degradation",
            Some("application/json"),
            br#"{"level":"high"}"#,
            "wrong type",
        ),
        (
            "PUT",
            "/v1/degradation",
            Some("application/json"),
            b"",
            "empty body",
        ),
    ];
    for &(method, path, ct, body, what) in cases {
        let r = match ct {
            Some(ct) => api.raw(method, path, admin, Some((ct, body))),
            None => api.raw(method, path, admin, Some(("", body))),
        };
        let detail = r.assert_problem(400, "invalid-argument");
        assert!(!detail.is_empty(), "{what}: a detail says what is wrong");
        if what == "unknown field" {
            assert!(detail.contains("colour"), "{detail}");
        }
    }
    // An invalid id is refused by the control plane, with the same code.
    api.raw(
        "POST",
        "/v1/tenants",
        admin,
        Some(("application/json", br#"{"id":"no spaces allowed"}"#)),
    )
    .assert_problem(400, "invalid-argument");
    // Over the JSON body limit: 413, still a problem.
    let big = format!(
        r#"{{"id":"{}"}}"#,
        "a".repeat(switchboard_admin::http::JSON_BODY_LIMIT)
    );
    api.raw(
        "POST",
        "/v1/tenants",
        admin,
        Some(("application/json", big.as_bytes())),
    )
    .assert_problem(413, "invalid-argument");
    assert!(
        sync(|| api.admin().tenants()).unwrap().is_empty(),
        "nothing was created"
    );
    api.stop().await;
}

/// A store that keeps every message (sled) has no retention to show or run: both retention
/// endpoints say so (`supported: false`) instead of failing, and match the document.
#[tokio::test(flavor = "multi_thread")]
async fn retention_on_a_store_without_it() {
    let api = TestApi::start().await;
    let doc = Doc::load();
    let admin = api.admin();
    let info = sync(|| admin.retention()).unwrap();
    assert!(!info.supported && !info.limited, "{info:?}");
    assert!(info.tenants.is_empty() && info.groups.is_empty());
    doc.check("GET", "/v1/node/retention", 200, &v(&info));
    let pass = sync(|| admin.run_retention()).unwrap();
    assert_eq!(
        (pass.supported, pass.segments_deleted, pass.bytes_deleted),
        (false, 0, 0)
    );
    doc.check("POST", "/v1/node/retention/pass", 200, &v(&pass));
}
