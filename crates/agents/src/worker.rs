//! The runtime every agent worker shares: consume `agent.<type>` from the broker, run the
//! engine, and settle the task with its `AgentResult` as a reply — the broker stores the result
//! on the task's reply topic and only then acks — so a worker killed mid-task means the task is
//! redelivered to another instance, never lost. Also keeps the worker's entry in the agent
//! registry fresh with heartbeats.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::future::BoxFuture;
use prost::Message;
use tta_proto::v1 as pb;
use tta_runtime::{
    Shutdown,
    messaging::{Handler, Settle},
};
use tta_types::AgentId;

mod chain;

/// Why an engine could not produce an output for a task.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    /// Worth another attempt (a store or backend was unavailable).
    #[error("{0}")]
    Retryable(String),
    /// The task itself is wrong; another attempt fails the same way.
    #[error("{0}")]
    Permanent(String),
}

/// What a worker asks of its engine. Engines that keep state (the WBA) load and save it here.
pub trait TaskRunner: Send + Sync {
    fn run<'a>(
        &'a self,
        task: &'a pb::AgentTask,
    ) -> BoxFuture<'a, Result<pb::AgentOutput, TaskError>>;
}

/// One worker process's identity and plumbing.
pub struct Worker {
    pub agent: AgentId,
    pub runner: Arc<dyn TaskRunner>,
    pub task_timeout: Duration,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// The broker handler: decode, run (bounded by the task timeout), publish, then settle.
    pub fn handler(self: Arc<Self>) -> Handler {
        Arc::new(move |delivery: pb::Delivery| {
            let worker = self.clone();
            Box::pin(async move { worker.handle(delivery).await })
        })
    }

    async fn handle(&self, delivery: pb::Delivery) -> Settle {
        let (payload, priority) = delivery
            .message
            .map(|message| {
                let priority =
                    pb::Priority::try_from(message.priority).unwrap_or(pb::Priority::Normal);
                (message.payload, priority)
            })
            .unwrap_or_default();
        let task = match pb::AgentTask::decode(payload) {
            Ok(task) => task,
            Err(err) => return Settle::Reject(format!("undecodable AgentTask: {err}")),
        };
        if task.reply_topic.is_empty() {
            return Settle::Reject(format!("task {} has no reply_topic", task.task_id));
        }
        let agent_type = self.agent.agent_type.to_string();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.task_timeout, self.runner.run(&task)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(TaskError::Retryable(format!(
                "no output within {:?}",
                self.task_timeout
            ))),
        };
        let elapsed = started.elapsed();
        let status = match &outcome {
            Ok(_) => "succeeded",
            Err(TaskError::Retryable(_)) => "retryable",
            Err(TaskError::Permanent(_)) => "failed",
        };
        metrics::histogram!("tta_agent_task_duration_seconds", "agent" => agent_type.clone(), "status" => status)
            .record(elapsed.as_secs_f64());
        metrics::counter!("tta_agent_tasks_total", "agent" => agent_type, "status" => status)
            .increment(1);

        let (status, output, error) = match outcome {
            Ok(output) => (pb::AgentResultStatus::Succeeded, Some(output), None),
            // A retryable failure is redelivered (and retried with backoff) by the broker.
            Err(TaskError::Retryable(reason)) => {
                tracing::warn!(task = %task.task_id, error = %reason, "task failed; it will be retried");
                return Settle::Retry(reason);
            }
            Err(TaskError::Permanent(reason)) => (
                pb::AgentResultStatus::FailedPermanent,
                None,
                Some(pb::AgentError {
                    code: "invalid_task".to_owned(),
                    message: reason,
                }),
            ),
        };
        let result = pb::AgentResult {
            task_id: task.task_id.clone(),
            run_id: task.run_id.clone(),
            turn_id: task.turn_id.clone(),
            session_id: task.session_id.clone(),
            step_id: task.step_id.clone(),
            attempt: task.attempt,
            agent: Some(pb::AgentId::from(&self.agent)),
            status: status as i32,
            output,
            error,
            duration: prost_types::Duration::try_from(elapsed).ok(),
            finished_at: Some(prost_types::Timestamp::from(SystemTime::now())),
            chained: Vec::new(),
        };
        // The broker publishes the outgoing message and acks the task in one step.
        Settle::Reply(Box::new(chain::hand_on(task, result, priority)))
    }
}

/// What a worker tells the registry about itself beyond its id.
#[derive(Debug, Clone)]
pub struct Advertised {
    /// Capability tags, e.g. `ipa` and `llm`.
    pub capabilities: Vec<String>,
    /// Free-form labels, e.g. `backend` and `model`; `host` is added from [`Self::host`].
    pub labels: std::collections::HashMap<String, String>,
    /// The host it runs on (label `host`), so workers and the gateway can judge its placement.
    pub host: String,
    /// Whether it has stopped taking tasks (its host is critical); shown as DRAINING.
    pub paused: tokio::sync::watch::Receiver<bool>,
}

/// Keeps this worker visible in the agent registry: a key per instance that expires unless
/// refreshed, plus an index set for listing.
pub async fn heartbeat(
    connection: redis::aio::ConnectionManager,
    keys: tta_runtime::redis::Keyspace,
    agent: AgentId,
    advertised: Advertised,
    interval: Duration,
    ttl: Duration,
    shutdown: Shutdown,
) {
    let info = pb::AgentInfo {
        id: Some(pb::AgentId::from(&agent)),
        capabilities: advertised.capabilities,
        labels: {
            let mut labels = advertised.labels;
            labels.insert("host".to_owned(), advertised.host);
            labels
        },
        topic: format!("agent.{}", agent.agent_type),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        ..Default::default()
    };
    let mut connection = connection;
    let mut paused = advertised.paused;
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A pause or resume is announced at once, not at the next beat.
            Ok(()) = paused.changed() => {}
            () = shutdown.wait() => break,
        }
        let mut beat = info.clone();
        beat.last_heartbeat = Some(prost_types::Timestamp::from(SystemTime::now()));
        beat.status = if *paused.borrow_and_update() {
            pb::AgentStatus::Draining
        } else {
            pb::AgentStatus::Ready
        } as i32;
        let written = tta_runtime::agents::put(&mut connection, &keys, &beat, ttl).await;
        if let Err(err) = written {
            tracing::debug!(error = %err, "heartbeat failed; will retry");
        }
    }
    // Leaving cleanly: no ghost entry until the TTL runs out.
    let _ = tta_runtime::agents::remove(
        &mut connection,
        &keys,
        agent.agent_type.as_str(),
        &agent.instance,
    )
    .await;
}
