//! The external-identity part of the management API under `/api/v1/`: the group
//! bindings that give the members of an OIDC or LDAP group a role in a project
//! (managed by the project's owners), and a read-only view of the configured
//! identity providers (administrators). Every change is audited.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_consensus::tenancy::{
    IdentityProvider, ProjectRole, TenancyCommand, TenancyOutcome, TenancyRejection,
    valid_group_name,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::manage::{
    ApiError, ApiResult, Mgmt, owns, policy_audit, project_name, propose, require_admin, unexpected,
};

/// One group binding of a project.
#[derive(Debug, Serialize)]
pub struct GroupBindingView {
    pub provider: IdentityProvider,
    pub group: String,
    pub role: ProjectRole,
}

#[derive(Debug, Deserialize)]
pub struct GroupRoleChange {
    pub role: String,
}

/// `GET /api/v1/projects/{name}/groups` (owners).
pub async fn list_groups(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let name = project_name(&name)?;
    if !owns(&app, &caller, &name).await? {
        return Err(ApiError::not_found("project"));
    }
    let n = name.clone();
    let bindings = app.meta.read(move |v| v.group_bindings(Some(&n))).await?;
    let out: Vec<GroupBindingView> = bindings
        .into_iter()
        .map(|b| GroupBindingView {
            provider: b.provider,
            group: b.group,
            role: b.role,
        })
        .collect();
    Ok(Json(out).into_response())
}

/// `PUT /api/v1/projects/{name}/groups/{provider}/{group}` (owners).
pub async fn set_group(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    Path((name, provider, group)): Path<(String, String, String)>,
    Json(body): Json<GroupRoleChange>,
) -> ApiResult<Response> {
    let role: ProjectRole = body.role.parse().map_err(ApiError::bad)?;
    group_change(app, caller, name, provider, group, Some(role)).await
}

/// `DELETE /api/v1/projects/{name}/groups/{provider}/{group}` (owners).
pub async fn remove_group(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    Path((name, provider, group)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    group_change(app, caller, name, provider, group, None).await
}

async fn group_change(
    app: AppState,
    caller: crate::auth::Caller,
    name: String,
    provider: String,
    group: String,
    role: Option<ProjectRole>,
) -> ApiResult<Response> {
    let name = project_name(&name)?;
    let provider: IdentityProvider = provider.parse().map_err(ApiError::bad)?;
    if !valid_group_name(&group) {
        return Err(ApiError::bad(
            "a group name is 1 to 256 bytes without control characters",
        ));
    }
    if !owns(&app, &caller, &name).await? {
        return Err(ApiError::not_found("project"));
    }
    let cmd = TenancyCommand::SetGroupBinding {
        provider,
        group: group.clone(),
        project: name.clone(),
        role,
    };
    match propose(&app, cmd).await? {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                format!("set group {provider}:{group} of {name} to {role:?}"),
                Some(name.as_str()),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        TenancyOutcome::NotFound => Err(ApiError::not_found("group binding")),
        TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown) => {
            Err(ApiError::not_found("project"))
        }
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/identity-providers` (administrators): the configured OIDC issuer
/// and its claims, and the LDAP directory (each `null` when not configured).
pub async fn identity_providers(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let oidc = app.auth.oidc.as_ref().map(|o| {
        json!({
            "issuer": o.config.issuer,
            "audience": o.config.audience,
            "groups_claim": o.config.groups_claim,
            "username_claim": o.config.username_claim,
            "jwks_refresh_min_secs": o.config.jwks_refresh_min.as_secs(),
            "key_fetches": o.fetches(),
        })
    });
    let ldap = app.auth.ldap.as_ref().map(|l| {
        json!({
            "url": l.config.url,
            "user_dn": l.config.user_dn,
            "group_base": l.config.group_base,
            "group_filter": l.config.group_filter,
            "group_attribute": l.config.group_attribute,
        })
    });
    Ok(Json(json!({ "oidc": oidc, "ldap": ldap })).into_response())
}
