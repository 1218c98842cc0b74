//! The admin and tenant HTTP API over [`Control`]: JSON in and out, errors as RFC 9457
//! problem details ([`Problem`]), described by `openapi.json` (served at `/openapi.json`).
//!
//! The router is built from [`ROUTES`], the one list of what the API serves; a test checks
//! that the OpenAPI document describes exactly these routes. Handlers only map a request to
//! a [`Control`] call: who may call what is decided by the extractors in `extract`, through
//! `Control::authenticate` / `require_admin` / `authorize_tenant`.
//!
//! Bounds (see `docs/admin-api.md` §4): the server's header, body and keep-alive timeouts
//! and connection cap ([`ServerLimits`], `server`); JSON bodies up to [`JSON_BODY_LIMIT`];
//! plugin uploads up to the node's plugin limit, at most [`UPLOAD_BODIES`] being received
//! ([`UPLOAD_BODIES_PER_TENANT`] per tenant) and, once received, at most
//! [`UPLOAD_CONCURRENCY`] being checked ([`UPLOAD_CHECKS_PER_TENANT`] per tenant); more are
//! refused with 429 `busy` rather than queued, and no tenant can hold every permit. A
//! request with `Transfer-Encoding` is refused (400): bodies must say their length, and a
//! `Content-Length` beside a `Transfer-Encoding` is how requests are smuggled past proxies.

mod dashboard;
mod extract;
mod groups;
mod metrics;
mod node;
mod observe;
mod permits;
mod plugins;
mod problem;
mod server;
mod tenants;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use tracing::Instrument as _;

use crate::{Control, ControlError};
pub use dashboard::{ASSETS as DASHBOARD_ASSETS, PAGE_ROUTES};
pub use groups::MemberAdded;
use permits::FairPermits;
pub use problem::{Problem, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE};
pub use server::{serve_with, tls_config, ServeOptions, ServerLimits, TlsConfigError};

/// Every route, as (method, path in axum/OpenAPI template syntax). The router is built from
/// this list; `tests/openapi.rs` checks `openapi.json` against it in both directions.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants"),
    ("GET", "/v1/tenants/{tenant}"),
    ("PUT", "/v1/tenants/{tenant}/quotas"),
    ("POST", "/v1/tenants/{tenant}/secret"),
    ("POST", "/v1/tenants/{tenant}/keys"),
    ("GET", "/v1/tenants/{tenant}/keys"),
    ("DELETE", "/v1/tenants/{tenant}/keys/{key_id}"),
    ("POST", "/v1/tenants/{tenant}/tokens"),
    ("POST", "/v1/tenants/{tenant}/groups"),
    ("GET", "/v1/tenants/{tenant}/groups"),
    ("GET", "/v1/tenants/{tenant}/groups/{group}"),
    ("GET", "/v1/tenants/{tenant}/groups/{group}/members"),
    ("POST", "/v1/tenants/{tenant}/groups/{group}/members"),
    (
        "DELETE",
        "/v1/tenants/{tenant}/groups/{group}/members/{user}",
    ),
    ("POST", "/v1/tenants/{tenant}/plugins"),
    ("GET", "/v1/tenants/{tenant}/plugins"),
    ("GET", "/v1/tenants/{tenant}/plugins/{version}"),
    ("GET", "/v1/tenants/{tenant}/policy"),
    ("POST", "/v1/tenants/{tenant}/policy/activate"),
    ("POST", "/v1/tenants/{tenant}/policy/canary"),
    ("DELETE", "/v1/tenants/{tenant}/policy/canary"),
    ("POST", "/v1/tenants/{tenant}/policy/promote"),
    ("POST", "/v1/tenants/{tenant}/policy/rollback"),
    ("GET", "/v1/tenants/{tenant}/flags"),
    ("PUT", "/v1/tenants/{tenant}/flags"),
    ("GET", "/v1/degradation"),
    ("PUT", "/v1/degradation"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/node"),
    ("POST", "/v1/node/store-key/rotation"),
    ("POST", "/v1/node/drain"),
    ("GET", "/v1/node/retention"),
    ("POST", "/v1/node/retention/pass"),
    ("GET", "/v1/connections"),
    ("GET", "/v1/tenants/{tenant}/connections"),
    ("GET", "/v1/traffic"),
    ("GET", "/v1/tenants/{tenant}/traffic"),
];

/// Largest JSON request body.
pub const JSON_BODY_LIMIT: usize = 1 << 20;
/// Largest plugin upload body the API reads. Above the node's default plugin limit (20 MiB,
/// what a Python plugin needs): a declared length over the node's own limit is refused before
/// the body is read, with the same message `Control::upload_plugin` gives.
pub const UPLOAD_BODY_LIMIT: usize = 24 << 20;
/// Plugin uploads being checked at once on the node (compile + self-test: CPU-heavy, seconds
/// for a large component). Taken only once the body is fully read, so a slow client holds
/// none.
pub const UPLOAD_CONCURRENCY: usize = 2;
/// Uploads one tenant may have being checked at once: a tenant never holds every check slot.
pub const UPLOAD_CHECKS_PER_TENANT: usize = 1;
/// Upload bodies being received at once on the node (each at most the node's plugin limit,
/// so at most 320 MiB buffered with the defaults: 20 MiB for Python plugins).
pub const UPLOAD_BODIES: usize = 16;
/// Upload bodies one tenant may be sending at once.
pub const UPLOAD_BODIES_PER_TENANT: usize = 2;

/// What every handler sees.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub control: Arc<Control>,
    /// Upload bodies being received.
    pub upload_bodies: Arc<FairPermits>,
    /// Uploads being checked (compile and self-test).
    pub upload_checks: Arc<FairPermits>,
    /// Longest time to read one request's body ([`ServerLimits::body_timeout`]).
    pub body_timeout: Duration,
}

/// Runs a synchronous control operation on the blocking pool: they read, write and flush
/// the store, and the API shares its runtime with the node's QUIC connections.
pub(crate) async fn blocking<T, F>(control: &Arc<Control>, op: F) -> Result<T, Problem>
where
    T: Send + 'static,
    F: FnOnce(&Control) -> Result<T, ControlError> + Send + 'static,
{
    let control = control.clone();
    tokio::task::spawn_blocking(move || op(&control))
        .await
        .map_err(|e| ControlError::Internal(format!("blocking task: {e}")))?
        .map_err(Problem::from)
}

/// The API as a router with the default [`ServerLimits`].
pub fn router(control: Arc<Control>) -> Router {
    router_with(control, &ServerLimits::default())
}

/// The API as a router, ready to serve.
pub fn router_with(control: Arc<Control>, limits: &ServerLimits) -> Router {
    let state = ApiState {
        control,
        upload_bodies: FairPermits::new(
            "plugin uploads being received",
            UPLOAD_BODIES,
            UPLOAD_BODIES_PER_TENANT,
        ),
        upload_checks: FairPermits::new(
            "plugin uploads being checked",
            UPLOAD_CONCURRENCY,
            UPLOAD_CHECKS_PER_TENANT,
        ),
        body_timeout: limits.body_timeout,
    };
    // One MethodRouter per path; `merge` panics on a (method, path) listed twice.
    let mut paths: BTreeMap<&str, MethodRouter<ApiState>> = BTreeMap::new();
    for &(method, path) in ROUTES {
        let endpoint = endpoint(method, path);
        let merged = match paths.remove(path) {
            Some(other) => other.merge(endpoint),
            None => endpoint,
        };
        paths.insert(path, merged);
    }
    let mut router = dashboard::routes();
    for (path, methods) in paths {
        router = router.route(path, methods);
    }
    router
        // After the routes: it applies to the routes present when called.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(route_not_found)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::from_fn(framing))
        .layer(middleware::from_fn(trace))
        .with_state(state)
}

/// The handler of one [`ROUTES`] entry.
fn endpoint(method: &str, path: &str) -> MethodRouter<ApiState> {
    match (method, path) {
        ("GET", "/healthz") => get(node::health),
        ("GET", "/openapi.json") => get(node::openapi),
        ("GET", "/metrics") => get(node::metrics),
        ("POST", "/v1/tenants") => post(tenants::create),
        ("GET", "/v1/tenants") => get(tenants::list),
        ("GET", "/v1/tenants/{tenant}") => get(tenants::show),
        ("PUT", "/v1/tenants/{tenant}/quotas") => put(tenants::set_quotas),
        ("POST", "/v1/tenants/{tenant}/secret") => post(tenants::rotate_secret),
        ("POST", "/v1/tenants/{tenant}/keys") => post(tenants::create_key),
        ("GET", "/v1/tenants/{tenant}/keys") => get(tenants::list_keys),
        ("DELETE", "/v1/tenants/{tenant}/keys/{key_id}") => delete(tenants::delete_key),
        ("POST", "/v1/tenants/{tenant}/tokens") => post(tenants::mint_token),
        ("POST", "/v1/tenants/{tenant}/groups") => post(groups::create),
        ("GET", "/v1/tenants/{tenant}/groups") => get(groups::list),
        ("GET", "/v1/tenants/{tenant}/groups/{group}") => get(groups::show),
        ("GET", "/v1/tenants/{tenant}/groups/{group}/members") => get(groups::members),
        ("POST", "/v1/tenants/{tenant}/groups/{group}/members") => post(groups::add_member),
        ("DELETE", "/v1/tenants/{tenant}/groups/{group}/members/{user}") => {
            delete(groups::remove_member)
        }
        ("POST", "/v1/tenants/{tenant}/plugins") => {
            post(plugins::upload).layer(DefaultBodyLimit::max(UPLOAD_BODY_LIMIT))
        }
        ("GET", "/v1/tenants/{tenant}/plugins") => get(plugins::list),
        ("GET", "/v1/tenants/{tenant}/plugins/{version}") => get(plugins::show),
        ("GET", "/v1/tenants/{tenant}/policy") => get(plugins::status),
        ("POST", "/v1/tenants/{tenant}/policy/activate") => post(plugins::activate),
        ("POST", "/v1/tenants/{tenant}/policy/canary") => post(plugins::start_canary),
        ("DELETE", "/v1/tenants/{tenant}/policy/canary") => delete(plugins::abort_canary),
        ("POST", "/v1/tenants/{tenant}/policy/promote") => post(plugins::promote),
        ("POST", "/v1/tenants/{tenant}/policy/rollback") => post(plugins::rollback),
        ("GET", "/v1/tenants/{tenant}/flags") => get(tenants::flags),
        ("PUT", "/v1/tenants/{tenant}/flags") => put(tenants::put_flags),
        ("GET", "/v1/degradation") => get(node::degradation),
        ("PUT", "/v1/degradation") => put(node::set_degradation),
        ("GET", "/v1/whoami") => get(observe::whoami),
        ("GET", "/v1/node") => get(observe::node),
        ("POST", "/v1/node/store-key/rotation") => post(node::rotate_store_key),
        ("POST", "/v1/node/drain") => post(node::drain),
        ("GET", "/v1/node/retention") => get(node::retention),
        ("POST", "/v1/node/retention/pass") => post(node::run_retention),
        ("GET", "/v1/connections") => get(observe::connections),
        ("GET", "/v1/tenants/{tenant}/connections") => get(observe::tenant_connections),
        ("GET", "/v1/traffic") => get(observe::traffic),
        ("GET", "/v1/tenants/{tenant}/traffic") => get(observe::tenant_traffic),
        _ => panic!("ROUTES lists {method} {path}, which has no handler"),
    }
}

async fn route_not_found(uri: Uri) -> Problem {
    Problem::route_not_found(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::method_not_allowed(method.as_str(), uri.path())
}

/// Serves the API (plain HTTP, default [`ServerLimits`]) on `listener` until `shutdown`
/// completes, then lets requests in flight finish. See [`serve_with`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, control, ServeOptions::default(), shutdown).await
}

/// Refuses a request with `Transfer-Encoding` before anything else looks at it: 400, and the
/// connection is closed. hyper drops a `Content-Length` sent beside one (RFC 9112 §6.3), so
/// both together cannot be told from a chunked body here; this API's bodies are bounded and
/// every client it has sends `Content-Length`, so neither is accepted.
async fn framing(req: Request, next: Next) -> Response {
    if !req.headers().contains_key(header::TRANSFER_ENCODING) {
        return next.run(req).await;
    }
    let mut resp = Problem::invalid(
        400,
        "request bodies must be sent with Content-Length; Transfer-Encoding is refused \
         (alone, or beside a Content-Length)",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A span per request, and one event with its status and latency: reads at debug, changes
/// at info (they are the audit trail), server errors at warn. The path only, never the
/// query or headers (they may carry credentials).
async fn trace(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let span = tracing::info_span!("admin_http", %method, path = %req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    // Whole microseconds: log fields are integers, not 0.123456789.
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _entered = span.enter();
    if status >= 500 {
        tracing::warn!(status, latency_us, "request failed");
    } else if method == Method::GET || method == Method::HEAD {
        tracing::debug!(status, latency_us, "request");
    } else {
        tracing::info!(status, latency_us, "request");
    }
    resp
}
