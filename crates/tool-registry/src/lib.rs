//! The tool registry (`tta.v1.ToolRegistry`): tools the agents share (R3), with validation,
//! a safety policy, a lookup cache, invocation with timeouts, cleanup of unused tools and usage
//! analytics.
//!
//! Layout: [`spec`] and [`schema`] say what a valid tool is; [`policy`] what may exist and run,
//! [`reload`] keeps it current; [`store`] is the Redis model; [`cache`] the lookup cache;
//! [`registry`] the operations; [`invoke`] runs tools (through executors, or [`builtins`]);
//! [`analytics`] turns usage into recommendations; [`service`] is the gRPC edge and
//! [`maintenance`] the background work.

pub mod analytics;
pub mod builtins;
pub mod cache;
pub mod error;
pub mod invoke;
pub mod maintenance;
pub mod policy;
pub mod registry;
pub mod reload;
pub mod schema;
pub mod service;
pub mod spec;
pub mod store;

pub use error::Error;

use axum::{Json, Router, extract::State, routing::get};
use serde_json::{Value, json};
use tta_proto::v1::tool_registry_server::ToolRegistryServer;
use tta_runtime::{BoxError, GrpcServer, ServiceContext, ServiceParts, redis::Keyspace};

/// Builds the service's parts from its context; `main` and the test kit both run it.
pub async fn build(context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let config = &context.config;
    let pool = tta_runtime::redis::pool(&config.redis)?;
    tta_runtime::redis::add_readiness_check(&context.readiness, pool.clone()).await;
    let policy = reload::SharedPolicy::load(
        policy::Policy::from_config(&config.tools),
        config.tools.policy_file.clone(),
    )?;
    let store = store::Store::new(pool, Keyspace::new(config.tools.key_prefix(&config.redis)));
    let registry = registry::Registry::new(store, policy.clone());

    let grpc = GrpcServer::new(context.kind.name()).add_service(ToolRegistryServer::new(
        service::ToolRegistryService::new(registry.clone()),
    ));
    let routes = Router::new()
        .route("/policy", get(policy_diagnostics))
        .with_state(policy.clone());
    let shutdown = context.shutdown.clone();
    Ok(ServiceParts::default()
        .with_grpc(grpc)
        .with_admin_routes(routes)
        .with_task("tool-policy-watch", policy.watch(shutdown.clone()))
        .with_task("tool-maintenance", maintenance::run(registry, shutdown)))
}

/// `GET /policy`: the policy in force (secrets redacted) and the outcome of the last reload.
async fn policy_diagnostics(State(policy): State<reload::SharedPolicy>) -> Json<Value> {
    let applied = policy.current();
    let last = policy.last_reload();
    Json(json!({
        "version": applied.version,
        "source": applied.source,
        "loaded_at_ms": applied.loaded_at_ms,
        "policy": applied.policy.redacted_json(),
        "last_reload": {
            "applied": last.applied,
            "source": last.source,
            "at_ms": last.at_ms,
            "errors": last.problems.iter().map(|p| json!({"path": p.path, "message": p.message})).collect::<Vec<_>>(),
        },
    }))
}
