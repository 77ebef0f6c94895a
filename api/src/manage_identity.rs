//! The external-identity part of the management API under `/api/v1/`: the group
//! bindings that give the members of an OIDC or LDAP group a role in a project
//! (managed by the project's owners), and a read-only view of the configured
//! identity providers (administrators). Every change is audited.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use berth_consensus::tenancy::{
    IdentityProvider, PROVIDER_FIELD_BYTES_MAX, ProjectRole, ProviderSetting, TenancyCommand,
    TenancyOutcome, TenancyRejection, valid_group_name,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::auth::ldap::LdapConfig;
use crate::auth::oidc::OidcConfig;
use crate::manage::{
    ApiError, ApiJson, ApiPath, ApiResult, Mgmt, owned_project, owns, policy_audit, project_name,
    propose, require_admin, unexpected,
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
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let name = owned_project(&app, &caller, &name).await?;
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
    ApiPath((name, provider, group)): ApiPath<(String, String, String)>,
    ApiJson(body): ApiJson<GroupRoleChange>,
) -> ApiResult<Response> {
    let role: ProjectRole = body.role.parse().map_err(ApiError::bad)?;
    group_change(app, caller, name, provider, group, Some(role)).await
}

/// `DELETE /api/v1/projects/{name}/groups/{provider}/{group}` (owners).
pub async fn remove_group(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath((name, provider, group)): ApiPath<(String, String, String)>,
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

/// Longest wait between forced key fetches an administrator may set, in seconds.
const JWKS_REFRESH_MIN_SECS_MAX: u64 = 86_400;

/// The OIDC provider in a `PUT /api/v1/identity-providers` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcChange {
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    #[serde(default = "default_jwks_refresh_min_secs")]
    pub jwks_refresh_min_secs: u64,
}

/// The LDAP provider in a `PUT /api/v1/identity-providers` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapChange {
    pub url: String,
    pub user_dn: String,
    pub group_base: String,
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    #[serde(default = "default_group_attribute")]
    pub group_attribute: String,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_username_claim() -> String {
    "sub".into()
}
fn default_jwks_refresh_min_secs() -> u64 {
    60
}
/// The group filter used when none is given.
pub const DEFAULT_GROUP_FILTER: &str = "(&(objectClass=groupOfNames)(member={dn}))";
fn default_group_filter() -> String {
    DEFAULT_GROUP_FILTER.into()
}
fn default_group_attribute() -> String {
    "cn".into()
}

/// A `PUT /api/v1/identity-providers` body: a provider left out stays as it is,
/// `null` turns it off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersChange {
    #[serde(default, deserialize_with = "present")]
    pub oidc: Option<Option<OidcChange>>,
    #[serde(default, deserialize_with = "present")]
    pub ldap: Option<Option<LdapChange>>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `GET /api/v1/identity-providers` (administrators): the OIDC issuer and its
/// claims, and the LDAP directory this node uses (each `null` when not configured),
/// each with its `source`: `cluster` (set through this API, or seeded by a node's
/// flags) or `flags` (this node's flags, while the cluster has no setting).
pub async fn identity_providers(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    providers_view(&app).await
}

/// `PUT /api/v1/identity-providers` (administrators): sets the cluster's identity
/// providers; every node uses them within seconds, without a restart.
pub async fn set_identity_providers(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiJson(body): ApiJson<ProvidersChange>,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let mut settings = Vec::new();
    if let Some(change) = body.oidc {
        let config = change.map(|o| OidcConfig {
            issuer: o.issuer,
            audience: o.audience,
            groups_claim: o.groups_claim,
            username_claim: o.username_claim,
            jwks_refresh_min: Duration::from_secs(o.jwks_refresh_min_secs),
        });
        if let Some(c) = &config {
            c.validate().map_err(ApiError::bad)?;
            if c.jwks_refresh_min.as_secs() > JWKS_REFRESH_MIN_SECS_MAX {
                return Err(ApiError::bad(format!(
                    "jwks_refresh_min_secs is at most {JWKS_REFRESH_MIN_SECS_MAX}"
                )));
            }
        }
        settings.push(ProviderSetting::Oidc(config.map(|c| c.record())));
    }
    if let Some(change) = body.ldap {
        let config = change.map(|l| LdapConfig {
            url: l.url,
            user_dn: l.user_dn,
            group_base: l.group_base,
            group_filter: l.group_filter,
            group_attribute: l.group_attribute,
        });
        if let Some(c) = &config {
            c.validate().map_err(ApiError::bad)?;
        }
        settings.push(ProviderSetting::Ldap(config.map(|c| c.record())));
    }
    if !settings.iter().all(ProviderSetting::fits) {
        return Err(ApiError::bad(format!(
            "every identity provider field is at most {PROVIDER_FIELD_BYTES_MAX} bytes"
        )));
    }
    for setting in settings {
        let what = match &setting {
            ProviderSetting::Oidc(Some(o)) => format!("set identity provider oidc to {}", o.issuer),
            ProviderSetting::Ldap(Some(l)) => format!("set identity provider ldap to {}", l.url),
            other => format!("turned identity provider {} off", other.provider()),
        };
        match propose(
            &app,
            TenancyCommand::SetIdentityProvider {
                setting,
                seed: false,
            },
        )
        .await?
        {
            TenancyOutcome::Done => policy_audit(&app, &caller, what, None),
            other => return Err(unexpected(other)),
        }
    }
    providers_view(&app).await
}

async fn providers_view(app: &AppState) -> ApiResult<Response> {
    let providers = app.auth.reload_providers(&app.meta).await?;
    let (oidc_set, ldap_set) = app
        .meta
        .read(|v| {
            Ok((
                v.identity_provider(IdentityProvider::Oidc)?.is_some(),
                v.identity_provider(IdentityProvider::Ldap)?.is_some(),
            ))
        })
        .await?;
    let source = |set: bool| if set { "cluster" } else { "flags" };
    let oidc = providers.oidc.as_ref().map(|o| {
        json!({
            "issuer": o.config.issuer,
            "audience": o.config.audience,
            "groups_claim": o.config.groups_claim,
            "username_claim": o.config.username_claim,
            "jwks_refresh_min_secs": o.config.jwks_refresh_min.as_secs(),
            "key_fetches": o.fetches(),
            "source": source(oidc_set),
        })
    });
    let ldap = providers.ldap.as_ref().map(|d| {
        json!({
            "url": d.config.url,
            "user_dn": d.config.user_dn,
            "group_base": d.config.group_base,
            "group_filter": d.config.group_filter,
            "group_attribute": d.config.group_attribute,
            "source": source(ldap_set),
        })
    });
    Ok(Json(json!({ "oidc": oidc, "ldap": ldap })).into_response())
}
