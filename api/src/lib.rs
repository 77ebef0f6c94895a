//! The HTTP side of berth: the OCI Distribution API under `/v2/`, the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`), the management API (`/api/v1/`),
//! and the registry use cases they call
//! (uploads, manifest validation, maintenance). Only this crate knows HTTP; it talks
//! to metadata through `berth_consensus::Metadata` and to bytes through
//! `berth_blobstore::BlobStore`.

pub mod admin;
pub mod maintenance;
pub mod manifest;
pub mod metrics;
pub mod oci;
mod ops;
pub mod proxy;
pub mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};
use berth_blobstore::BlobStore;
use berth_consensus::Metadata;
use berth_types::NodeId;

/// Everything a request handler can reach.
pub struct App {
    pub node: NodeId,
    pub meta: Metadata,
    pub store: BlobStore,
    pub uploads: uploads::Uploads,
    pub metrics: metrics::Metrics,
    /// Passes requests for upload sessions other nodes own on to them.
    pub proxy: proxy::UploadProxy,
}

pub type AppState = Arc<App>;

impl App {
    pub fn new(node: NodeId, meta: Metadata, store: BlobStore) -> AppState {
        Arc::new(App {
            node,
            uploads: uploads::Uploads::new(node, meta.clone(), store.clone()),
            meta,
            store,
            metrics: metrics::Metrics::new(),
            proxy: proxy::UploadProxy::default(),
        })
    }
}

/// Builds the whole HTTP router. Tests call this without a socket.
pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/v2", any(oci::dispatch))
        .route("/v2/", any(oci::dispatch))
        .route("/v2/{*rest}", any(oci::dispatch))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/v1/cluster/status", get(admin::cluster_status))
        .route("/api/v1/cluster/members", axum::routing::post(admin::join))
        .route(
            "/api/v1/cluster/members/{id}",
            axum::routing::delete(admin::remove),
        )
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            metrics::track,
        ))
        .with_state(app)
}
