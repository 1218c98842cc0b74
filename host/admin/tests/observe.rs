//! What operators and tenants read about the running node, with real QUIC sessions: node
//! info, connections (paged, filtered), tenants with traffic, who-am-I; a tenant key sees only
//! its own tenant; every page size is capped; the dashboard page and its assets are served
//! from the binary.

mod common;

use common::openapi::Doc;
use common::sessions::{connect, group, messages};
use common::*;
use serde::Serialize;
use serde_json::Value;
use switchboard_admin::control::types::*;
use switchboard_core::PresenceState::{Background, Foreground};

fn v(x: &impl Serialize) -> Value {
    serde_json::to_value(x).unwrap()
}

fn query(f: impl FnOnce(&mut ConnectionQuery)) -> ConnectionQuery {
    let mut q = ConnectionQuery::default();
    f(&mut q);
    q
}

#[tokio::test(flavor = "multi_thread")]
async fn node_connections_and_traffic_show_the_live_node() {
    let api = TestApi::start().await;
    let doc = Doc::load();
    let acme = api.tenant_with_key("acme");
    let globex = api.tenant_with_key("globex");
    group(&api, &acme, "acme", "team", &["alice", "bob"]);
    group(&api, &globex, "globex", "room", &["carol"]);
    let (alice, _alice_events) = connect(&api, &acme, "acme", "alice", Foreground).await;
    let (_bob, mut bob_events) = connect(&api, &acme, "acme", "bob", Background).await;
    let (_carol, _carol_events) = connect(&api, &globex, "globex", "carol", Foreground).await;
    for i in 0..3 {
        alice.send("team", format!("m{i}")).await.unwrap();
    }
    // Bob (background, a small group: delivered, not deferred) has all three: the counters
    // are counted before the push, so they are at least there now.
    messages(&mut bob_events, 3).await;

    let admin = api.admin();
    let node = sync(|| admin.node_info()).unwrap();
    doc.check("GET", "/v1/node", 200, &v(&node));
    assert_eq!(node.build.version, env!("CARGO_PKG_VERSION"));
    assert!(!node.build.commit.is_empty());
    assert_eq!((node.sessions.foreground, node.sessions.background), (2, 1));
    assert_eq!(node.counters["messages_accepted"], 3);
    assert_eq!(node.counters["sessions"], 3);
    assert_eq!(node.health.status, "ok");
    assert!(node.now_ms >= node.started_at_ms);
    assert_eq!(
        node.latency
            .iter()
            .map(|l| l.class.as_str())
            .collect::<Vec<_>>(),
        ["active", "background"]
    );
    assert_eq!(node.load.forced, None);
    assert_eq!(
        node.queues
            .depth
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["high", "low", "normal", "notices"]
    );

    // The same per-tenant counters in /metrics, only for tenants with traffic.
    let text = sync(|| admin.metrics()).unwrap();
    assert!(
        text.contains("switchboard_tenant_messages_accepted_total{tenant=\"acme\"} 3\n"),
        "{text}"
    );
    assert!(!text.contains("tenant=\"globex\""), "{text}");

    // Connections: all, by tenant, by user, by presence, and paged.
    let all = sync(|| admin.connections(None, &ConnectionQuery::default())).unwrap();
    doc.check("GET", "/v1/connections", 200, &v(&all));
    assert_eq!(all.total, 3);
    let ids: Vec<u64> = all.connections.iter().map(|c| c.session).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let carol = all.connections.iter().find(|c| c.user == "carol").unwrap();
    assert_eq!(
        (carol.tenant.as_str(), carol.presence.as_str()),
        ("globex", "foreground")
    );
    assert!(carol
        .remote
        .as_deref()
        .is_some_and(|r| r.starts_with("127.0.0.1:")));
    assert_eq!(carol.groups, 1);
    let of_acme =
        sync(|| admin.connections(None, &query(|q| q.tenant = Some("acme".into())))).unwrap();
    let mut users: Vec<&str> = of_acme
        .connections
        .iter()
        .map(|c| c.user.as_str())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    let by_user =
        sync(|| admin.connections(None, &query(|q| q.user = Some("ALI".into())))).unwrap();
    assert_eq!(
        by_user
            .connections
            .iter()
            .map(|c| c.user.as_str())
            .collect::<Vec<_>>(),
        ["alice"]
    );
    let bg = sync(|| admin.connections(None, &query(|q| q.presence = Some("background".into()))))
        .unwrap();
    assert_eq!(
        bg.connections
            .iter()
            .map(|c| c.user.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    let mut paged = Vec::new();
    for offset in 0..4 {
        let p = sync(|| {
            admin.connections(
                None,
                &query(|q| {
                    q.offset = offset;
                    q.limit = Some(1);
                }),
            )
        })
        .unwrap();
        assert_eq!((p.total, p.limit), (3, 1));
        paged.extend(p.connections.into_iter().map(|c| c.session));
    }
    assert_eq!(paged, ids, "pages of one walk the same list");

    // Tenants with traffic.
    let traffic = sync(|| admin.traffic(&TrafficQuery::default())).unwrap();
    doc.check("GET", "/v1/traffic", 200, &v(&traffic));
    assert_eq!(traffic.total, 2);
    let a = &traffic.tenants[0];
    assert_eq!(a.tenant, "acme");
    assert_eq!((a.sessions.foreground, a.sessions.background), (1, 1));
    assert_eq!(a.messages_accepted, 3);
    assert!(a.deliveries_live + a.deliveries_catch_up >= 3, "{a:?}");
    let g = &traffic.tenants[1];
    assert_eq!((g.tenant.as_str(), g.messages_accepted), ("globex", 0));
    assert_eq!(g.deliveries_live + g.deliveries_catch_up, 0);
    let found = sync(|| {
        admin.traffic(&TrafficQuery {
            q: Some("GLOB".into()),
            ..Default::default()
        })
    })
    .unwrap();
    assert_eq!(found.total, 1);
    assert_eq!(found.tenants[0].tenant, "globex");
    let busiest = sync(|| {
        admin.traffic(&TrafficQuery {
            sort: Some("messages".into()),
            limit: Some(1),
            ..Default::default()
        })
    })
    .unwrap();
    assert_eq!((busiest.total, busiest.tenants.len()), (2, 1));
    assert_eq!(busiest.tenants[0].tenant, "acme");

    // A tenant key: its own tenant only.
    let key = api.client(&acme);
    let me = sync(|| key.whoami()).unwrap();
    assert_eq!(
        me,
        Whoami {
            role: "tenant".into(),
            tenant: Some("acme".into())
        }
    );
    doc.check("GET", "/v1/whoami", 200, &v(&me));
    assert_eq!(sync(|| admin.whoami()).unwrap().role, "admin");
    let own = sync(|| key.connections(Some("acme"), &ConnectionQuery::default())).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}/connections", 200, &v(&own));
    assert_eq!(own.total, 2);
    assert!(own.connections.iter().all(|c| c.tenant == "acme"));
    // Its `tenant` filter cannot widen the scope.
    let widened =
        sync(|| key.connections(Some("acme"), &query(|q| q.tenant = Some("globex".into()))))
            .unwrap();
    assert!(
        widened.connections.iter().all(|c| c.tenant == "acme"),
        "{widened:?}"
    );
    let t = sync(|| key.tenant_traffic("acme")).unwrap();
    doc.check("GET", "/v1/tenants/{tenant}/traffic", 200, &v(&t));
    assert_eq!(t.messages_accepted, 3);
    assert_refused(sync(|| key.tenant_traffic("globex")), 403, "forbidden");
    assert_refused(
        sync(|| key.connections(Some("globex"), &ConnectionQuery::default())),
        403,
        "forbidden",
    );
    assert_refused(
        sync(|| key.connections(None, &ConnectionQuery::default())),
        403,
        "forbidden",
    );
    assert_refused(
        sync(|| key.traffic(&TrafficQuery::default())),
        403,
        "forbidden",
    );
    assert_refused(sync(|| key.node_info()), 403, "forbidden");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_capped_and_bad_queries_are_problems() {
    let api = TestApi::start().await;
    let _key = api.tenant_with_key("acme");
    for (path, code) in [
        ("/v1/connections?limit=0", 400),
        ("/v1/connections?limit=1001", 400),
        ("/v1/connections?limit=1000", 200),
        ("/v1/connections?presence=away", 400),
        ("/v1/connections?sort=random", 400),
        ("/v1/connections?tenant=nosuch", 404),
        ("/v1/connections?nosuch=1", 400),
        ("/v1/connections?offset=-1", 400),
        ("/v1/traffic?limit=201", 400),
        ("/v1/traffic?limit=200", 200),
        ("/v1/traffic?sort=random", 400),
        ("/v1/tenants/acme/connections?limit=1001", 400),
    ] {
        let r = api.raw("GET", path, Some(ADMIN_TOKEN), None);
        if code == 200 {
            assert_eq!(r.status, 200, "{path}");
        } else {
            let code_name = if code == 404 {
                "not-found"
            } else {
                "invalid-argument"
            };
            r.assert_problem(code, code_name);
        }
    }
    let long = "x".repeat(65);
    api.raw(
        "GET",
        &format!("/v1/traffic?q={long}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .assert_problem(400, "invalid-argument");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_is_served_from_the_binary() {
    let api = TestApi::start().await;
    // `/` leads to the page (the client follows the redirect).
    let root = api.raw("GET", "/", None, None);
    assert_eq!(root.status, 200);
    assert!(
        root.content_type.starts_with("text/html"),
        "{}",
        root.content_type
    );
    let page = api.raw("GET", "/dashboard", None, None);
    assert_eq!(page.status, 200);
    assert_eq!(page.body, root.body);
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(html.contains("<title>Switchboard</title>"));
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    // Every asset the page names is served, with its type; nothing else is.
    for (name, content_type, body) in switchboard_admin::http::DASHBOARD_ASSETS {
        let r = api.raw("GET", &format!("/dashboard/{name}"), None, None);
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.content_type, *content_type, "{name}");
        assert_eq!(r.body, body.as_bytes(), "{name}");
    }
    for referenced in [
        "/dashboard/app.js",
        "/dashboard/app.css",
        "/dashboard/uPlot.iife.min.js",
        "/dashboard/uPlot.min.css",
    ] {
        assert!(html.contains(referenced), "the page loads {referenced}");
    }
    api.raw("GET", "/dashboard/nosuch.js", None, None)
        .assert_problem(404, "not-found");
    api.raw("GET", "/dashboard/..%2Fopenapi.json", None, None)
        .assert_problem(404, "not-found");
    api.stop().await;
}
