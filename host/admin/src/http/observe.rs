//! What operators and tenants read about the running node: who am I, node info, connections
//! (paged, like NATS's `/connz`), tenants with their traffic. Handlers only map to
//! `Control`'s read operations in `control::observe`.

use axum::extract::State;
use axum::Json;

use super::extract::{Admin, Authenticated, QueryParams, TenantScope};
use super::{blocking, ApiState, Problem};
use crate::control::types::*;

pub(super) async fn whoami(
    State(s): State<ApiState>,
    Authenticated(caller): Authenticated,
) -> Json<Whoami> {
    Json(s.control.whoami(&caller))
}

pub(super) async fn node(State(s): State<ApiState>, _: Admin) -> Result<Json<NodeInfo>, Problem> {
    blocking(&s.control, |c| c.node_info()).await.map(Json)
}

pub(super) async fn connections(
    State(s): State<ApiState>,
    _: Admin,
    QueryParams(q): QueryParams<ConnectionQuery>,
) -> Result<Json<ConnectionPage>, Problem> {
    blocking(&s.control, move |c| c.connections(None, &q))
        .await
        .map(Json)
}

pub(super) async fn tenant_connections(
    State(s): State<ApiState>,
    scope: TenantScope,
    QueryParams(q): QueryParams<ConnectionQuery>,
) -> Result<Json<ConnectionPage>, Problem> {
    blocking(&s.control, move |c| {
        c.connections(Some(scope.tenant.as_str()), &q)
    })
    .await
    .map(Json)
}

pub(super) async fn traffic(
    State(s): State<ApiState>,
    _: Admin,
    QueryParams(q): QueryParams<TrafficQuery>,
) -> Result<Json<TrafficPage>, Problem> {
    blocking(&s.control, move |c| c.traffic(&q)).await.map(Json)
}

pub(super) async fn tenant_traffic(
    State(s): State<ApiState>,
    scope: TenantScope,
) -> Result<Json<TenantTraffic>, Problem> {
    blocking(&s.control, move |c| c.tenant_traffic(&scope.tenant))
        .await
        .map(Json)
}
