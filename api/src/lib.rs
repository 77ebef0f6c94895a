//! The HTTP side of berth: the OCI Distribution API under `/v2/`, the operational
//! endpoints (`/healthz`, `/readyz`, `/metrics`), the token service (`/token`) and
//! authorization (`auth`), the management API (`/api/v1/`: `admin` for the cluster,
//! `manage` for projects, users, robots and the audit log),
//! and the registry use cases they call
//! (uploads, manifest validation, maintenance, repair and rebalancing). Only this crate knows HTTP; it talks
//! to metadata through `berth_consensus::Metadata` and to bytes through
//! `berth_blobstore::BlobStore`.

pub mod access;
pub mod admin;
pub mod auth;
pub mod maintenance;
pub mod manage;
pub mod manage_identity;
pub mod manifest;
pub mod metrics;
pub mod oci;
mod ops;
pub mod placement;
pub mod proxy;
pub mod rebalance;
pub mod repair;
pub mod restripe;
pub mod scrub;
pub mod uploads;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, delete, get, post, put};
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
    pub auth: auth::Auth,
    /// The last state digest reported, with the applied index it reflects.
    pub applied_state: std::sync::Mutex<Option<admin::AppliedState>>,
    /// A background task is computing the state digest.
    pub digesting: std::sync::atomic::AtomicBool,
}

pub type AppState = Arc<App>;

impl App {
    pub fn new(
        node: NodeId,
        meta: Metadata,
        store: BlobStore,
        auth: auth::AuthConfig,
        placement: placement::PlacementConfig,
    ) -> AppState {
        let placer = placement::Placer::new(node, meta.clone(), store.clone(), placement);
        Arc::new(App {
            node,
            uploads: uploads::Uploads::new(node, meta.clone(), store.clone(), placer),
            meta,
            store,
            metrics: metrics::Metrics::new(),
            proxy: proxy::UploadProxy::default(),
            auth: auth::Auth::new(auth),
            applied_state: std::sync::Mutex::default(),
            digesting: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Builds the whole HTTP router. Tests call this without a socket.
pub fn router(app: AppState) -> Router {
    // The cluster endpoints admit and remove nodes: administrators only when enforced.
    let cluster = Router::new()
        .route("/api/v1/cluster/status", get(admin::cluster_status))
        .route("/api/v1/cluster/members", post(admin::join))
        .route("/api/v1/cluster/members/{id}", delete(admin::remove))
        .route(
            "/api/v1/cluster/members/{id}/drain",
            post(admin::drain).delete(admin::undrain),
        )
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            manage::admin_only,
        ));
    Router::new()
        .route("/v2", any(oci::dispatch))
        .route("/v2/", any(oci::dispatch))
        .route("/v2/{*rest}", any(oci::dispatch))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/token", get(auth::token::token).post(auth::token::token))
        .merge(cluster)
        .route(
            "/api/v1/projects",
            get(manage::list_projects).post(manage::create_project),
        )
        .route(
            "/api/v1/projects/{name}",
            get(manage::get_project)
                .patch(manage::update_project)
                .delete(manage::delete_project),
        )
        .route("/api/v1/projects/{name}/members", get(manage::list_members))
        .route(
            "/api/v1/projects/{name}/members/{user}",
            put(manage::set_member).delete(manage::remove_member),
        )
        .route(
            "/api/v1/users",
            get(manage::list_users).post(manage::create_user),
        )
        .route("/api/v1/users/{name}", delete(manage::delete_user))
        .route("/api/v1/users/{name}/password", put(manage::set_password))
        .route(
            "/api/v1/robots",
            get(manage::list_robots).post(manage::create_robot),
        )
        .route("/api/v1/robots/{name}", delete(manage::delete_robot))
        .route("/api/v1/audit", get(manage::audit_log))
        .merge(access::routes())
        .route(
            "/api/v1/projects/{name}/groups",
            get(manage_identity::list_groups),
        )
        .route(
            "/api/v1/projects/{name}/groups/{provider}/{group}",
            put(manage_identity::set_group).delete(manage_identity::remove_group),
        )
        .route(
            "/api/v1/identity-providers",
            get(manage_identity::identity_providers).put(manage_identity::set_identity_providers),
        )
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            metrics::track,
        ))
        .with_state(app)
}
