//! The operator dashboard: a static page served by the admin listener, its assets compiled
//! into the binary (no network at run time, nothing read from disk). The page holds no data
//! and needs no credential; it asks for the admin token or a tenant key and calls the JSON
//! API with it (`/v1/whoami`, `/v1/node`, `/v1/traffic`, `/v1/connections`, …), so it sees
//! exactly what that credential may see.
//!
//! These routes are not API operations: they are listed in [`PAGE_ROUTES`], not in
//! [`ROUTES`](super::ROUTES), and not in `openapi.json`.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::{ApiState, Problem};

/// Every page route: `/` redirects to the page, the page, its assets.
pub const PAGE_ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/{asset}"),
];

/// The page and its assets: (name under `/dashboard/`, content type, bytes).
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../dashboard/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboard/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../dashboard/vendor/uplot/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../../dashboard/vendor/uplot/LICENSE"),
    ),
];

const INDEX_HTML: &str = include_str!("../../dashboard/index.html");

/// Only this origin's scripts, styles and API; no framing (clickjacking the buttons).
/// Inline styles are allowed because uPlot sizes its canvas with them.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard", get(index))
        .route("/dashboard/{asset}", get(asset))
}

fn page(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML, "no-cache")
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        // Revalidated on every load: a node upgrade must not leave an old script running.
        Some((_, content_type, body)) => page(content_type, body, "no-cache"),
        None => Problem::route_not_found(&format!("/dashboard/{name}")).into_response(),
    }
}
