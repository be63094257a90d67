//! Invocation: arguments validated against the schema, the policy checked, a concurrency slot
//! taken, the tool run once — by the registry itself for a built-in tool, otherwise forwarded to
//! a live executor that owns it — within one timeout, and the outcome recorded. A call that
//! times out is never retried: the executor may still be running it, and a second run could
//! apply its effects twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, tool_executor_client::ToolExecutorClient};

use crate::{
    builtins,
    cache::Entry,
    error::Error,
    registry::Registry,
    schema,
    store::{ExecutorRecord, Outcome},
};

/// A parsed invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub name: String,
    pub version: String,
    pub args: Value,
    pub timeout: Option<Duration>,
    /// `(agent type, instance)` of the caller.
    pub caller: Option<(String, String)>,
}

/// What an invocation produced.
#[derive(Debug, Clone)]
pub struct Invoked {
    pub result_json: String,
    pub version: String,
    pub duration: Duration,
    pub executor_id: String,
    pub warnings: Vec<String>,
}

/// An executor's concurrency limit and the semaphore enforcing it.
type ExecutorSlots = (u32, Arc<Semaphore>);

#[derive(Debug, Clone, Default)]
pub struct Invoker {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tool_slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    executor_slots: Arc<Mutex<HashMap<String, ExecutorSlots>>>,
}

impl Invoker {
    pub async fn invoke(
        &self,
        registry: &Registry,
        invocation: Invocation,
    ) -> Result<Invoked, Error> {
        let entry = registry
            .lookup(&invocation.name, &invocation.version)
            .await?;
        let spec = entry.spec.clone();
        let reference = spec.reference();
        let policy = registry.policy.policy();
        let caller = invocation
            .caller
            .as_ref()
            .map(|(agent_type, instance)| (agent_type.as_str(), instance.as_str()));
        if let Err(reason) = policy.permits_invocation(&spec, caller) {
            record(registry, &spec.name, &reference, Outcome::Denied, None).await;
            tracing::info!(tool = %reference, reason = %reason, "tool invocation denied by policy");
            return Err(Error::PermissionDenied(reason));
        }
        schema::check(&entry.parameters, "args", &invocation.args)?;
        let timeout = policy
            .timeout_for(&spec, invocation.timeout)
            .map_err(|reason| Error::from(tta_types::FieldViolation::new("timeout", reason)))?;
        let _tool_slot = self.tool_slot(&reference, policy.max_concurrency_per_tool)?;

        let mut warnings = Vec::new();
        if spec.status == crate::spec::Status::Deprecated {
            warnings.push("tool version is deprecated".to_owned());
        }
        let started = Instant::now();
        let (outcome, executor_id) = if spec.is_builtin() {
            let outcome = match builtins::execute(&spec.name, &invocation.args) {
                Some(result) => result.map_err(Error::ToolFailed),
                None => Err(Error::Unavailable(format!(
                    "no executor for built-in tool {reference}"
                ))),
            };
            (outcome, builtins::EXECUTOR_ID.to_owned())
        } else {
            let executor = self
                .pick_executor(registry, &spec.name, &spec.version)
                .await?;
            let _executor_slot = self.executor_slot(&executor)?;
            let outcome = self.forward(&executor, &entry, &invocation, timeout).await;
            (outcome, executor.id.clone())
        };
        let duration = started.elapsed();
        let micros = u64::try_from(duration.as_micros()).ok();
        let result = outcome.and_then(|result| {
            if let Some(returns) = &entry.returns {
                schema::check(returns, "result", &result).map_err(|violation| {
                    Error::ToolFailed(format!("tool returned an invalid result: {violation}"))
                })?;
            }
            Ok(result)
        });
        let recorded = match &result {
            Ok(_) => Outcome::Success,
            Err(Error::DeadlineExceeded(_)) => Outcome::Timeout,
            Err(_) => Outcome::Failure,
        };
        record(registry, &spec.name, &reference, recorded, micros).await;
        metrics::histogram!("tta_tool_invocation_duration_seconds", "tool" => spec.name.clone())
            .record(duration.as_secs_f64());
        let result = result?;
        Ok(Invoked {
            result_json: result.to_string(),
            version: spec.version.clone(),
            duration,
            executor_id,
            warnings,
        })
    }

    fn tool_slot(&self, reference: &str, limit: u32) -> Result<OwnedSemaphorePermit, Error> {
        let semaphore = {
            let mut slots = self
                .tool_slots
                .lock()
                .map_err(|_| Error::Corrupt("tool slots lock poisoned".into()))?;
            slots
                .entry(reference.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(limit as usize)))
                .clone()
        };
        semaphore.try_acquire_owned().map_err(|_| {
            Error::Saturated(format!("tool {reference} already runs {limit} invocations"))
        })
    }

    fn executor_slot(&self, executor: &ExecutorRecord) -> Result<OwnedSemaphorePermit, Error> {
        let semaphore = {
            let mut slots = self
                .executor_slots
                .lock()
                .map_err(|_| Error::Corrupt("executor slots lock poisoned".into()))?;
            let slot = slots.entry(executor.id.clone()).or_insert_with(|| {
                (
                    executor.max_concurrency,
                    Arc::new(Semaphore::new(executor.max_concurrency as usize)),
                )
            });
            if slot.0 != executor.max_concurrency {
                *slot = (
                    executor.max_concurrency,
                    Arc::new(Semaphore::new(executor.max_concurrency as usize)),
                );
            }
            slot.1.clone()
        };
        semaphore.try_acquire_owned().map_err(|_| {
            Error::Saturated(format!(
                "executor {} already runs {} invocations",
                executor.id, executor.max_concurrency
            ))
        })
    }

    async fn pick_executor(
        &self,
        registry: &Registry,
        name: &str,
        version: &str,
    ) -> Result<ExecutorRecord, Error> {
        let live = registry.store.live_executors().await?;
        let candidates: Vec<ExecutorRecord> = live
            .into_iter()
            .filter(|executor| executor.serves(name, version))
            .collect();
        if candidates.is_empty() {
            return Err(Error::Unavailable(format!(
                "no live executor owns {}",
                crate::spec::reference(name, version)
            )));
        }
        let index = fastrand::usize(..candidates.len());
        candidates
            .into_iter()
            .nth(index)
            .ok_or_else(|| Error::Unavailable("no live executor".into()))
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, Error> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| Error::Corrupt("channel cache lock poisoned".into()))?;
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = tta_runtime::grpc::connect_lazy(endpoint)
            .map_err(|err| Error::Unavailable(format!("executor endpoint {endpoint}: {err}")))?;
        channels.insert(endpoint.to_owned(), channel.clone());
        Ok(channel)
    }

    /// One attempt, bounded by `timeout` on both sides (our timer and the gRPC deadline the
    /// executor sees). Never retried.
    async fn forward(
        &self,
        executor: &ExecutorRecord,
        entry: &Entry,
        invocation: &Invocation,
        timeout: Duration,
    ) -> Result<Value, Error> {
        let channel = self.channel(&executor.endpoint)?;
        let mut client = ToolExecutorClient::new(channel);
        let deadline = SystemTime::now() + timeout;
        let mut request = tonic::Request::new(pb::ExecuteToolRequest {
            invocation_id: uuid::Uuid::now_v7().to_string(),
            name: entry.spec.name.clone(),
            version: entry.spec.version.clone(),
            args_json: invocation.args.to_string(),
            deadline: Some(prost_types::Timestamp::from(deadline)),
            caller: invocation
                .caller
                .as_ref()
                .map(|(agent_type, instance)| pb::AgentId {
                    agent_type: agent_type.clone(),
                    instance: instance.clone(),
                }),
        });
        request.set_timeout(timeout);
        let reference = entry.spec.reference();
        let response = match tokio::time::timeout(timeout, client.execute_tool(request)).await {
            Err(_) => {
                tracing::warn!(tool = %reference, executor = %executor.id, timeout = ?timeout, "tool invocation timed out; not retried");
                return Err(Error::DeadlineExceeded(format!(
                    "tool {reference} did not finish within {}",
                    humantime::format_duration(timeout)
                )));
            }
            Ok(Err(status)) => return Err(map_executor_status(&reference, status, timeout)),
            Ok(Ok(response)) => response.into_inner(),
        };
        serde_json::from_str(&response.result_json).map_err(|err| {
            Error::ToolFailed(format!("tool {reference} returned invalid JSON: {err}"))
        })
    }
}

fn map_executor_status(reference: &str, status: tonic::Status, timeout: Duration) -> Error {
    let message = status.message().to_owned();
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Error::DeadlineExceeded(format!(
            "tool {reference} did not finish within {}",
            humantime::format_duration(timeout)
        )),
        tonic::Code::Unavailable => Error::Unavailable(format!("executor unavailable: {message}")),
        tonic::Code::ResourceExhausted => Error::Saturated(format!("executor busy: {message}")),
        tonic::Code::NotFound => {
            Error::Unavailable(format!("executor does not own {reference}: {message}"))
        }
        tonic::Code::InvalidArgument => {
            Error::ToolFailed(format!("executor rejected the arguments: {message}"))
        }
        _ => Error::ToolFailed(message),
    }
}

async fn record(
    registry: &Registry,
    name: &str,
    reference: &str,
    outcome: Outcome,
    micros: Option<u64>,
) {
    metrics::counter!("tta_tool_invocations_total", "tool" => name.to_owned(), "outcome" => outcome.label())
        .increment(1);
    if let Err(err) = registry.store.record(reference, outcome, micros).await {
        tracing::warn!(tool = %reference, error = %err, "cannot record tool usage");
    }
}
