//! Node-wide endpoints: health, the OpenAPI document, metrics, the degradation override,
//! the store key's rotation and retention.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::extract::{Admin, JsonBody};
use super::{blocking, metrics as prometheus, ApiState, Problem};
use crate::control::types::*;

/// The API's OpenAPI 3.1 document, as checked in next to the crate.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

pub(super) async fn health(State(s): State<ApiState>) -> Json<Health> {
    Json(s.control.health())
}

pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

pub(super) async fn metrics(
    State(s): State<ApiState>,
    _: Admin,
) -> Result<impl IntoResponse, Problem> {
    let text = blocking(&s.control, prometheus::render).await?;
    Ok(([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text))
}

pub(super) async fn degradation(
    State(s): State<ApiState>,
    _: Admin,
) -> Result<Json<DegradationStatus>, Problem> {
    blocking(&s.control, |c| c.degradation()).await.map(Json)
}

pub(super) async fn set_degradation(
    State(s): State<ApiState>,
    _: Admin,
    JsonBody(req): JsonBody<SetDegradation>,
) -> Result<Json<DegradationStatus>, Problem> {
    Ok(Json(s.control.set_degradation(&req).await?))
}

pub(super) async fn drain(
    State(s): State<ApiState>,
    _: Admin,
    JsonBody(req): JsonBody<DrainRequest>,
) -> Result<(StatusCode, Json<Draining>), Problem> {
    Ok((StatusCode::ACCEPTED, Json(s.control.request_drain(&req)?)))
}

pub(super) async fn rotate_store_key(
    State(s): State<ApiState>,
    _: Admin,
) -> Result<Json<StoreKeyRotation>, Problem> {
    blocking(&s.control, |c| c.rotate_store_key())
        .await
        .map(Json)
}

pub(super) async fn retention(
    State(s): State<ApiState>,
    _: Admin,
) -> Result<Json<RetentionInfo>, Problem> {
    blocking(&s.control, |c| Ok(c.retention())).await.map(Json)
}

pub(super) async fn run_retention(
    State(s): State<ApiState>,
    _: Admin,
) -> Result<Json<RetentionPass>, Problem> {
    blocking(&s.control, |c| c.run_retention()).await.map(Json)
}
