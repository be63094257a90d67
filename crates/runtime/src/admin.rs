//! The admin HTTP server every process runs: `/health` (alive), `/ready` (able to work),
//! `/metrics` (Prometheus text). Services merge their own routes (the gateway's diagnostics)
//! into the same router.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;

use crate::{readiness::Readiness, shutdown::Shutdown};

#[derive(Debug, Clone)]
struct AdminState {
    service: &'static str,
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// The standard routes; merge service-specific routes into the result.
pub fn router(service: &'static str, metrics: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/live", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState {
            service,
            metrics,
            readiness,
        })
}

async fn health(State(state): State<AdminState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "service": state.service,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let report = state.readiness.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Serves `router` until `shutdown` trips; open connections are then closed gracefully.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "admin http server listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}
