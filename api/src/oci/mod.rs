//! The OCI Distribution API (`/v2/`): one catch-all route whose path is parsed into an
//! [`Endpoint`], then dispatched by method to the blob, upload, manifest and listing
//! handlers.

pub mod endpoint;
pub mod error;
mod handlers;
pub mod ranges;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};

use berth_consensus::tenancy::AuditOutcome;
use berth_types::{Reference, RepoName};

use crate::AppState;
use crate::auth::policy::{self, Actions, Decision};
use crate::auth::{self, Caller, audit};
use endpoint::Endpoint;
use error::{Code, OciError};

/// The route label a response was produced by, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// Entry point for every request under `/v2`.
pub async fn dispatch(State(app): State<AppState>, mut req: Request<Body>) -> Response {
    let path = req.uri().path();
    let rest = path
        .strip_prefix("/v2/")
        .or_else(|| (path == "/v2").then_some(""))
        .unwrap_or(path);
    let (route, result) = match Endpoint::parse(rest) {
        Ok(Endpoint::Upload(_, id)) if id.owner() != app.node => {
            let proxy = app.proxy.clone();
            ("upload", proxy.forward(&app, id, req).await)
        }
        Ok(endpoint) => {
            let route = endpoint.route();
            let method = req.method().clone();
            match authorize(&app, &endpoint, &mut req).await {
                Ok(caller) => {
                    // Held until the handler answers (a streamed body may still flow).
                    let _slot = match admit(&app, &caller) {
                        Ok(slot) => slot,
                        Err(e) => return finish("throttled", Err(e)),
                    };
                    let result = handlers::handle(app.clone(), endpoint.clone(), req).await;
                    audit_request(&app, &caller, &endpoint, &method, &result);
                    (route, result)
                }
                Err(e) => (route, Err(e)),
            }
        }
        Err(e) => ("invalid", Err(e)),
    };
    finish(route, result)
}

/// Takes a slot of the caller's address and identity under the concurrency limit.
fn admit(
    app: &AppState,
    caller: &Caller,
) -> Result<Option<auth::ratelimit::ConcurrencyGuard>, OciError> {
    let Some(c) = &app.auth.concurrency else {
        return Ok(None);
    };
    let mut keys = vec![format!("addr:{}", caller.client)];
    if !caller.is_anonymous() {
        keys.push(format!("id:{}", caller.name()));
    }
    c.acquire(keys)
        .map(Some)
        .ok_or_else(|| auth::ratelimit::too_many(auth::ratelimit::CONCURRENCY_RETRY_AFTER))
}

/// The response with its route label and the API version header.
fn finish(route: &'static str, result: Result<Response, OciError>) -> Response {
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(RouteLabel(route));
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

/// Identifies the caller, applies the rate limits and decides the request from its
/// endpoint, once. On success the [`Caller`] is in the request's extensions for the
/// handlers that filter (catalog) or check a second repository (mount).
async fn authorize(
    app: &AppState,
    endpoint: &Endpoint,
    req: &mut Request<Body>,
) -> Result<Caller, OciError> {
    let client = auth::client_addr(req);
    if let Some(wait) = app.auth.limits.address(&client) {
        return Err(auth::ratelimit::too_many(wait));
    }
    let caller = if app.auth.is_open() {
        Caller::anonymous(client, true)
    } else {
        let caller = app
            .auth
            .identify(&app.meta, req.headers(), client)
            .await
            .map_err(|f| f.into_oci(req.headers()))?;
        match policy::needs(endpoint, req.method()) {
            None => {
                if *endpoint == Endpoint::Base && caller.is_anonymous() {
                    return Err(auth::unauthorized(
                        req.headers(),
                        None,
                        "authentication required",
                        false,
                    ));
                }
            }
            Some((repo, need)) => {
                let c = caller.clone();
                let r = repo.clone();
                let facts = app.meta.read(move |v| c.facts(v, &r)).await?;
                let token = caller
                    .token
                    .as_ref()
                    .map(|t| auth::token::claimed(t, &repo));
                let decision = policy::decide(caller.is_anonymous(), &facts, need, token);
                match decision {
                    Decision::Allow => {}
                    Decision::Challenge => {
                        return Err(auth::unauthorized(
                            req.headers(),
                            Some((&repo, need)),
                            "authentication required",
                            caller.token.is_some(),
                        ));
                    }
                    Decision::Deny => {
                        deny_audit(app, &caller, &repo, need);
                        return Err(OciError::new(
                            Code::Denied,
                            format!("requested access to {repo} is denied"),
                        ));
                    }
                    Decision::ProjectMissing => {
                        return Err(OciError::new(
                            Code::Denied,
                            format!(
                                "project {} does not exist; create it first (berth admin project create {})",
                                repo.project(),
                                repo.project()
                            ),
                        ));
                    }
                }
            }
        }
        caller
    };
    // The project's own limit counts only requests that got this far (authorized),
    // so callers without rights cannot use up a project's budget.
    if let Some((repo, _)) = policy::needs(endpoint, req.method())
        && let Some(wait) = app.auth.project_limit(&app.meta, repo.project()).await
    {
        return Err(auth::ratelimit::too_many(wait));
    }
    req.extensions_mut().insert(caller.clone());
    Ok(caller)
}

/// Records a refused write in the audit log.
fn deny_audit(app: &AppState, caller: &Caller, repo: &RepoName, need: Actions) {
    if need.push || need.delete {
        let action = if need.delete { "delete" } else { "push" };
        app.auth.audit.record(audit::entry(
            caller.name(),
            &caller.client,
            action,
            repo.as_str(),
            Some(repo.project()),
            AuditOutcome::Denied,
        ));
    }
}

/// Records pushes (manifests), tag moves, deletes and manifest pulls.
fn audit_request(
    app: &AppState,
    caller: &Caller,
    endpoint: &Endpoint,
    method: &Method,
    result: &Result<Response, OciError>,
) {
    let (repo, reference) = match endpoint {
        Endpoint::Manifest(repo, r) => (repo, Some(r)),
        Endpoint::Blob(repo, _) if *method == Method::DELETE => (repo, None),
        _ => return,
    };
    let action = match (*method).clone() {
        Method::GET => "pull",
        Method::PUT => match reference {
            Some(Reference::Tag(_)) => "tag",
            _ => "push",
        },
        Method::DELETE => "delete",
        _ => return,
    };
    let resource = match (endpoint, reference) {
        (_, Some(Reference::Tag(t))) => format!("{repo}:{t}"),
        (_, Some(Reference::Digest(d))) => format!("{repo}@{d}"),
        (Endpoint::Blob(_, d), None) => format!("{repo}@{d}"),
        _ => repo.to_string(),
    };
    let outcome = match result {
        Ok(_) => AuditOutcome::Success,
        Err(_) => AuditOutcome::Failure,
    };
    app.auth.audit.record(audit::entry(
        caller.name(),
        &caller.client,
        action,
        &resource,
        Some(repo.project()),
        outcome,
    ));
}

fn unsupported(method: &Method) -> OciError {
    OciError::new(
        Code::Unsupported,
        format!("method {method} is not supported here"),
    )
}
