//! Operational endpoints: liveness, readiness and the Prometheus scrape.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// The process is up and serving HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// The node can serve registry requests: its Raft group has a leader.
pub async fn readyz(State(app): State<AppState>) -> Response {
    let status = app.meta.status();
    if status.leader.is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no raft leader\n").into_response()
    }
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    let text = app.metrics.render(
        &app.meta.status(),
        &app.store,
        &app.uploads.placer.repairs.stats(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
