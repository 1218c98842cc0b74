//! Extractors that turn a request into what a handler may act on. Authentication and
//! authorization run here, before any body is read, so a caller learns 401, then 403, before
//! anything about the request's content or the resource's existence.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::Json;
use serde::de::DeserializeOwned;

use super::problem::Problem;
use super::{ApiState, JSON_BODY_LIMIT};
use crate::control::types::Caller;
use crate::ControlError;

/// The bearer token of `Authorization: Bearer <token>`, if the header is there.
fn bearer(parts: &Parts) -> Result<Option<&str>, ControlError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed =
        || ControlError::Unauthenticated("Authorization must be `Bearer <token>`".to_owned());
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    Ok(Some(token.trim()))
}

fn caller(parts: &Parts, state: &ApiState) -> Result<Caller, ControlError> {
    state.control.authenticate(bearer(parts)?)
}

/// The operator: only the admin token gets through.
#[derive(Debug)]
pub(crate) struct Admin;

impl FromRequestParts<ApiState> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let caller = caller(parts, state)?;
        state.control.require_admin(&caller)?;
        Ok(Admin)
    }
}

/// Any valid credential: the admin token or a tenant key.
#[derive(Debug)]
pub(crate) struct Authenticated(pub Caller);

impl FromRequestParts<ApiState> for Authenticated {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        Ok(Authenticated(caller(parts, state)?))
    }
}

/// Query parameters, refused as a problem (unknown ones too, when `T` says so).
#[derive(Debug)]
pub(crate) struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| Problem::invalid(400, e.body_text()))
    }
}

/// A caller that reaches the `{tenant}` of the path: the admin, or one of that tenant's keys.
#[derive(Debug)]
pub(crate) struct TenantScope {
    pub caller: Caller,
    pub tenant: String,
}

impl FromRequestParts<ApiState> for TenantScope {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let caller = caller(parts, state)?;
        let Params(mut params) =
            Params::<HashMap<String, String>>::from_request_parts(parts, state).await?;
        let tenant = params
            .remove("tenant")
            .ok_or_else(|| ControlError::Internal("route has no {tenant} parameter".to_owned()))?;
        state.control.authorize_tenant(&caller, &tenant)?;
        Ok(TenantScope { caller, tenant })
    }
}

/// A caller that may change which plugin versions serve the `{tenant}` of the path: the
/// admin, or (if the operator allowed it) one of that tenant's keys.
#[derive(Debug)]
pub(crate) struct RolloutScope {
    pub tenant: String,
}

impl FromRequestParts<ApiState> for RolloutScope {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let TenantScope { caller, tenant } = TenantScope::from_request_parts(parts, state).await?;
        state.control.authorize_rollout(&caller, &tenant)?;
        Ok(RolloutScope { tenant })
    }
}

/// Path parameters, refused as a problem (not axum's plain-text rejection).
#[derive(Debug)]
pub(crate) struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Params(v))
            .map_err(|e| Problem::invalid(400, e.body_text()))
    }
}

/// Reads a request body within the server's body timeout: past it, 408 `request-timeout`
/// (and the connection is closed), however slowly the bytes were trickling in.
pub(crate) async fn read_body<T>(
    timeout: Duration,
    read: impl Future<Output = Result<T, Problem>>,
) -> Result<T, Problem> {
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Problem::request_timeout(timeout))?
}

/// A JSON body (`Content-Type: application/json`), refused as an `invalid-argument` problem
/// when it is missing, malformed, has unknown fields or is over the body limit, and as
/// `request-timeout` when it does not arrive within the body timeout.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<T> FromRequest<ApiState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Problem> {
        read_body(state.body_timeout, async {
            Json::<T>::from_request(req, state)
                .await
                .map(|Json(v)| JsonBody(v))
                .map_err(json_rejection)
        })
        .await
    }
}

fn json_rejection(r: JsonRejection) -> Problem {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Problem::invalid(
            413,
            format!("request body is larger than {JSON_BODY_LIMIT} bytes"),
        );
    }
    Problem::invalid(400, r.body_text())
}
