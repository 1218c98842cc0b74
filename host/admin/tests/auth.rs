//! Who may call what, for every route: 401 without or with a wrong credential, 403 for a
//! tenant key outside its tenant or on an admin-only route, and only then 400/404 — checked
//! in that order, and always as problem details.

mod common;

use common::openapi::Doc;
use common::*;
use switchboard_admin::http::ROUTES;

/// The routes only the operator may call (the brief's list, independent of the code).
const ADMIN_ONLY: &[(&str, &str)] = &[
    ("GET", "/metrics"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants"),
    ("PUT", "/v1/tenants/{tenant}/quotas"),
    ("POST", "/v1/tenants/{tenant}/secret"),
    ("POST", "/v1/tenants/{tenant}/keys"),
    ("GET", "/v1/tenants/{tenant}/keys"),
    ("DELETE", "/v1/tenants/{tenant}/keys/{key_id}"),
    ("POST", "/v1/tenants/{tenant}/policy/activate"),
    ("POST", "/v1/tenants/{tenant}/policy/canary"),
    ("DELETE", "/v1/tenants/{tenant}/policy/canary"),
    ("POST", "/v1/tenants/{tenant}/policy/promote"),
    ("POST", "/v1/tenants/{tenant}/policy/rollback"),
    ("GET", "/v1/degradation"),
    ("PUT", "/v1/degradation"),
    ("GET", "/v1/node"),
    ("POST", "/v1/node/store-key/rotation"),
    ("POST", "/v1/node/drain"),
    ("GET", "/v1/node/retention"),
    ("POST", "/v1/node/retention/pass"),
    ("GET", "/v1/connections"),
    ("GET", "/v1/traffic"),
];
const PUBLIC: &[(&str, &str)] = &[("GET", "/healthz"), ("GET", "/openapi.json")];
/// Routes any valid credential may call (they say who the caller is).
const ANY: &[(&str, &str)] = &[("GET", "/v1/whoami")];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    Public,
    Admin,
    Tenant,
    Any,
}

fn access(method: &str, path: &str) -> Access {
    if PUBLIC.contains(&(method, path)) {
        Access::Public
    } else if ADMIN_ONLY.contains(&(method, path)) {
        Access::Admin
    } else if ANY.contains(&(method, path)) {
        Access::Any
    } else {
        Access::Tenant
    }
}

const VERSION: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn concrete(path: &str, tenant: &str) -> String {
    path.replace("{tenant}", tenant)
        .replace("{group}", "general")
        .replace("{user}", "alice")
        .replace("{key_id}", "key-000000000000")
        .replace("{version}", VERSION)
}

/// A valid body for the route (so that only the checks under test can refuse it).
fn valid_body(method: &str, path: &str) -> Option<(&'static str, Vec<u8>)> {
    let json = |s: String| Some(("application/json", s.into_bytes()));
    match (method, path.rsplit('/').next().unwrap()) {
        ("POST", "tenants") => json(r#"{"id":"newco"}"#.into()),
        ("PUT", "quotas") => {
            json(r#"{"max_groups":5,"max_plugin_versions":5,"max_plugin_bytes":1000000}"#.into())
        }
        ("POST", "keys") => json(r#"{"label":"x"}"#.into()),
        ("POST", "tokens") => json(r#"{"user":"alice"}"#.into()),
        ("POST", "groups") => json(r#"{"id":"g2"}"#.into()),
        ("POST", "members") => json(r#"{"user":"alice"}"#.into()),
        ("POST", "plugins") => Some(("application/wasm", b"\0asm not really".to_vec())),
        ("POST", "activate") => json(format!(r#"{{"version":"{VERSION}"}}"#)),
        ("POST", "canary") => json(format!(r#"{{"version":"{VERSION}","percent":10}}"#)),
        ("PUT", "flags") => json("{}".into()),
        ("PUT", "degradation") => json(r#"{"level":null}"#.into()),
        ("POST", "drain") => json("{}".into()),
        (_, _) => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_credentials_then_reach_then_the_request() {
    let api = TestApi::start().await;
    let acme_key = api.tenant_with_key("acme");
    let _globex_key = api.tenant_with_key("globex");
    let doc = Doc::load();

    // The test's own list agrees with what the document promises.
    for &(m, p) in ADMIN_ONLY.iter().chain(PUBLIC).chain(ANY) {
        assert!(ROUTES.contains(&(m, p)), "{m} {p} is not a route");
    }
    for &(method, path) in ROUTES {
        let expected = match access(method, path) {
            Access::Public => "public",
            Access::Admin => "admin",
            Access::Tenant => "tenant",
            Access::Any => "any",
        };
        assert_eq!(
            doc.operation(method, path)["x-access"],
            expected,
            "{method} {path}: x-access in openapi.json"
        );
    }

    for &(method, path) in ROUTES {
        let name = format!("{method} {path}");
        let class = access(method, path);
        let globex_path = concrete(path, "globex");
        let acme_path = concrete(path, "acme");
        // A malformed body: credentials and reach are judged before it is read.
        let bad_body: Option<(&str, &[u8])> = match method {
            "POST" | "PUT" if path.ends_with("/plugins") => Some(("application/wasm", b"x")),
            "POST" | "PUT" => Some(("application/json", b"{not json")),
            _ => None,
        };
        if class == Access::Public {
            let r = api.raw(method, &globex_path, None, None);
            assert_eq!(r.status, 200, "{name} needs no credentials");
            continue;
        }

        // 401: no token, unknown tokens (both shapes), a non-bearer scheme.
        let r = api.raw(method, &globex_path, None, bad_body);
        r.assert_problem(401, "unauthenticated");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{name}");
        for wrong in ["not-the-admin-token", "sbk_key-000000000000_AAAA"] {
            api.raw(method, &globex_path, Some(wrong), bad_body)
                .assert_problem(401, "unauthenticated");
        }
        let basic = raw_with_header(&api, method, &globex_path, "Basic YWRtaW46YWRtaW4=");
        basic.assert_problem(401, "unauthenticated");

        match class {
            Access::Admin => {
                // A tenant key is refused even on its own tenant.
                api.raw(method, &acme_path, Some(&acme_key), bad_body)
                    .assert_problem(403, "forbidden");
            }
            Access::Tenant => {
                api.raw(method, &globex_path, Some(&acme_key), bad_body)
                    .assert_problem(403, "forbidden");
                // Reach is judged before existence: no hint whether a tenant exists.
                api.raw(method, &concrete(path, "nosuch"), Some(&acme_key), bad_body)
                    .assert_problem(403, "forbidden");
            }
            Access::Any => {
                // Any valid credential, a tenant key included.
                let r = api.raw(method, &acme_path, Some(&acme_key), None);
                assert_eq!(r.status, 200, "{name} with a tenant key");
            }
            Access::Public => unreachable!(),
        }

        // The admin reaches everything; a missing tenant is then a 404.
        if path.contains("{tenant}") {
            let body = valid_body(method, path);
            let body = body.as_ref().map(|(ct, b)| (*ct, b.as_slice()));
            api.raw(method, &concrete(path, "nosuch"), Some(ADMIN_TOKEN), body)
                .assert_problem(404, "not-found");
        }
        let takes_json = valid_body(method, path).is_some_and(|(ct, _)| ct == "application/json");
        if takes_json {
            api.raw(method, &acme_path, Some(ADMIN_TOKEN), bad_body)
                .assert_problem(400, "invalid-argument");
        }
    }
}

fn raw_with_header(api: &TestApi, method: &str, path: &str, authorization: &str) -> Raw {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", api.url))
        .header("Authorization", authorization)
        .body(Vec::<u8>::new())
        .unwrap();
    let mut resp = sync(|| agent.run(req)).unwrap();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Raw {
        status: resp.status().as_u16(),
        content_type,
        headers: Vec::new(),
        body: sync(|| resp.body_mut().read_to_vec()).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_key_stops_working_at_once() {
    let api = TestApi::start().await;
    let key = api.tenant_with_key("acme");
    let tenant = api.client(&key);
    sync(|| tenant.tenant("acme")).unwrap();
    let admin = api.admin();
    let id = sync(|| admin.api_keys("acme")).unwrap()[0].id.clone();
    sync(|| admin.delete_api_key("acme", &id)).unwrap();
    assert_refused(sync(|| tenant.tenant("acme")), 401, "unauthenticated");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let api = TestApi::start().await;
    let r = api.raw("GET", "/v1/nothing-here", None, None);
    r.assert_problem(404, "not-found");
    let r = api.raw("PATCH", "/v1/tenants", Some(ADMIN_TOKEN), None);
    r.assert_problem(405, "method-not-allowed");
    let allow = r.header("allow").unwrap_or_default().to_owned();
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow}"
    );
    api.raw("DELETE", "/healthz", None, None)
        .assert_problem(405, "method-not-allowed");
}
