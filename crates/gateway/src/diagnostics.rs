//! `GET /diagnostics`: what this gateway is, how long it has run, what it depends on and
//! whether those dependencies answer, how each agent type and workflow has been doing
//! (p50/p95/average step time, error rate, runs by outcome) and the capacity of every monitored
//! host with recommendations — the first page an operator opens; `GET /agents`: the agent
//! registry with heartbeat ages, hosts and status; `GET /tools`: the shared tools, their usage
//! and the tool policy, read from the tool registry.

use std::time::{Duration, Instant, SystemTime};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};
use tta_proto::v1 as pb;
use tta_runtime::{Readiness, ServiceContext};

use crate::{capacity::Capacity, live::LiveConfig, store::Store};

#[derive(Debug, Clone)]
struct DiagnosticsState {
    started: Instant,
    config: LiveConfig,
    readiness: Readiness,
    store: Store,
    capacity: Capacity,
}

pub fn routes(
    context: &ServiceContext,
    config: LiveConfig,
    store: Store,
    capacity: Capacity,
) -> Router {
    Router::new()
        .route("/diagnostics", get(diagnostics))
        .route("/agents", get(agents))
        .route("/tools", get(tools))
        .with_state(DiagnosticsState {
            started: Instant::now(),
            config,
            readiness: context.readiness.clone(),
            store,
            capacity,
        })
}

/// `GET /tools`: the tool registry's tools, usage summary, recommendations and (redacted)
/// policy, as JSON. 503 when the registry does not answer.
async fn tools(State(state): State<DiagnosticsState>) -> (StatusCode, Json<Value>) {
    let endpoint = state.config.now().gateway.tool_registry_endpoint.clone();
    match crate::tool_diagnostics::snapshot(&endpoint).await {
        Ok(snapshot) => (StatusCode::OK, Json(snapshot)),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "tool_registry": endpoint, "error": err })),
        ),
    }
}

/// `GET /agents`: the registered workers, how long ago each one last sent a heartbeat, and the
/// load and task figures it sent.
async fn agents(State(state): State<DiagnosticsState>) -> (StatusCode, Json<Value>) {
    let agents = match state.store.agents().await {
        Ok(agents) => agents,
        Err(err) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": err.to_string() })),
            );
        }
    };
    let now = SystemTime::now();
    let age = |at: &Option<prost_types::Timestamp>| {
        at.as_ref()
            .and_then(|at| SystemTime::try_from(*at).ok())
            .and_then(|at| now.duration_since(at).ok())
            .map(|age| age.as_secs_f64())
    };
    let mut listed: Vec<Value> = agents
        .iter()
        .map(|info| {
            let id = info.id.clone().unwrap_or_default();
            json!({
                "agent_type": id.agent_type,
                "instance": id.instance,
                "topic": info.topic,
                "host": info.labels.get("host"),
                "status": pb::AgentStatus::try_from(info.status)
                    .map_or("unknown", |status| status.as_str_name()),
                "capabilities": info.capabilities,
                "labels": info.labels,
                "version": info.version,
                "uptime_seconds": age(&info.started_at),
                "last_heartbeat_age_seconds": age(&info.last_heartbeat),
                "in_flight": info.in_flight,
                "max_in_flight": info.max_in_flight,
                "load": info.load,
                "stats": info.stats.as_ref().map(agent_stats),
            })
        })
        .collect();
    listed.sort_by_key(|agent| format!("{}:{}", agent["agent_type"], agent["instance"]));
    (StatusCode::OK, Json(json!({ "agents": listed })))
}

/// An instance's own figures from its last heartbeat, latencies in milliseconds.
fn agent_stats(stats: &pb::AgentStats) -> Value {
    let millis = |latency: &Option<prost_types::Duration>| {
        latency
            .and_then(|latency| Duration::try_from(latency).ok())
            .map(|latency| latency.as_secs_f64() * 1000.0)
    };
    json!({
        "tasks_succeeded": stats.tasks_succeeded,
        "tasks_failed": stats.tasks_failed,
        "tasks_timed_out": stats.tasks_timed_out,
        "latency_p50_ms": millis(&stats.latency_p50),
        "latency_p95_ms": millis(&stats.latency_p95),
        "latency_avg_ms": millis(&stats.latency_avg),
        "error_rate": stats.error_rate,
    })
}

async fn diagnostics(State(state): State<DiagnosticsState>) -> Json<Value> {
    let readiness = state.readiness.report().await;
    let config = state.config.now();
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
        // Figures of this replica over its most recent steps (Prometheus has them per replica
        // and over time: tta_gateway_step_duration_seconds, tta_gateway_turns_total).
        "agents": crate::stats::agents(),
        "workflows": crate::stats::workflows(),
        "capacity": crate::capacity::report(&state.capacity.view()),
    }))
}
