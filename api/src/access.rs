//! The access part of the management API under `/api/v1/`: one-time tokens for a
//! single CI push (project maintainers), robot secret rotation (the robot's project
//! owners), signing-key rotation (administrators), project request limits
//! (administrators set them, owners read them), project erasure-coding profiles
//! (likewise), and the purge of a project's
//! repositories before the project is deleted. Described by `docs/openapi.yaml`;
//! every change is audited.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_consensus::tenancy::{
    ONE_TIME_PREFIX, OneTimeTokenRecord, PROJECT_BURST_MAX, PROJECT_RPS_MAX, ProjectLimits,
    ProjectName, ProjectRole, RobotActions, TenancyCommand, TenancyOutcome, TenancyRejection,
};
use berth_types::EcProfile;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Principal;
use crate::auth::policy::Actions;
use crate::manage::{
    ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, Mgmt, hash, owned_project, owns, policy_audit,
    project_name, propose, require_admin, unexpected, valid_pattern,
};
use crate::uploads::now_ms;
use crate::{App, AppState};

/// Lifetime of a one-time token when the request names none.
pub const ONE_TIME_TTL_DEFAULT: Duration = Duration::from_secs(600);
/// Longest lifetime of a one-time token.
pub const ONE_TIME_TTL_MAX: Duration = Duration::from_secs(86_400);
/// How long the keys in force keep verifying after a rotation, when the request
/// names no overlap.
pub const KEY_OVERLAP_DEFAULT: Duration = Duration::from_secs(3_600);
/// Longest overlap of a rotation.
pub const KEY_OVERLAP_MAX: Duration = Duration::from_secs(30 * 86_400);

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/projects/{name}/one-time-tokens",
            get(list_one_time_tokens).post(create_one_time_token),
        )
        .route("/api/v1/robots/{name}/secret", post(rotate_robot_secret))
        .route(
            "/api/v1/projects/{name}/limits",
            get(get_project_limits).put(set_project_limits),
        )
        .route(
            "/api/v1/projects/{name}/profile",
            get(get_project_profile).put(set_project_profile),
        )
        .route("/api/v1/system/signing-keys", get(list_signing_keys))
        .route(
            "/api/v1/system/signing-keys/rotate",
            post(rotate_signing_key),
        )
}

/// A JSON body that may be empty (then `T::default()`).
fn optional_json<T: Default + serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// A project's request limit as the API shows and takes it; `requests_per_second`
/// null: unlimited; `burst` null: one second's worth.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectLimitsView {
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    #[serde(default)]
    pub burst: Option<u32>,
}

impl From<Option<ProjectLimits>> for ProjectLimitsView {
    fn from(l: Option<ProjectLimits>) -> ProjectLimitsView {
        ProjectLimitsView {
            requests_per_second: l.map(|l| l.requests_per_second),
            burst: l.and_then(|l| l.burst),
        }
    }
}

/// One setting of a project the caller owns (or administers), read by `read` in the
/// same read as the project's existence: 404 without the project.
async fn project_setting<T, F>(
    app: &AppState,
    caller: &crate::auth::Caller,
    name: &str,
    read: F,
) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(
            &berth_consensus::StateView,
            &ProjectName,
        ) -> Result<T, berth_consensus::ConsensusError>
        + Send
        + 'static,
{
    let name = owned_project(app, caller, name).await?;
    let found = app
        .meta
        .read(move |v| {
            Ok(match v.project(&name)? {
                Some(_) => Some(read(v, &name)?),
                None => None,
            })
        })
        .await?;
    found.ok_or_else(|| ApiError::not_found("project"))
}

/// `GET /api/v1/projects/{name}/limits` (administrators and the project's owners).
pub async fn get_project_limits(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let limits = project_setting(&app, &caller, &name, |v, n| v.project_limits(n)).await?;
    Ok(Json(ProjectLimitsView::from(limits)).into_response())
}

/// `PUT /api/v1/projects/{name}/limits` (administrators): sets or (with
/// `requests_per_second` null) removes the project's request limit. This node uses
/// it at once, every other node within [`PROJECT_LIMITS_REFRESH`].
///
/// [`PROJECT_LIMITS_REFRESH`]: crate::auth::ratelimit::PROJECT_LIMITS_REFRESH
pub async fn set_project_limits(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ProjectLimitsView>,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let name = project_name(&name)?;
    let limits = match (body.requests_per_second, body.burst) {
        (None, None) => None,
        (None, Some(_)) => return Err(ApiError::bad("burst needs requests_per_second")),
        (Some(rps), burst) => {
            let l = ProjectLimits {
                requests_per_second: rps,
                burst,
            };
            if !l.valid() {
                return Err(ApiError::bad(format!(
                    "requests_per_second must be 1 to {PROJECT_RPS_MAX} and burst 1 to \
                     {PROJECT_BURST_MAX}"
                )));
            }
            Some(l)
        }
    };
    let cmd = TenancyCommand::SetProjectLimits {
        project: name.clone(),
        limits,
    };
    propose_project_setting(&app, cmd, "limit").await?;
    app.auth.projects.invalidate();
    let what = match limits {
        Some(l) => format!(
            "set project {name} limit {} rps burst {}",
            l.requests_per_second,
            l.bucket()
        ),
        None => format!("remove project {name} limit"),
    };
    policy_audit(&app, &caller, what, Some(name.as_str()));
    Ok(Json(ProjectLimitsView::from(limits)).into_response())
}

/// Proposes a per-project setting: `Ok` once applied, 404 without the project, 400
/// when the state machine finds `what` out of range.
async fn propose_project_setting(app: &AppState, cmd: TenancyCommand, what: &str) -> ApiResult<()> {
    match propose(app, cmd).await? {
        TenancyOutcome::Done => Ok(()),
        TenancyOutcome::NotFound => Err(ApiError::not_found("project")),
        TenancyOutcome::Rejected(TenancyRejection::TooLarge) => {
            Err(ApiError::bad(format!("{what} out of range")))
        }
        other => Err(unexpected(other)),
    }
}

/// A project's erasure-coding profile as the API shows and takes it: `"K+M"`, or
/// null for the cluster's default.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectProfileView {
    #[serde(default)]
    pub profile: Option<String>,
}

impl From<Option<EcProfile>> for ProjectProfileView {
    fn from(p: Option<EcProfile>) -> ProjectProfileView {
        ProjectProfileView {
            profile: p.map(|p| p.to_string()),
        }
    }
}

/// `GET /api/v1/projects/{name}/profile` (administrators and the project's owners).
pub async fn get_project_profile(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let profile = project_setting(&app, &caller, &name, |v, n| v.project_profile(n)).await?;
    Ok(Json(ProjectProfileView::from(profile)).into_response())
}

/// `PUT /api/v1/projects/{name}/profile` (administrators): the erasure-coding profile
/// of the project's new blobs, or (null) the cluster's default. Refused when the
/// members (or, alone, the disks) reachable now cannot hold it. Stored blobs keep
/// the profile their layout records.
pub async fn set_project_profile(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ProjectProfileView>,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let name = project_name(&name)?;
    let profile = match body.profile.as_deref() {
        None => None,
        Some(text) => {
            let p: EcProfile = text
                .parse()
                .map_err(|e| ApiError::bad(format!("profile {text:?}: {e}")))?;
            if let Some(why) = app.uploads.placer.cannot_hold(p).await {
                return Err(ApiError::bad(format!(
                    "profile {p} cannot be placed: {why}"
                )));
            }
            Some(p)
        }
    };
    let cmd = TenancyCommand::SetProjectProfile {
        project: name.clone(),
        profile,
    };
    propose_project_setting(&app, cmd, "profile").await?;
    let what = match profile {
        Some(p) => format!("set project {name} profile {p}"),
        None => format!("set project {name} profile to the cluster default"),
    };
    policy_audit(&app, &caller, what, Some(name.as_str()));
    Ok(Json(ProjectProfileView::from(profile)).into_response())
}

/// Whether the caller is an administrator or a Maintainer (or Owner) of `project`.
async fn maintains(
    app: &App,
    caller: &crate::auth::Caller,
    project: &ProjectName,
) -> ApiResult<bool> {
    if caller.is_admin() {
        return Ok(true);
    }
    let Principal::User(u) = &caller.principal else {
        return Ok(false);
    };
    let (p, name) = (project.clone(), u.name.clone());
    let role = app.meta.read(move |v| v.role(&p, &name)).await?;
    Ok(role.is_some_and(|r| r >= ProjectRole::Maintainer))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOneTimeToken {
    /// `*`, `NAME` or `NAME/*` below the project; default `*`.
    pub repositories: Option<String>,
    /// `pull` and/or `push`; default both.
    pub actions: Option<Vec<String>>,
    /// Seconds until the token can no longer be redeemed; default 600.
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct OneTimeTokenView {
    pub name: String,
    pub project: String,
    pub repositories: String,
    pub actions: Vec<&'static str>,
    pub expires_at_ms: u64,
    pub created_at_ms: u64,
    pub created_by: String,
    pub redeemed_at_ms: Option<u64>,
    /// Only in the answer that creates the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&OneTimeTokenRecord> for OneTimeTokenView {
    fn from(t: &OneTimeTokenRecord) -> OneTimeTokenView {
        OneTimeTokenView {
            name: t.name.clone(),
            project: t.project.as_str().to_owned(),
            repositories: t.repositories.clone(),
            actions: Actions::of_robot(t.actions).scope_list(),
            expires_at_ms: t.expires_at_ms,
            created_at_ms: t.created_at_ms,
            created_by: t.created_by.clone(),
            redeemed_at_ms: t.redeemed_at_ms,
            secret: None,
        }
    }
}

/// `POST /api/v1/projects/{name}/one-time-tokens` (administrators and the
/// project's maintainers): a token for one CI push; the answer carries its name and
/// secret, once. The secret is exchanged at `/token` exactly once.
pub async fn create_one_time_token(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let project = project_name(&name)?;
    let body: NewOneTimeToken = optional_json(&body)?;
    if !maintains(&app, &caller, &project).await? {
        return Err(ApiError::forbidden());
    }
    let repositories = body.repositories.unwrap_or_else(|| "*".into());
    if !valid_pattern(&repositories) {
        return Err(ApiError::bad(format!(
            "repository pattern {repositories:?} is not *, NAME or NAME/*"
        )));
    }
    let mut actions = RobotActions::default();
    for a in body
        .actions
        .unwrap_or_else(|| vec!["pull".into(), "push".into()])
    {
        match a.as_str() {
            "pull" => actions.pull = true,
            "push" => actions.push = true,
            other => {
                return Err(ApiError::bad(format!(
                    "unknown action {other:?}: a one-time token may pull and push"
                )));
            }
        }
    }
    if !actions.pull && !actions.push {
        return Err(ApiError::bad("a one-time token needs pull or push"));
    }
    let ttl = body
        .expires_in_secs
        .map_or(ONE_TIME_TTL_DEFAULT, Duration::from_secs);
    if ttl.is_zero() || ttl > ONE_TIME_TTL_MAX {
        return Err(ApiError::bad(format!(
            "expires_in_secs is 1 to {}",
            ONE_TIME_TTL_MAX.as_secs()
        )));
    }
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let now = now_ms();
    let record = OneTimeTokenRecord {
        name: format!(
            "{ONE_TIME_PREFIX}{project}+{}",
            hex::encode(rand::random::<[u8; 8]>())
        ),
        project: project.clone(),
        repositories,
        actions,
        secret_hash: hash(&secret).await?,
        expires_at_ms: now.saturating_add(ttl.as_millis() as u64),
        created_at_ms: now,
        created_by: caller.name().to_owned(),
        redeemed_at_ms: None,
    };
    match propose(&app, TenancyCommand::CreateOneTimeToken(record.clone())).await? {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                format!("create one-time token {}", record.name),
                Some(project.as_str()),
            );
            let mut view = OneTimeTokenView::from(&record);
            view.secret = Some(secret);
            Ok((StatusCode::CREATED, Json(view)).into_response())
        }
        TenancyOutcome::Rejected(TenancyRejection::ProjectUnknown) => {
            Err(ApiError::not_found("project"))
        }
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/projects/{name}/one-time-tokens` (administrators and the project's
/// maintainers): the project's one-time tokens, redeemed or not, without secrets.
pub async fn list_one_time_tokens(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    let project = project_name(&name)?;
    if !maintains(&app, &caller, &project).await? {
        return Err(ApiError::forbidden());
    }
    let tokens = app.meta.read(move |v| v.one_time_tokens(&project)).await?;
    let out: Vec<OneTimeTokenView> = tokens.iter().map(OneTimeTokenView::from).collect();
    Ok(Json(out).into_response())
}

/// Longest grace period of a rotated robot secret.
pub const ROBOT_SECRET_GRACE_SECS_MAX: u64 = 7 * 86_400;

/// The query of a robot secret rotation.
#[derive(Debug, Deserialize)]
pub struct RotateSecretQuery {
    /// Seconds the previous secret keeps working; none: it stops at once.
    pub grace_secs: Option<u64>,
}

/// `POST /api/v1/robots/{name}/secret[?grace_secs=N]` (administrators, or owners of
/// the robot's project): a new secret, returned once; the old one stops working at
/// once, or after `grace_secs`.
pub async fn rotate_robot_secret(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<RotateSecretQuery>,
) -> ApiResult<Response> {
    if let Some(g) = query.grace_secs
        && !(1..=ROBOT_SECRET_GRACE_SECS_MAX).contains(&g)
    {
        return Err(ApiError::bad(format!(
            "grace_secs is 1 to {ROBOT_SECRET_GRACE_SECS_MAX}"
        )));
    }
    let n = name.clone();
    let Some(robot) = app.meta.read(move |v| v.robot(&n)).await? else {
        return Err(ApiError::not_found("robot"));
    };
    let allowed = match &robot.project {
        Some(p) => owns(&app, &caller, p).await?,
        None => caller.is_admin(),
    };
    if !allowed {
        return Err(ApiError::not_found("robot"));
    }
    let secret = hex::encode(rand::random::<[u8; 24]>());
    let secret_hash = hash(&secret).await?;
    let grace_until_ms = query
        .grace_secs
        .map(|g| now_ms().saturating_add(g.saturating_mul(1000)));
    let cmd = match grace_until_ms {
        Some(previous_until_ms) => TenancyCommand::SetRobotSecretWithGrace {
            name: name.clone(),
            secret_hash,
            previous_until_ms,
        },
        None => TenancyCommand::SetRobotSecret {
            name: name.clone(),
            secret_hash,
        },
    };
    match propose(&app, cmd).await? {
        TenancyOutcome::Done => {
            policy_audit(
                &app,
                &caller,
                match query.grace_secs {
                    Some(g) => format!("rotate robot secret {name} (previous valid {g} s)"),
                    None => format!("rotate robot secret {name}"),
                },
                robot.project.as_ref().map(|p| p.as_str()),
            );
            Ok(Json(json!({
                "name": name,
                "secret": secret,
                "previous_valid_until_ms": grace_until_ms,
            }))
            .into_response())
        }
        TenancyOutcome::NotFound => Err(ApiError::not_found("robot")),
        other => Err(unexpected(other)),
    }
}

#[derive(Debug, Serialize)]
pub struct SigningKeyView {
    pub kid: String,
    pub created_at_ms: u64,
    /// When tokens it signed stop verifying; none for the key that signs.
    pub retires_at_ms: Option<u64>,
}

/// The token signing keys with their retirement instants, as the API shows them.
async fn signing_key_views(app: &AppState) -> ApiResult<Vec<SigningKeyView>> {
    let keys = app.meta.read(|v| v.signing_keys_with_retirement()).await?;
    Ok(keys
        .into_iter()
        .map(|(k, retires_at_ms)| SigningKeyView {
            kid: k.kid,
            created_at_ms: k.created_at_ms,
            retires_at_ms,
        })
        .collect())
}

/// `GET /api/v1/system/signing-keys` (administrators): the token signing keys.
pub async fn list_signing_keys(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    Ok(Json(signing_key_views(&app).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Seconds the keys in force until now keep verifying; default 3600.
    pub overlap_secs: Option<u64>,
}

/// `POST /api/v1/system/signing-keys/rotate` (administrators): a new key signs every
/// token from now on; tokens signed by the keys before it verify until the overlap
/// ends and are refused after.
pub async fn rotate_signing_key(
    State(app): State<AppState>,
    Mgmt(caller): Mgmt,
    body: Bytes,
) -> ApiResult<Response> {
    require_admin(&caller)?;
    let body: Rotation = optional_json(&body)?;
    let overlap = body
        .overlap_secs
        .map_or(KEY_OVERLAP_DEFAULT, Duration::from_secs);
    if overlap > KEY_OVERLAP_MAX {
        return Err(ApiError::bad(format!(
            "overlap_secs is at most {}",
            KEY_OVERLAP_MAX.as_secs()
        )));
    }
    let kid = app.auth.rotate_keys(&app.meta, overlap).await?;
    policy_audit(&app, &caller, format!("rotate signing key to {kid}"), None);
    let keys = signing_key_views(&app).await?;
    Ok(Json(json!({ "kid": kid, "keys": keys })).into_response())
}

/// The identity the periodic rotation is audited as (local names cannot hold `:`).
pub const KEY_ROTATION_IDENTITY: &str = "berth:upkeep";
/// Longest pause between two checks of the periodic key rotation.
pub const KEY_ROTATION_CHECK_MAX: Duration = Duration::from_secs(60);
/// Shortest pause between two checks of the periodic key rotation.
pub const KEY_ROTATION_CHECK_MIN: Duration = Duration::from_secs(1);

/// The periodic signing-key rotation (`AuthConfig::key_rotation`): on the leader
/// only, a check every tenth of the period (1 s to 1 min) rotates the key once it is
/// a period old. The previous keys verify for one refresh-token lifetime more, so
/// every token issued before the rotation, refresh tokens too, lives out its life.
/// Runs until the shutdown signal.
pub async fn rotate_keys_periodically(app: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(period) = app.auth.config.key_rotation else {
        return;
    };
    let overlap = app.auth.config.refresh_ttl;
    let pause = (period / 10).clamp(KEY_ROTATION_CHECK_MIN, KEY_ROTATION_CHECK_MAX);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(pause) => {}
        }
        if *stop.borrow() {
            return;
        }
        if !app.meta.status().is_leader {
            continue;
        }
        match app
            .auth
            .rotate_keys_if_due(&app.meta, period, overlap)
            .await
        {
            Ok(Some(kid)) => {
                tracing::info!(%kid, "rotated the token signing key on its period");
                app.auth.audit.record(crate::auth::audit::entry(
                    KEY_ROTATION_IDENTITY,
                    "-",
                    "policy",
                    &format!("rotate signing key to {kid} (period)"),
                    None,
                    berth_consensus::tenancy::AuditOutcome::Success,
                ));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "periodic signing key rotation"),
        }
    }
}

/// Items (repositories, manifests, tags or links) read per batch while purging.
const PURGE_BATCH_ENTRIES_MAX: usize = 500;
/// Most commands one project purge proposes (bounded work per request).
const PURGE_COMMANDS_MAX: usize = 200_000;

/// Deletes every repository of `project` through Raft: its manifests (with their
/// tags and referrer entries), remaining tags and blob links, a batch at a time.
/// The blobs stay for the upkeep pass, which collects those no repository links.
/// Returns how many commands it proposed.
pub(crate) async fn purge_project(app: &App, project: &ProjectName) -> ApiResult<usize> {
    use berth_consensus::CommandV1;
    let mut proposed = 0usize;
    loop {
        let p = project.clone();
        let repos = app
            .meta
            .read(move |v| v.project_repositories(&p, PURGE_BATCH_ENTRIES_MAX))
            .await?;
        if repos.is_empty() {
            return Ok(proposed);
        }
        for repo in repos {
            loop {
                let r = repo.clone();
                let (manifests, tags, links) = app
                    .meta
                    .read(move |v| {
                        Ok((
                            v.repository_manifests(&r, PURGE_BATCH_ENTRIES_MAX)?,
                            v.repository_tags(&r, PURGE_BATCH_ENTRIES_MAX)?,
                            v.repository_links(&r, PURGE_BATCH_ENTRIES_MAX)?,
                        ))
                    })
                    .await?;
                if manifests.is_empty() && tags.is_empty() && links.is_empty() {
                    break;
                }
                let commands = manifests
                    .into_iter()
                    .map(|digest| CommandV1::DeleteManifest {
                        repo: repo.clone(),
                        digest,
                    })
                    .chain(tags.into_iter().map(|tag| CommandV1::DeleteTag {
                        repo: repo.clone(),
                        tag,
                    }))
                    .chain(links.into_iter().map(|digest| CommandV1::UnlinkBlob {
                        repo: repo.clone(),
                        digest,
                    }));
                for cmd in commands {
                    if proposed >= PURGE_COMMANDS_MAX {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            format!(
                                "project {project} is still being purged; repeat the delete to continue"
                            ),
                        ));
                    }
                    // NotFound (a concurrent delete got there first) is as good as done.
                    app.meta.propose(cmd).await?;
                    proposed += 1;
                }
            }
        }
    }
}
