//! Upload sessions live on the node that created them: the bytes received so far, the
//! running hash and the open shard files are in that node's memory. A request for a
//! session that reaches another node is passed on here to the owner (named by the
//! upload id) over the cluster's internal listener, body and answer streamed through
//! unchanged. When the owner is not a member or does not answer, the client gets
//! `BLOB_UPLOAD_UNKNOWN` and starts the upload again, as the spec's clients do.
//!
//! The owner serves these requests with [`internal_router`], mounted on the gRPC
//! listener (HTTP/2): it answers only for sessions it owns, so a request is passed on
//! at most once. The same channels fetch the other members' reports for the cluster
//! status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use berth_types::{NodeId, UploadId};
use tonic::transport::Channel;
use tower::ServiceExt;

use crate::AppState;
use crate::oci::endpoint::Endpoint;
use crate::oci::error::{Code, OciError};

/// Headers that describe one connection, not the request: never passed on.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::HOST,
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// HTTP/2 channels to the other nodes' internal listeners (the same connection
/// settings, and the same TLS when configured, as the cluster's gRPC clients), one per
/// address.
#[derive(Clone, Default)]
pub struct UploadProxy {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

fn lost(id: UploadId, why: impl std::fmt::Display) -> OciError {
    OciError::new(
        Code::BlobUploadUnknown,
        format!(
            "upload {id} is held by node {}, which {why}; start the upload again",
            id.owner()
        ),
    )
}

impl UploadProxy {
    /// Passes `req` (for upload `id`, owned by another node) on to its owner and
    /// returns the owner's answer.
    pub async fn forward(
        &self,
        app: &AppState,
        id: UploadId,
        mut req: Request<Body>,
    ) -> Result<Response, OciError> {
        let owner: NodeId = id.owner();
        let addr: String = app
            .meta
            .membership()
            .nodes
            .get(&owner)
            .cloned()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| lost(id, "is not a cluster member"))?;
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let (channel, uri) = self
            .channel_and_uri(&addr, &path)
            .map_err(|_| lost(id, "has an address berth cannot dial"))?;
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        for h in &HOP_BY_HOP {
            req.headers_mut().remove(h);
        }
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, tonic::body::Body::new(body));
        let resp = channel.oneshot(req).await.map_err(|e| {
            tracing::warn!(upload = %id, %owner, addr, error = %e, "passing an upload request on");
            lost(id, "does not answer")
        })?;
        let (mut parts, body) = resp.into_parts();
        for h in &HOP_BY_HOP {
            parts.headers.remove(h);
        }
        parts.version = http::Version::HTTP_11;
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    /// `GET path` on the internal listener of the node at `addr`, answered as JSON
    /// within `timeout`. For the cluster status's per-member reports.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: std::time::Duration,
    ) -> Result<T, String> {
        let (channel, uri) = self.channel_and_uri(addr, path)?;
        let req = http::Request::get(uri)
            .version(http::Version::HTTP_2)
            .body(tonic::body::Body::empty())
            .map_err(|e| e.to_string())?;
        let fetch = async {
            let resp = channel.oneshot(req).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            let body = axum::body::to_bytes(Body::new(resp.into_body()), 1024 * 1024)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_slice(&body).map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    /// The channel to the internal listener at `addr`, and the URI of `path` there.
    fn channel_and_uri(&self, addr: &str, path: &str) -> Result<(Channel, Uri), String> {
        let endpoint = berth_consensus::grpc::peer_endpoint(addr).map_err(|e| e.to_string())?;
        let uri: Uri = format!("{}{path}", endpoint.uri().to_string().trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        let mut channels = self.channels.lock().expect("proxy channels lock poisoned");
        let channel = channels
            .entry(addr.to_owned())
            .or_insert_with(|| endpoint.connect_lazy())
            .clone();
        Ok((channel, uri))
    }
}

/// The router of the internal listener: upload-session requests passed on by other
/// nodes, answered only for sessions this node owns, and this node's report for the
/// cluster status ([`crate::admin::node_report`]).
pub fn internal_router(app: AppState) -> Router {
    Router::new()
        .route("/v2/{*rest}", any(owned_upload))
        .route(
            crate::admin::NODE_REPORT_PATH,
            axum::routing::get(crate::admin::node_report),
        )
        .route(
            crate::placement::DISK_REPORT_PATH,
            axum::routing::get(crate::placement::disk_report),
        )
        .with_state(app)
}

async fn owned_upload(State(app): State<AppState>, req: Request<Body>) -> Response {
    let rest = req.uri().path().strip_prefix("/v2/").unwrap_or_default();
    match Endpoint::parse(rest) {
        Ok(Endpoint::Upload(_, id)) if id.owner() == app.node => {
            crate::oci::dispatch(State(app), req).await
        }
        Ok(Endpoint::Upload(_, id)) => lost(id, "is not this node").into_response(),
        Ok(_) => OciError::new(
            Code::Unsupported,
            "the internal listener serves only passed-on upload sessions",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}
