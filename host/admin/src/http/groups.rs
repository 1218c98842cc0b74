//! A tenant's groups and their members.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, Params, TenantScope};
use super::{blocking, ApiState, Problem};
use crate::control::types::*;

/// The answer to adding a member (201 when added, 200 when it was a member already).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAdded {
    pub group: String,
    pub user: String,
    /// False when the user was a member already.
    pub added: bool,
}

pub(super) async fn create(
    State(s): State<ApiState>,
    scope: TenantScope,
    JsonBody(req): JsonBody<CreateGroup>,
) -> Result<(StatusCode, Json<GroupInfo>), Problem> {
    let group = blocking(&s.control, move |c| c.create_group(&scope.tenant, &req)).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

pub(super) async fn list(
    State(s): State<ApiState>,
    scope: TenantScope,
) -> Result<Json<Vec<GroupInfo>>, Problem> {
    blocking(&s.control, move |c| c.groups(&scope.tenant))
        .await
        .map(Json)
}

pub(super) async fn show(
    State(s): State<ApiState>,
    scope: TenantScope,
    Params((_, group)): Params<(String, String)>,
) -> Result<Json<GroupInfo>, Problem> {
    blocking(&s.control, move |c| c.group(&scope.tenant, &group))
        .await
        .map(Json)
}

pub(super) async fn members(
    State(s): State<ApiState>,
    scope: TenantScope,
    Params((_, group)): Params<(String, String)>,
) -> Result<Json<Vec<String>>, Problem> {
    blocking(&s.control, move |c| c.members(&scope.tenant, &group))
        .await
        .map(Json)
}

pub(super) async fn add_member(
    State(s): State<ApiState>,
    scope: TenantScope,
    Params((_, group)): Params<(String, String)>,
    JsonBody(req): JsonBody<AddMember>,
) -> Result<(StatusCode, Json<MemberAdded>), Problem> {
    let answer = blocking(&s.control, move |c| {
        let added = c.add_member(&scope.tenant, &group, &req.user)?;
        Ok(MemberAdded {
            group,
            user: req.user,
            added,
        })
    })
    .await?;
    let status = if answer.added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)))
}

pub(super) async fn remove_member(
    State(s): State<ApiState>,
    scope: TenantScope,
    Params((_, group, user)): Params<(String, String, String)>,
) -> Result<StatusCode, Problem> {
    blocking(&s.control, move |c| {
        c.remove_member(&scope.tenant, &group, &user)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
