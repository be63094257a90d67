//! `GET /diagnostics`: what this gateway is, how long it has run, what it depends on and
//! whether those dependencies answer — the first page an operator opens.

use std::{sync::Arc, time::Instant};

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};
use tta_runtime::{Readiness, ServiceContext};
use tta_types::Config;

#[derive(Debug, Clone)]
struct DiagnosticsState {
    started: Instant,
    config: Arc<Config>,
    readiness: Readiness,
}

pub fn routes(context: &ServiceContext) -> Router {
    Router::new()
        .route("/diagnostics", get(diagnostics))
        .with_state(DiagnosticsState {
            started: Instant::now(),
            config: context.config.clone(),
            readiness: context.readiness.clone(),
        })
}

async fn diagnostics(State(state): State<DiagnosticsState>) -> Json<Value> {
    let readiness = state.readiness.report().await;
    let config = &state.config;
    Json(json!({
        "service": "tta-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "ready": readiness.ready,
        "checks": readiness.checks,
        "dependencies": {
            "redis": tta_types::config::redact_url_password(&config.redis.url),
            "broker": config.gateway.broker_endpoint,
            "tool_registry": config.gateway.tool_registry_endpoint,
            "resource_monitors": config.gateway.resource_monitor_endpoints,
        },
        "limits": {
            "max_input_chars": config.gateway.max_input_chars,
            "turn_timeout_ms": config.gateway.turn_timeout.as_millis() as u64,
        },
    }))
}
