//! Tenants, their quotas, secret, API keys, client tokens and feature flags.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::extract::{Admin, JsonBody, Params, TenantScope};
use super::{blocking, ApiState, Problem};
use crate::control::types::*;

pub(super) async fn create(
    State(s): State<ApiState>,
    _: Admin,
    JsonBody(req): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<TenantSecret>), Problem> {
    let secret = blocking(&s.control, move |c| c.create_tenant(&req)).await?;
    Ok((StatusCode::CREATED, Json(secret)))
}

pub(super) async fn list(
    State(s): State<ApiState>,
    _: Admin,
) -> Result<Json<Vec<TenantInfo>>, Problem> {
    blocking(&s.control, |c| c.tenants()).await.map(Json)
}

pub(super) async fn show(
    State(s): State<ApiState>,
    scope: TenantScope,
) -> Result<Json<TenantInfo>, Problem> {
    blocking(&s.control, move |c| c.tenant(&scope.tenant))
        .await
        .map(Json)
}

pub(super) async fn set_quotas(
    State(s): State<ApiState>,
    _: Admin,
    Params(tenant): Params<String>,
    JsonBody(quotas): JsonBody<Quotas>,
) -> Result<Json<TenantInfo>, Problem> {
    blocking(&s.control, move |c| c.set_quotas(&tenant, &quotas))
        .await
        .map(Json)
}

pub(super) async fn rotate_secret(
    State(s): State<ApiState>,
    _: Admin,
    Params(tenant): Params<String>,
) -> Result<Json<TenantSecret>, Problem> {
    blocking(&s.control, move |c| c.rotate_secret(&tenant))
        .await
        .map(Json)
}

pub(super) async fn create_key(
    State(s): State<ApiState>,
    _: Admin,
    Params(tenant): Params<String>,
    JsonBody(req): JsonBody<CreateApiKey>,
) -> Result<(StatusCode, Json<NewApiKey>), Problem> {
    let key = blocking(&s.control, move |c| c.create_api_key(&tenant, &req.label)).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

pub(super) async fn list_keys(
    State(s): State<ApiState>,
    _: Admin,
    Params(tenant): Params<String>,
) -> Result<Json<Vec<ApiKeyInfo>>, Problem> {
    blocking(&s.control, move |c| c.api_keys(&tenant))
        .await
        .map(Json)
}

pub(super) async fn delete_key(
    State(s): State<ApiState>,
    _: Admin,
    Params((tenant, key_id)): Params<(String, String)>,
) -> Result<StatusCode, Problem> {
    blocking(&s.control, move |c| c.delete_api_key(&tenant, &key_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn mint_token(
    State(s): State<ApiState>,
    scope: TenantScope,
    JsonBody(req): JsonBody<MintToken>,
) -> Result<Json<MintedToken>, Problem> {
    blocking(&s.control, move |c| c.mint_token(&scope.tenant, &req))
        .await
        .map(Json)
}

pub(super) async fn flags(
    State(s): State<ApiState>,
    scope: TenantScope,
) -> Result<Json<BTreeMap<String, FlagRuleBody>>, Problem> {
    blocking(&s.control, move |c| c.flags(&scope.tenant))
        .await
        .map(Json)
}

pub(super) async fn put_flags(
    State(s): State<ApiState>,
    scope: TenantScope,
    JsonBody(flags): JsonBody<BTreeMap<String, FlagRuleBody>>,
) -> Result<Json<BTreeMap<String, FlagRuleBody>>, Problem> {
    blocking(&s.control, move |c| c.put_flags(&scope.tenant, &flags))
        .await
        .map(Json)
}
