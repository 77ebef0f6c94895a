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

use crate::AppState;
use endpoint::Endpoint;
use error::{Code, OciError};

/// The route label a response was produced by, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// Entry point for every request under `/v2`.
pub async fn dispatch(State(app): State<AppState>, req: Request<Body>) -> Response {
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
            (route, handlers::handle(app, endpoint, req).await)
        }
        Err(e) => ("invalid", Err(e)),
    };
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(RouteLabel(route));
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

fn unsupported(method: &Method) -> OciError {
    OciError::new(
        Code::Unsupported,
        format!("method {method} is not supported here"),
    )
}
