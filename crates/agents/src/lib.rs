//! The built-in agent workers. Each binary (`tta-ipa`, `tta-wba`, `tta-nga`) is one worker
//! process: it consumes `agent.<type>` from the broker, runs its [`engines`] engine and
//! answers with the result, which the broker stores on the task's reply topic before it acks the
//! task ([`worker`]); the WBA keeps each session's world in Redis, applied once per turn
//! ([`state`]). The IPA and NGA can ask an OpenAI-compatible endpoint instead, with the
//! built-in engine as fallback ([`llm`]).

pub mod engines;
pub mod llm;

pub mod placement;
pub mod state;
pub mod worker;

use std::{
    collections::HashMap,
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tta_proto::v1 as pb;
use tta_runtime::{
    BoxError, ServiceArgs, ServiceContext, ServiceKind, ServiceParts,
    messaging::{self, Publisher, Subscription},
    redis::Keyspace,
    service::{BuiltInAgent, run_main},
};
use tta_types::{AgentId, config::AgentBackend};

use crate::{
    engines::{Engine, EngineState, InputProcessor, NarrativeGenerator, World, WorldState},
    llm::{BuiltinEngine, LlmRunner},
    state::StateStore,
    worker::{TaskError, TaskRunner, Worker},
};

/// A built-in engine behind the worker runtime; the WBA's world state goes through the
/// [`StateStore`] so each turn is applied exactly once.
#[derive(Debug)]
struct EngineRunner {
    engine: Box<dyn Engine>,
    state: Option<StateStore<WorldState>>,
}

fn engine_failure(err: engines::Error) -> TaskError {
    TaskError::Permanent(format!("{}: {err}", err.code()))
}

impl TaskRunner for EngineRunner {
    fn run<'a>(
        &'a self,
        task: &'a pb::AgentTask,
    ) -> BoxFuture<'a, Result<pb::AgentOutput, TaskError>> {
        Box::pin(async move {
            let Some(store) = &self.state else {
                return self
                    .engine
                    .run(task, EngineState::Stateless)
                    .map(|outcome| outcome.output)
                    .map_err(engine_failure);
            };
            let deadline = task
                .deadline
                .and_then(|deadline| SystemTime::try_from(deadline).ok());
            let stored = store
                .apply_once(&task.session_id, &task.turn_id, deadline, |current| {
                    let outcome = self
                        .engine
                        .run(task, EngineState::World(current))
                        .map_err(engine_failure)?;
                    Ok((outcome.output.encode_to_vec(), outcome.world_state))
                })
                .await?;
            pb::AgentOutput::decode(stored.as_slice()).map_err(|err| {
                TaskError::Permanent(format!(
                    "stored output of turn {} is unreadable: {err}",
                    task.turn_id
                ))
            })
        })
    }
}

/// The labels of a worker's registry entry that follow from its configuration.
fn registry_labels(
    agent: BuiltInAgent,
    backend: AgentBackend,
    worlds: &[Arc<World>],
) -> HashMap<String, String> {
    let mut labels = HashMap::from([("backend".to_owned(), backend.as_str().to_owned())]);
    // The gateway refuses a session for a world no WBA serves, instead of failing its first turn.
    if agent == BuiltInAgent::Wba {
        let mut ids: Vec<&str> = worlds.iter().map(|world| world.id()).collect();
        ids.sort_unstable();
        labels.insert(tta_runtime::agents::WORLDS_LABEL.to_owned(), ids.join(","));
    }
    labels
}

fn host_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned())
}

/// Builds a worker's parts from its context.
pub async fn build(agent: BuiltInAgent, context: ServiceContext) -> Result<ServiceParts, BoxError> {
    let config = context.config.clone();
    let agent_type = agent.agent_type();
    let worker_config = match agent {
        BuiltInAgent::Ipa => &config.agents.ipa,
        BuiltInAgent::Wba => &config.agents.wba,
        BuiltInAgent::Nga => &config.agents.nga,
    };
    let agent_id = match &worker_config.instance {
        Some(instance) => AgentId::new(agent_type.clone(), instance.clone())?,
        None => AgentId::generated(agent_type.clone(), &host_name()),
    };

    let worlds: Vec<Arc<World>> = World::load_dir(&config.agents.worlds_dir)
        .map_err(|err| format!("agents.worlds_dir: {err}"))?
        .into_iter()
        .map(Arc::new)
        .collect();
    let engine = engines::builtin(&agent_type, &worlds)?
        .ok_or_else(|| format!("no built-in engine for agent type {agent_type}"))?;

    let client = tta_runtime::redis::client(&config.redis.url)?;
    let connection = ConnectionManager::new_lazy_with_config(
        client,
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis.connect_timeout))
            .set_response_timeout(Some(Duration::from_secs(5))),
    )?;
    let keys = Keyspace::new(&config.redis.key_prefix);
    let probe = connection.clone();
    context
        .readiness
        .add_check("redis", move || {
            let mut connection = probe.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .map(|_| ())
                    .map_err(|err| format!("redis: {err}"))
            }
        })
        .await;

    let state =
        (agent == BuiltInAgent::Wba).then(|| StateStore::new(keys.clone(), connection.clone()));
    let mut capabilities = vec![
        agent_type.to_string(),
        tta_runtime::agents::NEXT_STEPS_CAPABILITY.to_owned(),
    ];
    let mut labels = registry_labels(agent, worker_config.backend, &worlds);
    let runner: Arc<dyn TaskRunner> = match (worker_config.backend, agent) {
        (AgentBackend::Llm, BuiltInAgent::Ipa | BuiltInAgent::Nga) => {
            let llm = &config.agents.llm;
            let api_key = llm::resolve_api_key(llm, |name| std::env::var(name).ok())?;
            let builtin = match agent {
                BuiltInAgent::Ipa => BuiltinEngine::Ipa(
                    worlds
                        .iter()
                        .fold(InputProcessor::new(), |ipa, world| ipa.with_world(world)),
                ),
                _ => BuiltinEngine::Nga(NarrativeGenerator::new()),
            };
            capabilities.push("llm".to_owned());
            labels.insert("model".to_owned(), llm.model.clone());
            tracing::info!(
                agent = %agent_id,
                endpoint = %tta_types::config::redact_url_password(&llm.endpoint),
                model = %llm.model,
                "answering through the llm backend, with the built-in engine as fallback"
            );
            Arc::new(LlmRunner::new(
                builtin,
                llm,
                api_key.as_ref(),
                worker_config.task_timeout,
            )?)
        }
        _ => Arc::new(EngineRunner { engine, state }),
    };
    let publisher = Publisher::connect_lazy(&config.agents.broker_endpoint)?;
    let worker = Arc::new(Worker::new(
        agent_id.clone(),
        runner,
        worker_config.task_timeout,
    ));
    let subscription = Subscription {
        topic: format!("agent.{agent_type}"),
        group: agent_type.to_string(),
        consumer: agent_id.to_string().replace(':', "."),
        prefetch: u32::try_from(worker_config.concurrency)
            .unwrap_or(u32::MAX)
            .min(1024),
        visibility_timeout: None,
    };
    let direct = Subscription {
        topic: tta_runtime::agents::direct_topic(agent_type.as_str(), &agent_id.instance),
        ..subscription.clone()
    };
    labels.insert(
        tta_runtime::agents::DIRECT_TOPIC_LABEL.to_owned(),
        direct.topic.clone(),
    );
    let host = config
        .agents
        .host_name
        .clone()
        .unwrap_or_else(tta_runtime::hosts::local_host_name);
    // The shared topic and the instance's own each hold up to a prefetch of tasks.
    let max_in_flight = subscription.prefetch.saturating_mul(2);
    let stats = worker.stats();

    let (paused, pause_gate) = watch::channel(false);
    let mut parts = ServiceParts::default();
    if worker_config.enabled {
        tracing::info!(agent = %agent_id, host = %host, worlds = worlds.len(), "worker ready");
        let shutdown = context.shutdown.clone();
        let handler = worker.clone().handler();
        let gate = pause_gate.clone();
        let direct_publisher = publisher.clone();
        let direct_handler = handler.clone();
        let direct_shutdown = shutdown.clone();
        let direct_gate = gate.clone();
        parts = parts.with_task("consume-tasks", async move {
            messaging::consume_while(publisher, subscription, handler, shutdown, gate).await;
            Ok(())
        });
        // Tasks for steps that need this instance's particular capabilities.
        parts = parts.with_task("consume-direct-tasks", async move {
            messaging::consume_while(
                direct_publisher,
                direct,
                direct_handler,
                direct_shutdown,
                direct_gate,
            )
            .await;
            Ok(())
        });
        let placement = placement::Placement {
            agent: agent_id.clone(),
            host: host.clone(),
            keys: keys.clone(),
        };
        let shutdown = context.shutdown.clone();
        let connection = connection.clone();
        let interval = config.agents.host_check_interval;
        parts = parts.with_task("host-placement", async move {
            placement.run(connection, interval, paused, shutdown).await;
            Ok(())
        });
    }
    if !worker_config.enabled {
        // A READY entry with a direct topic would draw capability-routed steps to topics
        // nobody reads.
        tracing::info!(
            agent = %agent_id,
            setting = %format!("agents.{agent_type}.enabled"),
            "worker disabled: consuming no tasks and staying out of the agent registry"
        );
    } else if config.agents.auto_register {
        let shutdown = context.shutdown.clone();
        let interval = config.agents.effective_heartbeat_interval();
        let ttl = config.agents.heartbeat_ttl;
        parts = parts.with_task("heartbeat", async move {
            worker::heartbeat(
                connection,
                keys,
                agent_id,
                worker::Advertised {
                    capabilities,
                    labels,
                    host,
                    paused: pause_gate,
                    max_in_flight,
                    stats,
                },
                interval,
                ttl,
                shutdown,
            )
            .await;
            Ok(())
        });
    }
    Ok(parts)
}

/// The `main` of every worker binary.
pub fn worker_main(agent: BuiltInAgent, args: ServiceArgs) -> ExitCode {
    run_main(ServiceKind::Agent(agent), args, move |context| {
        build(agent, context)
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tta_runtime::{Readiness, Shutdown};
    use tta_types::Config;

    use super::*;

    /// The background tasks `build` gives `agent` under `config`, without running them.
    async fn tasks(agent: BuiltInAgent, config: Config) -> Vec<&'static str> {
        let config = Arc::new(config);
        let context = ServiceContext {
            kind: ServiceKind::Agent(agent),
            config_changes: tokio::sync::watch::channel(config.clone()).1,
            config,
            shutdown: Shutdown::new(),
            readiness: Readiness::new(),
            metrics: tta_runtime::metrics::install("tta-agents-test").unwrap(),
        };
        let parts = build(agent, context).await.unwrap();
        parts.background.iter().map(|task| task.name).collect()
    }

    fn config() -> Config {
        let mut config = Config::default();
        config.agents.worlds_dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/worlds");
        config.agents.auto_register = true;
        config
    }

    #[tokio::test]
    async fn an_enabled_worker_consumes_watches_its_host_and_registers() {
        assert_eq!(
            tasks(BuiltInAgent::Nga, config()).await,
            [
                "consume-tasks",
                "consume-direct-tasks",
                "host-placement",
                "heartbeat"
            ]
        );
    }

    #[tokio::test]
    async fn a_disabled_worker_neither_consumes_nor_registers() {
        let mut config = config();
        config.agents.nga.enabled = false;
        assert!(tasks(BuiltInAgent::Nga, config).await.is_empty());
    }

    fn world(id: &str) -> Arc<World> {
        let yaml = format!(
            "id: {id}\ntitle: T\nstart: a\nplaces:\n  - {{ id: a, name: a room, description: A room. }}\n"
        );
        Arc::new(World::from_yaml(id, &yaml).unwrap())
    }

    #[test]
    fn only_the_wba_advertises_its_worlds_sorted() {
        let worlds = [world("tide-pools"), world("quiet-harbor"), world("meadow")];
        let wba = registry_labels(BuiltInAgent::Wba, AgentBackend::Builtin, &worlds);
        assert_eq!(
            wba.get(tta_runtime::agents::WORLDS_LABEL)
                .map(String::as_str),
            Some("meadow,quiet-harbor,tide-pools")
        );
        assert_eq!(wba.get("backend").map(String::as_str), Some("builtin"));
        for agent in [BuiltInAgent::Ipa, BuiltInAgent::Nga] {
            let labels = registry_labels(agent, AgentBackend::Builtin, &worlds);
            assert!(!labels.contains_key(tta_runtime::agents::WORLDS_LABEL));
        }
    }
}
