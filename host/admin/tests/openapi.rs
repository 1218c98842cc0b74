//! `openapi.json` describes exactly the routes the router serves, and is a coherent
//! document (every reference resolves, every operation says who may call it).

mod common;

use std::collections::BTreeSet;

use common::openapi::Doc;
use serde_json::Value;
use switchboard_admin::http::ROUTES;

#[test]
fn openapi_paths_are_exactly_the_routes() {
    let doc = Doc::load();
    let documented: BTreeSet<(String, String)> = doc
        .operations()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(served.len(), ROUTES.len(), "ROUTES lists a route twice");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in openapi.json: {undocumented:?}\nin openapi.json but not served: {unserved:?}"
    );
}

#[tokio::test]
async fn the_router_builds_from_routes() {
    // Building panics on a ROUTES entry without a handler, or one listed twice.
    let api = common::TestApi::start().await;
    let _router = switchboard_admin::http::router(api.control.clone());
}

fn walk<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "$ref" {
                    out.push((at.clone(), child.as_str().unwrap_or("")));
                } else {
                    walk(child, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                walk(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_reference_resolves() {
    let doc = Doc::load();
    let mut refs = Vec::new();
    walk(&doc.0, String::new(), &mut refs);
    assert!(!refs.is_empty());
    for (at, r) in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: non-local $ref {r}"));
        assert!(
            doc.0.pointer(pointer).is_some(),
            "{at}: $ref {r} does not resolve"
        );
    }
}

#[test]
fn every_operation_is_complete() {
    let doc = Doc::load();
    assert_eq!(doc.0["openapi"], "3.1.0");
    let mut ids = BTreeSet::new();
    for (method, path, op) in doc.operations() {
        let name = format!("{method} {path}");
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no operationId"));
        assert!(
            ids.insert(id.to_owned()),
            "{name}: operationId {id} is used twice"
        );
        assert!(op["summary"].is_string(), "{name}: no summary");
        let access = op["x-access"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no x-access"));
        let responses = op["responses"].as_object().unwrap();
        match access {
            "public" => assert_eq!(op["security"], serde_json::json!([]), "{name}"),
            "admin" | "tenant" | "any" => {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{name}"
                );
                for status in ["401", "403"] {
                    let r = &responses[status];
                    assert!(r.is_object(), "{name}: no {status} answer");
                    let r = doc.resolve(r);
                    assert!(
                        r["content"]["application/problem+json"].is_object(),
                        "{name}: {status} is not a problem"
                    );
                }
            }
            other => panic!("{name}: x-access {other}"),
        }
        assert!(
            responses.keys().any(|k| k.starts_with('2')),
            "{name}: no success answer"
        );
        // Every template parameter is declared, and nothing else.
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| doc.resolve(p))
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(in_path, declared, "{name}: path parameters");
        if method == "GET" || method == "DELETE" {
            assert!(
                op.get("requestBody").is_none(),
                "{name}: a body on {method}"
            );
        }
    }
}

/// Every id the document constrains (tenant, group and user ids, in paths and bodies) admits
/// exactly the ids the node accepts: `.` and `..` are refused (they are path segments), as
/// are empty, over-long and non-ASCII ids.
#[test]
fn every_id_pattern_admits_exactly_the_ids_the_node_accepts() {
    let doc = Doc::load();
    let mut schemas = Vec::new();
    collect_id_schemas(&doc.0, &mut schemas);
    assert!(
        schemas.len() >= 7,
        "found only {} id schemas",
        schemas.len()
    );
    let long = "x".repeat(65);
    let samples = [
        "a",
        "alice",
        ".",
        "..",
        "...",
        "....",
        ".a",
        "..a",
        "a..",
        "a.b",
        "a:b@c-d_e",
        "",
        "a/b",
        "a b",
        "h\u{e9}llo",
        &long[..64],
        &long,
    ];
    for schema in schemas {
        let pattern = schema["pattern"].as_str().unwrap();
        let re = regex::Regex::new(pattern).expect("the pattern compiles");
        let min = schema["minLength"].as_u64().expect("minLength");
        let max = schema["maxLength"].as_u64().expect("maxLength");
        for s in samples {
            let chars = s.chars().count() as u64;
            let documented = re.is_match(s) && (min..=max).contains(&chars);
            let accepted = switchboard_core::TenantId::new(s).is_ok();
            assert_eq!(documented, accepted, "{s:?} against {pattern}");
        }
    }
}

/// Every schema with an id `pattern`.
fn collect_id_schemas<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            if map.contains_key("pattern") && map.get("maxLength").is_some_and(|m| m == 64) {
                out.push(v);
            }
            for child in map.values() {
                collect_id_schemas(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| collect_id_schemas(c, out)),
        _ => {}
    }
}
