//! The orchestrator gateway: the public `tta.v1.Orchestrator` API that other TTA services call.
//! It runs each player turn as a workflow of agent steps through the broker, keeps sessions and
//! run records in Redis, and serves the JSON `/diagnostics` endpoint. The agent registry and
//! the safety service are advertised here and arrive with their capabilities.

mod diagnostics;
pub mod dispatch;
pub mod error;
pub mod orchestrator;
pub mod store;
mod tool_diagnostics;
pub mod turn;

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tta_proto::{service_names, v1::orchestrator_server::OrchestratorServer};
use tta_runtime::{
    BoxError, GrpcServer, ServiceContext, ServiceParts,
    messaging::{self, Publisher, Subscription},
    redis::Keyspace,
};

/// This replica's name: unique per pod or host and stable across restarts, so results for a
/// turn that was in flight when it crashed still reach it after the restart.
fn instance_name(context: &ServiceContext) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    let port = context.config.gateway.listen.grpc.port();
    format!("{host}-{port}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect()
}

/// Builds the service's parts from its context; `main` and the test kit both run it.
pub async fn build(context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let config = context.config.clone();
    let client = tta_runtime::redis::client(&config.redis.url)?;
    let connection = ConnectionManager::new_lazy_with_config(
        client,
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis.connect_timeout))
            .set_response_timeout(Some(Duration::from_secs(5))),
    )?;
    let store = store::Store::new(Keyspace::new(&config.redis.key_prefix), connection);
    let registry = store.clone();
    let probe = store.clone();
    context
        .readiness
        .add_check("redis", move || {
            let store = probe.clone();
            async move { store.ping().await.map_err(|err| err.to_string()) }
        })
        .await;

    let instance = instance_name(&context);
    let publisher = Publisher::connect_lazy(&config.gateway.broker_endpoint)?;
    let dispatcher = dispatch::Dispatcher::new(
        publisher.clone(),
        store.clone(),
        format!("results.{instance}"),
    );
    let results = Subscription {
        topic: dispatcher.reply_topic().to_owned(),
        group: "gateway".to_owned(),
        consumer: instance.clone(),
        prefetch: 256,
        // Storing a result takes milliseconds; a short lease means results that reached a
        // replica just before it crashed come back to it soon after its restart.
        visibility_timeout: Some(Duration::from_secs(2)),
    };
    let turns = turn::TurnRunner::new(config.clone(), store, dispatcher.clone(), instance);
    let service = orchestrator::OrchestratorService::new(config.clone(), turns);

    let grpc = GrpcServer::new(context.kind.name())
        .add_service(OrchestratorServer::new(service))
        .advertise(service_names::AGENT_REGISTRY)
        .advertise(service_names::SAFETY);
    let mut parts = ServiceParts::default().with_grpc(grpc);
    if config.diagnostics.enabled {
        parts = parts.with_admin_routes(diagnostics::routes(&context, registry));
    }
    let shutdown = context.shutdown.clone();
    let handler = dispatcher.result_handler();
    Ok(parts.with_task("agent-results", async move {
        messaging::consume(publisher, results, handler, shutdown).await;
        Ok(())
    }))
}
