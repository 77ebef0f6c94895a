//! The tenancy part of the management API under `/api/v1/` (JSON; described by
//! `docs/openapi.yaml`): projects, project members, users, robot accounts and the
//! audit log. Callers authenticate with Basic credentials or a bearer token; system
//! administrators may do everything, project owners manage their project's members
//! and robots, every user may change their own password. Every change is audited.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_consensus::tenancy::{
    AuditOutcome, AuditRecord, ProjectName, ProjectRecord, ProjectRole, RobotActions, RobotGrant,
    RobotRecord, TenancyCommand, TenancyOutcome, TenancyRejection, UserRecord, valid_user_name,
};
use berth_consensus::{AuditQuery, CommandV1, ConsensusError, Outcome};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::App;
use crate::AppState;
use crate::auth::{AuthFailure, Caller, Principal, audit, client_addr, password};
use crate::uploads::now_ms;

/// Most audit entries one query returns.
pub const AUDIT_QUERY_ENTRIES_MAX: usize = 10_000;
/// Shortest password a user may set.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password or secret accepted.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// How often a project delete purges and retries while pushes refill the project.
pub const PROJECT_DELETE_ROUNDS_MAX: usize = 3;

/// An error of the management API: a status and a message, as `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            challenge: false,
        }
    }

    pub(crate) fn forbidden() -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "not allowed")
    }

    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"berth\""),
            );
        }
        resp
    }
}

impl From<ConsensusError> for ApiError {
    fn from(e: ConsensusError) -> ApiError {
        match e {
            ConsensusError::ShuttingDown
            | ConsensusError::Unavailable { .. }
            | ConsensusError::NotLeader { .. }
            | ConsensusError::CommitUnknown { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "metadata is temporarily unavailable, retry",
            ),
            other => {
                tracing::error!(error = %other, "management API");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<AuthFailure> for ApiError {
    fn from(f: AuthFailure) -> ApiError {
        match f {
            AuthFailure::BadCredentials => ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "invalid credentials".into(),
                challenge: true,
            },
            AuthFailure::Throttled { retry_after } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests; retry in {} s",
                    retry_after.as_secs().max(1)
                ),
            ),
            AuthFailure::Metadata(e) => e.into(),
            AuthFailure::ProviderUnavailable { provider } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the {provider} identity provider cannot be reached; retry later"),
            ),
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body. A body that is not the JSON the operation takes (also a
/// missing or wrong `Content-Type`) is a 400 `{"error": ...}` like every other
/// management API error, not the extractor's plain-text answer.
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::bad(rejection.body_text())),
        }
    }
}

/// Query parameters; malformed ones are a 400 `{"error": ...}`.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ApiQuery<T>, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::bad(rejection.body_text())),
        }
    }
}

/// Path parameters; ones that do not decode (not UTF-8) are a 400 `{"error": ...}`.
pub struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ApiPath<T>, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::bad(rejection.body_text())),
        }
    }
}

/// The authenticated caller of a management request. Anonymous callers are refused
/// in enforced mode (401 with a Basic challenge); in open mode everyone is an
/// administrator.
pub struct Mgmt(pub Caller);

impl FromRequestParts<Arc<App>> for Mgmt {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Mgmt, Response> {
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        if let Some(wait) = app.auth.limits.address(&client) {
            return Err(crate::auth::ratelimit::too_many(wait).into_response());
        }
        if app.auth.is_open() {
            return Ok(Mgmt(Caller::anonymous(client, true)));
        }
        let caller = app
            .auth
            .identify(&app.meta, &parts.headers, client)
            .await
            .map_err(|f| ApiError::from(f).into_response())?;
        if caller.is_anonymous() {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "authentication required".into(),
                challenge: true,
            }
            .into_response());
        }
        Ok(Mgmt(caller))
    }
}

/// Refuses callers that are not system administrators.
pub fn require_admin(caller: &Caller) -> ApiResult<()> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

pub(crate) async fn propose(app: &App, cmd: TenancyCommand) -> ApiResult<TenancyOutcome> {
    match app.meta.propose(CommandV1::Tenancy(cmd)).await? {
        Outcome::Tenancy(o) => Ok(o),
        other => Err(ApiError::from(ConsensusError::Malformed {
            table: if matches!(other, Outcome::NotFound) {
                "tenancy"
            } else {
                "outcome"
            },
        })),
    }
}

pub(crate) fn policy_audit(app: &App, caller: &Caller, what: String, project: Option<&str>) {
    app.auth.audit.record(audit::entry(
        caller.name(),
        &caller.client,
        "policy",
        &what,
        project,
        AuditOutcome::Success,
    ));
}

pub(crate) fn project_name(s: &str) -> ApiResult<ProjectName> {
    s.parse()
        .map_err(|e: berth_consensus::tenancy::TenancyNameError| ApiError::bad(e.to_string()))
}

/// The project named `raw` when the caller owns it (or is an administrator); a project
/// the caller does not own is answered as not found, so its existence stays hidden.
pub(crate) async fn owned_project(app: &App, caller: &Caller, raw: &str) -> ApiResult<ProjectName> {
    let name = project_name(raw)?;
    if !owns(app, caller, &name).await? {
        return Err(ApiError::not_found("project"));
    }
    Ok(name)
}

/// Whether the caller owns `project` (or is an administrator).
pub(crate) async fn owns(app: &App, caller: &Caller, project: &ProjectName) -> ApiResult<bool> {
    if caller.is_admin() {
        return Ok(true);
    }
    let p = project.clone();
    let role = match &caller.principal {
        Principal::User(u) => {
            let name = u.name.clone();
            app.meta.read(move |v| v.role(&p, &name)).await?
        }
        Principal::External(e) => {
            let e = e.clone();
            app.meta
                .read(move |v| v.group_role(&p, e.provider, &e.groups))
                .await?
        }
        Principal::Anonymous | Principal::Robot(_) => None,
    };
    Ok(role == Some(ProjectRole::Owner))
}

#[derive(Debug, Serialize)]
pub struct ProjectView {
    pub name: String,
    pub public: bool,
    pub created_at_ms: u64,
    pub created_by: String,
}

impl From<ProjectRecord> for ProjectView {
    fn from(p: ProjectRecord) -> ProjectView {
        ProjectView {
            name: p.name.as_str().to_owned(),
            public: p.public,
            created_at_ms: p.created_at_ms,
            created_by: p.created_by,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NewProject {
    pub name: String,
    #[serde(default)]
    pub public: bool,
}

/// `GET /api/v1/projects`: the projects the caller can see.
pub async fn list_projects(State(app): State<AppState>, Mgmt(caller): Mgmt) -> ApiResult<Response> {
    let projects = app
        .meta
        .read(move |v| {
            let mut out = Vec::new();
            for p in v.projects()? {
                let sees = caller.is_admin()
                    || p.public
                    || match &caller.principal {
                        Principal::User(u) => v.role(&p.name, &u.name)?.is_some(),
                        Principal::Robot(r) => r.grants.iter().any(|g| g.project == p.name),
                        Principal::External(e) => {
                            v.group_role(&p.name, e.provider, &e.groups)?.is_some()
                        }
                        Principal::Anonymous => false,
                    };
                if sees {
                    out.push(ProjectView::from(p));
                }
            }
            Ok(out)
        })
        .await?;
    Ok(Json(projects).into_response())
}

/// `POST /api/v1/projects` (administrators).
pub async fn create_project(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiJson(body): ApiJson<NewProject>,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let name = project_name(&body.name)?;
    let record = ProjectRecord {
        name: name.clone(),
        public: body.public,
        created_at_ms: now_ms(),
        created_by: caller.name().to_owned(),
    };
    match propose(&app, TenancyCommand::CreateProject(record.clone())).await? {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                format!("create project {name}"),
                Some(name.as_str()),
            );
            Ok((StatusCode::CREATED, Json(ProjectView::from(record))).into_response())
        }
        TenancyOutcome::Exists => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("project {name} exists"),
        )),
        other => Err(unexpected(other)),
    }
}

pub(crate) fn unexpected(o: TenancyOutcome) -> ApiError {
    tracing::error!(outcome = ?o, "unexpected tenancy outcome");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// `GET /api/v1/projects/{name}`.
pub async fn get_project(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let name = project_name(&name)?;
    let n = name.clone();
    let c = caller.clone();
    let found = app
        .meta
        .read(move |v| {
            let Some(p) = v.project(&n)? else {
                return Ok(None);
            };
            let sees = c.is_admin()
                || p.public
                || match &c.principal {
                    Principal::User(u) => v.role(&n, &u.name)?.is_some(),
                    Principal::Robot(r) => r.grants.iter().any(|g| g.project == n),
                    Principal::External(e) => v.group_role(&n, e.provider, &e.groups)?.is_some(),
                    Principal::Anonymous => false,
                };
            Ok(sees.then_some(p))
        })
        .await?;
    match found {
        Some(p) => Ok(Json(ProjectView::from(p)).into_response()),
        None => Err(ApiError::not_found("project")),
    }
}

#[derive(Debug, Deserialize)]
pub struct ProjectChange {
    pub public: bool,
}

/// `PATCH /api/v1/projects/{name}` (owners).
pub async fn update_project(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ProjectChange>,
) -> ApiResult<Response> {
    let name = owned_project(&app, &caller, &name).await?;
    match propose(
        &app,
        TenancyCommand::SetProjectPublic {
            name: name.clone(),
            public: body.public,
        },
    )
    .await?
    {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                format!("set project {name} public={}", body.public),
                Some(name.as_str()),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        TenancyOutcome::NotFound => Err(ApiError::not_found("project")),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /api/v1/projects/{name}` (administrators): deletes the project's
/// repositories (manifests, tags, blob links; the blobs go to the upkeep's
/// collection), then the project with its members and robots. Refused (409) if
/// pushes keep refilling it.
pub async fn delete_project(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let name = project_name(&name)?;
    let n = name.clone();
    if app.meta.read(move |v| v.project(&n)).await?.is_none() {
        return Err(ApiError::not_found("project"));
    }
    let mut outcome = TenancyOutcome::Rejected(TenancyRejection::ProjectNotEmpty);
    for _ in 0..PROJECT_DELETE_ROUNDS_MAX {
        let purged = crate::access::purge_project(&app, &name).await?;
        if purged > 0 {
            tracing::info!(project = %name, commands = purged, "purged the project's repositories");
        }
        outcome = propose(&app, TenancyCommand::DeleteProject { name: name.clone() }).await?;
        if outcome != TenancyOutcome::Rejected(TenancyRejection::ProjectNotEmpty) {
            break;
        }
    }
    match outcome {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                format!("delete project {name}"),
                Some(name.as_str()),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        TenancyOutcome::NotFound => Err(ApiError::not_found("project")),
        TenancyOutcome::Rejected(TenancyRejection::ProjectNotEmpty) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("project {name} keeps receiving pushes; retry the delete"),
        )),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Serialize)]
pub struct Member {
    pub user: String,
    pub role: ProjectRole,
}

/// `GET /api/v1/projects/{name}/members` (owners).
pub async fn list_members(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let name = owned_project(&app, &caller, &name).await?;
    let n = name.clone();
    let members = app.meta.read(move |v| v.members(&n)).await?;
    let out: Vec<Member> = members
        .into_iter()
        .map(|(user, role)| Member { user, role })
        .collect();
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
pub struct MemberChange {
    pub role: String,
}

/// `PUT /api/v1/projects/{name}/members/{user}` (owners).
pub async fn set_member(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath((name, user)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<MemberChange>,
) -> ApiResult<Response> {
    let role: ProjectRole = body.role.parse().map_err(ApiError::bad)?;
    member_change(app, caller, name, user, Some(role)).await
}

/// `DELETE /api/v1/projects/{name}/members/{user}` (owners).
pub async fn remove_member(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath((name, user)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    member_change(app, caller, name, user, None).await
}

async fn member_change(
    app: AppState,
    caller: Caller,
    name: String,
    user: String,
    role: Option<ProjectRole>,
) -> ApiResult<Response> {
    let name = owned_project(&app, &caller, &name).await?;
    match propose(
        &app,
        TenancyCommand::SetMember {
            project: name.clone(),
            user: user.clone(),
            role,
        },
    )
    .await?
    {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                format!("set member {user} of {name} to {role:?}"),
                Some(name.as_str()),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        TenancyOutcome::NotFound => Err(ApiError::not_found("member")),
        TenancyOutcome::Rejected(TenancyRejection::UserUnknown) => {
            Err(ApiError::bad(format!("user {user} does not exist")))
        }
        TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown) => {
            Err(ApiError::not_found("project"))
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Serialize)]
pub struct UserView {
    pub name: String,
    pub admin: bool,
    pub created_at_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub admin: bool,
}

fn check_password(p: &str) -> ApiResult<()> {
    if p.chars().count() < PASSWORD_CHARS_MIN || p.len() > PASSWORD_BYTES_MAX {
        return Err(ApiError::bad(format!(
            "a password has {PASSWORD_CHARS_MIN} to {PASSWORD_BYTES_MAX} characters"
        )));
    }
    Ok(())
}

pub(crate) async fn hash(secret: &str) -> ApiResult<String> {
    password::hash(secret).await.map_err(|e| {
        tracing::error!(error = %e, "hashing a password");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })
}

/// `GET /api/v1/users` (administrators).
pub async fn list_users(State(app): State<AppState>, Mgmt(caller): Mgmt) -> ApiResult<Response> {
    require_admin(&caller)?;
    let users = app.meta.read(|v| v.users()).await?;
    let out: Vec<UserView> = users
        .into_iter()
        .map(|u| UserView {
            name: u.name,
            admin: u.admin,
            created_at_ms: u.created_at_ms,
        })
        .collect();
    Ok(Json(out).into_response())
}

/// `POST /api/v1/users` (administrators).
pub async fn create_user(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiJson(body): ApiJson<NewUser>,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    if !valid_user_name(&body.name) {
        return Err(ApiError::bad(
            berth_consensus::tenancy::TenancyNameError::Account.to_string(),
        ));
    }
    check_password(&body.password)?;
    let record = UserRecord {
        name: body.name.clone(),
        password_hash: hash(&body.password).await?,
        admin: body.admin,
        created_at_ms: now_ms(),
    };
    match propose(&app, TenancyCommand::CreateUser(record.clone())).await? {
        TenancyOutcome::Done => {
            policy_audit(&app, &caller, format!("create user {}", body.name), None);
            Ok((
                StatusCode::CREATED,
                Json(UserView {
                    name: record.name,
                    admin: record.admin,
                    created_at_ms: record.created_at_ms,
                }),
            )
                .into_response())
        }
        TenancyOutcome::Exists => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("user {} exists", body.name),
        )),
        other => Err(unexpected(other)),
    }
}

/// `DELETE /api/v1/users/{name}` (administrators).
pub async fn delete_user(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    if caller.name() == name {
        return Err(ApiError::bad("an administrator cannot delete itself"));
    }
    match propose(&app, TenancyCommand::DeleteUser { name: name.clone() }).await? {
        TenancyOutcome::Done => {
            policy_audit(&app, &caller, format!("delete user {name}"), None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        TenancyOutcome::NotFound => Err(ApiError::not_found("user")),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
pub struct PasswordChange {
    pub password: String,
}

/// `PUT /api/v1/users/{name}/password` (the user itself or an administrator).
pub async fn set_password(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PasswordChange>,
) -> ApiResult<Response> {
    let own = matches!(&caller.principal, Principal::User(u) if u.name == name);
    if !own && !caller.is_admin() {
        return Err(ApiError::forbidden());
    }
    check_password(&body.password)?;
    let password_hash = hash(&body.password).await?;
    match propose(
        &app,
        TenancyCommand::SetPassword {
            name: name.clone(),
            password_hash,
        },
    )
    .await?
    {
        TenancyOutcome::Done => {
            policy_audit(&app, &caller, format!("set password of {name}"), None);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        TenancyOutcome::NotFound => Err(ApiError::not_found("user")),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
pub struct NewGrant {
    /// Defaults to the robot's project.
    pub project: Option<String>,
    /// `*` (default), `app`, or `app/*`.
    #[serde(default = "all_repositories")]
    pub repositories: String,
    pub actions: Vec<String>,
}

fn all_repositories() -> String {
    "*".into()
}

#[derive(Debug, Deserialize)]
pub struct NewRobot {
    pub name: String,
    /// The owning project; none for a system robot (administrators only).
    pub project: Option<String>,
    pub grants: Vec<NewGrant>,
    /// Seconds until the robot expires; none for no expiry.
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct GrantView {
    pub project: String,
    pub repositories: String,
    pub actions: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct RobotView {
    pub name: String,
    pub project: Option<String>,
    pub grants: Vec<GrantView>,
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
    pub created_by: String,
    /// Only in the answer that creates the robot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&RobotRecord> for RobotView {
    fn from(r: &RobotRecord) -> RobotView {
        RobotView {
            name: r.name.clone(),
            project: r.project.as_ref().map(|p| p.as_str().to_owned()),
            grants: r
                .grants
                .iter()
                .map(|g| GrantView {
                    project: g.project.as_str().to_owned(),
                    repositories: g.repositories.clone(),
                    actions: crate::auth::policy::Actions::of_robot(g.actions).scope_list(),
                })
                .collect(),
            expires_at_ms: r.expires_at_ms,
            created_at_ms: r.created_at_ms,
            created_by: r.created_by.clone(),
            secret: None,
        }
    }
}

pub(crate) fn valid_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let path = p.strip_suffix("/*").unwrap_or(p);
    !path.is_empty() && format!("x/{path}").parse::<berth_types::RepoName>().is_ok()
}

/// `POST /api/v1/robots`: a project robot (project owners) or a system robot
/// (administrators). The answer carries the secret, once.
pub async fn create_robot(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiJson(body): ApiJson<NewRobot>,
) -> ApiResult<Response> {
    let short_ok = !body.name.is_empty()
        && body.name.len() <= 64
        && body.name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if !short_ok {
        return Err(ApiError::bad(
            "a robot name is 1 to 64 characters of a-z, 0-9, - _ .",
        ));
    }
    let project = body.project.as_deref().map(project_name).transpose()?;
    match &project {
        Some(p) => {
            if !owns(&app, &caller, p).await? {
                return Err(ApiError::forbidden());
            }
        }
        None => require_admin(&caller)?,
    }
    if body.grants.is_empty() {
        return Err(ApiError::bad("a robot needs at least one grant"));
    }
    let mut grants = Vec::new();
    for g in &body.grants {
        let gp = match (&g.project, &project) {
            (Some(s), _) => project_name(s)?,
            (None, Some(p)) => p.clone(),
            (None, None) => return Err(ApiError::bad("a system robot's grant names its project")),
        };
        if !valid_pattern(&g.repositories) {
            return Err(ApiError::bad(format!(
                "repository pattern {:?} is not *, NAME or NAME/*",
                g.repositories
            )));
        }
        let mut actions = RobotActions::default();
        for a in &g.actions {
            match a.as_str() {
                "pull" => actions.pull = true,
                "push" => actions.push = true,
                "delete" => actions.delete = true,
                other => return Err(ApiError::bad(format!("unknown action {other:?}"))),
            }
        }
        grants.push(RobotGrant {
            project: gp,
            repositories: g.repositories.clone(),
            actions,
        });
    }
    let name = match &project {
        Some(p) => format!("robot${p}+{}", body.name),
        None => format!("robot${}", body.name),
    };
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let now = now_ms();
    let record = RobotRecord {
        name: name.clone(),
        project: project.clone(),
        secret_hash: hash(&secret).await?,
        grants,
        expires_at_ms: body
            .expires_in_secs
            .map(|s| now.saturating_add(s.saturating_mul(1000))),
        created_at_ms: now,
        created_by: caller.name().to_owned(),
    };
    match propose(&app, TenancyCommand::CreateRobot(record.clone())).await? {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                format!("create robot {name}"),
                project.as_ref().map(|p| p.as_str()),
            );
            let mut view = RobotView::from(&record);
            view.secret = Some(secret);
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        TenancyOutcome::Exists => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("robot {name} exists"),
        )),
        TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown) => {
            Err(ApiError::bad("a grant names a project that does not exist"))
        }
        TenancyOutcome::Rejected(TenancyRejection::GrantOutsideProject) => Err(ApiError::bad(
            "a project robot's grants stay inside its project",
        )),
        TenancyOutcome::Rejected(TenancyRejection::TooLarge) => {
            Err(ApiError::bad("too many grants"))
        }
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
pub struct RobotFilter {
    pub project: Option<String>,
}

/// `GET /api/v1/robots?project=`: every robot (administrators) or a project's
/// robots (its owners).
pub async fn list_robots(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiQuery(filter): ApiQuery<RobotFilter>,
) -> ApiResult<Response> {
    let project = filter.project.as_deref().map(project_name).transpose()?;
    match &project {
        Some(p) => {
            if !owns(&app, &caller, p).await? {
                return Err(ApiError::forbidden());
            }
        }
        None => require_admin(&caller)?,
    }
    let robots = app.meta.read(move |v| v.robots(project.as_ref())).await?;
    let out: Vec<RobotView> = robots.iter().map(RobotView::from).collect();
    Ok(Json(out).into_response())
}

/// `DELETE /api/v1/robots/{name}` (administrators, or owners of the robot's project).
pub async fn delete_robot(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let n = name.clone();
    let robot = app.meta.read(move |v| v.robot(&n)).await?;
    let Some(robot) = robot else {
        return Err(ApiError::not_found("robot"));
    };
    let allowed = match &robot.project {
        Some(p) => owns(&app, &caller, p).await?,
        None => caller.is_admin(),
    };
    if !allowed {
        return Err(ApiError::not_found("robot"));
    }
    match propose(&app, TenancyCommand::DeleteRobot { name: name.clone() }).await? {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                format!("delete robot {name}"),
                robot.project.as_ref().map(|p| p.as_str()),
            );
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        TenancyOutcome::NotFound => Err(ApiError::not_found("robot")),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Deserialize)]
pub struct AuditParams {
    /// Milliseconds since the epoch, inclusive.
    pub since: Option<u64>,
    /// Milliseconds since the epoch, exclusive.
    pub until: Option<u64>,
    pub identity: Option<String>,
    pub project: Option<String>,
    pub action: Option<String>,
    /// `jsonl` (default) or `csv`.
    pub format: Option<String>,
    pub limit: Option<usize>,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn outcome_word(o: AuditOutcome) -> &'static str {
    match o {
        AuditOutcome::Success => "success",
        AuditOutcome::Denied => "denied",
        AuditOutcome::Failure => "failure",
    }
}

/// Renders entries as CSV with a header line.
pub fn audit_csv(entries: &[AuditRecord]) -> String {
    let mut out = String::from("time_ms,identity,client,action,resource,project,outcome,count\n");
    for e in entries {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            e.at_ms,
            csv_field(&e.identity),
            csv_field(&e.client),
            csv_field(&e.action),
            csv_field(&e.resource),
            csv_field(e.project.as_deref().unwrap_or("")),
            outcome_word(e.outcome),
            e.count
        ));
    }
    out
}

/// `GET /api/v1/audit` (administrators): JSON lines, or CSV with `format=csv`.
pub async fn audit_log(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let csv = match p.format.as_deref() {
        None | Some("jsonl") | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::bad(format!("unknown format {other:?}"))),
    };
    let q = AuditQuery {
        since_ms: p.since,
        until_ms: p.until,
        identity: p.identity,
        project: p.project,
        action: p.action,
        limit: p
            .limit
            .unwrap_or(AUDIT_QUERY_ENTRIES_MAX)
            .min(AUDIT_QUERY_ENTRIES_MAX),
    };
    let entries = app.meta.read(move |v| v.audit(&q)).await?;
    let (body, content_type) = if csv {
        (audit_csv(&entries), "text/csv")
    } else {
        let mut s = String::new();
        for e in &entries {
            let line = json!({
                "time_ms": e.at_ms,
                "time": crate::auth::token::iso8601(e.at_ms / 1000),
                "identity": e.identity,
                "client": e.client,
                "action": e.action,
                "resource": e.resource,
                "project": e.project,
                "outcome": outcome_word(e.outcome),
                "count": e.count,
            });
            s.push_str(&line.to_string());
            s.push('\n');
        }
        (s, "application/x-ndjson")
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Refuses non-administrators on the cluster endpoints in enforced mode (they admit
/// nodes to the cluster).
pub async fn admin_only(
    State(app): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if app.auth.is_open() {
        return next.run(req).await;
    }
    let client = client_addr(&req);
    let caller = match app.auth.identify(&app.meta, req.headers(), client).await {
        Ok(c) => c,
        Err(f) => return ApiError::from(f).into_response(),
    };
    if caller.is_anonymous() {
        return ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "authentication required".into(),
            challenge: true,
        }
        .into_response();
    }
    if !caller.is_admin() {
        return ApiError::forbidden().into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let e = audit::entry("a,b", "c", "push", "x\"y", None, AuditOutcome::Success);
        let csv = audit_csv(&[e]);
        let line = csv.lines().nth(1).unwrap();
        assert!(
            line.ends_with(",\"a,b\",c,push,\"x\"\"y\",,success,1"),
            "{line}"
        );
        assert!(valid_pattern("*"));
        assert!(valid_pattern("app/*"));
        assert!(valid_pattern("app/sub"));
        assert!(!valid_pattern("App"));
        assert!(!valid_pattern("/*"));
    }
}
