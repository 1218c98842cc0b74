//! Plugin uploads and a tenant's policy binding: activate, canary, promote, rollback.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;

use super::extract::{read_body, JsonBody, Params, QueryParams, RolloutScope, TenantScope};
use super::{blocking, ApiState, Problem, UPLOAD_BODY_LIMIT};
use crate::control::types::*;
use crate::ControlError;

const WASM_CONTENT_TYPE: &str = "application/wasm";

/// `POST /v1/tenants/{tenant}/plugins`: the body is the component's bytes.
///
/// The body is read first, under the body timeout and one of the tenant's
/// [`UPLOAD_BODIES_PER_TENANT`](super::UPLOAD_BODIES_PER_TENANT) receiving permits; only
/// then is a check permit taken (one per tenant, [`super::UPLOAD_CONCURRENCY`] on the node),
/// so a client that sends slowly, or never, holds nothing another tenant needs.
pub(super) async fn upload(
    State(s): State<ApiState>,
    scope: TenantScope,
    QueryParams(query): QueryParams<UploadQuery>,
    req: Request,
) -> Result<(StatusCode, Json<Uploaded>), Problem> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(WASM_CONTENT_TYPE) {
        return Err(Problem::invalid(
            400,
            format!(
                "a plugin upload is the component's bytes with Content-Type: {WASM_CONTENT_TYPE} (got {content_type:?})"
            ),
        ));
    }
    let too_large = || {
        Problem::from(ControlError::PluginTooLarge(format!(
            "upload is larger than the API's {UPLOAD_BODY_LIMIT}-byte body limit"
        )))
    };
    // Refused before reading when the length says so: a client that sent
    // `Expect: 100-continue` then never sends the body.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > UPLOAD_BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let node_max = s.control.engine.limits().max_plugin_bytes;
    if let Some(n) = declared.filter(|&n| n > node_max as u64) {
        return Err(ControlError::PluginTooLarge(format!(
            "plugin is {n} bytes; at most {node_max}"
        ))
        .into());
    }
    let busy =
        |refused: super::permits::Refused| Problem::busy(format!("{refused}; retry shortly"));
    let receiving = s.upload_bodies.try_acquire(&scope.tenant).map_err(busy)?;
    let wasm = read_body(s.body_timeout, async {
        Bytes::from_request(req, &s).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                Problem::invalid(400, e.body_text())
            }
        })
    })
    .await?;
    drop(receiving);
    let _checking = s.upload_checks.try_acquire(&scope.tenant).map_err(busy)?;
    let uploaded = s
        .control
        .upload_labelled_plugin(&scope.caller, &scope.tenant, wasm, query.label.as_deref())
        .await?;
    let status = if uploaded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(uploaded)))
}

pub(super) async fn list(
    State(s): State<ApiState>,
    scope: TenantScope,
) -> Result<Json<Vec<PluginInfo>>, Problem> {
    blocking(&s.control, move |c| c.plugins(&scope.tenant))
        .await
        .map(Json)
}

pub(super) async fn show(
    State(s): State<ApiState>,
    scope: TenantScope,
    Params((_, version)): Params<(String, String)>,
) -> Result<Json<PluginDetail>, Problem> {
    blocking(&s.control, move |c| c.plugin(&scope.tenant, &version))
        .await
        .map(Json)
}

pub(super) async fn status(
    State(s): State<ApiState>,
    scope: TenantScope,
) -> Result<Json<PolicyStatus>, Problem> {
    blocking(&s.control, move |c| c.policy_status(&scope.tenant))
        .await
        .map(Json)
}

pub(super) async fn activate(
    State(s): State<ApiState>,
    RolloutScope { tenant }: RolloutScope,
    JsonBody(req): JsonBody<Activate>,
) -> Result<Json<PolicyStatus>, Problem> {
    Ok(Json(s.control.activate(&tenant, &req).await?))
}

pub(super) async fn start_canary(
    State(s): State<ApiState>,
    RolloutScope { tenant }: RolloutScope,
    JsonBody(req): JsonBody<StartCanary>,
) -> Result<Json<PolicyStatus>, Problem> {
    Ok(Json(s.control.start_canary(&tenant, &req).await?))
}

pub(super) async fn abort_canary(
    State(s): State<ApiState>,
    RolloutScope { tenant }: RolloutScope,
) -> Result<Json<PolicyStatus>, Problem> {
    Ok(Json(s.control.abort_canary(&tenant).await?))
}

pub(super) async fn promote(
    State(s): State<ApiState>,
    RolloutScope { tenant }: RolloutScope,
) -> Result<Json<PolicyStatus>, Problem> {
    Ok(Json(s.control.promote(&tenant).await?))
}

pub(super) async fn rollback(
    State(s): State<ApiState>,
    RolloutScope { tenant }: RolloutScope,
) -> Result<Json<PolicyStatus>, Problem> {
    Ok(Json(s.control.rollback(&tenant).await?))
}
