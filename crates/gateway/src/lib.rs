//! The orchestrator gateway: the public `tta.v1.Orchestrator` API that other TTA services call.
//! It runs each player turn as a workflow of agent steps through the broker, keeps sessions and
//! run records in Redis, serves `tta.v1.Safety` (classification, rule reloads, escalations),
//! sheds work when every host is critical (`capacity`), and serves the JSON `/diagnostics`
//! endpoint, and `tta.v1.AgentRegistry` for agents that are not built-in workers; turns are
//! also served over a WebSocket (`GET /ws` on the admin port, `websocket`).

pub mod agent_registry;
pub mod breaker;
pub mod capacity;
mod diagnostics;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod guard;
pub mod live;
pub mod orchestrator;
pub mod safety;
pub mod stats;
pub mod store;
mod tool_diagnostics;
pub mod turn;
pub mod webhook;
pub mod websocket;
pub mod workflow;

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tta_proto::v1::{
    agent_registry_server::AgentRegistryServer, orchestrator_server::OrchestratorServer,
    safety_server::SafetyServer,
};
use tta_runtime::{
    BoxError, ConfigFileError, GrpcServer, ServiceContext, ServiceParts,
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

/// A step's time limit when its definition sets none (the prototype's agent default).
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How stale a replica's view of registered workflows may be.
const WORKFLOW_REFRESH: Duration = Duration::from_secs(1);

/// The built-in workflows and those of `gateway.workflows_file`, checked before the gateway
/// starts: a bad file stops start-up naming the key and the offending field.
fn workflow_seeds(
    config: &tta_types::Config,
    defaults: workflow::definition::Defaults,
) -> Result<Vec<tta_proto::v1::WorkflowDefinition>, BoxError> {
    let mut seeds = workflow::builtin::definitions();
    if let Some(path) = &config.gateway.workflows_file {
        let invalid = |reason: String| {
            ConfigFileError::new(
                "gateway.workflows_file",
                format!("{}: {reason}", path.display()),
            )
        };
        let text =
            std::fs::read_to_string(path).map_err(|err| invalid(format!("cannot read: {err}")))?;
        let definitions = workflow::json::definitions_from_yaml(&text).map_err(invalid)?;
        for (i, definition) in definitions.iter().enumerate() {
            workflow::definition::validate(definition, defaults)
                .map_err(|violation| invalid(format!("workflows[{i}]: {violation}")))?;
        }
        seeds.extend(definitions);
    }
    Ok(seeds)
}

/// Stores the seed workflows, retrying while Redis is unreachable.
async fn seed_until_stored(
    workflows: &workflow::registry::WorkflowRegistry,
    seeds: Vec<tta_proto::v1::WorkflowDefinition>,
    shutdown: tta_runtime::Shutdown,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match workflows.seed(seeds.clone()).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot store the workflows yet; retrying");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.wait() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
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
    let keys = Keyspace::new(&config.redis.key_prefix);
    let (poller, capacity) = capacity::capacity(config.clone(), keys.clone(), connection.clone());
    let workflows = Arc::new(workflow::registry::WorkflowRegistry::new(
        keys.clone(),
        connection.clone(),
        workflow::definition::Defaults {
            total_timeout: config.gateway.turn_timeout,
            step_timeout: DEFAULT_STEP_TIMEOUT,
        },
    ));
    let seeds = workflow_seeds(&config, workflows.defaults())?;
    let store = store::Store::new(keys.clone(), connection);
    let safety_pool = tta_runtime::redis::pool(&config.redis)?;
    let guard = guard::SafetyGuard::load(&config.safety, safety_pool.clone(), &keys)
        .map_err(|err| ConfigFileError::new("safety", err.to_string()))?;
    let registry = store.clone();
    let probe = store.clone();
    context
        .readiness
        .add_check("redis", move || {
            let store = probe.clone();
            async move { store.ping().await.map_err(|err| err.to_string()) }
        })
        .await;

    let seeded = workflows.clone();
    context
        .readiness
        .add_check("workflows", move || {
            let seeded = seeded.is_seeded();
            async move {
                seeded.then_some(()).ok_or_else(|| {
                    "the built-in and configured workflows are not stored yet".to_owned()
                })
            }
        })
        .await;

    let instance = instance_name(&context);
    let publisher = Publisher::connect_lazy(&config.gateway.broker_endpoint)?;
    let dispatcher = dispatch::Dispatcher::new(
        publisher.clone(),
        store.clone(),
        format!("results.{instance}"),
        config.gateway.circuit_breaker.clone(),
    );
    let results = Subscription {
        topic: dispatcher.reply_topic().to_owned(),
        group: "gateway".to_owned(),
        consumer: instance.clone(),
        prefetch: 256,
        // Settling a result takes milliseconds (at most `dispatch::RECORD_GRACE` when it waits
        // for its turn's response); a short lease means results that reached a replica just
        // before it crashed come back to it soon after its restart.
        visibility_timeout: Some(Duration::from_secs(2)),
    };
    let safety = safety::SafetyService::new(guard.clone(), store.clone());
    let agents =
        agent_registry::AgentRegistryService::new(store.clone(), config.agents.heartbeat_ttl);
    let live = live::LiveConfig::new(config.clone());
    let turns = turn::TurnRunner::new(
        live.clone(),
        store,
        dispatcher.clone(),
        guard.clone(),
        workflows.clone(),
        instance.clone(),
    );
    let service = orchestrator::OrchestratorService::new(live.clone(), turns, capacity.clone());

    let grpc = GrpcServer::new(context.kind.name())
        .add_service(OrchestratorServer::new(service.clone()))
        .add_service(SafetyServer::new(safety))
        .add_service(AgentRegistryServer::new(agents));
    let websocket = websocket::Endpoint::new(
        service.clone(),
        config.gateway.websocket.clone(),
        context.shutdown.clone(),
    );
    let mut admin = websocket.routes();
    if config.diagnostics.enabled {
        admin = admin.merge(diagnostics::routes(
            &context,
            live.clone(),
            registry,
            capacity,
        ));
    }
    let mut parts = ServiceParts::default()
        .with_grpc(grpc)
        .with_admin_routes(admin)
        .with_task("websocket", websocket.drain().map(Ok));
    let shutdown = context.shutdown.clone();
    parts = parts.with_task("capacity", poller.run(shutdown.clone()).map(Ok));
    parts = parts.with_task(
        "apply-config",
        live.follow(context.config_changes.clone(), shutdown.clone())
            .map(Ok),
    );
    let handler = dispatcher.result_handler();
    if let Some(webhook) = config.safety.webhook.clone() {
        let store = tta_safety::escalation::EscalationStore::new(safety_pool, &keys);
        // Before the gateway serves, so an escalation raised by its first turn is forwarded;
        // if Redis is not there yet, the forwarder creates the group when it is.
        if let Err(err) = webhook::prepare(&store).await {
            tracing::warn!(error = %err, "cannot prepare the escalation webhook yet");
        }
        let shutdown = context.shutdown.clone();
        let consumer = instance.clone();
        parts = parts.with_task("escalation-webhook", async move {
            webhook::forward(store, webhook, consumer, shutdown).await;
            Ok(())
        });
    }
    let rules_shutdown = context.shutdown.clone();
    let workflows_shutdown = context.shutdown.clone();
    Ok(parts
        .with_task("workflows", async move {
            seed_until_stored(&workflows, seeds, workflows_shutdown.clone()).await;
            workflows
                .refresh_every(WORKFLOW_REFRESH, workflows_shutdown.wait())
                .await;
            Ok(())
        })
        .with_task("agent-results", async move {
            messaging::consume(publisher, results, handler, shutdown).await;
            Ok(())
        })
        .with_task("safety-rules", async move {
            guard.watch_rules(rules_shutdown.wait()).await;
            Ok(())
        }))
}
